//! VMs: the [`Kiln`] context and its verbs. State on disk is reconciled with reality (the
//! machine's pidfile and `/proc`) on every read, never trusted blindly.

mod clone;
mod console_watch;
mod forward;
mod lifecycle;
mod snapshot;
mod template;

pub(crate) use lifecycle::{GRACEFUL_STOP, ask_to_power_off, log_tail, serial_tail};
pub use snapshot::SnapshotInfo;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::agent::{AgentClient, ExecOutput};
use crate::backend::Backend;
use crate::image::{ImageInputs, ImageStore};
use crate::qemu::QemuBackend;
use crate::state::{self, Paths, VmPaths, VmRecord};
use crate::{Accel, AccelProbe, Error, ExecRequest, IoError, Result};

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How long a boot may take before it counts as failed, and how often it is tried.
#[derive(Debug, Clone, Copy)]
pub struct BootPolicy {
    /// Until the agent answers.
    pub(crate) timeout: Duration,
    /// CPU time the machine may burn before the guest prints anything on its console. Under
    /// TCG, microvm guests sometimes wedge in early boot: the TSC cannot be calibrated against
    /// the PIT, microvm has no HPET or PM timer to fall back on, and the kernel spins waiting
    /// for a timer tick. Such a guest never prints and uses a whole core; a healthy one
    /// prints after about 2.5 s of CPU here. Counting CPU time rather than wall time keeps a
    /// busy host (many guests on few cores) from passing for a stall.
    pub(crate) first_output_timeout: Duration,
    /// Boots tried before giving up (a wedged boot is retried).
    pub(crate) attempts: u32,
}

impl BootPolicy {
    /// How long a boot may take until the agent answers (a minute by default).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How much CPU time the machine may burn before its console shows anything before the
    /// boot counts as wedged and is tried again (15 s by default).
    pub fn first_output_timeout(mut self, cpu_time: Duration) -> Self {
        self.first_output_timeout = cpu_time;
        self
    }

    /// How many boots are tried before `up` fails (3 by default; at least 1).
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// How long a boot may take until the agent answers.
    pub fn get_timeout(&self) -> Duration {
        self.timeout
    }
}

impl Default for BootPolicy {
    /// TCG boots take seconds (about 2.5 s measured on a PVM host); a minute covers slow hosts.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            first_output_timeout: Duration::from_secs(15),
            attempts: 3,
        }
    }
}

/// Whether the guest has printed anything on its serial console yet.
pub(crate) fn console_is_silent(paths: &VmPaths) -> bool {
    std::fs::metadata(paths.serial_log()).map_or(true, |m| m.len() == 0)
}

/// The entry point of the library: where state lives and which backend runs VMs.
#[derive(Debug, Clone)]
pub struct Kiln {
    paths: Paths,
    backend: Arc<dyn Backend>,
    images: ImageStore,
    image_inputs: Option<ImageInputs>,
    boot: BootPolicy,
    /// Start eligible VMs from a template snapshot instead of booting them.
    warm: bool,
    /// This kiln keeps a warm-start template: its VMs' RAM is a file their clones map, and
    /// once saved a VM never runs again.
    template: bool,
    /// A session's workspace image: the workspace drive of the machines this kiln starts.
    workspace_image: Option<std::path::PathBuf>,
}

impl Kiln {
    /// State from the environment (`KILN_HOME` or XDG), the daemonless QEMU backend.
    pub fn from_env() -> Result<Self> {
        Ok(Self::new(Paths::from_env()?, QemuBackend::new()))
    }

    /// A kiln keeping its state under `paths` and running machines with `backend`.
    pub fn new(paths: Paths, backend: QemuBackend) -> Self {
        Self {
            images: ImageStore::new(paths.clone()),
            paths,
            backend: Arc::new(backend),
            image_inputs: None,
            boot: BootPolicy::default(),
            warm: false,
            template: false,
            workspace_image: None,
        }
    }

    /// Builds images from these inputs instead of discovering them.
    #[must_use]
    pub fn with_image_inputs(mut self, inputs: ImageInputs) -> Self {
        self.image_inputs = Some(inputs);
        self
    }

    /// Declares an image of this program's own: its VMs can name it, and `ensure` builds it.
    /// Its name may not be `default` or that of a recipe kiln ships.
    pub fn with_image(
        mut self,
        image: crate::image::ImageSpec,
    ) -> std::result::Result<Self, crate::image::RecipeError> {
        self.images = self.images.with_recipe(image)?;
        Ok(self)
    }

    /// Times out and retries this kiln's boots as `boot` says (see [`BootPolicy`]).
    #[must_use]
    pub fn with_boot_policy(mut self, boot: BootPolicy) -> Self {
        self.boot = boot;
        self
    }

    /// Where this kiln keeps its state.
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// How this kiln's boots are timed out and retried.
    pub fn boot_policy(&self) -> BootPolicy {
        self.boot
    }

