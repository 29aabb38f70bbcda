//! The refresher daemon as a real process: systemd's notify socket, the helper over the Unix
//! socket, peer credentials, sinks, SIGHUP and SIGTERM. (The outage and backoff timing runs in
//! tests/inprocess.rs under tokio's paused clock.)

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::{self, text, Sandbox};

const REG: &str = "123456789012.dkr.ecr.us-west-2.amazonaws.com";
const OTHER: &str = "210987654321.dkr.ecr.eu-central-1.amazonaws.com";
const THIRD: &str = "345678901234.dkr.ecr.ap-south-1.amazonaws.com";

/// A running `ecr-edge daemon` with its notify socket; killed when dropped.
pub(crate) struct Daemon {
    child: Child,
    notify: UnixDatagram,
    log: PathBuf,
}

impl Daemon {
    /// Starts the daemon with `config` in the sandbox (the helper gets the same file), logging
    /// at debug level.
    pub(crate) fn start(sb: &mut Sandbox, config: &str) -> Daemon {
        Daemon::start_as(sb, config, &["daemon"], Some("debug"))
    }

    /// Starts `ecr-edge ARGS` (a daemon command line) with `config` in the sandbox, with
    /// `ECR_EDGE_LOG` set to `log` or unset.
    pub(crate) fn start_as(
        sb: &mut Sandbox,
        config: &str,
        args: &[&str],
        log_level: Option<&str>,
    ) -> Daemon {
        let path = sb.dir.path().join("config.toml");
        std::fs::write(&path, config).unwrap();
        sb.set("ECR_EDGE_CONFIG", Some(path.to_str().unwrap()));
        let notify_path = sb.dir.path().join("notify.sock");
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let log = sb.dir.path().join("daemon.log");
        let mut cmd = support::command(&support::binary());
        cmd.args(args)
            .env_clear()
            .envs(sb.vars.iter().map(|(k, v)| (k, v)))
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(level) = log_level {
            cmd.env("ECR_EDGE_LOG", level);
        }
        let child = cmd.spawn().unwrap();
        Daemon { child, notify, log }
    }

    /// Waits for a notify message containing `what`; returns every message seen.
    pub(crate) fn wait_notify(&self, what: &str, within: Duration) -> Vec<String> {
        let start = Instant::now();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while start.elapsed() < within {
            if let Ok(n) = self.notify.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = msg.contains(what);
                seen.push(msg);
                if done {
                    return seen;
                }
            }
        }
        panic!(
            "no {what} within {within:?}; saw {seen:?}; log:\n{}",
            self.log()
        );
    }

    /// The daemon's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the daemon to exit; its status, or `None` if still running after `within`.
    pub(crate) fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub(crate) fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get(sb: &Sandbox, host: &str) -> (bool, String) {
    let out = sb.helper("get", host.as_bytes());
    (out.status.success(), text(&out.stdout))
}

/// GetAuthorizationToken calls the sandbox's fake has answered.
pub(crate) fn ecr_calls(sb: &Sandbox) -> usize {
    sb.fake
        .calls()
        .iter()
        .filter(|c| c.target.ends_with("GetAuthorizationToken"))
        .count()
}

