//! `inference.egress`: an inference server connected somewhere `egress.allow` does not allow.
//! At any time, start-up included: a booby-trapped model runs its payload while the server
//! loads it (OWASP LLM05), so the start-up window exempts reads only. Servers that download
//! at start-up allowlist their model hub by name.
use super::{
    Ctx, Rule, RuleId,
    flows::{Flows, endpoint},
    sink::{AlertSink, AlertSpec},
};
use crate::{
    alerts::{AlertNetwork, AlertProcess, Window},
    config::{Severity, rules::basic_settings},
    events::EventKind,
};

pub const ID: RuleId = RuleId::new("inference.egress");

basic_settings!(Severity::High);

#[derive(Default)]
pub(crate) struct State;

impl Rule for State {
    fn on_event(&mut self, ctx: &Ctx<'_>, _flows: &Flows, sink: &mut AlertSink<'_>) {
        let EventKind::NetConnect { dest, port, .. } = &ctx.ev.event.kind else {
            return;
        };
        let Some(server) = ctx.server else { return };
        if sink.cfg().egress.allows(*dest, *port) {
            return;
        }
        let p = &ctx.ev.process;
        let during = if ctx.startup_load { " while starting up" } else { "" };
        sink.emit(AlertSpec {
            rule: ID,
            severity: None,
            summary: format!(
                "inference server {} (pid {}) connected to {}{during}, outside the egress allowlist",
                server.name,
                p.pid,
                endpoint(*dest, *port)
            ),
            time: ctx.t,
            process: AlertProcess::of(ctx.ev),
            files: vec![],
            network: vec![AlertNetwork {
                dest: *dest,
                port: *port,
                bytes_sent: 0,
            }],
            window: Window::at(ctx.t),
            key: format!("{}:{dest}:{port}", p.pid),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn outside_the_allowlist_start_up_included() {
        let mut r = Run::new(cfg("egress: {allow: ['10.0.0.0/8', ':53']}"), MONDAY_10);
        let s = vllm();
        r.exec(0, &s);
        r.connect(3600, &s, "10.1.2.3", 443); // allowed by network
        r.connect(3600, &s, "198.51.100.7", 53); // allowed by port
        assert!(r.of(super::ID).is_empty(), "{:#?}", r.alerts);
        r.connect(5, &s, "198.51.100.7", 443); // what a malicious model does while loading
        let a = r.of(super::ID);
        assert_eq!(a.len(), 1, "{:#?}", r.alerts);
        assert!(a[0].summary.contains("while starting up"), "{}", a[0].summary);
    }

    #[test]
    fn other_processes_connect_freely() {
        let mut r = Run::new(cfg(""), MONDAY_10);
        let curl = proc_(101, "curl", "/usr/bin/curl", "curl https://example.com", &[(100, "bash")]);
        r.connect(0, &curl, "198.51.100.7", 443);
        assert!(r.alerts.is_empty(), "{:#?}", r.alerts);
    }
}