    /// The store VMs' images come from (and are built into).
    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// The inputs images are built from, when set with
    /// [`with_image_inputs`](Self::with_image_inputs); `None` means they are discovered.
    pub fn image_inputs(&self) -> Option<&ImageInputs> {
        self.image_inputs.as_ref()
    }

    pub(crate) fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// The named networks VMs of this kiln can join.
    pub fn networks(&self) -> crate::net::Networks {
        crate::net::Networks::new(&self.paths)
    }

    /// Probes this host now: whether KVM is usable, and why.
    pub fn accel_probe(&self) -> AccelProbe {
        AccelProbe::probe()
    }

    /// A handle on an existing VM.
    pub async fn get(&self, name: &str) -> Result<Vm> {
        crate::spec::validate_name(name).map_err(Error::Spec)?;
        let paths = self.paths.vm(name);
        let record = read_record(&paths)?.ok_or_else(|| Error::VmNotFound {
            name: name.to_owned(),
        })?;
        if record.creating && self.roll_back_abandoned(name).await? {
            return Err(Error::VmNotFound {
                name: name.to_owned(),
            });
        }
        let record = if self.finish_interrupted_save(name).await?
            | self.finish_interrupted_restore(name).await?
        {
            read_record(&paths)?.ok_or_else(|| Error::VmNotFound {
                name: name.to_owned(),
            })?
        } else {
            record
        };
        Ok(Vm {
            name: name.to_owned(),
            paths,
            record,
            backend: self.backend.clone(),
        })
    }

    /// Removes what an interrupted `up` left of VM `name` (a directory without a record, or
    /// a record still marked `creating`), if no kiln is working on it: its machine, files
    /// and leases. Returns whether it did.
    async fn roll_back_abandoned(&self, name: &str) -> Result<bool> {
        let paths = self.paths.vm(name);
        let Some(_lock) = state::Lock::try_acquire(paths.lock())? else {
            return Ok(false);
        };
        match read_record(&paths) {
            Ok(Some(record)) if !record.creating => return Ok(false),
            Ok(None) if !paths.dir().exists() && !paths.run_dir().exists() => return Ok(false),
            Err(_) => return Ok(false),
            Ok(_) => {}
        }
        log::info!("{name}: rolling back what an interrupted `up` left");
        self.discard(name, &paths).await?;
        Ok(true)
    }

    /// What is known of one VM, checked against reality.
    pub async fn info(&self, name: &str) -> Result<VmInfo> {
        Ok(self.get(name).await?.info().await)
    }

    /// Removes a cached image; refused, naming them, while VMs of this kiln use it (their
    /// root disks read through its base).
    pub async fn remove_image(&self, name: &str) -> Result<()> {
        let users: Vec<String> = self
            .list()
            .await?
            .into_iter()
            .filter(|vm| vm.image == name)
            .map(|vm| vm.name)
            .collect();
        if !users.is_empty() {
            return Err(Error::ImageInUse {
                name: name.to_owned(),
                vms: users,
            });
        }
        let images = self.images.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || images.remove(&name))
            .await
            .map_err(crate::image::join_error)?
    }

    /// Every VM, sorted by name.
    pub async fn list(&self) -> Result<Vec<VmInfo>> {
        let names = state::list_names(&self.paths.vms_dir())?;
        let mut infos = Vec::new();
        for name in names {
            match self.get(&name).await {
                Ok(vm) => infos.push(vm.info().await),
                // A directory without a record is a create that was interrupted: not a VM.
                Err(Error::VmNotFound { .. }) => {
                    self.roll_back_abandoned(&name).await?;
                }
                Err(Error::Spec(_)) => {}
                Err(err @ Error::NewerState { .. }) => log::warn!("skipping {name}: {err}"),
                // One damaged record must not hide the other VMs.
                Err(err @ Error::CorruptState { .. }) => log::warn!("skipping {name}: {err}"),
                Err(err) => return Err(err),
            }
        }
        Ok(infos)
    }
}

fn read_record(paths: &VmPaths) -> Result<Option<VmRecord>> {
    let mut record: Option<VmRecord> = state::read_json(&paths.record())?;
    if let Some(record) = &mut record {
        record.settle_id();
    }
    Ok(record)
}

/// Whether a VM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// The machine runs, and so do its vCPUs.
    Running,
    /// The machine exists but its vCPUs are stopped (`kiln pause`).
    Paused,
    /// No machine runs: never started, stopped, or crashed (see [`VmInfo::detail`]).
    Stopped,
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
        })
    }
}

/// Whether pausing (or resuming) a VM in `state` has anything to do: `false` when it is
/// already there, an error when it is in neither state of the change (stopped, say).
pub(crate) fn pause_needed(name: &str, state: VmState, paused: bool) -> Result<bool> {
    let (from, to) = if paused {
        (VmState::Running, VmState::Paused)
    } else {
        (VmState::Paused, VmState::Running)
    };
    if state == to {
        return Ok(false);
    }
    if state != from {
        return Err(Error::WrongState {
            name: name.to_owned(),
            state,
            action: if paused { "pause" } else { "resume" },
            needed: from,
        });
    }
    Ok(true)
}

