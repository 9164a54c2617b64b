//! What a session asks of its guest over the agent: make the workspace directory, mount the
//! workspace drive, and put the host's changes there (deletions first, then the files).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use log::warn;

use super::stamps::Stamp;
use super::{GUEST_WORKSPACE, SyncReport};
use crate::Result;
use crate::agent::AgentClient;
use crate::copy::{self, CopyError, GuestPath};
use crate::image::workspace_drive;
use crate::progress::{Meter, Reporter, Stage};

/// Makes the guest's workspace hold the host's files: what `report` lists as deleted or
/// created goes first (a path that was a directory and is now a file, or the reverse), then
/// the created and changed files go over, their bytes reported as [`Stage::PushWorkspace`]
/// (sized from `stamps`, the host's files). Returns the bytes sent.
pub(super) async fn send_changes(
    agent: &AgentClient,
    workspace: &Path,
    (created, changed): (&[GuestPath], &[GuestPath]),
    stamps: &BTreeMap<GuestPath, Stamp>,
    report: &SyncReport,
    reporter: &dyn Reporter,
) -> Result<u64> {
    let clear: Vec<String> = report
        .deleted
        .iter()
        .chain(&report.created)
        .cloned()
        .collect();
    if !clear.is_empty() {
        remove_in_guest(agent, &clear).await?;
    }
    let expected = tar_estimate(created.iter().chain(changed), stamps);
    let mut meter = Meter::new(reporter, Stage::PushWorkspace, Some(expected));
    let sending: Vec<PathBuf> = created
        .iter()
        .chain(changed)
        .map(GuestPath::to_path_buf)
        .collect();
    let sent = copy::push_paths(agent, workspace, &sending, GUEST_WORKSPACE, &mut meter).await?;
    meter.finish();
    Ok(sent.bytes)
}

/// The size of the tar stream that carries `paths`, roughly, with their sizes from `stamps`
/// (the guest's, for a pull: any number, so the sum saturates).
pub(super) fn tar_estimate<'a>(
    paths: impl IntoIterator<Item = &'a GuestPath>,
    stamps: &BTreeMap<GuestPath, Stamp>,
) -> u64 {
    paths
        .into_iter()
        .map(|path| {
            let size = stamps.get(path).map_or(0, |stamp| stamp.size);
            copy::tar_entry(path.to_path_buf().as_os_str().len(), size)
        })
        .fold(copy::TAR_END, u64::saturating_add)
}

/// Deletes files, and what is in the way of new ones (relative to the guest's workspace).
async fn remove_in_guest(agent: &AgentClient, paths: &[String]) -> Result<()> {
    let request = copy::helper([
        "sh",
        "-c",
        r#"cd "$1" && xargs -0 rm -rf --"#,
        "kiln-run",
        GUEST_WORKSPACE,
    ])
    .stdin(true);
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
    let out = exec
        .output_within(
            copy::CONTROL_OUTPUT,
            copy::CONTROL_TIMEOUT,
            "removing files in the guest",
        )
        .await?;
    if out.status != crate::ExitStatus::Code(0) {
        warn!(
            "removing deleted files in the guest: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

pub(super) async fn mkdir(agent: &AgentClient, dir: &str) -> Result<()> {
    let out = agent
        .exec(copy::helper(["mkdir", "-p", dir]))
        .await?
        .output_within(
            copy::CONTROL_OUTPUT,
            copy::CONTROL_TIMEOUT,
            "creating the workspace",
        )
        .await?;
    if out.status != crate::ExitStatus::Code(0) {
        warn!("mkdir {dir} in the guest: {:?}", out.status);
    }
    Ok(())
}

/// Mounts the workspace drive at `/workspace` in the guest.
pub(super) async fn mount_workspace(agent: &AgentClient) -> Result<()> {
    let out = agent
        .exec(copy::helper([
            "sh",
            "-c",
            workspace_drive::MOUNT_SCRIPT,
            "kiln-run",
            GUEST_WORKSPACE,
        ]))
        .await?
        .output_within(
            copy::CONTROL_OUTPUT,
            copy::CONTROL_TIMEOUT,
            "mounting the workspace",
        )
        .await?;
    match out.status {
        crate::ExitStatus::Code(0) => Ok(()),
        status => Err(CopyError::WorkspaceNotMounted {
            status: match status {
                crate::ExitStatus::Code(code) => format!("exit code {code}"),
                crate::ExitStatus::Signal(signal) => format!("killed by signal {signal}"),
            },
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        }
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_estimate_saturates_whatever_sizes_a_guest_claims() {
        let stamps: BTreeMap<GuestPath, Stamp> = ["a", "b", "c"]
            .into_iter()
            .map(|name| {
                let stamp = Stamp {
                    size: u64::MAX - 7,
                    mtime: 0,
                };
                (GuestPath::parse(name.as_bytes()).unwrap(), stamp)
            })
            .collect();
        assert_eq!(tar_estimate(stamps.keys(), &stamps), u64::MAX);
        let small =
            BTreeMap::from([(GuestPath::parse(b"x").unwrap(), Stamp { size: 3, mtime: 0 })]);
        assert_eq!(tar_estimate(small.keys(), &small), 1024 + 1024);
    }
}
