//! The byte link to the host, on two OS threads (reads and writes are blocking).
//!
//! A virtio-serial port returns end-of-file from `read` while no host is connected, and blocks
//! writes until one is. The reader turns that into [`LinkEvent::Disconnected`]; the writer drops
//! frames from an earlier session (an older epoch) instead of delivering them to a new host.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

#[derive(Debug)]
pub enum LinkEvent {
    Data(Vec<u8>),
    Disconnected,
}

/// Bytes to send, tagged with the session they belong to.
#[derive(Debug)]
pub struct Outgoing {
    pub epoch: u64,
    pub bytes: Vec<u8>,
}

#[derive(Debug)]
pub struct Link {
    pub events: mpsc::Receiver<LinkEvent>,
    pub outgoing: mpsc::Sender<Outgoing>,
    /// The current session; the writer drops frames of any other.
    pub epoch: Arc<AtomicU64>,
}

const READ_CHUNK: usize = 64 * 1024;
/// How long the reader sleeps between polls while no host is connected.
const IDLE_POLL: Duration = Duration::from_millis(5);

fn find_port(name: &str) -> Result<PathBuf, String> {
    let class = Path::new("/sys/class/virtio-ports");
    let entries =
        std::fs::read_dir(class).map_err(|e| format!("cannot list {}: {e}", class.display()))?;
    for entry in entries.flatten() {
        let port_name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if port_name.trim() == name {
            return Ok(Path::new("/dev").join(entry.file_name()));
        }
    }
    Err(format!(
        "no virtio-serial port named {name} under {}",
        class.display()
    ))
}

pub fn open_virtio_port(name: &str) -> Result<Link, String> {
    let path = find_port(name)?;
    // A port accepts one open at a time: open it once, read-write, and share the handle.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let writer = file
        .try_clone()
        .map_err(|e| format!("cannot duplicate {}: {e}", path.display()))?;
    let (events_tx, events) = mpsc::channel(64);
    let (outgoing, outgoing_rx) = mpsc::channel(64);
    let epoch = Arc::new(AtomicU64::new(0));
    std::thread::spawn(move || read_port(file, events_tx));
    let writer_epoch = epoch.clone();
    std::thread::spawn(move || {
        write_loop(outgoing_rx, writer_epoch, move |bytes| {
            let mut w = &writer;
            w.write_all(bytes)
        })
    });
    Ok(Link {
        events,
        outgoing,
        epoch,
    })
}

fn read_port(mut file: File, events: mpsc::Sender<LinkEvent>) {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut connected = false;
    loop {
        match file.read(&mut buf) {
            Ok(0) => {
                if connected && events.blocking_send(LinkEvent::Disconnected).is_err() {
                    return;
                }
                connected = false;
                std::thread::sleep(IDLE_POLL);
            }
            Ok(n) => {
                connected = true;
                if events
                    .blocking_send(LinkEvent::Data(buf[..n].to_vec()))
                    .is_err()
                {
                    return;
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => {
                eprintln!("kiln-agent: port read failed: {err}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn write_loop(
    mut rx: mpsc::Receiver<Outgoing>,
    epoch: Arc<AtomicU64>,
    mut write: impl FnMut(&[u8]) -> std::io::Result<()>,
) {
    while let Some(out) = rx.blocking_recv() {
        if out.epoch != epoch.load(Ordering::Acquire) {
            continue;
        }
        if let Err(err) = write(&out.bytes) {
            eprintln!("kiln-agent: write to host failed: {err}");
        }
    }
}

/// Serves one host at a time on a Unix socket (the host-side test transport).
pub fn listen_unix(path: &Path) -> Result<Link, String> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    let (events_tx, events) = mpsc::channel(64);
    let (outgoing, outgoing_rx) = mpsc::channel(64);
    let epoch = Arc::new(AtomicU64::new(0));
    let current: Arc<Mutex<Option<UnixStream>>> = Arc::default();
    let accept_current = current.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            if let Ok(w) = stream.try_clone()
                && let Ok(mut slot) = accept_current.lock()
            {
                *slot = Some(w);
            }
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if events_tx
                            .blocking_send(LinkEvent::Data(buf[..n].to_vec()))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
            if events_tx.blocking_send(LinkEvent::Disconnected).is_err() {
                return;
            }
        }
    });
    let writer_epoch = epoch.clone();
    std::thread::spawn(move || {
        write_loop(outgoing_rx, writer_epoch, move |bytes| {
            let stream = current
                .lock()
                .ok()
                .and_then(|slot| slot.as_ref().and_then(|s| s.try_clone().ok()));
            match stream {
                Some(mut s) => s.write_all(bytes),
                None => Ok(()),
            }
        })
    });
    Ok(Link {
        events,
        outgoing,
        epoch,
    })
}
