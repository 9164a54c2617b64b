use std::path::PathBuf;

use crate::VmState;
use crate::agent::AgentError;
use crate::image::ImageError;
use crate::qemu::QemuError;
use crate::spec::SpecError;

/// What kiln's operations return: [`Error`] unless a function names another error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An IO error together with what was being done and to which path.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}", path.display())]
pub struct IoError {
    /// What was being done, as the verb of the message ("read", "remove", "move into place").
    pub op: &'static str,
    /// The file or directory it was done to.
    pub path: PathBuf,
    /// The underlying IO error.
    #[source]
    pub source: std::io::Error,
}

impl IoError {
    /// Says that doing `op` to `path` failed with `source`.
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
    /// A spec, or a name given on its own, fails validation.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A VM is to be created or cloned under a name a VM already has.
    #[error("VM {name} already exists")]
    VmAlreadyExists {
        /// The name asked for.
        name: String,
    },
    /// A verb this host cannot do (see [`crate::topology::Host`]).
    #[error("{verb} is not possible on {host}: {reason}")]
    Unsupported {
        /// What was asked, e.g. "network boot".
        verb: &'static str,
        /// The host that cannot do it, named by its URI.
        host: String,
        /// Why this host cannot do it.
        reason: &'static str,
        /// What to do instead; [`Error::hint`] returns it.
        hint: &'static str,
    },
    /// A benchmark ran but its result does not count: a re-apply changed something, or the
    /// guest's workload failed.
    #[error("the benchmark's result is not valid: {reason}")]
    BenchInvalid {
        /// What went wrong in the run.
        reason: String,
    },
    /// No VM has the name asked for (on the host asked, or on any host kiln knows).
    #[error("VM {name} not found")]
    VmNotFound {
        /// The name asked for.
        name: String,
    },
    /// The VM has no snapshot of the name asked for.
    #[error("VM {vm} has no snapshot {snapshot}")]
    SnapshotNotFound {
        /// The VM whose snapshots were searched.
        vm: String,
        /// The snapshot asked for.
        snapshot: String,
    },
    /// A snapshot is to be taken under a name the VM already has a snapshot of.
    #[error("VM {vm} already has a snapshot {snapshot}")]
    SnapshotExists {
        /// The VM being snapshotted.
        vm: String,
        /// The snapshot name already taken.
        snapshot: String,
    },
    /// A snapshot cannot be restored or cloned here: another kiln or QEMU took it, the VM's
    /// machine changed since, or the clone is not supported. Nothing was changed.
    #[error("snapshot {snapshot} of {vm} cannot be restored here: {reason}")]
    IncompatibleSnapshot {
        /// The VM the snapshot belongs to.
        vm: String,
        /// The snapshot asked for.
        snapshot: String,
        /// What does not match.
        reason: String,
    },
    /// A VM cannot be removed: other VMs' disks (clones of its snapshots) read through its files.
    #[error("VM {name} cannot go: the disks of {} read through its files", users.join(", "))]
    VmInUse {
        /// The VM asked to be removed.
        name: String,
        /// The VMs that read through its files, each as "VM NAME".
        users: Vec<String>,
    },
    /// A snapshot cannot be removed: the disks of VMs or of the VM's other snapshots still
    /// read through its frozen files.
    #[error("snapshot {snapshot} of {vm} is still needed by {}", users.join(", "))]
    SnapshotInUse {
        /// The VM the snapshot belongs to.
        vm: String,
        /// The snapshot asked to be removed.
        snapshot: String,
        /// What still reads through it, each as "VM NAME" or "snapshot NAME".
        users: Vec<String>,
    },
    /// A VM looked for without naming a host is found on more than one libvirt host.
    #[error("there is a VM {name} on several hosts: {}", hosts.join(", "))]
    AmbiguousVm {
        /// The VM name asked for.
        name: String,
        /// The URIs of the hosts that have a VM of that name.
        hosts: Vec<String>,
    },
    /// A VM is placed on a host the multi-host topology does not have, or the topology has
    /// no host to place it on.
    #[error("VM {vm} is placed on host {host}, which the topology does not have")]
    UnknownHost {
        /// The host the placement names.
        host: String,
        /// The VM being placed.
        vm: String,
    },
    /// A host of a multi-host topology does not answer, so a VM that is, or may be, on it
    /// cannot be found or changed.
    #[error("host {host} does not answer, so {resource} cannot be changed there: {reason}")]
    HostUnreachable {
        /// The host that does not answer.
        host: String,
        /// What cannot be changed: `VM web-1`, `network lab`; `any VM` when no host
        /// answers.
        resource: String,
        /// Why the host did not answer, or why the change waits for it.
        reason: String,
    },
    /// Applying or destroying a score did only part of the work: some changes failed, or
    /// some hosts did not answer. What was done stays done.
    #[error(
        "score {score} is applied in part: {} change(s) failed: {}",
        failures.len(),
        failures.join("; ")
    )]
    ApplyIncomplete {
        /// The score's name.
        score: String,
        /// One line per failed change or unanswering host.
        failures: Vec<String>,
    },
    /// A resource kiln would create or change exists, but another score made it, or kiln
    /// did not make it at all.
    #[error("{kind} {name} exists but {}", match owner { Some(o) => format!("belongs to {o}"), None => "kiln did not create it".to_owned() })]
    NotOwned {
        /// What the resource is: a VM or a network.
        kind: crate::score::ResourceKind,
        /// The resource's name.
        name: String,
        /// The owner tag it carries; `None` when kiln did not create it.
        owner: Option<String>,
    },
    /// An action needs the VM in another state than the one it is in (e.g. `exec` on a
    /// stopped VM).
    #[error("VM {name} is {state}; {action} needs it {needed}")]
    WrongState {
        /// The VM the action was for.
        name: String,
        /// The state the VM is in.
        state: VmState,
        /// The action refused, by its command name ("exec", "rm", "pause").
        action: &'static str,
        /// The state the action needs.
        needed: VmState,
    },
    /// An image name that is neither `default`, a recipe, nor an image in the cache (or an
    /// invalid one); also `default` itself while its boot kit is not built.
    #[error("unknown image {name} (known: {})", known.join(", "))]
    UnknownImage {
        /// The name asked for.
        name: String,
        /// Every image name the store knows, `default` first.
        known: Vec<String>,
    },
    /// A spec carries cloud-init data, but its image has no cloud-init to read it.
    #[error("image {image} has no cloud-init: the VM's cloud-init data would be ignored")]
    ImageLacksCloudInit {
        /// The image the spec names.
        image: String,
    },
    /// A secret's host file cannot be opened or read, or is not a regular file.
    #[error("cannot read secret {name} of VM {vm} from {}", path.display())]
    SecretUnreadable {
        /// The VM the secret is for.
        vm: String,
        /// The secret's name.
        name: String,
        /// The host file it is read from.
        path: PathBuf,
        /// The underlying IO error.
        #[source]
        source: std::io::Error,
    },
    /// A secret's host file is larger than one secret may be, or with it the VM's secrets
    /// together are larger than they may be.
    #[error("secret {name} of VM {vm} ({}) is {size} bytes; at most {max} fit", path.display())]
    SecretTooLarge {
        /// The VM the secret is for.
        vm: String,
        /// The secret's name.
        name: String,
        /// The host file it is read from.
        path: PathBuf,
        /// Its size in bytes; for the total, that of the secrets read so far, this one included.
        size: u64,
        /// The limit crossed: [`crate::spec::MAX_SECRET_LEN`] or
        /// [`crate::spec::MAX_SECRETS_TOTAL`].
        max: u64,
    },
    /// A libvirt VM with secrets is created, updated or started from a machine other than
    /// the one that declared them, or its domain names secret files that machine did not.
    #[error(
        "VM {vm}'s secrets were not declared on this machine: its libvirt definition names \
         host files, and kiln reads those only for the machine that declared them"
    )]
    SecretsNotDeclaredHere {
        /// The VM whose secrets were to be read.
        vm: String,
    },
    /// Another `kiln console` holds the VM's console.
    #[error("VM {name} already has a console open")]
    ConsoleBusy {
        /// The VM whose console was asked for.
        name: String,
    },
    /// A Debian image kiln knows has no built root filesystem in the cache.
    #[error("image {name} is not built")]
    ImageNotBuilt {
        /// The image asked for.
        name: String,
    },
    /// An image cannot be removed while VMs use it.
    #[error("image {name} is in use by {}", vms.join(", "))]
    ImageInUse {
        /// The image asked to be removed.
        name: String,
        /// The VMs made from it.
        vms: Vec<String>,
    },
    /// KVM was asked for explicitly, but this host cannot provide it.
    #[error("KVM was requested but is not usable: {reason}")]
    KvmUnavailable {
        /// Why the probe found KVM unusable.
        reason: String,
    },
    /// A VM did not get ready: its agent did not answer in time, its machine stopped, or a
    /// restored machine did not load its saved state.
    #[error("VM {name} did not become ready: {reason}")]
    BootFailed {
        /// The VM that was booting.
        name: String,
        /// What went wrong, e.g. the agent's last connection error.
        reason: String,
        /// The last lines the guest printed on its serial console.
        serial_tail: String,
    },
    /// A state file kiln keeps (a VM record, an image manifest) does not parse, so it is
    /// taken as damaged; also a value that cannot be serialized to be written there.
    #[error("state file {} is invalid", path.display())]
    CorruptState {
        /// The state file.
        path: PathBuf,
        /// The underlying JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A state file has fields this kiln does not know: a newer kiln wrote it.
    #[error("state file {} was written by a newer kiln", path.display())]
    NewerState {
        /// The state file.
        path: PathBuf,
        /// The underlying JSON error (an unknown field).
        #[source]
        source: serde_json::Error,
    },
    /// A VM's QMP, agent or network socket path is longer than a Unix socket address holds.
    #[error("socket path {} is longer than the {max} bytes a Unix socket allows", path.display())]
    SocketPathTooLong {
        /// The socket path that is too long.
        path: PathBuf,
        /// The longest path, in bytes, that a socket can bind.
        max: usize,
    },
    /// A file or directory operation failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The config file or a config variable holds something kiln cannot read.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Building or finding an image failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Talking to a guest's agent failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// Running or controlling QEMU (or qemu-img) failed.
    #[error(transparent)]
    Qemu(#[from] QemuError),
    /// Talking to libvirt failed.
    #[error(transparent)]
    Libvirt(#[from] crate::libvirt::LibvirtError),
    /// Copying files to or from a guest failed.
    #[error(transparent)]
    Copy(#[from] crate::copy::CopyError),
    /// Creating, changing or using a named network failed.
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
