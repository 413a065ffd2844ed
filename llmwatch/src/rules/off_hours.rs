//! `weight.off_hours_access`: a scope read much of a protected file, or a lot of protected
//! data, outside business hours (and outside maintenance windows). Counted like
//! `weight.bulk_read` (per scope and file, over its window), with its own thresholds.
use super::{
    Ctx, Rule, RuleId,
    bulk_read::{scope_alert, scope_read},
    flows::{Flows, Scope, fraction, human},
    sink::AlertSink,
};
use crate::config::{RuleCommon, RuleSettings, Severity, rules::RuleKeys};

pub const ID: RuleId = RuleId::new("weight.off_hours_access");

const GIB: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub common: RuleCommon,
    pub min_bytes: u64,
    pub min_fraction: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            common: RuleCommon::new(Severity::High),
            min_bytes: GIB,
            min_fraction: 0.5,
        }
    }
}

impl RuleSettings for Settings {
    const KEYS: &'static [&'static str] = &["min_bytes", "min_fraction"];
    fn common(&self) -> &RuleCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut RuleCommon {
        &mut self.common
    }
    fn apply(&mut self, keys: &mut RuleKeys<'_, '_>) {
        keys.size("min_bytes", &mut self.min_bytes);
        keys.fraction("min_fraction", &mut self.min_fraction);
    }
}

#[derive(Default)]
pub(crate) struct State;

impl Rule for State {
    fn on_event(&mut self, ctx: &Ctx<'_>, flows: &Flows, sink: &mut AlertSink<'_>) {
        let cfg = sink.cfg();
        let s = &cfg.rules.off_hours;
        let since = ctx.t - super::delta(cfg.rules.bulk_read.window);
        let Some((reads, key, total)) = scope_read(ctx, flows, since) else {
            return;
        };
        let f = &reads.files[&key];
        if fraction(f.bytes, f.view.size) < s.min_fraction && total < s.min_bytes {
            return;
        }
        if cfg.business_hours.is_business_time(ctx.t) {
            return;
        }
        let scope = Scope::of(&ctx.ev.process);
        let dkey = format!("{}:{}:{}", scope.label(), key.dev, key.ino);
        if !sink.gate(ID, &dkey, ctx.t) {
            return;
        }
        let bh = &sink.cfg().business_hours;
        let local = ctx.t.with_timezone(&bh.tz);
        let when = format!("{} {}", local.format("%a %H:%M"), bh.tz);
        let spec = scope_alert(ctx, reads, key, since, ID, dkey, |p, total, detail| {
            format!(
                "{} (pid {}) and the rest of {} read {} of protected files outside business hours ({when}; {detail})",
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
    use std::sync::Arc;

    use super::super::testing::*;

    const YAML: &str = "rules: {weight.off_hours_access: {min_bytes: 1MiB}}";

    #[test]
    fn off_hours_reads_but_not_in_business_hours() {
        let mut r = Run::new(cfg(YAML), SUNDAY_03);
        let w = weight(3, 4 * MIB);
        let cp = proc_(301, "cp", "/usr/bin/cp", "cp", &[(300, "bash")]);
        r.read(0, &cp, &w, 4 * MIB);
        let off = r.of(super::ID);
        assert_eq!(off.len(), 1, "{:#?}", r.alerts);
        assert!(off[0].summary.contains("Sun 03:00"), "{}", off[0].summary);

        let mut r = Run::new(cfg(YAML), MONDAY_10);
        r.read(0, &cp, &w, 4 * MIB);
        assert!(r.of(super::ID).is_empty());
    }

    #[test]
    fn not_in_a_maintenance_window_nor_by_a_reader_on_schedule() {
        let maint = format!(
            "{YAML}\nbusiness_hours: {{timezone: UTC, maintenance: [{{start: '2026-11-22T02:00:00Z', end: '2026-11-22T04:00:00Z', reason: rollout}}]}}"
        );
        let c = Arc::new(crate::config::parse(&maint).unwrap());
        let mut r = Run::new(c, SUNDAY_03);
        let w = weight(3, 4 * MIB);
        let cp = proc_(301, "cp", "/usr/bin/cp", "cp", &[(300, "bash")]);
        r.read(0, &cp, &w, 4 * MIB);
        assert!(r.of(super::ID).is_empty(), "maintenance window: {:#?}", r.alerts);

        // A nightly integrity check, trusted 02:00-04:00 only.
        let yaml = format!(
            "{YAML}\nreaders: [{{name: nightly, exe: [/usr/bin/sha256sum], schedule: {{timezone: UTC, days: [sun], start: '02:00', end: '04:00'}}}}]"
        );
        let mut r = Run::new(cfg(&yaml), SUNDAY_03);
        let sum = proc_(401, "sha256sum", "/usr/bin/sha256sum", "sha256sum", &[(1, "cron")]);
        r.read(0, &sum, &w, 4 * MIB);
        assert!(r.alerts.is_empty(), "on schedule: {:#?}", r.alerts);
        // The same job at 05:00 is anyone.
        let w2 = weight(4, 4 * MIB);
        r.read(7200, &sum, &w2, 4 * MIB);
        assert_eq!(r.of(super::ID).len(), 1, "{:#?}", r.alerts);
    }
}
