//! Debian userland images: a recipe ([`ImageSpec`]) becomes a read-only qcow2 base holding an
//! ext4 root filesystem. `mmdebstrap` installs the packages into a directory and runs the
//! recipe's files and setup commands as its hooks; `mkfs.ext4 -d` makes the filesystem
//! without mounting anything; `qemu-img convert` stores it as qcow2. VMs boot it with the same
//! kernel and initramfs as the busybox image, which switches root into it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ImageError;
use super::manifest::{FileStamp, IMAGE_FORMAT};
use super::recipe::{ImageSpec, InitMode};
use crate::progress::{self, Meter, Reporter, Stage};
use crate::spec::ByteSize;
use crate::state;
use crate::{Error, IoError};

/// Kernel trees a VM never needs (sound, GPUs, cameras, radios): left out of every image.
const SKIPPED_MODULE_DIRS: &[&str] = &[
    "kernel/sound",
    "kernel/drivers/gpu",
    "kernel/drivers/media",
    "kernel/drivers/net/wireless",
    "kernel/drivers/infiniband",
    "kernel/drivers/iio",
    "kernel/drivers/staging",
    "kernel/drivers/bluetooth",
];

/// How much of a failed tool's stderr is kept to classify the failure.
const MAX_STDERR_LINES: usize = 2000;

/// Free space a build needs on top of the filesystem's size (the unpacked tree, apt's cache).
const BUILD_HEADROOM: ByteSize = ByteSize::from_gib(2);

/// The systemd unit that runs kiln's stage-two init (network, shares, then the agent) in
/// full mode. Its files live on the tmpfs the initramfs hands over at `/run/kiln`.
const AGENT_UNIT: &str = "[Unit]
Description=kiln guest agent
DefaultDependencies=no
After=local-fs.target

[Service]
ExecStart=/run/kiln/busybox sh /run/kiln/stage2 /run/kiln/bin /run/kiln/kiln-agent /run/kiln
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
";

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageVersion {
    /// The package name.
    pub name: String,
    /// The exact version dpkg installed.
    pub version: String,
}

/// What a Debian image was built from and what it holds: `root.json` in its directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootfsManifest {
    /// kiln's image format when it was built.
    pub format: u32,
    /// The recipe it was built from.
    pub recipe: ImageSpec,
    /// The build's identity: the recipe's digest and the kernel package's SHA-256.
    pub key: String,
    /// The kernel release whose modules are in `/lib/modules`.
    pub kernel_release: String,
    /// The Debian mirror packages came from.
    pub mirror: String,
    /// Every package installed, with its exact version.
    pub packages: Vec<PackageVersion>,
    /// The qcow2 base VMs' root disks read through.
    pub base: FileStamp,
    /// The root filesystem's size (the base's virtual size).
    pub size: ByteSize,
    /// Seconds since the Unix epoch.
    pub built_at: u64,
    /// How long the build took, in seconds.
    pub build_seconds: f64,
}

impl RootfsManifest {
    /// The base file, as VMs' overlays name it.
    pub fn base_path(&self) -> &Path {
        &self.base.path
    }
    /// How the guest starts.
    pub fn init(&self) -> InitMode {
        self.recipe.init()
    }
}

/// The identity of a build of `recipe` on the kernel package with this SHA-256.
pub fn build_key(recipe: &ImageSpec, kernel_sha256: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(recipe.recipe_digest().as_bytes());
    hasher.update(kernel_sha256.as_bytes());
    hex::encode(&hasher.finalize()[..16])
}

/// What the build takes besides the recipe.
#[derive(Debug)]
pub(super) struct RootfsInputs<'a> {
    pub kernel_deb: &'a Path,
    pub kernel_release: &'a str,
    pub kernel_sha256: &'a str,
    pub mirror: &'a str,
}

