//! The initramfs: busybox, the kernel modules, the agent, and an init script that loads the
//! modules, mounts the basics, sets up the network and keeps the agent running.

use std::path::Path;

use super::ImageError;
use super::cpio::CpioWriter;
use super::kernel::Module;
use crate::IoError;

/// What goes into the archive.
#[derive(Debug)]
pub struct InitramfsParts<'a> {
    pub busybox: &'a Path,
    pub agent: &'a Path,
    /// Loaded by every guest, in this order.
    pub modules: &'a [Module],
    /// Loaded after them by a guest with shares (9p).
    pub share_modules: &'a [Module],
}

/// `/init`, stage one: mounts the basics, loads the modules and mounts the config drive
/// (`kiln-config`) read-only at `/run/kiln/config`. Module parameters the kernel
/// command line carries (`virtio_mmio.device=…`, which QEMU's microvm adds for its devices)
/// are passed to `insmod`, which does not read them itself. With `kiln.root=SERIAL` it mounts
/// the virtio disk with that serial, hands busybox, the agent and stage two over on the
/// `/run` tmpfs (`/run/kiln`), and switches root into the disk: to stage two (fast mode) or
/// to `/sbin/init` (full mode, whose agent unit runs stage two). Without a root disk, or if it
/// cannot be mounted, stage two runs in the RAM root.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /tmp /run /root /newroot
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
# No command substitution here or in stage two: each one forks, and under TCG a fork costs
# milliseconds. Files are read with `read`, a shell builtin.
read -r cmdline < /proc/cmdline
load_modules() {
  while read -r m; do
    params=
    for p in $cmdline; do
      case "$p" in "$m".*) params="$params ${p#"$m".}" ;; esac
    done
    # shellcheck disable=SC2086
    insmod "/lib/modules/$m.ko" $params 2>/dev/null || echo "kiln-init: cannot load $m"
  done < "$1"
}
load_modules /etc/kiln/modules
# 9p only for a guest with shares (warm-start templates never have one).
case " $cmdline " in *" kiln.share="*) load_modules /etc/kiln/modules.shares ;; esac
# The config drive, read-only; it stays mounted on /run whatever root the guest switches to.
mkdir -p /run/kiln/config
for b in /sys/block/vd*; do
  s=; { read -r s < "$b/serial"; } 2>/dev/null
  if [ "$s" = kiln-config ]; then
    mount -t ext4 -o ro,nosuid,nodev,noexec "/dev/${b##*/}" /run/kiln/config \
      || echo "kiln-init: cannot mount the config drive"
  fi
done
root=
mode=fast
for p in $cmdline; do
  case "$p" in
    kiln.root=*) root="${p#kiln.root=}" ;;
    kiln.init=*) mode="${p#kiln.init=}" ;;
  esac
done
dev=
if [ -n "$root" ]; then
  for b in /sys/block/vd*; do
    s=; { read -r s < "$b/serial"; } 2>/dev/null
    [ "$s" = "$root" ] && dev="/dev/${b##*/}"
  done
fi
if [ -z "$root" ]; then
  mount -t tmpfs tmpfs /tmp
  exec sh /etc/kiln/stage2 /bin /sbin/kiln-agent /etc/kiln
elif [ -z "$dev" ] || ! mount -t ext4 -o rw "$dev" /newroot; then
  echo "kiln-init: cannot mount the root disk ($root${dev:+ at $dev}); staying in the RAM root"
  mount -t tmpfs tmpfs /tmp
  exec sh /etc/kiln/stage2 /bin /sbin/kiln-agent /etc/kiln
fi
mkdir -p /run/kiln/bin
cp /bin/busybox /sbin/kiln-agent /etc/kiln/stage2 /etc/kiln/udhcpc.sh /run/kiln/
echo "$dev" > /run/kiln/rootdev
/run/kiln/busybox --install -s /run/kiln/bin
for m in dev proc sys run; do
  mkdir -p "/newroot/$m"
  mount --move "/$m" "/newroot/$m"
done
echo "kiln-init: switching root to $dev ($mode)"
# /sbin/init is an absolute symlink into the new root: test the link, not its target here.
if [ "$mode" = full ] && { [ -L /newroot/sbin/init ] || [ -x /newroot/sbin/init ]; }; then
  exec switch_root /newroot /sbin/init
fi
exec switch_root /newroot /run/kiln/busybox sh /run/kiln/stage2 /run/kiln/bin /run/kiln/kiln-agent /run/kiln
"#;

/// Stage two: hostname, shares, disk labels, root growth and the network, then the agent, kept
/// running. Arguments: the busybox applet directory, the agent, and the directory of
/// `udhcpc.sh`. Its own commands come from busybox first, whatever userland it runs in; the
/// agent gets the userland's `PATH`, with busybox last.
const STAGE2: &str = r#"kb="$1"; agent="$2"; kd="$3"
export PATH="$kb:/usr/sbin:/usr/bin:/sbin:/bin" HOME=/root
mkdir -p /dev/pts /dev/shm /dev/disk/by-id
grep -q " /dev/pts " /proc/mounts || mount -t devpts devpts /dev/pts
for b in /sys/block/vd*; do
  s=; { read -r s < "$b/serial"; } 2>/dev/null
  [ -n "$s" ] && ln -sf "../../${b##*/}" "/dev/disk/by-id/virtio-$s"
