//! Rendering a typed QEMU launch into its argument list. Pure: golden-tested without QEMU.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::Accel;
use crate::spec::NetPolicy;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// QEMU's minimal machine: virtio-mmio devices, no PCI, fastest to boot.
    Microvm,
    Q35,
}

/// Everything QEMU is started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuLaunch {
    pub name: String,
    pub machine: Machine,
    pub accel: Accel,
    /// The guest CPU model (`host` with KVM).
    pub cpu: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub firmware: Option<PathBuf>,
    /// An uncompressed ELF `vmlinux`: QEMU boots it through its PVH entry.
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    /// Where QEMU writes the serial console: a FIFO that a logger drains, capped, into
    /// `serial.log`.
    pub console: PathBuf,
    pub qmp_socket: PathBuf,
    /// One socket per agent port, by index.
    pub agent_sockets: Vec<PathBuf>,
    /// Handed to the guest through fw_cfg, never on the (world-readable) command line.
    pub secret: PathBuf,
    pub pidfile: PathBuf,
    pub disks: Vec<PathBuf>,
    /// Each disk's label, its virtio serial (the guest's `/dev/disk/by-id/virtio-LABEL`).
    pub disk_labels: Vec<Option<String>>,
    /// The cloud-init seed, attached read-only after the disks.
    pub seed: Option<PathBuf>,
    /// The config drive (`kiln-config`), attached read-only after the seed.
    pub config_drive: PathBuf,
    /// The workspace drive (`kiln-workspace`), attached after the config drive: this file,
    /// or, when there is none, a device that reads zeros and keeps nothing written to it.
    pub workspace_drive: Option<DriveFile>,
    /// Boot through firmware (SeaBIOS) instead of the kernel: a spec with a boot order.
    pub firmware_boot: Option<FirmwareBoot>,
    pub user_net: Option<UserNet>,
    pub shares: Vec<Share9p>,
    /// NICs on taps that QEMU creates (kiln puts them into their bridges once it runs).
    pub taps: Vec<TapNic>,
    /// Load this saved state (`migrate` to a file) instead of booting: QEMU waits for it
    /// (`-incoming defer`) and kiln starts the load over QMP.
    pub incoming: Option<PathBuf>,
    /// Guest RAM in a file instead of anonymous memory.
    pub memory_file: Option<MemoryFile>,
}

/// Guest RAM backed by a file (see [`crate::backend::Memory`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryFile {
    pub path: PathBuf,
    /// Written through (a template), or mapped privately and copy-on-write (a clone).
    pub shared: bool,
}

/// The user-mode NIC, in two halves. The guest's way out (`net0`) depends on the policy;
/// port forwards come in through a second NIC (`fwd0`) that can never reach out, so a forward
/// works, and can be added at run time, whatever the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserNet {
    pub policy: NetPolicy,
    /// Where QEMU listens for passt (the `nat` policy's way out).
    pub passt_socket: PathBuf,
    /// `hostfwd` rules of the forwards NIC (`tcp:127.0.0.1:8080-:80`).
    pub hostfwd: Vec<String>,
}

/// A boot through SeaBIOS, in the spec's boot order: over the network (iPXE on the
/// forwards NIC, from QEMU's TFTP), or from the first disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareBoot {
    /// The TFTP root the forwards NIC serves (`boot.ipxe`, the kernel, the initramfs); `None`
    /// when the network is not in the boot order.
    pub tftp: Option<PathBuf>,
    /// The NIC's and the first disk's places in the boot order (1 first).
    pub nic_bootindex: Option<u32>,
    pub disk_bootindex: Option<u32>,
    /// A 2-byte file holding the serial port SeaBIOS mirrors its console (and iPXE's) to.
    pub sercon: PathBuf,
}

/// The netdev id the forwards NIC's rules live on (`hostfwd_add fwd0 ...`).
pub const FORWARDS_NETDEV: &str = "fwd0";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapNic {
    pub ifname: String,
    pub mac: String,
}

/// A host directory exported over virtio-9p.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share9p {
    pub tag: String,
    pub host: PathBuf,
    /// QEMU itself refuses writes, whatever the guest does.
    pub read_only: bool,
}

