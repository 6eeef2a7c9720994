//! The config file as written: serde structs that mirror SPEC §1, every key optional with its default.

use serde::{Deserialize, Serialize};

/// The whole file. Unknown keys anywhere are refused by name.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub upstream: Upstream,
    #[serde(default)]
    pub secret: Secret,
    #[serde(default)]
    pub identity: Identity,
    #[serde(default)]
    pub storage: Storage,
    #[serde(default)]
    pub uploads: Uploads,
    #[serde(default)]
    pub files: Files,
    #[serde(default)]
    pub intercept: Vec<Intercept>,
    #[serde(default)]
    pub slots: Slots,
    #[serde(default)]
    pub control: Control,
    #[serde(default)]
    pub cors: Cors,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    pub listen: Vec<String>,
    pub tls_listen: Vec<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub header_timeout: String,
    pub idle_timeout: String,
    pub shutdown_grace: String,
    pub trusted_proxies: Vec<String>,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            listen: vec!["127.0.0.1:8080".into()],
            tls_listen: Vec::new(),
            tls_cert: None,
            tls_key: None,
            header_timeout: "10s".into(),
            idle_timeout: "60s".into(),
            shutdown_grace: "30s".into(),
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Upstream {
    pub url: String,
    pub connect_timeout: String,
    pub response_timeout: String,
}

impl Default for Upstream {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8000".into(),
            connect_timeout: "5s".into(),
            response_timeout: "60s".into(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Secret {
    pub file: String,
}

impl Default for Secret {
    fn default() -> Self {
        Self {
            file: "/etc/upgate/secret".into(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Identity {
    pub from: String,
    pub issue_cookie: bool,
}

impl Default for Identity {
    fn default() -> Self {
        Self {
            from: "cookie:upgate_client".into(),
            issue_cookie: true,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    pub root: String,
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            root: "/var/lib/upgate".into(),
        }
    }
}

/// A size: `"100MiB"` or a plain number of bytes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

impl From<&str> for Size {
    fn from(s: &str) -> Self {
        Size::Text(s.into())
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Uploads {
    pub route: String,
    pub accept: Vec<String>,
    pub max_file_bytes: Size,
    pub max_session_bytes: Size,
    pub max_session_files: u64,
    pub handle_ttl: String,
    pub retention: String,
    pub intercept_retention: String,
}

impl Default for Uploads {
    fn default() -> Self {
        Self {
            route: "/uploads".into(),
            accept: [
                "pdf", "png", "jpeg", "gif", "webp", "txt", "csv", "docx", "xlsx", "zip",
            ]
            .map(String::from)
            .to_vec(),
            max_file_bytes: "100MiB".into(),
            max_session_bytes: "1GiB".into(),
            max_session_files: 100,
            handle_ttl: "1h".into(),
            retention: "3d".into(),
            intercept_retention: "30d".into(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Files {
    pub route: String,
    pub max_url_ttl: String,
    pub media_root: Option<String>,
    pub media_route: String,
    pub public_prefix: String,
}

impl Default for Files {
    fn default() -> Self {
        Self {
            route: "/files".into(),
            max_url_ttl: "1h".into(),
            media_root: None,
            media_route: "/media".into(),
            public_prefix: "public/".into(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Intercept {
    pub path: String,
    pub accept: Option<Vec<String>>,
    pub max_file_bytes: Option<Size>,
    #[serde(default = "default_rewrite")]
    pub rewrite: String,
}

fn default_rewrite() -> String {
    "form".into()
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Slots {
    pub route: String,
    pub rewrite: String,
}

impl Default for Slots {
    fn default() -> Self {
        Self {
            route: "/slots".into(),
            rewrite: default_rewrite(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Control {
    pub listen: String,
}

impl Default for Control {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9091".into(),
        }
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cors {
    pub allow_origins: Vec<String>,
}
