//! Storage: kiln's pool and its volumes (images, disks, overlays, private files).

use serde::Serialize;

use super::{Text, TypeOut, render};
use crate::libvirt::LibvirtError;

#[derive(Debug, Serialize)]
struct PoolOut<'a> {
    #[serde(rename = "@type")]
    kind: &'static str,
    name: &'a str,
    target: PoolTargetOut<'a>,
}

#[derive(Debug, Serialize)]
struct PoolTargetOut<'a> {
    path: &'a str,
}

/// A directory pool at `path`.
pub fn pool_xml(name: &str, path: &str) -> Result<String, LibvirtError> {
    render(
        "pool",
        &PoolOut {
            kind: "dir",
            name,
            target: PoolTargetOut { path },
        },
    )
}

#[derive(Debug, Serialize)]
struct VolumeOut<'a> {
    name: &'a str,
    capacity: Text<u64>,
    target: VolumeTargetOut,
    #[serde(rename = "backingStore", skip_serializing_if = "Option::is_none")]
    backing_store: Option<BackingOut<'a>>,
}

#[derive(Debug, Serialize)]
struct VolumeTargetOut {
    format: TypeOut,
    #[serde(skip_serializing_if = "Option::is_none")]
    permissions: Option<PermissionsOut>,
}

#[derive(Debug, Serialize)]
struct PermissionsOut {
    mode: String,
}

#[derive(Debug, Serialize)]
struct BackingOut<'a> {
    path: &'a str,
    format: TypeOut,
}

/// What a volume holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeFormat {
    /// A guest disk.
    Qcow2,
    /// A file uploaded as is (kernel, initramfs).
    Raw,
}

/// A volume document: `capacity` bytes, optionally a copy-on-write overlay on `backing`.
pub fn volume_xml(
    name: &str,
    capacity: u64,
    format: VolumeFormat,
    backing: Option<&str>,
) -> Result<String, LibvirtError> {
    volume_doc(name, capacity, format, backing, None)
}

/// A raw volume only its owner reads (`0600`): a guest's secret.
pub fn private_volume_xml(name: &str, capacity: u64) -> Result<String, LibvirtError> {
    volume_doc(name, capacity, VolumeFormat::Raw, None, Some(0o600))
}

fn volume_doc(
    name: &str,
    capacity: u64,
    format: VolumeFormat,
    backing: Option<&str>,
    mode: Option<u32>,
) -> Result<String, LibvirtError> {
    let format = TypeOut {
        kind: match format {
            VolumeFormat::Qcow2 => "qcow2",
            VolumeFormat::Raw => "raw",
        },
    };
    render(
        "volume",
        &VolumeOut {
            name,
            capacity: Text {
                unit: Some("bytes"),
                value: capacity,
            },
            target: VolumeTargetOut {
                format,
                permissions: mode.map(|mode| PermissionsOut {
                    mode: format!("{mode:04o}"),
                }),
            },
            backing_store: backing.map(|path| BackingOut {
                path,
                format: TypeOut { kind: "qcow2" },
            }),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::xml::golden::assert_golden;

    #[test]
    fn overlay_volume_and_pool() {
        let xml = volume_xml(
            "web-1-disk0.qcow2",
            4 << 30,
            VolumeFormat::Qcow2,
            Some("/var/lib/kiln/base.qcow2"),
        )
        .unwrap();
        assert_golden("volume-overlay", &xml);
        let xml = pool_xml("kiln", "/var/lib/libvirt/images/kiln").unwrap();
        assert_golden("pool", &xml);
    }
}
