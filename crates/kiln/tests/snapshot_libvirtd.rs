//! Snapshots on a real libvirtd (reached as a remote host, over TCP): save, change, restore
//! and find the change gone in memory and on disk; a disk-only snapshot of a stopped VM boots
//! back; names are checked; removing the VM removes its snapshots. And, on the test driver,
//! what libvirt's internal snapshots cannot hold is refused before anything is written.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use kiln::libvirt::LibvirtError;
use kiln::progress::NoProgress;
use kiln::topology::LibvirtHost;
use kiln::{DiskSpec, Error, VmSpec};
use kiln_testkit::{TestEnv, remote_libvirt_uri, require_libvirtd_remote, sh, unique_name};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_restore_and_disk_only_snapshots_on_libvirtd() {
    require_libvirtd_remote();
    let env = TestEnv::new();
    let id = unique_name("kt");
    let host = env.libvirt_host(&remote_libvirt_uri(), &id).await;
    let name = format!("{id}-vm");
    let spec = VmSpec::builder(&name)
        .memory_mib(256)
        .disk(DiskSpec::new_gib(1))
        .build()
        .unwrap();

    let result = async {
        host.up(&spec, &NoProgress).await?;
        // One mark in the guest's memory (the rootfs is RAM) and one on its disk.
        let mark = |text: &str| {
            format!("echo {text} > /root/mark && printf {text} | dd of=/dev/vda bs=1 conv=notrunc 2>/dev/null && sync")
        };
        let read = "cat /root/mark; head -c 6 /dev/vda; echo";
        sh(&host, &name, &mark("before")).await;
        let info = host.snapshot(&name, "s1", false, &NoProgress).await?;
        assert!(!info.disk_only && info.disks == 1, "{info:?}");
        sh(&host, &name, &mark("after!")).await;
        assert_eq!(sh(&host, &name, read).await, "after!\nafter!\n");

        // Taken names, unknown snapshots and the wrong state are refused.
        let again = host.snapshot(&name, "s1", false, &NoProgress).await;
        assert!(matches!(again, Err(Error::SnapshotExists { .. })), "{again:?}");
        let missing = host.restore(&name, "nope", &NoProgress).await;
        assert!(matches!(missing, Err(Error::SnapshotNotFound { .. })), "{missing:?}");
        let running = host.snapshot(&name, "d1", true, &NoProgress).await;
        assert!(matches!(running, Err(Error::WrongState { .. })), "{running:?}");

        host.restore(&name, "s1", &NoProgress).await?;
        assert_eq!(sh(&host, &name, read).await, "before\nbefore\n");
        let listed = host.snapshots(&name).await?;
        assert_eq!(
            listed.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["s1"]
        );
        assert!(!listed[0].qemu_version.is_empty(), "{listed:?}");

        // A stopped VM: its disks alone, and a restore boots from them.
        sh(&host, &name, &mark("stop-1")).await;
        host.stop(&name, &NoProgress).await?;
        let info = host.snapshot(&name, "d1", true, &NoProgress).await?;
        assert!(info.disk_only, "{info:?}");
        host.start(&name, &NoProgress).await?;
        sh(&host, &name, &mark("stop-2")).await;
        host.restore(&name, "d1", &NoProgress).await?;
        assert_eq!(
            sh(&host, &name, "head -c 6 /dev/vda; echo").await,
            "stop-1\n"
        );

        host.remove_snapshot(&name, "s1").await?;
        let gone = host.remove_snapshot(&name, "s1").await;
        assert!(matches!(gone, Err(Error::SnapshotNotFound { .. })), "{gone:?}");
        assert_eq!(host.snapshots(&name).await?.len(), 1);
        Ok::<_, Error>(())
    }
    .await;

    // The VM goes with its remaining snapshot, whatever happened above.
    let removed = host.remove(&name, true, &NoProgress).await;
    result.unwrap();
    removed.unwrap();
    assert!(host.conn().domain(&name).await.unwrap().is_none());
    assert!(!host.conn().pool_exists().await.unwrap(), "pool left");
}

#[tokio::test]
async fn what_internal_snapshots_cannot_hold_is_refused() {
    let env = TestEnv::new();
    let host = LibvirtHost::connect(&env.test_driver_uri("snap"), &env.paths())
        .await
        .unwrap();
    let diskless = VmSpec::builder("diskless").build().unwrap();
    host.up(&diskless, &NoProgress).await.unwrap();
    let refused = host.snapshot("diskless", "s1", false, &NoProgress).await;
    let Err(Error::Libvirt(err @ LibvirtError::Unsupported { .. })) = &refused else {
        panic!("{refused:?}");
    };
    assert!(err.to_string().contains("has none"), "{err}");
    assert!(err.hint().unwrap().contains("--disk"), "{err}");
    assert!(host.snapshots("diskless").await.unwrap().is_empty());

    let bad = host.snapshot("diskless", "../x", false, &NoProgress).await;
    assert!(matches!(bad, Err(Error::Spec(_))), "{bad:?}");
    let err = kiln::topology::Host::clone_vm(&host, "diskless", "s1", "twin", &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err:?}");
    assert!(err.hint().unwrap().contains("daemonless"), "{err}");
}
