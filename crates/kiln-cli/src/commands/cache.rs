use kiln::Kiln;

use super::Outcome;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Remove the warm-start templates and the sessions' workspace images (made again on the
    /// next warm `up`, and the next session on a directory)
    Prune,
    /// How much disk kiln takes: images, packages, templates, workspace images, snapshots
    /// and VMs
    Info {
        /// Print JSON: {"images", "debs", "templates", "workspaces", "snapshots", "vms",
        /// "total"} in bytes,
        /// with "cache_dir" and "data_dir"
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(command: Command) -> Outcome {
    match command {
        Command::Prune => {
            let kiln = Kiln::from_env()?;
            let removed = kiln.prune_templates().await?;
            println!("removed {removed} warm-start template(s)");
            let images = kiln.prune_workspace_images()?;
            println!("removed {images} workspace image(s)");
        }
        Command::Info { json } => {
            let paths = kiln::Paths::from_env()?;
            let usage = kiln::state::usage::usage(&paths);
            if json {
                let mut document = serde_json::to_value(&usage)
                    .map_err(|err| kiln::IoError::new("render", "stdout", err.into()))?;
                document["cache_dir"] = paths.cache_dir().display().to_string().into();
                document["data_dir"] = paths.data_dir().display().to_string().into();
                crate::ui::print_json(&document)?;
                return Ok(0);
            }
            let human = crate::ui::human_bytes;
            let rows = vec![
                vec![
                    "images".into(),
                    human(usage.images),
                    paths.images_dir().display().to_string(),
                ],
                vec![
                    "debs".into(),
                    human(usage.debs),
                    paths.debs_dir().display().to_string(),
                ],
                vec![
                    "templates".into(),
                    human(usage.templates),
                    paths.templates_dir().display().to_string(),
                ],
                vec![
                    "workspaces".into(),
                    human(usage.workspaces),
                    paths.workspace_images_dir().display().to_string(),
                ],
                vec![
                    "snapshots".into(),
                    human(usage.snapshots),
                    paths.vms_dir().display().to_string(),
                ],
                vec![
                    "vms".into(),
                    human(usage.vms),
                    paths.vms_dir().display().to_string(),
                ],
                vec!["total".into(), human(usage.total), String::new()],
            ];
            print!("{}", crate::ui::table(&["WHAT", "SIZE", "WHERE"], &rows));
        }
    }
    Ok(0)
}
