//! kiln's storage pool and its volumes: images, disks, overlays, secrets, logs; uploads and
//! reads go through libvirt's stream API, so they work on remote hosts too.

use std::path::Path;

use log::{debug, info, warn};
use virt::error::ErrorNumber;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;
use virt::sys;

use super::{Inner, LibvirtConn, LibvirtError, VolumeFormat, is_code, xml};

/// Bytes per stream message when uploading.
const UPLOAD_CHUNK: usize = 1 << 20;

impl LibvirtConn {
    // --- storage -------------------------------------------------------------------------

    /// Defines, builds and starts kiln's directory pool when it is not already active.
    pub async fn ensure_pool_active(&self) -> Result<(), LibvirtError> {
        self.call(|inner| inner.pool().map(drop)).await
    }

    /// Free bytes in kiln's pool.
    pub async fn pool_available(&self) -> Result<u64, LibvirtError> {
        self.call(|inner| {
            let pool = inner.pool()?;
            inner.refresh_pool(&pool);
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
            inner.refresh_pool(&pool);
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

    /// Uploads a local file into a new raw volume (replacing one of that name), streaming it
    /// in pieces (an image's root filesystem is gigabytes). Returns the volume's path, and
    /// whether the content went up: the test driver takes no uploads.
    pub async fn upload_volume(
        &self,
        name: &str,
        file: &Path,
    ) -> Result<(String, bool), LibvirtError> {
        let read_err = |err: std::io::Error| LibvirtError::Call {
            uri: self.uri().to_owned(),
            op: "read",
            object: file.display().to_string(),
            message: err.to_string(),
        };
        let opened = std::fs::File::open(file).map_err(read_err)?;
        let len = opened.metadata().map_err(read_err)?.len();
        self.upload(name, Box::new(opened), len, false).await
    }

    /// Writes `data` into a new raw volume (replacing one of that name); `private` makes it
    /// `0600`. Returns the volume's path, and whether the content went up.
    pub async fn upload_bytes(
        &self,
        name: &str,
        data: Vec<u8>,
        private: bool,
    ) -> Result<(String, bool), LibvirtError> {
        let len = data.len() as u64;
        self.upload(name, Box::new(std::io::Cursor::new(data)), len, private)
            .await
    }

    async fn upload(
        &self,
        name: &str,
        mut source: Box<dyn std::io::Read + Send>,
        len: u64,
        private: bool,
    ) -> Result<(String, bool), LibvirtError> {
        let name = name.to_owned();
        self.call(move |inner| {
            let pool = inner.pool()?;
            if let Some(old) = inner.volume(&pool, &name)? {
                old.delete(sys::VIR_STORAGE_VOL_DELETE_NORMAL)
                    .map_err(inner.err("delete volume", &name))?;
            }
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
            let mut buf = vec![0u8; UPLOAD_CHUNK];
            let mut total = 0u64;
            while total < len {
                let want = usize::try_from(len - total)
                    .unwrap_or(UPLOAD_CHUNK)
                    .min(UPLOAD_CHUNK);
                let n = match source.read(&mut buf[..want]) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(err) => {
                        let _ = stream.abort();
                        return Err(LibvirtError::Call {
                            uri: inner.uri.clone(),
                            op: "read the upload for",
                            object: name.clone(),
                            message: err.to_string(),
                        });
                    }
                };
                let mut sent = 0;
                while sent < n {
                    let wrote = stream
                        .send(&buf[sent..n])
                        .map_err(inner.err("upload to", &name))?;
                    sent += usize::try_from(wrote).unwrap_or(0).max(1);
                }
                total += n as u64;
            }
            if total != len {
                let _ = stream.abort();
                return Err(LibvirtError::Call {
                    uri: inner.uri.clone(),
                    op: "upload to",
                    object: name.clone(),
                    message: format!("the source ended after {total} of {len} bytes"),
                });
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
            inner.refresh_pool(&pool);
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
                inner.refresh_pool(&pool);
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
}

/// How often, and how long apart, a refresh is tried while the pool is busy.
const REFRESH_TRIES: u32 = 20;
const REFRESH_PAUSE: std::time::Duration = std::time::Duration::from_millis(25);

impl Inner {
    /// Rescans the pool's directory, for files that changed behind libvirt's back (a
    /// console log that grew). libvirt refuses while a stream on one of the pool's volumes
    /// is open ("asynchronous jobs running"), as when many clients read secrets at once:
    /// the refresh is retried briefly, then skipped. What kiln made through libvirt is
    /// known to it without one, so a skipped refresh costs only a log's newest bytes.
    pub(super) fn refresh_pool(&self, pool: &StoragePool) {
        for _ in 0..REFRESH_TRIES {
            match pool.refresh(0) {
                Ok(_) => return,
                Err(err) if err.message().contains("asynchronous jobs") => {
                    std::thread::sleep(REFRESH_PAUSE);
                }
                Err(err) => {
                    debug!("refreshing the pool: {}", err.message());
                    return;
                }
            }
        }
        debug!("the pool stayed busy; going on without a refresh");
    }

    pub(super) fn lookup_pool(&self) -> Result<Option<StoragePool>, LibvirtError> {
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
    pub(super) fn pool(&self) -> Result<StoragePool, LibvirtError> {
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

    pub(super) fn volume(
        &self,
        pool: &StoragePool,
        name: &str,
    ) -> Result<Option<StorageVol>, LibvirtError> {
        match pool.lookup_storage_vol_by_name(name) {
            Ok(vol) => Ok(Some(vol)),
            Err(err) if is_code(&err, ErrorNumber::NoStorageVolume) => Ok(None),
            Err(err) => Err(self.err("find volume", name)(err)),
        }
    }
}
