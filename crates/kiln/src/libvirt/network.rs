//! Networks: define, start, remove, and read back what kiln owns.

use log::debug;
use virt::error::ErrorNumber;
use virt::network::Network;

use super::{Inner, LibvirtConn, LibvirtError, is_code, xml};

/// A network as kiln sees it.
#[derive(Debug)]
pub struct NetworkState {
    /// The network's name.
    pub name: String,
    /// Whether the network is started.
    pub active: bool,
    /// What kiln reads from the network's XML: its tag, subnets and isolation.
    pub observed: xml::NetworkObserved,
}

impl LibvirtConn {
    // --- networks ------------------------------------------------------------------------

    /// The network called `name`, kiln's or not, with its state; `None` when there is none.
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
    pub(super) fn lookup_network(&self, name: &str) -> Result<Option<Network>, LibvirtError> {
        match self.conn.lookup_network_by_name(name) {
            Ok(net) => Ok(Some(net)),
            Err(err) if is_code(&err, ErrorNumber::NoNetwork) => Ok(None),
            Err(err) => Err(self.err("find network", name)(err)),
        }
    }

    /// A network's state; `None` when it vanished since it was listed.
    pub(super) fn network_state(
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
