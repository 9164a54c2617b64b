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
    #[arg(value_parser = crate::ui::parse_name)]
    pub name: String,
    #[command(flatten)]
    pub target: super::Target,
}

pub async fn run(args: Args) -> Outcome {
    let agent = super::fleet()?
        .agent(&args.name, args.target.connect.as_deref())
        .await?;
    let mut request = ExecRequest::new(["sh", "-l"]);
    request.cwd = Some("/root".to_owned());
    eprintln!("Connected to {}. Detach with Ctrl-].\r", args.name);
    let code = interactive(&agent, request).await?;
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

/// Runs `request` on a guest pseudo-terminal wired to this one; returns its exit code.
pub async fn interactive(agent: &AgentClient, mut request: ExecRequest) -> Outcome {
    request.tty = Some(local_size());
    request.stdin = true;
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".to_owned());
    request.env.push(("TERM".to_owned(), term));
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
    loop {
        tokio::select! {
            event = session.next_event() => match event? {
                Some(ExecEvent::Stdout(data) | ExecEvent::Stderr(data)) => {
                    let _ = out.write_all(&data);
                    let _ = out.flush();
                }
                Some(ExecEvent::Exited(status)) => return Ok(status.shell_code()),
                None => return Ok(0),
            },
            typed = keys.recv(), if stdin.is_some() => match typed {
                Some(data) => {
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
