//! Where a request's client reaches the registry: the base of the absolute URLs the edge writes
//! (`Location`, `Link`, the request URL of events, the realm of an auto-redirected token
//! challenge).
//!
//! Three sources, in this order:
//! 1. `http.host`, when configured, wins over everything;
//! 2. when the TCP peer is one of `http.trustedproxies`, what it forwarded: `X-Forwarded-Proto`
//!    and `X-Forwarded-Host` (first value of a comma list), else the first element of RFC 7239's
//!    `Forwarded` (`proto=`, `host=`); a field it did not forward, or forwarded malformed, falls
//!    back to the request's own;
//! 3. the request's own `Host` (or HTTP/2 `:authority`) and the listener's scheme.
//!
//! Invariant: forwarded headers of a peer outside `http.trustedproxies` (or of a request with no
//! known peer) are never read, and a forwarded value is used only after it was checked: the
//! scheme is `http` or `https`, the host is a bare `host[:port]` authority (no user info, path,
//! or anything a URL could be bent with).

use std::borrow::Cow;
use std::net::IpAddr;

use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName};

use super::{EdgeSettings, PeerAddr};

const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The peers whose forwarded headers are believed (`http.trustedproxies`): networks as
/// (address, prefix length) pairs.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// From networks as (address, prefix length); bits past the prefix are ignored and a prefix
    /// longer than the address family allows counts as the whole address.
    pub fn new(networks: impl IntoIterator<Item = (IpAddr, u8)>) -> TrustedProxies {
        TrustedProxies(
            networks
                .into_iter()
                .map(|(addr, prefix)| {
                    let addr = addr.to_canonical();
                    let prefix = prefix.min(if addr.is_ipv4() { 32 } else { 128 });
                    (masked(addr, prefix), prefix)
                })
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `peer` is inside one of the networks. An IPv4 peer reported as IPv6
    /// (`::ffff:a.b.c.d`, by a dual-stack listener) counts as the IPv4 address.
    pub fn contains(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.0
            .iter()
            .any(|&(net, prefix)| net.is_ipv4() == peer.is_ipv4() && masked(peer, prefix) == net)
    }
}

/// `addr` with the bits past `prefix` cleared.
fn masked(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let keep = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & keep).into())
        }
        IpAddr::V6(a) => {
            let keep = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & keep).into())
        }
    }
}

/// Where the client of one request reaches the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin<'a> {
    /// `http.host`, without a trailing `/`.
    Configured(&'a str),
    /// What a trusted proxy forwarded (a field it did not forward is the request's own).
    Forwarded {
        scheme: &'static str,
        authority: Cow<'a, str>,
    },
    /// The request's own `Host` (when valid) and the listener's scheme.
    Direct {
        scheme: &'static str,
        authority: Option<&'a str>,
    },
}

impl Origin<'_> {
    /// `scheme://authority` (or `http.host`); empty when the request did not say where it went.
    pub fn base_url(&self) -> String {
        match self {
            Origin::Configured(host) => (*host).to_string(),
            Origin::Forwarded { scheme, authority } => format!("{scheme}://{authority}"),
            Origin::Direct {
                scheme,
                authority: Some(authority),
            } => format!("{scheme}://{authority}"),
            Origin::Direct {
                authority: None, ..
            } => String::new(),
        }
    }

    /// The base of `Location` and `Link` URLs: absolute when configured or forwarded, empty
    /// otherwise (a path resolves against the URL the client used, which is the request's own
    /// origin already), and always empty with `http.relativeurls`.
    pub fn link_base(&self, relative_urls: bool) -> Cow<'_, str> {
        match self {
            _ if relative_urls => Cow::Borrowed(""),
            Origin::Direct { .. } => Cow::Borrowed(""),
            Origin::Configured(host) => Cow::Borrowed(host),
            other => Cow::Owned(other.base_url()),
        }
    }

    /// The host the client asked for, as forwarded or its own (`http.host` aside).
    pub fn request_authority(&self) -> Option<&str> {
        match self {
            Origin::Configured(_) => None,
            Origin::Forwarded { authority, .. } => Some(authority),
            Origin::Direct { authority, .. } => *authority,
        }
    }

    /// The scheme a trusted proxy forwarded, if one did.
    pub fn forwarded_scheme(&self) -> Option<&'static str> {
        match self {
            Origin::Forwarded { scheme, .. } => Some(scheme),
            _ => None,
        }
    }
}

