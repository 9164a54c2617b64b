//! Creating, starting, stopping and removing VMs. Each verb holds the VM's lock, so two
//! kilns never act on one VM at once; a kiln killed mid-verb leaves files the next verb
//! recognises and cleans up.

use std::time::{Duration, Instant};

use log::{info, warn};

use super::console_watch::{CONSOLE_POLL, ConsoleWatch};
use super::{Kiln, Vm, VmState, console_is_silent, now_secs, read_record};
use crate::agent::AgentClient;
use crate::backend::{Launch, Memory};
use crate::image::join_error;
use crate::progress::{self, Event, Reporter, Stage};
use crate::state::{self, BackendKind, Lock, MachineRecord, RECORD_VERSION, VmPaths, VmRecord};
use crate::{Error, IoError, Result, VmSpec};

/// How long a guest gets to power off by itself before its machine is killed.
pub(crate) const GRACEFUL_STOP: Duration = crate::topology::DEFAULT_STOP_GRACE;

/// The graceful half of a stop, the same on every host: asks the guest to power itself off
/// through `agent`, then waits (polling `running` every `poll`) until it has or `grace`
/// passed. The caller pulls the plug after, whatever happened here.
pub(crate) async fn ask_to_power_off<A, R, F>(
    name: &str,
    grace: Duration,
    poll: Duration,
    agent: A,
    mut running: R,
) -> Result<()>
where
    A: std::future::Future<Output = Result<AgentClient>>,
    R: FnMut() -> F,
    F: std::future::Future<Output = Result<bool>>,
{
    let asked = async {
        agent.await?.shutdown().await?;
        Ok::<_, Error>(())
    };
    if let Err(err) = asked.await {
        warn!("{name}: graceful shutdown failed ({err}); pulling the plug");
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && running().await? {
        tokio::time::sleep(poll).await;
    }
    Ok(())
}

pub(super) async fn lock(paths: &VmPaths) -> Result<Lock> {
    let path = paths.lock().to_owned();
    tokio::task::spawn_blocking(move || Lock::acquire(&path))
        .await
        .map_err(join_error)?
}

/// Shares VM `paths`' lock: its files stay while the holder reads them (a clone starting
/// from its snapshot), and whatever removes them waits.
pub(super) async fn shared_lock(paths: &VmPaths) -> Result<Lock> {
    let path = paths.lock().to_owned();
    tokio::task::spawn_blocking(move || Lock::acquire_shared(&path))
        .await
        .map_err(join_error)?
}

/// Keeps the previous boot's console as `serial.log.1`, so this boot starts with an empty log.
fn rotate_serial_log(paths: &VmPaths) -> Result<()> {
    let log = paths.serial_log();
    match std::fs::rename(&log, log.with_extension("log.1")) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(IoError::new("rotate", log, err).into()),
    }
}

/// The last `lines` lines the guest printed on its serial console.
pub(crate) fn serial_tail(paths: &VmPaths, lines: usize) -> String {
    log_tail(&paths.serial_log(), lines)
}

/// The most of a log's end that [`log_tail`] reads: a guest can make its console log as large
/// as it likes, so only the end is ever read.
const TAIL_BYTES: u64 = 64 << 10;

