//! Domains: the definition kiln renders from a `VmSpec`, and what it reads back from a
//! live domain (its tag, secret file, agent ports, boot files and pools).

use serde::{Deserialize, Serialize};

use super::{
    Empty, KilnTag, MetadataIn, MetadataOut, SECRET_FW_CFG, Text, TypeOut, parse, render, tag_of,
};
use crate::libvirt::LibvirtError;

/// Everything a domain document says, in kiln's terms.
#[derive(Debug, Clone)]
pub struct DomainDef {
    pub name: String,
    /// Set when redefining an existing domain (libvirt matches definitions by UUID).
    pub uuid: Option<String>,
    /// `kvm` or `qemu` (TCG).
    pub kvm: bool,
    pub tag: KilnTag,
    pub memory_mib: u64,
    pub cpus: u32,
    /// The file on the libvirt host QEMU reads the guest's secret from (a `0600` volume of
    /// kiln's pool). The secret itself is never in the XML, nor on QEMU's command line.
    pub secret_file: String,
    /// Direct kernel boot; `None` boots through firmware in `boot order`.
    pub kernel: Option<KernelBoot>,
    pub disks: Vec<DomainDisk>,
    pub nics: Vec<DomainNic>,
    /// Where the serial console is logged, on the libvirt host.
    pub serial_log: Option<String>,
    /// Directories of the libvirt host shared over virtio-9p.
    pub shares: Vec<DomainShare>,
}

#[derive(Debug, Clone)]
pub struct DomainShare {
    pub host_dir: String,
    pub tag: String,
    pub read_only: bool,
}

#[derive(Debug, Clone)]
pub struct KernelBoot {
    pub kernel: String,
    pub initrd: String,
    pub cmdline: String,
}

#[derive(Debug, Clone)]
pub struct DomainDisk {
    pub pool: String,
    pub volume: String,
    pub boot_order: Option<u32>,
    /// The virtio serial the guest sees (`/dev/disk/by-id/virtio-SERIAL`).
    pub serial: Option<String>,
    /// A raw volume the guest only reads (the cloud-init seed); else a writable qcow2.
    pub read_only: bool,
}

#[derive(Debug, Clone)]
pub struct DomainNic {
    /// `None`: user-mode NAT.
    pub network: Option<String>,
    pub mac: Option<String>,
    pub boot_order: Option<u32>,
}

#[derive(Debug, Serialize)]
struct DomainOut<'a> {
    #[serde(rename = "@type")]
    kind: &'static str,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    uuid: Option<&'a str>,
    metadata: MetadataOut<'a>,
    memory: Text<u64>,
    vcpu: u32,
    sysinfo: SysinfoOut<'a>,
    os: OsOut<'a>,
    features: FeaturesOut,
    on_poweroff: &'static str,
    on_reboot: &'static str,
    on_crash: &'static str,
    devices: DevicesOut<'a>,
}

#[derive(Debug, Serialize)]
struct SysinfoOut<'a> {
    #[serde(rename = "@type")]
    kind: &'static str,
    entry: Vec<EntryOut<'a>>,
}

#[derive(Debug, Serialize)]
struct EntryOut<'a> {
    #[serde(rename = "@name")]
    name: &'static str,
    #[serde(rename = "@file")]
    file: &'a str,
}

#[derive(Debug, Serialize)]
struct OsOut<'a> {
    #[serde(rename = "type")]
    os_type: OsTypeOut,
    /// Firmware boot: SeaBIOS shows its console, and iPXE's, on the serial port.
    #[serde(skip_serializing_if = "Option::is_none")]
    bios: Option<BiosOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    initrd: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cmdline: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct BiosOut {
    #[serde(rename = "@useserial")]
    useserial: &'static str,
}

#[derive(Debug, Serialize)]
struct OsTypeOut {
    #[serde(rename = "@arch")]
    arch: &'static str,
    #[serde(rename = "@machine")]
    machine: &'static str,
    #[serde(rename = "$text")]
    value: &'static str,
}

/// QEMU 10 refuses `-no-acpi`, which libvirt passes when ACPI is not asked for.
#[derive(Debug, Serialize)]
struct FeaturesOut {
    acpi: Empty,
}

#[derive(Debug, Serialize)]
struct DevicesOut<'a> {
    disk: Vec<DiskOut<'a>>,
    filesystem: Vec<FilesystemOut<'a>>,
    interface: Vec<InterfaceOut<'a>>,
    serial: SerialOut<'a>,
    channel: Vec<ChannelOut>,
    rng: RngOut,
}

#[derive(Debug, Serialize)]
struct DiskOut<'a> {
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(rename = "@device")]
    device: &'static str,
    driver: DriverOut,
    source: VolumeSourceOut<'a>,
    target: DiskTargetOut,
    #[serde(skip_serializing_if = "Option::is_none")]
    boot: Option<BootOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    serial: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    readonly: Option<()>,
}

