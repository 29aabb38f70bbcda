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
    println!("cargo:rerun-if-changed=build.rs");
}
