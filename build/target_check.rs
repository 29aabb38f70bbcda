// Which targets ecr-edge builds for: shared by build.rs (which refuses the rest) and a unit test.

/// Whether `target` (with its `CARGO_CFG_TARGET_*` values) is a supported target: Linux on
/// x86_64, aarch64, or 32-bit ARMv7 with hardware floating point.
pub fn supported(target: &str, arch: &str, os: &str, abi: &str) -> bool {
    os == "linux"
        && match arch {
            "x86_64" | "aarch64" => true,
            // Yocto's generated target specs carry no `abi`; their triple says it
            // (`armv7-poky-linux-gnueabihf` for a callconvention-hard tune).
            "arm" => {
                target.starts_with("armv7")
                    && (abi.ends_with("hf") || (abi.is_empty() && target.ends_with("hf")))
            }
            _ => false,
        }
}

/// The message for an unsupported target.
pub fn refusal(target: &str) -> String {
    format!(
        "ecr-edge does not support target `{target}`. Supported: Linux on aarch64, armv7 \
         (hard float, e.g. armv7-unknown-linux-musleabihf) and x86_64."
    )
}
