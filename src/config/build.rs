//! Step 2 of 3: read the files, merge `[agent]`/`[control_plane]` per key across drop-ins,
//! apply defaults, validate every value and resolve secrets into the [`Config`] model.
//! Every problem is reported; nothing stops at the first one.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use url::Url;

use super::raw::{
    RawAgent, RawCommon, RawControlPlane, RawCpfs, RawFilesystem, RawFleet, RawHdfs, RawNas, RawS3,
    RawSchedule, RawSecret, RawSpeedLimit, S, StrList,
};
use super::report::{FileText, Reporter};
use super::{ConfigErrors, Env, Severity, archive, check, model::*, secrets};
use crate::secret::Secret;

const KINDS: &[&str] = &["nas", "cpfs", "bmcpfs", "filesystem", "hdfs", "s3"];
const TOP_LEVEL: &str = "expected one of `version`, `agent`, `control_plane`, `fleet`, `nas`, \
                         `cpfs`, `bmcpfs`, `filesystem`, `hdfs`, `s3`";

/// A value and the file it came from (drop-ins override per key).
struct At<T> {
    file: usize,
    value: Spanned<T>,
}

fn over<T>(slot: &mut Option<At<T>>, file: usize, new: S<T>) {
    if let Some(value) = new {
        *slot = Some(At { file, value });
    }
}

#[derive(Default)]
struct MergedAgent {
    /// The first `[agent]` header: where a missing key is reported.
    header: Option<(usize, Range<usize>)>,
    removed: BTreeSet<String>,
    cluster_id: Option<At<String>>,
    state_dir: Option<At<String>>,
    probe_timeout: Option<At<String>>,
    probe_concurrency: Option<At<i64>>,
    write_concurrency: Option<At<i64>>,
    reprobe_interval: Option<At<String>>,
    register_on_probe_failure: Option<At<bool>>,
}

#[derive(Default)]
struct MergedControlPlane {
    header: Option<(usize, Range<usize>)>,
    removed: BTreeSet<String>,
    region: Option<At<String>>,
    network: Option<At<String>>,
    endpoint: Option<At<String>>,
    signature: Option<At<String>>,
    access_key_id: Option<At<RawSecret>>,
    access_key_secret: Option<At<RawSecret>>,
    security_token: Option<At<RawSecret>>,
    metadata_endpoint: Option<At<String>>,
    timeout: Option<At<String>>,
}

#[derive(Default)]
struct MergedFleet {
    header: Option<(usize, Range<usize>)>,
    removed: BTreeSet<String>,
    client_id: Option<At<String>>,
    client_id_file: Option<At<String>>,
    heartbeat_timeout: Option<At<String>>,
    settle_time: Option<At<String>>,
    coordination: Option<At<String>>,
    etcd_endpoints: Option<At<Vec<Spanned<String>>>>,
    etcd_lease_ttl: Option<At<String>>,
    etcd_prefix: Option<At<String>>,
}

/// One `[KIND.NAME]` table, valid or not (duplicates are checked on all of them).
struct Entry {
    name: String,
    file: usize,
    span: Range<usize>,
    source: Option<Source>,
}

pub(super) struct Loader<'e> {
    env: &'e dyn Env,
    rep: Reporter,
    /// Indexes of the TOML files in `rep.files` (a conf.d read error adds a non-file entry).
    toml_files: Vec<usize>,
    /// A file could not be parsed: "missing key" errors would be guesses, so skip them.
    unparsed: bool,
    agent: MergedAgent,
    control_plane: MergedControlPlane,
    fleet: MergedFleet,
    entries: Vec<Entry>,
}

impl<'e> Loader<'e> {
    pub fn new(env: &'e dyn Env) -> Self {
        Loader {
            env,
            rep: Reporter::default(),
            toml_files: Vec::new(),
            unparsed: false,
            agent: MergedAgent::default(),
            control_plane: MergedControlPlane::default(),
            fleet: MergedFleet::default(),
            entries: Vec::new(),
        }
    }

    pub fn run(mut self, main: &Path) -> Result<Config, ConfigErrors> {
        self.read(main);
        let conf_d = main.parent().unwrap_or(Path::new("")).join("conf.d");
        match std::fs::read_dir(&conf_d) {
            Ok(dir) => {
                let mut names: Vec<PathBuf> = dir
                    .filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| {
                        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                        // Dotfiles are editor leftovers (`.#x.toml`), not drop-ins.
                        name.is_some_and(|n| n.ends_with(".toml") && !n.starts_with('.'))
                            && p.is_file()
                    })
                    .collect();
                names.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
                for p in names {
                    self.read(&p);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                self.unparsed = true;
                let i = self.add_file(conf_d, String::new(), None);
                self.rep
                    .error(i, &(0..0), "", "", format!("cannot read directory: {e}"));
            }
        }
        for i in self.toml_files.clone() {
            self.process_file(i);
        }
        let agent = self.build_agent();
        let control_plane = self.build_control_plane();
        let fleet = self.build_fleet();
        let sources = self.sources();

        let Reporter {
            files,
            mut errors,
            mut warnings,
        } = self.rep;
        let order = |v: &mut Vec<(usize, super::Diagnostic)>| {
            v.sort_by_key(|(f, d)| (*f, d.line, d.column));
            v.drain(..).map(|(_, d)| d).collect::<Vec<_>>()
        };
        let errors = order(&mut errors);
        let warnings = order(&mut warnings);
        match (agent, control_plane) {
            (Some(agent), Some(control_plane)) if errors.is_empty() => Ok(Config {
                files: self
                    .toml_files
                    .iter()
                    .map(|&i| files[i].path.clone())
                    .collect(),
                agent,
                control_plane,
                sources,
                fleet,
                warnings,
            }),
            _ => Err(ConfigErrors { errors, warnings }),
        }
    }

