//! One host session at a time per port: find the sync magic, authenticate, then serve
//! requests. Each port has a session of its own; they share only the VM's secret.
//!
//! Everything the host sends is untrusted input parsed with hard limits; a malformed frame
//! ends the session (its processes are killed) and the agent waits for the next magic.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use kiln_proto::handshake::{self, Role};
use kiln_proto::{
    AgentInfo, CONTROL_STREAM, Envelope, FrameDecoder, Message, PROTOCOL_VERSION, RemoteError,
    RemoteErrorKind, SYNC_MAGIC, StreamId, SyncScanner, encode_frame,
};
use tokio::sync::mpsc;

use crate::exec::{self, ExecControl, Sender};
use crate::link::{Link, LinkEvent};

enum Phase {
    /// Looking for [`SYNC_MAGIC`].
    Unsynced(SyncScanner),
    AwaitHello,
    AwaitAuth {
        nonce: [u8; 32],
    },
    Open,
}

/// The secret every session proves and checks; a clone's `SetIdentity` replaces it for all.
#[derive(Debug, Clone)]
pub struct Secret(Arc<Mutex<Vec<u8>>>);

impl Secret {
    pub fn new(secret: Vec<u8>) -> Self {
        Self(Arc::new(Mutex::new(secret)))
    }

    fn get(&self) -> Vec<u8> {
        match self.0.lock() {
            Ok(secret) => secret.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, secret: Vec<u8>) {
        match self.0.lock() {
            Ok(mut slot) => *slot = secret,
            Err(poisoned) => *poisoned.into_inner() = secret,
        }
    }
}

struct Session {
    secret: Secret,
    phase: Phase,
    decoder: FrameDecoder,
    sender: Sender,
    execs: HashMap<StreamId, ExecControl>,
    done_tx: mpsc::UnboundedSender<(u64, StreamId)>,
}

pub async fn serve(mut link: Link, secret: Secret) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut session = Session {
        secret,
        phase: Phase::Unsynced(SyncScanner::new()),
        decoder: FrameDecoder::new(),
        sender: Sender::new(link.outgoing.clone(), link.epoch.clone()),
        execs: HashMap::new(),
        done_tx,
    };
    loop {
        tokio::select! {
            event = link.events.recv() => match event {
                Some(LinkEvent::Data(bytes)) => session.feed(&bytes).await,
                Some(LinkEvent::Disconnected) => session.reset("host disconnected"),
                Some(LinkEvent::Resumed) => session.resumed(),
                None => return,
            },
            Some((epoch, stream)) = done_rx.recv() => {
                if epoch == session.sender.epoch() {
                    session.execs.remove(&stream);
                }
            }
        }
    }
}

impl Session {
    /// Ends the current session: its processes are killed, its queued output dropped.
    fn reset(&mut self, why: &str) {
        if !matches!(self.phase, Phase::Unsynced(_)) {
            eprintln!("kiln-agent: session ended: {why}");
        }
        for (_, exec) in self.execs.drain() {
            exec.kill();
        }
        self.sender.epoch.fetch_add(1, Ordering::AcqRel);
        self.decoder.clear();
        self.phase = Phase::Unsynced(SyncScanner::new());
    }

    /// Data after a short end-of-file: a late "port open" only ever interrupts a handshake
    /// at a frame boundary, so an open session, or half a frame, belongs to a host that left.
    fn resumed(&mut self) {
        if matches!(self.phase, Phase::Open) || self.decoder.buffered() > 0 {
            self.reset("host reconnected");
        }
    }

    async fn feed(&mut self, mut bytes: &[u8]) {
        let mut pending: Vec<u8>;
        loop {
            if let Phase::Unsynced(scanner) = &mut self.phase {
                match scanner.feed(bytes) {
                    Some(rest) => {
                        pending = rest.to_vec();
                        bytes = &pending;
                        self.start_session();
                    }
                    None => return,
                }
            }
            self.decoder.push(bytes);
            loop {
                match self.decoder.next_envelope() {
                    Ok(Some(envelope)) => self.handle(envelope).await,
                    Ok(None) => return,
                    Err(err) => {
                        // The bytes that did not parse may hold the next session's magic.
                        pending = self.decoder.take_buffered();
                        self.reset(&format!("bad frame: {err}"));
                        bytes = &pending;
                        break;
                    }
                }
                if matches!(self.phase, Phase::Unsynced(_)) {
                    pending = self.decoder.take_buffered();
                    bytes = &pending;
                    break;
                }
            }
        }
    }

    /// The magic was seen: whatever ran before belongs to a session that is gone.
    fn start_session(&mut self) {
        for (_, exec) in self.execs.drain() {
            exec.kill();
        }
        self.sender.epoch.fetch_add(1, Ordering::AcqRel);
        self.decoder.clear();
        self.phase = Phase::AwaitHello;
    }

