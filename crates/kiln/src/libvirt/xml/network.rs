//! Networks: the definition kiln renders from a `NetworkSpec`, and what it reads back.

use serde::{Deserialize, Serialize};

use super::{KilnTag, MetadataIn, MetadataOut, parse, render, tag_of};
use crate::libvirt::LibvirtError;
use crate::spec::{NetworkMode, NetworkSpec};

#[derive(Debug, Serialize)]
struct NetworkOut<'a> {
    name: &'a str,
    metadata: MetadataOut<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    forward: Option<ForwardOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<PortOut>,
    ip: IpOut,
}

/// `<port isolated="yes"/>`: guests on the bridge reach the gateway, never each other.
#[derive(Debug, Serialize)]
struct PortOut {
    #[serde(rename = "@isolated")]
    isolated: &'static str,
}

#[derive(Debug, Serialize)]
struct ForwardOut {
    #[serde(rename = "@mode")]
    mode: &'static str,
}

#[derive(Debug, Serialize)]
struct IpOut {
    #[serde(rename = "@address")]
    address: String,
    #[serde(rename = "@prefix")]
    prefix: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    tftp: Option<TftpOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dhcp: Option<DhcpOut>,
}

#[derive(Debug, Serialize)]
struct TftpOut {
    #[serde(rename = "@root")]
    root: String,
}

#[derive(Debug, Serialize)]
struct DhcpOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    range: Option<RangeOut>,
    host: Vec<HostOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bootp: Option<BootpOut>,
}

#[derive(Debug, Serialize)]
struct BootpOut {
    #[serde(rename = "@file")]
    file: String,
}

/// What a network serves for network boot: a TFTP root on its host, and the file its DHCP
/// names as the boot file.
#[derive(Debug, Clone, Copy)]
pub struct NetworkBoot<'a> {
    pub tftp_root: &'a str,
    pub bootfile: &'a str,
}

#[derive(Debug, Serialize)]
struct RangeOut {
    #[serde(rename = "@start")]
    start: String,
    #[serde(rename = "@end")]
    end: String,
}