/// Whether a VM in `state` can be snapshotted: a memory snapshot needs it running (or
/// paused), a disk-only one stopped.
pub(crate) fn check_snapshot_state(name: &str, state: VmState, disk_only: bool) -> Result<()> {
    if (state == VmState::Stopped) == disk_only {
        return Ok(());
    }
    Err(Error::WrongState {
        name: name.to_owned(),
        state,
        action: if disk_only {
            "snapshot --disk-only"
        } else {
            "snapshot"
        },
        needed: if disk_only {
            VmState::Stopped
        } else {
            VmState::Running
        },
    })
}

/// A VM as `kiln ls` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct VmInfo {
    /// The VM's name.
    pub name: String,
    /// The VM's id, as its config drive tells the guest (libvirt: the domain's UUID).
    pub id: Option<String>,
    /// The user's metadata key/values.
    pub metadata: std::collections::BTreeMap<String, String>,
    /// The libvirt URI the VM runs on; `None` for the daemonless backend on this machine.
    pub host: Option<String>,
    /// Whether it runs, as checked when this was made.
    pub state: VmState,
    /// Why a VM is in its state when that is not what was asked for.
    pub detail: Option<String>,
    /// Its vCPUs (0 where a libvirt domain's tag no longer parses, as for `memory_mib`).
    pub cpus: u32,
    /// Its memory, in MiB.
    pub memory_mib: u64,
    /// The image it was created from.
    pub image: String,
    /// The accelerator of the machine last started (on libvirt, of the running domain);
    /// `None` when there is none.
    pub accel: Option<Accel>,
    /// The machine process's pid while it runs on this machine; `None` on libvirt.
    pub pid: Option<u32>,
    /// When the VM was created, in seconds since the Unix epoch (0 on libvirt, which does
    /// not say).
    pub created_at: u64,
    /// The whole spec, for `kiln inspect` (not in `kiln ls --json`); `None` where a libvirt
    /// domain's tag no longer parses.
    #[serde(skip)]
    pub spec: Option<crate::VmSpec>,
}

/// A handle on one VM.
#[derive(Debug, Clone)]
pub struct Vm {
    name: String,
    paths: VmPaths,
    record: VmRecord,
    backend: Arc<dyn Backend>,
}

impl Vm {
    /// The VM's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the VM's files are.
    pub fn paths(&self) -> &VmPaths {
        &self.paths
    }

    /// The VM's record, as read when this handle was made.
    pub fn record(&self) -> &VmRecord {
        &self.record
    }

    /// Whether the VM runs now, as its backend finds it.
    pub async fn state(&self) -> VmState {
        match self.backend.running_pid(&self.paths).await {
            Some(_) if self.backend.is_paused(&self.paths).await => VmState::Paused,
            Some(_) => VmState::Running,
            None => VmState::Stopped,
        }
    }

    /// What is known of the VM, checked against reality (a row of `kiln ls`).
    pub async fn info(&self) -> VmInfo {
        let pid = self.backend.running_pid(&self.paths).await;
        let state = self.state().await;
        let detail = match (state, self.record.should_run) {
            _ if self.record.creating => Some("being created".to_owned()),
            (VmState::Stopped, true) => Some(
                self.record
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "qemu exited unexpectedly".to_owned()),
            ),
            (VmState::Stopped, false) => self.record.last_error.clone(),
            (VmState::Running | VmState::Paused, _) => None,
        };
        let spec = &self.record.spec;
        VmInfo {
            name: self.name.clone(),
            id: Some(self.record.id.clone()),
            metadata: spec.metadata().values().clone(),
            host: None,
            state,
            detail,
            cpus: spec.cpus(),
            memory_mib: spec.memory_mib(),
            image: spec.image().to_owned(),
            accel: self.record.machine.as_ref().map(|m| m.accel),
            pid,
            created_at: self.record.created_at,
            spec: Some(spec.clone()),
        }
    }

    /// Connects to the guest agent (the VM must run).
    pub async fn agent(&self) -> Result<AgentClient> {
        self.agent_within(Duration::from_secs(30)).await
    }

    /// Connects to the guest agent, trying for up to `timeout` (the VM must run).
    pub async fn agent_within(&self, timeout: Duration) -> Result<AgentClient> {
        let state = self.state().await;
        if state != VmState::Running {
            return Err(Error::WrongState {
                name: self.name.clone(),
                state,
                action: "exec",
                needed: VmState::Running,
            });
        }
        let secret_path = self.paths.secret();
        let secret = std::fs::read(&secret_path).map_err(IoError::at("read", &secret_path))?;
        let ports = self.paths.agent_ports();
        Ok(crate::agent::connect(&ports, &secret, crate::agent::Patience::new(timeout)).await?)
    }

    /// Runs a command and collects its output.
    pub async fn exec_output(&self, request: ExecRequest) -> Result<ExecOutput> {
        let agent = self.agent().await?;
        Ok(agent.exec(request).await?.output().await?)
    }
}
