#!/bin/bash
# The device-lab scenario, run inside a Debian 12 guest (arm64 or armhf) under full-system
# emulation by tests/lab.rs, as root, at the end of boot. Inputs are in /lab/in (the payload
# disk); results go to /lab/out: `results` (one `name=value` line per check and figure, read by
# the host), `transcript` (every command and its output) and the journal.
#
# PHASE=main: the README's by-hand install, daemon, debug logs, certificate rotation and
# removal, as written; then the package: install, the Yocto example's first-boot provisioning,
# run the daemon under systemd, serve, lose and regain the uplink, measure, upgrade, purge,
# refuse the wrong architecture.
# PHASE=rtc: the guest booted with its clock at 1970: install, provision, doctor names the
# clock, the daemon serves nothing wrong and recovers once the clock is set.
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
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
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
get_as() {  # user [VAR=value...]: docker-credential-ecr-edge get for the lab registry
  local user=$1; shift
  echo "$REG_HOST" | as_user "$user" "$@" docker-credential-ecr-edge get
}

step "$PHASE on $(uname -m), kernel $(uname -r), $(date -u +%FT%TZ)"
result arch "$(uname -m)"
cat "$in/hosts" >> /etc/hosts
uplink up
useradd --create-home alice; useradd --create-home bob

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

step "1. apt install ./ecr-edge.deb, as the README says"
start=$(date +%s)
check apt_install sh -c "cd $in && apt install -y ./ecr-edge.deb"
result install_seconds $(( $(date +%s) - start ))
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
fi
systemctl daemon-reload
start=$(date +%s%N)
check restart systemctl restart ecr-edge
result ready_ms $(( ($(date +%s%N) - start) / 1000000 ))
if [ "$PHASE" = main ]; then
  check active systemctl is-active ecr-edge
  pid=$(daemon_pid)
  result rss_idle_kib "$(rss_kb "$pid")"
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
  # The helper's peak RSS for a cached get (bob's own cache, no daemon asked).
  echo "$REG_HOST" | as_user bob "${bob_env[@]}" ECR_EDGE_SOCKET=/nonexistent \
    /usr/bin/time -f '%M' -o /tmp/helper.rss docker-credential-ecr-edge get > /dev/null
  result helper_cached_get_peak_rss_kib "$(tail -1 /tmp/helper.rss)"

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

  step "6. doctor --json on the real kernel"
  ecr-edge configure --registry "$REG_HOST"
  SSL_CERT_FILE=/etc/ecr-edge/lab-ca.pem ecr-edge doctor --json > "$out/doctor.json"
  result doctor_exit $?

  step "7. upgrade: the next revision installed over the running daemon"
  pid=$(daemon_pid)
  next=$(dpkg-deb -f "$in/ecr-edge-next.deb" Version)
  check upgrade sh -c "cd $in && apt install -y ./ecr-edge-next.deb"
  check upgraded_version test "$(dpkg-query -W -f '${Version}' ecr-edge)" = "$next"
  sleep 2
  check upgrade_active systemctl is-active ecr-edge
  check upgrade_restarted test "$(daemon_pid)" != "$pid"
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
  SSL_CERT_FILE=/etc/ecr-edge/lab-ca.pem ecr-edge doctor > "$out/doctor.txt" 2>&1
  result doctor_exit $?
  check doctor_names_clock grep -i "clock" "$out/doctor.txt"
  usermod -aG ecr-edge alice
  sleep 5
  # Before the clock is set: TLS certificates are "not yet valid"; no token can be had, and
  # none is handed out.
  get_as alice > "$out/early.out" 2> "$out/early.err"; result get_before_clock_set_exit $?
  check nothing_served_before_clock sh -c "! grep -q Secret '$out/early.out'"
  ecr-edge status > "$out/early.status" 2>&1
  check daemon_still_running systemctl is-active ecr-edge
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
  ecr-edge status
fi
journalctl -u ecr-edge --no-pager -o short-monotonic > "$out/journal.txt" 2>&1
step "done"
result "done" yes
