#!/bin/bash
# The device-lab scenario, run inside a Debian 12 guest (arm64 or armhf) under full-system
# emulation by tests/lab.rs, as root, at the end of boot. Inputs are in /lab/in (the payload
# disk); results go to /lab/out: `results` (one `name=value` line per check and figure, read by
# the host), `transcript` (every command and its output) and the journal.
#
# PHASE=main: the README's by-hand install, daemon, debug logs, certificate rotation and
# removal, as written; then the package: install, the Yocto example's first-boot provisioning,
# run the daemon under systemd, serve, lose and regain the uplink, measure, upgrade, purge,
# refuse the wrong architecture. The package comes from the signed apt repository the host
# serves (README's block), and the upgrade through it; a repository signed by another key is
# refused.
# PHASE=rtc: the guest booted with its clock at 1970 and no NTP: install, provision; the daemon
# and the helper still get tokens (AWS's time from verified answers, src/clock.rs), status and
# doctor show the offset; once the clock is set the daemon drops the offset and goes on.
# PHASE=tpm-keygen, then PHASE=tpm-run (arm64): the kernel's TPM resource manager (through the
# vTPM proxy, tests/lab/vtpm-relay.pl, to swtpm on the host); `iot keygen --tpm` and `iot csr`
# on the device; after the host's CA signed the request, the packaged daemon with the README's
# TPM drop-in fetches a token with that key; then a key file sealed to that TPM by the README's
# systemd-creds block (--with-key=tpm2) through LoadCredentialEncrypted=.
set -u
export HOME=/root
in=/lab/in out=/lab/out
mkdir -p "$out"
# shellcheck source=/dev/null
. "$in/env"
exec >> "$out/transcript" 2>&1
result() { echo "$1=$2" >> "$out/results"; echo "RESULT $1=$2"; }
check() {  # name, command...: records pass or fail with the command's output
  local name=$1; shift
  echo "+ $*"
  if "$@"; then result "$name" pass; else result "$name" "fail"; fi
}
step() { echo; echo "=== $*"; echo "LAB-STEP $*" > /dev/console; }
# Memory of a process, "RSS ANON FILE" in KiB, from its page tables: /proc/PID/status lags on
# these Linux 6.1 kernels (each thread adds its counts every 64 page faults;
# benches/floor/probe.c says more), by 1.3 MB for an idle daemon once.
mem_kb() { awk '/^Rss:/ { r = $2 } /^Anonymous:/ { a = $2 } END { print r, a, r - a }' "/proc/$1/smaps_rollup"; }
rss_kb() { mem_kb "$1" | cut -d' ' -f1; }
transient_threads() {  # pid: threads besides the daemon's own two (name lookups, blocking pool)
  local t n=0
  for t in /proc/"$1"/task/*/comm; do
    case "$(cat "$t" 2>/dev/null)" in ecr-edge|ecr-edge-link|'') ;; *) n=$((n + 1)) ;; esac
  done
  echo "$n"
}
quiet_mem_kb() {  # pid: mem_kb once no transient thread (each has a stack) is left, within 60 s
  for _ in $(seq 60); do [ "$(transient_threads "$1")" = 0 ] && break; sleep 1; done
  mem_kb "$1"
}
daemon_pid() { systemctl show -p MainPID --value ecr-edge; }
uplink() {  # up|down: the guest's only network interface
  local dev
  dev=$(ip -o link show | awk -F': ' '$2 != "lo" { print $2; exit }')
  if [ "$1" = up ]; then
    ip link set "$dev" up
    ip addr replace 10.0.2.15/24 dev "$dev"
    ip route replace default via 10.0.2.2
  else
    ip link set "$dev" down
  fi
}
provision() {  # owner of the key: the IoT identity, the configuration, the lab's drop-in
  mkdir -p /etc/ecr-edge
  install -m 0644 "$in/ca.pem" /etc/ecr-edge/lab-ca.pem
  install -m 0644 "$in/device.pem.crt" /etc/ecr-edge/device.pem.crt
  install -m 0600 -o "$1" -g "$1" "$in/private.pem.key" /etc/ecr-edge/private.pem.key
  cat > /etc/ecr-edge/config.toml <<EOF
[iot]
endpoint = "$IOT_ENDPOINT"
role_alias = "$ROLE_ALIAS"
thing_name = "$THING_NAME"
cert = "/etc/ecr-edge/device.pem.crt"
key = "/etc/ecr-edge/private.pem.key"
ca = "/etc/ecr-edge/lab-ca.pem"

[daemon]
registries = ["$REG_HOST"]
backoff_max = 4

[[daemon.sink]]
kind = "docker-auths"
path = "/run/ecr-edge/auth.json"
EOF
  lab_dropin
}
lab_dropin() {  # the lab's trust anchor for the ECR API, a watchdog period that runs out twice
  mkdir -p /etc/systemd/system/ecr-edge.service.d
  cat > /etc/systemd/system/ecr-edge.service.d/lab.conf <<EOF
[Service]
Environment=SSL_CERT_FILE=/etc/ecr-edge/lab-ca.pem
WatchdogSec=$WATCHDOG_SEC
EOF
}
as_user() {  # user, command...: a login-like environment with the lab's trust anchor
  local user=$1; shift
  runuser -u "$user" -- env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="/home/$user" SSL_CERT_FILE=/etc/ecr-edge/lab-ca.pem "$@"
}
served_within_a_minute() {  # result name, stderr file: alice gets a token within 60 s
  local got=fail
  for _ in $(seq 60); do
    if get_as alice 2>> "$2" | grep -q '"Secret"'; then got=pass; break; fi
    sleep 1
  done
  result "$1" "$got"
}
tls_probe() {  # name: apt's https client (GnuTLS) asks the fake ECR for /, trusting the lab CA
  # (an unsigned request: the answer is an HTTP error, after a verified handshake).
  /usr/lib/apt/apt-helper -o Acquire::https::CAInfo=/etc/ecr-edge/lab-ca.pem \
    -o APT::Sandbox::User=root -o Acquire::Retries=0 \
    download-file "https://api.ecr.$REGION.amazonaws.com/" "/tmp/tls-$1.body" > "$out/tls-$1.txt" 2>&1
  cat "$out/tls-$1.txt"
}
get_as() {  # user [VAR=value...]: docker-credential-ecr-edge get for the lab registry
  local user=$1; shift
  echo "$REG_HOST" | as_user "$user" "$@" docker-credential-ecr-edge get
}

if [ "$PHASE" = rtc ] && [ -f /var/lib/lab-floor1 ]; then
  # The rtc phase's second boot (the first one ended with a reboot, same disk): the clock is
  # wrong again, the daemon started at boot with the floor it kept and, with set_clock and the
  # README's drop-in, sets the clock from AWS's time before anything else needs it.
  step "5b. after a reboot, the clock wrong again: $(date -u +%FT%TZ)"
  floor1=$(cat /var/lib/lab-floor1)
  # The daemon logs to the journal natively: its fields are journal fields (TIME_FLOOR=, OLD=).
  journalctl -b -u ecr-edge --no-pager -o json \
    --output-fields=MESSAGE,TIME_FLOOR,OLD,NEW > "$out/journal-boot2.json" 2>&1
  journalctl -b -u ecr-edge --no-pager -o short-monotonic > "$out/journal-boot2.txt" 2>&1
  uptime_of() {  # a journal JSON line: its monotonic time, whole seconds since boot
    sed -n 's/.*"__MONOTONIC_TIMESTAMP":"\([0-9]*\)".*/\1/p' | awk '{ print int($1 / 1000000) }'
  }
  # The daemon's first words this boot name the floor it started from: the kept one.
  kept=$(date -u -d "@$floor1" +%Y-%m-%dT%H:%M:%SZ)
  grep -m1 ' started"' "$out/journal-boot2.json" > "$out/started.json"
  cat "$out/started.json"
  check floor_reused_after_reboot grep -q "\"TIME_FLOOR\":\"$kept\"" "$out/started.json"
  grep -m1 'set the system clock' "$out/journal-boot2.json" > "$out/set.json"
  cat "$out/set.json"
  result clock_at_boot2 "$(sed -n 's/.*"OLD":"\([0-9-]*\)T.*/\1/p' "$out/set.json")"
  result boot2_clock_set_uptime_s "$(uptime_of < "$out/set.json")"
  result boot2_first_token_uptime_s "$(grep -m1 '"MESSAGE":"token refreshed"' "$out/journal-boot2.json" | uptime_of)"
  check clock_right_after_reboot test "$(date +%s)" -ge "$HOST_NOW"
  served_within_a_minute get_after_reboot "$out/boot2.err"
  tls_probe boot2
  check system_tls_ok_after_reboot sh -c "! grep -qi certificate '$out/tls-boot2.txt' && grep -Eq '[45][0-9][0-9]' '$out/tls-boot2.txt'"
  journalctl -u ecr-edge --no-pager -o short-monotonic > "$out/journal.txt" 2>&1
  step "done"
  result "done" yes
  exit 0
