//! Interactive terminals in a guest: `kiln console NAME` (a shell) and `kiln exec -t`.
//!
//! The local terminal goes to raw mode (restored on every exit path), its size follows
//! SIGWINCH, and every key reaches the guest: Ctrl-C is turned into SIGINT by the guest's own
//! line discipline. `Ctrl-]` detaches: the guest side is hung up (SIGHUP) and kiln exits 0.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;

use kiln::{AgentClient, ExecEvent, ExecRequest, TtySize};
use rustix::termios::{self, OptionalActions, Termios};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::Outcome;

/// The detach key, Ctrl-] (like telnet and `virsh console`).
pub const DETACH_KEY: u8 = 0x1d;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The VM
    #[arg(value_parser = crate::ui::parse_name)]
    pub name: String,
    #[command(flatten)]
    pub target: super::Target,
    /// Detach after this many seconds without a key typed or a byte shown; 0 never does
    #[arg(
        long,
        value_name = "SECONDS",
        env = "KILN_CONSOLE_IDLE",
        default_value_t = 900
    )]
    pub idle_timeout: u64,
}

/// A VM has one interactive console at a time: the holder keeps an exclusive lock, which
/// goes when its kiln exits however it exits. (`kiln exec -t` takes none.)
struct ConsoleLease {
    _file: std::fs::File,
}

impl ConsoleLease {
    fn take(uri: Option<&str>, name: &str) -> kiln::Result<Self> {
        let paths = kiln::Paths::from_env()?;
        let dir = paths.runtime_dir().join("consoles");
        kiln::state::create_private_dir(&dir)?;
        // One file per VM and host (the name alone could be on several hosts), named the
        // same by every kiln build: the host's URI, with anything but letters and digits
        // made `_`, and cut to stay a valid file name.
        let host: String = uri
            .unwrap_or("local")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(160)
            .collect();
        let path = dir.join(format!("{name}@{host}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(kiln::IoError::at("open", &path))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Self { _file: file }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(kiln::Error::ConsoleBusy {
                name: name.to_owned(),
            }),
            Err(err) => Err(kiln::IoError::new("lock", &path, err.into()).into()),
        }
    }
}

pub async fn run(args: Args) -> Outcome {
    let fleet = super::fleet()?;
    let host = args.target.locate(&fleet, &args.name).await?;
    let _lease = ConsoleLease::take(host.uri(), &args.name)?;
    let agent = host
        .agent(&args.name, std::time::Duration::from_secs(30))
        .await?;
    let request = ExecRequest::new(["sh", "-l"]).cwd("/root");
    eprintln!("Connected to {}. Detach with Ctrl-].\r", args.name);
    // More than a year is as good as never (and keeps the deadline valid).
    let idle = (args.idle_timeout > 0)
        .then(|| std::time::Duration::from_secs(args.idle_timeout.min(365 * 86_400)));
    let code = interactive(&agent, request, idle).await?;
    eprintln!("\r");
    Ok(code)
}

/// Puts the local terminal back as it was when dropped.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return None;
        }
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(stdin.as_fd(), OptionalActions::Now, &raw).ok()?;
        Some(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), OptionalActions::Now, &self.saved);
    }
}

fn local_size() -> TtySize {
    termios::tcgetwinsize(std::io::stdout().as_fd())
        .ok()
        .filter(|w| w.ws_row > 0 && w.ws_col > 0)
        .map_or(TtySize { rows: 24, cols: 80 }, |w| TtySize {
            rows: w.ws_row,
            cols: w.ws_col,
        })
}

/// Runs `request` on a guest pseudo-terminal wired to this one; returns its exit code. With
/// `idle`, detaches once that long passes without a key typed or a byte shown.
pub async fn interactive(
    agent: &AgentClient,
    request: ExecRequest,
    idle: Option<std::time::Duration>,
) -> Outcome {
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".to_owned());
    let request = request.tty(local_size()).stdin(true).env("TERM", term);
    let mut session = agent.exec(request).await?;
    let mut stdin = session.take_stdin();
    let _raw = RawMode::enter();

    // A plain thread: a blocking read of a terminal cannot be cancelled.
    let (keys_tx, mut keys) = mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut input = std::io::stdin().lock();
        while let Ok(n) = input.read(&mut buf) {
            if n == 0 || keys_tx.blocking_send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let mut resized = signal(SignalKind::window_change())
        .map_err(|e| kiln::IoError::new("listen for SIGWINCH on", "", e))?;
    let mut out = std::io::stdout();
    // Without a timeout the deadline is never polled; a year keeps it far and valid.
    let idle_for = idle.unwrap_or(std::time::Duration::from_secs(365 * 86_400));
    let idle_deadline = tokio::time::sleep(idle_for);
    tokio::pin!(idle_deadline);
    loop {
        tokio::select! {
            () = &mut idle_deadline, if idle.is_some() => {
                session.signal(1).await?;
                eprint!("\r\n[detached: idle for {}s]\r\n", idle_for.as_secs());
                return Ok(0);
            }
            event = session.next_event() => match event? {
                Some(ExecEvent::Stdout(data) | ExecEvent::Stderr(data)) => {
                    idle_deadline.as_mut().reset(tokio::time::Instant::now() + idle_for);
                    let _ = out.write_all(&data);
                    let _ = out.flush();
                }
                Some(ExecEvent::Exited(status)) => return Ok(status.shell_code()),
                None => return Ok(0),
            },
            typed = keys.recv(), if stdin.is_some() => match typed {
                Some(data) => {
                    idle_deadline.as_mut().reset(tokio::time::Instant::now() + idle_for);
                    if let Some(at) = data.iter().position(|b| *b == DETACH_KEY) {
                        if let Some(writer) = stdin.as_mut() {
                            writer.write(&data[..at]).await?;
                        }
                        session.signal(1).await?;
                        eprint!("\r\n[detached]\r\n");
                        return Ok(0);
                    }
                    if let Some(writer) = stdin.as_mut() {
                        writer.write(&data).await?;
                    }
                }
                // The local stdin ended (not a terminal): the guest sees end of input.
                None => {
                    if let Some(mut writer) = stdin.take() {
                        writer.write(&[4]).await.ok();
                    }
                }
            },
            _ = resized.recv() => session.resize(local_size()).await?,
        }
    }
}
