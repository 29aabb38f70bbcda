//! The Docker credential helper, end to end.

use std::time::{Duration, Instant};

use ecr_edge::internal::cache::Cache;
use ecr_edge::internal::credentials::Source;
use ecr_edge::internal::token::Token;

use crate::support::{self, text, Mode, Sandbox};

const HOST: &str = "123456789012.dkr.ecr.us-west-2.amazonaws.com";
const NOT_FOUND: &str = "credentials not found in native keychain\n";

fn expected_get(server_url: &str, password: &str) -> String {
    format!("{{\"ServerURL\":\"{server_url}\",\"Username\":\"AWS\",\"Secret\":\"{password}\"}}\n")
}

/// The identity the helper derives from the sandbox's environment (session credentials, no
/// profile), so tests can plant cache entries under the key the helper will look up.
fn sandbox_identity() -> String {
    Source::DefaultChain {
        profile: None,
        role_arn: None,
        static_key_id: None,
        session_key_id: Some(support::ACCESS_KEY_ID.into()),
        container: None,
    }
    .identity()
    .to_string()
}

fn plant(sb: &Sandbox, host: &str, password: &str, fetched_ago: i64, expires_in: i64) {
    let now = ecr_edge::internal::token::now();
    let cache = Cache::open(sb.cache_dir()).unwrap();
    let token = Token {
        password: ecr_edge::internal::token::Secret::new(password),
        expires_at: now + expires_in,
        fetched_at: now - fetched_ago,
    };
    cache.put(host, &sandbox_identity(), &token).unwrap();
}

fn assert_no_secrets(output: &[u8]) {
    let s = text(output);
    for secret in [support::SECRET_ACCESS_KEY, support::SESSION_TOKEN] {
        assert!(!s.contains(secret), "secret leaked: {s}");
    }
}

#[test]
fn every_host_form_reaches_its_own_endpoint_signed_for_its_region() {
    let sb = Sandbox::new();
    let cases = [
        (HOST, "api.ecr.us-west-2.amazonaws.com", "us-west-2", "ecr"),
        (
            "123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com",
            "ecr-fips.us-gov-west-1.amazonaws.com",
            "us-gov-west-1",
            "ecr",
        ),
        (
            "123456789012.dkr-ecr.eu-west-1.on.aws",
            "ecr.eu-west-1.api.aws",
            "eu-west-1",
            "ecr",
        ),
        (
            "123456789012.dkr-ecr-fips.us-east-2.on.aws",
            "ecr-fips.us-east-2.api.aws",
            "us-east-2",
            "ecr",
        ),
        (
            "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn",
            "api.ecr.cn-north-1.amazonaws.com.cn",
            "cn-north-1",
            "ecr",
        ),
        (
            "123456789012.dkr.ecr.eusc-de-east-1.amazonaws.eu",
            "api.ecr.eusc-de-east-1.amazonaws.eu",
            "eusc-de-east-1",
            "ecr",
        ),
        (
            "123456789012.dkr.ecr.us-iso-east-1.c2s.ic.gov",
            "api.ecr.us-iso-east-1.c2s.ic.gov",
            "us-iso-east-1",
            "ecr",
        ),
        (
            "public.ecr.aws",
            "api.ecr-public.us-east-1.amazonaws.com",
            "us-east-1",
            "ecr-public",
        ),
    ];
    for (i, (host, endpoint, region, service)) in cases.iter().enumerate() {
        let input = format!("https://{host}/v2/");
        let out = sb.helper("get", input.as_bytes());
        assert_eq!(
            text(&out.stdout),
            expected_get(&input, &sb.fake.password()),
            "{host}: {}",
            text(&out.stderr)
        );
        assert!(out.status.success());
        let calls = sb.fake.calls();
        assert_eq!(calls.len(), i + 1, "{host}: one call each");
        let call = &calls[i];
        assert_eq!(call.connect_host, *endpoint, "{host}");
        assert_eq!(call.region, *region, "{host}");
        assert_eq!(call.service, *service, "{host}");
        assert!(call.authentic, "{host}: signature verified");
    }
}

