//! Provisioning, measured in one run: a network boot (SeaBIOS, iPXE, kiln's image over TFTP)
//! until the agent answers, against a direct kernel boot of the same image (alternating, cold);
//! and the `cloud` image until `cloud-init status --wait` reports done.

use std::time::Instant;

use serde::Serialize;

use super::Stats;
use crate::progress::{Event, NoProgress, Reporter};
use crate::spec::{BootDevice, CloudInit};
use crate::{ExecRequest, Kiln, Result, VmSpec};

/// What [`provision`] measured: network boot against direct kernel boot, and cloud-init.
#[derive(Debug, Clone, Serialize)]
pub struct ProvisionReport {
    /// Cold `up` with direct kernel boot until the agent answered: the baseline.
    pub direct_boot: Stats,
    /// Cold `up` with boot order `[Network]` until the agent answered.
    pub network_boot: Stats,
    /// network_boot.p50 / direct_boot.p50.
    pub ratio: f64,
    /// `up` of the `cloud` image with cloud-init data until `cloud-init status --wait`
    /// returned done, in seconds.
    pub cloud_init_done_s: f64,
}

async fn timed_up(kiln: &Kiln, spec: VmSpec) -> Result<std::time::Duration> {
    let name = spec.name().to_owned();
    let started = Instant::now();
    let booted = kiln.up(spec, &NoProgress).await;
    let took = started.elapsed();
    kiln.remove(&name, true, &NoProgress).await?;
    booted?;
    Ok(took)
}

/// Boots `runs` times each way (direct, network), alternating, with warm starts off; then
/// times one `cloud` VM until cloud-init is done.
pub async fn provision(kiln: &Kiln, runs: u32, reporter: &dyn Reporter) -> Result<ProvisionReport> {
    let kiln = kiln.clone().with_warm_starts(false);
    let (mut direct, mut network) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let spec = VmSpec::builder(format!("bench-direct-{run}"))
            .memory_mib(512)
            .build()?;
        direct.push(timed_up(&kiln, spec).await?);
        let spec = VmSpec::builder(format!("bench-pxe-{run}"))
            .memory_mib(512)
            .boot_order([BootDevice::Network])
            .build()?;
        network.push(timed_up(&kiln, spec).await?);
        reporter.report(Event::Note {
            message: format!(
                "run {run}/{runs}: direct {:.2}s, network {:.2}s",
                direct[direct.len() - 1].as_secs_f64(),
                network[network.len() - 1].as_secs_f64()
            ),
        });
    }

    reporter.report(Event::Note {
        message: "building image cloud if needed (not timed)".to_owned(),
    });
    kiln.images()
        .ensure("cloud", kiln.image_inputs(), false, &NoProgress)
        .await?;
    let name = "bench-cloud";
    let _ = kiln.remove(name, true, &NoProgress).await;
    let spec = VmSpec::builder(name)
        .memory_mib(768)
        .image("cloud")
        .cloud_init(CloudInit::new().runcmd("true"))
        .build()?;
    let started = Instant::now();
    let done = async {
        let vm = kiln.up(spec, &NoProgress).await?;
        let out = vm
            .exec_output(ExecRequest::new(["cloud-init", "status", "--wait"]))
            .await?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !text.contains("done") {
            return Err(crate::Error::BenchInvalid {
                reason: format!("cloud-init did not finish: {text}"),
            });
        }
        Ok(started.elapsed().as_secs_f64())
    }
    .await;
    kiln.remove(name, true, &NoProgress).await?;
    let cloud_init_done_s = done?;

    let direct_boot = Stats::of(&direct);
    let network_boot = Stats::of(&network);
    Ok(ProvisionReport {
        ratio: network_boot.p50_ms / direct_boot.p50_ms.max(f64::EPSILON),
        direct_boot,
        network_boot,
        cloud_init_done_s,
    })
}
