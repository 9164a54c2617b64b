//! Debian images, measured in one run: building one (fresh, then the no-op check), booting it
//! to agent-ready against the busybox image (alternating, cold), systemd's full mode, a warm
//! `kiln run --image debian -- true`, and `cargo build` of a hello crate in the `rust` image.

use std::time::Instant;

use serde::Serialize;

use super::Stats;
use crate::progress::{Event, NoProgress, Reporter};
use crate::{ExecRequest, Kiln, Result, VmSpec};

/// What [`images`] measured: the Debian images' build, boots and sessions, against the
/// busybox image.
#[derive(Debug, Clone, Serialize)]
pub struct ImagesReport {
    /// Building `debian` from nothing (`--force`), in seconds; `None` when not asked for.
    pub fresh_build_s: Option<f64>,
    /// `ensure` of a built `debian` (goal < 100 ms).
    pub noop_check: Stats,
    /// Cold `up` of the busybox image until the agent answered: the baseline.
    pub busybox_boot: Stats,
    /// Cold `up` of `debian` (fast mode) until the agent answered.
    pub debian_boot: Stats,
    /// debian_boot.p50 / busybox_boot.p50 (goal ≤ 1.3).
    pub ratio: f64,
    /// Cold `up` of `debian-full` (systemd) until the agent answered.
    pub full_boot: Stats,
    /// A whole warm session, `kiln run --image debian -- true` (goal ≤ 0.5 s under TCG).
    pub warm_run_true: Stats,
    /// The same session on the busybox image, alternating with it: the baseline.
    pub warm_run_true_busybox: Stats,
    /// `cargo new` + `cargo build` of a hello crate in the `rust` image, in seconds.
    pub cargo_build_hello_s: f64,
}

async fn cold_up(kiln: &Kiln, name: &str, image: &str) -> Result<std::time::Duration> {
    let spec = VmSpec::builder(name).memory_mib(512).image(image).build()?;
    let started = Instant::now();
    let booted = kiln.up(spec, &NoProgress).await;
    let took = started.elapsed();
    kiln.remove(name, true, &NoProgress).await?;
    booted?;
    Ok(took)
}

/// Builds `debian` (from nothing when `fresh`), then times its no-op check, `runs` cold
/// boots of each image, warm sessions (at least 5 of each) and a `cargo build` in `rust`.
pub async fn images(
    kiln: &Kiln,
    runs: u32,
    fresh: bool,
    reporter: &dyn Reporter,
) -> Result<ImagesReport> {
    let kiln = kiln.clone().with_warm_starts(false);
    let inputs = kiln.image_inputs().cloned();
    let ensure = |name: &'static str, force: bool| {
        let kiln = kiln.clone();
        let inputs = inputs.clone();
        async move {
            kiln.images()
                .ensure(name, inputs.as_ref(), force, &NoProgress)
                .await
        }
    };
    let fresh_build_s = if fresh {
        let started = Instant::now();
        ensure("debian", true).await?;
        Some(started.elapsed().as_secs_f64())
    } else {
        ensure("debian", false).await?;
        None
    };
    for name in ["debian-full", "rust"] {
        reporter.report(Event::Note {
            message: format!("building image {name} if needed (not timed)"),
        });
        ensure(name, false).await?;
    }
    let mut noop = Vec::new();
    for _ in 0..runs.max(5) {
        let started = Instant::now();
        ensure("debian", false).await?;
        noop.push(started.elapsed());
    }

    let (mut busybox, mut debian, mut full) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        busybox.push(
            cold_up(
                &kiln,
                &format!("bench-bb-{run}"),
                crate::spec::DEFAULT_IMAGE,
            )
            .await?,
        );
        debian.push(cold_up(&kiln, &format!("bench-deb-{run}"), "debian").await?);
        full.push(cold_up(&kiln, &format!("bench-full-{run}"), "debian-full").await?);
        reporter.report(Event::Note {
            message: format!(
                "run {run}/{runs}: busybox {:.2}s, debian {:.2}s, debian-full {:.2}s",
                busybox[busybox.len() - 1].as_secs_f64(),
                debian[debian.len() - 1].as_secs_f64(),
                full[full.len() - 1].as_secs_f64()
            ),
        });
    }

    // Warm sessions: the first of each makes the template (not timed).
    let warm = kiln.clone().with_warm_starts(true);
    let spec =
        |name: String, image: &str| VmSpec::builder(name).memory_mib(512).image(image).build();
    let busybox_image = crate::spec::DEFAULT_IMAGE;
    super::session::run_true(&warm, spec("bench-drun-0".to_owned(), "debian")?).await?;
    super::session::run_true(&warm, spec("bench-brun-0".to_owned(), busybox_image)?).await?;
    let (mut warm_runs, mut warm_busybox) = (Vec::new(), Vec::new());
    for run in 1..=runs.max(5) {
        let debian = spec(format!("bench-drun-{run}"), "debian")?;
        warm_runs.push(super::session::run_true(&warm, debian).await?);
        let busybox = spec(format!("bench-brun-{run}"), busybox_image)?;
        warm_busybox.push(super::session::run_true(&warm, busybox).await?);
    }

    let name = "bench-cargo";
    let _ = kiln.remove(name, true, &NoProgress).await;
    let cargo_spec = VmSpec::builder(name)
        .cpus(2)
        .memory_mib(1024)
        .image("rust")
        .build()?;
    let vm = kiln.up(cargo_spec, &NoProgress).await?;
    let built = async {
        let started = Instant::now();
        let out = vm
            .exec_output(ExecRequest::new([
                "sh",
                "-c",
                "cd /tmp && cargo new --quiet hello && cd hello && cargo build --offline --quiet",
            ]))
            .await?;
        let code = out.status.shell_code();
        if code != 0 {
            return Err(crate::Error::BenchInvalid {
                reason: format!(
                    "cargo build failed ({code}): {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        Ok(started.elapsed().as_secs_f64())
    }
    .await;
    kiln.remove(name, true, &NoProgress).await?;
    let cargo_build_hello_s = built?;

    let busybox_boot = Stats::of(&busybox);
    let debian_boot = Stats::of(&debian);
    Ok(ImagesReport {
        fresh_build_s,
        noop_check: Stats::of(&noop),
        ratio: debian_boot.p50_ms / busybox_boot.p50_ms.max(f64::EPSILON),
        busybox_boot,
        debian_boot,
        full_boot: Stats::of(&full),
        warm_run_true: Stats::of(&warm_runs),
        warm_run_true_busybox: Stats::of(&warm_busybox),
        cargo_build_hello_s,
    })
}
