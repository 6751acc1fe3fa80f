//! A minimal Hadoop IPC client (protocol version 9, simple authentication) for the three calls
//! the probe needs and hdfs-native does not expose or cannot bound: one call to tell a Hadoop
//! RPC server from anything else listening on the port, `getBlockLocations` (the DataNodes that
//! hold a file's first block), and `setSafeMode(GET)`.
//!
//! It reads at most one length-prefixed frame per call and refuses frames that are not
//! plausible (an HTTP server answers the connection header with `HTTP/1.1 400`), so whatever
//! listens on the port cannot make it allocate or wait without bound; callers still run it
//! under the probe's deadline. It never sends credentials: with Kerberos, the NameNode answers
//! the handshake with a fatal `AccessControlException`, which still proves it is a NameNode.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENT_PROTOCOL: &str = "org.apache.hadoop.hdfs.protocol.ClientProtocol";
/// A NameNode's answers to these calls are small; anything larger is not one.
const MAX_FRAME: u32 = 16 << 20;

/// What the server said to one call.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The response message (protobuf).
    Ok(Vec<u8>),
    /// A Java exception: its class name and message (first line).
    Remote {
        exception: String,
        message: String,
        fatal: bool,
    },
}

#[derive(Debug)]
pub enum RpcError {
    /// The other side does not speak Hadoop RPC; the text quotes what it sent.
    NotRpc(String),
    Io(io::Error),
}

impl From<io::Error> for RpcError {
    fn from(e: io::Error) -> Self {
        RpcError::Io(e)
    }
}

pub struct Conn {
    stream: TcpStream,
    next_call: u32,
}

impl Conn {
    /// Send the connection header and context (auth NONE, effective user `user`).
    pub async fn open(mut stream: TcpStream, user: &str) -> io::Result<Conn> {
        let mut out = b"hrpc".to_vec();
        out.extend_from_slice(&[9, 0, 0]); // version 9, service class 0, auth protocol NONE
        let mut user_info = Vec::new();
        pb::bytes(&mut user_info, 1, user.as_bytes());
        let mut context = Vec::new();
        pb::bytes(&mut context, 2, &user_info);
        pb::bytes(&mut context, 3, CLIENT_PROTOCOL.as_bytes());
        out.extend(frame(&[&request_header(-3), &context]));
        stream.write_all(&out).await?;
        Ok(Conn {
            stream,
            next_call: 0,
        })
    }

    /// Call `method` of ClientProtocol with the encoded `request`.
    pub async fn call(&mut self, method: &str, request: &[u8]) -> Result<Answer, RpcError> {
        let call_id = self.next_call;
        self.next_call += 1;
        let mut header = Vec::new();
        pb::bytes(&mut header, 1, method.as_bytes());
        pb::bytes(&mut header, 2, CLIENT_PROTOCOL.as_bytes());
        pb::varint_field(&mut header, 3, 1);
        let out = frame(&[&request_header(call_id as i32), &header, request]);
        self.stream.write_all(&out).await?;
        let body = self.read_frame().await?;
        parse_response(&body, call_id)
    }

    async fn read_frame(&mut self) -> Result<Vec<u8>, RpcError> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).await.map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                RpcError::NotRpc("the server closed the connection without an answer".into())
            } else {
                RpcError::Io(e)
            }
        })?;
        let n = u32::from_be_bytes(len);
        if n == 0 || n > MAX_FRAME {
            // Not a frame length: quote what was sent instead (HTTP/1.1 400 Bad Request, SSH-2.0…).
            let mut more = [0u8; 120];
            let got = tokio::time::timeout(
                std::time::Duration::from_millis(300),
                self.stream.read(&mut more),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0);
            let mut seen = len.to_vec();
            seen.extend_from_slice(&more[..got]);
            return Err(RpcError::NotRpc(format!(
                "it answered {}",
                quote_first_line(&seen)
            )));
        }
        let mut body = vec![0u8; n as usize];
        self.stream.read_exact(&mut body).await?;
        Ok(body)
    }
}

