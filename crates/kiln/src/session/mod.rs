//! Sessions: a throwaway VM that receives a workspace, runs commands in it, and hands back the
//! files they created or changed (`kiln run --workspace . -- cargo test`).
//!
//! What comes back, precisely:
//! - A file (or symlink) the command **created** in the workspace is created on the host.
//! - A file it **changed** (size or modification time differ from what was pushed) replaces
//!   the host's copy, atomically (unpacked beside it, then renamed over it).
//! - A file changed **on both sides** (the host's copy changed while the session ran) is not
//!   overwritten: the guest's version is written next to it as `NAME.kiln-guest` and reported.
//! - A file the command **deleted** is reported, never deleted on the host.
//! - Empty directories, and changes to directories' modes, do not come back.
//!
//! The guest is untrusted, and so is everything it says about its files. Every name in its
//! file list must be a plain relative path ([`GuestPath`]); one that is not refuses the whole
//! pull before anything is written. The tar stream may carry only the names the host asked
//! for, is unpacked in a staging directory inside the workspace, and only what was both asked
//! for and unpacked is renamed into place, through `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`: a symlink anywhere on the way (the guest's or the host's) stops the
//! pull. Symlinks whose target leaves the workspace are refused; modes lose setuid, setgid and
//! world-write bits. [`CopyLimits`] bound the file list and the stream.
//!
//! The workspace goes over as a disk, not file by file: the host writes it into an ext4
//! image (`mkfs.ext4 -d`, nothing mounted), the VM starts with that image as its workspace
//! drive, and the guest mounts it at `/workspace` (see `image::workspace_drive`). The
//! drive's size (32 GiB, sparse) bounds what the command writes there. Files new or changed
//! on the host during a session ([`Session::push_changes`]) go over the agent as a tar
//! stream.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use log::{info, warn};
use serde::Serialize;

use crate::agent::{AgentClient, ExecSession};
use crate::copy::{self, Beneath, CopyError, CopyLimits, GuestPath};

mod guest;
mod image_cache;
mod stamps;
use crate::progress::{self, Meter, Reporter, Stage};
use crate::{ExecRequest, IoError, Kiln, Result, VmSpec};
use guest::{mkdir, mount_workspace, send_changes, tar_estimate};
pub(crate) use stamps::parse_file_list;
use stamps::{Stamp, guest_stamps, scan};

/// Where the workspace is in the guest.
pub const GUEST_WORKSPACE: &str = "/workspace";

/// What a session brought back.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    /// Files created (in the guest for a pull, on the host for a push) and copied over.
    pub created: Vec<String>,
    /// Files changed (size or modification time) and copied over the other side's copy.
    pub changed: Vec<String>,
    /// Changed in the guest and on the host: the guest's version is in `NAME.kiln-guest`.
    pub conflicts: Vec<String>,
    /// Deleted in the guest; left alone on the host.
    pub deleted: Vec<String>,
    /// Bytes of file contents sent.
    pub bytes: u64,
}

impl SyncReport {
    /// Whether no file was created, changed, deleted or in conflict.
    pub fn is_empty(&self) -> bool {
        self.created.is_empty()
            && self.changed.is_empty()
            && self.conflicts.is_empty()
            && self.deleted.is_empty()
    }
}

/// A throwaway VM with a workspace.
#[derive(Debug)]
pub struct Session {
    kiln: Kiln,
    spec: VmSpec,
    workspace: Option<PathBuf>,
    agent: Option<AgentClient>,
    /// The workspace's files as pushed, relative paths.
    pushed: BTreeMap<GuestPath, Stamp>,
    /// What the session's start sent over the agent.
    first_push: Option<SyncReport>,
    limits: CopyLimits,
}

impl Session {
    /// A session that will run as `spec` (its name must be free) with `workspace`, if any.
    pub fn new(kiln: Kiln, spec: VmSpec, workspace: Option<PathBuf>) -> Self {
        Self {
            kiln,
            spec,
            workspace,
            agent: None,
            pushed: BTreeMap::new(),
            first_push: None,
            limits: CopyLimits::default(),
        }
    }

    /// Bounds on what the guest may send back (the file list and the files).
    pub fn with_limits(mut self, limits: CopyLimits) -> Self {
        self.limits = limits;
        self
    }

    /// A name for a session VM that no other session uses.
    pub fn unique_name() -> String {
        let mut bytes = [0u8; 4];
        let _ = getrandom::fill(&mut bytes);
        format!("run-{}", hex::encode(bytes))
    }

