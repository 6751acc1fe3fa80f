//! Fleet mode end to end: several agent processes with different identities, one config, one
//! fake HBR serving DescribeBackupClients; each source must be registered exactly once, and
//! when membership changes the sources move without a second AddDataSource. The etcd tests
//! run a real etcd (Debian's etcd-server) on loopback.

mod common;
#[path = "support/fleet_etcd.rs"]
mod fleet_etcd;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::fake_hbr::StoredClient;
use common::{CLUSTER, Run, Setup, as_nobody};
use hbr_source_agent::fleet::owner;

const MEMBERS: [&str; 3] = ["c-000aaa", "c-000bbb", "c-000ccc"];

/// A fleet of agents sharing one fake HBR and one set of sources; each agent has its own
/// config file (its identity) and state directory, as separate hosts would.
struct Fleet {
    s: Setup,
    data: tempfile::TempDir,
    sources: Vec<String>,
}

impl Fleet {
    async fn new(n_sources: usize) -> Fleet {
        let s = Setup::new("").await;
        let data = tempfile::tempdir().unwrap();
        let sources: Vec<String> = (0..n_sources).map(|i| format!("share-{i:02}")).collect();
        for name in &sources {
            std::fs::create_dir_all(data.path().join(name)).unwrap();
        }
        for m in MEMBERS {
            s.fake.set_client(StoredClient::live(m, CLUSTER));
        }
        Fleet { s, data, sources }
    }

