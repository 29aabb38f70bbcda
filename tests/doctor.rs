//! `ecr-edge doctor` against crafted configurations, helpers and clocks.

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;

use crate::support::{self, text, Sandbox};

const HOST: &str = "123456789012.dkr.ecr.us-west-2.amazonaws.com";

/// Writes `~/.docker/config.json` with these credHelpers.
fn docker_config(sb: &Sandbox, helpers: &[(&str, &str)]) {
    let dir = sb.dir.path().join("home/.docker");
    std::fs::create_dir_all(&dir).unwrap();
    let map: serde_json::Map<String, Value> = helpers
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect();
    std::fs::write(
        dir.join("config.json"),
        serde_json::json!({ "credHelpers": map }).to_string(),
    )
    .unwrap();
}

/// A PATH directory holding `docker-credential-ecr-edge` (the binary under test) and, for each
/// extra name, a file with the given first bytes.
fn path_with(sb: &mut Sandbox, extra: &[(&str, Vec<u8>)]) {
    let bin = sb.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let link = bin.join("docker-credential-ecr-edge");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(support::binary(), &link).unwrap();
    for (name, bytes) in extra {
        let p = bin.join(format!("docker-credential-{name}"));
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    sb.set("PATH", Some(&path));
}

/// An ELF header for a machine no host here is (64-bit PowerPC).
fn foreign_elf() -> Vec<u8> {
    let mut h = vec![0u8; 64];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = 2;
    h[5] = 1;
    h[18..20].copy_from_slice(&0x15u16.to_le_bytes());
    h
}

fn doctor(sb: &Sandbox) -> (i32, Value) {
    let mut c = sb.command_for(&support::binary(), "doctor");
    c.arg("--json");
    let out = support::run_with_input(c, b"");
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}{}", text(&out.stdout), text(&out.stderr)));
    (out.status.code().unwrap_or(-1), v)
}

fn find<'a>(v: &'a Value, name: &str, status: &str) -> Vec<&'a str> {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == name && c["status"] == status)
        .map(|c| c["detail"].as_str().unwrap())
        .collect()
}

#[test]
fn healthy_device_passes_every_check() {
    let mut sb = Sandbox::new();
    path_with(&mut sb, &[]);
    docker_config(&sb, &[(HOST, "ecr-edge")]);
    let (code, v) = doctor(&sb);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["ok"], true);
    assert_eq!(find(&v, "network", "pass").len(), 1, "{v:#}");
    assert!(
        find(&v, "network", "pass")[0].contains("via proxy http://127.0.0.1:"),
        "{v:#}"
    );
    assert_eq!(find(&v, "clock", "pass").len(), 1, "{v:#}");
    assert!(find(&v, "credentials", "pass")[0].contains("GetAuthorizationToken allowed"));
    assert_eq!(
        sb.fake.calls().iter().filter(|c| c.authentic).count(),
        1,
        "one real call"
    );
}

#[test]
fn wrong_architecture_and_missing_helpers_are_named() {
    let mut sb = Sandbox::new();
    path_with(
        &mut sb,
        &[
            ("ppc", foreign_elf()),
            ("script", b"#!/bin/sh\nexit 1\n".to_vec()),
        ],
    );
    docker_config(
        &sb,
        &[
            (HOST, "ppc"),
            ("ghcr.io", "script"),
            ("quay.io", "nosuchhelper"),
        ],
    );
    let (code, v) = doctor(&sb);
    assert_eq!(code, 1);
    let fails = find(&v, "helper", "fail");
    assert!(
        fails
            .iter()
            .any(|d| d.contains("docker-credential-ppc is built for ELF machine 21")),
        "{fails:?}"
    );
    assert!(
        fails.iter().any(
            |d| d.contains("docker-credential-nosuchhelper (for quay.io")
                && d.contains("not on PATH")
        ),
        "{fails:?}"
    );
    assert!(find(&v, "helper", "pass")
        .iter()
        .any(|d| d.contains("docker-credential-script")));
}

#[test]
fn near_miss_keys_get_suggestions() {
    let mut sb = Sandbox::new();
    path_with(&mut sb, &[]);
    docker_config(
        &sb,
        &[
            (&format!("https://{HOST}/"), "ecr-edge"),
            ("123456789012.dkr.ecr.us-wset-2.amazonaws.com", "ecr-edge"),
            ("123456789012.dkr.ecr.cn-north-1.amazonaws.com", "ecr-edge"),
        ],
    );
    let (code, v) = doctor(&sb);
    assert_eq!(code, 1);
    let fails = find(&v, "credHelpers", "fail").join("\n");
    assert!(fails.contains(&format!("use \"{HOST}\"")), "{fails}");
    assert!(
        fails.contains(&format!("did you mean \"{HOST}\"")),
        "{fails}"
    );
    assert!(fails.contains("served under .amazonaws.com.cn"), "{fails}");
}

