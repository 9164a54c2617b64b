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
        /// Also measure each kept boot lever: bare boots with it and with it undone
        #[arg(long)]
        levers: bool,
        #[arg(long)]
        json: bool,
    },
    /// Many clients on one VM: connect and `exec true`, each on a connection of its own (as
    /// separate `kiln exec` processes), alone and many at once
    Clients {
        /// Clients at once
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Single clients, and concurrent rounds, to time
        #[arg(long, default_value_t = 10)]
        runs: u32,
        #[arg(long)]
        json: bool,
    },
    /// Apply a score of many VMs on libvirt's test driver, then time re-applies that change
    /// nothing
    Score {
        /// VMs in the score
        #[arg(long, default_value_t = 20)]
        vms: usize,
        /// No-op re-applies to time
        #[arg(long, default_value_t = 20)]
        runs: u32,
        #[arg(long)]
        json: bool,
    },
    /// `kiln run -- true` end to end against boot-to-agent-ready, and pushing a workspace of
    /// many small files (first whole, then only what changed)
    Session {
        /// Sessions and boots to time, alternating
        #[arg(long, default_value_t = 3)]
        runs: u32,
        /// Files in the workspace
        #[arg(long, default_value_t = 5000)]
        files: usize,
        #[arg(long)]
        json: bool,
    },
    /// Many warm VMs at once: until all answer, each idle VM's memory (PSS) against a cold
    /// VM's, and the host's available memory before and after
    Density {
        /// Warm VMs to start at once
        #[arg(long, default_value_t = 20)]
        vms: usize,
        /// Each VM's memory, in MiB
        #[arg(long, default_value_t = 256)]
        memory: u64,
        #[arg(long)]
        json: bool,
    },
    /// Restoring a snapshot until the agent answers, against a cold boot; saving a 512 MiB
    /// guest
    Snapshot {
        /// Cold boots and restores to time
        #[arg(long, default_value_t = 3)]
        runs: u32,
        #[arg(long)]
        json: bool,
    },
    /// Debian images: build (fresh with --fresh, and the no-op check), cold boot against the
    /// busybox image, systemd's full mode, a warm `kiln run --image debian -- true`, and
    /// `cargo build` of a hello crate in the rust image
    Images {
        /// Boots of each kind, alternating
        #[arg(long, default_value_t = 3)]
        runs: u32,
        /// Also time a build of `debian` from nothing (about a minute)
        #[arg(long)]
        fresh: bool,
        #[arg(long)]
        json: bool,
    },
    /// Network boot (iPXE over TFTP) until the agent answers, against direct kernel boot;
    /// the cloud image until cloud-init reports done
    Provision {
        /// Boots of each kind, alternating
        #[arg(long, default_value_t = 3)]
        runs: u32,
        #[arg(long)]
        json: bool,
    },
    /// A score applied on one libvirt host, then spread over several, and no-op re-applies
    /// over all of them: `--connect A --connect B`
    Multihost {
        /// The hosts' libvirt URIs (the first is the one-host baseline)
        #[arg(long = "connect", value_name = "URI", required = true, num_args = 1)]
        hosts: Vec<String>,
        #[arg(long, default_value_t = 10)]
        vms: usize,
        /// No-op re-applies
        #[arg(long, default_value_t = 5)]
        runs: u32,
        #[arg(long)]
        json: bool,
    },
    /// `up` until the agent answers on a real libvirtd, against the daemonless backend
    Libvirt {
        /// The libvirt URI (default: $KILN_LIBVIRT_URI or qemu:///system)
        #[arg(long, value_name = "URI")]
        connect: Option<String>,
        /// Boots of each kind, alternating
        #[arg(long, default_value_t = 3)]
        runs: u32,
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
    match command {
        Command::Boot {
            runs,
            count,
            levers,
            json,
        } => boot(runs, count, levers, json).await,
        Command::Clients {
            clients,
            runs,
            json,
        } => clients_bench(clients, runs, json).await,
        Command::Score { vms, runs, json } => score(vms, runs, json).await,
        Command::Session { runs, files, json } => session(runs, files, json).await,
        Command::Snapshot { runs, json } => snapshot(runs, json).await,
        Command::Density { vms, memory, json } => density(vms, memory, json).await,
        Command::Images { runs, fresh, json } => images(runs, fresh, json).await,
        Command::Provision { runs, json } => provision(runs, json).await,
        Command::Libvirt {
            connect,
            runs,
            json,
        } => libvirt(connect, runs, json).await,
        Command::Multihost {
            hosts,
            vms,
            runs,
            json,
        } => multihost(hosts, vms, runs, json).await,
    }
}

