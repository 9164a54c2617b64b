//! Host directories shared into a guest (virtio-9p): `kiln up -v HOST:GUEST[:ro]`.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::SpecError;

/// The most shares a VM may have.
pub const MAX_SHARES: usize = 16;

/// A host directory mounted in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareSpec {
    host: PathBuf,
    guest: String,
    #[serde(default)]
    read_only: bool,
}

impl ShareSpec {
    /// `host` (absolute) appears at `guest` (absolute), writable.
    pub fn new(host: impl Into<PathBuf>, guest: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            guest: guest.into(),
            read_only: false,
        }
    }

    /// The guest cannot write: QEMU refuses writes, and the guest mounts it read-only.
    #[must_use]
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// The shared directory on the host.
    pub fn host(&self) -> &Path {
        &self.host
    }
    /// Where the guest mounts it.
    pub fn guest(&self) -> &str {
        &self.guest
    }
    /// Whether the guest is kept from writing to it.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The 9p mount tag of the share at `index`.
    pub fn tag(index: usize) -> String {
        format!("kiln{index}")
    }

    pub(super) fn validate(&self, index: usize) -> Result<(), SpecError> {
        let invalid = |reason| SpecError::InvalidShare {
            index,
            share: format!("{}:{}", self.host.display(), self.guest),
            reason,
        };
        if !self.host.is_absolute() {
            return Err(invalid("the host path must be absolute"));
        }
        if !self.guest.starts_with('/') || self.guest == "/" {
            return Err(invalid("the guest path must be absolute and not /"));
        }
        // It goes on the kernel command line: plain characters only.
        if !self
            .guest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c))
            || self.guest.len() > 200
        {
            return Err(invalid(
                "the guest path may use only a-z, A-Z, 0-9, '/', '.', '_' and '-' (200 at most)",
            ));
        }
        if self.guest.split('/').any(|part| part == "..") {
            return Err(invalid("the guest path may not contain '..'"));
        }
        Ok(())
    }
}

/// `HOST:GUEST`, `HOST:GUEST:ro` or `HOST:GUEST:rw`.
impl FromStr for ShareSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (rest, read_only) = match s.rsplit_once(':') {
            Some((rest, "ro")) => (rest, true),
            Some((rest, "rw")) => (rest, false),
            _ => (s, false),
        };
        let Some((host, guest)) = rest.rsplit_once(':') else {
            return Err(format!("{s:?} is not HOST:GUEST[:ro]"));
        };
        if host.is_empty() || guest.is_empty() {
            return Err(format!("{s:?} is not HOST:GUEST[:ro]"));
        }
        let share = Self::new(host, guest);
        Ok(if read_only { share.read_only() } else { share })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_host_guest_and_mode() {
        let share: ShareSpec = "/srv/data:/data:ro".parse().unwrap();
        assert_eq!(share.host(), Path::new("/srv/data"));
        assert_eq!(share.guest(), "/data");
        assert!(share.is_read_only());
        let share: ShareSpec = "/a:/b".parse().unwrap();
        assert!(!share.is_read_only());
        assert!("/only".parse::<ShareSpec>().is_err());
        assert!(":/x".parse::<ShareSpec>().is_err());
    }

    #[test]
    fn refuses_paths_that_cannot_be_shared() {
        for (host, guest) in [
            ("rel", "/x"),
            ("/a", "x"),
            ("/a", "/"),
            ("/a", "/with space"),
            ("/a", "/x/../etc"),
            ("/a", "/x,y"),
        ] {
            assert!(
                ShareSpec::new(host, guest).validate(0).is_err(),
                "{host}:{guest} accepted"
            );
        }
        assert!(ShareSpec::new("/a b", "/data").validate(0).is_ok());
    }
}