    fn add_file(&mut self, path: PathBuf, text: String, mode: Option<u32>) -> usize {
        self.rep.files.push(FileText::new(path, text, mode));
        self.rep.files.len() - 1
    }

    fn read(&mut self, path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mode = std::fs::metadata(path).ok().map(|m| m.permissions().mode());
                let i = self.add_file(path.to_owned(), text, mode);
                self.toml_files.push(i);
            }
            Err(e) => {
                self.unparsed = true;
                let i = self.add_file(path.to_owned(), String::new(), None);
                self.rep
                    .error(i, &(0..0), "", "", format!("cannot read: {e}"));
            }
        }
    }

    fn process_file(&mut self, file: usize) {
        let text = self.rep.files[file].text.clone();
        let (root, errs) = DeTable::parse_recoverable(&text);
        if !errs.is_empty() {
            self.unparsed = true;
            let mut seen = BTreeSet::new();
            for e in errs {
                let span = e.span().unwrap_or(0..0);
                if seen.insert((span.start, e.message().to_owned())) {
                    self.rep.error(
                        file,
                        &span,
                        "",
                        "",
                        format!("syntax error: {}", e.message()),
                    );
                }
            }
            return;
        }
        let mut saw_version = false;
        for (key, value) in root.get_ref().iter() {
            match key.get_ref().as_ref() {
                "version" => {
                    saw_version = true;
                    let v = <i64 as serde::Deserialize>::deserialize(ValueDeserializer::from(
                        value.clone(),
                    ));
                    if v.ok() != Some(1) {
                        self.rep.error(
                            file,
                            &value.span(),
                            "",
                            "version",
                            "unsupported version: this agent reads version = 1",
                        );
                    }
                }
                "agent" => self.agent_table(file, value),
                "control_plane" => self.control_plane_table(file, value),
                "fleet" => self.fleet_table(file, value),
                other => match KINDS.iter().find(|&&k| k == other) {
                    Some(&kind) => self.kind_table(file, kind, value),
                    None => self.rep.error(
                        file,
                        &key.span(),
                        "",
                        other,
                        format!("unknown key; {TOP_LEVEL}"),
                    ),
                },
            }
        }
        if file == 0 && !saw_version {
            self.rep.error(
                file,
                &(0..0),
                "",
                "version",
                "missing required key (the main file starts with version = 1)",
            );
        }
    }

    fn agent_table(&mut self, file: usize, value: &Spanned<DeValue<'_>>) {
        let a = &mut self.agent;
        a.header.get_or_insert((file, value.span()));
        let Some(r) = self
            .rep
            .deserialize::<RawAgent>(file, "[agent]", value, &mut a.removed)
        else {
            return;
        };
        over(&mut a.cluster_id, file, r.cluster_id);
        over(&mut a.state_dir, file, r.state_dir);
        over(&mut a.probe_timeout, file, r.probe_timeout);
        over(&mut a.probe_concurrency, file, r.probe_concurrency);
        over(&mut a.write_concurrency, file, r.write_concurrency);
        over(&mut a.reprobe_interval, file, r.reprobe_interval);
        over(
            &mut a.register_on_probe_failure,
            file,
            r.register_on_probe_failure,
        );
    }

    fn control_plane_table(&mut self, file: usize, value: &Spanned<DeValue<'_>>) {
        let c = &mut self.control_plane;
        c.header.get_or_insert((file, value.span()));
        let Some(r) =
            self.rep
                .deserialize::<RawControlPlane>(file, "[control_plane]", value, &mut c.removed)
        else {
            return;
        };
        over(&mut c.region, file, r.region);
        over(&mut c.network, file, r.network);
        over(&mut c.endpoint, file, r.endpoint);
        over(&mut c.signature, file, r.signature);
        over(&mut c.access_key_id, file, r.access_key_id);
        over(&mut c.access_key_secret, file, r.access_key_secret);
        over(&mut c.security_token, file, r.security_token);
        over(&mut c.metadata_endpoint, file, r.metadata_endpoint);
        over(&mut c.timeout, file, r.timeout);
    }

    fn fleet_table(&mut self, file: usize, value: &Spanned<DeValue<'_>>) {
        let f = &mut self.fleet;
        f.header.get_or_insert((file, value.span()));
        let Some(r) = self
            .rep
            .deserialize::<RawFleet>(file, "[fleet]", value, &mut f.removed)
        else {
            return;
        };
        over(&mut f.client_id, file, r.client_id);
        over(&mut f.client_id_file, file, r.client_id_file);
        over(&mut f.heartbeat_timeout, file, r.heartbeat_timeout);
        over(&mut f.settle_time, file, r.settle_time);
        over(&mut f.coordination, file, r.coordination);
        over(&mut f.etcd_endpoints, file, r.etcd_endpoints);
        over(&mut f.etcd_lease_ttl, file, r.etcd_lease_ttl);
        over(&mut f.etcd_prefix, file, r.etcd_prefix);
    }

    fn kind_table(&mut self, file: usize, kind: &'static str, value: &Spanned<DeValue<'_>>) {
        let Some(table) = value.get_ref().as_table() else {
            self.rep.error(
                file,
                &value.span(),
                "",
                kind,
                format!("expected a table of sources ([{kind}.NAME])"),
            );
            return;
        };
        for (key, v) in table.iter() {
            let name = key.get_ref().to_string();
            // `[nas.x]` starts at its `[`; `x = { ... }` at its key.
            let span = if v.span().start < key.span().start {
                v.span()
            } else {
                key.span()
            };
            let context = match check::source_name(&name) {
                Ok(()) => format!("source {name}"),
                Err(m) => {
                    self.rep
                        .error(file, &key.span(), &format!("source {name:?}"), "", m);
                    self.entries.push(Entry {
                        name,
                        file,
                        span,
                        source: None,
                    });
                    continue;
                }
            };
            let source = self.build_source(file, kind, &name, context, span.clone(), v);
            self.entries.push(Entry {
                name,
                file,
                span,
                source,
            });
        }
    }

    fn build_source(
        &mut self,
        file: usize,
        kind: &'static str,
        name: &str,
        context: String,
        span: Range<usize>,
        value: &Spanned<DeValue<'_>>,
    ) -> Option<Source> {
        let mut sc = Scope {
            rep: &mut self.rep,
            env: self.env,
            file,
            context,
            header: span.clone(),
            removed: BTreeSet::new(),
            failed: false,
        };
        let mut removed = BTreeSet::new();
        macro_rules! raw {
            ($t:ty) => {{
                let r: Option<$t> = sc.rep.deserialize(file, &sc.context, value, &mut removed);
                sc.failed |= !removed.is_empty();
                sc.removed = std::mem::take(&mut removed);
                r?
            }};
        }
        let (spec, archive, extra) = match kind {
            "nas" => {
                let mut r = raw!(RawNas);
                let common = r.take_common();
                let paths = r.paths.take();
                let spec = nas(&mut sc, r);
                let (a, x) = archive_options(&mut sc, true, common, paths);
                (spec, a, x)
            }
            "cpfs" | "bmcpfs" => {
                let mut r = raw!(RawCpfs);
                let common = r.take_common();
                let paths = r.paths.take();
                let spec = cpfs(&mut sc, r);
                let spec = spec.map(|s| {
                    if kind == "cpfs" {
                        SourceSpec::Cpfs(s)
                    } else {
                        SourceSpec::Bmcpfs(s)
                    }
                });
                let (a, x) = archive_options(&mut sc, false, common, paths);
                (spec, a, x)
            }
            "filesystem" => {
                let mut r = raw!(RawFilesystem);
                let common = r.take_common();
                let paths = r.paths.take();
                let spec = filesystem(&mut sc, r);
                let (a, x) = archive_options(&mut sc, false, common, paths);
                (spec, a, x)
            }
            "hdfs" => {
                let mut r = raw!(RawHdfs);
                let common = r.take_common();
                let spec = hdfs(&mut sc, r);
                let (a, x) = archive_options(&mut sc, true, common, None);
                (spec, a, x)
            }
            "s3" => {
                let mut r = raw!(RawS3);
                let common = r.take_common();
                let paths = r.paths.take();
                let spec = s3(&mut sc, r);
                let (a, x) = archive_options(&mut sc, true, common, paths);
                (spec, a, x)
            }
            _ => unreachable!("kind_table is called with KINDS only"),
        };
        if sc.failed {
            return None;
        }
        let (line, column) = sc.rep.position(file, &span);
        Some(Source {
            name: name.to_owned(),
            origin: Origin {
                file: sc.rep.files[file].path.clone(),
                line,
                column,
            },
            spec: spec?,
            archive,
            connection_info_extra: extra?,
        })
    }

    fn build_agent(&mut self) -> Option<AgentSettings> {
        let a = std::mem::take(&mut self.agent);
        let (file, header) = a.header.clone().unwrap_or((0, 0..0));
        let mut sc = self.scope(file, "[agent]", header, a.removed.clone());
        let cluster_id = sc.required_at(&a.cluster_id, "cluster_id").and_then(|v| {
            sc.check_at(v, "cluster_id", |s| {
                check::cluster_id(s).map(|()| s.clone())
            })
        });
        let state_dir = sc.opt_at(
            &a.state_dir,
            "state_dir",
            PathBuf::from(defaults::STATE_DIR),
            |s| check::absolute_path(s),
        );
        let probe_timeout = sc.opt_at(
            &a.probe_timeout,
            "probe_timeout",
            defaults::PROBE_TIMEOUT,
            |s| check::duration(s),
        );
        let reprobe_interval = sc.opt_at(
            &a.reprobe_interval,
            "reprobe_interval",
            defaults::REPROBE_INTERVAL,
            |s| check::duration(s),
        );
        let default_concurrency =
            NonZeroUsize::new(defaults::PROBE_CONCURRENCY).expect("the default is not zero");
        let probe_concurrency = sc.opt_at(
            &a.probe_concurrency,
            "probe_concurrency",
            default_concurrency,
            |&n| {
                usize::try_from(n)
                    .ok()
                    .and_then(NonZeroUsize::new)
                    .ok_or_else(|| format!("must be at least 1, got {n}"))
            },
        );
        let default_writes =
            NonZeroUsize::new(defaults::WRITE_CONCURRENCY).expect("the default is not zero");
        let write_concurrency = sc.opt_at(
            &a.write_concurrency,
            "write_concurrency",
            default_writes,
            |&n| {
                usize::try_from(n)
                    .ok()
                    .filter(|n| *n <= defaults::MAX_WRITE_CONCURRENCY)
                    .and_then(NonZeroUsize::new)
                    .ok_or_else(|| {
                        format!("must be 1 to {}, got {n}", defaults::MAX_WRITE_CONCURRENCY)
                    })
            },
        );
        let register_on_probe_failure = a
            .register_on_probe_failure
            .as_ref()
            .is_some_and(|v| *v.value.get_ref());
        if sc.failed {
            return None;
        }
        Some(AgentSettings {
            cluster_id: cluster_id?,
            state_dir: state_dir?,
            probe_timeout: probe_timeout?,
            probe_concurrency: probe_concurrency?,
            write_concurrency: write_concurrency?,
            reprobe_interval: reprobe_interval?,
            register_on_probe_failure,
        })
    }

    fn build_control_plane(&mut self) -> Option<ControlPlane> {
        let c = std::mem::take(&mut self.control_plane);
        let (file, header) = c.header.clone().unwrap_or((0, 0..0));
        let mut sc = self.scope(file, "[control_plane]", header, c.removed.clone());
        let region = sc
            .required_at(&c.region, "region")
            .and_then(|v| sc.check_at(v, "region", |s| check::region(s).map(|()| s.clone())));
        let network = sc.opt_at(&c.network, "network", Network::Public, |s| {
            match s.as_str() {
                "public" => Ok(Network::Public),
                "vpc" => Ok(Network::Vpc),
                _ => Err(format!("{s:?} is not one of \"public\", \"vpc\"")),
            }
        });
        let endpoint = match &c.endpoint {
            Some(v) => sc.check_at(v, "endpoint", |s| check::http_url(s, check::is_loopback)),
            None => match (&region, network) {
                (Some(r), Some(n)) => {
                    let host = match n {
                        Network::Public => "hbr",
                        Network::Vpc => "hbr-vpc",
                    };
                    Url::parse(&format!("https://{host}.{r}.aliyuncs.com")).ok()
                }
                _ => None,
            },
        };
        let signature = sc.opt_at(&c.signature, "signature", SignatureVersion::V3, |s| match s
            .as_str()
        {
            "v3" => Ok(SignatureVersion::V3),
            "v2" => Ok(SignatureVersion::V2),
            _ => Err(format!("{s:?} is not one of \"v3\", \"v2\"")),
        });
        let id = c
            .access_key_id
            .as_ref()
            .map(|v| sc.secret_at(v, "access_key_id"));
        let secret = c
            .access_key_secret
            .as_ref()
            .map(|v| sc.secret_at(v, "access_key_secret"));
        let token = c
            .security_token
            .as_ref()
            .map(|v| sc.secret_at(v, "security_token"));
        let both = "set both access_key_id and access_key_secret, or neither to use the \
                    default credential chain";
        let credentials = match (id, secret, &c.access_key_id, &c.access_key_secret) {
            (Some(id), Some(secret), _, _) => {
                Some(id.zip(secret).map(|(id, secret)| StaticCredentials {
                    access_key_id: id,
                    access_key_secret: secret,
                    security_token: token.flatten(),
                }))
            }
            (None, None, _, _) => {
                if let Some(t) = &c.security_token {
                    sc.err_in(
                        t.file,
                        &t.value.span(),
                        "security_token",
                        "a security token needs access_key_id and access_key_secret",
                    );
                }
                Some(None)
            }
            (Some(_), None, Some(v), _) => {
                sc.err_in(v.file, &v.value.span(), "access_key_id", both);
                None
            }
            (_, _, _, Some(v)) => {
                sc.err_in(v.file, &v.value.span(), "access_key_secret", both);
                None
            }
            _ => None,
        };
        let metadata_endpoint = match &c.metadata_endpoint {
            Some(v) => sc.check_at(v, "metadata_endpoint", |s| {
                check::http_url(s, |u| {
                    check::is_default_metadata(u) || check::is_loopback(u)
                })
            }),
            None => Url::parse(defaults::METADATA_ENDPOINT).ok(),
        };
        let timeout = sc.opt_at(&c.timeout, "timeout", defaults::API_TIMEOUT, |s| {
            check::duration(s)
        });
        if sc.failed {
            return None;
        }
        Some(ControlPlane {
            region: region?,
            network: network?,
            endpoint: endpoint?,
            signature: signature?,
            credentials: credentials?,
            metadata_endpoint: metadata_endpoint?,
            timeout: timeout?,
        })
    }

    /// `[fleet]`, absent = `None` (one host owns everything). Invalid keys are reported and
    /// stop the load, so `None` after an error is never used.
    fn build_fleet(&mut self) -> Option<FleetSettings> {
        let f = std::mem::take(&mut self.fleet);
        let (file, header) = f.header.clone()?;
        let mut sc = self.scope(file, "[fleet]", header, f.removed.clone());
        let identity = match (&f.client_id, &f.client_id_file) {
            (Some(id), None) => sc.check_at(id, "client_id", |s| {
                crate::fleet::check_client_id(s).map(|()| ClientIdentity::Literal(s.clone()))
            }),
            (None, Some(path)) => sc.check_at(path, "client_id_file", |s| {
                check::absolute_path(s).map(ClientIdentity::File)
            }),
            (Some(_), Some(path)) => {
                sc.err_in(
                    path.file,
                    &path.value.span(),
                    "client_id_file",
                    "set client_id or client_id_file, not both",
                );
                None
            }
            (None, None) => {
                sc.missing("client_id");
                None
            }
        };
        let heartbeat_timeout = sc.opt_at(
            &f.heartbeat_timeout,
            "heartbeat_timeout",
            defaults::FLEET_HEARTBEAT_TIMEOUT,
            |s| check::duration(s),
        );
        let settle_time = sc.opt_at(&f.settle_time, "settle_time", None, |s| {
            check::duration(s).map(Some)
        });
        let strict = sc.opt_at(&f.coordination, "coordination", false, |s| {
            match s.as_str() {
                "hbr" => Ok(false),
                "etcd" => Ok(true),
                _ => Err(format!("{s:?} is not one of \"hbr\", \"etcd\"")),
            }
        });
        let lease_ttl = sc.opt_at(
            &f.etcd_lease_ttl,
            "etcd_lease_ttl",
            defaults::ETCD_LEASE_TTL,
            |s| {
                check::duration(s).and_then(|d| {
                    if d.as_secs() >= 5 && d.subsec_nanos() == 0 {
                        Ok(d)
                    } else {
                        Err("must be whole seconds, at least 5s".into())
                    }
                })
            },
        );
        let prefix = sc.opt_at(
            &f.etcd_prefix,
            "etcd_prefix",
            defaults::ETCD_PREFIX.to_string(),
            |s| {
                if s.starts_with('/') && !s.ends_with('/') {
                    Ok(s.clone())
                } else {
                    Err("must start with / and not end with /".into())
                }
            },
        );
        let mut endpoints = Vec::new();
        if let Some(list) = &f.etcd_endpoints {
            for e in list.value.get_ref() {
                match check::http_url(e.get_ref(), check::is_loopback) {
                    Ok(u) => endpoints.push(u),
                    Err(m) => sc.err_in(list.file, &e.span(), "etcd_endpoints", m),
                }
            }
        }
        let etcd = match strict {
            Some(true) if endpoints.is_empty() && f.etcd_endpoints.is_some() => {
                if let Some(list) = &f.etcd_endpoints {
                    sc.err_in(
                        list.file,
                        &list.value.span(),
                        "etcd_endpoints",
                        "coordination = \"etcd\" needs at least one endpoint",
                    );
                }
                None
            }
            Some(true) if f.etcd_endpoints.is_none() => {
                sc.missing("etcd_endpoints");
                None
            }
            Some(true) => Some(EtcdSettings {
                endpoints,
                lease_ttl: lease_ttl.unwrap_or(defaults::ETCD_LEASE_TTL),
                prefix: prefix.clone().unwrap_or_default(),
            }),
            _ => {
                for (key, present) in [
                    (
                        "etcd_endpoints",
                        f.etcd_endpoints.as_ref().map(|v| (v.file, v.value.span())),
                    ),
                    (
                        "etcd_lease_ttl",
                        f.etcd_lease_ttl.as_ref().map(|v| (v.file, v.value.span())),
                    ),
                    (
                        "etcd_prefix",
                        f.etcd_prefix.as_ref().map(|v| (v.file, v.value.span())),
                    ),
                ] {
                    if let Some((file, span)) = present {
                        sc.err_in(file, &span, key, "only used with coordination = \"etcd\"");
                    }
                }
                None
            }
        };
        if sc.failed {
            return None;
        }
        Some(FleetSettings {
            identity: identity?,
            heartbeat_timeout: heartbeat_timeout?,
            settle_time: settle_time?,
            etcd,
        })
    }

    /// Orders the sources by position, reports duplicate names, and keeps the valid ones.
    fn sources(&mut self) -> BTreeMap<String, Source> {
        let mut entries = std::mem::take(&mut self.entries);
        entries.sort_by_key(|e| (e.file, e.span.start));
        let mut first: BTreeMap<String, (usize, Range<usize>)> = BTreeMap::new();
        let mut out = BTreeMap::new();
        for e in entries {
            if let Some((f, span)) = first.get(&e.name) {
                let place = self.rep.place(*f, span);
                self.rep.error(
                    e.file,
                    &e.span,
                    &format!("source {}", e.name),
                    "",
                    format!(
                        "duplicate source name {:?}: also defined at {place}",
                        e.name
                    ),
                );
                continue;
            }
            first.insert(e.name.clone(), (e.file, e.span.clone()));
            if let Some(s) = e.source {
                out.insert(e.name, s);
            }
        }
        out
    }

    fn scope(
        &mut self,
        file: usize,
        context: &str,
        header: Range<usize>,
        removed: BTreeSet<String>,
    ) -> Scope<'_> {
        let mut sc = Scope {
            rep: &mut self.rep,
            env: self.env,
            file,
            context: context.to_owned(),
            header,
            removed,
            failed: false,
        };
        // A file that did not parse may hold the missing key: do not guess.
        if self.unparsed {
            sc.failed = true;
            sc.removed.insert(String::from("*"));
        }
        sc
    }
}

