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
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

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