async fn density(vms: usize, memory: u64, json: bool) -> Outcome {
    let report = bench::density(&Kiln::from_env()?, vms, memory).await?;
    if json {
        ui::print_json(&report)?;
        return Ok(0);
    }
    println!("warm VMs started at once          {:>10}", report.vms);
    println!(
        "until all answered                {:>10.0} ms",
        report.all_answering_ms
    );
    println!(
        "one warm up, p50 / p95            {:>10.0} / {:.0} ms",
        report.warm_up.p50_ms, report.warm_up.p95_ms
    );
    if report.cold_fallbacks > 0 {
        println!(
            "fell back to a cold boot          {:>10}   (counted above: not a warm run)",
            report.cold_fallbacks
        );
    }
    println!(
        "idle VM PSS, p50 / max            {:>10.1} / {:.1} MiB",
        report.pss_mib_p50, report.pss_mib_max
    );
    println!(
        "all VMs' PSS                      {:>10.1} MiB",
        report.total_pss_mib
    );
    println!(
        "cold VM PSS (baseline)            {:>10.1} MiB",
        report.cold_pss_mib
    );
    println!("ratio warm / cold                 {:>10.2}", report.ratio);
    println!(
        "host available memory             {:>10.0} → {:.0} MiB",
        report.host_available_before_mib, report.host_available_after_mib
    );
    Ok(0)
}

async fn multihost(hosts: Vec<String>, vms: usize, runs: u32, json: bool) -> Outcome {
    let report = bench::multihost(&Kiln::from_env()?, &hosts, vms, runs, &Progress::new()).await?;
    if json {
        ui::print_json(&report)?;
        return Ok(0);
    }
    println!(
        "apply of {} VMs, one host        {:>10.0} ms",
        report.vms, report.one_host_apply_ms
    );
    println!(
        "apply of {} VMs, {} hosts         {:>10.0} ms   ratio {:.2}",
        report.vms,
        report.hosts.len(),
        report.all_hosts_apply_ms,
        report.ratio
    );
    println!(
        "no-op re-apply, {} hosts   {}",
        report.hosts.len(),
        ms(&report.noop_apply)
    );
    Ok(0)
}

async fn provision(runs: u32, json: bool) -> Outcome {
    let report = bench::provision(&Kiln::from_env()?, runs, &Progress::new()).await?;
    if json {
        ui::print_json(&report)?;
        return Ok(0);
    }
    println!(
        "cold up, direct kernel boot     {}",
        ms(&report.direct_boot)
    );
    println!(
        "cold up, network boot (iPXE)    {}",
        ms(&report.network_boot)
    );
    println!("  ratio                         {:>8.2}", report.ratio);
    println!(
        "cloud image until cloud-init is done {:>6.1} s",
        report.cloud_init_done_s
    );
    Ok(0)
}