    /// The session VM's name.
    pub fn name(&self) -> &str {
        self.spec.name()
    }

    /// Boots the VM and pushes the workspace. Calling it again does nothing.
    pub async fn ensure_ready(&mut self, reporter: &dyn Reporter) -> Result<()> {
        if self.agent.is_some() {
            return Ok(());
        }
        let Some(workspace) = self.workspace.clone() else {
            let vm = self.kiln.up(self.spec.clone(), reporter).await?;
            let agent = vm.agent().await?;
            mkdir(&agent, GUEST_WORKSPACE).await?;
            self.agent = Some(agent);
            return Ok(());
        };
        // The workspace is an ext4 image on the host (written now, or kept from an earlier
        // session on this directory), which the VM starts with as its workspace drive through
        // an overlay of its own, and which the guest mounts. Only what changed since the image
        // was written then crosses the agent.
        let (paths, dir) = (self.kiln.paths().clone(), workspace.clone());
        let prepared = progress::stage(reporter, Stage::WorkspaceImage, async {
            let prepared = tokio::task::spawn_blocking(move || image_cache::prepare(&paths, &dir))
                .await
                .map_err(crate::image::join_error)??;
            self.kiln
                .backend()
                .create_overlay_on_raw(&prepared._base.0, &prepared.drive.0)
                .await?;
            Ok::<_, crate::Error>(prepared)
        })
        .await?;
        let vm = self
            .kiln
            .clone()
            .with_workspace_image(prepared.drive.0.clone())
            .up(self.spec.clone(), reporter)
            .await?;
        let agent = vm.agent().await?;
        progress::phase(
            reporter,
            progress::Phase::MountWorkspace,
            mount_workspace(&agent),
        )
        .await?;
        // What differs between the image and the host's files goes over the agent.
        let names = |paths: &[GuestPath]| paths.iter().map(ToString::to_string).collect();
        let mut synced = SyncReport {
            created: names(&prepared.created),
            changed: names(&prepared.changed),
            deleted: names(&prepared.deleted),
            ..SyncReport::default()
        };
        let sent = progress::stage(
            reporter,
            Stage::PushWorkspace,
            send_changes(
                &agent,
                &workspace,
                (&prepared.created, &prepared.changed),
                &prepared.stamps,
                &synced,
                reporter,
            ),
        )
        .await;
        synced.bytes = match sent {
            Ok(bytes) => bytes,
            Err(err) => {
                // A kept image the changes cannot be put on is not kept (its lock goes
                // first).
                let written = prepared.written;
                drop(prepared);
                if !written {
                    self.kiln.forget_workspace_image(&workspace);
                }
                return Err(err);
            }
        };
        let written = prepared.written;
        self.pushed = prepared.stamps;
        self.agent = Some(agent);
        info!(
            "gave {} files to {} ({} image; {} created, {} changed, {} deleted since)",
            self.pushed.len(),
            self.name(),
            if written { "a new" } else { "a cached" },
            synced.created.len(),
            synced.changed.len(),
            synced.deleted.len()
        );
        self.first_push = Some(synced);
        Ok(())
    }

    /// What went over the agent when the session started: the files that changed since its
    /// workspace image was written (nothing, when it was written for this session).
    pub fn first_push(&self) -> Option<&SyncReport> {
        self.first_push.as_ref()
    }

    /// Sends what changed in the host's workspace since the last push: new and changed files
    /// go over, files deleted on the host are deleted in the guest. What a tool that runs
    /// several commands in one session calls before each.
    pub async fn push_changes(&mut self, reporter: &dyn Reporter) -> Result<SyncReport> {
        let Some(workspace) = self.workspace.clone() else {
            return Ok(SyncReport::default());
        };
        let agent = self.agent()?.clone();
        let pushed = &mut self.pushed;
        progress::stage(reporter, Stage::PushWorkspace, async {
            let now = scan(&workspace)?;
            let diff = Diff::between(pushed, &now);
            let mut report = diff.report();
            let created: Vec<GuestPath> = diff.created.iter().map(|p| (*p).clone()).collect();
            let changed: Vec<GuestPath> = diff.changed.iter().map(|p| (*p).clone()).collect();
            let sending = (created.as_slice(), changed.as_slice());
            report.bytes =
                send_changes(&agent, &workspace, sending, &now, &report, reporter).await?;
            *pushed = now;
            Ok::<_, crate::Error>(report)
        })
        .await
    }

