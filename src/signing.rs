//! Every HMAC-SHA256 of SPEC.md in one place, each verified in constant time.
//!
//! Client keys (§2), `X-Upgate-Signature` (§3), `stored` references (§5), signed URLs (§7)
//! and the issued identity cookie (§2). Each message starts with its own label and a newline (`client\n`, `upstream\n`, `url\n`,
//! `stored\n`, `cookie\n`), so a MAC minted for one purpose is never valid for another.
//! Every verification is constant time: full tags go through [`hmac::verify`]; the truncated
//! MACs of the cookie go through `Secret::ct_eq`, which also rests on `hmac::verify`.
//! Nothing here does I/O except [`Secret::new_cookie_value`], which draws 16 random bytes.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use percent_encoding::percent_decode_str;
use ring::hmac;
use ring::rand::{SecureRandom as _, SystemRandom};

/// Length of a client key and of the cookie's id and MAC parts: 22 b64url characters = 132 bits.
const SHORT_LEN: usize = 22;

/// The gateway's secret key (>= 32 bytes, checked by the caller when the config is loaded).
#[derive(Clone)]
pub struct Secret {
    key: hmac::Key,
}

// Hand-written so that no log line or panic message can ever show the key.
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Why a signed URL was refused; SPEC §7, in the order the checks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlError {
    /// No `sig`, `sig` not last or present twice, not decodable, wrong, or no valid `expires`.
    BadSignature,
    /// `expires` is in the past.
    Expired,
    /// `expires` is further ahead than `max_url_ttl` allows.
    TtlTooLong,
}

impl UrlError {
    /// The `error` code of the JSON body (SPEC §7); the status is 403 for all three.
    pub fn code(self) -> &'static str {
        match self {
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::TtlTooLong => "ttl_too_long",
        }
    }
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl std::error::Error for UrlError {}

/// The parameters of a verified signed URL, everything before `sig`, percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedQuery {
    /// The `expires` parameter, unix seconds.
    pub expires: u64,
    params: Vec<(String, String)>,
    sig: String,
}

impl SignedQuery {
    /// The first value of `key` (e.g. `cb`, `accept`, `max-bytes`, `expires`).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// All parameters before `sig`, in order, percent-decoded.
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The `sig` value as sent: the key a single-use slot is remembered by (SPEC §6).
    pub fn sig(&self) -> &str {
        &self.sig
    }
}

