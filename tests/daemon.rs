//! `run` as a process: first pass, reload on config change and SIGHUP, a bad config keeps the
//! last good one, SIGTERM exits 0 after writing state.

mod common;

use std::time::{Duration, Instant};

use common::*;

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The text of a log written with colours.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Replace a file the way editors and config management do: write a temporary, rename over.
fn replace(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn signal(child: &tokio::process::Child, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

#[tokio::test]
async fn daemon_reloads_keeps_last_good_config_and_stops_cleanly() {
    let one = mounted_dir();
    let two = mounted_dir();
    let moved = mounted_dir();
    let s = Setup::new(&filesystem_source("one", one.path())).await;
    let log_path = s.dir.path().join("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    // Stand in for systemd: the agent reports READY=1 and STATUS= on NOTIFY_SOCKET.
    let notify_path = s.dir.path().join("notify.sock");
    let notify_sock = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify_sock.set_nonblocking(true).unwrap();
    let notes = std::sync::Mutex::new(String::new());
    let notes_now = || {
        let mut buf = [0u8; 4096];
        let mut all = notes.lock().unwrap();
        while let Ok(n) = notify_sock.recv(&mut buf) {
            all.push_str(&String::from_utf8_lossy(&buf[..n]));
            all.push('\n');
        }
        all.clone()
    };
    let mut child = s
        .agent()
        .env("NOTIFY_SOCKET", &notify_path)
        .args(["-v", "run"])
        .stderr(log)
        .spawn()
        .unwrap();
    let log = || strip_ansi(&std::fs::read_to_string(&log_path).unwrap_or_default());

    wait_for("first pass", || s.fake.data_sources().len() == 1).await;
    wait_for("READY=1 after the first pass", || {
        notes_now().contains("READY=1")
    })
    .await;
    assert!(
        notes_now().contains("STATUS=1/1 in sync"),
        "{}",
        notes_now()
    );

    // A new drop-in, written by rename-replace.
    let conf_d = s.dir.path().join("conf.d");
    std::fs::create_dir(&conf_d).unwrap();
    replace(
        &conf_d.join("20-two.toml"),
        &filesystem_source("two", two.path()),
    );
    wait_for("the drop-in's source", || s.fake.data_sources().len() == 2).await;
    // The reload's result, once, in one line.
    wait_for("the reload result", || {
        log().contains(
            r#"configuration reloaded added=["two"] updated=[] removed_from_config=[] unchanged=1"#,
        )
    })
    .await;

    // A broken main file: logged, the last good config keeps running.
    replace(&s.config, "version = 1\n[agent]\ncluster_id = 42\n");
    wait_for("the reload error", || {
        log().contains("still running the last good configuration")
    })
    .await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "daemon must survive a bad config"
    );
    assert!(log().contains("cluster_id"), "{}", log());
    wait_for("the failed reload in STATUS=", || {
        notes_now().contains("config reload failed, running the last good config")
    })
    .await;

    // Fixed, with a changed path, applied on SIGHUP too (the watcher may beat it; either way one update).
    replace(
        &s.config,
        &s.config_text(&filesystem_source("one", moved.path())),
    );
    signal(&child, rustix::process::Signal::HUP);
    wait_for("the update", || {
        s.writes()
            .iter()
            .any(|w| w.action.as_deref() == Some("UpdateDataSource"))
    })
    .await;
    let ds = s.fake.data_sources();
    let one_ds = ds.iter().find(|d| d.data_source_name == "one").unwrap();
    assert!(
        one_ds
            .connection_info
            .as_deref()
            .unwrap()
            .contains(&*moved.path().to_string_lossy())
    );
    assert_eq!(ds.len(), 2, "no duplicates: {ds:?}");

    signal(&child, rustix::process::Signal::TERM);
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits within the shutdown bound")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{}", log());
    let st = s.state();
    assert!(st["sources"]["one"]["data_source_id"].is_string());
    assert!(st["sources"]["two"]["data_source_id"].is_string());
}

#[tokio::test]
async fn anti_entropy_repairs_console_edits_and_removals() {
    let data = mounted_dir();
    let s = Setup::new(&filesystem_source("one", data.path())).await;
    let text = std::fs::read_to_string(&s.config).unwrap().replace(
        "probe_timeout = \"5s\"",
        "probe_timeout = \"5s\"\nreprobe_interval = \"1s\"",
    );
    std::fs::write(&s.config, text).unwrap();
    let mut child = s.agent().arg("run").spawn().unwrap();
    wait_for("first pass", || s.fake.data_sources().len() == 1).await;
    let id = s.fake.data_sources()[0].data_source_id.clone();

    // Edited in the console: set back.
    s.fake.edit_data_source(&id, |d| {
        d.connection_info = Some(r#"{"path":"/somewhere/else"}"#.into())
    });
    wait_for("the repair", || {
        s.fake.data_sources()[0]
            .connection_info
            .as_deref()
            .is_some_and(|c| c.contains(&*data.path().to_string_lossy()))
    })
    .await;

    // Removed in the console: added again, once.
    s.fake.remove_data_source(&id);
    wait_for("the re-add", || s.fake.data_sources().len() == 1).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        s.fake.data_sources().len(),
        1,
        "{:?}",
        s.fake.data_sources()
    );

    signal(&child, rustix::process::Signal::TERM);
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// Reads what the agent sends to `NOTIFY_SOCKET`, one datagram per entry.
struct NotifySocket {
    sock: std::os::unix::net::UnixDatagram,
    seen: std::sync::Mutex<Vec<String>>,
}

impl NotifySocket {
    fn bind(path: &std::path::Path) -> NotifySocket {
        let sock = std::os::unix::net::UnixDatagram::bind(path).unwrap();
        sock.set_nonblocking(true).unwrap();
        NotifySocket {
            sock,
            seen: Default::default(),
        }
    }

    fn messages(&self) -> Vec<String> {
        let mut buf = [0u8; 4096];
        let mut seen = self.seen.lock().unwrap();
        while let Ok(n) = self.sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        seen.clone()
    }

    /// Index of the first datagram at or after `from` with a line equal to or starting with `line`.
    fn find(&self, from: usize, line: &str) -> Option<usize> {
        self.messages()
            .iter()
            .enumerate()
            .skip(from)
            .find(|(_, m)| m.lines().any(|l| l.starts_with(line)))
            .map(|(i, _)| i)
    }
}

/// `name{labels} value` lines of a Prometheus text exposition, comments dropped.
fn parse_metrics(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            (
                k.to_string(),
                v.parse().unwrap_or_else(|_| panic!("bad value {l:?}")),
            )
        })
        .collect()
}

