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
//! The workspace lives in the guest's memory (its root is an initramfs), so the VM's memory
//! bounds the workspace and what the command writes.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use log::{info, warn};
use serde::Serialize;

use crate::agent::{AgentClient, ExecSession};
use crate::copy::{self, CopyStats};
use crate::progress::{self, Reporter, Stage};
use crate::{ExecRequest, IoError, Kiln, Result, VmSpec};

/// Where the workspace is in the guest.
pub const GUEST_WORKSPACE: &str = "/workspace";

/// Size and modification time (seconds) of a file: how a change is noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime: i64,
}

/// What a session brought back.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    pub created: Vec<String>,
    pub changed: Vec<String>,
    /// Changed in the guest and on the host: the guest's version is in `NAME.kiln-guest`.
    pub conflicts: Vec<String>,
    /// Deleted in the guest; left alone on the host.
    pub deleted: Vec<String>,
    pub bytes: u64,
}

impl SyncReport {
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
    pushed: BTreeMap<String, Stamp>,
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
        }
    }

    /// A name for a session VM that no other session uses.
    pub fn unique_name() -> String {
        let mut bytes = [0u8; 4];
        let _ = getrandom::fill(&mut bytes);
        format!("run-{}", hex::encode(bytes))
    }

    pub fn name(&self) -> &str {
        self.spec.name()
    }

    /// Boots the VM and pushes the workspace. Calling it again does nothing.
    pub async fn ensure_ready(&mut self, reporter: &dyn Reporter) -> Result<()> {
        if self.agent.is_some() {
            return Ok(());
        }
        let vm = self.kiln.up(self.spec.clone(), reporter).await?;
        let agent = vm.agent().await?;
        if let Some(workspace) = &self.workspace {
            let workspace = workspace.clone();
            self.pushed = progress::stage(reporter, Stage::PushWorkspace, async {
                let stamps = scan(&workspace)?;
                push_contents(&agent, &workspace).await?;
                Ok::<_, crate::Error>(stamps)
            })
            .await?;
            info!("pushed {} files to {}", self.pushed.len(), self.name());
        } else {
            mkdir(&agent, GUEST_WORKSPACE).await?;
        }
        self.agent = Some(agent);
        Ok(())
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
            let mut report = SyncReport::default();
            for (path, stamp) in &now {
                match pushed.get(path) {
                    None => report.created.push(path.clone()),
                    Some(old) if old != stamp => report.changed.push(path.clone()),
                    Some(_) => {}
                }
            }
            report.deleted = pushed
                .keys()
                .filter(|p| !now.contains_key(*p))
                .cloned()
                .collect();
            let sending: Vec<String> = report
                .created
                .iter()
                .chain(&report.changed)
                .cloned()
                .collect();
            report.bytes = copy::push_paths(&agent, &workspace, &sending, GUEST_WORKSPACE)
                .await?
                .bytes;
            if !report.deleted.is_empty() {
                remove_in_guest(&agent, &report.deleted).await?;
            }
            *pushed = now;
            Ok::<_, crate::Error>(report)
        })
        .await
    }

    /// Starts a command in the workspace; its output streams through the returned session.
    pub async fn run(&self, mut request: ExecRequest) -> Result<ExecSession> {
        let agent = self.agent()?;
        request
            .cwd
            .get_or_insert_with(|| GUEST_WORKSPACE.to_owned());
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
            let now = guest_stamps(agent).await?;
            let mut report = SyncReport::default();
            let mut wanted = Vec::new();
            for (path, stamp) in &now {
                match self.pushed.get(path) {
                    None => report.created.push(path.clone()),
                    Some(old) if old != stamp => report.changed.push(path.clone()),
                    Some(_) => continue,
                }
                wanted.push(path.clone());
            }
            report.deleted = self
                .pushed
                .keys()
                .filter(|p| !now.contains_key(*p))
                .cloned()
                .collect();
            if wanted.is_empty() {
                return Ok(report);
            }
            // Unpacked beside the workspace's files, then renamed into place.
            let staging = tempfile::Builder::new()
                .prefix(".kiln-pull-")
                .tempdir_in(workspace)
                .map_err(IoError::at("create a staging directory in", workspace))?;
            let stats: CopyStats =
                copy::pull_paths(agent, GUEST_WORKSPACE, &wanted, staging.path()).await?;
            report.bytes = stats.bytes;
            for path in &wanted {
                let dest = workspace.join(path);
                let host_changed = match self.pushed.get(path) {
                    Some(pushed) => stamp_of(&dest).is_some_and(|s| s != *pushed),
                    // Created in the guest, but the host made one meanwhile.
                    None => std::fs::symlink_metadata(&dest).is_ok(),
                };
                let dest = if host_changed {
                    report.conflicts.push(path.clone());
                    workspace.join(format!("{path}.kiln-guest"))
                } else {
                    dest
                };
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(IoError::at("create directory", parent))?;
                }
                let staged = staging.path().join(path);
                std::fs::rename(&staged, &dest).map_err(IoError::at("move into place", &dest))?;
            }
            report.created.retain(|p| !report.conflicts.contains(p));
            report.changed.retain(|p| !report.conflicts.contains(p));
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

    fn agent(&self) -> Result<&AgentClient> {
        self.agent.as_ref().ok_or_else(|| crate::Error::WrongState {
            name: self.spec.name().to_owned(),
            state: crate::VmState::Stopped,
            action: "run",
            needed: crate::VmState::Running,
        })
    }
}

