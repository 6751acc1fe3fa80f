//! The HBR control plane (RPC API version 2017-09-08): request signing, credentials, the HTTP
//! client with retries, and the three actions the agent uses. Owns every byte sent to HBR;
//! never logs a secret, a signature or a Credential parameter.

pub mod client;
pub mod credentials;
pub mod error;
pub mod sign;

pub use client::{Added, HbrClient, RetryPolicy};
pub use credentials::{Credentials, CredentialsError, CredentialsProvider};
pub use error::HbrError;

use std::collections::BTreeMap;
use std::fmt;

use crate::secret::Secret;

pub const API_VERSION: &str = "2017-09-08";

/// rustls needs a process-wide crypto provider before any client is built; ring is the one
/// compiled in. Installing twice is harmless (the second attempt reports an error we ignore).
pub(crate) fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// One data source as the agent wants it in HBR: every parameter of AddDataSource /
/// UpdateDataSource in wire form. Non-secret parameters (`DataSourceType`, `DataSourceName`,
/// `ClusterId`, `ConnectionInfo`, `Path.N`, `IndexLevel`, …) are in `params`; the `Credential`
/// JSON text, which holds secrets, is kept apart so that it can never be hashed, shown or
/// logged with the rest.
#[derive(Clone, PartialEq)]
pub struct DataSourceRequest {
    pub params: BTreeMap<String, String>,
    pub credential: Option<Secret>,
}

impl fmt::Debug for DataSourceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataSourceRequest")
            .field("params", &self.params)
            .field("credential", &self.credential.as_ref().map(|_| "***"))
            .finish()
    }
}

impl DataSourceRequest {
    pub fn name(&self) -> &str {
        self.params.get("DataSourceName").map_or("", String::as_str)
    }
}

/// A data source as DescribeDataSources returns it.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RemoteDataSource {
    pub data_source_id: String,
    pub data_source_name: String,
    pub data_source_type: String,
    pub cluster_id: String,
    pub connection_info: Option<String>,
    pub paths: Option<Vec<String>>,
    pub include: Option<String>,
    pub exclude: Option<String>,
    pub index_level: Option<String>,
    pub schedule: Option<String>,
    pub speed_limit: Option<String>,
    pub options: Option<String>,
    pub created_time: Option<i64>,
    pub updated_time: Option<i64>,
}
