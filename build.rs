//! Records the target triple for `--version`, and refuses to build for a target ecr-edge does
//! not support: a helper built for the wrong CPU fails on a device as a silent "credentials not
//! found", so the wrong build must fail here, loudly, instead.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let abi = std::env::var("CARGO_CFG_TARGET_ABI").unwrap_or_default();
    let supported = os == "linux"
        && match arch.as_str() {
            "x86_64" | "aarch64" => true,
            // 32-bit ARM only with hardware floating point (armv7 "hf").
            "arm" => target.starts_with("armv7") && abi.ends_with("hf"),
            _ => false,
        };
    if !supported {
        panic!(
            "ecr-edge does not support target `{target}`. Supported: Linux on aarch64, armv7 \
             (hard float, e.g. armv7-unknown-linux-musleabihf) and x86_64."
        );
    }
    println!("cargo:rustc-env=ECR_EDGE_TARGET={target}");
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
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-changed=build.rs");
}
