//! `agent.gap`: nothing watched this host between the previous run's last heartbeat and this
//! start, and the previous run did not stop in order (killed, crashed, or the host lost power).
use super::{
    Rule, RuleId,
    sink::{AlertSink, AlertSpec, agent_process},
};
use crate::{
    alerts::Window,
    config::{Severity, rules::basic_settings},
};

pub const ID: RuleId = RuleId::new("agent.gap");

basic_settings!(Severity::High);

#[derive(Default)]
pub(crate) struct State;

impl Rule for State {}

pub(super) fn alert(sink: &mut AlertSink<'_>, summary: String, window: Window) {
    sink.emit(AlertSpec {
        rule: ID,
        severity: None,
        summary,
        time: window.end,
        process: agent_process(),
        files: vec![],
        network: vec![],
        window,
        key: format!("gap:{}", window.start.timestamp()),
    });
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::super::testing::*;
    use crate::alerts::Window;

    #[test]
    fn one_alert_per_gap() {
        let mut r = Run::new(cfg(""), MONDAY_10);
        let w = Window {
            start: r.t0,
            end: r.t0 + TimeDelta::seconds(300),
        };
        r.engine.on_agent_gap("unwatched for 5 min".into(), w, &mut r.alerts);
        r.engine.on_agent_gap("unwatched for 5 min".into(), w, &mut r.alerts);
        let a = r.of(super::ID);
        assert_eq!(a.len(), 1, "{:#?}", r.alerts);
        assert_eq!(a[0].window, w);
    }
}