/// The last `lines` lines of a log file (from at most its last 64 KiB); empty when it cannot
/// be read.
pub(crate) fn log_tail(path: &std::path::Path, lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut log = Vec::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let len = file.metadata().map_or(0, |m| m.len());
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)));
        let _ = file.take(TAIL_BYTES).read_to_end(&mut log);
    }
    let text = String::from_utf8_lossy(&log);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Kiln {
    /// Creates a VM from `spec` and boots it; returns once its agent answers.
    pub async fn up(&self, spec: VmSpec, reporter: &dyn Reporter) -> Result<Vm> {
        self.up_as(spec, None, reporter).await
    }

    /// [`up`](Self::up), recording `owner` (a score's name) in the VM's record. With warm
    /// starts on, an eligible spec starts from its template (see [`Kiln::with_warm_starts`]).
    pub async fn up_as(
        &self,
        spec: VmSpec,
        owner: Option<&str>,
        reporter: &dyn Reporter,
    ) -> Result<Vm> {
        crate::image::config_drive::check_secrets(&spec)?;
        if self.warm {
            match Kiln::cold_reason(&spec) {
                None => {
                    self.backend.check(&spec)?;
                    return self.up_warm(spec, owner, reporter).await;
                }
                Some(reason) => reporter.report(Event::Start {
                    warm: false,
                    detail: reason.to_owned(),
                }),
            }
        }
        self.up_cold(spec, owner, reporter).await
    }

    /// Creates a VM and boots it from its kernel.
    pub(super) async fn up_cold(
        &self,
        spec: VmSpec,
        owner: Option<&str>,
        reporter: &dyn Reporter,
    ) -> Result<Vm> {
        let name = spec.name().to_owned();
        let paths = self.paths.vm(&name);
        paths.check_socket_paths()?;
        self.backend.check(&spec)?;
        for network in spec.networks().iter().filter_map(|n| n.network_name()) {
            self.networks().get(network)?;
        }
        let _lock = lock(&paths).await?;
        if read_record(&paths)?.is_some() {
            return Err(Error::VmAlreadyExists { name });
        }
        // A directory without a record is what a killed `up` leaves: start over.
        self.backend.kill(&paths).await?;
        paths.remove_all()?;

        let probe = self.accel_probe();
        let accel = probe.choose(spec.accel())?;
        reporter.report(Event::AccelChosen {
            accel,
            reason: probe.reason.clone(),
        });
        let image = self
            .images
            .ensure(spec.image(), self.image_inputs.as_ref(), false, reporter)
            .await?;
        image.check_spec(&spec)?;

        let record = progress::stage(reporter, Stage::CreateVm, async {
            state::create_private_dir(paths.dir())?;
            state::create_private_dir(paths.run_dir())?;
            state::write_new_secret(&paths.secret())?;
            let disks = crate::image::machine_disks(&spec, &image);
            self.backend.create(&disks, &paths).await?;
            let record = VmRecord {
                version: RECORD_VERSION,
                id: state::new_vm_id(),
                spec: spec.clone(),
                backend: BackendKind::Qemu,
                created_at: now_secs(),
                image_digest: image.digest(),
                should_run: true,
                machine: None,
                last_error: None,
                owner: owner.map(str::to_owned),
                disk_files: Vec::new(),
                creating: true,
            };
            // From here on the VM exists.
            state::write_json_atomic(&paths.record(), &record)?;
            Ok::<_, Error>(record)
        })
        .await?;
        self.boot(record, paths, accel, &probe.reason, reporter)
            .await
    }

    /// Changes VM `name`'s metadata key/values under its lock, and returns them as they are
    /// now; its secrets stay. The config drive is made at each start, so the guest sees them
    /// from its next start on.
    pub async fn set_metadata(
        &self,
        name: &str,
        change: &crate::spec::MetadataChange,
    ) -> Result<std::collections::BTreeMap<String, String>> {
        let vm = self.get(name).await?;
        let _lock = lock(&vm.paths).await?;
        let mut record = read_record(&vm.paths)?.ok_or_else(|| Error::VmNotFound {
            name: name.to_owned(),
        })?;
        record.spec = record
            .spec
            .with_metadata_values(change.apply(record.spec.metadata().values()))?;
        state::write_json_atomic(&vm.paths.record(), &record)?;
        Ok(record.spec.metadata().values().clone())
    }

    /// Starts a stopped VM and waits for its agent. A running VM is left alone.
    pub async fn start(&self, name: &str, reporter: &dyn Reporter) -> Result<Vm> {
        let vm = self.get(name).await?;
        let _lock = lock(&vm.paths).await?;
        let record = read_record(&vm.paths)?.ok_or_else(|| Error::VmNotFound {
            name: name.to_owned(),
        })?;
        if self.backend.running_pid(&vm.paths).await.is_some() {
            reporter.report(Event::Note {
                message: format!("{name} is already running"),
            });
            return Ok(Vm { record, ..vm });
        }
        let probe = self.accel_probe();
        let accel = probe.choose(record.spec.accel())?;
        reporter.report(Event::AccelChosen {
            accel,
            reason: probe.reason.clone(),
        });
        self.boot(record, vm.paths, accel, &probe.reason, reporter)
            .await
    }

    /// Starts the machine and waits for the agent, retrying a boot that stalls.
    pub(super) async fn boot(
        &self,
        mut record: VmRecord,
        paths: VmPaths,
        accel: crate::Accel,
        accel_reason: &str,
        reporter: &dyn Reporter,
    ) -> Result<Vm> {
        let name = record.spec.name().to_owned();
        let image = self.images.get(record.spec.image())?;
        if image.digest() != record.image_digest {
            info!(
                "{name}: image {} was rebuilt since the VM was created",
                image.name()
            );
            record.image_digest = image.digest();
        }
        let attachments = self.networks().attachments(&record.spec).await?;
        let disks = record.disk_files(&paths);
        let mut failure = String::new();
        let ram = paths.ram_file();
        for attempt in 1..=self.boot.attempts.max(1) {
            let launch = Launch {
                spec: &record.spec,
                id: &record.id,
                image: &image,
                paths: &paths,
                accel,
                accel_reason,
                attachments: &attachments,
                disks: &disks,
                incoming: None,
                memory: if self.template {
                    Memory::SharedFile(&ram)
                } else {
                    Memory::Private
                },
                workspace: self.workspace_image.as_deref(),
                cpu: None,
            };
            if self.template {
                fresh_private_file(&ram)?;
            }
            rotate_serial_log(&paths)?;
            let machine: MachineRecord =
                progress::stage(reporter, Stage::StartQemu, self.backend.start(&launch)).await?;
            record.machine = Some(machine);
            record.should_run = true;
            record.last_error = None;
            state::write_json_atomic(&paths.record(), &record)?;

            let waited = progress::stage(
                reporter,
                Stage::WaitAgent,
                self.wait_for_agent(&paths, reporter),
            )
            .await;
            match waited {
                Ok(client) => {
                    info!(
                        "{name} is ready: agent {}, kernel {}",
                        client.info().agent_version,
                        client.info().kernel_release
                    );
                    if record.creating {
                        record.creating = false;
                        state::write_json_atomic(&paths.record(), &record)?;
                    }
                    return Ok(Vm {
                        name,
                        paths,
                        record,
                        backend: self.backend.clone(),
                    });
                }
                Err(reason) => {
                    failure = reason;
                    self.backend.kill(&paths).await?;
                    if attempt < self.boot.attempts {
                        warn!("{name}: boot attempt {attempt} failed: {failure}; retrying");
                        reporter.report(Event::Note {
                            message: format!("boot attempt {attempt} failed ({failure}); retrying"),
                        });
                    }
                }
            }
        }
        record.should_run = false;
        // A failed boot is an outcome: the VM stays, stopped, with the reason.
        record.creating = false;
        record.last_error = Some(format!("boot failed: {failure}"));
        state::write_json_atomic(&paths.record(), &record)?;
        Err(Error::BootFailed {
            name,
            reason: failure,
            serial_tail: serial_tail(&paths, 20),
        })
    }

    /// Waits for the agent's handshake while watching that the machine still runs.
    pub(super) async fn wait_for_agent(
        &self,
        paths: &VmPaths,
        reporter: &dyn Reporter,
    ) -> std::result::Result<AgentClient, String> {
        let secret_path = paths.secret();
        let secret = std::fs::read(&secret_path)
            .map_err(|e| format!("cannot read {}: {e}", secret_path.display()))?;
        let timeout = self.boot.timeout;
        let started = Instant::now();
        let ports = paths.agent_ports();
        let connect = crate::agent::connect(&ports, &secret, crate::agent::Patience::new(timeout));
        tokio::pin!(connect);
        let mut console = ConsoleWatch::new(paths.serial_log(), started);
        // Two clocks: the console's phases are looked for often, the machine's health less so.
        let mut console_poll = tokio::time::interval(CONSOLE_POLL);
        console_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut health = tokio::time::interval(Duration::from_millis(250));
        health.reset();
        loop {
            tokio::select! {
                result = &mut connect => {
                    console.agent_ready(reporter);
                    return result.map_err(|e| match e {
                        crate::agent::AgentError::Timeout { .. } => {
                            format!("the agent did not answer within {}s", timeout.as_secs())
                        }
                        other => other.to_string(),
                    });
                }
                _ = console_poll.tick(), if !console.done() => {
                    console.look(reporter);
                }
                _ = health.tick() => {
                    let Some(pid) = self.backend.running_pid(paths).await else {
                        return Err(format!(
                            "qemu exited {:.1}s into the boot",
                            started.elapsed().as_secs_f64()
                        ));
                    };
                    // CPU time, not wall time: on a busy host a healthy guest gets little of
                    // it and prints late; a stalled one spins and burns it.
                    let spent = self.backend.cpu_time(pid).unwrap_or_default();
                    if spent > self.boot.first_output_timeout && console_is_silent(paths) {
                        return Err(format!(
                            "the guest printed nothing in {}s of CPU time (stalled in early boot)",
                            self.boot.first_output_timeout.as_secs()
                        ));
                    }
                }
            }
        }
    }

    /// Powers a VM off: the agent asks the guest to shut down, and the machine is killed if
    /// it has not exited after a grace period. A stopped VM is left alone.
    pub async fn stop(&self, name: &str, reporter: &dyn Reporter) -> Result<()> {
        self.stop_within(name, GRACEFUL_STOP, reporter).await
    }

    /// [`stop`](Self::stop) with a grace period of `grace`; zero kills the machine at once,
    /// without asking the guest.
    pub async fn stop_within(
        &self,
        name: &str,
        grace: Duration,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        let vm = self.get(name).await?;
        let _lock = lock(&vm.paths).await?;
        let mut record = read_record(&vm.paths)?.ok_or_else(|| Error::VmNotFound {
            name: name.to_owned(),
        })?;
        progress::stage(reporter, Stage::Stop, async {
            let running = self.backend.running_pid(&vm.paths).await.is_some();
            if running && !grace.is_zero() {
                ask_to_power_off(
                    name,
                    grace,
                    Duration::from_millis(100),
                    vm.agent_within(Duration::from_secs(5)),
                    || async { Ok(self.backend.running_pid(&vm.paths).await.is_some()) },
                )
                .await?;
            }
            if running {
                self.backend.kill(&vm.paths).await?;
            }
            record.should_run = false;
            record.last_error = None;
            state::write_json_atomic(&vm.paths.record(), &record)
        })
        .await
    }

    /// Gives a stopped VM new vCPU and memory settings (the rest of `spec` must match).
    pub async fn reconfigure(&self, spec: &VmSpec) -> Result<()> {
        let name = spec.name();
        let vm = self.get(name).await?;
        let _lock = lock(&vm.paths).await?;
        let mut record = read_record(&vm.paths)?.ok_or_else(|| Error::VmNotFound {
            name: name.to_owned(),
        })?;
        if self.backend.running_pid(&vm.paths).await.is_some() {
            return Err(Error::WrongState {
                name: name.to_owned(),
                state: VmState::Running,
                action: "reconfigure",
                needed: VmState::Stopped,
            });
        }
        self.backend.check(spec)?;
        record.spec = spec.clone();
        state::write_json_atomic(&vm.paths.record(), &record)
    }

    /// The other VMs whose disks read through files of VM `name` (clones of its snapshots).
    async fn readers_of(&self, name: &str) -> Result<Vec<String>> {
        let dir = self.paths.vm(name).dir().to_owned();
        let mut readers = Vec::new();
        for other in state::list_names(&self.paths.vms_dir())? {
            if other == name {
                continue;
            }
            let other_paths = self.paths.vm(&other);
            let Some(record) = read_record(&other_paths).ok().flatten() else {
                continue;
            };
            for file in record.disk_files(&other_paths) {
                let chain = self.backend.backing_chain(&file).await.unwrap_or_default();
                if chain.iter().any(|f| f.starts_with(&dir)) {
                    readers.push(format!("VM {other}"));
                    break;
                }
            }
        }
        Ok(readers)
    }

    /// Removes a VM and everything it owns. A running VM needs `force`.
    pub async fn remove(&self, name: &str, force: bool, reporter: &dyn Reporter) -> Result<()> {
        crate::spec::validate_name(name)?;
        let paths = self.paths.vm(name);
        let _lock = lock(&paths).await?;
        // A damaged record may go; one a newer kiln wrote is that kiln's to remove.
        let record = match read_record(&paths) {
            Err(err @ Error::NewerState { .. }) => return Err(err),
            read => read.ok().flatten(),
        };
        if record.is_none() && !paths.dir().exists() {
            return Err(Error::VmNotFound {
                name: name.to_owned(),
            });
        }
        let clones = self.readers_of(name).await?;
        if !clones.is_empty() {
            return Err(Error::VmInUse {
                name: name.to_owned(),
                users: clones,
            });
        }
        progress::stage(reporter, Stage::Remove, async {
            if !force && self.backend.running_pid(&paths).await.is_some() {
                return Err(Error::WrongState {
                    name: name.to_owned(),
                    state: VmState::Running,
                    action: "rm",
                    needed: VmState::Stopped,
                });
            }
            self.discard(name, &paths).await
        })
        .await
    }

    /// Kills a VM's machine (if it runs) and removes its files and network leases: what
    /// `rm` does, and what rolling back an interrupted `up` does. The caller holds the lock.
    pub(super) async fn discard(&self, name: &str, paths: &VmPaths) -> Result<()> {
        self.backend.kill(paths).await?;
        paths.remove_all()?;
        // A QEMU whose starter was killed can still be on its way up: one that got as far
        // as binding its sockets before the directories went is found by them now; one that
        // comes later cannot bind them, and exits.
        self.backend.kill(paths).await?;
        self.networks().release(name).await
    }
}

/// Makes `path` a new empty file only its owner reads (a template's RAM file: QEMU would
/// create it world-readable, and an earlier attempt's must not be mapped again).
fn fresh_private_file(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    state::remove_file_if_present(path)?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(IoError::at("create", path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn the_tail_of_a_huge_log_is_read_from_its_end_only() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        let mut text = "x".repeat(1 << 20);
        text.push_str("\nsecond to last\nlast line\n");
        std::fs::write(&log, text).unwrap();
        assert_eq!(super::log_tail(&log, 2), "second to last\nlast line");
        assert_eq!(super::log_tail(&dir.path().join("absent"), 2), "");
    }
}
