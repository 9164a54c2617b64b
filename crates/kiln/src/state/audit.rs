//! The audit log: one JSON line per state-changing command (who, what, when, and how it
//! ended), appended to `audit.log` in kiln's state directory (`$XDG_STATE_HOME/kiln`), mode
//! `0600`. Each line is written with one `write` on a file opened for appending, so lines of
//! concurrent kilns do not interleave. Arguments that may hold secrets (environment
//! variables, commands) are never logged: only the verb and the names it acted on.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use serde::{Deserialize, Serialize};

use super::Paths;
use crate::{IoError, Result};

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Seconds since the Unix epoch.
    pub time: u64,
    /// The user's name (`$USER`, else `uid N`) and uid.
    pub user: String,
    /// The user's numeric id.
    pub uid: u32,
    /// The command, e.g. `stop` or `snapshot restore`.
    pub verb: String,
    /// What it acted on: VM, snapshot, image or network names.
    pub targets: Vec<String>,
    /// Where, when not this machine: the libvirt URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `ok`, or `error`.
    pub result: String,
    /// The error, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl AuditEntry {
    /// An entry for `verb` on `targets` by the user running this process, now.
    pub fn new(verb: impl Into<String>, targets: Vec<String>, host: Option<String>) -> Self {
        let uid = rustix::process::getuid().as_raw();
        Self {
            time: crate::vm::now_secs(),
            user: std::env::var("USER")
                .ok()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| format!("uid {uid}")),
            uid,
            verb: verb.into(),
            targets,
            host,
            result: "ok".to_owned(),
            error: None,
        }
    }

    /// The same entry, saying how the command ended.
    #[must_use]
    pub fn ended(mut self, outcome: std::result::Result<(), String>) -> Self {
        match outcome {
            Ok(()) => self.result = "ok".to_owned(),
            Err(err) => {
                self.result = "error".to_owned();
                self.error = Some(err);
            }
        }
        self
    }
}

/// Appends `entry` to the audit log.
pub fn append(paths: &Paths, entry: &AuditEntry) -> Result<()> {
    let path = paths.audit_log();
    if let Some(dir) = path.parent() {
        super::create_private_dir(dir)?;
    }
    let mut line = serde_json::to_vec(entry)
        .map_err(|err| IoError::new("render an entry of", &path, err.into()))?;
    line.push(b'\n');
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&path)
        .map_err(IoError::at("open", &path))?;
    file.write_all(&line)
        .map_err(|err| IoError::new("append to", &path, err).into())
}

/// Every entry of the audit log, oldest first; lines that do not parse are skipped.
pub fn read(paths: &Paths) -> Result<Vec<AuditEntry>> {
    let path = paths.audit_log();
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(IoError::new("read", &path, err).into()),
    };
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_appended_one_line_each_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        let first = AuditEntry::new("up", vec!["web-1".into()], None).ended(Ok(()));
        let second = AuditEntry::new("rm", vec!["web-1".into()], Some("qemu:///system".into()))
            .ended(Err("VM web-1 not found".into()));
        append(&paths, &first).unwrap();
        append(&paths, &second).unwrap();
        assert_eq!(read(&paths).unwrap(), vec![first, second]);
        let text = std::fs::read_to_string(paths.audit_log()).unwrap();
        assert_eq!(text.lines().count(), 2);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(paths.audit_log())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
