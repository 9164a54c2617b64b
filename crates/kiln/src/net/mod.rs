//! Named networks of the daemonless backend (`kiln net create lab`). Each is a Linux bridge
//! with the subnet's first address on it; each VM NIC on it is a tap that QEMU creates and
//! kiln puts into the bridge. kiln hands out the addresses itself (a lease per VM, kept in
//! the network's state file) and gives them to the guest on its kernel command line, so no
//! DHCP server runs. The tap vanishes with its QEMU, so a killed VM leaves no link behind.
//!
//! Bridges need root (CAP_NET_ADMIN): kiln says so instead of failing obscurely. The default
//! network stays QEMU's unprivileged user-mode NAT, which VMs on a named network keep for
//! outbound access.

mod netlink;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use netlink::Netlink;

use crate::image::join_error;
use crate::spec::{MacAddr, NetworkSpec, SpecError, subnets_overlap};
use crate::state::{self, Lock, Paths};
use crate::{IoError, Result};

/// What can go wrong with named networks.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A netlink request was refused with `EPERM`: kiln lacks CAP_NET_ADMIN.
    #[error("creating and changing network links needs root (CAP_NET_ADMIN): cannot {op}")]
    NeedsRoot {
        /// What kiln tried to do, as a verb phrase.
        op: &'static str,
    },
    /// A netlink request failed for any other reason.
    #[error("cannot {op} {link}: {message}")]
    Netlink {
        /// What kiln tried to do, as a verb phrase.
        op: &'static str,
        /// The link it tried to do it to (empty when there is none).
        link: String,
        /// The netlink error.
        message: String,
    },
    /// A link kiln needs (a bridge or a tap) is not there.
    #[error("network link {link} does not exist")]
    NoSuchLink {
        /// The missing link's name.
        link: String,
    },
    /// No named network of that name is recorded on this host.
    #[error("network {name} does not exist")]
    NotFound {
        /// The network asked for.
        name: String,
    },
    /// A network of that name is already recorded.
    #[error("network {name} already exists")]
    Exists {
        /// The name already taken.
        name: String,
    },
    /// Every host address of the subnet but the gateway is leased.
    #[error("network {name} ({subnet}) has no free address left")]
    Full {
        /// The full network.
        name: String,
        /// Its subnet.
        subnet: Ipv4Net,
    },
    /// The network still has leases and was not removed by force.
    #[error("network {name} is used by {}", vms.join(", "))]
    InUse {
        /// The network being removed.
        name: String,
        /// The VMs that hold a lease on it.
        vms: Vec<String>,
    },
}

impl NetError {
    /// What the user can do about this error, where there is something to say.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Self::NeedsRoot { .. } => {
                "run kiln as root (or with CAP_NET_ADMIN); VMs without --network need neither"
                    .to_owned()
            }
            Self::NotFound { name } => format!("create it with `kiln net create {name}`"),
            Self::InUse { name, .. } => {
                format!("remove its VMs first, or `kiln net rm --force {name}`")
            }
            Self::Full { .. } => "create a network with a larger subnet".to_owned(),
            _ => return None,
        })
    }
}

/// A VM NIC on a named network, as the machine is started with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicAttachment {
    /// The tap QEMU creates; kiln puts it into `bridge`.
    pub tap: String,
    /// The bridge of the network the NIC is on.
    pub bridge: String,
    /// The NIC's MAC: the spec's, or one derived from the VM and network names.
    pub mac: MacAddr,
    /// The guest's address and prefix.
    pub address: Ipv4Net,
}

/// A named network on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalNetwork {
    /// The spec the network was created from.
    pub spec: NetworkSpec,
    /// The name of its Linux bridge.
    pub bridge: String,
    /// The address of each VM on the network.
    #[serde(default)]
    pub leases: BTreeMap<String, Ipv4Addr>,
}

impl LocalNetwork {
    /// The network's name.
    pub fn name(&self) -> &str {
        self.spec.name()
    }
    /// The network's subnet; the gateway and each VM get an address in it.
    pub fn subnet(&self) -> Ipv4Net {
        self.spec.subnet()
    }
    /// The host's address on the network (on the bridge).
    pub fn gateway(&self) -> Ipv4Addr {
        self.spec.gateway()
    }
}

/// A short, stable link name (Linux allows 15 characters): `prefix` and a hash of `parts`.
fn link_name(prefix: &str, parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    format!("{prefix}{}", &hex::encode(hasher.finalize())[..10])
}

/// The bridge of a network.
pub fn bridge_name(network: &str) -> String {
    link_name("kb", &[network])
}

