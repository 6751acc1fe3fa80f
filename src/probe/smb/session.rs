//! The agent's own SMB2 session on the connection its NEGOTIATE opened: SESSION_SETUP with
//! NTLMSSP (NTLMv2, SPNEGO-wrapped), TREE_CONNECT to the share, TREE_DISCONNECT and LOGOFF.
//! It exists to read what libsmbclient hides: the NT status in the SMB2 header of each answer
//! and the SessionFlags (`IS_GUEST`, `IS_NULL`) of the session. [MS-SMB2] 2.2.5–2.2.10, 3.1.4.1
//! (signing), 3.1.4.2 (key derivation), 3.2.5.2 (preauth integrity).
//!
//! Every send and receive is a separate future, so the caller bounds each by the probe deadline
//! (`Recorder::within`). Requests after SESSION_SETUP are signed when the session has a key
//! (2.0.2/2.1: HMAC-SHA256; 3.x: AES-128-CMAC, 3.1.1 with the preauth-integrity hash), so a
//! server that requires signing answers the TREE_CONNECT too. Answers' signatures are not
//! verified: the probe acts on nothing but their status.

use std::fmt;

use aes::Aes128;
use cmac::Cmac;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest as _, Sha256, Sha512};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

use super::ntlm;

const HEADER_LEN: usize = 64;
const SESSION_SETUP: u16 = 1;
const LOGOFF: u16 = 2;
const TREE_CONNECT: u16 = 3;
const TREE_DISCONNECT: u16 = 4;
const FLAG_RESPONSE: u32 = 0x1;
const FLAG_ASYNC: u32 = 0x2;
const FLAG_SIGNED: u32 = 0x8;

pub const STATUS_SUCCESS: u32 = 0;
const STATUS_PENDING: u32 = 0x0000_0103;
pub const STATUS_MORE_PROCESSING_REQUIRED: u32 = 0xC000_0016;

pub const SESSION_FLAG_IS_GUEST: u16 = 0x0001;
pub const SESSION_FLAG_IS_NULL: u16 = 0x0002;

/// The name Samba and Windows give an NT status (`NT_STATUS_LOGON_FAILURE`), or its hex value.
pub fn status_name(status: u32) -> String {
    let name = match status {
        0x0000_0000 => "NT_STATUS_OK",
        0xC000_000D => "NT_STATUS_INVALID_PARAMETER",
        0xC000_0016 => "NT_STATUS_MORE_PROCESSING_REQUIRED",
        0xC000_0022 => "NT_STATUS_ACCESS_DENIED",
        0xC000_005E => "NT_STATUS_NO_LOGON_SERVERS",
        0xC000_0064 => "NT_STATUS_NO_SUCH_USER",
        0xC000_006A => "NT_STATUS_WRONG_PASSWORD",
        0xC000_006D => "NT_STATUS_LOGON_FAILURE",
        0xC000_006E => "NT_STATUS_ACCOUNT_RESTRICTION",
        0xC000_006F => "NT_STATUS_INVALID_LOGON_HOURS",
        0xC000_0070 => "NT_STATUS_INVALID_WORKSTATION",
        0xC000_0071 => "NT_STATUS_PASSWORD_EXPIRED",
        0xC000_0072 => "NT_STATUS_ACCOUNT_DISABLED",
        0xC000_009A => "NT_STATUS_INSUFFICIENT_RESOURCES",
        0xC000_00BB => "NT_STATUS_NOT_SUPPORTED",
        0xC000_00C9 => "NT_STATUS_NETWORK_NAME_DELETED",
        0xC000_00CA => "NT_STATUS_NETWORK_ACCESS_DENIED",
        0xC000_00CC => "NT_STATUS_BAD_NETWORK_NAME",
        0xC000_0134 => "NT_STATUS_NO_TRUST_SAM_ACCOUNT",
        0xC000_015B => "NT_STATUS_LOGON_TYPE_NOT_GRANTED",
        0xC000_0193 => "NT_STATUS_ACCOUNT_EXPIRED",
        0xC000_0203 => "NT_STATUS_USER_SESSION_DELETED",
        0xC000_0205 => "NT_STATUS_INSUFF_SERVER_RESOURCES",
        0xC000_0224 => "NT_STATUS_PASSWORD_MUST_CHANGE",
        0xC000_0234 => "NT_STATUS_ACCOUNT_LOCKED_OUT",
        0xC000_035C => "NT_STATUS_NETWORK_SESSION_EXPIRED",
        0xC000_0413 => "NT_STATUS_AUTHENTICATION_FIREWALL_FAILED",
        0xC000_0418 => "NT_STATUS_NTLM_BLOCKED",
        _ => return format!("0x{status:08X}"),
    };
    name.to_string()
}

