//! Which CPU an executable was built for, from its ELF header (pure, cannot panic).
//!
//! A credential helper built for the wrong CPU fails on a device as Docker's bare "credentials
//! not found"; `doctor` reads each helper's header to say so by name.

use std::fmt;

/// The CPU architectures ecr-edge reports on; others are shown by their ELF machine number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// 64-bit x86.
    X86_64,
    /// 32-bit x86.
    X86,
    /// 64-bit ARM.
    Aarch64,
    /// 32-bit ARM; `hard_float` from the EABI flags (armhf vs armel).
    Arm {
        /// Whether the binary uses the hard-float calling convention.
        hard_float: bool,
    },
    /// Any other machine (`e_machine` value and class).
    Other {
        /// The ELF `e_machine` number.
        machine: u16,
        /// Whether the file is ELFCLASS64.
        is_64: bool,
    },
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Arch::X86_64 => f.write_str("x86_64"),
            Arch::X86 => f.write_str("i686"),
            Arch::Aarch64 => f.write_str("aarch64"),
            Arch::Arm { hard_float: true } => f.write_str("armv7 (hard float)"),
            Arch::Arm { hard_float: false } => f.write_str("arm (soft float)"),
            Arch::Other { machine, is_64 } => {
                write!(
                    f,
                    "ELF machine {machine} ({}-bit)",
                    if *is_64 { 64 } else { 32 }
                )
            }
        }
    }
}

impl Arch {
    /// The architecture `uname -m` names (`x86_64`, `aarch64`, `armv7l`, `armv8l`, `i686`, …).
    pub fn from_uname(machine: &str) -> Option<Arch> {
        Some(match machine {
            "x86_64" | "amd64" => Arch::X86_64,
            "i386" | "i486" | "i586" | "i686" => Arch::X86,
            "aarch64" | "arm64" | "aarch64_be" => Arch::Aarch64,
            m if m.starts_with("armv") || m == "arm" => Arch::Arm { hard_float: true },
            _ => return None,
        })
    }

    /// Whether code for `self` runs natively on a CPU of kind `host` (a 64-bit ARM kernel with a
    /// 32-bit userland runs armv7 code; x86_64 runs i686).
    pub fn runs_on(self, host: Arch) -> bool {
        match (self, host) {
            (a, b) if a == b => true,
            (Arch::Arm { hard_float: true }, Arch::Aarch64) => true,
            (Arch::X86, Arch::X86_64) => true,
            (Arch::Arm { .. }, Arch::Arm { .. }) => true,
            _ => false,
        }
    }
}

/// Reads the architecture from the first bytes of an ELF file; `None` if it is not ELF (a
/// script, say) or the header is cut short.
pub fn arch_of(header: &[u8]) -> Option<Arch> {
    if header.get(..4)? != b"\x7fELF" {
        return None;
    }
    let is_64 = match header.get(4)? {
        1 => false,
        2 => true,
        _ => return None,
    };
    let little = match header.get(5)? {
        1 => true,
        2 => false,
        _ => return None,
    };
    let u16_at = |at: usize| -> Option<u16> {
        let b = header.get(at..at + 2)?;
        Some(if little {
            u16::from_le_bytes([b[0], b[1]])
        } else {
            u16::from_be_bytes([b[0], b[1]])
        })
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b = header.get(at..at + 4)?;
        let a = [b[0], b[1], b[2], b[3]];
        Some(if little {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        })
    };
    let machine = u16_at(18)?;
    Some(match (machine, is_64) {
        (0x3e, true) => Arch::X86_64,
        (0x03, false) => Arch::X86,
        (0xb7, true) => Arch::Aarch64,
        (0x28, false) => {
            // e_flags sits at 0x24 in a 32-bit header; EF_ARM_ABI_FLOAT_HARD = 0x400.
            let flags = u32_at(0x24)?;
            Arch::Arm {
                hard_float: flags & 0x400 != 0,
            }
        }
        (machine, is_64) => Arch::Other { machine, is_64 },
    })
}

