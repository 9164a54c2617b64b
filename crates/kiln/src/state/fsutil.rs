use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, IoError, Result};

/// Creates `dir` and its missing parents with mode `0700`.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(IoError::at("create directory", dir))?;
    // An existing directory keeps its mode: tighten it.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(IoError::at("set permissions of", dir))?;
    Ok(())
}

/// Removes the file `path`; one that is not there is fine.
pub fn remove_file_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(IoError::new("remove", path, err).into())
        }
        _ => Ok(()),
    }
}

/// Writes `bytes` to `path` atomically with mode `0600`: a temp file in the same directory,
/// fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    };
    if let Err(err) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(IoError::new("write", &tmp, err).into());
    }
    fs::rename(&tmp, path).map_err(|err| {
        let _ = fs::remove_file(&tmp);
        IoError::new("rename into place", path, err)
    })?;
    // The rename is durable only once the directory that records it is on disk too.
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(IoError::at("sync directory", dir))?;
    Ok(())
}

pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut json = serde_json::to_vec_pretty(value).map_err(|source| Error::CorruptState {
        path: path.to_owned(),
        source,
    })?;
    json.push(b'\n');
    write_atomic(path, &json)
}

/// The names of the entries of `dir`, sorted; none when `dir` does not exist yet.
pub fn list_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(IoError::new("list", dir, err).into()),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// Reads a JSON file; `Ok(None)` when it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(IoError::new("read", path, err).into()),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| state_error(path, source))
}

/// A file that does not parse: written by a newer kiln (it has fields this one does not
/// know), or damaged.
fn state_error(path: &Path, source: serde_json::Error) -> Error {
    if source.to_string().starts_with("unknown field") {
        Error::NewerState {
            path: path.to_owned(),
            source,
        }
    } else {
        Error::CorruptState {
            path: path.to_owned(),
            source,
        }
    }
}

/// Fills `out` with random bytes; an error names `path`, the file they are for.
pub fn random_bytes(out: &mut [u8], path: &Path) -> Result<()> {
    getrandom::fill(out)
        .map_err(|e| IoError::new("generate", path, std::io::Error::other(e.to_string())).into())
}

/// A new random VM secret, written (`0600`, atomically) to `path`.
pub fn write_new_secret(path: &Path) -> Result<[u8; kiln_proto::handshake::SECRET_LEN]> {
    let mut secret = [0u8; kiln_proto::handshake::SECRET_LEN];
    random_bytes(&mut secret, path)?;
    write_atomic(path, &secret)?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn private_dir_is_0700() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        create_private_dir(&sub).unwrap();
        let mode = fs::metadata(&sub).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
