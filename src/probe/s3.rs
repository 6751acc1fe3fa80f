//! `[s3.NAME]` (HBR `S3`): a bucket on S3-compatible object storage (AWS, OSS, MinIO, Ceph RGW).
//!
//! Layers: `resolve` and `connect` (probe::net), `handshake` (TLS checked here with rustls, see
//! [`tls`]), `auth` (`HeadBucket`; the server's `Date` against the local clock), `access`
//! (`ListObjectsV2 max-keys=1` under `prefix`). The S3 calls go through aws-sdk-s3 with its
//! retries off, each under the probe's deadline.
//!
//! A HEAD answer has no body, so a failed `HeadBucket` is never named from its status alone: the
//! same question is asked again with `ListObjectsV2`, whose error body carries the S3 code
//! (`SignatureDoesNotMatch`, `InvalidAccessKeyId`, `AccessDenied`, `NoSuchBucket`, …). An answer
//! that carries no S3 code at all is `HTTP_UNEXPECTED`: something other than S3 listens there.
//!
//! The keys reach only the SDK's credentials; reasons and facts never quote a key, a signature
//! or a request header. The SDK's calls run with tracing switched off: at debug and trace level
//! it prints its credentials' `Debug`, which redacts the secret but not the access key id, and
//! the agent treats both as secrets.

mod tls;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextRef;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, ConfigBag, Credentials, Intercept, Region, RuntimeComponents,
    StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{DateTime, DateTimeFormat};
use aws_smithy_http_client::tls::rustls_provider::CryptoMode;
use aws_smithy_http_client::tls::{Provider, TlsContext, TrustStore};
use tracing::instrument::WithSubscriber;
use tracing::subscriber::NoSubscriber;

use super::{Code, Failed, Layer, Recorder, net};
use crate::config::S3Spec;

/// How far the server's clock may be from ours: SigV4 rejects requests dated further off.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);

pub async fn probe(spec: &S3Spec, rec: &mut Recorder) -> Result<(), Failed> {
    let https = spec.endpoint.scheme() == "https";
    let host = request_host(spec);
    let port = spec.endpoint.port_or_known_default().unwrap_or(443);

    rec.start(Layer::Resolve);
    let addrs = net::resolve(rec, &host, port).await?;
    if is_ip(&host) {
        rec.pass(format!("{host} is an IP address: no lookup"));
    } else {
        let shown: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
        rec.pass(format!("{host} is {}", shown.join(", ")));
    }

    rec.start(Layer::Connect);
    let tcp = net::connect(rec, &addrs).await?;
    let peer = tcp
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| format!("{host}:{port}"));
    rec.pass(format!("TCP connected to {peer}"));

    rec.start(Layer::Handshake);
    let mut roots_pem = Vec::new();
    if https {
        let trust = tls::load_trust(spec.ca_file.as_deref()).await?;
        roots_pem = trust.pem.clone();
        let session = tls::handshake(rec, tcp, &host, &trust).await?;
        rec.fact("tls_version", session.version.clone());
        match &session.not_after {
            Some(at) => {
                rec.fact("tls_cert_not_after", at.clone());
                rec.pass(format!(
                    "{}, certificate for {host} trusted, valid until {at}",
                    session.version
                ));
            }
            None => rec.pass(format!(
                "{}, certificate for {host} trusted",
                session.version
            )),
        }
    } else {
        drop(tcp);
        rec.pass("plain http: no TLS to check");
    }

    rec.start(Layer::Auth);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let client = client(spec, roots_pem, seen.clone())?;
    let head = rec
        .within(
            &format!("HeadBucket {}", spec.bucket),
            client
                .head_bucket()
                .bucket(&spec.bucket)
                .send()
                .with_subscriber(NoSubscriber::default()),
        )
        .await?;
    let server = seen.lock().expect("not poisoned").clone();
    if let Some(s) = &server.server {
        rec.fact("server", s.clone());
    }
    check_clock(rec, server.date.as_deref(), SystemTime::now())?;
    match head {
        Ok(out) => {
            if let Some(region) = out.bucket_region() {
                rec.fact("bucket_region", region);
                if region != spec.region {
                    return Err(Failed::new(
                        Code::S3_WRONG_REGION,
                        format!(
                            "the server says bucket {} is in region {region}; the config says {}",
                            spec.bucket, spec.region
                        ),
                    ));
                }
            }
            rec.pass(format!("HeadBucket {}: key accepted", spec.bucket));
        }
        Err(head_err) => {
            // No body to read the code from: ask again with a GET.
            let list = list(rec, &client, spec).await?;
            return Err(match list {
                Err(e) => classify(spec, "ListObjectsV2", &e),
                Ok(_) => Failed::new(
                    Code::S3_REQUEST_FAILED,
                    format!(
                        "HeadBucket {} failed ({}) although ListObjectsV2 succeeded",
                        spec.bucket,
                        head_status(&head_err)
                    ),
                ),
            });
        }
    }

    rec.start(Layer::Access);
    let listed = list(rec, &client, spec)
        .await?
        .map_err(|e| classify(spec, "ListObjectsV2", &e))?;
    let under = match &spec.prefix {
        Some(p) => format!("under prefix {p:?}"),
        None => "in the bucket".to_owned(),
    };
    if listed.contents().is_empty() {
        rec.warn(
            Code::S3_PREFIX_EMPTY,
            format!(
                "no object {under} of bucket {}: HBR would back up nothing",
                spec.bucket
            ),
        );
        rec.pass(format!("ListObjectsV2: no object {under}"));
    } else {
        rec.pass(format!("ListObjectsV2: listed an object {under}"));
    }
    Ok(())
}

