//! `host.bpf_load`: another process loaded a BPF program. Info: debuggers and other agents do
//! this too, but a rootkit that blinds the agent does it first.
use super::{
    Ctx, Rule, RuleId,
    flows::Flows,
    sink::{AlertSink, AlertSpec},
};
use crate::{
    config::{Severity, rules::basic_settings},
    events::EventKind,
};

pub const ID: RuleId = RuleId::new("host.bpf_load");

basic_settings!(Severity::Info);

#[derive(Default)]
pub(crate) struct State;

impl Rule for State {
    fn on_event(&mut self, ctx: &Ctx<'_>, _flows: &Flows, sink: &mut AlertSink<'_>) {
        let EventKind::BpfLoad { prog_type, prog_name, .. } = &ctx.ev.event.kind else {
            return;
        };
        let p = &ctx.ev.process;
        let key = format!("{}:{prog_name}", p.pid);
        if !sink.gate(ID, &key, ctx.t) {
            return;
        }
        let who = format!("{} (pid {})", p.exe.as_deref().unwrap_or(&p.comm), p.pid);
        let summary = format!("{who} loaded a BPF program {prog_name:?} (type {prog_type})");
        sink.emit(AlertSpec::about(ctx, ID, key, summary));
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::{config::Severity, events::EventKind};

    #[test]
    fn one_info_alert_per_program_and_process() {
        let mut r = Run::new(cfg(""), MONDAY_10);
        let tool = proc_(700, "bpftrace", "/usr/bin/bpftrace", "bpftrace -e ...", &[(1, "bash")]);
        let load = |name: &str| EventKind::BpfLoad {
            prog_type: 2,
            prog_name: name.into(),
            fd: 5,
        };
        r.feed(1, &tool, load("kprobe_x"), None);
        r.feed(2, &tool, load("kprobe_x"), None);
        r.feed(3, &tool, load("kprobe_y"), None);
        let a = r.of(super::ID);
        assert_eq!(a.len(), 2, "{:#?}", r.alerts);
        assert_eq!(a[0].severity, Severity::Info);
    }
}