#[test]
fn look_alikes_and_other_registries_get_docker_not_found_without_a_call() {
    let sb = Sandbox::new();
    for input in [
        "123456789012.dkr.ecr.us-east-1.amazonaws.com.fake.example.com",
        "public.ecr.aws.example.com",
        "https://index.docker.io/v1/",
        "ghcr.io",
        "12345678901.dkr.ecr.us-east-1.amazonaws.com",
    ] {
        let out = sb.helper("get", input.as_bytes());
        assert_eq!(text(&out.stdout), NOT_FOUND, "{input}");
        assert_eq!(out.status.code(), Some(1));
    }
    assert!(sb.fake.calls().is_empty());
    let out = sb.helper("get", b"  \n");
    assert_eq!(text(&out.stdout), "no credentials server URL\n");
}

#[test]
fn cache_hit_makes_no_call_and_survives_the_endpoint_going_away() {
    let sb = Sandbox::new();
    let first = sb.helper("get", HOST.as_bytes());
    assert!(first.status.success(), "{}", text(&first.stdout));
    sb.fake.set_mode(Mode::Reset);
    let second = sb.helper("get", HOST.as_bytes());
    assert_eq!(
        text(&second.stdout),
        expected_get(HOST, "fake-ecr-password-0001")
    );
    assert_eq!(sb.fake.calls().len(), 1);
    // The cache file and its directory are private.
    use std::os::unix::fs::MetadataExt;
    let dir = std::fs::metadata(sb.cache_dir()).unwrap();
    assert_eq!(dir.mode() & 0o777, 0o700);
    for e in std::fs::read_dir(sb.cache_dir()).unwrap() {
        let m = e.unwrap().metadata().unwrap();
        assert_eq!(m.mode() & 0o777, 0o600);
    }
}

#[test]
fn token_past_half_life_is_refreshed() {
    let sb = Sandbox::new();
    plant(&sb, HOST, "old-password", 7 * 3600, 5 * 3600);
    sb.fake.set_password("new-password");
    let out = sb.helper("get", HOST.as_bytes());
    assert_eq!(text(&out.stdout), expected_get(HOST, "new-password"));
    assert_eq!(sb.fake.calls().len(), 1);
    // Before half-life the cached one is served.
    let sb2 = Sandbox::new();
    plant(&sb2, HOST, "young-password", 3600, 11 * 3600);
    let out = sb2.helper("get", HOST.as_bytes());
    assert_eq!(text(&out.stdout), expected_get(HOST, "young-password"));
    assert!(sb2.fake.calls().is_empty());
}

#[test]
fn corrupt_cache_entry_is_ignored_and_replaced() {
    let sb = Sandbox::new();
    assert!(sb.helper("get", HOST.as_bytes()).status.success());
    for e in std::fs::read_dir(sb.cache_dir()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            std::fs::write(&p, b"{\"version\":1,\"registry\":").unwrap();
        }
    }
    let out = sb.helper("get", HOST.as_bytes());
    assert!(out.status.success());
    assert_eq!(sb.fake.calls().len(), 2);
    let out = sb.helper("get", HOST.as_bytes());
    assert!(out.status.success());
    assert_eq!(sb.fake.calls().len(), 2, "replaced entry is used");
}