/// The first line of what a non-Hadoop server sent, printable, for a reason text.
pub fn quote_first_line(bytes: &[u8]) -> String {
    let line = bytes.split(|b| *b == b'\n').next().unwrap_or(&[]);
    if line
        .iter()
        .all(|b| b.is_ascii_graphic() || *b == b' ' || *b == b'\r')
    {
        format!("{:?}", String::from_utf8_lossy(line).trim_end())
    } else {
        let hex: Vec<String> = bytes.iter().take(16).map(|b| format!("{b:02x}")).collect();
        format!("bytes {}", hex.join(" "))
    }
}

fn request_header(call_id: i32) -> Vec<u8> {
    let mut h = Vec::new();
    pb::varint_field(&mut h, 1, 2); // RPC_PROTOCOL_BUFFER
    pb::varint_field(&mut h, 2, 0); // RPC_FINAL_PACKET
    pb::varint_field(&mut h, 3, pb::zigzag(call_id));
    // The connection context carries no client id; calls carry a 16-byte one.
    let client_id: &[u8] = if call_id < 0 {
        &[]
    } else {
        b"hbr-source-agent"
    };
    pb::bytes(&mut h, 4, client_id);
    pb::varint_field(&mut h, 5, pb::zigzag(-1));
    h
}

/// A length-prefixed frame of varint-delimited messages.
fn frame(messages: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::new();
    for m in messages {
        pb::varint(&mut body, m.len() as u64);
        body.extend_from_slice(m);
    }
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

fn parse_response(body: &[u8], call_id: u32) -> Result<Answer, RpcError> {
    let bad = || RpcError::NotRpc("it sent a frame that is not a Hadoop RPC response".into());
    let (header, rest) = pb::delimited(body).ok_or_else(bad)?;
    let mut status = None;
    let mut id = None;
    let mut exception = String::new();
    let mut message = String::new();
    for (field, value) in pb::Fields::new(header) {
        match (field, value) {
            (1, pb::Value::Varint(v)) => id = Some(v),
            (2, pb::Value::Varint(v)) => status = Some(v),
            (4, pb::Value::Bytes(b)) => exception = String::from_utf8_lossy(b).into_owned(),
            (5, pb::Value::Bytes(b)) => message = String::from_utf8_lossy(b).into_owned(),
            _ => {}
        }
    }
    let status = status.ok_or_else(bad)?;
    match status {
        0 => {
            if id != Some(u64::from(call_id)) {
                return Err(bad());
            }
            let (msg, _) = pb::delimited(rest).ok_or_else(bad)?;
            Ok(Answer::Ok(msg.to_vec()))
        }
        1 | 2 => Ok(Answer::Remote {
            exception,
            message: message.lines().next().unwrap_or("").to_owned(),
            fatal: status == 2,
        }),
        _ => Err(bad()),
    }
}

/// `getFileInfo(src)` request.
pub fn get_file_info(src: &str) -> Vec<u8> {
    let mut r = Vec::new();
    pb::bytes(&mut r, 1, src.as_bytes());
    r
}

/// `getBlockLocations(src, 0, 1)`: the first block only.
pub fn get_block_locations(src: &str) -> Vec<u8> {
    let mut r = Vec::new();
    pb::bytes(&mut r, 1, src.as_bytes());
    pb::varint_field(&mut r, 2, 0);
    pb::varint_field(&mut r, 3, 1);
    r
}

/// `setSafeMode(SAFEMODE_GET, checked = false)`: any user may ask.
pub fn safe_mode_get() -> Vec<u8> {
    let mut r = Vec::new();
    pb::varint_field(&mut r, 1, 3);
    pb::varint_field(&mut r, 2, 0);
    r
}

/// `SetSafeModeResponseProto.result`.
pub fn parse_safe_mode(msg: &[u8]) -> Option<bool> {
    pb::Fields::new(msg).find_map(|(f, v)| match (f, v) {
        (1, pb::Value::Varint(x)) => Some(x != 0),
        _ => None,
    })
}

/// A DataNode that holds a block: its address and data-transfer port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataNode {
    pub ip: String,
    pub hostname: String,
    pub xfer_port: u16,
}

