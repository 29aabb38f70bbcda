//! IoT certificate credentials, end to end: helper -> mutual TLS exchange with the fake IoT
//! provider -> ECR call that the fake ECR verifies was signed with the exchanged credentials.

use std::time::{Duration, Instant};

use crate::support::iot::{
    device_identity, FakeIot, IotMode, KeyKind, Validity, ROLE_ALIAS, THING_NAME,
};
use crate::support::{self, text, Mode, Sandbox, TestCa};

const HOST: &str = "123456789012.dkr.ecr.us-west-2.amazonaws.com";

pub(crate) struct IotSandbox {
    pub(crate) sb: Sandbox,
    pub(crate) iot: FakeIot,
    device_ca: TestCa,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

impl IotSandbox {
    pub(crate) fn new(kind: KeyKind, validity: Validity) -> IotSandbox {
        let mut sb = Sandbox::new();
        let device_ca = TestCa::new();
        let iot = FakeIot::start(&sb.ca, &device_ca);
        let (cert, key) = device_identity(sb.dir.path(), &device_ca, kind, validity);
        sb.without_aws_keys();
        let config = sb.dir.path().join("config.toml");
        sb.set("ECR_EDGE_CONFIG", Some(config.to_str().unwrap()));
        let s = IotSandbox {
            sb,
            iot,
            device_ca,
            cert,
            key,
        };
        s.write_config("");
        s
    }

    fn write_config(&self, extra: &str) {
        std::fs::write(self.sb.dir.path().join("config.toml"), self.config(extra)).unwrap();
    }

    fn config(&self, extra: &str) -> String {
        format!(
            "[iot]\nendpoint = \"{}\"\nrole_alias = \"{ROLE_ALIAS}\"\nthing_name = \"{THING_NAME}\"\ncert = \"{}\"\nkey = \"{}\"\n{extra}",
            self.iot.endpoint,
            self.cert.display(),
            self.key.display()
        )
    }

