use std::path::PathBuf;

use kiln::Kiln;
use kiln::image::{CatalogEntry, ImageInputs};

use super::Outcome;
use crate::ui::{self, Progress};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Build an image (default: the busybox image and kernel) if an input changed
    Build {
        /// The image: default, or a Debian recipe (`kiln image ls` lists them)
        #[arg(default_value = kiln::spec::DEFAULT_IMAGE, value_parser = crate::ui::parse_name)]
        name: String,
        /// Rebuild even if nothing changed (a Debian image picks up newer packages)
        #[arg(long)]
        force: bool,
        /// Use this kernel .deb instead of downloading linux-image-amd64's
        #[arg(long)]
        kernel_deb: Option<PathBuf>,
        /// Print what was built as JSON: {"name", "kernel_release", "dir", "debian"} (debian:
        /// {"suite", "packages", "init", "size_bytes", "base"} or null)
        #[arg(long)]
        json: bool,
    },
    /// List the images kiln knows, built or not
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show an image's recipe and build: packages, sizes, checksums
    Inspect {
        #[arg(value_parser = crate::ui::parse_name)]
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a built image from the cache (refused while a VM uses it)
    Rm {
        #[arg(value_parser = crate::ui::parse_name)]
        name: String,
    },
}

pub async fn run(command: Command) -> Outcome {
    let kiln = Kiln::from_env()?;
    match command {
        Command::Build {
            name,
            force,
            kernel_deb,
            json,
        } => {
            let mut inputs = ImageInputs::discover()?;
            if let Some(deb) = kernel_deb {
                inputs = inputs.kernel_deb(deb);
            }
            let image = kiln
                .images()
                .ensure(&name, Some(&inputs), force, &Progress::new())
                .await?;
            if json {
                let debian = image.root().map(|root| {
                    serde_json::json!({
                        "suite": root.recipe.suite(),
                        "packages": root.packages.len(),
                        "init": root.init().to_string(),
                        "size_bytes": root.base.size,
                        "base": root.base.path,
                    })
                });
                ui::print_json(&serde_json::json!({
                    "name": image.name(),
                    "kernel_release": image.manifest.kernel_release,
                    "dir": image.dir,
                    "debian": debian,
                }))?;
                return Ok(0);
            }
            match image.root() {
                None => println!(
                    "image {} ready: kernel {}, {} modules, {}",
                    image.name(),
                    image.manifest.kernel_release,
                    image.manifest.modules.len(),
                    image.dir.display()
                ),
                Some(root) => println!(
                    "image {} ready: Debian {} ({} packages, {} init), {}, {}",
                    image.name(),
                    root.recipe.suite(),
                    root.packages.len(),
                    root.init(),
                    crate::ui::human_bytes(root.base.size),
                    root.base.path.display()
                ),
            }
        }
        Command::Ls { json } => {
            let catalog = kiln.images().catalog()?;
            if json {
                ui::print_json(&catalog)?;
            } else {
                let rows: Vec<Vec<String>> = catalog.iter().map(row).collect();
                print!(
                    "{}",
                    ui::table(&["NAME", "KIND", "BUILT", "SIZE", "DESCRIPTION"], &rows)
                );
            }
        }
        Command::Inspect { name, json } => {
            let image = kiln.images().get(&name)?;
            if json {
                match image.root() {
                    Some(root) => ui::print_json(root)?,
                    None => ui::print_json(&image.manifest)?,
                }
            } else {
                println!("name:      {}", image.name());
                println!("digest:    {}", image.digest());
                println!("kernel:    {}", image.manifest.kernel_release);
                match image.root() {
                    None => {
                        println!("kind:      busybox in RAM");
                        println!("vmlinux:   {}", image.manifest.vmlinux.sha256);
                        println!("initramfs: {}", image.manifest.initramfs.sha256);
                    }
                    Some(root) => {
                        println!(
                            "kind:      Debian {} ({} init)",
                            root.recipe.suite(),
                            root.init()
                        );
                        println!(
                            "size:      {} filesystem, {} on disk",
                            root.size,
                            crate::ui::human_bytes(root.base.size)
                        );
                        println!("base:      {}", root.base.path.display());
                        println!("sha256:    {}", root.base.sha256);
                        println!("mirror:    {}", root.mirror);
                        println!(
                            "built:     {} ago in {:.0} s",
                            age(root.built_at),
                            root.build_seconds
                        );
                        println!("packages:  {}", root.packages.len());
                        for package in &root.packages {
                            println!("  {} {}", package.name, package.version);
                        }
                    }
                }
            }
        }
        Command::Rm { name } => {
            kiln.remove_image(&name).await?;
            println!("removed image {name}");
        }
    }
    Ok(0)
}

fn row(entry: &CatalogEntry) -> Vec<String> {
    let (built, size) = match &entry.built {
        Some(built) => (
            format!("{} ago", age(built.built_at)),
            crate::ui::human_bytes(built.bytes),
        ),
        None => ("-".to_owned(), "-".to_owned()),
    };
    let origin = if entry.shipped { "" } else { " (declared)" };
    vec![
        entry.name.clone(),
        entry.kind.clone(),
        built,
        size,
        format!("{}{origin}", entry.description),
    ]
}

fn age(epoch_secs: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(epoch_secs);
    let secs = now.saturating_sub(epoch_secs);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}
