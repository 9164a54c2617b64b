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

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;

use serde::Serialize;

use super::ImageError;
use crate::spec::{MAX_SECRET_LEN, MAX_SECRETS_TOTAL};
use crate::{Error, IoError, Result, VmSpec, state};

/// The drive's filesystem label and its virtio serial.
pub const LABEL: &str = "kiln-config";
/// Where kiln's init mounts it in the guest.
pub const GUEST_PATH: &str = "/run/kiln/config";
/// The drive's size, the same for every VM (a warm clone's drive replaces its template's
/// under a running guest, whose driver read the capacity at boot). Sparse on the host.
pub const SIZE: u64 = 8 << 20;
/// The version of `metadata.json`'s layout.
pub const FORMAT: u32 = 1;

/// `metadata.json`, as the guest reads it. Its fields are documented in docs/images.md.
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
    sweep(dir);
    let work = tempfile::Builder::new()
        .prefix(WORK_PREFIX)
        .tempdir_in(dir)
        .map_err(IoError::at("make a work directory in", dir))?;
    let tree = work.path().join("tree");
    state::create_private_dir(&tree)?;
    let mut document = serde_json::to_vec_pretty(&Document::new(spec, id, backend))
        .map_err(|err| IoError::new("render", tree.join("metadata.json"), err.into()))?;
    document.push(b'\n');
    let mut files = vec![tree.join("metadata.json")];
    write_file(&files[0], &document, 0o444)?;
    // 0700, not 0500: the work directory must stay removable by a kiln run by a user.
    let secrets_dir = tree.join("secrets");
    state::create_private_dir(&secrets_dir)?;
    files.push(secrets_dir.clone());
    for (name, secret) in read_secrets(spec)? {
        let file = secrets_dir.join(&name);
        write_file(&file, &secret, 0o400)?;
        files.push(file);
    }
    set_mode(&tree, 0o755)?;
    files.push(tree.clone());
    // Fixed times, UUID and hash seed: the same contents make the same bytes, so a drive
    // remade under a guest that restored an older state of it holds what its cache holds.
    for file in &files {
        let epoch = rustix::fs::Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        let times = rustix::fs::Timestamps {
            last_access: epoch,
            last_modification: epoch,
        };
        rustix::fs::utimensat(rustix::fs::CWD, file, &times, rustix::fs::AtFlags::empty())
            .map_err(|err| IoError::new("set the times of", file, err.into()))?;
    }
    let fs_uuid = fs_uuid(id);

    let image = work.path().join("drive.img");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&image)
        .map_err(IoError::at("create", &image))?;
    file.set_len(SIZE).map_err(IoError::at("size", &image))?;
    drop(file);
    run(Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            LABEL,
            "-m",
            "0",
            "-O",
            "^has_journal",
            "-U",
        ])
        .arg(&fs_uuid)
        .arg("-E")
        .arg(format!("root_owner=0:0,hash_seed={fs_uuid}"))
        .arg("-d")
        .arg(&tree)
        .arg(&image))?;
    // `mkfs.ext4 -d` copies each file's change time, which no one can set on the host, and
    // its owner: a kiln run by a user would make the files the guest's uid of that user.
    let mut commands = String::new();
    for file in files.iter().filter_map(|f| f.strip_prefix(&tree).ok()) {
        let file = Path::new("/").join(file);
        let file = file.display();
        commands.push_str(&format!("sif {file} ctime 1\n"));
        if chown {
            commands.push_str(&format!("sif {file} uid 0\nsif {file} gid 0\n"));
        }
    }
    let script = work.path().join("fixup.debugfs");
    write_file(&script, commands.as_bytes(), 0o600)?;
    debugfs(&script, &image)?;
    std::fs::rename(&image, path).map_err(IoError::at("move the config drive to", path))?;
    Ok(())
}

/// The prefix of the work directories beside a drive.
const WORK_PREFIX: &str = ".config-drive-";

