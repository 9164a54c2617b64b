//! Network boot, for real, on the daemonless backend: the Harmony guide's VM (boot order
//! network, then disk, and a blank disk) boots through SeaBIOS and iPXE over the user-mode
//! NIC's TFTP into kiln's image, and its agent answers. Once the guest has made the disk
//! bootable, the next boot falls through to the disk.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use kiln::progress::NoProgress;
use kiln::spec::{BootDevice, DiskSpec};
use kiln::topology::{Host, LocalHost};
use kiln::{Error, NetworkRef, VmSpec};
use kiln_testkit::{TestEnv, sh};

/// A boot sector that writes `kiln-disk-boot` to COM1 and halts: proof the disk booted.
fn marker_mbr() -> Vec<u8> {
    let mut mbr = vec![
        0xBA, 0xF8, 0x03, // mov dx, 0x3f8
        0xBE, 0x11, 0x7C, // mov si, 0x7c11 (the message)
        0xAC, // lodsb
        0x84, 0xC0, // test al, al
        0x74, 0x03, // jz +3 (to hlt)
        0xEE, // out dx, al
        0xEB, 0xF8, // jmp back to lodsb
        0xF4, // hlt
        0xEB, 0xFD, // jmp back to hlt
    ];
    mbr.extend_from_slice(b"kiln-disk-boot\r\n\0");
    mbr.resize(510, 0);
    mbr.extend_from_slice(&[0x55, 0xAA]);
    mbr
}

async fn console(host: &dyn Host, name: &str) -> String {
    let log = host.read_log(name, 0).await.unwrap();
    String::from_utf8_lossy(&log.data).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_then_disk_boots_kilns_image_then_falls_through_to_a_bootable_disk() {
    let env = TestEnv::new();
    let kiln = env
        .kiln()
        .with_boot_policy(kiln::vm_boot_policy(Duration::from_secs(90)));
    let host = LocalHost::new(kiln);
    let p = &NoProgress;
    let spec = VmSpec::builder("pxe-1")
        .memory_mib(512)
        .disk(DiskSpec::new_gib(1))
        .boot_order([BootDevice::Network, BootDevice::Disk])
        .build()
        .unwrap();
    host.up(&spec, p).await.unwrap();
    assert_eq!(sh(&host, "pxe-1", "echo up").await, "up\n");
    let log = console(&host, "pxe-1").await;
    // The serial log shows the network boot itself: iPXE, and kiln's script over TFTP.
    assert!(log.contains("iPXE"), "{log}");
    assert!(log.contains("kiln: network boot of pxe-1"), "{log}");
    assert!(log.contains("the first disk does not boot"), "{log}");

    // Something writes a bootable system to the disk; the next boot falls through to it.
    let dir = tempfile::tempdir().unwrap();
    let mbr = dir.path().join("mbr");
    std::fs::write(&mbr, marker_mbr()).unwrap();
    let agent = host.agent("pxe-1", Duration::from_secs(30)).await.unwrap();
    kiln::copy::push(&agent, &mbr, "/tmp/mbr").await.unwrap();
    drop(agent);
    sh(
        &host,
        "pxe-1",
        "dd if=/tmp/mbr of=/dev/vda bs=512 count=1 conv=notrunc 2>/dev/null && sync",
    )
    .await;
    host.stop("pxe-1", p).await.unwrap();
    let short = LocalHost::new(
        env.kiln()
            .with_boot_policy(kiln::vm_boot_policy(Duration::from_secs(25))),
    );
    match short.start("pxe-1", p).await {
        Err(Error::BootFailed { .. }) => {}
        other => panic!("the disk's own system has no kiln agent: {other:?}"),
    }
    let log = console(&short, "pxe-1").await;
    assert!(log.contains("kiln: network boot of pxe-1"), "{log}");
    assert!(log.contains("kiln-disk-boot"), "{log}");
    host.remove("pxe-1", true, p).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_boot_without_the_user_mode_nic_is_refused() {
    let env = TestEnv::new();
    let host = LocalHost::new(env.kiln());
    let spec = VmSpec::builder("pxe-2")
        .network(NetworkRef::named("nowhere"))
        .boot_order([BootDevice::Network])
        .build()
        .unwrap();
    let err = host.up(&spec, &NoProgress).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Qemu(kiln::backend::qemu::QemuError::NetworkBootNeedsUserNic)
        ),
        "{err:?}"
    );
    assert!(err.hint().is_some(), "{err:?}");
    assert!(host.find("pxe-2").await.unwrap().is_none());
}