    fn sources_toml(&self, names: &[String]) -> String {
        names
            .iter()
            .map(|n| {
                format!(
                    "[filesystem.{n}]\npath = \"{}\"\nallow_root_fs = true\n",
                    self.data.path().join(n).display()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The config of member `me` with `fleet_extra` in `[fleet]`; written to its own file.
    fn config_for(&self, me: &str, names: &[String], fleet_extra: &str) -> PathBuf {
        let dir = self.s.dir.path().join(me);
        std::fs::create_dir_all(&dir).unwrap();
        let text = self
            .s
            .config_text(&format!(
                "[fleet]\nclient_id = \"{me}\"\nsettle_time = \"1s\"\n{fleet_extra}\n\n{}",
                self.sources_toml(names)
            ))
            .replace(
                &format!("state_dir = \"{}\"", self.s.state_dir.display()),
                &format!("state_dir = \"{}\"", dir.join("state").display()),
            );
        let path = dir.join("agent.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    async fn apply(
        &self,
        me: &str,
        names: &[String],
        fleet_extra: &str,
    ) -> (Run, serde_json::Value) {
        let cfg = self.config_for(me, names, fleet_extra);
        let out = self
            .s
            .agent_for(&cfg)
            .args(["apply", "--json"])
            .output()
            .await
            .unwrap();
        let run = Run::from(out);
        let json = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run:?}"));
        (run, json)
    }

    fn state_of(&self, me: &str) -> serde_json::Value {
        let p = self.s.dir.path().join(me).join("state/state.json");
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    }

    /// DataSourceName → how many HBR holds.
    fn registered(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for ds in self.s.fake.data_sources() {
            *m.entry(ds.data_source_name).or_insert(0) += 1;
        }
        m
    }

    fn count(&self, action: &str) -> usize {
        self.s
            .fake
            .requests()
            .iter()
            .filter(|r| r.action.as_deref() == Some(action) && r.status == Some(200))
            .count()
    }
}

fn outcomes(report: &serde_json::Value) -> BTreeMap<String, (String, String)> {
    report["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                (
                    s["outcome"].as_str().unwrap().to_string(),
                    s["detail"].as_str().unwrap_or("").to_string(),
                ),
            )
        })
        .collect()
}

fn exactly_once(f: &Fleet, names: &[String]) {
    let reg = f.registered();
    for n in names {
        assert_eq!(reg.get(n), Some(&1), "{n} in HBR: {reg:?}");
    }
    assert_eq!(reg.len(), names.len(), "{reg:?}");
}

#[tokio::test]
async fn three_agents_register_each_source_once_and_move_sources_when_a_member_leaves() {
    let f = Fleet::new(12).await;
    let all = f.sources.clone();

    // Three hosts, same config, at the same time.
    let (a, b, c) = tokio::join!(
        f.apply(MEMBERS[0], &all, ""),
        f.apply(MEMBERS[1], &all, ""),
        f.apply(MEMBERS[2], &all, "")
    );
    for (me, (run, report)) in MEMBERS.iter().zip([&a, &b, &c]) {
        assert_eq!(run.code, 0, "{me}: {run:?}");
        for (name, (outcome, detail)) in outcomes(report) {
            let o = owner(&MEMBERS, &name).unwrap();
            if o == *me {
                assert_eq!(outcome, "added", "{me} owns {name}: {detail}");
            } else {
                assert_eq!(outcome, "other_owner", "{me}/{name}");
                assert_eq!(detail, format!("owned by {o}"));
            }
        }
    }
    exactly_once(&f, &all);
    assert_eq!(f.count("AddDataSource"), all.len());
    // Every agent read the membership the documented way.
    let members_calls: Vec<_> =
        f.s.fake
            .requests()
            .into_iter()
            .filter(|r| r.action.as_deref() == Some("DescribeBackupClients"))
            .collect();
    // Twice each: with no earlier view, a first pass reads it again after settle_time.
    assert_eq!(members_calls.len(), 6);
    for r in &members_calls {
        assert_eq!(r.status, Some(200));
        assert_eq!(r.param("ClientType"), Some("LOCAL_CLIENT"));
        assert_eq!(r.param("ClusterId"), Some(CLUSTER));
        assert_eq!(r.param("PageSize"), Some("99"));
    }

    // The same again: nothing to write anywhere.
    f.s.fake.clear_requests();
    for m in MEMBERS {
        let (run, _) = f.apply(m, &all, "").await;
        assert_eq!(run.code, 0, "{run:?}");
    }
    assert_eq!(f.count("AddDataSource") + f.count("UpdateDataSource"), 0);

    // c-000bbb dies: HBR stops seeing its heartbeat. Its sources move to the two others, who
    // adopt them by name (no add), and a new source it would have owned is added once.
    let gone = MEMBERS[1];
    let mut dead = StoredClient::live(gone, CLUSTER);
    dead.status = "UNKNOWN".into();
    dead.last_heart_beat_time -= 3600;
    f.s.fake.set_client(dead);
    let left = [MEMBERS[0], MEMBERS[2]];
    let moved: Vec<&String> = all
        .iter()
        .filter(|n| owner(&MEMBERS, n) == Some(gone))
        .collect();
    assert!(!moved.is_empty());
    let new_name = (0..100)
        .map(|i| format!("late-{i}"))
        .find(|n| owner(&MEMBERS, n) == Some(gone))
        .unwrap();
    std::fs::create_dir_all(f.data.path().join(&new_name)).unwrap();
    let mut with_new = all.clone();
    with_new.push(new_name.clone());

    // Older than settle_time: the views saved by the last pass are trusted as "before".
    tokio::time::sleep(Duration::from_millis(1100)).await;
    f.s.fake.clear_requests();
    let (ra, rc) = tokio::join!(
        f.apply(left[0], &with_new, ""),
        f.apply(left[1], &with_new, "")
    );
    let new_owner = owner(&left, &new_name).unwrap();
    for (me, (run, report)) in left.iter().zip([&ra, &rc]) {
        assert_eq!(run.code, 0, "{me}: {run:?}");
        for (name, (outcome, detail)) in outcomes(report) {
            let o = owner(&left, &name).unwrap();
            if o != *me {
                assert_eq!(outcome, "other_owner", "{me}/{name}");
            } else if name == new_name {
                // Owned here only since the change: not added yet, in case a host that read
                // the old membership is adding it right now.
                assert_eq!(outcome, "deferred", "{me}/{name}: {detail}");
                assert!(detail.contains(&format!("before: {gone}")), "{detail}");
            } else {
                assert_eq!(outcome, "in_sync", "{me}/{name}: {detail}");
            }
        }
    }
    exactly_once(&f, &all);
    assert_eq!(f.count("AddDataSource") + f.count("UpdateDataSource"), 0);

    // One pass later the new owner adds it, once.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (run, report) = f.apply(new_owner, &with_new, "").await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(outcomes(&report)[&new_name].0, "added");
    exactly_once(&f, &with_new);
    assert_eq!(f.count("AddDataSource"), 1, "only the new source is added");
    // The new owners now hold the moved sources in their state.
    for name in moved {
        let o = owner(&left, name).unwrap();
        assert!(
            f.state_of(o)["sources"][name]["data_source_id"].is_string(),
            "{o} adopted {name}"
        );
    }
}

#[tokio::test]
async fn a_host_that_is_not_a_live_member_writes_nothing_but_still_probes() {
    let f = Fleet::new(3).await;
    let (run, report) = f.apply("c-000zzz", &f.sources, "").await;
    assert_eq!(run.code, 0, "{run:?}");
    for (name, (outcome, detail)) in outcomes(&report) {
        assert_eq!(outcome, "other_owner", "{name}");
        assert!(
            detail.contains("c-000zzz") && detail.contains("not a live member"),
            "{detail}"
        );
    }
    assert!(report["sources"][0]["probe"]["failure"].is_null());
    assert!(f.s.fake.data_sources().is_empty());
}

#[tokio::test]
async fn identity_from_a_file_and_errors_that_name_it() {
    let f = Fleet::new(2).await;
    let id_file = f.s.dir.path().join("client-id");
    std::fs::write(&id_file, format!("{}\n", MEMBERS[0])).unwrap();
    let cfg = f.config_for(MEMBERS[0], &f.sources, "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("client_id = \"{}\"", MEMBERS[0]),
        &format!("client_id_file = \"{}\"", id_file.display()),
    );
    std::fs::write(&cfg, &text).unwrap();
    let run = Run::from(
        f.s.agent_for(&cfg)
            .args(["apply", "--json"])
            .output()
            .await
            .unwrap(),
    );
    assert_eq!(run.code, 0, "{run:?}");
    let owned = f
        .sources
        .iter()
        .filter(|n| owner(&MEMBERS, n) == Some(MEMBERS[0]))
        .count();
    assert_eq!(f.s.fake.data_sources().len(), owned);

