//! `kiln`: the command line. Parses arguments, calls one library function per command, and
//! renders the result. It alone owns the terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod audit;
mod commands;
#[cfg(test)]
mod documented_commands;
mod ui;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The environment kiln reads, shown under `kiln --help`.
const ENVIRONMENT: &str = "\
Environment:
  KILN_HOME            one directory for all of kiln's state (default: the XDG directories)
  KILN_CACHE_DIR       where images and warm-start templates are cached
  KILN_AGENT           the guest agent binary to put in images
  KILN_CONFIG          the config file (default $XDG_CONFIG_HOME/kiln/config.toml)
  KILN_BACKEND, KILN_CPUS, KILN_MEMORY, KILN_IMAGE, KILN_NET
                       defaults of `kiln up`, over the config file (`kiln config show`)
  KILN_LIBVIRT_URI     the libvirt URI of --backend libvirt (default qemu:///system)
  KILN_LIBVIRT_POOL    the storage pool kiln uses on libvirt hosts (default kiln)
  KILN_QEMU            the QEMU binary (default qemu-system-x86_64)
  KILN_TCG_CPU         the guest CPU model without KVM (default x86-64-v2; max for AVX)
  KILN_PASST           the passt binary of the nat network policy
  KILN_KERNEL_DEB      a Debian kernel package to build images from
  KILN_DEBIAN_MIRROR   the Debian mirror images are built from
  KILN_LOG             log filter, e.g. debug or kiln=info (overrides --verbose)
  NO_COLOR             no colour, unless --color always";

#[derive(Debug, Parser)]
#[command(
    name = "kiln",
    version,
    about = "Code-first virtual machines",
    propagate_version = true,
    after_help = ENVIRONMENT
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Quiet: no progress, only results and errors
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Log what kiln does (--verbose --verbose: debug); KILN_LOG=filter overrides
    #[arg(long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Colour errors and hints: auto (on a terminal, unless NO_COLOR is set), always, never
    #[arg(long, global = true, value_enum, default_value_t = ui::ColorChoice::Auto, value_name = "WHEN")]
    color: ui::ColorChoice,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a VM and boot it (builds the image on first use)
    Up(commands::up::Args),
    /// List VMs
    Ls(commands::ls::Args),
    /// This machine and the libvirt hosts kiln has VMs on: reachability, VMs, free memory,
    /// transport
    Hosts(commands::hosts::Args),
    /// Show one VM: state, host, id, metadata and its whole spec
    Inspect(commands::inspect::Args),
    /// Run a command in a VM, streaming its output; exits with the command's exit code
    Exec(commands::exec::Args),
    /// An interactive shell in a VM (Ctrl-] detaches)
    Console(commands::console::Args),
    /// Copy files between the host and a VM: `kiln cp ./dir web-1:/srv`, `kiln cp web-1:/etc/hosts .`
    Cp(commands::cp::Args),
    /// Forward a host port to a running VM (kept across restarts), remove one, or list them
    Forward(commands::forward::Args),
    /// Show a VM's serial console log
    Logs(commands::logs::Args),
    /// Show or change a VM's metadata (the guest reads it on its config drive from its next
    /// start): `kiln metadata web-1 role=db --unset tier`
    Metadata(commands::metadata::Args),
    /// Power VMs off: the guest is asked, and its machine killed if it has not after
    /// --timeout seconds (--force: at once)
    Stop(commands::stop::Args),
    /// Boot stopped VMs
    Start(commands::start::Args),
    /// Stop a VM (as `kiln stop` does) and boot it again
    Restart(commands::start::RestartArgs),
    /// Stop a VM's vCPUs; its memory stays
    Pause(commands::snapshot::PauseArgs),
    /// Let a paused VM run on
    Resume(commands::snapshot::PauseArgs),
    /// Save, list, restore and remove snapshots of a VM's memory and disks
    #[command(subcommand)]
    Snapshot(commands::snapshot::Command),
    /// Start a new VM from a snapshot of another (own name, hostname, secret, random seed)
    Clone(commands::snapshot::CloneArgs),
    /// Remove VMs and their files
    Rm(commands::rm::Args),
    /// Run a command in a throwaway VM with a workspace, bring back changed files, remove
    /// the VM (also on failure or Ctrl-C)
    Run(commands::run::Args),
    /// First run: check this host, write a config file, build the default image
    Init(commands::init::Args),
    /// Check this host: QEMU, acceleration, image inputs
    Doctor(commands::doctor::Args),
    /// What keeps guests from the host and VMs from other users, item by item
    #[command(subcommand)]
    Security(commands::doctor::SecurityCommand),
    /// Build and list guest images
    #[command(subcommand)]
    Image(commands::image::Command),
    /// Named networks of the daemonless backend: VMs on one reach each other
    #[command(subcommand)]
    Net(commands::net::Command),
    /// The defaults of `kiln up` and where each comes from (config file, environment)
    #[command(subcommand)]
    Config(commands::config::Command),
    /// Manage kiln's caches (warm-start templates)
    #[command(subcommand)]
    Cache(commands::cache::Command),
    /// Print a shell completion script: `kiln completion bash > /etc/bash_completion.d/kiln`
    Completion {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print kiln's man page (roff), made from the same definitions as `--help`: `kiln man |
    /// man -l -`
    Man,
    /// Benchmarks, each against its baseline in the same run: boot, score, libvirt, session, snapshot
    #[command(subcommand)]
    Bench(commands::bench::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ui::init(cli.quiet, cli.color, cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // `exec` and `run` exit with the guest command's code: kiln's own failures are 125, as
    // docker's and podman's are, so that a command's exit 1 is told from kiln's.
    let failure_code = match cli.command {
        Command::Exec(_) | Command::Run(_) => 125,
        _ => 1,
    };
    let audit = audit::entry(&cli.command);
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up(args) => commands::up::run(args).await,
            Command::Ls(args) => commands::ls::run(args).await,
            Command::Inspect(args) => commands::inspect::run(args).await,
            Command::Hosts(args) => commands::hosts::run(args).await,
            Command::Exec(args) => commands::exec::run(args).await,
            Command::Console(args) => commands::console::run(args).await,
            Command::Cp(args) => commands::cp::run(args).await,
            Command::Forward(args) => commands::forward::run(args).await,
            Command::Logs(args) => commands::logs::run(args).await,
            Command::Metadata(args) => commands::metadata::run(args).await,
            Command::Stop(args) => commands::stop::run(args).await,
            Command::Start(args) => commands::start::run(args).await,
            Command::Restart(args) => commands::start::restart(args).await,
            Command::Pause(args) => commands::snapshot::pause(args, true).await,
            Command::Resume(args) => commands::snapshot::pause(args, false).await,
            Command::Clone(args) => commands::snapshot::clone(args).await,
            Command::Snapshot(command) => commands::snapshot::run(command).await,
            Command::Rm(args) => commands::rm::run(args).await,
            Command::Run(args) => commands::run::run(args).await,
            Command::Init(args) => commands::init::run(args).await,
            Command::Doctor(args) => commands::doctor::run(args).await,
            Command::Security(command) => commands::doctor::security(command).await,
            Command::Image(command) => commands::image::run(command).await,
            Command::Net(command) => commands::net::run(command).await,
            Command::Cache(command) => commands::cache::run(command).await,
            Command::Config(command) => commands::config::run(command).await,
            Command::Bench(command) => commands::bench::run(command).await,
            Command::Completion { shell } => {
                let mut command = <Cli as clap::CommandFactory>::command();
                clap_complete::generate(shell, &mut command, "kiln", &mut std::io::stdout());
                Ok(0)
            }
            Command::Man => {
                let command = <Cli as clap::CommandFactory>::command();
                clap_mangen::Man::new(command)
                    .render(&mut std::io::stdout())
                    .map_err(kiln::IoError::at("write the man page to", "stdout"))?;
                Ok(0)
            }
        }
    });
    if let Some(entry) = audit {
        // A session's exit code is its command's; any other command's non-zero code is a
        // part of the work that failed (one VM of several).
        let outcome = match &result {
            Ok(code) if *code != 0 && !audit::GUEST_CODE_VERBS.contains(&entry.verb.as_str()) => {
                Err(format!("exit code {code}: some of it failed"))
            }
            Ok(_) => Ok(()),
            Err(err) => Err(err.to_string()),
        };
        let logged = kiln::Paths::from_env()
            .and_then(|paths| kiln::state::audit::append(&paths, &entry.ended(outcome)));
        if let Err(err) = logged {
            eprintln!("warning: the audit log was not written: {err}");
        }
    }
    let code = match result {
        Ok(code) => code,
        Err(err) => {
            ui::print_error(&err);
            failure_code
        }
    };
    // Exit without waiting for a stdin reader blocked in the runtime's thread pool.
    std::process::exit(code)
}
