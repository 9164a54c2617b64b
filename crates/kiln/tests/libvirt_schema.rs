//! Every libvirt XML golden (what kiln sends libvirt, rendered from `VmSpec` and
//! `NetworkSpec`) passes libvirt's own schema validator, `virt-xml-validate`.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;

#[test]
fn every_golden_passes_libvirts_schema() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/libvirt/golden");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let schema = match name.split('-').next().unwrap().trim_end_matches(".xml") {
            "domain" => "domain",
            "network" => "network",
            "pool" => "storagepool",
            "volume" => "storagevol",
            other => panic!("{name}: no schema known for golden kind {other}"),
        };
        let out = Command::new("virt-xml-validate")
            .arg(&path)
            .arg(schema)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "virt-xml-validate is needed (package libvirt-clients, with libxml2-utils; scripts/setup.sh installs both): {e}"
                )
            });
        assert!(
            out.status.success(),
            "{name} fails libvirt's {schema} schema:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} goldens in {}", dir.display());
}
