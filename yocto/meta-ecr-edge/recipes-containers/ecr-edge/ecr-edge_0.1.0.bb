# nooelint: oelint.var.mandatoryvar.HOMEPAGE - ecr-edge has no public home page yet; set HOMEPAGE when the repository is published
SUMMARY = "Amazon ECR credentials for edge devices"
DESCRIPTION = "One binary that is a Docker credential helper (docker-credential-ecr-edge), \
               a refresher daemon keeping Amazon ECR tokens warm through flaky links, and an \
               AWS IoT certificate exchange, so a device pulls from ECR with no long-lived \
               AWS keys."
SECTION = "admin"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE;md5=3b83ef96387f14655fc854ddc3c6bd57"
CVE_PRODUCT = "ecr-edge"

# One crate:// entry and checksum per Cargo.lock package, written by scripts/yocto-crates.
require ${BPN}-crates.inc

# ECR_EDGE_REPO (conf/layer.conf) is the checkout this layer lives in. SRCREV follows it;
# pin a commit here or in a bbappend for release images.
ECR_EDGE_GIT_URI ??= "git://${ECR_EDGE_REPO};protocol=file"
SRC_URI += "${ECR_EDGE_GIT_URI};branch=main"
# nooelint: oelint.vars.autorev - the layer builds the checkout it lives in, so its own commit cannot be written here; release images pin SRCREV in a bbappend
SRCREV ??= "${AUTOREV}"

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
# silent "credentials not found".
COMPATIBLE_HOST = "(x86_64|aarch64|armv7).*-linux.*"

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
    install -m 0644 ${S}/packaging/kubelet-credential-provider.yaml ${D}${docdir}/${BPN}/examples/
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