impl Secret {
    /// Wraps the key bytes; the caller has already refused keys under 32 bytes.
    pub fn new(bytes: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    fn mac(&self, parts: &[&[u8]]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        for part in parts {
            ctx.update(part);
        }
        ctx.sign()
    }

    /// Constant-time equality of two byte strings of any length ("double HMAC"): comparing
    /// MACs of both sides with `hmac::verify` leaks nothing an attacker can steer, and needs
    /// no deprecated `ring::constant_time` nor a hand-rolled loop the optimiser might shortcut.
    fn ct_eq(&self, a: &[u8], b: &[u8]) -> bool {
        let tag_b = self.mac(&[b"ct-eq\n", b]);
        let mut msg = Vec::with_capacity(6 + a.len());
        msg.extend_from_slice(b"ct-eq\n");
        msg.extend_from_slice(a);
        hmac::verify(&self.key, &msg, tag_b.as_ref()).is_ok()
    }

    /// SPEC §2: `base64url(HMAC(secret, "client\n" + V))` cut to 22 characters.
    pub fn client_key(&self, identity_value: &str) -> String {
        let mut key = b64(self.mac(&[b"client\n", identity_value.as_bytes()]).as_ref());
        key.truncate(SHORT_LEN);
        key
    }

    /// SPEC §3 `X-Upgate-Signature`:
    /// `t=<unix>,v1=<hex HMAC(secret, "upstream\n"+t+"\n"+method+"\n"+path_and_query+"\n"+client+"\n"+session)>`;
    /// `client` and `session` are `""` when the request has none.
    pub fn upstream_signature(
        &self,
        unix: u64,
        method: &str,
        path_and_query: &str,
        client: &str,
        session: &str,
    ) -> String {
        // Every proxied request signs: the numbers written by hand, not by the formatting machinery.
        let mut decimal = [0u8; 20];
        let t = crate::access::decimal(unix, &mut decimal);
        // The parts of `upstream_message`, fed to the MAC without joining them first.
        let tag = self.mac(&[
            b"upstream\n",
            t.as_bytes(),
            b"\n",
            method.as_bytes(),
            b"\n",
            path_and_query.as_bytes(),
            b"\n",
            client.as_bytes(),
            b"\n",
            session.as_bytes(),
        ]);
        let mut header = String::with_capacity(t.len() + 6 + 64);
        header.push_str("t=");
        header.push_str(t);
        header.push_str(",v1=");
        let mut hex = [0u8; 64];
        if hex::encode_to_slice(tag.as_ref(), &mut hex).is_ok() {
            header.push_str(std::str::from_utf8(&hex).unwrap_or_default());
        }
        header
    }

    /// The upstream's side of SPEC §3 (for the demo upstream and the tests): true when
    /// `header` is a valid `X-Upgate-Signature` for this request and its `t` is within
    /// `max_skew_secs` of `now` in either direction.
    #[allow(clippy::too_many_arguments)] // one argument per signed field, plus the clock
    #[must_use = "a verification whose result is ignored lets everything through"]
    pub fn verify_upstream_signature(
        &self,
        header: &str,
        method: &str,
        path_and_query: &str,
        client: &str,
        session: &str,
        now: u64,
        max_skew_secs: u64,
    ) -> bool {
        let Some((t, v1)) = header.split_once(',') else {
            return false;
        };
        let (Some(t), Some(v1)) = (t.strip_prefix("t="), v1.strip_prefix("v1=")) else {
            return false;
        };
        let (Some(unix), Ok(tag)) = (parse_digits(t), hex::decode(v1)) else {
            return false;
        };
        // `t` as sent goes into the message, so only the signer's exact spelling verifies.
        let msg = upstream_message(t, method, path_and_query, client, session);
        hmac::verify(&self.key, msg.as_bytes(), &tag).is_ok() && now.abs_diff(unix) <= max_skew_secs
    }

    /// SPEC §7: `sig = b64url(HMAC(secret, "url\n" + METHOD + "\n" + PATH + "\n" + QUERY))`,
    /// PATH as sent (percent-encoded), QUERY the raw query before `&sig=`.
    pub fn url_sig(&self, method: &str, path: &str, query: &str) -> String {
        let msg = url_message(method, path, query);
        b64(hmac::sign(&self.key, msg.as_bytes()).as_ref())
    }

    /// A signed path-absolute URL (SPEC §7): `path?<params>&expires=<unix>&sig=<sig>`.
    ///
    /// `path` must already be percent-encoded as it will be sent; `params` is an already
    /// percent-encoded query without `?`, `expires` or `sig` (may be empty). `expires` goes
    /// last before `sig`, e.g. `/files/ID/a.pdf?expires=1790000000&sig=...`.
    pub fn sign_url(&self, method: &str, path: &str, params: &str, expires: u64) -> String {
        let query = if params.is_empty() {
            format!("expires={expires}")
        } else {
            format!("{params}&expires={expires}")
        };
        let sig = self.url_sig(method, path, &query);
        format!("{path}?{query}&sig={sig}")
    }

    /// Verifies a signed URL, SPEC §7, checks in order: `bad_signature`, `expired`, `ttl_too_long`.
    ///
    /// `path` is exactly as sent (still percent-encoded); `raw_query` the raw query string.
    /// `sig` must be the last parameter and appear once; the signature is checked (constant
    /// time) before anything in the query is trusted. A missing, repeated or unparsable
    /// `expires` is `bad_signature`. `expires == now` is still valid. A `HEAD` request is
    /// accepted with a `HEAD` or a `GET` signature; methods are compared case-sensitively,
    /// as HTTP defines them.
    ///
    /// Parameters are decoded as `application/x-www-form-urlencoded` (WHATWG URL, as Python's
    /// `urlencode`/`parse_qs` and the browser's `URLSearchParams` do): `+` is a space, `%XX`
    /// a byte, invalid UTF-8 becomes U+FFFD, empty pieces (`a=1&&b=2`) are skipped. The
    /// signature covers the raw bytes, so decoding choices cannot widen what was signed.
    ///
    /// # Errors
    ///
    /// The first failed check, as a [`UrlError`]; its [`UrlError::code`] is the JSON `error`.
    pub fn verify_url(
        &self,
        method: &str,
        path: &str,
        raw_query: Option<&str>,
        now: u64,
        max_ttl_secs: u64,
    ) -> Result<SignedQuery, UrlError> {
        let (signed, sig, expires) = self.check_url(method, path, raw_query, now, max_ttl_secs)?;
        Ok(SignedQuery {
            expires,
            params: parse_form(signed),
            sig: sig.to_owned(),
        })
    }

    /// [`Secret::verify_url`] for a caller that needs none of the parameters (the file
    /// routes): the same checks in the same order, and the `expires` of a valid URL.
    ///
    /// # Errors
    ///
    /// As [`Secret::verify_url`].
    pub fn verify_url_expiry(
        &self,
        method: &str,
        path: &str,
        raw_query: Option<&str>,
        now: u64,
        max_ttl_secs: u64,
    ) -> Result<u64, UrlError> {
        let (_, _, expires) = self.check_url(method, path, raw_query, now, max_ttl_secs)?;
        Ok(expires)
    }

    /// SPEC §7's checks: (the signed part of the query, `sig` as sent, `expires`). Nothing is
    /// decoded into new strings: keys and `expires` are compared as they decode.
    fn check_url<'q>(
        &self,
        method: &str,
        path: &str,
        raw_query: Option<&'q str>,
        now: u64,
        max_ttl_secs: u64,
    ) -> Result<(&'q str, &'q str, u64), UrlError> {
        let raw = raw_query.ok_or(UrlError::BadSignature)?;
        let (signed, sig) = split_sig(raw).ok_or(UrlError::BadSignature)?;
        // A SHA-256 tag is 32 bytes; a longer sig could not match anyway.
        let mut tag = [0u8; 64];
        let len = URL_SAFE_NO_PAD
            .decode_slice(sig, &mut tag)
            .map_err(|_| UrlError::BadSignature)?;
        let tag = tag.get(..len).ok_or(UrlError::BadSignature)?;
        let ok = |m: &str| {
            let msg = url_message(m, path, signed);
            hmac::verify(&self.key, msg.as_bytes(), tag).is_ok()
        };
        if !(ok(method) || (method == "HEAD" && ok("GET"))) {
            return Err(UrlError::BadSignature);
        }
        let expires = single_expires(signed).ok_or(UrlError::BadSignature)?;
        if expires < now {
            return Err(UrlError::Expired);
        }
        if expires > now.saturating_add(max_ttl_secs) {
            return Err(UrlError::TtlTooLong);
        }
        Ok((signed, sig, expires))
    }

