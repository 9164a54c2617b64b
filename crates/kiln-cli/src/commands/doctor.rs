use kiln::Paths;
use kiln::doctor::{self, Status};

use super::Outcome;
use crate::ui;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON for scripts
    #[arg(long)]
    pub json: bool,
    /// The libvirt URI to check (default: $KILN_LIBVIRT_URI or qemu:///system)
    #[arg(long, value_name = "URI")]
    pub connect: Option<String>,
}

pub async fn run(args: Args) -> Outcome {
    let uri = args.connect.unwrap_or_else(doctor::default_libvirt_uri);
    let diagnosis = doctor::diagnose(&Paths::from_env()?, &uri).await;
    if args.json {
        ui::print_json(&diagnosis)?;
    } else {
        print_checks(&diagnosis.checks);
    }
    Ok(if diagnosis.ok() { 0 } else { 1 })
}

/// One line per check (with its fix under it), as `doctor` and `security status` show them.
pub fn print_checks(checks: &[doctor::Check]) {
    for check in checks {
        let mark = match check.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        println!("{mark}  {:<20} {}", check.name, check.detail);
        if let Some(fix) = &check.fix {
            println!("      {:<20} fix: {}", "", fix.join(" "));
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum SecurityCommand {
    /// The security posture: acceleration, agent authentication, state and socket modes, the
    /// guest network policy, libvirt transports, QEMU sandboxing, the console policy
    Status(Args),
}

/// `kiln security status`: exits 1 when an item fails.
pub async fn security(command: SecurityCommand) -> Outcome {
    let SecurityCommand::Status(args) = command;
    let uri = args.connect.unwrap_or_else(doctor::default_libvirt_uri);
    let checks = doctor::security::posture(&Paths::from_env()?, &uri).await;
    if args.json {
        ui::print_json(&checks)?;
    } else {
        print_checks(&checks);
    }
    Ok(if checks.iter().any(|c| c.status == Status::Fail) {
        1
    } else {
        0
    })
}
