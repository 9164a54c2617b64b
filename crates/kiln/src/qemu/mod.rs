//! The daemonless QEMU backend: one `qemu-system-x86_64` process per VM, started with
//! `-daemonize` so it outlives the `kiln` that started it, controlled over a QMP socket.

mod argv;
mod boot;
mod console;
mod cpu;
mod error;
mod migration;
mod passt;
mod plan;
mod process;
mod qmp;
mod qmp_commands;

pub use cpu::{BootLever, TCG_CPU};
pub use error::QemuError;

pub(crate) use argv::{
    DriveFile, FORWARDS_NETDEV, FirmwareBoot, Machine, MemoryFile, QemuLaunch, Share9p, TapNic,
    UserNet, render,
};
pub(crate) use cpu::cpu_or_legacy;
pub(crate) use passt::user_uid as passt_user_uid;
pub(crate) use passt::{USER as PASST_USER, binary as passt_binary, installed as passt_installed};
pub(crate) use qmp::{QmpClient, QmpReply};
use qmp_commands as cmd;
use qmp_commands::{MigrationStatus, RunState};

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use log::{debug, info};

use crate::backend::{Backend, Launch};
use crate::state::{MachineRecord, VmPaths};
use crate::{Result, VmSpec};

/// Where QEMU and its firmware are.
#[derive(Debug, Clone)]
pub struct QemuBackend {
    binary: PathBuf,
    img_binary: PathBuf,
    /// qboot for microvm: SeaBIOS sometimes stalls there (see ENVIRONMENT.md).
    firmware: Option<PathBuf>,
    machine: Machine,
    /// The most of one boot's console kept in `serial.log`.
    console_log_max: u64,
    /// The guest CPU model under TCG.
    tcg_cpu: String,
    /// A boot lever turned off, to measure it (benchmarks only).
    undone: Option<BootLever>,
}

impl Default for QemuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl QemuBackend {
    /// QEMU from `KILN_QEMU` or `PATH`, qboot from QEMU's data directory when present.
    pub fn new() -> Self {
        let binary = std::env::var_os("KILN_QEMU")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"));
        let firmware = ["/usr/share/qemu/qboot.rom", "/usr/share/qboot/bios.bin"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file());
        Self {
            binary,
            img_binary: PathBuf::from("qemu-img"),
            firmware,
            machine: Machine::Microvm,
            console_log_max: console::DEFAULT_CONSOLE_LOG_MAX,
            tcg_cpu: std::env::var("KILN_TCG_CPU")
                .ok()
                .filter(|model| !model.trim().is_empty())
                .unwrap_or_else(|| TCG_CPU.to_owned()),
            undone: None,
        }
    }

    /// Gives guests under TCG this CPU model (QEMU's `-cpu` syntax, e.g. `max`) instead of
    /// [`TCG_CPU`] or `KILN_TCG_CPU`. Saved state remembers its model: a snapshot is restored
    /// into the model it was saved from, whatever this says.
    pub fn with_tcg_cpu(mut self, model: impl Into<String>) -> Self {
        self.tcg_cpu = model.into();
        self
    }

    /// The guest CPU model a machine started now on `accel` gets.
    fn default_cpu(&self, accel: crate::Accel) -> String {
        match accel {
            crate::Accel::Kvm => "host".to_owned(),
            crate::Accel::Tcg if self.undone == Some(BootLever::PlainTcgCpu) => "max".to_owned(),
            crate::Accel::Tcg => self.tcg_cpu.clone(),
        }
    }

    /// The kernel command line as this backend boots it (with a lever undone for the bench).
    fn kernel_cmdline(&self, mut cmdline: String) -> String {
        if self.undone == Some(BootLever::SkipCryptoTests) {
            cmdline = cmdline.replace(crate::image::SKIP_CRYPTO_TESTS, "");
        }
        cmdline
    }

    /// Boots with `lever` undone: what kiln did before it was kept (benchmarks only).
    pub(crate) fn without_lever(mut self, lever: BootLever) -> Self {
        self.undone = Some(lever);
        self
    }

