//! Recognising an upload's real format by its bytes, while it streams (SPEC §5).
//!
//! Order of the verdict: magic bytes at offset 0 (pdf, png, jpeg, gif, webp,
//! zip); a ZIP is then told apart from docx/xlsx by its central directory;
//! otherwise valid UTF-8 without NUL is text; anything else is named by
//! `infer` for the error message and rejected.

use std::fmt;
use std::io::{self, BufReader, Read, Seek, SeekFrom};

use super::names::extension;

/// How much of the file's start is kept: enough for every `infer` matcher
/// and for a PDF header placed up to 1 KiB in.
const HEAD_LEN: usize = 8 * 1024;

/// A format the gateway can accept; `name()` is its spelling in the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    Pdf,
    Png,
    Jpeg,
    Gif,
    Webp,
    Txt,
    Csv,
    Docx,
    Xlsx,
    Zip,
}

impl Format {
    pub const ALL: [Format; 10] = [
        Format::Pdf,
        Format::Png,
        Format::Jpeg,
        Format::Gif,
        Format::Webp,
        Format::Txt,
        Format::Csv,
        Format::Docx,
        Format::Xlsx,
        Format::Zip,
    ];

    pub fn name(self) -> &'static str {
        self.extensions()[0]
    }

    /// Parses a config/accept name, ignoring ASCII case; `jpg` means jpeg.
    pub fn from_name(s: &str) -> Option<Format> {
        if s.eq_ignore_ascii_case("jpg") {
            return Some(Format::Jpeg);
        }
        Self::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
    }

    /// The `Content-Type` the file is served with.
    pub fn mime(self) -> &'static str {
        match self {
            Format::Pdf => "application/pdf",
            Format::Png => "image/png",
            Format::Jpeg => "image/jpeg",
            Format::Gif => "image/gif",
            Format::Webp => "image/webp",
            Format::Txt => "text/plain; charset=utf-8",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Docx => {
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
            }
            Format::Xlsx => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            Format::Zip => "application/zip",
        }
    }

    /// Whether a file name ending in `.ext` (no dot, any ASCII case) may hold
    /// this format. Text takes the common plain-text spellings; a docx or
    /// xlsx named `.zip` is handled by [`check`], not here.
    pub fn extension_agrees(self, ext: &str) -> bool {
        self.extensions()
            .iter()
            .any(|e| e.eq_ignore_ascii_case(ext))
    }

    /// The extensions of the format, its config name first.
    fn extensions(self) -> &'static [&'static str] {
        match self {
            Format::Pdf => &["pdf"],
            Format::Png => &["png"],
            Format::Jpeg => &["jpeg", "jpg", "jpe", "jfif"],
            Format::Gif => &["gif"],
            Format::Webp => &["webp"],
            Format::Txt => &["txt", "text", "log", "md"],
            Format::Csv => &["csv"],
            Format::Docx => &["docx"],
            Format::Xlsx => &["xlsx"],
            Format::Zip => &["zip"],
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the bytes are, before the name is looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    /// A supported format. Text is always `Txt` (an empty file too, being
    /// valid empty UTF-8): only the name can tell CSV from text, so
    /// [`check`] decides.
    Known(Format),
    /// Anything else, named for the error message: an `infer` extension
    /// (`"elf"`, `"exe"`, `"html"` for non-UTF-8 HTML, `"ole2"` for legacy
    /// Office), `"damaged zip"`, or `"binary"`.
    Other(&'static str),
}

/// Watches an upload stream by stream: keeps a fixed head for the magic
/// bytes and validates UTF-8 across chunk boundaries, so memory stays
/// bounded whatever the file size.
#[derive(Debug)]
pub struct Sniffer {
    head: Vec<u8>,
    text: TextCheck,
}

impl Default for Sniffer {
    fn default() -> Self {
        Self::new()
    }
}

impl Sniffer {
    pub fn new() -> Self {
        Sniffer {
            head: Vec::with_capacity(HEAD_LEN),
            text: TextCheck::new(),
        }
    }

    /// Takes the next chunk of the upload, in order.
    pub fn feed(&mut self, chunk: &[u8]) {
        let room = HEAD_LEN - self.head.len();
        self.head.extend_from_slice(&chunk[..room.min(chunk.len())]);
        self.text.feed(chunk);
    }

    /// The verdict, once the whole file is written. `file` is read only for a
    /// ZIP, whose central directory lies at its end; a damaged or hostile ZIP
    /// gives `Other("damaged zip")`, and only real I/O errors are `Err`.
    /// The file's position is left wherever the reading ended.
    pub fn finish<R: Read + Seek>(self, file: &mut R) -> io::Result<Detected> {
        if let Some(format) = magic(&self.head) {
            return Ok(Detected::Known(format));
        }
        if is_zip(&self.head) {
            return Ok(match zip_format(file)? {
                Some(format) => Detected::Known(format),
                None => Detected::Other("damaged zip"),
            });
        }
        if self.text.is_text() {
            return Ok(Detected::Known(Format::Txt));
        }
        Ok(name_binary(&self.head))
    }
}

/// Detects a whole file held in memory, for tests and fuzz targets.
pub fn detect(bytes: &[u8]) -> Detected {
    let mut sniffer = Sniffer::new();
    sniffer.feed(bytes);
    // A cursor over a slice cannot fail, but the ZIP reader still must not
    // turn a surprise into a panic.
    sniffer
        .finish(&mut io::Cursor::new(bytes))
        .unwrap_or(Detected::Other("damaged zip"))
}

/// The verdict for one file: `Ok(format)` when the detected format is in
/// `accept` and the name's extension, if it has one, agrees with it;
/// otherwise the `verbose_error` text for `unsupported_format`.
///
/// The name refines the bytes where the bytes cannot tell: text named `.csv`
/// is CSV (otherwise, extension-less included, it is txt), and a docx or
/// xlsx named `.zip` is a ZIP (which it is). A plain ZIP named `.docx` lacks
/// the OOXML parts and is refused.
pub fn check(detected: &Detected, file_name: &str, accept: &[Format]) -> Result<Format, String> {
    let found = match *detected {
        Detected::Known(format) => format,
        Detected::Other(what) => return Err(not_accepted(file_name, what, accept)),
    };
    let ext = extension(file_name);
    let format = refine_by_name(found, ext);
    if let Some(ext) = ext.filter(|ext| !format.extension_agrees(ext)) {
        return Err(format!(
            "the extension of '{file_name}' (.{ext}) disagrees with its content, which is {found}"
        ));
    }
    if !accept.contains(&format) {
        return Err(not_accepted(file_name, format.name(), accept));
    }
    Ok(format)
}

fn refine_by_name(found: Format, ext: Option<&str>) -> Format {
    match (found, ext) {
        (Format::Txt, Some(ext)) if Format::Csv.extension_agrees(ext) => Format::Csv,
        (Format::Docx | Format::Xlsx, Some(ext)) if Format::Zip.extension_agrees(ext) => {
            Format::Zip
        }
        _ => found,
    }
}

fn not_accepted(file_name: &str, what: &str, accept: &[Format]) -> String {
    let names: Vec<&str> = accept.iter().map(|f| f.name()).collect();
    let list = if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    };
    format!(
        "'{file_name}' is detected as {what}, which is not an accepted format (accepted: {list})"
    )
}

/// Signatures at offset 0. Hand-written rather than `infer`'s, which are
/// looser (any text starting "GIF" would pass its GIF matcher).
fn magic(head: &[u8]) -> Option<Format> {
    let riff_webp = head.len() >= 12 && head.starts_with(b"RIFF") && &head[8..12] == b"WEBP";
    if head.starts_with(b"%PDF-") {
        Some(Format::Pdf)
    } else if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(Format::Png)
    } else if head.starts_with(b"\xFF\xD8\xFF") {
        Some(Format::Jpeg)
    } else if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        Some(Format::Gif)
    } else if riff_webp {
        Some(Format::Webp)
    } else {
        None
    }
}

