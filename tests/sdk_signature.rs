//! Cross-check against the official Alibaba Cloud Python SDK: the request the agent builds for
//! AddDataSource (every parameter, with and without an STS token) must be the one the SDK's
//! hbr20170908 client builds — same query, same signed headers — and sign to the same
//! canonical request and Authorization (V3) or Signature (V2). The SDK side is
//! `tests/support/sdk_sign.py`; CI installs it (`pip install alibabacloud-tea-openapi
//! alibabacloud-hbr20170908`). Missing Python or SDK fails the test: it must not pass silently.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use hbr_source_agent::config::model::SignatureVersion;
use hbr_source_agent::hbr::client::{build_signed_request, wire_params};
use hbr_source_agent::hbr::{Credentials, DataSourceRequest, sign};
use hbr_source_agent::secret::{Secret, SecretOrigin};
use serde_json::{Value, json};
use time::macros::datetime;

const HOST: &str = "hbr.cn-hangzhou.aliyuncs.com";
const NONCE: &str = "3156853299f313e23d1673dc12e1703d";
const TIMESTAMP: &str = "2024-10-21T06:57:27Z";
const CONNECTION_INFO: &str = r#"{"dataServerAddresses":[{"host":"123.123.123.123","port":"2049"}],"sharePath":"/share","mountOptions":"vers=3,nolock","fileSystemType":"nfs"}"#;
const CREDENTIAL: &str = r#"{"mountUsername":"backup","mountPassword":"p@ss w0rd+/=*~"}"#;
const PATHS: [&str; 2] = ["/share/projects", "/share/home dirs/ü"];

fn request() -> DataSourceRequest {
    let mut params = BTreeMap::new();
    for (k, v) in [
        ("ClusterId", "cl-0004i0nlngorvgjpl7ck"),
        ("DataSourceType", "COMMON_NAS"),
        ("DataSourceName", "MyLocalNas"),
        ("ConnectionInfo", CONNECTION_INFO),
        ("Path.1", PATHS[0]),
        ("Path.2", PATHS[1]),
        ("Include", r#"["*.doc","/share/projects/*"]"#),
        ("IndexLevel", "META"),
        ("Schedule", "I|1729493847|P1D"),
        ("SpeedLimit", "6:21:10240|0:6:0"),
    ] {
        params.insert(k.to_string(), v.to_string());
    }
    DataSourceRequest {
        params,
        credential: Some(Secret::new(CREDENTIAL, SecretOrigin::Derived("test"))),
    }
}

fn sdk(input: &Value) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/sdk_sign.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let hint = "pip install alibabacloud-tea-openapi alibabacloud-hbr20170908";
    let mut child = Command::new(&python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python} ({e}); install Python 3 and `{hint}`"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the SDK signer failed ({}): {stderr}\nIf the SDK is missing: {hint}",
        out.status
    );
    serde_json::from_slice(&out.stdout).expect("the SDK signer's output is JSON")
}

fn check(version: SignatureVersion, token: Option<&str>) {
    let creds = Credentials {
        access_key_id: Secret::new("LTAI5tTestAccessKeyId", SecretOrigin::Literal),
        access_key_secret: Secret::new("TestSecret/With+Odd=Chars", SecretOrigin::Literal),
        security_token: token.map(|t| Secret::new(t, SecretOrigin::Literal)),
    };
    let endpoint = url::Url::parse(&format!("https://{HOST}")).unwrap();
    let ours = build_signed_request(
        &endpoint,
        "AddDataSource",
        &wire_params(&request(), None),
        &creds,
        NONCE,
        datetime!(2024-10-21 06:57:27 UTC),
        version,
    );
    let input = json!({
        "signature": match version { SignatureVersion::V3 => "v3", SignatureVersion::V2 => "v2" },
        "host": HOST,
        "access_key_id": creds.access_key_id.expose(),
        "access_key_secret": creds.access_key_secret.expose(),
        "security_token": token,
        "nonce": NONCE,
        "timestamp": TIMESTAMP,
        "request": {
            "ClusterId": "cl-0004i0nlngorvgjpl7ck",
            "DataSourceType": "COMMON_NAS",
            "DataSourceName": "MyLocalNas",
            "ConnectionInfo": CONNECTION_INFO,
            "Credential": CREDENTIAL,
            "Path": PATHS,
            "Include": r#"["*.doc","/share/projects/*"]"#,
            "IndexLevel": "META",
            "Schedule": "I|1729493847|P1D",
            "SpeedLimit": "6:21:10240|0:6:0",
        },
    });
    let theirs = sdk(&input);
    let what = format!("{version:?}, STS {}", token.is_some());

    assert_eq!(ours.method, theirs["method"], "{what}: method");
    assert_eq!(ours.url.path(), theirs["pathname"], "{what}: path");
    // The query: same parameters, same values (V2: Signature included).
    let our_query: BTreeMap<String, String> = ours.query.iter().cloned().collect();
    let their_query: BTreeMap<String, String> =
        serde_json::from_value(theirs["query"].clone()).unwrap();
    assert_eq!(our_query, their_query, "{what}: query");
    // The URL carries exactly that query.
    let from_url: BTreeMap<String, String> = ours.url.query_pairs().into_owned().collect();
    assert_eq!(from_url, our_query, "{what}: URL query");

    // Headers: every header the SDK sends, but its user-agent, its telemetry header and the
    // Authorization (compared below), we send with the same value, and nothing else.
    let their_headers: BTreeMap<String, String> =
        serde_json::from_value(theirs["headers"].clone()).unwrap();
    let skip = ["user-agent", "x-acs-credentials-provider", "authorization"];
    let ours_h: BTreeMap<String, String> = ours
        .headers
        .iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .cloned()
        .collect();
    let theirs_h: BTreeMap<String, String> = their_headers
        .into_iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .collect();
    assert_eq!(ours_h, theirs_h, "{what}: headers");

    if version == SignatureVersion::V3 {
        let (canonical, _) = sign::v3_canonical_request(
            ours.method,
            ours.url.path(),
            &ours.query,
            &ours.headers,
            sign::EMPTY_BODY_SHA256,
        );
        assert_eq!(canonical, theirs["canonical"], "{what}: canonical request");
        let auth = ours
            .headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.as_str());
        assert_eq!(
            auth,
            theirs["authorization"].as_str(),
            "{what}: Authorization"
        );
        assert_eq!(
            auth.unwrap().contains("x-acs-security-token"),
            token.is_some()
        );
    } else {
        assert!(
            !ours.headers.iter().any(|(k, _)| k == "authorization"),
            "{what}: V2 sends no Authorization"
        );
        assert_eq!(
            our_query.get("SecurityToken").map(String::as_str),
            token,
            "{what}"
        );
    }
}

#[test]
fn add_data_source_signs_like_the_official_sdk() {
    let token = "CAIS8gF1q6Ft5B2yfSjIr5bkKt3+j7xF0K+taUTcgUsQaeRtg7zJrTz2IHxMenBqB+0ctvw/mWxV6/YZ";
    for version in [SignatureVersion::V3, SignatureVersion::V2] {
        check(version, None);
        check(version, Some(token));
    }
}