fi

step "$PHASE on $(uname -m), kernel $(uname -r), $(date -u +%FT%TZ)"
result arch "$(uname -m)"
cat "$in/hosts" >> /etc/hosts
uplink up
useradd --create-home alice; useradd --create-home bob

if [ "${PHASE#tpm-}" != "$PHASE" ]; then
  step "TPM ($PHASE): the kernel's resource manager, a key that never leaves the TPM"
  modprobe tpm_vtpm_proxy
  perl "$in/vtpm-relay.pl" 10.0.2.102 2321 > "$out/vtpm.log" 2>&1 &
  for _ in $(seq 30); do [ -c /dev/tpmrm0 ] && break; sleep 1; done
  check tpm_resource_manager test -c /dev/tpmrm0
  check apt_install sh -c "cd $in && apt install -y ./ecr-edge.deb"
  if [ "$PHASE" = tpm-keygen ]; then
    check tpm_keygen sh -c "ecr-edge iot keygen --tpm > $out/keygen.txt"
    cat "$out/keygen.txt"
    check tpm_csr sh -c "ecr-edge iot csr --key handle:0x81000001 --subject CN=$THING_NAME > $out/device.csr"
  else
    # What Debian's tpm-udev package (which tpm2-tools pulls in) sets up: the tss group may
    # use the TPM.
    groupadd --system tss
    echo 'KERNEL=="tpmrm[0-9]*", MODE="0660", GROUP="tss"' > /etc/udev/rules.d/60-tpm-udev.rules
    udevadm control --reload
    udevadm trigger --sysname-match='tpmrm*' --action=add
    udevadm settle
    check tpm_device_group test "$(stat -c %G /dev/tpmrm0)" = tss
    mkdir -p /etc/ecr-edge
    install -m 0644 "$in/ca.pem" /etc/ecr-edge/lab-ca.pem
    install -m 0644 "$in/tpm-device.pem.crt" /etc/ecr-edge/device.pem.crt
    cat > /etc/ecr-edge/config.toml <<EOF
