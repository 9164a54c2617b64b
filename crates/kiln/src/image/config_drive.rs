//! The config drive: a small read-only ext4 disk labelled `kiln-config` that every kiln VM
//! gets, and that kiln's init mounts at `/run/kiln/config`. It holds `metadata.json` (the
//! VM's name, id, a summary of its spec, the user's key/values) and `secrets/NAME`, each
//! secret read from its host file when the drive is made. The drive is made anew at every
//! start, so metadata changed while a VM is stopped is what it sees next; a warm clone's
//! agent remounts it, so the clone sees its own and not its template's.
//!
//! ext4 because the guest kernel already has it (the root filesystem), and because it keeps
//! owners and modes: secrets are root's, mode 0400. `mkfs.ext4 -d` writes it without
//! mounting anything.

use std::path::Path;
use std::process::Command;

use serde::Serialize;

use crate::spec::MAX_SECRET_LEN;
use crate::{Error, IoError, Result, VmSpec, state};

/// The drive's filesystem label and its virtio serial.
pub const LABEL: &str = "kiln-config";
/// Where kiln's init mounts it in the guest.
pub const GUEST_PATH: &str = "/run/kiln/config";
/// The drive's size, the same for every VM (a warm clone's drive replaces its template's
/// under a running guest, whose driver read the capacity at boot). Sparse on the host.
pub const SIZE: u64 = 4 << 20;
/// The version of `metadata.json`'s layout.
pub const FORMAT: u32 = 1;

/// `metadata.json`, as the guest reads it. Its fields are documented in docs/provisioning.md.
#[derive(Debug, Serialize)]
pub struct Document<'a> {
    pub format: u32,
    pub name: &'a str,
    /// The VM's id: a UUID, the libvirt domain's UUID on libvirt.
    pub id: &'a str,
    /// `qemu` (the daemonless backend) or `libvirt`.
    pub backend: &'a str,
    pub spec: SpecSummary<'a>,
    pub metadata: &'a std::collections::BTreeMap<String, String>,
    /// The secrets' names; each is in `secrets/NAME` beside this file.
    pub secrets: Vec<&'a str>,
}

/// What the guest is told of its own spec.
#[derive(Debug, Serialize)]
pub struct SpecSummary<'a> {
    pub image: &'a str,
    pub cpus: u32,
    pub memory_mib: u64,
    pub disks: Vec<DiskSummary<'a>>,
    pub networks: Vec<String>,
    pub boot_order: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct DiskSummary<'a> {
    pub label: Option<&'a str>,
    pub size_bytes: u64,
}

impl<'a> Document<'a> {
    pub fn new(spec: &'a VmSpec, id: &'a str, backend: &'a str) -> Self {
        Self {
            format: FORMAT,
            name: spec.name(),
            id,
            backend,
            spec: SpecSummary {
                image: spec.image(),
                cpus: spec.cpus(),
                memory_mib: spec.memory_mib(),
                disks: spec
                    .disks()
                    .iter()
                    .map(|d| DiskSummary {
                        label: d.label(),
                        size_bytes: d.size().bytes(),
                    })
                    .collect(),
                networks: spec
                    .networks()
                    .iter()
                    .map(|n| n.network_name().unwrap_or("user").to_owned())
                    .collect(),
                boot_order: spec.boot_order().iter().map(ToString::to_string).collect(),
            },
            metadata: spec.metadata().values(),
            secrets: spec
                .metadata()
                .secrets()
                .keys()
                .map(String::as_str)
                .collect(),
        }
    }
}

/// Makes the config drive of `spec` at `path` (atomically: a temporary file in the same
/// directory renamed into place).
pub fn write(path: &Path, spec: &VmSpec, id: &str, backend: &str) -> Result<()> {
    let as_root = rustix::process::geteuid().is_root();
    write_owned(path, spec, id, backend, !as_root)
}

fn write_owned(path: &Path, spec: &VmSpec, id: &str, backend: &str, chown: bool) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let work = tempfile::Builder::new()
        .prefix(".config-drive-")
        .tempdir_in(dir)
        .map_err(IoError::at("make a work directory in", dir))?;
    let tree = work.path().join("tree");
    state::create_private_dir(&tree)?;
    let mut document = serde_json::to_vec_pretty(&Document::new(spec, id, backend))
        .map_err(|err| IoError::new("render", tree.join("metadata.json"), err.into()))?;
    document.push(b'\n');
    write_file(&tree.join("metadata.json"), &document, 0o444)?;
    let secrets_dir = tree.join("secrets");
    state::create_private_dir(&secrets_dir)?;
    for (name, source) in spec.metadata().secrets() {
        let secret = read_secret(spec.name(), name, source)?;
        write_file(&secrets_dir.join(name), &secret, 0o400)?;
    }
    set_mode(&secrets_dir, 0o500)?;
    set_mode(&tree, 0o755)?;

    let image = work.path().join("drive.img");
    let file = std::fs::File::create(&image).map_err(IoError::at("create", &image))?;
    file.set_len(SIZE).map_err(IoError::at("size", &image))?;
    drop(file);
    run(Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            LABEL,
            "-O",
            "^has_journal",
            "-E",
            "root_owner=0:0",
        ])
        .arg("-d")
        .arg(&tree)
        .arg(&image))?;
    if chown {
        // `mkfs.ext4 -d` copies the files' owners: a kiln run by a user would make them the
        // guest's uid of that user. Root's, as with a kiln run by root.
        let mut commands = String::from("sif /metadata.json uid 0\nsif /metadata.json gid 0\n");
        commands.push_str("sif /secrets uid 0\nsif /secrets gid 0\n");
        for name in spec.metadata().secrets().keys() {
            commands.push_str(&format!(
                "sif /secrets/{name} uid 0\nsif /secrets/{name} gid 0\n"
            ));
        }
        let script = work.path().join("chown.debugfs");
        write_file(&script, commands.as_bytes(), 0o600)?;
        run(Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&script)
            .arg(&image))?;
    }
    std::fs::rename(&image, path).map_err(IoError::at("move the config drive to", path))?;
    Ok(())
}

