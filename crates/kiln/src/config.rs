//! The user's defaults: `$XDG_CONFIG_HOME/kiln/config.toml` (or `KILN_CONFIG`), overridden
//! by environment variables, overridden in turn by the command line. Each effective value
//! knows where it came from (`kiln config show`).
//!
//! ```toml
//! backend = "libvirt"          # or "qemu" (the daemonless backend)
//! libvirt_uri = "qemu+ssh://root@host/system"
//! cpus = 2
//! memory = "1G"
//! image = "debian"
//! net = "nat"                  # nat, none or host
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::spec::{ByteSize, NetPolicy};
use crate::{IoError, Result};

/// A config file that is not what kiln reads.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file does not parse, or has a key kiln does not know.
    #[error("config file {} is not valid: {reason}", path.display())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// What the TOML parser said.
        reason: String,
    },
    /// A value (from the file or the environment) that is not what its setting takes.
    #[error("{source_name} = {value:?} is not a valid {what}")]
    BadValue {
        /// Where it came from: `$VAR`, or `key in FILE`.
        source_name: String,
        /// The value as given.
        value: String,
        /// What it should have been, with examples.
        what: &'static str,
    },
}

/// Which backend `kiln up` uses without `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The daemonless QEMU backend on this machine (the default).
    Qemu,
    /// A libvirt daemon, at [`Config::libvirt_uri`].
    Libvirt,
}

/// The file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    backend: Option<Backend>,
    libvirt_uri: Option<String>,
    cpus: Option<u32>,
    memory: Option<String>,
    image: Option<String>,
    net: Option<String>,
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "name")]
pub enum Source {
    /// kiln's built-in default.
    Default,
    /// The config file at this path.
    File(PathBuf),
    /// This environment variable.
    Env(&'static str),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Env(var) => write!(f, "${var}"),
        }
    }
}

/// One effective value and its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Setting<T> {
    /// The value in effect.
    pub value: T,
    /// Where it came from.
    pub source: Source,
}

/// The effective defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// The backend VMs go to (`KILN_BACKEND`; `qemu` by default).
    pub backend: Setting<Backend>,
    /// The libvirt URI (`KILN_LIBVIRT_URI`; `qemu:///system` by default).
    pub libvirt_uri: Setting<String>,
    /// A new VM's vCPUs (`KILN_CPUS`; 1 by default).
    pub cpus: Setting<u32>,
    /// A new VM's memory (`KILN_MEMORY`; 512 MiB by default).
    pub memory: Setting<ByteSize>,
    /// The image a new VM is created from (`KILN_IMAGE`; `default` by default).
    pub image: Setting<String>,
    /// A new VM's network policy (`KILN_NET`; `nat` by default).
    pub net: Setting<NetPolicy>,
    /// The file read, whether or not it exists.
    pub file: PathBuf,
}

/// Where the config file is: `KILN_CONFIG`, else `$XDG_CONFIG_HOME/kiln/config.toml`.
pub fn path() -> PathBuf {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(path) = var("KILN_CONFIG") {
        return path;
    }
    var("XDG_CONFIG_HOME")
        .or_else(|| var("HOME").map(|h| h.join(".config")))
        .unwrap_or_else(|| PathBuf::from("/root/.config"))
        .join("kiln/config.toml")
}

impl Config {
    /// The file (if any), then the environment, over kiln's defaults.
    pub fn load() -> Result<Self> {
        Self::load_from(&path(), |name| std::env::var(name).ok())
    }