[iot]
endpoint = "$IOT_ENDPOINT"
role_alias = "$ROLE_ALIAS"
thing_name = "$THING_NAME"
cert = "/etc/ecr-edge/device.pem.crt"
key = "handle:0x81000001"
ca = "/etc/ecr-edge/lab-ca.pem"

[daemon]
registries = ["$REG_HOST"]
backoff_max = 4
EOF
    lab_dropin
    # The README's drop-in, as written.
    install -m 0644 "$in/tpm-dropin.conf" /etc/systemd/system/ecr-edge.service.d/tpm.conf
    systemctl daemon-reload
    check tpm_restart systemctl restart ecr-edge
    usermod -aG ecr-edge alice
    served_within_a_minute tpm_daemon_get "$out/tpm-get.err"
    check tpm_daemon_healthy sh -c "ecr-edge status --json | grep -q '\"last_error\": *null'"
    check tpm_no_key_file sh -c '! grep -rl "PRIVATE KEY" /etc/ecr-edge'
    SSL_CERT_FILE=/etc/ecr-edge/lab-ca.pem ecr-edge doctor > "$out/doctor.txt" 2>&1
    check tpm_doctor_names_tpm grep -q "in the TPM device:/dev/tpmrm0 at handle:0x81000001" "$out/doctor.txt"
    check tpm_unit_device_policy test "$(systemctl show -p DevicePolicy --value ecr-edge)" = closed
    step "   a key file sealed by systemd-creds, handed over by LoadCredentialEncrypted= (README)"
    work=$(mktemp -d)
    install -m 0600 "$in/private.pem.key" "$work/private.pem.key"
    chmod 0755 "$in/creds-editor.sh"
    # `systemctl edit` refuses to run without a terminal: script(1) gives the block one.
    SYSTEMD_EDITOR=$in/creds-editor.sh check creds_readme script -qec "bash -c 'sudo() { \"\$@\"; }; export -f sudo; cd $work && set -e && . $in/creds.sh'" /dev/null
    check creds_plain_key_gone test ! -e "$work/private.pem.key"
    install -m 0644 "$in/device.pem.crt" /etc/ecr-edge/device.pem.crt
    sed -i 's|^key = .*|key = "credential:device-key"|' /etc/ecr-edge/config.toml
    check creds_restart systemctl restart ecr-edge
    served_within_a_minute creds_daemon_get "$out/creds-get.err"
    check creds_no_key_file sh -c '! grep -rl "PRIVATE KEY" /etc/ecr-edge'
  fi
  journalctl -u ecr-edge --no-pager -o short-monotonic > "$out/journal.txt" 2>&1
  cat "$out/vtpm.log"
  step "done"
  result "done" yes
  exit 0
fi

