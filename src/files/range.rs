//! Pure HTTP helpers for serving files: Range, validators and preconditions, Content-Disposition.
//!
//! No I/O: the caller passes header values, the file's length and modification time, and
//! gets back what to send. Methods are the caller's concern too: Range and If-Modified-Since
//! apply to GET (and HEAD), and a failed If-None-Match on an unsafe method is a 412, not a 304.

use std::time::{SystemTime, UNIX_EPOCH};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// What to send for a request's `Range` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOutcome {
    /// `200` with the whole file (no `Range`, or one this server ignores).
    Full,
    /// `206` with bytes `start..=end`; always `start <= end < len`.
    Partial {
        /// First byte, inclusive.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// `416` with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Interprets a `Range` header for a file of `len` bytes, RFC 9110 §14.2.
///
/// Only a single `bytes` range is honoured: `a-b`, `a-` or `-suffix`, the end clamped to
/// `len - 1`. Anything else is ignored, as §14.2 lets a server do, and the whole file is
/// served: another unit, a syntax error, `b < a` (§14.1.1 calls that invalid), and more than
/// one range. Serving the whole file for several ranges is what static-web-server does and
/// spares us multipart/byteranges; answering only the first would lose data silently for a
/// client that does not read `Content-Range`. A valid single range that starts at or past
/// the end, a `-0` suffix, or any range on an empty file is `Unsatisfiable` (§14.1.1,
/// §15.5.17). Numbers too large for `u64` saturate: a huge start is unsatisfiable, a huge
/// end or suffix means "to the end".
pub fn parse_range(header: Option<&str>, len: u64) -> RangeOutcome {
    let Some(header) = header else {
        return RangeOutcome::Full;
    };
    let Some((unit, set)) = header.trim().split_once('=') else {
        return RangeOutcome::Full;
    };
    // §14.1: range units are case-insensitive.
    if !unit.trim_end().eq_ignore_ascii_case("bytes") {
        return RangeOutcome::Full;
    }
    // §5.6.1: list recipients accept empty elements ("bytes=0-1,").
    let mut specs = set.split(',').map(str::trim).filter(|s| !s.is_empty());
    let (Some(spec), None) = (specs.next(), specs.next()) else {
        return RangeOutcome::Full;
    };
    match parse_spec(spec) {
        None => RangeOutcome::Full,
        Some(spec) => satisfy(spec, len),
    }
}

/// One syntactically valid range-spec, before the file length is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    /// `first-[last]`
    From { first: u64, last: Option<u64> },
    /// `-suffix`
    Suffix(u64),
}

fn parse_spec(spec: &str) -> Option<Spec> {
    let (first, last) = spec.split_once('-')?;
    if first.is_empty() {
        return Some(Spec::Suffix(digits(last)?));
    }
    let first = digits(first)?;
    let last = if last.is_empty() {
        None
    } else {
        Some(digits(last)?)
    };
    if last.is_some_and(|last| last < first) {
        return None;
    }
    Some(Spec::From { first, last })
}

fn satisfy(spec: Spec, len: u64) -> RangeOutcome {
    let (start, end) = match spec {
        Spec::Suffix(0) => return RangeOutcome::Unsatisfiable,
        Spec::Suffix(n) => (len.saturating_sub(n), u64::MAX),
        Spec::From { first, last } => (first, last.unwrap_or(u64::MAX)),
    };
    if len == 0 || start >= len {
        return RangeOutcome::Unsatisfiable;
    }
    RangeOutcome::Partial {
        start,
        end: end.min(len - 1),
    }
}

/// `1*DIGIT`, saturating at `u64::MAX` (a position past any file is still a valid position).
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse().unwrap_or(u64::MAX))
}

/// `Content-Range` of a `206`, RFC 9110 §14.4: `bytes <start>-<end>/<len>`.
pub fn content_range(start: u64, end: u64, len: u64) -> String {
    format!("bytes {start}-{end}/{len}")
}

