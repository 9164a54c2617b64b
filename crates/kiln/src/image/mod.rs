//! Guest images: a kernel (`vmlinux`, booted through its PVH entry) and an initramfs with
//! busybox, the kernel modules and the agent, built offline from Debian packages and cached
//! under the XDG cache directory with a manifest of SHA-256 sums.

mod cpio;
mod debian;
mod initramfs;
mod kernel;
mod manifest;

pub use initramfs::{Addressing, guest_cmdline, user_net};
pub use manifest::{FileStamp, Manifest};

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{info, warn};

use crate::progress::{self, Event, Reporter, Stage};
use crate::spec::DEFAULT_IMAGE;
use crate::state::{self, Lock, Paths};
use crate::{Error, IoError};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot run {program}")]
    ToolMissing {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed with exit code {status}: {stderr}")]
    ToolFailed {
        program: String,
        status: i32,
        stderr: String,
    },
    #[error("cannot tell which kernel package linux-image-amd64 depends on")]
    KernelPackageUnknown,
    #[error("{} is not a usable kernel: {reason}", path.display())]
    KernelFormat { path: PathBuf, reason: String },
    #[error("kernel module {name} is neither in the kernel package nor built in")]
    ModuleMissing { name: String },
    #[error("{what} not found at {}", path.display())]
    InputMissing { what: &'static str, path: PathBuf },
    #[error("the guest agent at {} is not a static executable", path.display())]
    AgentNotStatic { path: PathBuf },
    #[error("no guest agent binary found (looked in {})", looked.join(", "))]
    AgentNotFound { looked: Vec<String> },
    #[error(transparent)]
    Io(#[from] IoError),
}

impl ImageError {
    pub fn hint(&self) -> Option<String> {
        let hint = match self {
            Self::ToolMissing { .. } | Self::KernelPackageUnknown => {
                "run scripts/setup.sh (or `apt-get update`) so apt can find linux-image-amd64"
            }
            Self::ToolFailed { .. } => "check that `apt-get download linux-image-amd64` works here",
            Self::InputMissing { what, .. } if what.contains("busybox") => {
                "install busybox-static (scripts/setup.sh does)"
            }
            Self::InputMissing { .. } => {
                "check the path; without --kernel-deb kiln downloads linux-image-amd64 with apt"
            }
            Self::AgentNotStatic { .. } | Self::AgentNotFound { .. } => {
                "build it with scripts/build-agent.sh, or point KILN_AGENT at a static kiln-agent"
            }
            _ => return None,
        };
        Some(hint.to_owned())
    }
}

/// Where the image's inputs come from.
#[derive(Debug, Clone)]
pub struct ImageInputs {
    /// A kernel .deb to use; `None` downloads the current one with apt.
    pub kernel_deb: Option<PathBuf>,
    pub busybox: PathBuf,
    pub agent: PathBuf,
}

impl ImageInputs {
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

fn find_agent() -> Result<PathBuf, ImageError> {
    let mut candidates = Vec::new();
    if let Some(path) = std::env::var_os("KILN_AGENT") {
        candidates.push(PathBuf::from(path));
    } else if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        candidates.push(dir.join("kiln-agent"));
        // Inside a cargo target dir: target/{debug,release}/kiln → target/<triple>/agent/.
        candidates.push(dir.join("../x86_64-unknown-linux-gnu/agent/kiln-agent"));
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

/// A built image, ready to boot.
#[derive(Debug, Clone)]
pub struct Image {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Image {
    pub fn name(&self) -> &str {
        &self.manifest.name
    }
    pub fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }
    pub fn initramfs(&self) -> PathBuf {
        self.dir.join("initramfs.cpio")
    }
}

/// The image cache.
#[derive(Debug, Clone)]
pub struct ImageStore {
    paths: Paths,
}

impl ImageStore {
    pub fn new(paths: Paths) -> Self {
        Self { paths }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.paths.images_dir().join(name)
    }

    /// Loads a built image by name without checking its inputs.
    pub fn get(&self, name: &str) -> crate::Result<Image> {
        let dir = self.dir(name);
        match state::read_json::<Manifest>(&dir.join("manifest.json")) {
            Ok(Some(manifest)) if manifest.format == manifest::IMAGE_FORMAT => {
                Ok(Image { dir, manifest })
            }
            Err(err @ Error::CorruptState { .. }) => Err(err),
            _ => Err(Error::UnknownImage {
                name: name.to_owned(),
            }),
        }
    }

    /// All cached images.
    pub fn list(&self) -> crate::Result<Vec<Image>> {
        // Build directories (`.default.build`) and lock files have no manifest: skipped.
        let images: Vec<Image> = state::list_names(&self.paths.images_dir())?
            .iter()
            .filter_map(|name| self.get(name).ok())
            .collect();
        Ok(images)
    }

    /// Returns image `name`, building it first if it is missing or an input changed.
    /// Only the default image can be built; other names must already be cached.
    pub async fn ensure(
        &self,
        name: &str,
        inputs: Option<&ImageInputs>,
        force: bool,
        reporter: &dyn Reporter,
    ) -> crate::Result<Image> {
        if name != DEFAULT_IMAGE {
            return self.get(name);
        }
        state::create_private_dir(&self.paths.images_dir())?;
        let lock_path = self.paths.images_dir().join(format!("{name}.lock"));
        let _lock = tokio::task::spawn_blocking(move || Lock::acquire(&lock_path))
            .await
            .map_err(join_error)??;
        let inputs = match inputs {
            Some(inputs) => inputs.clone(),
            None => ImageInputs::discover()?,
        };
        match self.get(name) {
            Ok(image) if !force => {
                if self.inputs_unchanged(&image.manifest, &inputs).await? {
                    return Ok(image);
                }
                reporter.report(Event::Note {
                    message: format!("an input of image {name} changed: rebuilding"),
                });
            }
            // A manifest that does not parse (damaged, or from another kiln): build anew.
            Err(err @ Error::CorruptState { .. }) => reporter.report(Event::Note {
                message: format!("image {name} is damaged ({err}): rebuilding"),
            }),
            _ => {}
        }
        let kernel_deb = match &inputs.kernel_deb {
            Some(deb) => deb.clone(),
            None => self.cached_or_downloaded_kernel(reporter).await?,
        };
        let dir = self.dir(name);
        let build = progress::stage(reporter, Stage::BuildImage, async {
            let (dir, paths, name) = (dir.clone(), self.paths.clone(), name.to_owned());
            let inputs = inputs.clone();
            tokio::task::spawn_blocking(move || build(&paths, &name, &dir, &inputs, &kernel_deb))
                .await
                .map_err(join_error)?
        });
        let manifest = Box::pin(build).await?;
        info!(
            "built image {name}: kernel {} ({} modules)",
            manifest.kernel_release,
            manifest.modules.len()
        );
        Ok(Image { dir, manifest })
    }

    async fn inputs_unchanged(
        &self,
        manifest: &Manifest,
        inputs: &ImageInputs,
    ) -> crate::Result<bool> {
        let (manifest, inputs) = (manifest.clone(), inputs.clone());
        let debs = self.paths.debs_dir();
        tokio::task::spawn_blocking(move || {
            let deb_ok = match &inputs.kernel_deb {
                Some(deb) => manifest.inputs.kernel_deb.matches(deb),
                None => {
                    manifest.inputs.kernel_deb.path.starts_with(&debs)
                        && manifest
                            .inputs
                            .kernel_deb
                            .matches(&manifest.inputs.kernel_deb.path)
                }
            };
            deb_ok
                && manifest.inputs.busybox.matches(&inputs.busybox)
                && manifest.inputs.agent.matches(&inputs.agent)
                && manifest.vmlinux.matches(&manifest.vmlinux.path)
                && manifest.initramfs.matches(&manifest.initramfs.path)
        })
        .await
        .map_err(join_error)
    }

    async fn cached_or_downloaded_kernel(&self, reporter: &dyn Reporter) -> crate::Result<PathBuf> {
        let debs = self.paths.debs_dir();
        if let Some(deb) = debian::find_deb(&debs, "linux-image-")? {
            return Ok(deb);
        }
        state::create_private_dir(&debs)?;
        let deb = progress::stage(reporter, Stage::DownloadKernel, async {
            let package = debian::resolve_kernel_package().await?;
            info!("downloading {package}");
            debian::download(&package, &debs).await
        })
        .await?;
        Ok(deb)
    }
}

pub(crate) fn join_error(err: tokio::task::JoinError) -> Error {
    IoError::new("run a background task for", "", std::io::Error::other(err)).into()
}

/// Builds the image into `dir` (blocking). Writes into a temp directory and renames it into
/// place, so an interrupted build never leaves a half image that looks complete.
fn build(
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

    let tree = kernel::ModuleTree::open(&unpacked.join("lib/modules").join(&release))?;
    let modules = tree.closure(kernel::GUEST_MODULES)?;
    let initramfs_path = out.join("initramfs.cpio");
    initramfs::write(
        &initramfs::InitramfsParts {
            busybox: &inputs.busybox,
            agent: &inputs.agent,
            modules: &modules,
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
        modules: modules.into_iter().map(|m| m.name).collect(),
        built_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
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