/// Where diagnostics of one table go, and whether any was an error.
struct Scope<'a> {
    rep: &'a mut Reporter,
    env: &'a dyn Env,
    file: usize,
    context: String,
    /// The table header: where a missing key is reported.
    header: Range<usize>,
    /// Keys already reported by deserialization (`*`: all keys).
    removed: BTreeSet<String>,
    failed: bool,
}

impl Scope<'_> {
    fn err_in(&mut self, file: usize, span: &Range<usize>, field: &str, msg: impl Into<String>) {
        self.failed = true;
        self.rep.error(file, span, &self.context, field, msg);
    }

    fn err(&mut self, span: &Range<usize>, field: &str, msg: impl Into<String>) {
        self.err_in(self.file, span, field, msg);
    }

    fn warn_in(&mut self, file: usize, span: &Range<usize>, field: &str, msg: impl Into<String>) {
        self.rep
            .push(Severity::Warning, file, span, &self.context, field, msg);
    }

    fn warn(&mut self, span: &Range<usize>, field: &str, msg: impl Into<String>) {
        self.warn_in(self.file, span, field, msg);
    }

    fn missing(&mut self, field: &str) {
        if self.removed.contains(field) || self.removed.contains("*") {
            self.failed = true;
        } else {
            let h = self.header.clone();
            self.err(&h, field, "missing required key");
        }
    }

    fn required<'v, T>(&mut self, v: &'v S<T>, field: &str) -> Option<&'v Spanned<T>> {
        if v.is_none() {
            self.missing(field);
        }
        v.as_ref()
    }

    fn required_at<'v, T>(&mut self, v: &'v Option<At<T>>, field: &str) -> Option<&'v At<T>> {
        if v.is_none() {
            self.missing(field);
        }
        v.as_ref()
    }

    fn check<T, U>(
        &mut self,
        v: &Spanned<T>,
        field: &str,
        f: impl FnOnce(&T) -> Result<U, String>,
    ) -> Option<U> {
        f(v.get_ref())
            .map_err(|m| self.err(&v.span(), field, m))
            .ok()
    }

    fn check_at<T, U>(
        &mut self,
        v: &At<T>,
        field: &str,
        f: impl FnOnce(&T) -> Result<U, String>,
    ) -> Option<U> {
        f(v.value.get_ref())
            .map_err(|m| self.err_in(v.file, &v.value.span(), field, m))
            .ok()
    }

    /// An optional key: its checked value, the default when absent, `None` when invalid.
    fn opt<T, U>(
        &mut self,
        v: &S<T>,
        field: &str,
        default: U,
        f: impl FnOnce(&T) -> Result<U, String>,
    ) -> Option<U> {
        match v {
            Some(v) => self.check(v, field, f),
            None => Some(default),
        }
    }

    fn opt_at<T, U>(
        &mut self,
        v: &Option<At<T>>,
        field: &str,
        default: U,
        f: impl FnOnce(&T) -> Result<U, String>,
    ) -> Option<U> {
        match v {
            Some(v) => self.check_at(v, field, f),
            None => Some(default),
        }
    }

    fn secret_at(&mut self, v: &At<RawSecret>, field: &str) -> Option<Secret> {
        self.secret_in(v.file, &v.value, field)
    }

    fn secret(&mut self, v: &Spanned<RawSecret>, field: &str) -> Option<Secret> {
        self.secret_in(self.file, v, field)
    }

    fn secret_in(&mut self, file: usize, v: &Spanned<RawSecret>, field: &str) -> Option<Secret> {
        let (result, span) = match v.get_ref() {
            RawSecret::Literal(s) => {
                // An access key ID names a key; it is redacted in output but, unlike the
                // secret that goes with it, harmless in a readable file (DESIGN.md's own
                // example writes it literally), so `validate --strict` does not refuse it.
                let mode = self.rep.files[file].mode;
                if field != "access_key_id"
                    && let Some(w) = secrets::literal_mode_warning(mode)
                {
                    self.warn_in(file, &v.span(), field, w);
                }
                (secrets::literal(s), v.span())
            }
            RawSecret::File(p) => {
                if let Some(w) = secrets::file_mode_warning(Path::new(p.get_ref())) {
                    self.warn_in(file, &p.span(), field, w);
                }
                (secrets::from_file(p.get_ref()), p.span())
            }
            RawSecret::Env(e) => (secrets::from_env(e.get_ref(), self.env), e.span()),
            RawSecret::Credential(c) => (secrets::from_credential(c.get_ref(), self.env), c.span()),
        };
        result.map_err(|m| self.err_in(file, &span, field, m)).ok()
    }

    /// A list of strings: non-empty when `required_nonempty`, each element checked.
    fn list<U>(
        &mut self,
        v: &Spanned<Vec<Spanned<String>>>,
        field: &str,
        non_empty: bool,
        mut f: impl FnMut(&str) -> Result<U, String>,
    ) -> Option<Vec<U>> {
        if non_empty && v.get_ref().is_empty() {
            self.err(&v.span(), field, "must not be empty");
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in v.get_ref().iter().enumerate() {
            match f(item.get_ref()) {
                Ok(u) => out.push(u),
                Err(m) => {
                    ok = false;
                    self.err(&item.span(), &format!("{field}[{i}]"), m);
                }
            }
        }
        ok.then_some(out)
    }

    /// Rejects a key the kind does not take in this configuration.
    fn forbid<T>(&mut self, v: &S<T>, field: &str, why: &str) {
        if let Some(v) = v {
            self.err(&v.span(), field, format!("{field} {why}"));
        }
    }
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s.to_owned())
    }
}

