//! Density: many warm VMs at once. N clones of one template are started together; the bench
//! reports how long until every one answers, each idle VM's proportional memory (PSS, the
//! pages it shares with its siblings counted in part), and the host's available memory
//! before and after, against one cold VM's PSS measured in the same run.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::Stats;
use crate::progress::NoProgress;
use crate::{Kiln, Result, VmSpec};

/// How long the VMs sit idle before their memory is read (the boot's page faults settle).
const SETTLE: Duration = Duration::from_secs(2);

/// What [`density`] measured.
#[derive(Debug, Clone, Serialize)]
pub struct DensityReport {
    /// Warm VMs started at once.
    pub vms: usize,
    /// Each VM's memory, in MiB.
    pub memory_mib: u64,
    /// From starting them all until the last one's agent answered, in milliseconds.
    pub all_answering_ms: f64,
    /// Each warm start until its agent answered, started together.
    pub warm_up: Stats,
    /// Of those, how many fell back to a cold boot (their template failed them): counted
    /// in the times and memory above, and named here so that a bad run is not taken for a
    /// warm one.
    pub cold_fallbacks: usize,
    /// One idle VM's QEMU PSS, in MiB: the median and the largest.
    pub pss_mib_p50: f64,
    /// The largest idle VM's QEMU PSS, in MiB.
    pub pss_mib_max: f64,
    /// The PSS of every VM's QEMU together, in MiB.
    pub total_pss_mib: f64,
    /// A cold-booted VM of the same shape, idle, in MiB: the baseline.
    pub cold_pss_mib: f64,
    /// pss_mib_p50 / cold_pss_mib.
    pub ratio: f64,
    /// The host's available memory before the VMs started, in MiB.
    pub host_available_before_mib: f64,
    /// The host's available memory with all of them running, in MiB.
    pub host_available_after_mib: f64,
}

/// A process's proportional set size, in KiB, from `/proc/PID/smaps_rollup`.
pub fn pss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("Pss:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The PSS of VM `name`'s QEMU, in KiB.
async fn vm_pss_kib(kiln: &Kiln, name: &str) -> Result<u64> {
    let info = kiln.get(name).await?.info().await;
    info.pid
        .and_then(pss_kib)
        .ok_or_else(|| crate::Error::BenchInvalid {
            reason: format!("cannot read the memory of {name}'s QEMU"),
        })
}

/// Starts `vms` warm VMs of `memory_mib` at once, from one template (made beforehand, not
/// timed), measures them idle, and removes them; one cold VM of the same shape is the
/// baseline.
pub async fn density(kiln: &Kiln, vms: usize, memory_mib: u64) -> Result<DensityReport> {
    let spec = |name: &str| VmSpec::builder(name).memory_mib(memory_mib).build();
    let cold = kiln.clone().with_warm_starts(false);
    let warm = kiln.clone().with_warm_starts(true);
    for name in (0..vms)
        .map(|i| format!("bench-dense-{i}"))
        .chain(["bench-dense-cold", "bench-dense-template"].map(str::to_owned))
    {
        let _ = kiln.remove(&name, true, &NoProgress).await;
    }

    // The baseline: one cold VM, idle.
    cold.up(spec("bench-dense-cold")?, &NoProgress).await?;
    tokio::time::sleep(SETTLE).await;
    let cold_pss = vm_pss_kib(&cold, "bench-dense-cold").await;
    cold.remove("bench-dense-cold", true, &NoProgress).await?;
    let cold_pss = cold_pss?;

    // The template (made once per image and shape), not timed.
    warm.up(spec("bench-dense-template")?, &NoProgress).await?;
    warm.remove("bench-dense-template", true, &NoProgress)
        .await?;

    let before = crate::accel::host_free_memory_bytes().unwrap_or(0);
    let names: Vec<String> = (0..vms).map(|i| format!("bench-dense-{i}")).collect();
    let started = Instant::now();
    let ups = names.iter().map(|name| {
        let warm = &warm;
        async move {
            let began = Instant::now();
            let watch = super::ColdWatch::new(&NoProgress);
            let up = warm.up(spec(name)?, &watch).await;
            up.map(|_| (began.elapsed(), watch.was_cold()))
        }
    });
    let results = futures_util::future::join_all(ups).await;
    let all_answering = started.elapsed();
    let measured = async {
        let started = results.into_iter().collect::<Result<Vec<_>>>()?;
        let cold = started.iter().filter(|(_, cold)| *cold).count();
        let times: Vec<Duration> = started.into_iter().map(|(time, _)| time).collect();
        tokio::time::sleep(SETTLE).await;
        let after = crate::accel::host_free_memory_bytes().unwrap_or(0);
        let mut pss = Vec::new();
        for name in &names {
            pss.push(vm_pss_kib(&warm, name).await?);
        }
        Ok::<_, crate::Error>((times, cold, after, pss))
    }
    .await;
    for name in &names {
        let _ = warm.remove(name, true, &NoProgress).await;
    }
    let (times, cold_fallbacks, after, mut pss) = measured?;
    pss.sort_unstable();
    let p50 = pss.get(pss.len() / 2).copied().unwrap_or(0);
    Ok(DensityReport {
        vms,
        memory_mib,
        all_answering_ms: all_answering.as_secs_f64() * 1e3,
        warm_up: Stats::of(&times),
        cold_fallbacks,
        pss_mib_p50: mib(p50),
        pss_mib_max: mib(pss.last().copied().unwrap_or(0)),
        total_pss_mib: mib(pss.iter().sum()),
        cold_pss_mib: mib(cold_pss),
        ratio: if cold_pss == 0 {
            0.0
        } else {
            p50 as f64 / cold_pss as f64
        },
        host_available_before_mib: before as f64 / (1 << 20) as f64,
        host_available_after_mib: after as f64 / (1 << 20) as f64,
    })
}
