//! The guest kernel: the uncompressed `vmlinux` inside Debian's bzImage, and the modules the
//! initramfs must carry (with their dependencies, read from each module's `.modinfo`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection};

use super::ImageError;
use crate::IoError;

const XZ_MAGIC: [u8; 6] = [0xFD, b'7', b'z', b'X', b'Z', 0x00];
const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the PVH entry point QEMU boots an ELF kernel through.
const PVH_NOTE_TYPE: u32 = 18;

/// Modules every kiln guest loads (their dependencies come along).
pub const GUEST_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_pci",
    "virtio_console",
    "virtio_blk",
    "virtio_net",
    "virtio_rng",
    "qemu_fw_cfg",
    "crc32c_generic",
    "ext4",
];

/// Modules a guest with shares loads as well (those [`GUEST_MODULES`] brought are not
/// repeated): a guest without shares boots faster without them.
pub const SHARE_MODULES: &[&str] = &["9pnet_virtio", "9p"];

/// Finds the XZ payload in a bzImage and decompresses it to the ELF `vmlinux`.
pub fn extract_vmlinux(bzimage: &[u8], source: &Path) -> Result<Vec<u8>, ImageError> {
    let not_found = |reason: &str| ImageError::KernelFormat {
        path: source.to_owned(),
        reason: reason.to_owned(),
    };
    let mut offset = 0;
    while let Some(pos) = find(&bzimage[offset..], &XZ_MAGIC) {
        let start = offset + pos;
        let mut decoder = xz2::bufread::XzDecoder::new(&bzimage[start..]);
        let mut out = Vec::new();
        // The kernel build appends its own bytes after the XZ stream, so the decoder may end
        // with an error after producing everything. What counts is a complete ELF: a
        // truncated one does not parse (its section headers sit at the end of the file).
        let _ = decoder.read_to_end(&mut out);
        if out.starts_with(&ELF_MAGIC) && object::File::parse(&*out).is_ok() {
            if !has_pvh_note(&out) {
                return Err(not_found("the kernel has no PVH entry note (CONFIG_PVH)"));
            }
            return Ok(out);
        }
        offset = start + 1;
    }
    Err(not_found(
        "no XZ-compressed ELF payload found in the bzImage",
    ))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn has_pvh_note(elf: &[u8]) -> bool {
    let Ok(file) = object::File::parse(elf) else {
        return false;
    };
    file.sections()
        .filter(|s| s.name().is_ok_and(|n| n.starts_with(".note")))
        .filter_map(|s| s.data().ok())
        .any(|data| notes(data).any(|(kind, name)| kind == PVH_NOTE_TYPE && name == b"Xen\0"))
}

/// Iterates over (type, name) of ELF notes in a note section.
fn notes(mut data: &[u8]) -> impl Iterator<Item = (u32, &[u8])> {
    std::iter::from_fn(move || {
        let word = |b: &[u8], i: usize| -> Option<u32> {
            Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?))
        };
        let name_len = word(data, 0)? as usize;
        let desc_len = word(data, 4)? as usize;
        let kind = word(data, 8)?;
        let name_end = 12 + name_len;
        let name = data.get(12..name_end)?;
        let next = 12 + name_len.next_multiple_of(4) + desc_len.next_multiple_of(4);
        data = data.get(next..).unwrap_or(&[]);
        Some((kind, name))
    })
}

/// A module to put in the initramfs, in load order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub name: String,
    pub path: PathBuf,
}

/// The modules of an unpacked kernel package (`lib/modules/<release>`).
#[derive(Debug)]
pub struct ModuleTree {
    by_name: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
}

fn module_name(file_name: &str) -> Option<String> {
    let stem = file_name.strip_suffix(".ko")?;
    Some(stem.replace('-', "_"))
}

