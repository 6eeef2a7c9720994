//! Upstream response directives (SPEC §3): parsing and validating `X-Upgate-Register` and `X-Upgate-Revoke`.

use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{FORMAT_NAMES, parse_size};
use crate::db::Limits;

pub const X_UPGATE_REGISTER: HeaderName = HeaderName::from_static("x-upgate-register");
pub const X_UPGATE_REVOKE: HeaderName = HeaderName::from_static("x-upgate-revoke");

/// The longest session token accepted, in bytes.
pub const MAX_TOKEN: usize = 256;

/// A parsed `X-Upgate-Register`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Register {
    pub token: String,
    pub limits: Limits,
}

/// The canonical header value: `<token>[; accept=a,b][; max-bytes=N][; max-files=N]`, sizes in
/// plain bytes. [`register`] reads it back to the same value (the fuzz target and a property test
/// hold it to that).
impl fmt::Display for Register {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.token)?;
        if let Some(accept) = &self.limits.accept {
            write!(f, "; accept={}", accept.join(","))?;
        }
        if let Some(n) = self.limits.max_bytes {
            write!(f, "; max-bytes={n}")?;
        }
        if let Some(n) = self.limits.max_files {
            write!(f, "; max-files={n}")?;
        }
        Ok(())
    }
}

/// A session token: 1..=256 bytes of visible ASCII (SPEC §3).
pub fn token(raw: &str) -> Result<String, String> {
    let t = raw.trim_matches([' ', '\t']);
    if t.is_empty() {
        return Err("empty token".into());
    }
    if t.len() > MAX_TOKEN {
        return Err(format!("token of {} bytes (at most {MAX_TOKEN})", t.len()));
    }
    if !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("token has characters other than visible ASCII".into());
    }
    Ok(t.to_string())
}

/// Parses `<token>[; accept=pdf,png][; max-bytes=10MiB][; max-files=20]`.
pub fn register(value: &str) -> Result<Register, String> {
    let mut parts = value.split(';');
    let token = token(parts.next().unwrap_or(""))?;
    let mut limits = Limits::default();
    for param in parts {
        let (key, val) = param
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
            .ok_or_else(|| format!("parameter {:?} is not key=value", param.trim()))?;
        match key.to_ascii_lowercase().as_str() {
            "accept" if limits.accept.is_none() => limits.accept = Some(accept(val)?),
            "max-bytes" if limits.max_bytes.is_none() => {
                limits.max_bytes = Some(
                    parse_size(val)
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("max-bytes {val:?} is not a size"))?,
                )
            }
            "max-files" if limits.max_files.is_none() => {
                limits.max_files = Some(
                    val.parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("max-files {val:?} is not a positive number"))?,
                )
            }
            "accept" | "max-bytes" | "max-files" => {
                return Err(format!("parameter {key} given twice"));
            }
            _ => return Err(format!("unknown parameter {key:?}")),
        }
    }
    Ok(Register { token, limits })
}

/// The directives of one upstream response, removed from its headers.
#[derive(Debug, Default)]
pub struct Found {
    pub revoke: Vec<String>,
    pub register: Option<Register>,
}

/// Takes every `X-Upgate-*` field out of a response (none reaches the client) and parses the directives.
/// At most one registration per response.
pub fn take(headers: &mut HeaderMap) -> Result<Found, String> {
    let text = |v: &HeaderValue| {
        v.to_str()
            .map(str::to_string)
            .map_err(|_| "directive is not ASCII".to_string())
    };
    let revoke = headers
        .get_all(X_UPGATE_REVOKE)
        .iter()
        .map(|v| token(&text(v)?))
        .collect::<Result<Vec<_>, _>>();
    let registers = headers
        .get_all(X_UPGATE_REGISTER)
        .iter()
        .map(|v| register(&text(v)?))
        .collect::<Result<Vec<_>, _>>();
    let ours: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-upgate-"))
        .cloned()
        .collect();
    for name in ours {
        headers.remove(name);
    }
    let mut registers = registers?;
    if registers.len() > 1 {
        return Err("more than one X-Upgate-Register in a response".into());
    }
    Ok(Found {
        revoke: revoke?,
        register: registers.pop(),
    })
}

