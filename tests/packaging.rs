//! Files the packages and the Yocto layer are built from, checked against their sources of
//! truth: the man pages and completions against the CLI definition, the recipe's crate list
//! against Cargo.lock. (Building, linting and installing the packages is scripts/package and
//! scripts/package-test, run by scripts/test.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[path = "../examples/gen-docs.rs"]
#[allow(dead_code)]
mod gen_docs;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn files_under(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.insert(path.strip_prefix(dir).unwrap().to_owned(), bytes);
            }
        }
    }
    out
}

/// packaging/docs is exactly what examples/gen-docs.rs makes from today's CLI definition.
#[test]
fn generated_docs_are_current() {
    let fresh = tempfile::tempdir().unwrap();
    gen_docs::generate(fresh.path()).unwrap();
    let fresh = files_under(fresh.path());
    let committed = files_under(&Path::new(ROOT).join("packaging/docs"));
    assert!(fresh.contains_key(Path::new("man/ecr-edge-daemon.1")));
    assert!(fresh.contains_key(Path::new("completions/_ecr-edge")));
    let names = |m: &BTreeMap<PathBuf, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&committed),
        names(&fresh),
        "run `cargo run --example gen-docs`"
    );
    for (name, bytes) in &fresh {
        assert!(
            committed[name] == *bytes,
            "packaging/docs/{} is stale: run `cargo run --example gen-docs`",
            name.display()
        );
    }
}

/// (name, version) -> sha256 of every crates.io package in Cargo.lock.
fn lock_crates() -> BTreeMap<(String, String), String> {
    let lock: toml::Table =
        toml::from_str(&std::fs::read_to_string(Path::new(ROOT).join("Cargo.lock")).unwrap())
            .unwrap();
    let mut out = BTreeMap::new();
    for p in lock["package"].as_array().unwrap() {
        let field = |k: &str| p.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let Some(source) = field("source") else {
            continue; // ecr-edge itself
        };
        assert!(
            source.starts_with("registry+https://github.com/rust-lang/crates.io-index"),
            "{source}: the recipe can only fetch crates.io packages"
        );
        let key = (field("name").unwrap(), field("version").unwrap());
        out.insert(key, field("checksum").unwrap());
    }
    out
}

/// The Yocto recipe fetches exactly Cargo.lock's crates, with the same checksums: a build from
/// the download cache needs every one, and a stale checksum fails the fetch.
#[test]
fn yocto_crate_list_matches_cargo_lock() {
    let inc = std::fs::read_to_string(
        Path::new(ROOT).join("yocto/meta-ecr-edge/recipes-containers/ecr-edge/ecr-edge-crates.inc"),
    )
    .unwrap();
    let mut uris = BTreeMap::new();
    let mut sums = BTreeMap::new();
    for line in inc.lines() {
        let line = line.trim();
        if let Some(at) = line.find("crate://crates.io/") {
            let rest = line[at + "crate://crates.io/".len()..].trim_end_matches(['\\', ' ']);
            let (name, version) = rest
                .split_once('/')
                .expect("crate://crates.io/NAME/VERSION");
            assert!(
                uris.insert((name.to_owned(), version.to_owned()), ())
                    .is_none(),
                "{rest} listed twice"
            );
        } else if let Some(rest) = line.strip_prefix("SRC_URI[") {
            let (key, value) = rest.split_once(".sha256sum] = ").expect("sha256sum line");
            sums.insert(key.to_owned(), value.trim_matches('"').to_owned());
        }
    }
    let lock = lock_crates();
    let listed: Vec<_> = uris.keys().cloned().collect();
    let locked: Vec<_> = lock.keys().cloned().collect();
    assert_eq!(
        listed, locked,
        "ecr-edge-crates.inc differs from Cargo.lock: run scripts/yocto-crates"
    );
    for ((name, version), checksum) in &lock {
        assert_eq!(
            sums.get(&format!("{name}-{version}")),
            Some(checksum),
            "checksum of {name} {version}: run scripts/yocto-crates"
        );
    }
    assert_eq!(
        sums.len(),
        lock.len(),
        "extra checksums in ecr-edge-crates.inc"
    );
    // The recipe's version is the package's.
    let recipe = Path::new(ROOT).join(format!(
        "yocto/meta-ecr-edge/recipes-containers/ecr-edge/ecr-edge_{}.bb",
        env!("CARGO_PKG_VERSION")
    ));
    assert!(recipe.exists(), "{} missing", recipe.display());
}

/// The Yocto example's fleet configuration is valid once provisioning puts a thing name in.
#[test]
fn yocto_example_config_is_valid_after_provisioning() {
    let template = std::fs::read_to_string(
        Path::new(ROOT).join("yocto/meta-ecr-edge/examples/ecr-edge-config/files/config.toml.in"),
    )
    .unwrap();
    assert!(template.contains("\"@THING_NAME@\""));
    let config =
        ecr_edge::internal::config::parse(&template.replace("@THING_NAME@", "edge-thing-0001"))
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.iot.unwrap().thing_name, "edge-thing-0001");
    assert!(!config.daemon.unwrap().registries.is_empty());
}

