//! Snapshots, measured in one run: restoring a saved VM until its agent answers, against a
//! cold `up` until its agent answers; and what saving a 512 MiB guest costs.

use std::time::Instant;

use serde::Serialize;

use super::Stats;
use crate::progress::{Event, NoProgress, Reporter};
use crate::{Kiln, Result, VmSpec};

/// What [`snapshot`] measured: restores and warm starts against cold boots, and a save.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotReport {
    /// `Kiln::up` of a 512 MiB guest until the agent answered.
    pub cold_up: Stats,
    /// `Kiln::restore` of that guest until the agent answered.
    pub restore: Stats,
    /// restore.p50 / cold_up.p50.
    pub ratio: f64,
    /// `Kiln::up` with warm starts (its template made beforehand) until the agent answered.
    pub warm_up: Stats,
    /// warm_up.p50 / cold_up.p50 (goal ≤ 0.10 under TCG).
    pub warm_ratio: f64,
    /// Warm starts that fell back to a cold boot (counted in `warm_up`).
    pub warm_fallbacks: usize,
    /// The warm starts' stages and phases (QEMU start, state load, agent, re-key).
    pub warm_stages: Vec<super::StageStats>,
    /// The cold boots' stages and phases.
    pub cold_stages: Vec<super::StageStats>,
    /// A whole warm session (`kiln run -- true`): clone, run, pull, remove (goal ≤ 0.5 s).
    pub warm_run_true: Stats,
    /// Saving the running guest's snapshot, in milliseconds.
    pub save_ms: f64,
    /// The saved memory and device state, in bytes.
    pub save_bytes: u64,
}

/// `runs` cold boots, warm boots and warm sessions; then one snapshot of a running 512 MiB
/// guest, saved once and restored `runs` times.
pub async fn snapshot(kiln: &Kiln, runs: u32, reporter: &dyn Reporter) -> Result<SnapshotReport> {
    let spec = |name: &str| VmSpec::builder(name).memory_mib(512).build();
    let kiln = &kiln.clone().with_warm_starts(false);
    let (mut cold, mut cold_stages, mut warm_stages) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        let name = format!("bench-cold-{run}");
        let timings = crate::progress::Timings::new(&NoProgress);
        let started = Instant::now();
        let booted = kiln.up(spec(&name)?, &timings).await;
        cold.push(started.elapsed());
        cold_stages.push(timings.entries());
        kiln.remove(&name, true, &NoProgress).await?;
        booted?;
    }
    // Warm starts: the first makes the template (not timed), the others clone it.
    let warm = kiln.clone().with_warm_starts(true);
    warm.up(spec("bench-warm-0")?, &NoProgress).await?;
    warm.remove("bench-warm-0", true, &NoProgress).await?;
    let (mut warms, mut warm_fallbacks) = (Vec::new(), 0);
    for run in 1..=runs {
        let name = format!("bench-warm-{run}");
        let watch = super::ColdWatch::new(&NoProgress);
        let timings = crate::progress::Timings::new(&watch);
        let started = Instant::now();
        let booted = warm.up(spec(&name)?, &timings).await;
        warm_fallbacks += usize::from(watch.was_cold());
        warm_stages.push(timings.entries());
        warms.push(started.elapsed());
        warm.remove(&name, true, &NoProgress).await?;
        booted?;
    }
    let mut sessions = Vec::new();
    for run in 1..=runs {
        sessions.push(super::session::run_true(&warm, spec(&format!("bench-run-{run}"))?).await?);
    }
    let name = "bench-snap";
    let _ = kiln.remove(name, true, &NoProgress).await;
    kiln.up(spec(name)?, &NoProgress).await?;
    let result = async {
        let started = Instant::now();
        let info = kiln.snapshot(name, "bench").await?;
        let save_ms = started.elapsed().as_secs_f64() * 1e3;
        let mut restores = Vec::new();
        for run in 1..=runs {
            let started = Instant::now();
            kiln.restore(name, "bench", &NoProgress).await?;
            restores.push(started.elapsed());
            reporter.report(Event::Note {
                message: format!(
                    "run {run}/{runs}: cold up {:.2}s, restore {:.2}s",
                    cold[(run - 1) as usize].as_secs_f64(),
                    restores[restores.len() - 1].as_secs_f64()
                ),
            });
        }
        Ok::<_, crate::Error>((save_ms, info.memory_bytes, restores))
    }
    .await;
    kiln.remove(name, true, &NoProgress).await?;
    let (save_ms, save_bytes, restores) = result?;
    let (cold_up, restore, warm_up) = (Stats::of(&cold), Stats::of(&restores), Stats::of(&warms));
    Ok(SnapshotReport {
        ratio: restore.p50_ms / cold_up.p50_ms.max(f64::EPSILON),
        warm_ratio: warm_up.p50_ms / cold_up.p50_ms.max(f64::EPSILON),
        warm_stages: super::stage_stats(&warm_stages),
        cold_stages: super::stage_stats(&cold_stages),
        warm_up,
        warm_fallbacks,
        warm_run_true: Stats::of(&sessions),
        cold_up,
        restore,
        save_ms,
        save_bytes,
    })
}
