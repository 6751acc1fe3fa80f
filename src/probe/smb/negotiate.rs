//! A hand-built SMB2 NEGOTIATE: one fixed request offering SMB 2.0.2 to 3.1.1 and the parse of
//! the server's answer. It runs in the agent itself, before libsmbclient, so that the
//! negotiated dialect is known and a server that speaks no SMB2 (SMB1-only, or no SMB at all)
//! is reported as such, without a child process. [MS-SMB2] 2.2.3 and 2.2.4.

/// The dialects offered, oldest first; libsmbclient is bounded to the same range.
pub const DIALECTS: [u16; 5] = [0x0202, 0x0210, 0x0300, 0x0302, 0x0311];

const HEADER_LEN: usize = 64;

/// The NEGOTIATE request with its 4-byte NetBIOS session header. 3.1.1 requires a
/// preauth-integrity context (SHA-512) and the encryption context is customary.
pub fn request() -> Vec<u8> {
    let mut smb = Vec::with_capacity(192);
    // SMB2 header.
    smb.extend_from_slice(b"\xfeSMB");
    smb.extend_from_slice(&64u16.to_le_bytes()); // StructureSize
    smb.extend_from_slice(&0u16.to_le_bytes()); // CreditCharge
    smb.extend_from_slice(&0u32.to_le_bytes()); // Status
    smb.extend_from_slice(&0u16.to_le_bytes()); // Command: NEGOTIATE
    smb.extend_from_slice(&1u16.to_le_bytes()); // CreditRequest
    smb.extend_from_slice(&0u32.to_le_bytes()); // Flags
    smb.extend_from_slice(&0u32.to_le_bytes()); // NextCommand
    smb.extend_from_slice(&0u64.to_le_bytes()); // MessageId
    smb.extend_from_slice(&0u32.to_le_bytes()); // Reserved
    smb.extend_from_slice(&0u32.to_le_bytes()); // TreeId
    smb.extend_from_slice(&0u64.to_le_bytes()); // SessionId
    smb.extend_from_slice(&[0; 16]); // Signature
    debug_assert_eq!(smb.len(), HEADER_LEN);
    // NEGOTIATE body: 36 fixed bytes, then the dialects, then 8-aligned contexts.
    let dialects_end = HEADER_LEN + 36 + 2 * DIALECTS.len();
    let contexts_at = dialects_end.next_multiple_of(8);
    smb.extend_from_slice(&36u16.to_le_bytes()); // StructureSize
    smb.extend_from_slice(&(DIALECTS.len() as u16).to_le_bytes());
    smb.extend_from_slice(&1u16.to_le_bytes()); // SecurityMode: signing enabled
    smb.extend_from_slice(&0u16.to_le_bytes()); // Reserved
    smb.extend_from_slice(&0u32.to_le_bytes()); // Capabilities
    // ClientGuid: random per connection. A fixed one makes every probe "the same client" to a
    // multichannel server: Samba then hands concurrent connections to the process that owns that
    // client, whose credit window does not cover them, and a SESSION_SETUP goes unanswered.
    smb.extend_from_slice(&rand::random::<[u8; 16]>());
    smb.extend_from_slice(&(contexts_at as u32).to_le_bytes());
    smb.extend_from_slice(&2u16.to_le_bytes()); // NegotiateContextCount
    smb.extend_from_slice(&0u16.to_le_bytes()); // Reserved2
    for d in DIALECTS {
        smb.extend_from_slice(&d.to_le_bytes());
    }
    smb.resize(contexts_at, 0);
    // SMB2_PREAUTH_INTEGRITY_CAPABILITIES: one algorithm (SHA-512), a 32-byte salt.
    let mut preauth = Vec::new();
    preauth.extend_from_slice(&1u16.to_le_bytes());
    preauth.extend_from_slice(&32u16.to_le_bytes());
    preauth.extend_from_slice(&1u16.to_le_bytes());
    preauth.extend_from_slice(&[0x5a; 32]);
    push_context(&mut smb, 1, &preauth);
    smb.resize(smb.len().next_multiple_of(8), 0);
    // SMB2_ENCRYPTION_CAPABILITIES: AES-128-GCM, AES-128-CCM.
    push_context(&mut smb, 2, &[2, 0, 2, 0, 1, 0]);

    let mut out = Vec::with_capacity(smb.len() + 4);
    out.push(0);
    out.extend_from_slice(&(smb.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&smb);
    out
}

fn push_context(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    buf.extend_from_slice(&kind.to_le_bytes());
    buf.extend_from_slice(&(data.len() as u16).to_le_bytes());
    buf.extend_from_slice(&0u32.to_le_bytes());
    buf.extend_from_slice(data);
}

/// What the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// SMB2 NEGOTIATE succeeded.
    Negotiated {
        dialect: u16,
        signing_required: bool,
    },
    /// An SMB2 error status (e.g. STATUS_NOT_SUPPORTED: none of our dialects).
    Refused { status: u32 },
    /// The server answered in SMB1 only.
    Smb1Only,
    /// Not SMB at all.
    NotSmb { first_bytes: Vec<u8> },
}

