//! For the S3 tests: the real server (moto, started once per test process by
//! scripts/servers/s3.sh), a TLS-terminating proxy in front of it with a CA and certificates
//! made here, and endpoints that are not S3 or never answer.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::net::TcpListener;

pub struct Key {
    pub id: String,
    pub secret: String,
}

/// The running server and the keys its bootstrap made.
pub struct Server {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub addr: SocketAddr,
    /// Allowed s3:*.
    pub good: Key,
    /// Valid, but its policy denies s3:*.
    pub denied: Key,
}

/// Start the server (or reuse the running one) once per test process. A server that cannot
/// start fails the test with the script's output.
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
    SERVER
        .get_or_init(start)
        .as_ref()
        .unwrap_or_else(|e| panic!("the S3 test server did not start:\n{e}"))
}

fn start() -> Result<Server, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/servers/s3.sh");
    let out = std::process::Command::new(&script)
        .arg("up")
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    let said = format!(
        "{} up: {}\n--- stdout\n{}--- stderr\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(said);
    }
    let keys_file = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let text =
        std::fs::read_to_string(&keys_file).map_err(|e| format!("{keys_file}: {e}\n{said}"))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{e}\n{said}"))?;
    let key = |who: &str| Key {
        id: v[who]["id"].as_str().unwrap_or_default().to_owned(),
        secret: v[who]["secret"].as_str().unwrap_or_default().to_owned(),
    };
    let endpoint = v["endpoint"].as_str().unwrap_or_default().to_owned();
    let addr = endpoint
        .trim_start_matches("http://")
        .parse()
        .map_err(|e| format!("endpoint {endpoint:?}: {e}"))?;
    Ok(Server {
        endpoint,
        addr,
        good: key("good"),
        denied: key("denied"),
    })
}

/// A `[s3.NAME]` table.
pub fn source(name: &str, endpoint: &str, bucket: &str, key: &Key, extra: &str) -> String {
    format!(
        "[s3.{name}]\nendpoint = \"{endpoint}\"\nbucket = \"{bucket}\"\nregion = \"us-east-1\"\n\
         access_key_id = \"{}\"\naccess_key_secret = \"{}\"\n{extra}\n",
        key.id, key.secret
    )
}

/// A test CA.
pub struct Ca {
    pub pem: String,
    der: rustls_pki_types::CertificateDer<'static>,
    key_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA's own certificate as a server's (a "self-signed" certificate with CA:TRUE).
    pub fn as_server_cert(&self) -> ServerCert {
        ServerCert {
            der: self.der.clone(),
            key_der: self.key_der.clone(),
        }
    }

    /// A server certificate for `names` (IP addresses become IP SANs), valid for `days`.
    pub fn server_cert(&self, names: &[&str], days: i64) -> ServerCert {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(days);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        ServerCert {
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }
}

pub struct ServerCert {
    der: rustls_pki_types::CertificateDer<'static>,
    key_der: Vec<u8>,
}

/// A TLS-terminating proxy on 127.0.0.1 in front of `upstream`, serving `cert`. Runs on the
/// test's runtime until the test ends.
pub async fn tls_proxy(upstream: SocketAddr, cert: ServerCert) -> SocketAddr {
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.key_der.into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.der], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that rejects the certificate ends here: fine.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    addr
}

/// An HTTP server that is not S3: every request gets `status` and a small HTML page.
pub async fn web_server(status: u16) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(move || async move {
        (
            axum::http::StatusCode::from_u16(status).unwrap(),
            [("content-type", "text/html")],
            "<html><body><h1>It works!</h1></body></html>",
        )
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// A listener whose connections are accepted by the kernel but never answered.
pub async fn silent_listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

pub const SLACK: Duration = Duration::from_secs(3);