    /// Starts a command in the workspace; its output streams through the returned session.
    pub async fn run(&self, mut request: ExecRequest) -> Result<ExecSession> {
        let agent = self.agent()?;
        if request.get_cwd().is_none() {
            request = request.cwd(GUEST_WORKSPACE);
        }
        Ok(agent.exec(request).await?)
    }

    /// Brings back what the commands created or changed in the workspace (see the module's
    /// documentation for the rules).
    pub async fn pull_changes(&self, reporter: &dyn Reporter) -> Result<SyncReport> {
        let Some(workspace) = &self.workspace else {
            return Ok(SyncReport::default());
        };
        let agent = self.agent()?;
        progress::stage(reporter, Stage::PullChanges, async {
            let now = guest_stamps(agent, &self.limits).await?;
            let diff = Diff::between(&self.pushed, &now);
            let mut report = diff.report();
            let wanted: BTreeSet<GuestPath> = diff.wanted().cloned().collect();
            if wanted.is_empty() {
                return Ok(report);
            }
            // Unpacked beside the workspace's files, then renamed into place.
            let staging = tempfile::Builder::new()
                .prefix(".kiln-pull-")
                .tempdir_in(workspace)
                .map_err(IoError::at("create a staging directory in", workspace))?;
            let expected = tar_estimate(&wanted, &now);
            let mut meter = Meter::new(reporter, Stage::PullChanges, Some(expected));
            let (stats, placed) = copy::pull_paths(
                agent,
                GUEST_WORKSPACE,
                &wanted,
                staging.path(),
                &self.limits,
                &mut meter,
            )
            .await?;
            meter.finish();
            report.bytes = stats.bytes;
            let (host, staged) = (Beneath::open(workspace)?, Beneath::open(staging.path())?);
            // Where each file goes, decided before anything moves.
            let mut moves = Vec::new();
            for path in wanted.intersection(&placed) {
                let now_on_host = host.stat(path)?.map(|s| Stamp {
                    size: u64::try_from(s.st_size).unwrap_or(0),
                    mtime: s.st_mtime,
                });
                let placement = match (self.pushed.get(path), now_on_host) {
                    // The host changed it meanwhile, or made one where the guest did.
                    (Some(pushed), Some(now)) if now != *pushed => Placement::Beside,
                    (None, Some(_)) => Placement::Beside,
                    (Some(_), _) => Placement::Replace,
                    (None, None) => Placement::Create,
                };
                moves.push((path, placement));
            }
            let conflicts = match move_into_place(&host, &staged, &moves) {
                Ok(conflicts) => conflicts,
                Err(err) => {
                    // Nothing the guest sent is lost: what did not move stays in the staging
                    // directory, and the error says where.
                    let kept = staging.keep();
                    warn!(
                        "the files the guest sent that were not moved are in {}",
                        kept.display()
                    );
                    return Err(err);
                }
            };
            let missing: BTreeSet<String> = wanted
                .difference(&placed)
                .map(ToString::to_string)
                .collect();
            if !missing.is_empty() {
                let names: Vec<&str> = missing.iter().map(String::as_str).collect();
                warn!("the guest listed but did not send: {}", names.join(", "));
            }
            let landed = |p: &String| !conflicts.contains(p) && !missing.contains(p);
            report.created.retain(landed);
            report.changed.retain(landed);
            report.conflicts = conflicts.into_iter().collect();
            Ok::<_, crate::Error>(report)
        })
        .await
    }

