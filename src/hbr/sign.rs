//! Alibaba Cloud request signing, by hand (no crate does it): V3 `ACS3-HMAC-SHA256` (default)
//! and legacy V2 RPC `HMAC-SHA1`. Pure functions of their inputs, so the published vectors and
//! the official SDK's signer can check them byte for byte. The fake HBR verifies with them too.

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::{Digest, Sha256};

/// Everything but RFC 3986 unreserved characters is encoded.
const ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Hex SHA-256 of an empty body.
pub const EMPTY_BODY_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// RFC 3986 percent-encoding as Alibaba Cloud canonicalises it: unreserved `A-Za-z0-9-_.~`
/// kept, everything else `%XX` (upper-case hex) of its UTF-8 bytes; space is `%20`, `*` `%2A`.
pub fn percent_encode(s: &str) -> String {
    utf8_percent_encode(s, ENCODE).to_string()
}

/// Canonical query string: pairs encoded with [`percent_encode`], sorted by encoded key (then
/// encoded value), joined `k=v` with `&`.
pub fn canonical_query(params: &[(String, String)]) -> String {
    let mut enc: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (percent_encode(k), percent_encode(v)))
        .collect();
    enc.sort();
    enc.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Whether a header takes part in a V3 signature: `host`, `content-type` and every `x-acs-*`.
pub fn v3_is_signed_header(lower_name: &str) -> bool {
    lower_name == "host" || lower_name == "content-type" || lower_name.starts_with("x-acs-")
}

/// V3 canonical request. `headers` are (name, value) pairs in any case and order; those that
/// [`v3_is_signed_header`] are lower-cased, trimmed and sorted. Returns (canonical request,
/// signed header names joined with `;`).
pub fn v3_canonical_request(
    method: &str,
    path: &str,
    query: &[(String, String)],
    headers: &[(String, String)],
    body_sha256_hex: &str,
) -> (String, String) {
    let mut signed: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .filter(|(k, _)| v3_is_signed_header(k))
        .collect();
    signed.sort();
    let canonical_headers: String = signed.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_names = signed
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical = format!(
        "{method}\n{path}\n{}\n{canonical_headers}\n{signed_names}\n{body_sha256_hex}",
        canonical_query(query)
    );
    (canonical, signed_names)
}

/// Hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Lower-case hex HMAC-SHA256(secret, "ACS3-HMAC-SHA256\n" + hex(sha256(canonical_request))).
pub fn v3_signature(secret: &str, canonical_request: &str) -> String {
    let string_to_sign = format!(
        "ACS3-HMAC-SHA256\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(string_to_sign.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The `Authorization` header value for V3.
pub fn v3_authorization(access_key_id: &str, signed_headers: &str, signature: &str) -> String {
    format!(
        "ACS3-HMAC-SHA256 Credential={access_key_id},SignedHeaders={signed_headers},Signature={signature}"
    )
}

/// V2 string to sign: `METHOD&%2F&` + percent_encode(canonical_query(params)). `params` must
/// not contain `Signature`.
pub fn v2_string_to_sign(method: &str, params: &[(String, String)]) -> String {
    format!(
        "{method}&{}&{}",
        percent_encode("/"),
        percent_encode(&canonical_query(params))
    )
}

/// Base64(HMAC-SHA1(secret + "&", string_to_sign)).
pub fn v2_signature(secret: &str, string_to_sign: &str) -> String {
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(format!("{secret}&").as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Constant-time comparison for signature checks.
pub fn eq_ct(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    //! Published vectors: `shared/vectors/alibaba-signatures.md` (Alibaba Cloud SDK docs and
    //! darabonba-openapi-util tests), copied here so the tests stand alone.
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn v3_headers(date: &str, nonce: &str) -> Vec<(String, String)> {
        pairs(&[
            ("host", "ecs.cn-shanghai.aliyuncs.com"),
            ("x-acs-action", "RunInstances"),
            ("x-acs-version", "2014-05-26"),
            ("x-acs-date", date),
            ("x-acs-signature-nonce", nonce),
            ("x-acs-content-sha256", EMPTY_BODY_SHA256),
        ])
    }

    fn v3_query() -> Vec<(String, String)> {
        pairs(&[
            (
                "ImageId",
                "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd",
            ),
            ("RegionId", "cn-shanghai"),
        ])
    }

    #[test]
    fn empty_body_hash() {
        assert_eq!(sha256_hex(b""), EMPTY_BODY_SHA256);
    }

    #[test]
    fn v3_a() {
        let (canonical, signed) = v3_canonical_request(
            "POST",
            "/",
            &v3_query(),
            &v3_headers("2023-10-26T10:22:32Z", "3156853299f313e23d1673dc12e1703d"),
            EMPTY_BODY_SHA256,
        );
        assert_eq!(
            sha256_hex(canonical.as_bytes()),
            "7ea06492da5221eba5297e897ce16e55f964061054b7695beedaac1145b1e259"
        );
        let sig = v3_signature("YourAccessKeySecret", &canonical);
        assert_eq!(
            v3_authorization("YourAccessKeyId", &signed, &sig),
            "ACS3-HMAC-SHA256 Credential=YourAccessKeyId,SignedHeaders=host;x-acs-action;\
             x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version,\
             Signature=06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
        );
    }

    #[test]
    fn v3_b() {
        let (canonical, _) = v3_canonical_request(
            "POST",
            "/",
            &v3_query(),
            &v3_headers("2023-10-26T09:01:01Z", "d410180a5abf7fe235dd9b74aca91fc0"),
            EMPTY_BODY_SHA256,
        );
        assert_eq!(
            v3_signature("YourAccessKeySecret", &canonical),
            "e521358f7776c97df52e6b2891a8bc73026794a071b50c3323388c4e0df64804"
        );
    }

    #[test]
    fn v3_header_case_and_order_do_not_matter() {
        let mut h = v3_headers("2023-10-26T10:22:32Z", "3156853299f313e23d1673dc12e1703d");
        h.reverse();
        h[0].0 = h[0].0.to_ascii_uppercase();
        h.push(("User-Agent".into(), "not signed".into()));
        let (a, _) = v3_canonical_request("POST", "/", &v3_query(), &h, EMPTY_BODY_SHA256);
        let (b, _) = v3_canonical_request(
            "POST",
            "/",
            &v3_query(),
            &v3_headers("2023-10-26T10:22:32Z", "3156853299f313e23d1673dc12e1703d"),
            EMPTY_BODY_SHA256,
        );
        assert_eq!(a, b);
    }

    #[test]
    fn v2_a() {
        let params = pairs(&[
            ("AccessKeyId", "testid"),
            ("Action", "DescribeDedicatedHosts"),
            ("Format", "JSON"),
            ("RegionId", "cn-beijing"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "edb2b34af0af9a6d14deaf7c1a5315eb"),
            ("SignatureVersion", "1.0"),
            ("Timestamp", "2023-03-13T08:34:30Z"),
            ("Version", "2014-05-26"),
        ]);
        let sts = v2_string_to_sign("GET", &params);
        assert_eq!(
            sts,
            "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeDedicatedHosts%26Format%3DJSON\
             %26RegionId%3Dcn-beijing%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D\
             edb2b34af0af9a6d14deaf7c1a5315eb%26SignatureVersion%3D1.0%26Timestamp%3D\
             2023-03-13T08%253A34%253A30Z%26Version%3D2014-05-26"
        );
        assert_eq!(
            v2_signature("testsecret", &sts),
            "9NaGiOspFP5UPcwX8Iwt2YJXXuk="
        );
    }

    #[test]
    fn v2_b() {
        let params = pairs(&[
            ("Timestamp", "2016-02-23T12:46:24Z"),
            ("Format", "XML"),
            ("AccessKeyId", "testid"),
            ("Action", "DescribeRegions"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
            ("Version", "2014-05-26"),
            ("SignatureVersion", "1.0"),
        ]);
        let sts = v2_string_to_sign("GET", &params);
        assert_eq!(
            v2_signature("testsecret", &sts),
            "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
        );
    }

    #[test]
    fn encoding_vector() {
        assert_eq!(
            canonical_query(&pairs(&[("test", " ~/*-+")])),
            "test=%20~%2F%2A-%2B"
        );
        assert_eq!(percent_encode("中"), "%E4%B8%AD");
    }

    #[test]
    fn constant_time_eq() {
        assert!(eq_ct("abc", "abc"));
        assert!(!eq_ct("abc", "abd"));
        assert!(!eq_ct("abc", "ab"));
    }
}
