//! Guest images. Every VM boots the same kernel (`vmlinux`, through its PVH entry) and
//! initramfs (busybox, the kernel modules and the agent): the `default` image, which runs in
//! that RAM root. A Debian image ([`ImageSpec`]) adds a root filesystem, a qcow2 base built
//! from Debian packages, that the initramfs switches into. All are built offline and cached
//! under the XDG cache directory with manifests of SHA-256 sums.

mod cpio;
mod debian;
mod initramfs;
mod kernel;
mod manifest;
mod recipe;
mod rootfs;
pub(crate) mod seed;

pub use initramfs::{Addressing, BootRoot, guest_cmdline, user_net};
pub use manifest::{FileStamp, Manifest};
pub use recipe::{
    BASE_PACKAGES, DEFAULT_SUITE, ImageFile, ImageSpec, ImageSpecBuilder, InitMode, RecipeError,
    shipped,
};
pub use rootfs::{PackageVersion, RootfsManifest, debian_mirror};

use std::path::{Path, PathBuf};
use std::sync::Arc;
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
    #[error("image {image}: Debian {suite} has no package {package}")]
    UnknownPackage {
        image: String,
        suite: String,
        package: String,
    },
    #[error("image {image}: {detail}\n{output}")]
    SetupFailed {
        image: String,
        detail: String,
        output: String,
    },
    #[error("image {image}: its files do not fit in {size}")]
    TooSmall {
        image: String,
        size: crate::ByteSize,
    },
    #[error("not enough space in {}: a build needs {needed}, {available} is free", path.display())]
    NoSpace {
        path: PathBuf,
        needed: crate::ByteSize,
        available: crate::ByteSize,
    },
    #[error("cannot tell which Debian mirror to use")]
    MirrorUnknown,
    #[error(transparent)]
    Recipe(#[from] RecipeError),
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
            Self::UnknownPackage { .. } => {
                "check the name with `apt-cache policy NAME`; nothing was cached"
            }
            Self::SetupFailed { .. } => "fix the recipe's setup command; nothing was cached",
            Self::TooSmall { .. } => {
                "give the recipe a larger size (ImageSpec::builder(..).size_gib(N))"
            }
            Self::NoSpace { .. } => "free space there, or point KILN_CACHE_DIR at a larger disk",
            Self::MirrorUnknown => {
                "set KILN_DEBIAN_MIRROR (e.g. http://deb.debian.org/debian), or add a Debian apt source"
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
    /// The boot kit's directory (kernel and initramfs).
    pub dir: PathBuf,
    /// The boot kit's manifest.
    pub manifest: Manifest,
    name: String,
    root: Option<RootfsManifest>,
}

impl Image {
    /// The image's name, as VMs name it.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The kernel every kiln guest boots.
    pub fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }
    /// The compressed kernel (bzImage), for firmware that boots Linux's own way (iPXE).
    pub fn bzimage(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }
    /// The initramfs every kiln guest boots.
    pub fn initramfs(&self) -> PathBuf {
        self.dir.join("initramfs.cpio")
    }
    /// Whether cloud-init is installed in the image (a spec's cloud-init data needs it).
    pub fn has_cloud_init(&self) -> bool {
        self.root
            .as_ref()
            .is_some_and(|root| root.packages.iter().any(|p| p.name == "cloud-init"))
    }
    /// Refuses `spec` when it carries cloud-init data this image would ignore.
    pub fn check_spec(&self, spec: &crate::VmSpec) -> crate::Result<()> {
        if spec.cloud_init().is_some() && !self.has_cloud_init() {
            return Err(Error::ImageLacksCloudInit {
                image: self.name.clone(),
            });
        }
        Ok(())
    }
    /// A Debian image's root filesystem; `None` for the busybox image.
    pub fn root(&self) -> Option<&RootfsManifest> {
        self.root.as_ref()
    }
    /// A short digest naming this exact build: the boot kit's, and the root filesystem's.
    pub fn digest(&self) -> String {
        match &self.root {
            None => self.manifest.digest(),
            Some(root) => {
                use sha2::{Digest, Sha256};
                let mut hasher = Sha256::new();
                hasher.update(self.manifest.digest().as_bytes());
                hasher.update(root.base.sha256.as_bytes());
                hex::encode(&hasher.finalize()[..8])
            }
        }
    }
}

