//! A hostile guest, built from inside a real one: the guest's root replaces `/bin/sh`, so the
//! commands kiln runs to list and send files (`sh -c '… find …'`, `sh -c '… tar -c …'`)
//! answer with whatever the test put in the payload files, and raw tar streams the tar crate's
//! own builder would refuse to write.

/// Where the fake shell reads its answers, in the guest.
pub const PAYLOAD_DIR: &str = "/tmp/hostile";

/// A copy of the guest's busybox that the fake shell leaves alone (busybox picks its applet by
/// its own name, so the copy keeps the name `busybox`).
pub const REAL_BUSYBOX: &str = "/opt/hostile/busybox";

/// A guest command that installs the lying `/bin/sh`: a listing (`find .`) prints
/// `PAYLOAD_DIR/list`; a tar sender (`tar -c`) prints `PAYLOAD_DIR/stream`, then zeros for
/// ever when `PAYLOAD_DIR/endless` exists; everything else runs the real shell.
pub fn install_fake_shell() -> String {
    format!(
        r#"set -e
mkdir -p {dir} /opt/hostile
cp /bin/busybox {bb}
cat > /tmp/fake-sh <<'SH'
#!{bb} sh
case "$2" in
  *"find ."*) exec {bb} cat {dir}/list ;;
  *"tar -c"*)
    {bb} cat >/dev/null &
    # Alive but sending no data: a line on stderr now and then, forever.
    if [ -e {dir}/trickle ]; then while :; do echo . >&2; {bb} sleep 0.2; done; fi
    {bb} cat {dir}/stream
    [ -e {dir}/endless ] && exec {bb} cat /dev/zero
    exit 0 ;;
esac
exec {bb} sh "$@"
SH
chmod 755 /tmp/fake-sh
mv -f /tmp/fake-sh /bin/sh
"#,
        dir = PAYLOAD_DIR,
        bb = REAL_BUSYBOX,
    )
}

/// One tar entry written header block by header block, names and all, as a hostile guest
/// would: no check on the name, the size or the type.
pub fn tar_entry(out: &mut Vec<u8>, kind: tar::EntryType, name: &[u8], data: &[u8]) {
    tar_header(out, kind, name, data.len() as u64);
    out.extend_from_slice(data);
    pad(out);
}

/// A header that announces `size` bytes of data, without the data.
pub fn tar_header(out: &mut Vec<u8>, kind: tar::EntryType, name: &[u8], size: u64) {
    let mut header = tar::Header::new_old();
    let field = &mut header.as_old_mut().name;
    let n = name.len().min(field.len());
    field[..n].copy_from_slice(&name[..n]);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_entry_type(kind);
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
}

/// A symlink entry `name` → `target`.
pub fn tar_symlink(out: &mut Vec<u8>, name: &[u8], target: &[u8]) {
    let mut header = tar::Header::new_old();
    let field = &mut header.as_old_mut().name;
    field[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    let link = &mut header.as_old_mut().linkname;
    link[..target.len().min(100)].copy_from_slice(&target[..target.len().min(100)]);
    header.set_size(0);
    header.set_mode(0o777);
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
}

/// Pads a stream to the next 512-byte block.
pub fn pad(out: &mut Vec<u8>) {
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// The peak resident memory of this process so far (`VmHWM`), in KiB.
pub fn peak_rss_kib() -> u64 {
    status_kib("VmHWM:")
}

/// The resident memory of this process now (`VmRSS`), in KiB.
pub fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Resets this process's peak resident memory to its current size (`/proc/self/clear_refs`),
/// so [`peak_rss_kib`] measures from here.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
