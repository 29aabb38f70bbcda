//! Logging natively to the systemd journal: each event one entry with its priority and its
//! fields as journal fields (`REGISTRY=`, `OUTCOME=`, `RETRY_IN_S=`, …), so
//! `journalctl -u ecr-edge REGISTRY=…` finds a registry's history.
//!
//! The journal's native protocol (systemd.io/JOURNAL_NATIVE_PROTOCOL) is one datagram per entry
//! on `/run/systemd/journal/socket`: `KEY=value` lines, or, for a value holding a newline, the
//! key, a newline, the value's length as a little-endian `u64`, the value and a newline.
//!
//! The socket is non-blocking, on purpose. A journal that is busy (rotating after a clock jump,
//! vacuuming on a slow SD card) stops reading, its queue fills, and a blocking send would stall
//! the thread that logs — the daemon's only runtime thread, which also answers the systemd
//! watchdog. Here an entry that does not fit is dropped and counted instead; once the journal
//! reads again, one warning says how many were lost.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Where journald listens for native entries.
const SOCKET: &str = "/run/systemd/journal/socket";

/// The layer: a connected, non-blocking datagram socket and the count of entries it dropped.
pub struct Journal {
    socket: UnixDatagram,
    dropped: AtomicU64,
}

impl Journal {
    /// Connects to the journal's socket.
    ///
    /// # Errors
    /// The socket cannot be made or journald is not listening.
    pub fn connect() -> io::Result<Journal> {
        Journal::connect_to(Path::new(SOCKET))
    }

    fn connect_to(path: &Path) -> io::Result<Journal> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(path)?;
        socket.set_nonblocking(true)?;
        Ok(Journal {
            socket,
            dropped: AtomicU64::new(0),
        })
    }

    /// Sends one entry; counts it as dropped when the journal does not take it now.
    fn send(&self, entry: &[u8]) -> bool {
        match self.socket.send(entry) {
            Ok(_) => true,
            Err(e) if e.raw_os_error() == Some(nix::libc::EMSGSIZE) => {
                // Larger than a datagram may be (hundreds of KiB; no event of ours is): the
                // same event as a stderr line, which systemd also files in the journal.
                let text = String::from_utf8_lossy(entry);
                eprintln!("{}", text.replace('\n', " "));
                true
            }
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// syslog priorities: error 3, warning 4, info 6, debug and trace 7.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// One entry being built.
struct Entry {
    buf: Vec<u8>,
}

impl Entry {
    fn new(priority: u8) -> Entry {
        let mut entry = Entry {
            buf: Vec::with_capacity(256),
        };
        entry.field("PRIORITY", &priority.to_string());
        entry.field("SYSLOG_IDENTIFIER", "ecr-edge");
        entry
    }

    /// Appends `key` (already a valid journal field name) with `value`.
    fn field(&mut self, key: &str, value: &str) {
        self.buf.extend_from_slice(key.as_bytes());
        if value.contains('\n') {
            self.buf.push(b'\n');
            self.buf
                .extend_from_slice(&(value.len() as u64).to_le_bytes());
        } else {
            self.buf.push(b'=');
        }
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.push(b'\n');
    }
}

/// A tracing field name as a journal field name: upper case letters, digits and underscores,
/// not starting with an underscore or digit (those are the journal's own), at most 64 bytes.
fn field_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' => c.to_ascii_uppercase(),
            'A'..='Z' | '0'..='9' => c,
            _ => '_',
        })
        .collect();
    while out.starts_with(|c: char| c == '_' || c.is_ascii_digit()) {
        out.remove(0);
    }
    out.truncate(64);
    out
}

impl Visit for Entry {
    fn record_str(&mut self, field: &Field, value: &str) {
        let name = match field.name() {
            "message" => "MESSAGE".to_owned(),
            other => field_name(other),
        };
        if !name.is_empty() && name != "PRIORITY" && name != "SYSLOG_IDENTIFIER" {
            self.field(&name, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

impl<S: Subscriber> Layer<S> for Journal {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let lost = self.dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let mut notice = Entry::new(4);
            notice.field(
                "MESSAGE",
                &format!(
                    "{lost} log entries dropped: the journal was not reading (busy or stalled)"
                ),
            );
            notice.field("DROPPED", &lost.to_string());
            if !self.send(&notice.buf) {
                // Still full: this notice is not one of the lost entries; the count stays.
                self.dropped.fetch_add(lost - 1, Ordering::Relaxed);
            }
        }
        let mut entry = Entry::new(priority(event.metadata().level()));
        event.record(&mut entry);
        self.send(&entry.buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_follow_the_journals_rules() {
        assert_eq!(field_name("registry"), "REGISTRY");
        assert_eq!(field_name("retry_in_s"), "RETRY_IN_S");
        assert_eq!(field_name("_private"), "PRIVATE");
        assert_eq!(field_name("9lives"), "LIVES");
        assert_eq!(field_name("a.b-c"), "A_B_C");
        assert_eq!(field_name(&"x".repeat(80)).len(), 64);
    }

    #[test]
    fn values_with_newlines_use_the_length_form() {
        let mut e = Entry { buf: Vec::new() };
        e.field("A", "one");
        e.field("B", "two\nlines");
        let mut want = b"A=one\nB\n".to_vec();
        want.extend_from_slice(&9u64.to_le_bytes());
        want.extend_from_slice(b"two\nlines\n");
        assert_eq!(e.buf, want);
    }

    #[test]
    fn a_full_journal_drops_and_counts_instead_of_blocking() {
        let dir = std::env::temp_dir().join(format!("ecr-edge-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("socket");
        let server = UnixDatagram::bind(&path).unwrap();
        let journal = Journal::connect_to(&path).unwrap();
        // The queue holds at most net.unix.max_dgram_qlen entries (10 by default): far more
        // than that returns at once, the rest counted.
        let sent = (0..1000).filter(|_| journal.send(b"MESSAGE=x\n")).count();
        assert!(sent < 1000, "all sends taken");
        assert_eq!(journal.dropped.load(Ordering::Relaxed), 1000 - sent as u64);
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
