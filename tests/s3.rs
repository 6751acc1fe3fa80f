//! The S3 probe end to end: the agent binary against a real S3 server (moto with SigV4 and IAM
//! enforced, scripts/servers/s3.sh), behind a TLS proxy with a test CA where TLS matters, and
//! the strict fake HBR.

mod common;
#[path = "support/s3.rs"]
mod s3;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// `probe --json` for the config's sources: the run and its reports by source name.
async fn probe(s: &Setup, args: &[&str]) -> (Run, Value) {
    let mut all = vec!["probe", "--json"];
    all.extend_from_slice(args);
    let run = s.run(&all).await;
    let reports: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("probe --json printed no JSON ({e}): {run:?}"));
    let by_name = reports
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["source"].as_str().unwrap().to_owned(), r.clone()))
        .collect::<serde_json::Map<_, _>>();
    (run, Value::Object(by_name))
}

fn failure_code(report: &Value) -> &str {
    report["failure"]["code"].as_str().unwrap_or("(passed)")
}

fn failure_reason(report: &Value) -> &str {
    report["failure"]["reason"].as_str().unwrap_or("")
}

#[tokio::test]
async fn a_good_key_passes_and_apply_registers_the_exact_request() {
    let srv = s3::server();
    let s = Setup::new(&s3::source(
        "archive",
        &srv.endpoint,
        "backups",
        &srv.good,
        "prefix = \"hosts/\"",
    ))
    .await;
    let (run, reports) = probe(&s, &[]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let r = &reports["archive"];
    assert_eq!(r["failure"], Value::Null, "{run:?}");
    assert_eq!(r["warnings"], json!([]), "{run:?}");
    let layers = layer_names(r);
    assert_eq!(
        layers,
        ["resolve", "connect", "handshake", "auth", "access"],
        "{run:?}"
    );
    assert_eq!(r["facts"]["bucket_region"], "us-east-1");
    assert!(r["facts"]["clock_skew"].is_string(), "{run:?}");

    let apply = s.run(&["apply"]).await;
    assert_eq!(apply.code, 0, "{apply:?}");
    let writes = s.writes();
    assert_eq!(writes.len(), 1, "{apply:?}");
    let add = &writes[0];
    assert_eq!(add.action.as_deref(), Some("AddDataSource"));
    let expected: std::collections::BTreeMap<String, String> = [
        ("ClusterId", CLUSTER.to_string()),
        ("DataSourceName", "archive".to_string()),
        ("DataSourceType", "S3".to_string()),
        (
            "ConnectionInfo",
            format!(
                r#"{{"bucket":"backups","endpoint":"{}","pathStyle":true,"prefix":"hosts/","region":"us-east-1"}}"#,
                srv.endpoint
            ),
        ),
        (
            "Credential",
            format!(
                r#"{{"accessKeyId":"{}","accessKeySecret":"{}"}}"#,
                srv.good.id, srv.good.secret
            ),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(add.params, expected);

    // The keys went to HBR and nowhere else the agent writes.
    let state = std::fs::read_to_string(s.state_dir.join("state.json")).unwrap();
    for secret in [&srv.good.id, &srv.good.secret] {
        assert!(!state.contains(secret.as_str()), "state file holds a key");
        assert!(!apply.stdout.contains(secret.as_str()) && !apply.stderr.contains(secret.as_str()));
        assert!(!run.stdout.contains(secret.as_str()) && !run.stderr.contains(secret.as_str()));
    }

    let again = s.run(&["apply"]).await;
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(s.writes().len(), 1, "in sync: nothing sent again");
}

#[tokio::test]
async fn a_wrong_secret_is_a_signature_mismatch_and_is_not_registered() {
    let srv = s3::server();
    let wrong = s3::Key {
        id: srv.good.id.clone(),
        secret: format!("x{}", &srv.good.secret[1..]),
    };
    let s = Setup::new(&s3::source("archive", &srv.endpoint, "backups", &wrong, "")).await;
    let (run, reports) = probe(&s, &[]).await;
    assert_eq!(run.code, 1, "{run:?}");
    let r = &reports["archive"];
    assert_eq!(failure_code(r), "S3_SIGNATURE_MISMATCH", "{run:?}");
    assert!(
        failure_reason(r).contains("SignatureDoesNotMatch"),
        "the server's words: {run:?}"
    );
    assert_eq!(
        r["layers"].as_array().unwrap().last().unwrap()["layer"],
        "auth"
    );

    let apply = s.run(&["apply"]).await;
    assert_eq!(apply.code, 1, "{apply:?}");
    assert!(apply.stdout.contains("probe_failed"), "{apply:?}");
    assert!(s.writes().is_empty());
}

#[tokio::test]
async fn an_unknown_key_is_an_invalid_access_key() {
    let srv = s3::server();
    let unknown = s3::Key {
        id: "AKIAIOSFODNN7EXAMPLE".into(),
        secret: srv.good.secret.clone(),
    };
    let s = Setup::new(&s3::source(
        "archive",
        &srv.endpoint,
        "backups",
        &unknown,
        "",
    ))
    .await;
    let (run, reports) = probe(&s, &[]).await;
    assert_eq!(
        failure_code(&reports["archive"]),
        "S3_INVALID_ACCESS_KEY",
        "{run:?}"
    );
    assert!(
        failure_reason(&reports["archive"]).contains("InvalidAccessKeyId"),
        "{run:?}"
    );
}

#[tokio::test]
async fn a_missing_bucket_is_bucket_not_found() {
    let srv = s3::server();
    let s = Setup::new(&s3::source(
        "archive",
        &srv.endpoint,
        "no-such-bucket",
        &srv.good,
        "",
    ))
    .await;
    let (run, reports) = probe(&s, &[]).await;
    assert_eq!(
        failure_code(&reports["archive"]),
        "S3_BUCKET_NOT_FOUND",
        "{run:?}"
    );
    assert!(
        failure_reason(&reports["archive"]).contains("NoSuchBucket"),
        "{run:?}"
    );
}

#[tokio::test]
async fn a_key_its_policy_denies_is_access_denied() {
    let srv = s3::server();
    let s = Setup::new(&s3::source(
        "archive",
        &srv.endpoint,
        "backups",
        &srv.denied,
        "",
    ))
    .await;
    let (run, reports) = probe(&s, &[]).await;
    assert_eq!(
        failure_code(&reports["archive"]),
        "S3_ACCESS_DENIED",
        "{run:?}"
    );
    assert!(
        failure_reason(&reports["archive"]).contains("AccessDenied"),
        "{run:?}"
    );
}

#[tokio::test]
async fn a_bucket_in_another_region_is_wrong_region_naming_it() {
    let srv = s3::server();
    let s = Setup::new(&s3::source(
        "archive",
        &srv.endpoint,
        "eu-backups",
        &srv.good,
        "",
    ))
    .await;
    let (run, reports) = probe(&s, &[]).await;
    assert_eq!(
        failure_code(&reports["archive"]),
        "S3_WRONG_REGION",
        "{run:?}"
    );
    assert!(
        failure_reason(&reports["archive"]).contains("eu-west-1"),
        "{run:?}"
    );
}

#[tokio::test]
async fn an_empty_prefix_passes_with_a_warning() {
    let srv = s3::server();
    let s = Setup::new(&s3::source(
        "archive",
        &srv.endpoint,
        "backups",
        &srv.good,
        "prefix = \"nothing-here/\"",
    ))
    .await;
    let (run, reports) = probe(&s, &[]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        reports["archive"]["warnings"][0]["code"], "S3_PREFIX_EMPTY",
        "{run:?}"
    );
}

#[tokio::test]
async fn an_endpoint_that_is_not_s3_is_http_unexpected() {
    let srv = s3::server();
    let ok_page = s3::web_server(200).await;
    let not_found = s3::web_server(404).await;
    let s = Setup::new(&format!(
        "{}{}",
        s3::source(
            "page",
            &format!("http://{ok_page}"),
            "backups",
            &srv.good,
            ""
        ),
        s3::source(
            "missing",
            &format!("http://{not_found}"),
            "backups",
            &srv.good,
            ""
        ),
    ))
    .await;
    let (run, reports) = probe(&s, &[]).await;
    for name in ["page", "missing"] {
        let r = &reports[name];
        assert_eq!(failure_code(r), "HTTP_UNEXPECTED", "{name}: {run:?}");
        assert!(failure_reason(r).contains("text/html"), "{name}: {run:?}");
    }
}

#[tokio::test]
async fn an_untrusted_certificate_fails_and_ca_file_makes_it_pass() {
    let srv = s3::server();
    let ca = s3::Ca::new("hbr-source-agent test CA");
    let proxy = s3::tls_proxy(srv.addr, ca.server_cert(&["127.0.0.1"], 365)).await;
    let endpoint = format!("https://{proxy}");
    let s = Setup::new("").await;
    let ca_file = s.dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    s.write_config(&format!(
        "{}{}",
        s3::source("untrusted", &endpoint, "backups", &srv.good, ""),
        s3::source(
            "trusted",
            &endpoint,
            "backups",
            &srv.good,
            &format!("ca_file = \"{}\"", ca_file.display())
        ),
    ));
    let (run, reports) = probe(&s, &[]).await;
    let untrusted = &reports["untrusted"];
    assert_eq!(failure_code(untrusted), "TLS_UNTRUSTED", "{run:?}");
    assert_eq!(
        untrusted["layers"].as_array().unwrap().last().unwrap()["layer"],
        "handshake"
    );
    let trusted = &reports["trusted"];
    assert_eq!(trusted["failure"], Value::Null, "{run:?}");
    assert_eq!(trusted["warnings"], json!([]), "{run:?}");
    assert!(
        trusted["facts"]["tls_version"]
            .as_str()
            .unwrap()
            .starts_with("TLSv1."),
        "{run:?}"
    );
    assert!(
        trusted["facts"]["tls_cert_not_after"].is_string(),
        "{run:?}"
    );

    let apply = s.run(&["apply"]).await;
    assert_eq!(apply.code, 1, "one source failed: {apply:?}");
    let writes = s.writes();
    assert_eq!(writes.len(), 1, "{apply:?}");
    assert_eq!(writes[0].params["DataSourceName"], "trusted");
}

#[tokio::test]
async fn a_ca_certificate_served_as_the_servers_own_is_untrusted_even_with_ca_file() {
    let srv = s3::server();
    let ca = s3::Ca::new("hbr-source-agent test CA");
    let proxy = s3::tls_proxy(srv.addr, ca.as_server_cert()).await;
    let s = Setup::new("").await;
    let ca_file = s.dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    s.write_config(&s3::source(
        "archive",
        &format!("https://{proxy}"),
        "backups",
        &srv.good,
        &format!("ca_file = \"{}\"", ca_file.display()),
    ));
    let (run, reports) = probe(&s, &[]).await;
    assert_eq!(
        failure_code(&reports["archive"]),
        "TLS_UNTRUSTED",
        "{run:?}"
    );
    assert!(
        failure_reason(&reports["archive"]).contains("issue it a server certificate"),
        "says what to do: {run:?}"
    );
}

#[tokio::test]
async fn a_certificate_for_another_name_is_name_mismatch() {
    let srv = s3::server();
    let ca = s3::Ca::new("hbr-source-agent test CA");
    let proxy = s3::tls_proxy(srv.addr, ca.server_cert(&["s3.other.example"], 365)).await;
    let s = Setup::new("").await;
    let ca_file = s.dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    s.write_config(&s3::source(
        "archive",
        &format!("https://{proxy}"),
        "backups",
        &srv.good,
        &format!("ca_file = \"{}\"", ca_file.display()),
    ));
    let (run, reports) = probe(&s, &[]).await;
    assert_eq!(
        failure_code(&reports["archive"]),
        "TLS_NAME_MISMATCH",
        "{run:?}"
    );
    assert!(
        failure_reason(&reports["archive"]).contains("s3.other.example"),
        "names what the certificate presents: {run:?}"
    );
}

#[tokio::test]
async fn a_certificate_that_expires_soon_is_a_warning() {
    let srv = s3::server();
    let ca = s3::Ca::new("hbr-source-agent test CA");
    let proxy = s3::tls_proxy(srv.addr, ca.server_cert(&["127.0.0.1"], 10)).await;
    let s = Setup::new("").await;
    let ca_file = s.dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    s.write_config(&s3::source(
        "archive",
        &format!("https://{proxy}"),
        "backups",
        &srv.good,
        &format!("ca_file = \"{}\"", ca_file.display()),
    ));
    let (run, reports) = probe(&s, &[]).await;
    assert_eq!(run.code, 0, "a warning does not fail the probe: {run:?}");
    let w = &reports["archive"]["warnings"];
    assert_eq!(w.as_array().unwrap().len(), 1, "{run:?}");
    assert_eq!(w[0]["code"], "TLS_EXPIRES_SOON", "{run:?}");
}

#[tokio::test]
async fn a_listener_that_never_answers_costs_only_its_deadline() {
    let srv = s3::server();
    let (_tls_listener, tls_addr) = s3::silent_listener().await;
    let (_http_listener, http_addr) = s3::silent_listener().await;
    let s = Setup::new(&format!(
        "{}{}{}",
        s3::source(
            "tls",
            &format!("https://{tls_addr}"),
            "backups",
            &srv.good,
            ""
        ),
        s3::source(
            "http",
            &format!("http://{http_addr}"),
            "backups",
            &srv.good,
            ""
        ),
        s3::source("good", &srv.endpoint, "backups", &srv.good, ""),
    ))
    .await;
    let t0 = Instant::now();
    let (run, reports) = probe(&s, &[]).await;
    let took = t0.elapsed();
    // probe_timeout is 5s in Setup's config; the probes run side by side.
    assert!(took < Duration::from_secs(5) + s3::SLACK, "took {took:?}");
    assert_eq!(failure_code(&reports["tls"]), "PROBE_TIMEOUT", "{run:?}");
    assert!(
        failure_reason(&reports["tls"]).contains("TLS handshake"),
        "{run:?}"
    );
    assert_eq!(failure_code(&reports["http"]), "PROBE_TIMEOUT", "{run:?}");
    assert!(
        failure_reason(&reports["http"]).contains("HeadBucket"),
        "{run:?}"
    );
    assert_eq!(reports["good"]["failure"], Value::Null, "{run:?}");
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_dns_not_found() {
    let srv = s3::server();
    let s = Setup::new(&s3::source(
        "archive",
        "https://s3.example.invalid",
        "backups",
        &srv.good,
        "",
    ))
    .await;
    let (run, reports) = probe(&s, &[]).await;
    assert_eq!(
        failure_code(&reports["archive"]),
        "DNS_NOT_FOUND",
        "{run:?}"
    );
}

#[tokio::test]
async fn keys_never_show_in_output_even_at_trace_level() {
    let srv = s3::server();
    let wrong = s3::Key {
        id: srv.good.id.clone(),
        secret: format!("x{}", &srv.good.secret[1..]),
    };
    let s = Setup::new(&format!(
        "{}{}",
        s3::source("good", &srv.endpoint, "backups", &srv.good, ""),
        s3::source("wrong", &srv.endpoint, "backups", &wrong, ""),
    ))
    .await;
    for args in [
        &["-vvv", "probe"][..],
        &["-vvv", "apply"],
        &["-vvv", "probe", "--json"],
    ] {
        let run = s.run(args).await;
        assert!(run.stderr.contains("TRACE"), "trace logging is on: {run:?}");
        for secret in [&srv.good.id, &srv.good.secret, &wrong.secret] {
            assert!(
                !run.stdout.contains(secret.as_str()) && !run.stderr.contains(secret.as_str()),
                "{args:?} printed a key: {run:?}"
            );
        }
    }
}
