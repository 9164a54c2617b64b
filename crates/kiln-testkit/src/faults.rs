//! Fault injection and the checks that follow it: processes killed at random points, and
//! what must hold afterwards (no stray QEMU, every state file whole).
#![allow(clippy::print_stderr)] // the seed goes to the test output, for replaying a run

use std::path::Path;
use std::process::Child;
use std::time::Duration;

/// A small deterministic generator (xorshift64*), so a failing run can be replayed from the
/// seed it printed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from `KILN_FAULT_SEED` when set, else from the clock; the seed is printed.
    pub fn from_env(test: &str) -> Self {
        let seed = std::env::var("KILN_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("{test}: KILN_FAULT_SEED={seed}");
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A duration drawn evenly from `0..=max`.
    pub fn duration_up_to(&mut self, max: Duration) -> Duration {
        let micros = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(self.next_u64() % micros.saturating_add(1))
    }
}

/// How many times a fault loop runs: `KILN_FAULT_ITERATIONS`, else `default`.
pub fn iterations(default: usize) -> usize {
    std::env::var("KILN_FAULT_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Sends SIGKILL to a child after `after` (unless it has exited by then) and reaps it.
/// Returns whether it was still running when killed.
pub fn kill_after(child: &mut Child, after: Duration) -> bool {
    std::thread::sleep(after);
    let running = matches!(child.try_wait(), Ok(None));
    if running {
        let _ = child.kill();
    }
    let _ = child.wait();
    running
}

/// The processes whose command line mentions `needle` (a test's state directory), with
/// their pid and command line. Zombies have no command line and are not listed.
pub fn processes_mentioning(needle: &Path) -> Vec<(u32, String)> {
    let needle = needle.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id();
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (pid != own && cmdline.contains(&needle)).then_some((pid, cmdline))
        })
        .collect()
}

/// The QEMU processes among [`processes_mentioning`].
pub fn qemu_processes(home: &Path) -> Vec<u32> {
    processes_mentioning(home)
        .into_iter()
        .filter(|(_, cmdline)| cmdline.contains("qemu-system"))
        .map(|(pid, _)| pid)
        .collect()
}

/// Checks that every `*.json` file under `dir` parses; returns how many there were, or the
/// first that does not parse.
pub fn json_files_parse(dir: &Path) -> Result<usize, String> {
    let mut count = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                serde_json::from_slice::<serde_json::Value>(&bytes)
                    .map_err(|e| format!("{} is not whole: {e}", path.display()))?;
                count += 1;
            }
        }
    }
    Ok(count)
}

/// The number of open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// This process's resident memory, in KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Children of this process that exited and were never reaped.
pub fn zombie_children() -> usize {
    let own = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|entry| {
            std::fs::read_to_string(entry.path().join("stat")).is_ok_and(|stat| {
                // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
                let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
                let mut fields = after.split_whitespace();
                fields.next() == Some("Z") && fields.next() == Some(own.as_str())
            })
        })
        .count()
}