#[derive(Debug, Serialize)]
struct FilesystemOut<'a> {
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(rename = "@accessmode")]
    access_mode: &'static str,
    source: DirOut<'a>,
    target: DirOut<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    readonly: Option<()>,
}

#[derive(Debug, Serialize)]
struct DirOut<'a> {
    #[serde(rename = "@dir")]
    dir: &'a str,
}

#[derive(Debug, Serialize)]
struct DriverOut {
    #[serde(rename = "@name")]
    name: &'static str,
    #[serde(rename = "@type")]
    format: &'static str,
}

#[derive(Debug, Serialize)]
struct VolumeSourceOut<'a> {
    #[serde(rename = "@pool")]
    pool: &'a str,
    #[serde(rename = "@volume")]
    volume: &'a str,
}

#[derive(Debug, Serialize)]
struct DiskTargetOut {
    #[serde(rename = "@dev")]
    dev: String,
    #[serde(rename = "@bus")]
    bus: &'static str,
}

#[derive(Debug, Serialize)]
struct BootOut {
    #[serde(rename = "@order")]
    order: u32,
}

#[derive(Debug, Serialize)]
struct InterfaceOut<'a> {
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<NetworkSourceOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mac: Option<MacOut<'a>>,
    model: TypeOut,
    #[serde(skip_serializing_if = "Option::is_none")]
    boot: Option<BootOut>,
}

#[derive(Debug, Serialize)]
struct NetworkSourceOut<'a> {
    #[serde(rename = "@network")]
    network: &'a str,
}

#[derive(Debug, Serialize)]
struct MacOut<'a> {
    #[serde(rename = "@address")]
    address: &'a str,
}

#[derive(Debug, Serialize)]
struct SerialOut<'a> {
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<LogOut<'a>>,
}

#[derive(Debug, Serialize)]
struct LogOut<'a> {
    #[serde(rename = "@file")]
    file: &'a str,
    #[serde(rename = "@append")]
    append: &'static str,
}

/// One of the agent's ports. Without a source path libvirt picks one it can create and label.
#[derive(Debug, Serialize)]
struct ChannelOut {
    #[serde(rename = "@type")]
    kind: &'static str,
    source: ChannelSourceOut,
    target: ChannelTargetOut,
}

#[derive(Debug, Serialize)]
struct ChannelSourceOut {
    #[serde(rename = "@mode")]
    mode: &'static str,
}

#[derive(Debug, Serialize)]
struct ChannelTargetOut {
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(rename = "@name")]
    name: String,
}

#[derive(Debug, Serialize)]
struct RngOut {
    #[serde(rename = "@model")]
    model: &'static str,
    backend: RngBackendOut,
}

#[derive(Debug, Serialize)]
struct RngBackendOut {
    #[serde(rename = "@model")]
    model: &'static str,
    #[serde(rename = "$text")]
    device: &'static str,
}

/// `vda`, `vdb`, … `vdz`, `vdaa`, …
fn disk_target(index: usize) -> String {
    let mut name = String::new();
    let mut n = index + 1;
    while n > 0 {
        n -= 1;
        name.insert(0, char::from(b'a' + (n % 26) as u8));
        n /= 26;
    }
    format!("vd{name}")
}