/// Removes work directories a killed kiln left beside the drive (they may hold secrets).
/// The caller holds the VM's lock, or its own private directory.
fn sweep(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(WORK_PREFIX) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The filesystem's UUID (and hash seed), fixed by the VM's id.
fn fs_uuid(id: &str) -> String {
    state::uuid_of(&format!("kiln-config-drive:{id}"))
}

/// Runs a debugfs script on `image`. debugfs exits 0 whatever its commands did; a failed
/// command says so on stderr, where otherwise only its banner is.
fn debugfs(script: &Path, image: &Path) -> Result<()> {
    let output = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(script)
        .arg(image)
        .stdin(std::process::Stdio::null())
        .env("LC_ALL", "C")
        .env("E2FSPROGS_FAKE_TIME", "1")
        .output()
        .map_err(|source| ImageError::ToolMissing {
            program: "debugfs".to_owned(),
            source,
        })?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with("debugfs "))
        .collect();
    if !output.status.success() || !complaints.is_empty() {
        return Err(ImageError::ToolFailed {
            program: "debugfs".to_owned(),
            status: output.status.code().unwrap_or(-1),
            stderr: complaints.join("\n"),
        }
        .into());
    }
    Ok(())
}

/// Reads every secret of `spec` once, so that one which cannot be read, or is too large,
/// is refused before anything is made for the VM.
pub fn check_secrets(spec: &VmSpec) -> Result<()> {
    read_secrets(spec).map(drop)
}

/// Each secret's name and bytes, read from its host file: at most [`MAX_SECRET_LEN`] each
/// and [`MAX_SECRETS_TOTAL`] together, from regular files only (a FIFO would hang the start).
fn read_secrets(spec: &VmSpec) -> Result<Vec<(String, Vec<u8>)>> {
    let mut secrets = Vec::new();
    let mut total = 0u64;
    for (name, source) in spec.metadata().secrets() {
        let secret = read_secret(spec.name(), name, source)?;
        total += secret.len() as u64;
        if total > MAX_SECRETS_TOTAL {
            return Err(Error::SecretTooLarge {
                vm: spec.name().to_owned(),
                name: name.clone(),
                path: source.clone(),
                size: total,
                max: MAX_SECRETS_TOTAL,
            });
        }
        secrets.push((name.clone(), secret));
    }
    Ok(secrets)
}

fn read_secret(vm: &str, name: &str, source: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let unreadable = |source_err: std::io::Error| Error::SecretUnreadable {
        vm: vm.to_owned(),
        name: name.to_owned(),
        path: source.to_owned(),
        source: source_err,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(source)
        .map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(unreadable(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_SECRET_LEN {
        return Err(Error::SecretTooLarge {
            vm: vm.to_owned(),
            name: name.to_owned(),
            path: source.to_owned(),
            size: meta.len().max(bytes.len() as u64),
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
    // The filesystem's own times: fixed, like everything else in it.
    super::debian::run_tool(command.env("E2FSPROGS_FAKE_TIME", "1"))?;
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
    fn the_same_contents_make_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("token.txt");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
        write(&a, &spec(&secret), "id-1", "qemu").unwrap();
        // Rewritten: new change times on the host, a second later.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        std::fs::write(&secret, "s3cret\n").unwrap();
        write(&b, &spec(&secret), "id-1", "qemu").unwrap();
        assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
        // Another VM's drive differs (its own UUID).
        write(&b, &spec(&secret), "id-2", "qemu").unwrap();
        assert!(std::fs::read(&a).unwrap() != std::fs::read(&b).unwrap());
    }

    #[test]
    fn a_fifo_and_too_many_bytes_in_all_are_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let err = check_secrets(&spec(&fifo)).unwrap_err();
        assert!(matches!(err, Error::SecretUnreadable { .. }), "{err:?}");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; MAX_SECRET_LEN as usize]).unwrap();
        let mut builder = VmSpec::builder("many");
        for i in 0..=(MAX_SECRETS_TOTAL / MAX_SECRET_LEN) {
            builder = builder.secret(format!("s{i}"), &big);
        }
        let err = check_secrets(&builder.build().unwrap()).unwrap_err();
        assert!(
            matches!(err, Error::SecretTooLarge { max, .. } if max == MAX_SECRETS_TOTAL),
            "{err:?}"
        );
        // Up to the limit, the drive holds them all.
        let mut builder = VmSpec::builder("full");
        for i in 0..(MAX_SECRETS_TOTAL / MAX_SECRET_LEN) {
            builder = builder.secret(format!("s{i}"), &big);
        }
        write(
            &dir.path().join("full.img"),
            &builder.build().unwrap(),
            "id",
            "qemu",
        )
        .unwrap();
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
