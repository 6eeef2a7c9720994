//! Header hygiene for forwarded requests and responses (SPEC §3): pure functions over `HeaderMap`.

use std::net::IpAddr;

use http::header::{CONNECTION, HOST, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop fields a proxy never forwards (RFC 9110 §7.6.1, plus the obsolete ones still seen in the wild).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_UPGATE_CLIENT: HeaderName = HeaderName::from_static("x-upgate-client");
pub const X_UPGATE_SIGNATURE: HeaderName = HeaderName::from_static("x-upgate-signature");
pub const X_UPLOAD_HANDLE: HeaderName = HeaderName::from_static("x-upload-handle");
pub const X_UPLOAD_SESSION: HeaderName = HeaderName::from_static("x-upload-session");

/// Removes hop-by-hop fields, including every field the `Connection` header names (RFC 9110 §7.6.1).
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests carry none, and most responses only `Connection`: one pass over the names
    // finds them, and only the fields present are removed (a removal is a hashed lookup).
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let mut doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    let named = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        // A field this removes anyway (`Connection: keep-alive`, the usual case) is not made
        // into a name: one that is not a standard header would be allocated.
        .filter(|n| !HOP_BY_HOP.iter().any(|h| n.eq_ignore_ascii_case(h)))
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .filter(|n| headers.contains_key(n));
    doomed.extend(named);
    for name in doomed {
        headers.remove(name);
    }
}

/// The protocol a request asks to switch to (RFC 9110 §7.8): `Upgrade`, when `Connection` lists `upgrade`.
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let listed = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if listed {
        headers.get(UPGRADE).cloned()
    } else {
        None
    }
}

/// Puts back the two fields an upgrade needs after [`remove_hop_by_hop`] took them.
pub fn set_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, protocol);
}

/// Whether a client-sent field is upgate's to set: compared case-insensitively and with `_` read as `-`,
/// because some servers (CGI, WSGI) fold the two spellings together.
pub fn is_reserved(name: &HeaderName, trusted_peer: bool) -> bool {
    let name = name.as_str().as_bytes();
    // `_` is read as `-`; names are lowercase already.
    let same = |a: &[u8], b: &[u8]| {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(&x, &y)| x == y || (x == b'_' && y == b'-'))
    };
    let starts = |prefix: &[u8]| name.len() >= prefix.len() && same(&name[..prefix.len()], prefix);
    // All of `X-Upload-*`, not only the two SPEC names: the upstream must be able to trust any
    // field of that family it sees as upgate's.
    let always = starts(b"x-upload-") || starts(b"x-upgate-") || same(name, b"forwarded");
    let unless_trusted =
        starts(b"x-forwarded-") || same(name, b"x-request-id") || same(name, b"x-real-ip");
    always || (unless_trusted && !trusted_peer)
}

/// Removes every reserved field a client sent (see [`is_reserved`]).
pub fn strip_reserved(headers: &mut HeaderMap, trusted_peer: bool) {
    if !headers.keys().any(|n| is_reserved(n, trusted_peer)) {
        return;
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_reserved(n, trusted_peer))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// The original request as the forwarding headers describe it.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub peer: IpAddr,
    pub trusted_peer: bool,
    pub tls: bool,
    /// `Host`, or the `:authority` of an HTTP/2 request.
    pub host: Option<&'a str>,
}

