//! Logs under systemd (issue 18): with stderr connected to the journal (`$JOURNAL_STREAM`
//! naming it), the daemon sends each event to the journal's native socket with its fields and
//! priority, so `journalctl -u ecr-edge REGISTRY=…` finds it. The test runs in its own mount
//! namespace with a private `/run` whose `systemd/journal/socket` is the test's, and reads back
//! exactly what the journal protocol received, and a journal that stops reading never stalls
//! the daemon.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::daemon::Daemon;
use crate::support::{self, text, Mode, Sandbox};

const REG: &str = "123456789012.dkr.ecr.us-west-2.amazonaws.com";
const DOWN: &str = "210987654321.dkr.ecr.eu-west-1.amazonaws.com";

/// One journal entry in the native protocol: `KEY=value` lines, or for values with newlines
/// `KEY`, a little-endian 64-bit length, the bytes, a newline.
fn parse_entry(mut data: &[u8]) -> HashMap<String, String> {
    let mut fields = HashMap::new();
    while !data.is_empty() {
        let end = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
        let line = &data[..end];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.insert(text(&line[..eq]), text(&line[eq + 1..]));
            data = data.get(end + 1..).unwrap_or_default();
        } else {
            let key = text(line);
            let rest = &data[end + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            fields.insert(key, text(&rest[8..8 + len]));
            data = rest.get(8 + len + 1..).unwrap_or_default();
        }
    }
    fields
}

/// Inside the test's namespace: loopback up, a private `/run` holding the journal's socket (the
/// test's), and `$JOURNAL_STREAM` naming the file the daemon's stderr goes to, as systemd names
/// the stream it connects.
fn fake_journal(sb: &mut Sandbox) -> UnixDatagram {
    let run = |cmd: &str, args: &[&str]| {
        let out = std::process::Command::new(cmd).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{cmd} {args:?}: {}",
            text(&out.stderr)
        );
    };
    run("ip", &["link", "set", "lo", "up"]);
    run("mount", &["--make-rprivate", "/"]);
    run("mount", &["-t", "tmpfs", "tmpfs", "/run"]);
    std::fs::create_dir_all("/run/systemd/journal").unwrap();
    let journal = UnixDatagram::bind("/run/systemd/journal/socket").unwrap();
    journal
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Daemon::start_as truncates this file for stderr: same inode.
    let log = sb.dir.path().join("daemon.log");
    std::fs::write(&log, "").unwrap();
    let meta = std::fs::metadata(&log).unwrap();
    sb.set(
        "JOURNAL_STREAM",
        Some(&format!("{}:{}", meta.dev(), meta.ino())),
    );
    journal
}

#[test]
#[ignore = "needs root (own mount namespace with a private /run); scripts/test runs it as root"]
fn daemon_logs_to_the_journal_with_fields_and_priorities() {
    if !support::inside_namespace("journal::daemon_logs_to_the_journal_with_fields_and_priorities")
    {
        return;
    }
    let mut sb = Sandbox::new();
    let journal = fake_journal(&mut sb);
    // Root may not ask this daemon (allowed_uids), so one refusal is logged too.
    let d = Daemon::start_as(
        &mut sb,
        &format!(
            "[daemon]\nregistries = [\"{REG}\"]\nallowed_uids = [4242]\nallowed_gids = [4242]\n"
        ),
        &["daemon"],
        None,
    );
    d.wait_notify("READY=1", Duration::from_secs(20));
    sb.fake.set_mode(Mode::Reset);
    let _ = sb.helper("get", DOWN.as_bytes());

    let mut entries: Vec<HashMap<String, String>> = Vec::new();
    let mut buf = vec![0u8; 65536];
    let start = Instant::now();
    let has = |entries: &[HashMap<String, String>], what: &str| {
        entries
            .iter()
            .any(|e| e.get("MESSAGE").is_some_and(|m| m.contains(what)))
    };
    while !(has(&entries, "token refreshed") && has(&entries, "refused a client")) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "journal got {entries:#?}; stderr:\n{}",
            d.log()
        );
        if let Ok(n) = journal.recv(&mut buf) {
            if n > 0 {
                entries.push(parse_entry(&buf[..n]));
            }
        }
    }
    let find = |what: &str| {
        entries
            .iter()
            .find(|e| e.get("MESSAGE").is_some_and(|m| m.contains(what)))
            .unwrap_or_else(|| panic!("no {what:?} in {entries:#?}"))
    };
    let started = find("started");
    assert_eq!(started["PRIORITY"], "6", "info is 6: {started:?}");
    assert_eq!(started["SYSLOG_IDENTIFIER"], "ecr-edge");
    let refreshed = find("token refreshed");
    assert_eq!(refreshed["REGISTRY"], REG, "{refreshed:?}");
    assert_eq!(refreshed["PRIORITY"], "6");
    assert!(refreshed.contains_key("NEXT_REFRESH_IN_S"), "{refreshed:?}");
    let refused = find("refused a client");
    assert_eq!(refused["PRIORITY"], "4", "warning is 4: {refused:?}");
    assert_eq!(refused["UID"], "0");
    assert!(refused["PID"].parse::<u32>().is_ok(), "{refused:?}");
    // Nothing went to stderr: the journal has it all, once.
    assert!(d.log().trim().is_empty(), "stderr: {}", d.log());
    let all = format!("{entries:?}");
    assert!(
        !all.contains(&sb.fake.password()),
        "a token reached the journal"
    );
    assert!(!all.contains(support::SECRET_ACCESS_KEY));
}

