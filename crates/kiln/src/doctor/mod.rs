//! Host diagnosis as data: each [`Check`] says what was looked at, what was found, and how to
//! fix it (as an argv). The CLI renders them; nothing here prints.

use std::path::Path;

use serde::Serialize;

use crate::image::{ImageInputs, ImageStore};
use crate::qemu::QemuBackend;
use crate::{AccelProbe, Paths};

pub mod security;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Works as it should.
    Ok,
    /// Works, but not as well as it could (TCG instead of KVM).
    Warn,
    /// Does not work: something kiln needs is missing or broken.
    Fail,
}

/// One thing `kiln doctor` looked at, and what it found.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was looked at (`qemu`, `passt`, `default image`).
    pub name: &'static str,
    /// How it came out.
    pub status: Status,
    /// What was found: a version, a path, or what is wrong.
    pub detail: String,
    /// A command that fixes the problem, when there is one.
    pub fix: Option<Vec<String>>,
}

impl Check {
    fn new(name: &'static str, status: Status, detail: impl Into<String>) -> Self {
        Self {
            name,
            status,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fix(mut self, argv: &[&str]) -> Self {
        self.fix = Some(argv.iter().map(|s| (*s).to_owned()).collect());
        self
    }
}

/// Everything `kiln doctor` looks at.
#[derive(Debug, Clone, Serialize)]
pub struct Diagnosis {
    /// Each check, in the order they ran.
    pub checks: Vec<Check>,
}

impl Diagnosis {
    /// Whether no check failed (warnings are fine).
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }
}

/// The libvirt URI `doctor` checks when none is given: `KILN_LIBVIRT_URI`, else the system
/// daemon.
pub fn default_libvirt_uri() -> String {
    crate::config::Config::load().map_or_else(
        |_| std::env::var("KILN_LIBVIRT_URI").unwrap_or_else(|_| "qemu:///system".to_owned()),
        |config| config.libvirt_uri.value,
    )
}

/// Whether libvirt answers at `uri`. Only a warning when it does not: the daemonless
/// backend needs no daemon.
async fn check_libvirt(uri: &str) -> Check {
    match crate::libvirt::LibvirtConn::open(uri).await {
        Ok(conn) => match conn.describe().await {
            Ok((version, host)) => {
                Check::new("libvirt", Status::Ok, format!("{uri}: {version} on {host}"))
            }
            Err(err) => Check::new("libvirt", Status::Warn, format!("{uri}: {err}")),
        },
        Err(err) => {
            let check = Check::new(
                "libvirt",
                Status::Warn,
                format!("{err} (only libvirt topologies need it; start virtlogd -d first)"),
            );
            if uri.starts_with("qemu:///") {
                check.fix(&["libvirtd", "-d"])
            } else {
                check
            }
        }
    }
}

/// Whether the config file (and the `KILN_*` variables over it) parse: a bad one fails, as
/// every command that reads it would.
fn check_config() -> Check {
    let file = crate::config::path();
    match crate::config::Config::load() {
        Ok(_) if file.is_file() => Check::new("config", Status::Ok, file.display().to_string()),
        Ok(_) => Check::new(
            "config",
            Status::Ok,
            format!(
                "no file at {}: kiln's defaults and the environment",
                file.display()
            ),
        ),
        Err(err) => Check::new(
            "config",
            Status::Fail,
            match err.hint() {
                Some(hint) => format!("{err}; {hint}"),
                None => err.to_string(),
            },
        ),
    }
}

/// Runs every check: the config file, acceleration, QEMU and its microvm firmware, busybox,
/// passt, the guest agent, the default image, kiln's directories, and libvirt at
/// `libvirt_uri`.
pub async fn diagnose(paths: &Paths, libvirt_uri: &str) -> Diagnosis {
    let mut checks = vec![check_config()];
    let probe = AccelProbe::probe();
    checks.push(if probe.kvm_usable {
        Check::new("acceleration", Status::Ok, format!("kvm: {}", probe.reason))
    } else {
        Check::new(
            "acceleration",
            Status::Warn,
            format!("tcg (software emulation, slower): {}", probe.reason),
        )
    });

    let qemu = QemuBackend::new();
    checks.push(match qemu.version().await {
        Ok(version) => Check::new("qemu", Status::Ok, version),
        Err(err) => Check::new("qemu", Status::Fail, err.to_string()).fix(&["scripts/setup.sh"]),
    });
    checks.push(match qemu.firmware() {
        Some(fw) => Check::new(
            "microvm firmware",
            Status::Ok,
            format!("qboot at {}", fw.display()),
        ),
        None => Check::new(
            "microvm firmware",
            Status::Warn,
            "qboot.rom not found: microvm falls back to SeaBIOS, which sometimes stalls",
        )
        .fix(&[
            "apt-get",
            "install",
            "-t",
            "bookworm-backports",
            "qemu-system-data",
        ]),
    });
    checks.push(if Path::new("/bin/busybox").is_file() {
        Check::new("busybox", Status::Ok, "/bin/busybox")
    } else {
        Check::new("busybox", Status::Fail, "/bin/busybox is missing").fix(&[
            "apt-get",
            "install",
            "busybox-static",
        ])
    });
    let passt = crate::qemu::passt_binary();
    checks.push(if crate::qemu::passt_installed(&passt) {
        Check::new(
            "passt",
            Status::Ok,
            "user-mode NAT that keeps the host's loopback out of reach (--net nat)",
        )
    } else {
        Check::new(
            "passt",
            Status::Fail,
            format!(
                "{} is missing: VMs with the default policy (--net nat) cannot start",
                passt.display()
            ),
        )
        .fix(&["apt-get", "install", "passt"])
    });
    checks.push(match ImageInputs::discover() {
        Ok(inputs) => Check::new(
            "guest agent",
            Status::Ok,
            inputs.agent.display().to_string(),
        ),
        Err(err) => Check::new("guest agent", Status::Fail, err.to_string())
            .fix(&["scripts/build-agent.sh"]),
    });
    checks.push(
        match ImageStore::new(paths.clone()).get(crate::spec::DEFAULT_IMAGE) {
            Ok(image) => Check::new(
                "default image",
                Status::Ok,
                format!(
                    "kernel {} at {}",
                    image.manifest.kernel_release,
                    image.dir.display()
                ),
            ),
            Err(_) => Check::new(
                "default image",
                Status::Warn,
                "not built yet: `kiln up` builds it (about half a minute)",
            )
            .fix(&["kiln", "image", "build"]),
        },
    );
    checks.push(Check::new(
        "state",
        Status::Ok,
        format!(
            "data {}, images {}",
            paths.data_dir().display(),
            paths.cache_dir().display()
        ),
    ));
    checks.push(check_libvirt(libvirt_uri).await);
    Diagnosis { checks }
}