/// The Debian mirror: `KILN_DEBIAN_MIRROR`, else the one this host's apt uses.
pub fn debian_mirror() -> Result<String, ImageError> {
    if let Some(mirror) = std::env::var_os("KILN_DEBIAN_MIRROR") {
        return Ok(mirror.to_string_lossy().into_owned());
    }
    let deb822 = Path::new("/etc/apt/sources.list.d/debian.sources");
    if let Ok(text) = std::fs::read_to_string(deb822)
        && let Some(uri) = text
            .lines()
            .filter_map(|l| l.strip_prefix("URIs:"))
            .flat_map(str::split_whitespace)
            .find(|uri| !uri.contains("security"))
    {
        return Ok(uri.to_owned());
    }
    let legacy = Path::new("/etc/apt/sources.list");
    if let Ok(text) = std::fs::read_to_string(legacy)
        && let Some(uri) = text
            .lines()
            .filter(|l| l.starts_with("deb ") && !l.contains("security"))
            .filter_map(|l| l.split_whitespace().find(|w| w.contains("://")))
            .next()
    {
        return Ok(uri.to_owned());
    }
    Err(ImageError::MirrorUnknown)
}

/// Builds `recipe` into `dir` (blocking): `root-KEY.qcow2` and `root.json`, each step reported
/// as a stage. Everything is made in a work directory first; a failure leaves no manifest, so
/// nothing half-built is cached.
pub(super) fn build(
    images_dir: &Path,
    dir: &Path,
    recipe: &ImageSpec,
    inputs: &RootfsInputs<'_>,
    reporter: &dyn Reporter,
) -> crate::Result<RootfsManifest> {
    let started = Instant::now();
    let name = recipe.name();
    state::create_private_dir(images_dir)?;
    check_free_space(images_dir, recipe.size())?;
    let work = images_dir.join(format!(".{name}.build"));
    remove_tree(&work)?;
    state::create_private_dir(&work)?;
    let result = build_in(&work, dir, recipe, inputs, started, reporter);
    if let Err(err) = remove_tree(&work) {
        log::warn!("cannot clean up {}: {err}", work.display());
    }
    result
}

