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
    /// Data came after an end-of-file too short to count as a disconnect: the same host
    /// whose "port open" message was late, or a new host that came at once.
    Resumed,
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
/// How long end-of-file must last before the host counts as gone (see [`read_port`]).
const DISCONNECT_SETTLE: Duration = Duration::from_millis(100);
/// The longest a reader with no host waits before it reads again, should a wake-up be lost.
const IDLE_FALLBACK: Duration = Duration::from_secs(1);

/// The agent's ports: every virtio-serial port whose name starts with
/// [`kiln_proto::PORT_PREFIX`], in index order (each serves one host client at a time).
fn find_ports() -> Result<Vec<(String, PathBuf)>, String> {
    let class = Path::new("/sys/class/virtio-ports");
    let entries =
        std::fs::read_dir(class).map_err(|e| format!("cannot list {}: {e}", class.display()))?;
    let mut ports = Vec::new();
    for entry in entries.flatten() {
        let port_name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        let port_name = port_name.trim();
        if let Some(index) = kiln_proto::port_index(port_name) {
            ports.push((
                index,
                port_name.to_owned(),
                Path::new("/dev").join(entry.file_name()),
            ));
        }
    }
    ports.sort();
    if ports.is_empty() {
        return Err(format!(
            "no virtio-serial port named {}N under {}",
            kiln_proto::PORT_PREFIX,
            class.display()
        ));
    }
    Ok(ports
        .into_iter()
        .map(|(_, name, path)| (name, path))
        .collect())
}

/// Opens every agent port; each is a link of its own, served by a session of its own.
///
/// The driver adds ports as the host announces them, so an early agent may see only some:
/// it looks again until all [`kiln_proto::AGENT_PORTS`] are there, or the count has held
/// still for a while (a VM made with fewer ports).
pub fn open_virtio_ports() -> Result<Vec<Link>, String> {
    let mut ports = find_ports();
    let (mut seen, mut still) = (0, 0);
    for _ in 0..40 {
        let count = ports.as_ref().map_or(0, Vec::len);
        if count >= usize::from(kiln_proto::AGENT_PORTS) {
            break;
        }
        if count == seen {
            still += 1;
            if count > 0 && still >= 4 {
                break;
            }
        } else {
            (seen, still) = (count, 0);
        }
        std::thread::sleep(Duration::from_millis(50));
        ports = find_ports();
    }
    ports?
        .into_iter()
        .map(|(name, path)| open_virtio_port(&name, &path))
        .collect()
}

fn open_virtio_port(name: &str, path: &Path) -> Result<Link, String> {
    // A port accepts one open at a time: open it once, read-write, and share the handle.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let writer = file
        .try_clone()
        .map_err(|e| format!("cannot duplicate {}: {e}", path.display()))?;
    let idle = IdleWait::new(&file).map_err(|e| format!("cannot watch {}: {e}", path.display()))?;
    let (events_tx, events) = mpsc::channel(64);
    let (outgoing, outgoing_rx) = mpsc::channel(64);
    let epoch = Arc::new(AtomicU64::new(0));
    spawn_small(format!("{name} reader"), move || {
        read_port(file, idle, events_tx)
    })?;
    let writer_epoch = epoch.clone();
    spawn_small(format!("{name} writer"), move || {
        write_loop(outgoing_rx, writer_epoch, move |bytes| {
            let mut w = &writer;
            w.write_all(bytes)
        })
    })?;
    Ok(Link {
        events,
        outgoing,
        epoch,
    })
}

/// The port threads only move bytes: a small stack each keeps many ports cheap.
fn spawn_small(name: String, body: impl FnOnce() + Send + 'static) -> Result<(), String> {
    std::thread::Builder::new()
        .name(name)
        .stack_size(128 * 1024)
        .spawn(body)
        .map(drop)
        .map_err(|e| format!("cannot start a port thread: {e}"))
}

/// Waits, without spinning, for a port with no host to change state.
///
/// While no host is connected, `read` returns end-of-file at once and `poll` always reports
/// `POLLHUP`, so neither can block. The port's wait queue is woken when a host connects
/// (`VIRTIO_CONSOLE_PORT_OPEN`) and when data arrives: an edge-triggered epoll reports
/// exactly those wake-ups, and one that comes between the `read` and the wait is kept.
struct IdleWait {
    epoll: rustix::fd::OwnedFd,
}

impl IdleWait {
    fn new(port: &File) -> rustix::io::Result<Self> {
        use rustix::event::epoll;
        let epoll_fd = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        epoll::add(
            &epoll_fd,
            port,
            epoll::EventData::new_u64(0),
            epoll::EventFlags::IN | epoll::EventFlags::ET,
        )?;
        Ok(Self { epoll: epoll_fd })
    }

    /// Returns after a wake-up, or after [`IDLE_FALLBACK`] in case one was missed.
    fn wait(&self) {
        self.wait_for(IDLE_FALLBACK);
    }

    /// Returns after a wake-up, or after `timeout`.
    fn wait_for(&self, timeout: Duration) {
        use rustix::event::{Timespec, epoll};
        let timeout = Timespec {
            tv_sec: timeout.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: timeout.subsec_nanos().into(),
        };
        let mut events = [std::mem::MaybeUninit::<epoll::Event>::uninit(); 1];
        if let Err(err) = epoll::wait(&self.epoll, &mut events, Some(&timeout))
            && err != rustix::io::Errno::INTR
        {
            eprintln!("kiln-agent: waiting on a port failed: {err}");
            std::thread::sleep(IDLE_FALLBACK);
        }
    }
}

/// Reads the port, telling the session about data and about the host leaving.
///
/// `read` returning end-of-file is not proof that the host left. When a host connects, QEMU
/// sends the "port open" control message and the host's first bytes on two virtqueues, and
/// the guest may take the data interrupt first: a reader woken by it reads the bytes, reads
/// again, and gets end-of-file because the port does not look connected yet. Ending the
/// session then would drop the answer to that host's `Hello` (seen as handshakes that went
/// unanswered). So end-of-file counts as a disconnect only once it persists for
/// [`DISCONNECT_SETTLE`]. Data after a shorter one is reported as [`LinkEvent::Resumed`]:
/// the session then ends unless it is still in its handshake with nothing half-read (a
/// host that really left and a new one that came at once never inherits an open session).
fn read_port(mut file: File, idle: IdleWait, events: mpsc::Sender<LinkEvent>) {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut connected = false;
    // Since when end-of-file has been read while a host was connected.
    let mut suspect: Option<std::time::Instant> = None;
    loop {
        match file.read(&mut buf) {
            Ok(0) if connected => {
                let since = *suspect.get_or_insert_with(std::time::Instant::now);
                let left = DISCONNECT_SETTLE.saturating_sub(since.elapsed());
                if !left.is_zero() {
                    // The port's "open" message wakes this at once if it was late.
                    idle.wait_for(left);
                    continue;
                }
                if events.blocking_send(LinkEvent::Disconnected).is_err() {
                    return;
                }
                connected = false;
                suspect = None;
                idle.wait();
            }
            Ok(0) => idle.wait(),
            Ok(n) => {
                connected = true;
                if suspect.take().is_some() && events.blocking_send(LinkEvent::Resumed).is_err() {
                    return;
                }
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
