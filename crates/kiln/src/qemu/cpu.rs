//! The guest CPU model, and the boot settings kept because they make a cold boot faster.

/// The guest CPU under TCG unless `KILN_TCG_CPU` names another: x86-64-v2 on QEMU's plain
/// `qemu64`. With `max` (every feature TCG emulates) a cold boot of kiln's guest takes about
/// 10% longer (`kiln bench boot --levers`). Guest programs built for newer CPUs (AVX2,
/// x86-64-v3) need `KILN_TCG_CPU=max`. With KVM the guest gets the host's CPU.
pub const TCG_CPU: &str = "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,+cx16";

/// A machine's CPU model as recorded (`cpu`), or, where a kiln before it did not record one,
/// what that kiln used: `max` under TCG, `host` under KVM.
pub(crate) fn cpu_or_legacy(cpu: Option<&str>, accel: crate::Accel) -> String {
    let legacy = match accel {
        crate::Accel::Kvm => "host",
        crate::Accel::Tcg => "max",
    };
    cpu.unwrap_or(legacy).to_owned()
}

/// A setting kept because it makes a cold boot faster. `kiln bench boot --levers` boots with
/// each one undone, against kiln as it is, to show what it is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum BootLever {
    /// The kernel skips its crypto self-tests (`cryptomgr.notests`); undone, it runs them.
    SkipCryptoTests,
    /// [`TCG_CPU`] under TCG; undone, `-cpu max`.
    PlainTcgCpu,
}

impl BootLever {
    /// Every lever, in the order the bench measures them.
    pub const ALL: &'static [BootLever] = &[BootLever::SkipCryptoTests, BootLever::PlainTcgCpu];

    /// Whether it changes anything for a machine on `accel`.
    pub fn applies_to(self, accel: crate::Accel) -> bool {
        match self {
            BootLever::SkipCryptoTests => true,
            BootLever::PlainTcgCpu => accel == crate::Accel::Tcg,
        }
    }

    /// What it is, in a few words.
    pub fn label(self) -> &'static str {
        match self {
            BootLever::SkipCryptoTests => "kernel crypto self-tests skipped",
            BootLever::PlainTcgCpu => "x86-64-v2 CPU under TCG instead of max",
        }
    }
}
