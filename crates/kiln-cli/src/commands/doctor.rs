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
        for check in &diagnosis.checks {
            let mark = match check.status {
                Status::Ok => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            println!("{mark}  {:<17} {}", check.name, check.detail);
            if let Some(fix) = &check.fix {
                println!("      {:<17} fix: {}", "", fix.join(" "));
            }
        }
    }
    Ok(if diagnosis.ok() { 0 } else { 1 })
}
