//! The client key (SPEC §2): read from the configured cookie or header, and the cookie upgate issues.

use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue};

use crate::config::{Identity as Settings, IdentitySource};
use crate::signing::Secret;

/// Who a request is, as far as handles are concerned.
#[derive(Debug, Clone, Default)]
pub struct ClientIdentity {
    /// The client key; `None` when the request has no identity.
    pub key: Option<String>,
}

/// The value of the cookie `name` in the request's `Cookie` fields (RFC 6265 §5.4), first one wins.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// The value a response sets for cookie `name` (`Set-Cookie: name=value; ...`), if it sets one that is not a deletion.
pub fn set_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next()?.trim().split_once('='))
        .filter(|(k, v)| *k == name && !v.is_empty())
        .map(|(_, v)| v.trim_matches('"'))
        .next_back()
}

/// The identity value of a request per `identity.from`; an issued cookie counts only if its signature holds.
pub fn identity_value(headers: &HeaderMap, settings: &Settings, secret: &Secret) -> Option<String> {
    match &settings.source {
        IdentitySource::Cookie(name) => cookie(headers, name)
            .filter(|v| !settings.issue_cookie || secret.verify_cookie_value(v))
            .map(str::to_string),
        IdentitySource::Header(name) => headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string),
    }
}

/// The `Set-Cookie` field for an issued identity cookie.
pub fn issued_cookie(name: &str, value: &str, tls: bool) -> Option<HeaderValue> {
    let secure = if tls { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; HttpOnly; SameSite=Lax; Path=/{secure}"
    ))
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: http::HeaderName, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(name.clone(), HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn cookie_lookup() {
        let h = headers(COOKIE, &["a=1; sessionid=abc", "sessionid=later"]);
        assert_eq!(cookie(&h, "sessionid"), Some("abc"));
        assert_eq!(cookie(&h, "a"), Some("1"));
        assert_eq!(cookie(&h, "session"), None);
        assert_eq!(cookie(&headers(COOKIE, &["x=\"q\""]), "x"), Some("q"));
    }

    #[test]
    fn set_cookie_lookup_ignores_deletions() {
        let h = headers(
            SET_COOKIE,
            &["sessionid=new1; Path=/; HttpOnly", "csrftoken=z"],
        );
        assert_eq!(set_cookie(&h, "sessionid"), Some("new1"));
        let h = headers(
            SET_COOKIE,
            &["sessionid=; expires=Thu, 01 Jan 1970 00:00:00 GMT"],
        );
        assert_eq!(set_cookie(&h, "sessionid"), None);
    }

    #[test]
    fn issued_cookie_attributes() {
        let v = issued_cookie("upgate_client", "abc.def", true).expect("value");
        assert_eq!(
            v,
            "upgate_client=abc.def; HttpOnly; SameSite=Lax; Path=/; Secure"
        );
        let v = issued_cookie("upgate_client", "abc.def", false).expect("value");
        assert!(!v.to_str().expect("ascii").contains("Secure"));
    }
}
