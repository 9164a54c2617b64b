//! Images as code: an [`ImageSpec`] says which Debian userland a VM's root disk holds (suite,
//! packages, extra files, setup commands, size, init mode). kiln ships a few recipes
//! ([`shipped`]); a program declares its own with [`ImageSpec::builder`].

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::spec::{ByteSize, validate_name};

/// The Debian suite recipes use unless they say otherwise: the host's own (Debian 12).
pub const DEFAULT_SUITE: &str = "bookworm";
/// What every Debian image carries besides its recipe's packages: modules can be loaded,
/// the root grows (`resize2fs`), the network is configured (`ip`), TLS works.
pub const BASE_PACKAGES: &[&str] = &["kmod", "e2fsprogs", "iproute2", "ca-certificates"];
/// Full mode runs systemd as PID 1, with udev: without it, device units (the serial
/// console's getty waits for `dev-ttyS0.device`) never appear and boot never finishes.
const FULL_MODE_PACKAGES: &[&str] = &["systemd-sysv", "udev"];
const MIN_SIZE: ByteSize = ByteSize::from_mib(512);
/// The `cloud` image's cloud-init settings: only the NoCloud seed kiln attaches (no probing
/// of cloud metadata services, which would stall the boot). The seed's `network-config` says
/// what cloud-init configures: the NICs a spec gives it, rendered by ifupdown, or nothing
/// (`config: disabled`), leaving the network to kiln's init as in every image.
const CLOUD_CFG: &str = "datasource_list: [ NoCloud, None ]\nlocale: C.UTF-8\n";

/// How a Debian image starts once kiln's initramfs has switched into it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitMode {
    /// kiln's own init and the agent, no service manager: the quickest boot, for sessions
    /// and sandboxes.
    #[default]
    Fast,
    /// systemd as PID 1, with the agent as a unit: for long-lived VMs.
    Full,
}

impl std::fmt::Display for InitMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fast => "fast",
            Self::Full => "full",
        })
    }
}

/// A file an image carries, written after the packages are installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageFile {
    path: String,
    mode: u32,
    contents: Vec<u8>,
}

impl ImageFile {
    /// The absolute path in the guest.
    pub fn path(&self) -> &str {
        &self.path
    }
    /// Permission bits.
    pub fn mode(&self) -> u32 {
        self.mode
    }
    /// What the file holds.
    pub fn contents(&self) -> &[u8] {
        &self.contents
    }
}

/// Why a recipe is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecipeError {
    /// The image name breaks kiln's name rules.
    #[error("invalid image name {name:?}: {reason}")]
    InvalidName {
        /// The name the recipe gives.
        name: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// A package name apt would not accept.
    #[error("invalid package name {package:?} in image {image}")]
    InvalidPackage {
        /// The recipe's name.
        image: String,
        /// The package name refused.
        package: String,
    },
    /// A suite name that is not a Debian codename.
    #[error("invalid Debian suite {suite:?} in image {image}")]
    InvalidSuite {
        /// The recipe's name.
        image: String,
        /// The suite name refused.
        suite: String,
    },
    /// An extra file's path is not absolute and plain.
    #[error(
        "image {image}: file path {path:?} must be absolute, without `..`, outside /proc, /sys and /dev"
    )]
    InvalidFilePath {
        /// The recipe's name.
        image: String,
        /// The guest path refused.
        path: String,
    },
    /// The root filesystem cannot be that small.
    #[error("image {image}: size {size} is below the minimum of {min}")]
    TooSmall {
        /// The recipe's name.
        image: String,
        /// The size the recipe asks for.
        size: ByteSize,
        /// The smallest size kiln builds.
        min: ByteSize,
    },
    /// The name of a shipped recipe or of the busybox image.
    #[error("image name {name} is taken by a recipe kiln ships")]
    Reserved {
        /// The name the recipe asks for.
        name: String,
    },
}

/// A Debian userland, declared in code. Build one with [`ImageSpec::builder`].
///
/// ```
/// use kiln::image::{ImageSpec, InitMode};
///
/// let tools = ImageSpec::builder("tools")
///     .packages(["curl", "jq", "git"])
///     .file("/etc/motd", "built by kiln\n")
///     .run("useradd -m builder")
///     .size_gib(3)
///     .init(InitMode::Full) // systemd as PID 1
///     .build()?;
/// assert_eq!(tools.name(), "tools");
///
/// // Package names are checked as Debian's are.
/// assert!(ImageSpec::builder("bad").packages(["no spaces"]).build().is_err());
/// # Ok::<(), kiln::image::RecipeError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSpec {
    name: String,
    description: String,
    suite: String,
    packages: Vec<String>,
    files: Vec<ImageFile>,
    setup: Vec<String>,
    size: ByteSize,
    init: InitMode,
}

