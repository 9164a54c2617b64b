//! Many clients on one VM at once, on both hosts, with the same test body
//! (`kiln_testkit::clients`): each client leases an agent port of its own.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use kiln::VmSpec;
use kiln::progress::NoProgress;
use kiln::score::VmHost;
use kiln_testkit::{TestEnv, clients, require_libvirtd, unique_name};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_at_once_on_the_daemonless_backend() {
    let env = TestEnv::new();
    let kiln = env.kiln();
    let spec = VmSpec::builder("crowd").memory_mib(256).build().unwrap();
    let vm = kiln.up(spec, &NoProgress).await.unwrap();
    clients::many_clients_at_once(|timeout| vm.agent_within(timeout)).await;
    kiln.remove("crowd", true, &NoProgress).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_at_once_on_libvirt() {
    require_libvirtd();
    let env = TestEnv::new();
    let name = unique_name("kt-crowd");
    let host = env.libvirt_host("qemu:///system", &name).await;
    let spec = VmSpec::builder(&name).memory_mib(256).build().unwrap();
    host.up(&spec, &NoProgress).await.unwrap();
    let result = tokio::spawn({
        let host = host.clone();
        let name = name.clone();
        async move {
            clients::many_clients_at_once(|timeout| {
                let (host, name) = (host.clone(), name.clone());
                async move { host.vm_agent(&name, timeout).await }
            })
            .await;
        }
    })
    .await;
    host.remove(&name, true, &NoProgress).await.unwrap();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic.into_panic());
    }
}
