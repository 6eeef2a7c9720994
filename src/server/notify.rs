//! Telling the service manager where upgate is (sd_notify(3)): ready, reloading, stopping, a status line.
//!
//! Written here rather than taken from a crate: the protocol is one datagram of `KEY=value` lines
//! to `$NOTIFY_SOCKET`, and the usual crate does not reach abstract sockets (`@name`), which
//! systemd may hand out. Without `NOTIFY_SOCKET` (not under systemd, or not `Type=notify`) every
//! call does nothing; a failed send is logged, never fatal, since serving matters more.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Startup is done: every listener is bound and accepting.
pub fn ready() {
    send("READY=1\nSTATUS=serving");
}

/// A reload has begun; [`ready`] ends it. systemd >= 253 refuses `RELOADING=1` without the
/// `CLOCK_MONOTONIC` time of the request beside it (sd_notify(3), `MONOTONIC_USEC=`).
pub fn reloading() {
    send(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading",
        monotonic_usec()
    ));
}

/// The drain has begun: systemd shows the unit as deactivating from here on.
pub fn stopping() {
    send("STOPPING=1\nSTATUS=draining");
}

/// A free-form line that `systemctl status` shows.
pub fn status(text: &str) {
    // A newline would start a new assignment: keep the status one line.
    let line: String = text.chars().filter(|c| !c.is_control()).collect();
    send(&format!("STATUS={line}"));
}

fn send(message: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_to(&target, message) {
        tracing::warn!(socket = ?target, error = %e, "cannot notify the service manager");
    }
}

fn send_to(target: &OsStr, message: &str) -> io::Result<()> {
    let addr = socket_addr(target)?;
    let sent = UnixDatagram::unbound()?.send_to_addr(message.as_bytes(), &addr)?;
    if sent != message.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "datagram cut short",
        ));
    }
    Ok(())
}

/// A path, or with a leading `@` the name of an abstract socket (sd_notify(3)).
fn socket_addr(target: &OsStr) -> io::Result<SocketAddr> {
    match target.as_encoded_bytes().split_first() {
        Some((b'@', name)) => SocketAddr::from_abstract_name(name),
        Some((b'/', _)) => SocketAddr::from_pathname(target),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is neither an absolute path nor @abstract",
        )),
    }
}

fn monotonic_usec() -> u128 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let secs = u128::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u128::try_from(now.tv_nsec).unwrap_or(0);
    secs * 1_000_000 + nanos / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> io::Result<SocketAddr> {
        socket_addr(OsStr::new(s))
    }

    fn received(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("recv");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn socket_addresses() {
        let abs = addr("@upgate/notify").expect("abstract");
        assert_eq!(abs.as_abstract_name(), Some(&b"upgate/notify"[..]));
        let path = addr("/run/systemd/notify").expect("path");
        assert_eq!(
            path.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        assert!(addr("").is_err());
        assert!(addr("relative/notify").is_err());
        // vsock: addresses (systemd >= 254) are not unix sockets: refused, not misread.
        assert!(addr("vsock:2:1234").is_err());
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).expect("bind");
        send_to(path.as_os_str(), "READY=1").expect("send");
        assert_eq!(received(&sock), "READY=1");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("upgate-test-{}", std::process::id());
        let sock = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).expect("name"))
            .expect("bind");
        send_to(OsStr::new(&format!("@{name}")), "STOPPING=1").expect("send");
        assert_eq!(received(&sock), "STOPPING=1");
    }

    #[test]
    fn nobody_listening_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(send_to(dir.path().join("absent").as_os_str(), "READY=1").is_err());
    }

    #[test]
    fn monotonic_time_moves_forward_from_boot() {
        let a = monotonic_usec();
        let b = monotonic_usec();
        assert!(a > 0 && b >= a);
    }
}
