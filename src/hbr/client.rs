// TEMPORARY stub until the client lands.
use super::{DataSourceRequest, RemoteDataSource};
use crate::config::ControlPlane;

#[derive(Debug, thiserror::Error)]
pub enum HbrError {
    #[error("outcome unknown")]
    OutcomeUnknown { action: &'static str },
}

pub struct Added {
    pub data_source_id: String,
    pub request_id: String,
}

pub struct HbrClient;

impl HbrClient {
    pub fn new(_cp: &ControlPlane) -> Result<HbrClient, HbrError> {
        todo!()
    }
    pub async fn describe_data_sources(&self, _c: &str) -> Result<Vec<RemoteDataSource>, HbrError> {
        todo!()
    }
    pub async fn add_data_source(&self, _r: &DataSourceRequest) -> Result<Added, HbrError> {
        todo!()
    }
    pub async fn update_data_source(
        &self,
        _id: &str,
        _r: &DataSourceRequest,
    ) -> Result<String, HbrError> {
        todo!()
    }
}
