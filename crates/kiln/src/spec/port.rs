//! Ports of the host forwarded to a guest on user-mode networking: `-p 8080:80[/udp]`.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The transport protocol a port forward carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP connections; the default when a forward names no protocol.
    Tcp,
    /// UDP datagrams.
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// Connections to `host_addr:host_port` on the host reach `guest_port` in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortForward {
    /// Whether TCP or UDP is forwarded.
    pub protocol: Protocol,
    /// 127.0.0.1 unless asked: a forwarded port is not opened to the network by default.
    pub host_addr: Ipv4Addr,
    /// The port listened on at the host, 1 to 65535.
    pub host_port: u16,
    /// The guest's port that connections reach, 1 to 65535.
    pub guest_port: u16,
}

impl PortForward {
    /// Forwards TCP from the host's 127.0.0.1:`host_port` to `guest_port`.
    pub fn tcp(host_port: u16, guest_port: u16) -> Self {
        Self {
            protocol: Protocol::Tcp,
            host_addr: Ipv4Addr::LOCALHOST,
            host_port,
            guest_port,
        }
    }

    /// Forwards UDP from the host's 127.0.0.1:`host_port` to `guest_port`.
    pub fn udp(host_port: u16, guest_port: u16) -> Self {
        Self {
            protocol: Protocol::Udp,
            ..Self::tcp(host_port, guest_port)
        }
    }

    /// The same rule in QEMU's `hostfwd` syntax: `tcp:127.0.0.1:8080-:80`.
    pub fn hostfwd(&self) -> String {
        format!(
            "{}:{}:{}-:{}",
            self.protocol, self.host_addr, self.host_port, self.guest_port
        )
    }
}

impl fmt::Display for PortForward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}->{}/{}",
            self.host_addr, self.host_port, self.guest_port, self.protocol
        )
    }
}

/// `[ADDR:]HOST:GUEST[/tcp|/udp]`; ports are 1-65535.
impl FromStr for PortForward {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| format!("{s:?}: {why} (expected [ADDR:]HOST:GUEST[/udp])");
        let (ports, protocol) = match s.rsplit_once('/') {
            Some((ports, "tcp")) => (ports, Protocol::Tcp),
            Some((ports, "udp")) => (ports, Protocol::Udp),
            Some(_) => return Err(bad("the protocol is tcp or udp")),
            None => (s, Protocol::Tcp),
        };
        let parts: Vec<&str> = ports.split(':').collect();
        let (addr, host, guest) = match parts[..] {
            [host, guest] => (Ipv4Addr::LOCALHOST, host, guest),
            [addr, host, guest] => (
                addr.parse().map_err(|_| bad("the address is not IPv4"))?,
                host,
                guest,
            ),
            _ => return Err(bad("wrong number of ':'")),
        };
        let port = |text: &str| match text.parse::<u16>() {
            Ok(0) | Err(_) => Err(bad("ports are 1 to 65535")),
            Ok(port) => Ok(port),
        };
        Ok(Self {
            protocol,
            host_addr: addr,
            host_port: port(host)?,
            guest_port: port(guest)?,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_ports_address_and_protocol() {
        assert_eq!("8080:80".parse(), Ok(PortForward::tcp(8080, 80)));
        assert_eq!("5353:53/udp".parse(), Ok(PortForward::udp(5353, 53)));
        let any: PortForward = "0.0.0.0:8443:443/tcp".parse().unwrap();
        assert_eq!(any.host_addr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(any.hostfwd(), "tcp:0.0.0.0:8443-:443");
    }

    #[test]
    fn refuses_ports_outside_the_range_and_junk() {
        for bad in [
            "0:80",
            "8080:0",
            "70000:80",
            "-1:80",
            "80",
            "a:b",
            "80:80/sctp",
            "x:1:2",
        ] {
            assert!(bad.parse::<PortForward>().is_err(), "{bad} accepted");
        }
    }
}