impl ImageSpec {
    /// Starts a recipe for a bookworm userland named `name`, 2 GiB, fast init.
    pub fn builder(name: impl Into<String>) -> ImageSpecBuilder {
        ImageSpecBuilder {
            spec: Self {
                name: name.into(),
                description: String::new(),
                suite: DEFAULT_SUITE.to_owned(),
                packages: Vec::new(),
                files: Vec::new(),
                setup: Vec::new(),
                size: ByteSize::from_gib(2),
                init: InitMode::Fast,
            },
        }
    }
    /// The image's name, as VMs name it.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// One line for `kiln image ls`.
    pub fn description(&self) -> &str {
        &self.description
    }
    /// The Debian suite (codename) it is built from.
    pub fn suite(&self) -> &str {
        &self.suite
    }
    /// The recipe's own packages (the base set comes on top: [`BASE_PACKAGES`]).
    pub fn packages(&self) -> &[String] {
        &self.packages
    }
    /// Every package installed: the base set, full mode's systemd, then the recipe's.
    pub fn all_packages(&self) -> Vec<String> {
        let mut all: Vec<String> = BASE_PACKAGES.iter().map(|p| (*p).to_owned()).collect();
        if self.init == InitMode::Full {
            all.extend(FULL_MODE_PACKAGES.iter().map(|p| (*p).to_owned()));
        }
        for package in &self.packages {
            if !all.contains(package) {
                all.push(package.clone());
            }
        }
        all
    }
    /// Extra files, written in order after the packages.
    pub fn files(&self) -> &[ImageFile] {
        &self.files
    }
    /// Shell commands run inside the image (as root, `sh -e`) after the files are written.
    pub fn setup(&self) -> &[String] {
        &self.setup
    }
    /// The size of the root filesystem.
    pub fn size(&self) -> ByteSize {
        self.size
    }
    /// How the guest starts.
    pub fn init(&self) -> InitMode {
        self.init
    }

    /// What identifies a build of this recipe: everything in it except the description,
    /// plus the kiln image format. The kernel and the resolved package versions are
    /// recorded beside it in the manifest.
    pub fn recipe_digest(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(super::manifest::IMAGE_FORMAT.to_le_bytes());
        let canonical = Self {
            description: String::new(),
            ..self.clone()
        };
        // Serializing a struct of strings, numbers and byte vectors cannot fail.
        hasher.update(serde_json::to_vec(&canonical).unwrap_or_default());
        // The packages kiln adds to every recipe are part of what is built.
        hasher.update(self.all_packages().join(",").as_bytes());
        hex::encode(hasher.finalize())
    }

    /// Checks the recipe (the builder does; a deserialized one is checked again on use).
    pub fn validate(&self) -> Result<(), RecipeError> {
        validate_name(&self.name).map_err(|err| RecipeError::InvalidName {
            name: self.name.clone(),
            reason: err.to_string(),
        })?;
        let suite_ok = self.suite.starts_with(|c: char| c.is_ascii_lowercase())
            && self.suite.len() <= 32
            && self
                .suite
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !suite_ok {
            return Err(RecipeError::InvalidSuite {
                image: self.name.clone(),
                suite: self.suite.clone(),
            });
        }
        for package in &self.packages {
            if !is_package_name(package) {
                return Err(RecipeError::InvalidPackage {
                    image: self.name.clone(),
                    package: package.clone(),
                });
            }
        }
        for file in &self.files {
            if !is_plain_guest_path(&file.path) {
                return Err(RecipeError::InvalidFilePath {
                    image: self.name.clone(),
                    path: file.path.clone(),
                });
            }
        }
        if self.size < MIN_SIZE {
            return Err(RecipeError::TooSmall {
                image: self.name.clone(),
                size: self.size,
                min: MIN_SIZE,
            });
        }
        Ok(())
    }
}

/// Debian policy: lowercase letters, digits, `+`, `-`, `.`; at least two characters,
/// starting with a letter or digit.
fn is_package_name(name: &str) -> bool {
    name.len() >= 2
        && name.len() <= 128
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

fn is_plain_guest_path(path: &str) -> bool {
    let Some(relative) = path.strip_prefix('/') else {
        return false;
    };
    !relative.is_empty()
        && path.len() <= 4096
        && !path.contains('\0')
        && relative
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && !["proc", "sys", "dev"]
            .iter()
            .any(|api| relative == *api || relative.starts_with(&format!("{api}/")))
}

/// Builds an [`ImageSpec`]; [`build`](Self::build) checks it.
#[derive(Debug, Clone)]
#[must_use]
pub struct ImageSpecBuilder {
    spec: ImageSpec,
}

impl ImageSpecBuilder {
    /// One line for `kiln image ls`.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.spec.description = text.into();
        self
    }
    /// The Debian suite (codename), `bookworm` by default.
    pub fn suite(mut self, suite: impl Into<String>) -> Self {
        self.spec.suite = suite.into();
        self
    }
    /// Adds one package.
    pub fn package(mut self, package: impl Into<String>) -> Self {
        self.spec.packages.push(package.into());
        self
    }
    /// Adds packages.
    pub fn packages<I, S>(mut self, packages: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.spec
            .packages
            .extend(packages.into_iter().map(Into::into));
        self
    }
    /// Adds a file (mode 0644) at an absolute guest path.
    pub fn file(self, path: impl Into<String>, contents: impl Into<Vec<u8>>) -> Self {
        self.file_with_mode(path, contents, 0o644)
    }
    /// Adds a file with these permission bits.
    pub fn file_with_mode(
        mut self,
        path: impl Into<String>,
        contents: impl Into<Vec<u8>>,
        mode: u32,
    ) -> Self {
        self.spec.files.push(ImageFile {
            path: path.into(),
            mode: mode & 0o7777,
            contents: contents.into(),
        });
        self
    }
    /// Adds a shell command run inside the image (as root, `sh -e`); a failure fails the build.
    pub fn run(mut self, command: impl Into<String>) -> Self {
        self.spec.setup.push(command.into());
        self
    }
    /// The size of the root filesystem (VMs can grow theirs with a root size).
    pub fn size(mut self, size: ByteSize) -> Self {
        self.spec.size = size;
        self
    }
    /// The size of the root filesystem in GiB.
    pub fn size_gib(self, gib: u64) -> Self {
        self.size(ByteSize::from_gib(gib))
    }
    /// How the guest starts: [`InitMode::Fast`] (default) or [`InitMode::Full`] (systemd).
    pub fn init(mut self, mode: InitMode) -> Self {
        self.spec.init = mode;
        self
    }
    /// Checks the recipe.
    pub fn build(self) -> Result<ImageSpec, RecipeError> {
        self.spec.validate()?;
        Ok(self.spec)
    }
}

