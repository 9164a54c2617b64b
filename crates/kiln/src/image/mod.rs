//! Guest images. Every VM boots the same kernel (`vmlinux`, through its PVH entry) and
//! initramfs (busybox, the kernel modules and the agent): the `default` image, which runs in
//! that RAM root. A Debian image ([`ImageSpec`]) adds a root filesystem, a qcow2 base built
//! from Debian packages, that the initramfs switches into. All are built offline and cached
//! under the XDG cache directory with manifests of SHA-256 sums.

mod boot;
mod bootkit;
pub(crate) mod config_drive;
mod convert;
pub(crate) mod workspace_drive;
/// What kiln's init prints on the serial console just before it starts the agent.
pub const INIT_MARKER: &str = "kiln-init: starting agent";
/// Where a guest finds its config drive (metadata.json, secrets/), mounted read-only by kiln's init.
pub use config_drive::GUEST_PATH as CONFIG_DRIVE_PATH;
mod cpio;
mod debian;
mod error;
mod initramfs;
mod kernel;
mod manifest;
mod recipe;
mod rootfs;
pub(crate) mod seed;

pub(crate) use boot::ipxe_script;
pub(crate) use boot::{boot_root, machine_disks};
pub use bootkit::ImageInputs;
pub use error::ImageError;
pub(crate) use initramfs::{Addressing, BootRoot, SKIP_CRYPTO_TESTS, guest_cmdline, user_net};
pub(crate) use manifest::Manifest;
pub use recipe::{
    BASE_PACKAGES, DEFAULT_SUITE, ImageFile, ImageSpec, ImageSpecBuilder, InitMode, RecipeError,
    shipped,
};
pub use rootfs::{PackageVersion, RootfsManifest, debian_mirror};

use std::path::PathBuf;
use std::sync::Arc;

use log::info;

use crate::progress::{self, Event, Meter, Reporter, Stage};
use crate::spec::DEFAULT_IMAGE;
use crate::state::{self, Lock, Paths};
use crate::{Error, IoError};

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
            crate::state::remove_file_if_present(&path)?;
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
            progress::blocking(reporter, move |reporter| {
                let inputs = rootfs::RootfsInputs {
                    kernel_deb: &deb,
                    kernel_release: &release,
                    kernel_sha256: &sha,
                    mirror: &mirror,
                };
                rootfs::build(&images_dir, &dir, &recipe, &inputs, reporter)
            })
            .await?
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
            tokio::task::spawn_blocking(move || {
                bootkit::build(&paths, &name, &dir, &inputs, &kernel_deb)
            })
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
            let mut meter = Meter::new(reporter, Stage::DownloadKernel, None);
            let deb = debian::download(&package, &debs, &mut meter).await;
            meter.finish();
            deb
        })
        .await?;
        Ok(deb)
    }
}

pub(crate) fn join_error(err: tokio::task::JoinError) -> Error {
    IoError::new("run a background task for", "", std::io::Error::other(err)).into()
}
