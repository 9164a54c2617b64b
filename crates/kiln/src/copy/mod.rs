//! Files between the host and a guest (`kiln cp`). A tar stream goes over an exec of the
//! guest's busybox `tar`, in both directions, in bounded chunks: a file of any size passes
//! without being held in memory. Modes are kept (never setuid bits from a guest), directories
//! are copied recursively, and what a guest sends is unpacked only below the destination:
//! every name is confined ([`GuestPath`], placed through `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`), symlinks whose target leaves the destination are refused, and every
//! copy is bounded by [`CopyLimits`].
//!
//! Like `cp -r`: when the destination is an existing directory, the source is copied into it
//! under its own name; otherwise the destination is the copy's new name.

mod beneath;
mod channel;
mod error;
mod limits;
mod measure;
mod unpack;

pub(crate) use beneath::Beneath;
pub use beneath::GuestPath;
pub use error::CopyError;
pub use limits::{CopyLimit, CopyLimits};

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::agent::{AgentClient, AgentError, ExecEvent, ExecSession};
use crate::progress::{self, Meter, Reporter, Stage};
use crate::{ExecRequest, ExitStatus, IoError, Result};
use channel::{ChannelReader, ChannelWriter};
pub(crate) use measure::{TAR_END, tar_entry};

/// Chunks in flight: backpressure keeps memory at a few MiB whatever the size copied.
const IN_FLIGHT: usize = 8;
/// The guest's stderr kept for an error message.
const STDERR_KEPT: usize = 16 * 1024;
/// How long kiln's own short commands in the guest (is this a directory? list the files) may
/// take, and how long a guest sending files may pause: past either, a typed timeout.
pub(crate) const CONTROL_TIMEOUT: Duration = Duration::from_secs(120);
/// What a guest may send after its archive ended before it is killed (tar pads its output
/// to 10 KiB records).
const MAX_TRAILING: usize = 1 << 20;
/// What kiln's own short commands may print.
pub(crate) const CONTROL_OUTPUT: usize = 1 << 20;

/// What was copied.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CopyStats {
    /// Regular files copied (directories and symlinks are not counted).
    pub files: u64,
    /// Bytes of file contents copied.
    pub bytes: u64,
}

/// Copies the host file or directory `src` to `dest` in the guest, reporting its bytes as
/// [`Stage::Copy`].
pub async fn push(
    agent: &AgentClient,
    src: &Path,
    dest: &str,
    reporter: &dyn Reporter,
) -> Result<CopyStats> {
    progress::stage(reporter, Stage::Copy, push_to(agent, src, dest, reporter)).await
}

async fn push_to(
    agent: &AgentClient,
    src: &Path,
    dest: &str,
    reporter: &dyn Reporter,
) -> Result<CopyStats> {
    let meta = std::fs::symlink_metadata(src).map_err(IoError::at("read", src))?;
    let (dir, top) = match guest_kind(agent, dest).await? {
        GuestKind::Dir => (dest.to_owned(), file_name(src)?),
        GuestKind::File if meta.is_dir() => {
            return Err(CopyError::DirectoryOverFile {
                src: src.display().to_string(),
                dest: dest.to_owned(),
            }
            .into());
        }
        GuestKind::File | GuestKind::New => (parent_of(dest), file_name(Path::new(dest))?),
    };
    let (src, name_len) = (src.to_owned(), top.len());
    let measured = {
        let src = src.clone();
        tokio::task::spawn_blocking(move || measure::measure(&src, name_len))
            .await
            .map_err(crate::image::join_error)??
    };
    let mut meter = Meter::new(reporter, Stage::Copy, Some(measured.tar_bytes));
    send_tar(agent, &dir, &mut meter, move |tx| pack(&src, &top, tx)).await?;
    meter.finish();
    Ok(measured.stats)
}

/// Copies the host files `paths` (relative to `root`) into `guest_dir`, keeping their
/// relative paths; the guest creates the directories on the way. The tar stream's bytes
/// go to `meter`.
pub(crate) async fn push_paths(
    agent: &AgentClient,
    root: &Path,
    paths: &[PathBuf],
    guest_dir: &str,
    meter: &mut Meter<'_>,
) -> Result<CopyStats> {
    if paths.is_empty() {
        return Ok(CopyStats::default());
    }
    let (root, paths) = (root.to_owned(), paths.to_vec());
    send_tar(agent, guest_dir, meter, move |tx| {
        pack_paths(&root, &paths, tx)
    })
    .await
}

