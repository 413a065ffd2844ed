//! `weight.bulk_read`: a scope (a container, or a user outside containers) read much of a
//! protected file, or a lot of protected data, within the window. Judged per scope and file,
//! so two runs that each read half of a file are one whole file.
//!
//! Not counted: any server's start-up load, a pinned server's reads, and a trusted reader's
//! reads on schedule.
use super::{
    Ctx, Rule, RuleId,
    flows::{Flows, ScopeReads, fraction, human, humantime_short},
    sink::{AlertSink, AlertSpec},
};
use crate::{
    alerts::{AlertFile, AlertProcess, Window},
    config::{RuleCommon, RuleSettings, Severity, rules::MINUTE, rules::RuleKeys},
    events::FileKey,
};

pub const ID: RuleId = RuleId::new("weight.bulk_read");

const GIB: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub common: RuleCommon,
    /// Fraction of one file that counts as bulk.
    pub min_fraction: f64,
    /// Bytes across files that count as bulk.
    pub min_bytes: u64,
    /// How far back reads add up (also how long a scope's reads of a file are remembered).
    pub window: std::time::Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            common: RuleCommon::new(Severity::High),
            min_fraction: 0.5,
            min_bytes: 10 * GIB,
            window: 60 * MINUTE,
        }
    }
}

impl RuleSettings for Settings {
    const KEYS: &'static [&'static str] = &["min_fraction", "min_bytes", "window"];
    fn common(&self) -> &RuleCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut RuleCommon {
        &mut self.common
    }
    fn apply(&mut self, keys: &mut RuleKeys<'_, '_>) {
        keys.fraction("min_fraction", &mut self.min_fraction);
        keys.size("min_bytes", &mut self.min_bytes);
        keys.duration("window", &mut self.window);
    }
}

#[derive(Default)]
pub(crate) struct State;

/// The scope's reads of the event's file, when the event counted toward them: (reads, file,
/// dedup key, total since `since`).
pub(super) fn scope_read<'f>(
    ctx: &Ctx<'_>,
    flows: &'f Flows,
    since: chrono::DateTime<chrono::Utc>,
) -> Option<(&'f ScopeReads, FileKey, u64)> {
    let w = ctx.ev.weight.as_ref()?;
    if super::flows::read_bytes(&ctx.ev.event.kind) == 0 || !super::flows::counts_for_scope(ctx) {
        return None;
    }
    let reads = flows.scope_reads.get(&super::flows::Scope::of(&ctx.ev.process))?;
    let key = FileKey { dev: w.dev, ino: w.ino };
    reads.files.contains_key(&key).then(|| (reads, key, reads.total_since(since)))
}

/// The alert both scope rules raise, once due.
pub(super) fn scope_alert(
    ctx: &Ctx<'_>,
    reads: &ScopeReads,
    key: FileKey,
    since: chrono::DateTime<chrono::Utc>,
    rule: RuleId,
    dkey: String,
    summary: impl FnOnce(&AlertProcess, u64, String) -> String,
) -> AlertSpec {
    let files = reads.files_since(since);
    let total: u64 = files.iter().map(|f| f.bytes).sum();
    let process = match &reads.reader {
        Some(p) => AlertProcess::from_view(p),
        None => AlertProcess::of(ctx.ev),
    };
    let start = files.iter().map(|f| f.first).min().unwrap_or(ctx.t);
    let this = &reads.files[&key];
    let detail = format!(
        "{} of {}, {:.0}%, in {}",
        human(this.bytes),
        this.view.path.display(),
        100.0 * fraction(this.bytes, this.view.size),
        humantime_short(ctx.t - start)
    );
    AlertSpec {
        rule,
        severity: None,
        summary: summary(&process, total, detail),
        time: ctx.t,
        process,
        files: files.iter().map(|f| AlertFile::of(&f.view, f.bytes)).collect(),
        network: vec![],
        window: Window { start, end: ctx.t },
        key: dkey,
    }
}

