//! The kubelet image credential provider, end to end: the binary started as
//! `ecr-edge-credential-provider` with golden requests, its responses decoded with mirrors of
//! the kubelet's API types, every error path, and `configure --k3s` / `--kubelet-config`
//! installing into a temp root.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde::Deserialize;

use crate::support::{self, text, Sandbox};

const HOST: &str = "123456789012.dkr.ecr.us-west-2.amazonaws.com";

/// `k8s.io/kubelet/pkg/apis/credentialprovider/v1` (and v1beta1, the same shape)
/// `CredentialProviderResponse`, with the Go json tags as field names; unknown fields are
/// errors, so a misnamed field of ours fails here.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialProviderResponse {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    #[serde(rename = "cacheKeyType")]
    cache_key_type: PluginCacheKeyType,
    #[serde(rename = "cacheDuration")]
    cache_duration: Option<String>,
    auth: BTreeMap<String, AuthConfig>,
}

#[derive(Debug, Deserialize, PartialEq)]
enum PluginCacheKeyType {
    Image,
    Registry,
    Global,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthConfig {
    username: String,
    password: String,
}

/// Seconds in a Go duration string of whole hours, minutes and seconds (`5h59m59s`).
fn go_seconds(d: &str) -> u64 {
    let mut total = 0;
    let mut n = 0;
    for c in d.chars() {
        match c {
            '0'..='9' => n = n * 10 + u64::from(c.to_digit(10).unwrap()),
            'h' => (total, n) = (total + n * 3600, 0),
            'm' => (total, n) = (total + n * 60, 0),
            's' => (total, n) = (total + n, 0),
            _ => panic!("not a Go duration: {d}"),
        }
    }
    assert_eq!(n, 0, "trailing number in {d}");
    total
}

fn golden(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/kubelet")
            .join(name),
    )
    .unwrap()
}

/// The binary under the kubelet's name: `ECR_EDGE_TEST_PROVIDER` (a package's installed
/// link), else a link in the sandbox.
fn provider(sb: &Sandbox) -> PathBuf {
    if let Some(installed) = std::env::var_os("ECR_EDGE_TEST_PROVIDER").filter(|p| !p.is_empty()) {
        return PathBuf::from(installed);
    }
    let link = sb.dir.path().join("ecr-edge-credential-provider");
    if !link.exists() {
        std::os::unix::fs::symlink(support::binary(), &link).unwrap();
    }
    link
}