/// `Content-Range` of a `416`, RFC 9110 §14.4: `bytes */<len>`.
pub fn unsatisfied_range(len: u64) -> String {
    format!("bytes */{len}")
}

/// `Last-Modified` and other HTTP dates, RFC 9110 §5.6.7 (IMF-fixdate, whole seconds).
pub fn http_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

/// Bytes of `extra` kept as they are in an etag; the rest are percent-encoded, which keeps
/// the tag within `etagc` (RFC 9110 §8.8.3) and distinct extras distinct.
const ETAG_EXTRA: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_');

/// A strong entity tag, RFC 9110 §8.8.3, in the style of nginx:
/// `"<mtime secs hex>.<mtime nanos hex>-<size hex>[-<extra>]"`.
///
/// `extra` tells apart files that could share size and mtime (pass the file id, or `""`).
/// Strong is honest here because files are only ever replaced whole, by rename. A time
/// before the epoch counts as the epoch.
pub fn etag(size: u64, modified: SystemTime, extra: &str) -> String {
    let since = modified.duration_since(UNIX_EPOCH).unwrap_or_default();
    // By hand: every file answer makes one, and `format!` costs several times as much.
    let mut tag = String::with_capacity(48 + extra.len());
    tag.push('"');
    hex(&mut tag, since.as_secs());
    tag.push('.');
    hex(&mut tag, u64::from(since.subsec_nanos()));
    tag.push('-');
    hex(&mut tag, size);
    if extra
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        // A file id always: nothing to encode.
        if !extra.is_empty() {
            tag.push('-');
            tag.push_str(extra);
        }
    } else {
        tag.push('-');
        tag.extend(utf8_percent_encode(extra, ETAG_EXTRA));
    }
    tag.push('"');
    tag
}

/// `n` in lower-case hexadecimal, as `{n:x}` writes it.
fn hex(out: &mut String, n: u64) {
    let mut buf = [0u8; 16];
    let mut start = buf.len();
    let mut n = n;
    loop {
        start -= 1;
        buf[start] = b"0123456789abcdef"[(n & 0xF) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    // Hex digits only, so always UTF-8.
    out.push_str(std::str::from_utf8(&buf[start..]).unwrap_or_default());
}

/// One entity-tag of a header: (weak, opaque-tag with its quotes).
type EntityTag<'a> = (bool, &'a str);

/// Parses `#entity-tag`, RFC 9110 §8.8.3; `None` if any element is malformed, so a garbled
/// header is never half-trusted. Commas inside quotes are part of the tag (`etagc` allows them).
fn entity_tags(header: &str) -> Option<Vec<EntityTag<'_>>> {
    let mut tags = Vec::new();
    let mut rest = header;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return Some(tags);
        }
        let (tag, after) = entity_tag_prefix(rest)?;
        tags.push(tag);
        let after = after.trim_start_matches([' ', '\t']);
        if !(after.is_empty() || after.starts_with(',')) {
            return None;
        }
        rest = after;
    }
}

/// Splits one entity-tag off the front of `s`.
fn entity_tag_prefix(s: &str) -> Option<(EntityTag<'_>, &str)> {
    let (weak, s) = match s.strip_prefix("W/") {
        Some(s) => (true, s),
        None => (false, s),
    };
    let body = s.strip_prefix('"')?;
    let close = body.find('"')?;
    let tag = &s[..close + 2];
    let valid = body[..close]
        .bytes()
        .all(|b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80);
    valid.then_some(((weak, tag), &s[close + 2..]))
}

/// `If-None-Match` against the current `etag`, RFC 9110 §13.1.2: weak comparison, so
/// `W/"x"` matches `"x"`; `*` matches any existing file. True means "the client has it".
/// A malformed header matches nothing, so the full response is sent.
#[must_use]
pub fn if_none_match(header: &str, etag: &str) -> bool {
    if header.trim() == "*" {
        return true;
    }
    let Some((_, current)) = entity_tag_prefix(etag.trim()).map(|(t, _)| t) else {
        return false;
    };
    entity_tags(header).is_some_and(|tags| tags.iter().any(|(_, tag)| *tag == current))
}

