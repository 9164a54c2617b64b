//! What can go wrong while building or finding an image, each with what to try next.

use std::path::PathBuf;

use super::RecipeError;
use crate::IoError;

/// What can go wrong while building or finding an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A build tool (apt, dpkg-deb, mmdebstrap, mkfs.ext4, debugfs…) cannot be started.
    #[error("cannot run {program}")]
    ToolMissing {
        /// The tool's name.
        program: String,
        /// The underlying IO error.
        #[source]
        source: std::io::Error,
    },
    /// A build tool ran but failed, or did not produce what it should have.
    #[error("{program} failed with exit code {status}: {stderr}")]
    ToolFailed {
        /// The tool's name.
        program: String,
        /// Its exit code: -1 when a signal ended it; 0 when it exited cleanly but complained
        /// or left out what it should have made.
        status: i32,
        /// What it wrote to stderr (cut to its last lines), or what it left out.
        stderr: String,
    },
    /// `apt-cache depends linux-image-amd64` names no versioned kernel package.
    #[error("cannot tell which kernel package linux-image-amd64 depends on")]
    KernelPackageUnknown,
    /// A kernel, a kernel module or a kernel release name is not what kiln can use.
    #[error("{} is not a usable kernel: {reason}", path.display())]
    KernelFormat {
        /// The file it came from: the bzImage, the module, or the kernel package.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A module the guest needs (or one it depends on) is neither a file of the kernel
    /// package nor built into the kernel.
    #[error("kernel module {name} is neither in the kernel package nor built in")]
    ModuleMissing {
        /// The module's name, with underscores.
        name: String,
    },
    /// An input of a build (busybox, the kernel package, the agent, the kernel image or
    /// its modules) is not where it should be.
    #[error("{what} not found at {}", path.display())]
    InputMissing {
        /// Which input, e.g. "busybox" or "kernel modules".
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The agent binary is dynamically linked; the guest has no libc to run it.
    #[error("the guest agent at {} is not a static executable", path.display())]
    AgentNotStatic {
        /// The agent binary found.
        path: PathBuf,
    },
    /// No agent binary is in any of the places kiln looks.
    #[error("no guest agent binary found (looked in {})", looked.join(", "))]
    AgentNotFound {
        /// The paths looked in, in order.
        looked: Vec<String>,
    },
    /// apt cannot find a package the recipe asks for in its suite.
    #[error("image {image}: Debian {suite} has no package {package}")]
    UnknownPackage {
        /// The recipe's name.
        image: String,
        /// The Debian suite it is built from.
        suite: String,
        /// The package apt could not find.
        package: String,
    },
    /// One of the recipe's setup commands failed during the build.
    #[error("image {image}: {detail}\n{output}")]
    SetupFailed {
        /// The recipe's name.
        image: String,
        /// Which setup command failed, and how.
        detail: String,
        /// The last lines the build printed.
        output: String,
    },
    /// The recipe's files do not fit in the root filesystem size it asks for.
    #[error("image {image}: its files do not fit in {size}")]
    TooSmall {
        /// The recipe's name.
        image: String,
        /// The size the recipe asks for.
        size: crate::ByteSize,
    },
    /// The image cache's filesystem has too little free space for a build.
    #[error("not enough space in {}: a build needs {needed}, {available} is free", path.display())]
    NoSpace {
        /// The images directory the build writes into.
        path: PathBuf,
        /// The image's size plus the room a build needs besides.
        needed: crate::ByteSize,
        /// What is free there.
        available: crate::ByteSize,
    },
    /// Neither `KILN_DEBIAN_MIRROR` nor the host's apt sources name a Debian mirror.
    #[error("cannot tell which Debian mirror to use")]
    MirrorUnknown,
    /// A recipe is refused.
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// A file or directory operation failed.
    #[error(transparent)]
    Io(#[from] IoError),
}

impl ImageError {
    /// A sentence telling the user what to try next, where kiln knows one.
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
