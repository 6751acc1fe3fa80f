//! Pure value checks used by `build`. Each returns the typed value or a message for a
//! [`super::Diagnostic`]. Messages never quote a URL (it may carry credentials) and never see a
//! secret.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use url::{Host, Url};

use super::model::HostPort;

pub(super) fn absolute_path(s: &str) -> Result<PathBuf, String> {
    if !s.starts_with('/') {
        return Err(format!(
            "must be an absolute path (starting with /), got {s:?}"
        ));
    }
    if s.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    // HBR is given the path as written and the probe checks it as written; a `..` would make
    // what the operator reviewed differ from what is backed up (and from what a server
    // resolves it to).
    if s.split('/').any(|c| c == ".." || c == ".") {
        return Err(format!(
            "must not contain \".\" or \"..\" components, got {s:?}; write the path itself"
        ));
    }
    Ok(PathBuf::from(s))
}

/// Path inside a share or HDFS: absolute, `/`-separated; kept as a string for the wire.
pub(super) fn share_path(s: &str) -> Result<String, String> {
    absolute_path(s).map(|_| s.to_owned())
}

pub(super) fn duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must not be zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!(
            "{e} (expected a duration such as \"15s\", \"5m\", \"1h\")"
        )),
    }
}

pub(super) fn cluster_id(s: &str) -> Result<(), String> {
    hbr_id(s, "cl-", "client group id")
}

/// An id as HBR writes it: `prefix` followed by lowercase letters and digits (`cl-…`, `c-…`).
pub(crate) fn hbr_id(s: &str, prefix: &str, what: &str) -> Result<(), String> {
    match s.strip_prefix(prefix) {
        Some(rest)
            if !rest.is_empty()
                && rest
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "{s:?} is not a {what} ({prefix} followed by lowercase letters and digits)"
        )),
    }
}

pub(super) fn region(s: &str) -> Result<(), String> {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a region id (lowercase letters, digits and -, e.g. \"cn-hangzhou\")"
        ))
    }
}

/// The HBR `DataSourceName`.
pub(super) fn source_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        Err("source name must not be empty".into())
    } else if s.chars().count() > 64 {
        Err("source name is longer than 64 characters".into())
    } else if s.chars().any(|c| c.is_control() || c == '/') {
        Err("source name must not contain / or control characters".into())
    } else {
        Ok(())
    }
}

