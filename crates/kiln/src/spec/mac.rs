use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::SpecError;

/// A unicast Ethernet address, written `52:54:00:12:34:56`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    /// A MAC address from its six octets; multicast and all-zero addresses are refused.
    pub fn new(octets: [u8; 6]) -> Result<Self, SpecError> {
        let mac = Self(octets);
        if octets[0] & 1 == 1 {
            return Err(SpecError::InvalidMac {
                mac: mac.to_string(),
                reason: "it is a multicast address (the first octet is odd)",
            });
        }
        if octets == [0; 6] {
            return Err(SpecError::InvalidMac {
                mac: mac.to_string(),
                reason: "it is all zeros",
            });
        }
        Ok(mac)
    }

    /// `52:54:00:` (QEMU's prefix: unicast, never all zero) followed by `tail`.
    pub fn qemu(tail: [u8; 3]) -> Self {
        Self([0x52, 0x54, 0x00, tail[0], tail[1], tail[2]])
    }

    /// The address's six octets, in order.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl FromStr for MacAddr {
    type Err = SpecError;
    fn from_str(text: &str) -> Result<Self, SpecError> {
        let invalid = |reason| SpecError::InvalidMac {
            mac: text.to_owned(),
            reason,
        };
        let mut octets = [0u8; 6];
        let mut parts = text.split(':');
        for octet in &mut octets {
            let part = parts.next().ok_or_else(|| invalid("it needs six octets"))?;
            // `from_str_radix` alone would take "+1".
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid("each octet is two hex digits"));
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| invalid("octets are hex digits"))?;
        }
        if parts.next().is_some() {
            return Err(invalid("it needs six octets"));
        }
        Self::new(octets)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_lowercase() {
        let mac: MacAddr = "52:54:00:AB:cd:01".parse().unwrap();
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:01");
    }

    #[test]
    fn refuses_malformed_multicast_and_zero() {
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:01:02",
            "52-54-00-ab-cd-01",
            "52:54:00:ab:cd:1",
            "52:54:00:ab:cd:zz",
            "52:54:00:ab:cd:+1",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
        ] {
            assert!(
                matches!(bad.parse::<MacAddr>(), Err(SpecError::InvalidMac { .. })),
                "{bad}"
            );
        }
    }
}
