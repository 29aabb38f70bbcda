//! systemd's notify protocol (`sd_notify(3)`): one datagram of `KEY=value` lines to the socket
//! named by `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace). Without that
//! variable (not started by systemd with `Type=notify`) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// Where systemd listens, if it does.
#[derive(Debug, Clone)]
pub struct Notifier {
    target: Option<Target>,
}

#[derive(Debug, Clone)]
enum Target {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`.
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|v| {
            let bytes = std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()).to_vec();
            match bytes.split_first() {
                Some((b'@', name)) => Some(Target::Abstract(name.to_vec())),
                Some((b'/', _)) => Some(Target::Path(PathBuf::from(v))),
                _ => None,
            }
        });
        Notifier { target }
    }

    /// Sends `state` (e.g. `READY=1\nSTATUS=…`); failures are logged, never fatal. Never
    /// blocks: a listener that stops reading fills its queue (10 datagrams by default), and a
    /// blocking send would then stall the daemon's only thread.
    pub fn send(&self, state: &str) {
        let Some(target) = &self.target else { return };
        let sock = UnixDatagram::unbound().and_then(|s| s.set_nonblocking(true).map(|()| s));
        let result = sock.and_then(|sock| match target {
            Target::Path(p) => sock.send_to(state.as_bytes(), p),
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(state.as_bytes(), &addr)
            }
        });
        if let Err(e) = result {
            tracing::debug!("sd_notify failed: {e}");
        }
    }
}

/// The watchdog interval systemd asked for (`$WATCHDOG_USEC`, for this process per
/// `$WATCHDOG_PID`), halved as `sd_watchdog_enabled(3)` advises.
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            target: Some(Target::Path(path)),
        };
        n.send("READY=1\nSTATUS=ok");
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=ok");
        // No target: nothing happens, nothing fails.
        Notifier { target: None }.send("READY=1");
        // A listener that stops reading: once its queue is full, sends are dropped and never
        // block (a blocking send would stall the daemon's only thread until systemd reads).
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..1000 {
                n.send("STATUS=busy");
            }
            let _ = done_tx.send(());
        });
        assert!(
            done_rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .is_ok(),
            "send blocked on a full notify socket"
        );
        server.set_nonblocking(true).unwrap();
        let mut queued = 0;
        while server.recv(&mut buf).is_ok() {
            queued += 1;
        }
        assert!(
            (1..1000).contains(&queued),
            "{queued} of 1000 queued: the rest must have been dropped"
        );
    }
}
