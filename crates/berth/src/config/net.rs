//! IP address ranges as configuration values (`http.trustedproxies`): `10.0.0.0/8`, `fd00::/8`,
//! or a single address (`192.0.2.7`, `::1`) standing for itself.
//!
//! An [`IpRange`] is parsed once, when the configuration loads, and is never invalid afterwards:
//! the prefix length fits the address family and the address has no bits set past the prefix.
//! A range such as `192.168.1.10/24` is refused rather than widened to its network, because for
//! a list of trusted peers a silent widening trusts more than the operator wrote.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A network: an address and a prefix length (CIDR), IPv4 or IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

/// Why a string is not an [`IpRange`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid IP address or range {input:?}: {reason}")]
pub struct IpRangeParseError {
    input: String,
    reason: String,
}

impl IpRange {
    /// The network address (host bits are zero).
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length: 0–32 for IPv4, 0–128 for IPv6.
    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }
}

fn mask_v4(bits: u32, prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => bits & (u32::MAX << (32 - u32::from(p))),
    }
}

fn mask_v6(bits: u128, prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p => bits & (u128::MAX << (128 - u32::from(p))),
    }
}

impl FromStr for IpRange {
    type Err = IpRangeParseError;

    fn from_str(input: &str) -> Result<IpRange, IpRangeParseError> {
        let fail = |reason: String| IpRangeParseError {
            input: input.to_owned(),
            reason,
        };
        let text = input.trim();
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| {
            fail(format!(
                "{addr_text:?} is not an IP address; expected e.g. 10.0.0.0/8, 192.0.2.7 or fd00::/8"
            ))
        })?;
        // An IPv4-mapped IPv6 range would never match: peers are compared in canonical form.
        if let IpAddr::V6(v6) = addr {
            if v6.to_ipv4_mapped().is_some() {
                return Err(fail(
                    "write IPv4-mapped addresses in IPv4 form (a.b.c.d)".to_owned(),
                ));
            }
        }
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some(p) => parse_prefix(p, max).ok_or_else(|| {
                fail(format!(
                    "the prefix length after `/` must be a number from 0 to {max}"
                ))
            })?,
        };
        let network = match addr {
            IpAddr::V4(a) => IpAddr::V4(mask_v4(u32::from(a), prefix).into()),
            IpAddr::V6(a) => IpAddr::V6(mask_v6(u128::from(a), prefix).into()),
        };
        if network != addr {
            return Err(fail(format!(
                "{addr} has bits set past the /{prefix} prefix; write the network ({network}/{prefix}) \
                 or the single address ({addr})"
            )));
        }
        Ok(IpRange { network, prefix })
    }
}

/// A prefix length in plain decimal (no sign, no leading zero), at most `max`.
fn parse_prefix(text: &str, max: u8) -> Option<u8> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    let prefix: u8 = text.parse().ok().filter(|_| canonical)?;
    (prefix <= max).then_some(prefix)
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Serialize for IpRange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IpRangeVisitor;

        impl Visitor<'_> for IpRangeVisitor {
            type Value = IpRange;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an IP address or a CIDR range such as 10.0.0.0/8 or fd00::/8")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<IpRange, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(IpRangeVisitor)
    }
}

/// Reads a list of ranges; a single string stands for a list of one (as
/// `REGISTRY_HTTP_TRUSTEDPROXIES=10.0.0.1` writes it).
pub(crate) fn ip_ranges<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<IpRange>, D::Error> {
    struct RangesVisitor;

    impl<'de> Visitor<'de> for RangesVisitor {
        type Value = Vec<IpRange>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of IP addresses or CIDR ranges")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<IpRange>, E> {
            Ok(vec![v.parse().map_err(E::custom)?])
        }

        fn visit_unit<E: de::Error>(self) -> Result<Vec<IpRange>, E> {
            Ok(Vec::new())
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<IpRange>, A::Error> {
            let mut ranges = Vec::new();
            while let Some(range) = seq.next_element::<IpRange>()? {
                ranges.push(range);
            }
            Ok(ranges)
        }
    }

    deserializer.deserialize_any(RangesVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &str) -> IpRange {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_ranges_and_single_addresses() {
        for (input, shown) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("192.0.2.7", "192.0.2.7/32"),
            (" 127.0.0.1/32 ", "127.0.0.1/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("::1", "::1/128"),
            ("fd00::/8", "fd00::/8"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("::/0", "::/0"),
        ] {
            assert_eq!(range(input).to_string(), shown, "{input}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_range() {
        for bad in [
            "",
            "localhost",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/8/8",
            "10.0.0.0/+8",
            "10.0.0.0/08",
            "10.0.0.0/-1",
            "::/129",
            "10.0.0",
            "[::1]",
            "fe80::1%eth0",
            "::ffff:10.0.0.1",
            // Host bits past the prefix: refused, not widened.
            "192.168.1.10/24",
            "fd00::1/8",
        ] {
            assert!(bad.parse::<IpRange>().is_err(), "{bad:?} was accepted");
        }
        let err = "192.168.1.10/24"
            .parse::<IpRange>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("192.168.1.0/24"), "{err}");
    }
}
