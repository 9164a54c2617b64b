//! What can go wrong copying files between the host and a guest, each with a hint.

use super::CopyLimit;

/// What went wrong copying files.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A guest path the copy needs does not exist: the source of a pull, or the directory a
    /// push copies into.
    #[error("{path} does not exist in the guest")]
    GuestPathMissing {
        /// The guest path that was not found.
        path: String,
    },
    /// A push would put a host directory where the guest has a file.
    #[error("cannot copy directory {src} over the file {dest}")]
    DirectoryOverFile {
        /// The host directory being copied.
        src: String,
        /// The guest file in the way.
        dest: String,
    },
    /// The guest's `tar` (or the shell running it) exited with anything but 0.
    #[error("tar in the guest failed ({status}): {stderr}")]
    GuestFailed {
        /// How it ended, in words (an exit code or a signal).
        status: String,
        /// What it wrote to stderr, trimmed, at most 16 KiB.
        stderr: String,
    },
    /// The guest did not mount a session's workspace drive.
    #[error("mounting the workspace in the guest failed ({status}): {stderr}")]
    WorkspaceNotMounted {
        /// How it ended, in words (an exit code or a signal).
        status: String,
        /// What it wrote to stderr, trimmed.
        stderr: String,
    },
    /// The guest sent a name that could lead outside the destination: absolute, with `..` or
    /// a NUL, through a symlink on the host, or not below the name asked for.
    #[error("the guest sent a name that leaves the destination: {path:?}")]
    UnsafePath {
        /// The name as the guest sent it, or the path that met a symlink.
        path: String,
    },
    /// The guest sent a symlink whose target would lead outside the destination.
    #[error("the guest sent a symlink {path:?} to {target:?}, outside the destination")]
    SymlinkEscapes {
        /// Where the symlink was to be placed, relative to the destination.
        path: String,
        /// The target the guest gave it.
        target: String,
    },
    /// The guest sent a name outside the list of files that was asked for.
    #[error("the guest sent {path:?}, which it did not list")]
    UnlistedEntry {
        /// The name the guest sent.
        path: String,
    },
    /// A directory would replace a non-directory, or the other way round, or a path on the
    /// way to an entry is not a directory.
    #[error("{path:?} is a directory on one side and not on the other")]
    TypeConflict {
        /// The path in conflict, relative to the destination.
        path: String,
    },
    /// The archive ended before a file's contents did.
    #[error("the guest's data for {path:?} ended early")]
    Truncated {
        /// The file whose contents were cut short, relative to the destination.
        path: String,
    },
    /// The archive holds an extension header kiln refuses or cannot parse.
    #[error("the guest sent a malformed archive header: {reason}")]
    BadHeader {
        /// What is wrong with the header.
        reason: String,
    },
    /// The copy went past one of its [`CopyLimits`](super::CopyLimits); nothing past the limit was written.
    #[error("the guest went past the copy's {limit} limit ({max})")]
    LimitExceeded {
        /// Which bound was exceeded.
        limit: CopyLimit,
        /// The bound's value, in its own unit (bytes or entries).
        max: u64,
    },
    /// The guest sent an entry that is not a file, directory or symlink (a device, a FIFO, a
    /// hard link).
    #[error(
        "the guest sent {path:?} of type {kind}; only files, directories and symlinks are copied"
    )]
    UnsupportedEntry {
        /// The entry's name as the guest sent it.
        path: String,
        /// The entry's tar type, as the `tar` crate's `EntryType` names it.
        kind: String,
    },
    /// A source or destination path ends in `..` or is `/`, so the copy would have no name.
    #[error("{path}: not a path kiln can copy (it has no file name)")]
    NoFileName {
        /// The path without a file name.
        path: String,
    },
}

impl CopyError {
    /// What the user can do about this error, where there is something to say.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Self::GuestPathMissing { .. } => {
                "check the path with `kiln exec NAME -- ls -l PATH`".to_owned()
            }
            Self::UnsafePath { .. }
            | Self::SymlinkEscapes { .. }
            | Self::UnlistedEntry { .. }
            | Self::Truncated { .. }
            | Self::BadHeader { .. }
            | Self::UnsupportedEntry { .. } => {
                "the guest is not behaving; nothing outside the destination was written".to_owned()
            }
            Self::TypeConflict { path } => {
                format!("move {path} aside on the host, or copy to another destination")
            }
            Self::WorkspaceNotMounted { .. } => "the guest needs ext4 and `blockdev`, as kiln's \
                 images have; `kiln logs NAME` shows its console"
                .to_owned(),
            Self::LimitExceeded { limit, .. } => format!(
                "nothing past the limit was written; if the copy really is that large, raise it with {}",
                limit.setter()
            ),
            _ => return None,
        })
    }
}
