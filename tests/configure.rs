//! `ecr-edge configure` on real files: empty, missing, large, unusual and invalid JSON,
//! concurrent runs, symlinks, mode and owner.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Output;

use serde_json::Value;

use crate::support::{self, text};

const HOST: &str = "123456789012.dkr.ecr.us-west-2.amazonaws.com";

fn configure(home: &Path, args: &[&str]) -> Output {
    let mut c = support::command(&support::binary());
    c.arg("configure")
        .args(args)
        .env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    c.output().unwrap()
}

/// Every key except `credHelpers`, parsed.
fn others(v: &Value) -> Value {
    let mut v = v.clone();
    v.as_object_mut().unwrap().remove("credHelpers");
    v
}

#[test]
fn missing_file_is_created_private() {
    let home = tempfile::tempdir().unwrap();
    let out = configure(
        home.path(),
        &["--registry", HOST, "--registry", "public.ecr.aws"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let path = home.path().join(".docker/config.json");
    let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(v["credHelpers"][HOST], "ecr-edge");
    assert_eq!(v["credHelpers"]["public.ecr.aws"], "ecr-edge");
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777,
        0o700
    );
}

#[test]
fn unrelated_content_mode_and_owner_survive_and_reruns_change_nothing() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join(".docker");
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join("config.json");
    let mut auths = serde_json::Map::new();
    for i in 0..2000 {
        auths.insert(
            format!("registry{i}.example.com"),
            serde_json::json!({"auth": format!("dXNlcjpwYXNz{i}")}),
        );
    }
    let original = serde_json::json!({
        "auths": auths,
        "credsStore": "desktop",
        "credHelpers": {"gcr.io": "gcloud", HOST: "ecr-login"},
        "psFormat": "table {{.ID}}\t{{.Names}} – ünïcødé ✓ \u{1F600}",
        "experimental": "enabled",
        "proxies": {"default": {"httpsProxy": "http://proxy:3128", "noProxy": "*.local"}},
        "weird": [1, 2.5e300, -0.0, null, true, {"nested": [[[]]]}],
        "huge": 12345678901234567890123456789_u128.to_string()
    });
    let mut text_in = serde_json::to_string_pretty(&original).unwrap();
    text_in = text_in.replace(
        "\"huge\": \"12345678901234567890123456789\"",
        "\"huge\": 12345678901234567890123456789",
    );
    std::fs::write(&path, &text_in).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(&path, Some(4321), Some(4321)).unwrap();

    let out = configure(home.path(), &["--registry", &format!("https://{HOST}/v2/")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("using the bare host {HOST}")),
        "{stdout}"
    );
    assert!(stdout.contains("(was \"ecr-login\")"), "{stdout}");

    let after_text = std::fs::read_to_string(&path).unwrap();
    let before: Value = serde_json::from_str(&text_in).unwrap();
    let after: Value = serde_json::from_str(&after_text).unwrap();
    assert_eq!(
        others(&after),
        others(&before),
        "every unrelated key survives"
    );
    assert!(
        after_text.contains("12345678901234567890123456789"),
        "number kept to the digit"
    );
    assert_eq!(after["credHelpers"]["gcr.io"], "gcloud");
    assert_eq!(after["credHelpers"][HOST], "ecr-edge");
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o640);
    assert_eq!((meta.uid(), meta.gid()), (4321, 4321));

    let again = configure(home.path(), &["--registry", HOST]);
    assert!(text(&again.stdout).contains("already up to date"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), after_text);
    // No temp or lock files left behind.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
}

#[test]
fn invalid_json_is_reported_and_left_untouched() {
    for junk in [
        "{\"auths\": {",
        "[1,2]",
        "not json",
        "{\"credHelpers\": \"x\"}",
        "\u{feff}{}",
    ] {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join(".docker");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("config.json"), junk).unwrap();
        let out = configure(home.path(), &["--registry", HOST]);
        assert_eq!(out.status.code(), Some(1), "{junk}");
        assert!(
            text(&out.stderr).contains("left untouched"),
            "{}",
            text(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("config.json")).unwrap(),
            junk
        );
    }
}

