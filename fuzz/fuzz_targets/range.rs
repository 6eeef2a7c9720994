//! Fuzzes `Range` parsing (RFC 9110 §14.2): a range served is always inside the file, and it
//! reads back the same when written out plainly.
//!
//! Input: `LEN\nHEADER`, LEN a decimal file length (any text that is not one means 1000).
#![no_main]

use libfuzzer_sys::fuzz_target;
use upgate::files::range::{RangeOutcome, content_range, parse_range};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (len, header) = text.split_once('\n').unwrap_or(("", &text));
    let len: u64 = len.trim().parse().unwrap_or(1000);
    match parse_range(Some(header), len) {
        RangeOutcome::Partial { start, end } => {
            assert!(
                start <= end && end < len,
                "{header:?} on {len}: {start}-{end}"
            );
            let plain = format!("bytes={start}-{end}");
            assert_eq!(
                parse_range(Some(&plain), len),
                RangeOutcome::Partial { start, end }
            );
            assert_eq!(
                content_range(start, end, len),
                format!("bytes {start}-{end}/{len}")
            );
        }
        RangeOutcome::Unsatisfiable => {
            // §14.1.1: only a range starting at or past the end, a -0 suffix, or an empty file.
            assert!(header.contains('-'), "{header:?}");
        }
        RangeOutcome::Full => {}
    }
    // A file of any other length never changes whether the header was a range at all.
    let other = parse_range(Some(header), len.wrapping_add(1));
    assert_eq!(
        matches!(other, RangeOutcome::Full),
        matches!(parse_range(Some(header), len), RangeOutcome::Full),
        "{header:?}"
    );
});
