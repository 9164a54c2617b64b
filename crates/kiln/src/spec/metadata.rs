//! A VM's metadata: the user's key/values and secrets by reference, which the guest finds on
//! its read-only config drive (`/run/kiln/config`). Values are plain text in the spec; a
//! secret is only a path on the host, read at each start, so the spec (the VM's record, a
//! libvirt domain's XML) never holds a secret itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The longest metadata key or secret name.
pub const MAX_KEY_LEN: usize = 64;
/// The longest metadata value, in bytes.
pub const MAX_VALUE_LEN: usize = 4096;
/// The most metadata entries, and the most secrets, a VM has.
pub const MAX_ENTRIES: usize = 64;
/// The largest secret file, in bytes.
pub const MAX_SECRET_LEN: u64 = 64 * 1024;
/// The most bytes all of a VM's secrets may hold together.
pub const MAX_SECRETS_TOTAL: u64 = 1024 * 1024;

/// Metadata or a secret that is not accepted. Each variant names the offending key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// A metadata key or secret name is not a plain identifier (see [`valid_key`]).
    #[error("metadata key {key:?} is not a plain identifier")]
    BadKey {
        /// The key or name that was refused.
        key: String,
    },
    /// A value is longer than [`MAX_VALUE_LEN`] bytes.
    #[error("the value of metadata key {key} is {len} bytes; at most {MAX_VALUE_LEN} are allowed")]
    ValueTooLong {
        /// The key whose value is too long.
        key: String,
        /// The value's length, in bytes.
        len: usize,
    },
    /// A value holds a control character other than tab and newline, or U+FFFE or U+FFFF.
    #[error("the value of metadata key {key} holds a control character")]
    ControlCharacter {
        /// The key whose value holds it.
        key: String,
    },
    /// There are more than [`MAX_ENTRIES`] key/values, or more than that many secrets.
    #[error("{count} metadata entries or secrets; at most {MAX_ENTRIES} of each are allowed")]
    TooMany {
        /// How many key/values, or secrets, there are.
        count: usize,
    },
    /// A secret's host file is not given by an absolute path.
    #[error("secret {name}: {path:?} is not an absolute path")]
    RelativeSecretPath {
        /// The secret's name.
        name: String,
        /// The path as given.
        path: PathBuf,
    },
    /// An argument meant as `KEY=VALUE` has no `=`.
    #[error("{entry:?} is not KEY=VALUE")]
    NotAnAssignment {
        /// The argument as given.
        entry: String,
    },
}

/// Whether `key` is a plain identifier: an ASCII letter, then letters, digits, `_`, `-` or
/// `.`, at most [`MAX_KEY_LEN`] in all. Keys become file names on the config drive.
pub fn valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    key.len() <= MAX_KEY_LEN
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Splits a `KEY=VALUE` argument (`kiln up --metadata role=db`).
pub fn parse_assignment(entry: &str) -> Result<(String, String), MetadataError> {
    let (key, value) = entry
        .split_once('=')
        .ok_or_else(|| MetadataError::NotAnAssignment {
            entry: entry.to_owned(),
        })?;
    check_value(key, value)?;
    Ok((key.to_owned(), value.to_owned()))
}

fn check_key(key: &str) -> Result<(), MetadataError> {
    if valid_key(key) {
        Ok(())
    } else {
        Err(MetadataError::BadKey {
            key: key.to_owned(),
        })
    }
}

fn check_value(key: &str, value: &str) -> Result<(), MetadataError> {
    check_key(key)?;
    if value.len() > MAX_VALUE_LEN {
        return Err(MetadataError::ValueTooLong {
            key: key.to_owned(),
            len: value.len(),
        });
    }
    // Tabs and newlines are text; other control characters are not, nor are the two
    // noncharacters XML cannot carry (a libvirt domain's tag holds the value).
    if value.chars().any(|c| {
        (c.is_control() && !matches!(c, '\t' | '\n')) || matches!(c, '\u{fffe}' | '\u{ffff}')
    }) {
        return Err(MetadataError::ControlCharacter {
            key: key.to_owned(),
        });
    }
    Ok(())
}

/// A change to a VM's metadata key/values, applied to what the VM has when the change is
/// made (under the VM's lock on the daemonless backend), so two changes do not undo each
/// other: keys to remove, then keys to set (so a key in both ends up set).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataChange {
    /// Keys to set, with their new values.
    pub set: BTreeMap<String, String>,
    /// Keys to remove; a key also in `set` keeps its new value.
    pub unset: Vec<String>,
}

