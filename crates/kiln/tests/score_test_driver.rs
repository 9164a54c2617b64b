//! Scores against libvirt's test driver (no daemon, nothing boots): plan, apply, re-apply,
//! changes, destroy, bad input, and placement over two independent hosts.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use kiln::libvirt::LibvirtConn;
use kiln::progress::NoProgress;
use kiln::score::{Change, NetworkScore, Score, VmScore};
use kiln::spec::NetworkSpec;
use kiln::topology::{LibvirtHost, MultiHost};
use kiln::{DiskSpec, Error, MacAddr, NetworkRef, SpecError, VmSpec};
use kiln_testkit::TestEnv;

fn mac(text: &str) -> MacAddr {
    text.parse().unwrap()
}

fn lab() -> NetworkSpec {
    NetworkSpec::nat("lab", "10.10.0.0/24")
        .dhcp(
            std::net::Ipv4Addr::from([10, 10, 0, 100]),
            std::net::Ipv4Addr::from([10, 10, 0, 200]),
        )
        .reserve_host(
            mac("52:54:00:00:00:01"),
            std::net::Ipv4Addr::from([10, 10, 0, 10]),
            "web-1",
        )
        .build()
        .unwrap()
}

fn web(name: &str, cpus: u32) -> VmSpec {
    let builder = VmSpec::builder(name).cpus(cpus).memory_mib(256);
    let builder = if name == "web-1" {
        builder.network(NetworkRef::named_with_mac("lab", mac("52:54:00:00:00:01")))
    } else {
        builder.network(NetworkRef::named("lab"))
    };
    builder.disk(DiskSpec::new_gib(4)).build().unwrap()
}

async fn host(env: &TestEnv, name: &str) -> LibvirtHost {
    LibvirtHost::connect(&env.test_driver_uri(name), &env.paths())
        .await
        .unwrap()
}

fn changes(plan: &kiln::score::Plan) -> Vec<(String, Change)> {
    plan.resources
        .iter()
        .map(|r| (r.name.clone(), r.change))
        .collect()
}

/// A network and a domain kiln did not create, which it must leave alone.
async fn add_foreign_resources(conn: &LibvirtConn) {
    conn.define_network(
        "default",
        "<network><name>default</name><ip address='192.168.122.1' netmask='255.255.255.0'/></network>".to_owned(),
    )
    .await
    .unwrap();
    conn.ensure_network_active("default").await.unwrap();
}