    async fn handle(&mut self, envelope: Envelope) {
        let Envelope { stream, message } = envelope;
        match (&self.phase, message) {
            (Phase::AwaitHello, Message::Hello { version, nonce }) => {
                self.on_hello(version, nonce).await
            }
            (Phase::AwaitAuth { nonce }, Message::Auth { proof }) => {
                if handshake::verify(&self.secret.get(), Role::Host, nonce, &proof) {
                    self.phase = Phase::Open;
                    self.sender.send(CONTROL_STREAM, Message::Ready).await;
                } else {
                    self.refuse(
                        RemoteErrorKind::AuthFailed,
                        "host failed to prove the VM secret",
                    )
                    .await;
                }
            }
            (Phase::Open, message) => self.serve_request(stream, message).await,
            (_, other) => {
                let what = format!("unexpected {} during the handshake", name_of(&other));
                self.refuse(RemoteErrorKind::BadRequest, &what).await;
            }
        }
    }

    async fn on_hello(&mut self, version: u32, host_nonce: [u8; 32]) {
        if version != PROTOCOL_VERSION {
            let why = format!("agent speaks protocol {PROTOCOL_VERSION}, host speaks {version}");
            let error = RemoteError {
                kind: RemoteErrorKind::VersionMismatch,
                message: why.clone(),
            };
            self.answer(Message::Error(error)).await;
            eprintln!("kiln-agent: session refused: {why}");
            self.decoder.clear();
            self.phase = Phase::Unsynced(SyncScanner::new());
            return;
        }
        let mut nonce = [0u8; 32];
        if let Err(err) = getrandom::fill(&mut nonce) {
            eprintln!("kiln-agent: no randomness for the handshake: {err}");
            self.reset("no randomness");
            return;
        }
        let welcome = Message::Welcome {
            version: PROTOCOL_VERSION,
            echo: host_nonce,
            nonce,
            proof: handshake::proof(&self.secret.get(), Role::Agent, &host_nonce),
            agent: agent_info(),
        };
        self.answer(welcome).await;
        self.phase = Phase::AwaitAuth { nonce };
    }

    /// The sync magic and the answer to a `Hello`, as one write: a port whose host left can
    /// hold a write until the next host comes, and a magic alone, without its answer, would
    /// make that host misread its own answer.
    async fn answer(&self, message: Message) {
        if let Some(frame) = frame(CONTROL_STREAM, message) {
            let mut bytes = SYNC_MAGIC.to_vec();
            bytes.extend(frame);
            self.sender.send_raw(&bytes).await;
        }
    }

    async fn refuse(&mut self, kind: RemoteErrorKind, message: &str) {
        let error = RemoteError {
            kind,
            message: message.to_owned(),
        };
        self.sender
            .send(CONTROL_STREAM, Message::Error(error))
            .await;
        // No execs run before a session opens: keep the epoch so the error frame still goes out.
        eprintln!("kiln-agent: session refused: {message}");
        self.decoder.clear();
        self.phase = Phase::Unsynced(SyncScanner::new());
    }

    async fn serve_request(&mut self, stream: StreamId, message: Message) {
        match message {
            Message::Ping { seq } => self.sender.send(stream, Message::Pong { seq }).await,
            Message::Exec(request) if stream != CONTROL_STREAM => {
                if self.execs.contains_key(&stream) {
                    self.sender
                        .send_error(stream, RemoteErrorKind::BadRequest, "stream already in use")
                        .await;
                    return;
                }
                if let Some(control) =
                    exec::start(stream, request, self.sender.clone(), self.done_tx.clone()).await
                {
                    self.execs.insert(stream, control);
                }
            }
            Message::Stdin(data) => {
                if let Some(exec) = self.execs.get(&stream) {
                    exec.stdin(data);
                }
            }
            Message::StdinClose => {
                if let Some(exec) = self.execs.get_mut(&stream) {
                    exec.close_stdin();
                }
            }
            Message::Signal { signal } => {
                if let Some(exec) = self.execs.get(&stream) {
                    exec.signal(signal);
                }
            }
            Message::Resize(size) => {
                if let Some(exec) = self.execs.get(&stream) {
                    exec.resize(size);
                }
            }
            Message::SetIdentity {
                hostname,
                secret,
                seed,
                clock_unix_nanos,
            } => match set_identity(&hostname, &seed) {
                // Too short a secret would weaken every later session: refuse it.
                Ok(()) if secret.len() >= 16 => {
                    // A clock left behind is wrong, not unsafe: said, and the rest goes on.
                    if let Some(nanos) = clock_unix_nanos
                        && let Err(err) = set_clock(nanos)
                    {
                        eprintln!("kiln-agent: {err}");
                    }
                    self.secret.set(secret);
                    eprintln!("kiln-agent: identity set: hostname {hostname}");
                    self.sender.send(stream, Message::IdentitySet).await;
                }
                Ok(()) => {
                    self.sender
                        .send_error(stream, RemoteErrorKind::BadRequest, "secret too short")
                        .await;
                }
                Err(err) => {
                    self.sender
                        .send_error(stream, RemoteErrorKind::Other, &err)
                        .await;
                }
            },
            Message::Shutdown => power_off(),
            other => {
                let what = format!("unexpected {}", name_of(&other));
                self.sender
                    .send_error(stream, RemoteErrorKind::BadRequest, &what)
                    .await;
            }
        }
    }
}