fn build_in(
    work: &Path,
    dir: &Path,
    recipe: &ImageSpec,
    inputs: &RootfsInputs<'_>,
    started: Instant,
    reporter: &dyn Reporter,
) -> crate::Result<RootfsManifest> {
    // The release names directories in the hooks' shell commands: only plain characters.
    let plain = |c: char| c.is_ascii_alphanumeric() || "._+-".contains(c);
    if inputs.kernel_release.is_empty() || !inputs.kernel_release.chars().all(plain) {
        return Err(ImageError::KernelFormat {
            path: inputs.kernel_deb.to_owned(),
            reason: format!("unexpected kernel release {:?}", inputs.kernel_release),
        }
        .into());
    }
    let deb = work.join("kernel");
    progress::stage_blocking(reporter, Stage::UnpackKernel, || {
        run(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(inputs.kernel_deb)
                .arg(&deb),
            "dpkg-deb",
        )
    })?;
    let modules = deb.join("lib/modules").join(inputs.kernel_release);
    if !modules.is_dir() {
        return Err(ImageError::InputMissing {
            what: "kernel modules",
            path: modules,
        }
        .into());
    }
    let stage = work.join("stage");
    let tree = work.join("root");
    let packages_out = work.join("packages.tsv");
    let hooks = hooks(
        recipe,
        &stage,
        &modules,
        inputs.kernel_release,
        &packages_out,
    )?;

    info!(
        "building image {}: mmdebstrap {}",
        recipe.name(),
        recipe.suite()
    );
    let mut mmdebstrap = Command::new("mmdebstrap");
    mmdebstrap
        // Not `--quiet`: that also drops apt's own words about a package it cannot find.
        .args(["--variant=apt", "--mode=auto"])
        .arg(format!("--include={}", recipe.all_packages().join(",")));
    for hook in &hooks {
        mmdebstrap.arg(format!("--customize-hook={hook}"));
    }
    mmdebstrap.arg(recipe.suite()).arg(&tree).arg(inputs.mirror);
    progress::stage_blocking(reporter, Stage::InstallPackages, || {
        run(&mut mmdebstrap, "mmdebstrap").map_err(|err| classify_mmdebstrap(err, recipe))
    })?;

    let raw = work.join("root.ext4");
    progress::stage_blocking(reporter, Stage::MakeFilesystem, || {
        run(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-L", "kiln-root", "-d"])
                .arg(&tree)
                .arg(&raw)
                .arg(format!("{}k", recipe.size().bytes() / 1024)),
            "mkfs.ext4",
        )
    })
    .map_err(|err| match err {
        Error::Image(ImageError::ToolFailed { stderr, .. }) if stderr.contains("allocate") => {
            ImageError::TooSmall {
                image: recipe.name().to_owned(),
                size: recipe.size(),
            }
            .into()
        }
        other => other,
    })?;
    let packages = read_packages(&packages_out)?;
    let key = build_key(recipe, inputs.kernel_sha256);
    state::create_private_dir(dir)?;
    // A name of its own for every build: VMs of an earlier build read through its base,
    // which a rebuild (`--force`, or of a damaged image) must never replace.
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let base = dir.join(format!("root-{key}-{stamp:x}.qcow2"));
    let partial = dir.join(format!(".root-{key}-{stamp:x}.qcow2.partial"));
    let converted = progress::stage_blocking(reporter, Stage::ConvertImage, || {
        let size = recipe.size().bytes();
        let mut meter = Meter::new(reporter, Stage::ConvertImage, Some(size));
        let converted = super::convert::to_qcow2(&raw, &partial, size, &mut meter);
        meter.finish();
        converted
    });
    if let Err(err) = converted {
        let _ = std::fs::remove_file(&partial);
        return Err(err);
    }
    std::fs::rename(&partial, &base).map_err(IoError::at("move into place", &base))?;
    let manifest = RootfsManifest {
        format: IMAGE_FORMAT,
        recipe: recipe.clone(),
        key,
        kernel_release: inputs.kernel_release.to_owned(),
        mirror: inputs.mirror.to_owned(),
        packages,
        base: FileStamp::of(&base)?,
        size: recipe.size(),
        built_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        build_seconds: started.elapsed().as_secs_f64(),
    };
    state::write_json_atomic(&dir.join(super::ROOT_MANIFEST), &manifest)?;
    Ok(manifest)
}