/// A local file header, or the end record alone of an empty archive.
fn is_zip(head: &[u8]) -> bool {
    head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06")
}

/// Names a file that is neither a supported format nor text. A PDF whose
/// header is not at offset 0 is still accepted here: readers look for it
/// within the first 1 KiB, and `infer` does the same; text is excluded
/// before, so a note quoting "%PDF" stays text.
fn name_binary(head: &[u8]) -> Detected {
    match infer::get(head).map(|kind| kind.extension()) {
        Some("pdf") => Detected::Known(Format::Pdf),
        // Without its `std` feature `infer` calls every OLE2 compound file
        // "doc"; it may as well be xls, ppt or msi.
        Some("doc") => Detected::Other("ole2"),
        Some(ext) => Detected::Other(ext),
        None => Detected::Other("binary"),
    }
}

/// UTF-8 validity and absence of NUL, checked chunk by chunk.
#[derive(Debug)]
struct TextCheck {
    /// The start of a sequence cut by the last chunk boundary (at most 3 bytes).
    carry: [u8; 4],
    carry_len: usize,
    /// False once a NUL or an invalid sequence was seen; nothing is checked after.
    ok: bool,
}

impl TextCheck {
    fn new() -> Self {
        TextCheck {
            carry: [0; 4],
            carry_len: 0,
            ok: true,
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        if !self.ok {
            return;
        }
        if chunk.contains(&0) {
            self.ok = false;
            return;
        }
        let rest = self.complete_carry(chunk);
        if self.ok {
            self.check_run(rest);
        }
    }

    /// Ends a text only if no sequence is left unfinished.
    fn is_text(&self) -> bool {
        self.ok && self.carry_len == 0
    }

    /// Completes the carried sequence from the start of `chunk` and returns
    /// what follows it.
    fn complete_carry<'a>(&mut self, chunk: &'a [u8]) -> &'a [u8] {
        if self.carry_len == 0 {
            return chunk;
        }
        let want = utf8_width(self.carry[0]).saturating_sub(self.carry_len);
        let take = want.min(chunk.len());
        self.carry[self.carry_len..self.carry_len + take].copy_from_slice(&chunk[..take]);
        self.carry_len += take;
        if take == want {
            self.ok = std::str::from_utf8(&self.carry[..self.carry_len]).is_ok();
            self.carry_len = 0;
        }
        &chunk[take..]
    }

    fn check_run(&mut self, bytes: &[u8]) {
        match std::str::from_utf8(bytes) {
            Ok(_) => {}
            // No error length: the run ends inside a sequence, which the
            // next chunk may complete.
            Err(e) if e.error_len().is_none() => {
                let tail = &bytes[e.valid_up_to()..];
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carry_len = tail.len();
            }
            Err(_) => self.ok = false,
        }
    }
}

