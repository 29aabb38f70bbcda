//! Records the target triple, the commit and the compiler for `--version`, and refuses to build for a target ecr-edge does
//! not support: a helper built for the wrong CPU fails on a device as a silent "credentials not
//! found", so the wrong build must fail here, loudly, instead.

#[path = "build/target_check.rs"]
mod target_check;

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let abi = std::env::var("CARGO_CFG_TARGET_ABI").unwrap_or_default();
    if !target_check::supported(&target, &arch, &os, &abi) {
        panic!("{}", target_check::refusal(&target));
    }
    println!("cargo:rustc-env=ECR_EDGE_TARGET={target}");
    // Static release builds: the cached `get` path's functions first, then the daemon's, ahead
    // of the rest of .text (scripts/hot-path explains and regenerates the lists). The helper and
    // the daemon then map only the code they run; GNU ld and lld both read this INSERT-style
    // script, so `cross` builds get it too.
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if env == "musl" && std::env::var("PROFILE").as_deref() == Ok("release") {
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{dir}/build/hot-path.ld");
    }
    println!("cargo:rerun-if-changed=build/hot-path.ld");
    // When the binary was built (SOURCE_DATE_EPOCH for reproducible builds): a device clock
    // earlier than this has certainly not been set, which `doctor` reports.
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        });
    println!("cargo:rustc-env=ECR_EDGE_BUILD_EPOCH={epoch}");
    // `--version --verbose`: the commit (ECR_EDGE_COMMIT, as a packager without the git folder
    // passes it, else the clone's HEAD) and the compiler.
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let commit = std::env::var("ECR_EDGE_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            // Only this clone's own history: a source tree unpacked inside another repository
            // (a Yocto build folder) must not report that repository's commit.
            let git = std::path::Path::new(&dir).join(".git");
            if !git.exists() {
                return None;
            }
            for watched in ["HEAD", "refs/heads", "packed-refs"] {
                if git.join(watched).exists() {
                    println!("cargo:rerun-if-changed=.git/{watched}");
                }
            }
            let out = std::process::Command::new("git")
                .args(["-C", &dir, "rev-parse", "HEAD"])
                .output()
                .ok()?;
            let hash = String::from_utf8(out.stdout).ok()?.trim().to_owned();
            (out.status.success() && hash.len() == 40).then_some(hash)
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=ECR_EDGE_COMMIT={commit}");
    println!("cargo:rerun-if-env-changed=ECR_EDGE_COMMIT");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=ECR_EDGE_RUSTC={rustc_version}");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build/target_check.rs");
}
