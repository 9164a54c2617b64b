//! The config drive, for real, on both hosts with one test body: a VM's metadata and its
//! secrets (by reference) reach the guest on a read-only `kiln-config` disk at
//! `/run/kiln/config`; metadata and secrets changed while it is stopped are what it sees at
//! its next start; warm clones of one template each see their own.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use kiln::progress::NoProgress;
use kiln::spec::MetadataChange;
use kiln::topology::{Host, LocalHost};
use kiln::{Error, VmSpec};
use kiln_testkit::{TestEnv, require_libvirtd, sh, unique_name};

const DOCUMENT: &str = "/run/kiln/config/metadata.json";

async fn document(host: &dyn Host, name: &str) -> serde_json::Value {
    serde_json::from_str(&sh(host, name, &format!("cat {DOCUMENT}")).await).unwrap()
}

/// The body both hosts run.
async fn metadata_and_secrets_reach_the_guest(host: &dyn Host, name: &str) {
    let p = &NoProgress;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("token");
    std::fs::write(&secret, "s3cret-1\n").unwrap();
    let spec = VmSpec::builder(name)
        .metadata("role", "db")
        .metadata("note", "two words")
        .secret("token", &secret)
        .build()
        .unwrap();
    host.up(&spec, p).await.unwrap();

    let info = host.find(name).await.unwrap().unwrap();
    let doc = document(host, name).await;
    assert_eq!(doc["format"], 1);
    assert_eq!(doc["name"], name);
    assert_eq!(doc["id"].as_str(), info.id.as_deref(), "{doc}");
    assert_eq!(doc["metadata"]["role"], "db");
    assert_eq!(doc["metadata"]["note"], "two words");
    assert_eq!(doc["secrets"], serde_json::json!(["token"]));
    assert_eq!(doc["spec"]["cpus"], 1);
    // The secret is in its own file, root's only, and never in the document.
    let all = sh(host, name, &format!("cat {DOCUMENT}")).await;
    assert!(!all.contains("s3cret"), "{all}");
    assert_eq!(
        sh(host, name, "cat /run/kiln/config/secrets/token").await,
        "s3cret-1\n"
    );
    assert_eq!(
        sh(host, name, "stat -c '%a %u' /run/kiln/config/secrets/token").await,
        "400 0\n"
    );
    // Read-only, at the block device and at the mount.
    assert_eq!(
        sh(
            host,
            name,
            "touch /run/kiln/config/x 2>/dev/null || echo refused; \
             grep ' /run/kiln/config ' /proc/mounts | grep -c ' ro,'"
        )
        .await,
        "refused\n1\n"
    );

    // Changed while it runs: kept for the next start, which also reads the secret anew.
    let change = MetadataChange {
        set: [("role".to_owned(), "web".to_owned())].into(),
        unset: vec!["note".to_owned()],
    };
    let now = host.set_metadata(name, &change).await.unwrap();
    assert_eq!(now, [("role".to_owned(), "web".to_owned())].into());
    assert_eq!(document(host, name).await["metadata"]["role"], "db");
    assert_eq!(
        host.find(name).await.unwrap().unwrap().metadata["role"],
        "web"
    );
    host.stop(name, p).await.unwrap();
    std::fs::write(&secret, "s3cret-2\n").unwrap();
    host.start(name, p).await.unwrap();
    let doc = document(host, name).await;
    assert_eq!(doc["metadata"], serde_json::json!({"role": "web"}), "{doc}");
    assert_eq!(doc["id"].as_str(), info.id.as_deref(), "the id stays");
    assert_eq!(
        sh(host, name, "cat /run/kiln/config/secrets/token").await,
        "s3cret-2\n"
    );

    // Bad metadata changes nothing; a secret gone from the host is named at the next start.
    let bad = MetadataChange {
        set: [("../x".to_owned(), "v".to_owned())].into(),
        unset: Vec::new(),
    };
    let err = host.set_metadata(name, &bad).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Spec(kiln::spec::SpecError::Metadata(
                kiln::spec::MetadataError::BadKey { .. }
            ))
        ),
        "{err:?}"
    );
    assert_eq!(
        host.find(name).await.unwrap().unwrap().metadata["role"],
        "web"
    );
    host.stop(name, p).await.unwrap();
    std::fs::remove_file(&secret).unwrap();
    let err = host.start(name, p).await.unwrap_err();
    assert!(
        matches!(&err, Error::SecretUnreadable { path, .. } if *path == secret),
        "{err:?}"
    );
    host.remove(name, true, p).await.unwrap();

    // A secret that cannot be read refuses the VM before anything is made.
    let spec = VmSpec::builder(name)
        .secret("token", dir.path().join("missing"))
        .build()
        .unwrap();
    let err = host.up(&spec, p).await.unwrap_err();
    assert!(matches!(err, Error::SecretUnreadable { .. }), "{err:?}");
    assert!(host.find(name).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_and_secrets_reach_the_guest_on_the_daemonless_backend() {
    let env = TestEnv::new();
    let host = LocalHost::new(env.kiln());
    metadata_and_secrets_reach_the_guest(&host, "cfg-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_and_secrets_reach_the_guest_on_libvirt() {
    require_libvirtd();
    let env = TestEnv::new();
    let name = unique_name("kt-cfg");
    let host = env
        .libvirt_host("qemu:///system", &name)
        .await
        .with_boot_timeout(Duration::from_secs(90));
    env.on_libvirt(host, name, |host, name| async move {
        metadata_and_secrets_reach_the_guest(&host, &name).await;
    })
    .await;
}

/// Warm clones restore the template's memory, which had the template's drive mounted; each
/// must see its own drive, not the template's or a sibling's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_clones_each_see_their_own_metadata() {
    let env = TestEnv::new();
    let kiln = env.kiln().with_warm_starts(true);
    let host = LocalHost::new(kiln);
    let p = &NoProgress;
    for (name, role) in [("cfg-w1", "one"), ("cfg-w2", "two")] {
        let spec = VmSpec::builder(name)
            .metadata("role", role)
            .build()
            .unwrap();
        host.up(&spec, p).await.unwrap();
    }
    for (name, role) in [("cfg-w1", "one"), ("cfg-w2", "two")] {
        let doc = document(&host, name).await;
        let info = host.find(name).await.unwrap().unwrap();
        assert_eq!(doc["name"], name, "{doc}");
        assert_eq!(doc["metadata"]["role"], role, "{doc}");
        assert_eq!(doc["id"].as_str(), info.id.as_deref(), "{doc}");
    }
    let log = host.read_log("cfg-w2", 0).await.unwrap();
    assert!(
        String::from_utf8_lossy(&log.data).contains("config drive remounted"),
        "the clone's agent remounted its drive"
    );
    for name in ["cfg-w1", "cfg-w2"] {
        host.remove(name, true, p).await.unwrap();
    }
}

/// A restore starts QEMU with the drive made now, under a guest that mounted the drive of
/// when the snapshot was taken: kiln re-keys the restored agent, which remounts it; and each
/// restore of one snapshot gets fresh randomness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_vm_sees_the_drive_of_its_restore_and_fresh_randomness() {
    let env = TestEnv::new();
    let host = LocalHost::new(env.kiln());
    let p = &NoProgress;
    let name = "cfg-snap";
    let spec = VmSpec::builder(name)
        .metadata("role", "before")
        .build()
        .unwrap();
    host.up(&spec, p).await.unwrap();
    host.save_snapshot(name, "s1", false, p).await.unwrap();
    let change = MetadataChange {
        set: [("role".to_owned(), "after".to_owned())].into(),
        unset: Vec::new(),
    };
    host.set_metadata(name, &change).await.unwrap();
    let mut draws = Vec::new();
    for _ in 0..2 {
        host.restore_snapshot(name, "s1", p).await.unwrap();
        let doc = document(&host, name).await;
        assert_eq!(doc["metadata"]["role"], "after", "{doc}");
        draws.push(sh(&host, name, "head -c 16 /dev/urandom | od -An -tx1").await);
    }
    assert_ne!(
        draws[0], draws[1],
        "two restores drew the same random bytes"
    );
    host.remove(name, true, p).await.unwrap();
}

