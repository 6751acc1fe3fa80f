//! Hostile input: configs that are garbage or half-edited, and values that try to break out
//! of the query string or the ConnectionInfo JSON. The loader must answer every file with a
//! config or with positioned errors, never a panic; odd values must reach HBR byte for byte
//! (the fake verifies the signature over them) or be refused with a clear error.
//!
//! The property tests are bounded for CI (`PROPTEST_CASES` raises them); failing inputs are
//! kept in `proptest-regressions/` and replayed first.

mod common;

use std::path::Path;

use common::*;
use hbr_source_agent::config::{self, ConfigErrors, MapEnv};
use proptest::prelude::*;

/// The seed corpus: (main file, one conf.d fragment) pairs from every config fixture and the
/// bundled example, so mutations start from files that reach every part of the loader.
fn corpus() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let mut out = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(root.join("tests/fixtures/config"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    dirs.push(root.join("config"));
    dirs.sort();
    for dir in dirs {
        let main = read(&dir.join("agent.toml"));
        let mut frags: Vec<_> = std::fs::read_dir(dir.join("conf.d"))
            .map(|r| r.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        frags.retain(|p: &std::path::PathBuf| p.extension().is_some_and(|e| e == "toml"));
        frags.sort();
        if frags.is_empty() {
            out.push((main.clone(), String::new()));
        }
        for f in frags {
            out.push((main.clone(), read(&f)));
        }
    }
    assert!(out.len() >= 8, "the corpus is there: {}", out.len());
    out
}

fn cases(n: u32) -> ProptestConfig {
    let from_env = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok());
    ProptestConfig {
        cases: from_env.unwrap_or(n),
        ..ProptestConfig::default()
    }
}

fn env() -> MapEnv {
    MapEnv::new()
        .with("HBR_AK_ID", "LTAI-from-env")
        .with("CREDENTIALS_DIRECTORY", "/nonexistent")
}

/// Loads `main` (and `conf.d` beside it). Positions in every diagnostic must point into the
/// file they name.
fn load_and_check(main: &Path) {
    match config::load_with(main, &env()) {
        Ok(_) => {}
        Err(ConfigErrors { errors, warnings }) => {
            assert!(!errors.is_empty(), "Err without an error");
            for d in errors.iter().chain(&warnings) {
                let text = std::fs::read(&d.file).unwrap_or_default();
                let text = String::from_utf8_lossy(&text);
                let lines = text.split('\n').count();
                assert!(
                    d.line >= 1 && d.line <= lines.max(1),
                    "line {} of {} in {}: {d:?}",
                    d.line,
                    lines,
                    d.file.display()
                );
                assert!(d.column >= 1, "{d:?}");
                assert!(!d.message.is_empty(), "{d:?}");
            }
        }
    }
}

/// Tokens that matter to TOML and to our schema, for mutations that reach deep.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"".to_string()),
        Just("'''".to_string()),
        Just("\"\"\"".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("[[".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just("=".to_string()),
        Just("\n".to_string()),
        Just("\\".to_string()),
        Just("\\u0000".to_string()),
        Just("#".to_string()),
        Just(".".to_string()),
        Just(",".to_string()),
        Just("\r\n".to_string()),
        Just("\u{feff}".to_string()),
        Just("ünï€😀".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        Just("nan".to_string()),
        Just("-inf".to_string()),
        Just("9999999999999999999999".to_string()),
        Just("[nas.x]\nprotocol = \"nfs\"\n".to_string()),
        Just("[s3.y]\n".to_string()),
        Just("{ env = \"NOPE\" }".to_string()),
        Just("{ file = \"/nonexistent\" }".to_string()),
        Just("{ credential = \"../x\" }".to_string()),
        "[a-z_]{1,12}",
        ".{0,8}",
    ]
}

proptest! {
    #![proptest_config(cases(300))]

    #[test]
    fn arbitrary_text_as_a_config_is_loaded_or_positioned(text in ".{0,400}") {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("agent.toml");
        std::fs::write(&main, text).unwrap();
        load_and_check(&main);
    }

    #[test]
    fn arbitrary_bytes_as_a_config_are_loaded_or_positioned(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("agent.toml");
        std::fs::write(&main, bytes).unwrap();
        load_and_check(&main);
    }

    /// A config from the corpus (every fixture under tests/fixtures/config and the bundled
    /// example), edited at random places with TOML-significant tokens: the kind of file an
    /// operator saves half-way through an edit.
    #[test]
    fn a_half_edited_config_is_loaded_or_positioned(
        seed in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0usize..6, token()), 1..6),
        in_fragment in any::<bool>(),
    ) {
        let corpus = corpus();
        let (seed_main, seed_frag) = &corpus[seed.index(corpus.len())];
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("agent.toml");
        std::fs::create_dir(dir.path().join("conf.d")).unwrap();
        let mut target = if in_fragment { seed_frag.clone() } else { seed_main.clone() };
        for (at, cut, tok) in edits {
            let chars: Vec<char> = target.chars().collect();
            let i = at.index(chars.len() + 1);
            let j = (i + cut).min(chars.len());
            target = chars[..i].iter().collect::<String>() + &tok + &chars[j..].iter().collect::<String>();
        }
        let (main_text, frag_text) = if in_fragment {
            (seed_main.clone(), target)
        } else {
            (target, seed_frag.clone())
        };
        std::fs::write(&main, main_text).unwrap();
        std::fs::write(dir.path().join("conf.d/10-sources.toml"), frag_text).unwrap();
        load_and_check(&main);
    }
}

