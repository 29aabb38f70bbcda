# Refuse, before anything is unpacked, a package whose CPU architecture this machine cannot
# run: write the package's probe (packaging/probe.py, a 100-byte static ELF that only exits)
# next to where the binary goes and execute it. Skipped when installing into another root
# (DPKG_ROOT, image builds): that machine is not this one.
if [ -z "${DPKG_ROOT:-}" ] && [ -z "${ECR_EDGE_SKIP_ARCH_CHECK:-}" ]; then
	probe=$(mktemp /usr/bin/.ecr-edge-probe.XXXXXX)
	printf '@PROBE@' > "$probe"
	chmod 0700 "$probe"
	if ! "$probe" 2>/dev/null; then
		rm -f "$probe"
		echo "ecr-edge: this package is built for @ARCH@ (@TRIPLE@), and this machine ($(uname -m)) cannot run @ARCH@ programs." >&2
		@MINIMUM@
		echo "ecr-edge: install the ecr-edge package built for this machine's architecture instead." >&2
		exit 1
	fi
	rm -f "$probe"
fi
