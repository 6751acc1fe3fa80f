//! Configuration: the main file plus `conf.d/*.toml`, parsed with `toml` + serde so every
//! error keeps its file, line and column; then defaults, validation and secret resolution into
//! the typed [`Config`] the rest of the program trusts. Never logs a value it read, and never
//! puts a secret into a [`Diagnostic`].
//!
//! Three steps (STYLE item 3): [`raw`] shapes (`deny_unknown_fields`, spans) → `build`
//! (merge drop-ins, apply [`defaults`], validate, resolve secrets) → [`model`].

mod archive;
mod build;
mod check;
mod diag;
pub mod model;
mod raw;
mod report;
mod secrets;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

pub(crate) use check::hbr_id;
pub use diag::{ConfigErrors, Diagnostic, Severity};
pub use model::*;

/// Where `{ env = ... }` secrets and `$CREDENTIALS_DIRECTORY` come from.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment. A variable that is not valid Unicode counts as unset.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// A fixed environment, for tests and for callers that build one themselves.
#[derive(Clone, Default)]
pub struct MapEnv(BTreeMap<String, String>);

impl MapEnv {
    pub fn new() -> Self {
        MapEnv::default()
    }

    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.insert(name.into(), value.into());
        self
    }
}

impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

/// Names only: the values may be secrets.
impl fmt::Debug for MapEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Loads `main`, then `<dir of main>/conf.d/*.toml`, with secrets from the process
/// environment. Call it again to reload: secrets are re-read every time.
pub fn load(main: &Path) -> Result<Config, ConfigErrors> {
    load_with(main, &ProcessEnv)
}

/// [`load`] with an explicit environment.
pub fn load_with(main: &Path, env: &dyn Env) -> Result<Config, ConfigErrors> {
    build::Loader::new(env).run(main)
}
