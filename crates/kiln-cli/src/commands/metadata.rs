use std::collections::BTreeMap;

use super::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The VM
    #[arg(value_parser = crate::ui::parse_name)]
    pub name: String,
    /// Set these keys, KEY=VALUE; without any (and without --unset), show the metadata
    #[arg(value_name = "KEY=VALUE", value_parser = super::up::parse_metadata)]
    pub set: Vec<(String, String)>,
    /// Remove this key (repeatable)
    #[arg(long, value_name = "KEY")]
    pub unset: Vec<String>,
    /// Print the VM's id and metadata as JSON: {"name", "id", "metadata"}
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: super::Target,
}

pub async fn run(args: Args) -> Outcome {
    let (host, info) = args.target.find(&args.name).await?;
    let change = kiln::spec::MetadataChange {
        set: args.set.iter().cloned().collect(),
        unset: args.unset.clone(),
    };
    let mut metadata = info.metadata.clone();
    if !change.is_empty() {
        metadata = host.set_metadata(&args.name, &change).await?;
        if info.state != kiln::VmState::Stopped {
            eprintln!(
                "{} sees the new metadata from its next start (it runs with what it booted with)",
                args.name
            );
        }
    }
    show(&args, info.id.as_deref(), &metadata)
}

fn show(args: &Args, id: Option<&str>, metadata: &BTreeMap<String, String>) -> Outcome {
    if args.json {
        let document = serde_json::json!({
            "name": args.name,
            "id": id,
            "metadata": metadata,
        });
        println!("{document:#}");
        return Ok(0);
    }
    let width = metadata.keys().map(String::len).max().unwrap_or(0);
    for (key, value) in metadata {
        println!("{key:width$}  {value}");
    }
    Ok(0)
}
