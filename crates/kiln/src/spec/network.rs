use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::{MacAddr, SpecError, validate_name};

/// Which network a NIC is attached to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkRef {
    /// Unprivileged user-mode NAT with outbound access (QEMU's `-netdev user`).
    User,
    /// A named network (a libvirt network), optionally with a fixed MAC address.
    Named {
        /// The network's name.
        name: String,
        /// The NIC's fixed MAC address; without one, the backend chooses it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mac: Option<MacAddr>,
    },
}

impl NetworkRef {
    /// A NIC on the named network, with a MAC address the backend chooses.
    pub fn named(name: impl Into<String>) -> Self {
        Self::Named {
            name: name.into(),
            mac: None,
        }
    }

    /// A NIC on a named network with a fixed MAC (for DHCP reservations).
    pub fn named_with_mac(name: impl Into<String>, mac: MacAddr) -> Self {
        Self::Named {
            name: name.into(),
            mac: Some(mac),
        }
    }

    /// The network's name, `None` for user-mode NAT.
    pub fn network_name(&self) -> Option<&str> {
        match self {
            Self::User => None,
            Self::Named { name, .. } => Some(name),
        }
    }

    /// The NIC's fixed MAC address: `None` for user-mode NAT, or when none was given.
    pub fn mac(&self) -> Option<MacAddr> {
        match self {
            Self::User => None,
            Self::Named { mac, .. } => *mac,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), SpecError> {
        match self {
            Self::User => Ok(()),
            Self::Named { name, .. } => {
                validate_name(name).map_err(|_| SpecError::InvalidNetwork { name: name.clone() })
            }
        }
    }
}

/// What the user-mode NIC (`NetworkRef::User`) lets the guest reach. Port forwards into the
/// guest work under every policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetPolicy {
    /// No route out: only port forwards reach the guest.
    None,
    /// Outbound NAT to the host's networks. The host's loopback (and so other VMs' forwarded
    /// ports) stays out of reach: the gateway address is not mapped to the host.
    #[default]
    Nat,
    /// Outbound NAT, and the gateway (`10.0.2.2`) is the host's loopback: the guest reaches
    /// every service bound to the host's 127.0.0.1. An explicit opt-in.
    Host,
}

impl NetPolicy {
    /// Whether this is the default policy, [`NetPolicy::Nat`].
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl std::fmt::Display for NetPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Nat => "nat",
            Self::Host => "host",
        })
    }
}

impl std::str::FromStr for NetPolicy {
    type Err = SpecError;
    fn from_str(text: &str) -> Result<Self, SpecError> {
        match text {
            "none" => Ok(Self::None),
            "nat" => Ok(Self::Nat),
            "host" => Ok(Self::Host),
            _ => Err(SpecError::InvalidNetPolicy {
                text: text.to_owned(),
            }),
        }
    }
}

/// How a network reaches the outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// Guests reach the host's networks through NAT.
    Nat,
    /// Guests reach each other and the host only.
    Isolated,
}

/// The addresses DHCP hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpRange {
    /// The first address handed out.
    pub start: Ipv4Addr,
    /// The last address handed out (the range includes it).
    pub end: Ipv4Addr,
}

/// A fixed address for one MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    /// The MAC address the reservation is for.
    pub mac: MacAddr,
    /// The address DHCP always hands to that MAC: a host address of the subnet, not the
    /// host's own.
    pub ip: Ipv4Addr,
    /// The hostname DHCP hands out with it, following the VM name rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// What a network should be: a subnet whose first address is the host's, NAT or isolated,
