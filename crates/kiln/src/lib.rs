#![warn(missing_docs)]
//! kiln: code-first virtual machines.
//!
//! Describe a VM in Rust, and kiln boots it on the daemonless QEMU backend, talks to its guest
//! agent, and keeps its state under XDG directories:
//!
//! ```no_run
//! # async fn demo() -> Result<(), kiln::Error> {
//! use kiln::{Kiln, VmSpec, ExecRequest, progress::NoProgress};
//! let kiln = Kiln::from_env()?;
//! let spec = VmSpec::builder("web-1").cpus(2).memory_mib(512).build()?;
//! let vm = kiln.up(spec, &NoProgress).await?;
//! let output = vm.exec_output(ExecRequest::new(["uname", "-r"])).await?;
//! println!("{}", String::from_utf8_lossy(&output.stdout));
//! # Ok(()) }
//! ```

pub mod accel;
pub mod agent;
mod backend;
#[cfg(feature = "bench")]
pub mod bench;
#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
pub mod copy;
pub mod doctor;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod image;
pub mod libvirt;
pub mod net;
pub mod progress;
pub mod qemu;
pub mod score;
pub mod session;
pub mod spec;
pub mod state;
pub mod topology;
mod vm;

pub use accel::{Accel, AccelChoice, AccelProbe};
pub use agent::{AgentClient, ExecEvent, ExecOutput};
pub use error::{Error, IoError, Result};
pub use kiln_proto::{ExecRequest, ExitStatus, RemoteErrorKind, TtySize};
pub use spec::{
    BootDevice, ByteSize, DiskSpec, MacAddr, NetPolicy, NetworkRef, NetworkSpec, SpecError, VmSpec,
    VmSpecBuilder,
};
pub use state::Paths;
pub use vm::{BootPolicy, Kiln, SnapshotInfo, Vm, VmInfo, VmState};
