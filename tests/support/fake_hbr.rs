//! A strict fake of Alibaba Cloud HBR (RPC API 2017-09-08) for tests and for staging configs by
//! hand: `AddDataSource`, `UpdateDataSource`, `DescribeDataSources`, behind a gateway that
//! checks V3 (`ACS3-HMAC-SHA256`) and V2 (`HMAC-SHA1`) signatures, access keys, STS tokens,
//! timestamps and nonces the way Alibaba Cloud's gateway does, and answers failures with its
//! JSON error shape. See `docs/development/fake-hbr.md`.
//!
//! It owns an in-memory store and a log of every request it received. Signatures are recomputed
//! only from what arrived on the wire (decoded query pairs, raw headers, the body), with the
//! crate's own `hbr::sign` functions; nothing a client claims is trusted. It must never listen
//! on anything but loopback, and never log a `Credential` parameter.
//!
//! The server runs on its own thread with its own Tokio runtime, so it keeps answering while
//! the test blocks (for example on `std::process::Command` running the agent binary) and works
//! from any runtime flavour.
//!
//! Included with `#[path]` by `tests/fake_hbr.rs` and `examples/fake-hbr.rs`; not every user
//! calls every function.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hbr_source_agent::hbr::sign;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::HeaderMap;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::format_description;

/// The one API version HBR's RPC API has.
pub const API_VERSION: &str = "2017-09-08";
pub const DEFAULT_ACCESS_KEY_ID: &str = "fake-access-key-id";
pub const DEFAULT_ACCESS_KEY_SECRET: &str = "fake-access-key-secret";

/// `DataSourceType` values the fake accepts (HBR's documented types for AddDataSource).
pub const DATA_SOURCE_TYPES: &[&str] = &[
    "COMMON_NAS",
    "COMMON_FILE_SYSTEM",
    "BMCPFS",
    "CPFS",
    "HDFS",
    "S3",
    "OSS",
    "NAS",
];

const ACTIONS: &[&str] = &[
    "AddDataSource",
    "UpdateDataSource",
    "DescribeDataSources",
    clients::ACTION,
];

#[path = "fake_hbr_clients.rs"]
mod clients;
#[allow(unused_imports)]
pub use clients::StoredClient;

/// Parameters that belong to the V2 signature protocol, not to an action.
const V2_PROTOCOL_PARAMS: &[&str] = &[
    "Action",
    "Version",
    "Format",
    "AccessKeyId",
    "SignatureMethod",
    "SignatureVersion",
    "SignatureNonce",
    "Timestamp",
    "Signature",
    "SecurityToken",
];

/// Common to every RPC call in either signature version; accepted and ignored.
const COMMON_PARAMS: &[&str] = &["RegionId"];

/// One access key the fake knows.
#[derive(Debug, Clone)]
pub struct Account {
    pub access_key_id: String,
    pub access_key_secret: String,
    /// STS: when set, every request with this key must present exactly this token.
    pub security_token: Option<String>,
    /// After this instant the key (or its STS token) is rejected as expired.
    pub expires: Option<OffsetDateTime>,
}

impl Account {
    pub fn new(access_key_id: &str, access_key_secret: &str) -> Self {
        Account {
            access_key_id: access_key_id.to_string(),
            access_key_secret: access_key_secret.to_string(),
            security_token: None,
            expires: None,
        }
    }

    pub fn sts(
        access_key_id: &str,
        access_key_secret: &str,
        security_token: &str,
        expires: Option<OffsetDateTime>,
    ) -> Self {
        Account {
            security_token: Some(security_token.to_string()),
            expires,
            ..Account::new(access_key_id, access_key_secret)
        }
    }
}

#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// Must be a loopback address; port 0 picks a free one.
    pub listen: SocketAddr,
    pub accounts: Vec<Account>,
    /// How far a request's timestamp may be from the fake's clock, either way.
    pub skew: Duration,
    /// A fixed clock for tests; `None` uses the system clock. Also settable later.
    pub clock: Option<OffsetDateTime>,
    /// Every Nth authenticated request is throttled (the example's `--throttle-every`).
    pub throttle_every: Option<u32>,
    /// Value of `x-acs-retry-after` (milliseconds, as the official SDK reads it) on throttling.
    pub retry_after_ms: u64,
    /// Added to every authenticated answer, like the real gateway's round trip (benchmarks).
    pub latency: Duration,
    /// Authenticated requests per second admitted (a token bucket holding one second's worth);
    /// the others get `Throttling.User` with `x-acs-retry-after` = the wait for the next token.
    pub rate_limit: Option<u32>,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            accounts: vec![Account::new(
                DEFAULT_ACCESS_KEY_ID,
                DEFAULT_ACCESS_KEY_SECRET,
            )],
            skew: Duration::from_secs(15 * 60),
            clock: None,
            throttle_every: None,
            retry_after_ms: 100,
            latency: Duration::ZERO,
            rate_limit: None,
        }
    }
}

/// Faults for the next matching authenticated requests (signature, key, timestamp and nonce
/// are checked first, so the nonce of a faulted request is spent, as on the real gateway).
/// Queued in order; each matching request takes one unit of `count` from the first match.
#[derive(Debug, Clone)]
pub enum Fault {
    /// HTTP 400 `Throttling.User` with `x-acs-retry-after`; `action: None` matches any action.
    Throttle { count: u32, action: Option<String> },
    /// HTTP `status`: 503/502/504 → `ServiceUnavailable`, anything else → `InternalError`.
    /// The action is not applied.
    ServerError { count: u32, status: u16 },
    /// Waits `delay`, then processes the request normally (the action IS applied, even if the
    /// client has given up by then).
    Slow { count: u32, delay: Duration },
    /// HTTP `http_status` with `{"RequestId","Success":false,"Code","Message"}`; not applied.
    Failure {
        count: u32,
        code: String,
        message: String,
        http_status: u16,
    },
    /// Closes the connection without answering; the action is not applied.
    Drop { count: u32 },
}

