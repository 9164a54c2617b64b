//! Debian userland images, for real: built with mmdebstrap from the Debian mirror, booted on
//! both hosts through the same test body, snapshotted and cloned, and refused with a clear
//! error when a recipe is wrong. The builds are cached outside the clone
//! (`kiln_testkit::shared_cache_dir`): the first run of the suite on a machine pays for them.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use kiln::image::{ImageError, ImageSpec, ImageStore};
use kiln::progress::{Event, NoProgress, Stage};
use kiln::spec::DiskSpec;
use kiln::topology::{Host, LocalHost};
use kiln::{ByteSize, Error, VmSpec, VmState};
use kiln_testkit::{TestEnv, require_libvirtd, sh, unique_name};

/// The body both hosts run: a `debian` VM behaves like a small Debian machine.
async fn behaves_like_debian(host: &dyn Host, name: &str) {
    let p = &NoProgress;
    let spec = VmSpec::builder(name)
        .memory_mib(512)
        .image("debian")
        .root_size(ByteSize::from_gib(3))
        .disk(DiskSpec::new_gib(1).labeled("data"))
        .metadata("role", "db")
        .build()
        .unwrap();
    host.up(&spec, p).await.unwrap();

    // The config drive stays mounted across the switch into the Debian root.
    let config = sh(host, name, "cat /run/kiln/config/metadata.json").await;
    assert!(config.contains(r#""role": "db""#), "{config}");
    let release = sh(host, name, ". /etc/os-release; echo $ID $VERSION_ID").await;
    assert_eq!(release, "debian 12\n");
    let apt = sh(host, name, "apt-get --version | head -n1").await;
    assert!(apt.starts_with("apt 2."), "{apt}");
    // The kernel's modules are there for the userland's own modprobe.
    let modules = sh(host, name, "ls /lib/modules/$(uname -r)/kernel/fs/ext4").await;
    assert!(modules.contains("ext4.ko"), "{modules}");
    // The labelled disk is where the guide says; the root grew to the size asked for.
    let label = sh(host, name, "readlink -f /dev/disk/by-id/virtio-data").await;
    assert!(label.starts_with("/dev/vd"), "{label}");
    let size = sh(host, name, "df -m --output=size / | tail -n1").await;
    let mib: u64 = size.trim().parse().unwrap();
    assert!(mib > 2500, "the root filesystem did not grow: {mib} MiB");

    // A file written to / survives stop and start: the VM's overlay keeps it.
    sh(host, name, "echo kept > /kept.txt && sync").await;
    host.stop(name, p).await.unwrap();
    assert_eq!(
        host.find(name).await.unwrap().map(|i| i.state),
        Some(VmState::Stopped)
    );
    host.start(name, p).await.unwrap();
    assert_eq!(sh(host, name, "cat /kept.txt").await, "kept\n");
    host.remove(name, true, p).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debian_vm_on_the_daemonless_backend() {
    let env = TestEnv::new();
    let host = LocalHost::new(env.kiln());
    behaves_like_debian(&host, "deb-local").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debian_vm_on_libvirt() {
    require_libvirtd();
    let env = TestEnv::new();
    let name = unique_name("kt-deb");
    let host = env.libvirt_host("qemu:///system", &name).await;
    env.on_libvirt(host, name, |host, name| async move {
        behaves_like_debian(&host, &name).await;
    })
    .await;
}

/// A snapshot of a Debian VM brings its root filesystem back; a clone starts with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debian_vm_snapshots_and_clones() {
    let env = TestEnv::new();
    let host = LocalHost::new(env.kiln());
    let p = &NoProgress;
    let spec = VmSpec::builder("deb-snap")
        .memory_mib(512)
        .image("debian")
        .build()
        .unwrap();
    host.up(&spec, p).await.unwrap();
    sh(&host, "deb-snap", "echo before > /state.txt").await;
    host.save_snapshot("deb-snap", "s1", false, p)
        .await
        .unwrap();
    sh(
        &host,
        "deb-snap",
        "echo after > /state.txt && rm /etc/os-release",
    )
    .await;
    host.restore_snapshot("deb-snap", "s1", p).await.unwrap();
    assert_eq!(sh(&host, "deb-snap", "cat /state.txt").await, "before\n");
    assert!(
        sh(&host, "deb-snap", "cat /etc/os-release")
            .await
            .contains("Debian")
    );

    host.clone_vm("deb-snap", "s1", "deb-clone", p)
        .await
        .unwrap();
    assert_eq!(sh(&host, "deb-clone", "cat /state.txt").await, "before\n");
    assert_eq!(sh(&host, "deb-clone", "hostname").await, "deb-clone\n");
    // The clone writes to its own overlay: the source does not see it.
    sh(&host, "deb-clone", "echo clone > /state.txt").await;
    assert_eq!(sh(&host, "deb-snap", "cat /state.txt").await, "before\n");

    // The image cannot go while VMs read through it.
    match env.kiln().remove_image("debian").await {
        Err(Error::ImageInUse { vms, .. }) => {
            assert_eq!(vms, ["deb-clone", "deb-snap"]);
        }
        other => panic!("removing an image in use: {other:?}"),
    }
    host.remove("deb-clone", true, p).await.unwrap();
    host.remove("deb-snap", true, p).await.unwrap();
}

/// Bad recipes: apt's own answer names the unknown package, a failing setup command says
/// which; neither leaves anything in the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_recipes_fail_clearly_and_cache_nothing() {
    let env = TestEnv::new();
    let unknown = ImageSpec::builder("kt-unknown-pkg")
        .package("kiln-no-such-package")
        .build()
        .unwrap();
    let failing = ImageSpec::builder("kt-failing-setup")
        .file("/etc/kiln-test", "x")
        .run("test -f /etc/kiln-test")
        .run("echo about to fail; exit 7")
        .build()
        .unwrap();
    let store = ImageStore::new(env.paths())
        .with_recipe(unknown)
        .unwrap()
        .with_recipe(failing)
        .unwrap();
    let inputs = kiln_testkit::image_inputs();

    match store
        .ensure("kt-unknown-pkg", Some(&inputs), false, &NoProgress)
        .await
    {
        Err(Error::Image(ImageError::UnknownPackage { package, .. })) => {
            assert_eq!(package, "kiln-no-such-package");
        }
        other => panic!("an unknown package: {other:?}"),
    }
    let building = kiln_testkit::events::Recorder::default();
    match store
        .ensure("kt-failing-setup", Some(&inputs), false, &building)
        .await
    {
        Err(Error::Image(ImageError::SetupFailed { detail, output, .. })) => {
            assert!(detail.contains("setup command 2"), "{detail}");
            assert!(detail.contains("exit code 7"), "{detail}");
            assert!(output.contains("about to fail"), "{output}");
        }
        other => panic!("a failing setup command: {other:?}"),
    }
    // Each step of the build is a stage of its own, reported from its blocking thread: the
    // kernel was unpacked, the packages' step ran (and failed), nothing came after it.
    let started = |stage| {
        building
            .events()
            .iter()
            .any(|e| matches!(e, Event::StageStarted { stage: s } if *s == stage))
    };
    assert!(building.finished(Stage::UnpackKernel));
    assert!(building.finished(Stage::InstallPackages));
    assert!(!started(Stage::MakeFilesystem));
    for name in ["kt-unknown-pkg", "kt-failing-setup"] {
        assert!(
            matches!(store.get(name), Err(Error::ImageNotBuilt { .. })),
            "{name} left something in the cache"
        );
        let work = env.paths().images_dir().join(format!(".{name}.build"));
        assert!(!work.exists(), "{} was left behind", work.display());
    }
    // A declared recipe cannot take a shipped name; an unknown image lists the known ones.
    let taken = ImageSpec::builder("rust").build().unwrap();
    assert!(ImageStore::new(env.paths()).with_recipe(taken).is_err());
    match store.get("nonesuch") {
        Err(Error::UnknownImage { known, .. }) => {
            assert!(known.iter().any(|k| k == "debian"), "{known:?}");
        }
        other => panic!("an unknown image: {other:?}"),
    }
}

/// Full mode: systemd is PID 1, the agent runs as its unit, and `stop` goes through
/// systemd's own poweroff, so what was written is on the disk at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_mode_runs_systemd_as_pid_one() {
    let env = TestEnv::new();
    let host = LocalHost::new(env.kiln());
    let p = &NoProgress;
    let spec = VmSpec::builder("deb-full")
        .memory_mib(512)
        .image("debian-full")
        .metadata("role", "db")
        .build()
        .unwrap();
    host.up(&spec, p).await.unwrap();
    assert_eq!(sh(&host, "deb-full", "cat /proc/1/comm").await, "systemd\n");
    // The config drive, mounted before systemd started, is still there under it.
    let config = sh(&host, "deb-full", "cat /run/kiln/config/metadata.json").await;
    assert!(config.contains(r#""role": "db""#), "{config}");
    assert_eq!(
        sh(&host, "deb-full", "systemctl is-active kiln-agent").await,
        "active\n"
    );
    sh(&host, "deb-full", "echo kept > /kept.txt").await;
    host.stop("deb-full", p).await.unwrap();
    let log = host.read_log("deb-full", 0).await.unwrap();
    let log = String::from_utf8_lossy(&log.data);
    assert!(log.contains("reboot: Power down"), "{log}");
    host.start("deb-full", p).await.unwrap();
    assert_eq!(sh(&host, "deb-full", "cat /kept.txt").await, "kept\n");
    host.remove("deb-full", true, p).await.unwrap();
}

/// A named network for cloud-init's network-config: its name, and the gateway's address on
/// its /24.
struct Lan {
    network: String,
    gateway: [u8; 4],
}

/// The cloud body both hosts run: the `cloud` image runs the typed user-data at first boot
/// (hostname, a user with a key, a written file, a runcmd marker). Where the host forwards
/// ports, a real `ssh` client logs in with the key. With a named network, cloud-init's
/// network-config gives the NIC on it a static address, and the guest reaches its gateway.
async fn cloud_init_reaches_the_guest(
    host: &dyn Host,
    name: &str,
    ssh_port: Option<u16>,
    lan: Option<&Lan>,
) {
    use kiln::spec::{CloudInit, CloudNic, PortForward};
    let p = &NoProgress;
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("id");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "kiln-test", "-f"])
        .arg(&key)
        .status()
        .expect("prerequisite missing: ssh-keygen (openssh-client; scripts/setup.sh installs it)");
    assert!(made.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let mut spec = VmSpec::builder(name).memory_mib(768).image("cloud");
    if let Some(port) = ssh_port {
        spec = spec.port(format!("{port}:22").parse::<PortForward>().unwrap());
    }
    let mut cloud = CloudInit::new()
        .hostname("seeded")
        .user("ops")
        .ssh_authorized_key(public.trim())
        .write_file("/etc/kiln-written", "from user-data\n")
        .runcmd("echo ran > /var/tmp/runcmd-marker");
    let [a, b, c, _] = lan.map_or([0; 4], |l| l.gateway);
    let address = format!("{a}.{b}.{c}.50");
    if let Some(lan) = lan {
        let mac: kiln::spec::MacAddr = "52:54:00:c1:0d:50".parse().unwrap();
        spec = spec
            .network(kiln::NetworkRef::User)
            .network(kiln::NetworkRef::named_with_mac(&lan.network, mac));
        cloud = cloud.nic(CloudNic::new("lan0", mac).address(format!("{address}/24")));
    }
    let spec = spec.cloud_init(cloud).build().unwrap();
    host.up(&spec, p).await.unwrap();
    let status = sh(
        host,
        name,
        "cloud-init status --wait >/dev/null; cloud-init status",
    )
    .await;
    assert!(status.contains("done"), "{status}");
    assert_eq!(sh(host, name, "hostname").await, "seeded\n");
    assert_eq!(sh(host, name, "id -un ops").await, "ops\n");
    assert_eq!(
        sh(host, name, "cat /etc/kiln-written").await,
        "from user-data\n"
    );
    assert_eq!(sh(host, name, "cat /var/tmp/runcmd-marker").await, "ran\n");
    if let Some(lan) = lan {
        // network-config: the NIC found by its MAC, renamed, addressed, and on the network.
        let addr = sh(host, name, "ip -4 -o addr show dev lan0").await;
        assert!(addr.contains(&format!("inet {address}/24")), "{addr}");
        let [a, b, c, d] = lan.gateway;
        let ping = sh(
            host,
            name,
            &format!("ping -c 1 -W 10 {a}.{b}.{c}.{d} >/dev/null && echo reached"),
        )
        .await;
        assert_eq!(ping, "reached\n");
    }
    // The seed is read-only to the guest.
    let write = sh(
        host,
        name,
        "dd if=/dev/zero of=/dev/disk/by-id/virtio-cidata count=1 2>&1 || echo refused",
    )
    .await;
    assert!(write.contains("refused"), "{write}");

    if let Some(port) = ssh_port {
        let out = std::process::Command::new("ssh")
            .arg("-i")
            .arg(&key)
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=30",
                "-p",
                &port.to_string(),
                "ops@127.0.0.1",
                "sudo -n id -u; hostname",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ssh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "0\nseeded\n");
    }
    host.remove(name, true, p).await.unwrap();

    // An image without cloud-init refuses the data before anything is made.
    let plain = VmSpec::builder(format!("{name}-plain"))
        .image("debian")
        .cloud_init(CloudInit::new().runcmd("true"))
        .build()
        .unwrap();
    match host.up(&plain, p).await {
        Err(Error::ImageLacksCloudInit { image }) => assert_eq!(image, "debian"),
        other => panic!("cloud-init data on an image without it: {other:?}"),
    }
    assert!(host.find(plain.name()).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_init_on_the_daemonless_backend_and_ssh_logs_in() {
    let env = TestEnv::new();
    let host = LocalHost::new(env.kiln());
    cloud_init_reaches_the_guest(&host, "cloud-1", Some(kiln_testkit::free_port()), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_init_on_libvirt() {
    require_libvirtd();
    let env = TestEnv::new();
    let name = unique_name("kt-cloud");
    let host = env.libvirt_host("qemu:///system", &name).await;
    // A named network of its own, for cloud-init's network-config.
    use kiln::topology::NetworkHost;
    let lan = Lan {
        network: format!("{name}-lan"),
        gateway: [10, 219, 61, 1],
    };
    let network = kiln::NetworkSpec::isolated(&lan.network, "10.219.61.0/24")
        .build()
        .unwrap();
    host.create_network(&network, "kiln-test").await.unwrap();
    let outcome = tokio::spawn({
        let host = host.clone();
        async move {
            env.on_libvirt(host, name, move |host, name| async move {
                cloud_init_reaches_the_guest(&host, &name, None, Some(&lan)).await;
            })
            .await;
        }
    })
    .await;
    // Whatever happened, the network goes (the VM on it went first).
    host.delete_network(network.name()).await.unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic.into_panic());
    }
}