// ---- values that try to inject ----

fn adds(s: &Setup) -> Vec<fake_hbr::RecordedRequest> {
    s.writes()
        .into_iter()
        .filter(|r| r.action.as_deref() == Some("AddDataSource"))
        .collect()
}

#[tokio::test]
async fn names_with_query_and_unicode_characters_reach_hbr_exactly() {
    let data = mounted_dir();
    let names = [
        "a&b=c",
        "x%26y+z",
        "finance ünï 数据 😀",
        "semi;colon?question#hash",
        "quote\"and'apostrophe",
    ];
    let mut toml = String::new();
    for n in names {
        let key = format!("\"{}\"", n.replace('\\', "\\\\").replace('"', "\\\""));
        toml += &format!("[filesystem.{key}]\npath = \"{}\"\n", data.path().display());
    }
    let s = Setup::new(&toml).await;
    let r = s.run(&["apply"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    // The fake recomputes the signature over what it decoded: a wrong encoding is rejected.
    let mut got: Vec<String> = adds(&s)
        .iter()
        .map(|a| a.param("DataSourceName").unwrap().to_string())
        .collect();
    got.sort();
    let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    want.sort();
    assert_eq!(got, want);
    // And a second pass sees them all as in sync (names compare exactly).
    let again = s.run(&["apply"]).await;
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(adds(&s).len(), names.len());
}

#[tokio::test]
async fn a_name_with_a_newline_or_slash_is_refused_with_its_position() {
    let data = mounted_dir();
    let s = Setup::new(&format!(
        "[filesystem.\"two\\nlines\"]\npath = \"{0}\"\n\n[filesystem.\"a/b\"]\npath = \"{0}\"\n",
        data.path().display()
    ))
    .await;
    let r = s.run(&["validate"]).await;
    assert_eq!(r.code, 78, "{r:?}");
    assert!(r.stderr.contains("control characters"), "{r:?}");
    assert!(r.stderr.contains("must not contain /"), "{r:?}");
    let file = s.config.display().to_string();
    assert!(r.stderr.contains(&format!("{file}:")), "{r:?}");
    assert!(s.fake.requests().is_empty());
}

#[tokio::test]
async fn json_breaking_connection_info_values_arrive_as_exact_json() {
    let data = mounted_dir();
    let tricky = "quote\" backslash\\ brace} bracket] newline\n tab\t nul-free \u{2028} end";
    let value = toml::Value::String(tricky.to_string()).to_string();
    let s = Setup::new(&format!(
        "[filesystem.scratch]\npath = \"{}\"\nconnection_info = {{ note = {value}, \"key\\\"with\\\\quote\" = 1 }}\n",
        data.path().display()
    ))
    .await;
    let r = s.run(&["apply"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let add = &adds(&s)[0];
    let info: serde_json::Value =
        serde_json::from_str(add.param("ConnectionInfo").unwrap()).expect("valid JSON");
    assert_eq!(info["note"], tricky);
    assert_eq!(info["key\"with\\quote"], 1);
}

#[tokio::test]
async fn dot_dot_in_paths_is_refused() {
    let data = mounted_dir();
    let s = Setup::new(&format!(
        "[filesystem.up]\npath = \"{}/../etc\"\n\n[nas.share]\nprotocol = \"nfs\"\nservers = [\"127.0.0.1\"]\nshare_path = \"/export/./x\"\n",
        data.path().display()
    ))
    .await;
    let r = s.run(&["validate"]).await;
    assert_eq!(r.code, 78, "{r:?}");
    assert!(
        r.stderr.contains("source up: path:"),
        "names source and field: {r:?}"
    );
    assert!(r.stderr.contains("source share: share_path:"), "{r:?}");
    assert!(r.stderr.contains("\"..\" components"), "{r:?}");
}

#[tokio::test]
async fn plain_http_to_a_non_loopback_control_plane_is_refused() {
    let s = Setup::new("").await;
    let text = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace(&s.fake.endpoint(), "http://hbr.cn-hangzhou.example.invalid");
    std::fs::write(&s.config, text).unwrap();
    let r = s.run(&["validate"]).await;
    assert_eq!(r.code, 78, "{r:?}");
    assert!(r.stderr.contains("endpoint"), "{r:?}");
    assert!(r.stderr.contains("http"), "{r:?}");
}

#[tokio::test]
async fn the_control_planes_tls_certificate_is_verified() {
    // An HTTPS endpoint on loopback with a self-signed certificate: the agent must refuse it
    // rather than send signed requests to whoever answers.
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(signing_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = handshakes.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            if acceptor.accept(tcp).await.is_ok() {
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let data = mounted_dir();
    let s = Setup::new(&filesystem_source("scratch", data.path())).await;
    let text = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace(&s.fake.endpoint(), &format!("https://{addr}"));
    std::fs::write(&s.config, text).unwrap();
    let r = s.run(&["apply"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.to_lowercase().contains("certificate"),
        "the error says the certificate is the problem: {r:?}"
    );
    assert_eq!(
        handshakes.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no TLS session was completed with an untrusted server"
    );
}
