use std::path::{Path, PathBuf};

use crate::{Error, IoError, Result};

/// Where a Unix socket path must fit (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The directories kiln uses.
///
/// `KILN_HOME` puts everything under one directory (tests give each test its own);
/// `KILN_CACHE_DIR` moves only the image cache (tests share one). Otherwise the XDG base
/// directories are used: data in `$XDG_DATA_HOME/kiln`, images in `$XDG_CACHE_HOME/kiln`,
/// sockets in `$XDG_RUNTIME_DIR/kiln` (or the data directory when that is unset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    data: PathBuf,
    cache: PathBuf,
    runtime: PathBuf,
    /// The audit log's directory: `$XDG_STATE_HOME/kiln`, or the data directory's `state`.
    state: PathBuf,
}

impl Paths {
    /// Data in `data`, images in `cache`, sockets in `runtime`; the audit log goes in
    /// `data`'s `state` directory.
    pub fn new(data: PathBuf, cache: PathBuf, runtime: PathBuf) -> Self {
        Self {
            state: data.join("state"),
            data,
            cache,
            runtime,
        }
    }

    /// All of kiln's state under one root.
    pub fn under(root: &Path) -> Self {
        Self::new(root.join("data"), root.join("cache"), root.join("run"))
    }

    /// The directories the environment names: `KILN_HOME`, else the XDG base directories
    /// (see [`Paths`]); `KILN_CACHE_DIR` moves the image cache either way.
    pub fn from_env() -> Result<Self> {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let mut paths = if let Some(root) = var("KILN_HOME") {
            Self::under(&root)
        } else {
            let home = var("HOME").unwrap_or_else(|| PathBuf::from("/root"));
            let data = var("XDG_DATA_HOME")
                .unwrap_or_else(|| home.join(".local/share"))
                .join("kiln");
            let cache = var("XDG_CACHE_HOME")
                .unwrap_or_else(|| home.join(".cache"))
                .join("kiln");
            let runtime = var("XDG_RUNTIME_DIR")
                .map(|d| d.join("kiln"))
                .unwrap_or_else(|| data.join("run"));
            let state = var("XDG_STATE_HOME")
                .unwrap_or_else(|| home.join(".local/state"))
                .join("kiln");
            Self {
                state,
                ..Self::new(data, cache, runtime)
            }
        };
        if let Some(cache) = var("KILN_CACHE_DIR") {
            paths.cache = cache;
        }
        Ok(paths)
    }

    /// Where VMs, networks and locks live (`$XDG_DATA_HOME/kiln`).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }
    /// Where images, templates and downloaded kernel packages live (`$XDG_CACHE_HOME/kiln`).
    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }
    /// Where sockets live (`$XDG_RUNTIME_DIR/kiln`).
    pub fn runtime_dir(&self) -> &Path {
        &self.runtime
    }
    /// The audit log: one JSON line per state-changing command ([`super::audit`]).
    pub fn audit_log(&self) -> PathBuf {
        self.state.join("audit.log")
    }
    /// One directory per VM, named after it.
    pub fn vms_dir(&self) -> PathBuf {
        self.data.join("vms")
    }
    /// The libvirt URIs VMs were created on (the known-hosts list).
    pub fn hosts_file(&self) -> PathBuf {
        self.data.join("hosts.json")
    }
    /// Named networks of the daemonless backend.
    pub fn networks_dir(&self) -> PathBuf {
        self.data.join("networks")
    }
    /// Sessions' workspace images, each until its VM has it (beside `vms_dir`: linked, not
    /// copied, into the VM's directory).
    pub fn workspaces_dir(&self) -> PathBuf {
        self.data.join("workspaces")
    }
    /// Lock files: one per VM, and kiln-wide ones (networks, known hosts).
    pub fn locks_dir(&self) -> PathBuf {
        self.data.join("locks")
    }
    /// Built images, one directory per image.
    pub fn images_dir(&self) -> PathBuf {
        self.cache.join("images")
    }
    /// Sessions' workspace images kept between sessions, one directory per workspace.
    pub fn workspace_images_dir(&self) -> PathBuf {
        self.cache.join("workspaces")
    }
    /// Warm-start templates, one directory per image and machine shape.
    pub fn templates_dir(&self) -> PathBuf {
        self.cache.join("templates")
    }
    /// Downloaded Debian kernel packages that images are built from.
    pub fn debs_dir(&self) -> PathBuf {
        self.cache.join("debs")
    }

    /// The files of VM `name` (nothing is created).
    pub fn vm(&self, name: &str) -> VmPaths {
        VmPaths {
            dir: self.vms_dir().join(name),
            run: self.runtime.join("vms").join(name),
            lock: self.locks_dir().join(format!("{name}.lock")),
        }
    }
}

