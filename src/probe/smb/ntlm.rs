//! NTLMSSP (NTLMv2 only) for the agent's own SMB2 SESSION_SETUP, and the SPNEGO wrapping that
//! SMB servers expect around it. [MS-NLMP] 2.2 and 3.3.2; [RFC 4178].
//!
//! Hand-written on the RustCrypto primitives (`md4`, `md-5`, `hmac`): the NTLM crates on
//! crates.io pull an older digest generation, `chrono` and DES/LM code the probe never needs,
//! and keep the password in a plain `String`. The unit tests check the arithmetic against the
//! published MS-NLMP §4.2.4 NTLMv2 vectors.
//!
//! Secrets: the password is read once to make the NT hash; the hash, the NTLMv2 key and the
//! session key live in [`Zeroizing`] buffers and never appear in `Debug` output.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use md4::{Digest as _, Md4};
use md5::Md5;
use zeroize::Zeroizing;

const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";

/// NEGOTIATE_UNICODE | REQUEST_TARGET | NEGOTIATE_SIGN | NEGOTIATE_NTLM | ALWAYS_SIGN |
/// EXTENDED_SESSIONSECURITY | NEGOTIATE_TARGET_INFO | NEGOTIATE_128. No KEY_EXCH: the session
/// key is then the NTLMv2 session base key, which is all SMB2 signing needs.
const FLAGS: u32 = 0x0000_0001
    | 0x0000_0004
    | 0x0000_0010
    | 0x0000_0200
    | 0x0000_8000
    | 0x0008_0000
    | 0x0080_0000
    | 0x2000_0000;

/// MsvAvTimestamp: the server's FILETIME, to be used as the client's when present.
const AV_TIMESTAMP: u16 = 7;
const AV_EOL: u16 = 0;

/// The NT hash (MD4 of the UTF-16LE password) and the NTLMv2 key made from it.
pub struct Credentials {
    user: String,
    domain: String,
    workstation: String,
    /// NTOWFv2(password, user, domain).
    key: Zeroizing<[u8; 16]>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("domain", &self.domain)
            .field("workstation", &self.workstation)
            .field("key", &"***")
            .finish()
    }
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    let mut mac = Hmac::<Md5>::new_from_slice(key).expect("HMAC takes any key");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

impl Credentials {
    pub fn new(user: &str, domain: &str, password: &str, workstation: &str) -> Self {
        let pw = Zeroizing::new(utf16(password));
        let nt_hash = Zeroizing::new(<[u8; 16]>::from(Md4::digest(&pw[..])));
        let key = Zeroizing::new(hmac_md5(
            &nt_hash[..],
            &[&utf16(&user.to_uppercase()), &utf16(domain)],
        ));
        Credentials {
            user: user.into(),
            domain: domain.into(),
            workstation: workstation.into(),
            key,
        }
    }
}

/// The first message: flags only, no domain or workstation (they go in AUTHENTICATE).
pub fn negotiate() -> Vec<u8> {
    let mut m = Vec::with_capacity(32);
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&FLAGS.to_le_bytes());
    m.extend_from_slice(&[0; 16]); // DomainNameFields, WorkstationFields: empty
    m
}

/// What the server's CHALLENGE carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub flags: u32,
    pub server_challenge: [u8; 8],
    /// The AV pairs, as sent (they go back inside the NTLMv2 response).
    pub target_info: Vec<u8>,
    /// MsvAvTimestamp, when the server sent one.
    pub timestamp: Option<u64>,
    /// MsvAvNbComputerName, for the report.
    pub server_name: Option<String>,
}

/// Find and parse the CHALLENGE inside a security blob (raw, or inside a SPNEGO
/// negTokenResp: the NTLMSSP message runs from its signature to the end, and its offsets are
/// relative to its start, so what SPNEGO puts after it does no harm).
pub fn parse_challenge(blob: &[u8]) -> Result<Challenge, String> {
    let at = blob
        .windows(SIGNATURE.len())
        .position(|w| w == SIGNATURE)
        .ok_or("no NTLMSSP message in the server's security blob")?;
    let m = &blob[at..];
    let u16_at = |i: usize| m.get(i..i + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |i: usize| {
        m.get(i..i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if u32_at(8) != Some(2) {
        return Err(format!(
            "the server's NTLMSSP message is type {:?}, not a CHALLENGE (2)",
            u32_at(8)
        ));
    }
    let short = || "the server's NTLMSSP CHALLENGE is cut short".to_string();
    let flags = u32_at(20).ok_or_else(short)?;
    let server_challenge: [u8; 8] = m.get(24..32).ok_or_else(short)?.try_into().expect("8");
    let (len, off) = (
        u16_at(40).ok_or_else(short)? as usize,
        u32_at(44).ok_or_else(short)? as usize,
    );
    let target_info = m.get(off..off + len).ok_or_else(short)?.to_vec();
    let mut timestamp = None;
    let mut server_name = None;
    let mut i = 0;
    while let (Some(id), Some(n)) = (
        target_info
            .get(i..i + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]])),
        target_info
            .get(i + 2..i + 4)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize),
    ) {
        let Some(value) = target_info.get(i + 4..i + 4 + n) else {
            break;
        };
        match id {
            AV_EOL => break,
            1 => {
                let units: Vec<u16> = value
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect();
                server_name = Some(String::from_utf16_lossy(&units));
            }
            AV_TIMESTAMP if n == 8 => {
                timestamp = Some(u64::from_le_bytes(value.try_into().expect("8")));
            }
            _ => {}
        }
        i += 4 + n;
    }
    Ok(Challenge {
        flags,
        server_challenge,
        target_info,
        timestamp,
        server_name,
    })
}

