//! The boot kit every image boots (the `default` image): where its inputs come from, and how
//! it is built from Debian's kernel package, busybox and the static agent.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use log::warn;

use super::manifest::{self, FileStamp, Manifest};
use super::{ImageError, debian, initramfs, kernel};
use crate::state::{self, Paths};
use crate::{Error, IoError};

/// Where the image's inputs come from.
#[derive(Debug, Clone)]
pub struct ImageInputs {
    /// A kernel .deb to use; `None` downloads the current one with apt.
    pub(crate) kernel_deb: Option<PathBuf>,
    /// A static busybox, the guest's shell and tools.
    pub(crate) busybox: PathBuf,
    /// The static `kiln-agent` binary.
    pub(crate) agent: PathBuf,
}

impl ImageInputs {
    /// Builds images with the static busybox at `busybox` and the agent at `agent`; the
    /// kernel is downloaded with apt unless [`Self::kernel_deb`] names one.
    pub fn new(busybox: impl Into<PathBuf>, agent: impl Into<PathBuf>) -> Self {
        Self {
            kernel_deb: None,
            busybox: busybox.into(),
            agent: agent.into(),
        }
    }

    /// Takes the kernel from this Debian package instead of downloading it.
    pub fn kernel_deb(mut self, deb: impl Into<PathBuf>) -> Self {
        self.kernel_deb = Some(deb.into());
        self
    }

    /// The agent binary the images carry.
    pub fn agent(&self) -> &std::path::Path {
        &self.agent
    }

    /// The usual places: `/bin/busybox` (busybox-static), and the agent from `KILN_AGENT`,
    /// beside the running executable, or in the workspace's agent build directory.
    pub fn discover() -> Result<Self, ImageError> {
        Ok(Self {
            kernel_deb: std::env::var_os("KILN_KERNEL_DEB").map(PathBuf::from),
            busybox: PathBuf::from("/bin/busybox"),
            agent: find_agent()?,
        })
    }
}

/// Where `scripts/build-agent.sh` puts the static agent, inside a cargo target directory.
const AGENT_IN_TARGET: &str = "x86_64-unknown-linux-gnu/agent/kiln-agent";

fn find_agent() -> Result<PathBuf, ImageError> {
    let mut candidates = Vec::new();
    if let Some(path) = std::env::var_os("KILN_AGENT") {
        candidates.push(PathBuf::from(path));
    } else {
        // Beside the running program, or in the cargo target directory it was built in,
        // however deep it sits there: target/{debug,release}/kiln, …/examples/lab,
        // …/deps/test-…; `scripts/build-agent.sh` puts the agent in target/<triple>/agent/.
        if let Ok(exe) = std::env::current_exe()
            && let Some(dir) = exe.parent()
        {
            for dir in dir.ancestors().take(4) {
                candidates.push(dir.join("kiln-agent"));
                candidates.push(dir.join(AGENT_IN_TARGET));
            }
        }
        // The workspace this library was built from (a program using kiln by path).
        candidates.push(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target")
                .join(AGENT_IN_TARGET),
        );
        candidates.dedup();
    }
    // A dynamically linked dev build beside the CLI is skipped, not chosen.
    if let Some(found) = candidates.iter().find(|p| is_static_executable(p)) {
        return Ok(found.clone());
    }
    match candidates.iter().find(|p| p.is_file()) {
        Some(dynamic) => Err(ImageError::AgentNotStatic {
            path: dynamic.clone(),
        }),
        None => Err(ImageError::AgentNotFound {
            looked: candidates.iter().map(|p| p.display().to_string()).collect(),
        }),
    }
}

fn is_static_executable(path: &Path) -> bool {
    use object::Object;
    std::fs::read(path).is_ok_and(|bytes| {
        object::File::parse(&*bytes).is_ok_and(|file| file.section_by_name(".interp").is_none())
    })
}

