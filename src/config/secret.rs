//! The secret file (SPEC §1): created 0600 when missing, refused when others may read it or when it is short.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};

use super::ConfigError;

const KEY: &str = "secret.file";
/// The shortest key accepted, in bytes.
pub const MIN_LEN: usize = 32;

/// A new random secret as `upgate keygen` prints it: 32 random bytes, base64url.
pub fn generate() -> Result<String, ring::error::Unspecified> {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Reads the key (the file's bytes, surrounding whitespace trimmed), creating the file first if it is missing.
pub fn load_or_create(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let err = |problem: String| ConfigError {
        key: KEY.into(),
        problem: format!("{}: {problem}", path.display()),
    };
    if !path.exists() {
        create(path).map_err(|e| err(format!("cannot create: {e}")))?;
        tracing::info!(path = %path.display(), "created a new secret file");
    }
    let meta = fs::metadata(path).map_err(|e| err(format!("cannot read: {e}")))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(err(format!(
            "mode {:o} lets others read it; run chmod 600",
            meta.permissions().mode() & 0o777
        )));
    }
    let bytes = fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let key = bytes.trim_ascii().to_vec();
    if key.len() < MIN_LEN {
        return Err(err(format!(
            "holds {} bytes; at least {MIN_LEN} are needed (make one with `upgate keygen`)",
            key.len()
        )));
    }
    Ok(key)
}

fn create(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    let secret = generate().map_err(|_| std::io::Error::other("no system randomness"))?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(secret.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_private_then_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/secret");
        let first = load_or_create(&path).expect("created");
        assert_eq!(first.len(), 43);
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create(&path).expect("reloaded"), first);
    }

    #[test]
    fn readable_by_others_or_short_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        fs::write(&path, "x".repeat(40)).expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = load_or_create(&path).expect_err("world readable");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        fs::write(&path, "  short  \n").expect("write");
        let e = load_or_create(&path).expect_err("short");
        assert!(e.to_string().contains("at least 32"), "{e}");
    }
}