pub fn accept(list: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for name in list.split(',').map(str::trim) {
        let lower = match name.to_ascii_lowercase().as_str() {
            "jpg" => "jpeg".to_string(),
            other => other.to_string(),
        };
        if !FORMAT_NAMES.contains(&lower.as_str()) {
            return Err(format!("accept names an unknown format {name:?}"));
        }
        if !out.contains(&lower) {
            out.push(lower);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_with_parameters() {
        let r = register("sess-123; accept=pdf, PNG,jpg; max-bytes=10MiB; max-files=20")
            .expect("valid");
        assert_eq!(r.token, "sess-123");
        assert_eq!(
            r.limits.accept,
            Some(vec!["pdf".into(), "png".into(), "jpeg".into()])
        );
        assert_eq!(r.limits.max_bytes, Some(10 << 20));
        assert_eq!(r.limits.max_files, Some(20));
        assert_eq!(register("t").expect("bare").limits, Limits::default());
    }

    #[test]
    fn take_removes_every_upgate_field() {
        let mut h = HeaderMap::new();
        h.append("x-upgate-revoke", HeaderValue::from_static("old1"));
        h.append("x-upgate-revoke", HeaderValue::from_static("old2"));
        h.append(
            "x-upgate-register",
            HeaderValue::from_static("new; max-files=2"),
        );
        h.append("x-upgate-other", HeaderValue::from_static("x"));
        h.append("content-type", HeaderValue::from_static("text/html"));
        let found = take(&mut h).expect("valid");
        assert_eq!(found.revoke, ["old1", "old2"]);
        assert_eq!(found.register.expect("register").limits.max_files, Some(2));
        assert_eq!(h.len(), 1);
        let mut h = HeaderMap::new();
        h.append("x-upgate-register", HeaderValue::from_static("a"));
        h.append("x-upgate-register", HeaderValue::from_static("b"));
        assert!(take(&mut h).is_err());
        assert!(h.is_empty(), "removed even when refused");
    }

    #[test]
    fn malformed_registers_are_refused() {
        for bad in [
            "",
            " ; accept=pdf",
            "a b",
            "tök",
            &"x".repeat(257),
            "t; accept=exe",
            "t; max-bytes=lots",
            "t; max-bytes=0",
            "t; max-files=-1",
            "t; max-files=0",
            "t; colour=blue",
            "t; accept",
            "t; max-files=1; max-files=2",
        ] {
            assert!(register(bad).is_err(), "{bad:?}");
        }
        assert!(register(&"x".repeat(256)).is_ok());
    }

    #[test]
    fn display_is_the_canonical_spelling() {
        let r = register("sess-123;ACCEPT = pdf, PNG,jpg ; max-bytes=10MiB; max-files=+20")
            .expect("valid");
        assert_eq!(
            r.to_string(),
            "sess-123; accept=pdf,png,jpeg; max-bytes=10485760; max-files=20"
        );
        assert_eq!(register("t").expect("bare").to_string(), "t");
    }

    /// Random register values, valid and not: whatever parses renders back to itself.
    #[test]
    fn property_a_parsed_register_round_trips() {
        const TOKEN: &[&str] = &["s", "-", "=", ",", "x9", "~", " ", "\t", "é", "\\"];
        const PARAMS: &[&str] = &[
            "; accept=pdf",
            "; accept = PNG, jpg,pdf",
            "; accept=zip,zip",
            "; accept=exe",
            "; accept=",
            "; max-bytes=10MiB",
            "; MAX-BYTES= 1 KiB ",
            "; max-bytes=0",
            "; max-bytes=18446744073709551615",
            "; max-files=20",
            "; max-files=+3",
            "; max-files=-1",
            "; colour=blue",
            ";",
            "; max-files",
        ];
        let mut rng = crate::testing::XorShift::new(0xD1EC_7173);
        let mut parsed = 0;
        for _ in 0..20_000 {
            let value = rng.string(TOKEN, 4) + &rng.string(PARAMS, 3);
            let Ok(r) = register(&value) else { continue };
            parsed += 1;
            assert!(token(&r.token).is_ok(), "{value:?}");
            assert_eq!(register(&r.to_string()), Ok(r), "{value:?}");
        }
        assert!(parsed > 2_000, "only {parsed} values parsed");
    }
}
