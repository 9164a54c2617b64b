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
    /// Start with the last N lines of the log instead of all of it
    #[arg(long, short = 'n', value_name = "N")]
    pub tail: Option<usize>,
}

/// Prints the console log from the start; with `follow`, keeps polling for more while the
/// VM runs (a new boot's log is printed from its start).
pub async fn run(args: Args) -> Outcome {
    let host = args.target.locate(&super::fleet()?, &args.name).await?;
    let mut offset = 0u64;
    let mut stdout = std::io::stdout();
    if let Some(lines) = args.tail {
        // Read to the end (the log is bounded: 8 MiB a boot), keep the last lines.
        let mut log = Vec::new();
        loop {
            let chunk = host.read_log(&args.name, offset).await?;
            if chunk.data.is_empty() || chunk.next_offset < offset {
                break;
            }
            offset = chunk.next_offset;
            log.extend_from_slice(&chunk.data);
        }
        let _ = stdout.write_all(last_lines(&log, lines));
        if !args.follow {
            let _ = stdout.flush();
            return Ok(0);
        }
    }
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

/// The last `n` lines of `log` (a last line without its newline counts as one).
fn last_lines(log: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &[];
    }
    let body = log.strip_suffix(b"\n").unwrap_or(log);
    let start = body
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'\n')
        .nth(n - 1)
        .map_or(0, |(i, _)| i + 1);
    &log[start..]
}

#[cfg(test)]
mod tests {
    use super::last_lines;

    #[test]
    fn the_tail_is_the_last_lines() {
        assert_eq!(last_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(last_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(last_lines(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(last_lines(b"a\nb\n", 0), b"");
        assert_eq!(last_lines(b"", 3), b"");
    }
}