#[derive(Debug, Serialize)]
struct HostOut {
    #[serde(rename = "@mac")]
    mac: String,
    #[serde(rename = "@ip")]
    ip: String,
    #[serde(rename = "@name", skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

/// A network document for `spec`, tagged with `tag`.
/// The network for `spec`. With `isolate_guests`, its guests reach the gateway (and through
/// it, NAT) but not each other.
pub fn network_xml(
    spec: &NetworkSpec,
    tag: &KilnTag,
    isolate_guests: bool,
    boot: Option<NetworkBoot<'_>>,
) -> Result<String, LibvirtError> {
    let has_dhcp = spec.dhcp().is_some() || !spec.reservations().is_empty();
    let doc = NetworkOut {
        name: spec.name(),
        metadata: tag.into(),
        forward: match spec.mode() {
            NetworkMode::Nat => Some(ForwardOut { mode: "nat" }),
            NetworkMode::Isolated => None,
        },
        port: isolate_guests.then_some(PortOut { isolated: "yes" }),
        ip: IpOut {
            address: spec.gateway().to_string(),
            prefix: spec.subnet().prefix_len(),
            tftp: boot.map(|b| TftpOut {
                root: b.tftp_root.to_owned(),
            }),
            dhcp: has_dhcp.then(|| DhcpOut {
                bootp: boot.map(|b| BootpOut {
                    file: b.bootfile.to_owned(),
                }),
                range: spec.dhcp().map(|r| RangeOut {
                    start: r.start.to_string(),
                    end: r.end.to_string(),
                }),
                host: spec
                    .reservations()
                    .iter()
                    .map(|r| HostOut {
                        mac: r.mac.to_string(),
                        ip: r.ip.to_string(),
                        name: r.hostname.clone(),
                    })
                    .collect(),
            }),
        },
    };
    render("network", &doc)
}

/// The parts of a network document kiln reads back: its tag and its subnet, which kiln
/// compares with the networks it is asked to create.
#[derive(Debug, Default)]
pub struct NetworkObserved {
    pub tag: Option<KilnTag>,
    pub subnets: Vec<ipnet::Ipv4Net>,
    /// Guests on it cannot reach each other (`<port isolated="yes"/>`).
    pub guests_isolated: bool,
}

#[derive(Debug, Deserialize)]
struct NetworkIn {
    #[serde(default)]
    metadata: Option<MetadataIn>,
    #[serde(default)]
    ip: Vec<IpIn>,
    #[serde(default)]
    port: Option<PortIn>,
}

#[derive(Debug, Deserialize)]
struct PortIn {
    #[serde(rename = "@isolated", default)]
    isolated: Option<String>,
}

#[derive(Debug, Deserialize)]
struct IpIn {
    #[serde(rename = "@address", default)]
    address: Option<String>,
    #[serde(rename = "@prefix", default)]
    prefix: Option<u8>,
    #[serde(rename = "@netmask", default)]
    netmask: Option<String>,
    #[serde(rename = "@family", default)]
    family: Option<String>,
}

pub fn parse_network(xml: &str) -> Result<NetworkObserved, LibvirtError> {
    let doc: NetworkIn = parse("network XML", xml)?;
    let subnets = doc
        .ip
        .iter()
        .filter(|ip| ip.family.as_deref().is_none_or(|f| f == "ipv4"))
        .filter_map(|ip| {
            let address: std::net::Ipv4Addr = ip.address.as_deref()?.parse().ok()?;
            let prefix = match (ip.prefix, ip.netmask.as_deref()) {
                (Some(prefix), _) => prefix,
                (None, Some(mask)) => {
                    let mask: std::net::Ipv4Addr = mask.parse().ok()?;
                    u8::try_from(u32::from(mask).count_ones()).ok()?
                }
                (None, None) => return None,
            };
            ipnet::Ipv4Net::new(address, prefix).ok().map(|n| n.trunc())
        })
        .collect();
    Ok(NetworkObserved {
        guests_isolated: doc
            .port
            .and_then(|p| p.isolated)
            .is_some_and(|i| i == "yes"),
        tag: tag_of(doc.metadata),
        subnets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::xml::golden::{assert_golden, tag};

    #[test]
    fn nat_network_with_reservations() {
        let mac = "52:54:00:00:00:01".parse().unwrap();
        let spec = NetworkSpec::nat("lab", "10.10.0.0/24")
            .dhcp(
                std::net::Ipv4Addr::from([10, 10, 0, 100]),
                std::net::Ipv4Addr::from([10, 10, 0, 200]),
            )
            .reserve_host(mac, std::net::Ipv4Addr::from([10, 10, 0, 10]), "web-1")
            .build()
            .unwrap();
        let xml = network_xml(&spec, &tag(), false, None).unwrap();
        assert_golden("network-nat", &xml);
        let observed = parse_network(&xml).unwrap();
        assert_eq!(observed.tag, Some(tag()));
        assert_eq!(observed.subnets, vec!["10.10.0.0/24".parse().unwrap()]);
    }

    #[test]
    fn isolated_network_without_dhcp() {
        let spec = NetworkSpec::isolated("back", "192.168.50.0/28")
            .build()
            .unwrap();
        let xml = network_xml(&spec, &tag(), false, None).unwrap();
        assert_golden("network-isolated", &xml);
    }

    #[test]
    fn libvirt_netmask_networks_parse() {
        let xml = "<network><name>default</name><ip address='192.168.122.1' netmask='255.255.255.0'/></network>";
        let observed = parse_network(xml).unwrap();
        assert_eq!(observed.subnets, vec!["192.168.122.0/24".parse().unwrap()]);
        assert_eq!(observed.tag, None);
    }
}
