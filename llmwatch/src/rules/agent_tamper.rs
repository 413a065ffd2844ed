//! `agent.tamper`: another process took a handle to one of the agent's own BPF objects, or
//! the agent's own checks found its maps changed. With a map handle a process can change what
//! the agent watches or drain its events; with a program or link handle, inspect or detach it
//! (`bpftool prog/map show` takes handles too).
use chrono::{DateTime, Utc};

use super::{
    Ctx, Rule, RuleId,
    flows::Flows,
    sink::{AlertSink, AlertSpec, agent_process},
};
use crate::{
    alerts::Window,
    config::{Severity, rules::basic_settings},
    events::EventKind,
};

pub const ID: RuleId = RuleId::new("agent.tamper");

basic_settings!(Severity::Critical);

#[derive(Default)]
pub(crate) struct State;

impl Rule for State {
    fn on_event(&mut self, ctx: &Ctx<'_>, _flows: &Flows, sink: &mut AlertSink<'_>) {
        let EventKind::BpfAccess {
            object,
            id,
            ours: Some(name),
            ..
        } = &ctx.ev.event.kind
        else {
            return;
        };
        let p = &ctx.ev.process;
        let key = format!("{}:{object}:{id}", p.pid);
        if !sink.gate(ID, &key, ctx.t) {
            return;
        }
        let what = match object.as_ref() {
            "map" => "it can now change what the agent watches or read its events",
            _ => "it can now inspect or detach the agent's kernel hooks",
        };
        let who = format!("{} (pid {})", p.exe.as_deref().unwrap_or(&p.comm), p.pid);
        let summary = format!("{who} took a handle to llmwatch's BPF {object} {name} (id {id}): {what}");
        sink.emit(AlertSpec::about(ctx, ID, key, summary));
    }
}

/// Found by the agent's own checks.
pub(super) fn alert_by_agent(sink: &mut AlertSink<'_>, summary: String, key: String, t: DateTime<Utc>) {
    sink.emit(AlertSpec {
        rule: ID,
        severity: None,
        summary,
        time: t,
        process: agent_process(),
        files: vec![],
        network: vec![],
        window: Window::at(t),
        key,
    });
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::super::testing::*;
    use crate::{config::Severity, events::EventKind};

    #[test]
    fn handles_to_its_own_objects_only() {
        let mut r = Run::new(cfg(""), MONDAY_10);
        let tool = proc_(700, "bpftool", "/usr/sbin/bpftool", "bpftool map show", &[(1, "bash")]);
        let access = |ours: Option<&str>| EventKind::BpfAccess {
            object: "map".into(),
            id: 42,
            fd: 3,
            ours: ours.map(str::to_string),
        };
        // Another agent's (or any unrelated) map: nothing.
        r.feed(1, &tool, access(None), None);
        assert!(r.of(super::ID).is_empty(), "{:#?}", r.alerts);
        r.feed(2, &tool, access(Some("WATCHED_FILES")), None);
        let t = r.of(super::ID);
        assert_eq!(t.len(), 1, "{:#?}", r.alerts);
        assert_eq!(t[0].severity, Severity::Critical);
        assert!(t[0].summary.contains("WATCHED_FILES") && t[0].summary.contains("id 42"), "{}", t[0].summary);
        // The agent's own check of its maps.
        let at = r.t0 + TimeDelta::seconds(3);
        r.engine.on_agent_tamper("map changed".into(), "map:WATCHED_FILES".into(), at, &mut r.alerts);
        assert_eq!(r.of(super::ID).len(), 2);
    }
}
