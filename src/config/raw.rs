//! Step 1 of 3: raw TOML shapes. Plain structs, `deny_unknown_fields`, every field optional
//! (required keys are checked in `build`, so one missing key does not hide the others) and
//! `Spanned` wherever a later check must point at the value. No tagged or untagged enums: they
//! buffer their input and lose positions. The few "string or table" values have hand-written
//! visitors instead.

use std::fmt;

use serde::Deserialize;
use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use toml::Spanned;
use toml::value::Datetime;

pub(super) type S<T> = Option<Spanned<T>>;
pub(super) type StrList = S<Vec<Spanned<String>>>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    pub cluster_id: S<String>,
    pub state_dir: S<String>,
    pub probe_timeout: S<String>,
    pub probe_concurrency: S<i64>,
    pub write_concurrency: S<i64>,
    pub reprobe_interval: S<String>,
    pub register_on_probe_failure: S<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFleet {
    pub client_id: S<String>,
    pub client_id_file: S<String>,
    pub heartbeat_timeout: S<String>,
    pub settle_time: S<String>,
    pub coordination: S<String>,
    pub etcd_endpoints: StrList,
    pub etcd_lease_ttl: S<String>,
    pub etcd_prefix: S<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawControlPlane {
    pub region: S<String>,
    pub network: S<String>,
    pub endpoint: S<String>,
    pub signature: S<String>,
    pub access_key_id: S<RawSecret>,
    pub access_key_secret: S<RawSecret>,
    pub security_token: S<RawSecret>,
    pub metadata_endpoint: S<String>,
    pub timeout: S<String>,
}

/// Keys every source kind accepts at the parse level. The archive ones are rejected later on
/// kinds where HBR ignores them, with a message that says so (better than "unknown key").
#[derive(Default)]
pub(super) struct RawCommon {
    pub index_level: S<String>,
    pub schedule: S<RawSchedule>,
    pub speed_limit: S<RawSpeedLimit>,
    pub include: StrList,
    pub exclude: StrList,
    pub options: S<toml::Table>,
    pub connection_info: S<toml::Table>,
}

macro_rules! raw_source {
    ($name:ident { $($field:ident : $ty:ty,)* }) => {
        #[derive(Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        pub(super) struct $name {
            $(pub $field: Option<$ty>,)*
            /// Archive paths on nas and s3; the HDFS paths on hdfs.
            pub paths: StrList,
            pub index_level: S<String>,
            pub schedule: S<RawSchedule>,
            pub speed_limit: S<RawSpeedLimit>,
            pub include: StrList,
            pub exclude: StrList,
            pub options: S<toml::Table>,
            pub connection_info: S<toml::Table>,
        }

        impl $name {
            pub fn take_common(&mut self) -> RawCommon {
                RawCommon {
                    index_level: self.index_level.take(),
                    schedule: self.schedule.take(),
                    speed_limit: self.speed_limit.take(),
                    include: self.include.take(),
                    exclude: self.exclude.take(),
                    options: self.options.take(),
                    connection_info: self.connection_info.take(),
                }
            }
        }
    };
}

raw_source!(RawNas {
    protocol: Spanned<String>,
    servers: Spanned<Vec<Spanned<String>>>,
    share_path: Spanned<String>,
    mount_options: Spanned<String>,
    username: Spanned<String>,
    password: Spanned<RawSecret>,
    domain: Spanned<String>,
});

raw_source!(RawCpfs {
    mount_target: Spanned<String>,
    share_path: Spanned<String>,
    mount_options: Spanned<String>,
});

raw_source!(RawFilesystem {
    path: Spanned<String>,
    allow_root_fs: Spanned<bool>,
});

raw_source!(RawHdfs {
    namenodes: Spanned<Vec<Spanned<String>>>,
    nameservice: Spanned<String>,
    user: Spanned<String>,
    kerberos_principal: Spanned<String>,
    keytab: Spanned<String>,
});

