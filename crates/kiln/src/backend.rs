//! Backends run a VM's machine. The trait is deliberately narrow: start the machine, tell
//! whether it runs, kill it. Everything a guest does goes through the agent, which is the same
//! on every backend.

use async_trait::async_trait;

use crate::image::Image;
use crate::spec::PortForward;
use crate::state::{MachineRecord, VmPaths};
use crate::{Accel, Result, VmSpec};

/// Everything a backend needs to start a VM's machine.
#[derive(Debug)]
pub struct Launch<'a> {
    pub spec: &'a VmSpec,
    /// The VM's id, for its config drive.
    pub id: &'a str,
    pub image: &'a Image,
    pub paths: &'a VmPaths,
    pub accel: Accel,
    pub accel_reason: &'a str,
    /// NICs on named networks, in the order of the spec's named NICs.
    pub attachments: &'a [crate::net::NicAttachment],
    /// The file each disk writes to.
    pub disks: &'a [std::path::PathBuf],
    /// Start from this saved memory state instead of booting.
    pub incoming: Option<&'a std::path::Path>,
    /// Where the guest's RAM lives.
    pub memory: Memory<'a>,
    /// A session's workspace image, to be the workspace drive (else the drive is kept, or
    /// made blank).
    pub workspace: Option<&'a std::path::Path>,
    /// The guest CPU model: a saved machine's, which its state must be loaded into; `None`
    /// for the backend's own ([`Backend::cpu_model`]).
    pub cpu: Option<&'a str>,
}

/// Where a machine's RAM lives. Warm starts share one template's RAM between its clones:
/// the template writes its RAM to a file, its saved state leaves RAM out, and each clone maps
/// the file copy-on-write, so pages no clone wrote are in memory once for all of them
/// (QEMU's "VM templating").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memory<'a> {
    /// Anonymous memory of its own.
    Private,
    /// The file at this path, written through (a template, which never runs again once saved).
    SharedFile(&'a std::path::Path),
    /// A private, copy-on-write mapping of this template RAM file, which stays unchanged.
    CopyOf(&'a std::path::Path),
}

#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Refuses a spec this backend cannot run, before anything is created.
    fn check(&self, spec: &VmSpec) -> Result<()>;

    /// Prepares what the VM needs on disk the first time: a file for each of the machine's
    /// disks (a Debian image's root disk first, see [`crate::image::machine_disks`]).
    async fn create(&self, disks: &[crate::DiskSpec], paths: &VmPaths) -> Result<()>;

    /// Starts the machine and returns once its process runs (not once the guest booted).
    async fn start(&self, launch: &Launch<'_>) -> Result<MachineRecord>;

    /// The pid of the VM's live machine process, found from what the backend left on disk
    /// (so a machine started by a kiln that died before recording it is still found).
    async fn running_pid(&self, paths: &VmPaths) -> Option<u32>;

    /// Ends the machine now: a clean quit if it answers, else a kill. No machine is fine.
    async fn kill(&self, paths: &VmPaths) -> Result<()>;

    /// Ends the machine at once, without a quit: none of its devices runs again, so nothing
    /// more is written to its RAM (a template's, which clones map, must stay as saved).
    async fn kill_at_once(&self, paths: &VmPaths) -> Result<()>;

    /// The CPU time the machine's process has used: how a boot that makes no progress is
    /// told from one that is merely slow on a busy host.
    fn cpu_time(&self, pid: u32) -> Option<std::time::Duration> {
        process_cpu_time(pid)
    }

    /// The hypervisor's version (recorded in snapshots: a restore needs the same).
    async fn version(&self) -> Result<String>;

    /// The guest CPU model a machine started now with `accel` gets (recorded in snapshots
    /// and templates: saved state loads only into the model it was saved from).
    fn cpu_model(&self, accel: crate::Accel) -> String;

    /// Creates a qcow2 overlay at `path` on top of `base`.
    async fn create_overlay(&self, base: &std::path::Path, path: &std::path::Path) -> Result<()>;

    /// Creates a qcow2 overlay at `path` whose backing file is the raw image `base`.
    async fn create_overlay_on_raw(
        &self,
        base: &std::path::Path,
        path: &std::path::Path,
    ) -> Result<()>;

    /// Every file a disk image reads through: itself, its backing file, and so on.
    async fn backing_chain(&self, file: &std::path::Path) -> Result<Vec<std::path::PathBuf>>;

    /// Stops (or resumes) the machine's vCPUs.
    async fn set_paused(&self, paths: &VmPaths, paused: bool) -> Result<()>;

    /// Waits until a machine started with [`Launch::incoming`] has loaded that state (it is
    /// paused then, as it was saved); `state` names the file in errors.
    async fn wait_loaded(
        &self,
        paths: &VmPaths,
        state: &std::path::Path,
        timeout: std::time::Duration,
    ) -> Result<()>;

    /// Whether a running machine's vCPUs are stopped.
    async fn is_paused(&self, paths: &VmPaths) -> bool;

    /// Saves the paused machine's memory and device state to `memory`, then moves each disk
    /// (`disk{i}` to `overlays[i]`, which exist already, on the file it writes) onto its
    /// overlay, freezing the file it wrote to. The memory's bytes go to `meter` as they are
    /// written.
    async fn save_state(
        &self,
        paths: &VmPaths,
        memory: &std::path::Path,
        overlays: &[std::path::PathBuf],
        meter: &mut crate::progress::Meter<'_>,
    ) -> Result<()>;

    /// Adds (or removes) a port forward on the running machine's user-mode NIC.
    async fn set_forward(&self, paths: &VmPaths, forward: &PortForward, add: bool) -> Result<()>;
}

/// User plus system time of a process, from `/proc/PID/stat` (in USER_HZ ticks, which Linux
/// fixes at 100 per second for user space).
pub fn process_cpu_time(pid: u32) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After "pid (comm) ": state is field 3, utime 14 and stime 15.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(std::time::Duration::from_millis((utime + stime) * 10))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn cpu_time_of_this_process_grows() {
        let pid = std::process::id();
        let before = super::process_cpu_time(pid).unwrap();
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(200) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(super::process_cpu_time(pid).unwrap() > before);
        assert!(super::process_cpu_time(u32::MAX).is_none());
    }
}