/// with an optional DHCP range and static reservations. Built by [`NetworkSpec::nat`] or
/// [`NetworkSpec::isolated`], loaded through the same validation.
///
/// ```
/// use kiln::spec::NetworkSpec;
///
/// let mac = "52:54:00:10:00:01".parse()?;
/// let lab = NetworkSpec::nat("lab", "10.77.0.0/24")
///     .dhcp([10, 77, 0, 100], [10, 77, 0, 200])
///     .reserve_host(mac, [10, 77, 0, 10], "web-1")
///     .build()?;
/// assert_eq!(lab.name(), "lab");
///
/// // A reservation outside the subnet is refused.
/// let outside = NetworkSpec::nat("lab", "10.77.0.0/24")
///     .reserve_host(mac, [10, 78, 0, 10], "web-1")
///     .build();
/// assert!(outside.is_err());
/// # Ok::<(), kiln::SpecError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "NetworkSpecFields", into = "NetworkSpecFields")]
pub struct NetworkSpec {
    fields: NetworkSpecFields,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkSpecFields {
    name: String,
    mode: NetworkMode,
    subnet: Ipv4Net,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dhcp: Option<DhcpRange>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    reservations: Vec<Reservation>,
}

impl TryFrom<NetworkSpecFields> for NetworkSpec {
    type Error = SpecError;
    fn try_from(fields: NetworkSpecFields) -> Result<Self, SpecError> {
        validate_network(&fields)?;
        Ok(Self { fields })
    }
}

impl From<NetworkSpec> for NetworkSpecFields {
    fn from(spec: NetworkSpec) -> Self {
        spec.fields
    }
}

fn validate_network(spec: &NetworkSpecFields) -> Result<(), SpecError> {
    let name = &spec.name;
    validate_name(name).map_err(|_| SpecError::InvalidNetwork { name: name.clone() })?;
    let subnet = spec.subnet;
    if subnet.prefix_len() < 8 || subnet.prefix_len() > 30 {
        return Err(SpecError::InvalidSubnet {
            network: name.clone(),
            subnet,
            reason: "the prefix must be between /8 and /30",
        });
    }
    if subnet.addr() != subnet.network() {
        return Err(SpecError::InvalidSubnet {
            network: name.clone(),
            subnet,
            reason: "host bits are set: write the network address, e.g. 10.10.0.0/24",
        });
    }
    let gateway = gateway_of(subnet);
    let usable =
        |ip: Ipv4Addr| subnet.contains(&ip) && ip != subnet.network() && ip != subnet.broadcast();
    if let Some(range) = spec.dhcp {
        if !usable(range.start) || !usable(range.end) || range.start > range.end {
            return Err(SpecError::InvalidDhcpRange {
                network: name.clone(),
                start: range.start,
                end: range.end,
                reason: "it must be a non-empty range of host addresses inside the subnet",
            });
        }
        if (range.start..=range.end).contains(&gateway) {
            return Err(SpecError::InvalidDhcpRange {
                network: name.clone(),
                start: range.start,
                end: range.end,
                reason: "it contains the host's address (the subnet's first address)",
            });
        }
    }
    for (index, reservation) in spec.reservations.iter().enumerate() {
        if !usable(reservation.ip) || reservation.ip == gateway {
            return Err(SpecError::ReservationOutsideSubnet {
                network: name.clone(),
                ip: reservation.ip,
                subnet,
            });
        }
        if let Some(host) = &reservation.hostname {
            validate_name(host).map_err(|_| SpecError::InvalidName {
                name: host.clone(),
                reason: "a reservation's hostname follows the VM name rules",
            })?;
        }
        for earlier in &spec.reservations[..index] {
            if earlier.mac == reservation.mac {
                return Err(SpecError::DuplicateMac {
                    mac: reservation.mac,
                    context: format!("reservations of network {name}"),
                });
            }
            if earlier.ip == reservation.ip {
                return Err(SpecError::DuplicateReservedIp {
                    network: name.clone(),
                    ip: reservation.ip,
                });
            }
        }
    }
    Ok(())
}

/// The host's address on a subnet: its first host address.
fn gateway_of(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).saturating_add(1))
}

impl NetworkSpec {
    /// A NAT network on `subnet` (e.g. `"10.10.0.0/24"`); the subnet is checked by `build`.
    pub fn nat(name: impl Into<String>, subnet: &str) -> NetworkSpecBuilder {
        NetworkSpecBuilder::new(name.into(), NetworkMode::Nat, subnet)
    }

    /// A network with no route out.
    pub fn isolated(name: impl Into<String>, subnet: &str) -> NetworkSpecBuilder {
        NetworkSpecBuilder::new(name.into(), NetworkMode::Isolated, subnet)
    }

    /// The network's name.
    pub fn name(&self) -> &str {
        &self.fields.name
    }
    /// Whether guests reach the host's networks through NAT or stay isolated.
    pub fn mode(&self) -> NetworkMode {
        self.fields.mode
    }
    /// The network's subnet, /8 to /30; its first host address is the host's.
    pub fn subnet(&self) -> Ipv4Net {
        self.fields.subnet
    }
    /// The host's address on this network.
    pub fn gateway(&self) -> Ipv4Addr {
        gateway_of(self.fields.subnet)
    }
    /// The addresses DHCP hands to any guest; `None` when it hands out only reservations.
    pub fn dhcp(&self) -> Option<DhcpRange> {
        self.fields.dhcp
    }
    /// The fixed addresses DHCP hands to given MACs.
    pub fn reservations(&self) -> &[Reservation] {
        &self.fields.reservations
    }
}

/// Builds a [`NetworkSpec`]; [`build`](Self::build) validates.
#[derive(Debug, Clone)]
#[must_use]
pub struct NetworkSpecBuilder {
    name: String,
    mode: NetworkMode,
    subnet: Result<Ipv4Net, SpecError>,
    dhcp: Option<DhcpRange>,
    reservations: Vec<Reservation>,
}

impl NetworkSpecBuilder {
    fn new(name: String, mode: NetworkMode, subnet: &str) -> Self {
        let parsed = subnet
            .parse::<Ipv4Net>()
            .map_err(|_| SpecError::InvalidSubnetText {
                network: name.clone(),
                text: subnet.to_owned(),
            });
        Self {
            name,
            mode,
            subnet: parsed,
            dhcp: None,
            reservations: Vec::new(),
        }
    }

