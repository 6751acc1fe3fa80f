//! Network steps every network probe shares: resolving a host name and opening a TCP
//! connection, both under the probe's deadline and both mapped to the catalogue's codes
//! (`DNS_NOT_FOUND`, `TCP_REFUSED`, `TCP_TIMEOUT`, `TCP_UNREACHABLE`).
//!
//! Protocol clients that take IP literals only (nfs3_client) or open their own sockets
//! (libsmbclient, hdfs-native, the S3 SDK) still run these first: the report then tells a
//! name that does not resolve from a port that refuses from a server that never answers,
//! before the protocol client turns each into its own, vaguer error.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;

use super::{Code, Failed, Recorder};

/// Resolve `host` (a name or an IP literal) to its addresses, in the resolver's order.
/// An IP literal is returned as is, with no lookup.
pub async fn resolve(rec: &Recorder, host: &str, port: u16) -> Result<Vec<SocketAddr>, Failed> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let found = rec
        .within(
            &format!("the DNS lookup of {host}"),
            tokio::net::lookup_host((bare, port)),
        )
        .await?;
    match found {
        Ok(addrs) => {
            let mut out: Vec<SocketAddr> = Vec::new();
            for a in addrs {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
            if out.is_empty() {
                Err(Failed::new(
                    Code::DNS_NOT_FOUND,
                    format!("{host} resolved to no address"),
                ))
            } else {
                Ok(out)
            }
        }
        Err(e) => Err(Failed::new(
            Code::DNS_NOT_FOUND,
            format!("{host} does not resolve: {}", lookup_message(&e)),
        )),
    }
}

/// getaddrinfo's message without the std prefix ("failed to lookup address information: ").
fn lookup_message(e: &io::Error) -> String {
    let text = e.to_string();
    text.strip_prefix("failed to lookup address information: ")
        .unwrap_or(&text)
        .to_owned()
}

/// Open a TCP connection to the first of `addrs` that accepts, trying each in turn. Each
/// attempt gets an equal share of the time left, so one black-holed address does not use up
/// the time of the others. Fails with the code of the last address's failure; the reason
/// lists every address tried.
pub async fn connect(rec: &Recorder, addrs: &[SocketAddr]) -> Result<TcpStream, Failed> {
    let mut failures: Vec<(SocketAddr, Code, String)> = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let left = (addrs.len() - i) as u32;
        let share = rec.remaining() / left.max(1);
        match try_connect(*addr, share).await {
            Ok(stream) => return Ok(stream),
            Err((code, why)) => failures.push((*addr, code, why)),
        }
    }
    Err(connect_failure(&failures))
}

/// One connection attempt bounded by `limit`, its failure classified.
pub async fn try_connect(addr: SocketAddr, limit: Duration) -> Result<TcpStream, (Code, String)> {
    match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(e)) => Err(classify_connect_error(&e)),
        Err(_) => Err((
            Code::TCP_TIMEOUT,
            format!(
                "no answer to the TCP connection within {}",
                humantime::format_duration(round_ms(limit))
            ),
        )),
    }
}

/// Map a connect error to its code and a short reason.
pub fn classify_connect_error(e: &io::Error) -> (Code, String) {
    let code = match e.kind() {
        io::ErrorKind::ConnectionRefused => Code::TCP_REFUSED,
        io::ErrorKind::TimedOut => Code::TCP_TIMEOUT,
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => Code::TCP_UNREACHABLE,
        _ => Code::TCP_REFUSED,
    };
    (code, e.to_string())
}

fn connect_failure(failures: &[(SocketAddr, Code, String)]) -> Failed {
    match failures {
        [] => Failed::new(Code::TCP_TIMEOUT, "no time was left to connect"),
        [(addr, code, why)] => Failed::new(*code, format!("TCP connection to {addr}: {why}")),
        many => {
            let code = many[many.len() - 1].1;
            let each: Vec<String> = many
                .iter()
                .map(|(addr, _, why)| format!("{addr}: {why}"))
                .collect();
            Failed::new(
                code,
                format!(
                    "TCP connection failed to every address ({})",
                    each.join("; ")
                ),
            )
        }
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn rec(budget: Duration) -> Recorder {
        Recorder::new(budget)
    }

    #[tokio::test]
    async fn ip_literals_are_not_looked_up() {
        let r = rec(Duration::from_secs(1));
        assert_eq!(
            resolve(&r, "127.0.0.1", 2049).await.unwrap(),
            vec!["127.0.0.1:2049".parse().unwrap()]
        );
        assert_eq!(
            resolve(&r, "[::1]", 445).await.unwrap(),
            vec!["[::1]:445".parse().unwrap()]
        );
    }

    #[tokio::test]
    async fn a_name_under_invalid_is_dns_not_found() {
        let r = rec(Duration::from_secs(5));
        let err = resolve(&r, "nas.example.invalid", 2049).await.unwrap_err();
        assert_eq!(err.0.code, Code::DNS_NOT_FOUND, "{err:?}");
        assert!(err.0.reason.contains("nas.example.invalid"), "{err:?}");
    }

    #[tokio::test]
    async fn a_closed_port_is_refused() {
        // Bind then drop: the port is free and nothing listens on it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let r = rec(Duration::from_secs(2));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let err = connect(&r, &[addr]).await.unwrap_err();
        assert_eq!(err.0.code, Code::TCP_REFUSED, "{err:?}");
        assert!(err.0.reason.contains(&addr.to_string()), "{err:?}");
    }

    #[tokio::test]
    async fn every_address_is_tried_until_one_accepts() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = rec(Duration::from_secs(2));
        let stream = connect(&r, &[closed, open.local_addr().unwrap()])
            .await
            .unwrap();
        assert_eq!(stream.peer_addr().unwrap(), open.local_addr().unwrap());
    }

    #[tokio::test]
    async fn within_names_the_step_that_hung() {
        let r = rec(Duration::from_millis(50));
        let t0 = Instant::now();
        let err = r
            .within("portmapper GETPORT", std::future::pending::<()>())
            .await
            .unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert_eq!(err.0.code, Code::PROBE_TIMEOUT);
        assert!(err.0.reason.contains("portmapper GETPORT"), "{err:?}");
    }
}
