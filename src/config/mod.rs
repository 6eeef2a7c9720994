//! The validated configuration: typed durations, sizes, addresses and paths, built from [`file::File`].

pub mod file;
pub mod secret;
pub mod units;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use http::uri::{Authority, Scheme};
use ipnet::IpNet;

pub use units::{parse_duration, parse_size};

/// A config problem, always naming the key it is about.
#[derive(Debug, thiserror::Error)]
#[error("config: {key}: {problem}")]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

fn bad(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        problem: problem.into(),
    }
}

/// Format names that `accept` lists may use.
pub const FORMAT_NAMES: [&str; 10] = [
    "pdf", "png", "jpeg", "gif", "webp", "txt", "csv", "docx", "xlsx", "zip",
];

#[derive(Debug, Clone)]
pub struct Config {
    pub server: Server,
    pub upstream: Upstream,
    pub secret_file: PathBuf,
    pub identity: Identity,
    pub storage_root: PathBuf,
    pub uploads: Uploads,
    pub files: Files,
    pub intercepts: Vec<Intercept>,
    pub slots: Slots,
    pub control: ControlListen,
    pub cors_origins: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: Vec<SocketAddr>,
    pub tls: Option<Tls>,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub shutdown_grace: Duration,
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Debug, Clone)]
pub struct Tls {
    pub listen: Vec<SocketAddr>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    Cookie(String),
    Header(HeaderName),
}

#[derive(Debug, Clone)]
pub struct Identity {
    pub source: IdentitySource,
    /// Only ever true for a cookie source.
    pub issue_cookie: bool,
}

#[derive(Debug, Clone)]
pub struct Uploads {
    pub route: String,
    pub accept: Vec<String>,
    pub max_file_bytes: u64,
    pub max_session_bytes: u64,
    pub max_session_files: u64,
    pub handle_ttl: Duration,
    pub retention: Duration,
    pub intercept_retention: Duration,
}

#[derive(Debug, Clone)]
pub struct Files {
    pub route: String,
    pub max_url_ttl: Duration,
    pub media_root: Option<PathBuf>,
    pub media_route: String,
    pub public_prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewrite {
    Form,
    Json,
}

impl Rewrite {
    pub fn name(self) -> &'static str {
        match self {
            Rewrite::Form => "form",
            Rewrite::Json => "json",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Intercept {
    /// The exact path, or the prefix (without the `*`) when `prefix` is set.
    pub path: String,
    pub prefix: bool,
    pub accept: Option<Vec<String>>,
    pub max_file_bytes: Option<u64>,
    pub rewrite: Rewrite,
}

#[derive(Debug, Clone)]
pub struct Slots {
    pub route: String,
    pub rewrite: Rewrite,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlListen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Config {
    /// Reads, parses and validates the file at `path`; relative paths in it are taken from the file's folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad("--config", format!("cannot read {}: {e}", path.display())))?;
        let raw = parse_file(&text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_file(raw, base)
    }

    /// Validates a parsed file; `base` anchors relative paths.
    pub fn from_file(raw: file::File, base: &Path) -> Result<Config, ConfigError> {
        Ok(Config {
            server: server(&raw.server, base)?,
            upstream: upstream(&raw.upstream)?,
            secret_file: anchored(base, &raw.secret.file, "secret.file")?,
            identity: identity(&raw.identity)?,
            storage_root: anchored(base, &raw.storage.root, "storage.root")?,
            uploads: uploads(&raw.uploads)?,
            files: files(&raw.files, base)?,
            intercepts: intercepts(&raw.intercept)?,
            slots: Slots {
                route: route(&raw.slots.route, "slots.route")?,
                rewrite: rewrite(&raw.slots.rewrite, "slots.rewrite")?,
            },
            control: control(&raw.control.listen)?,
            cors_origins: cors(&raw.cors.allow_origins)?,
        })
    }
}

/// Parses TOML into the raw structs, naming the key of any problem.
pub fn parse_file(text: &str) -> Result<file::File, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| bad("(file)", one_line(e.message())))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        // An unknown key is named as the file spells it, and a quoted TOML key may hold any
        // character: escaped, a "\n" in it cannot break the error into two log lines.
        let key = escape_controls(&e.path().to_string());
        bad(
            if key == "." { "(file)" } else { &key },
            one_line(e.inner().message()),
        )
    })
}