    fn get(&self) -> std::process::Output {
        self.sb.helper("get", HOST.as_bytes())
    }
}

#[test]
fn get_signs_ecr_call_with_exchanged_credentials() {
    let s = IotSandbox::new(KeyKind::EcPkcs8, Validity::Current);
    let out = s.get();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let calls = s.iot.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].sni.as_deref(), Some("localhost"));
    assert_eq!(
        calls[0].path,
        format!("/role-aliases/{ROLE_ALIAS}/credentials")
    );
    assert_eq!(calls[0].thing.as_deref(), Some(THING_NAME));
    assert_eq!(
        s.sb.fake.tunnels(),
        vec![s.iot.endpoint.clone()],
        "exchange went through HTTPS_PROXY"
    );
    let ecr = s.sb.fake.calls();
    assert_eq!(ecr.len(), 1);
    assert!(ecr[0].authentic, "signature and session token verified");
    assert_eq!(ecr[0].access_key, support::ACCESS_KEY_ID);
    // Cached under the IoT identity: the next get needs neither the exchange nor ECR.
    assert!(s.get().status.success());
    assert_eq!((s.iot.calls().len(), s.sb.fake.calls().len()), (1, 1));
    // Another thing is another identity.
    let other = std::fs::read_to_string(s.sb.dir.path().join("config.toml"))
        .unwrap()
        .replace(THING_NAME, "edge-thing-0002");
    std::fs::write(s.sb.dir.path().join("config.toml"), other).unwrap();
    let out = s.get();
    assert!(
        text(&out.stdout).contains("Invalid thing name passed"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn rsa_pkcs1_and_ec_sec1_keys_work() {
    for kind in [KeyKind::RsaPkcs1, KeyKind::EcSec1] {
        let s = IotSandbox::new(kind, Validity::Current);
        let out = s.get();
        assert!(out.status.success(), "{kind:?}: {}", text(&out.stdout));
        assert!(s.sb.fake.calls()[0].authentic);
    }
}

#[test]
fn explicit_ca_file_is_used_for_the_endpoint() {
    let mut s = IotSandbox::new(KeyKind::EcPkcs8, Validity::Current);
    let ca_path = s.sb.dir.path().join("iot-ca.pem");
    std::fs::write(&ca_path, &s.sb.ca.pem).unwrap();
    s.write_config(&format!("ca = \"{}\"\n", ca_path.display()));
    assert!(s.get().status.success());
    assert_eq!(s.iot.calls().len(), 1);
    // A `ca` that did not issue the endpoint's certificate fails, although the system store
    // (SSL_CERT_FILE) would vouch for it: `ca` replaces the system store.
    let other = TestCa::new();
    std::fs::write(&ca_path, &other.pem).unwrap();
    s.sb.set("ECR_EDGE_TIMEOUT", Some("2"));
    let _ = std::fs::remove_dir_all(s.sb.cache_dir());
    let out = s.get();
    assert!(text(&out.stdout).contains("TLS"), "{}", text(&out.stdout));
}

#[test]
fn untrusted_client_certificate_is_refused_by_the_endpoint() {
    let mut s = IotSandbox::new(KeyKind::EcPkcs8, Validity::Current);
    let stranger = TestCa::new();
    let (cert, key) = device_identity(
        &s.sb.dir.path().join("."),
        &stranger,
        KeyKind::EcPkcs8,
        Validity::Current,
    );
    s.cert = cert;
    s.key = key;
    s.write_config("");
    s.sb.set("ECR_EDGE_TIMEOUT", Some("3"));
    let start = Instant::now();
    let out = s.get();
    let msg = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        msg.contains("IoT credentials") && msg.contains("rejected our certificate"),
        "{msg}"
    );
    assert!(s.iot.calls().is_empty());
    assert!(start.elapsed() < Duration::from_secs(10));
    // The fake counts the failure after it has sent its alert, so the client may have read
    // the alert and exited first: give the fake's thread a moment.
    let counted = Instant::now();
    while s.iot.handshake_failures() == 0 && counted.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(s.iot.handshake_failures() >= 1);
}

#[test]
fn configuration_errors_reach_the_user_and_are_not_retried() {
    for (status, message) in [
        (404, "Role alias does not exist"),
        (403, "Access Denied"),
        (403, "Certificate is invalid on this endpoint"),
        (
            400,
            "Unable to assume the role, or the role to assume does not exist",
        ),
    ] {
        let s = IotSandbox::new(KeyKind::EcPkcs8, Validity::Current);
        s.iot.set_mode(IotMode::Status(status, message));
        let out = s.get();
        let msg = text(&out.stdout);
        assert!(
            msg.contains(&format!("refused ({status}): {message}")),
            "{msg}"
        );
        assert_eq!(s.iot.calls().len(), 1, "{message}: not retried");
        assert!(s.sb.fake.calls().is_empty());
    }
}

#[test]
fn throttling_server_errors_and_resets_are_retried() {
    for mode in [
        IotMode::Status(429, "Rate exceeded"),
        IotMode::Status(500, "Internal"),
        IotMode::Reset,
    ] {
        let s = IotSandbox::new(KeyKind::EcPkcs8, Validity::Current);
        s.iot.fail_next(2, mode.clone());
        let out = s.get();
        assert!(out.status.success(), "{mode:?}: {}", text(&out.stdout));
        assert_eq!(s.iot.calls().len(), 3, "{mode:?}");
    }
}

#[test]
fn hanging_endpoint_is_bounded_by_the_deadline() {
    let mut s = IotSandbox::new(KeyKind::EcPkcs8, Validity::Current);
    s.sb.set("ECR_EDGE_TIMEOUT", Some("2"));
    s.iot.set_mode(IotMode::Hang);
    let start = Instant::now();
    let out = s.get();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("no answer"),
        "{}",
        text(&out.stdout)
    );
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn local_identity_problems_are_caught_before_any_network_call() {
    // Group/other-readable key.
    let s = IotSandbox::new(KeyKind::EcPkcs8, Validity::Current);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&s.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let msg = text(&s.get().stdout);
    assert!(
        msg.contains("chmod 600") && msg.contains("mode 644"),
        "{msg}"
    );
    assert!(s.iot.calls().is_empty() && s.iot.handshake_failures() == 0);
    s.write_config("allow_insecure_key_permissions = true\n");
    assert!(s.get().status.success());

    for (validity, expect) in [
        (Validity::Expired, "expired at 2021-01-01"),
        (Validity::Future, "not valid until 2099-01-01"),
    ] {
        let s = IotSandbox::new(KeyKind::EcPkcs8, validity);
        let msg = text(&s.get().stdout);
        assert!(msg.contains(expect), "{msg}");
        assert!(s.iot.calls().is_empty() && s.iot.handshake_failures() == 0);
    }

    // A key that belongs to another certificate.
    let mut s = IotSandbox::new(KeyKind::EcPkcs8, Validity::Current);
    let other_dir = s.sb.dir.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let (_, other_key) = device_identity(
        &other_dir,
        &s.device_ca,
        KeyKind::EcPkcs8,
        Validity::Current,
    );
    s.key = other_key;
    s.write_config("");
    let msg = text(&s.get().stdout);
    assert!(msg.contains("does not belong to certificate"), "{msg}");
    assert!(s.iot.calls().is_empty() && s.iot.handshake_failures() == 0);
}

#[test]
fn cross_account_role_hop_through_sts() {
    let s = IotSandbox::new(KeyKind::EcPkcs8, Validity::Current);
    s.write_config("role_arn = \"arn:aws:iam::210987654321:role/ecr-pull\"\n");
    let out = s.get();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let calls = s.sb.fake.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0].service, "sts");
    assert_eq!(calls[0].connect_host, "sts.us-west-2.amazonaws.com");
    assert_eq!(
        calls[0].access_key,
        support::ACCESS_KEY_ID,
        "STS signed with the exchanged key"
    );
    assert!(calls[0].authentic);
    assert_eq!(calls[1].service, "ecr");
    assert_eq!(
        calls[1].access_key,
        support::ROLE_ACCESS_KEY_ID,
        "ECR signed with the assumed role"
    );
    assert!(calls[1].authentic);
}