/// A libvirt domain's tag names its secrets' host files; only the machine that declared
/// them reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_of_a_libvirt_vm_are_read_only_where_they_were_declared() {
    require_libvirtd();
    let env = TestEnv::new();
    let name = unique_name("kt-cfs");
    let host = env
        .libvirt_host("qemu:///system", &name)
        .await
        .with_boot_timeout(Duration::from_secs(90));
    // Another machine: kiln with other state, the same libvirt host and pool.
    let other_env = TestEnv::new();
    let other = other_env.libvirt_host("qemu:///system", &name).await;
    env.on_libvirt(host, name, |host, name| async move {
        let p = &NoProgress;
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("token");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let spec = VmSpec::builder(&name)
            .secret("token", &secret)
            .build()
            .unwrap();
        host.up(&spec, p).await.unwrap();
        host.stop(&name, p).await.unwrap();
        let err = other.start(&name, p).await.unwrap_err();
        assert!(
            matches!(&err, Error::SecretsNotDeclaredHere { vm } if *vm == name),
            "{err:?}"
        );
        assert!(err.hint().is_some());
        host.start(&name, p).await.unwrap();
        assert_eq!(
            sh(&host, &name, "cat /run/kiln/config/secrets/token").await,
            "s3cret\n"
        );
    })
    .await;
}
