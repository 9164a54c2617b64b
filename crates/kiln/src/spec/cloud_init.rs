//! cloud-init's NoCloud data, from types: a [`CloudInit`] renders to `user-data` (a
//! `#cloud-config` document), `meta-data` and `network-config`, which kiln puts on a read-only
//! `cidata` seed disk. JSON is valid YAML, so all are written as JSON.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::MacAddr;

/// The most user-data kiln passes on: cloud-init reads the whole seed into memory.
pub const MAX_USER_DATA: usize = 64 * 1024;

/// Why cloud-init data is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloudInitError {
    /// Raw user-data that cloud-init would not read as cloud-config.
    #[error("user-data must start with `#cloud-config`")]
    NotCloudConfig,
    /// More user-data than kiln passes on.
    #[error("user-data is {size} bytes, over the {max} kiln accepts")]
    TooLarge {
        /// The user-data's size, in bytes.
        size: usize,
        /// The most kiln accepts, [`MAX_USER_DATA`].
        max: usize,
    },
    /// A user or host name cloud-init would reject.
    #[error("invalid {what} {value:?}")]
    InvalidName {
        /// What the name is for: `hostname`, `user name` or `NIC name`.
        what: &'static str,
        /// The name that was refused.
        value: String,
    },
    /// A file path that is not absolute and plain.
    #[error("write_files path {path:?} must be absolute and plain")]
    InvalidPath {
        /// The path as given.
        path: String,
    },
    /// An SSH key that is not one line of `TYPE BASE64 [COMMENT]`.
    #[error("ssh key {key:?} is not an OpenSSH public key line")]
    InvalidKey {
        /// The key as given.
        key: String,
    },
    /// An interface address that is not `A.B.C.D/PREFIX`.
    #[error("NIC {nic}: {address:?} is not an IPv4 address with its prefix, like 10.0.0.5/24")]
    InvalidAddress {
        /// The NIC's name in the guest.
        nic: String,
        /// The address as given.
        address: String,
    },
    /// Network config for a NIC the VM does not have.
    #[error("NIC {nic}: the VM has no NIC with MAC {mac} (give a named network that MAC)")]
    UnknownNic {
        /// The NIC's name in the guest.
        nic: String,
        /// The MAC address no NIC of the VM has.
        mac: MacAddr,
    },
    /// Two NICs of one name.
    #[error("two NICs are named {nic}")]
    DuplicateNic {
        /// The name given twice.
        nic: String,
    },
}

/// A NIC cloud-init configures (network-config version 2), found by its MAC and renamed to
/// `name`: a static address, or DHCP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudNic {
    name: String,
    mac: MacAddr,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    dhcp: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<std::net::Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    nameservers: Vec<std::net::Ipv4Addr>,
}

impl CloudNic {
    /// The VM's NIC with this MAC (a named network's, [`NetworkRef::named_with_mac`]), named
    /// `name` in the guest (1 to 15 of a-z and 0-9, starting with a letter).
    ///
    /// [`NetworkRef::named_with_mac`]: crate::NetworkRef::named_with_mac
    pub fn new(name: impl Into<String>, mac: MacAddr) -> Self {
        Self {
            name: name.into(),
            mac,
            dhcp: false,
            addresses: Vec::new(),
            gateway: None,
            nameservers: Vec::new(),
        }
    }
    /// A static address with its prefix, e.g. `10.77.0.50/24` (repeatable).
    #[must_use]
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.addresses.push(address.into());
        self
    }
    /// Asks the network's DHCP server instead.
    #[must_use]
    pub fn dhcp(mut self) -> Self {
        self.dhcp = true;
        self
    }
    /// Sets the default IPv4 gateway (`gateway4`).
    #[must_use]
    pub fn gateway(mut self, gateway: std::net::Ipv4Addr) -> Self {
        self.gateway = Some(gateway);
        self
    }
    /// Adds a DNS server (repeatable).
    #[must_use]
    pub fn nameserver(mut self, server: std::net::Ipv4Addr) -> Self {
        self.nameservers.push(server);
        self
    }
    /// The MAC address the NIC is found by.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }
    /// The NIC's name in the guest.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn render(&self) -> Value {
        let mut nic = Map::new();
        nic.insert(
            "match".to_owned(),
            json!({"macaddress": self.mac.to_string()}),
        );
        nic.insert("set-name".to_owned(), json!(self.name));
        nic.insert("dhcp4".to_owned(), json!(self.dhcp));
        if !self.addresses.is_empty() {
            nic.insert("addresses".to_owned(), json!(self.addresses));
        }
        if let Some(gateway) = self.gateway {
            nic.insert("gateway4".to_owned(), json!(gateway.to_string()));
        }
        if !self.nameservers.is_empty() {
            let servers: Vec<String> = self.nameservers.iter().map(ToString::to_string).collect();
            nic.insert("nameservers".to_owned(), json!({"addresses": servers}));
        }
        Value::Object(nic)
    }
}