#[test]
fn credentials_command_prints_credential_process_json() {
    let s = IotSandbox::new(KeyKind::EcPkcs8, Validity::Current);
    let mut c = s.sb.command_for(&support::binary(), "credentials");
    c.arg("--config").arg(s.sb.dir.path().join("config.toml"));
    let out = support::run_with_input(c, b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["Version"], 1);
    assert_eq!(v["AccessKeyId"], support::ACCESS_KEY_ID);
    assert_eq!(v["SecretAccessKey"], support::SECRET_ACCESS_KEY);
    assert_eq!(v["SessionToken"], support::SESSION_TOKEN);
    assert!(v["Expiration"].as_str().unwrap().ends_with('Z'));
    assert_eq!(s.iot.calls().len(), 1);
    // Without [iot] there is nothing to exchange.
    std::fs::write(s.sb.dir.path().join("config.toml"), "").unwrap();
    let out = support::run_with_input(s.sb.command_for(&support::binary(), "credentials"), b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no [iot] section"));
}

#[test]
fn invalid_configuration_names_the_key_and_line() {
    let s = IotSandbox::new(KeyKind::EcPkcs8, Validity::Current);
    let bad = std::fs::read_to_string(s.sb.dir.path().join("config.toml"))
        .unwrap()
        .replace("thing_name", "thing_nme");
    std::fs::write(s.sb.dir.path().join("config.toml"), bad).unwrap();
    let out = s.get();
    let msg = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(msg.contains("thing_nme") && msg.contains("line 4"), "{msg}");
    assert!(s.iot.calls().is_empty());
}

#[test]
fn no_secret_from_the_iot_path_reaches_output() {
    let mut s = IotSandbox::new(KeyKind::EcPkcs8, Validity::Current);
    s.sb.set("ECR_EDGE_LOG", Some("trace"));
    let ok = s.get();
    let key_pem = std::fs::read_to_string(&s.key).unwrap();
    let key_body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    for out in [&ok.stdout, &ok.stderr] {
        let t = text(out);
        for secret in [
            support::SECRET_ACCESS_KEY,
            support::SESSION_TOKEN,
            &key_body[..40],
        ] {
            assert!(!t.contains(secret), "leaked {secret}: {t}");
        }
    }
    s.iot.set_mode(IotMode::Status(403, "Access Denied"));
    let _ = std::fs::remove_dir_all(s.sb.cache_dir());
    let bad = s.get();
    assert!(!text(&bad.stderr).contains(support::SECRET_ACCESS_KEY));
}

/// A raw HTTP/1.1 GET to the daemon's credentials endpoint; returns status and body.
fn http_get(port: u16, path: &str, auth: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_owned();
    (status, body)
}

/// Starts the daemon with the local credentials endpoint on a free port (plus `daemon`
/// settings) and waits until its log says `wait_for`; returns it, the port and the token file.
fn start_with_endpoint(
    s: &mut IotSandbox,
    daemon: &str,
    wait_for: &str,
) -> (crate::daemon::Daemon, u16, std::path::PathBuf) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let token_file = s.sb.dir.path().join("credentials-token");
    let config = s.config(&format!(
        "[daemon]\n{daemon}credentials_endpoint = \"127.0.0.1:{port}\"\n\
         credentials_token_file = \"{}\"\n",
        token_file.display()
    ));
    let d = crate::daemon::Daemon::start(&mut s.sb, &config);
    d.wait_notify("READY=1", Duration::from_secs(20));
    let start = Instant::now();
    while !d.log().contains(wait_for) {
        assert!(start.elapsed() < Duration::from_secs(20), "{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    (d, port, token_file)
}

/// A daemon with one registry and the credentials endpoint, once it holds role credentials:
/// the daemon, the endpoint's port, the token file and the token.
fn serving_role_credentials(
    s: &mut IotSandbox,
) -> (crate::daemon::Daemon, u16, std::path::PathBuf, String) {
    let (d, port, token_file) = start_with_endpoint(
        s,
        &format!("registries = [\"{HOST}\"]\n"),
        "role credentials refreshed",
    );
    let token = std::fs::read_to_string(&token_file).unwrap();
    (d, port, token_file, token)
}

#[test]
fn daemon_serves_role_credentials_locally_only_with_the_token() {
    use std::os::unix::fs::PermissionsExt;
    let mut s = IotSandbox::new(KeyKind::EcPkcs8, Validity::Current);
    let (d, port, token_file, token) = serving_role_credentials(&mut s);
    assert_eq!(token.len(), 64);
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let (status, body) = http_get(port, "/credentials", Some(&token));
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["AccessKeyId"], support::ACCESS_KEY_ID);
    assert_eq!(v["SecretAccessKey"], support::SECRET_ACCESS_KEY);
    assert_eq!(v["Token"], support::SESSION_TOKEN);
    assert!(v["Expiration"].as_str().unwrap().ends_with('Z'), "{body}");

    for (path, auth, want) in [
        ("/credentials", None, 401),
        ("/credentials", Some("0".repeat(64)), 401),
        ("/credentials", Some(format!("{token}x")), 401),
        ("/other", Some(token.clone()), 404),
    ] {
        let (status, body) = http_get(port, path, auth.as_deref());
        assert_eq!(status, want, "{path} {auth:?}: {body}");
        assert!(!body.contains(support::SECRET_ACCESS_KEY));
    }
    // The helper is still served by the same daemon, and no secret reached the log.
    let out = s.get();
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(!d.log().contains(support::SECRET_ACCESS_KEY));
    assert!(!d.log().contains(&token));
}

/// Role credentials that arrive already expired (a wrong clock, a stale answer) are never held
/// or served by the credentials endpoint: it answers 503 and the refresh is retried. (Before,
/// a failed expiry computation counted as another hour of validity.)
#[test]
fn the_credentials_endpoint_never_serves_expired_credentials() {
    let mut s = IotSandbox::new(KeyKind::EcPkcs8, Validity::Current);
    s.iot.set_credentials_life(-60);
    let (d, port, token_file) = start_with_endpoint(&mut s, "", "role credentials refresh failed");
    assert!(
        d.log()
            .contains("the role credentials had already expired (check the system clock)"),
        "{}",
        d.log()
    );
    let token = std::fs::read_to_string(&token_file).unwrap();
    let (status, body) = http_get(port, "/credentials", Some(&token));
    assert_eq!(status, 503, "{body}");
    assert!(!body.contains(support::SECRET_ACCESS_KEY), "{body}");
}

/// SIGTERM while 200 clients are mid-request on the socket (64 waiting for a slow fetch, the
/// rest queued behind the connection cap) and 50 on the credentials endpoint (a request
/// half-sent): every one is answered or refused in words, the sink is never left
/// half-written, the daemon exits within the drain with a clean status after `STOPPING=1`.
#[test]
fn sigterm_answers_every_client_in_words_and_stops_cleanly() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    const OTHER: &str = "210987654321.dkr.ecr.eu-central-1.amazonaws.com";
    let mut s = IotSandbox::new(KeyKind::EcPkcs8, Validity::Current);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = s.sb.dir.path().to_owned();
    let token_file = dir.join("credentials-token");
    let sink = dir.join("sink").join("auth.json");
    let config = s.config(&format!(
        "[daemon]\nregistries = [\"{HOST}\"]\ncredentials_endpoint = \"127.0.0.1:{port}\"\n\
         credentials_token_file = \"{}\"\n[[daemon.sink]]\nkind = \"docker-auths\"\npath = \"{}\"\n",
        token_file.display(),
        sink.display()
    ));
    let mut d = crate::daemon::Daemon::start(&mut s.sb, &config);
    d.wait_notify("READY=1", Duration::from_secs(20));
    let start = Instant::now();
    while !d.log().contains("role credentials refreshed") || !sink.exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let token = std::fs::read_to_string(&token_file).unwrap();
    let identity = ecr_edge::internal::credentials::Source::select(
        &ecr_edge::internal::config::parse(&config).unwrap(),
    )
    .identity();
    // The next fetch (an on-demand registry) takes 30 s: its clients wait.
    s.sb.fake.set_mode(Mode::Slow(Duration::from_secs(30)));
    let socket = dir.join("agent.sock");
    let request = format!(
        "{}\n",
        serde_json::json!({"get": {"registry": OTHER, "identity": identity.as_str()}})
    );
    let waiting = Arc::new(AtomicUsize::new(0));
    let socket_clients: Vec<_> = (0..200)
        .map(|_| {
            let (socket, request, waiting) = (socket.clone(), request.clone(), waiting.clone());
            std::thread::spawn(move || -> String {
                let mut c = std::os::unix::net::UnixStream::connect(&socket).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                c.write_all(request.as_bytes()).unwrap();
                let mut lines = BufReader::new(c).lines();
                let mut waited = false;
                loop {
                    let line = match lines.next() {
                        Some(Ok(line)) => line,
                        other => return format!("no reply (waited: {waited}): {other:?}"),
                    };
                    if line.contains("wait") {
                        waited = true;
                        waiting.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    return line;
                }
            })
        })
        .collect();
    let endpoint_clients: Vec<_> = (0..50)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            write!(
                c,
                "GET /credentials HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token}\r\n"
            )
            .unwrap();
            c
        })
        .collect();
    let start = Instant::now();
    while waiting.load(Ordering::SeqCst) < ecr_edge::internal::daemon::MAX_CONNECTIONS {
        assert!(start.elapsed() < Duration::from_secs(20), "{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));

    let stopping = Instant::now();
    d.signal(nix::sys::signal::Signal::SIGTERM);
    // The endpoint's clients finish their requests during the drain.
    let endpoint_replies: Vec<_> = endpoint_clients
        .into_iter()
        .map(|mut c| {
            let _ = c.write_all(b"Connection: close\r\n\r\n");
            let mut out = String::new();
            let _ = c.read_to_string(&mut out);
            out
        })
        .collect();
    let status = d
        .wait_exit(Duration::from_secs(6))
        .unwrap_or_else(|| panic!("still running 6 s after SIGTERM: {}", d.log()));
    let took = stopping.elapsed();
    assert!(status.success(), "{status:?}: {}", d.log());
    d.wait_notify("STOPPING=1", Duration::from_secs(1));
    let replies: Vec<String> = socket_clients
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let unanswered: Vec<&String> = replies
        .iter()
        .filter(|r| r.starts_with("no reply"))
        .collect();
    assert!(
        unanswered.is_empty(),
        "{} of 200 unanswered, e.g. {:?}\n{}",
        unanswered.len(),
        unanswered.first(),
        d.log()
    );
    for reply in replies {
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert!(
            v["refused"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("the daemon is stopping")),
            "{reply}"
        );
    }
    for reply in endpoint_replies {
        let status = reply.split_whitespace().nth(1).unwrap_or("");
        assert!(status == "200" || status == "503", "{reply:?}");
        assert!(
            reply.contains("\"message\"") || reply.contains("AccessKeyId"),
            "{reply:?}"
        );
    }
    // The sink is whole, and no temporary file was left beside it.
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sink).unwrap()).unwrap();
    assert!(v["auths"][HOST]["auth"].is_string(), "{v}");
    let leftovers: Vec<_> = std::fs::read_dir(sink.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    eprintln!("stopped {took:?} after SIGTERM");
}