done
read -r cmdline < /proc/cmdline
for p in $cmdline; do
  case "$p" in
    kiln.name=*) hostname "${p#kiln.name=}" ;;
    kiln.grow=1)
      if [ -f /run/kiln/rootdev ]; then
        read -r rootdev < /run/kiln/rootdev
        /sbin/resize2fs "$rootdev" >/dev/null 2>&1 || echo "kiln-init: cannot grow the root filesystem"
      fi
      ;;
    kiln.share=*)
      # TAG:DIR:ro|rw, a virtio-9p share of the host.
      s="${p#kiln.share=}"; tag="${s%%:*}"; rest="${s#*:}"; dir="${rest%:*}"; mode="${rest##*:}"
      mkdir -p "$dir" && mount -t 9p -o "trans=virtio,version=9p2000.L,msize=262144,$mode" "$tag" "$dir" \
        || echo "kiln-init: cannot mount share $tag at $dir"
      ;;
  esac
done
ip link set lo up
net=user
addressed=
gw=
dns=
for p in $cmdline; do
  case "$p" in
    kiln.net=*) net="${p#kiln.net=}" ;;
    kiln.gw=*) gw="${p#kiln.gw=}" ;;
    kiln.dns=*) dns="${p#kiln.dns=}" ;;
    kiln.ip=*)
      # MAC,ADDRESS/PREFIX: the NIC is found by its MAC, whatever order the kernel saw it in.
      v="${p#kiln.ip=}"; mac="${v%%,*}"; addr="${v#*,}"
      for dev in /sys/class/net/*; do
        a=; read -r a < "$dev/address"
        if [ "$a" = "$mac" ]; then
          ip link set "${dev##*/}" up && ip addr add "$addr" dev "${dev##*/}" 2>/dev/null && addressed=1
        fi
      done
      ;;
  esac
done
if [ -n "$addressed" ]; then
  if [ -n "$gw" ]; then ip route add default via "$gw" 2>/dev/null; fi
  if [ -n "$dns" ]; then echo "nameserver $dns" > /etc/resolv.conf; fi
elif [ -e /sys/class/net/eth0 ]; then
  ip link set eth0 up
  if [ "$net" = dhcp ]; then
    # A libvirt network: ask its dnsmasq, in the background so the agent starts at once.
    udhcpc -i eth0 -b -q -t 10 -s "$kd/udhcpc.sh" >/dev/null 2>&1 &
  else
    # QEMU user-mode networking: fixed addresses.
    ip addr add 10.0.2.15/24 dev eth0
    ip route add default via 10.0.2.2
    echo "nameserver 10.0.2.3" > /etc/resolv.conf
  fi
fi
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$kb"
echo "kiln-init: starting agent"
while true; do
  "$agent"
  echo "kiln-init: agent exited ($?), restarting"
  sleep 1
done
"#;

/// The fixed addresses of the user-mode NIC's two halves: the same in every guest, so a
/// warm-start template fits every clone. Init finds each NIC by its MAC.
pub mod user_net {
    /// The NIC the guest goes out through (QEMU's own default MAC for a first NIC).
    pub const MAC: &str = "52:54:00:12:34:56";
    pub const GUEST: &str = "10.0.2.15";
    pub const PREFIX: u8 = 24;
    pub const GATEWAY: &str = "10.0.2.2";
    pub const DNS: &str = "10.0.2.3";
    /// The NIC port forwards come in through; it has no route out.
    pub const FORWARDS_MAC: &str = "52:54:00:12:34:57";
    pub const FORWARDS_SUBNET: &str = "10.0.3.0/24";
    /// Where forwarded connections come from, as the guest sees it.
    pub const FORWARDS_HOST: &str = "10.0.3.2";
    pub const FORWARDS_GUEST: &str = "10.0.3.15";
}

/// How a guest's NICs get addresses.
#[derive(Debug, Clone, Copy)]
pub enum Addressing<'a> {
    /// NICs on named networks ask DHCP (libvirt networks run dnsmasq).
    Dhcp,
    /// Every NIC has a fixed address, found by MAC: the user-mode NIC's (10.0.2.15) and
    /// those kiln leased on its own networks.
    Static(&'a [crate::net::NicAttachment]),
}

/// Where a guest's userland lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootRoot {
    /// The initramfs itself (the busybox image).
    Ram,
    /// The virtio disk with serial [`ROOT_DISK_LABEL`](crate::spec::ROOT_DISK_LABEL), started
    /// in this mode; `grow` resizes its filesystem to the disk.
    Disk {
        /// Fast (kiln's init) or full (systemd).
        init: super::InitMode,
        /// Whether the disk is larger than the image's filesystem.
        grow: bool,
    },
}

