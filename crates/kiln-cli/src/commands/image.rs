use std::path::PathBuf;

use kiln::Kiln;
use kiln::image::ImageInputs;

use super::Outcome;
use crate::ui::{self, Progress};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Build the default image (kernel, modules, busybox, agent) if an input changed
    Build {
        /// Rebuild even if nothing changed
        #[arg(long)]
        force: bool,
        /// Use this kernel .deb instead of downloading linux-image-amd64's
        #[arg(long)]
        kernel_deb: Option<PathBuf>,
    },
    /// List cached images
    Ls {
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(command: Command) -> Outcome {
    let kiln = Kiln::from_env()?;
    match command {
        Command::Build { force, kernel_deb } => {
            let mut inputs = ImageInputs::discover()?;
            if kernel_deb.is_some() {
                inputs.kernel_deb = kernel_deb;
            }
            let image = kiln
                .images()
                .ensure(
                    kiln::spec::DEFAULT_IMAGE,
                    Some(&inputs),
                    force,
                    &Progress::new(),
                )
                .await?;
            println!(
                "image {} ready: kernel {}, {} modules, {}",
                image.name(),
                image.manifest.kernel_release,
                image.manifest.modules.len(),
                image.dir.display()
            );
        }
        Command::Ls { json } => {
            let images = kiln.images().list()?;
            if json {
                let manifests: Vec<_> = images.iter().map(|i| &i.manifest).collect();
                ui::print_json(&manifests)?;
            } else {
                let rows: Vec<Vec<String>> = images
                    .iter()
                    .map(|i| {
                        vec![
                            i.name().to_owned(),
                            i.manifest.kernel_release.clone(),
                            i.manifest.digest(),
                            format!(
                                "{} MiB",
                                (i.manifest.vmlinux.size + i.manifest.initramfs.size) >> 20
                            ),
                            i.dir.display().to_string(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    ui::table(&["NAME", "KERNEL", "DIGEST", "SIZE", "PATH"], &rows)
                );
            }
        }
    }
    Ok(0)
}
