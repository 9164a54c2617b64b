//! Resource cleanup under load: boot, use and remove 30 VMs in a loop in one process (the
//! library, as a long-running program would use it), then check that this process's file
//! descriptors, children and memory, and the host's QEMU processes, are back at the baseline.
//! Iterations: `KILN_LOAD_ITERATIONS` (default 30).
#![allow(clippy::unwrap_used, clippy::print_stderr)] // a failed unwrap is a failed test

use std::time::{Duration, Instant};

use kiln::progress::NoProgress;
use kiln::{ExecRequest, ExitStatus, VmSpec};
use kiln_testkit::TestEnv;
use kiln_testkit::faults;

fn host_mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_vms_booted_and_removed_leave_nothing_behind() {
    let env = TestEnv::new();
    let kiln = env.kiln().with_warm_starts(true);
    let spec = |name: &str| VmSpec::builder(name).memory_mib(256).build().unwrap();
    let cycle = |name: String| {
        let kiln = kiln.clone();
        let spec = spec(&name);
        async move {
            let vm = kiln.up(spec, &NoProgress).await.unwrap();
            let agent = vm.agent_within(Duration::from_secs(30)).await.unwrap();
            let out = agent
                .exec(ExecRequest::new(["true"]))
                .await
                .unwrap()
                .output()
                .await
                .unwrap();
            assert_eq!(out.status, ExitStatus::Code(0));
            drop(agent);
            kiln.remove(&name, true, &NoProgress).await.unwrap();
        }
    };
    // The first cycles make the template and start the runtime's threads.
    cycle("warmup-0".to_owned()).await;
    cycle("warmup-1".to_owned()).await;
    // A dropped agent connection closes its socket and port lease on the runtime's next
    // turn: take the baseline once the count holds still.
    let mut fds = faults::open_fds();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = faults::open_fds();
        if now == fds {
            break;
        }
        fds = now;
    }
    let rss = faults::rss_kib();
    let mem = host_mem_available_kib();

    let iterations: usize = std::env::var("KILN_LOAD_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let started = Instant::now();
    for i in 0..iterations {
        cycle(format!("load-{i}")).await;
    }
    let elapsed = started.elapsed();
    // QEMU is reaped by whoever waits for it, and the last passt by this process's runtime
    // (its descriptor closes then): give them a moment.
    kiln_testkit::wait_until(Duration::from_secs(5), || async {
        faults::qemu_processes(env.home()).is_empty()
            && faults::zombie_children() == 0
            && faults::open_fds() == fds
    })
    .await;
    let (fds_after, rss_after, mem_after) = (
        faults::open_fds(),
        faults::rss_kib(),
        host_mem_available_kib(),
    );
    eprintln!(
        "figure: load: {iterations} VMs booted, used and removed in {elapsed:.1?}; fds {fds} -> {fds_after}, RSS {rss} -> {rss_after} KiB, host MemAvailable {} -> {} MiB, QEMU left {}, zombies {}",
        mem / 1024,
        mem_after / 1024,
        faults::qemu_processes(env.home()).len(),
        faults::zombie_children()
    );
    assert!(
        faults::qemu_processes(env.home()).is_empty() && faults::zombie_children() == 0,
        "QEMU processes or zombies left"
    );
    assert_eq!(fds_after, fds, "file descriptors leaked");
    assert!(
        rss_after < rss + 16 * 1024,
        "RSS grew from {rss} to {rss_after} KiB"
    );
    assert!(kiln.list().await.unwrap().is_empty());
}