/// Runs the guest's `tar -x` in `guest_dir` and feeds it what `pack` writes (on a blocking
/// thread, in bounded chunks), counting them on `meter`.
async fn send_tar<T: Send + 'static>(
    agent: &AgentClient,
    guest_dir: &str,
    meter: &mut Meter<'_>,
    pack: impl FnOnce(mpsc::Sender<Vec<u8>>) -> Result<T> + Send + 'static,
) -> Result<T> {
    let request = helper(["tar", "-x", "-f", "-", "-C", guest_dir]).stdin(true);
    let mut session = agent.exec(request).await?;
    let mut stdin = session.take_stdin().ok_or(AgentError::Disconnected)?;
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(IN_FLIGHT);
    let packing = tokio::task::spawn_blocking(move || pack(tx));
    let forward = async {
        while let Some(chunk) = rx.recv().await {
            stdin.write(&chunk).await?;
            meter.add(chunk.len() as u64);
        }
        stdin.close().await?;
        Ok::<_, crate::Error>(())
    };
    let wait = wait_exit(&mut session, None, CONTROL_TIMEOUT);
    tokio::pin!(wait);
    // The command prints nothing until it exits, however long the upload takes; once all is
    // sent, it must exit within the deadline.
    let (forwarded, exited) = tokio::select! {
        exited = &mut wait => (Ok(()), exited),
        forwarded = forward => {
            let exited = tokio::time::timeout(CONTROL_TIMEOUT, &mut wait)
                .await
                .unwrap_or(Err(AgentError::Timeout {
                    what: "the guest unpacking files",
                    after: CONTROL_TIMEOUT,
                }
                .into()));
            (forwarded, exited)
        }
    };
    let (status, stderr) = exited?;
    check_status(status, stderr)?;
    forwarded?;
    packing.await.map_err(crate::image::join_error)?
}

/// Unpacks a tar stream below `dir`, any name (what `kiln cp` from a guest does once the
/// stream is here). Blocking.
pub(crate) fn unpack_below(
    archive: impl std::io::Read,
    dir: &Path,
    limits: &CopyLimits,
) -> Result<()> {
    unpack::unpack(archive, &unpack::Target::below(dir), limits).map(drop)
}

/// Copies the guest file or directory `src` to the host path `dest`, within `limits`,
/// reporting its bytes as [`Stage::Copy`].
pub async fn pull(
    agent: &AgentClient,
    src: &str,
    dest: &Path,
    limits: &CopyLimits,
    reporter: &dyn Reporter,
) -> Result<CopyStats> {
    progress::stage(reporter, Stage::Copy, async {
        let mut meter = Meter::new(reporter, Stage::Copy, None);
        let stats = pull_from(agent, src, dest, limits, &mut meter).await?;
        meter.finish();
        Ok(stats)
    })
    .await
}

async fn pull_from(
    agent: &AgentClient,
    src: &str,
    dest: &Path,
    limits: &CopyLimits,
    meter: &mut Meter<'_>,
) -> Result<CopyStats> {
    let expected = file_name(Path::new(src))?;
    let target = match std::fs::metadata(dest) {
        Ok(meta) if meta.is_dir() => unpack::Target {
            rename: Some(unpack::Rename {
                top: expected.clone(),
                expected,
            }),
            ..unpack::Target::below(dest)
        },
        _ => {
            let dir = match dest.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
                _ => PathBuf::from("."),
            };
            unpack::Target {
                rename: Some(unpack::Rename {
                    top: file_name(dest)?,
                    expected,
                }),
                ..unpack::Target::below(&dir)
            }
        }
    };
    // Exit code 3: the source does not exist (tar's own errors exit 1).
    let script = r#"[ -e "$1" ] || [ -L "$1" ] || exit 3; cd "$(dirname "$1")" && exec tar -c -f - "$(basename "$1")""#;
    let mut session = agent
        .exec(helper(["sh", "-c", script, "kiln-cp", src]))
        .await?;
    let (tx, rx) = mpsc::channel::<Vec<u8>>(IN_FLIGHT);
    let limits = *limits;
    let unpacking = tokio::task::spawn_blocking(move || {
        unpack::unpack(ChannelReader::new(rx), &target, &limits)
    });
    let exited = wait_exit(&mut session, Some((tx, meter)), limits.idle()).await;
    Ok(finish_pull(unpacking, exited, src).await?.stats)
}

/// kiln's helper commands (tar, find, stat, xargs under `sh`) look in the guest's kiln tools
/// first: the busybox the initramfs hands a Debian guest at `/run/kiln/bin`. So they behave
/// the same whatever the userland holds, and start fast (static, no dynamic loader to run
/// under TCG). In the busybox image that directory is absent and `/bin` has the same applets.
pub(crate) const GUEST_TOOLS_PATH: &str = "/run/kiln/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A helper command, run with [`GUEST_TOOLS_PATH`].
pub(crate) fn helper<I, S>(argv: I) -> ExecRequest
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    ExecRequest::new(argv).env("PATH", GUEST_TOOLS_PATH)
}