/// The NTLMv2 response and the session base key, for a given time and client challenge.
/// [MS-NLMP] 3.3.2.
pub fn ntlmv2_response(
    key: &[u8; 16],
    server_challenge: &[u8; 8],
    client_challenge: &[u8; 8],
    time: u64,
    target_info: &[u8],
) -> (Vec<u8>, Zeroizing<[u8; 16]>) {
    let mut temp = Vec::with_capacity(32 + target_info.len());
    temp.extend_from_slice(&[1, 1, 0, 0, 0, 0, 0, 0]); // RespType, HiRespType, reserved
    temp.extend_from_slice(&time.to_le_bytes());
    temp.extend_from_slice(client_challenge);
    temp.extend_from_slice(&[0; 4]);
    temp.extend_from_slice(target_info);
    temp.extend_from_slice(&[0; 4]);
    let proof = hmac_md5(key, &[server_challenge, &temp]);
    let session_key = Zeroizing::new(hmac_md5(key, &[&proof]));
    let mut response = proof.to_vec();
    response.extend_from_slice(&temp);
    (response, session_key)
}

/// Now as a Windows FILETIME (100 ns since 1601).
fn filetime_now() -> u64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (unix.as_nanos() / 100) as u64 + 116_444_736_000_000_000
}

/// The AUTHENTICATE message for `challenge`, and the session key (for SMB2 signing).
pub fn authenticate(creds: &Credentials, challenge: &Challenge) -> (Vec<u8>, Zeroizing<[u8; 16]>) {
    let client_challenge: [u8; 8] = rand::random();
    let time = challenge.timestamp.unwrap_or_else(filetime_now);
    let (nt, session_key) = ntlmv2_response(
        &creds.key,
        &challenge.server_challenge,
        &client_challenge,
        time,
        &challenge.target_info,
    );
    // With a server timestamp, LmChallengeResponse is Z(24) ([MS-NLMP] 3.1.5.1.2).
    let lm = if challenge.timestamp.is_some() {
        vec![0u8; 24]
    } else {
        let mut lm = hmac_md5(
            &creds.key[..],
            &[&challenge.server_challenge, &client_challenge],
        )
        .to_vec();
        lm.extend_from_slice(&client_challenge);
        lm
    };
    let fields: [Vec<u8>; 5] = [
        lm,
        nt,
        utf16(&creds.domain),
        utf16(&creds.user),
        utf16(&creds.workstation),
    ];
    const FIXED: usize = 64;
    let mut m = Vec::with_capacity(FIXED + fields.iter().map(Vec::len).sum::<usize>());
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&3u32.to_le_bytes());
    let mut off = FIXED;
    let mut push_field = |m: &mut Vec<u8>, len: usize| {
        m.extend_from_slice(&(len as u16).to_le_bytes());
        m.extend_from_slice(&(len as u16).to_le_bytes());
        m.extend_from_slice(&(off as u32).to_le_bytes());
        off += len;
    };
    for f in &fields {
        push_field(&mut m, f.len());
    }
    push_field(&mut m, 0); // EncryptedRandomSessionKey: none (no KEY_EXCH)
    m.extend_from_slice(&(FLAGS & challenge.flags | 0x0000_0001).to_le_bytes());
    debug_assert_eq!(m.len(), FIXED);
    for f in &fields {
        m.extend_from_slice(f);
    }
    (m, session_key)
}

// ---- SPNEGO ([RFC 4178]) with NTLMSSP as the one mechanism ----

/// 1.3.6.1.5.5.2
const SPNEGO_OID: &[u8] = &[0x06, 0x06, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x02];
/// 1.3.6.1.4.1.311.2.2.10
const NTLMSSP_OID: &[u8] = &[
    0x06, 0x0a, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x02, 0x0a,
];

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    match n {
        0..=0x7f => out.push(n as u8),
        0x80..=0xff => out.extend_from_slice(&[0x81, n as u8]),
        _ => out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(content);
    out
}

/// GSS-API initial token: negTokenInit offering NTLMSSP, with the NEGOTIATE as mechToken.
pub fn spnego_init(token: &[u8]) -> Vec<u8> {
    let mech_types = der(0xa0, &der(0x30, NTLMSSP_OID));
    let mech_token = der(0xa2, &der(0x04, token));
    let init = der(0xa0, &der(0x30, &[mech_types, mech_token].concat()));
    der(0x60, &[SPNEGO_OID, &init].concat())
}

