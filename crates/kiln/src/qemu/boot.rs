//! Firmware boot (a spec with a boot order): what SeaBIOS and iPXE read, written before QEMU
//! starts. A network boot is served by the forwards NIC's own BOOTP and TFTP: `boot.ipxe`
//! loads kiln's image (the bzImage and the initramfs) with the guest's command line.

use super::{FirmwareBoot, QemuLaunch};
use crate::backend::Launch;
use crate::{IoError, Result};

/// Writes what a firmware boot reads: the serial-console port for SeaBIOS and, for a network
/// boot, the TFTP root (the iPXE script, and links to the image's bzImage and initramfs).
pub(super) fn prepare(boot: &FirmwareBoot, plan: &QemuLaunch, launch: &Launch<'_>) -> Result<()> {
    // COM1, as SeaBIOS reads it: a little-endian integer.
    crate::state::write_atomic(&boot.sercon, &0x3f8u16.to_le_bytes())?;
    let Some(tftp) = &boot.tftp else {
        return Ok(());
    };
    crate::state::create_private_dir(tftp)?;
    for (link, target) in [
        ("vmlinuz", launch.image.bzimage()),
        ("initramfs.cpio", launch.image.initramfs()),
    ] {
        let path = tftp.join(link);
        crate::state::remove_file_if_present(&path)?;
        std::os::unix::fs::symlink(&target, &path).map_err(IoError::at("link", &path))?;
    }
    let disk_next = boot
        .disk_bootindex
        .zip(boot.nic_bootindex)
        .is_some_and(|(disk, nic)| disk > nic);
    let script = crate::image::ipxe_script(
        &plan.name,
        &plan.cmdline,
        disk_next,
        "vmlinuz",
        "initramfs.cpio",
    );
    crate::state::write_atomic(&tftp.join("boot.ipxe"), script.as_bytes())
}