/// The length of the message that follows a NetBIOS session header, or why it is not one.
pub fn frame_len(header: [u8; 4]) -> Result<usize, Answer> {
    if header[0] != 0 {
        return Err(Answer::NotSmb {
            first_bytes: header.to_vec(),
        });
    }
    Ok(u32::from_be_bytes([0, header[1], header[2], header[3]]) as usize)
}

/// Parse a NEGOTIATE response (without its NetBIOS header).
pub fn parse(msg: &[u8]) -> Answer {
    if msg.starts_with(b"\xffSMB") {
        return Answer::Smb1Only;
    }
    if !msg.starts_with(b"\xfeSMB") || msg.len() < HEADER_LEN {
        return Answer::NotSmb {
            first_bytes: msg.iter().take(16).copied().collect(),
        };
    }
    let u16_at = |i: usize| msg.get(i..i + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let status = u32::from_le_bytes([msg[8], msg[9], msg[10], msg[11]]);
    if status != 0 {
        return Answer::Refused { status };
    }
    let body = HEADER_LEN;
    match (u16_at(body + 2), u16_at(body + 4)) {
        (Some(security_mode), Some(dialect)) => Answer::Negotiated {
            dialect,
            signing_required: security_mode & 0x0002 != 0,
        },
        _ => Answer::NotSmb {
            first_bytes: msg.iter().take(16).copied().collect(),
        },
    }
}

/// "3.1.1" for 0x0311.
pub fn dialect_name(d: u16) -> String {
    match d {
        0x0202 => "2.0.2".into(),
        0x0210 => "2.1".into(),
        0x0300 => "3.0".into(),
        0x0302 => "3.0.2".into(),
        0x0311 => "3.1.1".into(),
        0x02ff => "2.??? (wildcard)".into(),
        other => format!("0x{other:04x}"),
    }
}

/// The name of the NT status the NEGOTIATE failed with.
pub fn status_name(status: u32) -> String {
    super::session::status_name(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_connection_is_a_client_of_its_own() {
        // ClientGuid sits after StructureSize, DialectCount, SecurityMode, Reserved and
        // Capabilities. Two probes sharing one made Samba treat them as channels of one client.
        let guid = |r: &[u8]| r[4 + HEADER_LEN + 12..4 + HEADER_LEN + 28].to_vec();
        let (a, b) = (request(), request());
        assert_ne!(guid(&a), guid(&b));
        assert_eq!(a.len(), b.len());
    }

    #[test]
    fn the_request_is_framed_and_its_contexts_aligned() {
        let r = request();
        assert_eq!(frame_len(r[..4].try_into().unwrap()).unwrap(), r.len() - 4);
        let smb = &r[4..];
        assert_eq!(&smb[..4], b"\xfeSMB");
        let off = u32::from_le_bytes(smb[HEADER_LEN + 28..HEADER_LEN + 32].try_into().unwrap());
        assert_eq!(off % 8, 0);
        // First context is the preauth one.
        assert_eq!(smb[off as usize], 1);
        assert_eq!(
            u16::from_le_bytes([smb[HEADER_LEN + 2], smb[HEADER_LEN + 3]]),
            DIALECTS.len() as u16
        );
    }

    fn response(status: u32, security_mode: u16, dialect: u16) -> Vec<u8> {
        let mut m = vec![0u8; HEADER_LEN + 65];
        m[..4].copy_from_slice(b"\xfeSMB");
        m[8..12].copy_from_slice(&status.to_le_bytes());
        m[HEADER_LEN..HEADER_LEN + 2].copy_from_slice(&65u16.to_le_bytes());
        m[HEADER_LEN + 2..HEADER_LEN + 4].copy_from_slice(&security_mode.to_le_bytes());
        m[HEADER_LEN + 4..HEADER_LEN + 6].copy_from_slice(&dialect.to_le_bytes());
        m
    }

    #[test]
    fn answers_are_told_apart() {
        assert_eq!(
            parse(&response(0, 3, 0x0311)),
            Answer::Negotiated {
                dialect: 0x0311,
                signing_required: true
            }
        );
        assert_eq!(
            parse(&response(0xC000_00BB, 0, 0)),
            Answer::Refused {
                status: 0xC000_00BB
            }
        );
        assert_eq!(parse(b"\xffSMBr\0\0\0\0"), Answer::Smb1Only);
        assert!(matches!(parse(b"HTTP/1.1 400"), Answer::NotSmb { .. }));
        assert!(matches!(parse(b"\xfeSMB"), Answer::NotSmb { .. }));
        assert!(frame_len(*b"HTTP").is_err());
        assert_eq!(dialect_name(0x0311), "3.1.1");
        assert_eq!(status_name(0xC000_00BB), "NT_STATUS_NOT_SUPPORTED");
    }
}