/// Whether a GET or HEAD may be answered `304 Not Modified`, RFC 9110 §13.2.2: when
/// `If-None-Match` is present it decides alone (§13.1.3 says If-Modified-Since is then
/// ignored); otherwise `If-Modified-Since` does, comparing whole seconds, since HTTP
/// dates have no finer resolution. An unparsable date is ignored (§13.1.3).
#[must_use]
pub fn not_modified(
    if_none_match_header: Option<&str>,
    if_modified_since: Option<&str>,
    etag: &str,
    last_modified: SystemTime,
) -> bool {
    if let Some(inm) = if_none_match_header {
        return if_none_match(inm, etag);
    }
    let Some(since) = if_modified_since.and_then(|h| httpdate::parse_http_date(h.trim()).ok())
    else {
        return false;
    };
    unix_secs(last_modified) <= unix_secs(since)
}

/// Whether a `Range` may be honoured given `If-Range`, RFC 9110 §13.1.5. No header: yes.
/// An entity-tag must match by strong comparison (neither side weak, same opaque tag); a
/// date must equal `Last-Modified` to the second. Anything else, a malformed value
/// included, means "send the whole file".
///
/// §13.1.5 also wants a date validator to be strong (Last-Modified at least a second
/// before the response's Date); that needs the clock, so the caller should send an etag,
/// which clients prefer for If-Range anyway.
#[must_use]
pub fn if_range_allows(if_range: Option<&str>, etag: &str, last_modified: SystemTime) -> bool {
    let Some(value) = if_range.map(str::trim) else {
        return true;
    };
    if value.starts_with('"') || value.starts_with("W/") {
        return match (
            entity_tags(value).as_deref(),
            entity_tag_prefix(etag.trim()),
        ) {
            (Some([(false, theirs)]), Some(((false, ours), _))) => *theirs == ours,
            _ => false,
        };
    }
    httpdate::parse_http_date(value).is_ok_and(|t| unix_secs(t) == unix_secs(last_modified))
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The bytes [`ATTR_CHAR`] leaves as they are.
fn is_attr_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b)
}

