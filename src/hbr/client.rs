//! The HBR RPC client: builds and signs each request (V3 by default, V2 on request), sends it
//! with a per-attempt deadline, retries what may be retried, and turns HBR's answer into a
//! value or an [`HbrError`] that steers the caller. Wire form: `POST {endpoint}/`, every
//! parameter in the query string, empty body — the form the official SDK sends.
//!
//! Never logs a URL with its query, a header value, or a parameter value: the query holds the
//! Credential parameter (and, for V2, the STS token and signature).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use serde_json::Value;
use time::OffsetDateTime;
use url::Url;

use crate::config::model::{ControlPlane, SignatureVersion};
use crate::hbr::credentials::{Credentials, CredentialsProvider};
use crate::hbr::error::HbrError;
use crate::hbr::sign;
use crate::hbr::{API_VERSION, DataSourceRequest, RemoteDataSource};

const USER_AGENT: &str = concat!("hbr-source-agent/", env!("CARGO_PKG_VERSION"));
/// HBR's largest page for DescribeDataSources.
pub const DESCRIBE_PAGE_SIZE: usize = 99;
/// A server that keeps sending full pages is broken; stop there rather than loop for ever.
const MAX_DESCRIBE_PAGES: usize = 1000;
const DESCRIBE_DATA_SOURCES: &str = "DescribeDataSources";
/// Name and id lookups in flight at once (one pass's own HBR calls, not the fleet's).
const LOOKUP_CONCURRENCY: usize = 4;

/// How often and how long to retry throttling, outages and network errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// Backoff before the 2nd attempt; doubles each time (before jitter).
    pub base: Duration,
    /// Longest wait between attempts, a server's `Retry-After` included.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// Wait after failed attempt `attempt` (1-based): exponential backoff with full jitter,
    /// at least what the server asked for, never more than `cap`.
    pub fn wait(&self, attempt: u32, server_wait: Option<Duration>) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.cap);
        let jitter = Duration::from_nanos(rand::random_range(0..=exp.as_nanos() as u64));
        jitter.max(server_wait.unwrap_or_default()).min(self.cap)
    }
}

/// A request ready to send: `POST url` with these headers and an empty body. Holds secrets
/// (signature, STS token, the Credential parameter): its `Debug` shows names only.
pub struct SignedRequest {
    pub method: &'static str,
    /// Endpoint with path `/` and the encoded query.
    pub url: Url,
    pub headers: Vec<(String, String)>,
    /// The query parameters, unencoded (V2: `Signature` included).
    pub query: Vec<(String, String)>,
}