#[test]
fn clock_skew_from_the_endpoint_date() {
    // A clock off by minutes is a warning that says what ecr-edge does about it (it takes
    // AWS's time), and what the container engine still needs.
    for (offset, status) in [(-400i64, "warn"), (90, "warn")] {
        let mut sb = Sandbox::new();
        path_with(&mut sb, &[]);
        docker_config(&sb, &[(HOST, "ecr-edge")]);
        sb.fake.set_clock_offset(offset);
        let (_, v) = doctor(&sb);
        let found = find(&v, "clock", status);
        assert_eq!(found.len(), 1, "{offset}: {v:#}");
        let direction = if offset < 0 { "ahead of" } else { "behind" };
        assert!(found[0].contains(direction), "{}", found[0]);
        assert!(
            found[0].contains("ecr-edge uses AWS's time"),
            "{}",
            found[0]
        );
    }
}

#[test]
fn unreachable_endpoint_and_failing_credentials_fail() {
    let mut sb = Sandbox::new();
    path_with(&mut sb, &[]);
    docker_config(&sb, &[(HOST, "ecr-edge")]);
    sb.fake.set_mode(support::Mode::AccessDenied);
    let (code, v) = doctor(&sb);
    assert_eq!(code, 1);
    assert!(
        find(&v, "credentials", "fail")[0].contains("access denied"),
        "{v:#}"
    );
    // A proxy that refuses connections.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    sb.set("HTTPS_PROXY", Some(&format!("http://{addr}")));
    sb.set("ECR_EDGE_TIMEOUT", Some("2"));
    let (code, v) = doctor(&sb);
    assert_eq!(code, 1);
    assert!(
        find(&v, "network", "fail")[0].contains("not reachable via proxy"),
        "{v:#}"
    );
}

#[test]
fn human_output_and_exit_code() {
    let mut sb = Sandbox::new();
    path_with(&mut sb, &[]);
    docker_config(&sb, &[("https://bad/", "ecr-edge")]);
    let out = support::run_with_input(sb.command_for(&support::binary(), "doctor"), b"");
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out.stdout);
    assert!(t.contains("FAIL  credHelpers"), "{t}");
    assert!(t.lines().last().unwrap().contains("some checks failed"));
}

/// With `[[registry]]` tables: one real call per distinct credential source, each check naming
/// the registries that use it; a credHelpers key that is an alias passes as such; a configured
/// alias missing from credHelpers is a warning.
#[test]
fn one_real_call_per_source_naming_its_registries() {
    let mut sb = Sandbox::new();
    path_with(&mut sb, &[]);
    let app = "210987654321.dkr.ecr.us-west-2.amazonaws.com";
    let other = "123456789012.dkr.ecr.eu-west-1.amazonaws.com";
    let role_arn = "arn:aws:iam::210987654321:role/edge-pull";
    sb.fake.add_role(role_arn, None, &[]);
    let config = sb.dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[registry]]\nhost = \"{app}\"\nrole_arn = \"{role_arn}\"\n\
             aliases = [\"registry.corp.example\", \"mirror.corp.example\"]\n"
        ),
    )
    .unwrap();
    sb.set("ECR_EDGE_CONFIG", Some(config.to_str().unwrap()));
    docker_config(
        &sb,
        &[
            (HOST, "ecr-edge"),
            (app, "ecr-edge"),
            (other, "ecr-edge"),
            ("registry.corp.example", "ecr-edge"),
        ],
    );
    let (code, v) = doctor(&sb);
    assert_eq!(code, 0, "{v:#}");
    let creds = find(&v, "credentials", "pass");
    assert_eq!(creds.len(), 2, "{v:#}");
    // The default source: one call for one of its registries, the other named.
    let chain = creds
        .iter()
        .find(|d| d.contains("default credential chain") && !d.contains(app))
        .unwrap_or_else(|| panic!("{v:#}"));
    assert!(
        chain.contains(HOST) && chain.contains(other) && chain.contains("also used by"),
        "{chain}"
    );
    assert!(
        creds
            .iter()
            .any(|d| d.contains(app) && d.contains(&format!("role {role_arn}"))),
        "{v:#}"
    );
    assert!(
        find(&v, "credHelpers", "pass")
            .iter()
            .any(|d| d.contains("registry.corp.example -> ecr-edge (alias of")),
        "{v:#}"
    );
    let warn = find(&v, "credHelpers", "warn");
    assert!(
        warn.len() == 1 && warn[0].contains("mirror.corp.example") && !warn[0].contains(app),
        "{v:#}"
    );
    let calls = sb.fake.calls();
    let ecr = calls
        .iter()
        .filter(|c| c.authentic && c.target.ends_with("GetAuthorizationToken"))
        .count();
    assert_eq!(ecr, 2, "one real call per source: {calls:?}");
}