impl Fault {
    fn count_mut(&mut self) -> &mut u32 {
        match self {
            Fault::Throttle { count, .. }
            | Fault::ServerError { count, .. }
            | Fault::Slow { count, .. }
            | Fault::Failure { count, .. }
            | Fault::Drop { count } => count,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Fault::Throttle { .. } => "throttle",
            Fault::ServerError { .. } => "server-error",
            Fault::Slow { .. } => "slow",
            Fault::Failure { .. } => "failure",
            Fault::Drop { .. } => "drop",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureVersion {
    V3,
    V2,
}

/// What the fake received and how it answered.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub request_id: String,
    pub method: String,
    /// From `x-acs-action` (V3) or `Action` (V2), if any.
    pub action: Option<String>,
    /// Every query pair as decoded, in the order received.
    pub query: Vec<(String, String)>,
    /// The action's parameters (query minus V2 protocol and common parameters), including
    /// `Credential`, so tests can assert the exact request.
    pub params: BTreeMap<String, String>,
    pub signature_version: Option<SignatureVersion>,
    pub access_key_id: Option<String>,
    /// `None` when the connection was dropped without an answer.
    pub status: Option<u16>,
    /// The error `Code`, for every answer that is not a success.
    pub code: Option<String>,
    /// The fault that was applied, if any: "throttle", "server-error", "slow", "failure", "drop".
    pub fault: Option<&'static str>,
}

impl RecordedRequest {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// A data source as the fake stores it, Credential included (never returned by Describe).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredDataSource {
    pub data_source_id: String,
    pub data_source_name: String,
    pub data_source_type: String,
    pub cluster_id: String,
    pub connection_info: Option<String>,
    pub credential: Option<String>,
    pub include: Option<String>,
    pub exclude: Option<String>,
    pub options: Option<String>,
    pub paths: Vec<String>,
    pub index_level: Option<String>,
    pub schedule: Option<String>,
    pub speed_limit: Option<String>,
    pub created_time: i64,
    pub updated_time: i64,
}

impl StoredDataSource {
    pub fn new(data_source_type: &str, data_source_name: &str, cluster_id: &str) -> Self {
        StoredDataSource {
            data_source_type: data_source_type.to_string(),
            data_source_name: data_source_name.to_string(),
            cluster_id: cluster_id.to_string(),
            ..Default::default()
        }
    }

    fn to_describe_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        put("DataSourceId", json!(self.data_source_id));
        put("DataSourceName", json!(self.data_source_name));
        put("DataSourceType", json!(self.data_source_type));
        put("ClusterId", json!(self.cluster_id));
        for (k, v) in [
            ("ConnectionInfo", &self.connection_info),
            ("Include", &self.include),
            ("Exclude", &self.exclude),
            ("Options", &self.options),
            ("IndexLevel", &self.index_level),
            ("Schedule", &self.schedule),
            ("SpeedLimit", &self.speed_limit),
        ] {
            if let Some(v) = v {
                put(k, json!(v));
            }
        }
        if !self.paths.is_empty() {
            put("Paths", json!(self.paths));
        }
        put("CreatedTime", json!(self.created_time));
        put("UpdatedTime", json!(self.updated_time));
        Value::Object(m)
    }
}

struct State {
    accounts: Vec<Account>,
    skew: Duration,
    clock: Option<OffsetDateTime>,
    throttle_every: Option<u32>,
    retry_after_ms: u64,
    latency: Duration,
    /// (limit per second, tokens left, when they were counted)
    bucket: Option<(f64, f64, std::time::Instant)>,
    authenticated: u64,
    nonces: HashMap<(String, String), OffsetDateTime>,
    data_sources: Vec<StoredDataSource>,
    faults: VecDeque<(Fault, Option<String>)>,
    requests: Vec<RecordedRequest>,
    next_id: u64,
    /// DescribeBackupClients (fake_hbr_clients.rs).
    clients: Vec<clients::StoredClient>,
}

impl State {
    fn now(&self) -> OffsetDateTime {
        self.clock.unwrap_or_else(OffsetDateTime::now_utc)
    }

    fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("ds-{:08}{}", self.next_id, random_base36(12))
    }

    fn insert(&mut self, mut ds: StoredDataSource) -> String {
        if ds.data_source_id.is_empty() {
            ds.data_source_id = self.new_id();
        }
        let now = self.now().unix_timestamp();
        if ds.created_time == 0 {
            ds.created_time = now;
        }
        if ds.updated_time == 0 {
            ds.updated_time = ds.created_time;
        }
        let id = ds.data_source_id.clone();
        self.data_sources.push(ds);
        id
    }

    /// A later UpdatedTime even when the clock is fixed, so clients can see the change.
    fn touch(&self, ds: &mut StoredDataSource) {
        ds.updated_time = self.now().unix_timestamp().max(ds.updated_time + 1);
    }

    /// Takes a token; when none is left, how long until the next one (milliseconds).
    fn over_rate_limit(&mut self) -> Option<u64> {
        let (limit, tokens, at) = self.bucket.as_mut()?;
        let now = std::time::Instant::now();
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * *limit).min(*limit);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return None;
        }
        Some((((1.0 - *tokens) / *limit) * 1000.0).ceil().max(1.0) as u64)
    }

    fn take_fault(&mut self, action: &str) -> Option<Fault> {
        let idx = self.faults.iter().position(|(f, only)| {
            let filter = match f {
                Fault::Throttle { action: a, .. } => a.as_ref().or(only.as_ref()),
                _ => only.as_ref(),
            };
            filter.is_none_or(|a| a == action)
        })?;
        let (fault, _) = &mut self.faults[idx];
        let taken = fault.clone();
        let count = fault.count_mut();
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.faults.remove(idx);
        }
        Some(taken)
    }
}