/// negTokenResp carrying the AUTHENTICATE as responseToken.
pub fn spnego_response(token: &[u8]) -> Vec<u8> {
    der(0xa1, &der(0x30, &der(0xa2, &der(0x04, token))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    /// [MS-NLMP] 4.2.4: user "User", domain "Domain", password "Password", server challenge
    /// 0123456789abcdef, client challenge aa…aa, time 0, AV pairs NbDomainName "Domain" and
    /// NbComputerName "Server".
    #[test]
    fn ntlmv2_matches_the_ms_nlmp_vectors() {
        let creds = Credentials::new("User", "Domain", "Password", "COMPUTER");
        assert_eq!(
            creds.key[..],
            unhex("0c868a403bfd7a93a3001ef22ef02e3f")[..],
            "NTOWFv2"
        );
        let target_info =
            unhex("02000c0044006f006d00610069006e00 01000c0053006500720076006500720000000000");
        let server: [u8; 8] = unhex("0123456789abcdef").try_into().unwrap();
        let (resp, session_key) = ntlmv2_response(&creds.key, &server, &[0xaa; 8], 0, &target_info);
        assert_eq!(
            resp[..16],
            unhex("68cd0ab851e51c96aabc927bebef6a1c")[..],
            "NTProofStr"
        );
        assert_eq!(
            resp[16..],
            unhex(
                "0101000000000000 0000000000000000 aaaaaaaaaaaaaaaa 00000000 \
                 02000c0044006f006d00610069006e00 01000c0053006500720076006500720000000000 \
                 00000000"
            )[..],
            "the temp blob"
        );
        assert_eq!(
            session_key[..],
            unhex("8de40ccadbc14a82f15cb0ad0de95ca3")[..],
            "SessionBaseKey"
        );
        // LMv2 of the same vectors.
        assert_eq!(
            hmac_md5(&creds.key[..], &[&server, &[0xaa; 8]])[..],
            unhex("86c35097ac9cec102554764a57cccc19")[..]
        );
    }

    fn challenge_message(target_info: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(SIGNATURE);
        m.extend_from_slice(&2u32.to_le_bytes());
        m.extend_from_slice(&[0; 8]); // TargetNameFields
        m.extend_from_slice(&FLAGS.to_le_bytes());
        m.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(&(target_info.len() as u16).to_le_bytes());
        m.extend_from_slice(&(target_info.len() as u16).to_le_bytes());
        m.extend_from_slice(&48u32.to_le_bytes());
        m.extend_from_slice(target_info);
        m
    }

    #[test]
    fn a_challenge_is_found_inside_spnego_and_its_av_pairs_read() {
        let mut ti = unhex("01000c0053006500720076006500720007000800");
        ti.extend_from_slice(&42u64.to_le_bytes());
        ti.extend_from_slice(&[0; 4]);
        let blob = spnego_response(&challenge_message(&ti));
        let c = parse_challenge(&blob).unwrap();
        assert_eq!(c.server_challenge, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(c.timestamp, Some(42));
        assert_eq!(c.server_name.as_deref(), Some("Server"));
        assert_eq!(c.target_info, ti);
        assert!(parse_challenge(b"garbage").is_err());
        assert!(parse_challenge(&challenge_message(&ti)[..30]).is_err());
    }

    #[test]
    fn authenticate_lays_out_its_fields_and_never_shows_the_key() {
        let creds = Credentials::new("backup", "CORP", "hunter2", "HOST");
        assert!(!format!("{creds:?}").contains("hunter2"));
        let c = parse_challenge(&challenge_message(&[0, 0, 0, 0])).unwrap();
        let (m, _) = authenticate(&creds, &c);
        let field = |i: usize| {
            let len = u16::from_le_bytes([m[12 + 8 * i], m[13 + 8 * i]]) as usize;
            let off = u32::from_le_bytes(m[16 + 8 * i..20 + 8 * i].try_into().unwrap()) as usize;
            m[off..off + len].to_vec()
        };
        assert_eq!(field(2), utf16("CORP"));
        assert_eq!(field(3), utf16("backup"));
        assert_eq!(field(4), utf16("HOST"));
        assert_eq!(field(1).len(), 16 + 28 + 4 + 4);
        assert!(!m.windows(7).any(|w| w == b"hunter2"));
    }

    #[test]
    fn spnego_lengths_use_the_long_form_past_127_bytes() {
        let long = spnego_init(&[0u8; 300]);
        assert_eq!(&long[..2], &[0x60, 0x82]);
        assert_eq!(
            u16::from_be_bytes([long[2], long[3]]) as usize,
            long.len() - 4
        );
        assert_eq!(
            spnego_response(&[7])[..],
            [0xa1, 7, 0x30, 5, 0xa2, 3, 0x04, 1, 7]
        );
    }

    proptest::proptest! {
        /// What a server sends never panics the parser, with or without the signature.
        #[test]
        fn parsing_a_challenge_never_panics(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        ) {
            let _ = parse_challenge(&bytes);
            let mut m = SIGNATURE.to_vec();
            m.extend_from_slice(&2u32.to_le_bytes());
            m.extend_from_slice(&bytes);
            let _ = parse_challenge(&m);
        }
    }
}
