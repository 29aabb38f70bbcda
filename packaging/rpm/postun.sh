# ecr-edge %postun: on erase, the links %post made (only if they are still ours); on
# upgrade, restart a running daemon on the new binary. The system user stays, as Fedora's
# packaging guidelines require (files it owned may remain).
if [ "$1" -eq 0 ]; then
	if [ "$(readlink /usr/bin/docker-credential-ecr-edge 2>/dev/null)" = ecr-edge ]; then
		rm -f /usr/bin/docker-credential-ecr-edge
	fi
	if [ "$(readlink /usr/libexec/ecr-edge/ecr-edge-credential-provider 2>/dev/null)" = ../../bin/ecr-edge ]; then
		rm -f /usr/libexec/ecr-edge/ecr-edge-credential-provider
	fi
	# cargo-generate-rpm 0.21 cannot mark directories as owned (its `dir` assets fail with the
	# rpm crate it uses), so rpm leaves them; remove ours when empty, as rpm would. An
	# administrator's files keep /etc/ecr-edge.
	for d in /usr/libexec/ecr-edge /usr/share/doc/ecr-edge/examples /usr/share/doc/ecr-edge /etc/ecr-edge; do
		rmdir "$d" 2>/dev/null || :
	done
	# The shared directories %pre found missing, deepest first, if nothing else put files
	# there since.
	state=/var/lib/rpm-state/ecr-edge.created-dirs
	if [ -f "$state" ]; then
		sort -r "$state" | while read -r d; do
			rmdir "$d" 2>/dev/null || :
		done
		rm -f "$state"
		rmdir /var/lib/rpm-state 2>/dev/null || :
	fi
fi
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || :
	if [ "$1" -ge 1 ]; then
		systemctl try-restart ecr-edge.service >/dev/null 2>&1 || :
	fi
fi
