//! Benchmarks: kiln against bare QEMU, measured in the same run on the same host. Speed goals
//! live here, never in timed tests. Nothing here prints: a report comes back to the caller.

mod clients;
mod density;
mod images;
mod libvirt;
mod provision;
mod session;
mod snapshot;

pub use clients::{ClientsReport, clients};
pub use density::{DensityReport, density, pss_kib};
pub use images::{ImagesReport, images};
pub use libvirt::{
    LibvirtBootReport, MultihostReport, ScoreReport, libvirt_boot, multihost, score,
};
pub use provision::{ProvisionReport, provision};
pub use session::{SessionReport, session};
pub use snapshot::{SnapshotReport, snapshot};

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backend::Launch;
use crate::progress::{Event, NoProgress, Reporter};
use crate::{ExecRequest, Kiln, Result, VmSpec, state};

pub use crate::image::INIT_MARKER;

/// Notes whether a start was cold (a warm start that fell back to a boot says so with
/// [`crate::progress::Event::Start`]), passing every event on.
pub(crate) struct ColdWatch<'a> {
    inner: &'a dyn crate::progress::Reporter,
    cold: std::sync::atomic::AtomicBool,
}

impl<'a> ColdWatch<'a> {
    pub(crate) fn new(inner: &'a dyn crate::progress::Reporter) -> Self {
        Self {
            inner,
            cold: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether the start it watched booted instead of cloning its template.
    pub(crate) fn was_cold(&self) -> bool {
        self.cold.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl crate::progress::Reporter for ColdWatch<'_> {
    fn report(&self, event: crate::progress::Event) {
        if let crate::progress::Event::Start { warm: false, .. } = &event {
            self.cold.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.inner.report(event);
    }
}

/// Median and tail of a set of samples, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// How many samples there were.
    pub samples: usize,
    /// The median, in milliseconds (0 with no samples).
    pub p50_ms: f64,
    /// The 95th percentile, in milliseconds (0 with no samples).
    pub p95_ms: f64,
}

impl Stats {
    /// The median and 95th percentile of `samples` (in any order).
    pub fn of(samples: &[Duration]) -> Self {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if ms.is_empty() {
                return 0.0;
            }
            let i = ((ms.len() - 1) as f64 * q).round() as usize;
            ms[i.min(ms.len() - 1)]
        };
        Self {
            samples: ms.len(),
            p50_ms: at(0.5),
            p95_ms: at(0.95),
        }
    }
}

/// One stage or phase over several runs.
#[derive(Debug, Clone, Serialize)]
pub struct StageStats {
    /// The stage's or phase's label ([`crate::progress::Stage::label`]).
    pub stage: String,
    /// Its times.
    #[serde(flatten)]
    pub stats: Stats,
}

/// The stages and phases of several runs (each as [`crate::progress::Timings::entries`]),
/// in the order they first came.
pub fn stage_stats(runs: &[Vec<(&'static str, Duration)>]) -> Vec<StageStats> {
    let mut order: Vec<&'static str> = Vec::new();
    for (label, _) in runs.iter().flatten() {
        if !order.contains(label) {
            order.push(label);
        }
    }
    order
        .into_iter()
        .map(|label| {
            let samples: Vec<Duration> = runs
                .iter()
                .flatten()
                .filter(|(l, _)| *l == label)
                .map(|(_, d)| *d)
                .collect();
            StageStats {
                stage: label.to_owned(),
                stats: Stats::of(&samples),
            }
        })
        .collect()
}

/// What [`boot`] measured: `Kiln::up` against bare QEMU with kiln's argv.
#[derive(Debug, Clone, Serialize)]
pub struct BootReport {
    /// The accelerator both ran with.
    pub accel: crate::Accel,
    /// Why the probe chose it.
    pub accel_reason: String,
    /// Bare QEMU, same argv, until init's marker.
    pub bare_qemu: Stats,
    /// `Kiln::up` until the agent answered.
    pub kiln_up: Stats,
    /// kiln_up.p50 / bare_qemu.p50 (goal ≤ 1.10).
    pub ratio: f64,
    /// Bare boots that wedged in early boot and were retried (kiln retries its own).
    pub bare_stalls: u32,
    /// `Kiln::up`'s stages and phases (QEMU start, first output, kernel, init, agent).
    pub stages: Vec<StageStats>,
}

/// What [`latency`] measured: agent round trips and `exec`, against the guest's own spawn
/// time.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    /// A protocol round trip, no guest process (goal p50 ≤ 0.5 ms under TCG).
    pub ping: Stats,
    /// `exec true` end to end over an open connection.
    pub exec_true: Stats,
    /// The guest's own time to spawn `/bin/true`, measured inside it (ms per spawn).
    pub guest_spawn_ms: f64,
    /// exec_true.p50 / (guest_spawn + ping.p50) (goal ≤ 1.3).
    pub exec_ratio: f64,
}

pub(super) fn spec(name: &str) -> Result<VmSpec> {
    Ok(VmSpec::builder(name).memory_mib(256).build()?)
}

/// Boots `runs` times each way, alternating, and compares medians.
pub async fn boot(kiln: &Kiln, runs: u32, reporter: &dyn Reporter) -> Result<BootReport> {
    let (image, accel, probe) = boot_inputs(kiln, reporter).await?;
    let (mut bare, mut up) = (Vec::new(), Vec::new());
    let mut stages = Vec::new();
    let mut bare_stalls = 0;
    for run in 1..=runs {
        let (elapsed, stalls) =
            bare_boot_retried(kiln, &image, accel, &probe.reason, reporter).await?;
        bare.push(elapsed);
        bare_stalls += stalls;
        let name = format!("bench-{run}");
        let timings = crate::progress::Timings::new(&NoProgress);
        let started = Instant::now();
        let booted = kiln.up(spec(&name)?, &timings).await;
        let elapsed = started.elapsed();
        kiln.remove(&name, true, &NoProgress).await?;
        booted?;
        up.push(elapsed);
        stages.push(timings.entries());
        reporter.report(Event::Note {
            message: format!(
                "run {run}/{runs}: bare qemu {:.2}s, kiln up {:.2}s",
                bare[bare.len() - 1].as_secs_f64(),
                elapsed.as_secs_f64()
            ),
        });
    }
    let (bare_qemu, kiln_up) = (Stats::of(&bare), Stats::of(&up));
    Ok(BootReport {
        accel,
        accel_reason: probe.reason,
        ratio: kiln_up.p50_ms / bare_qemu.p50_ms.max(f64::EPSILON),
        bare_stalls,
        bare_qemu,
        kiln_up,
        stages: stage_stats(&stages),
    })
}

/// The accelerator (and its probe) and the default image every bare boot runs with.
async fn boot_inputs(
    kiln: &Kiln,
    reporter: &dyn Reporter,
) -> Result<(crate::image::Image, crate::Accel, crate::AccelProbe)> {
    let probe = kiln.accel_probe();
    let accel = probe.choose(crate::AccelChoice::Auto)?;
    let image = kiln
        .images()
        .ensure(
            crate::spec::DEFAULT_IMAGE,
            kiln.image_inputs(),
            false,
            reporter,
        )
        .await?;
    Ok((image, accel, probe))
}

/// One boot lever, measured: bare boots with it and with it undone, alternating.
#[derive(Debug, Clone, Serialize)]
pub struct LeverReport {
    /// Which lever.
    pub lever: crate::qemu::BootLever,
    /// What it is.
    pub label: &'static str,
    /// Bare QEMU until init's marker, as kiln boots now.
    pub kept: Stats,
    /// The same with this lever undone.
    pub undone: Stats,
    /// kept.p50 / undone.p50 (below 1: the lever helps).
    pub ratio: f64,
    /// Boots of either kind that stalled in early boot and were tried again.
    pub stalls: u32,
}

/// Measures each kept [`BootLever`](crate::qemu::BootLever) that applies on this host's
/// accelerator: `runs` bare boots as kiln boots now and `runs` with that lever undone,
/// alternating (which goes first alternates too), each until init's marker. The undone side
/// runs a default [`QemuBackend`](crate::qemu::QemuBackend) with the lever off, as the CLI's
/// kiln is a default one.
pub async fn boot_levers(
    kiln: &Kiln,
    runs: u32,
    reporter: &dyn Reporter,
) -> Result<Vec<LeverReport>> {
    let (image, accel, probe) = boot_inputs(kiln, reporter).await?;
    let mut reports = Vec::new();
    for &lever in crate::qemu::BootLever::ALL {
        if !lever.applies_to(accel) {
            continue;
        }
        let before = Kiln::new(
            kiln.paths().clone(),
            crate::qemu::QemuBackend::new().without_lever(lever),
        );
        let (mut kept, mut undone, mut stalls) = (Vec::new(), Vec::new(), 0);
        for run in 1..=runs {
            let order = if run % 2 == 1 {
                [(kiln, true), (&before, false)]
            } else {
                [(&before, false), (kiln, true)]
            };
            for (which, is_kept) in order {
                let (elapsed, stalled) =
                    bare_boot_retried(which, &image, accel, &probe.reason, reporter).await?;
                stalls += stalled;
                if is_kept {
                    kept.push(elapsed);
                } else {
                    undone.push(elapsed);
                }
            }
            reporter.report(Event::Note {
                message: format!(
                    "{} ({run}/{runs}): {:.2}s, undone {:.2}s",
                    lever.label(),
                    kept[kept.len() - 1].as_secs_f64(),
                    undone[undone.len() - 1].as_secs_f64()
                ),
            });
        }
        let (kept, undone) = (Stats::of(&kept), Stats::of(&undone));
        reports.push(LeverReport {
            lever,
            label: lever.label(),
            ratio: kept.p50_ms / undone.p50_ms.max(f64::EPSILON),
            kept,
            undone,
            stalls,
        });
    }
    Ok(reports)
}

/// A bare boot, retried with kiln's own policy (a boot silent past the first-output deadline
/// is tried again, three tries in all); returns its time and how many tries stalled.
async fn bare_boot_retried(
    kiln: &Kiln,
    image: &crate::image::Image,
    accel: crate::Accel,
    accel_reason: &str,
    reporter: &dyn Reporter,
) -> Result<(Duration, u32)> {
    let mut stalls = 0;
    loop {
        match bare_boot(kiln, image, accel, accel_reason).await {
            Err(crate::Error::BootFailed { .. }) if stalls < 2 => {
                stalls += 1;
                reporter.report(Event::Note {
                    message: "bare qemu boot stalled; retrying".to_owned(),
                });
            }
            done => return done.map(|elapsed| (elapsed, stalls)),
        }
    }
}

/// QEMU started with exactly the argv kiln uses, timed until init prints its marker.
async fn bare_boot(
    kiln: &Kiln,
    image: &crate::image::Image,
    accel: crate::Accel,
    accel_reason: &str,
) -> Result<Duration> {
    let spec = spec("bench-bare")?;
    let paths = kiln.paths().vm("bench-bare-qemu");
    paths.check_socket_paths()?;
    kiln.backend().kill(&paths).await?;
    paths.remove_all()?;
    state::create_private_dir(paths.dir())?;
    state::create_private_dir(paths.run_dir())?;
    state::write_atomic(&paths.secret(), b"bench")?;
    let launch = Launch {
        spec: &spec,
        id: "bench-bare",
        image,
        paths: &paths,
        accel,
        accel_reason,
        attachments: &[],
        disks: &[],
        incoming: None,
        memory: crate::backend::Memory::Private,
        workspace: None,
        cpu: None,
    };
    let started = Instant::now();
    kiln.backend().start(&launch).await?;
    let deadline = started + Duration::from_secs(60);
    let silent_deadline = started + crate::BootPolicy::default().first_output_timeout;
    let log = paths.serial_log();
    let mut found = None;
    while Instant::now() < deadline {
        let text = std::fs::read(&log).unwrap_or_default();
        if text.is_empty() && Instant::now() > silent_deadline {
            break;
        }
        if text
            .windows(INIT_MARKER.len())
            .any(|w| w == INIT_MARKER.as_bytes())
        {
            found = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let serial_tail = crate::vm::serial_tail(&paths, 20);
    kiln.backend().kill(&paths).await?;
    paths.remove_all()?;
    found.ok_or_else(|| crate::Error::BootFailed {
        name: "bench-bare-qemu".to_owned(),
        reason: "init's marker did not appear".to_owned(),
        serial_tail,
    })
}

/// Agent ping and `exec true`, `count` times each, next to the guest's own spawn time.
pub async fn latency(kiln: &Kiln, count: usize, reporter: &dyn Reporter) -> Result<LatencyReport> {
    let name = "bench-latency";
    let _ = kiln.remove(name, true, &NoProgress).await;
    let vm = kiln.up(spec(name)?, reporter).await?;
    let result = async {
        let agent = vm.agent().await?;
        let mut pings = Vec::with_capacity(count);
        for _ in 0..count {
            pings.push(agent.ping().await?);
        }
        let mut execs = Vec::with_capacity(count);
        for _ in 0..count {
            let started = Instant::now();
            agent.exec(ExecRequest::new(["true"])).await?.output().await?;
            execs.push(started.elapsed());
        }
        // The guest times 100 spawns of /bin/true itself (10 ms clock, over about a second).
        let script = "read a _ < /proc/uptime; i=0; while [ $i -lt 100 ]; do /bin/true; i=$((i+1)); done; read b _ < /proc/uptime; echo $a $b";
        let out = agent
            .exec(ExecRequest::new(["sh", "-c", script]))
            .await?
            .output()
            .await?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut fields = text.split_whitespace().filter_map(|f| f.parse::<f64>().ok());
        let guest_spawn_ms = match (fields.next(), fields.next()) {
            (Some(a), Some(b)) => (b - a) * 1e3 / 100.0,
            _ => f64::NAN,
        };
        let (ping, exec_true) = (Stats::of(&pings), Stats::of(&execs));
        Ok::<_, crate::Error>(LatencyReport {
            exec_ratio: exec_true.p50_ms / (guest_spawn_ms + ping.p50_ms),
            ping,
            exec_true,
            guest_spawn_ms,
        })
    }
    .await;
    kiln.remove(name, true, &NoProgress).await?;
    result
}