/// The locations of the blocks in a `GetBlockLocationsResponseProto` (in order, first block first).
/// `None` when the file has no blocks in range (it is empty).
pub fn parse_block_locations(msg: &[u8]) -> Option<Vec<Vec<DataNode>>> {
    let located = pb::Fields::new(msg).find_map(|(f, v)| match (f, v) {
        (1, pb::Value::Bytes(b)) => Some(b),
        _ => None,
    })?;
    let mut blocks = Vec::new();
    for (f, v) in pb::Fields::new(located) {
        let (2, pb::Value::Bytes(block)) = (f, v) else {
            continue;
        };
        let mut nodes = Vec::new();
        for (f, v) in pb::Fields::new(block) {
            let (3, pb::Value::Bytes(info)) = (f, v) else {
                continue;
            };
            for (f, v) in pb::Fields::new(info) {
                let (1, pb::Value::Bytes(id)) = (f, v) else {
                    continue;
                };
                let mut dn = DataNode {
                    ip: String::new(),
                    hostname: String::new(),
                    xfer_port: 0,
                };
                for (f, v) in pb::Fields::new(id) {
                    match (f, v) {
                        (1, pb::Value::Bytes(b)) => dn.ip = String::from_utf8_lossy(b).into(),
                        (2, pb::Value::Bytes(b)) => dn.hostname = String::from_utf8_lossy(b).into(),
                        (4, pb::Value::Varint(p)) => dn.xfer_port = p as u16,
                        _ => {}
                    }
                }
                nodes.push(dn);
            }
        }
        blocks.push(nodes);
    }
    if blocks.is_empty() {
        None
    } else {
        Some(blocks)
    }
}

/// Just enough protobuf: encoding of varints and length-delimited fields, and a lenient
/// decoder that stops at the first malformed byte instead of panicking.
pub(crate) mod pb {
    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    pub fn zigzag(v: i32) -> u64 {
        u64::from(((v << 1) ^ (v >> 31)) as u32)
    }