#[test]
fn offline_with_a_valid_cached_token_serves_it_with_a_warning() {
    let sb = Sandbox::new();
    plant(&sb, HOST, "still-valid", 10 * 3600, 2 * 3600);
    sb.fake.set_mode(Mode::ServerError);
    let out = sb.helper("get", HOST.as_bytes());
    assert_eq!(text(&out.stdout), expected_get(HOST, "still-valid"));
    assert!(out.status.success());
    assert!(
        text(&out.stderr).contains("serving cached token"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn offline_with_an_expired_cached_token_fails_with_the_cause() {
    let sb = Sandbox::new();
    // Expires within the safety margin: as good as expired.
    plant(&sb, HOST, "nearly-dead", 43_000, 120);
    sb.fake.set_mode(Mode::ServerError);
    let out = sb.helper("get", HOST.as_bytes());
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(!stdout.contains("nearly-dead"), "{stdout}");
    assert_ne!(stdout, NOT_FOUND);
    assert!(
        stdout.starts_with(&format!("ecr-edge: {HOST}: ECR error ServerException")),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 1);
    assert!(sb.fake.calls().len() > 1, "5xx is retried");
}

#[test]
fn retryable_failures_are_retried_then_succeed() {
    for mode in [Mode::ServerError, Mode::Throttle, Mode::Reset] {
        let sb = Sandbox::new();
        sb.fake.fail_next(2, mode.clone());
        let out = sb.helper("get", HOST.as_bytes());
        assert!(out.status.success(), "{mode:?}: {}", text(&out.stdout));
        assert_eq!(sb.fake.calls().len(), 3, "{mode:?}");
    }
}

#[test]
fn deadline_bounds_a_hanging_server() {
    let mut sb = Sandbox::new();
    sb.set("ECR_EDGE_TIMEOUT", Some("2"));
    sb.fake.set_mode(Mode::Hang);
    let start = Instant::now();
    let out = sb.helper("get", HOST.as_bytes());
    let took = start.elapsed();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout)
            .contains("no answer from https://api.ecr.us-west-2.amazonaws.com within 2.0s"),
        "{}",
        text(&out.stdout)
    );
    // Generous bound: this checks "does not hang", not speed.
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn a_slow_server_within_the_deadline_still_succeeds() {
    let sb = Sandbox::new();
    sb.fake.set_mode(Mode::Slow(Duration::from_millis(1500)));
    let out = sb.helper("get", HOST.as_bytes());
    assert!(out.status.success(), "{}", text(&out.stdout));
}

#[test]
fn failures_name_their_cause_and_are_never_not_found() {
    let sb = Sandbox::new();
    sb.fake.set_mode(Mode::AccessDenied);
    let out = sb.helper("get", HOST.as_bytes());
    let s = text(&out.stdout);
    assert!(
        s.contains("access denied") && s.contains("ecr:GetAuthorizationToken"),
        "{s}"
    );
    assert_eq!(sb.fake.calls().len(), 1, "access denied is not retried");

    sb.fake.set_mode(Mode::IssueExpired);
    let s = text(&sb.helper("get", HOST.as_bytes()).stdout);
    assert!(s.contains("token already expired"), "{s}");
}

/// The Docker CLI drops a failed `get`'s stdout, pulls anonymously and shows the helper's
/// stderr (REFERENCE.md section 1): each failure for an ECR host is the same one line on both,
/// exactly once at every log level but `off`; a host that is not ECR stays silent.
#[test]
fn a_failed_get_says_its_cause_once_on_stderr_too() {
    let no_credentials = |sb: &mut Sandbox| {
        sb.without_aws_keys();
    };
    type Arrange<'a> = &'a dyn Fn(&mut Sandbox);
    let cases: [(&str, Arrange); 3] = [
        ("access denied", &|sb| sb.fake.set_mode(Mode::AccessDenied)),
        ("no AWS credentials", &no_credentials),
        ("connection", &|sb| sb.fake.set_mode(Mode::Reset)),
    ];
    for (cause, arrange) in cases {
        for level in [None, Some("debug"), Some("off")] {
            let mut sb = Sandbox::new();
            arrange(&mut sb);
            sb.set("ECR_EDGE_LOG", level);
            let out = sb.helper("get", HOST.as_bytes());
            assert_eq!(out.status.code(), Some(1));
            let line = text(&out.stdout);
            assert!(
                line.starts_with(&format!("ecr-edge: {HOST}: ")) && line.contains(cause),
                "{line}"
            );
            assert_eq!(line.lines().count(), 1, "{line}");
            let stderr = text(&out.stderr);
            let times = stderr.matches(line.as_str()).count();
            let want = if level == Some("off") { 0 } else { 1 };
            assert_eq!(times, want, "{cause}, ECR_EDGE_LOG={level:?}: {stderr}");
            if level.is_none() {
                assert_eq!(stderr, line, "only the cause, at the default level");
            }
        }
    }
    let sb = Sandbox::new();
    let out = sb.helper("get", b"registry.example.com");
    assert_eq!(
        text(&out.stdout),
        "credentials not found in native keychain\n"
    );
    assert_eq!(
        text(&out.stderr),
        "",
        "a host that is not ECR is not an error"
    );
}

#[test]
fn a_device_clock_an_hour_off_is_corrected_from_the_server_date() {
    // ECR rejects the first request as outside the signing window and sends its Date; the SDK
    // adjusts its clock offset and signs the retry with it, as real AWS allows.
    let sb = Sandbox::new();
    sb.fake.set_clock_offset(3600);
    let out = sb.helper("get", HOST.as_bytes());
    assert!(out.status.success(), "{}", text(&out.stdout));
    let calls = sb.fake.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(!calls[0].authentic && calls[1].authentic);
}

#[test]
fn wrong_secret_is_caught_by_the_signature_check() {
    let mut sb = Sandbox::new();
    sb.set("AWS_SECRET_ACCESS_KEY", Some("not-the-right-secret"));
    let out = sb.helper("get", HOST.as_bytes());
    let s = text(&out.stdout);
    assert!(s.contains("AWS rejected the credentials"), "{s}");
    assert!(!sb.fake.calls()[0].authentic);
    assert!(!s.contains("not-the-right-secret"));
}

#[test]
fn missing_session_token_is_rejected_like_aws_does() {
    let mut sb = Sandbox::new();
    sb.set("AWS_SESSION_TOKEN", None);
    let s = text(&sb.helper("get", HOST.as_bytes()).stdout);
    assert!(s.contains("AWS rejected the credentials"), "{s}");
}

/// Messages are for people: no Rust `Debug` rendering of an error (struct braces, `Some(`,
/// variant names of the SDK's error types).
pub(crate) fn assert_no_debug_dump(s: &str) {
    for marker in [
        "{ ",
        "Some(",
        "CredentialsNotLoaded",
        "DispatchFailure(",
        "ConnectorError",
        "kind: ",
    ] {
        assert!(!s.contains(marker), "Debug dump ({marker}) in: {s}");
    }
}

#[test]
fn no_credentials_is_said_plainly() {
    let mut sb = Sandbox::new();
    sb.without_aws_keys();
    let out = sb.helper("get", HOST.as_bytes());
    let s = text(&out.stdout);
    assert!(
        s.starts_with(&format!(
            "ecr-edge: {HOST}: no AWS credentials: tried environment (environment variable not \
             set), profile (not set up), web identity ($AWS_WEB_IDENTITY_TOKEN_FILE was not set), \
             container (ECS provider not configured), instance metadata ("
        )),
        "{s}"
    );
    assert!(s.contains("[iot] in the configuration file"), "{s}");
    assert_no_debug_dump(&s);
    assert_eq!(s.lines().count(), 1);
    assert!(sb.fake.calls().is_empty());
}

#[test]
fn thirty_two_concurrent_cold_gets_make_one_call() {
    let sb = Sandbox::new();
    sb.fake.set_mode(Mode::Slow(Duration::from_millis(300)));
    let children: Vec<_> = (0..32)
        .map(|_| {
            let mut c = sb.helper_command("get");
            let mut child = c.spawn().unwrap();
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(HOST.as_bytes())
                .unwrap();
            child
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            text(&out.stdout),
            expected_get(HOST, "fake-ecr-password-0001"),
            "{}",
            text(&out.stderr)
        );
    }
    assert_eq!(sb.fake.calls().len(), 1);
}

#[test]
fn store_erase_list() {
    let sb = Sandbox::new();
    let ecr = format!(r#"{{"ServerURL":"{HOST}","Username":"AWS","Secret":"whatever"}}"#);
    let out = sb.helper("store", ecr.as_bytes());
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    let other = sb.helper(
        "store",
        br#"{"ServerURL":"ghcr.io","Username":"me","Secret":"mine"}"#,
    );
    assert_eq!(other.status.code(), Some(1));
    assert!(text(&other.stdout).contains("ghcr.io is not an Amazon ECR registry"));
    assert_eq!(
        text(
            &sb.helper("store", br#"{"ServerURL":"","Username":"u"}"#)
                .stdout
        ),
        "no credentials server URL\n"
    );
    assert_eq!(
        text(
            &sb.helper("store", format!(r#"{{"ServerURL":"{HOST}"}}"#).as_bytes())
                .stdout
        ),
        "no credentials username\n"
    );

    assert_eq!(text(&sb.helper("list", b"unused").stdout), "{}\n");
    assert!(sb.helper("get", HOST.as_bytes()).status.success());
    assert!(sb.helper("get", b"public.ecr.aws").status.success());
    sb.fake.set_mode(Mode::Reset);
    let list = sb.helper("list", b"unused");
    assert_eq!(
        text(&list.stdout),
        format!("{{\"https://{HOST}\":\"AWS\",\"https://public.ecr.aws\":\"AWS\"}}\n")
    );
    assert_eq!(sb.fake.calls().len(), 2, "list makes no call");

    let out = sb.helper("erase", HOST.as_bytes());
    assert!(out.status.success() && out.stdout.is_empty());
    assert_eq!(
        text(&sb.helper("list", b"").stdout),
        "{\"https://public.ecr.aws\":\"AWS\"}\n"
    );
    assert_eq!(text(&sb.helper("erase", b"ghcr.io").stdout), NOT_FOUND);
}

#[test]
fn garbage_and_oversized_stdin_get_a_clear_error_not_a_panic() {
    let sb = Sandbox::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut inputs: Vec<Vec<u8>> = vec![
        vec![0xff; 10],
        vec![0; 100],
        vec![b'a'; 64 * 1024 + 1],
        b"{\"ServerURL\":".to_vec(),
    ];
    for len in [1usize, 7, 300, 5000] {
        inputs.push(
            (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect(),
        );
    }
    for action in ["get", "store", "erase"] {
        for input in &inputs {
            let out = sb.helper(action, input);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{action} {:?}",
                &input[..input.len().min(20)]
            );
            assert!(!text(&out.stderr).contains("panicked"));
            assert_eq!(text(&out.stdout).lines().count(), 1);
        }
    }
    let out = sb.helper("get", &vec![b'a'; 64 * 1024 + 1]);
    assert_eq!(
        text(&out.stdout),
        "ecr-edge: input larger than 65536 bytes refused\n"
    );
    assert!(sb.fake.calls().is_empty());
}

#[test]
fn secrets_never_reach_stderr_or_stdout_even_at_trace_level() {
    let mut sb = Sandbox::new();
    sb.set("ECR_EDGE_LOG", Some("trace"));
    let ok = sb.helper("get", HOST.as_bytes());
    assert!(ok.status.success());
    assert!(!ok.stderr.is_empty(), "trace logging is on");
    assert_no_secrets(&ok.stderr);
    assert_no_secrets(&ok.stdout);
    assert!(!text(&ok.stderr).contains("fake-ecr-password-0001"));
    sb.fake.set_mode(Mode::AccessDenied);
    let bad = sb.helper("get", b"public.ecr.aws");
    assert_no_secrets(&bad.stderr);
    assert_no_secrets(&bad.stdout);
}

#[test]
fn version_and_usage() {
    let sb = Sandbox::new();
    let out = sb.helper("version", b"");
    let line = text(&out.stdout);
    assert!(
        line.starts_with(&format!("ecr-edge {} (", env!("CARGO_PKG_VERSION"))),
        "{line}"
    );
    assert!(
        line.ends_with("-linux-musl)\n") || line.contains("-linux-"),
        "{line}"
    );
    let direct = support::command(&support::binary())
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(text(&direct.stdout), line);
    // --verbose: the commit (this clone's HEAD when built here), the build date, the target.
    let verbose = support::command(&support::binary())
        .args(["--version", "--verbose"])
        .output()
        .unwrap();
    let verbose = text(&verbose.stdout);
    let mut lines = verbose.lines();
    assert_eq!(lines.next(), Some(line.trim_end()));
    let field = |name: &str| {
        verbose
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in {verbose}"))
            .to_owned()
    };
    let commit = field("commit");
    assert!(
        commit == "unknown"
            || (commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{verbose}"
    );
    let head = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    if let Some(head) = head.ok().filter(|h| h.status.success()) {
        assert_eq!(commit, text(&head.stdout).trim(), "{verbose}");
    }
    let date = field("build date");
    assert!(
        date.len() == 20 && date.ends_with('Z') && date.as_bytes()[10] == b'T',
        "{verbose}"
    );
    let target = field("target");
    assert!(line.contains(&format!("({target})")), "{verbose}");
    assert!(field("compiler").starts_with("rustc "), "{verbose}");
    let usage = sb.helper("frobnicate", b"");
    assert_eq!(usage.status.code(), Some(1));
    assert!(text(&usage.stdout).starts_with("Usage: docker-credential-ecr-edge"));
}

#[test]
fn helper_subcommand_speaks_the_same_protocol() {
    let sb = Sandbox::new();
    let mut c = sb.command_for(&support::binary(), "helper");
    c.arg("get");
    let out = support::run_with_input(c, HOST.as_bytes());
    assert_eq!(
        text(&out.stdout),
        expected_get(HOST, "fake-ecr-password-0001")
    );
}

#[test]
fn works_with_home_unset_and_no_cache_dir_override() {
    let mut sb = Sandbox::new();
    sb.set("HOME", None);
    sb.set("ECR_EDGE_CACHE_DIR", None);
    let runtime = sb.dir.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    sb.set("XDG_RUNTIME_DIR", Some(runtime.to_str().unwrap()));
    assert!(sb.helper("get", HOST.as_bytes()).status.success());
    assert!(sb.helper("get", HOST.as_bytes()).status.success());
    assert_eq!(sb.fake.calls().len(), 1);
    assert!(runtime.join("ecr-edge").is_dir());
}

#[test]
fn aws_endpoint_url_ecr_overrides_the_endpoint() {
    let mut sb = Sandbox::new();
    sb.set(
        "AWS_ENDPOINT_URL_ECR",
        Some("https://ecr.mirror.internal:8443"),
    );
    let out = sb.helper("get", HOST.as_bytes());
    assert!(out.status.success(), "{}", text(&out.stdout));
    let call = &sb.fake.calls()[0];
    assert_eq!(call.connect_host, "ecr.mirror.internal");
    assert_eq!(call.region, "us-west-2");
}

#[test]
fn profile_with_credential_process_is_used_and_keys_the_cache() {
    let mut sb = Sandbox::new();
    let script = sb.dir.path().join("creds.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho '{{\"Version\":1,\"AccessKeyId\":\"{}\",\"SecretAccessKey\":\"{}\",\"SessionToken\":\"{}\"}}'\n",
            support::ACCESS_KEY_ID,
            support::SECRET_ACCESS_KEY,
            support::SESSION_TOKEN
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(
        sb.dir.path().join("aws-config"),
        format!(
            "[profile edge]\ncredential_process = {}\n",
            script.display()
        ),
    )
    .unwrap();
    sb.without_aws_keys();
    sb.set("AWS_PROFILE", Some("edge"));
    let out = sb.helper("get", HOST.as_bytes());
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(sb.fake.calls()[0].authentic);
    // Another profile is another identity: its own cache entry, its own call.
    std::fs::write(
        sb.dir.path().join("aws-config"),
        format!(
            "[profile edge]\ncredential_process = {0}\n[profile other]\ncredential_process = {0}\n",
            script.display()
        ),
    )
    .unwrap();
    assert!(sb.helper("get", HOST.as_bytes()).status.success());
    assert_eq!(sb.fake.calls().len(), 1, "same profile: cache hit");
    sb.set("AWS_PROFILE", Some("other"));
    assert!(sb.helper("get", HOST.as_bytes()).status.success());
    assert_eq!(sb.fake.calls().len(), 2, "other profile: own entry");
}

#[test]
fn instance_metadata_probe_is_short_on_a_non_ec2_box() {
    // A metadata endpoint that accepts connections and never answers, on loopback.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut sb = Sandbox::new();
    sb.without_aws_keys();
    sb.set("AWS_EC2_METADATA_DISABLED", None);
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    sb.set("AWS_EC2_METADATA_SERVICE_ENDPOINT", Some(&endpoint));
    let start = Instant::now();
    let out = sb.helper("get", HOST.as_bytes());
    let took = start.elapsed();
    assert!(
        text(&out.stdout).contains("no AWS credentials: tried environment"),
        "{}",
        text(&out.stdout)
    );
    // One short attempt (the SDK default is several seconds of retries); generous bound.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    drop(silent);
}

/// One trust policy, built or refused: a CA file that holds no certificate is named as the
/// cause, for the helper and `doctor` alike, rather than a handshake failure against an empty
/// store.
#[test]
fn an_unusable_ca_bundle_is_named_not_an_empty_store() {
    let mut sb = Sandbox::new();
    let bundle = sb.dir.path().join("broken-bundle.pem");
    std::fs::write(&bundle, "not a certificate\n").unwrap();
    sb.set("SSL_CERT_FILE", Some(bundle.to_str().unwrap()));
    let out = sb.helper("get", HOST.as_bytes());
    let said = text(&out.stdout);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains(&format!("{} holds no PEM CA certificate", bundle.display())),
        "{said}"
    );
    assert!(sb.fake.calls().is_empty(), "nothing was sent");
    let docker = sb.dir.path().join("home/.docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(
        docker.join("config.json"),
        format!("{{\"credHelpers\": {{\"{HOST}\": \"ecr-edge\"}}}}"),
    )
    .unwrap();
    let out = support::run_with_input(sb.command_for(&support::binary(), "doctor"), b"");
    let report = text(&out.stdout);
    assert!(
        report.contains("holds no PEM CA certificate"),
        "doctor names the same cause: {report}"
    );
}

/// Settings are read once, the same way for every part: a malformed variable is the same
/// clear error from the helper, the kubelet provider, the daemon and `doctor` (before, the
/// daemon replaced a bad ECR_EDGE_TIMEOUT by the default and ECR_EDGE_DAEMON_WAIT was never
/// checked).
#[test]
fn a_bad_variable_is_the_same_error_everywhere() {
    for (name, value, says) in [
        (
            "ECR_EDGE_TIMEOUT",
            "soon",
            "ECR_EDGE_TIMEOUT must be a number of seconds above 0 and at most 3600, got \"soon\"",
        ),
        (
            "ECR_EDGE_DAEMON_WAIT",
            "-1",
            "ECR_EDGE_DAEMON_WAIT must be a number of seconds from 0 to 60, got \"-1\"",
        ),
    ] {
        let mut sb = Sandbox::new();
        sb.set(name, Some(value));
        let helper = sb.helper("get", HOST.as_bytes());
        assert_eq!(text(&helper.stdout), format!("ecr-edge: {says}\n"));
        assert_eq!(text(&helper.stderr), format!("ecr-edge: {says}\n"));
        assert!(!helper.status.success());

        let request = format!(
            r#"{{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"{HOST}/app:1"}}"#
        );
        let provider = support::run_with_input(
            sb.command_for(&support::binary(), "kubelet-credential-provider"),
            request.as_bytes(),
        );
        assert_eq!(text(&provider.stderr), format!("ecr-edge: {says}\n"));
        assert!(!provider.status.success());

        let config = sb.dir.path().join("daemon.toml");
        std::fs::write(&config, "[daemon]\n").unwrap();
        let mut daemon = sb.command_for(&support::binary(), "daemon");
        daemon.env("ECR_EDGE_CONFIG", &config);
        let daemon = support::run_with_input(daemon, b"");
        assert!(
            text(&daemon.stderr).contains(&format!("ecr-edge daemon: {says}")),
            "{}",
            text(&daemon.stderr)
        );
        assert_eq!(daemon.status.code(), Some(1));

        let doctor = support::run_with_input(sb.command_for(&support::binary(), "doctor"), b"");
        assert!(
            text(&doctor.stdout).contains(&format!("FAIL  config       {says}")),
            "{}",
            text(&doctor.stdout)
        );
    }
}

/// At debug level a helper logs what its call to AWS moved (issue 18): one line per endpoint
/// kind, the same bytes the fake counted on its side (the helper exits before the TLS close
/// finishes, so what it received may lack the endpoint's close_notify).
#[test]
fn a_helper_logs_its_uplink_bytes_at_debug_level() {
    let mut sb = Sandbox::new();
    sb.set("ECR_EDGE_LOG", Some("debug"));
    sb.set("ECR_EDGE_SOCKET", Some(""));
    let out = sb.helper("get", HOST.as_bytes());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("traffic to AWS in this process") && l.contains("endpoint=\"ecr\""))
        .unwrap_or_else(|| panic!("no traffic line:\n{err}"));
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    let (from, _, connections) = sb.fake.wire("api.ecr.us-west-2.amazonaws.com");
    assert_eq!(field("connections"), connections);
    assert_eq!(field("requests"), 1);
    // Everything up to the request was sent before the log line; the close_notify after it.
    assert!(
        field("bytes_sent") <= from && from - field("bytes_sent") <= 64,
        "{line}; the fake read {from}"
    );
    assert!(field("bytes_received") > 500, "{line}");
}

/// Instance credentials over plain HTTP (IMDSv2: a token PUT, then the role's credentials), as
/// on an EC2 Graviton node: the SDK's requests go through ecr-edge's own HTTP client, directly
/// (HTTPS_PROXY, set here for the fake ECR, is for HTTPS only), and the token call is signed
/// with the instance role's keys.
#[test]
fn instance_role_credentials_come_over_plain_http() {
    use std::io::{BufRead, BufReader, Read, Write};
    let imds = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", imds.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in imds.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut len = 0;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            log.lock().unwrap().push(line.trim().to_owned());
            let expires =
                aws_smithy_types::DateTime::from_secs(ecr_edge::internal::token::now() + 3600)
                    .fmt(aws_smithy_types::date_time::Format::DateTime)
                    .unwrap();
            let answer = match line.split_whitespace().nth(1).unwrap_or("") {
                "/latest/api/token" => "imds-session-token".to_owned(),
                "/latest/meta-data/iam/security-credentials/" => "edge-node".to_owned(),
                "/latest/meta-data/iam/security-credentials/edge-node" => format!(
                    r#"{{"Code":"Success","Type":"AWS-HMAC","AccessKeyId":"{}","SecretAccessKey":"{}","Token":"{}","Expiration":"{expires}"}}"#,
                    support::ACCESS_KEY_ID,
                    support::SECRET_ACCESS_KEY,
                    support::SESSION_TOKEN
                ),
                _ => {
                    let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
                    continue;
                }
            };
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    let mut sb = Sandbox::new();
    sb.without_aws_keys();
    sb.set("AWS_EC2_METADATA_DISABLED", None);
    sb.set("AWS_EC2_METADATA_SERVICE_ENDPOINT", Some(&endpoint));
    // A plain-HTTP proxy is configured too: instance and container credential endpoints are
    // loopback or link-local, and their tokens must never go to it (issue 25's review).
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    proxy.set_nonblocking(true).unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    sb.set("HTTP_PROXY", Some(&proxy_url));
    sb.set("http_proxy", Some(&proxy_url));
    let out = sb.helper("get", HOST.as_bytes());
    assert!(
        proxy.accept().is_err(),
        "a request for the metadata service went to HTTP_PROXY"
    );
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let calls = sb.fake.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(calls[0].authentic, "signed with the instance role's keys");
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|l| l.starts_with("PUT /latest/api/token")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.starts_with("GET /latest/meta-data/iam/security-credentials/edge-node")),
        "{seen:?}"
    );
}

/// Two sessions are two principals (security review, issue 25): a token cached with one
/// session's keys is never served to a helper holding another session's keys, from the cache
/// or from a daemon running with the first. Before, both were keyed `key=` (no key ID for
/// temporary keys) and the second principal got the first one's token for hours.
#[test]
fn another_session_never_gets_the_first_sessions_token() {
    let mut sb = Sandbox::new();
    let other = sb
        .fake
        .add_role("arn:aws:iam::123456789012:role/other", None, &[]);
    let first = sb.helper("get", HOST.as_bytes());
    assert_eq!(text(&first.stdout), expected_get(HOST, &sb.fake.password()));
    for (k, v) in support::FakeEcr::session_env(&other) {
        sb.set(k, Some(&v));
    }
    let second = sb.helper("get", HOST.as_bytes());
    assert_eq!(text(&second.stdout), expected_get(HOST, &other.password));
    let calls = sb.fake.calls();
    assert_eq!(calls.len(), 2, "the second session fetched its own token");
    assert_eq!(calls[1].access_key, other.key_id);

    // A daemon holding the first session's token refuses the second session's helper, which
    // then fetches with its own keys.
    let mut sb = Sandbox::new();
    let other = sb
        .fake
        .add_role("arn:aws:iam::123456789012:role/other", None, &[]);
    let config = format!("[daemon]\nregistries = [\"{HOST}\"]\n");
    let _daemon = support::RunningDaemon::start(&mut sb, &config);
    let served = sb.helper("get", HOST.as_bytes());
    assert_eq!(
        text(&served.stdout),
        expected_get(HOST, &sb.fake.password())
    );
    for (k, v) in support::FakeEcr::session_env(&other) {
        sb.set(k, Some(&v));
    }
    sb.set("ECR_EDGE_LOG", Some("debug"));
    let out = sb.helper("get", HOST.as_bytes());
    let err = text(&out.stderr);
    assert_eq!(
        text(&out.stdout),
        expected_get(HOST, &other.password),
        "{err}"
    );
    assert!(!err.contains("served by the daemon"), "{err}");
}