/// A drive's file and its format (`raw`, `qcow2`), never probed by QEMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveFile {
    pub path: PathBuf,
    pub format: &'static str,
}

/// Builds QEMU's argv (without the program name).
pub fn render(l: &QemuLaunch) -> Vec<OsString> {
    let mut argv = Argv::default();
    // virtio devices: MMIO transport on microvm, PCI on q35.
    let virtio = |dev: &str| match l.machine {
        Machine::Microvm => format!("{dev}-device"),
        Machine::Q35 => format!("{dev}-pci"),
    };
    argv.push(["-name", &format!("guest={},debug-threads=on", l.name)]);
    let machine = match l.machine {
        Machine::Microvm => "microvm",
        Machine::Q35 => "q35",
    };
    // RAM is always the object `ram`: its block has that name in every saved state, so a
    // state saved by a machine with private RAM loads into one whose RAM is a file, and back
    // (a warm clone's own snapshot restores, and clones again).
    match &l.memory_file {
        None => argv.push([
            "-object",
            &format!("memory-backend-ram,id=ram,size={}M", l.memory_mib),
        ]),
        Some(file) => {
            // A clone opens the template's file read-only and maps it privately: its writes
            // are its own, and the file stays what every clone starts from.
            let sharing = if file.shared {
                "share=on"
            } else {
                "share=off,readonly=on,rom=off"
            };
            argv.push_kv(
                "-object",
                &format!(
                    "memory-backend-file,id=ram,size={}M,{sharing},mem-path=",
                    l.memory_mib
                ),
                &file.path,
            );
        }
    }
    argv.push(["-machine", &format!("{machine},memory-backend=ram")]);
    let accel = match l.accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    };
    argv.push(["-accel", accel, "-cpu", &l.cpu]);
    argv.push(["-smp", &l.cpus.to_string()]);
    argv.push(["-m", &format!("{}M", l.memory_mib)]);
    argv.push(["-nodefaults", "-no-user-config", "-display", "none"]);
    // seccomp: no obsolete system calls, no changes to scheduling or resource limits.
    // `elevateprivileges=deny` and `spawn=deny` are left out: with them QEMU exits at
    // `-daemonize` (it forks and calls setsid() after the filter is in place; measured).
    argv.push(["-sandbox", "on,obsolete=deny,resourcecontrol=deny"]);
    if let Some(firmware) = &l.firmware {
        argv.push_path("-bios", firmware);
    }
    match &l.firmware_boot {
        None => {
            argv.push_path("-kernel", &l.kernel);
            argv.push_path("-initrd", &l.initrd);
            argv.push(["-append", &l.cmdline]);
        }
        // SeaBIOS shows its console, and the option ROMs' (iPXE), on the serial port too.
        Some(boot) => argv.push_kv("-fw_cfg", "name=etc/sercon-port,file=", &boot.sercon),
    }
    argv.push_kv("-chardev", "file,id=serial0,path=", &l.console);
    argv.push(["-serial", "chardev:serial0"]);
    argv.push_kv(
        "-chardev",
        "socket,id=qmp,server=on,wait=off,path=",
        &l.qmp_socket,
    );
    argv.push(["-mon", "chardev=qmp,mode=control"]);
    argv.push(["-device", &virtio("virtio-serial")]);
    for (index, socket) in (0u8..).zip(&l.agent_sockets) {
        argv.push_kv(
            "-chardev",
            &format!("socket,id=agent{index},server=on,wait=off,path="),
            socket,
        );
        argv.push([
            "-device",
            &format!(
                "virtserialport,chardev=agent{index},name={}",
                kiln_proto::port_name(index)
            ),
        ]);
    }
    argv.push_kv("-fw_cfg", "name=opt/org.kiln/secret,file=", &l.secret);
    argv.push(["-device", &virtio("virtio-rng")]);
    if let Some(user) = &l.user_net {
        use crate::image::user_net as addr;
        match user.policy {
            // passt connects once QEMU listens; it does not map the gateway to the host.
            NetPolicy::Nat => argv.push_kv(
                "-netdev",
                "stream,id=net0,server=on,addr.type=unix,addr.path=",
                &user.passt_socket,
            ),
            // slirp: 10.0.2.2 is the host's loopback.
            NetPolicy::Host => argv.push(["-netdev", "user,id=net0"]),
            // slirp that drops everything the guest starts.
            NetPolicy::None => argv.push(["-netdev", "user,id=net0,restrict=on"]),
        }
        argv.push([
            "-device",
            &format!("{},netdev=net0,mac={}", virtio("virtio-net"), addr::MAC),
        ]);
        let mut netdev = format!(
            "user,id={FORWARDS_NETDEV},restrict=on,net={},host={},dhcpstart={}",
            addr::FORWARDS_SUBNET,
            addr::FORWARDS_HOST,
            addr::FORWARDS_GUEST
        );
        for rule in &user.hostfwd {
            netdev.push_str(",hostfwd=");
            netdev.push_str(rule);
        }
        // Network boot: the same restricted NIC serves BOOTP and TFTP (QEMU's own, inside
        // the restriction), so the boot never reaches past it.
        match l.firmware_boot.as_ref().and_then(|b| b.tftp.as_ref()) {
            Some(tftp) => {
                netdev.push_str(",bootfile=boot.ipxe,tftp=");
                argv.push_kv("-netdev", &netdev, tftp);
            }
            None => argv.push(["-netdev", &netdev]),
        }
        let bootindex = l
            .firmware_boot
            .as_ref()
            .and_then(|b| b.nic_bootindex)
            .map(|i| format!(",bootindex={i}"))
            .unwrap_or_default();
        argv.push([
            "-device",
            &format!(
                "{},netdev={FORWARDS_NETDEV},mac={}{bootindex}",
                virtio("virtio-net"),
                addr::FORWARDS_MAC
            ),
        ]);
    }
    for (index, tap) in l.taps.iter().enumerate() {
        let id = format!("tap{index}");
        argv.push([
            "-netdev",
            &format!("tap,id={id},ifname={},script=no,downscript=no", tap.ifname),
        ]);
        argv.push([
            "-device",
            &format!("{},netdev={id},mac={}", virtio("virtio-net"), tap.mac),
        ]);
    }
    for (i, disk) in l.disks.iter().enumerate() {
        argv.push_kv(
            "-drive",
            &format!("id=disk{i},if=none,format=qcow2,file="),
            disk,
        );
        // Labels are checked (`a-z 0-9 - _`), so they cannot break QEMU's option syntax.
        let serial = l
            .disk_labels
            .get(i)
            .and_then(Option::as_deref)
            .map(|label| format!(",serial={label}"))
            .unwrap_or_default();
        let bootindex = l
            .firmware_boot
            .as_ref()
            .and_then(|b| b.disk_bootindex)
            .filter(|_| i == 0)
            .map(|n| format!(",bootindex={n}"))
            .unwrap_or_default();
        argv.push([
            "-device",
            &format!("{},drive=disk{i}{serial}{bootindex}", virtio("virtio-blk")),
        ]);
    }
    if let Some(seed) = &l.seed {
        argv.push_kv(
            "-drive",
            "id=seed,if=none,format=raw,readonly=on,file=",
            seed,
        );
        argv.push([
            "-device",
            &format!("{},drive=seed,serial=cidata", virtio("virtio-blk")),
        ]);
    }
    argv.push_kv(
        "-drive",
        "id=config,if=none,format=raw,readonly=on,file=",
        &l.config_drive,
    );
    argv.push([
        "-device",
        &format!(
            "{},drive=config,serial={}",
            virtio("virtio-blk"),
            crate::image::config_drive::LABEL
        ),
    ]);
    match &l.workspace_drive {
        Some(file) => argv.push_kv(
            "-drive",
            &format!("id=workspace,if=none,format={},file=", file.format),
            &file.path,
        ),
        None => argv.push([
            "-drive",
            &format!(
                "id=workspace,if=none,driver=null-co,read-zeroes=on,size={}",
                crate::image::workspace_drive::SIZE
            ),
        ]),
    }
    argv.push([
        "-device",
        &format!(
            "{},drive=workspace,serial={}",
            virtio("virtio-blk"),
            crate::image::workspace_drive::LABEL
        ),
    ]);
    for share in &l.shares {
        // mapped-xattr: the guest's owners and modes live in xattrs, never in the host file's
        // mode, so a guest root cannot plant a setuid-root file in a host directory (QEMU
        // often runs as root). Host files the guest creates are 0600 (directories 0700).
        let readonly = if share.read_only { ",readonly=on" } else { "" };
        argv.push_kv(
            "-fsdev",
            &format!(
                "local,id={},security_model=mapped-xattr{readonly},path=",
                share.tag
            ),
            &share.host,
        );
        argv.push([
            "-device",
            &format!(
                "{},fsdev={},mount_tag={}",
                virtio("virtio-9p"),
                share.tag,
                share.tag
            ),
        ]);
    }
    if l.incoming.is_some() {
        argv.push(["-incoming", "defer"]);
    }
    argv.push(["-daemonize"]);
    argv.push_path("-pidfile", &l.pidfile);
    argv.0
}