impl Rule for State {
    fn on_event(&mut self, ctx: &Ctx<'_>, flows: &Flows, sink: &mut AlertSink<'_>) {
        let s = &sink.cfg().rules.bulk_read;
        let since = ctx.t - super::delta(s.window);
        let Some((reads, key, total)) = scope_read(ctx, flows, since) else {
            return;
        };
        let f = &reads.files[&key];
        // Runs for every read report: plain numbers first, nothing formatted until due.
        if fraction(f.bytes, f.view.size) < s.min_fraction && total < s.min_bytes {
            return;
        }
        let scope = super::flows::Scope::of(&ctx.ev.process);
        let dkey = format!("{}:{}:{}", scope.label(), key.dev, key.ino);
        if !sink.gate(ID, &dkey, ctx.t) {
            return;
        }
        let spec = scope_alert(ctx, reads, key, since, ID, dkey, |p, total, detail| {
            format!(
                "{} (pid {}) and the rest of {} read {} of protected files ({detail})",
                p.comm,
                p.pid,
                scope.label(),
                human(total)
            )
        });
        sink.emit(spec);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn half_a_file_is_bulk_but_a_tenth_is_not() {
        let mut r = Run::new(cfg(""), MONDAY_10);
        let w = weight(1, 100 * MIB);
        let cp = proc_(101, "cp", "/usr/bin/cp", "cp /models/m1.safetensors /tmp/x", &[(100, "bash")]);
        r.read(0, &cp, &w, 10 * MIB);
        assert!(r.of(super::ID).is_empty(), "10% is not bulk");
        r.read(1, &cp, &w, 50 * MIB);
        let bulk = r.of(super::ID);
        assert_eq!(bulk.len(), 1, "{:#?}", r.alerts);
        assert_eq!(bulk[0].files[0].bytes_read, 60 * MIB);
        assert_eq!(bulk[0].process.pid, 101);
    }

    #[test]
    fn two_runs_reading_halves_are_one_whole_file() {
        let mut r = Run::new(cfg(""), MONDAY_10);
        let w = weight(1, 100 * MIB);
        // Two logins of the same user, one half each (dd skip=...): no process tree shared.
        let a = proc_(101, "dd", "/usr/bin/dd", "dd count=49", &[(100, "bash"), (99, "sshd")]);
        let b = proc_(201, "dd", "/usr/bin/dd", "dd skip=49", &[(200, "bash"), (199, "sshd")]);
        r.read(0, &a, &w, 49 * MIB);
        assert!(r.of(super::ID).is_empty());
        r.read(600, &b, &w, 49 * MIB);
        let bulk = r.of(super::ID);
        assert_eq!(bulk.len(), 1, "{:#?}", r.alerts);
        assert_eq!(bulk[0].files[0].bytes_read, 98 * MIB);
        // Another user reading the other half is another scope.
        let mut r = Run::new(cfg(""), MONDAY_10);
        let mut c = proc_(301, "dd", "/usr/bin/dd", "dd", &[(300, "bash")]);
        c.uid = 1001;
        r.read(0, &a, &w, 49 * MIB);
        r.read(1, &c, &w, 49 * MIB);
        assert!(r.of(super::ID).is_empty(), "{:#?}", r.alerts);
    }

    #[test]
    fn reads_older_than_the_window_do_not_add_up() {
        let mut r = Run::new(cfg("rules: {weight.bulk_read: {window: 10m}}"), MONDAY_10);
        let w = weight(1, 100 * MIB);
        let a = proc_(101, "dd", "/usr/bin/dd", "dd", &[(100, "bash")]);
        r.read(0, &a, &w, 49 * MIB);
        r.read(3600, &a, &w, 49 * MIB);
        assert!(r.of(super::ID).is_empty(), "{:#?}", r.alerts);
    }
}