type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> MutexGuard<'_, State> {
    // A panicking test thread must not hide the fake's state from the next assertion.
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running fake HBR. Dropping it stops the server; `shutdown` also waits for it.
pub struct FakeHbr {
    addr: SocketAddr,
    state: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl FakeHbr {
    /// Binds `cfg.listen` (loopback only) and serves on a dedicated thread.
    pub async fn start(cfg: FakeConfig) -> std::io::Result<FakeHbr> {
        if !cfg.listen.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("the fake HBR listens only on loopback, not {}", cfg.listen),
            ));
        }
        let listener = std::net::TcpListener::bind(cfg.listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            accounts: cfg.accounts,
            skew: cfg.skew,
            clock: cfg.clock,
            throttle_every: cfg.throttle_every.filter(|n| *n > 0),
            retry_after_ms: cfg.retry_after_ms,
            latency: cfg.latency,
            bucket: cfg
                .rate_limit
                .filter(|n| *n > 0)
                .map(|n| (f64::from(n), f64::from(n), std::time::Instant::now())),
            authenticated: 0,
            nonces: HashMap::new(),
            data_sources: Vec::new(),
            faults: VecDeque::new(),
            requests: Vec::new(),
            next_id: 0,
            clients: Vec::new(),
        }));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let server_state = state.clone();
        std::thread::Builder::new()
            .name("fake-hbr".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => {
                            let _ = ready_tx.send(Ok(()));
                            serve(l, server_state, stop_rx).await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
                // Connection tasks still running are cancelled here.
                drop(rt);
                let _ = done_tx.send(());
            })?;
        ready_rx
            .await
            .map_err(|_| std::io::Error::other("fake HBR thread died at start"))??;
        Ok(FakeHbr {
            addr,
            state,
            stop: Some(stop_tx),
            done: Some(done_rx),
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state).requests.clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.state).requests.clear();
    }

    pub fn data_sources(&self) -> Vec<StoredDataSource> {
        lock(&self.state).data_sources.clone()
    }

    /// Seeds a data source (or simulates one added in the console). An empty
    /// `data_source_id` gets a fresh id; zero times get the fake's clock. Returns the id.
    pub fn insert_data_source(&self, ds: StoredDataSource) -> String {
        lock(&self.state).insert(ds)
    }

    /// Simulates a console-side edit; `UpdatedTime` moves forward. False if the id is unknown.
    pub fn edit_data_source(&self, id: &str, f: impl FnOnce(&mut StoredDataSource)) -> bool {
        let mut st = lock(&self.state);
        let Some(i) = st.data_sources.iter().position(|d| d.data_source_id == id) else {
            return false;
        };
        let mut ds = st.data_sources[i].clone();
        f(&mut ds);
        st.touch(&mut ds);
        st.data_sources[i] = ds;
        true
    }

    /// Simulates a console-side delete. False if the id is unknown.
    pub fn remove_data_source(&self, id: &str) -> bool {
        let mut st = lock(&self.state);
        let before = st.data_sources.len();
        st.data_sources.retain(|d| d.data_source_id != id);
        st.data_sources.len() != before
    }

    /// Queues a fault for the next matching requests.
    pub fn inject(&self, fault: Fault) {
        lock(&self.state).faults.push_back((fault, None));
    }

    /// Queues a fault that only requests for `action` take.
    pub fn inject_for(&self, action: &str, fault: Fault) {
        lock(&self.state)
            .faults
            .push_back((fault, Some(action.to_string())));
    }

    /// Drops every fault not yet used up.
    pub fn clear_faults(&self) {
        lock(&self.state).faults.clear();
    }

    /// Faults not yet used up.
    pub fn pending_faults(&self) -> Vec<Fault> {
        lock(&self.state)
            .faults
            .iter()
            .map(|(f, _)| f.clone())
            .collect()
    }

    /// Fixes the fake's clock (`None`: the system clock again).
    pub fn set_clock(&self, clock: Option<OffsetDateTime>) {
        lock(&self.state).clock = clock;
    }

    pub fn now(&self) -> OffsetDateTime {
        lock(&self.state).now()
    }

    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }
}

impl Drop for FakeHbr {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    state: Shared,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut stop => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => continue,
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            // A handler that must drop the connection signals here and never completes.
            let kill = Arc::new(tokio::sync::Notify::new());
            let svc_kill = kill.clone();
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                let kill = svc_kill.clone();
                async move {
                    // Spawned so that work already started finishes even when the client
                    // hangs up, as on a real server (a timed-out Add may still create).
                    let answer = tokio::spawn(async move { handle(&state, req).await })
                        .await
                        .ok()
                        .flatten();
                    match answer {
                        Some(resp) => Ok::<_, Infallible>(resp),
                        None => {
                            kill.notify_one();
                            std::future::pending().await
                        }
                    }
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = kill.notified() => {}
            }
        });
    }
}

/// An error answer: HTTP status, code, message (and extra headers for throttling).
struct Reject {
    status: u16,
    code: String,
    message: String,
}

fn reject(status: u16, code: &str, message: impl Into<String>) -> Reject {
    Reject {
        status,
        code: code.to_string(),
        message: message.into(),
    }
}

fn missing(name: &str) -> Reject {
    reject(
        400,
        "MissingParameter",
        format!(
            "The input parameter \"{name}\" that is mandatory for processing this request is not supplied."
        ),
    )
}

fn invalid(name: &str, why: &str) -> Reject {
    reject(
        400,
        "InvalidParameter",
        format!("The specified parameter \"{name}\" is not valid: {why}"),
    )
}

fn incomplete(why: &str) -> Reject {
    reject(
        400,
        "IncompleteSignature",
        format!("The request signature does not conform to Aliyun standards: {why}"),
    )
}

struct Received {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
}

/// What authentication established.
struct Authed {
    action: String,
    params: BTreeMap<String, String>,
}