/// One entry of the image catalog: a recipe, and what of it is built.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CatalogEntry {
    /// The image's name.
    pub name: String,
    /// What it is.
    pub description: String,
    /// `busybox` for the default image, else the init mode of the Debian image.
    pub kind: String,
    /// Whether kiln ships the recipe (else the program declared it).
    pub shipped: bool,
    /// The build in the cache, if any.
    pub built: Option<BuiltImage>,
}

/// What `kiln image ls` shows of a cached build.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuiltImage {
    /// The digest VMs record.
    pub digest: String,
    /// Bytes on disk (kernel and initramfs, or the root filesystem's base).
    pub bytes: u64,
    /// Seconds since the Unix epoch.
    pub built_at: u64,
    /// The kernel release.
    pub kernel_release: String,
    /// Where it is.
    pub path: PathBuf,
}

/// The name of a Debian image's manifest in its directory.
const ROOT_MANIFEST: &str = "root.json";

/// The image cache, and the recipes it can build.
#[derive(Debug, Clone)]
pub struct ImageStore {
    paths: Paths,
    recipes: Arc<Vec<ImageSpec>>,
}

impl ImageStore {
    /// The cache under `paths`, knowing kiln's shipped recipes.
    pub fn new(paths: Paths) -> Self {
        Self {
            paths,
            recipes: Arc::new(recipe::shipped()),
        }
    }

    /// Adds a program's own recipe. Its name may not be `default` or a shipped recipe's;
    /// declaring the same name again replaces the earlier declaration.
    pub fn with_recipe(mut self, spec: ImageSpec) -> Result<Self, RecipeError> {
        spec.validate()?;
        let shipped = recipe::shipped();
        if spec.name() == DEFAULT_IMAGE || shipped.iter().any(|r| r.name() == spec.name()) {
            return Err(RecipeError::Reserved {
                name: spec.name().to_owned(),
            });
        }
        let recipes = Arc::make_mut(&mut self.recipes);
        recipes.retain(|r| r.name() != spec.name());
        recipes.push(spec);
        Ok(self)
    }

    /// The recipe named `name`, if kiln ships it or the program declared it.
    pub fn recipe(&self, name: &str) -> Option<&ImageSpec> {
        self.recipes.iter().find(|r| r.name() == name)
    }

    /// Every image name this store knows, `default` first.
    pub fn known_names(&self) -> Vec<String> {
        std::iter::once(DEFAULT_IMAGE.to_owned())
            .chain(self.recipes.iter().map(|r| r.name().to_owned()))
            .collect()
    }

    fn unknown(&self, name: &str) -> Error {
        Error::UnknownImage {
            name: name.to_owned(),
            known: self.known_names(),
        }
    }

    /// Where image `name` is cached. Callers check the name first ([`Self::check_name`]):
    /// it must not climb out of the cache.
    fn dir(&self, name: &str) -> PathBuf {
        self.paths.images_dir().join(name)
    }

    fn check_name(&self, name: &str) -> crate::Result<()> {
        crate::spec::validate_name(name).map_err(|_| self.unknown(name))
    }

    fn boot_kit(&self) -> crate::Result<(PathBuf, Manifest)> {
        let dir = self.dir(DEFAULT_IMAGE);
        match state::read_json::<Manifest>(&dir.join("manifest.json")) {
            Ok(Some(manifest)) if manifest.format == manifest::IMAGE_FORMAT => Ok((dir, manifest)),
            Err(err @ Error::CorruptState { .. }) => Err(err),
            _ => Err(self.unknown(DEFAULT_IMAGE)),
        }
    }

    fn read_root(&self, name: &str) -> crate::Result<Option<RootfsManifest>> {
        match state::read_json::<RootfsManifest>(&self.dir(name).join(ROOT_MANIFEST))? {
            Some(root) if root.format == manifest::IMAGE_FORMAT => Ok(Some(root)),
            _ => Ok(None),
        }
    }