/// 5,000 idle TCP connections to the credentials endpoint (connected, never a byte sent):
/// the daemon's open descriptors and memory stay bounded by the connection cap, and a real
/// request that arrives after them is still answered within a second.
#[test]
fn idle_connections_cannot_starve_the_credentials_endpoint() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    const IDLE: usize = 5_000;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if hard < IDLE as u64 + 200 {
        eprintln!("skipped: the descriptor limit here ({hard}) is below {IDLE}");
        return;
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard.max(soft), hard).unwrap();
    let mut s = IotSandbox::new(KeyKind::EcPkcs8, Validity::Current);
    let (d, port, _, token) = serving_role_credentials(&mut s);
    let proc_dir = std::path::PathBuf::from(format!("/proc/{}", d.pid()));
    let fds = || std::fs::read_dir(proc_dir.join("fd")).unwrap().count();
    let rss_kib = || -> u64 {
        let status = std::fs::read_to_string(proc_dir.join("status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let (fds_before, rss_before) = (fds(), rss_kib());
    let mut idle = Vec::with_capacity(IDLE);
    let asked0 = Instant::now();
    for _ in 0..IDLE {
        idle.push(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap());
    }
    eprintln!("connected {IDLE} in {:?}", asked0.elapsed());
    let asked = Instant::now();
    let (status, body) = http_get(port, "/credentials", Some(&token));
    let answered_in = asked.elapsed();
    assert_eq!(status, 200, "{body}");
    let (fds_after, rss_after) = (fds(), rss_kib());
    eprintln!(
        "{IDLE} idle connections: answered in {answered_in:?}; daemon fds {fds_before} -> \
         {fds_after}, RSS {rss_before} -> {rss_after} KiB"
    );
    assert!(
        answered_in < Duration::from_secs(1),
        "a request behind {IDLE} idle connections took {answered_in:?}"
    );
    let cap = ecr_edge::internal::daemon::MAX_CONNECTIONS;
    assert!(
        fds_after <= fds_before + cap + 2,
        "{fds_after} descriptors open (cap {cap}, {fds_before} before)"
    );
    assert!(
        rss_after < rss_before + 8 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    drop(idle);
}

/// `key = "credential:NAME"`: the key systemd decrypted into `$CREDENTIALS_DIRECTORY` for the
/// service (what `LoadCredentialEncrypted=` does; the device lab runs it under real systemd).
#[test]
fn a_systemd_credential_key_is_read_from_the_credentials_directory() {
    let mut s = IotSandbox::new(KeyKind::EcPkcs8, Validity::Current);
    let creds = s.sb.dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::rename(&s.key, creds.join("device-key")).unwrap();
    let config = s.config("").replace(
        &format!("\"{}\"", s.key.display()),
        "\"credential:device-key\"",
    );
    std::fs::write(s.sb.dir.path().join("config.toml"), config).unwrap();
    // Outside the service: no credentials directory, said in words.
    let msg = text(&s.get().stdout);
    assert!(
        msg.contains("$CREDENTIALS_DIRECTORY is unset") && msg.contains("LoadCredentialEncrypted"),
        "{msg}"
    );
    assert!(s.iot.calls().is_empty());
    s.sb.set("CREDENTIALS_DIRECTORY", Some(creds.to_str().unwrap()));
    let out = s.get();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(s.iot.calls().len(), 1);
    assert!(s.sb.fake.calls()[0].authentic);
}

/// Polls until `f` holds, for at most `within`.
fn until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// Fleet health in AWS IoT: with `[iot] shadow_endpoint` the daemon reports once its first
/// round is done, to the thing's named shadow `ecr-edge`, over mutual TLS with the device
/// certificate and the ALPN protocol AWS IoT wants on port 443; a refresh that leaves every
/// value in its bucket sends nothing; a value that changes bucket is sent, but not before
/// `shadow_min_interval` after the last update.
#[test]
fn the_daemon_reports_fleet_health_to_its_named_shadow() {
    let mut s = IotSandbox::new(KeyKind::EcPkcs8, Validity::Current);
    let config = s.config(&format!(
        "shadow_endpoint = \"{}\"\nshadow_min_interval = 60\n[daemon]\nregistries = [\"{HOST}\"]\n",
        s.iot.endpoint
    ));
    let d = crate::daemon::Daemon::start(&mut s.sb, &config);
    d.wait_notify("READY=1", Duration::from_secs(20));
    assert!(
        until(Duration::from_secs(20), || !s
            .iot
            .shadow_updates()
            .is_empty()),
        "no shadow update: {}",
        d.log()
    );
    let first_at = Instant::now();
    let updates = s.iot.shadow_updates();
    assert_eq!(updates.len(), 1, "{updates:?}");
    let u = &updates[0];
    assert_eq!(u.status, 200);
    assert_eq!(u.path, format!("/things/{THING_NAME}/shadow?name=ecr-edge"));
    assert_eq!(u.alpn.as_deref(), Some(&b"x-amzn-http-ca"[..]));
    let device_cert = crate::support::iot::der_of(&std::fs::read(&s.cert).unwrap());
    assert_eq!(u.client_cert.as_ref(), Some(&device_cert));
    let doc: serde_json::Value = serde_json::from_slice(&u.body).unwrap();
    let r = &doc["state"]["reported"];
    assert_eq!(r["version"], env!("CARGO_PKG_VERSION"), "{doc}");
    assert_eq!(r["runway_min_h"], 4.0, "a 12-hour token: at least 4 hours");
    assert_eq!(r["runway"][0]["registry"], HOST);
    assert_eq!(r["last_error"], "none");
    assert_eq!(r["clock_offset_s"], 0);
    assert!(r["cert_days"].as_i64().is_some(), "{doc}");
    assert_eq!(r["images_checked"], 0);
    println!("shadow document: {} bytes: {}", u.body.len(), doc);

    // The fake records the update as it arrives; the daemon counts it once it has read the
    // answer, a moment later (seconds under qemu-user on a loaded machine: seen in CI).
    let mut status = serde_json::Value::Null;
    until(Duration::from_secs(20), || {
        status = crate::daemon::status_json(&s.sb);
        status["shadow"]["updates"] == 1
    });
    assert_eq!(status["shadow"]["updates"], 1, "{status}");
    assert_eq!(status["shadow"]["version"], 1);
    assert_eq!(&status["shadow"]["reported"], r);
    let data = upstream(&status, "iot_data");
    assert_eq!(data["requests"], 1, "{status}");
    println!(
        "first update on the wire: {} bytes sent, {} received (full handshake)",
        data["bytes_sent"], data["bytes_received"]
    );

    // A refresh that keeps the runway in its bucket: nothing sent.
    let (code, out, err) = refresh_now(&s.sb);
    assert_eq!(code, Some(0), "{out}{err}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        s.iot.shadow_updates().len(),
        1,
        "unchanged buckets send nothing"
    );

    // A 3-hour token moves the runway to the 2-hour bucket: sent, after the interval.
    s.sb.fake.set_lifetime(3.0 * 3600.0);
    let (code, out, err) = refresh_now(&s.sb);
    assert_eq!(code, Some(0), "{out}{err}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        s.iot.shadow_updates().len(),
        1,
        "not before the interval since the last update"
    );
    assert!(
        until(Duration::from_secs(75), || s.iot.shadow_updates().len()
            == 2),
        "the changed bucket was not sent: {}",
        d.log()
    );
    assert!(first_at.elapsed() >= Duration::from_secs(55));
    let second = &s.iot.shadow_updates()[1];
    let doc: serde_json::Value = serde_json::from_slice(&second.body).unwrap();
    assert_eq!(doc["state"]["reported"]["runway_min_h"], 2.0, "{doc}");
    let status = crate::daemon::status_json(&s.sb);
    let data = upstream(&status, "iot_data");
    println!(
        "two updates on the wire: {} bytes sent, {} received; resumed handshakes {}",
        data["bytes_sent"], data["bytes_received"], data["tls_resumed"]
    );
    assert!(!d.log().contains(crate::support::SECRET_ACCESS_KEY));
}

/// A refused shadow update is named in words with its fix (the policy statement for a 403;
/// the registration for a certificate the endpoint does not accept) in `status` and the
/// journal, and the daemon keeps serving tokens.
#[test]
fn refused_shadow_updates_say_what_to_fix() {
    let mut s = IotSandbox::new(KeyKind::EcPkcs8, Validity::Current);
    s.iot.set_shadow_mode(IotMode::Status(403, "Forbidden"));
    let endpoint = s.iot.endpoint.clone();
    let (mut d, e) = first_shadow_failure(&mut s, &endpoint);
    assert!(e.contains("403 Forbidden"), "{e}");
    assert!(
        e.contains(&format!(
            "iot:UpdateThingShadow on arn:aws:iot:REGION:ACCOUNT:thing/{THING_NAME}/ecr-edge"
        )),
        "{e}"
    );
    assert!(d.log().contains("iot:UpdateThingShadow"), "{}", d.log());
    let out =
        s.sb.command_for(&support::binary(), "status")
            .output()
            .unwrap();
    let text = crate::support::text(&out.stdout);
    assert!(
        text.contains("fleet health: the last update did not land"),
        "{text}"
    );
    assert!(s.get().status.success());
    d.signal(nix::sys::signal::Signal::SIGTERM);
    d.wait_exit(Duration::from_secs(10));

    // An endpoint that does not know the device's CA refuses the handshake.
    let stranger = FakeIot::start(&s.sb.ca, &TestCa::new());
    let (_d, e) = first_shadow_failure(&mut s, &stranger.endpoint);
    assert!(e.contains("refused the TLS handshake"), "{e}");
    assert!(e.contains("registered and active"), "{e}");
    assert!(stranger.shadow_updates().is_empty());
}

/// Starts the daemon reporting to `endpoint` and waits for its first failed update: the
/// daemon and the status's `last_error`.
fn first_shadow_failure(s: &mut IotSandbox, endpoint: &str) -> (crate::daemon::Daemon, String) {
    let config = s.config(&format!(
        "shadow_endpoint = \"{endpoint}\"\n[daemon]\nregistries = [\"{HOST}\"]\n"
    ));
    let d = crate::daemon::Daemon::start(&mut s.sb, &config);
    d.wait_notify("READY=1", Duration::from_secs(20));
    let mut status = serde_json::Value::Null;
    assert!(
        until(Duration::from_secs(20), || {
            status = crate::daemon::status_json(&s.sb);
            status["shadow"]["failures"] == 1
        }),
        "{status}"
    );
    let e = status["shadow"]["last_error"].as_str().unwrap().to_owned();
    (d, e)
}

/// The `upstream` entry of `endpoint` in a status report.
fn upstream(status: &serde_json::Value, endpoint: &str) -> serde_json::Value {
    status["upstream"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["endpoint"] == endpoint)
        .cloned()
        .unwrap_or_else(|| panic!("no {endpoint} in {status}"))
}

fn refresh_now(sb: &Sandbox) -> (Option<i32>, String, String) {
    let mut c = support::command(&support::binary());
    c.arg("refresh")
        .env_clear()
        .envs(sb.vars.iter().map(|(k, v)| (k, v)));
    let out = c.output().unwrap();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}
