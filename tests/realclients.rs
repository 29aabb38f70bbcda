//! Programs ecr-edge did not write, against a real registry: skopeo (and podman) with a Docker
//! config whose `credHelpers` names ecr-edge, pushing to and pulling from Debian's
//! `docker-registry` (the CNCF distribution registry) over TLS, with htpasswd auth that accepts
//! only the password the fake ECR issues.
//!
//! Each test re-executes itself inside a new network and mount namespace (`unshare --net
//! --mount`, root): loopback up, a private `/etc/hosts` bind-mounted so the registry host
//! resolves to 192.0.2.10 (an address on the namespace's loopback device, outside 127/8, which
//! dockerd would treat as an insecure registry and retry over plain HTTP) and the AWS API and
//! IoT names to 127.0.0.1, and the test CA appended to
//! a bind-mounted copy of the system CA bundle. Nothing leaves the namespace; the fakes answer
//! on the real names and port 443 directly (no proxy).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::iot::device_at;
use crate::support::{self, text, Sandbox};

const REG_HOST: &str = "123456789012.dkr.ecr.us-west-2.amazonaws.com";
const API_HOST: &str = "api.ecr.us-west-2.amazonaws.com";
const IOT_HOST: &str = "c1a2b3example.credentials.iot.us-west-2.amazonaws.com";
/// The registry's address: TEST-NET-1, on the namespace's loopback device.
const REG_ADDR: &str = "192.0.2.10";
const IMAGE: &str = "123456789012.dkr.ecr.us-west-2.amazonaws.com/edge/app:v1";
/// The company's own name for the registry (a `[[registry]] aliases` entry), and STS, which
/// answers on its own loopback address (port 443 of 127.0.0.1 is the ECR API's).
const ALIAS_HOST: &str = "registry.corp.example";
const STS_HOST: &str = "sts.us-west-2.amazonaws.com";
const STS_ADDR: &str = "127.0.0.2";

/// Runs `test` (this module's function name) inside fresh namespaces and returns `false`; inside
/// them, returns `true` so the test body runs. Emulated runs (qemu-user) skip: skopeo would
/// start the helper natively.
fn inside_namespace(test: &str) -> bool {
    if std::env::var_os("ECR_EDGE_IN_NETNS").is_none()
        && std::env::var_os("ECR_EDGE_TEST_RUNNER").is_some_and(|r| !r.is_empty())
    {
        eprintln!(
            "realclients::{test}: not run under an emulator (skopeo runs the helper natively)"
        );
        return false;
    }
    support::inside_namespace(&format!("realclients::{test}"))
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        text(&out.stderr)
    );
}

/// The world as the clients see it: a registry on the real host name, the fake ECR on the real
/// API name, a test CA trusted system-wide (in this namespace only).
struct World {
    sb: Sandbox,
    registry: Option<Child>,
    home: PathBuf,
}

