//! The libvirt boundary: one connection (local or remote URI) through the `virt` crate's native
//! bindings, never `virsh`. Its calls block, so each runs on tokio's blocking pool.
//!
//! libvirt is the source of truth for what exists: kiln tags what it owns with a metadata
//! element (owner and spec) in the domain or network document, and reads it back to plan.

mod channel;
mod domain;
mod network;
mod snapshot;
mod storage;
pub(crate) mod xml;

pub(crate) use channel::ChannelPorts;
pub use domain::DomainState;
pub use network::NetworkState;

use std::sync::{Arc, Once};

use log::info;
use virt::connect::Connect;
use virt::enumutil::Enum;
use virt::error::ErrorNumber;

pub use snapshot::SnapshotObserved;
pub(crate) use xml::{
    DomainDef, DomainDisk, DomainNic, DomainShare, KernelBoot, KilnTag, VolumeFormat,
};

/// How long opening a connection may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// What can go wrong talking to libvirt. Each variant names the URI and the object.
#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    /// The connection could not be opened, or did not open within 20 s.
    #[error("cannot connect to libvirt at {uri}: {message}")]
    Connect {
        /// The URI that was opened.
        uri: String,
        /// libvirt's error, or the timeout.
        message: String,
    },
    /// A libvirt call on an open connection failed.
    #[error("libvirt ({uri}): cannot {op} {object}: {message}")]
    Call {
        /// The connection's URI.
        uri: String,
        /// What kiln tried to do, as a verb phrase (`read`, `start domain`).
        op: &'static str,
        /// What it tried to do it to, in words.
        object: String,
        /// libvirt's error message.
        message: String,
    },
    /// An XML document (or the JSON kiln keeps in its metadata) could not be written or
    /// parsed.
    #[error("invalid libvirt XML: {0}")]
    Xml(String),
    /// The new VMs' disks need more space than kiln's storage pool has free.
    #[error("storage pool {pool} on {uri} has {available} bytes free; the new disks need {needed}")]
    PoolTooSmall {
        /// The connection's URI.
        uri: String,
        /// The name of kiln's storage pool.
        pool: String,
        /// The disks' total size, in bytes.
        needed: u64,
        /// The pool's free space, in bytes.
        available: u64,
    },
    /// The domain has no agent port, or kiln's metadata holds no agent secret for it.
    #[error("domain {name} on {uri} has no kiln agent channel (or no secret)")]
    NoAgentChannel {
        /// The connection's URI.
        uri: String,
        /// The domain's name.
        name: String,
    },
    /// A VM spec asks for port forwards, which only the daemonless backend provides.
    #[error("VM {name}: port forwards need the daemonless backend's user-mode NIC")]
    PortForwardUnsupported {
        /// The VM that asks for them.
        name: String,
    },
    /// Something libvirt cannot do for this VM, refused before anything is changed.
    #[error("VM {name} on {uri}: {what} is not possible: {reason}")]
    Unsupported {
        /// The connection's URI.
        uri: String,
        /// The VM's name.
        name: String,
        /// What was asked for, in words.
        what: &'static str,
        /// Why libvirt cannot do it.
        reason: &'static str,
        /// What to do instead; [`hint`](LibvirtError::hint) returns it.
        hint: &'static str,
    },
}

impl LibvirtError {
    /// What the user can do about this error, where there is something to say.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Self::Connect { uri, .. } if uri.starts_with("qemu:///system") || uri.is_empty() => {
                "start the daemons (`virtlogd -d && libvirtd -d`) or install them with scripts/setup.sh; `kiln doctor --connect URI` checks the connection".to_owned()
            }
            Self::Connect { .. } => {
                "check the URI and that libvirtd listens there; `kiln doctor --connect URI` checks it".to_owned()
            }
            Self::PoolTooSmall { .. } => "free space in the pool or ask for smaller disks".to_owned(),
            Self::PortForwardUnsupported { .. } => {
                "on libvirt, reach guests through their named network's addresses".to_owned()
            }
            Self::Unsupported { hint, .. } => (*hint).to_owned(),
            Self::NoAgentChannel { .. } => {
                "only domains kiln created (with the kiln image) have an agent".to_owned()
            }
            _ => return None,
        })
    }
}

/// Where kiln keeps volumes and logs on a libvirt host.
#[derive(Debug, Clone)]
pub struct LibvirtOptions {
    /// The name of kiln's directory storage pool.
    pub(crate) pool_name: String,
    /// Its directory on the libvirt host.
    pub(crate) pool_path: String,
    /// Whether serial consoles are logged, as `<vm>-serial.log` in the pool's directory: the
    /// storage API then removes a log on any host, remote ones included.
    pub(crate) log_serial: bool,
}

/// The user a remote URI logs in as: `alice` in `qemu+ssh://alice@host/session`.
fn remote_user(uri: &str) -> Option<&str> {
    let authority = uri.split_once("://")?.1.split('/').next()?;
    let (user, _) = authority.split_once('@')?;
    (!user.is_empty()).then_some(user)
}

impl LibvirtOptions {
    /// Volumes in the directory pool `pool_name`, kept in `pool_path` on the libvirt host,
    /// with serial consoles logged there.
    pub fn new(pool_name: impl Into<String>, pool_path: impl Into<String>) -> Self {
        Self {
            pool_name: pool_name.into(),
            pool_path: pool_path.into(),
            log_serial: true,
        }
    }

    /// Whether serial consoles are logged, as `<vm>-serial.log` in the pool's directory.
    pub fn log_serial(mut self, log: bool) -> Self {
        self.log_serial = log;
        self
    }

    /// The name of kiln's storage pool.
    pub fn pool_name(&self) -> &str {
        &self.pool_name
    }

