//! Any tar stream a guest can send `kiln cp`: whatever it holds and however it ends, nothing
//! is written outside the destination, no symlink inside points out of it, and no file is
//! setuid, setgid or world-writable.
#![no_main]

use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};

use kiln::copy::CopyLimits;
use libfuzzer_sys::fuzz_target;

/// Everything below `dir`, sorted, as relative paths.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            out.push(path.strip_prefix(dir).unwrap_or(&path).display().to_string());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Whether `target`, read from a link at `link` (relative to the destination), stays inside.
fn stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth = link.components().count() as i64 - 1;
    for part in target.components() {
        match part {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

fuzz_target!(|archive: &[u8]| {
    let root = tempfile::tempdir().expect("a temporary directory");
    let dest = root.path().join("dest");
    std::fs::create_dir(&dest).expect("the destination");
    std::fs::write(root.path().join("outside"), b"host").expect("a file outside");
    let limits = CopyLimits::default()
        .max_bytes(1 << 20)
        .max_entries(1000)
        .max_header_bytes(1 << 16);
    let _ = kiln::fuzzing::unpack_below(archive, &dest, &limits);

    assert_eq!(tree(root.path()).iter().filter(|p| !p.starts_with("dest")).count(), 1);
    assert_eq!(std::fs::read(root.path().join("outside")).expect("outside"), b"host");
    for name in tree(&dest) {
        let path = dest.join(&name);
        let meta = std::fs::symlink_metadata(&path).expect("an entry");
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).expect("a link");
            assert!(stays_inside(Path::new(&name), &target), "{name} -> {}", target.display());
        } else if meta.is_file() {
            assert_eq!(meta.permissions().mode() & 0o7002, 0, "{name} has mode {:o}", meta.permissions().mode());
        }
    }
});
