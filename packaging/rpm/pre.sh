# ecr-edge %pre: refuse a package built for a CPU this machine cannot run.
@ARCH_CHECK@
# Shared directories (completions, systemd presets) that do not exist yet are created by this package's files,
# and cargo-generate-rpm cannot make the package own them: note which, so that %postun
# removes exactly those again (when empty) and never a directory that was here before.
if [ "$1" -eq 1 ]; then
	mkdir -p /var/lib/rpm-state
	for d in /usr/share/bash-completion /usr/share/bash-completion/completions \
		/usr/share/zsh /usr/share/zsh/site-functions \
		/usr/share/fish /usr/share/fish/vendor_completions.d \
		/usr/lib/systemd /usr/lib/systemd/system-preset; do
		[ -e "$d" ] || echo "$d"
	done > /var/lib/rpm-state/ecr-edge.created-dirs
fi