/// The recipes kiln ships (besides `default`, the busybox initramfs).
pub fn shipped() -> Vec<ImageSpec> {
    let recipes = [
        ImageSpec::builder("debian").description("a minimal Debian 12 userland with apt"),
        ImageSpec::builder("debian-full")
            .description("Debian 12 with systemd as PID 1, for long-lived VMs")
            .init(InitMode::Full),
        ImageSpec::builder("cloud")
            .description("Debian 12 with systemd, cloud-init (NoCloud) and openssh-server")
            .packages(["cloud-init", "openssh-server", "sudo", "ifupdown"])
            .file("/etc/cloud/cloud.cfg.d/90-kiln.cfg", CLOUD_CFG)
            .init(InitMode::Full)
            .size_gib(3),
        ImageSpec::builder("rust")
            .description("Debian 12 with cargo, build-essential, pkg-config and git")
            .packages(["cargo", "build-essential", "pkg-config", "git"])
            .size_gib(4),
        ImageSpec::builder("python")
            .description("Debian 12 with python3, pip and venv")
            .packages(["python3", "python3-pip", "python3-venv"])
            .size_gib(3),
    ];
    recipes
        .into_iter()
        // The shipped recipes are constants: a failure here is a bug caught by the tests.
        .filter_map(|builder| builder.build().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_recipe_is_valid() {
        assert_eq!(shipped().len(), 5);
        let rust = shipped().into_iter().find(|r| r.name() == "rust").unwrap();
        assert!(rust.all_packages().starts_with(&["kmod".to_owned()]));
        assert!(rust.all_packages().contains(&"cargo".to_owned()));
    }

    #[test]
    fn bad_recipes_are_refused_with_what_is_wrong() {
        let err = ImageSpec::builder("x1").package("Bad_Pkg").build();
        assert!(
            matches!(err, Err(RecipeError::InvalidPackage { package, .. }) if package == "Bad_Pkg")
        );
        let err = ImageSpec::builder("x1").package("vim;rm -rf /").build();
        assert!(matches!(err, Err(RecipeError::InvalidPackage { .. })));
        for path in ["etc/x", "/etc/../x", "/proc/x", "/", "/a//b", "/dev"] {
            let err = ImageSpec::builder("x1").file(path, "").build();
            assert!(
                matches!(err, Err(RecipeError::InvalidFilePath { .. })),
                "{path}: {err:?}"
            );
        }
        let err = ImageSpec::builder("x1")
            .size(ByteSize::from_mib(100))
            .build();
        assert!(matches!(err, Err(RecipeError::TooSmall { .. })));
        let err = ImageSpec::builder("Bad Name").build();
        assert!(matches!(err, Err(RecipeError::InvalidName { .. })));
        let err = ImageSpec::builder("x1").suite("../etc").build();
        assert!(matches!(err, Err(RecipeError::InvalidSuite { .. })));
        assert!(
            ImageSpec::builder("x1")
                .file("/etc/devices", "")
                .build()
                .is_ok()
        );
    }

    #[test]
    fn the_digest_follows_the_recipe_not_its_description() {
        let a = ImageSpec::builder("a").package("vim").build().unwrap();
        let described = ImageSpec::builder("a")
            .package("vim")
            .description("words")
            .build()
            .unwrap();
        let other = ImageSpec::builder("a").package("nano").build().unwrap();
        let with_file = ImageSpec::builder("a")
            .package("vim")
            .file("/etc/motd", "hi")
            .build()
            .unwrap();
        assert_eq!(a.recipe_digest(), described.recipe_digest());
        assert_ne!(a.recipe_digest(), other.recipe_digest());
        assert_ne!(a.recipe_digest(), with_file.recipe_digest());
    }
}