impl World {
    fn new() -> World {
        let mut sb = Sandbox::new();
        let dir = sb.dir.path().to_owned();
        run("ip", &["link", "set", "lo", "up"]);
        run(
            "ip",
            &["addr", "add", &format!("{REG_ADDR}/32"), "dev", "lo"],
        );
        run("mount", &["--make-rprivate", "/"]);
        let hosts = dir.join("hosts");
        std::fs::write(
            &hosts,
            format!(
                "127.0.0.1 localhost\n127.0.0.1 {API_HOST}\n127.0.0.1 {IOT_HOST}\n\
                 {STS_ADDR} {STS_HOST}\n{REG_ADDR} {REG_HOST}\n{REG_ADDR} {ALIAS_HOST}\n"
            ),
        )
        .unwrap();
        run("mount", &["--bind", hosts.to_str().unwrap(), "/etc/hosts"]);
        let system = "/etc/ssl/certs/ca-certificates.crt";
        let mut bundle = std::fs::read_to_string(system).unwrap_or_default();
        bundle.push_str(&sb.ca.pem);
        let bundle_file = dir.join("ca-bundle.crt");
        std::fs::write(&bundle_file, bundle).unwrap();
        run("mount", &["--bind", bundle_file.to_str().unwrap(), system]);
        // The real names now resolve and verify; no proxy, no private CA variable.
        sb.set("HTTPS_PROXY", None);
        sb.set("SSL_CERT_FILE", None);
        sb.fake
            .listen_direct("127.0.0.1:443", API_HOST, sb.ca.clone());
        sb.fake
            .listen_direct(&format!("{STS_ADDR}:443"), STS_HOST, sb.ca.clone());
        let home = dir.join("home");
        std::fs::create_dir_all(home.join(".docker")).unwrap();
        std::fs::write(
            home.join(".docker/config.json"),
            format!("{{\"credHelpers\": {{\"{REG_HOST}\": \"ecr-edge\"}}}}\n"),
        )
        .unwrap();
        let xdg = dir.join("xdg");
        std::fs::create_dir_all(&xdg).unwrap();
        sb.set("XDG_RUNTIME_DIR", Some(xdg.to_str().unwrap()));
        let helper_dir = sb.helper.parent().unwrap().to_str().unwrap().to_owned();
        let path = format!("{helper_dir}:{}", std::env::var("PATH").unwrap_or_default());
        sb.set("PATH", Some(&path));
        let mut w = World {
            sb,
            registry: None,
            home,
        };
        w.start_registry();
        w
    }

    /// (Re)starts the registry accepting only the fake ECR's current password for user AWS.
    fn start_registry(&mut self) {
        let pw = self.sb.fake.password();
        self.start_registry_for(&pw);
    }