impl std::fmt::Debug for SignedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedRequest")
            .field("method", &self.method)
            .field("host", &self.url.host_str())
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field(
                "query",
                &self.query.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// `x-acs-date` / `Timestamp` form: UTC `%Y-%m-%dT%H:%M:%SZ`.
pub fn format_timestamp(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A fresh nonce: 16 random bytes in hex (the SDK sends 32 hex digits too).
pub fn new_nonce() -> String {
    let mut b = [0u8; 16];
    rand::fill(&mut b);
    hex::encode(b)
}

/// The `Host` value as sent: host, and the port when it is not the scheme's default.
fn host_header(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}

/// Builds and signs one request exactly as it goes on the wire. Pure: the nonce and time are
/// inputs, so tests (and the official SDK's signer, in `tests/sdk_signature.rs`) can check it.
/// `params` are the action's parameters in wire form (`Path.1`, JSON text, the Credential
/// value exposed); system parameters win over a caller's parameter of the same name.
pub fn build_signed_request(
    endpoint: &Url,
    action: &str,
    params: &[(String, String)],
    credentials: &Credentials,
    nonce: &str,
    timestamp: OffsetDateTime,
    version: SignatureVersion,
) -> SignedRequest {
    let mut url = endpoint.clone();
    url.set_path("/");
    url.set_fragment(None);
    let host = host_header(&url);
    let date = format_timestamp(timestamp);
    let akid = credentials.access_key_id.expose();
    let secret = credentials.access_key_secret.expose();
    let token = credentials
        .security_token
        .as_ref()
        .map(|t| t.expose())
        .filter(|t| !t.is_empty());
    let mut query: BTreeMap<String, String> = params.iter().cloned().collect();
    let s = |v: &str| v.to_string();

    let mut headers: Vec<(String, String)> = vec![
        (s("host"), host),
        (s("x-acs-version"), s(API_VERSION)),
        (s("x-acs-action"), s(action)),
        (s("user-agent"), s(USER_AGENT)),
    ];
    let query: Vec<(String, String)> = match version {
        SignatureVersion::V3 => {
            headers.extend([
                (s("x-acs-date"), date),
                (s("x-acs-signature-nonce"), s(nonce)),
                (s("accept"), s("application/json")),
                (s("x-acs-content-sha256"), s(sign::EMPTY_BODY_SHA256)),
            ]);
            if let Some(token) = token {
                headers.push((s("x-acs-accesskey-id"), s(akid)));
                headers.push((s("x-acs-security-token"), s(token)));
            }
            let query: Vec<_> = query.into_iter().collect();
            let (canonical, signed) =
                sign::v3_canonical_request("POST", "/", &query, &headers, sign::EMPTY_BODY_SHA256);
            let signature = sign::v3_signature(secret, &canonical);
            headers.push((
                s("authorization"),
                sign::v3_authorization(akid, &signed, &signature),
            ));
            query
        }
        SignatureVersion::V2 => {
            query.insert(s("Action"), s(action));
            // The SDK sends lower-case `json`; HBR accepts either, and matching the SDK keeps
            // our signature byte-identical to its own.
            query.insert(s("Format"), s("json"));
            query.insert(s("Version"), s(API_VERSION));
            query.insert(s("Timestamp"), date);
            query.insert(s("SignatureNonce"), s(nonce));
            match token {
                Some(t) => query.insert(s("SecurityToken"), s(t)),
                None => query.remove("SecurityToken"),
            };
            query.insert(s("SignatureMethod"), s("HMAC-SHA1"));
            query.insert(s("SignatureVersion"), s("1.0"));
            query.insert(s("AccessKeyId"), s(akid));
            query.remove("Signature");
            let mut query: Vec<_> = query.into_iter().collect();
            let sts = sign::v2_string_to_sign("POST", &query);
            query.push((s("Signature"), sign::v2_signature(secret, &sts)));
            query
        }
    };
    let encoded = sign::canonical_query(&query);
    url.set_query((!encoded.is_empty()).then_some(encoded.as_str()));
    SignedRequest {
        method: "POST",
        url,
        headers,
        query,
    }
}

/// Result of AddDataSource.
enum Listing {
    Complete(Vec<RemoteDataSource>),
    /// `TotalCount` changed between pages.
    Shifted {
        first: u64,
        later: u64,
    },
}

/// A backup client as DescribeBackupClients returns it (the fields the fleet mode reads).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct BackupClient {
    pub client_id: String,
    /// `ACTIVATED` when running and registered; `UNKNOWN` when disconnected, …
    pub status: String,
    /// UNIX seconds.
    pub last_heart_beat_time: Option<i64>,
    pub hostname: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    pub data_source_id: String,
    pub request_id: String,
}

/// The HBR client. Cheap to share by reference; one connection pool.
pub struct HbrClient {
    http: reqwest::Client,
    endpoint: Url,
    signature: SignatureVersion,
    credentials: Arc<CredentialsProvider>,
    timeout: Duration,
    retry: RetryPolicy,
    /// Until when every call waits after a `Throttling*` answer to any of them: the writes a
    /// pass has in flight (`write_concurrency`) back off together.
    throttled_until: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl std::fmt::Debug for HbrClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HbrClient")
            .field("endpoint", &self.endpoint.as_str())
            .field("signature", &self.signature)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

enum RetryClass {
    Throttled,
    Unavailable,
}

/// What one attempt came to.
enum Outcome {
    Done(Value, String),
    Retry {
        err: HbrError,
        class: RetryClass,
        server_wait: Option<Duration>,
    },
    Final(HbrError),
}

impl HbrClient {
    /// A client for the control plane, with its static credentials or the default chain.
    pub fn new(cp: &ControlPlane) -> Result<HbrClient, HbrError> {
        Self::with_provider(cp, CredentialsProvider::from_control_plane(cp))
    }

    /// A client with the given credentials provider (tests, embedding).
    pub fn with_provider(
        cp: &ControlPlane,
        credentials: CredentialsProvider,
    ) -> Result<HbrClient, HbrError> {
        crate::hbr::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(cp.timeout)
            // Signed requests must not be re-sent elsewhere by a redirect.
            .redirect(reqwest::redirect::Policy::none());
        let loopback = match cp.endpoint.host() {
            Some(url::Host::Ipv4(a)) => a.is_loopback(),
            Some(url::Host::Ipv6(a)) => a.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        };
        if loopback {
            builder = builder.no_proxy();
        }
        let http = builder
            .build()
            .map_err(|e| HbrError::transport("setup", e))?;
        Ok(HbrClient {
            http,
            endpoint: cp.endpoint.clone(),
            signature: cp.signature,
            credentials: Arc::new(credentials),
            timeout: cp.timeout,
            retry: RetryPolicy::default(),
            throttled_until: std::sync::Mutex::new(None),
        })
    }

    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Every data source of the client group, all pages. HBR pages by offset, so a source
    /// added or removed elsewhere between two pages shifts the rest and one could be missed —
    /// and a missed name would be added twice. So the listing starts over when the
    /// `TotalCount` changes under it, and items are deduplicated by id.
    pub async fn describe_data_sources(
        &self,
        cluster_id: &str,
    ) -> Result<Vec<RemoteDataSource>, HbrError> {
        self.describe_listing(&[("ClusterId", cluster_id)], None)
            .await
    }

    /// The data sources of the group that matter to a pass that may write `names` and must
    /// check `ids` (orphans): at least every data source named exactly one of `names` (all
    /// of them: a duplicate must be seen) or with one of `ids`; possibly more. Nothing is
    /// called when both are empty. Otherwise the first page of the full listing says how
    /// many pages there are; when fewer lookups than the remaining pages are needed, each
    /// name is looked up with HBR's `DataSourceName` filter (documented as a filter, not an
    /// exact match: the answer is compared exactly here, all its pages read) and each id
    /// with `DataSourceId`; else the listing goes on.
    pub async fn describe_data_sources_for(
        &self,
        cluster_id: &str,
        names: &[String],
        ids: &[String],
    ) -> Result<Vec<RemoteDataSource>, HbrError> {
        if names.is_empty() && ids.is_empty() {
            return Ok(Vec::new());
        }
        let first = self
            .describe_page(
                DESCRIBE_DATA_SOURCES,
                &[("ClusterId", cluster_id)],
                1,
                ("DataSources", "DataSource"),
            )
            .await?;
        let pages = match first.total {
            Some(t) if !first.is_last(1) => {
                usize::try_from(t.div_ceil(first.page_size as u64)).unwrap_or(usize::MAX)
            }
            // One page holds it all, or HBR gives no total: go on listing.
            _ => 0,
        };
        if pages == 0 || names.len() + ids.len() >= pages - 1 {
            return self
                .describe_listing(&[("ClusterId", cluster_id)], Some(first))
                .await;
        }
        // A few lookups at a time: bounded like every other fan-out of the agent. (Futures
        // built up front: a closure inside the stream would make the pass's future not Send.)
        let lookups: Vec<_> = names
            .iter()
            .map(|n| self.lookup(cluster_id, "DataSourceName", n))
            .chain(
                ids.iter()
                    .map(|i| self.lookup(cluster_id, "DataSourceId", i)),
            )
            .collect();
        let found: Vec<Vec<RemoteDataSource>> = futures::stream::iter(lookups)
            .buffer_unordered(LOOKUP_CONCURRENCY)
            .try_collect()
            .await?;
        let mut all: Vec<RemoteDataSource> = Vec::new();
        for d in found.into_iter().flatten() {
            if !all.iter().any(|a| a.data_source_id == d.data_source_id) {
                all.push(d);
            }
        }
        Ok(all)
    }

    /// The data sources whose `key` (`DataSourceName` or `DataSourceId`) is exactly `value`:
    /// HBR's filter, all pages, compared exactly here.
    async fn lookup(
        &self,
        cluster_id: &str,
        key: &'static str,
        value: &str,
    ) -> Result<Vec<RemoteDataSource>, HbrError> {
        let hits = self
            .describe_listing(&[("ClusterId", cluster_id), (key, value)], None)
            .await?;
        Ok(hits
            .into_iter()
            .filter(|d| match key {
                "DataSourceName" => d.data_source_name == value,
                _ => d.data_source_id == value,
            })
            .collect())
    }

    /// A DescribeDataSources listing with `base` filters, all pages, started over when
    /// `TotalCount` shifts; `first` is its page 1 if already read.
    async fn describe_listing(
        &self,
        base: &[(&str, &str)],
        mut first: Option<Page>,
    ) -> Result<Vec<RemoteDataSource>, HbrError> {
        const ATTEMPTS: usize = 3;
        let mut last = None;
        for _ in 0..ATTEMPTS {
            match self.describe_pages(base, first.take()).await? {
                Listing::Complete(all) => return Ok(all),
                Listing::Shifted { first, later } => {
                    tracing::debug!(
                        first,
                        later,
                        "data sources changed while paging; listing again"
                    );
                    last = Some((first, later));
                }
            }
        }
        let (first, later) = last.unwrap_or_default();
        Err(HbrError::Decode {
            action: DESCRIBE_DATA_SOURCES.into(),
            http_status: 200,
            request_id: String::new(),
            message: format!(
                "the data sources kept changing while being listed (TotalCount {first}, then \
                 {later}, {ATTEMPTS} times); try again"
            ),
        })
    }

    async fn describe_pages(
        &self,
        base: &[(&str, &str)],
        mut first: Option<Page>,
    ) -> Result<Listing, HbrError> {
        let mut all: Vec<RemoteDataSource> = Vec::new();
        let mut first_total = None;
        for number in 1..=MAX_DESCRIBE_PAGES {
            let page = match first.take() {
                Some(p) if number == 1 => p,
                _ => {
                    self.describe_page(
                        DESCRIBE_DATA_SOURCES,
                        base,
                        number,
                        ("DataSources", "DataSource"),
                    )
                    .await?
                }
            };
            match (first_total, page.total) {
                (None, t) => first_total = Some(t),
                (Some(Some(first)), Some(later)) if first != later => {
                    return Ok(Listing::Shifted { first, later });
                }
                _ => {}
            }
            for item in &page.items {
                let ds: RemoteDataSource = serde_json::from_value(item.clone())
                    .map_err(|e| page.decode(format!("a data source: {e}")))?;
                if !all.iter().any(|d| d.data_source_id == ds.data_source_id) {
                    all.push(ds);
                }
            }
            if page.is_last(number) {
                return Ok(Listing::Complete(all));
            }
        }
        Err(paging_did_not_end(DESCRIBE_DATA_SOURCES))
    }

    /// The local backup clients (`ClientType=LOCAL_CLIENT`) of a client group, all pages: the
    /// membership the fleet mode hashes sources over. Items are deduplicated by ClientId, as
    /// offset paging can repeat one when the list changes underneath.
    pub async fn describe_backup_clients(
        &self,
        cluster_id: &str,
    ) -> Result<Vec<BackupClient>, HbrError> {
        const ACTION: &str = "DescribeBackupClients";
        let base = [("ClientType", "LOCAL_CLIENT"), ("ClusterId", cluster_id)];
        let mut all: Vec<BackupClient> = Vec::new();
        for number in 1..=MAX_DESCRIBE_PAGES {
            let page = self
                .describe_page(ACTION, &base, number, ("Clients", "Client"))
                .await?;
            for item in &page.items {
                let c: BackupClient = serde_json::from_value(item.clone())
                    .map_err(|e| page.decode(format!("a backup client: {e}")))?;
                if !all.iter().any(|d| d.client_id == c.client_id) {
                    all.push(c);
                }
            }
            if page.is_last(number) {
                return Ok(all);
            }
        }
        Err(paging_did_not_end(ACTION))
    }

    /// Page `number` of a paged Describe action: `base` parameters plus PageNumber/PageSize;
    /// the items under `list` (a JSON array, or HBR's `{"<item>": [...]}` wrapping).
    async fn describe_page(
        &self,
        action: &'static str,
        base: &[(&str, &str)],
        number: usize,
        (list, item): (&str, &str),
    ) -> Result<Page, HbrError> {
        let mut params: Vec<(String, String)> = base
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        params.push(("PageNumber".into(), number.to_string()));
        params.push(("PageSize".into(), DESCRIBE_PAGE_SIZE.to_string()));
        let (body, request_id) = self.execute(action, &params, true).await?;
        let mut page = Page {
            action,
            request_id,
            items: Vec::new(),
            total: body.get("TotalCount").and_then(as_u64),
            // The server may cap the page size below what was asked; its echo says.
            page_size: body
                .get("PageSize")
                .and_then(as_u64)
                .map_or(DESCRIBE_PAGE_SIZE, |p| (p as usize).min(DESCRIBE_PAGE_SIZE))
                .max(1),
        };
        page.items = match body.get(list) {
            Some(Value::Array(a)) => a.clone(),
            Some(Value::Object(o)) => match o.get(item) {
                Some(Value::Array(a)) => a.clone(),
                _ => Vec::new(),
            },
            None | Some(Value::Null) => Vec::new(),
            Some(_) => return Err(page.decode(format!("{list} is not a list"))),
        };
        Ok(page)
    }

    /// Registers a data source. Not idempotent: see [`HbrError::OutcomeUnknown`].
    pub async fn add_data_source(&self, req: &DataSourceRequest) -> Result<Added, HbrError> {
        const ACTION: &str = "AddDataSource";
        let params = wire_params(req, None);
        let (body, request_id) = self.execute(ACTION, &params, false).await?;
        match body.get("DataSourceId").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => Ok(Added {
                data_source_id: id.to_string(),
                request_id,
            }),
            // It worked, but which id it got is unknown: the caller must describe.
            _ => Err(HbrError::OutcomeUnknown {
                action: ACTION.into(),
                source: Box::new(HbrError::Decode {
                    action: ACTION.into(),
                    http_status: 200,
                    request_id,
                    message: "success without a DataSourceId".into(),
                }),
            }),
        }
    }

    /// Updates a data source in place; returns the RequestId.
    pub async fn update_data_source(
        &self,
        data_source_id: &str,
        req: &DataSourceRequest,
    ) -> Result<String, HbrError> {
        let params = wire_params(req, Some(data_source_id));
        let (_, request_id) = self.execute("UpdateDataSource", &params, true).await?;
        Ok(request_id)
    }

    async fn execute(
        &self,
        action: &str,
        params: &[(String, String)],
        idempotent: bool,
    ) -> Result<(Value, String), HbrError> {
        let max = self.retry.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            self.wait_out_throttling().await;
            match self.attempt(action, params, idempotent, attempt).await {
                Outcome::Done(v, request_id) => return Ok((v, request_id)),
                Outcome::Final(e) => return Err(e),
                Outcome::Retry {
                    err,
                    class,
                    server_wait,
                } => {
                    if attempt >= max {
                        let (action, last) = (action.to_string(), Box::new(err));
                        return Err(match class {
                            RetryClass::Throttled => HbrError::Throttled {
                                action,
                                attempts: attempt,
                                last,
                            },
                            RetryClass::Unavailable => HbrError::Unavailable {
                                action,
                                attempts: attempt,
                                last,
                            },
                        });
                    }
                    let wait = self.retry.wait(attempt, server_wait);
                    if matches!(class, RetryClass::Throttled) {
                        self.throttle_all(wait);
                    }
                    tracing::warn!(
                        action,
                        attempt,
                        wait_ms = wait.as_millis() as u64,
                        error = %err,
                        "HBR request failed; retrying"
                    );
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    /// Wait while a `Throttling*` answer to any call asks every call to hold off.
    async fn wait_out_throttling(&self) {
        loop {
            let until = *self
                .throttled_until
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match until {
                Some(t) if t > tokio::time::Instant::now() => tokio::time::sleep_until(t).await,
                _ => return,
            }
        }
    }

    /// Make every call wait `wait` from now (or longer, if another throttling said so).
    fn throttle_all(&self, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        let mut t = self
            .throttled_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if t.is_none_or(|t| t < until) {
            *t = Some(until);
        }
    }

    async fn attempt(
        &self,
        action: &str,
        params: &[(String, String)],
        idempotent: bool,
        attempt: u32,
    ) -> Outcome {
        let credentials = match self.credentials.credentials().await {
            Ok(c) => c,
            Err(e) => return Outcome::Final(HbrError::Credentials(e)),
        };
        // A fresh nonce and time each attempt: HBR rejects a replayed nonce.
        let signed = build_signed_request(
            &self.endpoint,
            action,
            params,
            &credentials,
            &new_nonce(),
            OffsetDateTime::now_utc(),
            self.signature,
        );
        let mut rb = self.http.post(signed.url).timeout(self.timeout);
        for (k, v) in &signed.headers {
            rb = rb.header(k.as_str(), v.as_str());
        }
        let started = Instant::now();
        let transport = |e: reqwest::Error, may_have_been_sent: bool| {
            let builder = e.is_builder();
            let err = HbrError::transport(action, e);
            let what = match &err {
                HbrError::Transport { timeout: true, .. } => "Timeout",
                _ => "Transport",
            };
            crate::metrics::global().hbr_request(action, what, started.elapsed());
            tracing::debug!(action, attempt, elapsed_ms = started.elapsed().as_millis() as u64, error = %err, "HBR attempt");
            if builder {
                Outcome::Final(err)
            } else if !idempotent && may_have_been_sent {
                Outcome::Final(HbrError::OutcomeUnknown {
                    action: action.into(),
                    source: Box::new(err),
                })
            } else {
                Outcome::Retry {
                    err,
                    class: RetryClass::Unavailable,
                    server_wait: None,
                }
            }
        };
        let resp = match rb.send().await {
            Ok(r) => r,
            // A connect error means nothing was sent; anything later may have reached HBR.
            Err(e) => {
                let sent = !e.is_connect();
                return transport(e, sent);
            }
        };
        let status = resp.status().as_u16();
        let server_wait = server_wait(resp.headers());
        let header_request_id = resp
            .headers()
            .get("x-acs-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return transport(e, true),
        };
        let outcome = classify(
            action,
            status,
            &body,
            header_request_id,
            server_wait,
            idempotent,
        );
        let (code, request_id) = match &outcome {
            Outcome::Done(_, rid) => (None, Some(rid.as_str())),
            Outcome::Retry { err, .. } | Outcome::Final(err) => (err.code(), err.request_id()),
        };
        crate::metrics::global().hbr_request(
            action,
            match (&outcome, code) {
                (Outcome::Done(..), _) => "200",
                (_, Some(c)) => c,
                (_, None) => "Decode",
            },
            started.elapsed(),
        );
        tracing::debug!(
            action,
            attempt,
            status,
            code,
            request_id,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "HBR attempt"
        );
        outcome
    }
}

/// Wire parameters of Add/Update: the request's params, `DataSourceId` for an update (which
/// takes no `DataSourceType`, as the SDK's model shows), and the Credential exposed last.
/// Public so that the SDK cross-check signs exactly what the client sends.
pub fn wire_params(req: &DataSourceRequest, data_source_id: Option<&str>) -> Vec<(String, String)> {
    let mut p: BTreeMap<String, String> = req.params.clone();
    if let Some(id) = data_source_id {
        p.remove("DataSourceType");
        p.insert("DataSourceId".into(), id.into());
    }
    match &req.credential {
        Some(c) => p.insert("Credential".into(), c.expose().to_string()),
        None => p.remove("Credential"),
    };
    p.into_iter().collect()
}

/// One page of a paged Describe action.
struct Page {
    action: &'static str,
    request_id: String,
    items: Vec<Value>,
    total: Option<u64>,
    page_size: usize,
}

impl Page {
    /// Whether page `number` (1-based) ends the listing: an empty page, `TotalCount` reached,
    /// or, without a total, a short page.
    fn is_last(&self, number: usize) -> bool {
        let n = self.items.len();
        let seen = (number - 1) * self.page_size + n;
        match self.total {
            _ if n == 0 => true,
            Some(t) => seen as u64 >= t,
            None => n < self.page_size,
        }
    }

    fn decode(&self, message: String) -> HbrError {
        HbrError::Decode {
            action: self.action.into(),
            http_status: 200,
            request_id: self.request_id.clone(),
            message,
        }
    }
}

fn paging_did_not_end(action: &str) -> HbrError {
    HbrError::Decode {
        action: action.into(),
        http_status: 200,
        request_id: String::new(),
        message: format!("paging did not end after {MAX_DESCRIBE_PAGES} pages"),
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.trim().parse().ok())
}

fn as_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// How long the server asked us to wait: `Retry-After` (seconds), the SDK's
/// `x-acs-retry-after` (milliseconds), `x-ratelimit-reset` (seconds, or a Unix time), or an
/// `x-ratelimit-*` header carrying `TimeLeft:<ms>`. The longest one wins; the policy caps it.
fn server_wait(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name)?.to_str().ok().map(str::trim);
    let mut waits = Vec::new();
    if let Some(s) = text("retry-after").and_then(|v| v.parse::<u64>().ok()) {
        waits.push(Duration::from_secs(s));
    }
    if let Some(ms) = text("x-acs-retry-after").and_then(|v| v.parse::<u64>().ok()) {
        waits.push(Duration::from_millis(ms));
    }
    if let Some(r) = text("x-ratelimit-reset").and_then(|v| v.parse::<u64>().ok()) {
        let now = OffsetDateTime::now_utc().unix_timestamp() as u64;
        waits.push(Duration::from_secs(if r > 1_000_000_000 {
            r.saturating_sub(now)
        } else {
            r
        }));
    }
    for (name, value) in headers {
        if !name.as_str().starts_with("x-ratelimit-") {
            continue;
        }
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(',') {
            if let Some((k, v)) = pair.split_once(':')
                && k.trim() == "TimeLeft"
                && let Ok(ms) = v.trim().parse::<u64>()
            {
                waits.push(Duration::from_millis(ms));
            }
        }
    }
    waits.into_iter().max().filter(|d| !d.is_zero())
}

/// Turns one HTTP answer into an outcome. HBR reports errors either with HTTP 4xx/5xx or with
/// `Success: false` at HTTP 200; `Code` is text (`"200"` on success).
fn classify(
    action: &str,
    status: u16,
    body: &[u8],
    header_request_id: Option<String>,
    server_wait: Option<Duration>,
    idempotent: bool,
) -> Outcome {
    let json = serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object);
    let request_id = json
        .as_ref()
        .and_then(|v| as_text(v.get("RequestId")))
        .or(header_request_id)
        .unwrap_or_default();
    let unknown = |err: HbrError| HbrError::OutcomeUnknown {
        action: action.into(),
        source: Box::new(err),
    };
    let Some(v) = json else {
        let err = HbrError::Decode {
            action: action.into(),
            http_status: status,
            request_id,
            message: format!("the body ({} bytes) is not a JSON object", body.len()),
        };
        return match status {
            // A gateway's 5xx page: HBR may or may not have seen the request.
            500.. if !idempotent => Outcome::Final(unknown(err)),
            500.. => Outcome::Retry {
                err,
                class: RetryClass::Unavailable,
                server_wait,
            },
            200..=299 if !idempotent => Outcome::Final(unknown(err)),
            _ => Outcome::Final(err),
        };
    };
    let code = as_text(v.get("Code"));
    let success = v.get("Success").and_then(Value::as_bool);
    let failed = !(200..300).contains(&status)
        || success == Some(false)
        || (success.is_none()
            && code
                .as_deref()
                .is_some_and(|c| c != "200" && !c.eq_ignore_ascii_case("success")));
    if !failed {
        return Outcome::Done(v, request_id);
    }
    let code = code.unwrap_or_else(|| format!("HTTP{status}"));
    let class = if code.starts_with("Throttling") {
        Some(RetryClass::Throttled)
    } else if code == "ServiceUnavailable" || code == "InternalError" || status >= 500 {
        Some(RetryClass::Unavailable)
    } else {
        None
    };
    let err = HbrError::Api {
        action: action.into(),
        http_status: status,
        message: as_text(v.get("Message")).unwrap_or_default(),
        code,
        request_id,
    };
    match class {
        Some(class) => Outcome::Retry {
            err,
            class,
            server_wait,
        },
        None => Outcome::Final(err),
    }
}

#[cfg(test)]
mod tests {
    /// Property tests: whatever HBR (or something in its place) answers, no panic, no hang.
    mod hostile;

    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::config::model::Network;
    use crate::secret::{Secret, SecretOrigin};

    const AKID: &str = "LTAI-test-akid";
    const SECRET: &str = "test-secret-value-9f8e7d";
    const TOKEN: &str = "sts-token-value-CAIS123";

    /// What the fake HBR saw.
    #[derive(Clone, Debug)]
    struct Seen {
        method: String,
        path: String,
        query: Vec<(String, String)>,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        }
        fn param(&self, name: &str) -> Option<&str> {
            self.query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        }
        fn nonce(&self) -> String {
            self.header("x-acs-signature-nonce")
                .or(self.param("SignatureNonce"))
                .unwrap_or_default()
                .to_string()
        }
    }

    type Reply = (u16, Vec<(&'static str, String)>, String);
    type Seens = Arc<Mutex<Vec<Seen>>>;

    /// A fake HBR on 127.0.0.1:0; `reply(seen, n)` answers the n-th request (0-based).
    async fn fake<F>(reply: F) -> (Url, Seens)
    where
        F: Fn(&Seen, usize) -> Reply + Send + Sync + 'static,
    {
        let seen: Seens = Arc::default();
        let reply = Arc::new(reply);
        let count = Arc::new(AtomicUsize::new(0));
        let s2 = seen.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (seen, reply, count) = (s2.clone(), reply.clone(), count.clone());
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                let query = url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
                    .into_owned()
                    .collect();
                let s = Seen {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    query,
                    headers: parts
                        .headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
                        .collect(),
                    body: body.to_vec(),
                };
                seen.lock().unwrap().push(s.clone());
                let n = count.fetch_add(1, Ordering::SeqCst);
                let (status, headers, body) = reply(&s, n);
                let mut resp = axum::response::Response::builder().status(status);
                for (k, v) in headers {
                    resp = resp.header(k, v);
                }
                if body == "SLEEP" {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
                resp.header("content-type", "application/json")
                    .body(axum::body::Body::from(body))
                    .unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (Url::parse(&format!("http://{addr}")).unwrap(), seen)
    }

    /// Recomputes the signature from what arrived, as HBR would.
    fn verify(seen: &Seen, version: SignatureVersion) -> Result<(), String> {
        match version {
            SignatureVersion::V3 => {
                let auth = seen.header("authorization").ok_or("no Authorization")?;
                let rest = auth
                    .strip_prefix("ACS3-HMAC-SHA256 ")
                    .ok_or("not ACS3-HMAC-SHA256")?;
                let mut parts = BTreeMap::new();
                for kv in rest.split(',') {
                    let (k, v) = kv.split_once('=').ok_or("bad Authorization")?;
                    parts.insert(k.to_string(), v.to_string());
                }
                if parts["Credential"] != AKID {
                    return Err("wrong Credential".into());
                }
                let names: Vec<&str> = parts["SignedHeaders"].split(';').collect();
                for must in [
                    "host",
                    "x-acs-action",
                    "x-acs-content-sha256",
                    "x-acs-date",
                    "x-acs-signature-nonce",
                    "x-acs-version",
                ] {
                    if !names.contains(&must) {
                        return Err(format!("{must} not signed"));
                    }
                }
                let headers: Vec<(String, String)> = seen
                    .headers
                    .iter()
                    .filter(|(k, _)| names.contains(&k.as_str()))
                    .cloned()
                    .collect();
                let body_hash = sign::sha256_hex(&seen.body);
                if seen.header("x-acs-content-sha256") != Some(body_hash.as_str()) {
                    return Err("content hash".into());
                }
                let (canonical, signed) = sign::v3_canonical_request(
                    &seen.method,
                    &seen.path,
                    &seen.query,
                    &headers,
                    &body_hash,
                );
                if signed != parts["SignedHeaders"] {
                    return Err(format!("signed headers {signed}"));
                }
                if !sign::eq_ct(&sign::v3_signature(SECRET, &canonical), &parts["Signature"]) {
                    return Err("signature mismatch".into());
                }
            }
            SignatureVersion::V2 => {
                let sig = seen.param("Signature").ok_or("no Signature")?;
                let rest: Vec<_> = seen
                    .query
                    .iter()
                    .filter(|(k, _)| k != "Signature")
                    .cloned()
                    .collect();
                let sts = sign::v2_string_to_sign(&seen.method, &rest);
                if !sign::eq_ct(&sign::v2_signature(SECRET, &sts), sig) {
                    return Err("signature mismatch".into());
                }
                for (k, v) in [
                    ("AccessKeyId", AKID),
                    ("SignatureMethod", "HMAC-SHA1"),
                    ("SignatureVersion", "1.0"),
                    ("Format", "json"),
                    ("Version", API_VERSION),
                ] {
                    if seen.param(k) != Some(v) {
                        return Err(format!("{k} wrong"));
                    }
                }
            }
        }
        Ok(())
    }

    fn creds(token: bool) -> Credentials {
        Credentials {
            access_key_id: Secret::new(AKID, SecretOrigin::Literal),
            access_key_secret: Secret::new(SECRET, SecretOrigin::Literal),
            security_token: token.then(|| Secret::new(TOKEN, SecretOrigin::Literal)),
        }
    }

    fn client(endpoint: &Url, version: SignatureVersion, token: bool) -> HbrClient {
        client_timeout(endpoint, version, token, Duration::from_secs(5))
    }

    fn client_timeout(
        endpoint: &Url,
        version: SignatureVersion,
        token: bool,
        timeout: Duration,
    ) -> HbrClient {
        let cp = ControlPlane {
            region: "cn-hangzhou".into(),
            network: Network::Public,
            endpoint: endpoint.clone(),
            signature: version,
            credentials: None,
            metadata_endpoint: Url::parse("http://127.0.0.1:9").unwrap(),
            timeout,
        };
        HbrClient::with_provider(&cp, CredentialsProvider::fixed(creds(token)))
            .unwrap()
            .with_retry_policy(RetryPolicy {
                max_attempts: 3,
                base: Duration::from_millis(5),
                cap: Duration::from_millis(50),
            })
    }

    fn nas_request() -> DataSourceRequest {
        let mut params = BTreeMap::new();
        for (k, v) in [
            ("ClusterId", "cl-0004i0nlngorvgjpl7ck"),
            ("DataSourceType", "COMMON_NAS"),
            ("DataSourceName", "MyLocalNas"),
            (
                "ConnectionInfo",
                r#"{"dataServerAddresses":[{"host":"123.123.123.123","port":"2049"}],"sharePath":"/share","mountOptions":"vers=3","fileSystemType":"nfs"}"#,
            ),
            ("Path.1", "/share/a b"),
            ("Path.2", "/share/*"),
        ] {
            params.insert(k.to_string(), v.to_string());
        }
        DataSourceRequest {
            params,
            credential: Some(Secret::new(
                r#"{"mountUsername":"backup","mountPassword":"pw-SECRET-42"}"#,
                SecretOrigin::Derived("test"),
            )),
        }
    }

    const OK_ADD: &str = r#"{"Success":true,"Code":"200","Message":"successful","RequestId":"RID-ADD","DataSourceId":"ds-000abc"}"#;

    async fn wire_form(version: SignatureVersion, token: bool) {
        let (url, seen) = fake(|s, _| {
            let status = if verify(s, SignatureVersion::V3).is_ok()
                || verify(s, SignatureVersion::V2).is_ok()
            {
                200
            } else {
                400
            };
            (status, vec![], OK_ADD.into())
        })
        .await;
        let added = client(&url, version, token)
            .add_data_source(&nas_request())
            .await
            .unwrap();
        assert_eq!(
            added,
            Added {
                data_source_id: "ds-000abc".into(),
                request_id: "RID-ADD".into()
            }
        );
        let seen = seen.lock().unwrap()[0].clone();
        verify(&seen, version).unwrap();
        assert_eq!((seen.method.as_str(), seen.path.as_str()), ("POST", "/"));
        assert!(seen.body.is_empty());
        assert_eq!(seen.param("Path.2"), Some("/share/*"));
        assert_eq!(seen.param("Path.1"), Some("/share/a b"));
        assert_eq!(
            seen.param("Credential"),
            Some(r#"{"mountUsername":"backup","mountPassword":"pw-SECRET-42"}"#)
        );
        assert_eq!(seen.param("DataSourceType"), Some("COMMON_NAS"));
        match version {
            SignatureVersion::V3 => {
                assert_eq!(seen.header("x-acs-action"), Some("AddDataSource"));
                assert_eq!(seen.header("x-acs-version"), Some(API_VERSION));
                assert_eq!(seen.header("x-acs-security-token"), token.then_some(TOKEN));
                assert_eq!(seen.header("x-acs-accesskey-id"), token.then_some(AKID));
                let signed = seen.header("authorization").unwrap();
                assert_eq!(signed.contains("x-acs-security-token"), token);
                assert!(seen.param("Action").is_none());
                let date = seen.header("x-acs-date").unwrap();
                assert!(
                    OffsetDateTime::parse(date, &time::format_description::well_known::Rfc3339)
                        .is_ok(),
                    "{date}"
                );
                assert!(date.ends_with('Z') && date.len() == 20, "{date}");
            }
            SignatureVersion::V2 => {
                assert_eq!(seen.param("Action"), Some("AddDataSource"));
                assert_eq!(seen.param("SecurityToken"), token.then_some(TOKEN));
                assert!(seen.header("authorization").is_none());
                assert!(seen.param("Timestamp").unwrap().ends_with('Z'));
            }
        }
    }

    #[tokio::test]
    async fn v3_wire_form_and_signature() {
        wire_form(SignatureVersion::V3, false).await;
    }

    #[tokio::test]
    async fn v3_wire_form_with_sts() {
        wire_form(SignatureVersion::V3, true).await;
    }

    #[tokio::test]
    async fn v2_wire_form_and_signature() {
        wire_form(SignatureVersion::V2, false).await;
    }

    #[tokio::test]
    async fn v2_wire_form_with_sts() {
        wire_form(SignatureVersion::V2, true).await;
    }

    fn page(n: usize, from: usize, total: usize) -> String {
        let items: Vec<Value> = (from..from + n)
            .map(|i| serde_json::json!({"DataSourceId": format!("ds-{i}"), "DataSourceName": format!("n{i}"), "DataSourceType": "COMMON_NAS", "ClusterId": "cl-1", "Paths": ["/a"], "CreatedTime": 1}))
            .collect();
        serde_json::json!({"Success": true, "Code": "200", "RequestId": "R", "TotalCount": total, "PageSize": 99, "DataSources": items}).to_string()
    }

    #[tokio::test]
    async fn describe_reads_every_page() {
        let (url, seen) = fake(|s, _| {
            let p: usize = s.param("PageNumber").unwrap().parse().unwrap();
            let body = match p {
                1 => page(99, 0, 250),
                2 => page(99, 99, 250),
                3 => page(52, 198, 250),
                _ => page(0, 0, 250),
            };
            (200, vec![], body)
        })
        .await;
        let all = client(&url, SignatureVersion::V3, false)
            .describe_data_sources("cl-1")
            .await
            .unwrap();
        assert_eq!(all.len(), 250);
        assert_eq!(all[249].data_source_id, "ds-249");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        for (i, s) in seen.iter().enumerate() {
            assert_eq!(s.param("PageNumber"), Some((i + 1).to_string().as_str()));
            assert_eq!(s.param("PageSize"), Some("99"));
            assert_eq!(s.param("ClusterId"), Some("cl-1"));
            verify(s, SignatureVersion::V3).unwrap();
        }
    }

    /// 250 data sources `n0`…`n249` in 3 pages; the `DataSourceName` filter is a substring
    /// match, as the fake HBR's.
    fn filtered_page(s: &Seen) -> String {
        let p: usize = s.param("PageNumber").unwrap().parse().unwrap();
        match s.param("DataSourceName") {
            Some(name) => {
                let hits: Vec<usize> = (0..250)
                    .filter(|i| format!("n{i}").contains(name))
                    .collect();
                let items: Vec<Value> = hits
                    .iter()
                    .map(|i| serde_json::json!({"DataSourceId": format!("ds-{i}"), "DataSourceName": format!("n{i}"), "DataSourceType": "COMMON_NAS"}))
                    .collect();
                serde_json::json!({"Success": true, "Code": "200", "RequestId": "R", "TotalCount": hits.len(), "PageSize": 99, "DataSources": items}).to_string()
            }
            None => match p {
                1 => page(99, 0, 250),
                2 => page(99, 99, 250),
                _ => page(52, 198, 250),
            },
        }
    }

    #[tokio::test]
    async fn describe_for_looks_up_few_names_exactly_and_lists_for_many() {
        // One name, 2 pages left: page 1, then the name; `n24` also matches n240…n249, which
        // are not taken for it.
        let (url, seen) = fake(|s, _| (200, vec![], filtered_page(s))).await;
        let c = client(&url, SignatureVersion::V3, false);
        let got = c
            .describe_data_sources_for("cl-1", &["n24".into()], &[])
            .await
            .unwrap();
        assert_eq!(
            got.iter()
                .map(|d| d.data_source_id.as_str())
                .collect::<Vec<_>>(),
            ["ds-24"]
        );
        let asked: Vec<(Option<String>, Option<String>)> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s.param("PageNumber").map(str::to_string),
                    s.param("DataSourceName").map(str::to_string),
                )
            })
            .collect();
        assert_eq!(
            asked,
            [
                (Some("1".into()), None),
                (Some("1".into()), Some("n24".into()))
            ]
        );

        // Two names, 2 pages left: the listing goes on from page 2 (page 1 is not read twice).
        let (url, seen) = fake(|s, _| (200, vec![], filtered_page(s))).await;
        let c = client(&url, SignatureVersion::V3, false);
        let got = c
            .describe_data_sources_for("cl-1", &["n1".into(), "n2".into()], &[])
            .await
            .unwrap();
        assert_eq!(got.len(), 250);
        let pages: Vec<Option<String>> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| {
                assert_eq!(s.param("DataSourceName"), None);
                s.param("PageNumber").map(str::to_string)
            })
            .collect();
        assert_eq!(
            pages,
            [Some("1".into()), Some("2".into()), Some("3".into())]
        );

        // Nothing needed: nothing asked.
        let (url, seen) = fake(|s, _| (200, vec![], filtered_page(s))).await;
        let c = client(&url, SignatureVersion::V3, false);
        assert!(
            c.describe_data_sources_for("cl-1", &[], &[])
                .await
                .unwrap()
                .is_empty()
        );
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn describe_starts_over_when_the_list_shifts_under_it() {
        // Page 2 of the first listing comes after a removal elsewhere (TotalCount 150 → 149):
        // an offset page would skip an item, so the listing starts over.
        let calls = std::sync::Arc::new(std::sync::Mutex::new(0usize));
        let c = calls.clone();
        let (url, _) = fake(move |s, _| {
            let p: usize = s.param("PageNumber").unwrap().parse().unwrap();
            let mut n = c.lock().unwrap();
            *n += 1;
            let body = match (*n, p) {
                (1, 1) => page(99, 0, 150),
                (2, 2) => page(50, 100, 149),
                (_, 1) => page(99, 0, 149),
                (_, _) => page(50, 99, 149),
            };
            (200, vec![], body)
        })
        .await;
        let all = client(&url, SignatureVersion::V3, false)
            .describe_data_sources("cl-1")
            .await
            .unwrap();
        assert_eq!(*calls.lock().unwrap(), 4);
        assert_eq!(all.len(), 149);
        assert!(
            all.iter().any(|d| d.data_source_id == "ds-99"),
            "the shifted item is not lost"
        );
    }

    #[tokio::test]
    async fn describe_stops_on_a_server_that_never_ends() {
        // TotalCount lies (never reached) but pages run dry: stop at the empty page.
        let (url, seen) = fake(|s, _| {
            let p: usize = s.param("PageNumber").unwrap().parse().unwrap();
            (
                200,
                vec![],
                if p <= 2 {
                    page(99, (p - 1) * 99, 100_000)
                } else {
                    page(0, 0, 100_000)
                },
            )
        })
        .await;
        let all = client(&url, SignatureVersion::V3, false)
            .describe_data_sources("cl-1")
            .await
            .unwrap();
        assert_eq!(all.len(), 198);
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn success_false_at_200_is_an_api_error() {
        let (url, seen) = fake(|_, _| {
            (200, vec![], r#"{"Success":false,"Code":"DataSourceNameDuplicated","Message":"the name exists","RequestId":"RID-42"}"#.into())
        })
        .await;
        let err = client(&url, SignatureVersion::V3, false)
            .add_data_source(&nas_request())
            .await
            .unwrap_err();
        match &err {
            HbrError::Api {
                action,
                http_status,
                code,
                message,
                request_id,
            } => {
                assert_eq!(
                    (
                        action.as_str(),
                        *http_status,
                        code.as_str(),
                        message.as_str(),
                        request_id.as_str()
                    ),
                    (
                        "AddDataSource",
                        200,
                        "DataSourceNameDuplicated",
                        "the name exists",
                        "RID-42"
                    )
                );
            }
            other => panic!("{other:?}"),
        }
        let shown = err.to_string();
        assert!(
            shown.contains("DataSourceNameDuplicated")
                && shown.contains("the name exists")
                && shown.contains("RID-42"),
            "{shown}"
        );
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "final errors are not retried"
        );
    }

    #[tokio::test]
    async fn throttling_is_retried_with_a_fresh_nonce() {
        let (url, seen) = fake(|_, n| {
            if n < 2 {
                (
                    400,
                    vec![("retry-after", "0".into())],
                    r#"{"Code":"Throttling.User","Message":"slow down","RequestId":"RID-T"}"#
                        .into(),
                )
            } else {
                (200, vec![], OK_ADD.into())
            }
        })
        .await;
        let added = client(&url, SignatureVersion::V3, false)
            .add_data_source(&nas_request())
            .await
            .unwrap();
        assert_eq!(added.request_id, "RID-ADD");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        let nonces: std::collections::BTreeSet<_> = seen.iter().map(Seen::nonce).collect();
        assert_eq!(nonces.len(), 3, "a fresh nonce per attempt");
        for s in seen.iter() {
            verify(s, SignatureVersion::V3).unwrap();
        }
    }

    /// A `Throttling` answer to one call holds back the others too: the writes a pass has in
    /// flight back off together instead of each hammering the limit.
    #[tokio::test]
    async fn a_throttling_answer_holds_back_every_call_of_the_client() {
        let (url, seen) = fake(|_, n| {
            if n == 0 {
                (
                    400,
                    vec![("x-acs-retry-after", "1500".into())],
                    r#"{"Code":"Throttling.User","Message":"slow down","RequestId":"RID-T"}"#
                        .into(),
                )
            } else {
                (200, vec![], OK_ADD.into())
            }
        })
        .await;
        let c = Arc::new(client(&url, SignatureVersion::V3, false).with_retry_policy(
            RetryPolicy {
                max_attempts: 3,
                base: Duration::from_millis(5),
                cap: Duration::from_secs(5),
            },
        ));
        let first = tokio::spawn({
            let c = c.clone();
            async move { c.add_data_source(&nas_request()).await }
        });
        while seen.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Let the throttled answer reach the client, then start a second call.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t0 = Instant::now();
        c.add_data_source(&nas_request()).await.unwrap();
        let waited = t0.elapsed();
        first.await.unwrap().unwrap();
        assert_eq!(seen.lock().unwrap().len(), 3);
        // Sent at once, it would have taken milliseconds; it waited out the 1.5 s backoff.
        assert!(
            waited >= Duration::from_millis(1000),
            "the second call did not wait: {waited:?}"
        );
    }

    #[tokio::test]
    async fn throttling_exhausted() {
        let (url, seen) = fake(|_, _| {
            (
                400,
                vec![],
                r#"{"Code":"Throttling","Message":"slow down","RequestId":"RID-T"}"#.into(),
            )
        })
        .await;
        let err = client(&url, SignatureVersion::V2, false)
            .describe_data_sources("cl-1")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, HbrError::Throttled { attempts: 3, .. }),
            "{err:?}"
        );
        assert_eq!(err.code(), Some("Throttling"));
        assert_eq!(err.request_id(), Some("RID-T"));
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn server_errors_exhausted() {
        let (url, seen) = fake(|_, _| {
            (
                503,
                vec![],
                r#"{"Code":"ServiceUnavailable","Message":"down","RequestId":"RID-5"}"#.into(),
            )
        })
        .await;
        let err = client(&url, SignatureVersion::V3, false)
            .update_data_source("ds-1", &nas_request())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, HbrError::Unavailable { attempts: 3, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("RID-5"));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0].param("DataSourceId"), Some("ds-1"));
        assert_eq!(
            seen[0].param("DataSourceType"),
            None,
            "UpdateDataSource takes no type"
        );
    }

    #[tokio::test]
    async fn non_retryable_error_not_retried() {
        let (url, seen) = fake(|_, _| {
            (
                403,
                vec![],
                r#"{"Code":"Forbidden.RAM","Message":"no permission","RequestId":"RID-F"}"#.into(),
            )
        })
        .await;
        let err = client(&url, SignatureVersion::V3, false)
            .describe_data_sources("cl-1")
            .await
            .unwrap_err();
        assert!(
            matches!(
                &err,
                HbrError::Api {
                    http_status: 403,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn add_timeout_is_outcome_unknown_and_not_retried() {
        let (url, seen) = fake(|_, _| (200, vec![], "SLEEP".into())).await;
        let c = client_timeout(
            &url,
            SignatureVersion::V3,
            false,
            Duration::from_millis(300),
        );
        let err = c.add_data_source(&nas_request()).await.unwrap_err();
        assert!(matches!(&err, HbrError::OutcomeUnknown { .. }), "{err:?}");
        assert!(err.to_string().contains("describe before retrying"));
        assert_eq!(seen.lock().unwrap().len(), 1);
        // Describe may be retried after a timeout.
        let err = c.describe_data_sources("cl-1").await.unwrap_err();
        assert!(
            matches!(&err, HbrError::Unavailable { attempts: 3, .. }),
            "{err:?}"
        );
        assert_eq!(seen.lock().unwrap().len(), 4);
    }

    #[tokio::test]
    async fn add_to_a_closed_port_is_retried_then_unavailable() {
        // Nothing was sent (connect refused), so even AddDataSource may be retried.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = Url::parse(&format!("http://{}", l.local_addr().unwrap())).unwrap();
        drop(l);
        let err = client(&url, SignatureVersion::V3, false)
            .add_data_source(&nas_request())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, HbrError::Unavailable { attempts: 3, .. }),
            "{err:?}"
        );
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains("Credential") && !shown.contains("Signature"),
            "{shown}"
        );
    }

    #[test]
    fn server_wait_headers() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(server_wait(&h), None);
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(server_wait(&h), Some(Duration::from_secs(2)));
        h.insert(
            "x-ratelimit-user-api",
            "Limit:100,Remain:0,TimeLeft:4500,Reset:1".parse().unwrap(),
        );
        assert_eq!(server_wait(&h), Some(Duration::from_millis(4500)));
        let p = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(1),
            cap: Duration::from_secs(3),
        };
        assert_eq!(
            p.wait(1, Some(Duration::from_secs(60))),
            Duration::from_secs(3),
            "capped"
        );
        assert!(
            p.wait(1, Some(Duration::from_secs(2))) >= Duration::from_secs(2),
            "honoured"
        );
        for a in 1..40 {
            assert!(p.wait(a, None) <= Duration::from_secs(3));
        }
    }

    #[test]
    fn no_secret_in_errors_or_signed_request_debug() {
        let r = build_signed_request(
            &Url::parse("https://hbr.cn-hangzhou.aliyuncs.com").unwrap(),
            "AddDataSource",
            &wire_params(&nas_request(), None),
            &creds(true),
            "nonce",
            OffsetDateTime::UNIX_EPOCH,
            SignatureVersion::V2,
        );
        let shown = format!("{r:?} {:?} {:?}", nas_request(), creds(true));
        for secret in [
            SECRET,
            TOKEN,
            AKID,
            "pw-SECRET-42",
            r.query.last().unwrap().1.as_str(),
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        let e = HbrError::Api {
            action: "A".into(),
            http_status: 400,
            code: "C".into(),
            message: "M".into(),
            request_id: "R".into(),
        };
        assert_eq!(
            e.to_string(),
            r#"A failed: HTTP 400, Code C, Message "M", RequestId R"#
        );
    }
}