    pub fn varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
        varint(out, u64::from(field << 3));
        varint(out, v);
    }

    pub fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
        varint(out, u64::from(field << 3 | 2));
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }

    fn read_varint(buf: &[u8]) -> Option<(u64, usize)> {
        let mut v = 0u64;
        for (i, b) in buf.iter().enumerate().take(10) {
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Some((v, i + 1));
            }
        }
        None
    }

    /// A varint-delimited message at the start of `buf`, and what follows it.
    pub fn delimited(buf: &[u8]) -> Option<(&[u8], &[u8])> {
        let (len, n) = read_varint(buf)?;
        let end = n.checked_add(usize::try_from(len).ok()?)?;
        (end <= buf.len()).then(|| (&buf[n..end], &buf[end..]))
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    pub enum Value<'a> {
        Varint(u64),
        Bytes(&'a [u8]),
        Fixed,
    }

    pub struct Fields<'a> {
        buf: &'a [u8],
    }

    impl<'a> Fields<'a> {
        pub fn new(buf: &'a [u8]) -> Self {
            Fields { buf }
        }
    }

    impl<'a> Iterator for Fields<'a> {
        type Item = (u32, Value<'a>);

        fn next(&mut self) -> Option<Self::Item> {
            let (key, n) = read_varint(self.buf)?;
            let rest = &self.buf[n..];
            let field = (key >> 3) as u32;
            let (value, used) = match key & 7 {
                0 => {
                    let (v, m) = read_varint(rest)?;
                    (Value::Varint(v), m)
                }
                1 => (Value::Fixed, 8),
                2 => {
                    let (b, after) = delimited(rest)?;
                    (Value::Bytes(b), rest.len() - after.len())
                }
                5 => (Value::Fixed, 4),
                _ => return None,
            };
            if used > rest.len() {
                self.buf = &[];
                return None;
            }
            self.buf = &rest[used..];
            Some((field, value))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn success(call_id: u32, msg: &[u8]) -> Vec<u8> {
        let mut h = Vec::new();
        pb::varint_field(&mut h, 1, u64::from(call_id));
        pb::varint_field(&mut h, 2, 0);
        let f = frame(&[&h, msg]);
        f[4..].to_vec()
    }

    #[test]
    fn an_exception_is_named_with_its_first_line() {
        let mut h = Vec::new();
        pb::varint_field(&mut h, 1, 0);
        pb::varint_field(&mut h, 2, 1);
        pb::bytes(&mut h, 4, b"org.apache.hadoop.ipc.StandbyException");
        pb::bytes(
            &mut h,
            5,
            b"Operation category READ is not supported in state standby\n\tat org...",
        );
        let body = frame(&[&h]);
        assert_eq!(
            parse_response(&body[4..], 0).unwrap(),
            Answer::Remote {
                exception: "org.apache.hadoop.ipc.StandbyException".into(),
                message: "Operation category READ is not supported in state standby".into(),
                fatal: false
            }
        );
    }

    #[test]
    fn block_locations_decode() {
        let mut id = Vec::new();
        pb::bytes(&mut id, 1, b"10.0.0.7");
        pb::bytes(&mut id, 2, b"dn7.example");
        pb::bytes(&mut id, 3, b"uuid");
        pb::varint_field(&mut id, 4, 9866);
        let mut info = Vec::new();
        pb::bytes(&mut info, 1, &id);
        let mut block = Vec::new();
        pb::bytes(&mut block, 1, b"ext");
        pb::varint_field(&mut block, 2, 0);
        pb::bytes(&mut block, 3, &info);
        let mut located = Vec::new();
        pb::varint_field(&mut located, 1, 5);
        pb::bytes(&mut located, 2, &block);
        let mut resp = Vec::new();
        pb::bytes(&mut resp, 1, &located);
        let body = success(3, &resp);
        let Answer::Ok(msg) = parse_response(&body, 3).unwrap() else {
            panic!()
        };
        assert_eq!(
            parse_block_locations(&msg).unwrap(),
            vec![vec![DataNode {
                ip: "10.0.0.7".into(),
                hostname: "dn7.example".into(),
                xfer_port: 9866
            }]]
        );
        // An empty file: LocatedBlocksProto without blocks.
        let mut located = Vec::new();
        pb::varint_field(&mut located, 1, 0);
        let mut resp = Vec::new();
        pb::bytes(&mut resp, 1, &located);
        assert_eq!(parse_block_locations(&resp), None);
    }

    #[test]
    fn safe_mode_answer_decodes() {
        let mut on = Vec::new();
        pb::varint_field(&mut on, 1, 1);
        assert_eq!(parse_safe_mode(&on), Some(true));
        assert_eq!(parse_safe_mode(&[8, 0]), Some(false));
        assert_eq!(parse_safe_mode(&[]), None);
    }

    #[test]
    fn garbage_never_panics() {
        for bytes in [&b"\xff\xff\xff"[..], b"\x0a\xff\x01", b"HTTP/1.1 400", b""] {
            let _ = parse_response(bytes, 0);
            let _ = parse_block_locations(bytes);
            let _: Vec<_> = pb::Fields::new(bytes).collect();
        }
    }

    #[test]
    fn zigzag_matches_protobuf() {
        assert_eq!(pb::zigzag(0), 0);
        assert_eq!(pb::zigzag(-1), 1);
        assert_eq!(pb::zigzag(-3), 5);
        assert_eq!(pb::zigzag(2), 4);
    }

    #[test]
    fn http_is_quoted_by_its_status_line() {
        assert_eq!(
            quote_first_line(b"HTTP/1.1 400 Bad Request\r\nConnection: close"),
            "\"HTTP/1.1 400 Bad Request\""
        );
        assert_eq!(quote_first_line(&[0, 1, 0xfe]), "bytes 00 01 fe");
    }
}
