//! How a VM boots an image: where its userland is, which disks its machine has, and the iPXE
//! script of a network boot.

use super::{BootRoot, Image};

/// Where a VM of `spec` booting `image` finds its userland.
pub fn boot_root(spec: &crate::VmSpec, image: &Image) -> BootRoot {
    match image.root() {
        None => BootRoot::Ram,
        Some(root) => BootRoot::Disk {
            init: root.init(),
            grow: spec.root_size().is_some_and(|size| size > root.size),
        },
    }
}

/// The disks a VM of `spec` booting `image` has: a Debian image's root disk first (an overlay
/// on the image's base, grown to the spec's root size), then the spec's own.
pub fn machine_disks(spec: &crate::VmSpec, image: &Image) -> Vec<crate::DiskSpec> {
    let root = image.root().map(|root| {
        let size = spec
            .root_size()
            .map_or(root.size, |size| size.max(root.size));
        crate::DiskSpec::root(size, root.base_path())
    });
    root.into_iter()
        .chain(spec.disks().iter().cloned())
        .collect()
}

/// The iPXE script a network boot of VM `name` runs: kiln's image (`kernel` and `initrd`,
/// paths relative to the script on the same TFTP server) with the guest's command line. With
/// the disk next in the boot order it first tries the disk, so once something has made the
/// disk bootable, the boot falls through to it.
pub(crate) fn ipxe_script(
    name: &str,
    cmdline: &str,
    disk_next: bool,
    kernel: &str,
    initrd: &str,
) -> String {
    let mut script = format!("#!ipxe\necho kiln: network boot of {name} (iPXE ${{version}})\n");
    if disk_next {
        script.push_str(
            "sanboot --no-describe --drive 0x80 || echo kiln: the first disk does not boot: booting kiln's image\n",
        );
    }
    script.push_str(&format!(
        "kernel {kernel} {cmdline}\ninitrd {initrd}\nboot\n"
    ));
    script
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_ipxe_script_boots_kilns_image_and_tries_the_disk_when_it_comes_next() {
        let script = super::ipxe_script(
            "pxe-1",
            "console=ttyS0 kiln.name=pxe-1",
            true,
            "vmlinuz",
            "initramfs.cpio",
        );
        assert_eq!(
            script,
            "#!ipxe\necho kiln: network boot of pxe-1 (iPXE ${version})\n\
             sanboot --no-describe --drive 0x80 || echo kiln: the first disk does not boot: booting kiln's image\n\
             kernel vmlinuz console=ttyS0 kiln.name=pxe-1\ninitrd initramfs.cpio\nboot\n"
        );
        assert!(!super::ipxe_script("pxe-1", "x", false, "k", "i").contains("sanboot"));
    }
}