    /// SPEC §5 `stored`: `<id>.<b64url(name)>.<b64url(HMAC(secret, "stored\n" + id + "\n" + name))>`.
    pub fn stored_ref(&self, id: &str, name: &str) -> String {
        let tag = self.mac(&[b"stored\n", id.as_bytes(), b"\n", name.as_bytes()]);
        format!("{id}.{}.{}", b64(name.as_bytes()), b64(tag.as_ref()))
    }

    /// Checks a SPEC §5 `stored` reference; `Some((id, name))` when it is genuine.
    ///
    /// Split from the right, since neither b64url part can contain a `.`.
    #[must_use = "a verification whose result is ignored lets everything through"]
    pub fn verify_stored_ref(&self, r: &str) -> Option<(String, String)> {
        let mut parts = r.rsplitn(3, '.');
        let (tag, name, id) = (parts.next()?, parts.next()?, parts.next()?);
        let name = String::from_utf8(URL_SAFE_NO_PAD.decode(name).ok()?).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let msg = ["stored\n", id, "\n", &name].concat();
        hmac::verify(&self.key, msg.as_bytes(), &tag).ok()?;
        Some((id.to_owned(), name))
    }

    /// A fresh identity cookie value (SPEC §2 "a signed random id"), from 16 bytes of
    /// `SystemRandom`; see [`Secret::cookie_value_for_id`] for the format.
    ///
    /// # Errors
    ///
    /// Only if the operating system cannot supply randomness; the caller answers 500
    /// rather than issuing a guessable id.
    pub fn new_cookie_value(&self) -> Result<String, ring::error::Unspecified> {
        let mut id = [0u8; 16];
        SystemRandom::new().fill(&mut id)?;
        Ok(self.cookie_value_for_id(&id))
    }

    /// The cookie value for a given random id:
    /// `<b64url(id), 22 chars>.<b64url(HMAC(secret, "cookie\n" + b64url(id))) cut to 22>`.
    pub fn cookie_value_for_id(&self, id: &[u8; 16]) -> String {
        let id = b64(id);
        let mac = self.cookie_mac(&id);
        format!("{id}.{mac}")
    }

    fn cookie_mac(&self, id: &str) -> String {
        let mut mac = b64(self.mac(&[b"cookie\n", id.as_bytes()]).as_ref());
        mac.truncate(SHORT_LEN);
        mac
    }

    /// True when `v` is a cookie value this secret issued (constant-time MAC check).
    #[must_use = "a verification whose result is ignored lets everything through"]
    pub fn verify_cookie_value(&self, v: &str) -> bool {
        let Some((id, mac)) = v.split_once('.') else {
            return false;
        };
        // The id must be exactly what cookie_value_for_id produces, so one id has one value.
        let id_ok = id.len() == SHORT_LEN
            && URL_SAFE_NO_PAD
                .decode(id)
                .is_ok_and(|bytes| bytes.len() == 16);
        id_ok
            && mac.len() == SHORT_LEN
            && self.ct_eq(self.cookie_mac(id).as_bytes(), mac.as_bytes())
    }
}

/// SPEC §3: the message of `X-Upgate-Signature`.
fn upstream_message(t: &str, method: &str, pq: &str, client: &str, session: &str) -> String {
    [
        "upstream\n",
        t,
        "\n",
        method,
        "\n",
        pq,
        "\n",
        client,
        "\n",
        session,
    ]
    .concat()
}

/// SPEC §7: the message of a signed URL.
fn url_message(method: &str, path: &str, query: &str) -> String {
    ["url\n", method, "\n", path, "\n", query].concat()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Splits a raw query into (the signed part, the `sig` value); `None` unless `sig` is the
/// last parameter and appears nowhere before it (also not as `%73ig`).
fn split_sig(raw: &str) -> Option<(&str, &str)> {
    let (signed, last) = raw.rsplit_once('&').unwrap_or(("", raw));
    let sig = last.strip_prefix("sig=")?;
    let sig_before = form_pieces(signed).any(|(k, _)| form_is(k, "sig"));
    (!sig_before).then_some((signed, sig))
}

/// `application/x-www-form-urlencoded` parsing (WHATWG URL §5.1): `+` is a space.
fn parse_form(query: &str) -> Vec<(String, String)> {
    form_pieces(query)
        .map(|(k, v)| (form_decode(k), form_decode(v)))
        .collect()
}

/// The raw (key, value) pairs of a query, empty pieces skipped, as [`parse_form`] sees them.
fn form_pieces(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| piece.split_once('=').unwrap_or((piece, "")))
}