    std::fs::write(&id_file, "not-an-id\n").unwrap();
    let run = Run::from(f.s.agent_for(&cfg).args(["apply"]).output().await.unwrap());
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(&id_file.display().to_string()) && run.stderr.contains("not-an-id"),
        "{run:?}"
    );
}

#[tokio::test]
async fn without_fleet_config_membership_is_never_read() {
    let f = Fleet::new(2).await;
    std::fs::write(&f.s.config, f.s.config_text(&f.sources_toml(&f.sources))).unwrap();
    let r = f.s.run(&["apply"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    exactly_once(&f, &f.sources);
    assert_eq!(f.count("DescribeBackupClients"), 0);
}

#[tokio::test]
async fn fleet_config_errors_point_at_the_key() {
    let s = Setup::new(
        "[fleet]\nclient_id = \"host-1\"\ncoordination = \"zookeeper\"\netcd_prefix = \"x/\"\n",
    )
    .await;
    let r = s.run(&["validate"]).await;
    assert_eq!(r.code, 78, "{r:?}");
    for want in [
        "client_id: \"host-1\" is not a backup client id",
        "coordination: \"zookeeper\" is not one of \"hbr\", \"etcd\"",
        "etcd_prefix",
    ] {
        assert!(r.stderr.contains(want), "{want}: {r:?}");
    }
    let s = Setup::new("[fleet]\ncoordination = \"etcd\"\n").await;
    let r = s.run(&["validate"]).await;
    assert_eq!(r.code, 78, "{r:?}");
    assert!(
        r.stderr.contains("client_id: missing required key"),
        "{r:?}"
    );
    assert!(
        r.stderr.contains("etcd_endpoints: missing required key"),
        "{r:?}"
    );
}

/// The daemon: three `run` processes; one is killed and drops out of HBR's membership; a
/// source added to everyone's config afterwards is added once, by a survivor.
#[tokio::test]
async fn daemons_survive_a_killed_member() {
    let f = Fleet::new(6).await;
    let all = f.sources.clone();
    let fast = "reprobe_interval = \"1s\"";
    let mut children = Vec::new();
    for m in MEMBERS {
        let cfg = f.config_for(m, &all, "");
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "probe_timeout = \"5s\"",
            &format!("probe_timeout = \"5s\"\n{fast}"),
        );
        std::fs::write(&cfg, text).unwrap();
        let child =
            f.s.agent_for(&cfg)
                .arg("run")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
        children.push((m, cfg, child));
    }
    wait_for("first passes", || f.registered().len() == all.len()).await;
    exactly_once(&f, &all);

    // SIGKILL c-000bbb; HBR marks it disconnected.
    let (gone, _, mut child) = children.remove(1);
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let mut dead = StoredClient::live(gone, CLUSTER);
    dead.status = "UNKNOWN".into();
    f.s.fake.set_client(dead);

    let new_name = (0..100)
        .map(|i| format!("late-{i}"))
        .find(|n| owner(&MEMBERS, n) == Some(gone))
        .unwrap();
    std::fs::create_dir_all(f.data.path().join(&new_name)).unwrap();
    let mut with_new = all.clone();
    with_new.push(new_name.clone());
    for (m, cfg, _) in &children {
        let fresh = f.config_for(m, &with_new, "");
        let text = std::fs::read_to_string(&fresh).unwrap().replace(
            "probe_timeout = \"5s\"",
            &format!("probe_timeout = \"5s\"\n{fast}"),
        );
        replace(cfg, &text);
    }
    wait_for("the new source", || f.registered().contains_key(&new_name)).await;
    // A few more passes on both survivors: still exactly once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    exactly_once(&f, &with_new);
    let adds = f.count("AddDataSource");
    assert_eq!(adds, with_new.len(), "one AddDataSource per source, ever");
    for (_, _, mut child) in children {
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    }
}

fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- strict mode with a real etcd ----

#[tokio::test]
async fn etcd_strict_mode_locks_per_source_and_releases_after_the_pass() {
    let etcd = fleet_etcd::Etcd::start().await;
    let f = Fleet::new(9).await;
    let all = f.sources.clone();
    let extra = format!(
        "coordination = \"etcd\"\netcd_endpoints = [\"{}\"]\netcd_lease_ttl = \"10s\"\n",
        etcd.endpoint()
    );
    // Another holder (a host with a different view of membership) has one source's lock.
    let contested = all
        .iter()
        .find(|n| owner(&MEMBERS, n) == Some(MEMBERS[0]))
        .unwrap()
        .clone();
    let key = format!("/hbr-source-agent/{CLUSTER}/sources/{contested}");
    etcd.put(&key, "c-000other").await;

    let (a, b, c) = tokio::join!(
        f.apply(MEMBERS[0], &all, &extra),
        f.apply(MEMBERS[1], &all, &extra),
        f.apply(MEMBERS[2], &all, &extra)
    );
    for (run, _) in [&a, &b, &c] {
        assert_eq!(run.code, 0, "{run:?}");
    }
    let (outcome, detail) = &outcomes(&a.1)[&contested];
    assert_eq!(outcome, "other_owner");
    assert_eq!(
        detail,
        "owned here, but its etcd lock is held by c-000other"
    );
    let mut expected = all.clone();
    expected.retain(|n| n != &contested);
    exactly_once(&f, &expected);
    // Leases were revoked: only the foreign lock is left (the probe results under reach/
    // live on a lease of their own, until after the next pass).
    assert_eq!(
        etcd.keys(&format!("/hbr-source-agent/{CLUSTER}/sources/"))
            .await,
        vec![key.clone()]
    );
    assert_eq!(
        etcd.keys(&format!("/hbr-source-agent/{CLUSTER}/reach/"))
            .await
            .len(),
        all.len() * MEMBERS.len()
    );

    // The foreign holder lets go: the owner takes it on its next pass.
    etcd.delete(&key).await;
    let (run, report) = f.apply(MEMBERS[0], &all, &extra).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(outcomes(&report)[&contested].0, "added");
    exactly_once(&f, &all);
}

#[tokio::test]
async fn etcd_unreachable_fails_the_pass_without_writing() {
    let f = Fleet::new(2).await;
    let port = fleet_etcd::free_port();
    let extra =
        format!("coordination = \"etcd\"\netcd_endpoints = [\"http://127.0.0.1:{port}\"]\n");
    let cfg = f.config_for(MEMBERS[0], &f.sources, &extra);
    let run = Run::from(f.s.agent_for(&cfg).args(["apply"]).output().await.unwrap());
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("etcd: no etcd endpoint answered"),
        "{run:?}"
    );
    assert!(f.s.fake.data_sources().is_empty());
}