fn nas(sc: &mut Scope<'_>, r: RawNas) -> Option<SourceSpec> {
    let protocol = sc.required(&r.protocol, "protocol").and_then(|v| {
        sc.check(v, "protocol", |s| match s.as_str() {
            "nfs" => Ok(NasProtocol::Nfs),
            "smb" => Ok(NasProtocol::Smb),
            _ => Err(format!("{s:?} is not one of \"nfs\", \"smb\"")),
        })
    });
    let port = match protocol {
        Some(NasProtocol::Smb) => defaults::SMB_PORT,
        _ => defaults::NFS_PORT,
    };
    let servers = sc
        .required(&r.servers, "servers")
        .and_then(|v| sc.list(v, "servers", true, |s| check::host_port(s, port)));
    let share_path = sc
        .required(&r.share_path, "share_path")
        .and_then(|v| sc.check(v, "share_path", |s| check::share_path(s)));
    let mut mount_options = None;
    let mut username = None;
    let mut password = None;
    let mut domain = None;
    match protocol {
        Some(NasProtocol::Nfs) => {
            let smb_only = "is only valid with protocol = \"smb\"";
            sc.forbid(&r.username, "username", smb_only);
            sc.forbid(&r.password, "password", smb_only);
            sc.forbid(&r.domain, "domain", smb_only);
            if let Some(v) = &r.mount_options {
                for w in check::nfs_mount_option_warnings(v.get_ref()) {
                    sc.warn(&v.span(), "mount_options", w);
                }
                mount_options = Some(v.get_ref().clone());
            }
        }
        Some(NasProtocol::Smb) => {
            sc.forbid(
                &r.mount_options,
                "mount_options",
                "is only valid with protocol = \"nfs\"",
            );
            username = sc
                .required(&r.username, "username")
                .and_then(|v| sc.check(v, "username", |s| non_empty(s)));
            password = sc
                .required(&r.password, "password")
                .and_then(|v| sc.secret(v, "password"));
            domain = r
                .domain
                .as_ref()
                .and_then(|v| sc.check(v, "domain", |s| non_empty(s)));
        }
        None => {}
    }
    if sc.failed {
        return None;
    }
    Some(SourceSpec::Nas(NasSpec {
        protocol: protocol?,
        servers: servers?,
        share_path: share_path?,
        mount_options,
        username,
        password,
        domain,
    }))
}

