//! Errors of the HBR client. Each variant tells the caller what to do next: `Api` is final
//! (fix the request or the permissions), `Throttled`/`Unavailable` mean "try again on a later
//! pass", `OutcomeUnknown` means "describe before retrying", `Credentials` means "fix the
//! credential source". No variant ever carries a secret: the Credential parameter, the
//! Authorization header, signatures, keys and STS tokens are never copied into an error, and
//! neither is a URL with its query.

use crate::hbr::credentials::CredentialsError;

#[derive(Debug, thiserror::Error)]
pub enum HbrError {
    /// HBR answered and rejected the request. Final: retrying the same request will not help.
    #[error(
        "{action} failed: HTTP {http_status}, Code {code}, Message {message:?}, RequestId {request_id}"
    )]
    Api {
        action: String,
        http_status: u16,
        code: String,
        message: String,
        request_id: String,
    },

    /// Still throttled after every attempt; `last` is the last `Api` error. Try on a later pass.
    #[error("{action} still throttled after {attempts} attempts: {last}")]
    Throttled {
        action: String,
        attempts: u32,
        last: Box<HbrError>,
    },

    /// HBR (or the network to it) was unavailable on every attempt; `last` is the last `Api`
    /// (5xx, `ServiceUnavailable`, `InternalError`) or `Transport` error. Try on a later pass.
    #[error("{action}: HBR unavailable after {attempts} attempts: {last}")]
    Unavailable {
        action: String,
        attempts: u32,
        last: Box<HbrError>,
    },

    /// A non-idempotent request (AddDataSource) may or may not have taken effect: it may have
    /// reached HBR before the connection failed or the deadline passed, or HBR's answer could
    /// not be read. Describe the data sources before trying again.
    #[error("{action}: outcome unknown (describe before retrying): {source}")]
    OutcomeUnknown {
        action: String,
        #[source]
        source: Box<HbrError>,
    },

    /// The request could not be sent or its answer not received (connection, TLS, deadline).
    #[error("{action}: transport error{}: {message}", if *.timeout { " (deadline passed)" } else { "" })]
    Transport {
        action: String,
        message: String,
        timeout: bool,
    },

    /// No usable credentials.
    #[error("HBR credentials: {0}")]
    Credentials(#[from] CredentialsError),

    /// HBR's answer was not what the API documents.
    #[error(
        "{action}: cannot decode the response (HTTP {http_status}, RequestId {request_id}): {message}"
    )]
    Decode {
        action: String,
        http_status: u16,
        request_id: String,
        message: String,
    },
}

impl HbrError {
    /// HBR's error `Code`, when HBR answered (also through `Throttled`, `Unavailable`, `OutcomeUnknown`).
    pub fn code(&self) -> Option<&str> {
        match self {
            HbrError::Api { code, .. } => Some(code),
            HbrError::Throttled { last, .. } | HbrError::Unavailable { last, .. } => last.code(),
            HbrError::OutcomeUnknown { source, .. } => source.code(),
            _ => None,
        }
    }

    /// HBR's `RequestId` of the (last) answer, if there was one.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            HbrError::Api { request_id, .. } | HbrError::Decode { request_id, .. }
                if !request_id.is_empty() =>
            {
                Some(request_id)
            }
            HbrError::Throttled { last, .. } | HbrError::Unavailable { last, .. } => {
                last.request_id()
            }
            HbrError::OutcomeUnknown { source, .. } => source.request_id(),
            _ => None,
        }
    }

    /// Whether a later pass may succeed without any change (throttling, outage).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            HbrError::Throttled { .. } | HbrError::Unavailable { .. } | HbrError::Transport { .. }
        )
    }

    /// Text of a transport error without the URL (which carries the signed query).
    pub(crate) fn transport(action: &str, err: reqwest::Error) -> HbrError {
        let timeout = err.is_timeout();
        let err = err.without_url();
        let mut message = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        HbrError::Transport {
            action: action.to_string(),
            message,
            timeout,
        }
    }
}
