#!/usr/bin/env bash
# Starts libvirtd (and virtlogd) by hand when no service manager runs them, and stops only
# what it started.
#   scripts/libvirtd.sh start   prints the pids it started (none when the daemons already ran)
#   scripts/libvirtd.sh stop PID...
set -euo pipefail

log() { printf 'libvirtd.sh: %s\n' "$*" >&2; }
SOCKET=/run/libvirt/libvirt-sock

start() {
  local started=()
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
    libvirtd -d
    started+=("$(pgrep -nx libvirtd)")
  fi
  for _ in $(seq 100); do
    [ -S "$SOCKET" ] && break
    sleep 0.1
  done
  [ -S "$SOCKET" ] || { log "libvirtd did not create $SOCKET"; exit 1; }
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