/// Tells the kernel to skip the self-tests of its crypto algorithms, which it otherwise runs
/// at every boot: about 0.3 s of a cold boot under TCG (`kiln bench boot --levers`).
pub(crate) const SKIP_CRYPTO_TESTS: &str = " cryptomgr.notests";

/// The kernel command line of a kiln guest: what its init reads (name, root, addresses,
/// shares). The same for every backend.
pub fn guest_cmdline(spec: &crate::VmSpec, root: BootRoot, addressing: Addressing<'_>) -> String {
    let mut cmdline = format!(
        "console=ttyS0 reboot=t panic=-1 quiet{SKIP_CRYPTO_TESTS} kiln.name={}",
        spec.name()
    );
    if let BootRoot::Disk { init, grow } = root {
        cmdline.push_str(&format!(
            " kiln.root={} kiln.init={init}",
            crate::spec::ROOT_DISK_LABEL
        ));
        if grow {
            cmdline.push_str(" kiln.grow=1");
        }
    }
    match addressing {
        Addressing::Dhcp => {
            // libvirt: named networks run dnsmasq, and so does kiln's NAT network behind a
            // `nat` user-mode NIC; a `host` one is slirp, whose DHCP answers as well.
            if !spec.networks().is_empty() {
                cmdline.push_str(" kiln.net=dhcp");
            }
        }
        Addressing::Static(attachments) => {
            if spec.networks().contains(&crate::NetworkRef::User) {
                use user_net::*;
                cmdline.push_str(&format!(
                    " kiln.ip={MAC},{GUEST}/{PREFIX} kiln.gw={GATEWAY} kiln.dns={DNS} \
                     kiln.ip={FORWARDS_MAC},{FORWARDS_GUEST}/{PREFIX}"
                ));
            }
            for nic in attachments {
                cmdline.push_str(&format!(" kiln.ip={},{}", nic.mac, nic.address));
            }
        }
    }
    for (index, share) in spec.shares().iter().enumerate() {
        let mode = if share.is_read_only() { "ro" } else { "rw" };
        cmdline.push_str(&format!(
            " kiln.share={}:{}:{mode}",
            crate::spec::ShareSpec::tag(index),
            share.guest()
        ));
    }
    cmdline
}

/// What `udhcpc` runs when it gets a lease: configure the address, route and DNS.
const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    for r in $router; do ip route add default via "$r" dev "$interface"; break; done
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    ;;
esac
"#;

/// A digest of the scripts the initramfs carries: a kiln whose init changed rebuilds the
/// image even though no input file did.
pub fn scripts_digest() -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for script in [INIT, STAGE2, UDHCPC_SCRIPT] {
        hasher.update(script.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..16])
}

/// Writes the archive to `out`.
pub fn write(parts: &InitramfsParts<'_>, out: &Path) -> Result<(), ImageError> {
    let file = std::fs::File::create(out).map_err(IoError::at("create", out))?;
    let mut cpio = CpioWriter::new(std::io::BufWriter::new(file));
    let read = |path: &Path| std::fs::read(path).map_err(IoError::at("read", path));
    let io = |err: std::io::Error| IoError::new("write", out, err);

    for dir in [
        "bin",
        "sbin",
        "dev",
        "etc",
        "etc/kiln",
        "lib",
        "lib/modules",
        "proc",
        "sys",
        "tmp",
        "run",
        "root",
        "usr",
        "usr/bin",
        "usr/sbin",
        "mnt",
        "newroot",
    ] {
        cpio.dir(dir, 0o755).map_err(io)?;
    }
    cpio.char_device("dev/console", 0o600, 5, 1).map_err(io)?;
    cpio.file("bin/busybox", 0o755, &read(parts.busybox)?)
        .map_err(io)?;
    cpio.symlink("bin/sh", "busybox").map_err(io)?;
    cpio.file("sbin/kiln-agent", 0o755, &read(parts.agent)?)
        .map_err(io)?;
    cpio.file("init", 0o755, INIT.as_bytes()).map_err(io)?;
    cpio.file("etc/kiln/stage2", 0o755, STAGE2.as_bytes())
        .map_err(io)?;
    cpio.file("etc/kiln/udhcpc.sh", 0o755, UDHCPC_SCRIPT.as_bytes())
        .map_err(io)?;
    for (list, modules) in [
        ("etc/kiln/modules", parts.modules),
        ("etc/kiln/modules.shares", parts.share_modules),
    ] {
        let mut order = String::new();
        for module in modules {
            let target = format!("lib/modules/{}.ko", module.name);
            cpio.file(&target, 0o644, &read(&module.path)?)
                .map_err(io)?;
            order.push_str(&module.name);
            order.push('\n');
        }
        cpio.file(list, 0o644, order.as_bytes()).map_err(io)?;
    }
    cpio.file("etc/hostname", 0o644, b"kiln\n").map_err(io)?;
    let mut writer = cpio.finish().map_err(io)?;
    std::io::Write::flush(&mut writer).map_err(io)?;
    Ok(())
}
