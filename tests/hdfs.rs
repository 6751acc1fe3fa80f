//! The HDFS probe end to end: the agent binary against a real Hadoop 2.7.3 NameNode and DataNode
//! on 127.0.0.1 (scripts/servers/hdfs.sh, started by the tests) and the strict fake HBR.

mod common;
#[path = "support/hdfs.rs"]
mod hdfs;
#[path = "support/hdfs_standby.rs"]
mod hdfs_standby;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use hdfs::*;
use serde_json::Value;

async fn probe_json(s: &Setup) -> (Run, Value) {
    let r = s.run(&["probe", "--json"]).await;
    let v: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r:?}"));
    (r, v[0].clone())
}

fn failure_code(report: &Value) -> &str {
    report["failure"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn good_path_passes_and_apply_registers_the_exact_request() {
    server().await;
    let s = Setup::new(&hdfs_source("lake", &[RPC], "hbr", &[DATA, EMPTY])).await;

    let t0 = Instant::now();
    let (r, report) = probe_json(&s).await;
    eprintln!("probe of the good path took {:?}", t0.elapsed());
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(report["failure"], Value::Null, "{r:?}");
    assert_eq!(report["facts"]["active_namenode"], RPC, "{r:?}");
    assert_eq!(report["facts"]["datanode"], DATANODE, "{r:?}");
    assert_eq!(report["facts"]["safe_mode"], "off", "{r:?}");
    assert!(warning_codes(&report).is_empty(), "{r:?}");
    let layers = layer_names(&report);
    assert_eq!(
        layers,
        ["resolve", "connect", "handshake", "auth", "access"],
        "{r:?}"
    );

    let apply = s.run(&["apply"]).await;
    assert_eq!(apply.code, 0, "{apply:?}");
    let writes = s.writes();
    assert_eq!(writes.len(), 1, "{apply:?}");
    assert_eq!(writes[0].action.as_deref(), Some("AddDataSource"));
    let expected: BTreeMap<String, String> = [
        ("ClusterId", CLUSTER),
        ("DataSourceName", "lake"),
        ("DataSourceType", "HDFS"),
        (
            "ConnectionInfo",
            r#"{"nameNodes":[{"host":"127.0.0.1","port":"8020"}],"user":"hbr"}"#,
        ),
        ("Path.1", DATA),
        ("Path.2", EMPTY),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(writes[0].params, expected);
}

#[tokio::test]
async fn a_missing_path_fails_and_is_not_registered() {
    server().await;
    let s = Setup::new(&hdfs_source("lake", &[RPC], "hbr", &["/hbr-test/nope"])).await;
    let (r, report) = probe_json(&s).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(failure_code(&report), "HDFS_PATH_NOT_FOUND", "{r:?}");
    assert!(
        report["failure"]["reason"]
            .as_str()
            .unwrap()
            .contains("/hbr-test/nope"),
        "{r:?}"
    );
    let apply = s.run(&["apply"]).await;
    assert_eq!(apply.code, 1, "{apply:?}");
    assert!(s.writes().is_empty());
}

#[tokio::test]
async fn another_user_is_denied_with_the_access_control_exception() {
    server().await;
    let s = Setup::new(&hdfs_source("lake", &[RPC], "mallory", &[PRIVATE])).await;
    let (r, report) = probe_json(&s).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(failure_code(&report), "HDFS_PERMISSION_DENIED", "{r:?}");
    let reason = report["failure"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("AccessControlException: Permission denied: user=mallory"),
        "{reason}"
    );
    assert!(reason.contains("/hbr-test/private"), "{reason}");
    // The owner may list it.
    let s = Setup::new(&hdfs_source("lake", &[RPC], "root", &[PRIVATE])).await;
    let (r, _) = probe_json(&s).await;
    assert_eq!(r.code, 0, "{r:?}");
}

#[tokio::test]
async fn a_namenode_that_is_down_is_refused() {
    let down = closed_port();
    let s = Setup::new(&hdfs_source("lake", &[&down], "hbr", &[DATA])).await;
    let (r, report) = probe_json(&s).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(failure_code(&report), "TCP_REFUSED", "{r:?}");
    assert!(
        report["failure"]["reason"]
            .as_str()
            .unwrap()
            .contains(&down),
        "{r:?}"
    );
    let last = report["layers"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["layer"], "connect", "{r:?}");
}

#[tokio::test]
async fn a_namenode_name_that_does_not_resolve() {
    let s = Setup::new(&hdfs_source(
        "lake",
        &["nn.example.invalid"],
        "hbr",
        &[DATA],
    ))
    .await;
    let (r, report) = probe_json(&s).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(failure_code(&report), "DNS_NOT_FOUND", "{r:?}");
}

#[tokio::test]
async fn the_http_port_as_rpc_port_fails_fast() {
    server().await;
    let s = Setup::new(&hdfs_source("lake", &[HTTP], "hbr", &[DATA])).await;
    let t0 = Instant::now();
    let (r, report) = probe_json(&s).await;
    let took = t0.elapsed();
    eprintln!("probe of the HTTP port took {took:?}");
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(failure_code(&report), "HDFS_NOT_A_NAMENODE", "{r:?}");
    let reason = report["failure"]["reason"].as_str().unwrap();
    assert!(reason.contains("HTTP/1.1 400"), "{reason}");
    assert!(took < Duration::from_secs(3), "took {took:?}: {r:?}");
}

#[tokio::test]
async fn an_ha_pair_with_one_namenode_down_passes_with_a_warning() {
    server().await;
    let down = closed_port();
    let s = Setup::new(&hdfs_source("lake", &[&down, RPC], "hbr", &[DATA])).await;
    let (r, report) = probe_json(&s).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(report["facts"]["active_namenode"], RPC, "{r:?}");
    assert_eq!(warning_codes(&report), ["HDFS_NAMENODE_DOWN"], "{r:?}");
    let why = report["warnings"][0]["reason"].as_str().unwrap();
    assert!(why.contains(&down) && why.contains("TCP_REFUSED"), "{why}");
    assert!(r.stdout.contains(&down));

    // Both down: the failure names each.
    let other = closed_port();
    let s = Setup::new(&hdfs_source("lake", &[&down, &other], "hbr", &[DATA])).await;
    let (r, report) = probe_json(&s).await;
    assert_eq!(failure_code(&report), "TCP_REFUSED", "{r:?}");
    let reason = report["failure"]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&down) && reason.contains(&other),
        "{reason}"
    );
}

#[tokio::test]
async fn standby_only_fails_and_a_standby_beside_the_active_namenode_is_shown() {
    server().await;
    let standby = hdfs_standby::start().await.to_string();
    let s = Setup::new(&hdfs_source("lake", &[&standby], "hbr", &[DATA])).await;
    let (r, report) = probe_json(&s).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(failure_code(&report), "HDFS_STANDBY_ONLY", "{r:?}");
    let reason = report["failure"]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&standby) && reason.contains(hdfs_standby::STANDBY_MESSAGE),
        "{reason}"
    );

    let s = Setup::new(&hdfs_source("lake", &[&standby, RPC], "hbr", &[DATA])).await;
    let (r, report) = probe_json(&s).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(report["facts"]["active_namenode"], RPC, "{r:?}");
    assert_eq!(
        report["facts"][format!("standby_namenode {standby}")],
        hdfs_standby::STANDBY_MESSAGE,
        "{r:?}"
    );
    assert!(warning_codes(&report).is_empty(), "{r:?}");
}