    /// Keeps at most `bytes` of each boot's console in `serial.log` (default 8 MiB); what
    /// the guest prints past that is dropped.
    pub fn with_console_log_max(mut self, bytes: u64) -> Self {
        self.console_log_max = bytes;
        self
    }

    /// The `qemu-system-x86_64` this backend runs.
    pub fn binary(&self) -> &std::path::Path {
        &self.binary
    }

    /// The qboot image used for microvm, when one was found.
    pub fn firmware(&self) -> Option<&std::path::Path> {
        self.firmware.as_deref()
    }

    /// Creates a qcow2 overlay at `path` on `base`, whose format is `base_format` (stated,
    /// never probed).
    async fn overlay(
        &self,
        base: &std::path::Path,
        base_format: &str,
        path: &std::path::Path,
    ) -> Result<()> {
        let mut args: Vec<std::ffi::OsString> = vec!["create".into(), "-q".into()];
        args.extend(["-f".into(), "qcow2".into(), "-b".into(), base.into()]);
        args.extend(["-F".into(), base_format.into(), path.into()]);
        self.qemu_img(&args).await.map(drop)
    }

    /// Runs `qemu-img` and returns its standard output.
    async fn qemu_img(&self, args: &[std::ffi::OsString]) -> Result<Vec<u8>> {
        let output = tokio::process::Command::new(&self.img_binary)
            .args(args)
            .output()
            .await
            .map_err(|source| QemuError::NotInstalled {
                program: self.img_binary.clone(),
                source,
            })?;
        if !output.status.success() {
            return Err(QemuError::ImgFailed {
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            }
            .into());
        }
        Ok(output.stdout)
    }

    /// `qemu-system-x86_64 --version`, first line.
    pub async fn version(&self) -> Result<String> {
        let output = tokio::process::Command::new(&self.binary)
            .arg("--version")
            .output()
            .await
            .map_err(|source| QemuError::NotInstalled {
                program: self.binary.clone(),
                source,
            })?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned())
    }
}

/// Binds the host side of a forward for a moment: QEMU would fail later, less clearly.
fn check_port_free(forward: &crate::spec::PortForward) -> Result<()> {
    let addr = (forward.host_addr, forward.host_port);
    let bound = match forward.protocol {
        crate::spec::Protocol::Tcp => std::net::TcpListener::bind(addr).map(drop),
        crate::spec::Protocol::Udp => std::net::UdpSocket::bind(addr).map(drop),
    };
    bound.map_err(|source| {
        QemuError::PortInUse {
            forward: *forward,
            source,
        }
        .into()
    })
}

#[async_trait]
impl Backend for QemuBackend {
    fn check(&self, spec: &VmSpec) -> Result<()> {
        // Network boot is served by the user-mode NIC's own BOOTP and TFTP.
        if spec
            .boot_order()
            .contains(&crate::spec::BootDevice::Network)
            && !spec.networks().contains(&crate::NetworkRef::User)
        {
            return Err(QemuError::NetworkBootNeedsUserNic.into());
        }
        for share in spec.shares() {
            if !share.host().is_dir() {
                return Err(QemuError::ShareNotADirectory {
                    path: share.host().to_owned(),
                }
                .into());
            }
        }
        for forward in spec.ports() {
            check_port_free(forward)?;
        }
        let program = passt::binary();
        if spec.user_net() == Some(crate::NetPolicy::Nat) && !passt::installed(&program) {
            return Err(QemuError::NetworkHelper {
                program,
                source: std::io::ErrorKind::NotFound.into(),
            }
            .into());
        }
        Ok(())
    }

    async fn create(&self, disks: &[crate::DiskSpec], paths: &VmPaths) -> Result<()> {
        for (index, disk) in disks.iter().enumerate() {
            let path = paths.disk(index);
            if path.exists() {
                continue;
            }
            let mut args: Vec<std::ffi::OsString> = vec!["create".into(), "-q".into()];
            args.extend(["-f".into(), "qcow2".into()]);
            if let Some(base) = disk.base() {
                args.extend(["-b".into(), base.into(), "-F".into(), "qcow2".into()]);
            }
            args.extend([path.clone().into(), disk.size().bytes().to_string().into()]);
            self.qemu_img(&args).await?;
        }
        Ok(())
    }

