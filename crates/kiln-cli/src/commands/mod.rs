pub mod bench;
pub mod doctor;
pub mod exec;
pub mod image;
pub mod logs;
pub mod ls;
pub mod rm;
pub mod start;
pub mod stop;
pub mod up;

/// What a command returns: the process exit code.
pub type Outcome = kiln::Result<i32>;
