//! The TLS layer of the S3 probe, done with rustls directly (not through the SDK) so that each
//! way a handshake fails gets its own code: an unknown issuer is `TLS_UNTRUSTED`, a certificate
//! for another name `TLS_NAME_MISMATCH`, an expired one `TLS_EXPIRED`; a certificate that
//! expires within [`EXPIRY_WARNING`] is a warning. The trust store is the system's roots plus
//! the source's `ca_file`; the SDK's client is given the same store, as PEM.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::{CertificateError, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;

use crate::probe::{Code, Failed, Recorder};

/// A server certificate that expires sooner than this is reported as a warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// The roots a handshake is checked against, and the same as PEM text for the SDK's client.
pub struct Trust {
    roots: Arc<RootCertStore>,
    pub pem: Vec<u8>,
}

/// The system's roots, as DER and PEM.
struct Native {
    der: Vec<CertificateDer<'static>>,
    pem: Vec<u8>,
}

/// How long the system's roots are reused before they are read again. Reading them costs
/// tens of milliseconds (hundreds of files), on every https probe otherwise.
const NATIVE_ROOTS_TTL: Duration = Duration::from_secs(300);

fn native_roots() -> Arc<Native> {
    static CACHE: Mutex<Option<(Instant, Arc<Native>)>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, native)) = cache.as_ref()
        && at.elapsed() < NATIVE_ROOTS_TTL
    {
        return native.clone();
    }
    // Unreadable entries are skipped; a missing store leaves it empty, and an untrusted
    // server then says so.
    let der = rustls_native_certs::load_native_certs().certs;
    let mut pem = Vec::new();
    for cert in &der {
        pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        let text = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        for line in text.as_bytes().chunks(64) {
            pem.extend_from_slice(line);
            pem.push(b'\n');
        }
        pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    let native = Arc::new(Native { der, pem });
    *cache = Some((Instant::now(), native.clone()));
    native
}

/// The system's roots and `ca_file` (on a blocking thread: both read files).
pub async fn load_trust(ca_file: Option<&Path>) -> Result<Trust, Failed> {
    let ca_file = ca_file.map(Path::to_path_buf);
    tokio::task::spawn_blocking(move || {
        let mut roots = RootCertStore::empty();
        let native = native_roots();
        roots.add_parsable_certificates(native.der.iter().cloned());
        let mut pem = native.pem.clone();
        match &ca_file {
            None => {}
            Some(path) => {
                let ca = std::fs::read(path).map_err(|e| {
                    Failed::new(
                        Code::TLS_CA_FILE_INVALID,
                        format!("ca_file {}: {e}", path.display()),
                    )
                })?;
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&ca)
                    .collect::<Result<_, _>>()
                    .map_err(|e| {
                        Failed::new(
                            Code::TLS_CA_FILE_INVALID,
                            format!("ca_file {}: not PEM certificates ({e})", path.display()),
                        )
                    })?;
                if certs.is_empty() {
                    return Err(Failed::new(
                        Code::TLS_CA_FILE_INVALID,
                        format!("ca_file {} holds no PEM certificate", path.display()),
                    ));
                }
                let (added, bad) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(Failed::new(
                        Code::TLS_CA_FILE_INVALID,
                        format!(
                            "ca_file {}: none of its {bad} certificates is a usable CA",
                            path.display()
                        ),
                    ));
                }
                pem.push(b'\n');
                pem.extend_from_slice(&ca);
            }
        };
        Ok(Trust {
            roots: Arc::new(roots),
            pem,
        })
    })
    .await
    .unwrap_or_else(|e| {
        Err(Failed::new(
            Code::TLS_CA_FILE_INVALID,
            format!("loading the trust store failed: {e}"),
        ))
    })
}

/// What a successful handshake found.
pub struct Session {
    pub version: String,
    /// When the server's certificate stops being valid (RFC 3339), if it could be told.
    pub not_after: Option<String>,
}

