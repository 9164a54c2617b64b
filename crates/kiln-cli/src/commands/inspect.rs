use super::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The VM
    #[arg(value_parser = crate::ui::parse_name)]
    pub name: String,
    /// Print JSON: the fields of `kiln ls --json`, with `spec` (the whole spec, as stored)
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: super::Target,
}

pub async fn run(args: Args) -> Outcome {
    let (_, info) = args.target.find(&args.name).await?;
    let mut document = serde_json::to_value(&info)
        .map_err(|err| kiln::IoError::new("render", "stdout", err.into()))?;
    document["spec"] = serde_json::to_value(&info.spec)
        .map_err(|err| kiln::IoError::new("render", "stdout", err.into()))?;
    if args.json {
        crate::ui::print_json(&document)?;
        return Ok(0);
    }
    let Some(fields) = document.as_object() else {
        return Ok(0);
    };
    for (key, value) in fields {
        match value {
            serde_json::Value::Null => {}
            serde_json::Value::String(text) => println!("{key}: {text}"),
            serde_json::Value::Object(map) if map.is_empty() => {}
            other @ (serde_json::Value::Object(_) | serde_json::Value::Array(_)) => {
                println!("{key}: {other:#}");
            }
            other => println!("{key}: {other}"),
        }
    }
    Ok(0)
}
