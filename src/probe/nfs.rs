//! The NFS v3 probe for `[nas.NAME] protocol = "nfs"`, `[cpfs.NAME]` and `[bmcpfs.NAME]`
//! (placeholder until its issue lands: it reports PROBE_NOT_IMPLEMENTED).

use super::{Code, Failed, Recorder};
use crate::config::{CpfsSpec, NasSpec};

pub async fn probe_nas(_spec: &NasSpec, _rec: &mut Recorder) -> Result<(), Failed> {
    Err(not_yet())
}

pub async fn probe_cpfs(_spec: &CpfsSpec, _rec: &mut Recorder) -> Result<(), Failed> {
    Err(not_yet())
}

fn not_yet() -> Failed {
    Failed::new(
        Code::PROBE_NOT_IMPLEMENTED,
        "this build cannot probe this kind of source yet",
    )
}
