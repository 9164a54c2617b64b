use std::path::PathBuf;

use crate::VmState;
use crate::agent::AgentError;
use crate::image::ImageError;
use crate::qemu::QemuError;
use crate::spec::SpecError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An IO error together with what was being done and to which path.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}", path.display())]
pub struct IoError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl IoError {
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self {
            op,
            path: path.into(),
            source,
        }
    }

    /// A closure for `map_err`: `fs::read(p).map_err(IoError::at("read", p))`.
    pub fn at(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self { op, path, source }
    }
}

/// Everything the kiln library can fail with. Match on the variant; `hint()` says what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("VM {name} already exists")]
    VmAlreadyExists { name: String },
    /// A verb this host cannot do (see [`crate::topology::Host`]).
    #[error("{verb} is not possible on {host}: {reason}")]
    Unsupported {
        verb: &'static str,
        host: String,
        reason: &'static str,
        hint: &'static str,
    },
    #[error("the benchmark's result is not valid: {reason}")]
    BenchInvalid { reason: String },
    #[error("VM {name} not found")]
    VmNotFound { name: String },
    #[error("VM {vm} has no snapshot {snapshot}")]
    SnapshotNotFound { vm: String, snapshot: String },
    #[error("VM {vm} already has a snapshot {snapshot}")]
    SnapshotExists { vm: String, snapshot: String },
    #[error("snapshot {snapshot} of {vm} cannot be restored here: {reason}")]
    IncompatibleSnapshot {
        vm: String,
        snapshot: String,
        reason: String,
    },
    #[error("VM {name} cannot go: the disks of {} read through its files", users.join(", "))]
    VmInUse { name: String, users: Vec<String> },
    #[error("snapshot {snapshot} of {vm} is still needed by {}", users.join(", "))]
    SnapshotInUse {
        vm: String,
        snapshot: String,
        users: Vec<String>,
    },
    #[error("there is a VM {name} on several hosts: {}", hosts.join(", "))]
    AmbiguousVm { name: String, hosts: Vec<String> },
    #[error("VM {vm} is placed on host {host}, which the topology does not have")]
    UnknownHost { host: String, vm: String },
    #[error("host {host} does not answer, so VM {vm} cannot be changed there: {reason}")]
    HostUnreachable {
        host: String,
        vm: String,
        reason: String,
    },
    #[error(
        "score {score} is applied in part: {} change(s) failed: {}",
        failures.len(),
        failures.join("; ")
    )]
    ApplyIncomplete {
        score: String,
        failures: Vec<String>,
    },
    #[error("{kind} {name} exists but {}", match owner { Some(o) => format!("belongs to {o}"), None => "kiln did not create it".to_owned() })]
    NotOwned {
        kind: crate::score::ResourceKind,
        name: String,
        owner: Option<String>,
    },
    #[error("VM {name} is {state}; {action} needs it {needed}")]
    WrongState {
        name: String,
        state: VmState,
        action: &'static str,
        needed: VmState,
    },
    #[error("unknown image {name} (known: {})", known.join(", "))]
    UnknownImage { name: String, known: Vec<String> },
    #[error("image {image} has no cloud-init: the VM's cloud-init data would be ignored")]
    ImageLacksCloudInit { image: String },
    #[error("cannot read secret {name} of VM {vm} from {}", path.display())]
    SecretUnreadable {
        vm: String,
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("secret {name} of VM {vm} ({}) is {size} bytes; at most {max} fit", path.display())]
    SecretTooLarge {
        vm: String,
        name: String,
        path: PathBuf,
        size: u64,
        max: u64,
    },
    #[error(
        "VM {vm}'s secrets were not declared on this machine: its libvirt definition names \
         host files, and kiln reads those only for the machine that declared them"
    )]
    SecretsNotDeclaredHere { vm: String },
    #[error("VM {name} already has a console open")]
    ConsoleBusy { name: String },
    #[error("image {name} is not built")]
    ImageNotBuilt { name: String },
    #[error("image {name} is in use by {}", vms.join(", "))]
    ImageInUse { name: String, vms: Vec<String> },
    #[error("KVM was requested but is not usable: {reason}")]
    KvmUnavailable { reason: String },
    #[error("VM {name} did not become ready: {reason}")]
    BootFailed {
        name: String,
        reason: String,
        /// The last lines the guest printed on its serial console.
        serial_tail: String,
    },
    #[error("state file {} is invalid", path.display())]
    CorruptState {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("state file {} was written by a newer kiln", path.display())]
    NewerState {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("socket path {} is longer than the {max} bytes a Unix socket allows", path.display())]
    SocketPathTooLong { path: PathBuf, max: usize },
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Qemu(#[from] QemuError),
    #[error(transparent)]
    Libvirt(#[from] crate::libvirt::LibvirtError),
    #[error(transparent)]
    Copy(#[from] crate::copy::CopyError),
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
}

impl Error {
    /// A sentence telling the user what to try next, where kiln knows one.
    pub fn hint(&self) -> Option<String> {
        let hint = match self {
            Self::Spec(err) => return err.hint(),
            Self::VmAlreadyExists { name } => {
                format!("pick another name, or remove it first with `kiln rm --force {name}`")
            }
            Self::VmNotFound { .. } => "`kiln ls` lists the VMs that exist".to_owned(),
            Self::SnapshotNotFound { vm, .. } => {
                format!("`kiln snapshot ls {vm}` lists its snapshots")
            }
            Self::SnapshotExists { .. } => "pick another snapshot name".to_owned(),
            Self::IncompatibleSnapshot { .. } => {
                "take a new snapshot with this kiln and QEMU; nothing was changed".to_owned()
            }
            Self::VmInUse { .. } => "remove the VMs cloned from its snapshots first".to_owned(),
            Self::SnapshotInUse { .. } => {
                "remove the VMs restored or cloned from it first".to_owned()
            }
            Self::AmbiguousVm { hosts, .. } => {
                let example = hosts.first().map_or("URI", String::as_str);
                format!("say which one with --connect, e.g. --connect {example}")
            }
            Self::UnknownHost { .. } => {
                "place VMs only on hosts added with MultiHost::with_host".to_owned()
            }
            Self::NotOwned { kind, name, .. } => format!(
                "kiln changes only what it owns: rename the {kind} in your score, or remove {name} yourself"
            ),
            Self::WrongState {
                name,
                needed,
                state,
                ..
            } => match needed {
                VmState::Running if *state == VmState::Paused => {
                    format!("resume it with `kiln resume {name}`")
                }
                VmState::Running => format!("start it with `kiln start {name}`"),
                VmState::Paused => format!("pause it with `kiln pause {name}`"),
                VmState::Stopped => format!("stop it with `kiln stop {name}`, or use --force"),
            },
            Self::UnknownImage { .. } => {
                "`kiln image ls` lists the images and recipes".to_owned()
            }
            Self::ImageNotBuilt { name } => format!("build it with `kiln image build {name}`"),
            Self::SecretUnreadable { .. } | Self::SecretTooLarge { .. } => {
                "a secret is a host file read at each start: make it readable by kiln, at \
                 most 64 KiB, or drop it from the spec"
                    .to_owned()
            }
            Self::SecretsNotDeclaredHere { vm } => format!(
                "start {vm} from the machine that created it, or re-apply its spec here (that \
                 declares its secrets on this machine)"
            ),
            Self::ConsoleBusy { name } => format!(
                "detach the other console (Ctrl-]) or wait for its idle timeout; `kiln exec -t \
                 {name} -- sh` opens a terminal beside it"
            ),
            Self::HostUnreachable { host, .. } => format!(
                "bring host {host} back (its SSH and libvirt daemon), then apply again: what \
                 was done on the other hosts stays done, and nothing is made twice"
            ),
            Self::ApplyIncomplete { .. } => "apply again once the hosts named answer: what \
                 was done stays done"
                .to_owned(),
            Self::Config(_) => format!(
                "fix it, or unset the variable; `kiln config show` says where each value comes \
                 from (the file: {})",
                crate::config::path().display()
            ),
            Self::ImageLacksCloudInit { .. } => {
                "use --image cloud, or a recipe that installs cloud-init".to_owned()
            }
            Self::ImageInUse { vms, .. } => {
                format!("remove those VMs first (`kiln rm {}`)", vms.join(" "))
            }
            Self::KvmUnavailable { .. } => {
                "use `--accel tcg` (or auto), and run `kiln doctor` to see why KVM is not usable"
                    .to_owned()
            }
            Self::BootFailed { name, .. } => format!(
                "see the guest console with `kiln logs {name}`; under TCG (no KVM) a boot takes seconds, so a slow machine may need a longer --boot-timeout"
            ),
            Self::CorruptState { .. } => {
                "the file was damaged: `kiln rm --force NAME` removes a VM whose record it is, `kiln image build --force` rebuilds an image".to_owned()
            }
            Self::NewerState { .. } => {
                "use the kiln that wrote it (or a newer one); this kiln left the file untouched".to_owned()
            }
            Self::SocketPathTooLong { .. } => {
                "set KILN_HOME (or XDG_RUNTIME_DIR) to a shorter directory".to_owned()
            }
            Self::Io(err) if err.source.kind() == std::io::ErrorKind::PermissionDenied => {
                format!("check the permissions of {}", err.path.display())
            }
            Self::Unsupported { hint, .. } => (*hint).to_owned(),
            Self::Io(err) if err.source.kind() == std::io::ErrorKind::NotFound => {
                format!("check the path: {} does not exist", err.path.display())
            }
            Self::Io(_) | Self::BenchInvalid { .. } => return None,
            Self::Image(err) => return err.hint(),
            Self::Agent(err) => return err.hint(),
            Self::Qemu(err) => return err.hint(),
            Self::Libvirt(err) => return err.hint(),
            Self::Copy(err) => return err.hint(),
            Self::Net(err) => return err.hint(),
        };
        Some(hint)
    }
}