/// mmdebstrap's customize hooks, in order: the kernel's modules (and their index), the
/// recipe's files, full mode's agent unit, the recipe's setup commands, then the list of
/// installed packages. Each hook is a shell command with the root directory as `$1`; every
/// host path in them is quoted, and the recipe's commands run from files, never spliced in.
fn hooks(
    recipe: &ImageSpec,
    stage: &Path,
    modules: &Path,
    release: &str,
    packages_out: &Path,
) -> crate::Result<Vec<String>> {
    let files = stage.join("files");
    state::create_private_dir(stage)?;
    std::fs::create_dir(&files).map_err(IoError::at("create", &files))?;
    let mut hooks = vec![format!(
        "mkdir -p \"$1/usr/lib/modules\" && cp -a {} \"$1/usr/lib/modules/\"",
        quote(modules)
    )];
    let skipped: Vec<String> = SKIPPED_MODULE_DIRS
        .iter()
        .map(|d| format!("\"$1/usr/lib/modules/{release}/{d}\""))
        .collect();
    hooks.push(format!("rm -rf {}", skipped.join(" ")));
    hooks.push(format!("chroot \"$1\" depmod -a {release}"));
    for file in recipe.files() {
        let staged = files.join(file.path().trim_start_matches('/'));
        if let Some(parent) = staged.parent() {
            std::fs::create_dir_all(parent).map_err(IoError::at("create", parent))?;
        }
        std::fs::write(&staged, file.contents()).map_err(IoError::at("write", &staged))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(file.mode()))
            .map_err(IoError::at("set the mode of", &staged))?;
    }
    // Everything that lands in the image is written from inside the chroot (tar, sh), never
    // by a host tool: a symlink in the image (`/etc/localtime` is one) resolves inside it
    // instead of sending the write onto the host.
    if !recipe.files().is_empty() {
        // `--no-same-owner`: the files belong to root in the guest, whoever built it.
        hooks.push(format!(
            "tar -C {} -cf - . | chroot \"$1\" tar -xf - -C / --no-same-owner --no-overwrite-dir",
            quote(&files)
        ));
    }
    if recipe.init() == InitMode::Full {
        let unit = stage.join("kiln-agent.service");
        std::fs::write(&unit, AGENT_UNIT).map_err(IoError::at("write", &unit))?;
        hooks.push(format!(
            "chroot \"$1\" sh -ec 'cat > /etc/systemd/system/kiln-agent.service; \
             mkdir -p /etc/systemd/system/multi-user.target.wants; \
             ln -sf /etc/systemd/system/kiln-agent.service \
             /etc/systemd/system/multi-user.target.wants/kiln-agent.service' < {}",
            quote(&unit)
        ));
    }
    for (index, command) in recipe.setup().iter().enumerate() {
        let script = stage.join(format!("setup-{index}.sh"));
        std::fs::write(&script, format!("{command}\n")).map_err(IoError::at("write", &script))?;
        // The command reaches the guest's shell as one argument, read from its file.
        hooks.push(format!(
            "chroot \"$1\" /bin/sh -ec \"$(cat {})\" </dev/null >&2; rc=$?; \
             [ $rc -eq 0 ] || echo 'kiln: setup command {} failed with exit code '$rc >&2; exit $rc",
            quote(&script),
            index + 1
        ));
    }
    hooks.push(format!(
        "chroot \"$1\" dpkg-query -W -f '${{Package}}\\t${{Version}}\\n' > {}",
        quote(packages_out)
    ));
    Ok(hooks)
}

/// Single-quotes a path for `sh`.
fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}

fn read_packages(path: &Path) -> crate::Result<Vec<PackageVersion>> {
    let text = std::fs::read_to_string(path).map_err(IoError::at("read", path))?;
    Ok(text
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(name, version)| PackageVersion {
            name: name.to_owned(),
            version: version.to_owned(),
        })
        .collect())
}

/// Turns apt's own words about a package it cannot find into a typed error naming it.
fn classify_mmdebstrap(err: Error, recipe: &ImageSpec) -> Error {
    let Error::Image(ImageError::ToolFailed { stderr, .. }) = &err else {
        return err;
    };
    if let Some(package) = unknown_package(stderr) {
        return ImageError::UnknownPackage {
            image: recipe.name().to_owned(),
            suite: recipe.suite().to_owned(),
            package,
        }
        .into();
    }
    if let Some(line) = stderr
        .lines()
        .find(|l| l.starts_with("kiln: setup command"))
    {
        return ImageError::SetupFailed {
            image: recipe.name().to_owned(),
            detail: line.trim_start_matches("kiln: ").to_owned(),
            output: tail(stderr, 20),
        }
        .into();
    }
    match err {
        Error::Image(ImageError::ToolFailed {
            program,
            status,
            stderr,
        }) => ImageError::ToolFailed {
            program,
            status,
            stderr: tail(&stderr, 40),
        }
        .into(),
        other => other,
    }
}