/// One SMB2 answer: its status and the whole message (header included).
#[derive(Clone)]
pub struct Answer {
    pub status: u32,
    pub msg: Vec<u8>,
}

impl fmt::Debug for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Answer({}, {} bytes)",
            status_name(self.status),
            self.msg.len()
        )
    }
}

impl Answer {
    fn u16_at(&self, i: usize) -> Option<u16> {
        self.msg
            .get(i..i + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn body_u16(&self, i: usize) -> Option<u16> {
        self.u16_at(HEADER_LEN + i)
    }
}

/// How requests are signed, once a session key exists.
enum Signer {
    HmacSha256(Zeroizing<[u8; 16]>),
    Cmac(Zeroizing<[u8; 16]>),
}

impl Signer {
    pub fn name(&self) -> &'static str {
        match self {
            Signer::HmacSha256(_) => "HMAC-SHA256",
            Signer::Cmac(_) => "AES-128-CMAC",
        }
    }

    fn sign(&self, msg: &mut [u8]) {
        let flags = u32::from_le_bytes(msg[16..20].try_into().expect("4")) | FLAG_SIGNED;
        msg[16..20].copy_from_slice(&flags.to_le_bytes());
        msg[48..64].fill(0);
        let sig: [u8; 16] = match self {
            Signer::HmacSha256(key) => {
                let mut mac = Hmac::<Sha256>::new_from_slice(&key[..]).expect("any key");
                mac.update(msg);
                mac.finalize().into_bytes()[..16].try_into().expect("16")
            }
            Signer::Cmac(key) => {
                let mut mac = Cmac::<Aes128>::new_from_slice(&key[..]).expect("16-byte key");
                mac.update(msg);
                mac.finalize().into_bytes().into()
            }
        };
        msg[48..64].copy_from_slice(&sig);
    }
}

/// SP800-108 counter-mode KDF with HMAC-SHA256, L = 128 ([MS-SMB2] 3.1.4.2).
fn kdf(key: &[u8; 16], label: &[u8], context: &[u8]) -> Zeroizing<[u8; 16]> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key");
    mac.update(&1u32.to_be_bytes());
    mac.update(label);
    mac.update(&[0]);
    mac.update(context);
    mac.update(&128u32.to_be_bytes());
    Zeroizing::new(mac.finalize().into_bytes()[..16].try_into().expect("16"))
}

fn signer_for(dialect: u16, session_key: &[u8; 16], preauth: &[u8; 64]) -> Signer {
    match dialect {
        0x0202 | 0x0210 => Signer::HmacSha256(Zeroizing::new(*session_key)),
        0x0311 => Signer::Cmac(kdf(session_key, b"SMBSigningKey\0", preauth)),
        _ => Signer::Cmac(kdf(session_key, b"SMB2AESCMAC\0", b"SmbSign\0")),
    }
}

/// An SMB2 connection after a successful NEGOTIATE.
pub struct Conn {
    stream: TcpStream,
    dialect: u16,
    next_id: u64,
    session_id: u64,
    tree_id: u32,
    signer: Option<Signer>,
    /// The 3.1.1 preauth-integrity hash of the connection, then of the session.
    preauth: [u8; 64],
}

fn preauth_update(h: &mut [u8; 64], msg: &[u8]) {
    let mut d = Sha512::new();
    d.update(&h[..]);
    d.update(msg);
    h.copy_from_slice(&d.finalize());
}