/// The architecture this binary was compiled for.
pub fn this_binary() -> Arch {
    match (std::env::consts::ARCH, cfg!(target_abi = "eabihf")) {
        ("x86_64", _) => Arch::X86_64,
        ("aarch64", _) => Arch::Aarch64,
        ("arm", hard_float) => Arch::Arm { hard_float },
        ("x86", _) => Arch::X86,
        _ => Arch::Other {
            machine: 0,
            is_64: cfg!(target_pointer_width = "64"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(class: u8, data: u8, machine: u16, flags: u32) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = class;
        h[5] = data;
        let m = if data == 1 {
            machine.to_le_bytes()
        } else {
            machine.to_be_bytes()
        };
        h[18..20].copy_from_slice(&m);
        h[0x24..0x28].copy_from_slice(&flags.to_le_bytes());
        h
    }

    #[test]
    fn machines() {
        assert_eq!(arch_of(&header(2, 1, 0x3e, 0)), Some(Arch::X86_64));
        assert_eq!(arch_of(&header(2, 1, 0xb7, 0)), Some(Arch::Aarch64));
        assert_eq!(
            arch_of(&header(1, 1, 0x28, 0x0500_0400)),
            Some(Arch::Arm { hard_float: true })
        );
        assert_eq!(
            arch_of(&header(1, 1, 0x28, 0x0500_0200)),
            Some(Arch::Arm { hard_float: false })
        );
        assert_eq!(arch_of(&header(1, 1, 0x03, 0)), Some(Arch::X86));
        assert_eq!(
            arch_of(&header(2, 2, 0x15, 0)),
            Some(Arch::Other {
                machine: 0x15,
                is_64: true
            })
        );
    }

    #[test]
    fn not_elf_or_short() {
        for junk in [
            &b""[..],
            b"#!/bin/sh\n",
            b"\x7fELF",
            b"\x7fELF\x03\x01",
            &header(2, 1, 0x3e, 0)[..19],
        ] {
            assert_eq!(arch_of(junk), None);
        }
    }

    #[test]
    fn compatibility() {
        assert!(Arch::Arm { hard_float: true }.runs_on(Arch::Aarch64));
        assert!(!Arch::Aarch64.runs_on(Arch::X86_64));
        assert!(!Arch::X86_64.runs_on(Arch::Aarch64));
        assert_eq!(
            Arch::from_uname("armv7l"),
            Some(Arch::Arm { hard_float: true })
        );
        assert_eq!(Arch::from_uname("riscv64"), None);
    }

    #[allow(dead_code)]
    mod target_check {
        include!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/build/target_check.rs"
        ));
    }

    #[test]
    fn build_refuses_unsupported_targets() {
        use target_check::supported;
        assert!(supported(
            "aarch64-unknown-linux-musl",
            "aarch64",
            "linux",
            ""
        ));
        assert!(supported(
            "armv7-unknown-linux-musleabihf",
            "arm",
            "linux",
            "eabihf"
        ));
        assert!(supported("x86_64-unknown-linux-gnu", "x86_64", "linux", ""));
        // Yocto (meta-ecr-edge): custom target specs without an `abi` field.
        assert!(supported("armv7-poky-linux-gnueabihf", "arm", "linux", ""));
        assert!(!supported("armv7-poky-linux-gnueabi", "arm", "linux", ""));
        assert!(!supported("arm-poky-linux-gnueabi", "arm", "linux", ""));
        assert!(supported("aarch64-poky-linux", "aarch64", "linux", ""));
        assert!(!supported(
            "armv7-unknown-linux-musleabi",
            "arm",
            "linux",
            "eabi"
        ));
        assert!(!supported(
            "arm-unknown-linux-gnueabihf",
            "arm",
            "linux",
            "eabihf"
        ));
        assert!(!supported("i686-unknown-linux-gnu", "x86", "linux", ""));
        assert!(!supported(
            "riscv64gc-unknown-linux-gnu",
            "riscv64",
            "linux",
            ""
        ));
        assert!(!supported("aarch64-apple-darwin", "aarch64", "macos", ""));
        assert!(target_check::refusal("x").contains("aarch64, armv7"));
    }

    #[test]
    fn this_binary_matches_its_own_header() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        assert_eq!(arch_of(&exe), Some(this_binary()));
    }
}