async fn handle(state: &Shared, req: Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let request_id = request_id();
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return None,
    };
    let host = parts
        .headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut rec = RecordedRequest {
        request_id: request_id.clone(),
        method: parts.method.to_string(),
        action: None,
        query: Vec::new(),
        params: BTreeMap::new(),
        signature_version: None,
        access_key_id: None,
        status: None,
        code: None,
        fault: None,
    };
    let query = match decode_query(parts.uri.query().unwrap_or("")) {
        Ok(q) => q,
        Err(r) => return Some(finish(state, rec, error_response(&r, &request_id, &host))),
    };
    rec.query = query.clone();
    let received = Received {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query,
        headers: parts.headers,
        body,
    };

    let authed = {
        let mut st = lock(state);
        authenticate(&mut st, &received, &mut rec)
    };
    let authed = match authed {
        Ok(a) => a,
        Err(r) => return Some(finish(state, rec, error_response(&r, &request_id, &host))),
    };

    let (fault, latency, rate_wait) = {
        let mut st = lock(state);
        st.authenticated += 1;
        let periodic = st
            .throttle_every
            .is_some_and(|n| st.authenticated.is_multiple_of(u64::from(n)));
        let rate_wait = st.over_rate_limit();
        let fault = st
            .take_fault(&authed.action)
            .or(
                (periodic || rate_wait.is_some()).then_some(Fault::Throttle {
                    count: 1,
                    action: None,
                }),
            );
        (fault, st.latency, rate_wait)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(f) = &fault {
        rec.fault = Some(f.kind());
    }
    match fault {
        Some(Fault::Drop { .. }) => {
            finish_dropped(state, rec);
            return None;
        }
        Some(Fault::Slow { delay, .. }) => tokio::time::sleep(delay).await,
        Some(Fault::Throttle { .. }) => {
            let retry_after = rate_wait.unwrap_or_else(|| lock(state).retry_after_ms);
            let r = reject(
                400,
                "Throttling.User",
                "Request was denied due to user flow control.",
            );
            let mut resp = error_response(&r, &request_id, &host);
            resp.headers_mut().insert(
                "x-acs-retry-after",
                retry_after
                    .to_string()
                    .parse()
                    .expect("digits are a header value"),
            );
            return Some(finish(state, rec, resp));
        }
        Some(Fault::ServerError { status, .. }) => {
            let r = if matches!(status, 502..=504) {
                reject(
                    status,
                    "ServiceUnavailable",
                    "The request has failed due to a temporary failure of the server.",
                )
            } else {
                reject(
                    status,
                    "InternalError",
                    "The request processing has failed due to some unknown error, exception or failure.",
                )
            };
            return Some(finish(state, rec, error_response(&r, &request_id, &host)));
        }
        Some(Fault::Failure {
            code,
            message,
            http_status,
            ..
        }) => {
            let body = json!({
                "RequestId": request_id,
                "Success": false,
                "Code": code,
                "Message": message,
            });
            return Some(finish(
                state,
                rec,
                json_response(http_status, &body, &request_id),
            ));
        }
        None => {}
    }

    let result = {
        let mut st = lock(state);
        match authed.action.as_str() {
            "AddDataSource" => add_data_source(&mut st, &authed.params),
            "UpdateDataSource" => update_data_source(&mut st, &authed.params),
            "DescribeDataSources" => describe_data_sources(&st, &authed.params),
            clients::ACTION => clients::describe_backup_clients(&st, &authed.params),
            _ => unreachable!("authenticate admits only known actions"),
        }
    };
    let resp = match result {
        Ok(mut body) => {
            let m = body.as_object_mut().expect("actions answer objects");
            m.insert("RequestId".into(), json!(request_id));
            m.insert("Success".into(), json!(true));
            m.insert("Code".into(), json!("200"));
            m.insert("Message".into(), json!("successful"));
            json_response(200, &body, &request_id)
        }
        Err(r) => error_response(&r, &request_id, &host),
    };
    Some(finish(state, rec, resp))
}

fn finish(
    state: &Shared,
    mut rec: RecordedRequest,
    mut resp: Response<Full<Bytes>>,
) -> Response<Full<Bytes>> {
    rec.status = Some(resp.status().as_u16());
    let code = resp.headers_mut().remove("x-fake-hbr-code");
    if !resp.status().is_success() || rec.fault == Some("failure") {
        rec.code = code
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
    }
    log_request(&rec);
    lock(state).requests.push(rec);
    resp
}

fn finish_dropped(state: &Shared, rec: RecordedRequest) {
    log_request(&rec);
    lock(state).requests.push(rec);
}

/// One line per request: action, status and code. Never parameters: they hold Credential.
fn log_request(rec: &RecordedRequest) {
    tracing::info!(
        target: "fake_hbr",
        request_id = %rec.request_id,
        action = rec.action.as_deref().unwrap_or("-"),
        status = rec.status.map_or_else(|| "dropped".to_string(), |s| s.to_string()),
        code = rec.code.as_deref().unwrap_or("200"),
        fault = rec.fault.unwrap_or("-"),
        "request"
    );
}

fn json_response(status: u16, body: &Value, request_id: &str) -> Response<Full<Bytes>> {
    let code = body.get("Code").and_then(Value::as_str).unwrap_or("");
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json;charset=utf-8")
        .header("x-acs-request-id", request_id)
        // Internal: lets `finish` record the code without parsing the body again.
        .header("x-fake-hbr-code", code)
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static parts make a valid response")
}

fn error_response(r: &Reject, request_id: &str, host: &str) -> Response<Full<Bytes>> {
    let body = json!({
        "RequestId": request_id,
        "HostId": host,
        "Code": r.code,
        "Message": r.message,
        "Recommend": format!(
            "https://api.aliyun.com/troubleshoot?q={}&product=hbr&requestId={request_id}",
            r.code
        ),
    });
    json_response(r.status, &body, request_id)
}

fn request_id() -> String {
    let h = format!("{:032X}", rand::random::<u128>());
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn random_base36(n: usize) -> String {
    const A: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    (0..n)
        .map(|_| A[(rand::random::<u32>() as usize) % A.len()] as char)
        .collect()
}

/// Decodes the raw query: `&`-separated, first `=` splits, `%XX` decoded, `+` is a space (as
/// form decoders on the gateway read it, so an unencoded `+` breaks the signature as it would
/// there). A repeated key is rejected.
fn decode_query(raw: &str) -> Result<Vec<(String, String)>, Reject> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let dec = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8()
                .map(|c| c.into_owned())
        };
        let (Ok(k), Ok(v)) = (dec(k), dec(v)) else {
            return Err(invalid(pair, "the query string is not valid UTF-8"));
        };
        if out.iter().any(|(ek, _)| *ek == k) {
            return Err(invalid(&k, "the parameter appears more than once"));
        }
        out.push((k, v));
    }
    Ok(out)
}

