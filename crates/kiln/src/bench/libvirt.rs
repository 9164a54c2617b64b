//! The declarative layer and the libvirt backend, measured.
//!
//! - [`score`]: applying a score of many VMs, then re-applying it when nothing changed, on
//!   libvirt's test driver (the cost of kiln itself: listing, parsing tags, diffing).
//! - [`libvirt_boot`]: `up` until the agent answers through a real libvirtd, against the
//!   daemonless backend, alternating in the same run.

use std::time::Instant;

use serde::Serialize;

use super::{Stats, spec};
use crate::progress::{Event, NoProgress, Reporter};
use crate::score::{Score, VmScore};
use crate::topology::LibvirtHost;
use crate::{DiskSpec, Error, Kiln, Result, VmSpec, state};

/// What [`score`] measured on libvirt's test driver.
#[derive(Debug, Clone, Serialize)]
pub struct ScoreReport {
    /// VMs in the score.
    pub vms: usize,
    /// The first apply: every VM created.
    pub apply_ms: f64,
    /// Re-applies that found nothing to change (goal p50 ≤ 100 ms for 20 VMs).
    pub noop_apply: Stats,
    /// Destroying the score, in milliseconds.
    pub destroy_ms: f64,
}

/// What [`libvirt_boot`] measured: boots through libvirt against daemonless ones.
#[derive(Debug, Clone, Serialize)]
pub struct LibvirtBootReport {
    /// The libvirt URI booted on.
    pub uri: String,
    /// `LibvirtHost::up` (define, start) until the agent answered.
    pub libvirt_up: Stats,
    /// `Kiln::up` (the daemonless backend) until the agent answered.
    pub kiln_up: Stats,
    /// libvirt_up.p50 / kiln_up.p50.
    pub ratio: f64,
}

/// Applies a score of `vms` VMs (one disk each) on a fresh test-driver host, re-applies it
/// `runs` times, then destroys it.
pub async fn score(kiln: &Kiln, vms: usize, runs: u32) -> Result<ScoreReport> {
    let node = kiln.paths().data_dir().join("bench-test-node.xml");
    state::create_private_dir(kiln.paths().data_dir())?;
    state::write_atomic(&node, b"<node/>\n")?;
    let uri = format!("test://{}", node.display());
    let result = async {
        let host = LibvirtHost::connect(&uri, kiln.paths()).await?;
        let specs = (0..vms)
            .map(|i| {
                Ok(VmSpec::builder(format!("bench-{i:03}"))
                    .memory_mib(256)
                    .disk(DiskSpec::new_gib(1))
                    .build()?)
            })
            .collect::<Result<Vec<_>>>()?;
        let score = VmScore::new("bench", specs)?;
        let interpret = Score::<LibvirtHost>::create_interpret(&score);

        let started = Instant::now();
        interpret.execute(&host, &NoProgress).await?;
        let apply_ms = started.elapsed().as_secs_f64() * 1e3;
        let mut noop = Vec::new();
        for _ in 0..runs {
            let started = Instant::now();
            let outcome = interpret.execute(&host, &NoProgress).await?;
            noop.push(started.elapsed());
            if !outcome.is_unchanged() {
                return Err(Error::BenchInvalid {
                    reason: format!("a re-apply changed something:\n{outcome}"),
                });
            }
        }
        let started = Instant::now();
        interpret.destroy(&host, &NoProgress).await?;
        Ok(ScoreReport {
            vms,
            apply_ms,
            noop_apply: Stats::of(&noop),
            destroy_ms: started.elapsed().as_secs_f64() * 1e3,
        })
    }
    .await;
    let _ = std::fs::remove_file(&node);
    result
}

/// Boots one VM `runs` times each way, alternating: on libvirt at `uri`, and daemonless.
pub async fn libvirt_boot(
    kiln: &Kiln,
    uri: &str,
    runs: u32,
    reporter: &dyn Reporter,
) -> Result<LibvirtBootReport> {
    let mut host = LibvirtHost::connect(uri, kiln.paths()).await?;
    if let Some(inputs) = kiln.image_inputs() {
        host = host.with_image_inputs(inputs.clone());
    }
    // The image upload happens once per host; it is not what a boot costs.
    let warm = spec("bench-lv-warm")?;
    let _ = host.remove("bench-lv-warm", true, &NoProgress).await;
    host.up(&warm, reporter).await?;
    host.remove(warm.name(), true, &NoProgress).await?;
    let (mut on_libvirt, mut daemonless) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let name = format!("bench-lv-{run}");
        let started = Instant::now();
        let booted = host.up(&spec(&name)?, &NoProgress).await;
        let elapsed = started.elapsed();
        host.remove(&name, true, &NoProgress).await?;
        booted?;
        on_libvirt.push(elapsed);

        let name = format!("bench-up-{run}");
        let started = Instant::now();
        let booted = kiln.up(spec(&name)?, &NoProgress).await;
        let local = started.elapsed();
        kiln.remove(&name, true, &NoProgress).await?;
        booted?;
        daemonless.push(local);
        reporter.report(Event::Note {
            message: format!(
                "run {run}/{runs}: libvirt {:.2}s, daemonless {:.2}s",
                elapsed.as_secs_f64(),
                local.as_secs_f64()
            ),
        });
    }
    let (libvirt_up, kiln_up) = (Stats::of(&on_libvirt), Stats::of(&daemonless));
    Ok(LibvirtBootReport {
        uri: uri.to_owned(),
        ratio: libvirt_up.p50_ms / kiln_up.p50_ms.max(f64::EPSILON),
        libvirt_up,
        kiln_up,
    })
}