pub(crate) fn status_json(sb: &Sandbox) -> serde_json::Value {
    let mut c = support::command(&support::binary());
    c.args(["status", "--json"])
        .env_clear()
        .envs(sb.vars.iter().map(|(k, v)| (k, v)));
    let out = c.output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json: {e}: {} {}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

/// Options before the subcommand do not change the daemon's default level: with `--config X`
/// first and no `ECR_EDGE_LOG`, the refresh lines (info) still reach the journal.
#[test]
fn daemon_logs_refreshes_by_default_with_options_before_the_command() {
    let mut sb = Sandbox::new();
    let path = sb.dir.path().join("config.toml");
    let d = Daemon::start_as(
        &mut sb,
        &format!("[daemon]\nregistries = [\"{REG}\"]\n"),
        &["--config", path.to_str().unwrap(), "daemon"],
        None,
    );
    d.wait_notify("READY=1", Duration::from_secs(20));
    let log = d.log();
    assert!(
        log.contains("INFO") && log.contains("token refreshed"),
        "{log}"
    );
    assert!(!log.contains("DEBUG"), "default level is info: {log}");
}

/// On a device that is not an EC2 instance, with no region in the environment, the daemon
/// looks nothing up that its configuration does not need: no IMDS region warning, and a
/// failure without credentials is one line of words.
#[test]
fn daemon_off_ec2_warns_only_about_what_it_needs_in_words() {
    let mut sb = Sandbox::new();
    for v in [
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_EC2_METADATA_DISABLED",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    ] {
        sb.set(v, None);
    }
    // The metadata service address refuses connections, as on a device off EC2.
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", refused.local_addr().unwrap());
    drop(refused);
    sb.set("AWS_EC2_METADATA_SERVICE_ENDPOINT", Some(&endpoint));
    let d = Daemon::start_as(
        &mut sb,
        &format!("[daemon]\nregistries = [\"{REG}\"]\n"),
        &["daemon"],
        None,
    );
    let start = Instant::now();
    while !d.log().contains("refresh failed") && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = d.log();
    assert!(
        !log.to_ascii_lowercase().contains("region"),
        "a region lookup the configuration did not need: {log}"
    );
    let failed = log
        .lines()
        .find(|l| l.contains("refresh failed"))
        .unwrap_or_else(|| panic!("no refresh failure logged: {log}"));
    assert!(
        failed.contains("no AWS credentials: tried environment"),
        "{failed}"
    );
    crate::helper::assert_no_debug_dump(failed);
}

#[test]
fn daemon_serves_the_helper_from_memory_and_adds_registries_on_demand() {
    let mut sb = Sandbox::new();
    let d = Daemon::start(&mut sb, &format!("[daemon]\nregistries = [\"{REG}\"]\n"));
    let seen = d.wait_notify("READY=1", Duration::from_secs(20));
    assert!(
        seen.iter()
            .any(|m| m.contains("STATUS=1/1 registries have a token")),
        "{seen:?}"
    );
    assert_eq!(ecr_calls(&sb), 1, "one fetch in the first round");

    for _ in 0..5 {
        let (ok, out) = get(&sb, REG);
        assert!(ok, "{out}\n{}", d.log());
        assert!(
            out.contains(&format!("\"Secret\":\"{}\"", sb.fake.password())),
            "{out}"
        );
    }
    assert_eq!(ecr_calls(&sb), 1, "the daemon served all five from memory");
    // Served tokens never touch disk: the helper's cache was not even created.
    assert!(!sb.cache_dir().exists() || std::fs::read_dir(sb.cache_dir()).unwrap().count() == 0);

    // A registry not in the list: fetched on demand, then kept.
    let (ok, out) = get(&sb, OTHER);
    assert!(ok, "{out}\n{}", d.log());
    assert_eq!(ecr_calls(&sb), 2);
    let (ok, _) = get(&sb, OTHER);
    assert!(ok);
    assert_eq!(ecr_calls(&sb), 2);

    let status = status_json(&sb);
    let regs = status["registries"].as_array().unwrap();
    assert_eq!(regs.len(), 2, "{status}");
    let other = regs.iter().find(|r| r["registry"] == OTHER).unwrap();
    assert_eq!(other["on_demand"], true);
    assert!(other["expires_at"].as_i64().unwrap() > ecr_edge::internal::token::now() + 40_000);
    assert!(other["next_attempt"].as_i64().unwrap() > ecr_edge::internal::token::now() + 3600);

    // Human-readable status, exit 0 when every registry has a token.
    let mut c = support::command(&support::binary());
    c.arg("status")
        .env_clear()
        .envs(sb.vars.iter().map(|(k, v)| (k, v)));
    let out = c.output().unwrap();
    assert!(out.status.success());
    let t = text(&out.stdout);
    assert!(t.contains(&format!("{OTHER} (on demand)")), "{t}");
    assert!(
        t.contains("expires in 12h00m") || t.contains("expires in 11h59m"),
        "{t}"
    );
    assert!(
        !t.contains(&sb.fake.password()),
        "status never shows a token"
    );
    assert!(
        !d.log().contains(&sb.fake.password()),
        "the log never shows a token"
    );
}

#[test]
fn watchdog_pings_at_half_the_interval_systemd_asks_for() {
    let mut sb = Sandbox::new();
    sb.set("WATCHDOG_USEC", Some("400000"));
    let d = Daemon::start(&mut sb, "[daemon]\n");
    d.wait_notify("READY=1", Duration::from_secs(20));
    let start = Instant::now();
    let mut pings = 0;
    while start.elapsed() < Duration::from_secs(2) {
        let seen = d.wait_notify("WATCHDOG=1", Duration::from_secs(2));
        pings += seen.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    }
    // Every 200 ms for 2 s: about ten; allow for a slow (emulated) start.
    assert!((5..=14).contains(&pings), "{pings} pings");
}

/// The daemon with only what its systemd unit gives it (packaging/ecr-edge.service): no home,
/// cache or socket variables (the socket is the configuration file's), the state and runtime
/// directories, the watchdog, and its default log level. It serves the helper over that
/// socket, pings the watchdog and keeps its floor; its log says what it serves, at info.
#[test]
fn the_daemon_runs_with_only_what_its_unit_gives_it() {
    let mut sb = Sandbox::new();
    let (state, runtime) = (sb.dir.path().join("state"), sb.dir.path().join("run"));
    std::fs::create_dir(&state).unwrap();
    std::fs::create_dir(&runtime).unwrap();
    let socket = runtime.join("agent.sock");
    let (cache, home) = (sb.cache_dir(), sb.dir.path().join("home"));
    for unset in ["ECR_EDGE_SOCKET", "ECR_EDGE_CACHE_DIR", "HOME"] {
        sb.set(unset, None);
    }
    sb.set("STATE_DIRECTORY", Some(state.to_str().unwrap()));
    sb.set("RUNTIME_DIRECTORY", Some(runtime.to_str().unwrap()));
    sb.set("WATCHDOG_USEC", Some("400000"));
    let config = format!(
        "[daemon]\nregistries = [\"{REG}\"]\nsocket = \"{}\"\n",
        socket.display()
    );
    let d = Daemon::start_as(&mut sb, &config, &["daemon"], None);
    d.wait_notify("READY=1", Duration::from_secs(20));
    d.wait_notify("WATCHDOG=1", Duration::from_secs(2));
    // The helper as a user runs it: its own home and cache, the socket from the same file.
    sb.set("HOME", Some(home.to_str().unwrap()));
    sb.set("ECR_EDGE_CACHE_DIR", Some(cache.to_str().unwrap()));
    let (ok, out) = get(&sb, REG);
    assert!(ok, "{out}\n{}", d.log());
    assert_eq!(
        ecr_calls(&sb),
        1,
        "the daemon served the helper: {}",
        d.log()
    );
    assert!(state.join("time-floor").exists(), "{}", d.log());
    let log = d.log();
    assert!(log.contains(&socket.display().to_string()), "{log}");
    assert!(!log.contains("DEBUG"), "info by default: {log}");
}

/// Sink files are written off the runtime's thread: while another program holds the sink
/// directory's lock for 10 s, served gets answer as fast as ever (the daemon serves them, the
/// helper fetches nothing itself) and the watchdog pings on time; the sink is written once the
/// lock is released.
#[test]
fn a_held_sink_lock_delays_neither_gets_nor_the_watchdog() {
    let mut sb = Sandbox::new();
    sb.set("WATCHDOG_USEC", Some("400000"));
    let sink_dir = sb.dir.path().join("sink");
    std::fs::create_dir(&sink_dir).unwrap();
    let sink = sink_dir.join("auth.json");
    let d = Daemon::start(
        &mut sb,
        &format!(
            "[daemon]\nregistries = [\"{REG}\"]\n[[daemon.sink]]\nkind = \"docker-auths\"\npath = \"{}\"\n",
            sink.display()
        ),
    );
    d.wait_notify("READY=1", Duration::from_secs(20));
    let start = Instant::now();
    while !sink.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(sink.exists(), "first sink write: {}", d.log());

    // A reader of the sink's directory (another user may read /run/ecr-edge) takes a lock on
    // it: that never holds the daemon's writes back (before, the daemon locked the directory
    // itself, so any reader could stall every sink update).
    let reader_lock = ecr_edge::internal::files::lock_exclusive_dir(
        &sink_dir,
        std::time::Instant::now() + Duration::from_secs(10),
    )
    .unwrap();
    let (ok, out) = get(&sb, THIRD);
    assert!(ok, "{out}");
    let start = Instant::now();
    while !std::fs::read_to_string(&sink).unwrap().contains(THIRD) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the sink waited for a reader's lock: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(reader_lock);
    let calls = ecr_calls(&sb);

    // Another writer with the daemon's rights holds the sink's own lock: the write waits for
    // it, and nothing else does. The daemon may still be finishing its last write (slow under
    // an emulator): wait for it.
    let lock = ecr_edge::internal::files::lock_exclusive(
        &sink_dir.join(".auth.json.lock"),
        std::time::Instant::now() + Duration::from_secs(10),
    )
    .unwrap();
    // A registry added on demand: its refresh wants to write the sink, which now waits.
    let held_since = Instant::now();
    let (ok, out) = get(&sb, OTHER);
    assert!(ok, "{out}");
    let mut slowest = held_since.elapsed();
    let mut pings = 0;
    while held_since.elapsed() < Duration::from_secs(3) {
        let t = Instant::now();
        let (ok, out) = get(&sb, REG);
        slowest = slowest.max(t.elapsed());
        assert!(ok, "{out}");
        let seen = d.wait_notify("WATCHDOG=1", Duration::from_secs(1));
        pings += seen.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    }
    assert_eq!(
        ecr_calls(&sb),
        calls + 1,
        "only the on-demand registry was fetched; every get was served by the daemon"
    );
    // A served get takes milliseconds (tens under an emulator); the lock is held for 10 s.
    assert!(slowest < Duration::from_secs(1), "slowest get {slowest:?}");
    assert!(pings >= 5, "{pings} watchdog pings in 3 s at 200 ms");
    let on_disk = std::fs::read_to_string(&sink).unwrap();
    assert!(!on_disk.contains(OTHER), "written while locked: {on_disk}");
    drop(lock);
    let start = Instant::now();
    while !std::fs::read_to_string(&sink).unwrap().contains(OTHER)
        && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        std::fs::read_to_string(&sink).unwrap().contains(OTHER),
        "sink written after the lock was released: {}",
        d.log()
    );
}

