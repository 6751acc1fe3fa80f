//! A fake NameNode in standby state: it speaks just enough Hadoop IPC (version 9, simple auth)
//! to answer every call with `org.apache.hadoop.ipc.StandbyException`, as a real standby
//! NameNode answers reads. A real standby needs an HA pair with shared edits, too heavy here.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const STANDBY_MESSAGE: &str = "Operation category READ is not supported in state standby";

/// Listen on a loopback port; serves until the test's runtime ends.
pub async fn start() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

async fn serve(mut s: TcpStream) -> std::io::Result<()> {
    let mut header = [0u8; 7];
    s.read_exact(&mut header).await?;
    assert_eq!(&header[..4], b"hrpc", "not a Hadoop IPC client");
    loop {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).await?;
        let Some((call_id, client_id)) = request_ids(&body) else {
            return Ok(());
        };
        if call_id < 0 {
            continue; // the connection context: no answer
        }
        let mut h = Vec::new();
        field_varint(&mut h, 1, call_id as u64);
        field_varint(&mut h, 2, 1); // ERROR
        field_varint(&mut h, 3, 9);
        field_bytes(&mut h, 4, b"org.apache.hadoop.ipc.StandbyException");
        field_bytes(&mut h, 5, STANDBY_MESSAGE.as_bytes());
        field_varint(&mut h, 6, 1); // ERROR_APPLICATION
        field_bytes(&mut h, 7, &client_id);
        let mut frame = Vec::new();
        varint(&mut frame, h.len() as u64);
        frame.extend(h);
        let mut out = (frame.len() as u32).to_be_bytes().to_vec();
        out.extend(frame);
        s.write_all(&out).await?;
    }
}

/// callId and clientId of the RpcRequestHeaderProto at the start of a request frame.
fn request_ids(body: &[u8]) -> Option<(i32, Vec<u8>)> {
    let (len, n) = read_varint(body)?;
    let header = body.get(n..n + len as usize)?;
    let (mut call_id, mut client_id, mut i) = (None, Vec::new(), 0);
    while i < header.len() {
        let (key, n) = read_varint(&header[i..])?;
        i += n;
        match key & 7 {
            0 => {
                let (v, n) = read_varint(&header[i..])?;
                i += n;
                if key >> 3 == 3 {
                    call_id = Some(((v >> 1) as i32) ^ -((v & 1) as i32)); // zigzag
                }
            }
            2 => {
                let (l, n) = read_varint(&header[i..])?;
                i += n;
                if key >> 3 == 4 {
                    client_id = header.get(i..i + l as usize)?.to_vec();
                }
                i += l as usize;
            }
            _ => return None,
        }
    }
    Some((call_id?, client_id))
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

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_varint(out: &mut Vec<u8>, field: u64, v: u64) {
    varint(out, field << 3);
    varint(out, v);
}

fn field_bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
    varint(out, (field << 3) | 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}