/// A failed refresh is a warning with the registry, the outcome and the retry delay as fields.
#[test]
#[ignore = "needs root (own mount namespace with a private /run); scripts/test runs it as root"]
fn refresh_failures_carry_outcome_and_retry_fields() {
    if !support::inside_namespace("journal::refresh_failures_carry_outcome_and_retry_fields") {
        return;
    }
    let mut sb = Sandbox::new();
    let journal = fake_journal(&mut sb);
    sb.fake.set_mode(Mode::AccessDenied);
    let d = Daemon::start_as(
        &mut sb,
        &format!("[daemon]\nregistries = [\"{REG}\"]\n"),
        &["daemon"],
        None,
    );
    let mut buf = vec![0u8; 65536];
    let start = Instant::now();
    let failed = loop {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no failure in the journal; stderr:\n{}",
            d.log()
        );
        if let Ok(n) = journal.recv(&mut buf) {
            let e = parse_entry(&buf[..n]);
            if e.get("MESSAGE")
                .is_some_and(|m| m.contains("refresh failed"))
            {
                break e;
            }
        }
    };
    assert_eq!(failed["PRIORITY"], "4", "{failed:?}");
    assert_eq!(failed["REGISTRY"], REG);
    assert_eq!(failed["OUTCOME"], "denied");
    assert!(failed["RETRY_IN_S"].parse::<f32>().is_ok(), "{failed:?}");
    assert!(failed["MESSAGE"].contains("access denied"), "{failed:?}");
}

/// A journal that stops reading (busy rotating after a clock jump, vacuuming a slow card) fills
/// its queue; the daemon keeps serving and answering the watchdog instead of blocking in a
/// send, and once the journal reads again one warning says how many entries were lost.
#[test]
#[ignore = "needs root (own mount and network namespace, a private /run); scripts/test runs it as root"]
fn a_stalled_journal_never_stalls_the_daemon() {
    if !support::inside_namespace("journal::a_stalled_journal_never_stalls_the_daemon") {
        return;
    }
    // Datagram sockets made in this network namespace from now on queue a single entry.
    let out = std::process::Command::new("sysctl")
        .args(["-w", "net.unix.max_dgram_qlen=1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "sysctl: {}", text(&out.stderr));
    let mut sb = Sandbox::new();
    let journal = fake_journal(&mut sb);
    sb.set("WATCHDOG_USEC", Some("2000000"));
    let d = Daemon::start_as(
        &mut sb,
        &format!("[daemon]\nregistries = [\"{REG}\"]\n"),
        &["daemon"],
        Some("debug"),
    );
    d.wait_notify("READY=1", Duration::from_secs(20));
    for i in 0..10 {
        let started = Instant::now();
        let out = sb.helper("get", REG.as_bytes());
        assert!(
            out.status.success() && text(&out.stdout).contains("Secret"),
            "get {i} while the journal reads nothing: {}",
            text(&out.stderr)
        );
        assert!(
            crate::daemon::status_json(&sb)["registries"][0]["registry"] == REG,
            "status {i} after {:?}",
            started.elapsed()
        );
    }
    // Pings keep coming (systemd asked for one per second here).
    d.wait_notify("WATCHDOG=1", Duration::from_secs(5));
    d.wait_notify("WATCHDOG=1", Duration::from_secs(5));

    // The journal reads again: what is queued, then the notice before the next event (a
    // reload, to be sure there is one).
    let mut buf = vec![0u8; 65536];
    d.signal(nix::sys::signal::Signal::SIGHUP);
    let start = Instant::now();
    let notice = loop {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no notice of dropped entries; stderr:\n{}",
            d.log()
        );
        if let Ok(n) = journal.recv(&mut buf) {
            let e = parse_entry(&buf[..n]);
            if e.contains_key("DROPPED") {
                break e;
            }
        }
    };
    assert_eq!(notice["PRIORITY"], "4", "{notice:?}");
    assert!(notice["DROPPED"].parse::<u64>().unwrap() > 0, "{notice:?}");
    assert!(
        notice["MESSAGE"].contains("log entries dropped"),
        "{notice:?}"
    );
}