/// The outcome of the session setup.
#[derive(Debug)]
pub enum Logon {
    /// STATUS_SUCCESS; `flags` are the SessionFlags of the final answer.
    Done { flags: u16 },
    /// The status the server refused with.
    Refused { status: u32 },
}

impl Conn {
    /// `negotiate_req` and `negotiate_resp` are the NEGOTIATE messages (no NetBIOS header),
    /// for the 3.1.1 preauth hash.
    pub fn new(
        stream: TcpStream,
        dialect: u16,
        negotiate_req: &[u8],
        negotiate_resp: &[u8],
    ) -> Self {
        let mut preauth = [0u8; 64];
        if dialect == 0x0311 {
            preauth_update(&mut preauth, negotiate_req);
            preauth_update(&mut preauth, negotiate_resp);
        }
        Conn {
            stream,
            dialect,
            next_id: 1,
            session_id: 0,
            tree_id: 0,
            signer: None,
            preauth,
        }
    }

    /// The signing algorithm in use, once the session has a key.
    pub fn signing(&self) -> Option<&'static str> {
        self.signer.as_ref().map(Signer::name)
    }

    fn request(&mut self, command: u16, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(HEADER_LEN + body.len());
        m.extend_from_slice(b"\xfeSMB");
        m.extend_from_slice(&64u16.to_le_bytes());
        let charge: u16 = if self.dialect == 0x0202 { 0 } else { 1 };
        m.extend_from_slice(&charge.to_le_bytes());
        m.extend_from_slice(&0u32.to_le_bytes()); // Status / ChannelSequence
        m.extend_from_slice(&command.to_le_bytes());
        m.extend_from_slice(&16u16.to_le_bytes()); // CreditRequest
        m.extend_from_slice(&0u32.to_le_bytes()); // Flags
        m.extend_from_slice(&0u32.to_le_bytes()); // NextCommand
        m.extend_from_slice(&self.next_id.to_le_bytes());
        m.extend_from_slice(&0u32.to_le_bytes()); // Reserved (ProcessId)
        m.extend_from_slice(&self.tree_id.to_le_bytes());
        m.extend_from_slice(&self.session_id.to_le_bytes());
        m.extend_from_slice(&[0; 16]);
        m.extend_from_slice(body);
        self.next_id += 1;
        m
    }

    async fn send(&mut self, msg: &[u8]) -> Result<(), String> {
        let mut framed = Vec::with_capacity(msg.len() + 4);
        framed.push(0);
        framed.extend_from_slice(&(msg.len() as u32).to_be_bytes()[1..]);
        framed.extend_from_slice(msg);
        self.stream
            .write_all(&framed)
            .await
            .map_err(|e| format!("sending failed: {e}"))
    }

    /// The next final answer (interim STATUS_PENDING answers are skipped).
    async fn receive(&mut self, command: u16) -> Result<Answer, String> {
        loop {
            let mut nb = [0u8; 4];
            self.stream.read_exact(&mut nb).await.map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    "the server closed the connection".to_string()
                } else {
                    format!("the connection failed: {e}")
                }
            })?;
            let len = u32::from_be_bytes([0, nb[1], nb[2], nb[3]]) as usize;
            if nb[0] != 0 || !(HEADER_LEN..=1 << 20).contains(&len) {
                return Err(format!(
                    "the server sent a frame that is not SMB2 ({nb:02x?})"
                ));
            }
            let mut msg = vec![0u8; len];
            self.stream
                .read_exact(&mut msg)
                .await
                .map_err(|e| format!("the answer broke off: {e}"))?;
            if !msg.starts_with(b"\xfeSMB") {
                return Err("the server answered with something that is not SMB2".into());
            }
            let status = u32::from_le_bytes(msg[8..12].try_into().expect("4"));
            let cmd = u16::from_le_bytes([msg[12], msg[13]]);
            let flags = u32::from_le_bytes(msg[16..20].try_into().expect("4"));
            if flags & FLAG_RESPONSE == 0 || cmd != command {
                return Err(format!(
                    "the server answered command {cmd} to command {command}"
                ));
            }
            if status == STATUS_PENDING && flags & FLAG_ASYNC != 0 {
                continue;
            }
            return Ok(Answer { status, msg });
        }
    }

    async fn call(&mut self, command: u16, body: &[u8]) -> Result<Answer, String> {
        let mut msg = self.request(command, body);
        if let Some(s) = &self.signer {
            s.sign(&mut msg);
        }
        self.send(&msg).await?;
        self.receive(command).await
    }

    fn session_setup_body(blob: &[u8]) -> Vec<u8> {
        let mut b = Vec::with_capacity(24 + blob.len());
        b.extend_from_slice(&25u16.to_le_bytes()); // StructureSize
        b.push(0); // Flags
        b.push(1); // SecurityMode: signing enabled
        b.extend_from_slice(&0u32.to_le_bytes()); // Capabilities
        b.extend_from_slice(&0u32.to_le_bytes()); // Channel
        b.extend_from_slice(&((HEADER_LEN + 24) as u16).to_le_bytes());
        b.extend_from_slice(&(blob.len() as u16).to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes()); // PreviousSessionId
        b.extend_from_slice(blob);
        b
    }

    /// Round 1 of the session setup: NTLMSSP NEGOTIATE → CHALLENGE. `Err(Logon)` when the
    /// server refused it; the String error is a broken exchange.
    pub async fn setup_round1(&mut self) -> Result<Result<ntlm::Challenge, Logon>, String> {
        let body = Self::session_setup_body(&ntlm::spnego_init(&ntlm::negotiate()));
        let msg = self.request(SESSION_SETUP, &body);
        let mut h = self.preauth;
        preauth_update(&mut h, &msg);
        self.send(&msg).await?;
        let a = self.receive(SESSION_SETUP).await?;
        if a.status != STATUS_MORE_PROCESSING_REQUIRED {
            return Ok(Err(Logon::Refused { status: a.status }));
        }
        preauth_update(&mut h, &a.msg);
        self.preauth = h;
        self.session_id = u64::from_le_bytes(a.msg[40..48].try_into().expect("8"));
        let blob = security_buffer(&a).ok_or("the CHALLENGE answer has no security buffer")?;
        ntlm::parse_challenge(blob).map(Ok)
    }

    /// Round 2: AUTHENTICATE → the final status and SessionFlags. On success the session key
    /// becomes the signing key.
    pub async fn setup_round2(
        &mut self,
        creds: &ntlm::Credentials,
        challenge: &ntlm::Challenge,
    ) -> Result<Logon, String> {
        let (auth, session_key) = ntlm::authenticate(creds, challenge);
        let body = Self::session_setup_body(&ntlm::spnego_response(&auth));
        let msg = self.request(SESSION_SETUP, &body);
        preauth_update(&mut self.preauth, &msg);
        self.send(&msg).await?;
        let a = self.receive(SESSION_SETUP).await?;
        if a.status != STATUS_SUCCESS {
            return Ok(Logon::Refused { status: a.status });
        }
        let flags = a
            .body_u16(2)
            .ok_or("the SESSION_SETUP answer is cut short")?;
        // Guest and anonymous sessions have no key to sign with ([MS-SMB2] 3.2.5.3.1).
        if flags & (SESSION_FLAG_IS_GUEST | SESSION_FLAG_IS_NULL) == 0 {
            self.signer = Some(signer_for(self.dialect, &session_key, &self.preauth));
        }
        Ok(Logon::Done { flags })
    }

    /// TREE_CONNECT to `\\server\share`: the status, and on success the share type and the
    /// maximal access the server grants.
    pub async fn tree_connect(&mut self, unc: &str) -> Result<TreeConnect, String> {
        let path: Vec<u8> = unc.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let mut body = Vec::with_capacity(8 + path.len());
        body.extend_from_slice(&9u16.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&((HEADER_LEN + 8) as u16).to_le_bytes());
        body.extend_from_slice(&(path.len() as u16).to_le_bytes());
        body.extend_from_slice(&path);
        let a = self.call(TREE_CONNECT, &body).await?;
        if a.status != STATUS_SUCCESS {
            return Ok(TreeConnect::Refused { status: a.status });
        }
        self.tree_id = u32::from_le_bytes(a.msg[36..40].try_into().expect("4"));
        let share_type = a.msg.get(HEADER_LEN + 2).copied().unwrap_or(0);
        let maximal_access = a
            .msg
            .get(HEADER_LEN + 12..HEADER_LEN + 16)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4")))
            .unwrap_or(0);
        Ok(TreeConnect::Done {
            share_type,
            maximal_access,
        })
    }

    /// TREE_DISCONNECT (when connected) and LOGOFF; answers are read, their status ignored.
    pub async fn close(&mut self) -> Result<(), String> {
        if self.tree_id != 0 {
            self.call(TREE_DISCONNECT, &[4, 0, 0, 0]).await?;
            self.tree_id = 0;
        }
        if self.session_id != 0 {
            self.call(LOGOFF, &[4, 0, 0, 0]).await?;
        }
        Ok(())
    }
}