fn parse_timestamp(name: &str, s: &str) -> Result<OffsetDateTime, Reject> {
    let fmt = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::PrimitiveDateTime::parse(s, fmt)
        .map(|t| t.assume_utc())
        .map_err(|_| {
            reject(
                400,
                "InvalidTimeStamp.Format",
                format!(
                    "Specified time stamp or date value is not well formatted: {name} must be UTC YYYY-MM-DDThh:mm:ssZ."
                ),
            )
        })
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Reject> {
    let mut it = h.get_all(name).iter();
    let Some(v) = it.next() else {
        return Ok(None);
    };
    if it.next().is_some() {
        return Err(incomplete(&format!("header {name} appears more than once")));
    }
    v.to_str()
        .map(Some)
        .map_err(|_| incomplete(&format!("header {name} is not visible ASCII")))
}

/// The gateway part: request shape, action and version, timestamp, access key, STS token,
/// signature, nonce. On success the action's parameters.
fn authenticate(
    st: &mut State,
    rq: &Received,
    rec: &mut RecordedRequest,
) -> Result<Authed, Reject> {
    if rq.method != "POST" {
        return Err(reject(
            403,
            "UnsupportedHTTPMethod",
            format!(
                "This http method is not supported: {} (HBR RPC calls use POST).",
                rq.method
            ),
        ));
    }
    if rq.path != "/" {
        return Err(reject(
            404,
            "InvalidAction.NotFound",
            format!(
                "Specified api is not found, please check your url and method: path {}",
                rq.path
            ),
        ));
    }
    if !rq.body.is_empty() {
        return Err(invalid(
            "body",
            "the fake expects every parameter in the query string and an empty body",
        ));
    }
    let authorization = header(&rq.headers, "authorization")?;
    let has_v2_signature = rq.query.iter().any(|(k, _)| k == "Signature");
    match authorization {
        Some(a) => {
            rec.signature_version = Some(SignatureVersion::V3);
            authenticate_v3(st, rq, rec, a)
        }
        None if has_v2_signature => {
            rec.signature_version = Some(SignatureVersion::V2);
            authenticate_v2(st, rq, rec)
        }
        None => Err(missing("Signature")),
    }
}

fn check_action_version(action: &str, version: &str) -> Result<(), Reject> {
    if version != API_VERSION {
        return Err(reject(
            400,
            "InvalidVersion",
            format!("Specified parameter Version is not valid: {version} (HBR is {API_VERSION})."),
        ));
    }
    if !ACTIONS.contains(&action) {
        return Err(reject(
            404,
            "InvalidAction.NotFound",
            format!("Specified api is not found, please check your url and method: {action}"),
        ));
    }
    Ok(())
}

fn check_time(st: &State, ts: OffsetDateTime) -> Result<(), Reject> {
    let skew = time::Duration::try_from(st.skew).unwrap_or(time::Duration::MAX);
    if (st.now() - ts).abs() > skew {
        return Err(reject(
            400,
            "InvalidTimeStamp.Expired",
            "Specified time stamp or date value is expired.",
        ));
    }
    Ok(())
}

/// The account for `ak`, with its STS token checked against `token`.
fn account(st: &State, ak: &str, token: Option<&str>) -> Result<Account, Reject> {
    let Some(acc) = st.accounts.iter().find(|a| a.access_key_id == ak).cloned() else {
        return Err(reject(
            404,
            "InvalidAccessKeyId.NotFound",
            "Specified access key is not found.",
        ));
    };
    if acc.expires.is_some_and(|e| st.now() >= e) {
        return Err(if acc.security_token.is_some() {
            reject(
                400,
                "InvalidSecurityToken.Expired",
                "Specified SecurityToken is expired.",
            )
        } else {
            reject(
                400,
                "InvalidAccessKeyId.Inactive",
                "Specified access key is disabled.",
            )
        });
    }
    match (&acc.security_token, token) {
        (None, None) => {}
        (Some(_), None) => {
            return Err(reject(
                400,
                "MissingSecurityToken",
                "SecurityToken is mandatory for this access key.",
            ));
        }
        (expected, Some(got)) => {
            if !expected.as_deref().is_some_and(|e| sign::eq_ct(e, got)) {
                return Err(reject(
                    400,
                    "InvalidSecurityToken.MismatchWithAccessKey",
                    "Specified SecurityToken mismatch with the AccessKey.",
                ));
            }
        }
    }
    Ok(acc)
}

fn check_nonce(st: &mut State, ak: &str, nonce: &str) -> Result<(), Reject> {
    let now = st.now();
    let keep = time::Duration::try_from(st.skew * 2).unwrap_or(time::Duration::MAX);
    st.nonces.retain(|_, seen| now - *seen <= keep);
    if st
        .nonces
        .insert((ak.to_string(), nonce.to_string()), now)
        .is_some()
    {
        return Err(reject(
            400,
            "SignatureNonceUsed",
            "Specified signature nonce was used already.",
        ));
    }
    Ok(())
}

fn api_params(query: &[(String, String)], skip: &[&str]) -> BTreeMap<String, String> {
    query
        .iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()) && !COMMON_PARAMS.contains(&k.as_str()))
        .cloned()
        .collect()
}