/// The command in `detail` that doctor says fixes it: the words of `(CMD fixes it)` or of
/// `(run `CMD` …)`, without the leading `ecr-edge`.
fn printed_fix(detail: &str) -> Vec<String> {
    let cmd = if let Some((before, _)) = detail.split_once(" fixes it)") {
        before.rsplit_once('(').map(|(_, c)| c).unwrap()
    } else {
        detail.split('`').nth(1).unwrap()
    };
    let words: Vec<String> = cmd.split_whitespace().map(str::to_owned).collect();
    assert_eq!(words[0], "ecr-edge", "{detail}");
    words[1..].to_vec()
}

/// Runs a fix doctor printed, as the user would, in the sandbox.
fn run_fix(sb: &Sandbox, words: &[String]) {
    let mut c = sb.command_for(&support::binary(), &words[0]);
    c.args(&words[1..]);
    let out = support::run_with_input(c, b"");
    assert!(
        out.status.success(),
        "{words:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Every fix doctor prints for a credHelpers key makes that check pass when run (issue 19:
/// `configure --registry https://…/` used to add the bare key beside the bad one, so doctor
/// kept failing), whichever helper the bad key named; and `--remove` takes both forms out.
#[test]
fn the_fixes_doctor_prints_for_credhelpers_make_it_pass() {
    for bad in [
        format!("https://{HOST}/"),
        format!("https://{HOST}"),
        format!("{HOST}/"),
    ] {
        for helper in ["ecr-edge", "ecr-login"] {
            let mut sb = Sandbox::new();
            path_with(&mut sb, &[]);
            docker_config(&sb, &[(&bad, helper), ("gcr.io", "gcloud")]);
            let (code, v) = doctor(&sb);
            assert_eq!(code, 1, "{v:#}");
            let failed = find(&v, "credHelpers", "fail");
            assert_eq!(failed.len(), 1, "{bad} -> {helper}: {v:#}");
            run_fix(&sb, &printed_fix(failed[0]));
            let (_, v) = doctor(&sb);
            assert!(
                find(&v, "credHelpers", "fail").is_empty(),
                "{bad} -> {helper} after the fix: {v:#}"
            );
            let file = sb.dir.path().join("home/.docker/config.json");
            let json: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
            assert_eq!(
                json["credHelpers"],
                serde_json::json!({ "gcr.io": "gcloud", HOST: "ecr-edge" }),
                "{bad} -> {helper}"
            );
            // And the same form given to --remove takes the entry out.
            docker_config(&sb, &[(&bad, "ecr-edge"), (HOST, "ecr-edge")]);
            run_fix(
                &sb,
                &[
                    "configure".into(),
                    "--remove".into(),
                    "--registry".into(),
                    bad.clone(),
                ],
            );
            let json: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
            assert!(json.get("credHelpers").is_none(), "{bad}: {json}");
        }
    }
}

/// Doctor's warning about configured registries without an entry names `ecr-edge configure`;
/// run, it adds them all and the warning goes.
#[test]
fn the_fix_for_configured_registries_without_an_entry_works() {
    let mut sb = Sandbox::new();
    path_with(&mut sb, &[]);
    let other = "210987654321.dkr.ecr.eu-west-1.amazonaws.com";
    let config = sb.dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!("[daemon]\nregistries = [\"{HOST}\", \"{other}\"]\n"),
    )
    .unwrap();
    sb.set("ECR_EDGE_CONFIG", Some(config.to_str().unwrap()));
    docker_config(&sb, &[(HOST, "ecr-edge")]);
    let (_, v) = doctor(&sb);
    let warned = find(&v, "credHelpers", "warn");
    assert_eq!(warned.len(), 1, "{v:#}");
    assert!(warned[0].contains(other), "{}", warned[0]);
    run_fix(&sb, &printed_fix(warned[0]));
    let (_, v) = doctor(&sb);
    assert!(find(&v, "credHelpers", "warn").is_empty(), "{v:#}");
}

/// The README's quick start, as written (issue 19): after the package is installed (the
/// package tests do that), its `ecr-edge configure` line makes the entry and its `ecr-edge
/// doctor` line finds the credHelpers entry right.
#[test]
fn the_readmes_quick_start_configures_what_doctor_checks() {
    let block = &crate::support::doc_block("README.md", "ecr-edge doctor");
    let commands: Vec<Vec<String>> = block
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| l.starts_with("ecr-edge "))
        .map(|l| l.split_whitespace().skip(1).map(str::to_owned).collect())
        .collect();
    assert_eq!(commands.len(), 2, "{block}");
    assert_eq!(commands[0][0], "configure");
    assert_eq!(commands[1][0], "doctor");
    let mut sb = Sandbox::new();
    path_with(&mut sb, &[]);
    run_fix(&sb, &commands[0]);
    let (_, v) = doctor(&sb);
    let host = commands[0].last().unwrap();
    assert!(
        find(&v, "credHelpers", "pass")
            .iter()
            .any(|d| d.contains(host.as_str())),
        "{v:#}"
    );
    assert!(find(&v, "credHelpers", "fail").is_empty(), "{v:#}");
}