/// The origin of the request whose head is `parts`, under `settings`.
pub fn resolve<'a>(settings: &'a EdgeSettings, parts: &'a Parts) -> Origin<'a> {
    match &settings.host {
        Some(host) => Origin::Configured(host.trim_end_matches('/')),
        None => resolve_request(settings, parts),
    }
}

/// Where the request says it went, `http.host` aside: forwarded by a trusted proxy, or its own
/// `Host` and the listener's scheme. Never [`Origin::Configured`].
pub fn resolve_request<'a>(settings: &'a EdgeSettings, parts: &'a Parts) -> Origin<'a> {
    let own_scheme = if settings.tls { "https" } else { "http" };
    let own_authority = header_value(&parts.headers, header::HOST)
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .and_then(authority);
    let peer = parts
        .extensions
        .get::<ConnectInfo<PeerAddr>>()
        .map(|c| c.0 .0.ip());
    let trusted = peer.is_some_and(|p| settings.trusted_proxies.contains(p));
    if !trusted {
        return Origin::Direct {
            scheme: own_scheme,
            authority: own_authority,
        };
    }
    let forwarded = header_value(&parts.headers, header::FORWARDED)
        .map(first_forwarded_element)
        .unwrap_or_default();
    let scheme = first_list_value(&parts.headers, X_FORWARDED_PROTO)
        .and_then(scheme)
        .or_else(|| forwarded.proto.as_deref().and_then(scheme));
    let host = first_list_value(&parts.headers, X_FORWARDED_HOST)
        .and_then(authority)
        .map(Cow::Borrowed)
        .or_else(|| {
            forwarded
                .host
                .as_deref()
                .and_then(authority)
                .map(|h| Cow::Owned(h.to_string()))
        });
    match (scheme, host, own_authority) {
        (None, None, _) => Origin::Direct {
            scheme: own_scheme,
            authority: own_authority,
        },
        (scheme, Some(authority), _) => Origin::Forwarded {
            scheme: scheme.unwrap_or(own_scheme),
            authority,
        },
        (Some(scheme), None, Some(own)) => Origin::Forwarded {
            scheme,
            authority: Cow::Borrowed(own),
        },
        (Some(scheme), None, None) => Origin::Direct {
            scheme,
            authority: None,
        },
    }
}

fn header_value(headers: &HeaderMap, name: HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The first value of a comma-separated header (`X-Forwarded-Host: a, b` → `a`): the one the
/// proxy nearest the client wrote.
fn first_list_value(headers: &HeaderMap, name: HeaderName) -> Option<&str> {
    header_value(headers, name)
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// `http` or `https` (any letter case), as the scheme of a URL the edge writes.
fn scheme(value: &str) -> Option<&'static str> {
    match value.trim() {
        v if v.eq_ignore_ascii_case("https") => Some("https"),
        v if v.eq_ignore_ascii_case("http") => Some("http"),
        _ => None,
    }
}

/// `value` when it is a bare authority: a host name, an IPv4 address or a bracketed IPv6
/// address, then optionally `:port`. Anything else (user info, a path, spaces, percent escapes,
/// an empty host) is refused, so that nothing a client wrote can bend the URL it is put in.
fn authority(value: &str) -> Option<&str> {
    let value = value.trim();
    if value.is_empty() || value.len() > 261 {
        return None;
    }
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        ip.parse::<std::net::Ipv6Addr>().ok()?;
        match after {
            "" => (value, None),
            p => (value, Some(p.strip_prefix(':')?)),
        }
    } else {
        match value.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (value, None),
        }
    };
    let host_ok = host.starts_with('[')
        || (!host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')));
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok()
    });
    (host_ok && port_ok).then_some(value)
}

/// `proto` and `host` of the first element of a `Forwarded` header (RFC 7239).
#[derive(Debug, Default, PartialEq, Eq)]
struct ForwardedElement {
    proto: Option<String>,
    host: Option<String>,
}