fn name_of(message: &Message) -> &'static str {
    match message {
        Message::Hello { .. } => "Hello",
        Message::Welcome { .. } => "Welcome",
        Message::Auth { .. } => "Auth",
        Message::Ready => "Ready",
        Message::Error(_) => "Error",
        Message::Ping { .. } => "Ping",
        Message::Pong { .. } => "Pong",
        Message::Exec(_) => "Exec",
        Message::Started { .. } => "Started",
        Message::Stdin(_) => "Stdin",
        Message::StdinClose => "StdinClose",
        Message::Stdout(_) => "Stdout",
        Message::Stderr(_) => "Stderr",
        Message::Exited(_) => "Exited",
        Message::Signal { .. } => "Signal",
        Message::Shutdown => "Shutdown",
        Message::Resize(_) => "Resize",
        Message::SetIdentity { .. } => "SetIdentity",
        Message::IdentitySet => "IdentitySet",
    }
}

fn agent_info() -> AgentInfo {
    let uname = rustix::system::uname();
    AgentInfo {
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel_release: uname.release().to_string_lossy().into_owned(),
        hostname: uname.nodename().to_string_lossy().into_owned(),
    }
}

/// `RNDRESEEDCRNG`: make the kernel's CRNG take its next key from the input pool now.
const RNDRESEEDCRNG: rustix::ioctl::Opcode = rustix::ioctl::opcode::none(b'R', 0x07);

/// Sets the wall clock: a clone's starts where its template's stopped, which may be days
/// behind (TLS, `make` and logs need the real time).
fn set_clock(unix_nanos: u64) -> Result<(), String> {
    let nanos_per_sec = 1_000_000_000;
    let time = rustix::time::Timespec {
        tv_sec: i64::try_from(unix_nanos / nanos_per_sec).map_err(|e| e.to_string())?,
        tv_nsec: i64::try_from(unix_nanos % nanos_per_sec).map_err(|e| e.to_string())?,
    };
    rustix::time::clock_settime(rustix::time::ClockId::Realtime, time)
        .map_err(|e| format!("cannot set the clock: {e}"))
}

/// A clone's own hostname and randomness. Clones of one snapshot start with the same CRNG
/// state, and a write to `/dev/urandom` only feeds the input pool (Linux 5.18 and later
/// reseed from it on a timer), so the CRNG is reseeded at once after the seed goes in.
fn set_identity(hostname: &str, seed: &[u8]) -> Result<(), String> {
    use std::io::Write;
    rustix::system::sethostname(hostname.as_bytes())
        .map_err(|e| format!("cannot set the hostname: {e}"))?;
    let mut urandom = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| format!("cannot open /dev/urandom: {e}"))?;
    urandom
        .write_all(seed)
        .map_err(|e| format!("cannot seed /dev/urandom: {e}"))?;
    // SAFETY: RNDRESEEDCRNG takes no argument, which is what `NoArg` passes; the opcode is
    // the kernel's `_IO('R', 0x07)`.
    #[allow(unsafe_code)]
    let reseeded =
        unsafe { rustix::ioctl::ioctl(&urandom, rustix::ioctl::NoArg::<RNDRESEEDCRNG>::new()) };
    reseeded.map_err(|e| format!("cannot reseed the kernel's CRNG: {e}"))?;
    refresh_config(hostname)
}

/// Where kiln's init mounts the config drive.
const CONFIG_MOUNT: &str = "/run/kiln/config";
/// `BLKFLSBUF`: drop a block device's cached blocks.
const BLKFLSBUF: rustix::ioctl::Opcode = rustix::ioctl::opcode::none(0x12, 97);