/// The files of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    dir: PathBuf,
    run: PathBuf,
    lock: PathBuf,
}

impl VmPaths {
    /// The VM's directory: its record, secret, disks, logs and snapshots.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// Where the VM's sockets and pidfiles live while it runs.
    pub fn run_dir(&self) -> &Path {
        &self.run
    }
    /// The file whose lock is held while a command changes the VM.
    pub fn lock(&self) -> &Path {
        &self.lock
    }
    /// The VM's record (`vm.json`).
    pub fn record(&self) -> PathBuf {
        self.dir.join("vm.json")
    }
    /// A warm-start template's RAM, which its clones map copy-on-write.
    pub fn ram_file(&self) -> PathBuf {
        self.dir.join("memory.ram")
    }
    /// The secret that authenticates clients to the VM's guest agent (random, `0600`).
    pub fn secret(&self) -> PathBuf {
        self.dir.join("secret")
    }
    /// What the VM's network boot serves over TFTP: `boot.ipxe` and links to the image.
    pub fn tftp_dir(&self) -> PathBuf {
        self.dir.join("tftp")
    }
    /// The config drive (`kiln-config`), written at each start from the record.
    pub fn config_drive(&self) -> PathBuf {
        self.dir.join("config.img")
    }
    /// The workspace drive: blank, or a session's workspace (see `image::workspace_drive`).
    pub fn workspace_drive(&self) -> PathBuf {
        self.dir.join("workspace.img")
    }
    /// The cloud-init NoCloud seed (`cidata`), written at each start from the spec.
    pub fn seed(&self) -> PathBuf {
        self.dir.join("cidata.img")
    }
    /// The FIFO QEMU writes the serial console into; a logger copies it to `serial_log`.
    pub fn console_fifo(&self) -> PathBuf {
        self.run.join("console")
    }
    /// The guest's serial console output, as copied from the console FIFO (appended, up to
    /// the backend's size cap).
    pub fn serial_log(&self) -> PathBuf {
        self.dir.join("serial.log")
    }
    /// QEMU's own log (`qemu.log`), apart from the guest's console.
    pub fn qemu_log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }
    /// QEMU's pidfile: how a running machine is found.
    pub fn pidfile(&self) -> PathBuf {
        self.run.join("qemu.pid")
    }
    /// The VM's own qcow2 file for disk `index` (a snapshot may move its writes to an
    /// overlay; see the record's `disk_files`).
    pub fn disk(&self, index: usize) -> PathBuf {
        self.dir.join(format!("disk{index}.qcow2"))
    }
    /// QEMU's QMP socket, through which kiln controls the running machine.
    pub fn qmp_socket(&self) -> PathBuf {
        self.run.join("qmp.sock")
    }
    /// Where QEMU listens for agent port `index` (the first keeps the name it had when a VM
    /// had one port).
    pub fn agent_socket(&self, index: u8) -> PathBuf {
        match index {
            0 => self.run.join("agent.sock"),
            _ => self.run.join(format!("agent.{index}.sock")),
        }
    }
    /// The file whose lock leases agent port `index` to one client at a time.
    pub fn agent_lease(&self, index: u8) -> PathBuf {
        self.run.join(format!("agent.{index}.lease"))
    }
    /// The VM's agent ports, as a client leases them.
    pub fn agent_ports(&self) -> crate::agent::LocalPorts {
        let vm = self.dir.file_name().unwrap_or_default().to_string_lossy();
        crate::agent::LocalPorts::new(&vm, |index| {
            (self.agent_socket(index), self.agent_lease(index))
        })
    }
    /// Where QEMU listens for its user-mode NIC's network process (passt).
    pub fn net_socket(&self) -> PathBuf {
        self.run.join("net.sock")
    }
    /// That network process's pid.
    pub fn net_pidfile(&self) -> PathBuf {
        self.run.join("passt.pid")
    }
    /// What that network process says.
    pub fn net_log(&self) -> PathBuf {
        self.dir.join("passt.log")
    }

    /// Refuses socket paths the kernel could not bind.
    pub fn check_socket_paths(&self) -> Result<()> {
        let last_port = self.agent_socket(kiln_proto::AGENT_PORTS - 1);
        for path in [self.qmp_socket(), last_port, self.net_socket()] {
            if path.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(Error::SocketPathTooLong {
                    path,
                    max: MAX_SOCKET_PATH,
                });
            }
        }
        Ok(())
    }

    /// Removes the VM's directories; missing ones are fine.
    pub fn remove_all(&self) -> Result<()> {
        for dir in [&self.run, &self.dir] {
            match std::fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(IoError::new("remove", dir, err).into()),
            }
        }
        Ok(())
    }
}
