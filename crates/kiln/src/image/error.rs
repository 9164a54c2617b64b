//! What can go wrong while building or finding an image, each with what to try next.

use std::path::PathBuf;

use super::RecipeError;
use crate::IoError;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot run {program}")]
    ToolMissing {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed with exit code {status}: {stderr}")]
    ToolFailed {
        program: String,
        status: i32,
        stderr: String,
    },
    #[error("cannot tell which kernel package linux-image-amd64 depends on")]
    KernelPackageUnknown,
    #[error("{} is not a usable kernel: {reason}", path.display())]
    KernelFormat { path: PathBuf, reason: String },
    #[error("kernel module {name} is neither in the kernel package nor built in")]
    ModuleMissing { name: String },
    #[error("{what} not found at {}", path.display())]
    InputMissing { what: &'static str, path: PathBuf },
    #[error("the guest agent at {} is not a static executable", path.display())]
    AgentNotStatic { path: PathBuf },
    #[error("no guest agent binary found (looked in {})", looked.join(", "))]
    AgentNotFound { looked: Vec<String> },
    #[error("image {image}: Debian {suite} has no package {package}")]
    UnknownPackage {
        image: String,
        suite: String,
        package: String,
    },
    #[error("image {image}: {detail}\n{output}")]
    SetupFailed {
        image: String,
        detail: String,
        output: String,
    },
    #[error("image {image}: its files do not fit in {size}")]
    TooSmall {
        image: String,
        size: crate::ByteSize,
    },
    #[error("not enough space in {}: a build needs {needed}, {available} is free", path.display())]
    NoSpace {
        path: PathBuf,
        needed: crate::ByteSize,
        available: crate::ByteSize,
    },
    #[error("cannot tell which Debian mirror to use")]
    MirrorUnknown,
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error(transparent)]
    Io(#[from] IoError),
}

impl ImageError {
    pub fn hint(&self) -> Option<String> {
        let hint = match self {
            Self::ToolMissing { .. } | Self::KernelPackageUnknown => {
                "run scripts/setup.sh (or `apt-get update`) so apt can find linux-image-amd64"
            }
            Self::ToolFailed { .. } => "check that `apt-get download linux-image-amd64` works here",
            Self::InputMissing { what, .. } if what.contains("busybox") => {
                "install busybox-static (scripts/setup.sh does)"
            }
            Self::InputMissing { .. } => {
                "check the path; without --kernel-deb kiln downloads linux-image-amd64 with apt"
            }
            Self::AgentNotStatic { .. } | Self::AgentNotFound { .. } => {
                "build it with scripts/build-agent.sh, or point KILN_AGENT at a static kiln-agent"
            }
            Self::UnknownPackage { .. } => {
                "check the name with `apt-cache policy NAME`; nothing was cached"
            }
            Self::SetupFailed { .. } => "fix the recipe's setup command; nothing was cached",
            Self::TooSmall { .. } => {
                "give the recipe a larger size (ImageSpec::builder(..).size_gib(N))"
            }
            Self::NoSpace { .. } => "free space there, or point KILN_CACHE_DIR at a larger disk",
            Self::MirrorUnknown => {
                "set KILN_DEBIAN_MIRROR (e.g. http://deb.debian.org/debian), or add a Debian apt source"
            }
            _ => return None,
        };
        Some(hint.to_owned())
    }
}