    /// Loads a built image by name without checking its inputs.
    pub fn get(&self, name: &str) -> crate::Result<Image> {
        self.check_name(name)?;
        if name != DEFAULT_IMAGE && self.recipe(name).is_none() && !self.dir(name).is_dir() {
            return Err(self.unknown(name));
        }
        let (dir, manifest) = self.boot_kit()?;
        let root = if name == DEFAULT_IMAGE {
            None
        } else {
            Some(self.read_root(name)?.ok_or_else(|| Error::ImageNotBuilt {
                name: name.to_owned(),
            })?)
        };
        Ok(Image {
            dir,
            manifest,
            name: name.to_owned(),
            root,
        })
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

    /// Every known recipe, built or not, with what of it is cached.
    pub fn catalog(&self) -> crate::Result<Vec<CatalogEntry>> {
        let shipped = recipe::shipped();
        let mut entries = Vec::new();
        let boot = self.boot_kit().ok();
        entries.push(CatalogEntry {
            name: DEFAULT_IMAGE.to_owned(),
            description: "busybox and the agent in a RAM root (the kernel every image boots)"
                .to_owned(),
            kind: "busybox".to_owned(),
            shipped: true,
            built: boot.as_ref().map(|(dir, m)| BuiltImage {
                digest: m.digest(),
                bytes: m.vmlinux.size + m.initramfs.size,
                built_at: m.built_at,
                kernel_release: m.kernel_release.clone(),
                path: dir.clone(),
            }),
        });
        for recipe in self.recipes.iter() {
            let built = match (self.read_root(recipe.name()), &boot) {
                (Ok(Some(root)), Some(_)) => {
                    let image = self.get(recipe.name()).ok();
                    Some(BuiltImage {
                        digest: image.map(|i| i.digest()).unwrap_or_default(),
                        bytes: root.base.size,
                        built_at: root.built_at,
                        kernel_release: root.kernel_release.clone(),
                        path: root.base.path.clone(),
                    })
                }
                _ => None,
            };
            entries.push(CatalogEntry {
                name: recipe.name().to_owned(),
                description: recipe.description().to_owned(),
                kind: recipe.init().to_string(),
                shipped: shipped.iter().any(|r| r.name() == recipe.name()),
                built,
            });
        }
        Ok(entries)
    }

    /// Removes image `name` from the cache (the caller checks that no VM uses it).
    pub fn remove(&self, name: &str) -> crate::Result<()> {
        self.check_name(name)?;
        let dir = self.dir(name);
        if !dir.is_dir() {
            return Err(self.unknown(name));
        }
        let lock_path = self.paths.images_dir().join(format!("{name}.lock"));
        let _lock = Lock::acquire(&lock_path)?;
        // The manifest goes first: a removal cut short leaves no image that looks complete.
        for manifest in [ROOT_MANIFEST, "manifest.json"] {
            let path = dir.join(manifest);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(IoError::new("remove", &path, err).into()),
            }
        }
        std::fs::remove_dir_all(&dir).map_err(IoError::at("remove", &dir))?;
        Ok(())
    }

    /// Returns image `name`, building it first if it is missing or an input changed.
    /// A Debian image builds the `default` boot kit first: it boots that kernel.
    pub async fn ensure(
        &self,
        name: &str,
        inputs: Option<&ImageInputs>,
        force: bool,
        reporter: &dyn Reporter,
    ) -> crate::Result<Image> {
        if name == DEFAULT_IMAGE {
            return self.ensure_boot_kit(inputs, force, reporter).await;
        }
        let Some(recipe) = self.recipe(name).cloned() else {
            return Err(self.unknown(name));
        };
        let boot = self.ensure_boot_kit(inputs, false, reporter).await?;
        let lock_path = self.paths.images_dir().join(format!("{name}.lock"));
        let _lock = tokio::task::spawn_blocking(move || Lock::acquire(&lock_path))
            .await
            .map_err(join_error)??;
        let kernel = &boot.manifest.inputs.kernel_deb;
        let key = rootfs::build_key(&recipe, &kernel.sha256);
        match self.read_root(name) {
            Ok(Some(root)) if !force && root.key == key => {
                let base = root.base.clone();
                let intact = tokio::task::spawn_blocking(move || base.matches(&base.path))
                    .await
                    .map_err(join_error)?;
                if intact {
                    return self.get(name);
                }
                reporter.report(Event::Note {
                    message: format!("image {name}'s root filesystem is damaged: rebuilding"),
                });
            }
            Ok(Some(_)) if !force => reporter.report(Event::Note {
                message: format!("the recipe or kernel of image {name} changed: rebuilding"),
            }),
            Err(err @ Error::CorruptState { .. }) => reporter.report(Event::Note {
                message: format!("image {name} is damaged ({err}): rebuilding"),
            }),
            _ => {}
        }
        let mirror = rootfs::debian_mirror()?;
        let images_dir = self.paths.images_dir();
        let dir = self.dir(name);
        let (deb, release, sha) = (
            kernel.path.clone(),
            boot.manifest.kernel_release.clone(),
            kernel.sha256.clone(),
        );
        let build = progress::stage(reporter, Stage::BuildImage, async {
            let dir = dir.clone();
            let recipe = recipe.clone();
            tokio::task::spawn_blocking(move || {
                let inputs = rootfs::RootfsInputs {
                    kernel_deb: &deb,
                    kernel_release: &release,
                    kernel_sha256: &sha,
                    mirror: &mirror,
                };
                rootfs::build(&images_dir, &dir, &recipe, &inputs)
            })
            .await
            .map_err(join_error)?
        });
        let root = Box::pin(build).await?;
        info!(
            "built image {name} in {:.0} s: {} packages",
            root.build_seconds,
            root.packages.len()
        );
        for stale in rootfs::stale_bases(&dir, root.base_path()) {
            // VMs made from the older build read through its base: it stays until `image rm`.
            info!("keeping {} (an earlier build)", stale.display());
        }
        Ok(Image {
            dir: boot.dir,
            manifest: boot.manifest,
            name: name.to_owned(),
            root: Some(root),
        })
    }