#[derive(Default)]
struct Argv(Vec<OsString>);

impl Argv {
    fn push<const N: usize>(&mut self, args: [&str; N]) {
        self.0.extend(args.iter().map(OsString::from));
    }

    fn push_path(&mut self, flag: &str, path: &std::path::Path) {
        self.0.push(flag.into());
        self.0.push(path.into());
    }

    /// `flag prefix+path`: paths stay `OsString`s, never pass through a lossy conversion.
    /// A comma in a path would split QEMU's option list, so it is doubled (QEMU's escape).
    fn push_kv(&mut self, flag: &str, prefix: &str, path: &std::path::Path) {
        let mut value = OsString::from(prefix);
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let escaped: Vec<u8> = bytes
            .iter()
            .flat_map(|&b| if b == b',' { vec![b',', b','] } else { vec![b] })
            .collect();
        value.push(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&escaped));
        self.0.push(flag.into());
        self.0.push(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(machine: Machine, accel: Accel) -> QemuLaunch {
        let p = |s: &str| PathBuf::from(format!("/k/vms/web-1/{s}"));
        QemuLaunch {
            name: "web-1".into(),
            machine,
            accel,
            cpu: match accel {
                Accel::Kvm => "host".into(),
                Accel::Tcg => super::super::TCG_CPU.into(),
            },
            cpus: 2,
            memory_mib: 1024,
            firmware: Some(PathBuf::from("/usr/share/qemu/qboot.rom")),
            kernel: PathBuf::from("/k/images/default/vmlinux"),
            initrd: PathBuf::from("/k/images/default/initramfs.cpio"),
            cmdline: "console=ttyS0 kiln.name=web-1".into(),
            console: p("console"),
            qmp_socket: p("qmp.sock"),
            agent_sockets: vec![p("agent.sock"), p("agent.1.sock")],
            secret: p("secret"),
            pidfile: p("qemu.pid"),
            disks: vec![p("disk0.qcow2")],
            disk_labels: vec![Some("data".to_owned())],
            seed: None,
            config_drive: p("config.img"),
            workspace_drive: Some(DriveFile {
                path: p("workspace.img"),
                format: "qcow2",
            }),
            firmware_boot: None,
            user_net: Some(UserNet {
                policy: NetPolicy::Nat,
                passt_socket: p("net.sock"),
                hostfwd: Vec::new(),
            }),
            shares: Vec::new(),
            taps: Vec::new(),
            incoming: None,
            memory_file: None,
        }
    }

    fn joined(l: &QemuLaunch) -> String {
        render(l)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A boot order: no kernel on the command line; the forwards NIC serves BOOTP and TFTP
    /// and boots first, the disk next; SeaBIOS mirrors its console (and iPXE's) to serial.
    #[test]
    fn a_network_boot_goes_through_seabios_and_the_forwards_nic() {
        let mut l = launch(Machine::Q35, Accel::Tcg);
        l.firmware = None;
        l.firmware_boot = Some(FirmwareBoot {
            tftp: Some(PathBuf::from("/k/vms/web-1/tftp")),
            nic_bootindex: Some(1),
            disk_bootindex: Some(2),
            sercon: PathBuf::from("/run/k/web-1/sercon-port"),
        });
        let line = joined(&l);
        assert!(!line.contains("-kernel"), "{line}");
        assert!(!line.contains("-append"), "{line}");
        assert!(
            line.contains("-fw_cfg name=etc/sercon-port,file=/run/k/web-1/sercon-port"),
            "{line}"
        );
        assert!(
            line.contains("restrict=on,net=10.0.3.0/24,host=10.0.3.2,dhcpstart=10.0.3.15,bootfile=boot.ipxe,tftp=/k/vms/web-1/tftp "),
            "{line}"
        );
        assert!(
            line.contains("netdev=fwd0,mac=52:54:00:12:34:57,bootindex=1"),
            "{line}"
        );
        assert!(
            line.contains("drive=disk0,serial=data,bootindex=2"),
            "{line}"
        );
    }

    #[test]
    fn microvm_tcg_golden() {
        let expected = "-name guest=web-1,debug-threads=on -object memory-backend-ram,id=ram,size=1024M \
-machine microvm,memory-backend=ram -accel tcg -cpu qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,+cx16 \
-smp 2 -m 1024M -nodefaults -no-user-config -display none -sandbox on,obsolete=deny,resourcecontrol=deny \
-bios /usr/share/qemu/qboot.rom \
-kernel /k/images/default/vmlinux -initrd /k/images/default/initramfs.cpio \
-append console=ttyS0 kiln.name=web-1 \
-chardev file,id=serial0,path=/k/vms/web-1/console -serial chardev:serial0 \
-chardev socket,id=qmp,server=on,wait=off,path=/k/vms/web-1/qmp.sock -mon chardev=qmp,mode=control \
-device virtio-serial-device \
-chardev socket,id=agent0,server=on,wait=off,path=/k/vms/web-1/agent.sock \
-device virtserialport,chardev=agent0,name=org.kiln.agent.0 \
-chardev socket,id=agent1,server=on,wait=off,path=/k/vms/web-1/agent.1.sock \
-device virtserialport,chardev=agent1,name=org.kiln.agent.1 \
-fw_cfg name=opt/org.kiln/secret,file=/k/vms/web-1/secret -device virtio-rng-device \
-netdev stream,id=net0,server=on,addr.type=unix,addr.path=/k/vms/web-1/net.sock \
-device virtio-net-device,netdev=net0,mac=52:54:00:12:34:56 \
-netdev user,id=fwd0,restrict=on,net=10.0.3.0/24,host=10.0.3.2,dhcpstart=10.0.3.15 \
-device virtio-net-device,netdev=fwd0,mac=52:54:00:12:34:57 \
-drive id=disk0,if=none,format=qcow2,file=/k/vms/web-1/disk0.qcow2 -device virtio-blk-device,drive=disk0,serial=data \
-drive id=config,if=none,format=raw,readonly=on,file=/k/vms/web-1/config.img \
-device virtio-blk-device,drive=config,serial=kiln-config \
-drive id=workspace,if=none,format=qcow2,file=/k/vms/web-1/workspace.img \
-device virtio-blk-device,drive=workspace,serial=kiln-workspace \
-daemonize -pidfile /k/vms/web-1/qemu.pid";
        assert_eq!(joined(&launch(Machine::Microvm, Accel::Tcg)), expected);
    }

    #[test]
    fn q35_kvm_uses_pci_devices_and_host_cpu() {
        let mut l = launch(Machine::Q35, Accel::Kvm);
        l.firmware = None;
        l.user_net = None;
        l.disks.clear();
        let argv = joined(&l);
        assert!(argv.contains("-machine q35,memory-backend=ram -accel kvm -cpu host"));
        assert!(argv.contains("-device virtio-serial-pci"));
        assert!(!argv.contains("-bios"));
        assert!(!argv.contains("-netdev"));
        // Only the config and workspace drives, which every VM has.
        assert_eq!(argv.matches("-drive").count(), 2, "{argv}");
        assert!(argv.contains("-device virtio-blk-pci,drive=config,serial=kiln-config"));
        assert!(argv.contains("-device virtio-blk-pci,drive=workspace,serial=kiln-workspace"));
        // A VM without a workspace file gets a drive that keeps nothing written to it.
        l.workspace_drive = None;
        assert!(joined(&l).contains(
            "-drive id=workspace,if=none,driver=null-co,read-zeroes=on,size=34359738368 \
             -device virtio-blk-pci,drive=workspace,serial=kiln-workspace"
        ));
    }

    #[test]
    fn a_template_writes_its_ram_to_a_file_and_a_clone_maps_it_privately() {
        let mut l = launch(Machine::Microvm, Accel::Tcg);
        l.memory_file = Some(MemoryFile {
            path: PathBuf::from("/t/memory.ram"),
            shared: true,
        });
        let argv = joined(&l);
        assert!(argv.contains(
            "-object memory-backend-file,id=ram,size=1024M,share=on,mem-path=/t/memory.ram \
-machine microvm,memory-backend=ram "
        ));
        l.memory_file = Some(MemoryFile {
            path: PathBuf::from("/t/memory.ram"),
            shared: false,
        });
        l.incoming = Some(PathBuf::from("/t/snapshots/ready/memory"));
        let argv = joined(&l);
        assert!(argv.contains(
            "-object memory-backend-file,id=ram,size=1024M,share=off,readonly=on,rom=off,\
mem-path=/t/memory.ram -machine microvm,memory-backend=ram "
        ));
        // The state is loaded over QMP, once the migration capabilities are set.
        assert!(argv.contains(" -incoming defer "));
    }

    #[test]
    fn shares_and_port_forwards() {
        let mut l = launch(Machine::Microvm, Accel::Tcg);
        l.shares = vec![Share9p {
            tag: "kiln0".into(),
            host: PathBuf::from("/srv/data"),
            read_only: true,
        }];
        if let Some(user) = &mut l.user_net {
            user.hostfwd = vec![
                "tcp:127.0.0.1:8080-:80".into(),
                "udp:127.0.0.1:5353-:53".into(),
            ];
        }
        let argv = joined(&l);
        assert!(argv.contains(
            "-netdev user,id=fwd0,restrict=on,net=10.0.3.0/24,host=10.0.3.2,dhcpstart=10.0.3.15,\
hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:127.0.0.1:5353-:53 "
        ));
        assert!(argv.contains(
            "-fsdev local,id=kiln0,security_model=mapped-xattr,readonly=on,path=/srv/data \
-device virtio-9p-device,fsdev=kiln0,mount_tag=kiln0"
        ));
    }

    #[test]
    fn each_policy_has_its_own_way_out_and_the_same_forwards_nic() {
        let mut l = launch(Machine::Microvm, Accel::Tcg);
        for (policy, netdev) in [
            (NetPolicy::Host, "-netdev user,id=net0 -device"),
            (NetPolicy::None, "-netdev user,id=net0,restrict=on -device"),
        ] {
            if let Some(user) = &mut l.user_net {
                user.policy = policy;
            }
            let argv = joined(&l);
            assert!(argv.contains(netdev), "{policy}: {argv}");
            assert!(!argv.contains("stream"), "{policy}: {argv}");
            assert!(
                argv.contains("-netdev user,id=fwd0,restrict=on,"),
                "{policy}: {argv}"
            );
        }
    }

    #[test]
    fn taps_get_their_own_netdev_and_mac() {
        let mut l = launch(Machine::Microvm, Accel::Tcg);
        l.taps = vec![TapNic {
            ifname: "kt0123456789".into(),
            mac: "52:54:00:aa:bb:cc".into(),
        }];
        assert!(joined(&l).contains(
            "-netdev tap,id=tap0,ifname=kt0123456789,script=no,downscript=no \
-device virtio-net-device,netdev=tap0,mac=52:54:00:aa:bb:cc"
        ));
    }

    #[test]
    fn commas_in_paths_are_escaped_for_qemu() {
        let mut l = launch(Machine::Microvm, Accel::Tcg);
        l.console = PathBuf::from("/a,b/console");
        assert!(joined(&l).contains("path=/a,,b/console"));
    }
}