async fn images(runs: u32, fresh: bool, json: bool) -> Outcome {
    let report = bench::images(&Kiln::from_env()?, runs, fresh, &Progress::new()).await?;
    if json {
        ui::print_json(&report)?;
        return Ok(0);
    }
    if let Some(secs) = report.fresh_build_s {
        println!("build debian from nothing       {secs:>8.1} s");
    }
    println!(
        "no-op check of a built image    {}   (goal < 100 ms)",
        ms(&report.noop_check)
    );
    println!(
        "cold up, busybox image          {}",
        ms(&report.busybox_boot)
    );
    println!(
        "cold up, debian (fast)          {}",
        ms(&report.debian_boot)
    );
    println!(
        "  ratio                         {:>8.2}   (goal <= 1.3)",
        report.ratio
    );
    println!("cold up, debian-full (systemd)  {}", ms(&report.full_boot));
    println!(
        "warm kiln run --image debian -- true {}   (goal p50 <= 500 ms)",
        ms(&report.warm_run_true)
    );
    println!(
        "warm kiln run -- true (busybox)      {}",
        ms(&report.warm_run_true_busybox)
    );
    println!(
        "cargo build of a hello crate in the rust image {:>6.1} s",
        report.cargo_build_hello_s
    );
    Ok(0)
}

async fn clients_bench(clients: usize, runs: u32, json: bool) -> Outcome {
    let report = bench::clients(&Kiln::from_env()?, clients, runs, &Progress::new()).await?;
    if json {
        ui::print_json(&report)?;
        return Ok(0);
    }
    println!("connect + exec true, each client on a connection of its own:");
    println!("  one at a time           {}", ms(&report.single));
    println!(
        "  {clients:>3} at once, per client {}",
        ms(&report.concurrent)
    );
    println!(
        "  {clients:>3} at once over one open connection {}",
        ms(&report.one_connection)
    );
    println!(
        "  ratio to one at a time  {:>8.2}   (goal p50 <= 3x one at a time)",
        report.ratio
    );
    println!(
        "  ratio to one connection {:>8.2}   (what separate connections add)",
        report.ratio_to_one_connection
    );
    Ok(0)
}

async fn score(vms: usize, runs: u32, json: bool) -> Outcome {
    let report = bench::score(&Kiln::from_env()?, vms, runs).await?;
    if json {
        ui::print_json(&report)?;
        return Ok(0);
    }
    println!("score of {vms} VMs on libvirt's test driver:");
    println!("  first apply                {:>8.1} ms", report.apply_ms);
    println!(
        "  no-op re-apply, {runs} runs  p50 {:>8.1} ms   p95 {:>8.1} ms   (goal p50 <= 100 ms)",
        report.noop_apply.p50_ms, report.noop_apply.p95_ms
    );
    println!("  destroy                    {:>8.1} ms", report.destroy_ms);
    Ok(0)
}

async fn session(runs: u32, files: usize, json: bool) -> Outcome {
    let report = bench::session(&Kiln::from_env()?, runs, files, &Progress::new()).await?;
    if json {
        ui::print_json(&report)?;
        return Ok(0);
    }
    println!("sessions, {runs} runs each, alternating:");
    println!(
        "  kiln run -- true           median {:>7.0} ms",
        report.run_true.p50_ms
    );
    println!(
        "  up -> agent ready          median {:>7.0} ms",
        report.up.p50_ms
    );
    println!("  ratio                             {:>7.2}", report.ratio);
    println!(
        "workspace of {} files, {:.0} MB, warm sessions:",
        report.files,
        report.workspace_bytes as f64 / 1e6
    );
    println!(
        "  first kiln run -w DIR -- true     {:>7.0} ms   (image written: {:.0} ms)",
        report.workspace_first_run_ms, report.image_first_ms
    );
    println!(
        "  later, 10 files changed    median {:>7.0} ms   (p95 {:.0} ms; goal <= 1000 ms)",
        report.workspace_run_true.p50_ms, report.workspace_run_true.p95_ms
    );
    println!(
        "  of which the image         median {:>7.0} ms   (kept from the first)",
        report.image_later.p50_ms
    );
    println!(
        "  incremental push (10 changed)     {:>7.0} ms",
        report.push_incremental_ms
    );
    Ok(0)
}