fn authenticate_v3(
    st: &mut State,
    rq: &Received,
    rec: &mut RecordedRequest,
    authorization: &str,
) -> Result<Authed, Reject> {
    let h = |name: &str| header(&rq.headers, name);
    let required = |name: &str| h(name)?.ok_or_else(|| missing(name));
    // Record what we can before any check fails.
    rec.params = api_params(&rq.query, &[]);
    rec.action = h("x-acs-action")?.map(str::to_string);

    let (cred, signed_headers, signature) = parse_authorization(authorization)?;
    rec.access_key_id = Some(cred.to_string());
    let action = required("x-acs-action")?;
    let version = required("x-acs-version")?;
    let date = required("x-acs-date")?;
    let nonce = required("x-acs-signature-nonce")?;
    let content_sha = required("x-acs-content-sha256")?;
    check_action_version(action, version)?;

    // SignedHeaders: host and every x-acs-* header sent, each present, in canonical form.
    let names: Vec<&str> = signed_headers.split(';').collect();
    if !names.contains(&"host") {
        return Err(incomplete("SignedHeaders must include host"));
    }
    for name in rq.headers.keys() {
        let n = name.as_str();
        if n.starts_with("x-acs-") && !names.contains(&n) {
            return Err(incomplete(&format!(
                "header {n} is sent but not in SignedHeaders"
            )));
        }
    }
    // Any header may be signed (the official SDK also signs accept and user-agent), but the
    // list must be canonical: lower-case, sorted, no repeats, each header actually sent.
    let mut selected = Vec::new();
    for n in &names {
        if n.is_empty() || *n != n.to_ascii_lowercase() {
            return Err(incomplete(&format!(
                "SignedHeaders entry {n:?} is not a lower-case header name"
            )));
        }
        let v = h(n)?.ok_or_else(|| incomplete(&format!("signed header {n} is not sent")))?;
        selected.push((n.to_string(), v.trim().to_string()));
    }
    if !names.windows(2).all(|w| w[0] < w[1]) {
        return Err(incomplete(
            "SignedHeaders must be sorted and without repeats",
        ));
    }

    let body_hash = sign::sha256_hex(&rq.body);
    if !sign::eq_ct(content_sha, &body_hash) {
        return Err(reject(
            400,
            "SignatureDoesNotMatch",
            "x-acs-content-sha256 does not match the SHA-256 of the request body.",
        ));
    }
    let ts = parse_timestamp("x-acs-date", date)?;
    check_time(st, ts)?;
    let acc = account(st, cred, h("x-acs-security-token")?)?;
    if h("x-acs-accesskey-id")?.is_some_and(|a| a != cred) {
        return Err(incomplete("x-acs-accesskey-id differs from the Credential"));
    }

    let canonical = v3_canonical_request(&rq.method, &rq.path, &rq.query, &selected, &body_hash);
    let expected = sign::v3_signature(&acc.access_key_secret, &canonical);
    if !sign::eq_ct(&expected, signature) {
        return Err(reject(
            400,
            "SignatureDoesNotMatch",
            format!(
                "Specified signature does not match our calculation. server string to sign is:ACS3-HMAC-SHA256\n{}",
                sign::sha256_hex(canonical.as_bytes())
            ),
        ));
    }
    check_nonce(st, cred, nonce)?;
    Ok(Authed {
        action: action.to_string(),
        params: rec.params.clone(),
    })
}

/// The V3 canonical request over exactly the signed headers given (sorted, lower-case, values
/// trimmed). `sign::v3_canonical_request` picks its own header set (host, content-type,
/// x-acs-*), which is right for a client but a server must honour whatever SignedHeaders
/// names; the unit test `canonical_request_matches_the_crate` keeps the two in step.
fn v3_canonical_request(
    method: &str,
    path: &str,
    query: &[(String, String)],
    signed: &[(String, String)],
    body_sha256_hex: &str,
) -> String {
    let headers: String = signed.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let names: Vec<&str> = signed.iter().map(|(k, _)| k.as_str()).collect();
    format!(
        "{method}\n{path}\n{}\n{headers}\n{}\n{body_sha256_hex}",
        sign::canonical_query(query),
        names.join(";")
    )
}

/// `ACS3-HMAC-SHA256 Credential=AK,SignedHeaders=a;b,Signature=hex` → (AK, names, signature).
fn parse_authorization(a: &str) -> Result<(&str, &str, &str), Reject> {
    let rest = a
        .strip_prefix("ACS3-HMAC-SHA256 ")
        .ok_or_else(|| incomplete("Authorization must start with \"ACS3-HMAC-SHA256 \""))?;
    let (mut cred, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or_else(|| incomplete("Authorization parts must be key=value"))?;
        let slot = match k {
            "Credential" => &mut cred,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut sig,
            _ => return Err(incomplete(&format!("unknown Authorization part {k}"))),
        };
        if slot.replace(v).is_some() {
            return Err(incomplete(&format!("Authorization part {k} appears twice")));
        }
    }
    match (cred, signed, sig) {
        (Some(c), Some(s), Some(g)) if !c.is_empty() && !s.is_empty() && !g.is_empty() => {
            Ok((c, s, g))
        }
        _ => Err(incomplete(
            "Authorization needs non-empty Credential, SignedHeaders and Signature",
        )),
    }
}

