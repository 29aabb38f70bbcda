//! A device clock that is wrong (src/clock.rs): the real binary runs under libfaketime (Debian's
//! `faketime`, installed by `scripts/install-deps clock`), which moves its wall clock and nothing
//! else (`FAKETIME_DONT_FAKE_MONOTONIC=1`); the fakes keep real time, as AWS does. At 1970, at
//! two years and a day behind, a day ahead: tokens are still had, signed at AWS's time; a server
//! certificate that expired before the floor is refused; the floor is kept and used again; the
//! daemon drops AWS's offset when the clock is set.
//!
//! libfaketime works by preloading: a static binary (the packaged one, which
//! `scripts/package-test` runs these tests against) ignores it, so there these tests say they
//! are skipped; the device lab's rtc boot runs the static binary with a wrong clock instead.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::iot::IotSandbox;
use crate::support::iot::{KeyKind, Validity};
use crate::support::{self, text, Sandbox};

const HOST: &str = "123456789012.dkr.ecr.us-west-2.amazonaws.com";

/// libfaketime, where Debian's package puts it.
fn libfaketime() -> PathBuf {
    std::fs::read_dir("/usr/lib")
        .unwrap()
        .flatten()
        .map(|arch| arch.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists())
        .expect("libfaketime: install it with `scripts/install-deps clock`")
}

/// Whether libfaketime can move the clock of the binary under test (it has a program
/// interpreter, so it is linked dynamically); says why not when it cannot.
fn clock_can_be_moved() -> bool {
    let binary = support::binary();
    let head = std::fs::read(&binary).unwrap_or_default();
    let dynamic = head
        .get(..4096)
        .is_some_and(|h| h.windows(7).any(|w| w == b"ld-linu" || w == b"ld-musl"));
    if !dynamic {
        eprintln!(
            "skipped: {} is static, so libfaketime cannot move its clock (the device lab's rtc \
             boot runs the static binary with a wrong clock)",
            binary.display()
        );
    }
    dynamic
}

/// The sandbox's programs see the clock `spec` says (libfaketime's `FAKETIME` forms:
/// `@1970-01-02 00:00:00` starts there and runs, `-1d` is a day behind).
fn with_clock(sb: &mut Sandbox, spec: &str) {
    sb.set("LD_PRELOAD", Some(libfaketime().to_str().unwrap()));
    sb.set("FAKETIME", Some(spec));
    sb.set("FAKETIME_DONT_FAKE_MONOTONIC", Some("1"));
}

