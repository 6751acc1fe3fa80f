//! Credentials for signing HBR requests: static ones from the config, or the Alibaba Cloud
//! default chain as the official SDK (`alibabacloud_credentials`) walks it: environment
//! variables, the credentials file (ini profiles), then the ECS RAM role from instance metadata
//! (IMDSv2 token), cached and refreshed before expiry. Owns every read of those sources; never
//! logs or reports a value — errors name the place only.
//!
//! Differences from the SDK, on purpose: the CLI profile (`~/.aliyun/config.json`), OIDC and
//! `ALIBABA_CLOUD_CREDENTIALS_URI` are not read; profile types `ram_role_arn`, `oidc_role_arn`
//! and `rsa_key_pair` are reported as unsupported; a refreshed RAM-role credential is fetched
//! on the caller's path (no background thread); an expired cached credential is never used.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use url::Url;

use crate::secret::{Secret, SecretOrigin};

pub const ENV_ACCESS_KEY_ID: &str = "ALIBABA_CLOUD_ACCESS_KEY_ID";
pub const ENV_ACCESS_KEY_SECRET: &str = "ALIBABA_CLOUD_ACCESS_KEY_SECRET";
pub const ENV_SECURITY_TOKEN: &str = "ALIBABA_CLOUD_SECURITY_TOKEN";
pub const ENV_CREDENTIALS_FILE: &str = "ALIBABA_CLOUD_CREDENTIALS_FILE";
pub const ENV_PROFILE: &str = "ALIBABA_CLOUD_PROFILE";
pub const ENV_ECS_METADATA: &str = "ALIBABA_CLOUD_ECS_METADATA";
pub const ENV_ECS_METADATA_DISABLED: &str = "ALIBABA_CLOUD_ECS_METADATA_DISABLED";
pub const ENV_IMDSV1_DISABLED: &str = "ALIBABA_CLOUD_IMDSV1_DISABLED";

/// Lifetime asked for the IMDSv2 token, as the SDK asks (6 h).
const METADATA_TOKEN_TTL_SECONDS: u32 = 21_600;
/// Connect deadline of one metadata call (the SDK uses 1 s connect and 1 s read).
const METADATA_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Whole deadline of one metadata call.
const METADATA_TIMEOUT: Duration = Duration::from_secs(2);
/// The SDK treats a RAM-role credential as stale 15 min before it expires…
const STALE_BEFORE_EXPIRY: time::Duration = time::Duration::minutes(15);
/// …and refreshes it anyway an hour after it was fetched.
const PREFETCH_AFTER: time::Duration = time::Duration::hours(1);

/// An access key, with an STS token when it is temporary. `Debug` shows no value.
#[derive(Clone, Debug, PartialEq)]
pub struct Credentials {
    pub access_key_id: Secret,
    pub access_key_secret: Secret,
    pub security_token: Option<Secret>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CredentialsError {
    /// The default chain found nothing; one entry per place tried, saying why it did not serve.
    #[error("no Alibaba Cloud credentials found; tried: {}", .tried.join("; "))]
    NotFound { tried: Vec<String> },
    /// A source was found but could not give credentials (e.g. the metadata service failed
    /// while refreshing).
    #[error("{provider}: {reason}")]
    Provider { provider: String, reason: String },
}

/// Where the default chain reads the process environment and the home directory; injectable so
/// that tests never touch the real ones.
pub trait Env: Send + Sync {
    fn var(&self, name: &str) -> Option<String>;
    fn home_dir(&self) -> Option<PathBuf>;

    /// A variable that is set and not empty.
    fn non_empty(&self, name: &str) -> Option<String> {
        self.var(name).filter(|v| !v.is_empty())
    }
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn home_dir(&self) -> Option<PathBuf> {
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
    }
}

/// A fixed environment, for tests and embedding.
#[derive(Debug, Clone, Default)]
pub struct StaticEnv {
    pub vars: BTreeMap<String, String>,
    pub home: Option<PathBuf>,
}

impl StaticEnv {
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.vars.insert(name.to_string(), value.to_string());
        self
    }
}

impl Env for StaticEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }
    fn home_dir(&self) -> Option<PathBuf> {
        self.home.clone()
    }
}

/// Gives the credentials for each request. Cheap to call: the default chain remembers the
/// source that served (as the SDK does) and the RAM role caches until near expiry.
pub struct CredentialsProvider {
    kind: Kind,
}