fn cpfs(sc: &mut Scope<'_>, r: RawCpfs) -> Option<CpfsSpec> {
    let mount_target = sc
        .required(&r.mount_target, "mount_target")
        .and_then(|v| sc.check(v, "mount_target", |s| check::host(s).map(|()| s.clone())));
    let share_path = sc.opt(&r.share_path, "share_path", "/".to_owned(), |s| {
        check::share_path(s)
    });
    // CPFS mount targets serve NFS v3 like a NAS: the same options, the same warnings.
    if let Some(v) = &r.mount_options {
        for w in check::nfs_mount_option_warnings(v.get_ref()) {
            sc.warn(&v.span(), "mount_options", w);
        }
    }
    let mount_options = r.mount_options.map(Spanned::into_inner);
    Some(CpfsSpec {
        mount_target: mount_target?,
        share_path: share_path?,
        mount_options,
    })
}

fn filesystem(sc: &mut Scope<'_>, r: RawFilesystem) -> Option<SourceSpec> {
    let path = sc
        .required(&r.path, "path")
        .and_then(|v| sc.check(v, "path", |s| check::absolute_path(s)));
    Some(SourceSpec::Filesystem(FilesystemSpec {
        path: path?,
        allow_root_fs: r.allow_root_fs.is_some_and(|v| v.into_inner()),
    }))
}

