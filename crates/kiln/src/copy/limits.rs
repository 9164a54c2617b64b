//! Bounds on what one copy from a guest may bring to the host. The guest is untrusted: with
//! these, the host's memory stays bounded (a name or an extension header is the most kiln
//! holds at once) and so does what lands on its disk.

use serde::Serialize;

/// Which bound a guest ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyLimit {
    /// File contents, in bytes, over the whole copy.
    Bytes,
    /// Archive entries (files, directories, links and extension headers).
    Entries,
    /// The length of one name or link target, in bytes.
    NameLength,
    /// The size of one GNU long-name or PAX extension header, in bytes.
    HeaderSize,
    /// The size of a session's list of changed files, in bytes.
    FileList,
}

impl CopyLimit {
    /// The [`CopyLimits`] setter that raises this bound.
    pub fn setter(self) -> &'static str {
        match self {
            Self::Bytes => "CopyLimits::max_bytes",
            Self::Entries => "CopyLimits::max_entries",
            Self::NameLength => "CopyLimits::max_name_bytes",
            Self::HeaderSize => "CopyLimits::max_header_bytes",
            Self::FileList => "CopyLimits::max_list_bytes",
        }
    }
}

impl std::fmt::Display for CopyLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Bytes => "total bytes",
            Self::Entries => "entries",
            Self::NameLength => "name length",
            Self::HeaderSize => "extension header size",
            Self::FileList => "file list size",
        })
    }
}

/// Bounds on one copy from a guest. The defaults suit a workspace or a directory of logs;
/// raise one with its setter when a copy really is bigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CopyLimits {
    max_idle: std::time::Duration,
    max_bytes: u64,
    max_entries: u64,
    max_name_bytes: u64,
    max_header_bytes: u64,
    max_list_bytes: u64,
}

impl Default for CopyLimits {
    fn default() -> Self {
        Self {
            max_idle: std::time::Duration::from_secs(120),
            max_bytes: 64 << 30,
            max_entries: 1_000_000,
            max_name_bytes: 4096,
            max_header_bytes: 64 << 10,
            max_list_bytes: 64 << 20,
        }
    }
}

impl CopyLimits {
    /// File contents over the whole copy (default 64 GiB).
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Archive entries, extension headers included (default 1,000,000).
    pub fn max_entries(mut self, entries: u64) -> Self {
        self.max_entries = entries;
        self
    }

    /// One name or link target (default 4096 bytes, Linux's `PATH_MAX`).
    pub fn max_name_bytes(mut self, bytes: u64) -> Self {
        self.max_name_bytes = bytes;
        self
    }

    /// One GNU long-name or PAX extension header (default 64 KiB); what kiln holds in memory.
    pub fn max_header_bytes(mut self, bytes: u64) -> Self {
        self.max_header_bytes = bytes;
        self
    }

    /// A session's list of the guest's files (default 64 MiB).
    pub fn max_list_bytes(mut self, bytes: u64) -> Self {
        self.max_list_bytes = bytes;
        self
    }

    /// How long a guest may send no file data (default 120 s). Only data counts: a guest
    /// that keeps writing to stderr but sends no archive still runs out of time.
    pub fn max_idle(mut self, idle: std::time::Duration) -> Self {
        self.max_idle = idle;
        self
    }

    /// The idle bound ([`max_idle`](Self::max_idle)).
    pub fn idle(&self) -> std::time::Duration {
        self.max_idle
    }

    /// The value of one bound.
    pub fn get(&self, limit: CopyLimit) -> u64 {
        match limit {
            CopyLimit::Bytes => self.max_bytes,
            CopyLimit::Entries => self.max_entries,
            CopyLimit::NameLength => self.max_name_bytes,
            CopyLimit::HeaderSize => self.max_header_bytes,
            CopyLimit::FileList => self.max_list_bytes,
        }
    }

    /// `Ok` while `value` is within `limit`.
    pub(crate) fn check(&self, limit: CopyLimit, value: u64) -> Result<(), super::CopyError> {
        let max = self.get(limit);
        if value > max {
            return Err(super::CopyError::LimitExceeded { limit, max });
        }
        Ok(())
    }
}