impl DomainDef {
    pub fn to_xml(&self) -> Result<String, LibvirtError> {
        let doc = DomainOut {
            kind: if self.kvm { "kvm" } else { "qemu" },
            name: &self.name,
            uuid: self.uuid.as_deref(),
            metadata: (&self.tag).into(),
            memory: Text {
                unit: Some("MiB"),
                value: self.memory_mib,
            },
            vcpu: self.cpus,
            sysinfo: SysinfoOut {
                kind: "fwcfg",
                entry: vec![EntryOut {
                    name: SECRET_FW_CFG,
                    file: &self.secret_file,
                }],
            },
            os: OsOut {
                // microvm is refused by libvirt ("No PCI buses available"): q35 it is.
                os_type: OsTypeOut {
                    arch: "x86_64",
                    machine: "q35",
                    value: "hvm",
                },
                bios: self
                    .kernel
                    .is_none()
                    .then_some(BiosOut { useserial: "yes" }),
                kernel: self.kernel.as_ref().map(|k| k.kernel.as_str()),
                initrd: self.kernel.as_ref().map(|k| k.initrd.as_str()),
                cmdline: self.kernel.as_ref().map(|k| k.cmdline.as_str()),
            },
            features: FeaturesOut { acpi: Empty {} },
            on_poweroff: "destroy",
            on_reboot: "restart",
            on_crash: "destroy",
            devices: DevicesOut {
                disk: self
                    .disks
                    .iter()
                    .enumerate()
                    .map(|(index, disk)| DiskOut {
                        kind: "volume",
                        device: "disk",
                        driver: DriverOut {
                            name: "qemu",
                            format: if disk.read_only { "raw" } else { "qcow2" },
                        },
                        source: VolumeSourceOut {
                            pool: &disk.pool,
                            volume: &disk.volume,
                        },
                        target: DiskTargetOut {
                            dev: disk_target(index),
                            bus: "virtio",
                        },
                        boot: disk.boot_order.map(|order| BootOut { order }),
                        serial: disk.serial.as_deref(),
                        readonly: disk.read_only.then_some(()),
                    })
                    .collect(),
                filesystem: self
                    .shares
                    .iter()
                    .map(|share| FilesystemOut {
                        kind: "mount",
                        // "mapped": the guest's owners and modes live in xattrs, so a
                        // guest cannot plant a setuid-root file in a host directory.
                        access_mode: "mapped",
                        source: DirOut {
                            dir: &share.host_dir,
                        },
                        target: DirOut { dir: &share.tag },
                        readonly: share.read_only.then_some(()),
                    })
                    .collect(),
                interface: self
                    .nics
                    .iter()
                    .map(|nic| InterfaceOut {
                        kind: if nic.network.is_some() {
                            "network"
                        } else {
                            "user"
                        },
                        source: nic
                            .network
                            .as_deref()
                            .map(|network| NetworkSourceOut { network }),
                        mac: nic.mac.as_deref().map(|address| MacOut { address }),
                        model: TypeOut { kind: "virtio" },
                        boot: nic.boot_order.map(|order| BootOut { order }),
                    })
                    .collect(),
                serial: SerialOut {
                    kind: "pty",
                    log: self.serial_log.as_deref().map(|file| LogOut {
                        file,
                        append: "off",
                    }),
                },
                channel: (0..kiln_proto::AGENT_PORTS)
                    .map(|index| ChannelOut {
                        kind: "unix",
                        source: ChannelSourceOut { mode: "bind" },
                        target: ChannelTargetOut {
                            kind: "virtio",
                            name: kiln_proto::port_name(index),
                        },
                    })
                    .collect(),
                rng: RngOut {
                    model: "virtio",
                    backend: RngBackendOut {
                        model: "random",
                        device: "/dev/urandom",
                    },
                },
            },
        };
        render("domain", &doc)
    }
}

