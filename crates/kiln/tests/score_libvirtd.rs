//! Scores against a real libvirtd with TCG domains, reached both locally (`qemu:///system`)
//! and as a remote host (`qemu+ssh://` to a loopback sshd that takes only this run's key:
//! images go up through the storage API, the agent is tunnelled through the connection): the VM boots the kiln image, its
//! agent answers, a re-apply changes nothing, and destroy leaves no domain, network, volume
//! or file behind.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use kiln::progress::NoProgress;
use kiln::score::{NetworkScore, Score, VmHost, VmScore};
use kiln::spec::{NetworkSpec, ShareSpec};
use kiln::topology::LibvirtHost;
use kiln::{DiskSpec, ExecRequest, ExitStatus, NetworkRef, VmSpec};
use kiln_testkit::{
    TEST_SSH_DIR, TEST_SSH_PORT, TestEnv, remote_libvirt_uri, require_libvirtd,
    require_libvirtd_remote, unique_name,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_apply_boots_the_kiln_image_exec_works_and_destroy_cleans_up() {
    require_libvirtd();
    apply_exec_destroy("qemu:///system", 231).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_apply_uploads_the_image_tunnels_the_agent_and_destroy_cleans_up() {
    require_libvirtd_remote();
    apply_exec_destroy(&remote_libvirt_uri(), 232).await;
}

/// The suite's daemon is no open door: no libvirt TCP port, and its sshd refuses any key but
/// the run's, and passwords.
#[test]
fn the_remote_daemon_takes_only_the_runs_key() {
    require_libvirtd_remote();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", 16509)).is_err(),
        "something listens on libvirt's TCP port 16509 (unauthenticated?)"
    );
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("stranger");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(made.success());
    let ssh = |identity: &std::path::Path| {
        std::process::Command::new("ssh")
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
            .args([
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
            ])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={TEST_SSH_DIR}/known_hosts"))
            .arg("-i")
            .arg(identity)
            .args(["-p", &TEST_SSH_PORT.to_string(), "root@127.0.0.1", "true"])
            .output()
            .unwrap()
    };
    let stranger = ssh(&key);
    assert!(!stranger.status.success(), "a stranger's key got in");
    assert!(
        String::from_utf8_lossy(&stranger.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&stranger.stderr)
    );
    let own = ssh(&std::path::Path::new(TEST_SSH_DIR).join("client_key"));
    assert!(
        own.status.success(),
        "{}",
        String::from_utf8_lossy(&own.stderr)
    );
}

/// The guest's secret is in a 0600 file on the libvirt host, and neither in the domain XML a
/// read-only client sees nor on any process's command line.
fn secret_stays_out_of_sight(uri: &str, pool_path: &str, vm: &str) {
    use std::os::unix::fs::PermissionsExt;
    let file = format!("{pool_path}/{vm}-secret");
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o077,
        0,
        "{file} is readable by others"
    );
    let secret = std::fs::read_to_string(&file).unwrap();
    assert_eq!(secret.len(), 64, "{secret:?}");

    let read_only = virt::connect::Connect::open_read_only(Some(uri)).unwrap();
    let domain = read_only.lookup_domain_by_name(vm).unwrap();
    let xml = domain.xml_desc(0).unwrap();
    assert!(xml.contains(&file), "the XML names the file: {xml}");
    assert!(!xml.contains(&secret), "the secret is in the domain XML");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline);
            assert!(
                !cmdline.contains(&secret),
                "the secret is on the command line of {}",
                entry.path().display()
            );
        }
    }
}

async fn apply_exec_destroy(uri: &str, second_octet: u8) {
    let env = TestEnv::new();
    let id = unique_name("kt");
    let host = env.libvirt_host(uri, &id).await;
    let pool_path = host.conn().options().pool_path().to_owned();

    // A subnet unlikely to clash: 10.<second_octet>.<pid>.0/24.
    let third = u8::try_from(std::process::id() % 250).unwrap();
    let net = |host: u8| [10, second_octet, third, host];
    let net_name = format!("{id}-net");
    let mac = "52:54:00:4b:00:01".parse().unwrap();
    let network = NetworkSpec::nat(&net_name, &format!("10.{second_octet}.{third}.0/24"))
        .dhcp(net(100), net(150))
        .reserve(mac, net(10))
        .build()
        .unwrap();
    // A share the unprivileged QEMU of libvirt can read.
    let share = std::env::temp_dir().join(format!("{id}-share"));
    std::fs::create_dir_all(&share).unwrap();
    std::fs::set_permissions(&share, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(share.join("hello.txt"), "shared\n").unwrap();
    let vm_name = format!("{id}-vm");
    let vm = VmSpec::builder(&vm_name)
        .memory_mib(256)
        .share(ShareSpec::new(&share, "/srv/share").read_only())
        .network(NetworkRef::named_with_mac(&net_name, mac))
        .disk(DiskSpec::new_gib(1))
        .build()
        .unwrap();
    let networks = NetworkScore::new(format!("{id}-n"), [network]).unwrap();
    let vms = VmScore::new(id.clone(), [vm]).unwrap();
    let net_interpret = Score::<LibvirtHost>::create_interpret(&networks);
    let vm_interpret = Score::<LibvirtHost>::create_interpret(&vms);

    let result = async {
        net_interpret.execute(&host, &NoProgress).await?;
        vm_interpret.execute(&host, &NoProgress).await?;

        // The guest runs the kiln image and answers through the agent channel.
        let agent = host.vm_agent(&vm_name, Duration::from_secs(30)).await?;
        let out = agent
            .exec(ExecRequest::new([
                "sh",
                "-c",
                "hostname; ls /dev/vda; cat /srv/share/hello.txt",
            ]))
            .await?
            .output()
            .await?;
        assert_eq!(out.status, ExitStatus::Code(0), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{vm_name}\n/dev/vda\nshared\n")
        );
        drop(agent);
        secret_stays_out_of_sight(uri, &pool_path, &vm_name);

        let again = vm_interpret.execute(&host, &NoProgress).await?;
        assert!(again.is_unchanged(), "{again}");
        let again = net_interpret.execute(&host, &NoProgress).await?;
        assert!(again.is_unchanged(), "{again}");
        Ok::<_, kiln::Error>(())
    }
    .await;

    // Destroy runs whatever happened above, so a failure leaves nothing behind either.
    let destroyed = vm_interpret.destroy(&host, &NoProgress).await;
    let destroyed_net = net_interpret.destroy(&host, &NoProgress).await;
    let _ = std::fs::remove_dir_all(&share);
    result.unwrap();
    destroyed.unwrap();
    destroyed_net.unwrap();

    let conn = host.conn();
    assert!(
        conn.domain(&vm_name).await.unwrap().is_none(),
        "domain left"
    );
    assert!(
        conn.network(&net_name).await.unwrap().is_none(),
        "network left"
    );
    assert!(!conn.pool_exists().await.unwrap(), "pool left");
    assert!(
        !std::path::Path::new(&pool_path).exists(),
        "pool directory left"
    );
    assert!(
        !std::path::Path::new(&format!("{pool_path}/{vm_name}-serial.log")).exists(),
        "serial log left"
    );
}