/// The tap of a VM's NIC.
pub fn tap_name(vm: &str, nic: usize) -> String {
    link_name("kt", &[vm, &nic.to_string()])
}

/// A stable, locally administered MAC for a VM's NIC on a network.
pub fn derived_mac(vm: &str, network: &str) -> MacAddr {
    let digest = Sha256::digest(format!("{vm}\0{network}").as_bytes());
    MacAddr::qemu([digest[0], digest[1], digest[2]])
}

/// The named networks of this host, in `<data>/networks/NAME.json`.
#[derive(Debug, Clone)]
pub struct Networks {
    paths: Paths,
}

impl Networks {
    /// The networks recorded under `paths`.
    pub fn new(paths: &Paths) -> Self {
        Self {
            paths: paths.clone(),
        }
    }

    fn file(&self, name: &str) -> std::path::PathBuf {
        self.paths.networks_dir().join(format!("{name}.json"))
    }

    /// Every network, sorted by name.
    pub fn list(&self) -> Result<Vec<LocalNetwork>> {
        let mut networks = Vec::new();
        for name in state::list_names(&self.paths.networks_dir())? {
            if let Some(name) = name.strip_suffix(".json")
                && let Some(network) = state::read_json(&self.file(name))?
            {
                networks.push(network);
            }
        }
        networks.sort_by(|a: &LocalNetwork, b| a.name().cmp(b.name()));
        Ok(networks)
    }

    /// The network called `name`, or [`NetError::NotFound`].
    pub fn get(&self, name: &str) -> Result<LocalNetwork> {
        crate::spec::validate_name(name)?;
        state::read_json(&self.file(name))?.ok_or_else(|| {
            NetError::NotFound {
                name: name.to_owned(),
            }
            .into()
        })
    }

    /// Creates a network: validated, checked against kiln's other networks, its bridge made
    /// and only then recorded (a failed create records nothing).
    pub async fn create(&self, name: &str, subnet: &str) -> Result<LocalNetwork> {
        let spec = NetworkSpec::isolated(name, subnet).build()?;
        let _lock = self.lock().await?;
        if self.file(name).exists() {
            return Err(NetError::Exists {
                name: name.to_owned(),
            }
            .into());
        }
        for other in self.list()? {
            if subnets_overlap(other.subnet(), spec.subnet()) {
                return Err(SpecError::OverlappingSubnets {
                    first: other.name().to_owned(),
                    first_subnet: other.subnet(),
                    second: name.to_owned(),
                    second_subnet: spec.subnet(),
                }
                .into());
            }
        }
        let network = LocalNetwork {
            bridge: bridge_name(name),
            spec,
            leases: BTreeMap::new(),
        };
        ensure_bridge(&network).await?;
        state::create_private_dir(&self.paths.networks_dir())?;
        state::write_json_atomic(&self.file(name), &network)?;
        Ok(network)
    }

    /// Removes a network and its bridge. One that VMs still use needs `force`.
    pub async fn remove(&self, name: &str, force: bool) -> Result<()> {
        let _lock = self.lock().await?;
        let mut network = self.get(name)?;
        self.prune(&mut network);
        if !network.leases.is_empty() && !force {
            return Err(NetError::InUse {
                name: name.to_owned(),
                vms: network.leases.keys().cloned().collect(),
            }
            .into());
        }
        Netlink::open()?.delete(&network.bridge).await?;
        let file = self.file(name);
        std::fs::remove_file(&file).map_err(IoError::at("remove", &file))?;
        Ok(())
    }

    /// The address of `vm` on the network: its lease, or the first free address.
    pub async fn lease(&self, name: &str, vm: &str) -> Result<(LocalNetwork, Ipv4Addr)> {
        let _lock = self.lock().await?;
        let mut network = self.get(name)?;
        self.prune(&mut network);
        if let Some(ip) = network.leases.get(vm) {
            return Ok((network.clone(), *ip));
        }
        let taken: Vec<Ipv4Addr> = network.leases.values().copied().collect();
        let gateway = network.gateway();
        let ip = network
            .subnet()
            .hosts()
            .find(|ip| *ip != gateway && !taken.contains(ip))
            .ok_or_else(|| NetError::Full {
                name: name.to_owned(),
                subnet: network.subnet(),
            })?;
        network.leases.insert(vm.to_owned(), ip);
        state::write_json_atomic(&self.file(name), &network)?;
        Ok((network, ip))
    }