/// One line of plain text: whitespace runs become one space, other control characters are escaped.
fn one_line(s: &str) -> String {
    escape_controls(&s.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Control characters as Rust escapes (`\n`, `\u{1b}`); everything else as it is.
fn escape_controls(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn duration(text: &str, key: &str) -> Result<Duration, ConfigError> {
    parse_duration(text).map_err(|p| bad(key, p))
}

fn size(value: &file::Size, key: &str) -> Result<u64, ConfigError> {
    let n = match value {
        file::Size::Bytes(n) => *n,
        file::Size::Text(t) => parse_size(t).map_err(|p| bad(key, p))?,
    };
    if n == 0 {
        return Err(bad(key, "must be greater than zero"));
    }
    Ok(n)
}

fn anchored(base: &Path, text: &str, key: &str) -> Result<PathBuf, ConfigError> {
    if text.trim().is_empty() {
        return Err(bad(key, "must not be empty"));
    }
    let path = Path::new(text);
    Ok(if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    })
}

fn socket_addrs(list: &[String], key: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    list.iter()
        .map(|a| {
            a.parse().map_err(|_| {
                bad(
                    key,
                    format!("{a:?} is not an address like \"127.0.0.1:8080\" or \"[::]:8080\""),
                )
            })
        })
        .collect()
}

fn server(raw: &file::Server, base: &Path) -> Result<Server, ConfigError> {
    let listen = socket_addrs(&raw.listen, "server.listen")?;
    let tls_listen = socket_addrs(&raw.tls_listen, "server.tls_listen")?;
    if listen.is_empty() && tls_listen.is_empty() {
        return Err(bad(
            "server.listen",
            "no listener: give listen or tls_listen",
        ));
    }
    let tls = if tls_listen.is_empty() {
        None
    } else {
        let cert = raw
            .tls_cert
            .as_deref()
            .ok_or_else(|| bad("server.tls_cert", "required with tls_listen"))?;
        let key = raw
            .tls_key
            .as_deref()
            .ok_or_else(|| bad("server.tls_key", "required with tls_listen"))?;
        Some(Tls {
            listen: tls_listen,
            cert: anchored(base, cert, "server.tls_cert")?,
            key: anchored(base, key, "server.tls_key")?,
        })
    };
    let trusted_proxies = raw
        .trusted_proxies
        .iter()
        .map(|c| {
            cidr(c).ok_or_else(|| {
                bad(
                    "server.trusted_proxies",
                    format!("{c:?} is not a CIDR like \"10.0.0.0/8\""),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Server {
        listen,
        tls,
        header_timeout: duration(&raw.header_timeout, "server.header_timeout")?,
        idle_timeout: duration(&raw.idle_timeout, "server.idle_timeout")?,
        shutdown_grace: duration(&raw.shutdown_grace, "server.shutdown_grace")?,
        trusted_proxies,
    })
}

/// A CIDR, or a single address taken as /32 or /128.
fn cidr(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

fn upstream(raw: &file::Upstream) -> Result<Upstream, ConfigError> {
    let key = "upstream.url";
    let uri: http::Uri = raw
        .url
        .parse()
        .map_err(|e| bad(key, format!("{:?}: {e}", raw.url)))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| bad(key, "needs a scheme, e.g. \"http://127.0.0.1:8000\""))?;
    if scheme != Scheme::HTTP {
        return Err(bad(
            key,
            "only http:// upstreams are supported (upgate runs beside the application)",
        ));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| bad(key, "needs a host and port"))?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad(
            key,
            "must not have a path or query: requests keep their own path",
        ));
    }
    Ok(Upstream {
        scheme,
        authority,
        connect_timeout: duration(&raw.connect_timeout, "upstream.connect_timeout")?,
        response_timeout: duration(&raw.response_timeout, "upstream.response_timeout")?,
    })
}

fn identity(raw: &file::Identity) -> Result<Identity, ConfigError> {
    let key = "identity.from";
    let source = match raw.from.split_once(':') {
        Some(("cookie", name)) if is_token(name) => IdentitySource::Cookie(name.to_string()),
        Some(("header", name)) => IdentitySource::Header(
            HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| bad(key, format!("{name:?} is not a header name")))?,
        ),
        _ => {
            return Err(bad(
                key,
                format!("{:?}: use \"cookie:NAME\" or \"header:NAME\"", raw.from),
            ));
        }
    };
    let issue_cookie = raw.issue_cookie && matches!(source, IdentitySource::Cookie(_));
    if raw.issue_cookie && !issue_cookie {
        tracing::warn!("identity.issue_cookie is ignored: the identity comes from a header");
    }
    Ok(Identity {
        source,
        issue_cookie,
    })
}

/// RFC 9110 token characters, as cookie names use them.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn route(text: &str, key: &str) -> Result<String, ConfigError> {
    let ok = text.starts_with('/')
        && text.len() > 1
        && !text.ends_with('/')
        && !text.contains(['?', '#', '*', ' '])
        && !text.starts_with("/_upgate");
    if ok {
        Ok(text.to_string())
    } else {
        Err(bad(
            key,
            format!(
                "{text:?} must be a path like \"/uploads\" (no trailing slash, not under /_upgate)"
            ),
        ))
    }
}

fn accept(list: &[String], key: &str) -> Result<Vec<String>, ConfigError> {
    let mut out: Vec<String> = Vec::new();
    for name in list {
        let lower = name.to_ascii_lowercase();
        let lower = if lower == "jpg" {
            "jpeg".to_string()
        } else {
            lower
        };
        if !FORMAT_NAMES.contains(&lower.as_str()) {
            return Err(bad(
                key,
                format!(
                    "unknown format {name:?} (known: {})",
                    FORMAT_NAMES.join(", ")
                ),
            ));
        }
        if !out.contains(&lower) {
            out.push(lower);
        }
    }
    if out.is_empty() {
        return Err(bad(key, "accepts no format"));
    }
    Ok(out)
}

fn uploads(raw: &file::Uploads) -> Result<Uploads, ConfigError> {
    if raw.max_session_files == 0 {
        return Err(bad(
            "uploads.max_session_files",
            "must be greater than zero",
        ));
    }
    Ok(Uploads {
        route: route(&raw.route, "uploads.route")?,
        accept: accept(&raw.accept, "uploads.accept")?,
        max_file_bytes: size(&raw.max_file_bytes, "uploads.max_file_bytes")?,
        max_session_bytes: size(&raw.max_session_bytes, "uploads.max_session_bytes")?,
        max_session_files: raw.max_session_files,
        handle_ttl: duration(&raw.handle_ttl, "uploads.handle_ttl")?,
        retention: duration(&raw.retention, "uploads.retention")?,
        intercept_retention: duration(&raw.intercept_retention, "uploads.intercept_retention")?,
    })
}

fn files(raw: &file::Files, base: &Path) -> Result<Files, ConfigError> {
    let media_root = match &raw.media_root {
        Some(root) => Some(anchored(base, root, "files.media_root")?),
        None => None,
    };
    if raw.public_prefix.starts_with('/') || raw.public_prefix.contains("..") {
        return Err(bad(
            "files.public_prefix",
            "must be relative to media_root, like \"public/\"",
        ));
    }
    Ok(Files {
        route: route(&raw.route, "files.route")?,
        max_url_ttl: duration(&raw.max_url_ttl, "files.max_url_ttl")?,
        media_root,
        media_route: route(&raw.media_route, "files.media_route")?,
        public_prefix: raw.public_prefix.clone(),
    })
}

fn rewrite(text: &str, key: &str) -> Result<Rewrite, ConfigError> {
    match text {
        "form" => Ok(Rewrite::Form),
        "json" => Ok(Rewrite::Json),
        other => Err(bad(key, format!("{other:?}: use \"form\" or \"json\""))),
    }
}

fn intercepts(raw: &[file::Intercept]) -> Result<Vec<Intercept>, ConfigError> {
    raw.iter()
        .enumerate()
        .map(|(i, r)| {
            let key = |k: &str| format!("intercept[{i}].{k}");
            let (path, prefix) = match r.path.strip_suffix("/*") {
                Some(p) => (format!("{p}/"), true),
                None => (r.path.clone(), false),
            };
            if !path.starts_with('/') || path.contains(['?', '#', '*']) {
                return Err(bad(
                    &key("path"),
                    format!("{:?} must be an exact path or end in \"/*\"", r.path),
                ));
            }
            Ok(Intercept {
                path,
                prefix,
                accept: r
                    .accept
                    .as_deref()
                    .map(|a| accept(a, &key("accept")))
                    .transpose()?,
                max_file_bytes: r
                    .max_file_bytes
                    .as_ref()
                    .map(|s| size(s, &key("max_file_bytes")))
                    .transpose()?,
                rewrite: rewrite(&r.rewrite, &key("rewrite"))?,
            })
        })
        .collect()
}

fn control(text: &str) -> Result<ControlListen, ConfigError> {
    let key = "control.listen";
    if let Some(path) = text.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(bad(key, "unix: needs a socket path"));
        }
        return Ok(ControlListen::Unix(PathBuf::from(path)));
    }
    let addr: SocketAddr = text.parse().map_err(|_| {
        bad(
            key,
            format!("{text:?} is neither \"127.0.0.1:PORT\" nor \"unix:/path\""),
        )
    })?;
    if !addr.ip().is_loopback() {
        return Err(bad(
            key,
            format!("{addr} is not a loopback address: the control API must never be public"),
        ));
    }
    Ok(ControlListen::Tcp(addr))
}