    /// (Re)starts the registry, on its own name and the alias, accepting only `pw` for user AWS.
    fn start_registry_for(&mut self, pw: &str) {
        if let Some(mut old) = self.registry.take() {
            let _ = old.kill();
            let _ = old.wait();
        }
        let dir = self.sb.dir.path().join("registry");
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        let (cert, key) = self.sb.ca.issue_pem_for(&[REG_HOST, ALIAS_HOST]);
        std::fs::write(dir.join("reg.crt"), cert).unwrap();
        std::fs::write(dir.join("reg.key"), key).unwrap();
        let out = Command::new("htpasswd")
            .args(["-Bbn", "AWS", pw])
            .output()
            .unwrap();
        assert!(out.status.success());
        std::fs::write(dir.join("htpasswd"), &out.stdout).unwrap();
        let d = dir.display();
        std::fs::write(
            dir.join("config.yml"),
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {d}/storage\n\
                 http:\n  addr: {REG_ADDR}:443\n  tls:\n    certificate: {d}/reg.crt\n    key: {d}/reg.key\n\
                 auth:\n  htpasswd:\n    realm: ecr-edge-test\n    path: {d}/htpasswd\n"
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .args(["serve", dir.join("config.yml").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
            .spawn()
            .expect("docker-registry (Debian package docker-registry)");
        self.registry = Some(child);
        let start = Instant::now();
        while TcpStream::connect((REG_ADDR, 443)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "registry did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `skopeo ARGS` as the user whose Docker config names ecr-edge.
    fn skopeo(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("skopeo");
        cmd.arg("--insecure-policy")
            .args(args)
            .env_clear()
            .envs(self.sb.vars.iter().map(|(k, v)| (k, v)))
            .env("HOME", &self.home);
        cmd.output().expect("skopeo (Debian package skopeo)")
    }

    /// `podman ARGS` with its own storage, and an auth file whose `credHelpers` names ecr-edge.
    fn podman(&self, args: &[&str]) -> Output {
        let dir = self.sb.dir.path();
        let auth = dir.join("auth.json");
        std::fs::write(
            &auth,
            format!("{{\"credHelpers\": {{\"{REG_HOST}\": \"ecr-edge\"}}}}\n"),
        )
        .unwrap();
        Command::new("podman")
            .args(["--root", dir.join("podman/root").to_str().unwrap()])
            .args(["--runroot", dir.join("podman/run").to_str().unwrap()])
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ])
            .args(args)
            .args(["--authfile", auth.to_str().unwrap()])
            .env_clear()
            .envs(self.sb.vars.iter().map(|(k, v)| (k, v)))
            .env("HOME", &self.home)
            .output()
            .expect("podman (Debian package podman)")
    }

    fn ecr_calls(&self) -> usize {
        self.sb
            .fake
            .calls()
            .iter()
            .filter(|c| c.target.ends_with("GetAuthorizationToken"))
            .count()
    }

    /// Pushes the test image and reads its manifest back; returns the manifest digest.
    fn push_and_inspect(&self) -> String {
        let (layout, config_digest) = oci_image(self.sb.dir.path());
        let out = self.skopeo(&[
            "copy",
            &format!("oci:{}:v1", layout.display()),
            &format!("docker://{IMAGE}"),
        ]);
        assert!(out.status.success(), "skopeo copy: {}", text(&out.stderr));
        let out = self.skopeo(&["inspect", "--raw", &format!("docker://{IMAGE}")]);
        assert!(
            out.status.success(),
            "skopeo inspect: {}",
            text(&out.stderr)
        );
        // The image read back is the one built here: same config (skopeo may compress the
        // layer on the way, which changes its digest but not the config's diff_ids).
        let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(manifest["config"]["digest"], config_digest.as_str());
        assert_eq!(manifest["layers"].as_array().map(Vec::len), Some(1));
        let out = self.skopeo(&[
            "inspect",
            "--format",
            "{{.Digest}}",
            &format!("docker://{IMAGE}"),
        ]);
        assert!(
            out.status.success(),
            "skopeo inspect: {}",
            text(&out.stderr)
        );
        text(&out.stdout).trim().to_owned()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut r) = self.registry.take() {
            let _ = r.kill();
            let _ = r.wait();
        }
    }
}

fn sha256(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A one-layer OCI image layout built here (`hello.txt` in an uncompressed tar layer); returns
/// the layout directory and the config's digest.
fn oci_image(dir: &Path) -> (PathBuf, String) {
    let layout = dir.join("oci");
    if layout.exists() {
        let digest = std::fs::read_to_string(dir.join("config.digest")).unwrap();
        return (layout, digest);
    }
    let files = dir.join("layer");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("hello.txt"), "hello from ecr-edge\n").unwrap();
    run(
        "tar",
        &[
            "--sort=name",
            "--mtime=@0",
            "--owner=0",
            "--group=0",
            "-C",
            files.to_str().unwrap(),
            "-cf",
            dir.join("layer.tar").to_str().unwrap(),
            "hello.txt",
        ],
    );
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let hex = sha256(bytes);
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let layer = std::fs::read(dir.join("layer.tar")).unwrap();
    let (layer_digest, layer_size) = put(&layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "config": {},
    })
    .to_string();
    let (config_digest, config_size) = put(config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    })
    .to_string();
    let (manifest_digest, manifest_size) = put(manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": "v1"},
        }],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(dir.join("config.digest"), &config_digest).unwrap();
    (layout, config_digest)
}

#[test]
#[ignore = "needs root (own network and mount namespace); scripts/test runs it as root"]
fn skopeo_pushes_and_pulls_through_the_helper() {
    if !inside_namespace("skopeo_pushes_and_pulls_through_the_helper") {
        return;
    }
    let w = World::new();
    w.push_and_inspect();
    // skopeo ran the helper for every operation; the first fetched, the rest used the cache.
    assert_eq!(w.ecr_calls(), 1);
    // Without the helper entry the same registry refuses: the pull really was authenticated.
    std::fs::write(w.home.join(".docker/config.json"), "{}\n").unwrap();
    let out = w.skopeo(&["inspect", "--raw", &format!("docker://{IMAGE}")]);
    assert!(!out.status.success(), "anonymous pull succeeded");
}

