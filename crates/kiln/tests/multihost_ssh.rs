//! One topology over two real libvirt daemons, each reached over SSH: the system daemon as
//! root (`scripts/libvirtd.sh`'s loopback sshd), and an unprivileged user's session daemon
//! through an sshd this test starts for it ([`SessionHost`]). A score spreads VMs over both
//! with one pinned; each VM's agent answers through its host's SSH connection; `kiln ls`
//! shows both hosts; a re-apply is unchanged. Then the second host is lost (its sshd and
//! daemon stop) halfway through the next apply, right after its first new VM answered: that
//! apply reports the change that failed and its host, and the first host's changes still
//! converge; once the host is back, a re-apply converges with no VM twice and none left over.
//! Destroy leaves nothing on either.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use kiln::progress::NoProgress;
use kiln::score::{Score, VmScore};
use kiln::topology::{Host, LibvirtHost, MultiHost, VmHost};
use kiln::{Error, ExecRequest, NetPolicy, VmSpec};
use kiln_testkit::session_host::SessionHost;
use kiln_testkit::{TestEnv, remote_libvirt_uri, require_libvirtd_remote, unique_name};

/// Loses the session host as soon as the first VM of an apply has answered.
struct LoseAfterFirstBoot {
    host: std::sync::Arc<SessionHost>,
    lost: std::sync::atomic::AtomicBool,
}

impl kiln::progress::Reporter for LoseAfterFirstBoot {
    fn report(&self, event: kiln::progress::Event) {
        use std::sync::atomic::Ordering;
        if let kiln::progress::Event::StageDone {
            stage: kiln::progress::Stage::WaitAgent,
            ..
        } = event
            && !self.lost.swap(true, Ordering::SeqCst)
        {
            self.host.lose();
        }
    }
}

/// A VM name of this run's own: the system daemon is shared with tests running beside this
/// one, and its VMs count in the spread.
fn n(base: &str) -> String {
    format!("mh{}-{base}", std::process::id())
}

fn vm(name: &str) -> VmSpec {
    // No NIC: a session daemon cannot make kiln's NAT bridge; the agent needs none.
    VmSpec::builder(n(name))
        .memory_mib(256)
        .net_policy(NetPolicy::None)
        .build()
        .unwrap()
}

