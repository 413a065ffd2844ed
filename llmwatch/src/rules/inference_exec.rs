//! `inference.exec`: an inference server ran another program: a shell always, anything else
//! unless `allow` names it. Its own workers re-executing the same interpreter are not judged.
use super::{
    Ctx, Rule, RuleId,
    flows::Flows,
    sink::{AlertSink, AlertSpec},
};
use crate::{
    config::{Pattern, basename, RuleCommon, RuleSettings, Severity, rules::RuleKeys},
    events::EventKind,
};

pub const ID: RuleId = RuleId::new("inference.exec");

/// Programs that give an attacker a shell: never expected under an inference server.
const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "fish", "busybox", "ash", "csh", "tcsh",
];

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub common: RuleCommon,
    /// Globs on the executable path that servers may run.
    pub allow: Vec<Pattern>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            common: RuleCommon::new(Severity::High),
            allow: Vec::new(),
        }
    }
}

impl RuleSettings for Settings {
    const KEYS: &'static [&'static str] = &["allow"];
    fn common(&self) -> &RuleCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut RuleCommon {
        &mut self.common
    }
    fn apply(&mut self, keys: &mut RuleKeys<'_, '_>) {
        keys.globs("allow", &mut self.allow);
    }
}

#[derive(Default)]
pub(crate) struct State;

impl Rule for State {
    fn on_event(&mut self, ctx: &Ctx<'_>, _flows: &Flows, sink: &mut AlertSink<'_>) {
        let EventKind::ProcExec { filename, argv, .. } = &ctx.ev.event.kind else {
            return;
        };
        let Some(server) = ctx.spawned_by_server else { return };
        let exe = ctx.ev.process.exe.as_deref().unwrap_or(filename);
        let shell = SHELLS.contains(&basename(exe)) || SHELLS.contains(&basename(filename));
        let allowed = sink.cfg().rules.inference_exec.allow.iter().any(|a| a.matches(exe));
        if !shell && allowed {
            return;
        }
        let what = if shell { "a shell" } else { "an unexpected program" };
        let key = format!("{}:{exe}", ctx.ev.process.ppid);
        let summary = format!("inference server {} spawned {what}: {}", server.name, argv.join(" "));
        sink.emit(AlertSpec::about(ctx, ID, key, summary));
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::events::EventKind;

    #[test]
    fn a_shell_but_not_its_workers() {
        let mut r = Run::new(cfg(""), MONDAY_10);
        let s = vllm();
        r.exec(0, &s);
        // A worker: fork, then exec of the same interpreter.
        r.feed(1, &s, EventKind::ProcFork { child_pid: 501 }, None);
        let worker = proc_(501, "python3", "/usr/bin/python3", "python3 -c from multiprocessing.spawn import spawn_main", &[(500, "python3")]);
        r.exec(2, &worker);
        assert!(r.of(super::ID).is_empty(), "{:#?}", r.alerts);
        r.feed(3, &s, EventKind::ProcFork { child_pid: 502 }, None);
        let sh = proc_(502, "sh", "/bin/sh", "sh -c id", &[(500, "python3")]);
        r.exec(4, &sh);
        let e = r.of(super::ID);
        assert_eq!(e.len(), 1, "{:#?}", r.alerts);
        assert!(e[0].summary.contains("a shell"));
    }

    #[test]
    fn allowed_programs_but_never_a_shell_renamed_into_the_allowlist() {
        let mut r = Run::new(cfg("rules: {inference.exec: {allow: ['/usr/bin/nvidia-smi', '/usr/local/bin/*']}}"), MONDAY_10);
        let s = vllm();
        r.exec(0, &s);
        r.feed(1, &s, EventKind::ProcFork { child_pid: 501 }, None);
        r.exec(2, &proc_(501, "nvidia-smi", "/usr/bin/nvidia-smi", "nvidia-smi", &[(500, "python3")]));
        assert!(r.of(super::ID).is_empty(), "{:#?}", r.alerts);
        // A copy of bash under an allowed directory is still a shell by name.
        r.feed(3, &s, EventKind::ProcFork { child_pid: 502 }, None);
        r.exec(4, &proc_(502, "bash", "/usr/local/bin/bash", "bash -i", &[(500, "python3")]));
        assert_eq!(r.of(super::ID).len(), 1, "{:#?}", r.alerts);
    }
}