fn authenticate_v2(
    st: &mut State,
    rq: &Received,
    rec: &mut RecordedRequest,
) -> Result<Authed, Reject> {
    let get = |k: &str| {
        rq.query
            .iter()
            .find(|(qk, _)| qk == k)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    rec.params = api_params(&rq.query, V2_PROTOCOL_PARAMS);
    rec.action = get("Action").map(str::to_string);
    rec.access_key_id = get("AccessKeyId").map(str::to_string);
    for k in [
        "Action",
        "Version",
        "Format",
        "AccessKeyId",
        "SignatureMethod",
        "SignatureVersion",
        "SignatureNonce",
    ] {
        get(k).ok_or_else(|| missing(k))?;
    }
    let timestamp = get("Timestamp").ok_or_else(|| {
        reject(
            400,
            "IllegalTimestamp",
            "The input parameter \"Timestamp\" that is mandatory for processing this request is not supplied.",
        )
    })?;
    let (action, version) = (get("Action").unwrap_or(""), get("Version").unwrap_or(""));
    check_action_version(action, version)?;
    if !get("Format").unwrap_or("").eq_ignore_ascii_case("JSON") {
        return Err(invalid("Format", "the fake answers only JSON"));
    }
    if get("SignatureMethod") != Some("HMAC-SHA1") {
        return Err(invalid("SignatureMethod", "must be HMAC-SHA1"));
    }
    if get("SignatureVersion") != Some("1.0") {
        return Err(invalid("SignatureVersion", "must be 1.0"));
    }
    let ts = parse_timestamp("Timestamp", timestamp)?;
    check_time(st, ts)?;
    let ak = get("AccessKeyId").unwrap_or("");
    let acc = account(st, ak, get("SecurityToken"))?;
    let signed: Vec<(String, String)> = rq
        .query
        .iter()
        .filter(|(k, _)| k != "Signature")
        .cloned()
        .collect();
    let string_to_sign = sign::v2_string_to_sign(&rq.method, &signed);
    let expected = sign::v2_signature(&acc.access_key_secret, &string_to_sign);
    if !sign::eq_ct(&expected, get("Signature").unwrap_or("")) {
        return Err(reject(
            400,
            "SignatureDoesNotMatch",
            format!(
                "Specified signature is not matched with our calculation. server string to sign is:{string_to_sign}"
            ),
        ));
    }
    check_nonce(st, ak, get("SignatureNonce").unwrap_or(""))?;
    Ok(Authed {
        action: action.to_string(),
        params: rec.params.clone(),
    })
}

// ---- actions ----

const ARCHIVE_PARAMS: &[&str] = &[
    "ConnectionInfo",
    "Credential",
    "Include",
    "Exclude",
    "Options",
    "IndexLevel",
    "Schedule",
    "SpeedLimit",
];

/// Checks that every parameter is known to the action and every value well-formed; returns
/// the `Path.N` values in order.
fn validate(p: &BTreeMap<String, String>, allowed: &[&str]) -> Result<Vec<String>, Reject> {
    let mut paths: BTreeMap<u32, String> = BTreeMap::new();
    for (k, v) in p {
        if let Some(n) = k.strip_prefix("Path.") {
            if !allowed.contains(&"Path") {
                return Err(invalid(k, "not a parameter of this action"));
            }
            let n: u32 = n
                .parse()
                .ok()
                .filter(|n: &u32| *n >= 1 && n.to_string() == k[5..])
                .ok_or_else(|| invalid(k, "Path.N needs an integer N from 1"))?;
            if v.is_empty() {
                return Err(invalid(k, "a path must not be empty"));
            }
            paths.insert(n, v.clone());
            continue;
        }
        if k == "Path" {
            return Err(invalid(k, "send paths as Path.1, Path.2, …"));
        }
        if !allowed.contains(&k.as_str()) {
            return Err(invalid(k, "not a parameter of this action"));
        }
        check_value(k, v).map_err(|why| invalid(k, why))?;
    }
    // Path.1 … Path.N without a gap.
    for (i, n) in paths.keys().enumerate() {
        if *n as usize != i + 1 {
            return Err(invalid(
                &format!("Path.{}", i + 1),
                "Path.N must be numbered 1, 2, 3, … without a gap",
            ));
        }
    }
    Ok(paths.into_values().collect())
}

/// The value rules of one parameter; unknown names have none.
fn check_value(k: &str, v: &str) -> Result<(), &'static str> {
    let json = || serde_json::from_str::<Value>(v);
    let ok = match k {
        "ConnectionInfo" | "Credential" | "Options" => matches!(json(), Ok(Value::Object(_))),
        "Include" | "Exclude" => {
            matches!(json(), Ok(Value::Array(a)) if a.iter().all(Value::is_string))
        }
        "IndexLevel" => ["OFF", "META", "ALL"].contains(&v),
        "Schedule" => return check_schedule(v),
        "SpeedLimit" => return check_speed_limit(v),
        "DataSourceType" => DATA_SOURCE_TYPES.contains(&v),
        _ => true,
    };
    if ok {
        return Ok(());
    }
    Err(match k {
        "Include" | "Exclude" => "expected the text of a JSON array of strings",
        "IndexLevel" => "expected OFF, META or ALL",
        "DataSourceType" => "unknown data source type",
        _ => "expected the text of a JSON object",
    })
}

/// `I|<unix seconds>|<ISO 8601 duration>`
fn check_schedule(v: &str) -> Result<(), &'static str> {
    let mut it = v.split('|');
    let (Some("I"), Some(start), Some(every), None) = (it.next(), it.next(), it.next(), it.next())
    else {
        return Err("expected I|<unix seconds>|<ISO 8601 duration>");
    };
    if start.is_empty() || !start.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the start must be a UNIX time in seconds");
    }
    if !is_iso8601_duration(every) {
        return Err("the interval must be an ISO 8601 duration such as PT1H or P1D");
    }
    Ok(())
}

fn is_iso8601_duration(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('P') else {
        return false;
    };
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    fn units(s: &str, allowed: &str) -> Option<usize> {
        let mut count = 0;
        let mut digits = 0;
        let mut last = None;
        for c in s.chars() {
            if c.is_ascii_digit() {
                digits += 1;
            } else {
                let pos = allowed.find(c)?;
                if digits == 0 || last.is_some_and(|l| pos <= l) {
                    return None;
                }
                last = Some(pos);
                digits = 0;
                count += 1;
            }
        }
        (digits == 0).then_some(count)
    }
    let Some(d) = units(date, "YMWD") else {
        return false;
    };
    match time {
        None => d > 0,
        Some(t) => units(t, "HMS").is_some_and(|n| n > 0),
    }
}

/// `from:to:kib[|from:to:kib…]`, hours 0–24 with from < to, KiB/s a positive integer.
fn check_speed_limit(v: &str) -> Result<(), &'static str> {
    for window in v.split('|') {
        let parts: Vec<&str> = window.split(':').collect();
        let [from, to, kib] = parts.as_slice() else {
            return Err("expected from_hour:to_hour:kib_per_s, windows joined by |");
        };
        let num = |s: &str| {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u64>().ok())
                .flatten()
        };
        let (Some(from), Some(to), Some(kib)) = (num(from), num(to), num(kib)) else {
            return Err("hours and KiB/s must be non-negative integers");
        };
        if to > 24 || from >= to {
            return Err("hours must be 0–24 with from < to");
        }
        if kib == 0 {
            return Err("KiB/s must be positive");
        }
    }
    Ok(())
}

fn required<'a>(p: &'a BTreeMap<String, String>, k: &str) -> Result<&'a str, Reject> {
    p.get(k)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| missing(k))
}

fn add_data_source(st: &mut State, p: &BTreeMap<String, String>) -> Result<Value, Reject> {
    let mut allowed = vec!["DataSourceType", "DataSourceName", "ClusterId", "Path"];
    allowed.extend_from_slice(ARCHIVE_PARAMS);
    let kind = required(p, "DataSourceType")?;
    let name = required(p, "DataSourceName")?;
    let paths = validate(p, &allowed)?;
    let get = |k: &str| p.get(k).cloned();
    let ds = StoredDataSource {
        data_source_id: String::new(),
        data_source_name: name.to_string(),
        data_source_type: kind.to_string(),
        cluster_id: get("ClusterId").unwrap_or_default(),
        connection_info: get("ConnectionInfo"),
        credential: get("Credential"),
        include: get("Include"),
        exclude: get("Exclude"),
        options: get("Options"),
        paths,
        index_level: get("IndexLevel"),
        schedule: get("Schedule"),
        speed_limit: get("SpeedLimit"),
        created_time: 0,
        updated_time: 0,
    };
    // No idempotency, as in HBR: the same name twice is two data sources.
    let id = st.insert(ds);
    Ok(json!({ "DataSourceId": id }))
}