/// The `rust-version` the package declares (the floor Yocto's Rust must meet: wrynose ships
/// 1.94.1) is at least every locked dependency's own `rust-version`, so a dependency update
/// that raises the floor fails here, not on a user's build host.
#[test]
fn declared_rust_version_covers_every_dependency() {
    let host = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .unwrap();
    let host = String::from_utf8_lossy(&host.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .unwrap();
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--offline",
            "--filter-platform",
        ])
        .arg(&host)
        .current_dir(ROOT)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let version = |v: &str| -> Vec<u32> { v.split('.').map(|n| n.parse().unwrap()).collect() };
    let packages = meta["packages"].as_array().unwrap();
    let ours = packages
        .iter()
        .find(|p| p["name"] == "ecr-edge")
        .and_then(|p| p["rust_version"].as_str())
        .map(version)
        .unwrap();
    let mut needing_more = Vec::new();
    for p in packages {
        if let Some(v) = p["rust_version"].as_str() {
            if version(v) > ours {
                needing_more.push(format!("{} {} needs Rust {v}", p["name"], p["version"]));
            }
        }
    }
    assert!(
        needing_more.is_empty(),
        "raise rust-version in Cargo.toml (and check Yocto's Rust): {needing_more:?}"
    );
}

/// The rpm enables the service through presets (issue 19, defect 4): under Fedora's and
/// RHEL's `99-default.preset` (`disable *`), `systemctl preset` — what the rpm's %post runs —
/// leaves the unit disabled unless the package's own preset file, listed in the rpm's assets,
/// says `enable`. Checked with the real systemctl on an offline root (`--root`).
#[test]
fn the_rpm_preset_enables_the_unit_where_fedora_disables_the_rest() {
    let manifest = std::fs::read_to_string(Path::new(ROOT).join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains(r#"source = "packaging/ecr-edge.preset", dest = "/usr/lib/systemd/system-preset/80-ecr-edge.preset""#),
        "the rpm does not install the preset"
    );
    let enabled = |with_ours: bool| {
        let root = tempfile::tempdir().unwrap();
        let units = root.path().join("usr/lib/systemd/system");
        let presets = root.path().join("usr/lib/systemd/system-preset");
        std::fs::create_dir_all(&units).unwrap();
        std::fs::create_dir_all(&presets).unwrap();
        std::fs::create_dir_all(root.path().join("etc/systemd/system")).unwrap();
        std::fs::copy(
            Path::new(ROOT).join("packaging/ecr-edge.service"),
            units.join("ecr-edge.service"),
        )
        .unwrap();
        std::fs::write(presets.join("99-default.preset"), "disable *\n").unwrap();
        if with_ours {
            std::fs::copy(
                Path::new(ROOT).join("packaging/ecr-edge.preset"),
                presets.join("80-ecr-edge.preset"),
            )
            .unwrap();
        }
        let out = std::process::Command::new("systemctl")
            .arg(format!("--root={}", root.path().display()))
            .args(["preset", "ecr-edge.service"])
            .output()
            .expect("systemctl (scripts/install-deps units installs systemd)");
        assert!(
            out.status.success(),
            "systemctl preset: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        root.path()
            .join("etc/systemd/system/multi-user.target.wants/ecr-edge.service")
            .symlink_metadata()
            .is_ok()
    };
    assert!(!enabled(false), "Fedora's presets alone disable it");
    assert!(enabled(true), "the package's preset enables it");
}

/// The README's by-hand install (issue 19, defect 1): the unit, installed with the README's
/// own command, starts the binary where the README's install step put it (it used to name
/// /usr/bin/ecr-edge while the binary went to /usr/local/bin, so the service could not start).
#[test]
fn the_readmes_by_hand_unit_runs_the_binary_it_installed() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let installed = readme
        .lines()
        .find_map(|l| {
            let rest = l.trim().strip_prefix("sudo install -m 0755 ")?;
            rest.split_whitespace().nth(1).map(str::to_owned)
        })
        .expect("the README's by-hand install step");
    let expr = readme
        .lines()
        .find_map(|l| {
            let rest = l.trim().strip_prefix("sed '")?;
            let (expr, tail) = rest.split_once('\'')?;
            tail.contains("packaging/ecr-edge.service")
                .then(|| expr.to_owned())
        })
        .expect("the README's unit install command");
    let out = std::process::Command::new("sed")
        .arg(&expr)
        .arg(Path::new(ROOT).join("packaging/ecr-edge.service"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let unit = String::from_utf8(out.stdout).unwrap();
    let mut execs = 0;
    for line in unit.lines() {
        if let Some(cmd) = line
            .strip_prefix("ExecStart=")
            .or_else(|| line.strip_prefix("ExecCondition="))
        {
            execs += 1;
            assert_eq!(
                cmd.split_whitespace().next(),
                Some(installed.as_str()),
                "{line}"
            );
        }
    }
    assert_eq!(execs, 2, "{unit}");
}

/// The Yocto README's image installs podman, which only meta-virtualization provides (issue
/// 19, defect 6): its steps add that layer and the meta-openembedded layers it depends on
/// (meta-virtualization's own README lists them), before the image line uses it.
#[test]
fn the_yocto_readme_adds_the_layers_its_image_needs() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("yocto/README.md")).unwrap();
    let image = readme
        .find("IMAGE_INSTALL:append = \" ecr-edge podman\"")
        .expect("the image line");
    for layer in [
        "meta-openembedded/meta-oe",
        "meta-openembedded/meta-python",
        "meta-openembedded/meta-networking",
        "meta-openembedded/meta-filesystems",
        "add-layer ../meta-virtualization",
    ] {
        let at = readme
            .find(layer)
            .unwrap_or_else(|| panic!("the steps never add {layer}"));
        assert!(at < image, "{layer} is added after the image line uses it");
    }
}