impl ModuleTree {
    pub fn open(release_dir: &Path) -> Result<Self, ImageError> {
        let mut by_name = BTreeMap::new();
        let mut stack = vec![release_dir.join("kernel")];
        while let Some(dir) = stack.pop() {
            let entries = std::fs::read_dir(&dir).map_err(IoError::at("list", &dir))?;
            for entry in entries {
                let entry = entry.map_err(IoError::at("list", &dir))?;
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Some(name) = entry.file_name().to_str().and_then(module_name) {
                    by_name.insert(name, path);
                }
            }
        }
        let builtin_path = release_dir.join("modules.builtin");
        let builtin = std::fs::read_to_string(&builtin_path)
            .map_err(IoError::at("read", &builtin_path))?
            .lines()
            .filter_map(|l| l.rsplit('/').next().and_then(module_name))
            .collect();
        Ok(Self { by_name, builtin })
    }

    /// `wanted` and everything they depend on, dependencies first.
    pub fn closure(&self, wanted: &[&str]) -> Result<Vec<Module>, ImageError> {
        self.closure_beyond(wanted, &[])
    }

    /// Like [`closure`](Self::closure), leaving out the modules of `loaded` (loaded before).
    pub fn closure_beyond(
        &self,
        wanted: &[&str],
        loaded: &[Module],
    ) -> Result<Vec<Module>, ImageError> {
        let mut ordered = Vec::new();
        let mut seen: BTreeSet<String> = loaded.iter().map(|m| m.name.clone()).collect();
        for name in wanted {
            self.visit(name, &mut seen, &mut ordered, 0)?;
        }
        Ok(ordered)
    }

    fn visit(
        &self,
        name: &str,
        seen: &mut BTreeSet<String>,
        ordered: &mut Vec<Module>,
        depth: usize,
    ) -> Result<(), ImageError> {
        let name = name.replace('-', "_");
        if depth > 32 || !seen.insert(name.clone()) || self.builtin.contains(&name) {
            return Ok(());
        }
        let path = self
            .by_name
            .get(&name)
            .ok_or_else(|| ImageError::ModuleMissing { name: name.clone() })?;
        for dep in module_depends(path)? {
            self.visit(&dep, seen, ordered, depth + 1)?;
        }
        ordered.push(Module {
            name,
            path: path.clone(),
        });
        Ok(())
    }
}

/// The `depends=` list from a module's `.modinfo` section.
fn module_depends(path: &Path) -> Result<Vec<String>, ImageError> {
    let bytes = std::fs::read(path).map_err(IoError::at("read", path))?;
    let bad = |reason: &str| ImageError::KernelFormat {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let file = object::File::parse(&*bytes).map_err(|_| bad("not an ELF module"))?;
    let modinfo = file
        .section_by_name(".modinfo")
        .and_then(|s| s.data().ok())
        .ok_or_else(|| bad("no .modinfo section"))?;
    Ok(modinfo
        .split(|&b| b == 0)
        .filter_map(|field| field.strip_prefix(b"depends="))
        .flat_map(|deps| deps.split(|&b| b == b','))
        .filter(|d| !d.is_empty())
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_walked_with_alignment() {
        let mut data = Vec::new();
        // name "Xen\0" (4), desc 5 bytes (padded to 8), type 18
        data.extend(4u32.to_le_bytes());
        data.extend(5u32.to_le_bytes());
        data.extend(18u32.to_le_bytes());
        data.extend(b"Xen\0");
        data.extend([1, 2, 3, 4, 5, 0, 0, 0]);
        data.extend(6u32.to_le_bytes());
        data.extend(0u32.to_le_bytes());
        data.extend(1u32.to_le_bytes());
        data.extend(b"Linux\0\0\0");
        let found: Vec<_> = notes(&data).collect();
        assert_eq!(found, vec![(18, &b"Xen\0"[..]), (1, &b"Linux\0"[..])]);
    }

    #[test]
    fn garbage_is_not_a_kernel() {
        let err = extract_vmlinux(b"not a kernel at all", Path::new("x")).unwrap_err();
        assert!(matches!(err, ImageError::KernelFormat { .. }));
    }

    #[test]
    fn module_names_are_normalised() {
        assert_eq!(
            module_name("crc32c-generic.ko").as_deref(),
            Some("crc32c_generic")
        );
        assert_eq!(module_name("readme.txt"), None);
    }
}