fn update_data_source(st: &mut State, p: &BTreeMap<String, String>) -> Result<Value, Reject> {
    let mut allowed = vec!["DataSourceId", "DataSourceName", "ClusterId", "Path"];
    allowed.extend_from_slice(ARCHIVE_PARAMS);
    let id = required(p, "DataSourceId")?;
    let paths = validate(p, &allowed)?;
    if p.get("DataSourceName").is_some_and(String::is_empty) {
        return Err(invalid("DataSourceName", "must not be empty"));
    }
    let Some(i) = st.data_sources.iter().position(|d| d.data_source_id == id) else {
        return Err(reject(
            404,
            "DataSourceNotFound",
            format!("The specified data source {id} does not exist."),
        ));
    };
    let mut ds = st.data_sources[i].clone();
    let set = |slot: &mut Option<String>, k: &str| {
        if let Some(v) = p.get(k) {
            *slot = Some(v.clone());
        }
    };
    if let Some(v) = p.get("DataSourceName") {
        ds.data_source_name = v.clone();
    }
    if let Some(v) = p.get("ClusterId") {
        ds.cluster_id = v.clone();
    }
    set(&mut ds.connection_info, "ConnectionInfo");
    set(&mut ds.credential, "Credential");
    set(&mut ds.include, "Include");
    set(&mut ds.exclude, "Exclude");
    set(&mut ds.options, "Options");
    set(&mut ds.index_level, "IndexLevel");
    set(&mut ds.schedule, "Schedule");
    set(&mut ds.speed_limit, "SpeedLimit");
    if !paths.is_empty() {
        ds.paths = paths;
    }
    st.touch(&mut ds);
    st.data_sources[i] = ds;
    Ok(json!({}))
}

/// `PageNumber` (from 1, default 1) and `PageSize` (1–99, default 10) of a Describe action,
/// as HBR documents them: integers written plainly, nothing else.
fn paging(p: &BTreeMap<String, String>) -> Result<(u64, u64), Reject> {
    let int = |k: &str, default: u64, lo: u64, hi: u64| -> Result<u64, Reject> {
        match p.get(k) {
            None => Ok(default),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| (lo..=hi).contains(n) && n.to_string() == *v)
                .ok_or_else(|| invalid(k, &format!("expected an integer from {lo} to {hi}"))),
        }
    };
    Ok((
        int("PageNumber", 1, 1, u64::from(u32::MAX))?,
        int("PageSize", 10, 1, 99)?,
    ))
}

fn describe_data_sources(st: &State, p: &BTreeMap<String, String>) -> Result<Value, Reject> {
    validate(
        p,
        &[
            "ClusterId",
            "DataSourceId",
            "DataSourceName",
            "DataSourceType",
            "PageNumber",
            "PageSize",
        ],
    )?;
    let (page_number, page_size) = paging(p)?;
    let matches = |ds: &&StoredDataSource| {
        p.get("ClusterId").is_none_or(|v| ds.cluster_id == *v)
            && p.get("DataSourceId").is_none_or(|v| ds.data_source_id == *v)
            && p.get("DataSourceType").is_none_or(|v| ds.data_source_type == *v)
            // Substring on purpose: HBR does not document an exact name match.
            && p.get("DataSourceName").is_none_or(|v| ds.data_source_name.contains(v.as_str()))
    };
    let all: Vec<&StoredDataSource> = st.data_sources.iter().filter(matches).collect();
    let start = (page_number - 1).saturating_mul(page_size);
    let page: Vec<Value> = all
        .iter()
        .skip(usize::try_from(start).unwrap_or(usize::MAX))
        .take(page_size as usize)
        .map(|ds| ds.to_describe_json())
        .collect();
    Ok(json!({
        "PageNumber": page_number,
        "PageSize": page_size,
        "TotalCount": all.len(),
        "DataSources": page,
    }))
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn durations() {
        for ok in ["P1D", "PT1H", "P1Y2M3W4DT5H6M7S", "PT30M", "P2W"] {
            assert!(is_iso8601_duration(ok), "{ok}");
        }
        for bad in [
            "", "P", "PT", "1D", "PD", "P1H", "PT1D", "P1D1Y", "P1DT", "P1.5D",
        ] {
            assert!(!is_iso8601_duration(bad), "{bad}");
        }
    }

    #[test]
    fn speed_limits() {
        assert!(check_speed_limit("6:21:10240").is_ok());
        assert!(check_speed_limit("0:6:1|21:24:2048").is_ok());
        for bad in ["", "6:21", "21:6:1", "0:25:1", "0:6:0", "a:6:1", "0:6:-1"] {
            assert!(check_speed_limit(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn schedules() {
        assert!(check_schedule("I|1729493847|P1D").is_ok());
        for bad in ["I|x|P1D", "J|1|P1D", "I|1|1D", "I|1|P1D|x", "I||P1D"] {
            assert!(check_schedule(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn canonical_request_matches_the_crate() {
        let h = |k: &str, v: &str| (k.to_string(), v.to_string());
        let query = vec![h("B", "x y"), h("A", "*/~")];
        let signed = vec![
            h("host", "127.0.0.1:1"),
            h("x-acs-action", "DescribeDataSources"),
            h("x-acs-date", "2026-01-01T00:00:00Z"),
        ];
        let (crate_version, _) =
            sign::v3_canonical_request("POST", "/", &query, &signed, sign::EMPTY_BODY_SHA256);
        assert_eq!(
            v3_canonical_request("POST", "/", &query, &signed, sign::EMPTY_BODY_SHA256),
            crate_version
        );
    }

    #[test]
    fn query_decoding() {
        let q = decode_query("a=%20b&c=d+e&f").ok().unwrap();
        assert_eq!(
            q,
            vec![
                ("a".into(), " b".into()),
                ("c".into(), "d e".into()),
                ("f".into(), String::new())
            ]
        );
        assert!(decode_query("a=1&a=2").is_err());
    }
}
