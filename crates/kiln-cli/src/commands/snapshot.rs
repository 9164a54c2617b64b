use super::Outcome;
use crate::ui::{self, Progress};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Save a running VM's memory and disks (it pauses while its state is written)
    Save {
        #[arg(value_parser = crate::ui::parse_name)]
        name: String,
        #[arg(value_parser = crate::ui::parse_name)]
        snapshot: String,
        /// Only the disks, of a stopped VM (a restore boots from them)
        #[arg(long)]
        disk_only: bool,
        /// Print the snapshot as JSON (the fields of `kiln snapshot ls --json`)
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: super::Target,
    },
    /// List a VM's snapshots
    Ls {
        #[arg(value_parser = crate::ui::parse_name)]
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: super::Target,
    },
    /// Bring a VM back to a snapshot: what happened since is gone
    Restore {
        #[arg(value_parser = crate::ui::parse_name)]
        name: String,
        #[arg(value_parser = crate::ui::parse_name)]
        snapshot: String,
        #[command(flatten)]
        target: super::Target,
    },
    /// Remove a snapshot (refused while a disk still reads through it)
    Rm {
        #[arg(value_parser = crate::ui::parse_name)]
        name: String,
        #[arg(value_parser = crate::ui::parse_name)]
        snapshot: String,
        #[command(flatten)]
        target: super::Target,
    },
}

/// `kiln clone NAME SNAP NEW`.
#[derive(Debug, clap::Args)]
pub struct CloneArgs {
    #[arg(value_parser = crate::ui::parse_name)]
    pub name: String,
    #[arg(value_parser = crate::ui::parse_name)]
    pub snapshot: String,
    #[arg(value_parser = crate::ui::parse_name)]
    pub new: String,
    /// Print the new VM as JSON (the fields of `kiln ls --json`)
    #[arg(long)]
    pub json: bool,
}

pub async fn clone(args: CloneArgs) -> Outcome {
    let host = super::fleet()?.locate(&args.name, None).await?;
    host.clone_vm(&args.name, &args.snapshot, &args.new, &Progress::new())
        .await?;
    if args.json {
        if let Some(info) = host.find(&args.new).await? {
            ui::print_json(&info)?;
        }
        return Ok(0);
    }
    println!(
        "{} is running, cloned from {} at {}. Try: kiln exec {} -- hostname",
        args.new, args.name, args.snapshot, args.new
    );
    Ok(0)
}

/// `kiln pause NAME` / `kiln resume NAME`.
#[derive(Debug, clap::Args)]
pub struct PauseArgs {
    #[arg(value_parser = crate::ui::parse_name)]
    pub name: String,
    #[command(flatten)]
    pub target: super::Target,
}

pub async fn pause(args: PauseArgs, paused: bool) -> Outcome {
    let fleet = super::fleet()?;
    let host = args.target.locate(&fleet, &args.name).await?;
    host.set_paused(&args.name, paused).await?;
    if paused {
        println!(
            "{} is paused (exec fails fast until `kiln resume {}`)",
            args.name, args.name
        );
    } else {
        println!("{} is running", args.name);
    }
    Ok(0)
}

pub async fn run(command: Command) -> Outcome {
    let fleet = super::fleet()?;
    match command {
        Command::Save {
            name,
            snapshot,
            disk_only,
            json,
            target,
        } => {
            let host = target.locate(&fleet, &name).await?;
            let info = host
                .save_snapshot(&name, &snapshot, disk_only, &Progress::new())
                .await?;
            if json {
                ui::print_json(&info)?;
                return Ok(0);
            }
            println!(
                "saved {name} as {} ({} of memory, {} disk(s))",
                info.name,
                kiln::ByteSize::from_mib(info.memory_bytes >> 20),
                info.disks
            );
        }
        Command::Ls { name, json, target } => {
            let list = target.locate(&fleet, &name).await?.snapshots(&name).await?;
            if json {
                ui::print_json(&list)?;
                return Ok(0);
            }
            if list.is_empty() {
                eprintln!(
                    "{name} has no snapshots. Take one with `kiln snapshot save {name} SNAP`."
                );
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        kiln::ByteSize::from_mib(s.memory_bytes >> 20).to_string(),
                        s.disks.to_string(),
                        s.created_at.to_string(),
                    ]
                })
                .collect();
            print!(
                "{}",
                ui::table(&["SNAPSHOT", "MEMORY", "DISKS", "CREATED"], &rows)
            );
        }
        Command::Restore {
            name,
            snapshot,
            target,
        } => {
            let host = target.locate(&fleet, &name).await?;
            host.restore_snapshot(&name, &snapshot, &Progress::new())
                .await?;
            println!("{name} is back at {snapshot}");
        }
        Command::Rm {
            name,
            snapshot,
            target,
        } => {
            let host = target.locate(&fleet, &name).await?;
            host.remove_snapshot(&name, &snapshot).await?;
            println!("snapshot {snapshot} of {name} is removed");
        }
    }
    Ok(0)
}