fn hdfs(sc: &mut Scope<'_>, r: RawHdfs) -> Option<SourceSpec> {
    let namenodes = sc.required(&r.namenodes, "namenodes").and_then(|v| {
        sc.list(v, "namenodes", true, |s| {
            check::host_port(s, defaults::HDFS_PORT)
        })
    });
    let nameservice = match &r.nameservice {
        Some(v) => sc.check(v, "nameservice", |s| nameservice_id(s)).map(Some),
        None => Some(None),
    };
    let user = sc
        .required(&r.user, "user")
        .and_then(|v| sc.check(v, "user", |s| non_empty(s)));
    let paths = sc
        .required(&r.paths, "paths")
        .and_then(|v| sc.list(v, "paths", true, check::share_path));
    let principal = r
        .kerberos_principal
        .as_ref()
        .and_then(|v| sc.check(v, "kerberos_principal", |s| non_empty(s)));
    let keytab = r.keytab.as_ref().and_then(|v| {
        let path = sc.check(v, "keytab", |s| check::absolute_path(s))?;
        // A warning, not an error: the keytab may be installed after the config (the probe
        // fails with HDFS_KEYTAB_UNREADABLE until it is); `validate --strict` refuses it.
        if let Err(e) = std::fs::File::open(&path) {
            sc.warn(
                &v.span(),
                "keytab",
                format!("cannot read {}: {e}", path.display()),
            );
        }
        Some(path)
    });
    match (&r.kerberos_principal, &r.keytab) {
        (Some(v), None) => sc.err(
            &v.span(),
            "kerberos_principal",
            "kerberos_principal needs keytab (set both or neither)",
        ),
        (None, Some(v)) => sc.err(
            &v.span(),
            "keytab",
            "keytab needs kerberos_principal (set both or neither)",
        ),
        _ => {}
    }
    Some(SourceSpec::Hdfs(HdfsSpec {
        namenodes: namenodes?,
        nameservice: nameservice?,
        user: user?,
        paths: paths?,
        kerberos_principal: principal,
        keytab,
    }))
}