    async fn start(&self, launch: &Launch<'_>) -> Result<MachineRecord> {
        let mut plan = self.plan(launch);
        if let (Some(seed), Some(cloud_init)) = (&plan.seed, launch.spec.cloud_init()) {
            crate::image::seed::write(seed, cloud_init, launch.spec.name())?;
        }
        crate::image::config_drive::write(&plan.config_drive, launch.spec, launch.id, "qemu")?;
        if let Some(drive) = plan.workspace_drive.take() {
            let attached = crate::image::workspace_drive::attach(launch.workspace, &drive.path)?;
            plan.workspace_drive = attached.map(|path| DriveFile {
                format: crate::image::workspace_drive::FORMAT,
                path,
            });
        }
        if let Some(boot) = &plan.firmware_boot {
            boot::prepare(boot, &plan, launch)?;
        }
        let argv = render(&plan);
        debug!("qemu argv: {} {argv:?}", self.binary.display());
        // Stale sockets of an earlier run would make QEMU fail to bind.
        let net_socket = launch.paths.net_socket();
        for socket in [&plan.qmp_socket, &plan.pidfile, &net_socket]
            .into_iter()
            .chain(&plan.agent_sockets)
        {
            crate::state::remove_file_if_present(socket)?;
        }
        let console = console::attach(
            &plan.console,
            &launch.paths.serial_log(),
            self.console_log_max,
        )?;
        let started = process::spawn_daemonized(&self.binary, &argv, &plan.pidfile).await;
        // QEMU has the FIFO open now (or never will): the logger ends when QEMU does.
        drop(console);
        let pid = started?;
        info!(
            "started qemu for {} as pid {pid} ({})",
            plan.name, plan.accel
        );
        if plan
            .user_net
            .as_ref()
            .is_some_and(|user| user.policy == crate::NetPolicy::Nat)
            && let Err(err) = passt::attach(
                &passt::binary(),
                &net_socket,
                &launch.paths.net_log(),
                &launch.paths.net_pidfile(),
                || process::is_alive(pid, &plan.qmp_socket),
            )
            .await
        {
            // QEMU removes its socket when it ends: say so rather than "no such file".
            let ended = !process::is_alive(pid, &plan.qmp_socket);
            process::wait_or_kill(pid, &plan.qmp_socket, Duration::ZERO).await;
            return Err(if ended {
                QemuError::EndedAtStart {
                    pid,
                    reason: err.to_string(),
                }
                .into()
            } else {
                err
            });
        }
        if !launch.attachments.is_empty() {
            // QEMU made the taps; they go away with it. Put them into their bridges.
            let attached = async {
                let netlink = crate::net::Netlink::open()?;
                for nic in launch.attachments {
                    netlink.attach(&nic.tap, &nic.bridge).await?;
                }
                Ok::<_, crate::net::NetError>(())
            };
            if let Err(err) = attached.await {
                process::wait_or_kill(pid, &plan.qmp_socket, Duration::ZERO).await;
                return Err(err.into());
            }
        }
        if let Some(state) = &plan.incoming
            && let Err(err) = migration::load_state(&plan.qmp_socket, state).await
        {
            process::wait_or_kill(pid, &plan.qmp_socket, Duration::ZERO).await;
            return Err(err);
        }
        Ok(MachineRecord {
            pid,
            accel: launch.accel,
            accel_reason: launch.accel_reason.to_owned(),
            started_at: crate::vm::now_secs(),
            cpu: Some(plan.cpu),
        })
    }

    async fn running_pid(&self, paths: &VmPaths) -> Option<u32> {
        let pid = process::read_pidfile(&paths.pidfile())?;
        process::is_alive(pid, &paths.qmp_socket()).then_some(pid)
    }

