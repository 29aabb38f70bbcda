#!/usr/bin/env python3
"""The architecture probe embedded in the packages' pre-install scripts.

A pre-install script runs before the package's files are unpacked, so it cannot try the real
binary. It writes this probe instead: the smallest static ELF executable of the package's
architecture, which only calls exit(0). If the machine can run it (natively, through a 32-bit
compatibility mode, or through binfmt_misc and qemu), it can run ecr-edge; if exec fails, the
install is refused before anything is unpacked. Asking the kernel is the only exact test: an
arm64 machine may or may not run armhf code (many recent cores have no AArch32), and
`uname -m` cannot tell. The armhf probe also refuses ARMv6 cores, whose kernels do run armhf
(EABI, hard float) programs but not ARMv7 instructions.

Usage: probe.py ARCH   (deb or rpm name: amd64/x86_64, arm64/aarch64, armhf/armv7hl)
Prints the probe as a printf(1) format string of octal escapes.
       probe.py --minimum ARCH   prints the CPUs ARCH needs, in words (empty: no note)
"""

import struct
import sys

# (ELF class, e_machine, e_flags, code): the code is exit(0) through the raw syscall.
ARCHES = {
    # xor edi,edi; mov eax,60 (exit); syscall
    "x86_64": (64, 62, 0, bytes.fromhex("31ffb83c0000000f05")),
    # movz x0,#0; movz x8,#93 (exit); svc #0
    "aarch64": (64, 183, 0, struct.pack("<3I", 0xD2800000, 0xD2800BA8, 0xD4000001)),
    # dmb ish; mov r0,#0; mov r7,#1 (exit); svc #0  -- ARM state, EABI version 5, hard float.
    # DMB is an ARMv7 instruction: an ARMv6 core (Raspberry Pi 1, Zero, Zero W) faults on it,
    # as it would on the armv7 binary's own code, so the package is refused there.
    "armv7": (32, 40, 0x05000400,
              struct.pack("<4I", 0xF57FF05B, 0xE3A00000, 0xE3A07001, 0xEF000000)),
}
ALIASES = {"amd64": "x86_64", "arm64": "aarch64", "armhf": "armv7", "armv7hl": "armv7"}
BASE = 0x10000  # load address: above the usual vm.mmap_min_addr


def elf(cls, machine, flags, code):
    """One PT_LOAD segment (read + execute) mapping the whole file at BASE."""
    wide = cls == 64
    ehsize, phsize = (64, 56) if wide else (52, 32)
    entry = BASE + ehsize + phsize
    size = ehsize + phsize + len(code)
    word = "Q" if wide else "I"  # addresses and offsets
    ident = b"\x7fELF" + bytes([2 if wide else 1, 1, 1, 0]) + bytes(8)
    header = ident + struct.pack(
        f"<HHI{word}{word}{word}IHHHHHH",
        2, machine, 1, entry, ehsize, 0, flags, ehsize, phsize, 1, 0, 0, 0,
    )
    # The program header's field order differs: p_flags comes second in ELF64, seventh in ELF32.
    if wide:
        phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, BASE, BASE, size, size, 0x1000)
    else:
        phdr = struct.pack("<IIIIIIII", 1, 0, BASE, BASE, size, size, 5, 0x1000)
    assert len(header) == ehsize and len(phdr) == phsize
    return header + phdr + code


# A line for the refusal message: what the package's architecture name means in CPUs.
MINIMUM = {
    "armv7": "ARMv7 or newer CPU (Raspberry Pi 2 and newer, Zero 2 W); "
             "ARMv6 boards (Raspberry Pi 1, Zero, Zero W) cannot run it",
}


def main():
    if len(sys.argv) not in (2, 3) or (len(sys.argv) == 2) == (sys.argv[1] == "--minimum"):
        sys.exit(__doc__)
    if sys.argv[1] == "--minimum":  # the CPUs the package needs, in words (empty: any)
        print(MINIMUM.get(ALIASES.get(sys.argv[2], sys.argv[2]), ""))
        return
    arch = ALIASES.get(sys.argv[1], sys.argv[1])
    if arch not in ARCHES:
        sys.exit(f"probe.py: unknown architecture {sys.argv[1]!r}")
    print("".join(f"\\{b:03o}" for b in elf(*ARCHES[arch])))


if __name__ == "__main__":
    main()