/// An HDFS nameservice ID: a logical name used as the host of `hdfs://ID/` URLs.
fn nameservice_id(s: &str) -> Result<String, String> {
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "{s:?} is not a nameservice ID (letters, digits, '-', '_', '.')"
        ));
    }
    Ok(s.to_owned())
}

fn s3(sc: &mut Scope<'_>, r: RawS3) -> Option<SourceSpec> {
    let endpoint = sc.required(&r.endpoint, "endpoint").and_then(|v| {
        let url = sc.check(v, "endpoint", |s| check::http_url(s, |_| true))?;
        if url.scheme() == "http" && !check::is_loopback(&url) {
            sc.warn(
                &v.span(),
                "endpoint",
                "plain http to a non-loopback host: the keys and data travel in clear text",
            );
        }
        Some(url)
    });
    let bucket = sc
        .required(&r.bucket, "bucket")
        .and_then(|v| sc.check(v, "bucket", |s| check::bucket(s).map(|()| s.clone())));
    let region = sc.opt(&r.region, "region", "us-east-1".to_owned(), |s| {
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Err(format!("{s:?} is not a region name"))
        } else {
            Ok(s.clone())
        }
    });
    let ca_file = match &r.ca_file {
        Some(v) => sc
            .check(v, "ca_file", |s| check::absolute_path(s))
            .map(Some),
        None => Some(None),
    };
    let id = sc
        .required(&r.access_key_id, "access_key_id")
        .and_then(|v| sc.secret(v, "access_key_id"));
    let secret = sc
        .required(&r.access_key_secret, "access_key_secret")
        .and_then(|v| sc.secret(v, "access_key_secret"));
    Some(SourceSpec::S3(S3Spec {
        endpoint: endpoint?,
        bucket: bucket?,
        region: region?,
        prefix: r.prefix.map(Spanned::into_inner),
        path_style: r.path_style.is_none_or(|v| v.into_inner()),
        ca_file: ca_file?,
        access_key_id: id?,
        access_key_secret: secret?,
    }))
}

type JsonMap = serde_json::Map<String, serde_json::Value>;