/// RFC 8187 `attr-char`: what `filename*` may carry unencoded.
const ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// `Content-Disposition` for a download, RFC 6266 §4 with RFC 8187 `filename*`:
/// `attachment; filename="<ASCII fallback>"; filename*=UTF-8''<percent-encoded>`.
///
/// `disposition` is `inline` (any case) or else `attachment`, so an odd value fails safe.
/// The fallback keeps printable ASCII and replaces everything else with `_`, also `"` and
/// `\` (no escaping games inside the quoted string) and `%` (some browsers decode it,
/// RFC 6266 §4.3). An empty name gives the bare disposition.
pub fn content_disposition(disposition: &str, name: &str) -> String {
    let kind = if disposition.trim().eq_ignore_ascii_case("inline") {
        "inline"
    } else {
        "attachment"
    };
    if name.is_empty() {
        return kind.to_owned();
    }
    if name.bytes().all(is_attr_char) {
        // Both forms are the name itself (attr-char has no quote, backslash or `%`).
        let mut value = String::with_capacity(kind.len() + 2 * name.len() + 32);
        for part in [kind, "; filename=\"", name, "\"; filename*=UTF-8''", name] {
            value.push_str(part);
        }
        return value;
    }
    let fallback: String = name
        .chars()
        .map(|c| match c {
            '"' | '\\' | '%' => '_',
            ' '..='~' => c,
            _ => '_',
        })
        .collect();
    let encoded = utf8_percent_encode(name, ATTR_CHAR);
    format!("{kind}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use std::time::Duration;

    use super::*;
    use RangeOutcome::{Full, Partial, Unsatisfiable};

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn range_single_forms() {
        let r = |h: &str| parse_range(Some(h), 1000);
        assert_eq!(parse_range(None, 1000), Full);
        assert_eq!(r("bytes=0-499"), Partial { start: 0, end: 499 });
        assert_eq!(
            r("bytes=500-999"),
            Partial {
                start: 500,
                end: 999
            }
        );
        assert_eq!(
            r("bytes=500-"),
            Partial {
                start: 500,
                end: 999
            }
        );
        assert_eq!(
            r("bytes=-500"),
            Partial {
                start: 500,
                end: 999
            }
        );
        assert_eq!(r("bytes=0-0"), Partial { start: 0, end: 0 });
        assert_eq!(
            r("bytes=999-999"),
            Partial {
                start: 999,
                end: 999
            }
        );
        assert_eq!(
            r("bytes=-1"),
            Partial {
                start: 999,
                end: 999
            }
        );
        assert_eq!(r("bytes=0-"), Partial { start: 0, end: 999 });
    }

    #[test]
    fn range_clamps_the_end() {
        let r = |h: &str| parse_range(Some(h), 1000);
        assert_eq!(
            r("bytes=900-5000"),
            Partial {
                start: 900,
                end: 999
            }
        );
        assert_eq!(r("bytes=-5000"), Partial { start: 0, end: 999 });
        assert_eq!(
            r("bytes=0-99999999999999999999999"),
            Partial { start: 0, end: 999 }
        );
        assert_eq!(
            r("bytes=-99999999999999999999999"),
            Partial { start: 0, end: 999 }
        );
        assert_eq!(
            r("bytes=0-18446744073709551615"),
            Partial { start: 0, end: 999 }
        );
    }

    #[test]
    fn range_unsatisfiable() {
        let r = |h: &str| parse_range(Some(h), 1000);
        assert_eq!(r("bytes=1000-"), Unsatisfiable);
        assert_eq!(r("bytes=1000-2000"), Unsatisfiable);
        assert_eq!(r("bytes=99999999999999999999999-"), Unsatisfiable);
        assert_eq!(r("bytes=-0"), Unsatisfiable);
        for h in ["bytes=0-", "bytes=0-0", "bytes=-1", "bytes=-0"] {
            assert_eq!(parse_range(Some(h), 0), Unsatisfiable, "{h}");
        }
    }

    #[test]
    fn range_tolerated_spellings() {
        let r = |h: &str| parse_range(Some(h), 1000);
        assert_eq!(r("BYTES=1-2"), Partial { start: 1, end: 2 });
        assert_eq!(r("Bytes=1-2"), Partial { start: 1, end: 2 });
        assert_eq!(r("  bytes=1-2  "), Partial { start: 1, end: 2 });
        assert_eq!(r("bytes= 1-2"), Partial { start: 1, end: 2 });
        assert_eq!(r("bytes=1-2,"), Partial { start: 1, end: 2 });
        assert_eq!(r("bytes=, 1-2 ,"), Partial { start: 1, end: 2 });
        assert_eq!(r("bytes=0001-0002"), Partial { start: 1, end: 2 });
    }

    #[test]
    fn range_ignored_means_full() {
        let r = |h: &str| parse_range(Some(h), 1000);
        for h in [
            "",
            "bytes",
            "bytes=",
            "bytes=,",
            "bytes=-",
            "bytes=abc",
            "bytes=1",
            "bytes=1-2-3",
            "bytes=5-1",
            "bytes=+1-2",
            "bytes=1-+2",
            "bytes=--1",
            "bytes=1 -2",
            "bytes=0x10-",
            "bytes=½-",
            "items=0-1",
            "bytes 0-1",
            "=0-1",
            "bytes=0-1,2-3",
            "bytes=0-1, 5-",
            "bytes=-1,-2",
            "bytes=0-1,garbage",
            "bytes=2000-3000,0-1",
        ] {
            assert_eq!(r(h), Full, "{h:?}");
        }
    }

    #[test]
    fn range_outcome_is_always_inside_the_file() {
        let headers = [
            "bytes=0-",
            "bytes=-1",
            "bytes=-7",
            "bytes=3-",
            "bytes=3-4",
            "bytes=0-100",
            "bytes=-100",
        ];
        for len in 0..12 {
            for h in headers {
                match parse_range(Some(h), len) {
                    Partial { start, end } => assert!(start <= end && end < len, "{h} {len}"),
                    Unsatisfiable | Full => {}
                }
            }
        }
    }

    /// A random Range header: mostly one `first-last` spec with either side possibly absent,
    /// sometimes two, sometimes noise.
    fn random_range(rng: &mut crate::testing::XorShift) -> String {
        const NUMBERS: &[&str] = &[
            "",
            "0",
            "1",
            "7",
            "42",
            "0999",
            "1000",
            "18446744073709551615",
            "99999999999999999999",
        ];
        const NOISE: &[&str] = &["bytes", "BYTES", "items", "=", "-", ",", " ", "x", "1"];
        let spec = |rng: &mut crate::testing::XorShift| {
            format!("{}-{}", rng.pick(NUMBERS), rng.pick(NUMBERS))
        };
        match rng.below(8) {
            0 => rng.string(NOISE, 8),
            1 => format!("bytes={},{}", spec(rng), spec(rng)),
            _ => {
                let unit = rng.pick(&["bytes", "bytes", "Bytes ", "items"]);
                let (spec, noise) = (spec(rng), rng.string(NOISE, 1));
                format!("{unit}={spec}{noise}")
            }
        }
    }

    /// On files of random lengths: whatever is served is inside the file, reads back the same
    /// when written plainly, and whether the header counts as a range never depends on the length.
    #[test]
    fn property_ranges_stay_inside_the_file() {
        const LENS: &[u64] = &[0, 1, 2, 7, 42, 999, 1000, 1001, u64::MAX];
        let mut rng = crate::testing::XorShift::new(0x000B_17E5);
        let mut partial = 0;
        for _ in 0..20_000 {
            let header = random_range(&mut rng);
            let len = if rng.below(2) == 0 {
                LENS[rng.below(LENS.len())]
            } else {
                rng.next() % 2_000
            };
            let got = parse_range(Some(&header), len);
            if let Partial { start, end } = got {
                partial += 1;
                assert!(start <= end && end < len, "{header:?} on {len}: {got:?}");
                let plain = format!("bytes={start}-{end}");
                assert_eq!(parse_range(Some(&plain), len), got);
            }
            let other = parse_range(Some(&header), len.wrapping_add(1));
            assert_eq!(got == Full, other == Full, "{header:?} on {len}");
        }
        assert!(partial > 2_000, "only {partial} ranges served");
    }

    #[test]
    fn content_range_headers() {
        assert_eq!(content_range(0, 499, 1000), "bytes 0-499/1000");
        assert_eq!(content_range(999, 999, 1000), "bytes 999-999/1000");
        assert_eq!(unsatisfied_range(1000), "bytes */1000");
        assert_eq!(unsatisfied_range(0), "bytes */0");
    }

    #[test]
    fn http_date_format() {
        assert_eq!(
            http_date(at(1_790_000_000, 999)),
            "Mon, 21 Sep 2026 14:13:20 GMT"
        );
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
    }

    #[test]
    fn hex_writes_as_format_does() {
        for n in [
            0,
            1,
            9,
            10,
            15,
            16,
            255,
            4096,
            0xdead_beef,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = String::from("x");
            hex(&mut out, n);
            assert_eq!(out, format!("x{n:x}"));
        }
        assert_eq!(
            etag(5, at(1, 2), "a b/é"),
            "\"1.2-5-a%20b%2F%C3%A9\"",
            "an extra that is not a file id is percent-encoded"
        );
    }

    #[test]
    fn etag_shape() {
        let t = at(1_790_000_000, 5);
        assert_eq!(etag(1000, t, ""), "\"6ab13b80.5-3e8\"");
        assert_eq!(
            etag(1000, t, "0b6e2f5e-7c1a"),
            "\"6ab13b80.5-3e8-0b6e2f5e-7c1a\""
        );
        assert_eq!(etag(0, UNIX_EPOCH, ""), "\"0.0-0\"");
        assert_eq!(
            etag(0, UNIX_EPOCH - Duration::from_secs(5), ""),
            "\"0.0-0\""
        );
    }

    #[test]
    fn etag_changes_with_each_input() {
        let t = at(1_790_000_000, 5);
        let base = etag(1000, t, "id");
        assert_ne!(base, etag(1001, t, "id"));
        assert_ne!(base, etag(1000, at(1_790_000_000, 6), "id"));
        assert_ne!(base, etag(1000, at(1_790_000_001, 5), "id"));
        assert_ne!(base, etag(1000, t, "ie"));
        assert_ne!(etag(1, t, "a b"), etag(1, t, "a_b"));
    }

    #[test]
    fn etag_is_always_a_valid_strong_tag() {
        for extra in [
            "",
            "plain",
            "with \"quotes\"",
            "sp ace",
            "ünï",
            "\u{0}\t\r\n",
            "a,b",
            "W/x",
        ] {
            let tag = etag(42, at(7, 8), extra);
            let parsed = entity_tags(&tag).unwrap();
            assert_eq!(parsed, vec![(false, tag.as_str())], "{extra:?}");
            assert!(tag.is_ascii());
            assert!(if_none_match(&tag, &tag));
            assert!(if_range_allows(Some(&tag), &tag, at(7, 8)));
        }
    }

    #[test]
    fn if_none_match_weak_comparison() {
        let e = "\"abc\"";
        assert!(if_none_match("\"abc\"", e));
        assert!(if_none_match("W/\"abc\"", e));
        assert!(if_none_match("\"abc\"", "W/\"abc\""));
        assert!(if_none_match("*", e));
        assert!(if_none_match(" * ", e));
        assert!(if_none_match("\"x\", \"abc\"", e));
        assert!(if_none_match("\"x\",W/\"abc\"", e));
        assert!(if_none_match("\"x\" ,\t\"abc\" ,", e));
        assert!(if_none_match("\"a,b\", \"abc\"", e));
        assert!(if_none_match("\"a,b\"", "\"a,b\""));
        assert!(!if_none_match("\"x\"", e));
        assert!(!if_none_match("\"ABC\"", e));
        assert!(!if_none_match("abc", e));
        assert!(!if_none_match("", e));
        assert!(!if_none_match("\"abc", e));
        assert!(!if_none_match("w/\"abc\"", e));
        assert!(!if_none_match("\"abc\"x", e));
        assert!(!if_none_match("\"x\" \"abc\"", e));
        assert!(!if_none_match("\"x\", *", e));
        assert!(!if_none_match("\"x\", garbage, \"abc\"", e));
        assert!(!if_none_match("\"a\"b\"", "\"a\"b\""));
        assert!(!if_none_match("\"abc\"", "abc"));
    }

    #[test]
    fn not_modified_precedence() {
        let lm = at(1_790_000_000, 500_000_000);
        let e = "\"tag\"";
        let same = "Mon, 21 Sep 2026 14:13:20 GMT";
        let later = "Mon, 21 Sep 2026 14:13:21 GMT";
        let earlier = "Mon, 21 Sep 2026 14:13:19 GMT";
        assert!(!not_modified(None, None, e, lm));
        assert!(not_modified(Some("\"tag\""), None, e, lm));
        assert!(!not_modified(Some("\"other\""), None, e, lm));
        // If-None-Match decides alone, whatever the date says.
        assert!(!not_modified(Some("\"other\""), Some(later), e, lm));
        assert!(not_modified(Some("\"tag\""), Some(earlier), e, lm));
        assert!(!not_modified(Some("garbage"), Some(later), e, lm));
        // If-Modified-Since, compared to the second.
        assert!(not_modified(None, Some(same), e, lm));
        assert!(not_modified(None, Some(later), e, lm));
        assert!(!not_modified(None, Some(earlier), e, lm));
        assert!(not_modified(
            None,
            Some("Monday, 21-Sep-26 14:13:20 GMT"),
            e,
            lm
        ));
        assert!(not_modified(None, Some("Mon Sep 21 14:13:20 2026"), e, lm));
        assert!(!not_modified(None, Some("yesterday"), e, lm));
        assert!(!not_modified(None, Some(""), e, lm));
    }

    #[test]
    fn if_range_rules() {
        let lm = at(1_790_000_000, 500_000_000);
        let e = "\"tag\"";
        assert!(if_range_allows(None, e, lm));
        assert!(if_range_allows(Some("\"tag\""), e, lm));
        assert!(if_range_allows(Some(" \"tag\" "), e, lm));
        assert!(!if_range_allows(Some("\"other\""), e, lm));
        assert!(
            !if_range_allows(Some("W/\"tag\""), e, lm),
            "weak never matches strongly"
        );
        assert!(!if_range_allows(Some("\"tag\""), "W/\"tag\"", lm));
        assert!(
            !if_range_allows(Some("\"tag\", \"tag\""), e, lm),
            "one tag only"
        );
        assert!(!if_range_allows(Some("*"), e, lm));
        assert!(!if_range_allows(Some("\"tag"), e, lm));
        assert!(if_range_allows(
            Some("Mon, 21 Sep 2026 14:13:20 GMT"),
            e,
            lm
        ));
        assert!(!if_range_allows(
            Some("Mon, 21 Sep 2026 14:13:21 GMT"),
            e,
            lm
        ));
        assert!(!if_range_allows(
            Some("Mon, 21 Sep 2026 14:13:19 GMT"),
            e,
            lm
        ));
        assert!(!if_range_allows(Some("not a date"), e, lm));
        assert!(!if_range_allows(Some(""), e, lm));
    }

    #[test]
    fn content_disposition_ascii() {
        assert_eq!(
            content_disposition("attachment", "a.pdf"),
            "attachment; filename=\"a.pdf\"; filename*=UTF-8''a.pdf"
        );
        assert_eq!(
            content_disposition("inline", "my report (v2).pdf"),
            "inline; filename=\"my report (v2).pdf\"; filename*=UTF-8''my%20report%20%28v2%29.pdf"
        );
        assert_eq!(
            content_disposition("INLINE", "a.pdf"),
            "inline; filename=\"a.pdf\"; filename*=UTF-8''a.pdf"
        );
    }

    #[test]
    fn content_disposition_unicode_and_hostile() {
        assert_eq!(
            content_disposition("attachment", "résumé €.pdf"),
            "attachment; filename=\"r_sum_ _.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%E2%82%AC.pdf"
        );
        assert_eq!(
            content_disposition("attachment", "a\"b\\c%41;d.pdf"),
            "attachment; filename=\"a_b_c_41;d.pdf\"; filename*=UTF-8''a%22b%5Cc%2541%3Bd.pdf"
        );
        assert_eq!(
            content_disposition("attachment", "x\r\nSet-Cookie: a=b\u{202e}.txt"),
            "attachment; filename=\"x__Set-Cookie: a=b_.txt\"; filename*=UTF-8''x%0D%0ASet-Cookie%3A%20a%3Db%E2%80%AE.txt"
        );
        assert_eq!(content_disposition("attachment", ""), "attachment");
        assert_eq!(
            content_disposition("evil\r\nX: y", "a"),
            "attachment; filename=\"a\"; filename*=UTF-8''a"
        );
    }

    #[test]
    fn content_disposition_is_always_a_valid_header_value() {
        for name in [
            "a",
            "\u{0}",
            "\u{7f}",
            "日本語",
            "\"\"",
            "\\",
            "%",
            "'",
            "*",
            " ",
            "a\u{85}b",
        ] {
            let v = content_disposition("attachment", name);
            assert!(
                v.bytes().all(|b| (0x20..0x7f).contains(&b)),
                "{name:?} -> {v}"
            );
            let star = v.rsplit_once("UTF-8''").unwrap().1;
            let back = percent_encoding::percent_decode_str(star)
                .decode_utf8()
                .unwrap();
            assert_eq!(back, name);
        }
    }
}
