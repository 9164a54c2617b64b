use super::Outcome;
use crate::ui;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// The effective defaults of `kiln up`, each with where it comes from: the command line
    /// overrides the environment (KILN_BACKEND, KILN_LIBVIRT_URI, KILN_CPUS, KILN_MEMORY,
    /// KILN_IMAGE, KILN_NET), which overrides the config file
    /// ($XDG_CONFIG_HOME/kiln/config.toml, or KILN_CONFIG), which overrides kiln's own
    Show {
        /// Print JSON: {"backend": {"value", "source"}, ..., "file"}
        #[arg(long)]
        json: bool,
    },
    /// Where the config file is (whether or not it exists)
    Path,
}

pub async fn run(command: Command) -> Outcome {
    match command {
        Command::Path => println!("{}", kiln::config::path().display()),
        Command::Show { json } => {
            let config = kiln::config::Config::load()?;
            if json {
                ui::print_json(&config)?;
                return Ok(0);
            }
            let row = |key: &str, value: String, source: &kiln::config::Source| {
                vec![key.to_owned(), value, source.to_string()]
            };
            let rows = vec![
                row(
                    "backend",
                    format!("{:?}", config.backend.value).to_lowercase(),
                    &config.backend.source,
                ),
                row(
                    "libvirt_uri",
                    config.libvirt_uri.value.clone(),
                    &config.libvirt_uri.source,
                ),
                row("cpus", config.cpus.value.to_string(), &config.cpus.source),
                row(
                    "memory",
                    config.memory.value.to_string(),
                    &config.memory.source,
                ),
                row("image", config.image.value.clone(), &config.image.source),
                row("net", config.net.value.to_string(), &config.net.source),
            ];
            print!("{}", ui::table(&["KEY", "VALUE", "FROM"], &rows));
        }
    }
    Ok(0)
}
