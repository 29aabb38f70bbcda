# ecr-edge %post: the daemon's user and group (sysusers.d), the unit, and the helper name.
if command -v systemd-sysusers >/dev/null 2>&1; then
	systemd-sysusers /usr/lib/sysusers.d/ecr-edge.conf || :
fi
# cargo-generate-rpm cannot package a symlink: make the helper name and the kubelet provider
# name here, and only where nothing else is (an administrator's own file is left alone).
if [ ! -e /usr/bin/docker-credential-ecr-edge ] && [ ! -L /usr/bin/docker-credential-ecr-edge ]; then
	ln -s ecr-edge /usr/bin/docker-credential-ecr-edge
fi
mkdir -p /usr/libexec/ecr-edge
if [ ! -e /usr/libexec/ecr-edge/ecr-edge-credential-provider ] && [ ! -L /usr/libexec/ecr-edge/ecr-edge-credential-provider ]; then
	ln -s ../../bin/ecr-edge /usr/libexec/ecr-edge/ecr-edge-credential-provider
fi
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || :
	# First install: follow the presets (as %systemd_post does); the package's own
	# 80-ecr-edge.preset enables the unit, where Fedora's 99-default.preset would disable it.
	# The unit's ExecCondition keeps it stopped until /etc/ecr-edge/config.toml has a
	# [daemon] section.
	if [ "$1" -eq 1 ]; then
		systemctl --no-reload preset ecr-edge.service >/dev/null 2>&1 || :
	fi
fi