/// Copies the files `paths` (relative to `guest_dir`) into `host_dir`, keeping their
/// relative paths, and returns the names placed. Directories on the way are created; a listed
/// directory is not descended. The guest may send only the names asked for. The tar
/// stream's bytes go to `meter`.
pub(crate) async fn pull_paths(
    agent: &AgentClient,
    guest_dir: &str,
    paths: &BTreeSet<GuestPath>,
    host_dir: &Path,
    limits: &CopyLimits,
    meter: &mut Meter<'_>,
) -> Result<(CopyStats, BTreeSet<GuestPath>)> {
    if paths.is_empty() {
        return Ok((CopyStats::default(), BTreeSet::new()));
    }
    let target = unpack::Target {
        only: Some(paths.clone()),
        ..unpack::Target::below(host_dir)
    };
    let script = r#"cd "$1" || exit 3; xargs -0 tar -c -f - --no-recursion"#;
    let request = helper(["sh", "-c", script, "kiln-cp", guest_dir]).stdin(true);
    let mut session = agent.exec(request).await?;
    let mut stdin = session.take_stdin().ok_or(AgentError::Disconnected)?;
    let (tx, rx) = mpsc::channel::<Vec<u8>>(IN_FLIGHT);
    // xargs runs tar once per batch of names: the archives follow each other.
    let limits = *limits;
    let unpacking = tokio::task::spawn_blocking(move || {
        unpack::unpack_concatenated(ChannelReader::new(rx), &target, &limits)
    });
    let mut list = Vec::new();
    for path in paths {
        list.extend_from_slice(path.to_path_buf().as_os_str().as_bytes());
        list.push(0);
    }
    let send_list = async {
        stdin.write(&list).await?;
        stdin.close().await?;
        Ok::<_, crate::Error>(())
    };
    // try_join: a guest that stops reading the list must not hold the wait for its exit.
    let receive = wait_exit(&mut session, Some((tx, meter)), limits.idle());
    let exited = tokio::try_join!(send_list, receive).map(|((), exited)| exited);
    let unpacked = finish_pull(unpacking, exited, guest_dir).await?;
    Ok((unpacked.stats, unpacked.placed))
}

async fn finish_pull(
    unpacking: tokio::task::JoinHandle<Result<unpack::Unpacked>>,
    exited: Result<(ExitStatus, String)>,
    src: &str,
) -> Result<unpack::Unpacked> {
    let unpacked = unpacking.await.map_err(crate::image::join_error)?;
    // Why the unpacker stopped comes first: what the guest sent after it is a consequence.
    let (status, stderr) = match exited {
        Ok(exited) => exited,
        Err(err) => {
            unpacked?;
            return Err(err);
        }
    };
    if status == ExitStatus::Code(3) {
        return Err(CopyError::GuestPathMissing {
            path: src.to_owned(),
        }
        .into());
    }
    let stats = unpacked?;
    check_status(status, stderr)?;
    Ok(stats)
}

