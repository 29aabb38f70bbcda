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
	# What `ecr-edge configure --k3s` made (only if it still is ours): the provider link, which
	# would dangle, and the config.yaml it wrote; then the directories if that left them empty.
	rancher="/var/lib/rancher"
	k3s="$rancher/credentialprovider"
	if [ "$(readlink "$k3s/bin/ecr-edge-credential-provider" 2>/dev/null)" = /usr/bin/ecr-edge ]; then
		rm -f "$k3s/bin/ecr-edge-credential-provider"
	fi
	# shellcheck disable=SC2016 # the backquotes are the marker's text
	if head -n 1 "$k3s/config.yaml" 2>/dev/null \
		| grep -qxF '# Written by `ecr-edge configure`; rerun it to update this file.'; then
		rm -f "$k3s/config.yaml"
	fi
	rmdir "$k3s/bin" 2>/dev/null || :
	rmdir "$k3s" 2>/dev/null || :
	rmdir "$rancher" 2>/dev/null || :
	# cargo-generate-rpm 0.21 cannot mark directories as owned (its `dir` assets fail with the
	# rpm crate it uses), so rpm leaves them; remove ours when empty, as rpm would. An
	# administrator's files keep /etc/ecr-edge.
	# The daemon's state directory (StateDirectory=): only the time floor.
	rm -f /var/lib/ecr-edge/time-floor
	for d in /var/lib/ecr-edge /usr/libexec/ecr-edge /usr/share/doc/ecr-edge/examples /usr/share/doc/ecr-edge /etc/ecr-edge; do
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
