//! The smb probe (placeholder until its issue lands: it reports PROBE_NOT_IMPLEMENTED).

use super::{Code, Failed, Recorder};
use crate::config::NasSpec;

pub async fn probe(_spec: &NasSpec, _rec: &mut Recorder) -> Result<(), Failed> {
    Err(Failed::new(
        Code::PROBE_NOT_IMPLEMENTED,
        "this build cannot probe this kind of source yet",
    ))
}
