//! The sealed environment the real binary runs in (its own HOME, cache, CA bundle, proxy and
//! credentials), the running daemon, and small helpers for commands and documents.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::*;

/// A sealed environment for running the binary against a [`FakeEcr`]: its own HOME, cache,
/// CA bundle, proxy and credentials; nothing from the real user's environment.
pub struct Sandbox {
    /// Temp directory holding home, cache and CA bundle.
    pub dir: tempfile::TempDir,
    /// The CA whose certificates every fake server presents (trusted via `SSL_CERT_FILE`).
    pub ca: Arc<TestCa>,
    /// The fake ECR.
    pub fake: FakeEcr,
    /// Environment given to every command.
    pub vars: Vec<(String, String)>,
    /// Path of `docker-credential-ecr-edge` (a symlink to the binary).
    pub helper: PathBuf,
}

/// The binary under test: `ECR_EDGE_TEST_BIN` (e.g. a cross-built one) or this build's.
pub fn binary() -> PathBuf {
    std::env::var_os("ECR_EDGE_TEST_BIN")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_BIN_EXE_ecr-edge").map(PathBuf::from))
        .expect("set ECR_EDGE_TEST_BIN to the ecr-edge binary")
}

/// Runs the test named `test` (`module::function`) again inside a new network and mount
/// namespace (`unshare --net --mount`, as root) and returns `false` once it passed there;
/// inside that namespace, returns `true` so the test body runs.
pub fn inside_namespace(test: &str) -> bool {
    if std::env::var_os("ECR_EDGE_IN_NETNS").is_some() {
        return true;
    }
    let out = Command::new("unshare")
        .args(["--net", "--mount", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            test,
            "--exact",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ECR_EDGE_IN_NETNS", "1")
        .output()
        .expect("unshare (util-linux) runs this test in its own network namespace");
    let log = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{test} in its namespace:\n{log}");
    assert!(log.contains("1 passed"), "{test} did not run:\n{log}");
    false
}

/// Inside [`inside_namespace`]: loopback up, mounts private, and `contents` bind-mounted over
/// each system file named (`/etc/hosts`, `/etc/resolv.conf`, …) from copies in `dir`.
pub fn private_files(dir: &Path, files: &[(&str, &str)]) {
    let run = |cmd: &str, args: &[&str]| {
        let out = Command::new(cmd).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{cmd} {args:?}: {}",
            text(&out.stderr)
        );
    };
    run("ip", &["link", "set", "lo", "up"]);
    run("mount", &["--make-rprivate", "/"]);
    for (i, (target, contents)) in files.iter().enumerate() {
        let copy = dir.join(format!("private-file-{i}"));
        std::fs::write(&copy, contents).unwrap();
        run("mount", &["--bind", copy.to_str().unwrap(), target]);
    }
}

/// A command for `program`, through `ECR_EDGE_TEST_RUNNER` (e.g. `qemu-aarch64-static`) if set.
pub fn command(program: &Path) -> Command {
    match std::env::var_os("ECR_EDGE_TEST_RUNNER").filter(|r| !r.is_empty()) {
        Some(runner) => {
            let mut c = Command::new(runner);
            c.arg(program);
            c
        }
        None => Command::new(program),
    }
}

impl Sandbox {
    /// A sandbox with its own CA and fake.
    pub fn new() -> Sandbox {
        let ca = Arc::new(TestCa::new());
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca.pem).unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        for empty in ["aws-config", "aws-credentials"] {
            std::fs::write(dir.path().join(empty), b"").unwrap();
        }
        // ECR_EDGE_TEST_HELPER: an installed helper name (a package's own symlink); else a
        // link to the binary under test made here.
        let helper = match std::env::var_os("ECR_EDGE_TEST_HELPER").filter(|h| !h.is_empty()) {
            Some(installed) => PathBuf::from(installed),
            None => {
                let link = dir.path().join("docker-credential-ecr-edge");
                std::os::unix::fs::symlink(binary(), &link).unwrap();
                link
            }
        };
        let fake = FakeEcr::start(ca.clone());
        let p = |s: &Path| s.to_string_lossy().into_owned();
        let vars = vec![
            ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
            ("HOME".into(), p(&home)),
            ("ECR_EDGE_CACHE_DIR".into(), p(&dir.path().join("cache"))),
            // The daemon socket the helper asks first: this sandbox's own (no daemon unless a
            // test starts one), never a daemon running on the test machine.
            ("ECR_EDGE_SOCKET".into(), p(&dir.path().join("agent.sock"))),
            ("SSL_CERT_FILE".into(), p(&ca_file)),
            ("HTTPS_PROXY".into(), fake.proxy_url.clone()),
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_ACCESS_KEY.into()),
            ("AWS_SESSION_TOKEN".into(), SESSION_TOKEN.into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
            ("AWS_CONFIG_FILE".into(), p(&dir.path().join("aws-config"))),
            (
                "AWS_SHARED_CREDENTIALS_FILE".into(),
                p(&dir.path().join("aws-credentials")),
            ),
        ];
        let mut vars = vars;
        if std::env::var_os("ECR_EDGE_TEST_RUNNER").is_some_and(|r| !r.is_empty()) {
            // Emulated, a daemon busy in a TLS handshake can take longer than the default wait
            // for its first reply; the helper would then do the work itself.
            vars.push(("ECR_EDGE_DAEMON_WAIT".into(), "3".into()));
        }
        Sandbox {
            dir,
            ca,
            fake,
            vars,
            helper,
        }
    }

    /// Sets (or with `None`, removes) one variable for later commands.
    pub fn set(&mut self, name: &str, value: Option<&str>) {
        self.vars.retain(|(k, _)| k != name);
        if let Some(v) = value {
            self.vars.push((name.into(), v.into()));
        }
    }

    /// Takes the sandbox's AWS keys out of the environment, so another source must answer.
    pub fn without_aws_keys(&mut self) {
        for v in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
        ] {
            self.set(v, None);
        }
    }

    /// The cache directory the helper uses.
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// `docker-credential-ecr-edge <action>`, ready to spawn, stdin piped.
    pub fn helper_command(&self, action: &str) -> Command {
        self.command_for(&self.helper, action)
    }

    /// `<program> <action>` in this sandbox's environment (the binary under test or another
    /// helper to compare with), stdin, stdout and stderr piped.
    pub fn command_for(&self, program: &Path, action: &str) -> Command {
        let mut c = command(program);
        c.arg(action)
            .env_clear()
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Runs the helper with `input` on stdin.
    pub fn helper(&self, action: &str, input: &[u8]) -> Output {
        run_with_input(self.helper_command(action), input)
    }
}

