#!/usr/bin/env bash
# Starts libvirtd (and virtlogd) by hand when no service manager runs them, and stops only
# what it started.
#   scripts/libvirtd.sh start   prints the pids it started (none when the daemons already ran)
#   scripts/libvirtd.sh stop PID...
set -euo pipefail

log() { printf 'libvirtd.sh: %s\n' "$*" >&2; }
SOCKET=/run/libvirt/libvirt-sock
# The remote-URI tests reach this daemon as qemu+tcp://127.0.0.1/system. Unauthenticated TCP
# on loopback is for a test daemon only: any local user can use it while it runs.
CONF=/run/kiln-libvirtd.conf
TCP_PORT=16509

write_conf() {
  cat >"$CONF" <<'CONF'
listen_tls = 0
listen_tcp = 1
listen_addr = "127.0.0.1"
auth_tcp = "none"
CONF
}

start() {
  local started=()
  write_conf
  # QEMU runs as libvirt-qemu (group kvm). A root-only /dev/kvm makes libvirt re-probe QEMU
  # on every define (~50 s); kiln still picks TCG itself where KVM cannot run guests.
  if [ -c /dev/kvm ] && [ "$(stat -c %G /dev/kvm)" != kvm ] && getent group kvm >/dev/null; then
    chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
  fi
  if ! pgrep -x virtlogd >/dev/null; then
    virtlogd -d
    started+=("$(pgrep -nx virtlogd)")
  fi
  if ! pgrep -x libvirtd >/dev/null; then
    rm -f "$SOCKET"
    libvirtd -d --listen -f "$CONF"
    started+=("$(pgrep -nx libvirtd)")
  fi
  for _ in $(seq 100); do
    [ -S "$SOCKET" ] && break
    sleep 0.1
  done
  [ -S "$SOCKET" ] || { log "libvirtd did not create $SOCKET"; exit 1; }
  if ! (exec 3<>/dev/tcp/127.0.0.1/$TCP_PORT) 2>/dev/null; then
    log "libvirtd does not listen on 127.0.0.1:$TCP_PORT; the qemu+tcp:// tests will fail." \
      "Restart it with: libvirtd -d --listen -f $CONF (see $0)"
  fi
  [ ${#started[@]} -eq 0 ] || log "started pids ${started[*]}"
  echo "${started[*]}"
}

stop() {
  local pid
  for pid in "$@"; do
    kill "$pid" 2>/dev/null || true
  done
}

case "${1:-}" in
  start) start ;;
  stop) shift; stop "$@" ;;
  *) echo "usage: $0 start | stop PID..." >&2; exit 2 ;;
esac