/// Builds the image into `dir` (blocking). Writes into a temp directory and renames it into
/// place, so an interrupted build never leaves a half image that looks complete.
pub(super) fn build(
    paths: &Paths,
    name: &str,
    dir: &Path,
    inputs: &ImageInputs,
    kernel_deb: &Path,
) -> crate::Result<Manifest> {
    for (what, path) in [
        ("busybox", &inputs.busybox),
        ("kernel package", &kernel_deb.to_owned()),
    ] {
        if !path.is_file() {
            return Err(ImageError::InputMissing {
                what,
                path: path.clone(),
            }
            .into());
        }
    }
    check_static(&inputs.agent)?;
    let work = paths.images_dir().join(format!(".{name}.build"));
    let _ = std::fs::remove_dir_all(&work);
    state::create_private_dir(&work)?;
    let unpacked = work.join("deb");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(IoError::at("start a runtime for", &work))?;
    runtime.block_on(debian::unpack(kernel_deb, &unpacked))?;

    let boot = unpacked.join("boot");
    let vmlinuz = first_entry(&boot, "vmlinuz-")?;
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_owned();
    let bzimage = std::fs::read(&vmlinuz).map_err(IoError::at("read", &vmlinuz))?;
    let vmlinux = kernel::extract_vmlinux(&bzimage, &vmlinuz)?;
    let out = work.join("out");
    state::create_private_dir(&out)?;
    let vmlinux_path = out.join("vmlinux");
    std::fs::write(&vmlinux_path, &vmlinux).map_err(IoError::at("write", &vmlinux_path))?;
    // The bzImage too: a network boot (iPXE) loads it the way a bootloader does.
    let bzimage_path = out.join("vmlinuz");
    std::fs::write(&bzimage_path, &bzimage).map_err(IoError::at("write", &bzimage_path))?;

    let tree = kernel::ModuleTree::open(&unpacked.join("lib/modules").join(&release))?;
    let modules = tree.closure(kernel::GUEST_MODULES)?;
    let share_modules = tree.closure_beyond(kernel::SHARE_MODULES, &modules)?;
    let initramfs_path = out.join("initramfs.cpio");
    initramfs::write(
        &initramfs::InitramfsParts {
            busybox: &inputs.busybox,
            agent: &inputs.agent,
            modules: &modules,
            share_modules: &share_modules,
        },
        &initramfs_path,
    )?;

    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&out, dir).map_err(IoError::at("move into place", dir))?;
    let _ = std::fs::remove_dir_all(&work);
    let package = kernel_deb
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('_').next())
        .unwrap_or_default()
        .to_owned();
    let manifest = Manifest {
        format: manifest::IMAGE_FORMAT,
        name: name.to_owned(),
        kernel_package: package,
        kernel_release: release,
        inputs: manifest::Inputs {
            kernel_deb: FileStamp::of(kernel_deb)?,
            busybox: FileStamp::of(&inputs.busybox)?,
            agent: FileStamp::of(&inputs.agent)?,
        },
        vmlinux: FileStamp::of(&dir.join("vmlinux"))?,
        initramfs: FileStamp::of(&dir.join("initramfs.cpio"))?,
        modules: modules
            .into_iter()
            .chain(share_modules)
            .map(|m| m.name)
            .collect(),
        built_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        scripts: initramfs::scripts_digest(),
    };
    state::write_json_atomic(&dir.join("manifest.json"), &manifest)?;
    Ok(manifest)
}

fn first_entry(dir: &Path, prefix: &str) -> crate::Result<PathBuf> {
    let entries = std::fs::read_dir(dir).map_err(IoError::at("list", dir))?;
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .ok_or_else(|| {
            ImageError::InputMissing {
                what: "kernel image",
                path: dir.join(format!("{prefix}*")),
            }
            .into()
        })
}

/// The agent runs in a guest without libc: refuse a dynamically linked build.
fn check_static(agent: &Path) -> crate::Result<()> {
    use object::Object;
    let bytes = std::fs::read(agent).map_err(|err| {
        if err.kind() == std::io::ErrorKind::NotFound {
            Error::from(ImageError::InputMissing {
                what: "guest agent",
                path: agent.to_owned(),
            })
        } else {
            IoError::new("read", agent, err).into()
        }
    })?;
    let parsed = object::File::parse(&*bytes);
    if !parsed.is_ok_and(|file| file.section_by_name(".interp").is_none()) {
        warn!("{} is dynamically linked", agent.display());
        return Err(ImageError::AgentNotStatic {
            path: agent.to_owned(),
        }
        .into());
    }
    Ok(())
}