fn cors(origins: &[String]) -> Result<Vec<String>, ConfigError> {
    for o in origins {
        let ok = (o.starts_with("http://") || o.starts_with("https://"))
            && !o.ends_with('/')
            && o.parse::<http::Uri>()
                .is_ok_and(|u| u.path() == "/" || u.path().is_empty());
        if !ok {
            return Err(bad(
                "cors.allow_origins",
                format!("{o:?} is not an origin like \"https://app.example.com\""),
            ));
        }
    }
    Ok(origins.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_file(parse_file(text)?, Path::new("/etc/upgate"))
    }

    /// The config fuzz target's invariant, for an input kept in fuzz/corpus/config: an unknown
    /// quoted key holding a newline or an escape character made the error two lines, or a
    /// terminal control sequence.
    #[test]
    fn an_unknown_key_with_control_characters_stays_one_plain_line() {
        for text in [
            "[server]\n\"a\\nb\" = 1\n",
            "[server]\n\"\\u001b[31mred\" = 1\n",
            "'x\ty' = 1\n",
        ] {
            let line = parse_file(text).expect_err("unknown key").to_string();
            assert!(!line.chars().any(char::is_control), "{line:?}");
        }
        let e = parse_file("[server]\n\"a\\nb\" = 1\n").expect_err("unknown key");
        assert_eq!(e.key, r"server.a\nb");
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c = load("").expect("defaults are valid");
        assert_eq!(
            c.server.listen,
            vec!["127.0.0.1:8080".parse().expect("addr")]
        );
        assert_eq!(c.server.header_timeout, Duration::from_secs(10));
        assert_eq!(c.uploads.max_file_bytes, 100 << 20);
        assert_eq!(c.uploads.handle_ttl, Duration::from_secs(3600));
        assert_eq!(
            c.control,
            ControlListen::Tcp("127.0.0.1:9091".parse().expect("addr"))
        );
        assert_eq!(
            c.identity.source,
            IdentitySource::Cookie("upgate_client".into())
        );
        assert!(c.identity.issue_cookie);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = load("[server]\nlisten = []\nlisten_backlog = 5\n").expect_err("unknown key");
        assert_eq!(e.key, "server.listen_backlog");
        assert!(e.to_string().contains("listen_backlog"), "{e}");
        let e = load("[nonsense]\n").expect_err("unknown table");
        assert!(e.to_string().contains("nonsense"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                "[server]\nheader_timeout = \"10 years\"",
                "server.header_timeout",
            ),
            (
                "[uploads]\nmax_file_bytes = \"lots\"",
                "uploads.max_file_bytes",
            ),
            ("[uploads]\naccept = [\"exe\"]", "uploads.accept"),
            ("[upstream]\nurl = \"ftp://x\"", "upstream.url"),
            ("[control]\nlisten = \"0.0.0.0:9091\"", "control.listen"),
            ("[identity]\nfrom = \"query:x\"", "identity.from"),
            (
                "[server]\ntls_listen = [\"127.0.0.1:0\"]",
                "server.tls_cert",
            ),
            (
                "[[intercept]]\npath = \"/a\"\nrewrite = \"xml\"",
                "intercept[0].rewrite",
            ),
            ("[server]\nlisten = 8080", "server.listen"),
        ];
        for (text, key) in cases {
            let e = load(text).expect_err(text);
            assert_eq!(e.key, key, "{text}: {e}");
        }
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let c = load("[storage]\nroot = \"data\"").expect("valid");
        assert_eq!(c.storage_root, PathBuf::from("/etc/upgate/data"));
    }

    #[test]
    fn intercept_prefix() {
        let c =
            load("[[intercept]]\npath = \"/docs/*\"\nmax_file_bytes = \"5MiB\"").expect("valid");
        assert_eq!(c.intercepts[0].path, "/docs/");
        assert!(c.intercepts[0].prefix);
        assert_eq!(c.intercepts[0].max_file_bytes, Some(5 << 20));
    }
}
