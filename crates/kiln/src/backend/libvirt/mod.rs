//! The libvirt boundary: one connection (local or remote URI) through the `virt` crate's native
//! bindings, never `virsh`. Its calls block, so each runs on tokio's blocking pool.
//!
//! libvirt is the source of truth for what exists: kiln tags what it owns with a metadata
//! element (owner and spec) in the domain or network document, and reads it back to plan.

mod channel;
pub use channel::ChannelPorts;
mod snapshot;
pub mod xml;

use std::path::Path;
use std::sync::{Arc, Once};

use log::{debug, info, warn};
use virt::connect::Connect;
use virt::domain::Domain;
use virt::enumutil::Enum;
use virt::error::ErrorNumber;
use virt::network::Network;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;
use virt::sys;

pub use snapshot::SnapshotObserved;
pub use xml::{DomainDef, DomainDisk, DomainNic, DomainShare, KernelBoot, KilnTag, VolumeFormat};

/// How long opening a connection may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// What can go wrong talking to libvirt. Each variant names the URI and the object.
#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    #[error("cannot connect to libvirt at {uri}: {message}")]
    Connect { uri: String, message: String },
    #[error("libvirt ({uri}): cannot {op} {object}: {message}")]
    Call {
        uri: String,
        op: &'static str,
        object: String,
        message: String,
    },
    #[error("invalid libvirt XML: {0}")]
    Xml(String),
    #[error("storage pool {pool} on {uri} has {available} bytes free; the new disks need {needed}")]
    PoolTooSmall {
        uri: String,
        pool: String,
        needed: u64,
        available: u64,
    },
    #[error("domain {name} on {uri} has no kiln agent channel (or no secret)")]
    NoAgentChannel { uri: String, name: String },
    #[error("VM {name}: port forwards need the daemonless backend's user-mode NIC")]
    PortForwardUnsupported { name: String },
    #[error("VM {name} on {uri}: {what} is not possible: {reason}")]
    Unsupported {
        uri: String,
        name: String,
        what: &'static str,
        reason: &'static str,
        hint: &'static str,
    },
}

impl LibvirtError {
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
    pub pool_name: String,
    /// Its directory on the libvirt host.
    pub pool_path: String,
    /// Whether serial consoles are logged, as `<vm>-serial.log` in the pool's directory: the
    /// storage API then removes a log on any host, remote ones included.
    pub log_serial: bool,
}

