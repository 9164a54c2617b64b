//! Everything the user sees: progress on stderr, results on stdout, errors with their causes
//! and a hint.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use kiln::progress::{Event, Reporter};

/// `--color`: whether kiln colours what it writes to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless NO_COLOR is set
    Auto,
    Always,
    Never,
}

/// What the global options asked for: set once in `main`, before any output.
static QUIET: AtomicBool = AtomicBool::new(false);
static COLOR: AtomicBool = AtomicBool::new(false);

/// Applies the global options: `-q` silences progress, `--color` (and `NO_COLOR`) colours
/// the labels of errors and hints, `--verbose` logs what kiln does (`KILN_LOG` overrides).
pub fn init(quiet: bool, color: ColorChoice, verbose: u8) {
    QUIET.store(quiet, Ordering::Relaxed);
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let color = match color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => !no_color && std::io::stderr().is_terminal(),
    };
    COLOR.store(color, Ordering::Relaxed);
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{level},netlink_packet_route=error,netlink_proto=error"
        ))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(color)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .try_init();
}

/// Prints `error:` with the error, `caused by:` for each source, and `hint:` if known.
pub fn print_error(err: &kiln::Error) {
    eprintln!("{} {err}", label("error:", "1;31"));
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        // Transparent wrappers repeat their inner message: print each sentence once.
        if cause.to_string() != err.to_string() {
            eprintln!("caused by: {cause}");
        }
        source = cause.source();
    }
    if let kiln::Error::BootFailed { serial_tail, .. } = err
        && !serial_tail.is_empty()
    {
        eprintln!("last lines of the guest console:");
        for line in serial_tail.lines() {
            eprintln!("  | {line}");
        }
    }
    if let Some(hint) = err.hint() {
        eprintln!("{} {hint}", label("hint:", "1;36"));
    }
}

