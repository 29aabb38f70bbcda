# ecr-edge %postun: on erase, the helper symlink %post made (only if it is still ours); on
# upgrade, restart a running daemon on the new binary. The system user stays, as Fedora's
# packaging guidelines require (files it owned may remain).
if [ "$1" -eq 0 ]; then
	if [ "$(readlink /usr/bin/docker-credential-ecr-edge 2>/dev/null)" = ecr-edge ]; then
		rm -f /usr/bin/docker-credential-ecr-edge
	fi
fi
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || :
	if [ "$1" -ge 1 ]; then
		systemctl try-restart ecr-edge.service >/dev/null 2>&1 || :
	fi
fi