/// Spawns `cmd`, writes `input`, waits.
pub fn run_with_input(mut cmd: Command, input: &[u8]) -> Output {
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // Write from a thread: a child that refuses early must not deadlock the test on a full pipe.
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    out
}

/// Text of a byte string, for messages.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A running `ecr-edge daemon` of a [`Sandbox`], ready (`READY=1`), stopped on drop (for the
/// benchmarks and the demo; the tests' own, with more to inspect, is tests/daemon.rs).
pub struct RunningDaemon(std::process::Child);

impl RunningDaemon {
    /// Writes `config` to the sandbox, starts `ecr-edge daemon` with it and waits for
    /// `READY=1`.
    pub fn start(sb: &mut Sandbox, config: &str) -> RunningDaemon {
        let path = sb.dir.path().join("daemon.toml");
        std::fs::write(&path, config).unwrap();
        sb.set("ECR_EDGE_CONFIG", Some(path.to_str().unwrap()));
        let notify_path = sb.dir.path().join("notify.sock");
        let _ = std::fs::remove_file(&notify_path);
        let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let child = command(&binary())
            .arg("daemon")
            .env_clear()
            .envs(sb.vars.iter().map(|(k, v)| (k, v)))
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 512];
        loop {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "daemon not ready"
            );
            if let Ok(n) = notify.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        RunningDaemon(child)
    }
}

impl Drop for RunningDaemon {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

/// The lines of the first fenced shell (or ini: a unit drop-in) block in `file` (under the clone,
/// e.g. `README.md`) that contains `marker`, without the block's indentation: what a user copies,
/// to run or install as written.
pub fn doc_block(file: &str, marker: &str) -> String {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
    let mut lines = doc.lines();
    while let Some(fence) = lines.next() {
        let indent = fence.len() - fence.trim_start().len();
        if !matches!(fence.trim_start().strip_prefix("```"), Some("sh" | "ini")) {
            continue;
        }
        let block: Vec<&str> = lines
            .by_ref()
            .take_while(|l| l.trim_start() != "```")
            .map(|l| l.get(indent..).unwrap_or(""))
            .collect();
        if block.iter().any(|l| l.contains(marker)) {
            return block.join("\n") + "\n";
        }
    }
    panic!("{file}: no ```sh or ```ini block with {marker:?}");
}