#[test]
fn sigterm_stops_within_a_second_and_removes_the_socket() {
    let mut sb = Sandbox::new();
    let mut d = Daemon::start(&mut sb, &format!("[daemon]\nregistries = [\"{REG}\"]\n"));
    d.wait_notify("READY=1", Duration::from_secs(20));
    let socket = sb.dir.path().join("agent.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660);
    let start = Instant::now();
    d.signal(Signal::SIGTERM);
    let status = loop {
        if let Some(s) = d.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "still running after 1 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}\n{}", d.log());
    assert!(!socket.exists());
    // The helper does the work itself once the daemon is gone.
    let (ok, out) = get(&sb, REG);
    assert!(ok, "{out}");
    assert_eq!(ecr_calls(&sb), 2);
}

#[test]
fn sighup_reloads_and_sinks_keep_unrelated_entries() {
    let mut sb = Sandbox::new();
    let sink = sb.dir.path().join("k3s").join("auth.json");
    std::fs::create_dir_all(sink.parent().unwrap()).unwrap();
    std::fs::write(
        &sink,
        "{\n\t\"auths\": {\"docker.io\": {\"auth\": \"dXNlcjpwYXNz\"}},\n\t\"credsStore\": \"pass\"\n}\n",
    )
    .unwrap();
    std::fs::set_permissions(&sink, std::fs::Permissions::from_mode(0o640)).unwrap();
    let d = Daemon::start(&mut sb, &format!("[daemon]\nregistries = [\"{REG}\"]\n"));
    d.wait_notify("READY=1", Duration::from_secs(20));
    let config = sb.dir.path().join("config.toml");
    let with_sink = |registries: &str| {
        let text = format!(
            "[daemon]\nregistries = [{registries}]\n\
             [[daemon.sink]]\nkind = \"docker-auths\"\npath = \"{}\"\n",
            sink.display()
        );
        std::fs::write(&config, text).unwrap();
    };
    with_sink(&format!("\"{REG}\", \"{OTHER}\""));
    d.signal(Signal::SIGHUP);
    d.wait_notify("READY=1", Duration::from_secs(20));
    let start = Instant::now();
    let v: serde_json::Value = loop {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&sink).unwrap()).unwrap();
        if v["auths"].as_object().unwrap().len() == 3 {
            break v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{v}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(v["auths"]["docker.io"]["auth"], "dXNlcjpwYXNz");
    assert_eq!(v["credsStore"], "pass");
    let want = aws_smithy_types::base64::encode(format!("AWS:{}", sb.fake.password()));
    assert_eq!(v["auths"][REG]["auth"], want.as_str());
    assert_eq!(v["auths"][OTHER]["auth"], want.as_str());
    // A file of tokens is never left readable by others: the 0640 it had is narrowed.
    assert_eq!(
        std::fs::metadata(&sink).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(d.log().contains("configuration reloaded"), "{}", d.log());

    // A broken configuration on reload is reported and the running one kept.
    std::fs::write(&config, "[daemon]\nregistries = [\"docker.io\"]\n").unwrap();
    d.signal(Signal::SIGHUP);
    d.wait_notify("READY=1", Duration::from_secs(20));
    assert!(d.log().contains("reload failed"), "{}", d.log());
    // Still serving with the running configuration (the helper needs a valid file to read).
    let calls = ecr_calls(&sb);
    std::fs::write(&config, format!("[daemon]\nregistries = [\"{REG}\"]\n")).unwrap();
    let (ok, out) = get(&sb, OTHER);
    assert!(ok, "{out}");
    assert_eq!(ecr_calls(&sb), calls);

    // A registry taken out of the configuration leaves the sink with it (before, its token
    // stayed in the file after the daemon stopped serving it).
    with_sink(&format!("\"{REG}\""));
    d.signal(Signal::SIGHUP);
    d.wait_notify("READY=1", Duration::from_secs(20));
    let start = Instant::now();
    while std::fs::read_to_string(&sink).unwrap().contains(OTHER) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{OTHER} still in the sink: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sink).unwrap()).unwrap();
    assert_eq!(v["auths"][REG]["auth"], want.as_str());
    assert_eq!(v["auths"]["docker.io"]["auth"], "dXNlcjpwYXNz");
}