fn form_decode(s: &str) -> String {
    let spaced = s.replace('+', " ");
    percent_decode_str(&spaced).decode_utf8_lossy().into_owned()
}

/// The bytes [`form_decode`] decodes `s` to, before its UTF-8 check: `+` a space, `%XX` a
/// byte, any other `%` itself.
fn form_bytes(s: &str) -> impl Iterator<Item = u8> + '_ {
    let mut rest = s.as_bytes();
    std::iter::from_fn(move || {
        let (&b, after) = rest.split_first()?;
        rest = after;
        if b == b'+' {
            return Some(b' ');
        }
        if b == b'%'
            && let [h, l, after @ ..] = rest
            && let (Some(h), Some(l)) = (hex_value(*h), hex_value(*l))
        {
            rest = after;
            return Some(h << 4 | l);
        }
        Some(b)
    })
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Whether `raw` form-decodes to `ascii`. Comparing bytes is exact here: a byte outside
/// ASCII (or invalid UTF-8, which [`form_decode`] makes U+FFFD) never equals an ASCII name.
fn form_is(raw: &str, ascii: &str) -> bool {
    form_bytes(raw).eq(ascii.bytes())
}

/// The one `expires` parameter of a raw query; a second one would let two readers disagree
/// on the lifetime.
fn single_expires(query: &str) -> Option<u64> {
    let mut values = form_pieces(query).filter(|(k, _)| form_is(k, "expires"));
    let (_, first) = values.next()?;
    if values.next().is_some() {
        return None;
    }
    form_digits(first)
}

/// What [`parse_digits`] makes of [`form_decode`]`(raw)`, without the string.
fn form_digits(raw: &str) -> Option<u64> {
    let mut n: Option<u64> = None;
    for b in form_bytes(raw) {
        if !b.is_ascii_digit() {
            return None;
        }
        let digit = u64::from(b - b'0');
        n = Some(n.unwrap_or(0).checked_mul(10)?.checked_add(digit)?);
    }
    n
}