    async fn kill(&self, paths: &VmPaths) -> Result<()> {
        let qmp = paths.qmp_socket();
        let Some(pid) = self.running_pid(paths).await else {
            // No pidfile: QEMU may still run (its starter was killed before it wrote one, or
            // the runtime directory was wiped). Find it by its socket instead of orphaning it.
            // A QEMU still starting may fork its daemon after the scan: scan again until
            // none is left.
            for _ in 0..50 {
                let found = process::find_by_socket(&qmp);
                if found.is_empty() {
                    break;
                }
                for pid in found {
                    debug!("killing QEMU {pid}, which has no pidfile");
                    process::wait_or_kill(pid, &qmp, Duration::ZERO).await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            return Ok(());
        };
        let quit = async {
            let mut client = QmpClient::connect(&qmp).await?;
            client.call(&cmd::Quit {}).await.map(drop)
        };
        if let Err(err) = tokio::time::timeout(Duration::from_secs(3), quit)
            .await
            .unwrap_or(Ok(()))
        {
            debug!("QMP quit failed ({err}); killing pid {pid}");
        }
        process::wait_or_kill(pid, &qmp, Duration::from_secs(5)).await;
        passt::wait_gone(&paths.net_pidfile()).await;
        Ok(())
    }

    async fn kill_at_once(&self, paths: &VmPaths) -> Result<()> {
        let Some(pid) = self.running_pid(paths).await else {
            return self.kill(paths).await;
        };
        process::wait_or_kill(pid, &paths.qmp_socket(), Duration::ZERO).await;
        passt::wait_gone(&paths.net_pidfile()).await;
        Ok(())
    }

    async fn version(&self) -> Result<String> {
        QemuBackend::version(self).await
    }

    fn cpu_model(&self, accel: crate::Accel) -> String {
        self.default_cpu(accel)
    }

    async fn create_overlay(&self, base: &std::path::Path, path: &std::path::Path) -> Result<()> {
        self.overlay(base, "qcow2", path).await
    }

    async fn create_overlay_on_raw(
        &self,
        base: &std::path::Path,
        path: &std::path::Path,
    ) -> Result<()> {
        self.overlay(base, "raw", path).await
    }

    async fn backing_chain(&self, file: &std::path::Path) -> Result<Vec<PathBuf>> {
        // -U: the image may be open in a running QEMU.
        let args: Vec<std::ffi::OsString> = vec![
            "info".into(),
            "-U".into(),
            "--backing-chain".into(),
            "--output=json".into(),
            file.into(),
        ];
        let out = self.qemu_img(&args).await?;
        let images: Vec<serde_json::Value> =
            serde_json::from_slice(&out).map_err(|e| QemuError::ImgFailed {
                stderr: format!("unreadable `qemu-img info` output: {e}"),
            })?;
        Ok(images
            .iter()
            .filter_map(|i| i.get("filename").and_then(serde_json::Value::as_str))
            .map(PathBuf::from)
            .collect())
    }

    async fn set_paused(&self, paths: &VmPaths, paused: bool) -> Result<()> {
        let mut client = QmpClient::connect(&paths.qmp_socket()).await?;
        if !paused {
            // A save whose kiln was killed may still be writing memory out: end it first,
            // or `cont` would race the migration's last phase.
            let busy = |info: cmd::MigrationInfo| info.status.is_some_and(MigrationStatus::is_busy);
            if busy(client.call(&cmd::QueryMigrate {}).await?) {
                client.call(&cmd::MigrateCancel {}).await?;
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while busy(client.call(&cmd::QueryMigrate {}).await?)
                    && std::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        if paused {
            client.call(&cmd::Stop {}).await.map(drop)
        } else {
            client.call(&cmd::Cont {}).await.map(drop)
        }
    }

    async fn wait_loaded(
        &self,
        paths: &VmPaths,
        state: &std::path::Path,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        let not_loaded = |reason: String| -> crate::Error {
            QemuError::StateNotLoaded {
                state: state.to_owned(),
                reason,
            }
            .into()
        };
        loop {
            // QEMU loads a file's state in its main loop and answers nothing meanwhile: a
            // monitor that does not answer is waited for, a QEMU that is gone is not.
            match migration::load_progress(&paths.qmp_socket()).await {
                Ok(Some(refusal)) => {
                    return Err(QemuError::StateRefused {
                        state: state.to_owned(),
                        reason: refusal,
                    }
                    .into());
                }
                Ok(None) => return Ok(()),
                Err(err) if self.running_pid(paths).await.is_none() => {
                    return Err(not_loaded(format!("QEMU exited ({err})")));
                }
                Err(err) => log::debug!("the state is still loading: {err}"),
            }
            if std::time::Instant::now() > deadline {
                return Err(not_loaded(format!("still loading after {timeout:?}")));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn is_paused(&self, paths: &VmPaths) -> bool {
        // Paused by hand, or left stopped by a save whose kiln was killed (`postmigrate`).
        match QmpClient::connect(&paths.qmp_socket()).await {
            Ok(mut client) => client
                .status()
                .await
                .is_ok_and(|s| matches!(s, RunState::Paused | RunState::Postmigrate)),
            Err(_) => false,
        }
    }

    async fn save_state(
        &self,
        paths: &VmPaths,
        memory: &std::path::Path,
        overlays: &[PathBuf],
        meter: &mut crate::progress::Meter<'_>,
    ) -> Result<()> {
        migration::save(&paths.qmp_socket(), memory, overlays, meter).await
    }

    async fn set_forward(
        &self,
        paths: &VmPaths,
        forward: &crate::spec::PortForward,
        add: bool,
    ) -> Result<()> {
        // QMP has no hostfwd command; the human monitor's answers are text: empty on
        // success for add, a confirmation for remove.
        let command = if add {
            format!("hostfwd_add {FORWARDS_NETDEV} {}", forward.hostfwd())
        } else {
            format!(
                "hostfwd_remove {FORWARDS_NETDEV} {}:{}:{}",
                forward.protocol, forward.host_addr, forward.host_port
            )
        };
        let qmp = paths.qmp_socket();
        let mut client = QmpClient::connect(&qmp).await?;
        let answer = client
            .call(&cmd::HumanMonitorCommand {
                command_line: command.clone(),
            })
            .await?;
        let text = answer.trim().to_owned();
        let failed = if add {
            !text.is_empty()
        } else {
            !text.contains("removed")
        };
        if failed {
            return Err(QemuError::Qmp {
                path: qmp,
                reason: format!("{command}: {text}"),
            }
            .into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Accel;

    #[test]
    fn a_lever_undone_boots_as_kiln_did_before_it() {
        let kept = QemuBackend::new();
        let cmdline = format!(
            "console=ttyS0 quiet{} kiln.name=a",
            crate::image::SKIP_CRYPTO_TESTS
        );
        assert_eq!(kept.kernel_cmdline(cmdline.clone()), cmdline);
        assert_eq!(kept.default_cpu(Accel::Kvm), "host");

        let tests_run = QemuBackend::new().without_lever(BootLever::SkipCryptoTests);
        assert_eq!(
            tests_run.kernel_cmdline(cmdline.clone()),
            "console=ttyS0 quiet kiln.name=a"
        );
        assert_eq!(
            tests_run.default_cpu(Accel::Tcg),
            kept.default_cpu(Accel::Tcg)
        );

        let max = QemuBackend::new().without_lever(BootLever::PlainTcgCpu);
        assert_eq!(max.default_cpu(Accel::Tcg), "max");
        assert_eq!(max.default_cpu(Accel::Kvm), "host");
        assert_eq!(max.kernel_cmdline(cmdline.clone()), cmdline);
        assert!(!BootLever::PlainTcgCpu.applies_to(Accel::Kvm));
    }

    #[test]
    fn machines_from_before_the_cpu_was_recorded_ran_max_or_host() {
        let record: MachineRecord = serde_json::from_str(
            r#"{"pid": 7, "accel": "tcg", "accel_reason": "test", "started_at": 1}"#,
        )
        .unwrap();
        assert_eq!(record.cpu_model(), "max");
        let record = MachineRecord {
            accel: Accel::Kvm,
            ..record
        };
        assert_eq!(record.cpu_model(), "host");
        let record = MachineRecord {
            cpu: Some(TCG_CPU.to_owned()),
            ..record
        };
        assert_eq!(record.cpu_model(), TCG_CPU);
        assert!(serde_json::to_string(&record).unwrap().contains(TCG_CPU));
    }
}
