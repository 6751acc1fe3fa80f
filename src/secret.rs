//! Secrets: values that must never reach a log, an error, `Debug` output, metrics, the state
//! file or `plan` output. The only way to the plaintext is [`Secret::expose`], and the only
//! callers are the request builders that put it on the wire.

use std::fmt;
use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};

/// Where a secret came from; safe to show (it names a place, never the value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretOrigin {
    /// Written literally in a config file.
    Literal,
    /// `{ file = "PATH" }`
    File(PathBuf),
    /// `{ env = "VAR" }`
    Env(String),
    /// `{ credential = "NAME" }`: `$CREDENTIALS_DIRECTORY/NAME`.
    Credential(String),
    /// Produced by the agent (a credential chain, a JSON document holding secrets).
    Derived(&'static str),
}

impl fmt::Display for SecretOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretOrigin::Literal => f.write_str("literal"),
            SecretOrigin::File(p) => write!(f, "file {}", p.display()),
            SecretOrigin::Env(v) => write!(f, "env {v}"),
            SecretOrigin::Credential(n) => write!(f, "credential {n}"),
            SecretOrigin::Derived(what) => f.write_str(what),
        }
    }
}

/// A resolved secret value. `Debug` and `Display` print `***` and the origin only.
#[derive(Clone)]
pub struct Secret {
    value: SecretString,
    origin: SecretOrigin,
}

impl Secret {
    pub fn new(value: impl Into<String>, origin: SecretOrigin) -> Self {
        Secret {
            value: SecretString::from(value.into()),
            origin,
        }
    }

    /// The plaintext. Call only where the value goes onto the wire or into an HMAC.
    pub fn expose(&self) -> &str {
        self.value.expose_secret()
    }

    pub fn origin(&self) -> &SecretOrigin {
        &self.origin
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(***, {})", self.origin)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("hunter2-topsecret", SecretOrigin::Env("PW".into()));
        let shown = format!("{s:?} {s} {s:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("env PW"), "{shown}");
        assert_eq!(s.expose(), "hunter2-topsecret");
    }
}
