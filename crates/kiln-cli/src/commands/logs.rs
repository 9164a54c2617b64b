use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use kiln::topology::{LibvirtHost, Located};
use kiln::{IoError, Vm, VmState};

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

pub async fn run(args: Args) -> Outcome {
    match args.target.locate(&super::fleet()?, &args.name).await? {
        Located::Local(vm) => local(&vm, args.follow).await,
        Located::Libvirt(host) => libvirt(&host, &args.name, args.follow).await,
    }
}

/// Reads the log on the libvirt host through the storage API, polling for more.
async fn libvirt(host: &LibvirtHost, name: &str, follow: bool) -> Outcome {
    let mut offset = 0u64;
    let mut stdout = std::io::stdout();
    loop {
        let (data, running) = host.read_log(name, offset).await?;
        if !data.is_empty() {
            let _ = stdout.write_all(&data);
            offset += data.len() as u64;
            continue;
        }
        let _ = stdout.flush();
        if !follow || !running {
            return Ok(0);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn local(vm: &Vm, follow: bool) -> Outcome {
    let path = vm.paths().serial_log();
    let mut file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("{} has not printed anything yet", vm.name());
            return Ok(0);
        }
        Err(err) => return Err(IoError::new("open", &path, err).into()),
    };
    let mut stdout = std::io::stdout();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(IoError::at("read", &path))?;
        if n > 0 {
            let _ = stdout.write_all(&buf[..n]);
            continue;
        }
        let _ = stdout.flush();
        if !follow || vm.state().await != VmState::Running {
            return Ok(0);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The log may have been truncated by a new boot: start over if it shrank.
        let pos = file.stream_position().map_err(IoError::at("read", &path))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(pos);
        if len < pos {
            file.seek(SeekFrom::Start(0))
                .map_err(IoError::at("read", &path))?;
        }
    }
}
