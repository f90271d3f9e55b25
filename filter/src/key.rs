//! Counter keys: which parts of a request identify "one client" for a rule,
//! and how they become a bounded, unambiguous key.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use sha2::{Digest, Sha256};

use crate::request::RequestView;

/// One part of a rule's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// The client's IP from `source.address`, masked to a prefix so that, for
    /// instance, a whole IPv6 /64 counts as one client.
    ClientIp { ipv4_prefix: u8, ipv6_prefix: u8 },
    /// A request header's value (lower-case name).
    Header(String),
    /// The request path without its query.
    Path,
    /// The request method.
    Method,
    /// A fixed value: every request shares one counter.
    Constant(String),
}

/// Values longer than this are replaced by a hash, so keys stay bounded
/// whatever a client sends.
const MAX_PART_BYTES: usize = 64;

/// Appends `value` to `key` so that no value can be mistaken for a separator:
/// `:`, `%`, `{`, `}`, `#`, and bytes outside printable ASCII are percent-encoded;
/// a value longer than [`MAX_PART_BYTES`] is replaced by `#` and the first 128
/// bits of its SHA-256.
fn push_part(key: &mut String, value: &[u8]) {
    key.push(':');
    if value.len() > MAX_PART_BYTES {
        key.push('#');
        for byte in &Sha256::digest(value)[..16] {
            let _ = write!(key, "{byte:02x}");
        }
        return;
    }
    // Runs of plain bytes go in whole: a key is built for every request a rule matches.
    let plain = |byte: &u8| byte.is_ascii_graphic() && !b":%{}#".contains(byte);
    let mut rest = value;
    while !rest.is_empty() {
        let run = rest.iter().position(|b| !plain(b)).unwrap_or(rest.len());
        // Plain bytes are ASCII, so always text.
        key.push_str(std::str::from_utf8(&rest[..run]).unwrap_or_default());
        let Some((&odd, after)) = rest[run..].split_first() else {
            break;
        };
        key.push('%');
        key.push(char::from(HEX[usize::from(odd >> 4)]));
        key.push(char::from(HEX[usize::from(odd & 0x0f)]));
        rest = after;
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The client's address without its port: `"127.0.0.2:5000"` → `"127.0.0.2"`,
/// `"[::1]:5000"` → `"::1"`. Text that is neither is kept whole.
pub fn client_ip(source_address: &[u8]) -> &[u8] {
    if let Some(rest) = source_address.strip_prefix(b"[") {
        if let Some(end) = rest.iter().position(|&b| b == b']') {
            return &rest[..end];
        }
    }
    let colons = source_address.iter().filter(|&&b| b == b':').count();
    match source_address.iter().rposition(|&b| b == b':') {
        Some(i) if colons == 1 => &source_address[..i],
        _ => source_address,
    }
}

/// The client IP masked to its prefix, as `ip/len` (or `ip` for a full-length
/// prefix). Text that is not an IP is kept as it is.
fn masked_ip(ip: &[u8], ipv4_prefix: u8, ipv6_prefix: u8) -> Cow<'_, [u8]> {
    let Ok(text) = std::str::from_utf8(ip) else {
        return Cow::Borrowed(ip);
    };
    // The usual case, a whole IPv4 address, costs no formatting: the parser accepts only the
    // canonical dotted quad (no leading zeros, no spaces), which is what it would print.
    if ipv4_prefix == 32 && text.parse::<Ipv4Addr>().is_ok() {
        return Cow::Borrowed(ip);
    }
    let Ok(parsed) = text.parse::<IpAddr>() else {
        return Cow::Borrowed(ip);
    };
    let (masked, prefix, full) = match parsed {
        IpAddr::V4(v4) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(ipv4_prefix))
                .unwrap_or(0);
            (
                IpAddr::from((u32::from(v4) & mask).to_be_bytes()),
                ipv4_prefix,
                32,
            )
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(ipv6_prefix))
                .unwrap_or(0);
            (
                IpAddr::from((u128::from(v6) & mask).to_be_bytes()),
                ipv6_prefix,
                128,
            )
        }
    };
    Cow::Owned(if prefix == full {
        masked.to_string().into_bytes()
    } else {
        format!("{masked}/{prefix}").into_bytes()
    })
}

