//! Entry points for the fuzz targets (`fuzz/`): what a guest, QEMU or a libvirt daemon can
//! hand kiln, reached without a VM. Not a stable API.

use std::path::Path;

use crate::copy::{CopyError, CopyLimits};

/// Unpacks a tar stream from a guest into `dir`, as `kiln cp` from a guest does.
pub fn unpack_below(archive: &[u8], dir: &Path, limits: &CopyLimits) -> crate::Result<()> {
    crate::copy::unpack_below(archive, dir, limits)
}

/// Parses a session's file list from a guest; returns how many names it holds.
pub fn parse_file_list(text: &[u8], limits: &CopyLimits) -> Result<usize, CopyError> {
    crate::session::parse_file_list(text, limits)
}

/// Parses one line from QEMU's monitor and says what it is.
pub fn qmp_line(line: &str) -> Result<crate::qemu::QmpReply, String> {
    crate::qemu::QmpReply::parse(line)
}

/// Reads back what kiln needs from a domain document a libvirt daemon sent.
pub fn parse_domain(xml: &str) -> bool {
    crate::libvirt::xml::parse_domain(xml).is_ok()
}