#[test]
fn dry_run_and_remove() {
    let home = tempfile::tempdir().unwrap();
    let path = home.path().join(".docker/config.json");
    let out = configure(home.path(), &["--registry", HOST, "--dry-run"]);
    assert!(
        text(&out.stdout).contains(&format!(
            "would change:\n  + credHelpers[\"{HOST}\"] = \"ecr-edge\""
        )),
        "{}",
        text(&out.stdout)
    );
    assert!(!path.exists());
    assert!(configure(
        home.path(),
        &["--account", "123456789012", "--region", "us-west-2"]
    )
    .status
    .success());
    let out = configure(home.path(), &["--registry", HOST, "--remove"]);
    assert!(
        text(&out.stdout).contains(&format!("- credHelpers[\"{HOST}\"]")),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}\n");
}

#[test]
fn non_ecr_hosts_and_symlinks_are_refused() {
    let home = tempfile::tempdir().unwrap();
    let out = configure(home.path(), &["--registry", "ghcr.io"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("not an Amazon ECR registry host"));
    let dir = home.path().join(".docker");
    std::fs::create_dir(&dir).unwrap();
    let target = home.path().join("elsewhere.json");
    std::fs::write(&target, "{}").unwrap();
    std::os::unix::fs::symlink(&target, dir.join("config.json")).unwrap();
    let out = configure(home.path(), &["--registry", HOST]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("symlink"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "{}");
}

#[test]
fn concurrent_runs_lose_no_entry() {
    let home = tempfile::tempdir().unwrap();
    let hosts: Vec<String> = (0..12)
        .map(|i| format!("1234567890{i:02}.dkr.ecr.us-west-2.amazonaws.com"))
        .collect();
    let children: Vec<_> = hosts
        .iter()
        .map(|h| {
            let mut c = support::command(&support::binary());
            c.args(["configure", "--containers", "--registry", h])
                .env_clear()
                .env("HOME", home.path())
                .stdout(std::process::Stdio::null());
            c.spawn().unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    for file in [".docker/config.json", ".config/containers/auth.json"] {
        let v: Value =
            serde_json::from_slice(&std::fs::read(home.path().join(file)).unwrap()).unwrap();
        for h in &hosts {
            assert_eq!(v["credHelpers"][h], "ecr-edge", "{file} {h}");
        }
    }
}

/// Root editing a file in a user's home (`sudo -E`, `HOME` there) works as that user: a
/// symlink the user planted for `~/.docker` cannot lead root's write into a folder only root
/// may change, and what it creates belongs to the user. (Before, root followed the symlink and
/// wrote `config.json` into the protected folder.)
#[test]
#[ignore = "needs root (acts for another user); scripts/test runs it as root"]
fn as_root_in_a_users_home_it_writes_only_what_the_user_could() {
    use std::os::unix::fs::{chown, lchown, symlink};
    const ALICE: u32 = 4321;
    let base = tempfile::tempdir().unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let protected = base.path().join("protected");
    std::fs::create_dir(&protected).unwrap();
    std::fs::set_permissions(&protected, std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = base.path().join("alice");
    std::fs::create_dir(&home).unwrap();
    chown(&home, Some(ALICE), Some(ALICE)).unwrap();
    let planted = home.join(".docker");
    symlink(&protected, &planted).unwrap();
    lchown(&planted, Some(ALICE), Some(ALICE)).unwrap();

    let out = configure(&home, &["--registry", HOST]);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("ermission denied"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_dir(&protected).unwrap().count(),
        0,
        "nothing written through the symlink"
    );

    // Without the symlink: the folder and file are created, and are the user's.
    std::fs::remove_file(&planted).unwrap();
    let out = configure(&home, &["--registry", HOST]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let path = planted.join("config.json");
    let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(v["credHelpers"][HOST], "ecr-edge");
    for made in [&planted, &path] {
        let meta = std::fs::symlink_metadata(made).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (ALICE, ALICE),
            "{}",
            made.display()
        );
    }
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
}