/// The parts of a live domain document kiln reads back.
#[derive(Debug, Clone, Default)]
pub struct DomainObserved {
    pub uuid: Option<String>,
    /// The domain type: `kvm`, or `qemu` for TCG.
    pub kind: Option<String>,
    pub tag: Option<KilnTag>,
    /// Where QEMU reads the guest's secret from, on the libvirt host.
    pub secret_file: Option<String>,
    /// How many agent ports (channels `org.kiln.agent.0`, `.1`, …) the domain has.
    pub agent_ports: u8,
    /// Files the domain boots from (kernel, initrd) and pools its disks come from: what
    /// keeps a pool in use.
    pub boot_files: Vec<String>,
    pub disk_pools: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct DomainIn {
    #[serde(rename = "@type", default)]
    kind: Option<String>,
    #[serde(default)]
    uuid: Option<String>,
    #[serde(default)]
    metadata: Option<MetadataIn>,
    #[serde(default)]
    sysinfo: Vec<SysinfoIn>,
    #[serde(default)]
    os: Option<OsIn>,
    #[serde(default)]
    devices: Option<DevicesIn>,
}

#[derive(Debug, Deserialize)]
struct OsIn {
    #[serde(default)]
    kernel: Option<String>,
    #[serde(default)]
    initrd: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SysinfoIn {
    #[serde(rename = "@type")]
    kind: String,
    #[serde(default)]
    entry: Vec<EntryIn>,
}

#[derive(Debug, Deserialize)]
struct EntryIn {
    #[serde(rename = "@name")]
    name: String,
    #[serde(rename = "@file", default)]
    file: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DevicesIn {
    #[serde(default)]
    channel: Vec<ChannelIn>,
    #[serde(default)]
    disk: Vec<DiskIn>,
}

#[derive(Debug, Deserialize)]
struct DiskIn {
    #[serde(default)]
    source: Option<DiskSourceIn>,
}

#[derive(Debug, Deserialize)]
struct DiskSourceIn {
    #[serde(rename = "@pool", default)]
    pool: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChannelIn {
    #[serde(default)]
    target: Option<ChannelTargetIn>,
}

#[derive(Debug, Deserialize)]
struct ChannelTargetIn {
    #[serde(rename = "@name", default)]
    name: Option<String>,
}

pub fn parse_domain(xml: &str) -> Result<DomainObserved, LibvirtError> {
    let doc: DomainIn = parse("domain XML", xml)?;
    let secret_file = doc
        .sysinfo
        .into_iter()
        .filter(|s| s.kind == "fwcfg")
        .flat_map(|s| s.entry)
        .find(|e| e.name == SECRET_FW_CFG)
        .and_then(|e| e.file);
    let boot_files = doc
        .os
        .map(|os| os.kernel.into_iter().chain(os.initrd).collect())
        .unwrap_or_default();
    let devices = doc.devices.unwrap_or(DevicesIn {
        channel: Vec::new(),
        disk: Vec::new(),
    });
    let disk_pools = devices
        .disk
        .into_iter()
        .filter_map(|d| d.source.and_then(|s| s.pool))
        .collect();
    // Ports are used by index from 0: count the unbroken run of them.
    let indices: std::collections::BTreeSet<u8> = devices
        .channel
        .iter()
        .filter_map(|c| c.target.as_ref()?.name.as_deref())
        .filter_map(kiln_proto::port_index)
        .collect();
    let agent_ports = (0..=u8::MAX)
        .take_while(|index| indices.contains(index))
        .count();
    let agent_ports = u8::try_from(agent_ports).unwrap_or(u8::MAX);
    Ok(DomainObserved {
        kind: doc.kind,
        uuid: doc.uuid,
        tag: tag_of(doc.metadata),
        secret_file,
        agent_ports,
        boot_files,
        disk_pools,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::xml::golden::{assert_golden, tag};

    fn web(kernel: bool) -> DomainDef {
        DomainDef {
            name: "web-1".to_owned(),
            uuid: None,
            kvm: false,
            tag: tag(),
            memory_mib: 1024,
            cpus: 2,
            secret_file: "/pool/web-1-secret".to_owned(),
            kernel: kernel.then(|| KernelBoot {
                kernel: "/pool/kiln-image-abc-vmlinux".to_owned(),
                initrd: "/pool/kiln-image-abc-initramfs".to_owned(),
                cmdline: "console=ttyS0 kiln.name=web-1".to_owned(),
            }),
            disks: vec![DomainDisk {
                pool: "kiln".to_owned(),
                volume: "web-1-disk0.qcow2".to_owned(),
                boot_order: (!kernel).then_some(2),
                serial: Some("data".to_owned()),
                read_only: false,
            }],
            nics: vec![
                DomainNic {
                    network: Some("lab".to_owned()),
                    mac: Some("52:54:00:00:00:01".to_owned()),
                    boot_order: (!kernel).then_some(1),
                },
                DomainNic {
                    network: None,
                    mac: None,
                    boot_order: None,
                },
            ],
            serial_log: Some("/var/log/libvirt/qemu/web-1-serial.log".to_owned()),
            shares: if kernel {
                vec![DomainShare {
                    host_dir: "/srv/www".to_owned(),
                    tag: "kiln0".to_owned(),
                    read_only: true,
                }]
            } else {
                Vec::new()
            },
        }
    }

    #[test]
    fn domain_with_direct_kernel_boot() {
        let xml = web(true).to_xml().unwrap();
        assert_golden("domain-kernel", &xml);
    }

    #[test]
    fn domain_booting_pxe_then_disk() {
        let xml = web(false).to_xml().unwrap();
        assert_golden("domain-pxe", &xml);
    }

    #[test]
    fn domain_reads_back_tag_secret_and_ports() {
        let xml = web(true).to_xml().unwrap();
        let observed = parse_domain(&xml).unwrap();
        assert_eq!(observed.tag, Some(tag()));
        assert_eq!(observed.secret_file.as_deref(), Some("/pool/web-1-secret"));
        assert_eq!(observed.agent_ports, kiln_proto::AGENT_PORTS);
        // A domain made before ports were leased has the first one only; a gap ends the run.
        let old = parse_domain(
            "<domain><devices>\
             <channel type='unix'><target type='virtio' name='org.kiln.agent.0'/></channel>\
             <channel type='unix'><target type='virtio' name='org.kiln.agent.2'/></channel>\
             <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\
             </devices></domain>",
        )
        .unwrap();
        assert_eq!(old.agent_ports, 1);
        assert_eq!(
            observed.boot_files,
            [
                "/pool/kiln-image-abc-vmlinux",
                "/pool/kiln-image-abc-initramfs"
            ]
        );
        assert_eq!(observed.disk_pools, ["kiln"]);
        assert_eq!(observed.kind.as_deref(), Some("qemu"));
    }

    #[test]
    fn foreign_domain_has_no_tag() {
        let observed = parse_domain("<domain type='kvm'><name>x</name></domain>").unwrap();
        assert_eq!(observed.tag, None);
        assert_eq!(observed.agent_ports, 0);
    }

    #[test]
    fn disk_targets_count_like_libvirt() {
        assert_eq!(disk_target(0), "vda");
        assert_eq!(disk_target(25), "vdz");
        assert_eq!(disk_target(26), "vdaa");
    }
}