    async fn ensure_boot_kit(
        &self,
        inputs: Option<&ImageInputs>,
        force: bool,
        reporter: &dyn Reporter,
    ) -> crate::Result<Image> {
        let name = DEFAULT_IMAGE;
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
        Ok(Image {
            dir,
            manifest,
            name: name.to_owned(),
            root: None,
        })
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
                && manifest.scripts == initramfs::scripts_digest()
                && manifest.vmlinux.path.with_file_name("vmlinuz").is_file()
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
    // The bzImage too: a network boot (iPXE) loads it the way a bootloader does.
    let bzimage_path = out.join("vmlinuz");
    std::fs::write(&bzimage_path, &bzimage).map_err(IoError::at("write", &bzimage_path))?;

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

/// Where a VM of `spec` booting `image` finds its userland.
pub fn boot_root(spec: &crate::VmSpec, image: &Image) -> BootRoot {
    match image.root() {
        None => BootRoot::Ram,
        Some(root) => BootRoot::Disk {
            init: root.init(),
            grow: spec.root_size().is_some_and(|size| size > root.size),
        },
    }
}

/// The disks a VM of `spec` booting `image` has: a Debian image's root disk first (an overlay
/// on the image's base, grown to the spec's root size), then the spec's own.
pub fn machine_disks(spec: &crate::VmSpec, image: &Image) -> Vec<crate::DiskSpec> {
    let root = image.root().map(|root| {
        let size = spec
            .root_size()
            .map_or(root.size, |size| size.max(root.size));
        crate::DiskSpec::root(size, root.base_path())
    });
    root.into_iter()
        .chain(spec.disks().iter().cloned())
        .collect()
}

/// The iPXE script a network boot of VM `name` runs: kiln's image (`kernel` and `initrd`,
/// paths relative to the script on the same TFTP server) with the guest's command line. With
/// the disk next in the boot order it first tries the disk, so once something has made the
/// disk bootable, the boot falls through to it.
pub(crate) fn ipxe_script(
    name: &str,
    cmdline: &str,
    disk_next: bool,
    kernel: &str,
    initrd: &str,
) -> String {
    let mut script = format!("#!ipxe\necho kiln: network boot of {name} (iPXE ${{version}})\n");
    if disk_next {
        script.push_str(
            "sanboot --no-describe --drive 0x80 || echo kiln: the first disk does not boot: booting kiln's image\n",
        );
    }
    script.push_str(&format!(
        "kernel {kernel} {cmdline}\ninitrd {initrd}\nboot\n"
    ));
    script
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_ipxe_script_boots_kilns_image_and_tries_the_disk_when_it_comes_next() {
        let script = super::ipxe_script(
            "pxe-1",
            "console=ttyS0 kiln.name=pxe-1",
            true,
            "vmlinuz",
            "initramfs.cpio",
        );
        assert_eq!(
            script,
            "#!ipxe\necho kiln: network boot of pxe-1 (iPXE ${version})\n\
             sanboot --no-describe --drive 0x80 || echo kiln: the first disk does not boot: booting kiln's image\n\
             kernel vmlinuz console=ttyS0 kiln.name=pxe-1\ninitrd initramfs.cpio\nboot\n"
        );
        assert!(!super::ipxe_script("pxe-1", "x", false, "k", "i").contains("sanboot"));
    }
}
