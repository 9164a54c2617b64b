//! The libvirt hosts this user has created VMs on, so `kiln ls` and the verbs that take a VM
//! name find them without being told the URI again.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{Lock, Paths, read_json, write_json_atomic};
use crate::Result;

#[derive(Debug, Default, Serialize, Deserialize)]
struct HostsFile {
    #[serde(default)]
    libvirt_uris: BTreeSet<String>,
}

/// The remembered libvirt URIs, in `<data>/hosts.json`.
#[derive(Debug, Clone)]
pub struct KnownHosts {
    paths: Paths,
}

impl KnownHosts {
    pub fn new(paths: &Paths) -> Self {
        Self {
            paths: paths.clone(),
        }
    }

    /// The URIs, sorted.
    pub fn libvirt_uris(&self) -> Result<Vec<String>> {
        let file: Option<HostsFile> = read_json(&self.paths.hosts_file())?;
        Ok(file.unwrap_or_default().libvirt_uris.into_iter().collect())
    }

    pub async fn remember(&self, uri: &str) -> Result<()> {
        let uri = uri.to_owned();
        self.update(move |file| file.libvirt_uris.insert(uri)).await
    }

    pub async fn forget(&self, uri: &str) -> Result<()> {
        let uri = uri.to_owned();
        self.update(move |file| file.libvirt_uris.remove(&uri))
            .await
    }

    /// Read, change and write under a lock, so two kilns never lose each other's change.
    async fn update(
        &self,
        change: impl FnOnce(&mut HostsFile) -> bool + Send + 'static,
    ) -> Result<()> {
        let paths = self.paths.clone();
        tokio::task::spawn_blocking(move || {
            let _lock = Lock::acquire(&paths.locks_dir().join("hosts.lock"))?;
            let path = paths.hosts_file();
            let mut file: HostsFile = read_json(&path)?.unwrap_or_default();
            if change(&mut file) {
                write_json_atomic(&path, &file)?;
            }
            Ok(())
        })
        .await
        .map_err(crate::image::join_error)?
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn remembers_and_forgets_uris_across_instances() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        let hosts = KnownHosts::new(&paths);
        assert!(hosts.libvirt_uris().unwrap().is_empty());
        hosts.remember("qemu+ssh://b/system").await.unwrap();
        hosts.remember("qemu:///system").await.unwrap();
        hosts.remember("qemu:///system").await.unwrap();
        let again = KnownHosts::new(&paths);
        assert_eq!(
            again.libvirt_uris().unwrap(),
            ["qemu+ssh://b/system", "qemu:///system"]
        );
        again.forget("qemu+ssh://b/system").await.unwrap();
        assert_eq!(hosts.libvirt_uris().unwrap(), ["qemu:///system"]);
    }
}
