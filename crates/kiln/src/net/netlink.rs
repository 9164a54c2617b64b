//! The host's network links, through rtnetlink (no `ip` subprocesses): kiln's bridges, and
//! attaching QEMU's taps to them. Everything here acts in the network namespace kiln runs in.

use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use rtnetlink::{Handle, LinkBridge, LinkUnspec};

use super::NetError;

/// errno values netlink answers with.
const EPERM: i32 = 1;
const ENODEV: i32 = 19;
const EEXIST: i32 = 17;

/// A netlink connection, alive as long as this value.
pub struct Netlink {
    handle: Handle,
    connection: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Netlink")
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

fn errno(err: &rtnetlink::Error) -> i32 {
    match err {
        rtnetlink::Error::NetlinkError(message) => -message.raw_code(),
        _ => 0,
    }
}

fn failed(op: &'static str, link: &str) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let link = link.to_owned();
    move |err| {
        if errno(&err) == EPERM {
            NetError::NeedsRoot { op }
        } else {
            NetError::Netlink {
                op,
                link,
                message: err.to_string(),
            }
        }
    }
}

impl Netlink {
    /// Opens a netlink socket in kiln's network namespace; its connection runs as a task on
    /// the current tokio runtime until this value is dropped.
    pub fn open() -> Result<Self, NetError> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| NetError::Netlink {
                op: "open a netlink socket",
                link: String::new(),
                message: e.to_string(),
            })?;
        Ok(Self {
            handle,
            connection: tokio::spawn(connection),
        })
    }

    /// The index of a link, `None` when there is none of that name.
    pub async fn index(&self, name: &str) -> Result<Option<u32>, NetError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(Some(link.header.index)),
            Ok(None) => Ok(None),
            Err(err) if errno(&err) == ENODEV => Ok(None),
            Err(err) => Err(failed("look up", name)(err)),
        }
    }

    /// Creates a bridge (unless it exists) with `gateway/prefix` on it, and brings it up.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        gateway: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetError> {
        if self.index(name).await?.is_none() {
            match self
                .handle
                .link()
                .add(LinkBridge::new(name).build())
                .execute()
                .await
            {
                Ok(()) => {}
                Err(err) if errno(&err) == EEXIST => {}
                Err(err) => return Err(failed("create bridge", name)(err)),
            }
        }
        let index = self.require(name).await?;
        match self
            .handle
            .address()
            .add(index, IpAddr::V4(gateway), prefix)
            .execute()
            .await
        {
            Ok(()) => {}
            Err(err) if errno(&err) == EEXIST => {}
            Err(err) => return Err(failed("address", name)(err)),
        }
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(failed("bring up", name))
    }

    /// Puts a tap into a bridge and brings it up.
    pub async fn attach(&self, tap: &str, bridge: &str) -> Result<(), NetError> {
        let tap_index = self.require(tap).await?;
        let bridge_index = self.require(bridge).await?;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(tap_index)
                    .controller(bridge_index)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(failed("attach", tap))
    }

    /// Deletes a link; a missing one is fine.
    pub async fn delete(&self, name: &str) -> Result<(), NetError> {
        let Some(index) = self.index(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(err) if errno(&err) == ENODEV => Ok(()),
            Err(err) => Err(failed("delete", name)(err)),
        }
    }

    async fn require(&self, name: &str) -> Result<u32, NetError> {
        self.index(name).await?.ok_or_else(|| NetError::NoSuchLink {
            link: name.to_owned(),
        })
    }
}