impl MetadataChange {
    /// Whether the change neither sets nor removes a key.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.unset.is_empty()
    }

    /// `values` with the change applied.
    pub fn apply(&self, values: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut values = values.clone();
        for key in &self.unset {
            values.remove(key);
        }
        values.extend(self.set.iter().map(|(k, v)| (k.clone(), v.clone())));
        values
    }
}

/// The user's metadata of one VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Key/values, in `metadata.json`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) values: BTreeMap<String, String>,
    /// Secret name to the host file holding it; the guest finds the file's contents at
    /// `/run/kiln/config/secrets/NAME` (mode 0400).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) secrets: BTreeMap<String, PathBuf>,
}

impl Metadata {
    /// Whether there are neither key/values nor secrets.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.secrets.is_empty()
    }

    /// The key/values.
    pub fn values(&self) -> &BTreeMap<String, String> {
        &self.values
    }

    /// Each secret's name and the host file it is read from.
    pub fn secrets(&self) -> &BTreeMap<String, PathBuf> {
        &self.secrets
    }

    pub(crate) fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.values.insert(key.into(), value.into());
    }

    pub(crate) fn set_secret(&mut self, name: impl Into<String>, path: impl AsRef<Path>) {
        self.secrets.insert(name.into(), path.as_ref().to_owned());
    }

    /// Checks the number of key/values and of secrets, every key, value and secret name,
    /// and that every secret's path is absolute. Secret files are not read.
    pub fn validate(&self) -> Result<(), MetadataError> {
        for count in [self.values.len(), self.secrets.len()] {
            if count > MAX_ENTRIES {
                return Err(MetadataError::TooMany { count });
            }
        }
        for (key, value) in &self.values {
            check_value(key, value)?;
        }
        for (name, path) in &self.secrets {
            check_key(name)?;
            if !path.is_absolute() {
                return Err(MetadataError::RelativeSecretPath {
                    name: name.clone(),
                    path: path.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_plain_identifiers() {
        for good in [
            "role",
            "a",
            "app.tier",
            "db_host-2",
            &"k".repeat(MAX_KEY_LEN),
        ] {
            assert!(valid_key(good), "{good}");
        }
        for bad in [
            "",
            "1role",
            "_x",
            "a b",
            "a/b",
            "..",
            "role=",
            "é",
            "a\n",
            &"k".repeat(MAX_KEY_LEN + 1),
        ] {
            assert!(!valid_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn assignments_split_at_the_first_equals_sign() {
        assert_eq!(
            parse_assignment("dsn=a=b").unwrap(),
            ("dsn".to_owned(), "a=b".to_owned())
        );
        assert_eq!(
            parse_assignment("empty=").unwrap(),
            ("empty".to_owned(), String::new())
        );
        assert!(matches!(
            parse_assignment("role"),
            Err(MetadataError::NotAnAssignment { .. })
        ));
        assert!(matches!(
            parse_assignment("bad key=x"),
            Err(MetadataError::BadKey { .. })
        ));
    }

    #[test]
    fn oversized_and_binary_values_are_refused() {
        let mut m = Metadata::default();
        m.set("big", "x".repeat(MAX_VALUE_LEN + 1));
        assert!(matches!(
            m.validate(),
            Err(MetadataError::ValueTooLong { .. })
        ));
        let mut m = Metadata::default();
        m.set("bell", "a\u{7}b");
        assert!(matches!(
            m.validate(),
            Err(MetadataError::ControlCharacter { .. })
        ));
        let mut m = Metadata::default();
        m.set("nonchar", "a\u{fffe}");
        assert!(matches!(
            m.validate(),
            Err(MetadataError::ControlCharacter { .. })
        ));
        let mut m = Metadata::default();
        m.set("text", "line one\n\tline two");
        assert!(m.validate().is_ok());
    }

    #[test]
    fn too_many_entries_and_relative_secret_paths_are_refused() {
        let mut m = Metadata::default();
        for i in 0..=MAX_ENTRIES {
            m.set(format!("k{i}"), "v");
        }
        assert!(matches!(m.validate(), Err(MetadataError::TooMany { .. })));
        let mut m = Metadata::default();
        m.set_secret("token", "token.txt");
        assert!(matches!(
            m.validate(),
            Err(MetadataError::RelativeSecretPath { .. })
        ));
    }

    #[test]
    fn deserialized_metadata_is_checked_like_built_metadata() {
        let m: Metadata = serde_json::from_str(r#"{"values":{"../x":"v"}}"#).unwrap();
        assert!(matches!(m.validate(), Err(MetadataError::BadKey { .. })));
    }
}
