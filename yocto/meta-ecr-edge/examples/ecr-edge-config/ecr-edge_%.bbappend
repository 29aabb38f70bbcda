# Example (not parsed in this layer): a fleet's ecr-edge configuration and first-boot
# provisioning of each device's AWS IoT certificate. Copy this file and files/ into your own
# layer as recipes-containers/ecr-edge/ecr-edge_%.bbappend, then edit files/config.toml.in.
#
# No certificate or key is built into the image: the image is the same for every device, and
# each device's identity arrives at first boot (yocto/README.md).
FILESEXTRAPATHS:prepend := "${THISDIR}/files:"

SRC_URI += "file://config.toml.in \
            file://ecr-edge-provision \
            file://ecr-edge-provision.service \
            "

do_install:append() {
    install -m 0644 ${UNPACKDIR}/config.toml.in ${D}${sysconfdir}/ecr-edge/config.toml.in
    install -d ${D}${libexecdir}/ecr-edge
    install -m 0755 ${UNPACKDIR}/ecr-edge-provision ${D}${libexecdir}/ecr-edge/ecr-edge-provision
    install -m 0644 ${UNPACKDIR}/ecr-edge-provision.service ${D}${systemd_system_unitdir}/ecr-edge-provision.service
}

SYSTEMD_SERVICE:${PN} += "ecr-edge-provision.service"