/// Reads every secret of `spec` once, so that one which cannot be read, or is too large,
/// is refused before anything is made for the VM.
pub fn check_secrets(spec: &VmSpec) -> Result<()> {
    for (name, source) in spec.metadata().secrets() {
        read_secret(spec.name(), name, source)?;
    }
    Ok(())
}

/// A secret's bytes, from its host file: at most [`MAX_SECRET_LEN`], read no further.
fn read_secret(vm: &str, name: &str, source: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let unreadable = |source_err: std::io::Error| Error::SecretUnreadable {
        vm: vm.to_owned(),
        name: name.to_owned(),
        path: source.to_owned(),
        source: source_err,
    };
    let file = std::fs::File::open(source).map_err(unreadable)?;
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_SECRET_LEN {
        let size = std::fs::metadata(source).map_or(bytes.len() as u64, |m| m.len());
        return Err(Error::SecretTooLarge {
            vm: vm.to_owned(),
            name: name.to_owned(),
            path: source.to_owned(),
            size,
            max: MAX_SECRET_LEN,
        });
    }
    Ok(bytes)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    std::fs::write(path, bytes).map_err(IoError::at("write", path))?;
    set_mode(path, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|err| IoError::new("set the mode of", path, err).into())
}

fn run(command: &mut Command) -> Result<()> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command
        .stdin(std::process::Stdio::null())
        .env("LC_ALL", "C")
        .output();
    super::debian::checked(&program, output)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debugfs(image: &Path, request: &str) -> String {
        let out = Command::new("debugfs")
            .arg("-R")
            .arg(request)
            .arg(image)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn spec(secret: &Path) -> VmSpec {
        VmSpec::builder("web-1")
            .cpus(2)
            .disk(crate::DiskSpec::new(crate::ByteSize::from_gib(1)).labeled("data"))
            .metadata("role", "db")
            .metadata("tier", "back end")
            .secret("token", secret)
            .build()
            .unwrap()
    }

    #[test]
    fn the_drive_holds_the_document_and_the_secrets_as_roots_files() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("token.txt");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let path = dir.path().join("config.img");
        // The path a kiln run by a user takes, whoever runs the test.
        write_owned(&path, &spec(&secret), "id-1", "qemu", true).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SIZE);
        let document: serde_json::Value =
            serde_json::from_str(&debugfs(&path, "cat /metadata.json")).unwrap();
        assert_eq!(document["format"], FORMAT);
        assert_eq!(document["name"], "web-1");
        assert_eq!(document["id"], "id-1");
        assert_eq!(document["backend"], "qemu");
        assert_eq!(document["spec"]["cpus"], 2);
        assert_eq!(document["spec"]["disks"][0]["label"], "data");
        assert_eq!(document["spec"]["networks"][0], "user");
        assert_eq!(document["metadata"]["role"], "db");
        assert_eq!(document["metadata"]["tier"], "back end");
        assert_eq!(document["secrets"][0], "token");
        // The secret's value is in its file only, never in the document.
        assert!(!debugfs(&path, "cat /metadata.json").contains("s3cret"));
        assert_eq!(debugfs(&path, "cat /secrets/token"), "s3cret\n");
        let stat = debugfs(&path, "stat /secrets/token");
        assert!(stat.contains("Mode:  0400"), "{stat}");
        assert!(stat.contains("User:     0   Group:     0"), "{stat}");
        let label = Command::new("e2label").arg(&path).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&label.stdout).trim(), LABEL);
        // Nothing of the work is left beside the drive.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
    }

    #[test]
    fn a_missing_or_oversized_secret_is_named_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.img");
        let missing = dir.path().join("nope");
        let err = write(&path, &spec(&missing), "id", "qemu").unwrap_err();
        assert!(
            matches!(&err, Error::SecretUnreadable { name, path: p, .. } if name == "token" && *p == missing),
            "{err:?}"
        );
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; MAX_SECRET_LEN as usize + 1]).unwrap();
        let err = write(&path, &spec(&big), "id", "qemu").unwrap_err();
        assert!(
            matches!(err, Error::SecretTooLarge { size, .. } if size == MAX_SECRET_LEN + 1),
            "{err:?}"
        );
        assert!(!path.exists());
        // Only the test's own file: no drive, no work directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_vm_without_metadata_still_gets_its_document() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.img");
        let spec = VmSpec::builder("plain").build().unwrap();
        write(&path, &spec, "id-2", "libvirt").unwrap();
        let document: serde_json::Value =
            serde_json::from_str(&debugfs(&path, "cat /metadata.json")).unwrap();
        assert_eq!(document["name"], "plain");
        assert_eq!(document["metadata"], serde_json::json!({}));
        assert_eq!(document["secrets"], serde_json::json!([]));
    }
}
