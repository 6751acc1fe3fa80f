//! `[filesystem.NAME]` (HBR `COMMON_FILE_SYSTEM`): a large file system mounted on this host.

use super::{Failed, Recorder};
use crate::config::FilesystemSpec;

pub async fn probe(_spec: &FilesystemSpec, _rec: &mut Recorder) -> Result<(), Failed> {
    todo!()
}