#[tokio::test]
async fn apply_is_idempotent_plans_changes_and_destroy_removes_only_what_it_owns() {
    let env = TestEnv::new();
    let host = host(&env, "a").await;
    add_foreign_resources(host.conn()).await;

    let networks = NetworkScore::new("lab-net", [lab()]).unwrap();
    let vms = VmScore::new("lab", [web("web-1", 1), web("web-2", 1)]).unwrap();
    let net_interpret = Score::<LibvirtHost>::create_interpret(&networks);
    let vm_interpret = Score::<LibvirtHost>::create_interpret(&vms);

    let plan = vm_interpret.plan(&host).await.unwrap();
    assert_eq!(
        changes(&plan),
        [
            ("web-1".into(), Change::Create),
            ("web-2".into(), Change::Create)
        ]
    );
    net_interpret.execute(&host, &NoProgress).await.unwrap();
    let outcome = vm_interpret.execute(&host, &NoProgress).await.unwrap();
    assert_eq!(outcome.resources.len(), 2);

    // The second apply changes nothing and says so.
    let again = net_interpret.execute(&host, &NoProgress).await.unwrap();
    assert!(again.is_unchanged(), "{again}");
    let again = vm_interpret.execute(&host, &NoProgress).await.unwrap();
    assert!(again.is_unchanged(), "{again}");
    assert!(again.to_string().contains("unchanged"));

    // What libvirt holds: tagged domains on the network, disks in kiln's pool.
    let domains = host.conn().kiln_domains().await.unwrap();
    assert_eq!(domains.len(), 2);
    assert!(domains.iter().all(|d| d.active));
    let volumes = host.conn().list_volumes().await.unwrap();
    assert!(
        volumes.contains(&"web-1-disk0.qcow2".to_owned()),
        "{volumes:?}"
    );

    // A change shows up as a typed diff: more vCPUs in place, a new disk by replacement.
    let changed = VmScore::new(
        "lab",
        [
            web("web-1", 2),
            VmSpec::builder("web-2")
                .memory_mib(256)
                .network(NetworkRef::named("lab"))
                .disk(DiskSpec::new_gib(4))
                .disk(DiskSpec::new_gib(1))
                .build()
                .unwrap(),
        ],
    )
    .unwrap();
    let changed_interpret = Score::<LibvirtHost>::create_interpret(&changed);
    let plan = changed_interpret.plan(&host).await.unwrap();
    assert_eq!(
        changes(&plan),
        [
            ("web-1".into(), Change::Update),
            ("web-2".into(), Change::Replace)
        ]
    );
    assert_eq!(plan.resources[0].diffs[0].field, "cpus");
    assert_eq!(plan.resources[0].diffs[0].from, "1");
    assert_eq!(plan.resources[0].diffs[0].to, "2");
    assert_eq!(plan.resources[1].diffs[0].field, "disks");
    changed_interpret.execute(&host, &NoProgress).await.unwrap();
    assert!(changed_interpret.plan(&host).await.unwrap().is_unchanged());

    // Destroy removes the score's VMs, disks and network; the foreign network stays.
    let destroyed = changed_interpret.destroy(&host, &NoProgress).await.unwrap();
    assert_eq!(destroyed.resources.len(), 2);
    net_interpret.destroy(&host, &NoProgress).await.unwrap();
    assert!(host.conn().kiln_domains().await.unwrap().is_empty());
    let nets: Vec<String> = host
        .conn()
        .networks()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(nets, ["default"]);
    assert!(host.conn().network("lab").await.unwrap().is_none());
    // The pool went with its last volume.
    assert!(host.conn().list_volumes().await.unwrap().is_empty());
    assert!(
        !host.conn().pool_exists().await.unwrap(),
        "pool left behind"
    );
}

#[tokio::test]
async fn bad_input_is_refused_before_anything_changes() {
    let env = TestEnv::new();
    let host = host(&env, "a").await;
    add_foreign_resources(host.conn()).await;

    // A subnet that overlaps a network already on the host.
    let clash = NetworkSpec::nat("clash", "192.168.122.128/25")
        .build()
        .unwrap();
    let score = NetworkScore::new("clash", [clash]).unwrap();
    let err = Score::<LibvirtHost>::create_interpret(&score)
        .execute(&host, &NoProgress)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Spec(SpecError::OverlappingSubnets { .. })),
        "{err}"
    );
    assert!(host.conn().network("clash").await.unwrap().is_none());

    // A disk larger than the pool's free space (the test driver's pool has 100 GiB).
    let huge = VmSpec::builder("huge")
        .no_network()
        .disk(DiskSpec::new_gib(500))
        .build()
        .unwrap();
    let score = VmScore::new("huge", [web("web-9", 1), huge]).unwrap();
    let err = Score::<LibvirtHost>::create_interpret(&score)
        .execute(&host, &NoProgress)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Libvirt(kiln::libvirt::LibvirtError::PoolTooSmall { .. })
        ),
        "{err}"
    );
    assert!(host.conn().domains().await.unwrap().is_empty());

    // A MAC on two NICs, a reservation outside the subnet: refused when the spec is built.
    let dup = VmScore::new("dup", [web("web-1", 1), web("web-1", 2)]);
    assert!(matches!(dup, Err(SpecError::DuplicateName { .. })));
    let same_mac = VmSpec::builder("web-3")
        .network(NetworkRef::named_with_mac("lab", mac("52:54:00:00:00:01")))
        .build()
        .unwrap();
    assert!(matches!(
        VmScore::new("dup", [web("web-1", 1), same_mac]),
        Err(SpecError::DuplicateMac { .. })
    ));
    assert!(matches!(
        NetworkSpec::nat("lab", "10.10.0.0/24")
            .reserve(
                mac("52:54:00:00:00:02"),
                std::net::Ipv4Addr::from([10, 10, 1, 5])
            )
            .build(),
        Err(SpecError::ReservationOutsideSubnet { .. })
    ));

    // A domain of the same name that kiln did not create.
    host.conn()
        .define_network(
            "lab",
            "<network><name>lab</name><ip address='10.10.0.1' prefix='24'/></network>".to_owned(),
        )
        .await
        .unwrap();
    let score = NetworkScore::new("lab-net", [lab()]).unwrap();
    let err = Score::<LibvirtHost>::create_interpret(&score)
        .plan(&host)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotOwned { .. }), "{err}");
}

