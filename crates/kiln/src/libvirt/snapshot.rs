//! Domain snapshots through libvirt's snapshot API.
//!
//! libvirt 9 can revert only *internal* snapshots: QEMU's `savevm`, which keeps the memory
//! and device state inside the domain's qcow2 disks, or `qemu-img snapshot` for a domain that
//! is shut off. So a snapshot needs at least one disk, all of them qcow2 (kiln's always are).
//! kiln's own facts about a snapshot (versions) travel in its description, as JSON.

use serde::{Deserialize, Serialize};
use virt::domain::Domain;
use virt::error::ErrorNumber;
use virt::sys;

use super::{LibvirtConn, LibvirtError, is_code};

/// One snapshot of a domain, as libvirt describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotObserved {
    /// The snapshot's name, unique within its domain.
    pub name: String,
    /// What kiln wrote in the description (JSON), if anything.
    pub description: Option<String>,
    /// The domain's state when it was taken: `running`, `paused` or `shutoff`.
    pub state: String,
    /// Seconds since the epoch.
    pub created_at: u64,
}

#[derive(Serialize)]
struct SnapshotOut<'a> {
    name: &'a str,
    description: &'a str,
}

#[derive(Deserialize)]
struct SnapshotIn {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    state: String,
    #[serde(rename = "creationTime", default)]
    creation_time: u64,
}

fn snapshot_xml(name: &str, description: &str) -> Result<String, LibvirtError> {
    super::xml::render("domainsnapshot", &SnapshotOut { name, description })
}

fn parse_snapshot(xml: &str) -> Result<SnapshotObserved, LibvirtError> {
    let parsed: SnapshotIn = super::xml::parse("domain snapshot", xml)?;
    Ok(SnapshotObserved {
        name: parsed.name,
        description: parsed.description,
        state: parsed.state,
        created_at: parsed.creation_time,
    })
}

impl LibvirtConn {
    /// Takes an internal snapshot: memory and disks of a running or paused domain, the
    /// disks alone of a shut-off one.
    pub async fn create_snapshot(
        &self,
        domain: &str,
        snapshot: &str,
        description: &str,
    ) -> Result<(), LibvirtError> {
        let doc = snapshot_xml(snapshot, description)?;
        let domain = domain.to_owned();
        let object = format!("{domain}/{snapshot}");
        self.call(move |inner| {
            let dom = inner.require_domain(&domain)?;
            dom.create_snapshot_xml(&doc, 0)
                .map(drop)
                .map_err(inner.err("snapshot", &object))
        })
        .await
    }

    /// A domain's snapshots, oldest first.
    pub async fn snapshots(&self, domain: &str) -> Result<Vec<SnapshotObserved>, LibvirtError> {
        let domain = domain.to_owned();
        self.call(move |inner| {
            let dom = inner.require_domain(&domain)?;
            let mut list = Vec::new();
            for snap in dom
                .list_all_snapshots(0)
                .map_err(inner.err("list snapshots of", &domain))?
            {
                match snap.xml_desc(0) {
                    Ok(xml) => list.push(parse_snapshot(&xml)?),
                    // Removed since it was listed.
                    Err(err) if is_code(&err, ErrorNumber::NoDomainSnapshot) => {}
                    Err(err) => return Err(inner.err("read snapshot of", &domain)(err)),
                }
            }
            list.sort_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
            Ok(list)
        })
        .await
    }

    /// Brings a domain back to a snapshot and leaves it running.
    pub async fn revert_snapshot(&self, domain: &str, snapshot: &str) -> Result<(), LibvirtError> {
        let domain = domain.to_owned();
        let snapshot = snapshot.to_owned();
        self.call(move |inner| {
            let object = format!("{domain}/{snapshot}");
            let dom = inner.require_domain(&domain)?;
            let snap = Domain::lookup_snapshot_by_name(&dom, &snapshot, 0)
                .map_err(inner.err("find snapshot", &object))?;
            snap.revert(sys::VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING)
                .map_err(inner.err("revert to snapshot", &object))
        })
        .await
    }

    /// Removes a snapshot (its state inside the disks too); a missing one is fine.
    pub async fn delete_snapshot(&self, domain: &str, snapshot: &str) -> Result<(), LibvirtError> {
        let domain = domain.to_owned();
        let snapshot = snapshot.to_owned();
        self.call(move |inner| {
            let object = format!("{domain}/{snapshot}");
            let dom = inner.require_domain(&domain)?;
            match Domain::lookup_snapshot_by_name(&dom, &snapshot, 0) {
                Ok(snap) => snap
                    .delete(0)
                    .map_err(inner.err("remove snapshot", &object)),
                Err(err) if is_code(&err, ErrorNumber::NoDomainSnapshot) => Ok(()),
                Err(err) => Err(inner.err("find snapshot", &object)(err)),
            }
        })
        .await
    }

    /// The host's free memory and its CPUs (`virNodeGetFreeMemory`, `virNodeGetInfo`).
    pub async fn node_resources(&self) -> Result<(u64, u32), LibvirtError> {
        self.call(|inner| {
            let free = inner
                .conn
                .free_memory()
                .map_err(inner.err("read", "the host's free memory"))?;
            let info = inner
                .conn
                .node_info()
                .map_err(inner.err("read", "the host's CPUs"))?;
            Ok((free, info.cpus))
        })
        .await
    }

    /// The version of the hypervisor (QEMU) libvirt drives, e.g. `10.0.2`.
    pub async fn hypervisor_version(&self) -> Result<String, LibvirtError> {
        self.call(|inner| {
            let v = inner
                .conn
                .hyp_version()
                .map_err(inner.err("read", "the hypervisor version"))?;
            Ok(format!(
                "{}.{}.{}",
                v / 1_000_000,
                v / 1000 % 1000,
                v % 1000
            ))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_xml_escapes_the_description() {
        let xml = snapshot_xml("s1", r#"{"a":"<b>&"}"#).unwrap();
        assert!(xml.contains("<name>s1</name>"), "{xml}");
        assert!(xml.contains("&lt;b&gt;&amp;"), "{xml}");
        assert!(!xml.contains("<b>"), "{xml}");
    }

    #[test]
    fn parses_what_libvirt_writes() {
        let xml = r#"<domainsnapshot>
  <name>x1</name>
  <description>{&quot;a&quot;:1}</description>
  <state>running</state>
  <creationTime>1795323266</creationTime>
  <memory snapshot='internal'/>
  <disks><disk name='vda' snapshot='internal'/></disks>
  <domain type='qemu'><name>lv1</name></domain>
</domainsnapshot>"#;
        let snap = parse_snapshot(xml).unwrap();
        assert_eq!(
            snap,
            SnapshotObserved {
                name: "x1".into(),
                description: Some(r#"{"a":1}"#.into()),
                state: "running".into(),
                created_at: 1_795_323_266,
            }
        );
    }
}
