//! Where scores run: [`LibvirtHost`] (one libvirt URI), [`LocalHost`] (the daemonless QEMU
//! backend on this machine) and [`MultiHost`] (several libvirt hosts, VMs placed by name or
//! spread).

mod capability;
mod fleet;
mod host;
mod libvirt;
mod local;
mod multi;
mod multi_verbs;

pub use capability::{NetworkHost, ObservedNetwork, ObservedVm, Topology, VmHost};
pub use fleet::{Fleet, HostInfo, Listing, Located};
pub use host::{DEFAULT_STOP_GRACE, Host, LogChunk};
pub use libvirt::{CLI_OWNER, LibvirtHost};
pub use local::LocalHost;
pub use multi::{MultiHost, Placement};
