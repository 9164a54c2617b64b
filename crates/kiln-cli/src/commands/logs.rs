use std::io::Write;
use std::time::Duration;

use super::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(value_parser = crate::ui::parse_name)]
    pub name: String,
    #[command(flatten)]
    pub target: super::Target,
    /// Keep printing what the guest writes, until the VM stops or Ctrl-C
    #[arg(long, short)]
    pub follow: bool,
}

/// Prints the console log from the start; with `follow`, keeps polling for more while the
/// VM runs (a new boot's log is printed from its start).
pub async fn run(args: Args) -> Outcome {
    let host = args.target.locate(&super::fleet()?, &args.name).await?;
    let mut offset = 0u64;
    let mut stdout = std::io::stdout();
    loop {
        let chunk = host.read_log(&args.name, offset).await?;
        offset = chunk.next_offset;
        if !chunk.data.is_empty() {
            let _ = stdout.write_all(&chunk.data);
            continue;
        }
        let _ = stdout.flush();
        if !args.follow || !chunk.running {
            return Ok(0);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
