//! `gpu.unexpected_user`: a program that is neither an inference server nor in `gpu.allow`
//! opened a GPU device (a miner, or someone borrowing the accelerator).
use super::{
    Ctx, Rule, RuleId,
    flows::Flows,
    sink::{AlertSink, AlertSpec},
};
use crate::{
    config::{Severity, rules::basic_settings},
    events::EventKind,
};

pub const ID: RuleId = RuleId::new("gpu.unexpected_user");

basic_settings!(Severity::Medium);

#[derive(Default)]
pub(crate) struct State;

impl Rule for State {
    fn on_event(&mut self, ctx: &Ctx<'_>, _flows: &Flows, sink: &mut AlertSink<'_>) {
        let EventKind::GpuOpen { device, .. } = &ctx.ev.event.kind else {
            return;
        };
        let p = &ctx.ev.process;
        if ctx.server.is_some() || sink.cfg().gpu_allowed(&p.comm, p.exe.as_deref()) {
            return;
        }
        let who = p.exe.as_deref().filter(|e| !e.is_empty()).unwrap_or(&p.comm);
        let key = format!("{who}:{device}");
        let summary = format!(
            "{who} (pid {}) started using GPU device {device}; it is not an allowed GPU program",
            p.pid
        );
        sink.emit(AlertSpec::about(ctx, ID, key, summary));
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn programs_outside_the_allowlist() {
        let mut r = Run::new(cfg(""), MONDAY_10);
        r.feed(0, &proc_(701, "xmrig", "/tmp/.x/xmrig", "xmrig -o pool", &[(700, "bash")]), gpu(195, 0), None);
        r.feed(0, &vllm(), gpu(195, 0), None);
        r.feed(0, &proc_(702, "nvidia-smi", "/usr/bin/nvidia-smi", "nvidia-smi", &[(700, "bash")]), gpu(195, 255), None);
        let u = r.of(super::ID);
        assert_eq!(u.len(), 1, "{:#?}", r.alerts);
        assert_eq!(u[0].process.comm, "xmrig");
    }
}