/// Drains a command's events until it exits: stdout goes to `stdout`, counted on its meter
/// (when the receiver is gone, the command is killed and the rest dropped), stderr is kept
/// for an error message.
async fn wait_exit(
    session: &mut ExecSession,
    stdout: Option<(mpsc::Sender<Vec<u8>>, &mut Meter<'_>)>,
    idle: Duration,
) -> Result<(ExitStatus, String)> {
    let (mut stdout, mut meter) = stdout.unzip();
    let pulling = stdout.is_some();
    let mut stderr = Vec::new();
    // Bytes after the unpacker stopped (the end of the archive, or an error): tar's padding
    // is drained, a guest that goes on sending is killed.
    let mut trailing = 0usize;
    // A pull waits on the guest's data: a guest that sends none for `idle` is killed, however
    // much it writes to stderr. A push's command prints nothing until it exits (its caller
    // bounds that wait).
    let mut deadline = tokio::time::Instant::now() + idle;
    loop {
        let event = if pulling {
            match tokio::time::timeout_at(deadline, session.next_event()).await {
                Ok(event) => event?,
                Err(_) => {
                    let _ = session.signal(9).await;
                    return Err(AgentError::Timeout {
                        what: "the guest's file stream",
                        after: idle,
                    }
                    .into());
                }
            }
        } else {
            session.next_event().await?
        };
        match event {
            Some(ExecEvent::Stdout(data)) => {
                let len = data.len();
                let rejected = match &stdout {
                    Some(tx) => tx.send(data).await.is_err(),
                    None => true,
                };
                if rejected {
                    // Past the archive's end: this is not progress, and a guest that keeps
                    // sending is cut off (its agent may ignore the kill; kiln does not wait).
                    stdout = None;
                    trailing = trailing.saturating_add(len);
                    if trailing > MAX_TRAILING {
                        let _ = session.signal(9).await;
                        return Err(AgentError::OutputTooLarge {
                            stream: "stdout, past the archive's end",
                            limit: MAX_TRAILING,
                        }
                        .into());
                    }
                } else {
                    if let Some(meter) = meter.as_deref_mut() {
                        meter.add(len as u64);
                    }
                    deadline = tokio::time::Instant::now() + idle;
                }
            }
            Some(ExecEvent::Stderr(data)) => {
                let room = STDERR_KEPT.saturating_sub(stderr.len());
                stderr.extend_from_slice(&data[..data.len().min(room)]);
            }
            Some(ExecEvent::Exited(status)) => {
                return Ok((status, String::from_utf8_lossy(&stderr).trim().to_owned()));
            }
            None => return Err(AgentError::Disconnected.into()),
        }
    }
}

fn check_status(status: ExitStatus, stderr: String) -> Result<()> {
    if status == ExitStatus::Code(0) {
        return Ok(());
    }
    let status = match status {
        ExitStatus::Code(code) => format!("exit code {code}"),
        ExitStatus::Signal(signal) => format!("killed by signal {signal}"),
    };
    Err(CopyError::GuestFailed { status, stderr }.into())
}

enum GuestKind {
    Dir,
    File,
    New,
}

/// What `path` is in the guest; its parent must exist.
async fn guest_kind(agent: &AgentClient, path: &str) -> Result<GuestKind> {
    let script = r#"if [ -d "$1" ]; then echo dir; elif [ -e "$1" ]; then echo file; elif [ -d "$(dirname "$1")" ]; then echo new; else echo missing; fi"#;
    let out = agent
        .exec(helper(["sh", "-c", script, "kiln-cp", path]))
        .await?
        .output_within(CONTROL_OUTPUT, CONTROL_TIMEOUT, "checking the destination")
        .await?;
    match String::from_utf8_lossy(&out.stdout).trim() {
        "dir" => Ok(GuestKind::Dir),
        "file" => Ok(GuestKind::File),
        "new" => Ok(GuestKind::New),
        _ => Err(CopyError::GuestPathMissing {
            path: parent_of(path),
        }
        .into()),
    }
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            CopyError::NoFileName {
                path: path.display().to_string(),
            }
            .into()
        })
}

fn parent_of(guest_path: &str) -> String {
    match Path::new(guest_path).parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_string_lossy().into_owned(),
        _ if guest_path.starts_with('/') => "/".to_owned(),
        _ => ".".to_owned(),
    }
}

/// Writes `src` as a tar stream named `top`, in chunks to `tx`. Blocking. Symlinks are
/// copied as links, never followed.
fn pack(src: &Path, top: &str, tx: mpsc::Sender<Vec<u8>>) -> Result<()> {
    let mut builder = tar::Builder::new(ChannelWriter::new(tx));
    builder.follow_symlinks(false);
    let io = |op| IoError::at(op, src);
    let meta = std::fs::symlink_metadata(src).map_err(io("read"))?;
    if meta.is_dir() {
        builder.append_dir_all(top, src).map_err(io("pack"))?;
    } else {
        builder
            .append_path_with_name(src, top)
            .map_err(io("pack"))?;
    }
    let mut writer = builder.into_inner().map_err(io("pack"))?;
    writer.flush().map_err(io("send"))?;
    Ok(())
}

/// Writes the files `paths` below `root` as a tar stream of relative names. Blocking.
fn pack_paths(root: &Path, paths: &[PathBuf], tx: mpsc::Sender<Vec<u8>>) -> Result<CopyStats> {
    let mut builder = tar::Builder::new(ChannelWriter::new(tx));
    builder.follow_symlinks(false);
    let mut stats = CopyStats::default();
    for rel in paths {
        let path = root.join(rel);
        let meta = std::fs::symlink_metadata(&path).map_err(IoError::at("read", &path))?;
        builder
            .append_path_with_name(&path, rel)
            .map_err(IoError::at("pack", &path))?;
        if meta.is_file() {
            stats.files += 1;
            stats.bytes += meta.len();
        }
    }
    let mut writer = builder.into_inner().map_err(IoError::at("pack", root))?;
    writer.flush().map_err(IoError::at("send", root))?;
    Ok(stats)
}
