//! A reporter that keeps every progress event, for tests that check what a verb reports.

use std::sync::Mutex;

use kiln::progress::{Event, Reporter, Stage};

/// Keeps every event it is given.
#[derive(Debug, Default)]
pub struct Recorder(Mutex<Vec<Event>>);

impl Recorder {
    /// The byte counts reported for `stage`, in order: `(done, total)`.
    pub fn bytes(&self, stage: Stage) -> Vec<(u64, Option<u64>)> {
        self.events()
            .into_iter()
            .filter_map(|event| match event {
                Event::Bytes {
                    stage: s,
                    done,
                    total,
                } if s == stage => Some((done, total)),
                _ => None,
            })
            .collect()
    }

    /// Whether `stage` was reported done.
    pub fn finished(&self, stage: Stage) -> bool {
        self.events()
            .iter()
            .any(|event| matches!(event, Event::StageDone { stage: s, .. } if *s == stage))
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Event> {
        self.0.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Checks what a meter reported for `stage`: at least `at_least` counts, never going
    /// back, and returns the last one.
    pub fn last_bytes(&self, stage: Stage, at_least: usize) -> (u64, Option<u64>) {
        let seen = self.bytes(stage);
        assert!(seen.len() >= at_least, "{stage:?}: {seen:?}");
        assert!(
            seen.windows(2).all(|w| w[0].0 <= w[1].0),
            "{stage:?} went back: {seen:?}"
        );
        *seen.last().unwrap_or(&(0, None))
    }
}

impl Reporter for Recorder {
    fn report(&self, event: Event) {
        if let Ok(mut events) = self.0.lock() {
            events.push(event);
        }
    }
}
