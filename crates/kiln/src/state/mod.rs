//! kiln's state on disk: where it lives, how it is written, how it is locked.
//!
//! Everything a VM owns lives in one directory (`0700`); files are written atomically
//! (temp file + rename) so a kiln killed at any point leaves either the old or the new file.

pub mod audit;
mod fsutil;
mod hosts;
mod lock;
mod paths;
mod record;
pub mod usage;

pub use fsutil::{create_private_dir, write_atomic};
pub(crate) use fsutil::{
    list_names, random_bytes, read_json, remove_file_if_present, write_json_atomic,
    write_new_secret,
};
pub(crate) use hosts::KnownHosts;
pub(crate) use lock::Lock;
pub use paths::{Paths, VmPaths};
pub(crate) use record::{BackendKind, MachineRecord, RECORD_VERSION, VmRecord, new_vm_id, uuid_of};
