//! Times a boot from outside the guest: its first console output, init's marker, and the
//! agent's answer, each reported as a [`progress::Phase`] as it ends.

use std::time::{Duration, Instant};

use crate::progress::{self, Event, Reporter};

/// How often a boot's console is looked at for its phases.
pub(super) const CONSOLE_POLL: Duration = Duration::from_millis(5);

/// Times a boot's phases from its console log: the first byte, then init's marker
/// ([`crate::image::INIT_MARKER`]), then the agent's answer.
pub(super) struct ConsoleWatch {
    log: std::path::PathBuf,
    last: Instant,
    first_output: bool,
    init: bool,
    /// How much of the log was searched for the marker.
    scanned: u64,
    /// The last bytes searched, in case the marker straddles two looks.
    carry: Vec<u8>,
}

/// The marker comes within the first few KiB of a boot's log; past this much (an image
/// without kiln's init), it is no longer looked for.
const CONSOLE_SCAN_LIMIT: u64 = 1 << 20;

impl ConsoleWatch {
    pub(super) fn new(log: std::path::PathBuf, started: Instant) -> Self {
        Self {
            log,
            last: started,
            first_output: false,
            init: false,
            scanned: 0,
            carry: Vec::new(),
        }
    }

    /// Whether there is nothing more to look for.
    pub(super) fn done(&self) -> bool {
        self.init || self.scanned >= CONSOLE_SCAN_LIMIT
    }

    fn end(&mut self, phase: progress::Phase, reporter: &dyn Reporter) {
        let now = Instant::now();
        reporter.report(Event::Phase {
            phase,
            elapsed: now - self.last,
        });
        self.last = now;
    }

    /// Reports the phases that ended since the last look; reads only what the log gained.
    pub(super) fn look(&mut self, reporter: &dyn Reporter) {
        use std::io::{Read, Seek};
        if self.done() {
            return;
        }
        let Ok(mut file) = std::fs::File::open(&self.log) else {
            return;
        };
        if file.seek(std::io::SeekFrom::Start(self.scanned)).is_err() {
            return;
        }
        let mut fresh = Vec::new();
        let room = CONSOLE_SCAN_LIMIT - self.scanned;
        if file.take(room).read_to_end(&mut fresh).is_err() || fresh.is_empty() {
            return;
        }
        if !self.first_output {
            self.first_output = true;
            self.end(progress::Phase::FirstOutput, reporter);
        }
        self.scanned += fresh.len() as u64;
        let marker = crate::image::INIT_MARKER.as_bytes();
        let mut window = std::mem::take(&mut self.carry);
        window.extend_from_slice(&fresh);
        if window.windows(marker.len()).any(|w| w == marker) {
            self.init = true;
            self.end(progress::Phase::KernelToInit, reporter);
            return;
        }
        let keep = window.len().saturating_sub(marker.len() - 1);
        self.carry = window.split_off(keep);
    }

    /// The agent answered: the last phase ends (if the others were seen).
    pub(super) fn agent_ready(&mut self, reporter: &dyn Reporter) {
        self.look(reporter);
        if self.init {
            self.end(progress::Phase::InitToAgent, reporter);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    /// The phases a console watch reports.
    #[derive(Default)]
    struct Phases(std::sync::Mutex<Vec<crate::progress::Phase>>);

    impl crate::progress::Reporter for Phases {
        fn report(&self, event: crate::progress::Event) {
            if let crate::progress::Event::Phase { phase, .. } = event {
                self.0.lock().unwrap().push(phase);
            }
        }
    }

    fn append(path: &std::path::Path, bytes: &[u8]) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        file.write_all(bytes).unwrap();
    }

    #[test]
    fn a_console_watch_finds_the_marker_split_across_looks_and_reads_each_byte_once() {
        use crate::progress::Phase;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        let phases = Phases::default();
        let mut watch = super::ConsoleWatch::new(log.clone(), std::time::Instant::now());
        watch.look(&phases);
        assert!(phases.0.lock().unwrap().is_empty(), "no log yet");
        let marker = crate::image::INIT_MARKER.as_bytes();
        let (head, tail) = marker.split_at(marker.len() / 2);
        append(&log, b"[    0.000000] Linux version\n");
        append(&log, head);
        watch.look(&phases);
        assert_eq!(*phases.0.lock().unwrap(), [Phase::FirstOutput]);
        assert_eq!(watch.scanned, std::fs::metadata(&log).unwrap().len());
        append(&log, tail);
        watch.look(&phases);
        assert!(watch.done());
        watch.agent_ready(&phases);
        assert_eq!(
            *phases.0.lock().unwrap(),
            [Phase::FirstOutput, Phase::KernelToInit, Phase::InitToAgent]
        );
    }

    #[test]
    fn a_console_watch_gives_up_on_a_log_without_the_marker() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        let phases = Phases::default();
        let mut watch = super::ConsoleWatch::new(log.clone(), std::time::Instant::now());
        append(&log, &vec![b'x'; 3 << 20]);
        watch.look(&phases);
        assert!(
            watch.done(),
            "a full-mode image's chatty console is not searched forever"
        );
        assert_eq!(watch.scanned, super::CONSOLE_SCAN_LIMIT);
        watch.agent_ready(&phases);
        assert_eq!(
            *phases.0.lock().unwrap(),
            [crate::progress::Phase::FirstOutput],
            "no init phase is made up"
        );
    }
}