fn scrape(runtime: &std::path::Path) -> std::collections::BTreeMap<String, f64> {
    let text = hbr_source_agent::control::get(&runtime.join("agent.sock"), "/metrics").unwrap();
    parse_metrics(&text)
}

#[tokio::test]
async fn systemd_protocol_metrics_and_status_of_a_running_daemon() {
    let good = mounted_dir();
    let s = Setup::new(&format!(
        "{}{}",
        filesystem_source("good", good.path()),
        "[filesystem.bad]\npath = \"/nonexistent/hbr-test\"\n"
    ))
    .await;
    let runtime = s.dir.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    let notify = NotifySocket::bind(&s.dir.path().join("notify.sock"));
    let log_path = s.dir.path().join("agent.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    // Stand in for journald: stderr is the stream JOURNAL_STREAM names.
    let meta = std::os::unix::fs::MetadataExt::dev(&log_file.metadata().unwrap());
    let ino = std::os::unix::fs::MetadataExt::ino(&log_file.metadata().unwrap());
    let tcp_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = s
        .agent()
        .env("NOTIFY_SOCKET", s.dir.path().join("notify.sock"))
        .env("WATCHDOG_USEC", "400000")
        .env("JOURNAL_STREAM", format!("{meta}:{ino}"))
        .args(["run", "--runtime-dir"])
        .arg(&runtime)
        .args(["--metrics-listen", &format!("127.0.0.1:{tcp_port}")])
        .stderr(log_file)
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    wait_for("READY=1", || notify.find(0, "READY=1").is_some()).await;
    let ready = notify.find(0, "READY=1").unwrap();
    assert!(
        notify.messages()[ready].contains("STATUS=1/2 in sync; bad: PATH_NOT_FOUND"),
        "{:?}",
        notify.messages()
    );
    assert_eq!(
        s.fake.data_sources().len(),
        1,
        "the failing source is not registered"
    );
    wait_for("WATCHDOG=1 pings", || {
        notify
            .messages()
            .iter()
            .filter(|m| m.trim() == "WATCHDOG=1")
            .count()
            >= 2
    })
    .await;

    // Metrics, over the runtime socket and the loopback listener.
    let m = scrape(&runtime);
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("{k} missing: {m:#?}"));
    assert_eq!(
        get(r#"probe_success{source="good",kind="filesystem"}"#),
        1.0
    );
    assert_eq!(get(r#"probe_success{source="bad",kind="filesystem"}"#), 0.0);
    assert_eq!(
        get(r#"probe_failure{source="bad",code="PATH_NOT_FOUND"}"#),
        1.0
    );
    assert!(
        !m.keys()
            .any(|k| k.starts_with(r#"probe_failure{source="good""#))
    );
    assert_eq!(get(r#"source_in_sync{source="good"}"#), 1.0);
    assert_eq!(get(r#"source_in_sync{source="bad"}"#), 0.0);
    assert!(get(r#"probe_duration_seconds{source="good",layer="access"}"#) >= 0.0);
    assert_eq!(get("config_last_reload_successful"), 1.0);
    assert!(get("config_last_reload_timestamp_seconds") > 1.7e9);
    assert_eq!(
        get(r#"hbr_requests_total{action="AddDataSource",code="200"}"#),
        1.0
    );
    assert!(get(r#"hbr_requests_total{action="DescribeDataSources",code="200"}"#) >= 1.0);
    assert!(get(r#"hbr_request_duration_seconds_count{action="AddDataSource"}"#) >= 1.0);
    let tcp = {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", tcp_port))
            .await
            .unwrap();
        c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).await.unwrap();
        answer
    };
    assert!(tcp.starts_with("HTTP/1.0 200 OK"), "{tcp}");
    assert!(tcp.contains("source_in_sync{source=\"good\"} 1"), "{tcp}");

    // `status` asks the daemon.
    let r = s
        .run(&["status", "--runtime-dir", runtime.to_str().unwrap()])
        .await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("agent running"), "{r:?}");
    assert!(
        r.stdout.contains("1/2 in sync; bad: PATH_NOT_FOUND"),
        "{r:?}"
    );
    assert!(r.stdout.contains("probe failed PATH_NOT_FOUND"), "{r:?}");
    let r = s
        .run(&[
            "status",
            "--json",
            "--runtime-dir",
            runtime.to_str().unwrap(),
        ])
        .await;
    let st: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let good_st = st["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "good")
        .unwrap()
        .clone();
    assert_eq!(good_st["outcome"], "added");
    assert_eq!(
        good_st["data_source_id"].as_str(),
        Some(s.fake.data_sources()[0].data_source_id.as_str())
    );

    // A reload by SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1.
    let before = notify.messages().len();
    signal(&child, rustix::process::Signal::HUP);
    wait_for("READY=1 after the reload", || {
        notify
            .find(before, "RELOADING=1")
            .is_some_and(|i| notify.find(i + 1, "READY=1").is_some())
    })
    .await;
    let reloading = &notify.messages()[notify.find(before, "RELOADING=1").unwrap()];
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");

    // A broken config: metrics and status say so, the old config keeps running.
    replace(&s.config, "version = 1\n[agent]\ncluster_id = 42\n");
    wait_for("config_last_reload_successful 0", || {
        scrape(&runtime).get("config_last_reload_successful") == Some(&0.0)
    })
    .await;
    let r = s
        .run(&["status", "--runtime-dir", runtime.to_str().unwrap()])
        .await;
    assert!(r.stdout.contains("config reload FAILED"), "{r:?}");
    assert_eq!(
        scrape(&runtime).get(r#"source_in_sync{source="good"}"#),
        Some(&1.0)
    );

    let before = notify.messages().len();
    signal(&child, rustix::process::Signal::TERM);
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits within the shutdown bound")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{}", log());
    assert!(
        notify.find(before, "STOPPING=1").is_some(),
        "{:?}",
        notify.messages()
    );
    assert!(
        !runtime.join("agent.sock").exists(),
        "socket removed on exit"
    );

    // Journald lines: a priority prefix, no timestamp, no colour.
    let log = log();
    assert!(log.lines().any(|l| l.starts_with("<6>")), "{log}");
    assert!(
        log.lines()
            .any(|l| l.starts_with("<4>") && l.contains("bad")),
        "{log}"
    );
    assert!(log.lines().any(|l| l.starts_with("<3>")), "{log}");
    assert!(!log.contains("\x1b["), "{log}");
    assert!(
        !log.contains(&format!("{}-", time_year())),
        "no timestamps: {log}"
    );
}

fn time_year() -> String {
    // The current year, as a timestamp would start; good until the year 10000.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    (1970 + secs / 31_556_952).to_string()
}

#[tokio::test]
async fn metrics_listener_is_loopback_only() {
    let s = Setup::new("").await;
    let r = s.run(&["run", "--metrics-listen", "0.0.0.0:9469"]).await;
    assert_eq!(r.code, 64, "{r:?}");
    assert!(r.stderr.contains("not a loopback address"), "{r:?}");
}

#[tokio::test]
async fn anti_entropy_reports_a_failing_probe_without_touching_the_registration() {
    let data = mounted_dir();
    let s = Setup::new(&filesystem_source("one", data.path())).await;
    let text = std::fs::read_to_string(&s.config).unwrap().replace(
        "probe_timeout = \"5s\"",
        "probe_timeout = \"5s\"\nreprobe_interval = \"1s\"",
    );
    std::fs::write(&s.config, text).unwrap();
    let runtime = s.dir.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    let notify = NotifySocket::bind(&s.dir.path().join("notify.sock"));
    let mut child = s
        .agent()
        .env("NOTIFY_SOCKET", s.dir.path().join("notify.sock"))
        .args(["run", "--runtime-dir"])
        .arg(&runtime)
        .spawn()
        .unwrap();
    wait_for("first pass", || notify.find(0, "READY=1").is_some()).await;
    let registered = s.fake.data_sources();
    assert_eq!(registered.len(), 1);

    // The directory goes away (an unmounted file system would look alike).
    let path = data.path().to_path_buf();
    drop(data);
    assert!(!path.exists());
    wait_for("the failure in metrics", || {
        scrape(&runtime).get(r#"probe_failure{source="one",code="PATH_NOT_FOUND"}"#) == Some(&1.0)
    })
    .await;
    let m = scrape(&runtime);
    assert_eq!(
        m.get(r#"probe_success{source="one",kind="filesystem"}"#),
        Some(&0.0)
    );
    assert_eq!(m.get(r#"source_in_sync{source="one"}"#), Some(&0.0));
    wait_for("STATUS= with the code", || {
        notify
            .find(0, "STATUS=0/1 in sync; one: PATH_NOT_FOUND")
            .is_some()
    })
    .await;
    let st = tokio::task::spawn_blocking({
        let runtime = runtime.clone();
        move || hbr_source_agent::control::query_status(&runtime).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(st.sources[0].probe_code.as_deref(), Some("PATH_NOT_FOUND"));
    assert_eq!(
        st.sources[0].data_source_id.as_deref(),
        Some(registered[0].data_source_id.as_str())
    );

    // The registration is left exactly as it was.
    assert_eq!(s.writes().len(), 1, "only the first add: {:?}", s.writes());
    let now = s.fake.data_sources();
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].connection_info, registered[0].connection_info);

    signal(&child, rustix::process::Signal::TERM);
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
