//! Network boot, for real, on both hosts with one test body: the Harmony guide's VM (boot
//! order network, then disk, and a blank disk) boots through SeaBIOS and iPXE into kiln's
//! image (over the user-mode NIC's TFTP, or the libvirt boot network's dnsmasq), and its
//! agent answers. Once the guest has made the disk
//! bootable, the next boot falls through to the disk.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use kiln::progress::NoProgress;
use kiln::spec::{BootDevice, DiskSpec};
use kiln::topology::{Host, LocalHost};
use kiln::{Error, NetworkRef, VmSpec};
use kiln_testkit::{TestEnv, require_libvirtd, sh, unique_name};

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

/// The body both hosts run. `impatient` is the same host with a short boot timeout: the
/// disk's own system has no kiln agent, so its boot is expected to time out.
async fn network_then_disk(host: &dyn Host, impatient: &dyn Host, name: &str) {
    let p = &NoProgress;
    let spec = VmSpec::builder(name)
        .memory_mib(512)
        .disk(DiskSpec::new_gib(1))
        .boot_order([BootDevice::Network, BootDevice::Disk])
        .build()
        .unwrap();
    host.up(&spec, p).await.unwrap();
    assert_eq!(sh(host, name, "echo up").await, "up\n");
    let log = console(host, name).await;
    // The serial log shows the network boot itself: iPXE, and kiln's script over TFTP.
    assert!(log.contains("iPXE"), "{log}");
    assert!(
        log.contains(&format!("kiln: network boot of {name}")),
        "{log}"
    );
    assert!(log.contains("the first disk does not boot"), "{log}");

    // Something writes a bootable system to the disk; the next boot falls through to it.
    let dir = tempfile::tempdir().unwrap();
    let mbr = dir.path().join("mbr");
    std::fs::write(&mbr, marker_mbr()).unwrap();
    let agent = host.agent(name, Duration::from_secs(30)).await.unwrap();
    kiln::copy::push(&agent, &mbr, "/tmp/mbr", &kiln::progress::NoProgress)
        .await
        .unwrap();
    drop(agent);
    sh(
        host,
        name,
        "dd if=/tmp/mbr of=/dev/vda bs=512 count=1 conv=notrunc 2>/dev/null && sync",
    )
    .await;
    host.stop(name, p).await.unwrap();
    assert!(
        impatient.start(name, p).await.is_err(),
        "the disk's own system has no kiln agent"
    );
    let log = console(impatient, name).await;
    assert!(log.contains("kiln-disk-boot"), "{log}");
    host.remove(name, true, p).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_then_disk_on_the_daemonless_backend() {
    let env = TestEnv::new();
    let patient = kiln::BootPolicy::default().timeout(Duration::from_secs(90));
    let host = LocalHost::new(env.kiln().with_boot_policy(patient));
    let impatient = kiln::BootPolicy::default().timeout(Duration::from_secs(25));
    let impatient = LocalHost::new(env.kiln().with_boot_policy(impatient));
    network_then_disk(&host, &impatient, "pxe-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_then_disk_on_libvirt() {
    require_libvirtd();
    let env = TestEnv::new();
    let name = unique_name("kt-pxe");
    let host = env
        .libvirt_host("qemu:///system", &name)
        .await
        .with_boot_timeout(Duration::from_secs(90));
    let impatient = host.clone().with_boot_timeout(Duration::from_secs(25));
    env.on_libvirt(host, name, |host, name| async move {
        network_then_disk(&host, &impatient, &name).await;
    })
    .await;
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
            Error::Qemu(kiln::qemu::QemuError::NetworkBootNeedsUserNic)
        ),
        "{err:?}"
    );
    assert!(err.hint().is_some(), "{err:?}");
    assert!(host.find("pxe-2").await.unwrap().is_none());
}
