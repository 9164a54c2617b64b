#!/usr/bin/env bash
# Starts libvirtd (and virtlogd) by hand when no service manager runs them, plus an sshd on
# loopback through which the tests reach that daemon as a remote host; stops only what it
# started.
#   scripts/libvirtd.sh start [OWNER_PID]   prints the pids it started. With OWNER_PID, a
#                                           watchdog stops them once that process is gone,
#                                           even if it was killed with SIGKILL.
#   scripts/libvirtd.sh stop PID...
#
# The daemon serves only its UNIX socket (root-only). Remote tests connect with
#   qemu+ssh://root@127.0.0.1:16522/system?command=$SSH_DIR/ssh&no_tty=1
# to an sshd that listens on 127.0.0.1 only and takes one key made for this run (no
# passwords). $SSH_DIR/ssh runs OpenSSH with that key and a known_hosts file that pins the
# host key made with it (strict checking; root's ~/.ssh is left alone). Everything lives in
# $SSH_DIR (0700, root's).
set -euo pipefail

log() { printf 'libvirtd.sh: %s\n' "$*" >&2; }
SOCKET=/run/libvirt/libvirt-sock
SSH_DIR=/run/kiln-test-ssh
SSH_PORT=16522

# Whether PID is a live process, not a zombie (PID 1 here reaps late).
alive() {
  local state
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) && [ "$state" != Z ]
}

# Whether a live process has this exact name.
running() {
  local pid
  for pid in $(pgrep -x "$1"); do
    alive "$pid" && return 0
  done
  return 1
}

sshd_running() {
  [ -s "$SSH_DIR/sshd.pid" ] && alive "$(cat "$SSH_DIR/sshd.pid")"
}

# Prints the pid of the sshd it started, nothing when one already runs.
start_sshd() {
  if sshd_running; then
    return 0
  fi
  command -v /usr/sbin/sshd >/dev/null || { log "no /usr/sbin/sshd: run scripts/setup.sh"; exit 1; }
  rm -rf "$SSH_DIR"
  mkdir -m 0700 "$SSH_DIR"
  mkdir -p /run/sshd
  ssh-keygen -q -t ed25519 -N '' -C kiln-test-host -f "$SSH_DIR/host_key"
  ssh-keygen -q -t ed25519 -N '' -C kiln-test-client -f "$SSH_DIR/client_key"
  cp "$SSH_DIR/client_key.pub" "$SSH_DIR/authorized_keys"
  printf '[127.0.0.1]:%s %s\n' "$SSH_PORT" "$(cut -d' ' -f1,2 "$SSH_DIR/host_key.pub")" \
    >"$SSH_DIR/known_hosts"
  cat >"$SSH_DIR/ssh" <<SSH
#!/bin/sh
exec ssh -o UserKnownHostsFile=$SSH_DIR/known_hosts -o GlobalKnownHostsFile=/dev/null \\
  -o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes \\
  -i $SSH_DIR/client_key "\$@"
SSH
  chmod 0700 "$SSH_DIR/ssh"
  cat >"$SSH_DIR/sshd_config" <<CONF
ListenAddress 127.0.0.1
Port $SSH_PORT
HostKey $SSH_DIR/host_key
PidFile $SSH_DIR/sshd.pid
AuthorizedKeysFile $SSH_DIR/authorized_keys
AllowUsers root
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
X11Forwarding no
AllowTcpForwarding no
CONF
  /usr/sbin/sshd -f "$SSH_DIR/sshd_config"
  for _ in $(seq 50); do
    sshd_running && break
    sleep 0.1
  done
  sshd_running || { log "sshd did not start (config: $SSH_DIR/sshd_config)"; exit 1; }
  cat "$SSH_DIR/sshd.pid"
}

start() {
  local owner=${1:-} started=()
  # QEMU runs as libvirt-qemu (group kvm). A root-only /dev/kvm makes libvirt re-probe QEMU
  # on every define (~50 s); kiln still picks TCG itself where KVM cannot run guests.
  if [ -c /dev/kvm ] && [ "$(stat -c %G /dev/kvm)" != kvm ] && getent group kvm >/dev/null; then
    chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
  fi
  if ! running virtlogd; then
    virtlogd -d
    started+=("$(pgrep -nx virtlogd)")
  fi
  if ! running libvirtd; then
    rm -f "$SOCKET"
    # No --listen: the UNIX socket only. Remote access goes through sshd.
    libvirtd -d
    started+=("$(pgrep -nx libvirtd)")
  fi
  for _ in $(seq 100); do
    [ -S "$SOCKET" ] && break
    sleep 0.1
  done
  [ -S "$SOCKET" ] || { log "libvirtd did not create $SOCKET"; exit 1; }
  if ss -Hltn "sport = :16509" 2>/dev/null | grep -q .; then
    log "warning: a libvirtd listens on TCP port 16509 (unauthenticated?); kiln's tests do not use it"
  fi
  local sshd
  sshd=$(start_sshd)
  [ -z "$sshd" ] || started+=("$sshd")
  if [ -n "$owner" ] && [ ${#started[@]} -gt 0 ]; then
    # Outlives this script, not the owner: stops the daemons even if the owner is killed.
    setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; shift; kill "$@" 2>/dev/null' \
      watchdog "$owner" "${started[@]}" </dev/null >/dev/null 2>&1 &
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
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) echo "usage: $0 start [OWNER_PID] | stop PID..." >&2; exit 2 ;;
esac