/// A DNS name or an IP literal (IPv6 without brackets).
pub(super) fn host(s: &str) -> Result<(), String> {
    if s.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{s:?} is not a host name or IP address"))
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`, or a bare IPv6 literal.
pub(super) fn host_port(s: &str, default_port: u16) -> Result<HostPort, String> {
    let bad = || format!("{s:?} is not host[:port] (use [addr]:port for IPv6)");
    let (host_part, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        h.parse::<Ipv6Addr>().map_err(|_| bad())?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(bad)?),
        };
        (h, port)
    } else if s.parse::<Ipv6Addr>().is_ok() {
        (s, None)
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    host(host_part).map_err(|_| bad())?;
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(format!("{s:?}: port must be 1-65535")),
        },
    };
    Ok(HostPort {
        host: host_part.to_owned(),
        port,
    })
}

pub(super) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(a)) => a.is_loopback(),
        Some(Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    }
}

/// An http(s) URL with a host and no user info. `allow_http` decides whether plain http is
/// acceptable for this URL.
pub(super) fn http_url(s: &str, allow_http: impl Fn(&Url) -> bool) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("not a valid URL: {e}"))?;
    if url.host().is_none() {
        return Err("URL has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("URL must not contain credentials; use the secret keys".into());
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if allow_http(&url) => Ok(url),
        "http" => Err("plain http is allowed only to a loopback host; use https".into()),
        other => Err(format!("scheme {other:?} is not supported; use https")),
    }
}

pub(super) fn is_default_metadata(url: &Url) -> bool {
    url.host() == Some(Host::Ipv4(Ipv4Addr::new(100, 100, 100, 200)))
}

/// S3 bucket naming rules (the general-purpose bucket subset every S3 server accepts).
pub(super) fn bucket(s: &str) -> Result<(), String> {
    let n = s.len();
    let fail = |why: &str| Err(format!("{s:?} is not a valid bucket name: {why}"));
    if !(3..=63).contains(&n) {
        return fail("it must be 3 to 63 characters long");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return fail("only lowercase letters, digits, . and - are allowed");
    }
    let first_last_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !first_last_ok(s.as_bytes()[0]) || !first_last_ok(s.as_bytes()[n - 1]) {
        return fail("it must begin and end with a letter or digit");
    }
    if s.contains("..") {
        return fail("it must not contain two adjacent periods");
    }
    if s.parse::<Ipv4Addr>().is_ok() {
        return fail("it must not look like an IP address");
    }
    Ok(())
}

/// NFS mount options the probe and HBR's client are known to understand. Anything else is
/// likely a typo, hence a warning rather than an error.
const NFS_OPTIONS: &[&str] = &[
    "vers",
    "nfsvers",
    "proto",
    "port",
    "mountport",
    "mountproto",
    "mountvers",
    "rsize",
    "wsize",
    "timeo",
    "retrans",
    "retry",
    "hard",
    "soft",
    "intr",
    "nointr",
    "lock",
    "nolock",
    "acl",
    "noacl",
    "ac",
    "noac",
    "actimeo",
    "acregmin",
    "acregmax",
    "acdirmin",
    "acdirmax",
    "sec",
    "tcp",
    "udp",
    "ro",
    "rw",
    "atime",
    "noatime",
    "nodiratime",
    "relatime",
    "rdirplus",
    "nordirplus",
    "cto",
    "nocto",
    "resvport",
    "noresvport",
    "sharecache",
    "nosharecache",
    "lookupcache",
    "local_lock",
    "nconnect",
    "fsc",
    "nofsc",
    "bg",
    "fg",
    "nosuid",
    "suid",
    "nodev",
    "dev",
    "noexec",
    "exec",
    "_netdev",
];

/// Warnings for an nfs `mount_options` string.
pub(super) fn nfs_mount_option_warnings(opts: &str) -> Vec<String> {
    let mut out = Vec::new();
    for opt in opts.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (opt, None),
        };
        if (name == "vers" || name == "nfsvers") && value.is_some_and(|v| v.starts_with('4')) {
            out.push(format!(
                "{opt}: the probe checks NFS v3 (MOUNT protocol); a v4-only server will fail it"
            ));
        } else if !NFS_OPTIONS.contains(&name) {
            out.push(format!("unknown NFS mount option {name:?}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        let hp = |s| host_port(s, 2049);
        assert_eq!(hp("nas1.corp.example").unwrap().port, 2049);
        assert_eq!(hp("192.0.2.10:111").unwrap().port, 111);
        let v6 = hp("[2001:db8::1]:2050").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("2001:db8::1", 2050));
        assert_eq!(hp("2001:db8::1").unwrap().port, 2049);
        assert_eq!(v6.to_string(), "[2001:db8::1]:2050");
        for bad in [
            "",
            ":1",
            "a:0",
            "a:70000",
            "a:+5",
            "[::1",
            "[x]:1",
            "a b",
            "-a.example",
        ] {
            assert!(hp(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn buckets() {
        for ok in ["abc", "my-bucket.logs", "a1b"] {
            assert!(bucket(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            "Abc",
            "a..b",
            "-ab",
            "ab-",
            "192.168.5.4",
            &"a".repeat(64),
        ] {
            assert!(bucket(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls() {
        let strict = |_: &Url| false;
        assert!(http_url("https://hbr.example", strict).is_ok());
        assert!(http_url("http://hbr.example", strict).is_err());
        assert!(http_url("http://127.0.0.5:8080", is_loopback).is_ok());
        assert!(http_url("http://[::1]:8080", is_loopback).is_ok());
        assert!(http_url("http://localhost", is_loopback).is_ok());
        assert!(http_url("http://192.0.2.1", is_loopback).is_err());
        let e = http_url("https://user:pw-xyz@h.example", strict).unwrap_err();
        assert!(!e.contains("pw-xyz"));
    }

    #[test]
    fn mount_option_warnings() {
        assert!(nfs_mount_option_warnings("vers=3,proto=tcp,nolock,hard").is_empty());
        assert_eq!(nfs_mount_option_warnings("nfsvers=4.1").len(), 1);
        assert_eq!(nfs_mount_option_warnings("vers=3,bogus=1").len(), 1);
    }
}