/// Mounts the config drive again. A clone's drive is its own, but the guest it restores
/// still has the template's drive mounted and cached: unmount it, drop the device's cached
/// blocks, and mount what the drive holds now. Nothing to do where no drive is mounted.
fn refresh_config(name: &str) -> Result<(), String> {
    use rustix::mount::{MountFlags, UnmountFlags};
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let Some(source) = config_source(&mountinfo) else {
        return Ok(());
    };
    rustix::mount::unmount(CONFIG_MOUNT, UnmountFlags::empty())
        .map_err(|e| format!("cannot unmount the config drive: {e}"))?;
    let device = std::fs::File::open(&source).map_err(|e| format!("cannot open {source}: {e}"))?;
    // SAFETY: BLKFLSBUF takes no argument, which is what `NoArg` passes; the opcode is the
    // kernel's `_IO(0x12, 97)`.
    #[allow(unsafe_code)]
    let flushed =
        unsafe { rustix::ioctl::ioctl(&device, rustix::ioctl::NoArg::<BLKFLSBUF>::new()) };
    flushed.map_err(|e| format!("cannot drop the cached blocks of {source}: {e}"))?;
    rustix::mount::mount(
        source.as_str(),
        CONFIG_MOUNT,
        "ext4",
        MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    )
    .map_err(|e| format!("cannot mount the config drive again: {e}"))?;
    // A superblock kept alive elsewhere (another mount namespace) would come back as it was:
    // make sure the drive now is this VM's.
    let document = std::fs::read_to_string(format!("{CONFIG_MOUNT}/metadata.json"))
        .map_err(|e| format!("cannot read the remounted config drive: {e}"))?;
    if !names_vm(&document, name) {
        return Err(format!(
            "the remounted config drive is not {name}'s: the old one is still held"
        ));
    }
    eprintln!("kiln-agent: config drive remounted");
    Ok(())
}

/// Whether `metadata.json` (as kiln writes it: pretty JSON, the name on a line of its own)
/// is VM `name`'s.
fn names_vm(document: &str, name: &str) -> bool {
    let line = format!("\"name\": \"{name}\",");
    document.lines().any(|l| l.trim() == line)
}

/// The device mounted at [`CONFIG_MOUNT`], from `/proc/self/mountinfo`: the fifth field is
/// the mount point, and the source follows the ` - ` separator and the filesystem type.
fn config_source(mountinfo: &str) -> Option<String> {
    mountinfo
        .lines()
        .filter(|line| line.split(' ').nth(4) == Some(CONFIG_MOUNT))
        .filter_map(|line| line.split_once(" - "))
        .filter_map(|(_, tail)| tail.split(' ').nth(1))
        .next_back()
        .map(str::to_owned)
}

fn power_off() {
    eprintln!("kiln-agent: powering off at the host's request");
    rustix::fs::sync();
    // Under systemd (a full-mode Debian image), let it stop the services and unmount; the
    // data is already synced if it is slow and the host kills the machine.
    if std::path::Path::new("/run/systemd/system").is_dir() {
        let asked = std::process::Command::new("systemctl")
            .args(["poweroff", "--no-block"])
            .stdin(std::process::Stdio::null())
            .status();
        if asked.is_ok_and(|status| status.success()) {
            return;
        }
        eprintln!("kiln-agent: systemctl poweroff failed; powering off directly");
    }
    if let Err(err) = rustix::system::reboot(rustix::system::RebootCommand::PowerOff) {
        eprintln!("kiln-agent: power off failed: {err}");
    }
}

/// Keeps `encode_frame` failures out of the request paths: an envelope the agent builds is
/// always below the frame limit because output is chunked by [`kiln_proto::MAX_CHUNK_LEN`].
pub(crate) fn frame(stream: StreamId, message: Message) -> Option<Vec<u8>> {
    match encode_frame(&Envelope::new(stream, message)) {
        Ok(bytes) => Some(bytes),
        Err(err) => {
            eprintln!("kiln-agent: cannot encode a frame: {err}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_drive_is_found_by_its_mount_point() {
        let mountinfo = "\
22 1 0:21 / /run rw,nosuid - tmpfs tmpfs rw
30 22 254:2 / /run/kiln/config ro,nosuid,nodev,noexec - ext4 /dev/vdc ro
31 22 254:0 / /run/kiln/configs ro - ext4 /dev/vdd ro
";
        assert_eq!(config_source(mountinfo).as_deref(), Some("/dev/vdc"));
        assert_eq!(
            config_source("22 1 0:21 / /run rw - tmpfs tmpfs rw\n"),
            None
        );
        assert_eq!(config_source("garbage\n\n"), None);
    }

    #[test]
    fn the_remounted_drive_must_name_this_vm() {
        let document = "{\n  \"format\": 1,\n  \"name\": \"web-1\",\n  \"id\": \"x\"\n}\n";
        assert!(names_vm(document, "web-1"));
        assert!(!names_vm(document, "web"));
        assert!(!names_vm(document, "template"));
        assert!(!names_vm("", "web-1"));
    }
}
