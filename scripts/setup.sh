#!/usr/bin/env bash
# Installs what kiln needs on a Debian 12 host, idempotently: QEMU 10 from bookworm-backports
# (the image's qemu-utils 10 conflicts with bookworm's qemu-system 7.2), busybox-static, the
# tools kiln's image builder calls (apt-get download, dpkg-deb), and libvirt (daemon, headers,
# dnsmasq) for the libvirt backend. Safe to run again: it only acts
# on what is missing.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

ensure_backports_source() {
  local list=/etc/apt/sources.list.d/kiln-bookworm-backports.sources
  if grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null; then
    return 0
  fi
  # Reuse the mirror of the existing Debian source instead of hard-coding one.
  local uri
  uri=$(awk '/^URIs:/ && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  if [ -z "$uri" ]; then
    uri=$(awk '/^deb / && $0 !~ /security/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
  fi
  [ -n "$uri" ] || { log "cannot find the Debian mirror in /etc/apt; add bookworm-backports by hand"; exit 1; }
  log "adding bookworm-backports from $uri"
  as_root tee "$list" >/dev/null <<SRC
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  APT_UPDATED=0
}

APT_UPDATED=0
apt_update_once() {
  if [ "$APT_UPDATED" -eq 0 ]; then
    log "apt-get update"
    as_root apt-get update -qq
    APT_UPDATED=1
  fi
}

missing_packages() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || printf '%s ' "$p"
  done
}

main() {
  export DEBIAN_FRONTEND=noninteractive
  ensure_backports_source
  # kiln's image builder runs `apt-get download` for the kernel: that needs fresh package lists.
  if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*bookworm-backports*Packages*' -print -quit 2>/dev/null)" ]; then
    APT_UPDATED=0
    apt_update_once
  fi

  local want_bpo want
  want_bpo=$(missing_packages qemu-system-x86)
  if [ -n "$want_bpo" ]; then
    apt_update_once
    log "installing from bookworm-backports: $want_bpo"
    # shellcheck disable=SC2086
    as_root apt-get install -y -qq -t bookworm-backports --no-install-recommends $want_bpo qemu-system-data >/dev/null
  fi
  # libvirt: the daemon, its headers for the `virt` crate, dnsmasq and iptables for NAT
  # networks; iproute2 for the network namespaces of the named-network tests; passt for the
  # user-mode NIC's default policy (outbound NAT that does not reach the host's loopback).
  # virt-xml-validate (libvirt-clients, with xmllint from libxml2-utils) checks the XML goldens.
  # mmdebstrap and e2fsprogs build the Debian userland images (`kiln image build debian`).
  want=$(missing_packages busybox-static dpkg xz-utils libvirt-daemon-system libvirt-dev \
    pkg-config dnsmasq-base iptables iproute2 passt libvirt-clients libxml2-utils \
    mmdebstrap e2fsprogs)
  if [ -n "$want" ]; then
    apt_update_once
    log "installing: $want"
    # shellcheck disable=SC2086
    as_root apt-get install -y -qq --no-install-recommends $want >/dev/null
  fi
  # sshd: the tests reach their libvirtd as a remote host over SSH (scripts/libvirtd.sh runs a
  # private sshd on loopback). The package's own service is not started: policy-rc.d says no.
  want=$(missing_packages openssh-server openssh-client)
  if [ -n "$want" ]; then
    apt_update_once
    log "installing (services not started): $want"
    local policy=/usr/sbin/policy-rc.d
    local had_policy=0
    [ -e "$policy" ] && had_policy=1
    [ "$had_policy" -eq 1 ] || printf '#!/bin/sh\nexit 101\n' | as_root install -m 0755 /dev/stdin "$policy"
    # shellcheck disable=SC2086
    as_root apt-get install -y -qq --no-install-recommends $want >/dev/null
    [ "$had_policy" -eq 1 ] || as_root rm -f "$policy"
  fi
  # The user passt runs as: kiln makes the firewall refuse its connections to the host's
  # loopback (passt forwards any destination a guest routes to it).
  if ! getent passwd kiln-net >/dev/null; then
    log "adding system user kiln-net (passt runs as it)"
    as_root useradd --system --no-create-home --shell /usr/sbin/nologin --user-group kiln-net
  fi
  log "ready: $(qemu-system-x86_64 --version | head -n1)"
}

main "$@"
