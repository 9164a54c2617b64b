//! Saved machine state through QMP: writing a paused machine's memory and devices to a file
//! (and moving its disks onto overlays), and loading such a file into a QEMU started with
//! `-incoming defer`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::qmp_commands::{self as cmd, MigrationStatus, RunState};
use super::{QemuError, QmpClient};
use crate::Result;
use crate::progress::Meter;

/// The migration capabilities of every save and every load (the stream's format depends on
/// them, so both sides set the same): `x-ignore-shared` leaves out RAM in a shared file, which
/// is how a template's saved state holds its devices only, its RAM staying in the file that
/// clones map (see [`crate::backend::Memory`]). Other machines' RAM is saved as before.
async fn set_migration_capabilities(client: &mut QmpClient) -> Result<()> {
    client
        .call(&cmd::MigrateSetCapabilities {
            capabilities: vec![cmd::Capability {
                capability: "x-ignore-shared",
                state: true,
            }],
        })
        .await
        .map(drop)
}

/// Starts loading the saved state `state` into a QEMU waiting for it (`-incoming defer`).
/// Returns once the load began; the machine runs (or stays paused) when it is done.
pub(super) async fn load_state(qmp: &Path, state: &Path) -> Result<()> {
    let mut client = QmpClient::connect(qmp).await?;
    set_migration_capabilities(&mut client).await?;
    client
        .call(&cmd::MigrateIncoming {
            uri: format!("file:{}", state.display()),
            // A failed load leaves QEMU up to say why (`query-migrate`) instead of exiting.
            exit_on_error: false,
        })
        .await
        .map(drop)
}

/// Where a load of saved state stands: `Ok(None)` once it is in (QEMU left `inmigrate`),
/// `Ok(Some(why))` when QEMU refused it, an error while QEMU does not say (still loading,
/// busy, or gone). Polls until one of those, on one connection.
pub(super) async fn load_progress(qmp: &Path) -> Result<Option<String>> {
    let mut client = QmpClient::connect(qmp).await?;
    loop {
        let migration = client.call(&cmd::QueryMigrate {}).await?;
        if migration.status == Some(MigrationStatus::Failed) {
            let why = migration
                .error_desc
                .unwrap_or_else(|| "no reason given".to_owned());
            return Ok(Some(why));
        }
        if client.status().await? != RunState::Inmigrate {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Saves the paused machine's memory and device state to `memory`, its bytes going to
/// `meter`, then moves each disk (`disk{i}`) onto `overlays[i]`, which exist already.
pub(super) async fn save(
    qmp: &Path,
    memory: &Path,
    overlays: &[PathBuf],
    meter: &mut Meter<'_>,
) -> Result<()> {
    let mut client = QmpClient::connect(qmp).await?;
    let failed = |reason: String| QemuError::Qmp {
        path: qmp.to_owned(),
        reason,
    };
    set_migration_capabilities(&mut client).await?;
    client
        .call(&cmd::Migrate {
            uri: format!("file:{}", memory.display()),
        })
        .await?;
    // A paused guest's memory goes out at disk speed; poll until QEMU says it is done.
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let info = client.call(&cmd::QueryMigrate {}).await?;
        if let Some(ram) = info.ram {
            meter.set(ram.done(), Some(ram.total));
        }
        match info.status {
            Some(MigrationStatus::Completed) => break,
            Some(MigrationStatus::Failed | MigrationStatus::Cancelled) => {
                let why = info.error_desc.as_deref().unwrap_or("no reason given");
                return Err(failed(format!("saving memory failed: {why}")).into());
            }
            _ if std::time::Instant::now() > deadline => {
                return Err(failed("saving memory took over 5 minutes".to_owned()).into());
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    for (index, overlay) in overlays.iter().enumerate() {
        client
            .call(&cmd::BlockdevSnapshotSync {
                device: format!("disk{index}"),
                snapshot_file: overlay.clone(),
                format: "qcow2",
                // kiln made it (on the file this disk writes) before the save.
                mode: "existing",
            })
            .await?;
    }
    Ok(())
}