/// `text` in the SGR colour `sgr` when colour is on.
fn label(text: &str, sgr: &str) -> String {
    if COLOR.load(Ordering::Relaxed) {
        format!("\x1b[{sgr}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// Shows stages as spinners on a terminal (bars once their bytes are counted), as plain
/// lines otherwise.
pub struct Progress {
    tty: bool,
    current: Mutex<Current>,
}

/// The stage on screen: its spinner (on a terminal), and the bytes it counted so far.
#[derive(Default)]
struct Current {
    stage: Option<kiln::progress::Stage>,
    bar: Option<ProgressBar>,
    /// Whether the spinner became a byte display.
    metered: bool,
    bytes: Option<(kiln::progress::Stage, u64)>,
}

impl Progress {
    pub fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            current: Mutex::new(Current::default()),
        }
    }

    /// Clears the spinner (for a line printed in the middle of a stage); the stage and its
    /// bytes stay.
    fn clear_bar(&self) {
        if let Ok(mut current) = self.current.lock() {
            if let Some(bar) = current.bar.take() {
                bar.finish_and_clear();
            }
            current.metered = false;
        }
    }

    /// Ends the stage on screen; returns the bytes `stage` counted, if it counted any.
    fn finish_current(&self, stage: Option<kiln::progress::Stage>) -> Option<u64> {
        self.clear_bar();
        let mut current = self.current.lock().ok()?;
        current.stage = None;
        match current.bytes.take() {
            Some((counted, bytes)) if Some(counted) == stage => Some(bytes),
            _ => None,
        }
    }

    fn show_bytes(&self, stage: kiln::progress::Stage, done: u64, total: Option<u64>) {
        let Ok(mut current) = self.current.lock() else {
            return;
        };
        // Another stage's bytes (an outer one's, under a nested stage) are not this one's.
        if current.stage != Some(stage) {
            return;
        }
        current.bytes = Some((stage, done));
        let first = !current.metered;
        current.metered = true;
        let Some(bar) = &current.bar else {
            return;
        };
        if first {
            let template = match total {
                Some(_) => "  {bar:24} {msg} {bytes}/{total_bytes} ({binary_bytes_per_sec}, {eta})",
                None => "  {spinner} {msg} {bytes} ({binary_bytes_per_sec})",
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
        }
        if let Some(total) = total {
            // The total is an estimate: never show more done than expected.
            bar.set_length(total.max(done));
        }
        bar.set_position(done);
    }
}

impl Reporter for Progress {
    fn report(&self, event: Event) {
        if QUIET.load(Ordering::Relaxed) {
            return;
        }
        match event {
            Event::AccelChosen { accel, reason } => {
                eprintln!("  accel     {accel} ({reason})");
            }
            Event::StageStarted { stage } => {
                self.finish_current(None);
                if self.tty {
                    let bar = ProgressBar::new_spinner();
                    if let Ok(style) = ProgressStyle::with_template("  {spinner} {msg} {elapsed}") {
                        bar.set_style(style);
                    }
                    bar.set_message(stage.label());
                    bar.enable_steady_tick(Duration::from_millis(100));
                    if let Ok(mut current) = self.current.lock() {
                        current.bar = Some(bar);
                    }
                }
                if let Ok(mut current) = self.current.lock() {
                    current.stage = Some(stage);
                }
            }
            Event::Bytes { stage, done, total } => self.show_bytes(stage, done, total),
            Event::StageDone { stage, elapsed } => {
                let bytes = self.finish_current(Some(stage));
                let bytes = bytes.map(|b| format!(", {}", indicatif::BinaryBytes(b)));
                eprintln!(
                    "  done      {} ({:.2}s{})",
                    stage.label(),
                    elapsed.as_secs_f64(),
                    bytes.unwrap_or_default()
                );
            }
            // Parts of a stage: shown by --timings, not as progress.
            Event::Phase { .. } => {}
            Event::Note { message } => {
                self.clear_bar();
                eprintln!("  note      {message}");
            }
            Event::Start { warm, detail } => {
                self.clear_bar();
                eprintln!("  note      {}", kiln::progress::start_line(warm, &detail));
            }
            // Events of a newer library: nothing to show for them.
            _ => {}
        }
    }
}

/// Renders rows as aligned columns.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// A size for people: GiB with one decimal, else MiB.
pub fn human_bytes(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

pub fn print_json<T: serde::Serialize>(value: &T) -> kiln::Result<()> {
    use std::io::Write;
    let json = match serde_json::to_string_pretty(value) {
        Ok(json) => json,
        Err(err) => {
            eprintln!("error: cannot render JSON: {err}");
            return Ok(());
        }
    };
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{json}").and_then(|()| out.flush()) {
        // The reader is gone (`kiln ls --json | head -1`): nobody is left to tell.
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => written.map_err(|err| kiln::IoError::new("write JSON to", "stdout", err).into()),
    }
}

/// clap value parser for sizes (`512M`, `2G`): a bad size is a usage error with a hint.
pub fn parse_size(size: &str) -> Result<kiln::ByteSize, String> {
    size.parse::<kiln::ByteSize>().map_err(|err| {
        let err = kiln::SpecError::from(err);
        match err.hint() {
            Some(hint) => format!("{err}\n  hint: {hint}"),
            None => err.to_string(),
        }
    })
}

/// clap value parser for port forwards: a bad rule is a usage error with a hint.
pub fn parse_port(rule: &str) -> Result<kiln::spec::PortForward, String> {
    rule.parse::<kiln::spec::PortForward>().map_err(|err| {
        format!("{err}\n  hint: e.g. -p 8080:80 or -p 0.0.0.0:5353:53/udp; ports are 1 to 65535")
    })
}

/// clap value parser for `--net`: none, nat or host.
pub fn parse_net_policy(text: &str) -> Result<kiln::NetPolicy, String> {
    text.parse::<kiln::NetPolicy>()
        .map_err(|err| match err.hint() {
            Some(hint) => format!("{err}\n  hint: {hint}"),
            None => err.to_string(),
        })
}

/// clap value parser for VM names: a bad name is a usage error (exit 2).
pub fn parse_name(name: &str) -> Result<String, String> {
    kiln::spec::validate_name(name)
        .map(|()| name.to_owned())
        .map_err(|err| match err.hint() {
            Some(hint) => format!("{err}\n  hint: {hint}"),
            None => err.to_string(),
        })
}

/// Prints `--timings`: each stage and phase in order with its time, on stderr (stdout stays
/// the command's, or the JSON).
pub fn print_timings(entries: &[(&str, Duration)]) {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|(what, took)| {
            vec![
                (*what).to_owned(),
                format!("{:.1} ms", took.as_secs_f64() * 1e3),
            ]
        })
        .collect();
    eprint!("{}", table(&["STAGE", "TIME"], &rows));
}
