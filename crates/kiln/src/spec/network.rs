use serde::{Deserialize, Serialize};

use super::{SpecError, validate_name};

/// Which network a NIC is attached to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkRef {
    /// Unprivileged user-mode NAT with outbound access (QEMU's `-netdev user`).
    User,
    /// A named network (a libvirt network, or a kiln bridge).
    Named(String),
}

impl NetworkRef {
    pub fn named(name: impl Into<String>) -> Self {
        Self::Named(name.into())
    }

    pub(crate) fn validate(&self) -> Result<(), SpecError> {
        match self {
            Self::User => Ok(()),
            Self::Named(name) => {
                validate_name(name).map_err(|_| SpecError::InvalidNetwork { name: name.clone() })
            }
        }
    }
}