// ---- PARTIAL_REACHABILITY (strict mode) ----

fn reach_of(report: &serde_json::Value, name: &str) -> serde_json::Value {
    report["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {report}"))["reach"]
        .clone()
}

/// Three hosts; the one running as nobody cannot read the source's directory. The owner's
/// report names exactly that host (and, before the third host has published, the third as
/// unknown); the flag clears when the host can read it; a dead member is not counted.
#[tokio::test]
async fn partial_reachability_names_the_live_members_that_cannot_reach_a_source() {
    use std::os::unix::fs::PermissionsExt;
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to run one agent as another user; CI runs as root");
        return;
    }
    let etcd = fleet_etcd::Etcd::start().await;
    let f = Fleet::new(0).await;
    let (owner_host, blind, third) = (MEMBERS[0], MEMBERS[1], MEMBERS[2]);
    let name = (0..100)
        .map(|i| format!("lake-{i}"))
        .find(|n| owner(&MEMBERS, n) == Some(owner_host))
        .unwrap();
    let names = vec![name.clone()];
    let dir = f.data.path().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("file"), "x").unwrap();
    let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    // nobody may traverse to its config and its state directory, and to the data's parent;
    // the data directory itself is root's alone.
    mode(f.s.dir.path(), 0o755).unwrap();
    mode(f.data.path(), 0o755).unwrap();
    mode(&dir, 0o700).unwrap();
    let extra = format!(
        "coordination = \"etcd\"\netcd_endpoints = [\"{}\"]\netcd_lease_ttl = \"10s\"\n",
        etcd.endpoint()
    );
    let blind_cfg = f.config_for(blind, &names, &extra);
    let blind_dir = blind_cfg.parent().unwrap().to_path_buf();
    mode(&blind_dir, 0o755).unwrap();
    mode(&blind_cfg, 0o644).unwrap();
    std::fs::create_dir_all(blind_dir.join("state")).unwrap();
    rustix::fs::chown(
        blind_dir.join("state").as_path(),
        Some(rustix::fs::Uid::from_raw(65534)),
        Some(rustix::fs::Gid::from_raw(65534)),
    )
    .unwrap();
    let blind_apply = || async {
        let out = as_nobody(f.s.agent_for(&blind_cfg))
            .args(["apply", "--json"])
            .output()
            .await
            .unwrap();
        let run = Run::from(out);
        let json: serde_json::Value =
            serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run:?}"));
        (run, json)
    };

    // The blind host probes and publishes its failure; it does not own the source.
    let (run, report) = blind_apply().await;
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(outcomes(&report)[&name].0, "probe_failed", "{run:?}");
    let key = format!("/hbr-source-agent/{CLUSTER}/reach/{name}/{blind}");
    assert_eq!(
        etcd.keys(&format!("/hbr-source-agent/{CLUSTER}/reach/"))
            .await,
        std::slice::from_ref(&key)
    );
    let published = etcd.get(&key).await.unwrap();
    let published: serde_json::Value = serde_json::from_str(&published).unwrap();
    assert_eq!(published["ok"], false);
    assert_eq!(published["code"], "PATH_NOT_READABLE");
    // Outcome and code only: never the reason text (which quotes the OS or a server).
    assert_eq!(
        published.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["at", "code", "ok", "spec"]
    );

    // The owner registers it and names the blind host; the third has not reported yet.
    let (run, report) = f.apply(owner_host, &names, &extra).await;
    assert_eq!(run.code, 0, "{run:?}");
    let (outcome, detail) = &outcomes(&report)[&name];
    assert_eq!(outcome, "added", "{detail}");
    assert_eq!(
        reach_of(&report, &name),
        serde_json::json!({
            "code": "PARTIAL_REACHABILITY",
            "unreachable": { blind: "PATH_NOT_READABLE" },
            "reachable": [owner_host],
            "unknown": [third],
        })
    );
    assert_eq!(
        detail,
        &format!(
            "PARTIAL_REACHABILITY: unreachable from {blind} (PATH_NOT_READABLE); reachable from \
             {owner_host}; no current probe result from {third}"
        )
    );
    exactly_once(&f, &names);

    // The third host reports: no longer unknown. Non-owners carry no reach of their own.
    let (run, report) = f.apply(third, &names, &extra).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(reach_of(&report, &name).is_null(), "{report}");
    let (_, report) = f.apply(owner_host, &names, &extra).await;
    let reach = reach_of(&report, &name);
    assert_eq!(
        reach["unreachable"],
        serde_json::json!({ blind: "PATH_NOT_READABLE" })
    );
    assert_eq!(reach["reachable"], serde_json::json!([owner_host, third]));
    assert_eq!(reach["unknown"], serde_json::json!([]));

    // The owner as a daemon: `status`, STATUS= summary and the metric say the same.
    let runtime = f.s.dir.path().join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    let mut daemon =
        f.s.agent_for(&f.config_for(owner_host, &names, &extra))
            .args(["run", "--runtime-dir"])
            .arg(&runtime)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
    let status = {
        let runtime = runtime.clone();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let r = runtime.clone();
            let st = tokio::task::spawn_blocking(move || {
                hbr_source_agent::control::query_status(&r).ok()
            })
            .await
            .unwrap();
            if let Some(st) = st.filter(|st| st.last_pass_at.is_some()) {
                break st;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no status from the daemon"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let metrics = tokio::task::spawn_blocking({
        let sock = runtime.join("agent.sock");
        move || hbr_source_agent::control::get(&sock, "/metrics").unwrap()
    })
    .await
    .unwrap();
    daemon.start_kill().unwrap();
    daemon.wait().await.unwrap();
    assert!(
        status
            .summary
            .ends_with(&format!("; {name}: PARTIAL_REACHABILITY")),
        "{status:?}"
    );
    let reach = status.sources[0].reach.clone().expect("reach in status");
    assert_eq!(
        reach.unreachable,
        BTreeMap::from([(blind.to_string(), "PATH_NOT_READABLE".to_string())])
    );
    assert!(
        metrics.contains(&format!(
            "hbr_source_unreachable_members{{source=\"{name}\"}} 1"
        )),
        "{metrics}"
    );

    // The blind host gets access: the flag clears.
    mode(&dir, 0o755).unwrap();
    let (run, _) = blind_apply().await;
    assert_eq!(run.code, 0, "{run:?}");
    let (run, report) = f.apply(owner_host, &names, &extra).await;
    assert_eq!(run.code, 0, "{run:?}");
    let reach = reach_of(&report, &name);
    assert!(reach["code"].is_null(), "{reach}");
    assert_eq!(reach["unreachable"], serde_json::json!({}));
    assert_eq!(
        outcomes(&report)[&name],
        ("in_sync".to_string(), String::new())
    );

    // It loses access again and then dies: a member that is not live is not counted, even
    // with its failure still published.
    mode(&dir, 0o700).unwrap();
    let (run, _) = blind_apply().await;
    assert_eq!(run.code, 1, "{run:?}");
    let mut dead = StoredClient::live(blind, CLUSTER);
    dead.status = "UNKNOWN".into();
    dead.last_heart_beat_time -= 3600;
    f.s.fake.set_client(dead);
    assert!(etcd.get(&key).await.is_some());
    let (run, report) = f.apply(owner_host, &names, &extra).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        reach_of(&report, &name),
        serde_json::json!({
            "code": null,
            "unreachable": {},
            "reachable": [owner_host, third],
            "unknown": [],
        })
    );
    exactly_once(&f, &names);
}