/// Handshake over `tcp` with `host` as the name to check. Warns (`TLS_EXPIRES_SOON`) when the
/// certificate expires within [`EXPIRY_WARNING`].
pub async fn handshake(
    rec: &mut Recorder,
    tcp: TcpStream,
    host: &str,
    trust: &Trust,
) -> Result<Session, Failed> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        WebPkiServerVerifier::builder_with_provider(trust.roots.clone(), provider.clone())
            .build()
            .map_err(|e| {
                Failed::new(
                    Code::TLS_UNTRUSTED,
                    format!("no usable trust anchor (system roots or ca_file): {e}"),
                )
            })?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Failed::new(Code::TLS_HANDSHAKE_FAILED, e.to_string()))?
        .with_webpki_verifier(verifier.clone())
        .with_no_client_auth();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(bare.to_owned()).map_err(|e| {
        Failed::new(
            Code::TLS_NAME_MISMATCH,
            format!("{host} cannot be checked against a certificate: {e}"),
        )
    })?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = rec
        .within(
            &format!("the TLS handshake with {host}"),
            connector.connect(name.clone(), tcp),
        )
        .await?
        .map_err(|e| classify(host, &e))?;

    let (_, conn) = stream.get_ref();
    let version = conn
        .protocol_version()
        .and_then(|v| v.as_str())
        .unwrap_or("TLS")
        .replace('_', ".");
    let not_after = conn
        .peer_certificates()
        .and_then(|chain| expiry(&verifier, chain, &name));
    if let Some(at) = not_after {
        let left = at.saturating_sub(now());
        if left < EXPIRY_WARNING {
            rec.warn(
                Code::TLS_EXPIRES_SOON,
                format!(
                    "the certificate of {host} expires on {} (in {})",
                    rfc3339(at),
                    humantime::format_duration(Duration::from_secs(left.as_secs() / 3600 * 3600))
                ),
            );
        }
    }
    Ok(Session {
        version,
        not_after: not_after.map(rfc3339),
    })
}

/// When the chain stops verifying: check it as of a date far ahead, where webpki names the
/// `notAfter` it tripped on (the leaf's first).
fn expiry(
    verifier: &WebPkiServerVerifier,
    chain: &[CertificateDer<'_>],
    name: &ServerName<'_>,
) -> Option<Duration> {
    let (leaf, rest) = chain.split_first()?;
    let far = UnixTime::since_unix_epoch(now() + Duration::from_secs(200 * 365 * 24 * 3600));
    match verifier.verify_server_cert(leaf, rest, name, &[], far) {
        Err(rustls::Error::InvalidCertificate(CertificateError::ExpiredContext {
            not_after,
            ..
        })) => Some(Duration::from_secs(not_after.as_secs())),
        _ => None,
    }
}

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn rfc3339(since_epoch: Duration) -> String {
    time::OffsetDateTime::from_unix_timestamp(since_epoch.as_secs() as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{}s after the epoch", since_epoch.as_secs()))
}

/// Map a failed handshake to its code; the reason quotes rustls.
pub fn classify(host: &str, e: &std::io::Error) -> Failed {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let Some(tls) = tls else {
        // The peer closed or reset the connection mid-handshake.
        return Failed::new(
            Code::TLS_HANDSHAKE_FAILED,
            format!("TLS handshake with {host}: {e} (is it a TLS port?)"),
        );
    };
    let code = match tls {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                Code::TLS_NAME_MISMATCH
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => Code::TLS_EXPIRED,
            _ => Code::TLS_UNTRUSTED,
        },
        _ => Code::TLS_HANDSHAKE_FAILED,
    };
    let hint = match tls {
        rustls::Error::InvalidMessage(_) => " (the server may speak plain http: try http://)",
        // `openssl req -x509` makes such certificates by default; webpki never accepts them
        // as a server's own, trusted or not.
        rustls::Error::InvalidCertificate(CertificateError::Other(o))
            if format!("{o:?}").contains("CaUsedAsEndEntity") =>
        {
            " (the server presents a CA certificate, basicConstraints CA:TRUE, as its own: \
             issue it a server certificate from that CA instead)"
        }
        _ => "",
    };
    Failed::new(code, format!("TLS handshake with {host}: {tls}{hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(e: rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn certificate_errors_get_their_own_codes() {
        let untrusted = classify(
            "s3.example.com",
            &io(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        );
        assert_eq!(untrusted.0.code, Code::TLS_UNTRUSTED);
        assert!(
            untrusted.0.reason.contains("UnknownIssuer"),
            "{untrusted:?}"
        );
        let name = classify(
            "s3.example.com",
            &io(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            )),
        );
        assert_eq!(name.0.code, Code::TLS_NAME_MISMATCH);
        let expired = classify(
            "s3.example.com",
            &io(rustls::Error::InvalidCertificate(CertificateError::Expired)),
        );
        assert_eq!(expired.0.code, Code::TLS_EXPIRED);
        let reset = classify(
            "s3.example.com",
            &std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        );
        assert_eq!(reset.0.code, Code::TLS_HANDSHAKE_FAILED);
    }

    #[test]
    fn the_system_roots_given_to_the_sdk_as_pem_are_the_same_certificates() {
        let native = native_roots();
        let back: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&native.pem)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back, native.der);
        assert!(
            Arc::ptr_eq(&native, &native_roots()),
            "reused, not read again"
        );
    }

    #[test]
    fn dates_print_as_rfc3339() {
        assert_eq!(
            rfc3339(Duration::from_secs(1_800_000_000)),
            "2027-01-15T08:00:00Z"
        );
    }
}