/// Sets `X-Forwarded-For/Proto/Host` as nginx does with `$proxy_add_x_forwarded_for`, `$scheme` and `$host`:
/// a trusted peer's values are kept (its `X-Forwarded-For` appended to), anyone else's were stripped before.
pub fn set_forwarded(headers: &mut HeaderMap, origin: Origin<'_>) {
    let prior: Vec<&str> = if origin.trusted_peer {
        headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    } else {
        Vec::new()
    };
    if prior.is_empty() {
        headers.insert(X_FORWARDED_FOR, peer_value(origin.peer));
    } else if let Ok(v) = HeaderValue::from_str(&format!("{}, {}", prior.join(", "), origin.peer)) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if !(origin.trusted_peer && headers.contains_key(&X_FORWARDED_PROTO)) {
        let proto = if origin.tls { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !(origin.trusted_peer && headers.contains_key(&X_FORWARDED_HOST))
        && let Some(v) = origin.host.and_then(|h| HeaderValue::from_str(h).ok())
    {
        headers.insert(X_FORWARDED_HOST, v);
    }
}

/// A peer's address as a field value. The last one made on this thread is kept: a client
/// sends its requests one after another on the same connection, and formatting an address
/// costs more than comparing one.
fn peer_value(peer: IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((ip, value)) if *ip == peer => value.clone(),
        _ => {
            let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(peer.to_string()))
                .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
            *last = Some((peer, value.clone()));
            value
        }
    })
}

/// The host the client asked for: `Host`, else the request target's authority (HTTP/2).
pub fn request_host<'a>(headers: &'a HeaderMap, uri: &'a http::Uri) -> Option<&'a str> {
    headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

/// A request id a trusted peer sent, if it is sane enough to log and echo (visible ASCII, 1..=200 bytes).
pub fn trusted_request_id(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(&X_REQUEST_ID)?.to_str().ok()?;
    let sane = !v.is_empty() && v.len() <= 200 && v.bytes().all(|b| b.is_ascii_graphic());
    sane.then(|| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_listed_fields_go() {
        let mut h = map(&[
            ("connection", "close, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("accept"));
        // Listed names in any case, hop-by-hop ones among them.
        let mut h = map(&[
            ("connection", "Keep-Alive, X-Secret-Hop ,TE"),
            ("x-secret-hop", "1"),
            ("accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn upgrade_needs_connection_upgrade() {
        let h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(upgrade_protocol(&h).expect("upgrade"), "websocket");
        assert!(upgrade_protocol(&map(&[("upgrade", "websocket")])).is_none());
    }

    #[test]
    fn reserved_names_in_any_case_and_spelling() {
        let mut h = map(&[
            ("X-Upload-Handle", "h"),
            ("x_upload_session", "s"),
            ("X-UPGATE-CLIENT", "c"),
            ("x_upgate_signature", "sig"),
            ("forwarded", "for=1.2.3.4"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x_forwarded_host", "evil"),
            ("x-request-id", "mine"),
            ("x-real-ip", "1.2.3.4"),
            ("x-upload-anything", "x"),
            ("x-uploaded-by", "kept"),
        ]);
        strip_reserved(&mut h, false);
        assert_eq!(
            h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["x-uploaded-by"]
        );
    }

    #[test]
    fn trusted_peer_keeps_forwarding_fields_but_never_upgate_ones() {
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-request-id", "abc"),
            ("x-upgate-client", "forged"),
            ("forwarded", "for=1.2.3.4"),
        ]);
        strip_reserved(&mut h, true);
        assert!(h.contains_key("x-forwarded-for") && h.contains_key("x-request-id"));
        assert!(!h.contains_key("x-upgate-client") && !h.contains_key("forwarded"));
    }

    #[test]
    fn forwarded_for_untrusted_and_trusted() {
        let peer: IpAddr = "10.0.0.9".parse().expect("ip");
        let mut h = HeaderMap::new();
        let origin = Origin {
            peer,
            trusted_peer: false,
            tls: true,
            host: Some("app.test"),
        };
        set_forwarded(&mut h, origin);
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.9");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_FORWARDED_HOST], "app.test");

        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
        ]);
        set_forwarded(
            &mut h,
            Origin {
                trusted_peer: true,
                tls: false,
                ..origin
            },
        );
        assert_eq!(h[&X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 10.0.0.9");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
    }

    #[test]
    fn request_ids_from_trusted_peers_must_be_sane() {
        assert_eq!(
            trusted_request_id(&map(&[("x-request-id", "abc-1")])).as_deref(),
            Some("abc-1")
        );
        assert!(trusted_request_id(&map(&[("x-request-id", "a b")])).is_none());
        assert!(trusted_request_id(&map(&[("x-request-id", &"x".repeat(201))])).is_none());
    }
}