#[test]
#[ignore = "needs root (own network and mount namespace); scripts/test runs it as root"]
fn a_wrong_password_is_an_authentication_error_not_an_anonymous_pull() {
    if !inside_namespace("a_wrong_password_is_an_authentication_error_not_an_anonymous_pull") {
        return;
    }
    let w = World::new();
    // The broken fake issues a password the registry does not accept.
    w.sb.fake.set_password("not-the-registry-password");
    let out = w.skopeo(&["inspect", "--raw", &format!("docker://{IMAGE}")]);
    assert!(!out.status.success());
    let err = text(&out.stderr).to_lowercase();
    assert!(
        err.contains("unauthorized") || err.contains("authentication required"),
        "{err}"
    );
    assert_eq!(w.ecr_calls(), 1, "the helper was asked and answered");
}

#[test]
#[ignore = "needs root (own network and mount namespace); scripts/test runs it as root"]
fn an_expired_token_is_never_sent_a_fresh_one_is_fetched() {
    if !inside_namespace("an_expired_token_is_never_sent_a_fresh_one_is_fetched") {
        return;
    }
    let mut w = World::new();
    // Usable for 4 seconds (a token needs 300 s left to be handed out).
    w.sb.fake.set_lifetime(304.0);
    w.push_and_inspect();
    assert_eq!(w.ecr_calls(), 1);
    std::thread::sleep(Duration::from_secs(5));
    // ECR now issues a new password, and the registry accepts only that one.
    w.sb.fake.set_lifetime(43_200.0);
    w.sb.fake.set_password("fresh-ecr-password-0002");
    w.start_registry();
    let out = w.skopeo(&["inspect", "--raw", &format!("docker://{IMAGE}")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(w.ecr_calls(), 2, "the expired token was replaced, not sent");
}

#[test]
#[ignore = "needs root (own network and mount namespace); scripts/test runs it as root"]
fn skopeo_with_credentials_from_the_iot_exchange() {
    if !inside_namespace("skopeo_with_credentials_from_the_iot_exchange") {
        return;
    }
    let mut w = World::new();
    let (iot, iot_config) = device_at(&mut w.sb, Some((IOT_HOST, "127.0.0.1:8443")));
    let config = w.sb.dir.path().join("config.toml");
    std::fs::write(&config, iot_config).unwrap();
    w.sb.set("ECR_EDGE_CONFIG", Some(config.to_str().unwrap()));
    w.push_and_inspect();
    assert_eq!(iot.calls().len(), 1, "one certificate exchange");
    let calls = w.sb.fake.calls();
    assert_eq!(calls.len(), 1);
    // The environment has no AWS keys: the key that signed is the one the IoT exchange issued.
    assert_eq!(calls[0].access_key, support::ACCESS_KEY_ID);
}

#[test]
#[ignore = "needs root (own network and mount namespace); scripts/test runs it as root"]
fn skopeo_with_the_daemon_serving() {
    if !inside_namespace("skopeo_with_the_daemon_serving") {
        return;
    }
    let mut w = World::new();
    let d = crate::daemon::Daemon::start(
        &mut w.sb,
        &format!("[daemon]\nregistries = [\"{REG_HOST}\"]\n"),
    );
    d.wait_notify("READY=1", Duration::from_secs(20));
    assert_eq!(w.ecr_calls(), 1);
    w.push_and_inspect();
    assert_eq!(
        w.ecr_calls(),
        1,
        "every helper call was served by the daemon"
    );
    assert!(
        !w.sb.cache_dir().exists() || std::fs::read_dir(w.sb.cache_dir()).unwrap().count() == 0
    );
}

#[test]
#[ignore = "needs root (own network and mount namespace); scripts/test runs it as root"]
fn podman_pulls_through_its_auth_file_cred_helpers() {
    if !inside_namespace("podman_pulls_through_its_auth_file_cred_helpers") {
        return;
    }
    let w = World::new();
    w.push_and_inspect();
    let out = w.podman(&["pull", IMAGE]);
    assert!(
        out.status.success(),
        "podman pull: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Debian's dockerd (docker.io) in the test's namespaces: no iptables, no bridge, vfs storage,
/// its own data root, exec root, containerd and socket. It trusts the registry through the
/// system CA bundle, which [`World`] extended with the test CA.
struct Dockerd {
    child: Child,
    host: String,
    dir: PathBuf,
}

impl Dockerd {
    fn start(w: &World) -> Dockerd {
        let dir = w.sb.dir.path().join("dockerd");
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        // dockerd writes /etc/docker/key.json: give it a private /etc/docker (this namespace's
        // mounts are private), so the test leaves the machine's /etc as it found it.
        if Path::new("/etc/docker").is_dir() {
            run(
                "mount",
                &["--bind", dir.join("etc").to_str().unwrap(), "/etc/docker"],
            );
        }
        let host = format!("unix://{}/docker.sock", dir.display());
        let child = Command::new("dockerd")
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .args(["--storage-driver=vfs", "--host", &host])
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("dockerd.log")).unwrap())
            .spawn()
            .expect("dockerd (Debian package docker.io)");
        let d = Dockerd { child, host, dir };
        let start = Instant::now();
        loop {
            let out = d.cli(
                "/usr/bin/docker",
                w,
                &["info", "--format", "{{.ServerVersion}}"],
            );
            if out.status.success() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "dockerd did not answer: {}\n{}",
                text(&out.stderr),
                std::fs::read_to_string(d.dir.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        d
    }

    /// `docker ARGS` with the CLI at `cli`, as the user whose Docker config names ecr-edge.
    fn command(&self, cli: &str, w: &World, args: &[&str]) -> Command {
        let mut cmd = Command::new(cli);
        cmd.args(["--host", &self.host])
            .args(args)
            .env_clear()
            .envs(w.sb.vars.iter().map(|(k, v)| (k, v)))
            .env("HOME", &w.home);
        cmd
    }

    /// [`Dockerd::command`], run to completion.
    fn cli(&self, cli: &str, w: &World, args: &[&str]) -> Output {
        self.command(cli, w, args).output().expect("docker CLI")
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SIGTERM: dockerd stops its containerd and unmounts what it mounted.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Docker CLIs here: Debian's (20.10) and, where present, a newer one in /usr/local/bin.
fn docker_clis() -> Vec<&'static str> {
    ["/usr/bin/docker", "/usr/local/bin/docker"]
        .into_iter()
        .filter(|p| Path::new(p).exists())
        .collect()
}

#[test]
#[ignore = "needs root (own network and mount namespace, dockerd); scripts/test runs it as root"]
fn docker_pulls_and_pushes_through_the_helper() {
    if !inside_namespace("docker_pulls_and_pushes_through_the_helper") {
        return;
    }
    let mut w = World::new();
    // The token is usable for 60 s (a token needs 300 s left to be handed out): long enough for
    // dockerd to start and every CLI to pull and push on a loaded machine (4 s was not, in CI),
    // and the password rotation below still meets an expired token.
    const USABLE: Duration = Duration::from_secs(60);
    w.sb.fake.set_lifetime(300.0 + USABLE.as_secs_f64());
    let issued = Instant::now();
    w.push_and_inspect();
    let docker = Dockerd::start(&w);
    let clis = docker_clis();
    for (n, cli) in clis.iter().enumerate() {
        let out = docker.cli(cli, &w, &["pull", IMAGE]);
        assert!(out.status.success(), "{cli} pull: {}", text(&out.stderr));
        let pushed = format!("{REG_HOST}/edge/app:pushed-{n}");
        let out = docker.cli(cli, &w, &["tag", IMAGE, &pushed]);
        assert!(out.status.success(), "{cli} tag: {}", text(&out.stderr));
        let out = docker.cli(cli, &w, &["push", &pushed]);
        assert!(out.status.success(), "{cli} push: {}", text(&out.stderr));
        let out = docker.cli(cli, &w, &["rmi", IMAGE, &pushed]);
        assert!(out.status.success(), "{cli} rmi: {}", text(&out.stderr));
    }
    assert!(
        issued.elapsed() < USABLE,
        "the pulls and pushes took {:?}, longer than the token's usable window",
        issued.elapsed()
    );
    assert_eq!(w.ecr_calls(), 1, "one token served every pull and push");

    // The token expires and ECR's password rotates: the next pull fetches a fresh token.
    std::thread::sleep((USABLE + Duration::from_secs(1)).saturating_sub(issued.elapsed()));
    w.sb.fake.set_lifetime(43_200.0);
    w.sb.fake.set_password("fresh-ecr-password-0002");
    w.start_registry();
    for cli in &clis {
        let out = docker.cli(cli, &w, &["pull", IMAGE]);
        assert!(
            out.status.success(),
            "{cli} pull after rotation: {}",
            text(&out.stderr)
        );
        let out = docker.cli(cli, &w, &["rmi", IMAGE]);
        assert!(out.status.success(), "{cli} rmi: {}", text(&out.stderr));
    }
    assert_eq!(w.ecr_calls(), 2, "the expired token was replaced, not sent");

    // docker login stores nothing (ecr-edge makes its own tokens) and succeeds with a valid
    // password; docker logout drops the cached token, so the next pull fetches a new one.
    let mut login = docker.command(
        clis[0],
        &w,
        &["login", "--username", "AWS", "--password-stdin", REG_HOST],
    );
    login
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = support::run_with_input(login, w.sb.fake.password().as_bytes());
    assert!(out.status.success(), "docker login: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("Login Succeeded"),
        "{}",
        text(&out.stdout)
    );
    let config = std::fs::read_to_string(w.home.join(".docker/config.json")).unwrap();
    assert!(
        !config.contains(&w.sb.fake.password()),
        "docker login stored the password: {config}"
    );
    let out = docker.cli(clis[0], &w, &["logout", REG_HOST]);
    assert!(out.status.success(), "docker logout: {}", text(&out.stderr));
    let out = docker.cli(clis[0], &w, &["pull", IMAGE]);
    assert!(
        out.status.success(),
        "pull after logout: {}",
        text(&out.stderr)
    );
    assert_eq!(w.ecr_calls(), 3, "logout dropped the cached token");

    // Without the credHelpers entry the same pull is anonymous, and the registry refuses it.
    let _ = docker.cli(clis[0], &w, &["rmi", IMAGE]);
    std::fs::write(w.home.join(".docker/config.json"), "{}\n").unwrap();
    for cli in &clis {
        let out = docker.cli(cli, &w, &["pull", IMAGE]);
        assert!(!out.status.success(), "{cli}: anonymous pull succeeded");
        let err = text(&out.stderr);
        assert!(err.contains("no basic auth credentials"), "{cli}: {err}");
    }
}

/// What a user sees when the helper cannot get a token: the Docker CLI drops the helper's
/// stdout and pulls anonymously, so the cause must come through stderr, once; skopeo and
/// podman show the stdout text themselves, so they must show it once too.
#[test]
#[ignore = "needs root (own network and mount namespace, dockerd); scripts/test runs it as root"]
fn docker_skopeo_and_podman_show_why_a_get_failed_once() {
    if !inside_namespace("docker_skopeo_and_podman_show_why_a_get_failed_once") {
        return;
    }
    let mut w = World::new();
    w.push_and_inspect();
    let docker = Dockerd::start(&w);
    let keys = [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    ];
    let saved: Vec<_> = w.sb.vars.clone();
    for cause in ["access denied", "no AWS credentials", "connection"] {
        std::fs::remove_dir_all(w.sb.cache_dir()).ok();
        w.sb.vars = saved.clone();
        match cause {
            "access denied" => w.sb.fake.set_mode(support::Mode::AccessDenied),
            "no AWS credentials" => keys.iter().for_each(|k| w.sb.set(k, None)),
            _ => w.sb.fake.set_mode(support::Mode::Reset),
        }
        // The line the helper prints on stdout, as a client reads it (up to its first quote:
        // skopeo and podman log it inside a quoted, escaped message).
        let line = text(&w.sb.helper("get", REG_HOST.as_bytes()).stdout);
        let said = line.trim_end().split('"').next().unwrap();
        assert!(
            said.starts_with(&format!("ecr-edge: {REG_HOST}: ")) && said.contains(cause),
            "{said}"
        );
        for cli in docker_clis() {
            let out = docker.cli(cli, &w, &["pull", IMAGE]);
            assert!(!out.status.success(), "{cli} pulled without a token");
            let err = text(&out.stderr);
            assert_eq!(err.matches(said).count(), 1, "{cli}, {cause}: {err}");
        }
        let out = w.skopeo(&["inspect", "--raw", &format!("docker://{IMAGE}")]);
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert_eq!(err.matches(said).count(), 1, "skopeo, {cause}: {err}");
        let out = w.podman(&["pull", IMAGE]);
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert_eq!(err.matches(said).count(), 1, "podman, {cause}: {err}");
        w.sb.fake.set_mode(support::Mode::Ok);
    }
}

/// A registry reached through the company's name for it, with a role of another account:
/// `ecr-edge configure` writes the entries from the configuration, and the real Docker CLIs and
/// skopeo pull by the alias with the role's token (the registry accepts no other password).
#[test]
#[ignore = "needs root (own network and mount namespace, dockerd); scripts/test runs it as root"]
fn docker_and_skopeo_pull_through_an_alias_with_a_role() {
    if !inside_namespace("docker_and_skopeo_pull_through_an_alias_with_a_role") {
        return;
    }
    let mut w = World::new();
    w.push_and_inspect();
    let role_arn = "arn:aws:iam::123456789012:role/edge-pull";
    let role =
        w.sb.fake
            .add_role(role_arn, Some("fleet-7"), &[support::ACCESS_KEY_ID]);
    w.start_registry_for(&role.password);
    let config = w.sb.dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[registry]]\nhost = \"{REG_HOST}\"\naliases = [\"{ALIAS_HOST}\"]\n\
             role_arn = \"{role_arn}\"\nexternal_id = \"fleet-7\"\n"
        ),
    )
    .unwrap();
    w.sb.set("ECR_EDGE_CONFIG", Some(config.to_str().unwrap()));
    let mut configure = support::command(&support::binary());
    configure
        .arg("configure")
        .env_clear()
        .envs(w.sb.vars.iter().map(|(k, v)| (k, v)))
        .env("HOME", &w.home);
    let out = configure.output().unwrap();
    assert!(out.status.success(), "configure: {}", text(&out.stderr));
    let aliased = format!("{ALIAS_HOST}/edge/app:v1");
    let out = w.skopeo(&["inspect", "--raw", &format!("docker://{aliased}")]);
    assert!(out.status.success(), "skopeo: {}", text(&out.stderr));
    let docker = Dockerd::start(&w);
    for cli in docker_clis() {
        let out = docker.cli(cli, &w, &["pull", &aliased]);
        assert!(out.status.success(), "{cli} pull: {}", text(&out.stderr));
        let out = docker.cli(cli, &w, &["rmi", &aliased]);
        assert!(out.status.success(), "{cli} rmi: {}", text(&out.stderr));
    }
    let calls = w.sb.fake.calls();
    let assumed: Vec<_> = calls
        .iter()
        .filter(|c| c.sts.as_ref().is_some_and(|(a, _)| a == "AssumeRole"))
        .collect();
    assert_eq!(assumed.len(), 1, "{calls:?}");
    assert_eq!(assumed[0].connect_host, STS_HOST);
    assert!(
        calls
            .iter()
            .any(|c| c.access_key == role.key_id && c.target.ends_with("GetAuthorizationToken")),
        "{calls:?}"
    );
    assert_eq!(
        w.ecr_calls(),
        2,
        "the push's token, then the role's, cached for every pull"
    );
}

/// A two-platform image (linux/amd64 and linux/arm64/v8) in an OCI layout, as the index
/// `multi`: the one-layer image of [`oci_image`] under two configurations.
fn multi_platform_image(dir: &Path) -> PathBuf {
    let (layout, _) = oci_image(dir);
    let blobs = layout.join("blobs/sha256");
    let put = |bytes: &[u8]| {
        let hex = sha256(bytes);
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let single: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(layout.join("index.json")).unwrap()).unwrap();
    let manifest_digest = single["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(blobs.join(manifest_digest.trim_start_matches("sha256:"))).unwrap(),
    )
    .unwrap();
    let layer = manifest["layers"][0].clone();
    let mut entries = Vec::new();
    for (arch, variant) in [("amd64", None), ("arm64", Some("v8"))] {
        let mut config = serde_json::json!({
            "architecture": arch, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
            "config": {},
        });
        let mut platform = serde_json::json!({"architecture": arch, "os": "linux"});
        if let Some(v) = variant {
            config["variant"] = v.into();
            platform["variant"] = v.into();
        }
        let (config_digest, config_size) = put(config.to_string().as_bytes());
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
            "layers": [layer],
        });
        let (digest, size) = put(m.to_string().as_bytes());
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": size, "platform": platform,
        }));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    });
    let (index_digest, index_size) = put(index.to_string().as_bytes());
    let mut top = single;
    top["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": index_digest, "size": index_size,
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }));
    std::fs::write(layout.join("index.json"), top.to_string()).unwrap();
    layout
}

