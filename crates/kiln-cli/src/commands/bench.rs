use kiln::Kiln;
use kiln::bench::{self, Stats};

use super::Outcome;
use crate::ui::{self, Progress};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Boot time of `kiln up` against bare QEMU (same argv), then agent ping and exec latency
    Boot {
        /// Boots of each kind, alternating
        #[arg(long, default_value_t = 5)]
        runs: u32,
        /// Pings and execs to time
        #[arg(long, default_value_t = 200)]
        count: usize,
        #[arg(long)]
        json: bool,
    },
}

fn ms(stats: &Stats) -> String {
    format!(
        "p50 {:>8.2} ms   p95 {:>8.2} ms",
        stats.p50_ms, stats.p95_ms
    )
}

pub async fn run(command: Command) -> Outcome {
    let Command::Boot { runs, count, json } = command;
    let kiln = Kiln::from_env()?;
    let progress = Progress::new();
    let boot = bench::boot(&kiln, runs, &progress).await?;
    let latency = bench::latency(&kiln, count, &progress).await?;
    if json {
        ui::print_json(&serde_json::json!({ "boot": boot, "latency": latency }))?;
        return Ok(0);
    }
    println!("accelerator: {} ({})", boot.accel, boot.accel_reason);
    println!("boot, {runs} runs each, alternating:");
    println!(
        "  bare qemu -> init marker   median {:>7.0} ms",
        boot.bare_qemu.p50_ms
    );
    println!(
        "  kiln up -> agent ready     median {:>7.0} ms",
        boot.kiln_up.p50_ms
    );
    println!(
        "  ratio                      {:>7.2}   (goal <= 1.10)",
        boot.ratio
    );
    println!("agent, {count} each over one connection:");
    println!("  ping        {}   (goal p50 <= 0.5 ms)", ms(&latency.ping));
    println!("  exec true   {}", ms(&latency.exec_true));
    println!(
        "  guest's own spawn of /bin/true: {:.2} ms",
        latency.guest_spawn_ms
    );
    println!(
        "  exec / (spawn + ping)      {:>7.2}   (goal <= 1.3)",
        latency.exec_ratio
    );
    Ok(0)
}