/// `doctor --image` names a refusal by the permission it lacks, on the repository's ARN, with
/// the policy statement to add: `ecr:BatchGetImage` for the manifest, then
/// `ecr:GetDownloadUrlForLayer` for a layer (ECR's own 403 `DENIED` bodies).
#[test]
fn doctor_names_the_permission_an_image_pull_lacks() {
    let mut sb = Sandbox::new();
    path_with(&mut sb, &[]);
    docker_config(&sb, &[(HOST, "ecr-edge")]);
    let image = format!("{HOST}/edge/app:v1");
    let arn = "arn:aws:ecr:us-west-2:123456789012:repository/edge/app";
    let denied = format!(
        r#"{{"errors":[{{"code":"DENIED","message":"User: arn:aws:sts::123456789012:assumed-role/edge-device/pi-7 is not authorized to perform: ecr:BatchGetImage on resource: {arn} because no identity-based policy allows the ecr:BatchGetImage action"}}]}}"#
    );
    for method in ["HEAD", "GET"] {
        sb.fake.answer_registry(method, "/manifests/", 403, &denied);
    }
    let image_checks = |sb: &Sandbox| {
        let mut c = sb.command_for(&support::binary(), "doctor");
        c.args(["--json", "--image", &image, "--platform", "linux/arm64"]);
        let out = support::run_with_input(c, b"");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(out.status.code(), Some(1), "{v:#}");
        find(&v, "image", "fail")
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let said = image_checks(&sb);
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].contains(&format!(
            "may log in but not read the image's manifest: it lacks ecr:BatchGetImage on {arn}"
        )) && said[0].contains(&format!(
            r#"{{"Effect": "Allow", "Action": "ecr:BatchGetImage", "Resource": "{arn}"}}"#
        )),
        "{said:?}"
    );
    let asked = sb.fake.registry_calls();
    assert_eq!(
        asked[0],
        ("HEAD".to_owned(), "/v2/edge/app/manifests/v1".to_owned())
    );

    // The manifest readable, its layer not: the layer's permission is named.
    let manifest = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"sha256:c0"},"layers":[{"digest":"sha256:1a"}]}"#;
    for method in ["HEAD", "GET"] {
        sb.fake
            .answer_registry(method, "/manifests/", 200, manifest);
    }
    sb.fake.answer_registry("HEAD", "/blobs/", 403, "");
    let said = image_checks(&sb);
    assert!(
        said[0].contains(&format!(
            "may log in but not download its layers: it lacks ecr:GetDownloadUrlForLayer on {arn}"
        )),
        "{said:?}"
    );
    assert!(sb
        .fake
        .registry_calls()
        .contains(&("HEAD".to_owned(), "/v2/edge/app/blobs/sha256:1a".to_owned())));
    let (read, written, connections) = sb.fake.wire(HOST);
    println!(
        "doctor --image, two checks against the fake registry: {read} bytes sent, {written} \
         received, {connections} connections"
    );
}