enum Kind {
    Fixed(Credentials),
    Chain(Chain),
}

impl std::fmt::Debug for CredentialsProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Fixed(_) => f.write_str("CredentialsProvider(static)"),
            Kind::Chain(_) => f.write_str("CredentialsProvider(default chain)"),
        }
    }
}

impl CredentialsProvider {
    /// Always the same credentials (from the config).
    pub fn fixed(credentials: Credentials) -> Self {
        CredentialsProvider {
            kind: Kind::Fixed(credentials),
        }
    }

    /// The Alibaba Cloud default chain over the process environment.
    pub fn default_chain(metadata_endpoint: Url) -> Self {
        Self::default_chain_with_env(Arc::new(ProcessEnv), metadata_endpoint)
    }

    /// The default chain over an injected environment.
    pub fn default_chain_with_env(env: Arc<dyn Env>, metadata_endpoint: Url) -> Self {
        CredentialsProvider {
            kind: Kind::Chain(Chain {
                env,
                metadata_endpoint,
                resolved: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// Static credentials when the control plane has them, else the default chain.
    pub fn from_control_plane(cp: &crate::config::model::ControlPlane) -> Self {
        match &cp.credentials {
            Some(s) => Self::fixed(Credentials {
                access_key_id: s.access_key_id.clone(),
                access_key_secret: s.access_key_secret.clone(),
                security_token: s.security_token.clone(),
            }),
            None => Self::default_chain(cp.metadata_endpoint.clone()),
        }
    }

    /// Credentials for the next request.
    pub async fn credentials(&self) -> Result<Credentials, CredentialsError> {
        match &self.kind {
            Kind::Fixed(c) => Ok(c.clone()),
            Kind::Chain(chain) => chain.credentials().await,
        }
    }
}

/// The default chain, and the source that served last (reused, as the SDK does).
struct Chain {
    env: Arc<dyn Env>,
    metadata_endpoint: Url,
    resolved: tokio::sync::Mutex<Option<Resolved>>,
}

enum Resolved {
    Fixed(Credentials),
    RamRole(Arc<EcsRamRole>),
}

impl Chain {
    async fn credentials(&self) -> Result<Credentials, CredentialsError> {
        let mut resolved = self.resolved.lock().await;
        match resolved.as_ref() {
            Some(Resolved::Fixed(c)) => return Ok(c.clone()),
            Some(Resolved::RamRole(role)) => return role.credentials().await,
            None => {}
        }
        let env = &*self.env;
        let mut tried = Vec::new();

        match from_env(env) {
            Ok(c) => {
                tracing::debug!("Alibaba Cloud credentials from environment variables");
                *resolved = Some(Resolved::Fixed(c.clone()));
                return Ok(c);
            }
            Err(why) => tried.push(why),
        }

        match from_profile(env, &self.metadata_endpoint) {
            Ok(ProfileOutcome::Fixed(c, file)) => {
                tracing::debug!(file = %file.display(), "Alibaba Cloud credentials from the credentials file");
                *resolved = Some(Resolved::Fixed(c.clone()));
                return Ok(c);
            }
            Ok(ProfileOutcome::RamRole(role, file)) => match role.credentials().await {
                Ok(c) => {
                    tracing::debug!(file = %file.display(), "Alibaba Cloud credentials from the ECS RAM role named in the credentials file");
                    *resolved = Some(Resolved::RamRole(Arc::from(role)));
                    return Ok(c);
                }
                Err(e) => tried.push(format!(
                    "credentials file {} (ecs_ram_role): {e}",
                    file.display()
                )),
            },
            Err(why) => tried.push(why),
        }

        let disabled = env
            .var(ENV_ECS_METADATA_DISABLED)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if disabled {
            tried.push(format!(
                "ECS RAM role: disabled by {ENV_ECS_METADATA_DISABLED}"
            ));
        } else {
            let role = EcsRamRole::new(
                self.metadata_endpoint.clone(),
                env.non_empty(ENV_ECS_METADATA),
                imds_v1_disabled(env),
            );
            match role.credentials().await {
                Ok(c) => {
                    tracing::debug!("Alibaba Cloud credentials from the ECS RAM role");
                    *resolved = Some(Resolved::RamRole(Arc::new(role)));
                    return Ok(c);
                }
                Err(e) => tried.push(format!("ECS RAM role: {e}")),
            }
        }
        Err(CredentialsError::NotFound { tried })
    }
}

fn imds_v1_disabled(env: &dyn Env) -> bool {
    env.var(ENV_IMDSV1_DISABLED)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// (a) `ALIBABA_CLOUD_ACCESS_KEY_ID` / `_SECRET` / `_SECURITY_TOKEN`. Err says why not.
fn from_env(env: &dyn Env) -> Result<Credentials, String> {
    let Some(id) = env.non_empty(ENV_ACCESS_KEY_ID) else {
        return Err(format!("environment: {ENV_ACCESS_KEY_ID} not set"));
    };
    let Some(secret) = env.non_empty(ENV_ACCESS_KEY_SECRET) else {
        return Err(format!(
            "environment: {ENV_ACCESS_KEY_ID} set but {ENV_ACCESS_KEY_SECRET} not set"
        ));
    };
    Ok(Credentials {
        access_key_id: Secret::new(id, SecretOrigin::Env(ENV_ACCESS_KEY_ID.into())),
        access_key_secret: Secret::new(secret, SecretOrigin::Env(ENV_ACCESS_KEY_SECRET.into())),
        security_token: env
            .non_empty(ENV_SECURITY_TOKEN)
            .map(|t| Secret::new(t, SecretOrigin::Env(ENV_SECURITY_TOKEN.into()))),
    })
}

enum ProfileOutcome {
    Fixed(Credentials, PathBuf),
    RamRole(Box<EcsRamRole>, PathBuf),
}

/// The credentials file to read: `ALIBABA_CLOUD_CREDENTIALS_FILE`, else
/// `~/.alibabacloud/credentials` (the documented name), else `~/.alibabacloud/credentials.ini`
/// (the name recent Python SDKs use).
fn credentials_file(env: &dyn Env) -> Result<PathBuf, String> {
    if let Some(f) = env.non_empty(ENV_CREDENTIALS_FILE) {
        return Ok(PathBuf::from(f));
    }
    let home = env
        .home_dir()
        .ok_or_else(|| "credentials file: no home directory".to_string())?;
    let dir = home.join(".alibabacloud");
    let plain = dir.join("credentials");
    let ini = dir.join("credentials.ini");
    Ok(if !plain.exists() && ini.exists() {
        ini
    } else {
        plain
    })
}

/// (b) A profile of the credentials file. Err says why not.
fn from_profile(env: &dyn Env, metadata_endpoint: &Url) -> Result<ProfileOutcome, String> {
    let path = credentials_file(env)?;
    let profile = env
        .non_empty(ENV_PROFILE)
        .unwrap_or_else(|| "default".into());
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("credentials file {}: not found", path.display()));
        }
        Err(e) => return Err(format!("credentials file {}: {e}", path.display())),
    };
    let here = |what: String| format!("credentials file {} [{profile}]: {what}", path.display());
    // Secrets may hold `\` or quotes: take values verbatim, as Python's configparser does.
    let opt = ini::ParseOption {
        enabled_quote: false,
        enabled_escape: false,
        ..Default::default()
    };
    let ini = ini::Ini::load_from_str_opt(&text, opt)
        .map_err(|e| here(format!("not a valid ini file (line {})", e.line)))?;
    let section = ini
        .section(Some(profile.as_str()))
        .ok_or_else(|| here("no such profile".into()))?;
    // The SDK cuts a value at `#` (an inline comment) and trims it.
    let get = |key: &str| {
        section
            .get(key)
            .map(|v| v.split('#').next().unwrap_or("").trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let origin = || SecretOrigin::File(path.clone());
    let need = |key: &str| {
        get(key)
            .map(|v| Secret::new(v, origin()))
            .ok_or_else(|| here(format!("{key} missing")))
    };
    match get("type").as_deref() {
        Some("access_key") => Ok(ProfileOutcome::Fixed(
            Credentials {
                access_key_id: need("access_key_id")?,
                access_key_secret: need("access_key_secret")?,
                security_token: None,
            },
            path.clone(),
        )),
        Some("sts") => Ok(ProfileOutcome::Fixed(
            Credentials {
                access_key_id: need("access_key_id")?,
                access_key_secret: need("access_key_secret")?,
                security_token: Some(need("security_token")?),
            },
            path.clone(),
        )),
        Some("ecs_ram_role") => Ok(ProfileOutcome::RamRole(
            Box::new(EcsRamRole::new(
                metadata_endpoint.clone(),
                get("role_name"),
                imds_v1_disabled(env),
            )),
            path.clone(),
        )),
        Some(other) => Err(here(format!(
            "unsupported type {other:?} (supported: access_key, sts, ecs_ram_role)"
        ))),
        None => Err(here("type missing".into())),
    }
}

/// (c) The ECS RAM role from instance metadata, IMDSv2 (a token from `PUT /latest/api/token`
/// sent with each read). Without a token the SDK falls back to IMDSv1 unless
/// `ALIBABA_CLOUD_IMDSV1_DISABLED=true`; so does this.
pub struct EcsRamRole {
    endpoint: Url,
    role_name: Option<String>,
    imds_v1_disabled: bool,
    http: reqwest::Client,
    cache: tokio::sync::Mutex<Option<Cached>>,
}

struct Cached {
    credentials: Credentials,
    expiration: OffsetDateTime,
    stale_at: OffsetDateTime,
    prefetch_at: OffsetDateTime,
}

impl EcsRamRole {
    pub fn new(endpoint: Url, role_name: Option<String>, imds_v1_disabled: bool) -> Self {
        crate::hbr::install_crypto_provider();
        let http = reqwest::Client::builder()
            // The metadata service is link-local: a proxy can only get in the way.
            .no_proxy()
            .connect_timeout(METADATA_CONNECT_TIMEOUT)
            .timeout(METADATA_TIMEOUT)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        EcsRamRole {
            endpoint,
            role_name,
            imds_v1_disabled,
            http,
            cache: tokio::sync::Mutex::new(None),
        }
    }

    /// The cached credentials, refreshed when stale (15 min before expiry) or an hour old. A
    /// failed refresh keeps serving the cached value while it has not expired.
    pub async fn credentials(&self) -> Result<Credentials, CredentialsError> {
        let mut cache = self.cache.lock().await;
        let now = OffsetDateTime::now_utc();
        if let Some(c) = cache.as_ref()
            && now < c.stale_at
            && now < c.prefetch_at
        {
            return Ok(c.credentials.clone());
        }
        match self.fetch().await {
            Ok(fresh) => {
                let c = fresh.credentials.clone();
                tracing::debug!(expiration = %fresh.expiration, "ECS RAM role credentials refreshed");
                *cache = Some(fresh);
                Ok(c)
            }
            Err(e) => match cache.as_ref() {
                Some(c) if now < c.expiration => {
                    tracing::warn!(error = %e, expiration = %c.expiration,
                        "refreshing ECS RAM role credentials failed; using the cached ones until they expire");
                    Ok(c.credentials.clone())
                }
                _ => Err(e),
            },
        }
    }

    fn error(reason: impl Into<String>) -> CredentialsError {
        CredentialsError::Provider {
            provider: "ECS metadata".into(),
            reason: reason.into(),
        }
    }

    fn url(&self, path: &str) -> Result<Url, CredentialsError> {
        self.endpoint
            .join(path)
            .map_err(|e| Self::error(format!("bad metadata URL: {e}")))
    }

    async fn token(&self) -> Result<String, CredentialsError> {
        let resp = self
            .http
            .put(self.url("/latest/api/token")?)
            .header(
                "X-aliyun-ecs-metadata-token-ttl-seconds",
                METADATA_TOKEN_TTL_SECONDS.to_string(),
            )
            .send()
            .await
            .map_err(|e| Self::error(format!("token: {}", e.without_url())))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(Self::error(format!("token: HTTP {}", status.as_u16())));
        }
        resp.text()
            .await
            .map(|t| t.trim().to_string())
            .map_err(|e| Self::error(format!("token: {}", e.without_url())))
    }

    async fn get(
        &self,
        url: Url,
        token: Option<&str>,
        what: &str,
    ) -> Result<String, CredentialsError> {
        let mut req = self.http.get(url);
        if let Some(t) = token {
            req = req.header("X-aliyun-ecs-metadata-token", t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Self::error(format!("{what}: {}", e.without_url())))?;
        let status = resp.status();
        if status != reqwest::StatusCode::OK {
            return Err(Self::error(format!("{what}: HTTP {}", status.as_u16())));
        }
        resp.text()
            .await
            .map_err(|e| Self::error(format!("{what}: {}", e.without_url())))
    }

    async fn fetch(&self) -> Result<Cached, CredentialsError> {
        let token = match self.token().await {
            Ok(t) => Some(t),
            Err(e) if self.imds_v1_disabled => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "no IMDSv2 token; falling back to IMDSv1 as the SDK does");
                None
            }
        };
        let base = self.url("/latest/meta-data/ram/security-credentials/")?;
        let role = match &self.role_name {
            Some(r) => r.clone(),
            None => self
                .get(base.clone(), token.as_deref(), "role name")
                .await?
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string(),
        };
        if role.is_empty() {
            return Err(Self::error("no RAM role attached to this instance"));
        }
        let url = base
            .join(&crate::hbr::sign::percent_encode(&role))
            .map_err(|e| Self::error(format!("bad role name: {e}")))?;
        let body = self.get(url, token.as_deref(), "role credentials").await?;
        parse_role_credentials(&body, &role)
    }
}

/// Reads AccessKeyId/AccessKeySecret/SecurityToken/Expiration; `Code` must be `Success`.
/// Errors never quote the body (it holds the secret).
fn parse_role_credentials(body: &str, role: &str) -> Result<Cached, CredentialsError> {
    let v: serde_json::Value = serde_json::from_str(body)
        .map_err(|_| EcsRamRole::error(format!("role {role}: answer is not JSON")))?;
    let field = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| EcsRamRole::error(format!("role {role}: {k} missing")))
    };
    let code = field("Code")?;
    if code != "Success" {
        return Err(EcsRamRole::error(format!("role {role}: Code {code}")));
    }
    let expiration = OffsetDateTime::parse(field("Expiration")?, &Rfc3339)
        .map_err(|_| EcsRamRole::error(format!("role {role}: Expiration not a UTC time")))?;
    let origin = || SecretOrigin::Derived("ECS RAM role");
    let now = OffsetDateTime::now_utc();
    Ok(Cached {
        credentials: Credentials {
            access_key_id: Secret::new(field("AccessKeyId")?, origin()),
            access_key_secret: Secret::new(field("AccessKeySecret")?, origin()),
            security_token: Some(Secret::new(field("SecurityToken")?, origin())),
        },
        expiration,
        stale_at: expiration - STALE_BEFORE_EXPIRY,
        prefetch_at: now + PREFETCH_AFTER,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const CLOSED: &str = "http://127.0.0.1:9";

    fn chain(env: StaticEnv, metadata: &str) -> CredentialsProvider {
        CredentialsProvider::default_chain_with_env(Arc::new(env), Url::parse(metadata).unwrap())
    }

    fn no_imds() -> StaticEnv {
        StaticEnv::default().with(ENV_ECS_METADATA_DISABLED, "true")
    }

    #[tokio::test]
    async fn env_variables_first() {
        let env = no_imds()
            .with(ENV_ACCESS_KEY_ID, "env-id")
            .with(ENV_ACCESS_KEY_SECRET, "env-secret")
            .with(ENV_SECURITY_TOKEN, "env-token");
        let c = chain(env, CLOSED).credentials().await.unwrap();
        assert_eq!(c.access_key_id.expose(), "env-id");
        assert_eq!(c.access_key_secret.expose(), "env-secret");
        assert_eq!(c.security_token.unwrap().expose(), "env-token");
    }

    #[tokio::test]
    async fn nothing_found_lists_what_was_tried_without_values() {
        let dir = tempfile::tempdir().unwrap();
        let env = StaticEnv {
            home: Some(dir.path().into()),
            ..no_imds()
        }
        .with(ENV_ACCESS_KEY_ID, "only-the-id-XYZ");
        let err = chain(env, CLOSED).credentials().await.unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(
            matches!(err, CredentialsError::NotFound { ref tried } if tried.len() == 3),
            "{shown}"
        );
        assert!(shown.contains(ENV_ACCESS_KEY_SECRET), "{shown}");
        assert!(shown.contains("credentials file"), "{shown}");
        assert!(shown.contains(ENV_ECS_METADATA_DISABLED), "{shown}");
        assert!(!shown.contains("only-the-id-XYZ"), "{shown}");
    }

    fn write(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    const INI: &str = "[default]\ntype = access_key\naccess_key_id = ini-id # a comment\naccess_key_secret = ini\\secret\n\n\
        [temp]\ntype = sts\naccess_key_id = sts-id\naccess_key_secret = sts-secret\nsecurity_token = sts-token\n\n\
        [weird]\ntype = rsa_key_pair\n\n[role]\ntype = ecs_ram_role\nrole_name = FileRole\n";

    #[tokio::test]
    async fn credentials_file_profiles() {
        let dir = tempfile::tempdir().unwrap();
        // Default place under the home directory, default profile.
        write(dir.path(), ".alibabacloud/credentials", INI);
        let home = StaticEnv {
            home: Some(dir.path().into()),
            ..no_imds()
        };
        let c = chain(home.clone(), CLOSED).credentials().await.unwrap();
        assert_eq!(c.access_key_id.expose(), "ini-id");
        assert_eq!(c.access_key_secret.expose(), "ini\\secret");
        assert!(c.security_token.is_none());
        assert!(format!("{:?}", c).contains(".alibabacloud/credentials"));

        // An explicit file and profile.
        let other = write(dir.path(), "elsewhere.ini", INI);
        let env = no_imds()
            .with(ENV_CREDENTIALS_FILE, other.to_str().unwrap())
            .with(ENV_PROFILE, "temp");
        let c = chain(env, CLOSED).credentials().await.unwrap();
        assert_eq!(c.security_token.unwrap().expose(), "sts-token");

        // Env wins over the file.
        let env = home
            .clone()
            .with(ENV_ACCESS_KEY_ID, "e")
            .with(ENV_ACCESS_KEY_SECRET, "s");
        assert_eq!(
            chain(env, CLOSED)
                .credentials()
                .await
                .unwrap()
                .access_key_id
                .expose(),
            "e"
        );

        for (profile, why) in [
            ("weird", "unsupported type"),
            ("missing", "no such profile"),
        ] {
            let env = home.clone().with(ENV_PROFILE, profile);
            let err = chain(env, CLOSED)
                .credentials()
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{err}");
        }
    }

    /// A fake ECS metadata service that insists on IMDSv2 tokens.
    struct Imds {
        url: String,
        fetches: Arc<AtomicUsize>,
        roles_asked: Arc<Mutex<Vec<String>>>,
    }

    async fn imds(expires_in: time::Duration, token_ok: bool) -> Imds {
        use axum::http::{HeaderMap, StatusCode};
        use axum::routing::{get, put};
        let fetches = Arc::new(AtomicUsize::new(0));
        let roles_asked: Arc<Mutex<Vec<String>>> = Arc::default();
        let token_ok = Arc::new(token_ok);
        let need_token = |h: &HeaderMap| {
            h.get("x-aliyun-ecs-metadata-token")
                .is_some_and(|v| v == "tok-1")
        };
        let (f, r) = (fetches.clone(), roles_asked.clone());
        let app = axum::Router::new()
            .route(
                "/latest/api/token",
                put(move |h: HeaderMap| {
                    let ok =
                        *token_ok && h.get("x-aliyun-ecs-metadata-token-ttl-seconds").is_some();
                    async move {
                        if ok {
                            (StatusCode::OK, "tok-1")
                        } else {
                            (StatusCode::FORBIDDEN, "")
                        }
                    }
                }),
            )
            .route(
                "/latest/meta-data/ram/security-credentials/",
                get(move |h: HeaderMap| async move {
                    if need_token(&h) {
                        (StatusCode::OK, "MetaRole".to_string())
                    } else {
                        (StatusCode::UNAUTHORIZED, String::new())
                    }
                }),
            )
            .route(
                "/latest/meta-data/ram/security-credentials/{role}",
                get(
                    move |axum::extract::Path(role): axum::extract::Path<String>, h: HeaderMap| {
                        let (f, r) = (f.clone(), r.clone());
                        async move {
                            if !need_token(&h) {
                                return (StatusCode::UNAUTHORIZED, String::new());
                            }
                            let n = f.fetch_add(1, Ordering::SeqCst);
                            r.lock().unwrap().push(role);
                            let exp = (OffsetDateTime::now_utc() + expires_in)
                                .replace_nanosecond(0)
                                .unwrap();
                            let body = serde_json::json!({
                                "Code": "Success",
                                "AccessKeyId": format!("STS.id-{n}"),
                                "AccessKeySecret": format!("role-secret-{n}"),
                                "SecurityToken": format!("role-token-{n}"),
                                "Expiration": exp.format(&Rfc3339).unwrap(),
                                "LastUpdated": "2024-01-01T00:00:00Z",
                            });
                            (StatusCode::OK, body.to_string())
                        }
                    },
                ),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Imds {
            url: format!("http://{addr}"),
            fetches,
            roles_asked,
        }
    }

    fn empty_home() -> (tempfile::TempDir, StaticEnv) {
        let dir = tempfile::tempdir().unwrap();
        let env = StaticEnv {
            home: Some(dir.path().into()),
            ..Default::default()
        };
        (dir, env)
    }

    #[tokio::test]
    async fn ecs_ram_role_with_imdsv2_is_cached() {
        let m = imds(time::Duration::hours(6), true).await;
        let (_d, env) = empty_home();
        let p = chain(env, &m.url);
        let a = p.credentials().await.unwrap();
        let b = p.credentials().await.unwrap();
        assert_eq!(a.access_key_id.expose(), "STS.id-0");
        assert_eq!(a.security_token.as_ref().unwrap().expose(), "role-token-0");
        assert_eq!(a, b);
        assert_eq!(m.fetches.load(Ordering::SeqCst), 1, "cached while fresh");
        assert_eq!(m.roles_asked.lock().unwrap()[0], "MetaRole");
    }

    #[tokio::test]
    async fn ecs_ram_role_refreshed_near_expiry() {
        // Expires in 10 min: inside the SDK's 15-minute stale window, so every use refreshes.
        let m = imds(time::Duration::minutes(10), true).await;
        let (_d, env) = empty_home();
        let p = chain(env.with(ENV_ECS_METADATA, "NamedRole"), &m.url);
        assert_eq!(
            p.credentials().await.unwrap().access_key_secret.expose(),
            "role-secret-0"
        );
        assert_eq!(
            p.credentials().await.unwrap().access_key_secret.expose(),
            "role-secret-1"
        );
        assert_eq!(m.fetches.load(Ordering::SeqCst), 2);
        assert_eq!(*m.roles_asked.lock().unwrap(), ["NamedRole", "NamedRole"]);
    }

    #[tokio::test]
    async fn ecs_ram_role_from_profile() {
        let m = imds(time::Duration::hours(6), true).await;
        let (d, env) = empty_home();
        write(d.path(), ".alibabacloud/credentials", INI);
        let p = chain(env.with(ENV_PROFILE, "role"), &m.url);
        assert_eq!(
            p.credentials().await.unwrap().access_key_id.expose(),
            "STS.id-0"
        );
        assert_eq!(*m.roles_asked.lock().unwrap(), ["FileRole"]);
    }

    #[tokio::test]
    async fn ecs_ram_role_disabled_by_env() {
        let m = imds(time::Duration::hours(6), true).await;
        let (_d, env) = empty_home();
        let err = chain(env.with(ENV_ECS_METADATA_DISABLED, "TRUE"), &m.url)
            .credentials()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("disabled"), "{err}");
        assert_eq!(m.fetches.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn ecs_ram_role_without_token_when_imdsv1_disabled() {
        let m = imds(time::Duration::hours(6), false).await;
        let (_d, env) = empty_home();
        let err = chain(env.with(ENV_IMDSV1_DISABLED, "true"), &m.url)
            .credentials()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("token: HTTP 403"), "{err}");
        // With IMDSv1 allowed the SDK falls back to tokenless reads; this fake refuses them.
        let (_d, env) = empty_home();
        let err = chain(env, &m.url).credentials().await.unwrap_err();
        assert!(err.to_string().contains("HTTP 401"), "{err}");
    }

    #[tokio::test]
    async fn metadata_calls_have_a_short_deadline() {
        // A listener that accepts and never answers.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let (_d, env) = empty_home();
        let started = std::time::Instant::now();
        let err = chain(env.with(ENV_IMDSV1_DISABLED, "true"), &url)
            .credentials()
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(matches!(err, CredentialsError::NotFound { .. }));
    }

    #[test]
    fn role_answer_errors_never_quote_the_body() {
        let body = r#"{"Code":"Success","AccessKeyId":"id","AccessKeySecret":"very-secret","SecurityToken":"tok","Expiration":"soon"}"#;
        let err = parse_role_credentials(body, "R").err().unwrap().to_string();
        assert!(
            err.contains("Expiration") && !err.contains("very-secret"),
            "{err}"
        );
        let err = parse_role_credentials("not json very-secret", "R")
            .err()
            .unwrap()
            .to_string();
        assert!(!err.contains("very-secret"), "{err}");
    }
}