/// This run's VMs on `host`, by their base names.
async fn names_on(host: &LibvirtHost) -> Vec<String> {
    let prefix = n("");
    let mut names: Vec<String> = host
        .conn()
        .kiln_domains()
        .await
        .unwrap()
        .into_iter()
        .filter_map(|d| d.name.strip_prefix(&prefix).map(str::to_owned))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_score_spreads_over_two_daemons_reached_by_ssh() {
    require_libvirtd_remote();
    let env = std::sync::Arc::new(TestEnv::new());
    let second = std::sync::Arc::new(SessionHost::start());
    let id = unique_name("kt-mh");
    let system = env
        .libvirt_host(&remote_libvirt_uri(), &id)
        .await
        .with_boot_timeout(Duration::from_secs(90));
    let session = env
        .libvirt_host_at(&second.uri(), &id, &second.pool_path(&id))
        .await
        .with_boot_timeout(Duration::from_secs(90));
    let topology = MultiHost::new()
        .with_host("system", system.clone())
        .with_host("session", session.clone())
        .place(n("app-1"), "system")
        .place(n("db-1"), "session");
    let score = VmScore::new("fleet", ["app-1", "app-2", "app-3", "db-1"].map(vm)).unwrap();
    let interpret = Score::<MultiHost>::create_interpret(&score);
    let p = &NoProgress;

    let fleet = kiln::topology::Fleet::new(env.kiln());
    let outcome = tokio::spawn({
        let topology = topology.clone();
        let interpret = Score::<MultiHost>::create_interpret(&score);
        let (system_uri, session_uri) = (system.uri().to_owned(), session.uri().to_owned());
        let (env, second, id, system) = (env.clone(), second.clone(), id.clone(), system.clone());
        async move {
            interpret.execute(&topology, p).await.unwrap();
            let (on_system, on_session) = (names_on(&system).await, names_on(&session).await);
            assert!(
                on_session.contains(&"db-1".to_owned()),
                "pinned: {on_session:?}"
            );
            assert_eq!(on_system.len() + on_session.len(), 4);
            assert!(
                !on_system.is_empty(),
                "spread: {on_system:?} / {on_session:?}"
            );
            // Each VM's agent answers, through its own host's SSH connection.
            for name in ["app-1", "app-2", "app-3", "db-1"].map(n) {
                let agent = topology
                    .vm_agent(&name, Duration::from_secs(30))
                    .await
                    .unwrap();
                let out = agent
                    .exec(ExecRequest::new(["hostname"]))
                    .await
                    .unwrap()
                    .output()
                    .await
                    .unwrap();
                assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{name}\n"));
            }
            // The topology is a host like any other: the verbs go where each VM is.
            let as_host: &dyn Host = &topology;
            let listed = as_host.list().await.unwrap();
            let ours = listed
                .iter()
                .filter(|vm| vm.name.starts_with(&n("")))
                .count();
            assert_eq!(ours, 4, "{listed:?}");
            for name in [n("app-1"), n("db-1")] {
                let log = as_host.read_log(&name, 0).await.unwrap();
                assert!(!log.data.is_empty(), "{name} has a console log");
            }
            as_host.stop(&n("db-1"), p).await.unwrap();
            let state = |info: Option<kiln::VmInfo>| info.map(|i| i.state);
            assert_eq!(
                state(as_host.find(&n("db-1")).await.unwrap()),
                Some(kiln::VmState::Stopped)
            );
            as_host.start(&n("db-1"), p).await.unwrap();
            assert_eq!(
                state(as_host.find(&n("db-1")).await.unwrap()),
                Some(kiln::VmState::Running)
            );
            assert!(as_host.find(&n("nowhere")).await.unwrap().is_none());

            // What `kiln ls` lists has both hosts' VMs: the score's hosts were remembered.
            let listing = fleet.list().await.unwrap();
            assert!(listing.unreachable.is_empty(), "{:?}", listing.unreachable);
            // (The system daemon may hold other tests' VMs too: count this run's.)
            let on = |uri: &str| {
                listing
                    .vms
                    .iter()
                    .filter(|vm| vm.host.as_deref() == Some(uri) && vm.name.starts_with(&n("")))
                    .count()
            };
            assert_eq!(on(&system_uri) + on(&session_uri), 4, "{:?}", listing.vms);
            assert!(on(&session_uri) >= 1 && on(&system_uri) >= 1);
            // What `kiln hosts` shows: both answer, over an authenticated transport.
            let hosts = fleet.hosts().await.unwrap();
            for uri in [&system_uri, &session_uri] {
                let host = hosts.iter().find(|h| &h.host == uri).unwrap();
                assert!(host.reachable && host.authenticated, "{host:?}");
                assert!(host.free_memory_bytes.is_some_and(|b| b > 0), "{host:?}");
                assert!(host.vms >= on(uri), "{host:?}");
            }
            let plan = interpret.plan(&topology).await.unwrap();
            assert!(plan.is_unchanged(), "{plan}");

            // Two new VMs, one per host, made in this order; the session host is lost once
            // the first (on the system host) has answered, before the second is made.
            let all = ["app-1", "app-2", "app-3", "db-1", "app-4", "db-2"];
            let grown = VmScore::new("fleet", all.map(vm)).unwrap();
            let grown_on = |topology: MultiHost| {
                topology
                    .place(n("app-4"), "system")
                    .place(n("db-2"), "session")
            };
            let losing = LoseAfterFirstBoot {
                host: second.clone(),
                lost: false.into(),
            };
            let err = Score::<MultiHost>::create_interpret(&grown)
                .execute(&grown_on(topology.clone()), &losing)
                .await
                .unwrap_err();
            assert!(
                losing.lost.into_inner(),
                "the host was lost during the apply"
            );
            match &err {
                Error::ApplyIncomplete { failures, .. } => {
                    assert!(
                        failures.iter().all(|f| f.contains("host session")),
                        "{failures:?}"
                    );
                    assert!(failures.iter().any(|f| f.contains("db-2")), "{failures:?}");
                }
                other => panic!("expected a per-host report: {other:?}"),
            }
            assert!(err.hint().is_some());
            let hosts = fleet.hosts().await.unwrap();
            let lost = hosts.iter().find(|h| h.host == session_uri).unwrap();
            assert!(!lost.reachable && lost.error.is_some(), "{lost:?}");
            // The other host converged all the same.
            assert!(names_on(&system).await.contains(&"app-4".to_owned()));

            // The host is back; the next run (new connections) converges, nothing twice.
            second.restore();
            let session = env
                .libvirt_host_at(&second.uri(), &id, &second.pool_path(&id))
                .await
                .with_boot_timeout(Duration::from_secs(90));
            let topology = grown_on(
                MultiHost::new()
                    .with_host("system", system.clone())
                    .with_host("session", session.clone())
                    .place(n("app-1"), "system")
                    .place(n("db-1"), "session"),
            );
            let interpret = Score::<MultiHost>::create_interpret(&grown);
            interpret.execute(&topology, p).await.unwrap();
            assert!(interpret.plan(&topology).await.unwrap().is_unchanged());
            let mut everywhere = names_on(&system).await;
            everywhere.extend(names_on(&session).await);
            everywhere.sort();
            let mut expected = all.map(str::to_owned).to_vec();
            expected.sort();
            assert_eq!(everywhere, expected, "each VM once, on one host");
            assert!(names_on(&session).await.contains(&"db-2".to_owned()));
        }
    })
    .await;
    // Whatever happened, nothing stays on either host (new connections: the old ones to the
    // session host died with it).
    second.restore();
    let session = env
        .libvirt_host_at(&second.uri(), &id, &second.pool_path(&id))
        .await;
    let topology = MultiHost::new()
        .with_host("system", system)
        .with_host("session", session);
    let destroyed = interpret.destroy(&topology, p).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic.into_panic());
    }
    destroyed.unwrap();
    for (name, host) in topology.hosts() {
        assert!(names_on(host).await.is_empty(), "{name}");
    }
}