impl LibvirtOptions {
    /// The defaults for a URI: a `kiln` pool under libvirt's image directory; serial logs
    /// beside libvirt's own for system connections.
    pub fn for_uri(uri: &str) -> Self {
        let system = uri.contains("/system");
        Self {
            pool_name: "kiln".to_owned(),
            pool_path: if uri.starts_with("test:") {
                "/kiln-test-pool".to_owned()
            } else if system {
                "/var/lib/libvirt/images/kiln".to_owned()
            } else {
                let home = std::env::var("HOME").unwrap_or_else(|_| "/tmp".to_owned());
                format!("{home}/.local/share/libvirt/images/kiln")
            },
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

/// A domain as kiln sees it.
#[derive(Debug, Clone)]
pub struct DomainState {
    pub name: String,
    pub active: bool,
    /// Active with its vCPUs suspended.
    pub paused: bool,
    pub observed: xml::DomainObserved,
}

/// A network as kiln sees it.
#[derive(Debug)]
pub struct NetworkState {
    pub name: String,
    pub active: bool,
    pub observed: xml::NetworkObserved,
}

/// Bytes per stream message when uploading.
const UPLOAD_CHUNK: usize = 1 << 20;

fn is_code(err: &virt::error::Error, code: ErrorNumber) -> bool {
    err.code() == Enum::Known(code)
}

impl LibvirtConn {
    /// Opens `uri` read-write (`qemu:///system`, `qemu+ssh://host/system`, `test:///default`).
    pub async fn open(uri: &str) -> Result<Self, LibvirtError> {
        Self::open_with(uri, LibvirtOptions::for_uri(uri)).await
    }

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

    pub fn uri(&self) -> &str {
        &self.inner.uri
    }

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

    // --- storage -------------------------------------------------------------------------

    /// Defines, builds and starts kiln's directory pool when it is not already active.
    pub async fn ensure_pool_active(&self) -> Result<(), LibvirtError> {
        self.call(|inner| inner.pool().map(drop)).await
    }

    /// Free bytes in kiln's pool.
    pub async fn pool_available(&self) -> Result<u64, LibvirtError> {
        self.call(|inner| {
            let pool = inner.pool()?;
            pool.refresh(0).map_err(inner.err("refresh", "the pool"))?;
            Ok(pool
                .info()
                .map_err(inner.err("read", "the pool"))?
                .available)
        })
        .await
    }

    /// Whether kiln's pool is defined.
    pub async fn pool_exists(&self) -> Result<bool, LibvirtError> {
        self.call(|inner| Ok(inner.lookup_pool()?.is_some())).await
    }

    /// The names of the volumes in kiln's pool (none when the pool is absent or stopped).
    pub async fn list_volumes(&self) -> Result<Vec<String>, LibvirtError> {
        self.call(|inner| {
            let Some(pool) = inner.lookup_pool()? else {
                return Ok(Vec::new());
            };
            if !pool.is_active().map_err(inner.err("read", "the pool"))? {
                return Ok(Vec::new());
            }
            pool.refresh(0).map_err(inner.err("refresh", "the pool"))?;
            pool.list_volumes().map_err(inner.err("list", "volumes"))
        })
        .await
    }

    /// Creates a volume unless one of that name exists; returns its path on the host.
    pub async fn ensure_volume(
        &self,
        name: &str,
        capacity: u64,
        format: VolumeFormat,
        backing: Option<&Path>,
    ) -> Result<String, LibvirtError> {
        let name = name.to_owned();
        let backing = backing.map(|p| p.to_string_lossy().into_owned());
        self.call(move |inner| {
            let pool = inner.pool()?;
            if let Some(vol) = inner.volume(&pool, &name)? {
                return vol.path().map_err(inner.err("read", &name));
            }
            let doc = xml::volume_xml(&name, capacity, format, backing.as_deref())?;
            let vol = StorageVol::create_xml(&pool, &doc, 0)
                .map_err(inner.err("create volume", &name))?;
            debug!("created volume {name} on {}", inner.uri);
            vol.path().map_err(inner.err("read", &name))
        })
        .await
    }

    /// Deletes a volume; a missing one is fine.
    pub async fn delete_volume(&self, name: &str) -> Result<(), LibvirtError> {
        let name = name.to_owned();
        self.call(move |inner| {
            let pool = inner.pool()?;
            if let Some(vol) = inner.volume(&pool, &name)? {
                vol.delete(sys::VIR_STORAGE_VOL_DELETE_NORMAL)
                    .map_err(inner.err("delete volume", &name))?;
                debug!("deleted volume {name} on {}", inner.uri);
            }
            Ok(())
        })
        .await
    }

    /// Uploads a local file into a new raw volume (replacing one of that name). Returns the
    /// volume's path, and whether the content went up: the test driver takes no uploads.
    pub async fn upload_volume(
        &self,
        name: &str,
        file: &Path,
    ) -> Result<(String, bool), LibvirtError> {
        let data = std::fs::read(file).map_err(|err| LibvirtError::Call {
            uri: self.uri().to_owned(),
            op: "read",
            object: file.display().to_string(),
            message: err.to_string(),
        })?;
        self.upload_bytes(name, data, false).await
    }

    /// Writes `data` into a new raw volume (replacing one of that name); `private` makes it
    /// `0600`. Returns the volume's path, and whether the content went up.
    pub async fn upload_bytes(
        &self,
        name: &str,
        data: Vec<u8>,
        private: bool,
    ) -> Result<(String, bool), LibvirtError> {
        let name = name.to_owned();
        self.call(move |inner| {
            let pool = inner.pool()?;
            if let Some(old) = inner.volume(&pool, &name)? {
                old.delete(sys::VIR_STORAGE_VOL_DELETE_NORMAL)
                    .map_err(inner.err("delete volume", &name))?;
            }
            let len = data.len() as u64;
            let doc = if private {
                xml::private_volume_xml(&name, len.max(1))?
            } else {
                xml::volume_xml(&name, len.max(1), VolumeFormat::Raw, None)?
            };
            let vol = StorageVol::create_xml(&pool, &doc, 0)
                .map_err(inner.err("create volume", &name))?;
            let path = vol.path().map_err(inner.err("read", &name))?;
            let stream =
                Stream::new(&inner.conn, 0).map_err(inner.err("open a stream for", &name))?;
            if let Err(err) = vol.upload(&stream, 0, len, 0) {
                if is_code(&err, ErrorNumber::NoSupport) {
                    warn!("{} takes no uploads: volume {name} stays empty", inner.uri);
                    return Ok((path, false));
                }
                return Err(inner.err("upload to", &name)(err));
            }
            // libvirt's RPC messages carry at most 32 MiB: send in small pieces.
            for chunk in data.chunks(UPLOAD_CHUNK) {
                let mut sent = 0;
                while sent < chunk.len() {
                    let n = stream
                        .send(&chunk[sent..])
                        .map_err(inner.err("upload to", &name))?;
                    sent += usize::try_from(n).unwrap_or(0).max(1);
                }
            }
            stream
                .finish()
                .map_err(inner.err("finish the upload to", &name))?;
            debug!("uploaded {len} bytes to {name}");
            Ok((path, true))
        })
        .await
    }

    /// Reads a volume from `offset` to its end, at most `max` bytes; `None` when there is no
    /// such volume. Works on remote hosts (it is how `kiln logs` reads a console log there).
    pub async fn read_volume(
        &self,
        name: &str,
        offset: u64,
        max: usize,
    ) -> Result<Option<Vec<u8>>, LibvirtError> {
        let name = name.to_owned();
        self.call(move |inner| {
            let Some(pool) = inner.lookup_pool()? else {
                return Ok(None);
            };
            // A file that grew (a log) shows its new size only after a refresh.
            pool.refresh(0).map_err(inner.err("refresh", "the pool"))?;
            let Some(vol) = inner.volume(&pool, &name)? else {
                return Ok(None);
            };
            let size = vol.info().map_err(inner.err("read", &name))?.capacity;
            if offset >= size {
                return Ok(Some(Vec::new()));
            }
            let length = (size - offset).min(max as u64);
            let stream =
                Stream::new(&inner.conn, 0).map_err(inner.err("open a stream for", &name))?;
            vol.download(&stream, offset, length, 0)
                .map_err(inner.err("download", &name))?;
            let mut data = Vec::new();
            let mut buf = vec![0u8; UPLOAD_CHUNK];
            loop {
                let n = stream
                    .recv(&mut buf)
                    .map_err(inner.err("download", &name))?;
                let Ok(n) = usize::try_from(n) else { break };
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
            }
            stream
                .finish()
                .map_err(inner.err("finish the download of", &name))?;
            Ok(Some(data))
        })
        .await
    }

    /// Removes kiln's pool if no volume is left in it.
    pub async fn remove_pool_if_empty(&self) -> Result<bool, LibvirtError> {
        self.call(|inner| {
            let Some(pool) = inner.lookup_pool()? else {
                return Ok(false);
            };
            if pool.is_active().map_err(inner.err("read", "the pool"))? {
                pool.refresh(0).map_err(inner.err("refresh", "the pool"))?;
                if !pool
                    .list_volumes()
                    .map_err(inner.err("list", "volumes"))?
                    .is_empty()
                {
                    return Ok(false);
                }
                pool.destroy().map_err(inner.err("stop", "the pool"))?;
            }
            // Removes the (empty) directory; libvirt does this only for a stopped pool.
            if let Err(err) = pool.delete(0) {
                debug!("deleting the pool directory: {}", err.message());
            }
            pool.undefine().map_err(inner.err("undefine", "the pool"))?;
            Ok(true)
        })
        .await
    }

    // --- domains -------------------------------------------------------------------------

    pub async fn domain(&self, name: &str) -> Result<Option<DomainState>, LibvirtError> {
        let name = name.to_owned();
        self.call(move |inner| match inner.lookup_domain(&name)? {
            Some(dom) => inner.domain_state(&dom, &name),
            None => Ok(None),
        })
        .await
    }

    /// Every domain kiln tagged, with its state.
    pub async fn kiln_domains(&self) -> Result<Vec<DomainState>, LibvirtError> {
        let mut domains = self.domains().await?;
        domains.retain(|d| d.observed.tag.is_some());
        Ok(domains)
    }

    /// Every domain on the host, kiln's or not, with its state.
    pub async fn domains(&self) -> Result<Vec<DomainState>, LibvirtError> {
        self.call(|inner| {
            let domains = inner
                .conn
                .list_all_domains(0)
                .map_err(inner.err("list", "domains"))?;
            let mut states = Vec::new();
            for dom in domains {
                let name = dom.name().map_err(inner.err("read", "a domain name"))?;
                states.extend(inner.domain_state(&dom, &name)?);
            }
            states.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(states)
        })
        .await
    }

    /// Defines (or redefines) a persistent domain.
    pub async fn define_domain(&self, def: &DomainDef) -> Result<(), LibvirtError> {
        let doc = def.to_xml()?;
        let name = def.name.clone();
        self.call(move |inner| {
            inner
                .conn
                .define_domain_xml(&doc)
                .map_err(inner.err("define domain", &name))?;
            Ok(())
        })
        .await
    }

    pub async fn start_domain(&self, name: &str) -> Result<(), LibvirtError> {
        let name = name.to_owned();
        self.call(move |inner| {
            let dom = inner.require_domain(&name)?;
            if !dom.is_active().map_err(inner.err("read", &name))? {
                dom.create().map_err(inner.err("start domain", &name))?;
            }
            Ok(())
        })
        .await
    }

    /// Suspends (or resumes) a running domain's vCPUs.
    pub async fn set_suspended(&self, name: &str, suspended: bool) -> Result<(), LibvirtError> {
        let name = name.to_owned();
        self.call(move |inner| {
            let dom = inner.require_domain(&name)?;
            if suspended {
                dom.suspend().map_err(inner.err("suspend", &name))
            } else {
                dom.resume().map_err(inner.err("resume", &name))
            }
        })
        .await
    }

    /// Powers a domain off at once (like pulling the plug); an inactive one is fine.
    pub async fn destroy_domain(&self, name: &str) -> Result<(), LibvirtError> {
        let name = name.to_owned();
        self.call(move |inner| {
            if let Some(dom) = inner.lookup_domain(&name)?
                && dom.is_active().map_err(inner.err("read", &name))?
                && let Err(err) = dom.destroy()
                && !is_code(&err, ErrorNumber::OperationInvalid)
            {
                return Err(inner.err("stop domain", &name)(err));
            }
            Ok(())
        })
        .await
    }

    /// Stops and undefines a domain; a missing one is fine.
    pub async fn undefine_domain(&self, name: &str) -> Result<(), LibvirtError> {
        self.destroy_domain(name).await?;
        let name = name.to_owned();
        self.call(move |inner| {
            if let Some(dom) = inner.lookup_domain(&name)? {
                // Internal snapshots live in the disks, which go with the VM.
                dom.undefine_flags(
                    sys::VIR_DOMAIN_UNDEFINE_NVRAM | sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA,
                )
                .or_else(|_| dom.undefine())
                .map_err(inner.err("undefine domain", &name))?;
                debug!("undefined domain {name} on {}", inner.uri);
            }
            Ok(())
        })
        .await
    }

    // --- networks ------------------------------------------------------------------------

    pub async fn network(&self, name: &str) -> Result<Option<NetworkState>, LibvirtError> {
        let name = name.to_owned();
        self.call(move |inner| match inner.lookup_network(&name)? {
            Some(net) => inner.network_state(&net, &name),
            None => Ok(None),
        })
        .await
    }

    /// Every network on the host, kiln's or not (for subnet checks).
    pub async fn networks(&self) -> Result<Vec<NetworkState>, LibvirtError> {
        self.call(|inner| {
            let nets = inner
                .conn
                .list_all_networks(0)
                .map_err(inner.err("list", "networks"))?;
            let mut states = Vec::new();
            for net in nets {
                let name = net.name().map_err(inner.err("read", "a network name"))?;
                states.extend(inner.network_state(&net, &name)?);
            }
            states.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(states)
        })
        .await
    }

    /// Defines a persistent network from its document (not yet started).
    pub async fn define_network(&self, name: &str, doc: String) -> Result<(), LibvirtError> {
        let name = name.to_owned();
        self.call(move |inner| {
            inner
                .conn
                .define_network_xml(&doc)
                .map_err(inner.err("define network", &name))?;
            Ok(())
        })
        .await
    }

    /// Starts a defined network unless it runs, and marks it to start with the host.
    pub async fn ensure_network_active(&self, name: &str) -> Result<(), LibvirtError> {
        let name = name.to_owned();
        self.call(move |inner| {
            let net = inner
                .lookup_network(&name)?
                .ok_or_else(|| LibvirtError::Call {
                    uri: inner.uri.clone(),
                    op: "find network",
                    object: name.clone(),
                    message: "it is not defined".to_owned(),
                })?;
            if !net.is_active().map_err(inner.err("read", &name))? {
                net.create().map_err(inner.err("start network", &name))?;
            }
            if let Err(err) = net.set_autostart(true) {
                debug!("autostart for {name}: {}", err.message());
            }
            Ok(())
        })
        .await
    }

    /// Stops and undefines a network; a missing one is fine.
    pub async fn remove_network(&self, name: &str) -> Result<(), LibvirtError> {
        let name = name.to_owned();
        self.call(move |inner| {
            if let Some(net) = inner.lookup_network(&name)? {
                if net.is_active().map_err(inner.err("read", &name))? {
                    net.destroy().map_err(inner.err("stop network", &name))?;
                }
                net.undefine()
                    .map_err(inner.err("undefine network", &name))?;
            }
            Ok(())
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

    fn lookup_pool(&self) -> Result<Option<StoragePool>, LibvirtError> {
        match self
            .conn
            .lookup_storage_pool_by_name(&self.options.pool_name)
        {
            Ok(pool) => Ok(Some(pool)),
            Err(err) if is_code(&err, ErrorNumber::NoStoragePool) => Ok(None),
            Err(err) => Err(self.err("find pool", &self.options.pool_name)(err)),
        }
    }

    /// kiln's pool, defined, built and started as needed.
    fn pool(&self) -> Result<StoragePool, LibvirtError> {
        let name = &self.options.pool_name;
        let pool = match self.lookup_pool()? {
            Some(pool) => pool,
            None => {
                let doc = xml::pool_xml(name, &self.options.pool_path)?;
                let pool = self
                    .conn
                    .define_storage_pool_xml(&doc, 0)
                    .map_err(self.err("define pool", name))?;
                pool.build(0).map_err(self.err("build pool", name))?;
                info!("defined storage pool {name} at {}", self.options.pool_path);
                pool
            }
        };
        if !pool.is_active().map_err(self.err("read", name))? {
            pool.create(0).map_err(self.err("start pool", name))?;
        }
        Ok(pool)
    }

    fn volume(&self, pool: &StoragePool, name: &str) -> Result<Option<StorageVol>, LibvirtError> {
        match pool.lookup_storage_vol_by_name(name) {
            Ok(vol) => Ok(Some(vol)),
            Err(err) if is_code(&err, ErrorNumber::NoStorageVolume) => Ok(None),
            Err(err) => Err(self.err("find volume", name)(err)),
        }
    }

    fn lookup_domain(&self, name: &str) -> Result<Option<Domain>, LibvirtError> {
        match self.conn.lookup_domain_by_name(name) {
            Ok(dom) => Ok(Some(dom)),
            Err(err) if is_code(&err, ErrorNumber::NoDomain) => Ok(None),
            Err(err) => Err(self.err("find domain", name)(err)),
        }
    }

    fn require_domain(&self, name: &str) -> Result<Domain, LibvirtError> {
        self.lookup_domain(name)?.ok_or_else(|| LibvirtError::Call {
            uri: self.uri.clone(),
            op: "find domain",
            object: name.to_owned(),
            message: "it is not defined".to_owned(),
        })
    }

    /// A domain's state; `None` when it vanished since it was listed (someone removed it).
    fn domain_state(&self, dom: &Domain, name: &str) -> Result<Option<DomainState>, LibvirtError> {
        let vanished = |err: &virt::error::Error| is_code(err, ErrorNumber::NoDomain);
        let read = || -> Result<(bool, bool, String), virt::error::Error> {
            let paused = matches!(
                dom.state()?.0,
                Enum::Known(virt::domain::DomainState::Paused)
            );
            Ok((
                dom.is_active()?,
                paused,
                dom.xml_desc(sys::VIR_DOMAIN_XML_SECURE)?,
            ))
        };
        match read() {
            Ok((active, paused, doc)) => Ok(Some(DomainState {
                name: name.to_owned(),
                active,
                paused,
                observed: xml::parse_domain(&doc)?,
            })),
            Err(err) if vanished(&err) => Ok(None),
            Err(err) => Err(self.err("read", name)(err)),
        }
    }

    fn lookup_network(&self, name: &str) -> Result<Option<Network>, LibvirtError> {
        match self.conn.lookup_network_by_name(name) {
            Ok(net) => Ok(Some(net)),
            Err(err) if is_code(&err, ErrorNumber::NoNetwork) => Ok(None),
            Err(err) => Err(self.err("find network", name)(err)),
        }
    }

    /// A network's state; `None` when it vanished since it was listed.
    fn network_state(
        &self,
        net: &Network,
        name: &str,
    ) -> Result<Option<NetworkState>, LibvirtError> {
        let read = || -> Result<(bool, String), virt::error::Error> {
            Ok((net.is_active()?, net.xml_desc(0)?))
        };
        match read() {
            Ok((active, doc)) => Ok(Some(NetworkState {
                name: name.to_owned(),
                active,
                observed: xml::parse_network(&doc)?,
            })),
            Err(err) if is_code(&err, ErrorNumber::NoNetwork) => Ok(None),
            Err(err) => Err(self.err("read", name)(err)),
        }
    }
}