async fn snapshot(runs: u32, json: bool) -> Outcome {
    let report = bench::snapshot(&Kiln::from_env()?, runs, &Progress::new()).await?;
    if json {
        ui::print_json(&report)?;
        return Ok(0);
    }
    println!("512 MiB guest, {runs} runs each:");
    println!(
        "  cold up -> agent ready     median {:>7.0} ms",
        report.cold_up.p50_ms
    );
    println!(
        "  restore -> agent ready     median {:>7.0} ms",
        report.restore.p50_ms
    );
    println!("  ratio restore / cold              {:>7.2}", report.ratio);
    println!(
        "  warm up -> agent ready     median {:>7.0} ms",
        report.warm_up.p50_ms
    );
    println!(
        "  ratio warm / cold                 {:>7.2}   (goal <= 0.10)",
        report.warm_ratio
    );
    if report.warm_fallbacks > 0 {
        println!(
            "  warm ups that booted cold         {:>7}   (counted above)",
            report.warm_fallbacks
        );
    }
    println!(
        "  kiln run -- true, warm      median {:>7.0} ms   (goal <= 500 ms)",
        report.warm_run_true.p50_ms
    );
    println!(
        "  save: {:.0} ms, {} MiB on disk",
        report.save_ms,
        report.save_bytes >> 20
    );
    print_stages("cold up, by stage", &report.cold_stages);
    print_stages("warm up, by stage", &report.warm_stages);
    Ok(0)
}

/// A bench's stages and phases, p50 and p95 each.
fn print_stages(title: &str, stages: &[bench::StageStats]) {
    println!("{title}:");
    for stage in stages {
        println!(
            "  {:<44} p50 {:>8.1} ms   p95 {:>8.1} ms",
            stage.stage, stage.stats.p50_ms, stage.stats.p95_ms
        );
    }
}

async fn libvirt(connect: Option<String>, runs: u32, json: bool) -> Outcome {
    let uri = connect.unwrap_or_else(kiln::doctor::default_libvirt_uri);
    let report = bench::libvirt_boot(&Kiln::from_env()?, &uri, runs, &Progress::new()).await?;
    if json {
        ui::print_json(&report)?;
        return Ok(0);
    }
    println!("up -> agent ready, {runs} runs each, alternating:");
    println!(
        "  libvirt ({uri})   median {:>7.0} ms",
        report.libvirt_up.p50_ms
    );
    println!(
        "  daemonless qemu                     median {:>7.0} ms",
        report.kiln_up.p50_ms
    );
    println!(
        "  ratio libvirt / daemonless          {:>7.2}",
        report.ratio
    );
    Ok(0)
}

async fn boot(runs: u32, count: usize, levers: bool, json: bool) -> Outcome {
    let kiln = Kiln::from_env()?;
    let progress = Progress::new();
    let boot = bench::boot(&kiln, runs, &progress).await?;
    let latency = bench::latency(&kiln, count, &progress).await?;
    let levers = if levers {
        bench::boot_levers(&kiln, runs, &progress).await?
    } else {
        Vec::new()
    };
    if json {
        ui::print_json(&serde_json::json!({
            "boot": boot,
            "latency": latency,
            "levers": levers,
        }))?;
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
    print_stages("kiln up, by stage", &boot.stages);
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
    if !levers.is_empty() {
        println!("boot levers, bare qemu -> init marker, {runs} runs each, alternating:");
        for lever in &levers {
            println!(
                "  {:<40} kept {:>6.0} ms   undone {:>6.0} ms   ratio {:.2}{}",
                lever.label,
                lever.kept.p50_ms,
                lever.undone.p50_ms,
                lever.ratio,
                match lever.stalls {
                    0 => String::new(),
                    n => format!("   ({n} stalled and retried)"),
                }
            );
        }
    }
    Ok(0)
}
