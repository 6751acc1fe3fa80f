//! Tests of the fake HBR itself: it must accept what the official SDK sends and reject, with
//! Alibaba Cloud's codes, everything a sloppy client might get wrong. Requests are built here
//! with the crate's signer and sent with reqwest, byte by byte as a client would.

#[path = "support/fake_hbr.rs"]
mod fake_hbr;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use fake_hbr::{Account, FakeConfig, FakeHbr, Fault, SignatureVersion, StoredDataSource};
use hbr_source_agent::hbr::sign;
use serde_json::Value;
use time::OffsetDateTime;
use time::macros::{datetime, format_description};

const AK: &str = fake_hbr::DEFAULT_ACCESS_KEY_ID;
const SECRET: &str = fake_hbr::DEFAULT_ACCESS_KEY_SECRET;
const CLUSTER: &str = "cl-0004i0nlngorvgjpl7ck";
const NAS_INFO: &str = r#"{"dataServerAddresses":[{"host":"123.123.123.123","port":"2049"}],"sharePath":"/share","mountOptions":"vers=3","fileSystemType":"nfs"}"#;

fn ts(t: OffsetDateTime) -> String {
    t.format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
    ))
    .unwrap()
}

fn nonce() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A request as it will go on the wire; tests may tamper with it before sending.
#[derive(Clone)]
struct Wire {
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
}

struct Client {
    http: reqwest::Client,
    endpoint: String,
    host: String,
    ak: String,
    secret: String,
    token: Option<String>,
}

impl Client {
    fn new(fake: &FakeHbr) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            endpoint: fake.endpoint(),
            host: fake.addr().to_string(),
            ak: AK.into(),
            secret: SECRET.into(),
            token: None,
        }
    }

    fn with_key(mut self, ak: &str, secret: &str, token: Option<&str>) -> Self {
        self.ak = ak.into();
        self.secret = secret.into();
        self.token = token.map(str::to_string);
        self
    }

    fn v3_at(&self, action: &str, params: &[(&str, &str)], date: OffsetDateTime) -> Wire {
        let query = pairs(params);
        let mut headers = pairs(&[
            ("host", &self.host),
            ("x-acs-action", action),
            ("x-acs-version", "2017-09-08"),
            ("x-acs-date", &ts(date)),
            ("x-acs-signature-nonce", &nonce()),
            ("x-acs-content-sha256", sign::EMPTY_BODY_SHA256),
        ]);
        if let Some(t) = &self.token {
            headers.push(("x-acs-security-token".into(), t.clone()));
            headers.push(("x-acs-accesskey-id".into(), self.ak.clone()));
        }
        let (canonical, signed) =
            sign::v3_canonical_request("POST", "/", &query, &headers, sign::EMPTY_BODY_SHA256);
        let sig = sign::v3_signature(&self.secret, &canonical);
        headers.push((
            "authorization".into(),
            sign::v3_authorization(&self.ak, &signed, &sig),
        ));
        Wire { query, headers }
    }

    fn v3(&self, action: &str, params: &[(&str, &str)]) -> Wire {
        self.v3_at(action, params, OffsetDateTime::now_utc())
    }

    fn v2_at(&self, action: &str, params: &[(&str, &str)], date: OffsetDateTime) -> Wire {
        let mut query = pairs(&[
            ("Action", action),
            ("Version", "2017-09-08"),
            ("Format", "json"),
            ("AccessKeyId", &self.ak),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureVersion", "1.0"),
            ("SignatureNonce", &nonce()),
            ("Timestamp", &ts(date)),
        ]);
        if let Some(t) = &self.token {
            query.push(("SecurityToken".into(), t.clone()));
        }
        query.extend(pairs(params));
        let sig = sign::v2_signature(&self.secret, &sign::v2_string_to_sign("POST", &query));
        query.push(("Signature".into(), sig));
        Wire {
            query,
            headers: pairs(&[("host", &self.host)]),
        }
    }

    fn v2(&self, action: &str, params: &[(&str, &str)]) -> Wire {
        self.v2_at(action, params, OffsetDateTime::now_utc())
    }

    async fn try_send(
        &self,
        w: &Wire,
    ) -> reqwest::Result<(u16, reqwest::header::HeaderMap, Value)> {
        let q: Vec<String> = w
            .query
            .iter()
            .map(|(k, v)| format!("{}={}", sign::percent_encode(k), sign::percent_encode(v)))
            .collect();
        let mut rb = self
            .http
            .post(format!("{}/?{}", self.endpoint, q.join("&")));
        for (k, v) in &w.headers {
            rb = rb.header(k, v);
        }
        let resp = rb.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body: Value = resp.json().await?;
        Ok((status, headers, body))
    }

    async fn send(&self, w: &Wire) -> (u16, Value) {
        let (s, _, b) = self.try_send(w).await.expect("the fake answers");
        (s, b)
    }
}