fn real_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn kept_floor(dir: &std::path::Path) -> Option<i64> {
    std::fs::read_to_string(dir.join("time-floor"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The helper gets a token whatever the clock says, the ECR call that gave it signed at AWS's
/// time, and it keeps AWS's time as its floor.
#[test]
fn a_helper_with_a_wrong_clock_still_gets_a_token() {
    if !clock_can_be_moved() {
        return;
    }
    for spec in ["@1970-01-02 00:00:00", "-1d", "-730d", "+1d"] {
        let mut sb = Sandbox::new();
        with_clock(&mut sb, spec);
        let out = sb.helper("get", HOST.as_bytes());
        assert!(
            out.status.success(),
            "{spec}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let calls = sb.fake.calls();
        assert!(
            calls.last().is_some_and(|c| c.authentic),
            "{spec}: the call that gave the token was signed at AWS's time: {calls:?}"
        );
        let kept = kept_floor(&sb.cache_dir()).expect("the floor kept in the cache");
        assert!((kept - real_now()).abs() < 60, "{spec}: floor {kept}");
    }
}

/// A server certificate that expired before the floor is refused, at 1970 as at the real time:
/// the floor never makes an expired certificate good.
#[test]
fn a_certificate_that_expired_before_the_floor_is_refused() {
    if !clock_can_be_moved() {
        return;
    }
    let mut sb = Sandbox::new();
    sb.ca
        .set_server_validity(946_684_800, ecr_edge::BUILD_EPOCH - 86_400);
    for spec in ["@1970-01-02 00:00:00", "+0"] {
        with_clock(&mut sb, spec);
        let out = sb.helper("get", HOST.as_bytes());
        assert!(!out.status.success(), "{spec}: {}", text(&out.stdout));
        assert!(
            text(&out.stdout).to_lowercase().contains("expired"),
            "{spec}: {}",
            text(&out.stdout)
        );
    }
    assert!(sb.fake.calls().is_empty(), "nothing reached ECR");
}

/// The floor a helper kept is used by the next one: a certificate that expired after the
/// build but before the kept floor is refused at 1970; without the kept floor (judged at the
/// build time) it would pass.
#[test]
fn the_kept_floor_is_used_after_a_reboot() {
    if !clock_can_be_moved() {
        return;
    }
    let mut sb = Sandbox::new();
    with_clock(&mut sb, "@1970-01-02 00:00:00");
    // The floor to keep must lie after the build time, with room between.
    while real_now() < ecr_edge::BUILD_EPOCH + 4 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = sb.helper("get", HOST.as_bytes());
    assert!(out.status.success(), "{}", text(&out.stdout));
    let kept = kept_floor(&sb.cache_dir()).unwrap();
    // Server certificates that expired between the build and the kept floor.
    sb.ca
        .set_server_validity(946_684_800, (ecr_edge::BUILD_EPOCH + kept) / 2);
    let drop_tokens = || {
        for e in std::fs::read_dir(sb.cache_dir()).unwrap().flatten() {
            if e.file_name() != "time-floor" {
                let _ = std::fs::remove_file(e.path());
            }
        }
    };
    drop_tokens();
    let calls = sb.fake.calls().len();
    let out = sb.helper("get", HOST.as_bytes());
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).to_lowercase().contains("expired"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(sb.fake.calls().len(), calls);
    // The same with no floor kept: judged at the build time, where the certificate was good.
    std::fs::remove_file(sb.cache_dir().join("time-floor")).unwrap();
    drop_tokens();
    let out = sb.helper("get", HOST.as_bytes());
    assert!(out.status.success(), "{}", text(&out.stdout));
}

/// `ecr-edge credentials` judges the device certificate at the floor a helper kept: one that
/// expired between the build and that floor is refused at 1970 before any exchange; with no
/// floor kept (judged at the build time) the exchange goes ahead.
#[test]
fn the_device_certificate_is_judged_at_the_kept_floor() {
    if !clock_can_be_moved() {
        return;
    }
    while real_now() < ecr_edge::BUILD_EPOCH + 4 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let now = real_now();
    let mut s = IotSandbox::new(
        KeyKind::EcPkcs8,
        Validity::Until((ecr_edge::BUILD_EPOCH + now) / 2),
    );
    with_clock(&mut s.sb, "@1970-01-02 00:00:00");
    let floor = s.sb.cache_dir().join("time-floor");
    std::fs::create_dir_all(s.sb.cache_dir()).unwrap();
    std::fs::write(&floor, format!("{now}\n")).unwrap();
    let credentials =
        || support::run_with_input(s.sb.command_for(&support::binary(), "credentials"), b"");
    let out = credentials();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("device certificate expired at"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        s.iot.calls().is_empty(),
        "no exchange with an expired certificate"
    );
    std::fs::remove_file(&floor).unwrap();
    let out = credentials();
    assert!(
        out.status.success(),
        "judged at the build time the certificate is good (is a daemon's floor kept in \
         /var/lib/ecr-edge on this machine?): {}",
        text(&out.stderr)
    );
    assert_eq!(s.iot.calls().len(), 1);
}

/// With the system clock right (any binary, a static one included), the daemon under systemd
/// keeps AWS's time as the floor in its state directory, one line, readable by the helpers; a
/// damaged file is ignored and replaced.
#[test]
fn the_daemon_keeps_the_floor_in_its_state_directory() {
    use std::os::unix::fs::PermissionsExt;
    let mut sb = Sandbox::new();
    let state = sb.dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    sb.set("STATE_DIRECTORY", Some(state.to_str().unwrap()));
    let config = format!("[daemon]\nregistries = [\"{HOST}\"]\n");
    {
        let d = crate::daemon::Daemon::start(&mut sb, &config);
        d.wait_notify("READY=1", Duration::from_secs(20));
        let kept = kept_floor(&state).expect("the daemon kept the floor");
        assert!((kept - real_now()).abs() < 60, "{kept}\n{}", d.log());
        let file = state.join("time-floor");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), format!("{kept}\n"));
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }
    // A damaged file: ignored, and replaced by the next floor worth keeping.
    std::fs::write(state.join("time-floor"), "not a number\n").unwrap();
    let d = crate::daemon::Daemon::start(&mut sb, &config);
    d.wait_notify("READY=1", Duration::from_secs(20));
    let kept = kept_floor(&state).expect("the damaged floor replaced");
    assert!((kept - real_now()).abs() < 60, "{kept}\n{}", d.log());
}

/// The daemon on a device at 1970 takes AWS's time (status and metrics say so), keeps it as the
/// floor in its state directory, and drops the offset when the clock is set mid-run.
#[test]
fn the_daemon_takes_aws_time_and_drops_it_when_the_clock_is_set() {
    if !clock_can_be_moved() {
        return;
    }
    let mut sb = Sandbox::new();
    let state = sb.dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let spec = sb.dir.path().join("faketime");
    std::fs::write(&spec, "@1970-01-02 00:00:00\n").unwrap();
    with_clock(&mut sb, "");
    sb.set("FAKETIME", None);
    sb.set("FAKETIME_TIMESTAMP_FILE", Some(spec.to_str().unwrap()));
    sb.set("FAKETIME_NO_CACHE", Some("1"));
    sb.set("STATE_DIRECTORY", Some(state.to_str().unwrap()));
    let d =
        crate::daemon::Daemon::start(&mut sb, &format!("[daemon]\nregistries = [\"{HOST}\"]\n"));
    d.wait_notify("READY=1", Duration::from_secs(20));
    let status = |sb: &Sandbox| -> serde_json::Value {
        let mut c = sb.command_for(&support::binary(), "status");
        c.arg("--json");
        let out = support::run_with_input(c, b"");
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}{}", text(&out.stdout), text(&out.stderr)))
    };
    let v = status(&sb);
    assert_eq!(v["clock"]["source"], "aws", "{v:#}\n{}", d.log());
    let offset = v["clock"]["offset_seconds"].as_i64().unwrap();
    assert!(
        (offset - (real_now() - 86_400)).abs() < 60,
        "offset {offset}"
    );
    assert!(
        (v["clock"]["now"].as_i64().unwrap() - real_now()).abs() < 5,
        "{v:#}"
    );
    assert!(v["registries"][0]["expires_at"].as_i64().unwrap() > real_now());
    let kept = kept_floor(&state).expect("the daemon kept the floor");
    assert!((kept - real_now()).abs() < 60, "{kept}");
    assert!(d.log().contains("uses AWS's time"), "{}", d.log());
    let out = sb.helper("get", HOST.as_bytes());
    assert!(out.status.success(), "{}", text(&out.stdout));
    // NTP arrives: the clock is set to the real time.
    std::fs::write(&spec, "+0\n").unwrap();
    let v = status(&sb);
    assert_eq!(v["clock"]["source"], "system", "{v:#}\n{}", d.log());
    assert_eq!(v["clock"]["offset_seconds"], 0);
    assert!(d.log().contains("the system clock was set"), "{}", d.log());
    let out = sb.helper("get", HOST.as_bytes());
    assert!(out.status.success(), "{}", text(&out.stdout));
}