/// Archive options (rejected on kinds where HBR ignores them) and `connection_info`.
fn archive_options(
    sc: &mut Scope<'_>,
    allowed: bool,
    c: RawCommon,
    paths: StrList,
) -> (ArchiveOptions, Option<JsonMap>) {
    let extra = match &c.connection_info {
        Some(v) => sc.check(v, "connection_info", toml_table_to_json),
        None => Some(JsonMap::new()),
    };
    let mut a = ArchiveOptions::default();
    if !allowed {
        let why = "is only valid on nas, hdfs and s3 sources";
        sc.forbid(&c.index_level, "index_level", why);
        sc.forbid(&c.schedule, "schedule", why);
        sc.forbid(&c.speed_limit, "speed_limit", why);
        sc.forbid(&c.include, "include", why);
        sc.forbid(&c.exclude, "exclude", why);
        sc.forbid(&paths, "paths", why);
        sc.forbid(&c.options, "options", why);
        return (a, extra);
    }
    if let Some(v) = &c.index_level {
        a.index_level = sc.check(v, "index_level", |s| match s.as_str() {
            "OFF" => Ok(IndexLevel::Off),
            "META" => Ok(IndexLevel::Meta),
            "ALL" => Ok(IndexLevel::All),
            _ => Err(format!("{s:?} is not one of \"OFF\", \"META\", \"ALL\"")),
        });
        if a.index_level == Some(IndexLevel::All) {
            sc.warn(
                &v.span(),
                "index_level",
                "\"ALL\" is deprecated by HBR; use \"META\"",
            );
        }
    }
    if let Some(v) = &c.schedule {
        a.schedule = schedule(sc, v);
    }
    if let Some(v) = &c.speed_limit {
        a.speed_limit = speed_limit(sc, v);
    }
    if let Some(v) = &c.include {
        a.include = sc.list(v, "include", false, non_empty).unwrap_or_default();
    }
    if let Some(v) = &c.exclude {
        a.exclude = sc.list(v, "exclude", false, non_empty).unwrap_or_default();
    }
    if let Some(v) = &paths {
        a.paths = sc
            .list(v, "paths", false, check::share_path)
            .unwrap_or_default();
    }
    if let Some(v) = &c.options {
        a.options = sc.check(v, "options", toml_table_to_json);
    }
    (a, extra)
}

fn schedule(sc: &mut Scope<'_>, v: &Spanned<RawSchedule>) -> Option<String> {
    match v.get_ref() {
        RawSchedule::Raw(s) => sc.check(v, "schedule", |_| archive::raw_schedule(s)),
        RawSchedule::Table(t) => {
            let start = match &t.start {
                Some(s) => sc.check(s, "schedule.start", archive::unix_seconds),
                None => {
                    sc.err(&v.span(), "schedule.start", "missing required key");
                    None
                }
            };
            let every = match &t.every {
                Some(e) => sc.check(e, "schedule.every", |s| {
                    archive::iso8601_duration(s).map(|()| s.clone())
                }),
                None => {
                    sc.err(&v.span(), "schedule.every", "missing required key");
                    None
                }
            };
            archive::schedule(start?, &every?).ok()
        }
    }
}

fn speed_limit(sc: &mut Scope<'_>, v: &Spanned<RawSpeedLimit>) -> Option<String> {
    let windows = match v.get_ref() {
        RawSpeedLimit::Raw(s) => {
            return sc.check(v, "speed_limit", |_| archive::raw_speed_limit(s));
        }
        RawSpeedLimit::Windows(w) => w,
    };
    if windows.is_empty() {
        sc.err(
            &v.span(),
            "speed_limit",
            "must not be empty (omit the key for no limit)",
        );
        return None;
    }
    let mut out = Vec::new();
    for (i, w) in windows.iter().enumerate() {
        let field = |k: &str| format!("speed_limit[{i}].{k}");
        let mut get = |value: &S<i64>, key: &str, ok: fn(i64) -> bool, what: &str| match value {
            None => {
                sc.err(&w.span(), &field(key), "missing required key");
                None
            }
            Some(n) if !ok(*n.get_ref()) => {
                sc.err(&n.span(), &field(key), format!("{} {what}", n.get_ref()));
                None
            }
            Some(n) => Some(*n.get_ref()),
        };
        let hour = |h: i64| (0..=24).contains(&h);
        let r = w.get_ref();
        let from = get(&r.from_hour, "from_hour", hour, "is out of range 0-24");
        let to = get(&r.to_hour, "to_hour", hour, "is out of range 0-24");
        let kib = get(
            &r.kib_per_s,
            "kib_per_s",
            |k| k > 0,
            "must be greater than 0",
        );
        if let (Some(f), Some(t)) = (from, to)
            && f >= t
        {
            sc.err(
                &w.span(),
                &format!("speed_limit[{i}]"),
                format!("from_hour {f} must be less than to_hour {t}"),
            );
            continue;
        }
        if let (Some(f), Some(t), Some(k)) = (from, to, kib) {
            out.push(format!("{f}:{t}:{k}"));
        }
    }
    (out.len() == windows.len()).then(|| out.join("|"))
}

fn toml_table_to_json(t: &toml::Table) -> Result<JsonMap, String> {
    t.iter()
        .map(|(k, v)| Ok((k.clone(), toml_to_json(v).map_err(|m| format!("{k}: {m}"))?)))
        .collect()
}

fn toml_to_json(v: &toml::Value) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(match v {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(J::Number)
            .ok_or_else(|| format!("{f} cannot be represented in JSON"))?,
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.iter().map(toml_to_json).collect::<Result<_, _>>()?),
        toml::Value::Table(t) => J::Object(toml_table_to_json(t)?),
    })
}
