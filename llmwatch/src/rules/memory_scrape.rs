//! `host.memory_scrape`: another process read or attached to an inference server's memory
//! (ptrace, process_vm_readv, /proc/<pid>/mem): its memory holds the weights, decrypted.
use super::{
    Ctx, Rule, RuleId,
    flows::Flows,
    sink::{AlertSink, AlertSpec},
};
use crate::{
    config::{Severity, rules::basic_settings},
    events::EventKind,
};

pub const ID: RuleId = RuleId::new("host.memory_scrape");

basic_settings!(Severity::Critical);

#[derive(Default)]
pub(crate) struct State;

impl Rule for State {
    fn on_event(&mut self, ctx: &Ctx<'_>, _flows: &Flows, sink: &mut AlertSink<'_>) {
        let EventKind::ProcAccess { target_pid, op, .. } = &ctx.ev.event.kind else {
            return;
        };
        let Some(server) = ctx.target_server else { return };
        let p = &ctx.ev.process;
        if p.pid == *target_pid {
            return;
        }
        let key = format!("{}:{target_pid}", p.pid);
        let summary = format!(
            "{} (pid {}) used {op} on inference server {} (pid {target_pid}): its memory holds the weights",
            p.comm, p.pid, server.name
        );
        sink.emit(AlertSpec::about(ctx, ID, key, summary));
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::{config::Severity, events::EventKind};

    #[test]
    fn of_a_server_only() {
        let mut r = Run::new(cfg(""), MONDAY_10);
        let s = vllm();
        r.exec(0, &s);
        let gdb = proc_(900, "gdb", "/usr/bin/gdb", "gdb -p 500", &[(899, "bash")]);
        let attach = |target_pid| EventKind::ProcAccess {
            target_pid,
            op: "ptrace_attach".into(),
            bytes: 0,
        };
        r.feed(1, &gdb, attach(500), None);
        r.feed(1, &gdb, attach(123), None);
        let m = r.of(super::ID);
        assert_eq!(m.len(), 1, "{:#?}", r.alerts);
        assert_eq!(m[0].severity, Severity::Critical);
    }
}
