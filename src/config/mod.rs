//! Configuration: the main file plus `conf.d/*.toml`, parsed with `toml` + serde so every
//! error keeps its file, line and column; then defaults, validation and secret resolution into
//! the typed [`Config`] the rest of the program trusts. Never logs a value it read.

mod diag;
pub mod model;

pub use diag::{ConfigErrors, Diagnostic, Severity};
pub use model::*;

// TEMPORARY stub until the loader lands.
pub fn load(_main: &std::path::Path) -> Result<Config, ConfigErrors> {
    todo!()
}