/// `doctor --image` against the real distribution registry holding a two-platform index
/// pushed by skopeo: the variant this device needs found (and the digest the tag points to), a
/// platform the index lacks named with the ones it has, a missing tag and a missing repository
/// named as such.
#[test]
#[ignore = "needs root (own network and mount namespace); scripts/test runs it as root"]
fn doctor_checks_images_against_a_real_registry() {
    if !inside_namespace("doctor_checks_images_against_a_real_registry") {
        return;
    }
    let w = World::new();
    let layout = multi_platform_image(w.sb.dir.path());
    let image = format!("{REG_HOST}/edge/multi:v1");
    let out = w.skopeo(&[
        "copy",
        "--all",
        &format!("oci:{}:multi", layout.display()),
        &format!("docker://{image}"),
    ]);
    assert!(out.status.success(), "skopeo copy: {}", text(&out.stderr));
    let out = w.skopeo(&["inspect", "--raw", &format!("docker://{image}")]);
    let raw = out.stdout.clone();
    let pushed_digest = format!("sha256:{}", sha256(&raw));
    let doctor = |args: &[&str]| -> Vec<(String, String)> {
        let mut c = w.sb.command_for(&support::binary(), "doctor");
        c.arg("--json").args(args).env("HOME", &w.home);
        let out = support::run_with_input(c, b"");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("doctor --json: {e}: {}", text(&out.stdout)));
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["name"] == "image")
            .map(|c| {
                (
                    c["status"].as_str().unwrap().to_owned(),
                    c["detail"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let found = doctor(&["--image", &image, "--platform", "linux/arm64"]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "pass", "{found:?}");
    assert!(
        found[0].1.contains(&pushed_digest)
            && found[0]
                .1
                .contains("the index has linux/arm64/v8 for this device (linux/arm64)")
            && found[0].1.contains("a layer's download is allowed"),
        "{found:?}"
    );
    let missing = doctor(&["--image", &image, "--platform", "linux/arm/v7"]);
    assert_eq!(missing[0].0, "fail", "{missing:?}");
    assert!(
        missing[0].1.contains(
            "no image for this device (linux/arm/v7); the index has linux/amd64, linux/arm64/v8"
        ),
        "{missing:?}"
    );
    let no_tag = doctor(&["--image", &format!("{REG_HOST}/edge/multi:v9")]);
    assert!(
        no_tag[0]
            .1
            .contains("tag v9 is not in repository edge/multi (MANIFEST_UNKNOWN)"),
        "{no_tag:?}"
    );
    let no_repo = doctor(&["--image", &format!("{REG_HOST}/edge/none:v1")]);
    assert!(
        no_repo[0]
            .1
            .contains("repository edge/none does not exist in"),
        "{no_repo:?}"
    );
    println!("doctor --image said:\n{found:?}\n{missing:?}\n{no_tag:?}\n{no_repo:?}");
}
