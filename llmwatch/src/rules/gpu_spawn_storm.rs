//! `gpu.spawn_storm`: GPU-using processes started too fast by one user or container, or too
//! many use GPUs at once (LLM04 resource exhaustion).
use foldhash::{HashMap, HashSet};
use std::collections::VecDeque;

use chrono::{DateTime, TimeDelta, Utc};

use super::{
    Ctx, Rule, RuleId,
    flows::{Flows, Scope},
    sink::{AlertSink, AlertSpec},
};
use crate::{
    alerts::Window,
    config::{RuleCommon, RuleSettings, Severity, rules::MINUTE, rules::RuleKeys},
    events::EventKind,
};

pub const ID: RuleId = RuleId::new("gpu.spawn_storm");

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub common: RuleCommon,
    pub max_spawns: u32,
    pub per: std::time::Duration,
    pub max_concurrent: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            common: RuleCommon::new(Severity::High),
            max_spawns: 20,
            per: MINUTE,
            max_concurrent: 64,
        }
    }
}

impl RuleSettings for Settings {
    const KEYS: &'static [&'static str] = &["max_spawns", "per", "max_concurrent"];
    fn common(&self) -> &RuleCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut RuleCommon {
        &mut self.common
    }
    fn apply(&mut self, keys: &mut RuleKeys<'_, '_>) {
        keys.count("max_spawns", &mut self.max_spawns);
        keys.duration("per", &mut self.per);
        keys.count("max_concurrent", &mut self.max_concurrent);
    }
}

#[derive(Default)]
pub(crate) struct State {
    /// GPU process starts per user or container, for the rate limit.
    spawns: HashMap<Scope, VecDeque<DateTime<Utc>>>,
    /// Processes currently holding a GPU.
    live: HashSet<u32>,
}

impl Rule for State {
    fn on_event(&mut self, ctx: &Ctx<'_>, _flows: &Flows, sink: &mut AlertSink<'_>) {
        let EventKind::GpuOpen { .. } = &ctx.ev.event.kind else {
            return;
        };
        let p = &ctx.ev.process;
        // The first GPU use of each process counts as one GPU process start.
        if !self.live.insert(p.pid) {
            return;
        }
        let s = &sink.cfg().rules.gpu_spawn_storm;
        let (max_spawns, per, max_concurrent) = (s.max_spawns as usize, super::delta(s.per), s.max_concurrent as usize);
        let scope = Scope::of(p);
        let q = self.spawns.entry(scope.clone()).or_default();
        q.push_back(ctx.t);
        while q.front().is_some_and(|t| ctx.t - *t > per) {
            q.pop_front();
        }
        let start = q.front().copied().unwrap_or(ctx.t);
        let n = q.len();
        if n > max_spawns {
            let label = scope.label();
            let mut spec = AlertSpec::about(
                ctx,
                ID,
                format!("rate:{label}"),
                format!(
                    "{n} GPU processes started by {label} within {} s (limit {max_spawns})",
                    (ctx.t - start).num_seconds()
                ),
            );
            spec.window = Window { start, end: ctx.t };
            sink.emit(spec);
        }
        let live = self.live.len();
        if live > max_concurrent {
            let summary = format!("{live} processes are using GPUs at once (limit {max_concurrent})");
            sink.emit(AlertSpec::about(ctx, ID, "concurrent".into(), summary));
        }
    }

    fn on_exit(&mut self, pid: u32) {
        self.live.remove(&pid);
    }

    fn expire(&mut self, now: DateTime<Utc>, keep: TimeDelta) {
        self.spawns.retain(|_, q| q.back().is_some_and(|t| now - *t < keep));
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn by_rate_per_user() {
        let mut r = Run::new(
            cfg("rules: {gpu.spawn_storm: {max_spawns: 5, per: 1m}, gpu.unexpected_user: {enabled: false}}"),
            MONDAY_10,
        );
        let job = |pid| proc_(pid, "python3", "/usr/bin/python3", "python3 job.py", &[(799, "bash")]);
        for i in 0..5 {
            r.feed(i, &job(800 + i as u32), gpu(195, 0), None);
        }
        assert!(r.of(super::ID).is_empty());
        r.feed(6, &job(810), gpu(195, 0), None);
        assert_eq!(r.of(super::ID).len(), 1, "{:?}", r.rules());
    }

    #[test]
    fn by_concurrency_and_exits_free_slots() {
        let mut r = Run::new(
            cfg("rules: {gpu.spawn_storm: {max_spawns: 100, max_concurrent: 2}, gpu.unexpected_user: {enabled: false}}"),
            MONDAY_10,
        );
        let job = |pid| proc_(pid, "python3", "/usr/bin/python3", "python3 job.py", &[(799, "bash")]);
        r.feed(0, &job(800), gpu(195, 0), None);
        r.feed(1, &job(801), gpu(195, 0), None);
        r.feed(2, &job(801), crate::events::EventKind::ProcExit { exit_code: 0 }, None);
        r.feed(3, &job(802), gpu(195, 0), None);
        assert!(r.of(super::ID).is_empty(), "{:#?}", r.alerts);
        r.feed(4, &job(803), gpu(195, 0), None);
        assert_eq!(r.of(super::ID).len(), 1, "{:#?}", r.alerts);
    }
}
