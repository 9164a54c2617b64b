//! A VM's launch, as typed data: `VmSpec` plus what was resolved for it (image, paths,
//! acceleration, NICs, disks) becomes a [`QemuLaunch`], which `argv` renders (golden-tested).

use super::{
    DriveFile, FirmwareBoot, Machine, MemoryFile, QemuBackend, QemuLaunch, Share9p, TapNic, UserNet,
};
use crate::backend::Launch;
use crate::backend::Memory;
use crate::spec::BootDevice;

impl QemuBackend {
    /// The typed launch description for a VM (what `start` renders and runs).
    pub fn plan(&self, launch: &Launch<'_>) -> QemuLaunch {
        let paths = launch.paths;
        let order = launch.spec.boot_order();
        let position = |device: BootDevice| {
            order
                .iter()
                .position(|d| *d == device)
                .and_then(|p| u32::try_from(p + 1).ok())
        };
        // A boot order boots through SeaBIOS, on q35: microvm has no PXE and no disk boot.
        let firmware_boot = (!order.is_empty()).then(|| FirmwareBoot {
            tftp: position(BootDevice::Network).map(|_| paths.tftp_dir()),
            nic_bootindex: position(BootDevice::Network),
            disk_bootindex: position(BootDevice::Disk),
            sercon: paths.run_dir().join("sercon-port"),
        });
        let machine = if firmware_boot.is_some() {
            Machine::Q35
        } else {
            self.machine
        };
        QemuLaunch {
            name: launch.spec.name().to_owned(),
            machine,
            accel: launch.accel,
            cpu: launch
                .cpu
                .map_or_else(|| self.default_cpu(launch.accel), str::to_owned),
            cpus: launch.spec.cpus(),
            memory_mib: launch.spec.memory_mib(),
            firmware: match machine {
                Machine::Microvm => self.firmware.clone(),
                Machine::Q35 => None,
            },
            kernel: launch.image.kernel(),
            initrd: launch.image.initramfs(),
            cmdline: {
                let mut cmdline = crate::image::guest_cmdline(
                    launch.spec,
                    crate::image::boot_root(launch.spec, launch.image),
                    crate::image::Addressing::Static(launch.attachments),
                );
                // Under TCG on a busy host the kernel's PIT calibration of the TSC can fail;
                // microvm has no HPET or PM timer to fall back on, and the guest then spins
                // forever waiting for a timer tick. The guest's TSC runs at the host's rate:
                // say so, and no calibration is needed.
                if launch.accel == crate::Accel::Tcg
                    && let Some(khz) = crate::accel::host_tsc_khz()
                {
                    cmdline.push_str(&format!(" tsc_early_khz={khz}"));
                }
                self.kernel_cmdline(cmdline)
            },
            console: paths.console_fifo(),
            qmp_socket: paths.qmp_socket(),
            agent_sockets: (0..kiln_proto::AGENT_PORTS)
                .map(|index| paths.agent_socket(index))
                .collect(),
            secret: paths.secret(),
            pidfile: paths.pidfile(),
            disks: launch.disks.to_vec(),
            disk_labels: launch.spec.machine_disk_labels(),
            seed: launch.spec.cloud_init().map(|_| paths.seed()),
            config_drive: paths.config_drive(),
            workspace_drive: Some(DriveFile {
                path: paths.workspace_drive(),
                format: crate::image::workspace_drive::FORMAT,
            }),
            firmware_boot,
            incoming: launch.incoming.map(std::path::Path::to_owned),
            memory_file: match launch.memory {
                Memory::Private => None,
                Memory::SharedFile(path) => Some(MemoryFile {
                    path: path.to_owned(),
                    shared: true,
                }),
                Memory::CopyOf(path) => Some(MemoryFile {
                    path: path.to_owned(),
                    shared: false,
                }),
            },
            user_net: launch.spec.user_net().map(|policy| UserNet {
                policy,
                passt_socket: paths.net_socket(),
                hostfwd: launch.spec.ports().iter().map(|p| p.hostfwd()).collect(),
            }),
            shares: launch
                .spec
                .shares()
                .iter()
                .enumerate()
                .map(|(index, share)| Share9p {
                    tag: crate::spec::ShareSpec::tag(index),
                    host: share.host().to_owned(),
                    read_only: share.is_read_only(),
                })
                .collect(),
            taps: launch
                .attachments
                .iter()
                .map(|nic| TapNic {
                    ifname: nic.tap.clone(),
                    mac: nic.mac.to_string(),
                })
                .collect(),
        }
    }
}
