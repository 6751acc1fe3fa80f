//! Faults: HBR misbehaving, the agent killed mid-registration, a damaged state file. Each test
//! asserts what an operator relies on: every source ends registered exactly once, failures
//! name HBR's Code and RequestId, and nothing panics.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn adds_applied(s: &Setup) -> usize {
    s.writes()
        .iter()
        .filter(|r| r.action.as_deref() == Some("AddDataSource"))
        .count()
}

fn requests_for(s: &Setup, action: &str) -> Vec<fake_hbr::RecordedRequest> {
    s.fake
        .requests()
        .into_iter()
        .filter(|r| r.action.as_deref() == Some(action))
        .collect()
}

/// One source; after the fault, a clean `apply` must leave exactly one registration.
async fn converge_once(s: &Setup) {
    let again = s.run(&["apply"]).await;
    assert_eq!(again.code, 0, "{again:?}");
    let ds = s.fake.data_sources();
    assert_eq!(ds.len(), 1, "exactly one registration: {ds:?}");
    assert_eq!(ds[0].data_source_name, "scratch");
    let state = s.state();
    assert_eq!(
        state["sources"]["scratch"]["data_source_id"].as_str(),
        Some(ds[0].data_source_id.as_str()),
        "the state file records the registration: {state}"
    );
}

#[tokio::test]
async fn persistent_throttling_gives_up_within_a_bound_and_names_code_and_request_id() {
    let data = mounted_dir();
    let s = Setup::new(&filesystem_source("scratch", data.path())).await;
    s.fake.inject(Fault::Throttle {
        count: 1000,
        action: Some("AddDataSource".into()),
    });
    let t0 = Instant::now();
    let r = s.run(&["apply"]).await;
    let took = t0.elapsed();
    assert_eq!(r.code, 1, "{r:?}");
    assert!(took < Duration::from_secs(30), "gave up after {took:?}");
    let tries = requests_for(&s, "AddDataSource");
    assert!(tries.len() >= 2, "throttling is retried: {}", tries.len());
    assert!(tries.len() <= 5, "retries are bounded: {}", tries.len());
    assert!(r.stdout.contains("Throttling.User"), "{r:?}");
    let last = &tries[tries.len() - 1].request_id;
    assert!(
        r.stdout.contains(last),
        "the RequestId {last} is reported: {r:?}"
    );
    assert!(s.fake.data_sources().is_empty());
    s.fake.clear_faults();
    converge_once(&s).await;
}