/// ASCII digits only: `str::parse::<u64>` would also take a leading `+`.
fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;
    use crate::testing::XorShift;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const ID: &str = "0b6e2f5e-7c1a-4c1b-9d1e-3f2a1b0c9d8e";
    const PATH: &str = "/files/0b6e2f5e-7c1a-4c1b-9d1e-3f2a1b0c9d8e/a.pdf";
    const NOW: u64 = 1_789_999_000;
    const TTL: u64 = 3600;

    fn secret() -> Secret {
        Secret::new(KEY)
    }

    // Fixed vectors computed independently with Python's hmac module (see the README).

    #[test]
    fn vector_client_key() {
        assert_eq!(secret().client_key("alice"), "n6h0HL_nmSvc0lmrNNPn52");
    }

    #[test]
    fn vector_upstream_signature() {
        assert_eq!(
            secret().upstream_signature(
                1_790_000_000,
                "POST",
                "/upload?x=1",
                "CLIENTKEY",
                "tok123"
            ),
            "t=1790000000,v1=93a09deb18fc2601850fd5e8e439193a4d3fd47421096f534baa25602cf7240e"
        );
    }

    #[test]
    fn vector_url_sig() {
        assert_eq!(
            secret().url_sig("GET", PATH, "expires=1790000000"),
            "zIveauQiLx15RQDXwITmA5bx-RGIRudMPnH_uYLs4GQ"
        );
        assert_eq!(
            secret().sign_url("GET", PATH, "", 1_790_000_000),
            format!("{PATH}?expires=1790000000&sig=zIveauQiLx15RQDXwITmA5bx-RGIRudMPnH_uYLs4GQ")
        );
    }

    #[test]
    fn vector_stored_ref() {
        assert_eq!(
            secret().stored_ref(ID, "a.pdf"),
            "0b6e2f5e-7c1a-4c1b-9d1e-3f2a1b0c9d8e.YS5wZGY.qAtlCR51Q9ZgHwqu23Jg-VC1OYPC0URsEw-zj2MM3zo"
        );
    }

    #[test]
    fn vector_cookie() {
        assert_eq!(
            secret().cookie_value_for_id(&[0u8; 16]),
            "AAAAAAAAAAAAAAAAAAAAAA.GkJ3SfiR8uXEbKm055adc8"
        );
    }

    /// A slot URL minted by the README's Python signer (`urllib.parse.urlencode`, which
    /// writes a space as `+`) verifies and decodes as Python meant it.
    #[test]
    fn vector_python_signed_slot() {
        let raw = "cb=%2Fdocs%2Fnew%3Fa%3D1+b&accept=pdf%2Cpng&expires=1790000000\
                   &sig=QfqJ2oJoPVvKAhvq5oNQv4q11dE37Dk0vkiu0YZTqz4";
        let q = secret()
            .verify_url("POST", "/slots", Some(raw), 1_789_999_000, 3600)
            .unwrap();
        assert_eq!(q.get("cb"), Some("/docs/new?a=1 b"));
        assert_eq!(q.get("accept"), Some("pdf,png"));
        assert_eq!(q.expires, 1_790_000_000);
    }

    #[test]
    fn debug_hides_the_key() {
        let shown = format!("{:?}", secret());
        assert!(!shown.contains("0123456789abcdef"));
        assert_eq!(shown, "Secret(<redacted>)");
    }

    #[test]
    fn client_key_is_22_urlsafe_chars_and_keyed() {
        let k = secret().client_key("alice");
        assert_eq!(k.len(), 22);
        assert!(
            k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(k, secret().client_key("bob"));
        assert_ne!(
            k,
            Secret::new(b"another secret, 32 bytes long...").client_key("alice")
        );
    }

    #[test]
    fn upstream_signature_round_trip_and_skew() {
        let s = secret();
        let h = s.upstream_signature(1000, "GET", "/a?b=c", "", "");
        assert!(h.starts_with("t=1000,v1="));
        assert_eq!(h.len(), "t=1000,v1=".len() + 64);
        assert!(s.verify_upstream_signature(&h, "GET", "/a?b=c", "", "", 1000, 60));
        assert!(s.verify_upstream_signature(&h, "GET", "/a?b=c", "", "", 1060, 60));
        assert!(s.verify_upstream_signature(&h, "GET", "/a?b=c", "", "", 940, 60));
        assert!(!s.verify_upstream_signature(&h, "GET", "/a?b=c", "", "", 1061, 60));
        assert!(!s.verify_upstream_signature(&h, "POST", "/a?b=c", "", "", 1000, 60));
        assert!(!s.verify_upstream_signature(&h, "GET", "/a?b=d", "", "", 1000, 60));
        assert!(!s.verify_upstream_signature(&h, "GET", "/a?b=c", "x", "", 1000, 60));
        assert!(!s.verify_upstream_signature(&h, "GET", "/a?b=c", "", "x", 1000, 60));
        // The field separator is part of the message: moving a byte between fields fails.
        let moved = s.upstream_signature(1000, "GET", "/a", "bc", "");
        assert!(!s.verify_upstream_signature(&moved, "GET", "/ab", "c", "", 1000, 60));
    }

    #[test]
    fn upstream_signature_hostile_headers() {
        let s = secret();
        let h = s.upstream_signature(1000, "GET", "/", "", "");
        let v1 = h.split_once(",v1=").unwrap().1;
        for bad in [
            "",
            "t=1000",
            "v1=00",
            "t=,v1=",
            &format!("t=+1000,v1={v1}"),
            &format!("t=1000,v1={}", &v1[..62]),
            &format!("t=1000,v1={v1}00"),
            &format!("t=1000,v1={}zz", &v1[..62]),
            &format!("t=99999999999999999999999,v1={v1}"),
            &format!("v1={v1},t=1000"),
        ] {
            assert!(
                !s.verify_upstream_signature(bad, "GET", "/", "", "", 1000, 60),
                "{bad}"
            );
        }
    }

    #[test]
    fn url_error_codes() {
        assert_eq!(UrlError::BadSignature.code(), "bad_signature");
        assert_eq!(UrlError::Expired.code(), "expired");
        assert_eq!(UrlError::TtlTooLong.code(), "ttl_too_long");
        assert_eq!(UrlError::Expired.to_string(), "expired");
    }

    fn query_of(url: &str) -> (&str, &str) {
        url.split_once('?').unwrap()
    }

    fn verify(method: &str, url: &str) -> Result<SignedQuery, UrlError> {
        let (path, query) = query_of(url);
        secret().verify_url(method, path, Some(query), NOW, TTL)
    }

    #[test]
    fn signed_url_verifies_and_exposes_params() {
        let url = secret().sign_url(
            "POST",
            "/slots",
            "cb=%2Fdocs%2Fnew%3Fa%3D1&accept=pdf,png&max-bytes=5MiB&note=a+b",
            NOW + 60,
        );
        let q = verify("POST", &url).unwrap();
        assert_eq!(q.expires, NOW + 60);
        assert_eq!(q.get("cb"), Some("/docs/new?a=1"));
        assert_eq!(q.get("accept"), Some("pdf,png"));
        assert_eq!(q.get("max-bytes"), Some("5MiB"));
        assert_eq!(q.get("note"), Some("a b"));
        assert_eq!(q.get("expires"), Some(&*(NOW + 60).to_string()));
        assert_eq!(q.get("sig"), None);
        assert_eq!(q.get("missing"), None);
        assert_eq!(q.params().count(), 5);
        assert_eq!(q.sig(), url.rsplit_once("&sig=").unwrap().1);
    }

    #[test]
    fn expiry_boundaries() {
        let s = secret();
        let at = |expires: u64| {
            let url = s.sign_url("GET", PATH, "", expires);
            verify("GET", &url).map(|q| q.expires)
        };
        assert_eq!(at(NOW), Ok(NOW));
        assert_eq!(at(NOW - 1), Err(UrlError::Expired));
        assert_eq!(at(0), Err(UrlError::Expired));
        assert_eq!(at(NOW + TTL), Ok(NOW + TTL));
        assert_eq!(at(NOW + TTL + 1), Err(UrlError::TtlTooLong));
        assert_eq!(at(u64::MAX), Err(UrlError::TtlTooLong));
        let url = s.sign_url("GET", PATH, "", u64::MAX);
        let (path, query) = query_of(&url);
        assert_eq!(
            s.verify_url("GET", path, Some(query), u64::MAX - 10, u64::MAX),
            Ok(SignedQuery {
                expires: u64::MAX,
                params: vec![("expires".into(), u64::MAX.to_string())],
                sig: query.rsplit_once("&sig=").unwrap().1.into(),
            })
        );
    }

    #[test]
    fn bad_signature_is_checked_before_expiry() {
        let url = secret().sign_url("GET", PATH, "", NOW - 100);
        let forged = url.replace("expires=", "expires=9");
        assert_eq!(verify("GET", &forged), Err(UrlError::BadSignature));
        assert_eq!(verify("GET", &url), Err(UrlError::Expired));
    }

    /// The same 43-char sig with the two unused low bits of its last char set: decodes to
    /// the same bytes under a lenient decoder, so it must be refused to keep one spelling.
    fn non_canonical_last(sig: &str) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let last = sig.as_bytes()[sig.len() - 1];
        let i = ALPHABET.iter().position(|&c| c == last).unwrap();
        let mut out = sig[..sig.len() - 1].to_owned();
        out.push(char::from(ALPHABET[i | 1]));
        out
    }

    #[test]
    fn forged_and_malformed_signatures() {
        let url = secret().sign_url("GET", PATH, "", NOW + 60);
        let (base, sig) = url.rsplit_once("&sig=").unwrap();
        let other =
            Secret::new(b"another secret, 32 bytes long...").sign_url("GET", PATH, "", NOW + 60);
        let mut flipped = sig.to_owned();
        flipped.replace_range(0..1, if sig.starts_with('A') { "B" } else { "A" });
        let cases = [
            other,                                             // signed with another key
            format!("{base}&sig={flipped}"),                   // forged
            format!("{base}&sig={}", &sig[..42]),              // truncated by one char
            format!("{base}&sig={}", &sig[..22]),              // truncated to half
            format!("{base}&sig={sig}A"),                      // one char too many
            format!("{base}&sig={sig}="),                      // padding
            format!("{base}&sig=%2B%2F{}", &sig[2..]),         // percent-encoded, not b64url
            format!("{base}&sig=+{}", &sig[1..]),              // standard base64, not b64url
            format!("{base}&sig={}", non_canonical_last(sig)), // trailing bits set
            format!("{base}&sig=!!!!"),
            format!("{base}&sig="),
            format!("{base}&sig=é"),
            base.to_owned(),                                      // no sig
            format!("{base}&sig={sig}&sig={sig}"),                // twice
            format!("{base}&%73ig={sig}&sig={sig}"),              // twice, disguised
            format!("{base}&SIG={sig}"),                          // wrong case
            format!("{PATH}?sig={sig}&{}", query_of(base).1),     // not last
            format!("{base}&sig={sig}&x=1"),                      // param appended after sig
            format!("{base}&sig={sig}&"),                         // empty param after sig
            format!("{PATH}?x=1&{}&sig={sig}", query_of(base).1), // param added before
            format!("{base}&x=1&sig={sig}"),                      // param added after signing
            format!("{PATH}?sig={sig}"),                          // nothing signed
        ];
        for case in &cases {
            assert_eq!(verify("GET", case), Err(UrlError::BadSignature), "{case}");
        }
        assert!(verify("GET", &url).is_ok());
    }

    #[test]
    fn missing_query_or_empty_query() {
        let s = secret();
        assert_eq!(
            s.verify_url("GET", PATH, None, NOW, TTL),
            Err(UrlError::BadSignature)
        );
        assert_eq!(
            s.verify_url("GET", PATH, Some(""), NOW, TTL),
            Err(UrlError::BadSignature)
        );
        assert_eq!(
            s.verify_url("GET", PATH, Some("&"), NOW, TTL),
            Err(UrlError::BadSignature)
        );
    }

    #[test]
    fn method_binding() {
        let get = secret().sign_url("GET", PATH, "", NOW + 60);
        assert!(verify("GET", &get).is_ok());
        assert!(
            verify("HEAD", &get).is_ok(),
            "HEAD is admitted by a GET signature"
        );
        assert_eq!(verify("POST", &get), Err(UrlError::BadSignature));
        assert_eq!(verify("get", &get), Err(UrlError::BadSignature));
        assert_eq!(verify("DELETE", &get), Err(UrlError::BadSignature));

        let post = secret().sign_url("POST", "/slots", "cb=%2Fx", NOW + 60);
        assert!(verify("POST", &post).is_ok());
        assert_eq!(verify("GET", &post), Err(UrlError::BadSignature));
        assert_eq!(verify("HEAD", &post), Err(UrlError::BadSignature));

        let head = secret().sign_url("HEAD", PATH, "", NOW + 60);
        assert!(verify("HEAD", &head).is_ok());
        assert_eq!(
            verify("GET", &head),
            Err(UrlError::BadSignature),
            "HEAD does not admit GET"
        );
    }

    #[test]
    fn path_binding() {
        let s = secret();
        let url = s.sign_url("GET", PATH, "", NOW + 60);
        let query = query_of(&url).1;
        for other in [
            "/files/0b6e2f5e-7c1a-4c1b-9d1e-3f2a1b0c9d8e/b.pdf",
            "/files/0b6e2f5e-7c1a-4c1b-9d1e-3f2a1b0c9d8e/a.pdf/",
            "/files/0b6e2f5e-7c1a-4c1b-9d1e-3f2a1b0c9d8e/%61.pdf",
            "/files/0b6e2f5e-7c1a-4c1b-9d1e-3f2a1b0c9d8e/../x/a.pdf",
            "",
        ] {
            assert_eq!(
                s.verify_url("GET", other, Some(query), NOW, TTL),
                Err(UrlError::BadSignature),
                "{other}"
            );
        }
        // The path is taken as sent: a percent-encoded name verifies only in that spelling.
        let enc = s.sign_url("GET", "/files/x/r%C3%A9sum%C3%A9.pdf", "", NOW + 60);
        assert!(verify("GET", &enc).is_ok());
        let (_, q) = query_of(&enc);
        assert!(
            s.verify_url("GET", "/files/x/résumé.pdf", Some(q), NOW, TTL)
                .is_err()
        );
    }

    #[test]
    fn expires_must_be_one_plain_number() {
        let s = secret();
        // Signed, so only a buggy signer makes these; still refuse rather than guess.
        for params in [
            "",
            "expires=",
            "expires=abc",
            "expires=+5",
            "expires=-5",
            "expires=1e9",
            "expires=99999999999999999999999",
        ] {
            let query = if params.is_empty() {
                "x=1".to_owned()
            } else {
                params.to_owned()
            };
            let sig = s.url_sig("GET", PATH, &query);
            let raw = format!("{query}&sig={sig}");
            assert_eq!(
                s.verify_url("GET", PATH, Some(&raw), NOW, TTL),
                Err(UrlError::BadSignature),
                "{raw}"
            );
        }
        let query = format!("expires={}&expires={}", NOW + 1, NOW + 2);
        let raw = format!("{query}&sig={}", s.url_sig("GET", PATH, &query));
        assert_eq!(
            s.verify_url("GET", PATH, Some(&raw), NOW, TTL),
            Err(UrlError::BadSignature)
        );
    }

    /// One random change of a signed URL's bytes or of the method (the fuzz target
    /// `signed_url` does the same from libFuzzer's input).
    fn mutate(rng: &mut XorShift, method: &str, url: &str) -> (String, String) {
        const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "get", "DELETE"];
        let visible = |rng: &mut XorShift| char::from(b'!' + rng.below(94) as u8);
        let mut url: Vec<char> = url.chars().collect();
        let mut method = method.to_owned();
        let len = url.len();
        match rng.below(7) {
            0 => url[rng.below(len)] = visible(rng),
            1 => url.insert(rng.below(len + 1), visible(rng)),
            2 => drop(url.remove(rng.below(len))),
            3 => url.truncate(rng.below(len)),
            4 => url.swap(rng.below(len), rng.below(len)),
            5 => {
                let at = rng.below(len + 1);
                let extra = ['&', visible(rng), '=', visible(rng)];
                url.splice(at..at, extra);
            }
            _ => method = rng.pick(METHODS).to_owned(),
        }
        (method, url.into_iter().collect())
    }

    #[test]
    fn property_no_single_change_of_a_signed_url_verifies() {
        const PATH_PIECES: &[&str] = &["/files", "/", "a", "%2F", "..", "%C3%A9", ".pdf", ";", "="];
        const PARAMS: &[&str] = &[
            "a=1",
            "cb=%2Fx%3Fy",
            "b",
            "",
            "x+y=%20",
            "accept=pdf,png",
            "k=%26",
        ];
        let s = secret();
        let mut rng = XorShift::new(0x5EED_5167);
        let mut changed = 0;
        for _ in 0..4_000 {
            let method = rng.pick(&["GET", "HEAD", "POST", "PUT"]);
            let path = format!("/{}", rng.string(PATH_PIECES, 6));
            let params = (0..rng.below(4))
                .map(|_| rng.pick(PARAMS))
                .collect::<Vec<_>>()
                .join("&");
            let url = s.sign_url(method, &path, &params, NOW + 60);
            assert!(verify(method, &url).is_ok(), "{method} {url}");
            let (method2, url2) = mutate(&mut rng, method, &url);
            if url2 == url && (method2 == method || (method, method2.as_str()) == ("GET", "HEAD")) {
                continue;
            }
            changed += 1;
            let (p, q) = match url2.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (url2.as_str(), None),
            };
            assert!(
                s.verify_url(&method2, p, q, NOW, TTL).is_err(),
                "{method} {url} -> {method2} {url2}"
            );
        }
        assert!(changed > 3_000, "only {changed} changes tried");
    }

    #[test]
    fn form_decoding_is_lenient_and_never_panics() {
        assert_eq!(
            parse_form("a=1&&b&c=x%3Dy=z&%zz=%&d=%E2%82%AC+%FF&=e"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), String::new()),
                ("c".into(), "x=y=z".into()),
                ("%zz".into(), "%".into()),
                ("d".into(), "€ \u{FFFD}".into()),
                (String::new(), "e".into()),
            ]
        );
        assert!(parse_form("").is_empty());
    }

    #[test]
    fn decoding_in_place_agrees_with_decoding_to_strings() {
        let mut rng = XorShift::new(7);
        let alphabet: &[&str] = &[
            "%",
            "+",
            "&",
            "=",
            "e",
            "s",
            "x",
            "1",
            "0",
            "9",
            "%2",
            "%3",
            "%65",
            "%73",
            "%FF",
            "%C3%A9",
            "expires",
            "sig",
            "%2B",
            "%zz",
            "%%",
            "18446744073709551616",
        ];
        for _ in 0..20_000 {
            let n = 1 + rng.below(8);
            let piece: String = (0..n).map(|_| rng.pick(alphabet)).collect();
            for name in ["sig", "expires", "e", "1"] {
                assert_eq!(
                    form_is(&piece, name),
                    form_decode(&piece) == name,
                    "{piece:?}"
                );
            }
            assert_eq!(
                form_digits(&piece),
                parse_digits(&form_decode(&piece)),
                "{piece:?}"
            );
            let by_strings = parse_form(&piece)
                .iter()
                .filter(|(k, _)| k == "expires")
                .count();
            let in_place = form_pieces(&piece)
                .filter(|(k, _)| form_is(k, "expires"))
                .count();
            assert_eq!(by_strings, in_place, "{piece:?}");
        }
    }

    #[test]
    fn hostile_queries_never_panic() {
        let s = secret();
        for q in [
            "&&&&",
            "sig",
            "sig=",
            "=",
            "&sig=",
            "%",
            "%%%&sig=%",
            "é&sig=é",
            "expires=1&sig=\u{0}",
            "\u{FFFF}",
        ] {
            assert_eq!(
                s.verify_url("GET", PATH, Some(q), NOW, TTL),
                Err(UrlError::BadSignature),
                "{q:?}"
            );
        }
        assert!(
            s.verify_url("GET", PATH, Some(&"a".repeat(100_000)), NOW, TTL)
                .is_err()
        );
    }

    #[test]
    fn stored_ref_round_trip() {
        let s = secret();
        for name in ["a.pdf", "résumé 2024.pdf", "a.b.c", "", "日本語.txt"] {
            let r = s.stored_ref(ID, name);
            assert!(r.starts_with(&format!("{ID}.")));
            assert_eq!(
                s.verify_stored_ref(&r),
                Some((ID.to_owned(), name.to_owned())),
                "{name}"
            );
        }
    }

    #[test]
    fn stored_ref_tampering() {
        let s = secret();
        let r = s.stored_ref(ID, "a.pdf");
        let (id_name, tag) = r.rsplit_once('.').unwrap();
        let other_name = s.stored_ref(ID, "b.pdf");
        let other_id = s.stored_ref("1b6e2f5e-7c1a-4c1b-9d1e-3f2a1b0c9d8e", "a.pdf");
        let swapped_name = format!("{ID}.{}.{tag}", b64(b"b.pdf"));
        let swapped_id = r.replacen('0', "1", 1);
        let foreign = Secret::new(b"another secret, 32 bytes long...").stored_ref(ID, "a.pdf");
        assert_ne!(r, other_name);
        assert_ne!(r, other_id);
        for bad in [
            swapped_name,
            swapped_id,
            foreign,
            format!("{id_name}.{}", &tag[..42]),
            format!("{id_name}.{tag}A"),
            format!("{id_name}.{tag}="),
            format!("{id_name}."),
            id_name.to_owned(),
            format!("{ID}.!!!.{tag}"),
            format!("{ID}.{}.{tag}", b64(&[0xff, 0xfe])),
            String::new(),
            "..".to_owned(),
            ".".to_owned(),
        ] {
            assert_eq!(s.verify_stored_ref(&bad), None, "{bad}");
        }
    }

    #[test]
    fn cookie_round_trip() {
        let s = secret();
        let v = s.new_cookie_value().unwrap();
        assert_eq!(v.len(), 22 + 1 + 22);
        assert!(s.verify_cookie_value(&v));
        assert_ne!(v, s.new_cookie_value().unwrap(), "ids are random");
        assert!(!Secret::new(b"another secret, 32 bytes long...").verify_cookie_value(&v));
    }

    #[test]
    fn cookie_tampering() {
        let s = secret();
        let v = s.cookie_value_for_id(&[7u8; 16]);
        let (id, mac) = v.split_once('.').unwrap();
        let other = s.cookie_value_for_id(&[8u8; 16]);
        let other_mac = other.split_once('.').unwrap().1;
        for bad in [
            format!("{id}.{other_mac}"),
            format!("{id}.{}", &mac[..21]),
            format!("{id}.{mac}A"),
            format!("{id}{mac}"),
            format!("{id}.{mac}.{mac}"),
            format!("{}.{mac}", &id[..21]),
            format!("{id}=.{mac}"),
            format!(".{mac}"),
            format!("{id}."),
            String::new(),
            ".".to_owned(),
            "é".repeat(30),
        ] {
            assert!(!s.verify_cookie_value(&bad), "{bad}");
        }
    }

    #[test]
    fn constant_time_eq_behaves_like_eq() {
        let s = secret();
        assert!(s.ct_eq(b"", b""));
        assert!(s.ct_eq(b"abc", b"abc"));
        assert!(!s.ct_eq(b"abc", b"abd"));
        assert!(!s.ct_eq(b"abc", b"ab"));
        assert!(!s.ct_eq(b"", b"a"));
    }
}
