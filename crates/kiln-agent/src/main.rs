//! kiln's guest agent. It runs inside the VM (started by the image's init), listens on every
//! virtio-serial port named [`kiln_proto::PORT_PREFIX`]`N` (one host client per port),
//! authenticates the host, and runs commands for it with their output streamed back.
//!
//! `kiln-agent --unix PATH --secret-file FILE` serves a Unix socket instead: that is how the
//! host-side tests exercise this very binary without booting a VM.
#![allow(clippy::print_stderr)] // the agent's stderr is the guest console: its log.

mod exec;
mod link;
mod session;

use std::path::PathBuf;
use std::process::ExitCode;

/// Where the host puts the per-VM secret (QEMU `-fw_cfg name=opt/org.kiln/secret`).
const FW_CFG_SECRET: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/org.kiln/secret/raw";

#[derive(Debug)]
enum Endpoint {
    /// Find the virtio-serial port by name under /sys/class/virtio-ports.
    VirtioPort,
    Unix(PathBuf),
}

#[derive(Debug)]
struct Args {
    endpoint: Endpoint,
    secret_file: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut endpoint = Endpoint::VirtioPort;
    let mut secret_file = PathBuf::from(FW_CFG_SECRET);
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--unix") => {
                endpoint = Endpoint::Unix(args.next().ok_or("--unix needs a path")?.into());
            }
            Some("--secret-file") => {
                secret_file = args.next().ok_or("--secret-file needs a path")?.into();
            }
            Some("--version") => {
                eprintln!("kiln-agent {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    Ok(Args {
        endpoint,
        secret_file,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(err) => {
            eprintln!("kiln-agent: {err}");
            return ExitCode::from(2);
        }
    };
    let secret = match std::fs::read(&args.secret_file) {
        Ok(secret) if !secret.is_empty() => secret,
        Ok(_) => {
            eprintln!("kiln-agent: {} is empty", args.secret_file.display());
            return ExitCode::FAILURE;
        }
        Err(err) => {
            eprintln!(
                "kiln-agent: cannot read {}: {err}",
                args.secret_file.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let links = match &args.endpoint {
        Endpoint::VirtioPort => link::open_virtio_ports(),
        Endpoint::Unix(path) => link::listen_unix(path).map(|link| vec![link]),
    };
    let links = match links {
        Ok(links) => links,
        Err(err) => {
            eprintln!("kiln-agent: {err}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("kiln-agent: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "kiln-agent {} ready on {} port(s)",
        env!("CARGO_PKG_VERSION"),
        links.len()
    );
    let secret = session::Secret::new(secret);
    runtime.block_on(async move {
        let sessions: Vec<_> = links
            .into_iter()
            .map(|link| tokio::spawn(session::serve(link, secret.clone())))
            .collect();
        for session in sessions {
            let _ = session.await;
        }
    });
    ExitCode::SUCCESS
}