#[tokio::test]
async fn persistent_5xx_on_add_is_retried_bounded_and_never_applied_twice() {
    let data = mounted_dir();
    let s = Setup::new(&filesystem_source("scratch", data.path())).await;
    s.fake.inject_for(
        "AddDataSource",
        Fault::ServerError {
            count: 1000,
            status: 503,
        },
    );
    let t0 = Instant::now();
    let r = s.run(&["apply"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(30));
    let tries = requests_for(&s, "AddDataSource");
    assert!((2..=5).contains(&tries.len()), "{} attempts", tries.len());
    assert!(r.stdout.contains("ServiceUnavailable"), "{r:?}");
    assert!(
        r.stdout.contains(&tries[tries.len() - 1].request_id),
        "{r:?}"
    );
    s.fake.clear_faults();
    converge_once(&s).await;
    assert_eq!(adds_applied(&s), 1);
}

#[tokio::test]
async fn success_false_at_200_is_a_failure_reported_once_not_retried() {
    let data = mounted_dir();
    let s = Setup::new(&filesystem_source("scratch", data.path())).await;
    s.fake.inject_for(
        "AddDataSource",
        Fault::Failure {
            count: 1,
            code: "DataSourceQuotaExceeded".into(),
            message: "quota exceeded".into(),
            http_status: 200,
        },
    );
    let r = s.run(&["apply"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    let tries = requests_for(&s, "AddDataSource");
    assert_eq!(tries.len(), 1, "a definite refusal is not retried");
    assert!(r.stdout.contains("DataSourceQuotaExceeded"), "{r:?}");
    assert!(r.stdout.contains(&tries[0].request_id), "{r:?}");
    assert!(s.fake.data_sources().is_empty());
    converge_once(&s).await;
}

#[tokio::test]
async fn a_hung_describe_is_retried_then_reported_and_nothing_is_added() {
    let data = mounted_dir();
    let s = Setup::new(&filesystem_source("scratch", data.path())).await;
    // control_plane.timeout is 3s in the test config: every attempt hangs past it.
    s.fake.inject_for(
        "DescribeDataSources",
        Fault::Slow {
            count: 1000,
            delay: Duration::from_secs(60),
        },
    );
    let t0 = Instant::now();
    let r = s.run(&["apply"]).await;
    let took = t0.elapsed();
    assert_eq!(r.code, 1, "{r:?}");
    assert!(took < Duration::from_secs(60), "bounded: {took:?}");
    assert!(requests_for(&s, "AddDataSource").is_empty(), "{r:?}");
    assert!(r.stderr.contains("DescribeDataSources"), "{r:?}");
    s.fake.clear_faults();
    converge_once(&s).await;
}

#[tokio::test]
async fn a_dropped_add_is_not_retried_blindly_and_the_next_pass_adds_once() {
    let data = mounted_dir();
    let s = Setup::new(&filesystem_source("scratch", data.path())).await;
    s.fake
        .inject_for("AddDataSource", Fault::Drop { count: 1000 });
    let r = s.run(&["apply"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    // The request may have reached HBR: sending it again could register it twice.
    assert_eq!(requests_for(&s, "AddDataSource").len(), 1, "{r:?}");
    assert!(s.fake.data_sources().is_empty());
    s.fake.clear_faults();
    converge_once(&s).await;
    assert_eq!(adds_applied(&s), 1);
}

#[tokio::test]
async fn a_dropped_describe_is_retried() {
    let data = mounted_dir();
    let s = Setup::new(&filesystem_source("scratch", data.path())).await;
    s.fake
        .inject_for("DescribeDataSources", Fault::Drop { count: 2 });
    let r = s.run(&["apply"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s.fake.data_sources().len(), 1);
}

// ---- SIGKILL at each step of a registration, then a restart ----

/// Starts `apply`, waits until the fake has seen `action`, then SIGKILLs the agent.
async fn kill_during(s: &Setup, action: &str) {
    let mut child = s
        .agent()
        .arg("apply")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while requests_for(s, action).is_empty() && s.fake.pending_faults().len() == 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{action} never came"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The fault is taken when the request arrives; the answer is still pending.
    tokio::time::sleep(Duration::from_millis(100)).await;
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert!(!status.success());
}

#[tokio::test]
async fn killed_before_the_add_then_restarted_registers_once() {
    let data = mounted_dir();
    let s = Setup::new(&filesystem_source("scratch", data.path())).await;
    s.fake.inject_for(
        "DescribeDataSources",
        Fault::Slow {
            count: 1,
            delay: Duration::from_secs(2),
        },
    );
    kill_during(&s, "DescribeDataSources").await;
    assert!(requests_for(&s, "AddDataSource").is_empty());
    converge_once(&s).await;
    assert_eq!(adds_applied(&s), 1);
}

#[tokio::test]
async fn killed_after_hbr_accepted_the_add_but_before_the_state_was_written() {
    let data = mounted_dir();
    let s = Setup::new(&filesystem_source("scratch", data.path())).await;
    // HBR applies the add 1.5 s after it arrives; the agent is killed while it waits.
    s.fake.inject_for(
        "AddDataSource",
        Fault::Slow {
            count: 1,
            delay: Duration::from_millis(1500),
        },
    );
    kill_during(&s, "AddDataSource").await;
    let t0 = Instant::now();
    while s.fake.data_sources().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !s.state_dir.join("state.json").exists()
            || s.state()["sources"]["scratch"]["data_source_id"].is_null(),
        "the agent died before recording the id"
    );
    // The restart finds the name in HBR and adopts it.
    let r = s.run(&["apply"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("adopted"), "{r:?}");
    converge_once(&s).await;
    assert_eq!(
        requests_for(&s, "AddDataSource").len(),
        1,
        "never sent twice"
    );
}

#[tokio::test]
async fn killed_during_the_state_write_leaves_a_valid_state() {
    // The state is written to a temporary file, synced, then renamed over state.json: a kill
    // during the write leaves the old file and a partial temporary one. Recreate exactly that.
    let data = mounted_dir();
    let s = Setup::new(&filesystem_source("scratch", data.path())).await;
    converge_once(&s).await;
    let before = std::fs::read(s.state_dir.join("state.json")).unwrap();
    std::fs::write(
        s.state_dir.join(".state.json.AbCd12"),
        &before[..before.len() / 2],
    )
    .unwrap();
    // A second source makes the next pass write the state again.
    let more = mounted_dir();
    s.write_config(&format!(
        "{}{}",
        filesystem_source("scratch", data.path()),
        filesystem_source("more", more.path())
    ));
    let r = s.run(&["apply"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let state = s.state();
    assert!(state["sources"]["scratch"]["data_source_id"].is_string());
    assert!(state["sources"]["more"]["data_source_id"].is_string());
    assert_eq!(s.fake.data_sources().len(), 2);
    assert_eq!(adds_applied(&s), 2);
    assert!(
        !s.state_dir.join(".state.json.AbCd12").exists(),
        "the stale temporary file is cleaned up"
    );
}

// ---- a damaged state file ----

async fn registered_then_state_replaced(contents: &[u8]) -> (Setup, tempfile::TempDir) {
    let data = mounted_dir();
    let s = Setup::new(&filesystem_source("scratch", data.path())).await;
    converge_once(&s).await;
    std::fs::write(s.state_dir.join("state.json"), contents).unwrap();
    (s, data)
}

#[tokio::test]
async fn a_truncated_state_file_is_set_aside_and_names_are_looked_up() {
    let (s, _data) = registered_then_state_replaced(b"{\"schema\": 1, \"sour").await;
    let r = s.run(&["apply"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("state file is damaged"), "{r:?}");
    assert!(!r.stderr.contains("panicked"), "{r:?}");
    assert_eq!(
        adds_applied(&s),
        1,
        "no duplicate: the name was found in HBR"
    );
    assert_eq!(s.fake.data_sources().len(), 1);
    let aside = std::fs::read_dir(&s.state_dir)
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().contains("damaged"));
    assert!(aside, "the damaged copy is kept for whoever investigates");
    assert!(s.state()["sources"]["scratch"]["data_source_id"].is_string());
}

#[tokio::test]
async fn a_garbage_state_file_is_set_aside_and_names_are_looked_up() {
    let (s, _data) = registered_then_state_replaced(&[0xff, 0x00, 0x13, b'{', 0x80]).await;
    let r = s.run(&["apply"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(adds_applied(&s), 1);
    assert_eq!(s.fake.data_sources().len(), 1);
}

#[tokio::test]
async fn a_state_file_from_a_newer_agent_stops_with_a_clear_message() {
    let (s, _data) = registered_then_state_replaced(b"{\"schema\": 99, \"sources\": {}}\n").await;
    let r = s.run(&["apply"]).await;
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("schema 99"), "{r:?}");
    assert!(r.stderr.contains("upgrade the agent"), "{r:?}");
    assert!(!r.stderr.contains("panicked"), "{r:?}");
    assert_eq!(adds_applied(&s), 1, "nothing was added");
    // The newer file is left as it is for the newer agent.
    assert_eq!(s.state()["schema"], 99);
}

#[tokio::test]
async fn an_unwritable_state_directory_is_reported_with_its_path() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to run the agent as another user; CI runs as root");
        return;
    }
    let data = mounted_dir();
    let s = Setup::new(&filesystem_source("scratch", data.path())).await;
    // The state directory belongs to root; the agent runs as nobody. It may read the
    // config and the data, but cannot create files in the state directory.
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(&s.state_dir).unwrap();
    for p in [s.dir.path(), data.path(), &s.state_dir] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&s.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = Run::from(s.agent_as_nobody().arg("apply").output().await.unwrap());
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains(&s.state_dir.display().to_string()),
        "the message names the state directory: {r:?}"
    );
    assert!(r.stderr.contains("ermission denied"), "{r:?}");
    assert!(!r.stderr.contains("panicked"), "{r:?}");
    assert!(
        s.fake.data_sources().is_empty(),
        "nothing is registered that could not be recorded"
    );
}

#[tokio::test]
async fn two_applies_at_once_never_both_apply() {
    let data = mounted_dir();
    let s = Setup::new(&filesystem_source("scratch", data.path())).await;
    // The add takes a while, so both processes are certainly alive at the same time.
    s.fake.inject_for(
        "AddDataSource",
        Fault::Slow {
            count: 1,
            delay: Duration::from_millis(800),
        },
    );
    let (a, b) = tokio::join!(s.run(&["apply"]), s.run(&["apply"]));
    let mut codes = [a.code, b.code];
    codes.sort();
    assert_eq!(codes, [0, 1], "one applies, one refuses:\n{a:?}\n{b:?}");
    let refused = if a.code == 1 { &a } else { &b };
    assert!(refused.stderr.contains("lock"), "{refused:?}");
    assert_eq!(requests_for(&s, "AddDataSource").len(), 1);
    assert_eq!(s.fake.data_sources().len(), 1);
}

// ---- endpoints that refuse, black-hole or answer garbage, for every protocol ----

#[derive(Clone, Copy, Debug)]
enum Misbehaviour {
    /// Nothing listens: the connection is refused.
    Refuse,
    /// Accepts and never sends a byte.
    BlackHole,
    /// Accepts, sends bytes no protocol expects, then stays silent.
    Garbage,
}

/// A loopback endpoint that misbehaves; lives as long as the returned guard.
async fn misbehaving(kind: Misbehaviour) -> (u16, Option<tokio::task::JoinHandle<()>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    if let Misbehaviour::Refuse = kind {
        drop(listener);
        return (port, None);
    }
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            if let Misbehaviour::Garbage = kind {
                use tokio::io::AsyncWriteExt;
                let noise: Vec<u8> = (0..97u32)
                    .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                    .collect();
                let _ = sock.write_all(&noise).await;
            }
            held.push(sock);
        }
    });
    (port, Some(task))
}

/// A source of `kind` whose every endpoint is `port` on loopback.
fn network_source(kind: &str, name: &str, port: u16) -> String {
    match kind {
        "nfs" => format!(
            "[nas.{name}]\nprotocol = \"nfs\"\nservers = [\"127.0.0.1:{port}\"]\nshare_path = \"/export\"\nmount_options = \"mountport={port}\"\n"
        ),
        "smb" => format!(
            "[nas.{name}]\nprotocol = \"smb\"\nservers = [\"127.0.0.1:{port}\"]\nshare_path = \"/share\"\nusername = \"u\"\npassword = \"p\"\n"
        ),
        "s3" => format!(
            "[s3.{name}]\nendpoint = \"http://127.0.0.1:{port}\"\nbucket = \"backups\"\nregion = \"us-east-1\"\naccess_key_id = \"AKIDEXAMPLE\"\naccess_key_secret = \"secret\"\n"
        ),
        "hdfs" => format!(
            "[hdfs.{name}]\nnamenodes = [\"127.0.0.1:{port}\"]\nuser = \"hdfs\"\npaths = [\"/data\"]\n"
        ),
        other => panic!("no such kind {other}"),
    }
}

fn with_agent_settings(s: &Setup, settings: &str) {
    let text = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("probe_timeout = \"5s\"", settings);
    std::fs::write(&s.config, text).unwrap();
}

#[tokio::test]
async fn refusing_silent_and_garbage_endpoints_of_every_protocol_end_by_their_deadline() {
    let data = mounted_dir();
    let mut config = filesystem_source("good", data.path());
    let mut guards = Vec::new();
    let mut expected = Vec::new();
    for kind in ["nfs", "smb", "s3", "hdfs"] {
        for how in [
            Misbehaviour::Refuse,
            Misbehaviour::BlackHole,
            Misbehaviour::Garbage,
        ] {
            let (port, guard) = misbehaving(how).await;
            guards.push(guard);
            let name = format!("{kind}-{how:?}").to_lowercase();
            config += &network_source(kind, &name, port);
            expected.push((name, how));
        }
    }
    let s = Setup::new(&config).await;
    with_agent_settings(&s, "probe_timeout = \"3s\"");
    let t0 = Instant::now();
    let r = s.run(&["apply", "--json"]).await;
    let took = t0.elapsed();
    assert_eq!(r.code, 1, "{r:?}");
    // Twelve bad endpoints and one good source, probed 16 at a time: one deadline in all.
    assert!(
        took < Duration::from_secs(3) + Duration::from_millis(2500),
        "took {took:?}: {r:?}"
    );
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let sources = report["sources"].as_array().unwrap();
    let get = |name: &str| {
        sources
            .iter()
            .find(|x| x["name"] == name)
            .unwrap_or_else(|| panic!("{name} not reported: {}", r.stdout))
    };
    assert_eq!(get("good")["outcome"], "added");
    for (name, how) in &expected {
        let src = get(name);
        assert_eq!(src["outcome"], "probe_failed", "{name}: {src}");
        let code = src["probe"]["failure"]["code"].as_str().unwrap();
        let secs = src["probe"]["duration"].as_f64().unwrap();
        assert!(secs <= 3.3, "{name} took {secs}s: {src}");
        match how {
            Misbehaviour::Refuse => assert_eq!(code, "TCP_REFUSED", "{name}: {src}"),
            // Silence is a timeout that names the step; garbage is a protocol error or, for a
            // client that waits for more bytes, the same timeout. Never a pass, never a panic.
            // (HDFS calls a port that accepts and never speaks RPC "not a NameNode".)
            Misbehaviour::BlackHole => assert!(
                code == "PROBE_TIMEOUT"
                    || (name.starts_with("hdfs") && code == "HDFS_NOT_A_NAMENODE"),
                "{name}: {src}"
            ),
            Misbehaviour::Garbage => assert_ne!(code, "PROBE_NOT_IMPLEMENTED", "{name}: {src}"),
        }
    }
    assert_eq!(s.fake.data_sources().len(), 1, "only the good source");
    drop(guards);
}

#[tokio::test]
async fn fifty_hung_endpoints_do_not_delay_a_good_source_beyond_one_deadline() {
    let data = mounted_dir();
    // The good source sorts last, so it is queued behind every hung one.
    let mut config = filesystem_source("zz-good", data.path());
    let (port, _guard) = misbehaving(Misbehaviour::BlackHole).await;
    let kinds = ["nfs", "smb", "s3", "hdfs"];
    for i in 0..50 {
        config += &network_source(kinds[i % 4], &format!("hung-{i:02}"), port);
    }
    let s = Setup::new(&config).await;
    // Hung endpoints hold a probe slot for a whole deadline each: probe_concurrency must be
    // above the number that may hang (docs/configuration.md). Probes are cheap: a socket each.
    with_agent_settings(&s, "probe_timeout = \"4s\"\nprobe_concurrency = 64");
    let t0 = Instant::now();
    let mut child = s
        .agent()
        .arg("apply")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut registered_after = None;
    while registered_after.is_none() {
        if !s.fake.data_sources().is_empty() {
            registered_after = Some(t0.elapsed());
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let registered_after = registered_after.unwrap();
    // Registered as soon as its own probe ended, long before the hung ones give up.
    assert!(
        registered_after < Duration::from_secs(2),
        "registered after {registered_after:?}"
    );
    let status = child.wait().await.unwrap();
    let took = t0.elapsed();
    assert_eq!(status.code(), Some(1));
    assert!(
        took < Duration::from_secs(4) + Duration::from_millis(2500),
        "the pass ended within one deadline: {took:?}"
    );
    let ds = s.fake.data_sources();
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0].data_source_name, "zz-good");
}

// ---- the config directory changes in a burst ----

#[tokio::test]
async fn a_burst_of_config_changes_is_one_reload_of_the_final_content() {
    let first = mounted_dir();
    let data = mounted_dir();
    let s = Setup::new(&filesystem_source("first", first.path())).await;
    let log_path = s.dir.path().join("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = s
        .agent()
        .args(["--log-format", "json", "run"])
        .stderr(log)
        .spawn()
        .unwrap();
    let reloads = || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("reloading configuration"))
            .count()
    };
    let t0 = Instant::now();
    while s.fake.data_sources().len() != 1 {
        assert!(t0.elapsed() < Duration::from_secs(20), "first pass");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let conf_d = s.dir.path().join("conf.d");
    std::fs::create_dir(&conf_d).unwrap();
    // Let the watcher settle on the new directory (its creation is one reload).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = reloads();

    let frag = conf_d.join("20-burst.toml");
    let source = |i: usize| filesystem_source(&format!("burst-{i:03}"), data.path());
    // 100 plain writes in about a second,
    let mut last = Instant::now();
    let mut longest_gap = Duration::ZERO;
    for i in 0..100 {
        std::fs::write(&frag, source(i)).unwrap();
        longest_gap = longest_gap.max(last.elapsed());
        last = Instant::now();
        tokio::time::sleep(Duration::from_millis(8)).await;
    }
    // an editor's rename-replace (vim: move the old file aside, write the new one),
    std::fs::rename(&frag, conf_d.join("20-burst.toml~")).unwrap();
    std::fs::write(&frag, source(100)).unwrap();
    std::fs::remove_file(conf_d.join("20-burst.toml~")).unwrap();
    // config management's write-temporary-then-rename,
    let tmp = conf_d.join(".20-burst.toml.tmp");
    std::fs::write(&tmp, source(101)).unwrap();
    std::fs::rename(&tmp, &frag).unwrap();
    // and a file deleted and recreated with the final content.
    std::fs::remove_file(&frag).unwrap();
    std::fs::write(&frag, source(102)).unwrap();

    let t0 = Instant::now();
    while !s
        .fake
        .data_sources()
        .iter()
        .any(|d| d.data_source_name == "burst-102")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the final content was never applied: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Quiet for longer than the debounce: no further reload comes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let burst_reloads = reloads() - before;
    let mut names: Vec<String> = s
        .fake
        .data_sources()
        .into_iter()
        .map(|d| d.data_source_name)
        .collect();
    names.sort();
    signal_term(&child);
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        names,
        ["burst-102", "first"],
        "the final content, and nothing of the intermediate ones"
    );
    if longest_gap > Duration::from_millis(200) {
        // The writer itself stalled longer than the agent's quiet window (an overloaded
        // machine): that was two bursts, not one. The final content still had to win.
        eprintln!("writer stalled {longest_gap:?}; not counting reloads");
        return;
    }
    assert_eq!(
        burst_reloads,
        1,
        "one reload for the whole burst:\n{}",
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("reload"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn signal_term(child: &tokio::process::Child) {
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
}

#[tokio::test]
async fn killed_in_the_middle_of_concurrent_adds_then_rerun_registers_each_name_once() {
    // Six adds in flight at a time, each applied by HBR 0.5 s after it arrives; the agent is
    // killed once the second wave is in flight, with some answers recorded in the state file,
    // some accepted by HBR but not yet recorded, and some still unsent.
    const N: u32 = 24;
    let data = mounted_dir();
    let mut config = String::new();
    for i in 0..N {
        let dir = data.path().join(format!("d{i:02}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("f"), b"x").unwrap();
        config.push_str(&filesystem_source(&format!("src{i:02}"), &dir));
    }
    let s = Setup::new(&config).await;
    with_agent_settings(&s, "probe_timeout = \"5s\"\nwrite_concurrency = 6");
    s.fake.inject_for(
        "AddDataSource",
        Fault::Slow {
            count: N,
            delay: Duration::from_millis(500),
        },
    );
    let arrived = || {
        N - s
            .fake
            .pending_faults()
            .iter()
            .map(|f| match f {
                Fault::Slow { count, .. } => *count,
                _ => 0,
            })
            .sum::<u32>()
    };
    let mut child = s
        .agent()
        .arg("apply")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while arrived() < 9 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the adds never came"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.start_kill().unwrap();
    assert!(!child.wait().await.unwrap().success());
    let sent = arrived();
    let applied = s.fake.data_sources().len() as u32;
    assert!(
        sent >= applied + 2,
        "several adds were in flight at the kill: {sent} sent, {applied} applied"
    );
    assert!(sent < N, "the kill came before the last add: {sent} sent");
    // What HBR accepted from the killed agent lands after its delay.
    while (s.fake.data_sources().len() as u32) < sent {
        assert!(t0.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let r = s.run(&["apply"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let ds = s.fake.data_sources();
    let mut names: Vec<&str> = ds.iter().map(|d| d.data_source_name.as_str()).collect();
    names.sort_unstable();
    let expected: Vec<String> = (0..N).map(|i| format!("src{i:02}")).collect();
    assert_eq!(names, expected, "exactly one registration per name");
    let mut added: Vec<String> = requests_for(&s, "AddDataSource")
        .iter()
        .filter_map(|r| {
            r.query
                .iter()
                .find(|(k, _)| k == "DataSourceName")
                .map(|(_, v)| v.clone())
        })
        .collect();
    added.sort_unstable();
    assert_eq!(added, expected, "one AddDataSource per name, never two");
    assert!(
        requests_for(&s, "UpdateDataSource").is_empty(),
        "adopted as they are, not updated"
    );
    let state = s.state();
    for d in &ds {
        assert_eq!(
            state["sources"][&d.data_source_name]["data_source_id"].as_str(),
            Some(d.data_source_id.as_str()),
            "{state}"
        );
    }
}