if [ "$PHASE" = main ]; then
  step "0. by hand, the README's commands as written: install, daemon, logs, rotation, removal"
  # Each block is run as root from a folder laid out like a clone (the cross-built binary, the
  # unit, a rotated identity in new/); `sudo` is the identity there.
  readme() {  # check name, block file: the README's block, stopping at its first failure
    # shellcheck disable=SC2016 # expanded by the inner shell
    check "$1" bash -c 'sudo() { "$@"; }; export -f sudo; cd "$1/clone" && set -e && . "$1/$2"' _ "$in" "$2"
  }
  readme byhand_install by-hand-install.sh > "$out/byhand.version" 2>&1
  cat "$out/byhand.version"
  check byhand_version_names_target grep -q "$TRIPLE" "$out/byhand.version"
  ecr-edge configure --registry "$REG_HOST"
  provision root
  readme byhand_daemon by-hand-daemon.sh
  check byhand_active systemctl is-active ecr-edge
  check byhand_binary test "$(readlink "/proc/$(daemon_pid)/exe")" = /usr/local/bin/ecr-edge
  check byhand_key_owner test "$(stat -c %U /etc/ecr-edge/private.pem.key)" = ecr-edge
  out_byhand=$(get_as alice ECR_EDGE_LOG=debug 2>"$out/byhand-alice.stderr")
  check byhand_alice_get grep -q '"Secret"' <<<"$out_byhand"
  check byhand_alice_from_daemon grep -q "served by the daemon" "$out/byhand-alice.stderr"
  readme log_level log-level.sh
  check log_level_debug sh -c 'journalctl -u ecr-edge --no-pager -p debug -o verbose | grep -q PRIORITY=7'
  # Metrics for node_exporter: the README's folder, drop-in (systemctl edit, its editor writing
  # what the README's comment says) and restart, then the file under the full hardening.
  sed -i '/^backoff_max = 4$/a metrics_file = "/var/lib/node_exporter/textfile_collector/ecr_edge.prom"' /etc/ecr-edge/config.toml
  # `systemctl edit` refuses to run without a terminal: script(1) gives the block one.
  SYSTEMD_EDITOR=$in/editor.sh check metrics script -qec "bash -c 'sudo() { \"\$@\"; }; export -f sudo; cd $in/clone && set -e && . $in/metrics.sh'" /dev/null
  prom=/var/lib/node_exporter/textfile_collector/ecr_edge.prom
  for _ in $(seq 30); do grep -q '^ecr_edge_token_expiry_timestamp_seconds{' "$prom" 2>/dev/null && break; sleep 1; done
  check metrics_file_written grep -q '^ecr_edge_token_expiry_timestamp_seconds{' "$prom"
  check metrics_file_mode test "$(stat -c '%a %U' "$prom")" = "644 ecr-edge"
  pid=$(daemon_pid)
  readme rotate rotate.sh
  for _ in $(seq 20); do
    journalctl -u ecr-edge --no-pager | grep -q "configuration reloaded" && break
    sleep 1
  done
  out_rotated=$(echo 210987654321.dkr.ecr.us-west-2.amazonaws.com | as_user alice docker-credential-ecr-edge get 2>&1)
  check rotated_get grep -q '"Secret"' <<<"$out_rotated"
  check rotated_same_process test "$(daemon_pid)" = "$pid"
  check rotated_key_owner test "$(stat -c '%a %U' /etc/ecr-edge/private.pem.key)" = "600 ecr-edge"
  journalctl -u ecr-edge --no-pager > "$out/byhand.journal"
  readme byhand_remove by-hand-remove.sh
  check byhand_nothing_left sh -c '! ls -d /usr/local/bin/ecr-edge /usr/local/bin/docker-credential-ecr-edge /etc/systemd/system/ecr-edge.service /etc/systemd/system/ecr-edge.service.d /run/ecr-edge /root/.cache/ecr-edge 2>/dev/null && ! getent passwd ecr-edge && ! getent group ecr-edge'
  check byhand_unit_gone sh -c '! systemctl cat ecr-edge > /dev/null 2>&1'
  check byhand_docker_entry_gone sh -c '! grep -q ecr-edge /root/.docker/config.json'
  check byhand_metrics_file_gone test ! -e "$prom"
  # /etc/ecr-edge and the metrics folder are the administrator's to keep; the package is
  # installed on a clean device.
  rm -rf /etc/ecr-edge /var/lib/node_exporter
  hash -r   # this shell remembered /usr/local/bin/ecr-edge; the package puts it in /usr/bin
fi