/// Deletes files (relative to the guest's workspace).
async fn remove_in_guest(agent: &AgentClient, paths: &[String]) -> Result<()> {
    let mut request = ExecRequest::new([
        "sh",
        "-c",
        r#"cd "$1" && xargs -0 rm -f"#,
        "kiln-run",
        GUEST_WORKSPACE,
    ]);
    request.stdin = true;
    let mut exec = agent.exec(request).await?;
    let mut stdin = exec
        .take_stdin()
        .ok_or(crate::agent::AgentError::Disconnected)?;
    let mut list = Vec::new();
    for path in paths {
        list.extend_from_slice(path.as_bytes());
        list.push(0);
    }
    stdin.write(&list).await?;
    stdin.close().await?;
    let out = exec.output().await?;
    if out.status != crate::ExitStatus::Code(0) {
        warn!(
            "removing deleted files in the guest: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

async fn mkdir(agent: &AgentClient, dir: &str) -> Result<()> {
    let out = agent
        .exec(ExecRequest::new(["mkdir", "-p", dir]))
        .await?
        .output()
        .await?;
    if out.status != crate::ExitStatus::Code(0) {
        warn!("mkdir {dir} in the guest: {:?}", out.status);
    }
    Ok(())
}

/// Pushes the workspace as the guest's `/workspace`.
async fn push_contents(agent: &AgentClient, workspace: &Path) -> Result<()> {
    copy::push(agent, workspace, GUEST_WORKSPACE).await?;
    Ok(())
}

fn stamp_of(path: &Path) -> Option<Stamp> {
    std::fs::symlink_metadata(path).ok().map(|m| Stamp {
        size: m.len(),
        mtime: m.mtime(),
    })
}

/// Every file and symlink below `root`, with its stamp.
fn scan(root: &Path) -> Result<BTreeMap<String, Stamp>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).map_err(IoError::at("read directory", &dir))? {
            let entry = entry.map_err(IoError::at("read directory", &dir))?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).map_err(IoError::at("read", &path))?;
            if meta.is_dir() {
                dirs.push(path);
                continue;
            }
            if let Ok(rel) = path.strip_prefix(root) {
                out.insert(
                    rel.to_string_lossy().into_owned(),
                    Stamp {
                        size: meta.len(),
                        mtime: meta.mtime(),
                    },
                );
            }
        }
    }
    Ok(out)
}

/// Every file and symlink in the guest's workspace, with its stamp.
async fn guest_stamps(agent: &AgentClient) -> Result<BTreeMap<String, Stamp>> {
    let script = r#"cd "$1" && find . \( -type f -o -type l \) -exec stat -c '%s %Y %n' {} +"#;
    let out = agent
        .exec(ExecRequest::new([
            "sh",
            "-c",
            script,
            "kiln-run",
            GUEST_WORKSPACE,
        ]))
        .await?
        .output()
        .await?;
    Ok(parse_stamps(&String::from_utf8_lossy(&out.stdout)))
}

/// Lines of `SIZE MTIME ./PATH`; a line that does not parse (a name with a newline) is
/// skipped with a warning.
fn parse_stamps(text: &str) -> BTreeMap<String, Stamp> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ' ');
        let parsed = (|| {
            let size = parts.next()?.parse().ok()?;
            let mtime = parts.next()?.parse().ok()?;
            let path = parts.next()?.strip_prefix("./")?;
            Some((path.to_owned(), Stamp { size, mtime }))
        })();
        match parsed {
            Some((path, stamp)) => {
                out.insert(path, stamp);
            }
            None => warn!("cannot parse the guest's file list line {line:?}"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stamps_parse_names_with_spaces_and_skip_junk() {
        let stamps = parse_stamps("3 100 ./a b.txt\nnot a line\n0 5 ./dir/x\n");
        assert_eq!(
            stamps.get("a b.txt"),
            Some(&Stamp {
                size: 3,
                mtime: 100
            })
        );
        assert_eq!(stamps.get("dir/x"), Some(&Stamp { size: 0, mtime: 5 }));
        assert_eq!(stamps.len(), 2);
    }

    #[test]
    fn scan_lists_files_and_symlinks_by_relative_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src/deep")).unwrap();
        std::fs::write(dir.path().join("src/deep/a.rs"), "x").unwrap();
        std::os::unix::fs::symlink("src", dir.path().join("link")).unwrap();
        let stamps = scan(dir.path()).unwrap();
        assert_eq!(stamps.keys().collect::<Vec<_>>(), ["link", "src/deep/a.rs"]);
    }
}