    /// The pool's directory on the libvirt host.
    pub fn pool_path(&self) -> &str {
        &self.pool_path
    }

    /// The defaults for a URI:
    /// kiln's pool on the host of `uri`: `KILN_LIBVIRT_POOL` names it (default `kiln`);
    /// its directory is under /var/lib/libvirt/images for a system daemon, the user's
    /// `~/.local/share/libvirt/images` for a session daemon, or `KILN_LIBVIRT_POOL_PATH`.
    pub fn for_uri(uri: &str) -> Self {
        let system = uri.contains("/system");
        let pool = std::env::var("KILN_LIBVIRT_POOL")
            .ok()
            .filter(|p| crate::spec::validate_name(p).is_ok())
            .unwrap_or_else(|| "kiln".to_owned());
        Self {
            pool_path: if uri.starts_with("test:") {
                "/kiln-test-pool".to_owned()
            } else if system {
                format!("/var/lib/libvirt/images/{pool}")
            } else if let Ok(path) = std::env::var("KILN_LIBVIRT_POOL_PATH")
                && path.starts_with('/')
            {
                path
            } else {
                // A session daemon's pool is its user's: on another machine (`user@host`),
                // that user's home there, not ours.
                let home = match remote_user(uri) {
                    Some("root") => "/root".to_owned(),
                    Some(user) => format!("/home/{user}"),
                    None => std::env::var("HOME").unwrap_or_else(|_| "/tmp".to_owned()),
                };
                format!("{home}/.local/share/libvirt/images/{pool}")
            },
            pool_name: pool,
            log_serial: !uri.starts_with("test:"),
        }
    }
}

/// One libvirt connection. Cheap to clone; calls run on the blocking pool.
#[derive(Clone)]
pub struct LibvirtConn {
    inner: Arc<Inner>,
}

struct Inner {
    uri: String,
    conn: Connect,
    options: LibvirtOptions,
}

impl std::fmt::Debug for LibvirtConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibvirtConn")
            .field("uri", &self.inner.uri)
            .field("options", &self.inner.options)
            .finish()
    }
}

fn is_code(err: &virt::error::Error, code: ErrorNumber) -> bool {
    err.code() == Enum::Known(code)
}

impl LibvirtConn {
    /// Opens `uri` read-write (`qemu:///system`, `qemu+ssh://host/system`, `test:///default`).
    pub async fn open(uri: &str) -> Result<Self, LibvirtError> {
        Self::open_with(uri, LibvirtOptions::for_uri(uri)).await
    }

    /// Opens `uri` read-write, keeping volumes and logs where `options` say.
    pub async fn open_with(uri: &str, options: LibvirtOptions) -> Result<Self, LibvirtError> {
        static QUIET: Once = Once::new();
        // libvirt prints every error to stderr by default; kiln reports them itself.
        QUIET.call_once(virt::error::clear_error_callback);
        // Before the connection opens, so its socket is watched (agent channel streams).
        channel::ensure_event_loop();
        let owned = uri.to_owned();
        let opening = tokio::task::spawn_blocking(move || Connect::open(Some(&owned)));
        // An unreachable remote host (a dropped SSH or TCP connection) can block for minutes.
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, opening)
            .await
            .map_err(|_| LibvirtError::Connect {
                uri: uri.to_owned(),
                message: format!("no answer within {CONNECT_TIMEOUT:?}"),
            })?
            .map_err(|err| LibvirtError::Connect {
                uri: uri.to_owned(),
                message: err.to_string(),
            })?
            .map_err(|err| LibvirtError::Connect {
                uri: uri.to_owned(),
                message: err.message().to_owned(),
            })?;
        info!("connected to libvirt at {uri}");
        Ok(Self {
            inner: Arc::new(Inner {
                uri: uri.to_owned(),
                conn,
                options,
            }),
        })
    }

    /// The URI this connection was opened with.
    pub fn uri(&self) -> &str {
        &self.inner.uri
    }

    /// Where kiln keeps volumes and logs on this connection's host.
    pub fn options(&self) -> &LibvirtOptions {
        &self.inner.options
    }

    /// Whether this is libvirt's test driver, which keeps state in memory and runs no guest.
    pub fn is_test_driver(&self) -> bool {
        self.inner.uri.starts_with("test:")
    }

    /// Whether the libvirt host is this machine (files it names can be read here).
    pub fn is_local(&self) -> bool {
        let uri = &self.inner.uri;
        uri.starts_with("qemu:///") || uri.starts_with("qemu+unix:///")
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn call<T, F>(&self, f: F) -> Result<T, LibvirtError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, LibvirtError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|err| LibvirtError::Call {
                uri: self.inner.uri.clone(),
                op: "run",
                object: "a libvirt call".to_owned(),
                message: err.to_string(),
            })?
    }

    /// The hypervisor's version and the host name, for `doctor`.
    pub async fn describe(&self) -> Result<(String, String), LibvirtError> {
        self.call(|inner| {
            let hostname = inner
                .conn
                .hostname()
                .map_err(inner.err("read", "the host name"))?;
            let version = inner
                .conn
                .lib_version()
                .map_err(inner.err("read", "the version"))?;
            let version = format!(
                "libvirt {}.{}.{}",
                version / 1_000_000,
                version / 1000 % 1000,
                version % 1000
            );
            Ok((version, hostname))
        })
        .await
    }
}

impl Inner {
    /// A closure turning a libvirt error into a [`LibvirtError::Call`] about `object`.
    fn err(
        &self,
        op: &'static str,
        object: &str,
    ) -> impl FnOnce(virt::error::Error) -> LibvirtError {
        let uri = self.uri.clone();
        let object = object.to_owned();
        move |err| LibvirtError::Call {
            uri,
            op,
            object,
            message: err.message().to_owned(),
        }
    }
}