/// What [`multihost`] measured: a score applied on one host against spread over several.
#[derive(Debug, Clone, Serialize)]
pub struct MultihostReport {
    /// The libvirt URIs; the first is the one-host baseline.
    pub hosts: Vec<String>,
    /// VMs in the score.
    pub vms: usize,
    /// Applying the score with every VM on the first host.
    pub one_host_apply_ms: f64,
    /// Applying it spread over all hosts.
    pub all_hosts_apply_ms: f64,
    /// all_hosts_apply_ms / one_host_apply_ms.
    pub ratio: f64,
    /// Re-applies over all hosts that found nothing to change.
    pub noop_apply: Stats,
}

/// Applies a score of `vms` VMs on the first of `uris` alone, then spread over all of them
/// (same run, same score), and re-applies the spread one `runs` times. Each apply is
/// destroyed after it. VMs boot one after another: on one machine, hosts share its CPUs.
pub async fn multihost(
    kiln: &Kiln,
    uris: &[String],
    vms: usize,
    runs: u32,
    reporter: &dyn Reporter,
) -> Result<MultihostReport> {
    use crate::topology::MultiHost;
    let mut hosts = Vec::new();
    for uri in uris {
        let mut host = LibvirtHost::connect(uri, kiln.paths()).await?;
        if let Some(inputs) = kiln.image_inputs() {
            host = host.with_image_inputs(inputs.clone());
        }
        hosts.push(host);
    }
    let specs = (0..vms)
        .map(|i| {
            // No NIC: a session daemon cannot make kiln's NAT bridge.
            Ok(VmSpec::builder(format!("bench-mh-{i:02}"))
                .memory_mib(256)
                .net_policy(crate::NetPolicy::None)
                .build()?)
        })
        .collect::<Result<Vec<_>>>()?;
    let score = VmScore::new("bench-multihost", specs)?;
    let interpret = Score::<MultiHost>::create_interpret(&score);
    let timed_apply = |topology: MultiHost| {
        let interpret = &interpret;
        async move {
            let started = Instant::now();
            let applied = interpret.execute(&topology, &NoProgress).await;
            let elapsed = started.elapsed();
            let destroyed = if applied.is_ok() {
                Ok(())
            } else {
                interpret.destroy(&topology, &NoProgress).await.map(drop)
            };
            applied?;
            destroyed?;
            Ok::<_, Error>((topology, elapsed.as_secs_f64() * 1e3))
        }
    };
    let mut one = MultiHost::new();
    if let Some(first) = hosts.first() {
        one = one.with_host("h0", first.clone());
    }
    let (one, one_host_apply_ms) = timed_apply(one).await?;
    interpret.destroy(&one, &NoProgress).await?;
    reporter.report(Event::Note {
        message: format!("{vms} VMs on one host: {one_host_apply_ms:.0} ms"),
    });
    let mut all = MultiHost::new();
    for (i, host) in hosts.iter().enumerate() {
        all = all.with_host(format!("h{i}"), host.clone());
    }
    let (all, all_hosts_apply_ms) = timed_apply(all).await?;
    let mut noop = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let outcome = interpret.execute(&all, &NoProgress).await;
        noop.push(started.elapsed());
        match outcome {
            Ok(plan) if plan.is_unchanged() => {}
            Ok(plan) => {
                let _ = interpret.destroy(&all, &NoProgress).await;
                return Err(Error::BenchInvalid {
                    reason: format!("a re-apply changed something:\n{plan}"),
                });
            }
            Err(err) => {
                let _ = interpret.destroy(&all, &NoProgress).await;
                return Err(err);
            }
        }
    }
    interpret.destroy(&all, &NoProgress).await?;
    Ok(MultihostReport {
        hosts: uris.to_vec(),
        vms,
        ratio: all_hosts_apply_ms / one_host_apply_ms.max(f64::EPSILON),
        one_host_apply_ms,
        all_hosts_apply_ms,
        noop_apply: Stats::of(&noop),
    })
}