    /// The NICs of `spec` on named networks: each leased an address, its bridge made sure of.
    pub async fn attachments(&self, spec: &crate::VmSpec) -> Result<Vec<NicAttachment>> {
        let mut attachments = Vec::new();
        for (index, nic) in spec.networks().iter().enumerate() {
            let Some(name) = nic.network_name() else {
                continue;
            };
            let (network, ip) = self.lease(name, spec.name()).await?;
            ensure_bridge(&network).await?;
            attachments.push(NicAttachment {
                tap: tap_name(spec.name(), index),
                bridge: network.bridge.clone(),
                mac: nic.mac().unwrap_or_else(|| derived_mac(spec.name(), name)),
                address: Ipv4Net::new(ip, network.subnet().prefix_len()).map_err(|_| {
                    NetError::Full {
                        name: name.to_owned(),
                        subnet: network.subnet(),
                    }
                })?,
            });
        }
        Ok(attachments)
    }

    /// Gives back every address `vm` holds.
    pub async fn release(&self, vm: &str) -> Result<()> {
        let _lock = self.lock().await?;
        for mut network in self.list()? {
            if network.leases.remove(vm).is_some() {
                state::write_json_atomic(&self.file(network.name()), &network)?;
            }
        }
        Ok(())
    }

    /// Drops leases of VMs that no longer exist (a VM removed by a kiln that was killed).
    fn prune(&self, network: &mut LocalNetwork) {
        let vms = self.paths.vms_dir();
        network
            .leases
            .retain(|vm, _| vms.join(vm).join("vm.json").exists());
    }

    async fn lock(&self) -> Result<Lock> {
        let path = self.paths.locks_dir().join("networks.lock");
        tokio::task::spawn_blocking(move || Lock::acquire(&path))
            .await
            .map_err(join_error)?
    }
}

/// Makes the network's bridge exist and be up (after a host reboot it is gone).
pub async fn ensure_bridge(network: &LocalNetwork) -> Result<()> {
    let prefix = network.subnet().prefix_len();
    Netlink::open()?
        .ensure_bridge(&network.bridge, network.gateway(), prefix)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn link_names_fit_linux_and_are_stable() {
        assert_eq!(bridge_name("lab").len(), 12);
        assert_eq!(bridge_name("lab"), bridge_name("lab"));
        assert_ne!(tap_name("a", 0), tap_name("a", 1));
        assert!(tap_name(&"x".repeat(63), 3).len() <= 15);
        let mac = derived_mac("web-1", "lab");
        assert_eq!(&mac.octets()[..3], &[0x52, 0x54, 0x00]);
        assert_ne!(mac, derived_mac("web-2", "lab"));
    }

    #[tokio::test]
    async fn leases_are_stable_unique_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        let networks = Networks::new(&paths);
        // Recorded by hand: creating the bridge needs root, leasing does not.
        let network = LocalNetwork {
            spec: NetworkSpec::isolated("lab", "10.9.0.0/29").build().unwrap(),
            bridge: bridge_name("lab"),
            leases: BTreeMap::new(),
        };
        state::create_private_dir(&paths.networks_dir()).unwrap();
        state::write_json_atomic(&networks.file("lab"), &network).unwrap();
        for vm in ["a", "b", "c", "d", "e", "f"] {
            let record = paths.vms_dir().join(vm);
            std::fs::create_dir_all(&record).unwrap();
            std::fs::write(record.join("vm.json"), "{}").unwrap();
        }
        let (_, a) = networks.lease("lab", "a").await.unwrap();
        let (_, b) = networks.lease("lab", "b").await.unwrap();
        assert_eq!(
            a,
            Ipv4Addr::new(10, 9, 0, 2),
            "the gateway .1 is the host's"
        );
        assert_eq!(b, Ipv4Addr::new(10, 9, 0, 3));
        assert_eq!(networks.lease("lab", "a").await.unwrap().1, a);
        for vm in ["c", "d", "e"] {
            networks.lease("lab", vm).await.unwrap();
        }
        // A /29 has 6 hosts: the gateway and five VMs.
        let err = networks.lease("lab", "f").await.unwrap_err();
        assert!(
            matches!(err, crate::Error::Net(NetError::Full { .. })),
            "{err}"
        );
        // A VM that is gone gives its address back.
        std::fs::remove_dir_all(paths.vms_dir().join("b")).unwrap();
        assert_eq!(networks.lease("lab", "f").await.unwrap().1, b);
        networks.release("f").await.unwrap();
        assert!(!networks.get("lab").unwrap().leases.contains_key("f"));
    }
}
