//! Choosing KVM or TCG by looking at the host, never by waiting for a hang.
//!
//! `/dev/kvm` existing is not enough: on a PVM host (`kvm_pvm` loaded, no `kvm_intel` or
//! `kvm_amd`) a stock guest kernel never gets past the firmware. The probe reads the facts
//! from `/sys/module` and `/dev/kvm` and says which accelerator it picked, and why.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What a user asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// KVM where it runs stock guests, TCG otherwise.
    #[default]
    Auto,
    /// KVM, or an error saying why it cannot be used here.
    Kvm,
    /// TCG (QEMU's software emulation), even where KVM would work.
    Tcg,
}

/// What a VM actually runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
    /// QEMU's software emulation: slower, but runs anywhere.
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        })
    }
}

impl fmt::Display for AccelChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        })
    }
}

/// The facts the probe found and its verdict on KVM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccelProbe {
    /// Whether KVM can run a stock guest kernel here.
    pub kvm_usable: bool,
    /// Why (or why not), in one sentence.
    pub reason: String,
}

/// This machine's available memory (`MemAvailable` in /proc/meminfo), in bytes.
pub fn host_free_memory_bytes() -> Option<u64> {
    meminfo_kib("MemAvailable").map(|kib| kib * 1024)
}

/// A field of /proc/meminfo, in KiB; `None` where it cannot be read.
pub(crate) fn meminfo_kib(field: &str) -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| {
        l.strip_prefix(field)
            .is_some_and(|rest| rest.starts_with(':'))
    })?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The host's TSC frequency in kHz, where it can be read without guessing: cpufreq's base
/// frequency, or on a host without cpufreq (a VM, whose `cpu MHz` is its fixed TSC rate) the
/// `cpu MHz` of `/proc/cpuinfo` when its TSC is constant; `None` where neither can be read.
/// Under TCG the guest's TSC ticks at the host's rate.
pub fn host_tsc_khz() -> Option<u64> {
    host_tsc_khz_at(Path::new("/"))
}

fn host_tsc_khz_at(root: &Path) -> Option<u64> {
    let cpufreq = root.join("sys/devices/system/cpu/cpu0/cpufreq");
    if cpufreq.exists() {
        let base = std::fs::read_to_string(cpufreq.join("base_frequency")).ok()?;
        return base.trim().parse().ok();
    }
    let cpuinfo = std::fs::read_to_string(root.join("proc/cpuinfo")).ok()?;
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags"))?;
    if !flags.split_whitespace().any(|f| f == "constant_tsc") {
        return None;
    }
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    (mhz > 0.0).then_some((mhz * 1000.0).round() as u64)
}

impl AccelProbe {
    /// Probes this host.
    pub fn probe() -> Self {
        Self::probe_at(Path::new("/"))
    }

    /// Probes a host whose `/sys` and `/dev` live under `root` (tests use a fake tree).
    pub fn probe_at(root: &Path) -> Self {
        let module = |name: &str| root.join("sys/module").join(name).exists();
        let dev_kvm: PathBuf = root.join("dev/kvm");
        let verdict = |kvm_usable, reason: &str| Self {
            kvm_usable,
            reason: reason.to_owned(),
        };
        if !dev_kvm.exists() {
            return verdict(
                false,
                "/dev/kvm does not exist (no KVM in this kernel, or no nested virtualisation)",
            );
        }
        if let Err(err) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dev_kvm)
        {
            return Self {
                kvm_usable: false,
                reason: format!("/dev/kvm cannot be opened: {err}"),
            };
        }
        if module("kvm_pvm") {
            return verdict(
                false,
                "host KVM is PVM (kvm_pvm): stock guest kernels hang under it",
            );
        }
        if module("kvm_intel") {
            return verdict(true, "kvm_intel is loaded and /dev/kvm is usable");
        }
        if module("kvm_amd") {
            return verdict(true, "kvm_amd is loaded and /dev/kvm is usable");
        }
        verdict(
            false,
            "/dev/kvm exists but neither kvm_intel nor kvm_amd is loaded",
        )
    }

    /// Resolves a user's choice against this probe.
    pub fn choose(&self, choice: AccelChoice) -> Result<Accel, crate::Error> {
        match (choice, self.kvm_usable) {
            (AccelChoice::Tcg, _) | (AccelChoice::Auto, false) => Ok(Accel::Tcg),
            (AccelChoice::Kvm | AccelChoice::Auto, true) => Ok(Accel::Kvm),
            (AccelChoice::Kvm, false) => Err(crate::Error::KvmUnavailable {
                reason: self.reason.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_host(modules: &[&str], dev_kvm: bool) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for m in modules {
            std::fs::create_dir_all(root.path().join("sys/module").join(m)).unwrap();
        }
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        if dev_kvm {
            std::fs::write(root.path().join("dev/kvm"), b"").unwrap();
        }
        root
    }

    #[test]
    fn pvm_host_falls_back_to_tcg_with_the_reason() {
        let host = fake_host(&["kvm", "kvm_pvm"], true);
        let probe = AccelProbe::probe_at(host.path());
        assert!(!probe.kvm_usable);
        assert!(probe.reason.contains("PVM"), "{}", probe.reason);
        assert_eq!(probe.choose(AccelChoice::Auto).unwrap(), Accel::Tcg);
        assert!(matches!(
            probe.choose(AccelChoice::Kvm),
            Err(crate::Error::KvmUnavailable { .. })
        ));
    }

    #[test]
    fn intel_host_uses_kvm() {
        let host = fake_host(&["kvm", "kvm_intel"], true);
        let probe = AccelProbe::probe_at(host.path());
        assert_eq!(probe.choose(AccelChoice::Auto).unwrap(), Accel::Kvm);
        assert_eq!(probe.choose(AccelChoice::Tcg).unwrap(), Accel::Tcg);
    }

    #[test]
    fn missing_dev_kvm_means_tcg() {
        let host = fake_host(&["kvm_amd"], false);
        let probe = AccelProbe::probe_at(host.path());
        assert!(!probe.kvm_usable);
        assert!(probe.reason.contains("/dev/kvm"));
    }

    #[test]
    fn tsc_frequency_from_cpuinfo_or_cpufreq() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        std::fs::write(
            dir.path().join("proc/cpuinfo"),
            "cpu MHz\t\t: 2600.000\nflags\t\t: fpu constant_tsc nonstop_tsc\n",
        )
        .unwrap();
        assert_eq!(super::host_tsc_khz_at(dir.path()), Some(2_600_000));
        // With cpufreq, cpu MHz is the current clock: only the base frequency counts.
        let cpufreq = dir.path().join("sys/devices/system/cpu/cpu0/cpufreq");
        std::fs::create_dir_all(&cpufreq).unwrap();
        assert_eq!(super::host_tsc_khz_at(dir.path()), None);
        std::fs::write(cpufreq.join("base_frequency"), "2100000\n").unwrap();
        assert_eq!(super::host_tsc_khz_at(dir.path()), Some(2_100_000));
    }
}