#[test]
#[ignore = "needs root (runs the helper as another user); scripts/test runs it as root"]
fn a_peer_outside_the_allowed_lists_is_refused_and_the_helper_fetches_itself() {
    let mut sb = Sandbox::new();
    // The other user must reach the socket, the CA bundle and a cache directory of its own.
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cache = tempfile::tempdir().unwrap();
    std::fs::set_permissions(cache.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    sb.set(
        "ECR_EDGE_CACHE_DIR",
        Some(cache.path().join("nobody").to_str().unwrap()),
    );
    let d = Daemon::start(
        &mut sb,
        &format!("[daemon]\nregistries = [\"{REG}\"]\nallowed_uids = [0]\nallowed_gids = []\n"),
    );
    d.wait_notify("READY=1", Duration::from_secs(20));
    std::fs::set_permissions(
        sb.dir.path().join("config.toml"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    assert_eq!(ecr_calls(&sb), 1);

    // uid 65534 with primary group 0: the socket's mode (0660 root:root) lets it connect, so
    // the refusal is the daemon's peer check.
    // A copy of the binary where that user can reach it (the checkout may sit in a private
    // directory).
    let bin_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = bin_dir.path().join("ecr-edge");
    std::fs::copy(support::binary(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let helper = bin_dir.path().join("docker-credential-ecr-edge");
    std::os::unix::fs::symlink(&bin, &helper).unwrap();
    let mut cmd = sb.command_for(&helper, "get");
    std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
    std::os::unix::process::CommandExt::gid(&mut cmd, 0);
    let out = support::run_with_input(cmd, REG.as_bytes());
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), d.log());
    assert_eq!(ecr_calls(&sb), 2, "the refused helper fetched for itself");
    assert!(
        d.log().contains("refused a client") && d.log().contains("uid=65534"),
        "{}",
        d.log()
    );
    // Root is allowed and served from memory.
    let (ok, _) = get(&sb, REG);
    assert!(ok);
    assert_eq!(ecr_calls(&sb), 2);
}

#[test]
fn a_stray_file_at_the_socket_path_is_not_replaced() {
    let mut sb = Sandbox::new();
    let socket = sb.dir.path().join("agent.sock");
    std::fs::write(&socket, "mine").unwrap();
    let mut d = Daemon::start(&mut sb, "[daemon]\n");
    let status = d.child.wait().unwrap();
    assert!(!status.success());
    assert!(d.log().contains("not a socket"), "{}", d.log());
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "mine");
    // And a helper with no daemon still works.
    let (ok, _) = get(&sb, REG);
    assert!(ok);
}

/// `ecr-edge daemon --check` is the unit's ExecCondition: 1 (skip) for the packaged file, which
/// sets nothing; 0 once a [daemon] section exists; 255 (fail, with the reason) when invalid.
#[test]
fn check_tells_systemd_whether_the_daemon_is_configured() {
    let sb = Sandbox::new();
    let check = |config: &str| {
        let path = sb.dir.path().join("check.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = sb.command_for(&support::binary(), "daemon");
        let out = cmd
            .arg("--check")
            .env("ECR_EDGE_CONFIG", &path)
            .output()
            .unwrap();
        (out.status.code(), text(&out.stderr))
    };
    let shipped = include_str!("../packaging/config.toml");
    let (code, err) = check(shipped);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no [daemon] section"), "{err}");
    let (code, err) = check(&format!("{shipped}\n[daemon]\n"));
    assert_eq!((code, err.as_str()), (Some(0), ""));
    let (code, err) = check("[daemon]\nbackoff_max = 0\n");
    assert_eq!(code, Some(255), "{err}");
    assert!(err.contains("backoff_max"), "{err}");
}

/// The kubelet provider asks the daemon first too: served from memory, never written to disk,
/// and cached by the kubelet for half of the daemon's token's remaining life.
#[test]
fn the_kubelet_provider_is_served_by_the_daemon() {
    let mut sb = Sandbox::new();
    let d = Daemon::start(&mut sb, &format!("[daemon]\nregistries = [\"{REG}\"]\n"));
    d.wait_notify("READY=1", Duration::from_secs(20));
    assert_eq!(ecr_calls(&sb), 1);
    let link = sb.dir.path().join("ecr-edge-credential-provider");
    std::os::unix::fs::symlink(support::binary(), &link).unwrap();
    let mut cmd = support::command(&link);
    cmd.env_clear()
        .envs(sb.vars.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let request = format!(
        r#"{{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"{REG}/app:1"}}"#
    );
    let out = support::run_with_input(cmd, request.as_bytes());
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), d.log());
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["auth"][REG]["password"], sb.fake.password().as_str());
    let duration = body["cacheDuration"].as_str().unwrap();
    assert!(
        duration.starts_with("5h59m") || duration == "6h0m0s",
        "{duration}"
    );
    assert_eq!(ecr_calls(&sb), 1, "served from the daemon's memory");
    assert!(!sb.cache_dir().exists() || std::fs::read_dir(sb.cache_dir()).unwrap().count() == 0);
}

/// The daemon resumes its TLS session with an endpoint it has talked to before (the fakes keep
/// their session caches, as AWS endpoints do), so a later call does not fetch the certificate
/// chain again; a helper process, starting afresh each time, always makes a full handshake.
#[test]
fn daemon_resumes_tls_sessions_with_an_endpoint() {
    let mut sb = Sandbox::new();
    let d = Daemon::start(&mut sb, &format!("[daemon]\nregistries = [\"{REG}\"]\n"));
    d.wait_notify("READY=1", Duration::from_secs(20));
    // Another registry behind the same API endpoint, fetched by the daemon on request.
    let (ok, out) = get(&sb, "345678901234.dkr.ecr.us-west-2.amazonaws.com");
    assert!(ok, "{out}");
    let calls: Vec<_> = sb
        .fake
        .calls()
        .into_iter()
        .filter(|c| c.target.ends_with("GetAuthorizationToken"))
        .collect();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(!calls[0].resumed, "the first handshake is a full one");
    assert!(
        calls[1].resumed,
        "the daemon resumed its session: {calls:?}"
    );
    // Without the daemon, each helper run is a new process with nothing to resume.
    sb.set("ECR_EDGE_SOCKET", Some(""));
    let (ok, out) = get(&sb, "456789012345.dkr.ecr.us-west-2.amazonaws.com");
    assert!(ok, "{out}");
    assert!(!sb.fake.calls().last().unwrap().resumed);
}

fn refresh(sb: &Sandbox, registries: &[&str]) -> (Option<i32>, String, String) {
    let mut c = support::command(&support::binary());
    c.arg("refresh")
        .args(registries)
        .env_clear()
        .envs(sb.vars.iter().map(|(k, v)| (k, v)));
    let out = c.output().unwrap();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// `ecr-edge refresh` makes the daemon fetch now (a top-up before a planned outage), backoff
/// or not, and says what each attempt did and the offline runway after it; `status --json`
/// and the metrics carry the runway.
#[test]
fn refresh_tops_up_now_and_prints_the_runway() {
    let mut sb = Sandbox::new();
    let metrics = sb.dir.path().join("ecr_edge.prom");
    let d = Daemon::start(
        &mut sb,
        &format!(
            "[daemon]\nregistries = [\"{REG}\"]\nmetrics_file = \"{}\"\n",
            metrics.display()
        ),
    );
    d.wait_notify("READY=1", Duration::from_secs(20));
    assert_eq!(ecr_calls(&sb), 1);
    let status = status_json(&sb);
    assert_eq!(status["schema"], 6);
    let runway = status["registries"][0]["runway_seconds"].as_i64().unwrap();
    // A 12-hour token, usable until 5 minutes before its end.
    assert!((42_000..=42_901).contains(&runway), "{status}");

    sb.fake.set_password("topped-up");
    let (code, out, err) = refresh(&sb, &[]);
    assert_eq!(code, Some(0), "{out}{err}\n{}", d.log());
    assert!(
        out.starts_with(&format!("{REG}: refreshed; offline runway 11h")),
        "{out}"
    );
    assert_eq!(ecr_calls(&sb), 2, "one attempt, now");
    let (ok, got) = get(&sb, REG);
    assert!(ok && got.contains("topped-up"), "{got}");
    // The metrics file follows within a second or two (writes are at most one a second).
    let sample = format!("ecr_edge_offline_runway_seconds{{registry=\"{REG}\"}} 4");
    let start = Instant::now();
    let mut prom = String::new();
    while start.elapsed() < Duration::from_secs(10) && !prom.contains(&sample) {
        std::thread::sleep(Duration::from_millis(100));
        prom = std::fs::read_to_string(&metrics).unwrap_or_default();
    }
    assert!(prom.contains(&sample), "{prom}");

    // A failing refresh keeps the token it had and says so; exit 1.
    sb.fake.fail_next(1, support::Mode::AccessDenied);
    let (code, out, _) = refresh(&sb, &[REG]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("refresh failed:") && out.contains("offline runway 11h"),
        "{out}"
    );
    // The registry is now in backoff; a refresh does not wait for it.
    let (code, out, _) = refresh(&sb, &[REG]);
    assert_eq!(code, Some(0), "{out}\n{}", d.log());
    assert_eq!(ecr_calls(&sb), 4);

    // A registry the daemon does not hold is named, with the ones it does.
    let (code, _, err) = refresh(&sb, &[OTHER]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("holds no registry {OTHER}; it holds {REG}")),
        "{err}"
    );
    assert_eq!(ecr_calls(&sb), 4);
}

/// `[daemon] images`: the daemon checks each image as a pull would with the token it holds,
/// and `status` and the metrics say what it found (here ECR's refusal of the manifest).
#[test]
fn the_daemon_checks_its_images_and_reports_them() {
    let mut sb = Sandbox::new();
    let metrics = sb.dir.path().join("ecr_edge.prom");
    let image = format!("{REG}/edge/app:v1");
    let denied = r#"{"errors":[{"code":"DENIED","message":"User: arn:aws:sts::123456789012:assumed-role/edge/pi-7 is not authorized to perform: ecr:BatchGetImage on resource: arn:aws:ecr:us-west-2:123456789012:repository/edge/app because no identity-based policy allows the ecr:BatchGetImage action"}]}"#;
    for method in ["HEAD", "GET"] {
        sb.fake.answer_registry(method, "/manifests/", 403, denied);
    }
    let d = Daemon::start(
        &mut sb,
        &format!(
            "[daemon]\nregistries = [\"{REG}\"]\nmetrics_file = \"{}\"\nimages = [\"{image}\"]\n",
            metrics.display()
        ),
    );
    d.wait_notify("READY=1", Duration::from_secs(20));
    let start = Instant::now();
    let mut checked = serde_json::Value::Null;
    while start.elapsed() < Duration::from_secs(15) {
        checked = status_json(&sb)["images"][0].clone();
        if checked.is_object() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(checked["image"], image.as_str(), "{checked}\n{}", d.log());
    assert_eq!(checked["ok"], false);
    assert!(
        checked["detail"].as_str().unwrap().contains(
            "it lacks ecr:BatchGetImage on arn:aws:ecr:us-west-2:123456789012:repository/edge/app"
        ),
        "{checked}"
    );
    let sample = format!("ecr_edge_image_check_ok{{image=\"{image}\"}} 0");
    let mut prom = String::new();
    while start.elapsed() < Duration::from_secs(20) && !prom.contains(&sample) {
        std::thread::sleep(Duration::from_millis(100));
        prom = std::fs::read_to_string(&metrics).unwrap_or_default();
    }
    assert!(prom.contains(&sample), "{prom}");
    let (read, written, connections) = sb.fake.wire(REG);
    println!(
        "the daemon's image check (refused at the manifest): {read} bytes sent, {written} \
         received, {connections} connections"
    );
    // The platform asked for is this build's (the package matches the device's userland).
    assert!(sb
        .fake
        .registry_calls()
        .iter()
        .any(|(m, p)| m == "GET" && p == "/v2/edge/app/manifests/v1"));
}
