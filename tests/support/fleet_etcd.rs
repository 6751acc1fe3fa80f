//! A real etcd (Debian's `etcd-server`) for the fleet tests: one per test, on loopback ports
//! of its own, data in a temporary directory, stopped by PID on drop. A missing binary or a
//! start failure fails the test with etcd's output; it never skips.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

pub struct Etcd {
    child: Child,
    dir: tempfile::TempDir,
    client_port: u16,
    http: reqwest::Client,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    pub async fn start() -> Etcd {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Built before etcd starts: nothing between the spawn and `Etcd` may panic, or the
        // process would outlive the test (a `Child` does not kill on drop).
        let http = reqwest::Client::new();
        let dir = tempfile::tempdir().unwrap();
        let (client_port, peer_port) = (free_port(), free_port());
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start etcd ({e}); install Debian's etcd-server (scripts/setup.sh)")
            });
        let mut etcd = Etcd {
            child,
            dir,
            client_port,
            http,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = etcd.http.get(format!("{client}/health")).send().await
                && r.status().is_success()
            {
                return etcd;
            }
            if let Ok(Some(status)) = etcd.child.try_wait() {
                panic!("etcd exited ({status}):\n{}", etcd.log());
            }
            if std::time::Instant::now() > deadline {
                panic!("etcd did not become healthy in 30s:\n{}", etcd.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    async fn call(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.endpoint()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    pub async fn put(&self, key: &str, value: &str) {
        self.call(
            "/v3/kv/put",
            json!({ "key": B64.encode(key), "value": B64.encode(value) }),
        )
        .await;
    }

    /// The value of `key`, if it exists.
    pub async fn get(&self, key: &str) -> Option<String> {
        let r = self
            .call("/v3/kv/range", json!({ "key": B64.encode(key) }))
            .await;
        let v = r["kvs"].get(0)?["value"].as_str()?;
        Some(String::from_utf8(B64.decode(v).unwrap()).unwrap())
    }

    pub async fn delete(&self, key: &str) {
        self.call("/v3/kv/deleterange", json!({ "key": B64.encode(key) }))
            .await;
    }

    /// Keys under `prefix`, sorted.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        let r = self
            .call(
                "/v3/kv/range",
                json!({ "key": B64.encode(prefix), "range_end": B64.encode(&end), "keys_only": true }),
            )
            .await;
        let mut keys: Vec<String> = r["kvs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|kv| {
                        String::from_utf8(B64.decode(kv["key"].as_str().unwrap()).unwrap()).unwrap()
                    })
                    .collect()
            })
            .unwrap_or_default();
        keys.sort();
        keys
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