/// The host the S3 client will talk to: the endpoint's, or with virtual-host style
/// `BUCKET.HOST`, as the SDK's endpoint rules build it (they keep path style for IP addresses
/// and, over https, for bucket names with dots, which a wildcard certificate cannot cover).
fn request_host(spec: &S3Spec) -> String {
    let host = spec.endpoint.host_str().unwrap_or_default();
    let https = spec.endpoint.scheme() == "https";
    if spec.path_style || is_ip(host) || (https && spec.bucket.contains('.')) {
        host.to_owned()
    } else {
        format!("{}.{host}", spec.bucket)
    }
}

fn is_ip(host: &str) -> bool {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok()
}

type ListResult = Result<
    aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output,
    SdkError<aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Error, HttpResponse>,
>;

async fn list(
    rec: &Recorder,
    client: &aws_sdk_s3::Client,
    spec: &S3Spec,
) -> Result<ListResult, Failed> {
    rec.within(
        &format!("ListObjectsV2 {}", spec.bucket),
        client
            .list_objects_v2()
            .bucket(&spec.bucket)
            .max_keys(1)
            .set_prefix(spec.prefix.clone())
            .send()
            .with_subscriber(NoSubscriber::default()),
    )
    .await
}

fn client(
    spec: &S3Spec,
    roots_pem: Vec<u8>,
    seen: Arc<Mutex<Seen>>,
) -> Result<aws_sdk_s3::Client, Failed> {
    // The roots the handshake layer checked against (empty for plain http).
    let mut trust = TrustStore::empty();
    if !roots_pem.is_empty() {
        trust = trust.with_pem_certificate(roots_pem);
    }
    let tls = TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|e| {
            Failed::new(
                Code::TLS_CA_FILE_INVALID,
                format!("the S3 client rejects the trust store: {e}"),
            )
        })?;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .tls_context(tls)
        .build_https();
    let credentials = Credentials::new(
        spec.access_key_id.expose(),
        spec.access_key_secret.expose(),
        None,
        None,
        "hbr-source-agent config",
    );
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(spec.endpoint.as_str().trim_end_matches('/'))
        .region(Region::new(spec.region.clone()))
        .credentials_provider(credentials)
        .force_path_style(spec.path_style)
        .retry_config(RetryConfig::disabled())
        .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
        .http_client(http)
        .interceptor(Capture(seen))
        .build();
    Ok(aws_sdk_s3::Client::from_conf(config))
}

/// Response headers the probe reads whatever the outcome (the SDK's outputs drop them).
#[derive(Debug, Default, Clone)]
struct Seen {
    date: Option<String>,
    server: Option<String>,
}

#[derive(Debug)]
struct Capture(Arc<Mutex<Seen>>);

impl Intercept for Capture {
    fn name(&self) -> &'static str {
        "hbr-source-agent response headers"
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        let headers = context.response().headers();
        let mut seen = self.0.lock().expect("not poisoned");
        seen.date = headers.get("date").map(str::to_owned);
        seen.server = headers.get("server").map(str::to_owned);
        Ok(())
    }
}

