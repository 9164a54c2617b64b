use std::io::{Read, Write};

use kiln::{ExecEvent, ExecRequest};
use tokio::sync::mpsc;

use super::Outcome;
use kiln::RemoteErrorKind;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(value_parser = crate::ui::parse_name)]
    pub name: String,
    #[command(flatten)]
    pub target: super::Target,
    /// Do not forward this terminal's stdin (the command gets /dev/null)
    #[arg(long, short = 'n')]
    pub no_stdin: bool,
    /// Set an environment variable in the guest (repeatable)
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Run on a pseudo-terminal (interactive programs; Ctrl-] detaches)
    #[arg(long, short = 't')]
    pub tty: bool,
    /// Working directory in the guest
    #[arg(long = "workdir", short = 'w')]
    pub workdir: Option<String>,
    /// The command and its arguments
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

pub fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

pub async fn run(args: Args) -> Outcome {
    let agent = super::fleet()?
        .agent(&args.name, args.target.connect.as_deref())
        .await?;
    let mut request = ExecRequest::new(args.command)
        .envs(args.env)
        .stdin(!args.no_stdin);
    if let Some(dir) = args.workdir {
        request = request.cwd(dir);
    }
    if args.tty {
        return super::console::interactive(&agent, request, None).await;
    }
    let mut session = match agent.exec(request).await {
        Ok(session) => session,
        // Like a shell: 127 when the command does not exist, 126 when it cannot run.
        Err(err @ kiln::agent::AgentError::CommandNotFound { .. }) => {
            crate::ui::print_error(&err.into());
            return Ok(127);
        }
        Err(
            err @ kiln::agent::AgentError::Remote {
                kind: RemoteErrorKind::PermissionDenied,
                ..
            },
        ) => {
            crate::ui::print_error(&err.into());
            return Ok(126);
        }
        Err(err) => return Err(err.into()),
    };

    if let Some(mut stdin) = session.take_stdin() {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
        // A plain thread: a blocking read of a terminal cannot be cancelled.
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut input = std::io::stdin().lock();
            loop {
                match input.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if tx.blocking_send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                if stdin.write(&data).await.is_err() {
                    return;
                }
            }
            let _ = stdin.close().await;
        });
    }

    // One listener for the whole command: a Ctrl-C that comes while the first is being
    // forwarded is kept for the next turn, not lost between two listeners.
    let mut ctrl_c = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| kiln::IoError::new("listen for signals on", "", e))?;
    let mut interrupted = false;
    loop {
        let event = tokio::select! {
            event = session.next_event() => event?,
            _ = ctrl_c.recv() => {
                if interrupted {
                    // The second Ctrl-C ends kiln, whatever the guest command does with it.
                    return Ok(INTERRUPTED);
                }
                // Forward the first Ctrl-C to the guest command, like a local one.
                interrupted = true;
                session.signal(2).await?;
                continue;
            }
        };
        match event {
            Some(ExecEvent::Stdout(data)) => write_all(&mut std::io::stdout(), &data),
            Some(ExecEvent::Stderr(data)) => write_all(&mut std::io::stderr(), &data),
            Some(ExecEvent::Exited(status)) => return Ok(status.shell_code()),
            None => return Ok(0),
        }
    }
}

/// The exit code after a second Ctrl-C, like a shell's.
const INTERRUPTED: i32 = 130;

fn write_all(out: &mut impl Write, data: &[u8]) {
    // A closed stdout (`| head`) is not an error of the guest command.
    let _ = out.write_all(data);
    let _ = out.flush();
}