/// Parses the first element of `Forwarded: for=..;proto=https;host=a.example, for=..`: pairs
/// separated by `;` up to the first `,` outside a quoted string; names in any letter case;
/// values are tokens or quoted strings (with `\` escapes). A malformed pair ends the element.
fn first_forwarded_element(value: &str) -> ForwardedElement {
    let mut element = ForwardedElement::default();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        let Some((name, after)) = rest.split_once('=') else {
            break;
        };
        let name = name.trim();
        let after = after.trim_start();
        let (val, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, escaped)) => out.push(escaped),
                        None => break,
                    },
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => out.push(c),
                }
            }
            let Some(end) = end else { break };
            (out, &quoted[end..])
        } else {
            let end = after.find([';', ',']).unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        if name.eq_ignore_ascii_case("proto") && element.proto.is_none() {
            element.proto = Some(val);
        } else if name.eq_ignore_ascii_case("host") && element.host.is_none() {
            element.host = Some(val);
        }
        let remaining = remaining.trim_start();
        if remaining.is_empty() || remaining.starts_with(',') {
            break;
        }
        if !remaining.starts_with(';') {
            break;
        }
        rest = remaining;
    }
    element
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use std::net::SocketAddr;

    fn proxies(list: &[(&str, u8)]) -> TrustedProxies {
        TrustedProxies::new(list.iter().map(|(a, p)| (a.parse().unwrap(), *p)))
    }

    fn parts(peer: Option<&str>, headers: &[(&str, &str)]) -> Parts {
        let mut req = Request::builder().uri("/v2/");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let (mut parts, _) = req.body(()).unwrap().into_parts();
        if let Some(peer) = peer {
            let addr: SocketAddr = peer.parse().unwrap();
            parts.extensions.insert(ConnectInfo(PeerAddr(addr)));
        }
        parts
    }

    fn settings(trusted: &[(&str, u8)]) -> EdgeSettings {
        EdgeSettings {
            trusted_proxies: proxies(trusted),
            ..EdgeSettings::default()
        }
    }

    #[test]
    fn membership() {
        let p = proxies(&[("10.1.0.0", 16), ("2001:db8:aa00::", 40), ("127.0.0.1", 32)]);
        for inside in [
            "10.1.0.0",
            "10.1.255.255",
            "::ffff:10.1.2.3",
            "2001:db8:aaff::1",
            "127.0.0.1",
        ] {
            assert!(p.contains(inside.parse().unwrap()), "{inside}");
        }
        for outside in [
            "10.2.0.1",
            "11.1.0.1",
            "127.0.0.2",
            "2001:db8:ab00::1",
            "::1",
            "::ffff:10.2.0.1",
        ] {
            assert!(!p.contains(outside.parse().unwrap()), "{outside}");
        }
        let all4 = proxies(&[("0.0.0.0", 0)]);
        assert!(all4.contains("203.0.113.9".parse().unwrap()));
        assert!(
            !all4.contains("2001:db8::1".parse().unwrap()),
            "families never match"
        );
        assert!(!TrustedProxies::default().contains("127.0.0.1".parse().unwrap()));
        assert!(proxies(&[("::1", 128)]).contains("::1".parse().unwrap()));
    }

    #[test]
    fn authorities() {
        for ok in [
            "registry.example",
            "registry.example:443",
            "10.0.0.1:5000",
            "[::1]",
            "[2001:db8::1]:8443",
            "a_b.internal",
        ] {
            assert_eq!(authority(ok), Some(ok), "{ok}");
        }
        for bad in [
            "",
            ":443",
            "user@evil.example",
            "evil.example/path",
            "evil.example?x",
            "evil.example#f",
            "evil example",
            "evil.example:",
            "evil.example:99999",
            "evil.example:80:80",
            "[::1",
            "[evil]:80",
            "[::1]x",
            "ev%69l.example",
            "evil.example\\",
            "http://evil.example",
        ] {
            assert_eq!(authority(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn forwarded_header_elements() {
        let e = first_forwarded_element(
            "for=192.0.2.60;proto=https;host=reg.example, for=1.2.3.4;host=evil",
        );
        assert_eq!(e.proto.as_deref(), Some("https"));
        assert_eq!(e.host.as_deref(), Some("reg.example"));
        let e = first_forwarded_element(
            r#"For="[2001:db8::1]:4711"; Host="reg.example:8443";PROTO=http"#,
        );
        assert_eq!(e.host.as_deref(), Some("reg.example:8443"));
        assert_eq!(e.proto.as_deref(), Some("http"));
        // Only the first element counts.
        let e = first_forwarded_element("for=1.2.3.4, host=evil.example;proto=http");
        assert_eq!(e, ForwardedElement::default());
        let e = first_forwarded_element(r#"host="a,b";proto=https"#);
        assert_eq!(e.host.as_deref(), Some("a,b"));
        assert_eq!(e.proto.as_deref(), Some("https"));
        assert_eq!(
            first_forwarded_element(r#"host="unterminated"#),
            ForwardedElement::default()
        );
        assert_eq!(first_forwarded_element(""), ForwardedElement::default());
    }

    #[test]
    fn only_trusted_peers_are_believed() {
        let forwarded = [
            ("host", "internal:5000"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "reg.example, evil.example"),
        ];
        let s = settings(&[("127.0.0.1", 32)]);

        let p = parts(Some("127.0.0.1:4000"), &forwarded);
        assert_eq!(
            resolve(&s, &p),
            Origin::Forwarded {
                scheme: "https",
                authority: "reg.example".into()
            }
        );

        for peer in [Some("127.0.0.2:4000"), Some("[::1]:4000"), None] {
            let p = parts(peer, &forwarded);
            let o = resolve(&s, &p);
            assert_eq!(
                o,
                Origin::Direct {
                    scheme: "http",
                    authority: Some("internal:5000")
                },
                "{peer:?}"
            );
            assert_eq!(o.link_base(false), "", "{peer:?}");
            assert_eq!(o.base_url(), "http://internal:5000");
        }

        // Nobody is trusted by default.
        let p = parts(Some("127.0.0.1:4000"), &forwarded);
        assert!(matches!(
            resolve(&EdgeSettings::default(), &p),
            Origin::Direct { .. }
        ));

        // `http.host` wins over everything.
        let configured = EdgeSettings {
            host: Some("https://configured.example/".into()),
            ..s.clone()
        };
        let o = resolve(&configured, &p);
        assert_eq!(o, Origin::Configured("https://configured.example"));
        assert_eq!(o.link_base(false), "https://configured.example");
        assert_eq!(o.link_base(true), "");
    }

    #[test]
    fn forwarded_values_are_checked_field_by_field() {
        let s = settings(&[("10.0.0.0", 8)]);
        let peer = Some("10.9.9.9:1");
        let case = |headers: &[(&str, &str)]| resolve(&s, &parts(peer, headers)).base_url();

        assert_eq!(
            case(&[("host", "own"), ("x-forwarded-proto", "https")]),
            "https://own"
        );
        assert_eq!(
            case(&[("host", "own"), ("x-forwarded-host", "fwd:8443")]),
            "http://fwd:8443"
        );
        assert_eq!(
            case(&[("host", "own"), ("x-forwarded-proto", "HTTPS")]),
            "https://own"
        );
        // A bad value is dropped and the request's own used instead.
        assert_eq!(
            case(&[("host", "own"), ("x-forwarded-proto", "javascript")]),
            "http://own"
        );
        assert_eq!(
            case(&[
                ("host", "own"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "u@evil.example")
            ]),
            "https://own"
        );
        assert_eq!(
            case(&[("host", "own"), ("x-forwarded-host", "evil.example/x")]),
            "http://own"
        );
        // RFC 7239 when the X- headers are absent; the X- headers win when both are sent.
        assert_eq!(
            case(&[
                ("host", "own"),
                ("forwarded", "for=1.2.3.4;proto=https;host=\"reg.example\"")
            ]),
            "https://reg.example"
        );
        assert_eq!(
            case(&[
                ("host", "own"),
                ("forwarded", "proto=http;host=other.example"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "reg.example"),
            ]),
            "https://reg.example"
        );
        assert_eq!(
            case(&[("host", "own"), ("forwarded", "host=\"a b\"")]),
            "http://own"
        );
        // A trusted peer that forwards nothing is a direct request.
        let p = parts(peer, &[("host", "own")]);
        assert_eq!(
            resolve(&s, &p),
            Origin::Direct {
                scheme: "http",
                authority: Some("own")
            }
        );
        // A Host that is no authority is not used.
        let p = parts(Some("192.0.2.1:1"), &[("host", "a@b")]);
        assert_eq!(resolve(&s, &p).base_url(), "");
    }

    #[test]
    fn the_listener_scheme_applies_when_nothing_is_forwarded() {
        let s = EdgeSettings {
            tls: true,
            ..EdgeSettings::default()
        };
        let p = parts(
            Some("192.0.2.1:1"),
            &[("host", "reg.example"), ("x-forwarded-proto", "http")],
        );
        assert_eq!(resolve(&s, &p).base_url(), "https://reg.example");
    }
}