/// Builds a rule's counter key for a request: the rule name, then each part.
/// Returns `None` when a header the key needs is missing (`default` absent),
/// or uses `default` in its place.
pub fn build_key(
    rule: &str,
    parts: &[KeyPart],
    path: &[u8],
    request: &impl RequestView,
    default: Option<&str>,
) -> Option<String> {
    let mut key = String::with_capacity(rule.len() + 24);
    key.push_str(rule);
    for part in parts {
        match part {
            KeyPart::ClientIp {
                ipv4_prefix,
                ipv6_prefix,
            } => match request.source_address() {
                Some(address) => push_part(
                    &mut key,
                    &masked_ip(client_ip(&address), *ipv4_prefix, *ipv6_prefix),
                ),
                None => push_part(&mut key, b"unknown"),
            },
            KeyPart::Header(name) => match request.header(name) {
                Some(value) => push_part(&mut key, &value),
                None => push_part(&mut key, default?.as_bytes()),
            },
            KeyPart::Path => push_part(&mut key, path),
            KeyPart::Method => push_part(&mut key, &request.header(":method").unwrap_or_default()),
            KeyPart::Constant(value) => push_part(&mut key, value.as_bytes()),
        }
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::tests::FakeRequest;

    const IP: KeyPart = KeyPart::ClientIp {
        ipv4_prefix: 32,
        ipv6_prefix: 128,
    };

    fn key(parts: &[KeyPart], request: &FakeRequest, default: Option<&str>) -> Option<String> {
        let path = request.header(":path").unwrap_or_default();
        build_key(
            "r",
            parts,
            crate::request::path_only(&path),
            request,
            default,
        )
    }

    #[test]
    fn strips_the_port_from_the_client_address() {
        assert_eq!(client_ip(b"127.0.0.2:5000"), b"127.0.0.2");
        assert_eq!(client_ip(b"[::1]:5000"), b"::1");
        assert_eq!(client_ip(b"[2001:db8::1]:443"), b"2001:db8::1");
        assert_eq!(client_ip(b"2001:db8::1"), b"2001:db8::1");
        assert_eq!(client_ip(b"10.0.0.1"), b"10.0.0.1");
        assert_eq!(client_ip(b""), b"");
    }

    #[test]
    fn the_default_key_is_rule_and_client_ip() {
        let request = FakeRequest::new("GET", "/x").from("127.0.0.2:5000");
        assert_eq!(key(&[IP], &request, None).unwrap(), "r:127.0.0.2");
        let v6 = FakeRequest::new("GET", "/x").from("[2001:db8::1]:5000");
        assert_eq!(key(&[IP], &v6, None).unwrap(), "r:2001%3Adb8%3A%3A1");
    }

    #[test]
    fn prefixes_group_addresses() {
        let parts = [KeyPart::ClientIp {
            ipv4_prefix: 24,
            ipv6_prefix: 64,
        }];
        let a = FakeRequest::new("GET", "/").from("[2001:db8:1:2:aaaa::1]:1");
        let b = FakeRequest::new("GET", "/").from("[2001:db8:1:2:bbbb::9]:2");
        let c = FakeRequest::new("GET", "/").from("[2001:db8:1:3::1]:2");
        assert_eq!(key(&parts, &a, None), key(&parts, &b, None));
        assert_ne!(key(&parts, &a, None), key(&parts, &c, None));
        assert_eq!(
            key(&parts, &a, None).unwrap(),
            "r:2001%3Adb8%3A1%3A2%3A%3A/64"
        );
        let v4 = FakeRequest::new("GET", "/").from("192.168.7.9:1");
        assert_eq!(key(&parts, &v4, None).unwrap(), "r:192.168.7.0/24");
        let all = [KeyPart::ClientIp {
            ipv4_prefix: 0,
            ipv6_prefix: 0,
        }];
        assert_eq!(key(&all, &v4, None).unwrap(), "r:0.0.0.0/0");
    }

    #[test]
    fn parts_combine_in_order() {
        let parts = [
            KeyPart::Method,
            KeyPart::Path,
            KeyPart::Header("x-api-key".into()),
            KeyPart::Constant("v1".into()),
        ];
        let request = FakeRequest::new("POST", "/items?x=1").with("x-api-key", "abc");
        assert_eq!(key(&parts, &request, None).unwrap(), "r:POST:/items:abc:v1");
    }

    #[test]
    fn a_missing_header_skips_the_rule_or_uses_the_default() {
        let parts = [KeyPart::Header("x-api-key".into())];
        let request = FakeRequest::new("GET", "/");
        assert_eq!(key(&parts, &request, None), None);
        assert_eq!(
            key(&parts, &request, Some("anonymous")).unwrap(),
            "r:anonymous"
        );
    }

    #[test]
    fn separators_and_odd_bytes_cannot_forge_another_key() {
        let parts = [KeyPart::Header("a".into()), KeyPart::Header("b".into())];
        let one = FakeRequest::new("GET", "/").with("a", "x:y").with("b", "z");
        let two = FakeRequest::new("GET", "/").with("a", "x").with("b", "y:z");
        assert_ne!(key(&parts, &one, None), key(&parts, &two, None));
        let odd = FakeRequest::new("GET", "/")
            .with("a", b"\xff\x00 {}%")
            .with("b", "");
        assert_eq!(key(&parts, &odd, None).unwrap(), "r:%FF%00%20%7B%7D%25:");
    }

    #[test]
    fn long_values_are_hashed_to_a_bounded_key() {
        let parts = [KeyPart::Header("a".into())];
        let long = FakeRequest::new("GET", "/").with("a", vec![b':'; 100_000]);
        let k = key(&parts, &long, None).unwrap();
        assert_eq!(k.len(), "r:#".len() + 32);
        let other = FakeRequest::new("GET", "/").with("a", vec![b';'; 100_000]);
        assert_ne!(key(&parts, &other, None), Some(k));
    }

    #[test]
    fn text_that_is_not_an_ip_is_kept() {
        assert_eq!(*masked_ip(b"unix:/tmp/sock", 24, 64), *b"unix:/tmp/sock");
        assert_eq!(*masked_ip(b"unix:/tmp/sock", 32, 128), *b"unix:/tmp/sock");
        assert_eq!(*masked_ip(b"\xff", 32, 128), *b"\xff");
    }

    /// Whole IPv4 addresses are used as written only because the parser takes nothing but
    /// the form it prints: any other spelling of an address would otherwise be a second key.
    #[test]
    fn a_whole_ipv4_address_is_its_canonical_text() {
        for text in ["1.2.3.4", "0.0.0.0", "255.255.255.255", "10.0.0.1"] {
            let printed = text.parse::<IpAddr>().unwrap().to_string();
            assert_eq!(*masked_ip(text.as_bytes(), 32, 128), *printed.as_bytes());
        }
        for odd in ["010.0.0.1", "1.2.3.04", " 1.2.3.4", "1.2.3.4 ", "1.2.3.256"] {
            assert!(odd.parse::<Ipv4Addr>().is_err(), "{odd} parses");
            assert_eq!(*masked_ip(odd.as_bytes(), 32, 128), *odd.as_bytes());
        }
    }
}