#[tokio::test]
async fn an_empty_directory_passes_with_a_warning() {
    server().await;
    let s = Setup::new(&hdfs_source("lake", &[RPC], "hbr", &[EMPTY])).await;
    let (r, report) = probe_json(&s).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(warning_codes(&report), ["HDFS_NO_BLOCKS_SEEN"], "{r:?}");
}

/// On the spare cluster: a DataNode that died (the NameNode still lists it for minutes), then
/// safe mode. Both break the cluster, so they run there, in order, in one test.
#[tokio::test]
async fn a_dead_datanode_then_safe_mode_on_the_spare_cluster() {
    spare_server().await;
    script(&["stop-datanode", "spare"]).unwrap();
    let s = Setup::new(&hdfs_source("spare", &[SPARE_RPC], "hbr", &[DATA])).await;
    let (r, report) = probe_json(&s).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(failure_code(&report), "HDFS_DATANODE_UNREACHABLE", "{r:?}");
    let reason = report["failure"]["reason"].as_str().unwrap();
    assert!(
        reason.contains(SPARE_DATANODE) && reason.contains("TCP_REFUSED"),
        "{reason}"
    );
    assert!(reason.contains("/hbr-test/data/blob.bin"), "{reason}");

    script(&["safemode-enter", "spare"]).unwrap();
    let (r, report) = probe_json(&s).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(failure_code(&report), "HDFS_SAFE_MODE", "{r:?}");
    assert!(
        report["failure"]["reason"]
            .as_str()
            .unwrap()
            .contains(SPARE_RPC),
        "{r:?}"
    );
    assert!(s.run(&["apply"]).await.code == 1);
    assert!(s.writes().is_empty());
    script(&["down", "spare"]).unwrap();
}

#[tokio::test]
async fn explain_covers_every_hdfs_code() {
    let s = Setup::new("").await;
    for code in [
        "HDFS_NOT_A_NAMENODE",
        "HDFS_STANDBY_ONLY",
        "HDFS_NAMENODE_DOWN",
        "HDFS_AUTH_FAILED",
        "HDFS_KEYTAB_UNREADABLE",
        "HDFS_RPC_ERROR",
        "HDFS_PATH_NOT_FOUND",
        "HDFS_PERMISSION_DENIED",
        "HDFS_SAFE_MODE",
        "HDFS_DATANODE_UNREACHABLE",
        "HDFS_NO_BLOCKS_SEEN",
    ] {
        let r = s.run(&["explain", code]).await;
        assert_eq!(r.code, 0, "{code}: {r:?}");
        assert!(r.stdout.contains(code), "{code}: {r:?}");
    }
}