/// The outcome of TREE_CONNECT.
#[derive(Debug)]
pub enum TreeConnect {
    Done { share_type: u8, maximal_access: u32 },
    Refused { status: u32 },
}

fn security_buffer(a: &Answer) -> Option<&[u8]> {
    let off = a.body_u16(4)? as usize;
    let len = a.body_u16(6)? as usize;
    a.msg.get(off..off + len)
}

pub fn share_type_name(t: u8) -> &'static str {
    match t {
        1 => "disk",
        2 => "pipe",
        3 => "print",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_have_their_names_and_unknown_ones_their_hex() {
        assert_eq!(status_name(0xC000_006D), "NT_STATUS_LOGON_FAILURE");
        assert_eq!(status_name(0xC000_0234), "NT_STATUS_ACCOUNT_LOCKED_OUT");
        assert_eq!(status_name(0xC000_0224), "NT_STATUS_PASSWORD_MUST_CHANGE");
        assert_eq!(status_name(0xC000_0070), "NT_STATUS_INVALID_WORKSTATION");
        assert_eq!(status_name(0xC000_ABCD), "0xC000ABCD");
    }

    /// Microsoft's worked SMB 3.0 example ("SMB 2 and SMB 3 security in Windows 10: the
    /// anatomy of signing and cryptographic keys"): SessionKey 7CD4…78CC gives SigningKey
    /// 0B7E…EDCE; and the KDF is one HMAC-SHA256 round over i ‖ label ‖ 0 ‖ context ‖ L.
    #[test]
    fn the_kdf_matches_the_published_smb3_signing_key() {
        let session: [u8; 16] = hex::decode("7CD451825D0450D235424E44BA6E78CC")
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(
            hex::encode_upper(&kdf(&session, b"SMB2AESCMAC\0", b"SmbSign\0")[..]),
            "0B7E9C5CAC36C0F6EA9AB275298CEDCE"
        );
        let key = [0x11u8; 16];
        let got = kdf(&key, b"SMB2AESCMAC\0", b"SmbSign\0");
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(b"\x00\x00\x00\x01SMB2AESCMAC\0\0SmbSign\0\x00\x00\x00\x80");
        assert_eq!(got[..], mac.finalize().into_bytes()[..16]);
    }

    #[test]
    fn signing_sets_the_flag_and_fills_the_signature() {
        let mut msg = vec![0u8; 80];
        msg[..4].copy_from_slice(b"\xfeSMB");
        let s = Signer::Cmac(Zeroizing::new([7; 16]));
        s.sign(&mut msg);
        assert_eq!(msg[16] & 0x8, 0x8);
        assert_ne!(msg[48..64], [0; 16]);
        // Signing is over the message with a zero signature: the same again.
        let first = msg[48..64].to_vec();
        s.sign(&mut msg);
        assert_eq!(msg[48..64], first[..]);
    }
}
