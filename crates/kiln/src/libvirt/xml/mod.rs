//! The libvirt XML kiln writes and reads: typed structs rendered by a serializer, never
//! strings glued together, one module per noun (domain, network, storage; the metadata tag
//! here). Only the parts kiln reads back are parsed (metadata, the agent ports, the secret);
//! libvirt owns the rest of a live document.

use serde::{Deserialize, Serialize};

use super::LibvirtError;

/// The XML namespace of kiln's metadata elements.
pub const KILN_NS: &str = "https://kiln.dev/xmlns/libvirt/1";
/// The fw_cfg entry the guest agent reads its secret from.
pub const SECRET_FW_CFG: &str = "opt/org.kiln/secret";

pub(super) fn render<T: Serialize>(root: &str, value: &T) -> Result<String, LibvirtError> {
    let mut out = String::new();
    let mut serializer = quick_xml::se::Serializer::with_root(&mut out, Some(root))
        .map_err(|err| LibvirtError::Xml(err.to_string()))?;
    serializer.indent(' ', 2);
    value
        .serialize(serializer)
        .map_err(|err| LibvirtError::Xml(err.to_string()))?;
    out.push('\n');
    Ok(out)
}

pub(super) fn parse<'de, T: Deserialize<'de>>(
    what: &'static str,
    xml: &'de str,
) -> Result<T, LibvirtError> {
    quick_xml::de::from_str(xml).map_err(|err| LibvirtError::Xml(format!("{what}: {err}")))
}

#[derive(Debug, Serialize)]
struct Empty {}

#[derive(Debug, Serialize)]
struct Text<T> {
    #[serde(rename = "@unit", skip_serializing_if = "Option::is_none")]
    unit: Option<&'static str>,
    #[serde(rename = "$text")]
    value: T,
}

/// What kiln stores in a resource it owns: who owns it and the spec it was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KilnTag {
    /// The score (or `kiln up`) that owns the resource.
    pub owner: String,
    /// The spec, as JSON.
    pub spec: String,
}

impl KilnTag {
    /// A tag saying `owner` made the resource from `spec`.
    pub fn new<S: Serialize>(owner: &str, spec: &S) -> Result<Self, LibvirtError> {
        Ok(Self {
            owner: owner.to_owned(),
            spec: serde_json::to_string(spec).map_err(|e| LibvirtError::Xml(e.to_string()))?,
        })
    }

    /// The owner and, when it still parses, the spec.
    pub fn decode<S: serde::de::DeserializeOwned>(
        tag: Option<&Self>,
    ) -> (Option<String>, Option<S>) {
        match tag {
            Some(tag) => (
                Some(tag.owner.clone()),
                serde_json::from_str(&tag.spec).ok(),
            ),
            None => (None, None),
        }
    }
}

#[derive(Debug, Serialize)]
struct MetadataOut<'a> {
    #[serde(rename = "kiln:resource")]
    resource: TagOut<'a>,
}

#[derive(Debug, Serialize)]
struct TagOut<'a> {
    #[serde(rename = "@xmlns:kiln")]
    ns: &'static str,
    #[serde(rename = "kiln:owner")]
    owner: &'a str,
    #[serde(rename = "kiln:spec")]
    spec: &'a str,
}

impl<'a> From<&'a KilnTag> for MetadataOut<'a> {
    fn from(tag: &'a KilnTag) -> Self {
        Self {
            resource: TagOut {
                ns: KILN_NS,
                owner: &tag.owner,
                spec: &tag.spec,
            },
        }
    }
}

/// The tag as `virDomainSetMetadata` takes it: the element without its namespace, which
/// libvirt adds (key `kiln`, [`KILN_NS`]).
#[derive(Debug, Serialize)]
#[serde(rename = "resource")]
struct FragmentOut<'a> {
    owner: &'a str,
    spec: &'a str,
}

impl KilnTag {
    /// The tag as a metadata fragment for `virDomainSetMetadata`.
    pub fn fragment(&self) -> Result<String, LibvirtError> {
        quick_xml::se::to_string(&FragmentOut {
            owner: &self.owner,
            spec: &self.spec,
        })
        .map_err(|e| LibvirtError::Xml(e.to_string()))
    }
}

#[derive(Debug, Deserialize)]
struct MetadataIn {
    /// `kiln:resource`: the deserializer matches local names.
    #[serde(default)]
    resource: Option<TagIn>,
}

#[derive(Debug, Deserialize)]
struct TagIn {
    owner: String,
    spec: String,
}

fn tag_of(metadata: Option<MetadataIn>) -> Option<KilnTag> {
    metadata.and_then(|m| m.resource).map(|t| KilnTag {
        owner: t.owner,
        spec: t.spec,
    })
}

/// An element whose only attribute is `type`.
#[derive(Debug, Serialize)]
struct TypeOut {
    #[serde(rename = "@type")]
    kind: &'static str,
}

mod domain;
mod network;
mod storage;

pub use domain::{
    DomainDef, DomainDisk, DomainNic, DomainObserved, DomainShare, KernelBoot, parse_domain,
};
pub use network::{NetworkBoot, NetworkObserved, network_xml, parse_network};
pub use storage::{VolumeFormat, pool_xml, private_volume_xml, volume_xml};

/// What the tests of every noun share: golden files and a tag.
#[cfg(test)]
pub(crate) mod golden {
    use super::KilnTag;

    pub(crate) fn assert_golden(name: &str, xml: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/libvirt/golden")
            .join(format!("{name}.xml"));
        if std::env::var_os("KILN_BLESS").is_some() {
            std::fs::write(&path, xml).unwrap();
        }
        let golden = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            xml, golden,
            "{name}: rerun with KILN_BLESS=1 if the change is intended"
        );
    }

    pub(crate) fn tag() -> KilnTag {
        KilnTag {
            owner: "lab".to_owned(),
            spec: r#"{"name":"web-1","note":"<&>"}"#.to_owned(),
        }
    }
}