#[tokio::test]
async fn multi_host_places_pinned_vms_and_spreads_the_rest() {
    let env = TestEnv::new();
    let topology = MultiHost::new()
        .with_host("a", host(&env, "a").await)
        .with_host("b", host(&env, "b").await)
        .place("web-1", "b");

    let networks = NetworkScore::new("lab-net", [lab()]).unwrap();
    let vms = VmScore::new(
        "lab",
        ["web-1", "web-2", "web-3", "web-4"].map(|n| web(n, 1)),
    )
    .unwrap();
    let net_interpret = Score::<MultiHost>::create_interpret(&networks);
    let vm_interpret = Score::<MultiHost>::create_interpret(&vms);
    net_interpret.execute(&topology, &NoProgress).await.unwrap();
    vm_interpret.execute(&topology, &NoProgress).await.unwrap();

    let mut on: Vec<(String, String)> = Vec::new();
    for (name, host) in topology.hosts() {
        // The network exists on every host.
        assert!(
            host.conn().network("lab").await.unwrap().is_some(),
            "{name}"
        );
        for d in host.conn().kiln_domains().await.unwrap() {
            on.push((d.name, name.to_owned()));
        }
    }
    on.sort();
    let count = |h: &str| on.iter().filter(|(_, host)| host == h).count();
    assert!(on.contains(&("web-1".to_owned(), "b".to_owned())), "{on:?}");
    assert_eq!((count("a"), count("b")), (2, 2), "{on:?}");

    let plan = vm_interpret.plan(&topology).await.unwrap();
    assert!(plan.is_unchanged(), "{plan}");
    assert!(
        plan.resources.iter().all(|r| r.host.is_some()),
        "multi-host plans name the host"
    );

    vm_interpret.destroy(&topology, &NoProgress).await.unwrap();
    net_interpret.destroy(&topology, &NoProgress).await.unwrap();
    for (name, host) in topology.hosts() {
        assert!(host.conn().domains().await.unwrap().is_empty(), "{name}");
        assert!(
            host.conn().network("lab").await.unwrap().is_none(),
            "{name}"
        );
    }

    // Placing a VM on a host the topology does not have is a typed error.
    let bad = MultiHost::new()
        .with_host("a", host(&env, "c").await)
        .place("web-1", "nowhere");
    let err = Score::<MultiHost>::create_interpret(&VmScore::new("x", [web("web-1", 1)]).unwrap())
        .plan(&bad)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownHost { .. }), "{err}");
}

/// A VM a plan took for absent (its host did not answer then) may be there by the time it
/// is made: a multi-host topology never makes a second one, on any host.
#[tokio::test]
async fn multi_host_never_makes_a_vm_twice() {
    use kiln::topology::VmHost;
    let env = TestEnv::new();
    let (a, b) = (host(&env, "a").await, host(&env, "b").await);
    let spec = VmSpec::builder("solo")
        .memory_mib(256)
        .no_network()
        .build()
        .unwrap();
    b.create_vm(&spec, "lab", &NoProgress).await.unwrap();
    let topology = MultiHost::new().with_host("a", a.clone()).with_host("b", b);
    let err = topology
        .create_vm(&spec, "lab", &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::VmAlreadyExists { .. }), "{err}");
    assert!(a.conn().kiln_domains().await.unwrap().is_empty());
    // Nothing is lost either: the topology as a `Host` finds it where it is.
    let found = kiln::topology::Host::find(&topology, "solo").await.unwrap();
    assert!(found.is_some());
}