/// Fail with `CLOCK_SKEW` when the server's `Date` is further from `now` than SigV4 allows.
fn check_clock(rec: &mut Recorder, date: Option<&str>, now: SystemTime) -> Result<(), Failed> {
    let Some(date) = date else { return Ok(()) };
    let Ok(server) = DateTime::from_str(date, DateTimeFormat::HttpDate)
        .map_err(|_| ())
        .and_then(|d| SystemTime::try_from(d).map_err(|_| ()))
    else {
        return Ok(());
    };
    let (ahead, by) = match server.duration_since(now) {
        Ok(d) => (true, d),
        Err(e) => (false, e.duration()),
    };
    let by = Duration::from_secs(by.as_secs());
    let skew = format!(
        "{}{}",
        if ahead { "+" } else { "-" },
        humantime::format_duration(by)
    );
    rec.fact("clock_skew", skew.clone());
    if by > MAX_CLOCK_SKEW {
        return Err(Failed::new(
            Code::CLOCK_SKEW,
            format!(
                "the server's clock ({date}) is {} {} this host's; SigV4 allows {}",
                humantime::format_duration(by),
                if ahead { "ahead of" } else { "behind" },
                humantime::format_duration(MAX_CLOCK_SKEW)
            ),
        ));
    }
    Ok(())
}

fn head_status<E: std::error::Error + 'static>(err: &SdkError<E, HttpResponse>) -> String {
    match err.raw_response() {
        Some(raw) => format!("HTTP {}", raw.status().as_u16()),
        None => DisplayErrorContext(err).to_string(),
    }
}

/// Name a failed S3 call by the S3 error code in its body; no code at all is `HTTP_UNEXPECTED`.
fn classify<E>(spec: &S3Spec, op: &str, err: &SdkError<E, HttpResponse>) -> Failed
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let raw = match err {
        SdkError::ServiceError(ctx) => ctx.raw(),
        SdkError::ResponseError(ctx) => ctx.raw(),
        other => {
            return Failed::new(
                Code::S3_REQUEST_FAILED,
                format!("{op}: {}", DisplayErrorContext(other)),
            );
        }
    };
    let status = raw.status().as_u16();
    let header = |name: &str| raw.headers().get(name).map(str::to_owned);
    let body = raw.body().bytes().unwrap_or_default();
    let text = String::from_utf8_lossy(body);
    let code = xml_element(&text, "Code");
    let message = xml_element(&text, "Message").unwrap_or_default();
    let said = |code: &str| {
        if message.is_empty() {
            format!("{op}: HTTP {status} {code}")
        } else {
            format!("{op}: HTTP {status} {code}: {message}")
        }
    };
    let Some(code) = code else {
        return Failed::new(
            Code::HTTP_UNEXPECTED,
            unexpected(op, status, &header, &text),
        );
    };
    let bucket = &spec.bucket;
    match code.as_str() {
        "InvalidAccessKeyId" | "InvalidToken" | "ExpiredToken" => {
            Failed::new(Code::S3_INVALID_ACCESS_KEY, said(&code))
        }
        "SignatureDoesNotMatch" => Failed::new(Code::S3_SIGNATURE_MISMATCH, said(&code)),
        "AccessDenied" | "AllAccessDisabled" | "AccountProblem" => Failed::new(
            Code::S3_ACCESS_DENIED,
            format!("{} (bucket {bucket})", said(&code)),
        ),
        "NoSuchBucket" => Failed::new(Code::S3_BUCKET_NOT_FOUND, said(&code)),
        "PermanentRedirect"
        | "TemporaryRedirect"
        | "Redirect"
        | "AuthorizationHeaderMalformed"
        | "IllegalLocationConstraintException" => {
            let named = header("x-amz-bucket-region").or_else(|| xml_element(&text, "Region"));
            let hint = match named {
                Some(r) => format!("; the server names region {r}"),
                None => String::new(),
            };
            Failed::new(
                Code::S3_WRONG_REGION,
                format!("{}{hint} (the config says {})", said(&code), spec.region),
            )
        }
        "RequestTimeTooSkewed" => Failed::new(Code::CLOCK_SKEW, said(&code)),
        _ => Failed::new(Code::S3_REQUEST_FAILED, said(&code)),
    }
}

