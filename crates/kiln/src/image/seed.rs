//! The cloud-init NoCloud seed: a small FAT filesystem labelled `cidata` holding `user-data`,
//! `meta-data` and `network-config`, attached to the VM as a read-only disk. Written with the `fatfs` crate:
//! nothing is mounted, no tool runs.

use std::io::Write;
use std::path::Path;

use crate::spec::CloudInit;
use crate::{IoError, state};

/// The seed's size: far more than the largest user-data kiln accepts.
const SEED_BYTES: u64 = 1 << 20;
/// The label cloud-init's NoCloud source looks for.
const LABEL: &[u8; 11] = b"cidata     ";

/// Writes the seed for VM `vm` to `path`, atomically (a temporary file renamed into place).
pub fn write(path: &Path, cloud_init: &CloudInit, vm: &str) -> crate::Result<()> {
    let bytes = image(cloud_init, vm)
        .map_err(|err| IoError::new("write the cloud-init seed", path, err))?;
    state::write_atomic(path, &bytes)
}

/// The seed's bytes, for VM `vm`.
pub fn image(cloud_init: &CloudInit, vm: &str) -> std::io::Result<Vec<u8>> {
    let mut image = std::io::Cursor::new(vec![0u8; SEED_BYTES as usize]);
    let io = |err: std::io::Error| err;
    fatfs::format_volume(
        &mut image,
        fatfs::FormatVolumeOptions::new().volume_label(*LABEL),
    )
    .map_err(io)?;
    image.set_position(0);
    {
        let fs = fatfs::FileSystem::new(&mut image, fatfs::FsOptions::new()).map_err(io)?;
        for (name, contents) in [
            ("user-data", cloud_init.user_data(vm)),
            ("meta-data", cloud_init.meta_data(vm)),
            ("network-config", cloud_init.network_config()),
        ] {
            let mut file = fs.root_dir().create_file(name).map_err(io)?;
            file.truncate().map_err(io)?;
            file.write_all(contents.as_bytes()).map_err(io)?;
            file.flush().map_err(io)?;
        }
        fs.unmount().map_err(io)?;
    }
    Ok(image.into_inner())
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn the_seed_holds_user_data_and_meta_data_under_the_cidata_label() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cidata.img");
        let ci = CloudInit::new().runcmd("touch /marker");
        write(&path, &ci, "vm-1").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let fs = fatfs::FileSystem::new(file, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label(), "cidata");
        let mut user_data = String::new();
        fs.root_dir()
            .open_file("user-data")
            .unwrap()
            .read_to_string(&mut user_data)
            .unwrap();
        assert_eq!(user_data, ci.user_data("vm-1"));
        assert!(fs.root_dir().open_file("meta-data").is_ok());
        let mut network = String::new();
        fs.root_dir()
            .open_file("network-config")
            .unwrap()
            .read_to_string(&mut network)
            .unwrap();
        assert_eq!(network, ci.network_config());
    }
}
