//! Progress lines for a long scan.

use std::path::Path;
use std::time::{Duration, Instant};

#[cfg(test)]
use super::walk::test_hook;
use super::watched::{ScanReport, path_for_message};

/// A scan that takes longer than this logs its progress, this often.
pub(super) const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Logs what a long scan has done so far, so a big tree does not look like a hung agent.
pub(super) struct Progress {
    start: Instant,
    every: Duration,
    next: Instant,
    /// Whether a progress line was logged (then the end of the scan is logged too).
    pub(super) logged: bool,
}

impl Progress {
    pub(super) fn new(start: Instant, every: Duration) -> Self {
        Progress {
            start,
            every,
            next: start + every,
            logged: false,
        }
    }

    pub(super) fn tick(&mut self, report: &ScanReport, candidates: usize, dir: &Path) {
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now + self.every;
        self.logged = true;
        self.emit(format!(
            "scanning model directories: {} files in {} directories so far, {} weight candidates, \
             {} errors, {:.0} s; now in {}",
            report.files_seen,
            report.dirs_seen,
            candidates,
            report.errors.len(),
            (now - self.start).as_secs_f64(),
            path_for_message(dir)
        ));
    }

    pub(super) fn emit(&self, line: String) {
        log::info!("{line}");
        #[cfg(test)]
        test_hook::LOG.with(|l| l.borrow_mut().push(line));
    }
}