    /// [`load`](Self::load) from `file`, with `env` for the environment.
    pub fn load_from(file: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => Some(text),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => return Err(IoError::new("read", file, err).into()),
        };
        let parsed: File = match &text {
            Some(text) => toml::from_str(text).map_err(|err| ConfigError::Invalid {
                path: file.to_owned(),
                reason: err.message().to_owned(),
            })?,
            None => File::default(),
        };
        let from_file = || Source::File(file.to_owned());
        let pick = |env_name: &'static str, in_file: Option<String>, default: &str| match (
            env(env_name).filter(|v| !v.is_empty()),
            in_file,
        ) {
            (Some(value), _) => (value, Source::Env(env_name)),
            (None, Some(value)) => (value, from_file()),
            (None, None) => (default.to_owned(), Source::Default),
        };
        let bad = |source: &Source, name: &str, value: &str, what| ConfigError::BadValue {
            source_name: match source {
                Source::Env(var) => format!("${var}"),
                _ => format!("{name} in {}", file.display()),
            },
            value: value.to_owned(),
            what,
        };

        let (backend, source) = pick(
            "KILN_BACKEND",
            parsed.backend.map(|b| format!("{b:?}").to_lowercase()),
            "qemu",
        );
        let backend = Setting {
            value: match backend.as_str() {
                "qemu" => Backend::Qemu,
                "libvirt" => Backend::Libvirt,
                _ => {
                    return Err(bad(&source, "backend", &backend, "backend (qemu, libvirt)").into());
                }
            },
            source,
        };
        let (uri, source) = pick("KILN_LIBVIRT_URI", parsed.libvirt_uri, "qemu:///system");
        let libvirt_uri = Setting { value: uri, source };
        let (cpus, source) = pick("KILN_CPUS", parsed.cpus.map(|c| c.to_string()), "1");
        let cpus = Setting {
            value: cpus
                .parse()
                .map_err(|_| bad(&source, "cpus", &cpus, "number of vCPUs"))?,
            source,
        };
        let (memory, source) = pick("KILN_MEMORY", parsed.memory, "512M");
        let memory = Setting {
            value: memory
                .parse()
                .map_err(|_| bad(&source, "memory", &memory, "size (512M, 2G)"))?,
            source,
        };
        let (image, source) = pick("KILN_IMAGE", parsed.image, crate::spec::DEFAULT_IMAGE);
        if crate::spec::validate_name(&image).is_err() {
            return Err(bad(&source, "image", &image, "image name").into());
        }
        let image = Setting {
            value: image,
            source,
        };
        let (net, source) = pick("KILN_NET", parsed.net, "nat");
        let net = Setting {
            value: net
                .parse()
                .map_err(|_| bad(&source, "net", &net, "network policy (nat, none, host)"))?,
            source,
        };
        Ok(Self {
            backend,
            libvirt_uri,
            cpus,
            memory,
            image,
            net,
            file: file.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn defaults_then_the_file_then_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        let none = Config::load_from(&file, env(&[])).unwrap();
        assert_eq!(none.cpus.value, 1);
        assert_eq!(none.cpus.source, Source::Default);
        assert_eq!(none.backend.value, Backend::Qemu);
        std::fs::write(
            &file,
            "backend = \"libvirt\"\ncpus = 2\nmemory = \"1G\"\nimage = \"debian\"\nnet = \"none\"\n",
        )
        .unwrap();
        let from_file = Config::load_from(&file, env(&[("KILN_CPUS", "4")])).unwrap();
        assert_eq!(from_file.backend.value, Backend::Libvirt);
        assert_eq!(from_file.memory.value, ByteSize::from_gib(1));
        assert_eq!(from_file.memory.source, Source::File(file.clone()));
        assert_eq!(from_file.image.value, "debian");
        assert_eq!(from_file.net.value, NetPolicy::None);
        assert_eq!(from_file.cpus.value, 4);
        assert_eq!(from_file.cpus.source, Source::Env("KILN_CPUS"));
        assert_eq!(from_file.libvirt_uri.source, Source::Default);
    }

    #[test]
    fn bad_files_and_values_are_refused_with_their_source() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "cpus = \"many\"\n").unwrap();
        let err = Config::load_from(&file, env(&[])).unwrap_err();
        assert!(err.to_string().contains("is not valid"), "{err}");
        std::fs::write(&file, "colour = \"red\"\n").unwrap();
        assert!(Config::load_from(&file, env(&[])).is_err());
        std::fs::write(&file, "memory = \"lots\"\n").unwrap();
        let err = Config::load_from(&file, env(&[])).unwrap_err();
        assert!(err.to_string().contains("memory in"), "{err}");
        std::fs::remove_file(&file).unwrap();
        let err = Config::load_from(&file, env(&[("KILN_NET", "everywhere")])).unwrap_err();
        assert!(err.to_string().contains("$KILN_NET"), "{err}");
    }
}