/// `E: Unable to locate package NAME` or `E: Package 'NAME' has no installation candidate`.
fn unknown_package(apt_stderr: &str) -> Option<String> {
    apt_stderr.lines().find_map(|line| {
        if let Some(rest) = line.split("Unable to locate package ").nth(1) {
            return rest.split_whitespace().next().map(str::to_owned);
        }
        if line.contains("has no installation candidate") {
            return line.split('\'').nth(1).map(str::to_owned);
        }
        None
    })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn run(command: &mut Command, program: &str) -> crate::Result<()> {
    debug!("running {command:?}");
    let output = command.stdin(std::process::Stdio::null()).output();
    match super::debian::checked(program, output) {
        Ok(_) => Ok(()),
        // The whole of it (bounded): mmdebstrap's is classified, then cut to its tail.
        Err(ImageError::ToolFailed {
            program,
            status,
            stderr,
        }) => Err(ImageError::ToolFailed {
            program,
            status,
            stderr: tail(&stderr, MAX_STDERR_LINES),
        }
        .into()),
        Err(err) => Err(err.into()),
    }
}

fn check_free_space(dir: &Path, size: ByteSize) -> crate::Result<()> {
    let stat = rustix::fs::statvfs(dir).map_err(|e| IoError::new("stat", dir, e.into()))?;
    let available = stat.f_bavail.saturating_mul(stat.f_frsize);
    let needed = size.bytes().saturating_add(BUILD_HEADROOM.bytes());
    if available < needed {
        return Err(ImageError::NoSpace {
            path: dir.to_owned(),
            needed: ByteSize::from_bytes(needed),
            available: ByteSize::from_bytes(available),
        }
        .into());
    }
    Ok(())
}

/// Removes a build tree. As root it holds device nodes and root-owned files; a plain
/// recursive removal handles both.
fn remove_tree(path: &Path) -> crate::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(IoError::new("remove", path, err).into()),
    }
}

/// The base files in `dir` no manifest names any more.
pub(super) fn stale_bases(dir: &Path, keep: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.as_path() != keep
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("root-") && n.ends_with(".qcow2"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_naming_a_missing_package_is_read() {
        let stderr = "I: running apt-get update...\nE: Unable to locate package nosuchpkg-kiln\nE: setup failed";
        assert_eq!(unknown_package(stderr).as_deref(), Some("nosuchpkg-kiln"));
        let stderr = "E: Package 'libfoo' has no installation candidate";
        assert_eq!(unknown_package(stderr).as_deref(), Some("libfoo"));
        assert_eq!(unknown_package("E: something else"), None);
    }

    #[test]
    fn hooks_quote_host_paths_and_never_splice_commands() {
        let dir = tempfile::tempdir().unwrap();
        let stage = dir.path().join("it's here");
        let recipe = ImageSpec::builder("t1")
            .run("echo '$1' && exit 3")
            .file("/etc/motd", "hello")
            .build()
            .unwrap();
        let hooks = hooks(
            &recipe,
            &stage,
            Path::new("/m"),
            "6.1.0-1-amd64",
            Path::new("/out.tsv"),
        )
        .unwrap();
        assert!(hooks.iter().any(|h| h.contains("'/m'")));
        assert!(hooks.iter().all(|h| !h.contains("exit 3")));
        assert!(hooks.iter().any(|h| h.contains(r"it'\''s here")));
        let script = std::fs::read_to_string(stage.join("setup-0.sh")).unwrap();
        assert_eq!(script, "echo '$1' && exit 3\n");
        assert_eq!(
            std::fs::read(stage.join("files/etc/motd")).unwrap(),
            b"hello"
        );
    }

    #[test]
    fn a_build_that_cannot_fit_is_refused_before_it_starts() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_free_space(dir.path(), ByteSize::from_gib(1 << 20)).unwrap_err();
        assert!(
            matches!(err, Error::Image(ImageError::NoSpace { ref path, .. }) if path == dir.path()),
            "{err:?}"
        );
        check_free_space(dir.path(), ByteSize::from_mib(1)).unwrap();
    }

    #[test]
    fn the_key_changes_with_the_kernel_and_the_recipe() {
        let a = ImageSpec::builder("a").build().unwrap();
        let b = ImageSpec::builder("a").package("vim").build().unwrap();
        assert_ne!(build_key(&a, "k1"), build_key(&a, "k2"));
        assert_ne!(build_key(&a, "k1"), build_key(&b, "k1"));
        assert_eq!(build_key(&a, "k1"), build_key(&a, "k1"));
    }
}
