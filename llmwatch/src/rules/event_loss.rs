//! `agent.event_loss`: the kernel dropped events (its ring buffer was full). Every alert whose
//! window overlaps a loss is marked `incomplete`.
use super::{
    Rule, RuleId,
    sink::{AlertSink, AlertSpec, agent_process},
};
use crate::{
    alerts::Window,
    config::{Severity, rules::basic_settings},
};

pub const ID: RuleId = RuleId::new("agent.event_loss");

basic_settings!(Severity::High);

#[derive(Default)]
pub(crate) struct State;

impl Rule for State {}

pub(super) fn alert(sink: &mut AlertSink<'_>, dropped: u64, window: Window) {
    sink.emit(AlertSpec {
        rule: ID,
        severity: None,
        summary: format!(
            "the kernel dropped {dropped} events (ring buffer full); alerts in this window may be incomplete"
        ),
        time: window.end,
        process: agent_process(),
        files: vec![],
        network: vec![],
        window,
        key: ID.to_string(),
    });
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::super::testing::*;

    #[test]
    fn alerts_and_marks_overlapping_alerts_incomplete() {
        let mut r = Run::new(cfg(""), MONDAY_10);
        let t = r.t0 + TimeDelta::seconds(1);
        r.engine.on_event_loss(42, t, &mut r.alerts);
        assert_eq!(r.of(super::ID).len(), 1);
        let w = weight(7, 8 * MIB);
        let cat = proc_(201, "cat", "/usr/bin/cat", "cat", &[(200, "bash")]);
        r.read(1, &cat, &w, 8 * MIB);
        let hits = r.of(super::super::unexpected_reader::ID);
        assert_eq!(hits.len(), 1, "{:#?}", r.alerts);
        assert!(hits[0].incomplete, "the loss overlapped its window");
        let later = proc_(301, "cat", "/usr/bin/cat", "cat", &[(300, "bash")]);
        r.read(7200, &later, &w, 8 * MIB);
        assert!(!r.of(super::super::unexpected_reader::ID)[1].incomplete);
    }
}
