use std::path::PathBuf;
use std::str::FromStr;

use super::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to copy: a host path, or NAME:PATH in a VM
    pub src: Location,
    /// Where to: NAME:PATH in a VM, or a host path. An existing directory receives the
    /// source under its own name; otherwise this is the copy's new name.
    pub dest: Location,
    #[command(flatten)]
    pub target: super::Target,
}

/// A host path, or a path in a VM (`NAME:PATH`).
#[derive(Debug, Clone)]
pub enum Location {
    Host(PathBuf),
    Guest { vm: String, path: String },
}

impl FromStr for Location {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // `./a:b` and `/x:y` are host paths; `name:path` names a VM.
        match s.split_once(':') {
            Some((vm, path)) if !vm.contains('/') && !vm.starts_with('.') => {
                kiln::spec::validate_name(vm).map_err(|e| e.to_string())?;
                if path.is_empty() {
                    return Err(format!("{s:?}: say which path in {vm}, e.g. {vm}:/root"));
                }
                Ok(Self::Guest {
                    vm: vm.to_owned(),
                    path: path.to_owned(),
                })
            }
            _ => Ok(Self::Host(PathBuf::from(s))),
        }
    }
}

pub async fn run(args: Args) -> Outcome {
    let fleet = super::fleet()?;
    let connect = args.target.connect.as_deref();
    let progress = crate::ui::Progress::new();
    let stats = match (args.src, args.dest) {
        (Location::Host(src), Location::Guest { vm, path }) => {
            let agent = fleet.agent(&vm, connect).await?;
            kiln::copy::push(&agent, &src, &path, &progress).await?
        }
        (Location::Guest { vm, path }, Location::Host(dest)) => {
            let agent = fleet.agent(&vm, connect).await?;
            kiln::copy::pull(&agent, &path, &dest, &Default::default(), &progress).await?
        }
        _ => {
            eprintln!("error: one side must be a host path and the other NAME:PATH in a VM");
            eprintln!("hint: kiln cp ./dir web-1:/srv   or   kiln cp web-1:/var/log/x.log .");
            return Ok(2);
        }
    };
    eprintln!("copied {} files, {} bytes", stats.files, stats.bytes);
    Ok(0)
}
