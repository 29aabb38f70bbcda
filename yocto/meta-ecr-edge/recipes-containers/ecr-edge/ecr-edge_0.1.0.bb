# nooelint: oelint.var.mandatoryvar.HOMEPAGE - ecr-edge has no public home page yet; set HOMEPAGE when the repository is published
SUMMARY = "Amazon ECR credentials for edge devices"
DESCRIPTION = "One binary that is a Docker credential helper (docker-credential-ecr-edge), \
               a refresher daemon keeping Amazon ECR tokens warm through flaky links, and an \
               AWS IoT certificate exchange, so a device pulls from ECR with no long-lived \
               AWS keys."
SECTION = "admin"
# LICENSE and LIC_FILES_CHKSUM: ecr-edge's own (Apache-2.0) and those of every crate built
# into the binary, with the licence files the crates ship; written by scripts/yocto-crates.
require ${BPN}-licenses.inc
CVE_PRODUCT = "ecr-edge"

# "+git": oe-core appends the source revision to PKGV when packaging (package.bbclass,
# package_setup_pkgv), so every commit is a new package version and feeds offer the upgrade.
PV = "0.1.0+git"

# The main source first (devtool and recipetool expect it): ECR_EDGE_REPO (conf/layer.conf)
# is the checkout this layer lives in, on branch ECR_EDGE_BRANCH. SRCREV follows that
# branch's tip (AUTOREV: BitBake re-parses the recipe on every run to look it up). Offline
# builds (BB_NO_NETWORK) and release images pin SRCREV in a bbappend, or point
# ECR_EDGE_GIT_URI at a mirror; for a working tree use devtool modify or externalsrc
# (yocto/README.md).
ECR_EDGE_GIT_URI ??= "git://${ECR_EDGE_REPO};protocol=file"
ECR_EDGE_BRANCH ??= "main"
SRC_URI = "${ECR_EDGE_GIT_URI};branch=${ECR_EDGE_BRANCH}"
# nooelint: oelint.vars.autorev - the layer builds the checkout it lives in, so its own commit cannot be written here; release images pin SRCREV in a bbappend
SRCREV ??= "${AUTOREV}"
# One crate:// entry and checksum per Cargo.lock package, written by scripts/yocto-crates.
require ${BPN}-crates.inc

inherit cargo systemd useradd bash-completion

# Cargo features, chosen per image: without ecr-public the binary is smaller and answers
# public.ecr.aws with a clear "built without" error; without sso, no IAM Identity Center
# profiles (people on a device, rarely fleets).
PACKAGECONFIG ??= "ecr-public sso"
PACKAGECONFIG[ecr-public] = "--features ecr-public"
PACKAGECONFIG[sso] = "--features sso"
CARGO_BUILD_FLAGS:append = " --no-default-features"

# Cargo.toml's release profile strips; leave that to OE's package split (-dbg packages).
export CARGO_PROFILE_RELEASE_STRIP = "false"

# build.rs refuses other targets: a helper built for the wrong CPU fails on a device as a
# silent "credentials not found". HOST_SYS only says "arm" for every 32-bit ARM machine, so
# the armv7 hard-float check reads the Rust target triple (RUST_HOST_SYS), which says it.
COMPATIBLE_HOST = "(x86_64|aarch64|arm).*-linux.*"
# nooelint: oelint.task.noanonpython - the only way to refuse 32-bit ARM without hard float with a message naming the reason; it reads one variable
python () {
    rust_host = d.getVar('RUST_HOST_SYS') or ''
    arch = rust_host.split('-')[0]
    if arch in ('x86_64', 'aarch64') or (arch.startswith('armv7') and rust_host.endswith('eabihf')):
        return
    raise bb.parse.SkipRecipe("ecr-edge runs on x86_64, aarch64 and 32-bit ARMv7 hard-float; "
                              "this machine's Rust target is %s" % rust_host)
}

do_install:append() {
    ln -sf ecr-edge ${D}${bindir}/docker-credential-ecr-edge
    install -d ${D}${libexecdir}/ecr-edge
    ln -sf ../../bin/ecr-edge ${D}${libexecdir}/ecr-edge/ecr-edge-credential-provider

    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/packaging/ecr-edge.service ${D}${systemd_system_unitdir}/ecr-edge.service
    install -d ${D}${nonarch_libdir}/sysusers.d
    install -m 0644 ${S}/packaging/ecr-edge.sysusers ${D}${nonarch_libdir}/sysusers.d/ecr-edge.conf

    install -d ${D}${sysconfdir}/ecr-edge
    install -m 0644 ${S}/packaging/config.toml ${D}${sysconfdir}/ecr-edge/config.toml

    install -d ${D}${mandir}/man1
    install -m 0644 ${S}/packaging/docs/man/*.1 ${D}${mandir}/man1/
    install -d ${D}${datadir}/bash-completion/completions
    install -m 0644 ${S}/packaging/docs/completions/ecr-edge.bash ${D}${datadir}/bash-completion/completions/ecr-edge
    install -d ${D}${datadir}/zsh/site-functions
    install -m 0644 ${S}/packaging/docs/completions/_ecr-edge ${D}${datadir}/zsh/site-functions/_ecr-edge
    install -d ${D}${datadir}/fish/vendor_completions.d
    install -m 0644 ${S}/packaging/docs/completions/ecr-edge.fish ${D}${datadir}/fish/vendor_completions.d/ecr-edge.fish

    install -d ${D}${docdir}/${BPN}/examples
    install -m 0644 ${S}/packaging/kubelet-credential-provider.yaml \
                    ${S}/packaging/prometheus/ecr-edge-alerts.yml ${D}${docdir}/${BPN}/examples/
    install -m 0644 ${S}/README.md ${S}/packaging/copyright ${D}${docdir}/${BPN}/
}

USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system ecr-edge"
USERADD_PARAM:${PN} = "--system --gid ecr-edge --home-dir / --no-create-home \
                       --shell /sbin/nologin --comment 'ecr-edge refresher daemon' ecr-edge"

# Enabled; the unit's ExecCondition keeps it stopped until /etc/ecr-edge/config.toml has a
# [daemon] section (see the ecr-edge-config example in yocto/README.md).
SYSTEMD_SERVICE:${PN} = "ecr-edge.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

CONFFILES:${PN} = "${sysconfdir}/ecr-edge/config.toml"
FILES:${PN} += "${nonarch_libdir}/sysusers.d ${datadir}/zsh ${datadir}/fish"