/// A user cloud-init creates, with passwordless sudo and these SSH keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudUser {
    name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ssh_authorized_keys: Vec<String>,
}

/// A file cloud-init writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudFile {
    path: String,
    content: String,
    permissions: u32,
}

/// What cloud-init does at a VM's first boot. Either built from types, or a user's own
/// `#cloud-config` document passed through ([`CloudInit::raw`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudInit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    users: Vec<CloudUser>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    packages: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    runcmd: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    write_files: Vec<CloudFile>,
    /// A user's own document, used as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    raw: Option<String>,
    /// NICs cloud-init configures; without any, the network is left to kiln's init.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    nics: Vec<CloudNic>,
}

impl CloudInit {
    /// Nothing yet: add what cloud-init should do.
    pub fn new() -> Self {
        Self::default()
    }

    /// A user's own `#cloud-config` document, passed through as it is (checked only for its
    /// header and size).
    pub fn raw(user_data: impl Into<String>) -> Result<Self, CloudInitError> {
        let raw = Self {
            raw: Some(user_data.into()),
            ..Self::default()
        };
        raw.validate()?;
        Ok(raw)
    }

    /// The guest's hostname (by default, the VM's name).
    #[must_use]
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.hostname = Some(name.into());
        self
    }
    /// Adds a user with passwordless sudo.
    #[must_use]
    pub fn user(mut self, name: impl Into<String>) -> Self {
        self.users.push(CloudUser {
            name: name.into(),
            ssh_authorized_keys: Vec::new(),
        });
        self
    }
    /// Authorizes an SSH public key for the last user added (for `root` if none was).
    #[must_use]
    pub fn ssh_authorized_key(mut self, key: impl Into<String>) -> Self {
        if self.users.is_empty() {
            self = self.user("root");
        }
        if let Some(user) = self.users.last_mut() {
            user.ssh_authorized_keys.push(key.into());
        }
        self
    }
    /// Adds packages for cloud-init to install (the guest needs a way to the mirror).
    #[must_use]
    pub fn packages<I, S>(mut self, packages: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.packages.extend(packages.into_iter().map(Into::into));
        self
    }
    /// Adds a shell command run once, at the end of the first boot.
    #[must_use]
    pub fn runcmd(mut self, command: impl Into<String>) -> Self {
        self.runcmd.push(command.into());
        self
    }
    /// Has cloud-init configure a NIC (network-config version 2), with raw user-data too.
    /// The image's own init leaves the other NICs as it always does.
    #[must_use]
    pub fn nic(mut self, nic: CloudNic) -> Self {
        self.nics.push(nic);
        self
    }
    /// The NICs cloud-init configures.
    pub fn nics(&self) -> &[CloudNic] {
        &self.nics
    }
    /// Adds a file (mode 0644).
    #[must_use]
    pub fn write_file(mut self, path: impl Into<String>, content: impl Into<String>) -> Self {
        self.write_files.push(CloudFile {
            path: path.into(),
            content: content.into(),
            permissions: 0o644,
        });
        self
    }

    /// Checks names, paths, keys and size.
    pub fn validate(&self) -> Result<(), CloudInitError> {
        for (index, nic) in self.nics.iter().enumerate() {
            let mut chars = nic.name.chars();
            let plain = nic.name.len() <= 15
                && chars.next().is_some_and(|c| c.is_ascii_lowercase())
                && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
            if !plain {
                return Err(CloudInitError::InvalidName {
                    what: "NIC name",
                    value: nic.name.clone(),
                });
            }
            if self.nics[..index].iter().any(|n| n.name == nic.name) {
                return Err(CloudInitError::DuplicateNic {
                    nic: nic.name.clone(),
                });
            }
            if let Some(bad) = nic
                .addresses
                .iter()
                .find(|a| !a.contains('/') || a.parse::<ipnet::Ipv4Net>().is_err())
            {
                return Err(CloudInitError::InvalidAddress {
                    nic: nic.name.clone(),
                    address: bad.clone(),
                });
            }
        }
        if let Some(raw) = &self.raw {
            if !raw.starts_with("#cloud-config") {
                return Err(CloudInitError::NotCloudConfig);
            }
            if raw.len() > MAX_USER_DATA {
                return Err(CloudInitError::TooLarge {
                    size: raw.len(),
                    max: MAX_USER_DATA,
                });
            }
            return Ok(());
        }
        if let Some(host) = &self.hostname
            && crate::spec::validate_name(host).is_err()
        {
            return Err(CloudInitError::InvalidName {
                what: "hostname",
                value: host.clone(),
            });
        }
        for user in &self.users {
            let plain = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c);
            if user.name.is_empty()
                || user.name.len() > 32
                || !user.name.chars().all(plain)
                || user.name.starts_with('-')
            {
                return Err(CloudInitError::InvalidName {
                    what: "user name",
                    value: user.name.clone(),
                });
            }
            for key in &user.ssh_authorized_keys {
                let mut parts = key.split_whitespace();
                let kind_ok = parts
                    .next()
                    .is_some_and(|k| k.starts_with("ssh-") || k.starts_with("ecdsa-"));
                if !kind_ok || parts.next().is_none() || key.contains('\n') {
                    return Err(CloudInitError::InvalidKey { key: key.clone() });
                }
            }
        }
        for file in &self.write_files {
            let plain = file.path.starts_with('/')
                && !file.path.contains('\0')
                && file.path[1..]
                    .split('/')
                    .all(|part| !part.is_empty() && part != "." && part != "..");
            if !plain {
                return Err(CloudInitError::InvalidPath {
                    path: file.path.clone(),
                });
            }
        }
        let size = self.user_data("x").len();
        if size > MAX_USER_DATA {
            return Err(CloudInitError::TooLarge {
                size,
                max: MAX_USER_DATA,
            });
        }
        Ok(())
    }

    /// The `user-data` file for VM `vm`.
    pub fn user_data(&self, vm: &str) -> String {
        if let Some(raw) = &self.raw {
            return raw.clone();
        }
        let mut doc = Map::new();
        doc.insert(
            "hostname".to_owned(),
            json!(self.hostname.as_deref().unwrap_or(vm)),
        );
        // So the guest resolves its own name (sudo asks).
        doc.insert("manage_etc_hosts".to_owned(), json!(true));
        if !self.users.is_empty() {
            let users: Vec<Value> = self
                .users
                .iter()
                .map(|u| {
                    if u.name == "root" {
                        json!({"name": "root", "ssh_authorized_keys": u.ssh_authorized_keys})
                    } else {
                        json!({
                            "name": u.name,
                            "shell": "/bin/bash",
                            "sudo": "ALL=(ALL) NOPASSWD:ALL",
                            "lock_passwd": true,
                            "ssh_authorized_keys": u.ssh_authorized_keys,
                        })
                    }
                })
                .collect();
            doc.insert("users".to_owned(), Value::Array(users));
            // cloud-init refuses root's keys unless told otherwise.
            if self
                .users
                .iter()
                .any(|u| u.name == "root" && !u.ssh_authorized_keys.is_empty())
            {
                doc.insert("disable_root".to_owned(), json!(false));
            }
        }
        if !self.packages.is_empty() {
            doc.insert("packages".to_owned(), json!(self.packages));
        }
        if !self.runcmd.is_empty() {
            doc.insert("runcmd".to_owned(), json!(self.runcmd));
        }
        if !self.write_files.is_empty() {
            let files: Vec<Value> = self
                .write_files
                .iter()
                .map(|f| {
                    json!({
                        "path": f.path,
                        "content": f.content,
                        "permissions": format!("{:04o}", f.permissions),
                    })
                })
                .collect();
            doc.insert("write_files".to_owned(), Value::Array(files));
        }
        format!("#cloud-config\n{}\n", Value::Object(doc))
    }

    /// The `network-config` file: version 2 for the NICs cloud-init configures, or, with
    /// none, `config: disabled` (cloud-init would otherwise ask DHCP on the first NIC, which
    /// kiln's init already configures).
    pub fn network_config(&self) -> String {
        if self.nics.is_empty() {
            return format!("{}\n", json!({"config": "disabled"}));
        }
        let ethernets: Map<String, Value> = self
            .nics
            .iter()
            .map(|nic| (nic.name.clone(), nic.render()))
            .collect();
        format!("{}\n", json!({"version": 2, "ethernets": ethernets}))
    }

    /// The `meta-data` file for VM `vm`: its instance id and name.
    pub fn meta_data(&self, vm: &str) -> String {
        format!(
            "{}\n",
            json!({"instance-id": format!("kiln-{vm}"), "local-hostname": self.hostname.as_deref().unwrap_or(vm)})
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_data_renders_to_cloud_config() {
        let ci = CloudInit::new()
            .hostname("web")
            .user("ops")
            .ssh_authorized_key("ssh-ed25519 AAAAC3Nza kiln@test")
            .runcmd("touch /run/marker")
            .write_file("/etc/motd", "hi\n");
        ci.validate().unwrap();
        let user_data = ci.user_data("vm-1");
        let (header, body) = user_data.split_once('\n').unwrap();
        assert_eq!(header, "#cloud-config");
        let doc: Value = serde_json::from_str(body).unwrap();
        assert_eq!(doc["hostname"], "web");
        assert_eq!(doc["users"][0]["name"], "ops");
        assert_eq!(
            doc["users"][0]["ssh_authorized_keys"][0],
            "ssh-ed25519 AAAAC3Nza kiln@test"
        );
        assert_eq!(doc["runcmd"][0], "touch /run/marker");
        assert_eq!(doc["write_files"][0]["permissions"], "0644");
        let meta: Value = serde_json::from_str(&ci.meta_data("vm-1")).unwrap();
        assert_eq!(meta["instance-id"], "kiln-vm-1");
    }

    #[test]
    fn bad_data_is_refused() {
        assert_eq!(
            CloudInit::raw("users: []"),
            Err(CloudInitError::NotCloudConfig)
        );
        let huge = format!("#cloud-config\n{}", "x".repeat(MAX_USER_DATA));
        assert!(matches!(
            CloudInit::raw(huge),
            Err(CloudInitError::TooLarge { .. })
        ));
        let bad_user = CloudInit::new().user("Root Me");
        assert!(matches!(
            bad_user.validate(),
            Err(CloudInitError::InvalidName { .. })
        ));
        let bad_key = CloudInit::new().user("ops").ssh_authorized_key("hello");
        assert!(matches!(
            bad_key.validate(),
            Err(CloudInitError::InvalidKey { .. })
        ));
        let bad_path = CloudInit::new().write_file("../etc/x", "");
        assert!(matches!(
            bad_path.validate(),
            Err(CloudInitError::InvalidPath { .. })
        ));
        assert!(CloudInit::raw("#cloud-config\nruncmd: [true]\n").is_ok());
        let mac: MacAddr = "52:54:00:aa:bb:01".parse().unwrap();
        for (nic, expected) in [
            (CloudNic::new("Lan0", mac), "NIC name"),
            (CloudNic::new("lan0", mac).address("10.0.0.5"), "address"),
            (
                CloudNic::new("lan0", mac).address("10.0.0.300/24"),
                "address",
            ),
        ] {
            let err = CloudInit::new().nic(nic).validate().unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
        }
        let twice = CloudInit::new()
            .nic(CloudNic::new("lan0", mac))
            .nic(CloudNic::new("lan0", mac));
        assert!(matches!(
            twice.validate(),
            Err(CloudInitError::DuplicateNic { .. })
        ));
    }

    #[test]
    fn network_config_is_version_2_by_mac_or_disabled() {
        let none: Value = serde_json::from_str(&CloudInit::new().network_config()).unwrap();
        assert_eq!(none, json!({"config": "disabled"}));
        let mac: MacAddr = "52:54:00:aa:bb:01".parse().unwrap();
        let ci = CloudInit::new().nic(
            CloudNic::new("lan0", mac)
                .address("10.77.0.50/24")
                .gateway([10, 77, 0, 1].into())
                .nameserver([10, 77, 0, 1].into()),
        );
        ci.validate().unwrap();
        let doc: Value = serde_json::from_str(&ci.network_config()).unwrap();
        assert_eq!(doc["version"], 2);
        let lan = &doc["ethernets"]["lan0"];
        assert_eq!(lan["match"]["macaddress"], "52:54:00:aa:bb:01");
        assert_eq!(lan["set-name"], "lan0");
        assert_eq!(lan["addresses"][0], "10.77.0.50/24");
        assert_eq!(lan["gateway4"], "10.77.0.1");
        assert_eq!(lan["nameservers"]["addresses"][0], "10.77.0.1");
        assert_eq!(lan["dhcp4"], false);
    }
}