    /// Removes the VM. Safe to call whatever state the session is in.
    pub async fn shutdown(mut self, reporter: &dyn Reporter) -> Result<()> {
        self.agent = None;
        match self.kiln.remove(self.spec.name(), true, reporter).await {
            Ok(()) | Err(crate::Error::VmNotFound { .. }) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// The connection to the session's agent, once [`ensure_ready`](Self::ensure_ready) ran.
    pub fn agent(&self) -> Result<&AgentClient> {
        self.agent.as_ref().ok_or_else(|| crate::Error::WrongState {
            name: self.spec.name().to_owned(),
            state: crate::VmState::Stopped,
            action: "run",
            needed: crate::VmState::Running,
        })
    }
}

/// Where a staged file goes in the workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// Over the host's copy, which is still as pushed (or gone).
    Replace,
    /// Where the host has nothing, and must still have nothing when it lands.
    Create,
    /// Beside the host's copy, which changed meanwhile.
    Beside,
}

/// Renames each staged file into the workspace, and returns the files that landed beside the
/// host's copy. A file the host changed meanwhile (or made itself, or one that appears between
/// the check and the move) is never replaced: the guest's version lands beside it as
/// `NAME.kiln-guest` (`.kiln-guest.1`, … when taken).
fn move_into_place(
    host: &Beneath,
    staged: &Beneath,
    moves: &[(&GuestPath, Placement)],
) -> Result<BTreeSet<String>> {
    let mut conflicts = BTreeSet::new();
    for &(path, placement) in moves {
        let landed = match placement {
            Placement::Replace => host.move_from(staged, path, path, true)?,
            Placement::Create => host.move_from(staged, path, path, false)?,
            Placement::Beside => false,
        };
        if landed {
            continue;
        }
        conflicts.insert(path.to_string());
        let mut placed = false;
        for n in 0..100 {
            let suffix = match n {
                0 => ".kiln-guest".to_owned(),
                n => format!(".kiln-guest.{n}"),
            };
            if host.move_from(staged, path, &path.with_suffix(&suffix), false)? {
                placed = true;
                break;
            }
        }
        if !placed {
            return Err(CopyError::TypeConflict {
                path: path.to_string(),
            }
            .into());
        }
    }
    Ok(conflicts)
}

/// A session's workspace image on its way to its VM: removed when dropped (the VM's
/// directory holds a link to it by then). Images that kilns killed meanwhile left are
/// removed when the next one is made.
struct WorkspaceImage(PathBuf);

impl WorkspaceImage {
    fn new(dir: &Path) -> Result<Self> {
        crate::state::create_private_dir(dir)?;
        sweep_workspace_images(dir);
        let mut bytes = [0u8; 6];
        crate::state::random_bytes(&mut bytes, dir)?;
        Ok(Self(dir.join(format!(
            "ws-{}-{}.img",
            std::process::id(),
            hex::encode(bytes)
        ))))
    }
}

/// Removes the workspace images in `dir` whose kiln is gone; returns how many.
fn sweep_workspace_images(dir: &Path) -> usize {
    let mut removed = 0;
    for name in crate::state::list_names(dir).unwrap_or_default() {
        let owner = name
            .strip_prefix("ws-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if owner.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
            && std::fs::remove_file(dir.join(&name)).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

impl Kiln {
    /// Removes the workspace image kept for the directory `workspace`, if there is one (a
    /// session running from it keeps it open).
    pub fn forget_workspace_image(&self, workspace: &Path) {
        image_cache::forget(self.paths(), workspace);
    }

    /// Removes the workspace images kept between sessions, and those that sessions killed
    /// before their VM started left behind (`kiln cache prune`); returns how many.
    pub fn prune_workspace_images(&self) -> Result<usize> {
        let cached = image_cache::prune(self.paths())?;
        Ok(cached + sweep_workspace_images(&self.paths().workspaces_dir()))
    }
}

impl Drop for WorkspaceImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// How two listings of a workspace differ.
struct Diff<'a> {
    created: Vec<&'a GuestPath>,
    changed: Vec<&'a GuestPath>,
    deleted: Vec<&'a GuestPath>,
}

impl<'a> Diff<'a> {
    fn between(
        before: &'a BTreeMap<GuestPath, Stamp>,
        now: &'a BTreeMap<GuestPath, Stamp>,
    ) -> Self {
        let mut diff = Self {
            created: Vec::new(),
            changed: Vec::new(),
            deleted: before.keys().filter(|p| !now.contains_key(*p)).collect(),
        };
        for (path, stamp) in now {
            match before.get(path) {
                None => diff.created.push(path),
                Some(old) if old != stamp => diff.changed.push(path),
                Some(_) => {}
            }
        }
        diff
    }

    /// What has to go over: the created and the changed files.
    fn wanted(&self) -> impl Iterator<Item = &'a GuestPath> + '_ {
        self.created.iter().chain(&self.changed).copied()
    }

    fn report(&self) -> SyncReport {
        let names = |paths: &[&GuestPath]| paths.iter().map(|p| p.to_string()).collect();
        SyncReport {
            created: names(&self.created),
            changed: names(&self.changed),
            deleted: names(&self.deleted),
            ..SyncReport::default()
        }
    }
}