if [ "$PHASE" = main ]; then
  step "1. from the repository the host serves, the README's block as written (http)"
  # The guest has no Debian mirror: the lab's repository is its only source. No curl on the
  # guest either: the block's `curl -o FILE URL` is apt's own downloader here.
  mv /etc/apt/sources.list /etc/apt/sources.list.lab-off
  start=$(date +%s)
  # shellcheck disable=SC2016 # expanded by the inner shell
  check apt_install bash -c 'sudo() { "$@"; }
    curl() { local o="" u=""; while [ $# -gt 0 ]; do case $1 in -o) o=$2; shift 2 ;; -*) shift ;; *) u=$1; shift ;; esac; done
      /usr/lib/apt/apt-helper -o APT::Sandbox::User=root download-file "$u" "$o"; }
    export -f sudo curl; set -e; . "$1/repo-apt.sh"' _ "$in"
  result install_seconds $(( $(date +%s) - start ))
  check installed_from_repo sh -c 'apt-cache policy ecr-edge | grep -q "packages.example.com/ecr-edge/apt stable/main"'
  check keyring_signed_by grep -qx 'Signed-By: /etc/apt/keyrings/ecr-edge.asc' /etc/apt/sources.list.d/ecr-edge.sources
else
  step "1. apt install ./ecr-edge.deb, as the README says"
  start=$(date +%s)
  check apt_install sh -c "cd $in && apt install -y ./ecr-edge.deb"
  result install_seconds $(( $(date +%s) - start ))
fi
check helper_link test "$(readlink /usr/bin/docker-credential-ecr-edge)" = ecr-edge
check provider_link test "$(readlink -f /usr/libexec/ecr-edge/ecr-edge-credential-provider)" = /usr/bin/ecr-edge
check user_and_group sh -c 'getent passwd ecr-edge && getent group ecr-edge'
check conffile grep -qx /etc/ecr-edge/config.toml /var/lib/dpkg/info/ecr-edge.conffiles
check man_page test -f /usr/share/man/man1/ecr-edge.1.gz
check enabled systemctl is-enabled ecr-edge
systemctl start ecr-edge
systemctl show -p ActiveState,SubState,Result ecr-edge
# shellcheck disable=SC2016 # expanded by the inner shell
check skipped_until_configured sh -c 'test "$(systemctl show -p ActiveState --value ecr-edge)" = inactive && test "$(systemctl show -p Result --value ecr-edge)" = exec-condition'
result installed_kib "$(dpkg-query -W -f '${Installed-Size}' ecr-edge)"
result binary_bytes "$(stat -c %s /usr/bin/ecr-edge)"

if [ "$PHASE" = main ]; then
  step "2. first boot as the Yocto example provisions it: the identity from /boot, restart"
  # Installed as the example bbappend installs them; its config.toml.in gets the lab's trust
  # anchor for the IoT endpoint, a short backoff and a sink.
  install -m 0755 "$in/yocto/ecr-edge-provision" /usr/libexec/ecr-edge/ecr-edge-provision
  install -m 0644 "$in/yocto/ecr-edge-provision.service" /etc/systemd/system/
  sed '/^key = /a ca = "/etc/ecr-edge/lab-ca.pem"' "$in/yocto/config.toml.in" > /etc/ecr-edge/config.toml.in
  printf 'backoff_max = 4\n\n[[daemon.sink]]\nkind = "docker-auths"\npath = "/run/ecr-edge/auth.json"\n' >> /etc/ecr-edge/config.toml.in
  install -m 0644 "$in/ca.pem" /etc/ecr-edge/lab-ca.pem
  # What the technician puts on the boot partition.
  mkdir -p /boot/ecr-edge
  cp "$in/device.pem.crt" "$in/private.pem.key" /boot/ecr-edge/
  echo "$THING_NAME" > /boot/ecr-edge/thing-name
  lab_dropin
  systemctl daemon-reload
  check provision_ran systemctl start ecr-edge-provision
  check provision_boot_emptied sh -c '! ls /boot/ecr-edge/* 2>/dev/null'
  check provision_key_owner test "$(stat -c '%a %U' /etc/ecr-edge/private.pem.key)" = "600 ecr-edge"
  check provision_thing_name grep -qx "thing_name = \"$THING_NAME\"" /etc/ecr-edge/config.toml
  # shellcheck disable=SC2016 # expanded by the inner shell
  check provision_skipped_after sh -c 'systemctl restart ecr-edge-provision && test "$(systemctl show -p ConditionResult --value ecr-edge-provision)" = no'
  rm -f /usr/libexec/ecr-edge/ecr-edge-provision /etc/systemd/system/ecr-edge-provision.service /etc/ecr-edge/config.toml.in
  rmdir /boot/ecr-edge
else
  step "2. provision the IoT identity, configure, restart"
  provision ecr-edge
  # The daemon's debug events in the journal: what it was doing if the watchdog ever stops it
  # while the clock is wrong (seen once in CI, not reproduced).
  printf '[Service]\nEnvironment=ECR_EDGE_LOG=debug\n' > /etc/systemd/system/ecr-edge.service.d/debug.conf
fi
systemctl daemon-reload
start=$(date +%s%N)
check restart systemctl restart ecr-edge
result ready_ms $(( ($(date +%s%N) - start) / 1000000 ))
if [ "$PHASE" = main ]; then
  check active systemctl is-active ecr-edge
  pid=$(daemon_pid)
  read -r rss anon file < <(mem_kb "$pid")
  result rss_idle_kib "$rss"
  result rss_idle_anon_kib "$anon"
  result rss_idle_file_kib "$file"
  # The unit's bounds reach the running process (descriptors) and its cgroup (memory, tasks).
  check limit_nofile grep -Eq '^Max open files +1024 +1024 ' "/proc/$pid/limits"
  # shellcheck disable=SC2016 # expanded by the inner shell
  check limit_memory_tasks sh -c 'test "$(systemctl show -p MemoryMax --value ecr-edge)" = 134217728 && test "$(systemctl show -p TasksMax --value ecr-edge)" = 64'
  check status ecr-edge status
  step "   the watchdog over more than two periods"
  sleep $(( WATCHDOG_SEC * 2 + 5 ))
  check still_active systemctl is-active ecr-edge
  check same_process test "$(daemon_pid)" = "$pid"
  check no_watchdog_kill sh -c '! journalctl -u ecr-edge --no-pager | grep -qi watchdog'
  step "   reload"
  sed -i 's/^backoff_max = 4$/backoff_max = 5/' /etc/ecr-edge/config.toml
  check reload systemctl reload ecr-edge
  sleep 2
  check reloaded_same_process test "$(daemon_pid)" = "$pid"
  check reload_logged sh -c 'journalctl -u ecr-edge --no-pager | grep "configuration reloaded"'
  # Native journal entries: the registry is a field journalctl selects by, with its priority.
  check journal_by_registry sh -c "journalctl -u ecr-edge --no-pager REGISTRY=$REG_HOST | grep 'token refreshed'"
  check journal_priority sh -c "journalctl -u ecr-edge --no-pager -p info REGISTRY=$REG_HOST -o verbose | grep -q PRIORITY=6"

  step "3. who is served: alice (group ecr-edge) by the daemon, bob by his own helper"
  usermod -aG ecr-edge alice
  out_alice=$(get_as alice ECR_EDGE_LOG=debug 2>"$out/alice.stderr")
  check alice_get grep -q '"Secret"' <<<"$out_alice"
  check alice_from_daemon grep -q "served by the daemon" "$out/alice.stderr"
  for _ in $(seq 10); do get_as alice > /dev/null 2>&1; done
  result rss_after_10_gets_kib "$(rss_kb "$(daemon_pid)")"
  # bob has AWS keys of his own (and no configuration file): the socket refuses him (not in
  # group ecr-edge), and his helper fetches with his keys.
  install -o bob -m 0644 /dev/null /home/bob/none.toml
  bob_env=(ECR_EDGE_CONFIG=/home/bob/none.toml AWS_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID"
    AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" AWS_SESSION_TOKEN="$AWS_SESSION_TOKEN"
    AWS_REGION="$REGION" AWS_EC2_METADATA_DISABLED=true)
  out_bob=$(get_as bob ECR_EDGE_LOG=debug "${bob_env[@]}" 2>"$out/bob.stderr")
  check bob_get grep -q '"Secret"' <<<"$out_bob"
  check bob_refused_by_daemon grep -q "Permission denied.*agent.sock\|agent.sock.*ermission" "$out/bob.stderr"
  check bob_not_from_daemon sh -c "! grep -q 'served by the daemon' '$out/bob.stderr'"
  check sink_mode_owner test "$(stat -c '%a %U' /run/ecr-edge/auth.json)" = "600 ecr-edge"
  cp /run/ecr-edge/auth.json "$out/sink.json"
  # The helper's peak RSS for a cached get (bob's own cache, no daemon asked), exactly: the
  # probe (benches/floor/probe.c) reads VmHWM, RssAnon and RssFile as the helper exits; its
  # floor is a static program that exits at once.
  install -m 0755 "$in/probe" "$in/floor" /usr/local/bin/
  read -r hwm anon file < <(echo "$REG_HOST" | as_user bob "${bob_env[@]}" ECR_EDGE_SOCKET=/nonexistent \
    /usr/local/bin/probe "$(command -v docker-credential-ecr-edge)" get)
  check helper_peak_measured test "${hwm:-0}" -gt 0
  result helper_cached_get_peak_rss_kib "$hwm"
  result helper_cached_get_anon_kib "$anon"
  result helper_cached_get_file_kib "$file"
  result probe_floor_kib "$(/usr/local/bin/probe /usr/local/bin/floor | cut -d' ' -f1)"

  step "4. uplink lost"
  uplink down
  sleep "$OUTAGE_SEC"
  check served_offline get_as alice
  ecr-edge status > "$out/offline.status" 2>&1; cat "$out/offline.status"
  check offline_status_shows_error grep -q "last error" "$out/offline.status"
  check offline_still_active systemctl is-active ecr-edge
  uplink up
  step "   uplink back"
  recovered=fail
  for _ in $(seq 60); do
    if ecr-edge status --json | grep -q '"last_error": *null'; then recovered=pass; break; fi
    sleep 1
  done
  result recovered_by_itself "$recovered"
  ecr-edge status

  step "5c. memory over many refreshes: eight registries, tokens refreshed every 4-5 s"
  # The host's fake issues tokens of 310 s while asked to (tests/lab.rs, TOKEN_LIFE_SHORT).
  # The anonymous memory is sampled with one registry and no transient thread: after a first
  # round of 130 refreshes (what eight registries allocate, warmed up), then after 100 more;
  # the host compares the two.
  pid=$(daemon_pid)
  tokens() { /usr/lib/apt/apt-helper download-file "http://packages.example.com/ecr-edge/lab/tokens-$1" "/tmp/tokens-$1" > /dev/null; }
  registries() {  # one|many: the lab's registry alone, or with seven more accounts' (reloaded)
    local list="\"$REG_HOST\"" i
    if [ "$1" = many ]; then
      for i in 1 2 3 4 5 6 7; do list="$list, \"10000000000$i.dkr.ecr.$REGION.amazonaws.com\""; done
    fi
    sed -i "s/^registries = .*/registries = [$list]/" /etc/ecr-edge/config.toml
    systemctl reload ecr-edge
  }
  refreshes() { journalctl -u ecr-edge --no-pager -o cat | grep -c 'token refreshed'; }
  more_refreshes() {  # N: waits until N more tokens were refreshed, at most 5 minutes
    local until=$(( $(refreshes) + $1 ))
    for _ in $(seq 300); do [ "$(refreshes)" -ge "$until" ] && return 0; sleep 1; done
    return 1
  }
  settle() {  # back to one registry and the lab's tokens; the last short one refreshed
    registries one
    tokens normal
    sleep 10
  }
  round() {  # name N: N refreshes of eight registries, then the quiet figures
    local first
    tokens short; registries many
    first=$(refreshes)
    check "refresh_$1_done" more_refreshes "$2"
    result "refresh_$1_count" $(( $(refreshes) - first ))
    settle
    read -r rss anon file < <(quiet_mem_kb "$pid")
    result "refresh_$1_transient_threads" "$(transient_threads "$pid")"
    result "refresh_$1_rss_kib" "$rss"
    result "refresh_$1_anon_kib" "$anon"
    result "refresh_$1_file_kib" "$file"
  }
  round warm 130
  round after 100
  check refresh_same_process test "$(daemon_pid)" = "$pid"

  step "6. doctor --json on the real kernel"
  ecr-edge configure --registry "$REG_HOST"
  SSL_CERT_FILE=/etc/ecr-edge/lab-ca.pem ecr-edge doctor --json > "$out/doctor.json"
  result doctor_exit $?

  step "7. upgrade through the repository, with the daemon running"
  pid=$(daemon_pid)
  before=$(dpkg-query -W -f '${Version}' ecr-edge)
  result version_before "$before"
  candidate() { apt-cache policy ecr-edge | awk '/Candidate:/ { print $2 }'; }
  # The same packages and the next release, signed by another key, at another path: trusted
  # with ecr-edge's key only, apt refuses them.
  sed 's|/ecr-edge/apt|/ecr-edge/other/apt|' /etc/apt/sources.list.d/ecr-edge.sources \
    > /etc/apt/sources.list.d/other.sources
  apt-get update > "$out/apt-other.txt" 2>&1
  result other_key_update_exit $?
  cat "$out/apt-other.txt"
  check other_key_refused grep -q 'NO_PUBKEY' "$out/apt-other.txt"
  check other_key_not_used test "$(candidate)" = "$before"
  rm /etc/apt/sources.list.d/other.sources
  # The release manager publishes the next release: the lab's server turns to the repository
  # that also holds it (same key).
  check published /usr/lib/apt/apt-helper download-file http://packages.example.com/ecr-edge/lab/publish-next /tmp/published
  check apt_update apt-get update
  next=$(candidate)
  result version_offered "$next"
  check next_offered test "$next" != "$before"
  check upgrade apt-get upgrade -y
  check upgraded_version test "$(dpkg-query -W -f '${Version}' ecr-edge)" = "$next"
  result version_after "$(dpkg-query -W -f '${Version}' ecr-edge)"
  sleep 2
  check upgrade_active systemctl is-active ecr-edge
  check upgrade_restarted test "$(daemon_pid)" != "$pid"
  result upgrade_daemon_pids "$pid,$(daemon_pid)"
  # The daemon runs the file dpkg just unpacked (a new inode), not the deleted old one.
  check upgrade_new_binary test "$(stat -L -c %i "/proc/$(daemon_pid)/exe")" = "$(stat -c %i /usr/bin/ecr-edge)"
  check conffile_kept grep -qx 'backoff_max = 5' /etc/ecr-edge/config.toml
  refetched=fail
  for _ in $(seq 30); do
    if ecr-edge status --json | grep -q '"expires_at": *[0-9]'; then refetched=pass; break; fi
    sleep 1
  done
  result upgrade_token_refetched "$refetched"
  out_up=$(get_as alice 2>/dev/null || true)
  check upgrade_alice_served grep -q '"Secret"' <<<"$out_up"

  step "8. purge, then the wrong architecture"
  systemctl stop ecr-edge
  rm -rf /etc/systemd/system/ecr-edge.service.d /etc/ecr-edge/lab-ca.pem /etc/ecr-edge/device.pem.crt /etc/ecr-edge/private.pem.key
  # The kubelet provider for k3s, made by configure: purging takes it out too.
  check k3s_configured ecr-edge configure --k3s
  check k3s_link test -L /var/lib/rancher/credentialprovider/bin/ecr-edge-credential-provider
  check purge dpkg --purge ecr-edge
  check nothing_left sh -c '! ls -d /etc/ecr-edge /usr/bin/ecr-edge /usr/libexec/ecr-edge /run/ecr-edge /var/lib/rancher 2>/dev/null && ! getent passwd ecr-edge'
  # Only where the CPU cannot run the other package: an arm64 CPU runs armhf programs (the
  # armhf package installs there, as on a Raspberry Pi with a 64-bit kernel), an armhf one
  # cannot run arm64 programs.
  if [ -f "$in/wrong.deb" ]; then
    if dpkg -i --force-architecture "$in/wrong.deb" > "$out/wrong.log" 2>&1; then
      result wrong_arch_refused fail
    else
      result wrong_arch_refused pass
    fi
    cat "$out/wrong.log"
    check wrong_arch_message grep -q "cannot run arm64 programs" "$out/wrong.log"
    check wrong_arch_not_unpacked test ! -e /usr/bin/ecr-edge
  fi
else
  step "5. no real-time clock: $(date -u +%FT%TZ)"
  result clock_at_boot "$(date -u +%F)"
  ecr-edge configure --registry "$REG_HOST"
  usermod -aG ecr-edge alice
  # The clock stays wrong: certificates are judged no earlier than the floor, and AWS's time
  # comes from the first verified answer.
  served_within_a_minute get_with_wrong_clock "$out/early.err"
  result first_token_uptime_s "$(cut -d. -f1 /proc/uptime)"
  check clock_still_wrong test "$(date +%s)" -lt "$HOST_NOW"
  ecr-edge status --json > "$out/early.json" 2>&1
  check status_clock_source_aws grep -q '"source": *"aws"' "$out/early.json"
  ecr-edge status > "$out/early.status" 2>&1
  check status_says_aws_time grep -q "uses AWS's time" "$out/early.status"
  check floor_kept test -s /var/lib/ecr-edge/time-floor
  SSL_CERT_FILE=/etc/ecr-edge/lab-ca.pem ecr-edge doctor > "$out/doctor.txt" 2>&1
  result doctor_exit $?
  check doctor_says_aws_time grep -q "ecr-edge uses AWS's time" "$out/doctor.txt"
  check daemon_still_running systemctl is-active ecr-edge
  # A TLS client of the system's own (apt's https method, GnuTLS) judges the registry's
  # certificate, issued yesterday, by the system clock: not yet valid.
  wrong_clock=$(date +%s)
  tls_probe early
  check system_tls_refused_with_wrong_clock grep -qi "certificate" "$out/tls-early.txt"
  # A device certificate that expired yesterday, still valid by this wall clock (months behind):
  # judged no earlier than the floor the daemon kept, it is refused before any exchange.
  mkdir -p /root/expired
  install -m 0600 "$in/expired/device.pem.crt" "$in/expired/private.pem.key" /root/expired/
  sed -e 's#/etc/ecr-edge/device.pem.crt#/root/expired/device.pem.crt#' \
    -e 's#/etc/ecr-edge/private.pem.key#/root/expired/private.pem.key#' \
    /etc/ecr-edge/config.toml > /root/expired.toml
  SSL_CERT_FILE=/etc/ecr-edge/lab-ca.pem ecr-edge --config /root/expired.toml credentials \
    > "$out/expired.out" 2> "$out/expired.err"
  result expired_credentials_exit $?
  cat "$out/expired.err"
  check expired_before_floor_refused grep -q "device certificate expired at" "$out/expired.err"
  pid=$(daemon_pid)
  step "   the clock is set, as NTP would"
  date -u -s "@$(( HOST_NOW + $(cut -d. -f1 /proc/uptime) ))"
  recovered=fail
  for _ in $(seq 60); do
    if echo "$REG_HOST" | as_user alice docker-credential-ecr-edge get > /dev/null 2>&1 \
      && ecr-edge status --json | grep -q '"last_error": *null'; then recovered=pass; break; fi
    sleep 1
  done
  result recovered_without_restart "$recovered"
  check same_daemon_after_clock test "$(daemon_pid)" = "$pid"
  ecr-edge status --json > "$out/late.json" 2>&1
  check status_clock_source_system grep -q '"source": *"system"' "$out/late.json"
  ecr-edge status
  step "   set_clock: the clock back in the past, the README's drop-in, the daemon sets it"
  date -u -s "@$wrong_clock" > /dev/null
  sed -i '/^backoff_max = 4$/a set_clock = "when-unsynchronized"' /etc/ecr-edge/config.toml
  install -m 0644 "$in/clock-dropin.conf" /etc/systemd/system/ecr-edge.service.d/clock.conf
  systemctl daemon-reload
  check set_clock_restart systemctl restart ecr-edge
  start_s=$(cut -d. -f1 /proc/uptime)
  set=fail
  for _ in $(seq 60); do
    if [ "$(date +%s)" -ge "$HOST_NOW" ]; then set=pass; break; fi
    sleep 1
  done
  result clock_set_by_daemon "$set"
  result set_clock_seconds "$(( $(cut -d. -f1 /proc/uptime) - start_s ))"
  check set_clock_logged sh -c "journalctl -u ecr-edge --no-pager | grep -q \"set the system clock to AWS's time\""
  # The daemon's own view once it next hears AWS: the system clock agrees (source system).
  for _ in $(seq 40); do
    ecr-edge status --json > "$out/set.json" 2>&1
    grep -q '"source": *"system"' "$out/set.json" && break
    sleep 1
  done
  check status_after_set_clock grep -q '"source": *"system"' "$out/set.json"
  result offset_after_set_clock "$(sed -n 's/.*"offset_seconds": *\(-*[0-9]*\).*/\1/p' "$out/set.json")"
  tls_probe late
  check system_tls_ok_after_set_clock sh -c "! grep -qi certificate '$out/tls-late.txt' && grep -Eq '[45][0-9][0-9]' '$out/tls-late.txt'"
  served_within_a_minute get_after_set_clock "$out/late.err"
  step "   reboot, with the network brought up at boot by systemd-networkd as on a device"
  cat /var/lib/ecr-edge/time-floor > /var/lib/lab-floor1
  dev=$(ip -o link show | awk -F': ' '$2 != "lo" { print $2; exit }')
  printf '[Match]\nName=%s\n\n[Network]\nAddress=10.0.2.15/24\nGateway=10.0.2.2\n' "$dev" \
    > /etc/systemd/network/lab.network
  systemctl enable systemd-networkd
  journalctl -u ecr-edge --no-pager -o short-monotonic > "$out/journal-boot1.txt" 2>&1
  sync
  # The second boot runs this scenario again, from the top (the block for /var/lib/lab-floor1).
  systemctl reboot
  sleep 600
  exit 1
fi
journalctl -u ecr-edge --no-pager -o short-monotonic > "$out/journal.txt" 2>&1
step "done"
result "done" yes