async fn start() -> (FakeHbr, Client) {
    let fake = FakeHbr::start(FakeConfig::default()).await.unwrap();
    let client = Client::new(&fake);
    (fake, client)
}

#[track_caller]
fn assert_error(got: &(u16, Value), status: u16, code: &str) {
    assert_eq!(
        (got.0, got.1["Code"].as_str()),
        (status, Some(code)),
        "body: {}",
        got.1
    );
    for k in ["RequestId", "HostId", "Message", "Recommend"] {
        assert!(got.1[k].is_string(), "{k} missing in {}", got.1);
    }
}

#[track_caller]
fn assert_ok(got: &(u16, Value)) {
    assert_eq!(got.0, 200, "body: {}", got.1);
    assert_eq!(got.1["Success"], Value::Bool(true), "body: {}", got.1);
    assert_eq!(got.1["Code"], "200");
    assert_eq!(got.1["Message"], "successful");
    assert!(got.1["RequestId"].is_string());
}

fn nas_params(name: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DataSourceType", "COMMON_NAS".into()),
        ("DataSourceName", name.into()),
        ("ClusterId", CLUSTER.into()),
        ("ConnectionInfo", NAS_INFO.into()),
    ]
}

fn refs<'a>(p: &'a [(&'a str, String)]) -> Vec<(&'a str, &'a str)> {
    p.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

async fn add(c: &Client, name: &str) -> String {
    let p = nas_params(name);
    let r = c.send(&c.v3("AddDataSource", &refs(&p))).await;
    assert_ok(&r);
    r.1["DataSourceId"].as_str().unwrap().to_string()
}

async fn describe(c: &Client, params: &[(&str, &str)]) -> (u16, Value) {
    c.send(&c.v3("DescribeDataSources", params)).await
}

#[tokio::test]
async fn v3_add_then_describe_round_trips_without_credential() {
    let (fake, c) = start().await;
    let cred = r#"{"mountUsername":"backup","mountPassword":"p@ss word+*"}"#;
    let params = [
        ("DataSourceType", "COMMON_NAS"),
        ("DataSourceName", "finance"),
        ("ClusterId", CLUSTER),
        ("ConnectionInfo", NAS_INFO),
        ("Credential", cred),
        ("Path.1", "/a b"),
        ("Path.2", "/中文"),
        ("Include", r#"["*.doc"]"#),
        ("Exclude", "[]"),
        ("Options", "{}"),
        ("IndexLevel", "META"),
        ("Schedule", "I|1729493847|P1D"),
        ("SpeedLimit", "6:21:10240|21:24:20480"),
    ];
    let r = c.send(&c.v3("AddDataSource", &params)).await;
    assert_ok(&r);
    let id = r.1["DataSourceId"].as_str().unwrap();
    assert!(id.starts_with("ds-"), "{id}");

    let rec = &fake.requests()[0];
    assert_eq!(rec.action.as_deref(), Some("AddDataSource"));
    assert_eq!(rec.signature_version, Some(SignatureVersion::V3));
    assert_eq!((rec.status, rec.code.as_deref()), (Some(200), None));
    assert_eq!(rec.param("Credential"), Some(cred));
    assert_eq!(rec.params.len(), params.len());

    let d = describe(&c, &[("ClusterId", CLUSTER)]).await;
    assert_ok(&d);
    assert_eq!(d.1["TotalCount"], 1);
    assert_eq!(d.1["PageNumber"], 1);
    assert_eq!(d.1["PageSize"], 10);
    let ds = &d.1["DataSources"][0];
    assert_eq!(ds["DataSourceId"], id);
    assert_eq!(ds["DataSourceName"], "finance");
    assert_eq!(ds["ConnectionInfo"], NAS_INFO);
    assert_eq!(ds["Paths"], serde_json::json!(["/a b", "/中文"]));
    assert_eq!(ds["IndexLevel"], "META");
    assert!(ds["CreatedTime"].is_i64() && ds["UpdatedTime"].is_i64());
    assert!(ds.get("Credential").is_none(), "Credential leaked: {ds}");
    assert!(!d.1.to_string().contains("p@ss"), "secret leaked");
    assert_eq!(fake.data_sources()[0].credential.as_deref(), Some(cred));
    fake.shutdown().await;
}

#[tokio::test]
async fn v2_requests_are_accepted() {
    let (fake, c) = start().await;
    let p = nas_params("legacy");
    let r = c.send(&c.v2("AddDataSource", &refs(&p))).await;
    assert_ok(&r);
    let d = c
        .send(&c.v2("DescribeDataSources", &[("DataSourceName", "legacy")]))
        .await;
    assert_ok(&d);
    assert_eq!(d.1["TotalCount"], 1);
    let rec = &fake.requests()[0];
    assert_eq!(rec.signature_version, Some(SignatureVersion::V2));
    // Protocol parameters are not action parameters.
    assert_eq!(rec.params.len(), p.len());
    fake.shutdown().await;
}

#[tokio::test]
async fn one_byte_changed_in_the_signature_is_rejected() {
    let (fake, c) = start().await;
    let mut w = c.v3("DescribeDataSources", &[]);
    let auth = &mut w.headers.last_mut().unwrap().1;
    let last = auth.pop().unwrap();
    auth.push(if last == '0' { '1' } else { '0' });
    assert_error(&c.send(&w).await, 400, "SignatureDoesNotMatch");

    let mut w = c.v2("DescribeDataSources", &[]);
    let sig = &mut w.query.last_mut().unwrap().1;
    let first = sig.remove(0);
    sig.insert(0, if first == 'A' { 'B' } else { 'A' });
    assert_error(&c.send(&w).await, 400, "SignatureDoesNotMatch");
    fake.shutdown().await;
}

#[tokio::test]
async fn anything_not_covered_by_the_signature_is_rejected() {
    let (fake, c) = start().await;
    // A query parameter added after signing.
    let mut w = c.v3("DescribeDataSources", &[("PageSize", "10")]);
    w.query.push(("PageNumber".into(), "2".into()));
    assert_error(&c.send(&w).await, 400, "SignatureDoesNotMatch");
    // A changed parameter value.
    let mut w = c.v3("DescribeDataSources", &[("PageSize", "10")]);
    w.query[0].1 = "20".into();
    assert_error(&c.send(&w).await, 400, "SignatureDoesNotMatch");
    // An x-acs-* header that is not in SignedHeaders.
    let mut w = c.v3("DescribeDataSources", &[]);
    w.headers.push(("x-acs-extra".into(), "1".into()));
    assert_error(&c.send(&w).await, 400, "IncompleteSignature");
    // SignedHeaders without host.
    let mut w = c.v3("DescribeDataSources", &[]);
    let auth = &mut w.headers.last_mut().unwrap().1;
    *auth = auth.replace("SignedHeaders=host;", "SignedHeaders=");
    assert_error(&c.send(&w).await, 400, "IncompleteSignature");
    // A V2 parameter added after signing.
    let mut w = c.v2("DescribeDataSources", &[]);
    w.query.insert(0, ("PageSize".into(), "20".into()));
    assert_error(&c.send(&w).await, 400, "SignatureDoesNotMatch");
    // A body that x-acs-content-sha256 does not describe is refused too.
    let w = c.v3("DescribeDataSources", &[]);
    let mut rb = c.http.post(format!("{}/", c.endpoint)).body("x=1");
    for (k, v) in &w.headers {
        rb = rb.header(k, v);
    }
    let resp = rb.send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    fake.shutdown().await;
}

#[tokio::test]
async fn a_reused_nonce_is_rejected() {
    let (fake, c) = start().await;
    let w = c.v3("DescribeDataSources", &[]);
    assert_ok(&c.send(&w).await);
    assert_error(&c.send(&w).await, 400, "SignatureNonceUsed");
    let w = c.v2("DescribeDataSources", &[]);
    assert_ok(&c.send(&w).await);
    assert_error(&c.send(&w).await, 400, "SignatureNonceUsed");
    fake.shutdown().await;
}

#[tokio::test]
async fn a_timestamp_20_minutes_old_is_rejected() {
    let now = datetime!(2026-03-01 12:00:00 UTC);
    let fake = FakeHbr::start(FakeConfig {
        clock: Some(now),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let c = Client::new(&fake);
    let old = now - time::Duration::minutes(20);
    let w = c.v3_at("DescribeDataSources", &[], old);
    assert_error(&c.send(&w).await, 400, "InvalidTimeStamp.Expired");
    let w = c.v2_at("DescribeDataSources", &[], old);
    assert_error(&c.send(&w).await, 400, "InvalidTimeStamp.Expired");
    let future = now + time::Duration::minutes(16);
    let w = c.v3_at("DescribeDataSources", &[], future);
    assert_error(&c.send(&w).await, 400, "InvalidTimeStamp.Expired");
    // Within the window either way is fine.
    for m in [-14, 14] {
        let w = c.v3_at("DescribeDataSources", &[], now + time::Duration::minutes(m));
        assert_ok(&c.send(&w).await);
    }
    // Not UTC "Z" form.
    let mut w = c.v3_at("DescribeDataSources", &[], now);
    w.headers[3].1 = "2026-03-01T12:00:00+00:00".into();
    assert_eq!(c.send(&w).await.0, 400);
    fake.shutdown().await;
}

#[tokio::test]
async fn an_unknown_access_key_is_rejected() {
    let (fake, c) = start().await;
    let c = c.with_key("nobody", SECRET, None);
    assert_error(
        &c.send(&c.v3("DescribeDataSources", &[])).await,
        404,
        "InvalidAccessKeyId.NotFound",
    );
    assert_error(
        &c.send(&c.v2("DescribeDataSources", &[])).await,
        404,
        "InvalidAccessKeyId.NotFound",
    );
    // A known key with the wrong secret.
    let c = c.with_key(AK, "wrong", None);
    assert_error(
        &c.send(&c.v3("DescribeDataSources", &[])).await,
        400,
        "SignatureDoesNotMatch",
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn sts_tokens_are_checked() {
    let now = datetime!(2026-03-01 12:00:00 UTC);
    let fake = FakeHbr::start(FakeConfig {
        accounts: vec![Account::sts(
            "STS.key",
            "sts-secret",
            "the-token",
            Some(now + time::Duration::hours(1)),
        )],
        clock: Some(now),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let base = Client::new(&fake);
    let good = Client::new(&fake).with_key("STS.key", "sts-secret", Some("the-token"));
    assert_ok(
        &good
            .send(&good.v3_at("DescribeDataSources", &[], now))
            .await,
    );
    assert_ok(
        &good
            .send(&good.v2_at("DescribeDataSources", &[], now))
            .await,
    );

    let wrong = base.with_key("STS.key", "sts-secret", Some("other-token"));
    for w in [
        wrong.v3_at("DescribeDataSources", &[], now),
        wrong.v2_at("DescribeDataSources", &[], now),
    ] {
        assert_error(
            &wrong.send(&w).await,
            400,
            "InvalidSecurityToken.MismatchWithAccessKey",
        );
    }
    let none = Client::new(&fake).with_key("STS.key", "sts-secret", None);
    assert_error(
        &none
            .send(&none.v3_at("DescribeDataSources", &[], now))
            .await,
        400,
        "MissingSecurityToken",
    );

    let later = now + time::Duration::hours(2);
    fake.set_clock(Some(later));
    assert_error(
        &good
            .send(&good.v3_at("DescribeDataSources", &[], later))
            .await,
        400,
        "InvalidSecurityToken.Expired",
    );
    fake.shutdown().await;
}

/// (action, parameters, expected code)
type Case = (
    &'static str,
    Vec<(&'static str, &'static str)>,
    &'static str,
);

#[tokio::test]
async fn bad_parameters_are_rejected() {
    let (fake, c) = start().await;
    let cases: Vec<Case> = vec![
        (
            "AddDataSource",
            vec![("DataSourceType", "COMMON_NAS"), ("ClusterId", CLUSTER)],
            "MissingParameter",
        ),
        (
            "AddDataSource",
            vec![("DataSourceName", "x")],
            "MissingParameter",
        ),
        (
            "AddDataSource",
            vec![
                ("DataSourceType", "COMMON_NAS"),
                ("DataSourceName", "x"),
                ("ConnectionInfo", r#"{"sharePath":"/share""#),
            ],
            "InvalidParameter",
        ),
        (
            "AddDataSource",
            vec![
                ("DataSourceType", "COMMON_NAS"),
                ("DataSourceName", "x"),
                ("ConnectionInfo", r#"["not","an","object"]"#),
            ],
            "InvalidParameter",
        ),
        (
            "AddDataSource",
            vec![
                ("DataSourceType", "COMMON_NAS"),
                ("DataSourceName", "x"),
                ("Path.1", "/a"),
                ("Path.3", "/c"),
            ],
            "InvalidParameter",
        ),
        (
            "AddDataSource",
            vec![
                ("DataSourceType", "COMMON_NAS"),
                ("DataSourceName", "x"),
                ("Path.2", "/b"),
            ],
            "InvalidParameter",
        ),
        (
            "AddDataSource",
            vec![
                ("DataSourceType", "COMMON_NAS"),
                ("DataSourceName", "x"),
                ("Path", "/a"),
            ],
            "InvalidParameter",
        ),
        (
            "AddDataSource",
            vec![("DataSourceType", "FLOPPY"), ("DataSourceName", "x")],
            "InvalidParameter",
        ),
        (
            "AddDataSource",
            vec![
                ("DataSourceType", "HDFS"),
                ("DataSourceName", "x"),
                ("Include", r#"["a",1]"#),
            ],
            "InvalidParameter",
        ),
        (
            "AddDataSource",
            vec![
                ("DataSourceType", "HDFS"),
                ("DataSourceName", "x"),
                ("IndexLevel", "SOME"),
            ],
            "InvalidParameter",
        ),
        (
            "AddDataSource",
            vec![
                ("DataSourceType", "HDFS"),
                ("DataSourceName", "x"),
                ("Schedule", "I|1729493847|1 day"),
            ],
            "InvalidParameter",
        ),
        (
            "AddDataSource",
            vec![
                ("DataSourceType", "HDFS"),
                ("DataSourceName", "x"),
                ("SpeedLimit", "21:6:100"),
            ],
            "InvalidParameter",
        ),
        (
            "AddDataSource",
            vec![
                ("DataSourceType", "HDFS"),
                ("DataSourceName", "x"),
                ("Colour", "blue"),
            ],
            "InvalidParameter",
        ),
        (
            "DescribeDataSources",
            vec![("PageSize", "100")],
            "InvalidParameter",
        ),
        (
            "DescribeDataSources",
            vec![("PageSize", "0")],
            "InvalidParameter",
        ),
        (
            "DescribeDataSources",
            vec![("PageNumber", "0")],
            "InvalidParameter",
        ),
        (
            "DescribeDataSources",
            vec![("PageNumber", "one")],
            "InvalidParameter",
        ),
        // Filters HBR's DescribeDataSources model does not have (docs/hbr-api.md): a list of
        // ids, and the SourceType of the backup-plan actions.
        (
            "DescribeDataSources",
            vec![("DataSourceIds", r#"["ds-1"]"#)],
            "InvalidParameter",
        ),
        (
            "DescribeDataSources",
            vec![("SourceType", "COMMON_NAS")],
            "InvalidParameter",
        ),
        ("UpdateDataSource", vec![], "MissingParameter"),
    ];
    for (action, params, code) in cases {
        let r = c.send(&c.v3(action, &params)).await;
        assert_eq!(
            (r.0, r.1["Code"].as_str()),
            (400, Some(code)),
            "{action} {params:?}: {}",
            r.1
        );
    }
    assert!(fake.data_sources().is_empty());
    assert_ok(&describe(&c, &[("PageSize", "99")]).await);

    // Unknown action and wrong version.
    assert_error(
        &c.send(&c.v3("DeleteDataSource", &[])).await,
        404,
        "InvalidAction.NotFound",
    );
    let mut w = c.v3("DescribeDataSources", &[]);
    w.headers[2].1 = "2020-01-01".into();
    // Re-sign so only the version is wrong.
    w.headers.pop();
    let (canonical, signed) =
        sign::v3_canonical_request("POST", "/", &w.query, &w.headers, sign::EMPTY_BODY_SHA256);
    let sig = sign::v3_signature(SECRET, &canonical);
    w.headers.push((
        "authorization".into(),
        sign::v3_authorization(AK, &signed, &sig),
    ));
    assert_error(&c.send(&w).await, 400, "InvalidVersion");
    fake.shutdown().await;
}

#[tokio::test]
async fn paging_returns_every_item_once_with_total_count() {
    let (fake, c) = start().await;
    for i in 0..23 {
        fake.insert_data_source(StoredDataSource::new(
            "COMMON_FILE_SYSTEM",
            &format!("fs-{i}"),
            CLUSTER,
        ));
    }
    fake.insert_data_source(StoredDataSource::new("COMMON_NAS", "elsewhere", "cl-other"));
    let mut seen = BTreeSet::new();
    for page in 1..=4 {
        let d = describe(
            &c,
            &[
                ("ClusterId", CLUSTER),
                ("PageSize", "7"),
                ("PageNumber", &page.to_string()),
            ],
        )
        .await;
        assert_ok(&d);
        assert_eq!(d.1["TotalCount"], 23);
        assert_eq!(d.1["PageNumber"], page);
        assert_eq!(d.1["PageSize"], 7);
        let items = d.1["DataSources"].as_array().unwrap();
        assert_eq!(items.len(), if page < 4 { 7 } else { 2 });
        for ds in items {
            assert!(seen.insert(ds["DataSourceId"].as_str().unwrap().to_string()));
        }
    }
    assert_eq!(seen.len(), 23);
    let beyond = describe(&c, &[("PageNumber", "9")]).await;
    assert_eq!(beyond.1["DataSources"], serde_json::json!([]));
    assert_eq!(beyond.1["TotalCount"], 24);
    fake.shutdown().await;
}

#[tokio::test]
async fn duplicates_by_name_are_kept_and_the_name_filter_is_loose() {
    let (fake, c) = start().await;
    let a = add(&c, "scratch").await;
    let b = add(&c, "scratch").await;
    add(&c, "scratch-2").await;
    assert_ne!(a, b);
    assert_eq!(fake.data_sources().len(), 3);
    let d = describe(&c, &[("DataSourceName", "scratch")]).await;
    // Substring match: a client must compare names itself.
    assert_eq!(d.1["TotalCount"], 3);
    let d = describe(&c, &[("DataSourceId", &b)]).await;
    assert_eq!(d.1["TotalCount"], 1);
    let d = describe(&c, &[("DataSourceType", "HDFS")]).await;
    assert_eq!(d.1["TotalCount"], 0);
    fake.shutdown().await;
}

#[tokio::test]
async fn update_stores_new_values_and_moves_updated_time() {
    let fake = FakeHbr::start(FakeConfig {
        clock: Some(OffsetDateTime::now_utc()),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let c = Client::new(&fake);
    let id = add(&c, "nas").await;
    let before = fake.data_sources()[0].clone();
    let r = c
        .send(&c.v3(
            "UpdateDataSource",
            &[
                ("DataSourceId", &id),
                ("ConnectionInfo", r#"{"path":"/mnt"}"#),
                ("Credential", r#"{"mountUsername":"u","mountPassword":"p"}"#),
                ("Path.1", "/x"),
            ],
        ))
        .await;
    assert_ok(&r);
    let after = fake.data_sources()[0].clone();
    assert_eq!(after.connection_info.as_deref(), Some(r#"{"path":"/mnt"}"#));
    assert_eq!(after.paths, vec!["/x".to_string()]);
    assert_eq!(after.data_source_name, "nas");
    assert!(after.updated_time > before.updated_time);
    assert_eq!(after.created_time, before.created_time);

    let r = c
        .send(&c.v3("UpdateDataSource", &[("DataSourceId", "ds-missing")]))
        .await;
    assert_error(&r, 404, "DataSourceNotFound");
    // The type cannot be changed by UpdateDataSource.
    let r = c
        .send(&c.v3(
            "UpdateDataSource",
            &[("DataSourceId", &id), ("DataSourceType", "HDFS")],
        ))
        .await;
    assert_error(&r, 400, "InvalidParameter");

    // Console-side edits and removals are visible to clients.
    assert!(fake.edit_data_source(&id, |d| d.data_source_name = "renamed".into()));
    let d = describe(&c, &[]).await;
    assert_eq!(d.1["DataSources"][0]["DataSourceName"], "renamed");
    assert!(fake.remove_data_source(&id));
    assert_eq!(describe(&c, &[]).await.1["TotalCount"], 0);
    assert!(!fake.edit_data_source(&id, |_| {}));
    fake.shutdown().await;
}

#[tokio::test]
async fn throttle_fault_answers_400_with_retry_after_for_its_action_only() {
    let (fake, c) = start().await;
    fake.inject(Fault::Throttle {
        count: 2,
        action: Some("AddDataSource".into()),
    });
    assert_ok(&describe(&c, &[]).await);
    let p = nas_params("t");
    for _ in 0..2 {
        let (status, headers, body) = c.try_send(&c.v3("AddDataSource", &refs(&p))).await.unwrap();
        assert_error(&(status, body), 400, "Throttling.User");
        assert_eq!(headers["x-acs-retry-after"], "100");
    }
    assert_ok(&c.send(&c.v3("AddDataSource", &refs(&p))).await);
    assert_eq!(fake.data_sources().len(), 1);
    let recs = fake.requests();
    assert_eq!(recs[1].fault, Some("throttle"));
    assert_eq!(recs[1].code.as_deref(), Some("Throttling.User"));
    assert!(fake.pending_faults().is_empty());
    fake.shutdown().await;
}

#[tokio::test]
async fn server_error_fault_answers_5xx_and_does_not_apply() {
    let (fake, c) = start().await;
    fake.inject(Fault::ServerError {
        count: 1,
        status: 503,
    });
    fake.inject(Fault::ServerError {
        count: 1,
        status: 500,
    });
    let p = nas_params("s");
    assert_error(
        &c.send(&c.v3("AddDataSource", &refs(&p))).await,
        503,
        "ServiceUnavailable",
    );
    assert_error(
        &c.send(&c.v3("AddDataSource", &refs(&p))).await,
        500,
        "InternalError",
    );
    assert!(fake.data_sources().is_empty());
    assert_ok(&c.send(&c.v3("AddDataSource", &refs(&p))).await);
    fake.shutdown().await;
}

#[tokio::test]
async fn slow_fault_delays_then_applies() {
    let (fake, c) = start().await;
    fake.inject(Fault::Slow {
        count: 1,
        delay: Duration::from_millis(600),
    });
    let t = Instant::now();
    add(&c, "slow").await;
    assert!(t.elapsed() >= Duration::from_millis(600));
    // A client that gives up still leaves the data source behind.
    fake.inject(Fault::Slow {
        count: 1,
        delay: Duration::from_millis(800),
    });
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let p = nas_params("slow");
    let w = c.v3("AddDataSource", &refs(&p));
    let q: Vec<String> = w
        .query
        .iter()
        .map(|(k, v)| format!("{}={}", sign::percent_encode(k), sign::percent_encode(v)))
        .collect();
    let mut rb = impatient.post(format!("{}/?{}", c.endpoint, q.join("&")));
    for (k, v) in &w.headers {
        rb = rb.header(k, v);
    }
    assert!(rb.send().await.unwrap_err().is_timeout());
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(fake.data_sources().len(), 2);
    fake.shutdown().await;
}

#[tokio::test]
async fn failure_fault_answers_success_false() {
    let (fake, c) = start().await;
    fake.inject(Fault::Failure {
        count: 1,
        code: "DataSourceLimitExceeded".into(),
        message: "too many".into(),
        http_status: 200,
    });
    let p = nas_params("f");
    let r = c.send(&c.v3("AddDataSource", &refs(&p))).await;
    assert_eq!(r.0, 200);
    assert_eq!(r.1["Success"], false);
    assert_eq!(r.1["Code"], "DataSourceLimitExceeded");
    assert_eq!(r.1["Message"], "too many");
    assert!(fake.data_sources().is_empty());
    assert_eq!(
        fake.requests()[0].code.as_deref(),
        Some("DataSourceLimitExceeded")
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn drop_fault_closes_the_connection_without_an_answer() {
    let (fake, c) = start().await;
    fake.inject_for("AddDataSource", Fault::Drop { count: 1 });
    assert_ok(&describe(&c, &[]).await);
    let p = nas_params("d");
    let err = c
        .try_send(&c.v3("AddDataSource", &refs(&p)))
        .await
        .unwrap_err();
    assert!(!err.is_timeout(), "{err:?}");
    assert!(fake.data_sources().is_empty());
    let recs = fake.requests();
    assert_eq!((recs[1].status, recs[1].fault), (None, Some("drop")));
    // The next attempt, with a fresh nonce, goes through.
    assert_ok(&c.send(&c.v3("AddDataSource", &refs(&p))).await);
    fake.shutdown().await;
}

#[tokio::test]
async fn throttle_every_n() {
    let fake = FakeHbr::start(FakeConfig {
        throttle_every: Some(3),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let c = Client::new(&fake);
    let codes: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(describe(&c, &[]).await.0);
        }
        v
    };
    assert_eq!(codes, vec![200, 200, 400, 200, 200, 400]);
    fake.shutdown().await;
}

#[tokio::test]
async fn refuses_a_non_loopback_address() {
    let err = FakeHbr::start(FakeConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        ..FakeConfig::default()
    })
    .await
    .err()
    .expect("must refuse");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn keeps_answering_while_the_test_thread_blocks() {
    // As when the agent runs as a child process and the test waits on it synchronously.
    let (fake, _c) = start().await;
    let mut s = std::net::TcpStream::connect(fake.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        fake.addr()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("MissingParameter"), "{out}");
    fake.shutdown().await;
}

#[tokio::test]
async fn get_and_other_paths_are_refused() {
    let (fake, c) = start().await;
    let resp = c.http.get(format!("{}/", c.endpoint)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let resp = c
        .http
        .post(format!("{}/v1/x", c.endpoint))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    fake.shutdown().await;
}

#[tokio::test]
async fn headers_signed_beyond_x_acs_are_honoured_like_the_official_sdk_sends_them() {
    // The official SDK signs every header it sets, accept and user-agent included.
    let (fake, c) = start().await;
    let mut w = c.v3("DescribeDataSources", &[("PageSize", "5")]);
    w.headers.pop();
    w.headers.push(("accept".into(), "application/json".into()));
    w.headers
        .push(("user-agent".into(), "AlibabaCloud (test)".into()));
    w.headers.sort();
    let canonical_headers: String = w
        .headers
        .iter()
        .map(|(k, v)| format!("{k}:{v}\n"))
        .collect();
    let names: Vec<&str> = w.headers.iter().map(|(k, _)| k.as_str()).collect();
    let signed = names.join(";");
    let canonical = format!(
        "POST\n/\n{}\n{canonical_headers}\n{signed}\n{}",
        sign::canonical_query(&w.query),
        sign::EMPTY_BODY_SHA256
    );
    let sig = sign::v3_signature(SECRET, &canonical);
    let mut tampered = w.clone();
    w.headers.push((
        "authorization".into(),
        sign::v3_authorization(AK, &signed, &sig),
    ));
    assert_ok(&c.send(&w).await);
    // A signed header's value matters.
    tampered.headers.retain(|(k, _)| k != "accept");
    tampered.headers.push(("accept".into(), "text/xml".into()));
    tampered.headers.push((
        "authorization".into(),
        sign::v3_authorization(AK, &signed, &sig),
    ));
    assert_error(&c.send(&tampered).await, 400, "SignatureDoesNotMatch");
    fake.shutdown().await;
}