// ---- bounded DescribeDataSources ----

/// With many data sources in the group, an owner reads the first page and then looks up
/// each name it may write (exact match on the agent's side: a longer name containing it is
/// not taken for it); a live member that owns none of its sources reads nothing. Adoption by
/// name and exactly-once still hold.
#[tokio::test]
async fn owners_look_up_their_names_and_a_member_owning_none_lists_nothing() {
    use common::fake_hbr::StoredDataSource;
    let f = Fleet::new(0).await;
    let (a, b, c) = (MEMBERS[0], MEMBERS[1], MEMBERS[2]);
    let pick = |who: &str, n: usize| -> Vec<String> {
        (0..200)
            .map(|i| format!("vol-{i:03}"))
            .filter(|s| owner(&MEMBERS, s) == Some(who))
            .take(n)
            .collect()
    };
    let names: Vec<String> = pick(a, 2).into_iter().chain(pick(b, 2)).collect();
    for n in &names {
        std::fs::create_dir_all(f.data.path().join(n)).unwrap();
    }
    // 300 other data sources: a full listing is 4 pages.
    for i in 0..300 {
        f.s.fake.insert_data_source(StoredDataSource::new(
            "COMMON_FILE_SYSTEM",
            &format!("other-{i}"),
            CLUSTER,
        ));
    }
    // A longer name that contains one of a's names, and one of b's already registered.
    let (a0, b0) = (&names[0], &names[2]);
    f.s.fake.insert_data_source(StoredDataSource::new(
        "COMMON_FILE_SYSTEM",
        &format!("{a0}-old"),
        CLUSTER,
    ));
    let mut existing = StoredDataSource::new("COMMON_FILE_SYSTEM", b0, CLUSTER);
    existing.connection_info = Some(format!(
        "{{\"path\":\"{}\"}}",
        f.data.path().join(b0).display()
    ));
    let existing_id = f.s.fake.insert_data_source(existing);

    let describes = |f: &Fleet| -> Vec<(Option<String>, Option<String>)> {
        f.s.fake
            .requests()
            .into_iter()
            .filter(|r| r.action.as_deref() == Some("DescribeDataSources"))
            .map(|r| {
                assert_eq!(r.status, Some(200), "{r:?}");
                assert_eq!(r.param("ClusterId"), Some(CLUSTER));
                assert_eq!(r.param("PageSize"), Some("99"));
                (
                    r.param("PageNumber").map(str::to_string),
                    r.param("DataSourceName").map(str::to_string),
                )
            })
            .collect()
    };

    // c owns none of the four: no DescribeDataSources at all.
    f.s.fake.clear_requests();
    let (run, report) = f.apply(c, &names, "").await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        outcomes(&report).values().all(|(o, _)| o == "other_owner"),
        "{report}"
    );
    assert_eq!(describes(&f), []);

    // a: page 1 of the listing, then one lookup per owned name (2 < the 3 pages left).
    for (me, mine) in [(a, &names[..2]), (b, &names[2..])] {
        f.s.fake.clear_requests();
        let (run, report) = f.apply(me, &names, "").await;
        assert_eq!(run.code, 0, "{run:?}");
        let mut seen = describes(&f);
        seen.sort();
        let mut want: Vec<(Option<String>, Option<String>)> = mine
            .iter()
            .map(|n| (Some("1".to_string()), Some(n.clone())))
            .collect();
        want.push((Some("1".into()), None));
        want.sort();
        assert_eq!(seen, want, "{me}");
        let got = outcomes(&report);
        for n in mine {
            let (outcome, detail) = &got[n];
            if n == b0 {
                assert_eq!(outcome, "in_sync", "{detail}");
                assert_eq!(
                    detail,
                    "adopted an existing registration with the same settings"
                );
            } else {
                assert_eq!(outcome, "added", "{n}: {detail}");
            }
        }
    }
    let reg = f.registered();
    for n in &names {
        assert_eq!(reg.get(n), Some(&1), "{n}: {reg:?}");
    }
    assert_eq!(reg.get(&format!("{a0}-old")), Some(&1));
    // b's pass (the last one): one add for its new source, none for the adopted one.
    assert_eq!(f.count("AddDataSource"), 1);
    assert!(
        f.state_of(b)["sources"][b0]["data_source_id"] == existing_id.as_str(),
        "adopted by id"
    );
}