raw_source!(RawS3 {
    endpoint: Spanned<String>,
    bucket: Spanned<String>,
    region: Spanned<String>,
    prefix: Spanned<String>,
    path_style: Spanned<bool>,
    ca_file: Spanned<String>,
    access_key_id: Spanned<RawSecret>,
    access_key_secret: Spanned<RawSecret>,
});

/// A secret as written: the value itself, or where to read it. The literal is held only until
/// it is wrapped in a [`crate::secret::Secret`]; no error built here ever contains it.
pub(super) enum RawSecret {
    Literal(String),
    File(Spanned<String>),
    Env(Spanned<String>),
    Credential(Spanned<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecretRef {
    file: S<String>,
    env: S<String>,
    credential: S<String>,
}

const SECRET_EXPECTED: &str =
    "a secret is a string or a table with exactly one of `file`, `env`, `credential`";

impl<'de> Deserialize<'de> for RawSecret {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        // Every non-string visit is overridden: serde's default "invalid type" message would
        // quote the value, and this value is a secret.
        fn reject<E: de::Error>() -> Result<RawSecret, E> {
            Err(E::custom(SECRET_EXPECTED))
        }
        impl<'de> Visitor<'de> for V {
            type Value = RawSecret;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(SECRET_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSecret, E> {
                Ok(RawSecret::Literal(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<RawSecret, E> {
                Ok(RawSecret::Literal(v))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawSecret, E> {
                reject()
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<RawSecret, E> {
                reject()
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<RawSecret, E> {
                reject()
            }
            fn visit_i128<E: de::Error>(self, _: i128) -> Result<RawSecret, E> {
                reject()
            }
            fn visit_u128<E: de::Error>(self, _: u128) -> Result<RawSecret, E> {
                reject()
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawSecret, E> {
                reject()
            }
            fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<RawSecret, A::Error> {
                reject()
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawSecret, A::Error> {
                let r = RawSecretRef::deserialize(MapAccessDeserializer::new(map))?;
                match (r.file, r.env, r.credential) {
                    (Some(f), None, None) => Ok(RawSecret::File(f)),
                    (None, Some(e), None) => Ok(RawSecret::Env(e)),
                    (None, None, Some(c)) => Ok(RawSecret::Credential(c)),
                    _ => reject(),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `schedule`: `{ start = <datetime>, every = "P1D" }` or the raw `"I|<unix>|<duration>"`.
pub(super) enum RawSchedule {
    Raw(String),
    Table(RawScheduleTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScheduleTable {
    pub start: S<Datetime>,
    pub every: S<String>,
}

impl<'de> Deserialize<'de> for RawSchedule {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawSchedule;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a table { start = <datetime>, every = \"<ISO 8601 duration>\" } \
                     or a string \"I|<unix seconds>|<ISO 8601 duration>\"",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSchedule, E> {
                Ok(RawSchedule::Raw(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawSchedule, A::Error> {
                RawScheduleTable::deserialize(MapAccessDeserializer::new(map))
                    .map(RawSchedule::Table)
            }
        }
        d.deserialize_any(V)
    }
}

/// `speed_limit`: an array of windows or the raw `"6:21:10240|..."`.
pub(super) enum RawSpeedLimit {
    Raw(String),
    Windows(Vec<Spanned<RawWindow>>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWindow {
    pub from_hour: S<i64>,
    pub to_hour: S<i64>,
    pub kib_per_s: S<i64>,
}

impl<'de> Deserialize<'de> for RawSpeedLimit {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawSpeedLimit;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "an array of { from_hour, to_hour, kib_per_s } tables \
                     or a string \"<from>:<to>:<KiB/s>|...\"",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSpeedLimit, E> {
                Ok(RawSpeedLimit::Raw(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RawSpeedLimit, A::Error> {
                Vec::deserialize(SeqAccessDeserializer::new(seq)).map(RawSpeedLimit::Windows)
            }
        }
        d.deserialize_any(V)
    }
}
