//! `weight.guard`: the guard blocked something in the kernel (or, in monitor mode, would
//! have): a process tree past its egress budget, its connects and sends refused, a sender
//! killed, an open of a protected file refused. The alert says what was blocked and how many
//! bytes got out (what the tree had sent outside the allowlist when it was stopped).
use std::net::IpAddr;

use super::{
    Ctx, Rule, RuleId,
    flows::{Flows, human},
    sink::{AlertSink, AlertSpec},
};
use crate::{
    config::{Severity, rules::basic_settings},
    events::EventKind,
};

pub const ID: RuleId = RuleId::new("weight.guard");

basic_settings!(Severity::Critical);

#[derive(Default)]
pub(crate) struct State;

fn dest_text(dest: &Option<IpAddr>, port: u16) -> String {
    match dest {
        Some(IpAddr::V6(a)) => format!("[{a}]:{port}"),
        Some(a) => format!("{a}:{port}"),
        None => "?".into(),
    }
}

impl Rule for State {
    fn on_event(&mut self, ctx: &Ctx<'_>, _flows: &Flows, sink: &mut AlertSink<'_>) {
        let EventKind::Guard {
            action,
            hook,
            enforced,
            root,
            read,
            sent,
            budget,
            dest,
            port,
            count,
            ..
        } = &ctx.ev.event.kind
        else {
            return;
        };
        let p = &ctx.ev.process;
        let who = format!("{} (pid {})", p.exe.as_deref().unwrap_or(&p.comm), p.pid);
        let to = dest_text(dest, *port);
        let out = human(*sent);
        let budget_text = format!("its egress budget of {} (after reading {})", human(*budget), human(*read));
        // The LSM refuses; the send hooks (no LSM on this kernel) kill.
        let stops = if hook.starts_with("lsm/") {
            "its further connects and sends outside the allowlist are refused"
        } else {
            "its senders are killed at their next send outside the allowlist"
        };
        let (key, summary) = match &**action {
            "over_budget" if *enforced => (
                format!("{root}:over_budget"),
                format!(
                    "guard: the process tree of pid {root} went past {budget_text}: {who} sending to {to}; {stops} ({hook}); {out} got out"
                ),
            ),
            "over_budget" => (
                format!("{root}:over_budget"),
                format!(
                    "guard (monitor, nothing blocked): the process tree of pid {root} went past {budget_text}: {who} sending to {to}; enforce mode would refuse its further connects and sends; {out} sent so far"
                ),
            ),
            "killed" => (
                format!("{root}:killed:{}", p.pid),
                format!(
                    "guard: killed {who} (SIGKILL from {hook}) sending to {to} past {budget_text}; {out} got out"
                ),
            ),
            "send_refused" | "connect_refused" => {
                let what = if &**action == "send_refused" { "send" } else { "connect" };
                (
                    format!("{root}:{action}"),
                    format!(
                        "guard: refused {count} {what}(s) of {who} to {to} ({hook}): its process tree (pid {root}) is past {budget_text}; {out} got out"
                    ),
                )
            }
            "open_refused" => {
                let file = ctx
                    .ev
                    .weight
                    .as_ref()
                    .map(|w| w.path.display().to_string())
                    .unwrap_or_else(|| "a protected file".into());
                let verb = if *enforced {
                    "refused"
                } else {
                    "(monitor, nothing blocked) would have refused"
                };
                (
                    format!("{}:open:{file}", p.pid),
                    format!("guard: {verb} {who} opening {file}: neither a server nor a trusted reader ({hook})"),
                )
            }
            other => (format!("{root}:{other}"), format!("guard: {other} by {who} ({hook})")),
        };
        if !sink.gate(ID, &key, ctx.t) {
            return;
        }
        let mut spec = AlertSpec::about(ctx, ID, key, summary);
        if !*enforced {
            spec.severity = Some(Severity::High);
        }
        sink.emit(spec);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::{config::Severity, events::EventKind};

    fn guard(action: &'static str, enforced: bool) -> EventKind {
        EventKind::Guard {
            action: action.into(),
            hook: "lsm/socket_sendmsg".into(),
            enforced,
            root: 42,
            read: 64 << 20,
            sent: 700 << 10,
            budget: 671_088,
            dest: Some("127.0.0.1".parse().unwrap()),
            port: 9000,
            file: None,
            count: 1,
        }
    }

    #[test]
    fn says_what_was_blocked_and_how_much_got_out_and_monitor_is_high_not_critical() {
        let mut r = Run::new(cfg(""), MONDAY_10);
        let nc = proc_(701, "nc", "/usr/bin/nc", "nc 127.0.0.1 9000", &[(42, "bash")]);
        r.feed(1, &nc, guard("over_budget", true), None);
        r.feed(2, &nc, guard("send_refused", true), None);
        r.feed(3, &nc, guard("over_budget", true), None);
        let a = r.of(super::ID);
        assert_eq!(a.len(), 2, "{:#?}", r.alerts);
        assert_eq!(a[0].severity, Severity::Critical);
        assert!(a[0].summary.contains("700.0 KiB got out"), "{}", a[0].summary);
        assert!(a[1].summary.contains("refused 1 send(s)"), "{}", a[1].summary);

        let mut r = Run::new(cfg(""), MONDAY_10);
        r.feed(1, &nc, guard("over_budget", false), None);
        let a = r.of(super::ID);
        assert_eq!(a[0].severity, Severity::High);
        assert!(a[0].summary.contains("monitor, nothing blocked"), "{}", a[0].summary);
    }
}