/// What answered, for `HTTP_UNEXPECTED`: status, content type, server and the body's start.
fn unexpected(
    op: &str,
    status: u16,
    header: &dyn Fn(&str) -> Option<String>,
    text: &str,
) -> String {
    let mut out = format!("{op}: HTTP {status}");
    if let Some(ct) = header("content-type") {
        out.push_str(&format!(", Content-Type {ct}"));
    }
    if let Some(s) = header("server") {
        out.push_str(&format!(", Server {s}"));
    }
    let start: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(120)
        .collect();
    let start = start.split_whitespace().collect::<Vec<_>>().join(" ");
    if start.is_empty() {
        out.push_str(", no body");
    } else {
        out.push_str(&format!(", body {start:?}"));
    }
    out.push_str(": no S3 error code, so this is probably not an S3 endpoint");
    out
}

/// The text of the first `<name>…</name>` in an S3 error document.
fn xml_element(text: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = text.find(&open)? + open.len();
    let len = text[start..].find(&close)?;
    let value = text[start..start + len].trim();
    (!value.is_empty() && value.len() <= 1024).then(|| unescape(value))
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::{Secret, SecretOrigin};

    fn rec() -> Recorder {
        Recorder::new(Duration::from_secs(1))
    }

    #[test]
    fn the_clock_may_be_off_by_less_than_sigv4_allows() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut r = rec();
        // 2027-01-15T08:00:00Z, 14 minutes later
        check_clock(&mut r, Some("Fri, 15 Jan 2027 08:14:00 GMT"), now).unwrap();
        assert_eq!(r.facts["clock_skew"], "+14m");
        let err = check_clock(&mut r, Some("Fri, 15 Jan 2027 07:40:00 GMT"), now).unwrap_err();
        assert_eq!(err.0.code, Code::CLOCK_SKEW);
        assert!(err.0.reason.contains("20m behind"), "{err:?}");
        // No Date, or one that does not parse: nothing to compare.
        check_clock(&mut r, None, now).unwrap();
        check_clock(&mut r, Some("yesterday"), now).unwrap();
    }

    #[test]
    fn virtual_host_style_probes_the_bucket_host() {
        let spec = |endpoint: &str, bucket: &str, path_style: bool| S3Spec {
            endpoint: endpoint.parse().unwrap(),
            bucket: bucket.into(),
            region: "us-east-1".into(),
            prefix: None,
            path_style,
            ca_file: None,
            access_key_id: Secret::new("id", SecretOrigin::Literal),
            access_key_secret: Secret::new("secret", SecretOrigin::Literal),
        };
        let host = |e, b, p| request_host(&spec(e, b, p));
        assert_eq!(
            host("https://s3.example.com", "backups", true),
            "s3.example.com"
        );
        assert_eq!(
            host("https://oss-cn-hangzhou.aliyuncs.com", "backups", false),
            "backups.oss-cn-hangzhou.aliyuncs.com"
        );
        assert_eq!(host("https://10.0.0.5:9000", "backups", false), "10.0.0.5");
        assert_eq!(host("https://[::1]:9000", "backups", false), "[::1]");
        assert_eq!(
            host("https://s3.example.com", "my.backups", false),
            "s3.example.com"
        );
        assert_eq!(
            host("http://s3.example.com", "my.backups", false),
            "my.backups.s3.example.com"
        );
    }

    #[test]
    fn error_documents_are_read_for_code_and_message() {
        let doc = "<?xml version=\"1.0\"?><Error><Code>AuthorizationHeaderMalformed</Code>\
                   <Message>the region &apos;us-east-1&apos; is wrong; expecting &apos;eu-west-1&apos;</Message>\
                   <Region>eu-west-1</Region></Error>";
        assert_eq!(
            xml_element(doc, "Code").as_deref(),
            Some("AuthorizationHeaderMalformed")
        );
        assert_eq!(
            xml_element(doc, "Message").as_deref(),
            Some("the region 'us-east-1' is wrong; expecting 'eu-west-1'")
        );
        assert_eq!(xml_element(doc, "Region").as_deref(), Some("eu-west-1"));
        assert_eq!(xml_element("<html>It works</html>", "Code"), None);
        assert_eq!(xml_element("<Code></Code>", "Code"), None);
    }
}