fn run_provider(sb: &Sandbox, input: &[u8]) -> Output {
    let mut cmd = support::command(&provider(sb));
    cmd.env_clear()
        .envs(sb.vars.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    support::run_with_input(cmd, input)
}

#[test]
fn golden_requests_get_golden_responses_in_the_version_asked() {
    let sb = Sandbox::new();
    sb.fake.set_lifetime(12.0 * 3600.0);
    for version in ["v1", "v1beta1"] {
        let out = run_provider(&sb, golden(&format!("{version}-request.json")).as_bytes());
        assert!(out.status.success(), "{version}: {}", text(&out.stderr));
        assert_eq!(text(&out.stderr), "", "{version}");
        let body = text(&out.stdout);
        let parsed: CredentialProviderResponse =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{version}: {e}: {body}"));
        assert_eq!(
            parsed.api_version,
            format!("credentialprovider.kubelet.k8s.io/{version}")
        );
        assert_eq!(parsed.kind, "CredentialProviderResponse");
        assert_eq!(parsed.cache_key_type, PluginCacheKeyType::Registry);
        let auth = &parsed.auth[HOST];
        assert_eq!(auth.username, "AWS");
        assert_eq!(auth.password, sb.fake.password());
        // Half of the 12-hour token's remaining life, allowing for the seconds the run took.
        let duration = parsed.cache_duration.unwrap();
        let secs = go_seconds(&duration);
        assert!((6 * 3600 - 30..=6 * 3600).contains(&secs), "{duration}");
        let expected = golden(&format!("{version}-response.json"))
            .replace("@CACHE_DURATION@", &duration)
            .replace("@PASSWORD@", &auth.password);
        assert_eq!(body, expected, "{version}");
    }
    // The second call was served from the helper's cache: one upstream call for both.
    assert_eq!(sb.fake.calls().len(), 1);
}

#[test]
fn cache_duration_follows_the_token_actually_served() {
    let sb = Sandbox::new();
    sb.fake.set_lifetime(2.0 * 3600.0);
    let out = run_provider(&sb, golden("v1-request.json").as_bytes());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let parsed: CredentialProviderResponse = serde_json::from_slice(&out.stdout).unwrap();
    let secs = go_seconds(parsed.cache_duration.as_deref().unwrap());
    assert!((3600 - 30..=3600).contains(&secs), "{secs}");
}

#[test]
fn every_error_is_one_line_on_stderr_exit_1_and_nothing_on_stdout() {
    let sb = Sandbox::new();
    let req = |api: &str, kind: &str, image: &str| {
        format!(r#"{{"apiVersion":"{api}","kind":"{kind}","image":"{image}"}}"#)
    };
    let v1 = "credentialprovider.kubelet.k8s.io/v1";
    let cases = [
        ("not json".to_owned(), "not a CredentialProviderRequest"),
        (
            req(
                "credentialprovider.kubelet.k8s.io/v1alpha1",
                "CredentialProviderRequest",
                HOST,
            ),
            "unsupported apiVersion",
        ),
        (
            req(v1, "Pod", &format!("{HOST}/a")),
            "is not CredentialProviderRequest",
        ),
        (req(v1, "CredentialProviderRequest", ""), "names no image"),
        (
            req(v1, "CredentialProviderRequest", "nginx:1.27"),
            "not in an Amazon ECR registry",
        ),
        (
            req(v1, "CredentialProviderRequest", "ghcr.io/org/app:1"),
            "not in an Amazon ECR registry",
        ),
        (
            format!(
                "{}{}",
                req(v1, "CredentialProviderRequest", &format!("{HOST}/a")),
                " ".repeat(70_000)
            ),
            "larger than 65536 bytes",
        ),
    ];
    for (input, says) in &cases {
        let out = run_provider(&sb, input.as_bytes());
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{says}: {err}");
        assert!(
            out.stdout.is_empty(),
            "{says}: stdout {}",
            text(&out.stdout)
        );
        assert!(err.contains(says), "{says}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // A failure upstream is named, not turned into empty credentials.
    sb.fake.fail_next(10, support::Mode::AccessDenied);
    let out = run_provider(&sb, golden("v1-request.json").as_bytes());
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr).contains("access denied"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        sb.fake.calls().len(),
        1,
        "only the last request reached the fake"
    );
}

#[test]
fn the_subcommand_is_the_same_provider() {
    let sb = Sandbox::new();
    let mut cmd = sb.command_for(&support::binary(), "kubelet-credential-provider");
    cmd.stdin(std::process::Stdio::piped());
    let out = support::run_with_input(cmd, golden("v1beta1-request.json").as_bytes());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let parsed: CredentialProviderResponse = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        parsed.api_version,
        "credentialprovider.kubelet.k8s.io/v1beta1"
    );
}

fn configure(sb: &Sandbox, args: &[&str]) -> Output {
    let mut cmd = sb.command_for(&support::binary(), "configure");
    cmd.args(args);
    cmd.output().unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn configure_k3s_installs_the_layout_k3s_looks_for() {
    let sb = Sandbox::new();
    let root = sb.dir.path().join("rootfs");
    let root_arg = root.to_str().unwrap();
    let out = configure(&sb, &["--k3s", "--root", root_arg]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let base = root.join("var/lib/rancher/credentialprovider");
    let link = base.join("bin/ecr-edge-credential-provider");
    let target = std::fs::read_link(&link).unwrap();
    // The link names the binary that ran configure (under qemu, the emulated binary).
    assert_eq!(
        std::fs::canonicalize(&target).unwrap(),
        std::fs::canonicalize(support::binary()).unwrap()
    );
    let config = base.join("config.yaml");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        ecr_edge::internal::kubelet::provider_config()
    );
    assert_eq!(mode(&config), 0o600);
    assert_eq!(mode(&base.join("bin")), 0o700);
    // The installed link really is the provider.
    let mut cmd = support::command(&link);
    cmd.env_clear()
        .envs(sb.vars.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let served = support::run_with_input(cmd, golden("v1-request.json").as_bytes());
    assert!(served.status.success(), "{}", text(&served.stderr));

    // Again: nothing to do.
    let out = configure(&sb, &["--k3s", "--root", root_arg]);
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains("already up to date"),
        "{}",
        text(&out.stdout)
    );

    // Someone else's config.yaml is never replaced, and says what to add.
    let theirs =
        "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders: []\n";
    std::fs::write(&config, theirs).unwrap();
    let out = configure(&sb, &["--k3s", "--root", root_arg]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("was not written by ecr-edge")
            && err.contains("- name: ecr-edge-credential-provider"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), theirs);

    // Nor is another provider's binary at our name.
    std::fs::remove_file(&config).unwrap();
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("/opt/other/provider", &link).unwrap();
    let out = configure(&sb, &["--k3s", "--root", root_arg]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("/opt/other/provider"),
        "{}",
        text(&out.stderr)
    );
    assert!(!config.exists(), "nothing written when either is refused");
}

/// k3s with a `config.yaml` of the administrator's (issue 19, defect 3): the link is made
/// anyway and the entry to add is printed; once the entry is added by hand, a rerun succeeds;
/// `--remove` takes out our link and file (and the directories they left empty), never the
/// administrator's file, and says when that file still names the provider.
#[test]
fn configure_k3s_with_an_existing_config_yaml_and_remove() {
    let sb = Sandbox::new();
    let root = sb.dir.path().join("rootfs");
    let root_arg = root.to_str().unwrap();
    let base = root.join("var/lib/rancher/credentialprovider");
    let link = base.join("bin/ecr-edge-credential-provider");
    let config = base.join("config.yaml");
    std::fs::create_dir_all(&base).unwrap();
    let theirs = "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\n\
                  providers:\n  - name: other-provider\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n    matchImages:\n      - \"*.example.com\"\n";
    std::fs::write(&config, theirs).unwrap();

    let out = configure(&sb, &["--k3s", "--root", root_arg]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("- name: ecr-edge-credential-provider") && err.contains("is in place"),
        "{err}"
    );
    assert!(std::fs::read_link(&link).is_ok(), "the link was made");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), theirs);

    // The administrator adds the printed entry; a rerun succeeds and changes nothing.
    let entry: String = err
        .lines()
        .skip_while(|l| !l.starts_with("  - "))
        .map(|l| format!("{l}\n"))
        .collect();
    let with_us = format!("{theirs}{entry}");
    std::fs::write(&config, &with_us).unwrap();
    let out = configure(&sb, &["--k3s", "--root", root_arg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), with_us);

    // Removing: our link goes, their file stays, and we say the entry is theirs to take out.
    let out = configure(&sb, &["--k3s", "--remove", "--root", root_arg]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("Take the ecr-edge-credential-provider entry out"),
        "{}",
        text(&out.stderr)
    );
    assert!(std::fs::symlink_metadata(&link).is_err(), "link removed");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), with_us);
    std::fs::write(&config, theirs).unwrap();
    let out = configure(&sb, &["--k3s", "--remove", "--root", root_arg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), theirs);

    // A layout configure wrote itself goes entirely, directories it left empty included.
    std::fs::remove_dir_all(&base).unwrap();
    let out = configure(&sb, &["--k3s", "--root", root_arg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = configure(&sb, &["--k3s", "--remove", "--root", root_arg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !root.join("var/lib/rancher").exists(),
        "{}",
        text(&out.stdout)
    );
    let out = configure(&sb, &["--k3s", "--remove", "--root", root_arg]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("nothing of ecr-edge to remove"));
}

#[test]
fn configure_kubelet_config_writes_the_file_and_names_the_flags() {
    let sb = Sandbox::new();
    let root = sb.dir.path().join("node");
    // The path as the image's system will see it: written under --root, never on this host.
    let config = Path::new("/etc/kubernetes/ecr-edge-test-provider.yaml");
    assert!(!config.exists(), "{} exists on this host", config.display());
    let out = configure(
        &sb,
        &[
            "--kubelet-config",
            config.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !config.exists(),
        "wrote {} on the build host",
        config.display()
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/kubernetes/ecr-edge-test-provider.yaml")).unwrap(),
        ecr_edge::internal::kubelet::provider_config()
    );
    assert!(root
        .join("usr/libexec/ecr-edge/ecr-edge-credential-provider")
        .exists());
    let said = text(&out.stdout);
    assert!(
        said.contains(&format!(
            "--image-credential-provider-config={} --image-credential-provider-bin-dir=/usr/libexec/ecr-edge",
            config.display()
        )),
        "{said}"
    );
}