    /// Hands out `start..=end` (`[10, 77, 0, 100]` or an `Ipv4Addr`).
    pub fn dhcp(mut self, start: impl Into<Ipv4Addr>, end: impl Into<Ipv4Addr>) -> Self {
        self.dhcp = Some(DhcpRange {
            start: start.into(),
            end: end.into(),
        });
        self
    }

    /// Always hands `ip` to `mac`.
    pub fn reserve(mut self, mac: MacAddr, ip: impl Into<Ipv4Addr>) -> Self {
        self.reservations.push(Reservation {
            mac,
            ip: ip.into(),
            hostname: None,
        });
        self
    }

    /// Always hands `ip` and `hostname` to `mac`.
    pub fn reserve_host(
        mut self,
        mac: MacAddr,
        ip: impl Into<Ipv4Addr>,
        hostname: impl Into<String>,
    ) -> Self {
        self.reservations.push(Reservation {
            mac,
            ip: ip.into(),
            hostname: Some(hostname.into()),
        });
        self
    }

    /// Checks the subnet's text, then validates the network.
    pub fn build(self) -> Result<NetworkSpec, SpecError> {
        NetworkSpec::try_from(NetworkSpecFields {
            name: self.name,
            mode: self.mode,
            subnet: self.subnet?,
            dhcp: self.dhcp,
            reservations: self.reservations,
        })
    }
}

/// Refuses networks whose subnets overlap: each pair is checked.
pub fn check_no_overlap<'a>(
    networks: impl IntoIterator<Item = &'a NetworkSpec>,
) -> Result<(), SpecError> {
    let networks: Vec<&NetworkSpec> = networks.into_iter().collect();
    for (index, a) in networks.iter().enumerate() {
        for b in &networks[..index] {
            if subnets_overlap(a.subnet(), b.subnet()) {
                return Err(SpecError::OverlappingSubnets {
                    first: b.name().to_owned(),
                    first_subnet: b.subnet(),
                    second: a.name().to_owned(),
                    second_subnet: a.subnet(),
                });
            }
        }
    }
    Ok(())
}

/// Whether two subnets share any address.
pub fn subnets_overlap(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(text: &str) -> MacAddr {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    #[test]
    fn nat_network_with_range_and_reservation_builds() {
        let net = NetworkSpec::nat("lab", "10.10.0.0/24")
            .dhcp(ip("10.10.0.100"), ip("10.10.0.200"))
            .reserve_host(mac("52:54:00:00:00:01"), ip("10.10.0.10"), "web-1")
            .build()
            .unwrap();
        assert_eq!(net.gateway(), ip("10.10.0.1"));
        let json = serde_json::to_string(&net).unwrap();
        assert_eq!(serde_json::from_str::<NetworkSpec>(&json).unwrap(), net);
    }

    #[test]
    fn bad_networks_are_typed_errors() {
        let lab = || NetworkSpec::nat("lab", "10.10.0.0/24");
        assert!(matches!(
            NetworkSpec::nat("lab", "10.10.0/24").build(),
            Err(SpecError::InvalidSubnetText { .. })
        ));
        assert!(matches!(
            NetworkSpec::nat("lab", "10.10.0.5/24").build(),
            Err(SpecError::InvalidSubnet { .. })
        ));
        assert!(matches!(
            lab()
                .reserve(mac("52:54:00:00:00:01"), ip("10.20.0.10"))
                .build(),
            Err(SpecError::ReservationOutsideSubnet { .. })
        ));
        assert!(matches!(
            lab()
                .reserve(mac("52:54:00:00:00:01"), ip("10.10.0.1"))
                .build(),
            Err(SpecError::ReservationOutsideSubnet { .. })
        ));
        assert!(matches!(
            lab()
                .reserve(mac("52:54:00:00:00:01"), ip("10.10.0.10"))
                .reserve(mac("52:54:00:00:00:01"), ip("10.10.0.11"))
                .build(),
            Err(SpecError::DuplicateMac { .. })
        ));
        assert!(matches!(
            lab().dhcp(ip("10.10.0.200"), ip("10.10.0.100")).build(),
            Err(SpecError::InvalidDhcpRange { .. })
        ));
        assert!(matches!(
            lab().dhcp(ip("10.10.0.1"), ip("10.10.0.100")).build(),
            Err(SpecError::InvalidDhcpRange { .. })
        ));
    }

    #[test]
    fn overlapping_subnets_are_found() {
        let a = NetworkSpec::nat("a", "10.10.0.0/16").build().unwrap();
        let b = NetworkSpec::isolated("b", "10.10.5.0/24").build().unwrap();
        let c = NetworkSpec::isolated("c", "10.11.0.0/24").build().unwrap();
        assert!(check_no_overlap([&a, &c]).is_ok());
        assert!(matches!(
            check_no_overlap([&a, &c, &b]),
            Err(SpecError::OverlappingSubnets { .. })
        ));
    }
}
