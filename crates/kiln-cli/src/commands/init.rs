use kiln::doctor::{self, Status};
use kiln::{Kiln, Paths};

use super::Outcome;
use crate::ui::Progress;

/// The config file `kiln init` writes when there is none: kiln's defaults, commented out.
const CONFIG_TEMPLATE: &str = "\
# kiln's defaults for `kiln up`; the environment (KILN_CPUS, ...) and flags override them.
# `kiln config show` prints the effective values and where each comes from.
# backend = \"qemu\"            # or \"libvirt\"
# libvirt_uri = \"qemu:///system\"
# cpus = 1
# memory = \"512M\"
# image = \"default\"           # or debian, debian-full, rust, python, cloud
# net = \"nat\"                 # nat, none or host
";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The libvirt URI to check (default: the config's, $KILN_LIBVIRT_URI or qemu:///system)
    #[arg(long, value_name = "URI")]
    pub connect: Option<String>,
}

/// A first run: checks what `doctor` checks (and says how to fix what fails), writes a config
/// file if there is none, and builds the default image. Exits 1 if something must be fixed.
pub async fn run(args: Args) -> Outcome {
    let paths = Paths::from_env()?;
    let uri = args.connect.unwrap_or_else(doctor::default_libvirt_uri);
    let diagnosis = doctor::diagnose(&paths, &uri).await;
    super::doctor::print_checks(&diagnosis.checks);
    let blocking: Vec<&doctor::Check> = diagnosis
        .checks
        .iter()
        .filter(|c| c.status == Status::Fail && c.name != "libvirt")
        .collect();
    if !blocking.is_empty() {
        eprintln!("\nFix these first, then run `kiln init` again:");
        for check in blocking {
            match &check.fix {
                Some(fix) => eprintln!("  {}: {}", check.name, fix.join(" ")),
                None => eprintln!("  {}: {}", check.name, check.detail),
            }
        }
        return Ok(1);
    }
    let config = kiln::config::path();
    if config.exists() {
        println!("config: {} (kept)", config.display());
    } else {
        if let Some(dir) = config.parent() {
            std::fs::create_dir_all(dir).map_err(kiln::IoError::at("create", dir))?;
        }
        kiln::state::write_atomic(&config, CONFIG_TEMPLATE.as_bytes())?;
        println!("config: {} (written)", config.display());
    }
    let kiln = Kiln::from_env()?;
    let inputs = kiln::image::ImageInputs::discover()?;
    let image = kiln
        .images()
        .ensure(
            kiln::spec::DEFAULT_IMAGE,
            Some(&inputs),
            false,
            &Progress::new(),
        )
        .await?;
    println!(
        "image: {} ready (kernel {})",
        image.name(),
        image.manifest.kernel_release
    );
    println!("kiln is ready. Try: kiln up web-1 && kiln exec web-1 -- uname -a");
    Ok(0)
}
