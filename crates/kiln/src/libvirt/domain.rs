//! Domains: define, start, suspend, destroy, undefine, and read back what kiln owns.

use log::debug;
use virt::domain::Domain;
use virt::enumutil::Enum;
use virt::error::ErrorNumber;
use virt::sys;

use super::{DomainDef, Inner, LibvirtConn, LibvirtError, is_code, xml};

/// A domain as kiln sees it.
#[derive(Debug, Clone)]
pub struct DomainState {
    /// The domain's name.
    pub name: String,
    /// Running or paused (not shut off).
    pub active: bool,
    /// Active with its vCPUs suspended.
    pub paused: bool,
    /// What kiln reads from the domain's XML: its tag, agent ports, secret file and disks.
    pub observed: xml::DomainObserved,
}

impl LibvirtConn {
    // --- domains -------------------------------------------------------------------------

    /// The domain called `name`, kiln's or not, with its state; `None` when there is none.
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

    /// Replaces a domain's kiln tag in place: in its definition, then in the running
    /// domain's live XML (which `domains()` reads) if it runs. A domain that stops in
    /// between has its definition changed, which is what its next start reads.
    pub async fn set_domain_tag(&self, name: &str, tag: &xml::KilnTag) -> Result<(), LibvirtError> {
        let fragment = tag.fragment()?;
        let name = name.to_owned();
        self.call(move |inner| {
            let dom = inner.require_domain(&name)?;
            let set = |flags: u32| {
                dom.set_metadata(
                    virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                    Some(&fragment),
                    Some("kiln"),
                    Some(xml::KILN_NS),
                    flags,
                )
            };
            set(virt::sys::VIR_DOMAIN_AFFECT_CONFIG)
                .map_err(inner.err("set the metadata of", &name))?;
            if dom.is_active().unwrap_or(false)
                && let Err(err) = set(virt::sys::VIR_DOMAIN_AFFECT_LIVE)
                && dom.is_active().unwrap_or(false)
            {
                return Err(inner.err("set the live metadata of", &name)(err));
            }
            Ok(())
        })
        .await
    }

    /// Starts the domain `name`; one already running is left as it is.
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
}

impl Inner {
    pub(super) fn lookup_domain(&self, name: &str) -> Result<Option<Domain>, LibvirtError> {
        match self.conn.lookup_domain_by_name(name) {
            Ok(dom) => Ok(Some(dom)),
            Err(err) if is_code(&err, ErrorNumber::NoDomain) => Ok(None),
            Err(err) => Err(self.err("find domain", name)(err)),
        }
    }

    pub(super) fn require_domain(&self, name: &str) -> Result<Domain, LibvirtError> {
        self.lookup_domain(name)?.ok_or_else(|| LibvirtError::Call {
            uri: self.uri.clone(),
            op: "find domain",
            object: name.to_owned(),
            message: "it is not defined".to_owned(),
        })
    }

    /// A domain's state; `None` when it vanished since it was listed (someone removed it).
    pub(super) fn domain_state(
        &self,
        dom: &Domain,
        name: &str,
    ) -> Result<Option<DomainState>, LibvirtError> {
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
}