/// Length of the sequence a lead byte starts; only called on leads that
/// `from_utf8` found incomplete, so 2 to 4.
fn utf8_width(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

// ZIP layout (APPNOTE.TXT 4.3): the End Of Central Directory record sits in
// the last 22 + 65535 bytes (its comment may be that long) and points at the
// central directory, one 46-byte header plus name per entry.
const EOCD_SIG: &[u8] = b"PK\x05\x06";
const EOCD_LEN: usize = 22;
const MAX_COMMENT: usize = 0xFFFF;
const ZIP64_LOCATOR_SIG: &[u8] = b"PK\x06\x07";
const ZIP64_LOCATOR_LEN: u64 = 20;
const ZIP64_EOCD_SIG: &[u8] = b"PK\x06\x06";
const ZIP64_EOCD_LEN: usize = 56;
const ENTRY_SIG: &[u8] = b"PK\x01\x02";
const ENTRY_LEN: usize = 46;

/// Where the central directory lies, as the end record claims.
#[derive(Debug, PartialEq, Eq)]
struct CentralDir {
    offset: u64,
    size: u64,
    entries: u64,
}

impl CentralDir {
    /// Whether the claim is possible: the directory ends before `limit` (the
    /// record that points at it) and has room for every entry it counts. This
    /// is what bounds the walk on hostile input.
    fn fits_before(&self, limit: u64) -> bool {
        let ends_in_time = self
            .offset
            .checked_add(self.size)
            .is_some_and(|end| end <= limit);
        let has_room = self
            .entries
            .checked_mul(ENTRY_LEN as u64)
            .is_some_and(|need| need <= self.size);
        ends_in_time && has_room
    }

    fn needs_zip64(&self) -> bool {
        self.entries == 0xFFFF || self.size == 0xFFFF_FFFF || self.offset == 0xFFFF_FFFF
    }
}

/// The OOXML parts a central directory names.
#[derive(Debug, Default)]
struct OoxmlParts {
    content_types: bool,
    word: bool,
    xl: bool,
}

impl OoxmlParts {
    /// Part names compare case-insensitively (ECMA-376 Part 2, 9.1.1.1).
    fn note(&mut self, name: &[u8]) {
        let is = |part: &[u8]| name.eq_ignore_ascii_case(part);
        self.content_types |= is(b"[Content_Types].xml");
        self.word |= is(b"word/document.xml");
        self.xl |= is(b"xl/workbook.xml");
    }

    fn format(&self) -> Format {
        match (self.content_types, self.word, self.xl) {
            (true, true, false) => Format::Docx,
            (true, false, true) => Format::Xlsx,
            _ => Format::Zip,
        }
    }
}

/// Zip, docx or xlsx by the central directory; `None` when it cannot be read.
fn zip_format<R: Read + Seek>(file: &mut R) -> io::Result<Option<Format>> {
    let walked = locate_central_dir(file).and_then(|cd| match cd {
        Some(cd) => walk_central_dir(file, &cd),
        None => Ok(None),
    });
    match walked {
        // Offsets are checked against the length first, so an early end is
        // a lying archive, not a failing disk.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        other => other.map(|parts| parts.map(|p| p.format())),
    }
}

fn locate_central_dir<R: Read + Seek>(file: &mut R) -> io::Result<Option<CentralDir>> {
    let len = file.seek(SeekFrom::End(0))?;
    let tail_len = len.min((EOCD_LEN + MAX_COMMENT) as u64);
    let tail_start = len - tail_len;
    let mut tail = vec![0; tail_len as usize];
    read_at(file, tail_start, &mut tail)?;
    let Some(at) = find_eocd(&tail) else {
        return Ok(None);
    };
    let eocd = &tail[at..];
    let cd = CentralDir {
        entries: le(eocd, 10, 2),
        size: le(eocd, 12, 4),
        offset: le(eocd, 16, 4),
    };
    let eocd_pos = tail_start + at as u64;
    if cd.needs_zip64() {
        return locate_zip64_central_dir(file, eocd_pos);
    }
    Ok(cd.fits_before(eocd_pos).then_some(cd))
}

/// The last end-record signature whose comment fits in the tail.
fn find_eocd(tail: &[u8]) -> Option<usize> {
    let last = tail.len().checked_sub(EOCD_LEN)?;
    (0..=last).rev().find(|&i| {
        let comment = le(tail, i + 20, 2) as usize;
        tail[i..].starts_with(EOCD_SIG) && i + EOCD_LEN + comment <= tail.len()
    })
}

/// Follows the ZIP64 locator just before the end record (APPNOTE 4.3.14-15),
/// for archives whose counts or offsets overflow the classic fields.
fn locate_zip64_central_dir<R: Read + Seek>(
    file: &mut R,
    eocd_pos: u64,
) -> io::Result<Option<CentralDir>> {
    let Some(locator_pos) = eocd_pos.checked_sub(ZIP64_LOCATOR_LEN) else {
        return Ok(None);
    };
    let mut locator = [0; ZIP64_LOCATOR_LEN as usize];
    read_at(file, locator_pos, &mut locator)?;
    let record_pos = le(&locator, 8, 8);
    let record_fits = record_pos
        .checked_add(ZIP64_EOCD_LEN as u64)
        .is_some_and(|end| end <= locator_pos);
    if !locator.starts_with(ZIP64_LOCATOR_SIG) || !record_fits {
        return Ok(None);
    }
    let mut record = [0; ZIP64_EOCD_LEN];
    read_at(file, record_pos, &mut record)?;
    let cd = CentralDir {
        entries: le(&record, 32, 8),
        size: le(&record, 40, 8),
        offset: le(&record, 48, 8),
    };
    let valid = record.starts_with(ZIP64_EOCD_SIG) && cd.fits_before(record_pos);
    Ok(valid.then_some(cd))
}

/// Reads every entry name through a small buffer: memory stays fixed and
/// the work is bounded by the directory size, itself within the file.
fn walk_central_dir<R: Read + Seek>(
    file: &mut R,
    cd: &CentralDir,
) -> io::Result<Option<OoxmlParts>> {
    file.seek(SeekFrom::Start(cd.offset))?;
    let mut reader = BufReader::new(file).take(cd.size);
    let mut parts = OoxmlParts::default();
    // The longest part name looked for is 19 bytes; longer names are skipped.
    let mut name = [0; 32];
    for _ in 0..cd.entries {
        let mut header = [0; ENTRY_LEN];
        reader.read_exact(&mut header)?;
        if !header.starts_with(ENTRY_SIG) {
            return Ok(None);
        }
        let name_len = le(&header, 28, 2) as usize;
        let mut skip = le(&header, 30, 2) + le(&header, 32, 2);
        if name_len <= name.len() {
            reader.read_exact(&mut name[..name_len])?;
            parts.note(&name[..name_len]);
        } else {
            skip += name_len as u64;
        }
        if io::copy(&mut reader.by_ref().take(skip), &mut io::sink())? != skip {
            return Ok(None);
        }
    }
    Ok(Some(parts))
}

fn read_at<R: Read + Seek>(file: &mut R, pos: u64, buf: &mut [u8]) -> io::Result<()> {
    file.seek(SeekFrom::Start(pos))?;
    file.read_exact(buf)
}

/// A little-endian integer of `n` bytes at `at`; bytes past the end read as
/// zero, so a short buffer can never panic.
fn le(bytes: &[u8], at: usize, n: usize) -> u64 {
    bytes
        .iter()
        .skip(at)
        .take(n)
        .rev()
        .fold(0, |acc, &b| (acc << 8) | u64::from(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCX: &[&str] = &["[Content_Types].xml", "_rels/.rels", "word/document.xml"];
    const XLSX: &[&str] = &["[Content_Types].xml", "_rels/.rels", "xl/workbook.xml"];

    /// A stored ZIP with a tiny body per entry, optionally through ZIP64
    /// records, built by hand so the tests need no zip crate.
    fn zip_of(names: &[&str], comment: &[u8], zip64: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut cd = Vec::new();
        for name in names {
            let offset = out.len() as u32;
            let name_len = (name.len() as u16).to_le_bytes();
            out.extend_from_slice(b"PK\x03\x04\x14\0\0\0\0\0\0\0\0\0\0\0\0\0\x02\0\0\0\x02\0\0\0");
            out.extend_from_slice(&name_len);
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"hi");
            cd.extend_from_slice(
                b"PK\x01\x02\x14\0\x14\0\0\0\0\0\0\0\0\0\0\0\0\0\x02\0\0\0\x02\0\0\0",
            );
            cd.extend_from_slice(&name_len);
            cd.extend_from_slice(&[0; 12]);
            cd.extend_from_slice(&offset.to_le_bytes());
            cd.extend_from_slice(name.as_bytes());
        }
        let (cd_offset, cd_size, count) = (out.len() as u64, cd.len() as u64, names.len() as u64);
        out.extend_from_slice(&cd);
        if zip64 {
            let record_pos = out.len() as u64;
            out.extend_from_slice(ZIP64_EOCD_SIG);
            out.extend_from_slice(&44u64.to_le_bytes());
            out.extend_from_slice(&[45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            for field in [count, count, cd_size, cd_offset] {
                out.extend_from_slice(&field.to_le_bytes());
            }
            out.extend_from_slice(ZIP64_LOCATOR_SIG);
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&record_pos.to_le_bytes());
            out.extend_from_slice(&1u32.to_le_bytes());
        }
        let (count16, size32, offset32) = if zip64 {
            (0xFFFF, 0xFFFF_FFFF, 0xFFFF_FFFF)
        } else {
            (count as u16, cd_size as u32, cd_offset as u32)
        };
        out.extend_from_slice(EOCD_SIG);
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&count16.to_le_bytes());
        out.extend_from_slice(&count16.to_le_bytes());
        out.extend_from_slice(&size32.to_le_bytes());
        out.extend_from_slice(&offset32.to_le_bytes());
        out.extend_from_slice(&(comment.len() as u16).to_le_bytes());
        out.extend_from_slice(comment);
        out
    }

    fn elf() -> Vec<u8> {
        let mut bytes = b"\x7fELF\x02\x01\x01\0".to_vec();
        bytes.resize(64, 0);
        bytes
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    use Detected::{Known, Other};

    #[test]
    fn names_round_trip() {
        for format in Format::ALL {
            assert_eq!(Format::from_name(format.name()), Some(format));
            assert_eq!(
                Format::from_name(&format.name().to_uppercase()),
                Some(format)
            );
            assert!(format.extension_agrees(format.name()));
            assert_eq!(format.to_string(), format.name());
        }
        assert_eq!(Format::from_name("JPG"), Some(Format::Jpeg));
        assert_eq!(Format::from_name("exe"), None);
        assert_eq!(Format::from_name(""), None);
    }

    #[test]
    fn mimes() {
        assert_eq!(Format::Pdf.mime(), "application/pdf");
        assert_eq!(Format::Txt.mime(), "text/plain; charset=utf-8");
        assert_eq!(Format::Csv.mime(), "text/csv; charset=utf-8");
        assert!(Format::Docx.mime().ends_with("wordprocessingml.document"));
        assert!(Format::Xlsx.mime().ends_with("spreadsheetml.sheet"));
        let mut all: Vec<_> = Format::ALL.iter().map(|f| f.mime()).collect();
        all.dedup();
        assert_eq!(all.len(), Format::ALL.len());
    }

    #[test]
    fn extensions_that_agree() {
        assert!(Format::Jpeg.extension_agrees("JPG"));
        assert!(Format::Jpeg.extension_agrees("jpeg"));
        assert!(Format::Txt.extension_agrees("log"));
        assert!(Format::Txt.extension_agrees("md"));
        assert!(!Format::Txt.extension_agrees("csv"));
        assert!(!Format::Txt.extension_agrees("html"));
        assert!(!Format::Zip.extension_agrees("docx"));
        assert!(!Format::Docx.extension_agrees("zip"));
        assert!(!Format::Png.extension_agrees(""));
    }

    #[test]
    fn magic_bytes() {
        assert_eq!(detect(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"), Known(Format::Pdf));
        assert_eq!(detect(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), Known(Format::Png));
        assert_eq!(detect(b"\xFF\xD8\xFF\xE0\0\x10JFIF"), Known(Format::Jpeg));
        assert_eq!(detect(b"GIF89a\x01\0\x01\0"), Known(Format::Gif));
        assert_eq!(detect(b"GIF87a\x01\0\x01\0"), Known(Format::Gif));
        assert_eq!(detect(b"RIFF\x24\0\0\0WEBPVP8 "), Known(Format::Webp));
        assert_eq!(detect(b"RIFF\x24\0\0\0WAVEfmt "), Other("wav"));
    }

    #[test]
    fn text_and_its_lookalikes() {
        assert_eq!(detect(b""), Known(Format::Txt));
        assert_eq!(detect("héllo, wörld\n".as_bytes()), Known(Format::Txt));
        assert_eq!(detect(b"<!DOCTYPE html><html></html>"), Known(Format::Txt));
        assert_eq!(detect(b"GIF is a format"), Known(Format::Txt));
        assert_eq!(detect(b"see the %PDF-1.7 header"), Known(Format::Txt));
        assert_eq!(detect(b"a\0b"), Other("binary"));
        assert_eq!(detect(b"caf\xe9"), Other("binary"));
        assert_eq!(detect(&"cut €".as_bytes()[..5]), Other("binary"));
    }

    #[test]
    fn binaries_are_named() {
        assert_eq!(detect(&elf()), Other("elf"));
        assert_eq!(detect(b"<html lang=\"fr\">caf\xe9</html>"), Other("html"));
        assert_eq!(
            detect(b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1\0\0"),
            Other("ole2")
        );
        assert_eq!(detect(b"\x01\x02\x03\xff"), Other("binary"));
        // Readers accept a PDF header anywhere in the first KiB of a binary file.
        assert_eq!(detect(b"\xff\xfe junk %PDF-1.4\n\x00"), Known(Format::Pdf));
    }

    #[test]
    fn utf8_split_across_chunks() {
        let text = "aé€😀z".as_bytes();
        for split in 0..=text.len() {
            let mut sniffer = Sniffer::new();
            sniffer.feed(&text[..split]);
            sniffer.feed(&[]);
            sniffer.feed(&text[split..]);
            assert!(sniffer.text.is_text(), "split at {split}");
        }
        let mut byte_by_byte = Sniffer::new();
        text.iter().for_each(|b| byte_by_byte.feed(&[*b]));
        assert!(byte_by_byte.text.is_text());
    }

    #[test]
    fn chunked_utf8_matches_whole_validation() {
        const PIECES: &[&[u8]] = &[
            b"a",
            b"\n",
            "é".as_bytes(),
            "€".as_bytes(),
            "😀".as_bytes(),
            b"\xe2\x82",
            b"\xf0\x9f",
            b"\x80",
            b"\xc0\xaf",
            b"\xed\xa0\x80",
            b"\xf5",
            b"\0",
            b"\xef\xbb\xbf",
        ];
        let mut rng = XorShift(0xDEAD_BEEF_CAFE_F00D);
        let (mut texts, mut binaries) = (0, 0);
        for _ in 0..5_000 {
            let bytes: Vec<u8> = (0..rng.below(12))
                .flat_map(|_| PIECES[rng.below(PIECES.len())].iter().copied())
                .collect();
            let mut sniffer = Sniffer::new();
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let (chunk, tail) = rest.split_at(rng.below(rest.len()) + 1);
                sniffer.feed(chunk);
                rest = tail;
            }
            let expected = std::str::from_utf8(&bytes).is_ok() && !bytes.contains(&0);
            assert_eq!(sniffer.text.is_text(), expected, "{bytes:x?}");
            if expected { texts += 1 } else { binaries += 1 }
        }
        assert!(
            texts > 200 && binaries > 200,
            "{texts} texts, {binaries} binaries"
        );
    }

    #[test]
    fn head_stays_bounded() {
        let mut sniffer = Sniffer::new();
        for _ in 0..100 {
            sniffer.feed(&[b'x'; 1000]);
        }
        assert_eq!(sniffer.head.len(), HEAD_LEN);
        assert!(sniffer.head.capacity() <= HEAD_LEN);
    }

    #[test]
    fn zips_by_their_parts() {
        assert_eq!(detect(&zip_of(DOCX, b"", false)), Known(Format::Docx));
        assert_eq!(detect(&zip_of(XLSX, b"", false)), Known(Format::Xlsx));
        assert_eq!(
            detect(&zip_of(&["a.txt", "b/c.png"], b"", false)),
            Known(Format::Zip)
        );
        assert_eq!(detect(&zip_of(&[], b"", false)), Known(Format::Zip));
        assert_eq!(
            detect(&zip_of(&["word/document.xml"], b"", false)),
            Known(Format::Zip)
        );
        assert_eq!(
            detect(&zip_of(&["[Content_Types].xml"], b"", false)),
            Known(Format::Zip)
        );
        let both = [
            "[Content_Types].xml",
            "word/document.xml",
            "xl/workbook.xml",
        ];
        assert_eq!(detect(&zip_of(&both, b"", false)), Known(Format::Zip));
        let shouting = ["[CONTENT_TYPES].XML", "WORD/Document.xml"];
        assert_eq!(detect(&zip_of(&shouting, b"", false)), Known(Format::Docx));
        let long_name = "x".repeat(300);
        let mut with_long = DOCX.to_vec();
        with_long.insert(1, &long_name);
        assert_eq!(detect(&zip_of(&with_long, b"", false)), Known(Format::Docx));
    }

    #[test]
    fn zip_comments_and_zip64() {
        assert_eq!(
            detect(&zip_of(DOCX, b"a comment", false)),
            Known(Format::Docx)
        );
        let fake_end = zip_of(&[], b"", false);
        assert_eq!(detect(&zip_of(DOCX, &fake_end, false)), Known(Format::Zip));
        assert_eq!(
            detect(&zip_of(XLSX, &[b'c'; 0xFFFF], false)),
            Known(Format::Xlsx)
        );
        assert_eq!(detect(&zip_of(DOCX, b"", true)), Known(Format::Docx));
        assert_eq!(detect(&zip_of(&["a"], b"", true)), Known(Format::Zip));
    }

    #[test]
    fn truncated_zips_are_damaged_not_panics() {
        for zip64 in [false, true] {
            let docx = zip_of(DOCX, b"", zip64);
            for len in 4..docx.len() {
                assert_eq!(detect(&docx[..len]), Other("damaged zip"), "len {len}");
            }
        }
    }

    #[test]
    fn mutated_zips_never_panic() {
        let mut rng = XorShift(7);
        for zip64 in [false, true] {
            let docx = zip_of(DOCX, b"", zip64);
            for _ in 0..3_000 {
                let mut bytes = docx.clone();
                for _ in 0..rng.below(4) + 1 {
                    let at = rng.below(bytes.len() - 4) + 4;
                    bytes[at] = [0, 0xFF, rng.next() as u8][rng.below(3)];
                }
                let verdict = detect(&bytes);
                let expected = matches!(
                    verdict,
                    Known(Format::Docx | Format::Zip) | Other("damaged zip")
                );
                assert!(expected, "{verdict:?} for {bytes:x?}");
            }
        }
    }

    #[test]
    fn lying_end_records_are_damaged() {
        let mut huge = zip_of(DOCX, b"", false);
        let end = huge.len() - EOCD_LEN;
        huge[end + 8..end + 12].copy_from_slice(&[0xFE, 0xFF, 0xFE, 0xFF]);
        assert_eq!(detect(&huge), Other("damaged zip"));
        let mut far = zip_of(DOCX, b"", false);
        far[end + 16..end + 20].copy_from_slice(&0x7FFF_FFF0u32.to_le_bytes());
        assert_eq!(detect(&far), Other("damaged zip"));
        assert_eq!(
            detect(b"PK\x03\x04 no directory at all"),
            Other("damaged zip")
        );
    }

    #[test]
    fn finish_reads_a_real_file() -> io::Result<()> {
        let path = std::env::temp_dir().join(format!("upgate-formats-{}.docx", std::process::id()));
        let bytes = zip_of(DOCX, b"", false);
        std::fs::write(&path, &bytes)?;
        let mut sniffer = Sniffer::new();
        bytes.chunks(7).for_each(|chunk| sniffer.feed(chunk));
        let detected = std::fs::File::open(&path).and_then(|mut file| sniffer.finish(&mut file));
        std::fs::remove_file(&path)?;
        assert_eq!(detected?, Known(Format::Docx));
        Ok(())
    }

    const ALL: &[Format] = &Format::ALL;

    #[test]
    fn check_uses_the_name_to_refine() {
        let text = Known(Format::Txt);
        assert_eq!(check(&text, "notes.txt", ALL), Ok(Format::Txt));
        assert_eq!(check(&text, "notes", ALL), Ok(Format::Txt));
        assert_eq!(check(&text, "bashrc", ALL), Ok(Format::Txt));
        assert_eq!(check(&text, "data.CSV", ALL), Ok(Format::Csv));
        assert_eq!(check(&text, "data.csv", &[Format::Csv]), Ok(Format::Csv));
        assert!(check(&text, "data.txt", &[Format::Csv]).is_err());
        let docx = Known(Format::Docx);
        assert_eq!(check(&docx, "letter.docx", ALL), Ok(Format::Docx));
        assert_eq!(check(&docx, "letter", ALL), Ok(Format::Docx));
        assert_eq!(check(&docx, "letter.zip", ALL), Ok(Format::Zip));
        assert!(check(&docx, "letter.zip", &[Format::Docx]).is_err());
        assert!(check(&Known(Format::Zip), "fake.docx", ALL).is_err());
        assert_eq!(
            check(&Known(Format::Jpeg), "photo.JPG", ALL),
            Ok(Format::Jpeg)
        );
    }

    #[test]
    fn check_refuses_lies_and_the_unaccepted() {
        let html = detect(b"<html><script>alert(1)</script></html>");
        let err = check(&html, "cat.png", ALL).expect_err("html is not a png");
        assert!(err.contains(".png") && err.contains("txt"), "{err}");
        let err = check(&detect(&elf()), "cat.png", ALL).expect_err("elf is refused");
        assert!(err.contains("elf"), "{err}");
        assert!(check(&Known(Format::Pdf), "cat.png", ALL).is_err());
        let err = check(&Known(Format::Pdf), "doc.pdf", &[Format::Png, Format::Jpeg])
            .expect_err("pdf is not accepted");
        assert!(err.ends_with("(accepted: png, jpeg)"), "{err}");
        let err = check(&Known(Format::Png), "a.png", &[]).expect_err("nothing is accepted");
        assert!(err.ends_with("(accepted: none)"), "{err}");
        assert!(check(&Known(Format::Txt), "empty.pdf", ALL).is_err());
    }
}
