//! Where rules write: enablement, severity overrides, deduplication and the incomplete mark
//! are applied here, once, for every rule.
use std::collections::VecDeque;

use chrono::{DateTime, Utc};

use super::{Ctx, RuleId, engine::groups_of};
use crate::{
    alerts::{Alert, AlertFile, AlertNetwork, AlertProcess, Dedup, Window, new_id},
    config::{Config, Severity},
};

/// What a rule wants to say.
pub(crate) struct AlertSpec {
    pub rule: RuleId,
    /// None: the rule's configured severity.
    pub severity: Option<Severity>,
    pub summary: String,
    pub time: DateTime<Utc>,
    pub process: AlertProcess,
    pub files: Vec<AlertFile>,
    pub network: Vec<AlertNetwork>,
    pub window: Window,
    /// Repeats with the same rule and key inside the rule's `suppress` window are counted,
    /// not sent.
    pub key: String,
}

impl AlertSpec {
    /// A one-event alert about the event's own process.
    pub fn about(ctx: &Ctx<'_>, rule: RuleId, key: String, summary: String) -> AlertSpec {
        AlertSpec {
            rule,
            severity: None,
            summary,
            time: ctx.t,
            process: AlertProcess::of(ctx.ev),
            files: vec![],
            network: vec![],
            window: Window::at(ctx.t),
            key,
        }
    }
}

pub(crate) struct AlertSink<'a> {
    pub(super) cfg: &'a Config,
    pub(super) dedup: &'a mut Dedup,
    pub(super) losses: &'a VecDeque<Window>,
    pub(super) out: &'a mut Vec<Alert>,
}

impl AlertSink<'_> {
    pub fn cfg(&self) -> &Config {
        self.cfg
    }

    /// Cheap check before a rule builds an alert: false (and the repeat counted) when the rule
    /// is off or `rule:key` is inside its suppression window.
    pub fn gate(&mut self, rule: RuleId, key: &str, t: DateTime<Utc>) -> bool {
        let common = self.cfg.rules.common(rule);
        common.enabled && self.dedup.gate(rule.as_str(), key, t, common.suppress)
    }

    /// Sends the alert unless the rule is off or it repeats; true when it was sent.
    pub fn emit(&mut self, spec: AlertSpec) -> bool {
        let common = self.cfg.rules.common(spec.rule);
        if !common.enabled {
            return false;
        }
        let Some(suppressed) = self
            .dedup
            .admit(spec.rule.as_str(), &spec.key, spec.time, common.suppress)
        else {
            return false;
        };
        let incomplete = self
            .losses
            .iter()
            .any(|l| l.start <= spec.window.end && spec.window.start <= l.end);
        let scope = incident_scope(&spec);
        self.out.push(Alert {
            id: new_id(),
            time: spec.time,
            rule: spec.rule.to_string(),
            severity: spec.severity.unwrap_or(common.severity),
            summary: spec.summary,
            host: self.cfg.host.clone(),
            process: spec.process,
            files: spec.files,
            network: spec.network,
            window: spec.window,
            incomplete,
            dedup_key: format!("{}:{}", spec.rule, spec.key),
            suppressed,
            scope,
        });
        true
    }
}

/// See `Alert::scope`: what the hit is about, for folding hits into incidents.
fn incident_scope(spec: &AlertSpec) -> String {
    if spec.process.pid == std::process::id() {
        return format!("agent:{}:{}", spec.rule, spec.key);
    }
    if spec.rule == super::gpu_spawn_storm::ID || spec.rule == super::api_client_flood::ID {
        return format!("{}:{}", spec.rule, spec.key);
    }
    let root = groups_of(spec.process.pid, &spec.process.ancestry)
        .last()
        .copied()
        .unwrap_or(spec.process.pid);
    format!("tree:{root}")
}

/// The agent as the process of an alert it raises about itself or a file it checked.
pub(crate) fn agent_process() -> AlertProcess {
    AlertProcess {
        pid: std::process::id(),
        comm: "llmwatch".into(),
        exe: std::env::current_exe()
            .ok()
            .map(|p| p.to_string_lossy().into_owned()),
        // SAFETY: geteuid has no preconditions and cannot fail.
        uid: unsafe { libc::geteuid() },
        user: None,
        container_id: None,
        pod: None,
        kubernetes: None,
        ancestry: vec![],
    }
}
