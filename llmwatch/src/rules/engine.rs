//! The engine: which process is which server, the flows, and every rule's state; events in,
//! alerts out.
use foldhash::{HashMap, HashMapExt as _};
use std::{collections::VecDeque, sync::Arc};

use chrono::{DateTime, TimeDelta, Utc};

use super::{
    Ctx, ServerRole, States,
    flows::{FlowKey, Flows, Scope},
    sink::AlertSink,
};
use crate::{
    alerts::{Alert, Dedup, Window},
    config::{Config, ProcessFacts},
    enrich::{Enriched, FileView, ProcessView},
    events::EventKind,
};

/// Programs that start sessions or run services: a process tree is not correlated above them
/// (everything on the host descends from init; a login shell is a meaningful unit, sshd is not).
const BOUNDARY_COMMS: &[&str] = &[
    "systemd",
    "init",
    "sshd",
    "containerd",
    "containerd-shim",
    "containerd-shim-runc-v2",
    "runc",
    "conmon",
    "crun",
    "tini",
    "dumb-init",
    "kubelet",
    "dockerd",
    "cron",
    "crond",
    "atd",
    "supervisord",
    "tmux: server",
    "screen",
    "login",
    "agetty",
    "sudo",
    "su",
    "s6-supervise",
    "runsv",
];
/// How many ancestors above a process take part in its correlation groups.
const GROUP_DEPTH: usize = 2;

/// What the engine remembers about one process.
#[derive(Debug, Clone)]
struct ProcState {
    /// The inference-server identity it matches (or inherited as a worker).
    server: Option<Arc<ServerRole>>,
    /// Reads before this instant are the server's start-up load.
    startup_until: DateTime<Utc>,
    exe: Option<String>,
    last_seen: DateTime<Utc>,
    exited: bool,
}

/// Output of the engine for one input.
pub type Alerts = Vec<Alert>;

/// The sink the engine's rules write to, from the engine's own fields (a macro, not a method:
/// `on_event` borrows other fields of `self` beside it).
macro_rules! alert_sink {
    ($engine:ident, $out:expr) => {
        AlertSink {
            cfg: &$engine.cfg,
            dedup: &mut $engine.dedup,
            losses: &$engine.losses,
            out: $out,
        }
    };
}

pub struct Engine {
    cfg: Arc<Config>,
    procs: HashMap<u32, ProcState>,
    flows: Flows,
    rules: States,
    dedup: Dedup,
    /// Intervals in which the kernel lost events.
    losses: VecDeque<Window>,
    last_loss_report: Option<DateTime<Utc>>,
    weights_present: bool,
    /// Latest event time seen; drives expiry in replay as well as live.
    now: Option<DateTime<Utc>>,
}

impl Engine {
    pub fn new(cfg: Arc<Config>) -> Self {
        Engine {
            cfg,
            procs: HashMap::new(),
            flows: Flows::default(),
            rules: States::default(),
            dedup: Dedup::default(),
            losses: VecDeque::new(),
            last_loss_report: None,
            weights_present: true,
            now: None,
        }
    }

    /// A new configuration (reload). Per-process server identities are re-derived lazily.
    pub fn set_config(&mut self, cfg: Arc<Config>) {
        self.cfg = cfg;
        self.procs.clear();
    }

    /// Whether `pid` is (part of) an inference server as far as the rules know.
    pub fn is_server(&self, pid: u32) -> bool {
        self.procs.get(&pid).is_some_and(|p| p.server.is_some())
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Whether this host holds protected files (transfer tools only matter where there is
    /// something to take).
    pub fn set_weights_present(&mut self, present: bool) {
        self.weights_present = present;
    }

    pub fn on_event(&mut self, ev: &Enriched, out: &mut Alerts) {
        let t = ev.time;
        self.now = Some(self.now.map_or(t, |n| n.max(t)));
        let pid = ev.process.pid;
        let mut spawned_by_server = None;
        match &ev.event.kind {
            EventKind::ProcFork { child_pid } => {
                let parent = self.proc_state(&ev.process, t).clone();
                self.procs.insert(
                    *child_pid,
                    ProcState {
                        last_seen: t,
                        exited: false,
                        ..parent
                    },
                );
                return;
            }
            EventKind::ProcExit { .. } => {
                if let Some(p) = self.procs.get_mut(&pid) {
                    p.exited = true;
                    p.last_seen = t;
                }
                self.flows.on_exit(pid);
                self.rules.on_exit(pid);
                return;
            }
            EventKind::ProcExec { .. } => spawned_by_server = self.on_exec(ev),
            _ => {}
        }
        let (server, startup_until) = {
            let st = self.proc_state(&ev.process, t);
            (st.server.clone(), st.startup_until)
        };
        let target_server = match &ev.event.kind {
            EventKind::ProcAccess { target_pid, .. } => {
                self.procs.get(target_pid).and_then(|p| p.server.clone())
            }
            _ => None,
        };
        let trusted_reader = ev.weight.as_ref().is_some_and(|w| self.trusted_reader(ev, w));
        let groups = match &ev.event.kind {
            EventKind::FileRead { .. } | EventKind::FileTouch { .. } | EventKind::NetSend { .. } => {
                flow_keys(&ev.process)
            }
            _ => Vec::new(),
        };
        let ctx = Ctx {
            ev,
            t,
            server: server.as_deref(),
            startup_load: server.is_some() && t < startup_until,
            trusted_reader,
            spawned_by_server: spawned_by_server.as_deref(),
            target_server: target_server.as_deref(),
            weights_present: self.weights_present,
            groups: &groups,
        };
        self.flows.record(&ctx, &self.cfg);
        let mut sink = alert_sink!(self, out);
        self.rules.on_event(&ctx, &self.flows, &mut sink);
    }

    /// A `readers:` entry trusts this process with this file at this time.
    fn trusted_reader(&self, ev: &Enriched, w: &FileView) -> bool {
        if self.cfg.readers.is_empty() {
            return false;
        }
        let p = &ev.process;
        let facts = facts(p, p.exe.as_deref(), &p.argv);
        let path = w.path.to_string_lossy();
        self.cfg.readers.iter().any(|r| r.trusts(&facts, &path, ev.time))
    }

    /// Records what the exec made of the process; returns the server role it had before, when
    /// it was a server that now runs something else (not its own worker re-executing).
    fn on_exec(&mut self, ev: &Enriched) -> Option<Arc<ServerRole>> {
        let t = ev.time;
        let pid = ev.process.pid;
        let before = self.procs.get(&pid).cloned();
        // The resolved executable (the process table reads /proc/<pid>/exe at exec), not the
        // path the caller passed: a symlink named like a server is not one.
        let exe = ev.process.exe.clone();
        let matched = self
            .cfg
            .server_for(&facts(&ev.process, exe.as_deref(), &ev.process.argv))
            .map(|id| (role(id), id.startup_window));
        // A server's worker re-executing the same interpreter stays part of the server.
        let inherited = before
            .as_ref()
            .filter(|b| b.server.is_some() && b.exe.is_some() && b.exe == exe)
            .cloned();
        let state = match (&matched, &inherited) {
            (Some((role, window)), _) => ProcState {
                server: Some(role.clone()),
                startup_until: t + delta(*window),
                exe: exe.clone(),
                last_seen: t,
                exited: false,
            },
            (None, Some(b)) => ProcState {
                exe: exe.clone(),
                last_seen: t,
                ..b.clone()
            },
            (None, None) => ProcState {
                server: None,
                startup_until: t,
                exe: exe.clone(),
                last_seen: t,
                exited: false,
            },
        };
        let spawned_by_server = before
            .and_then(|b| b.server)
            .filter(|_| inherited.is_none() && matched.is_none());
        self.procs.insert(pid, state);
        spawned_by_server
    }

    /// The kernel reported lost events at `t` (its ring buffer was full).
    pub fn on_event_loss(&mut self, dropped: u64, t: DateTime<Utc>, out: &mut Alerts) {
        // The loss happened since the previous report (or within the last flush interval).
        let start = self
            .last_loss_report
            .unwrap_or(t - delta(self.cfg.flush_interval))
            .min(t);
        self.last_loss_report = Some(t);
        let window = Window { start, end: t };
        self.losses.push_back(window);
        super::event_loss::alert(&mut alert_sink!(self, out), dropped, window);
    }

    /// Nothing watched this host between the previous run's last heartbeat and this start,
    /// and the previous run did not stop in order.
    pub fn on_agent_gap(&mut self, summary: String, window: Window, out: &mut Alerts) {
        super::agent_gap::alert(&mut alert_sink!(self, out), summary, window);
    }

    /// The agent's own checks found its maps changed underneath it.
    pub fn on_agent_tamper(&mut self, summary: String, key: String, t: DateTime<Utc>, out: &mut Alerts) {
        super::agent_tamper::alert_by_agent(&mut alert_sink!(self, out), summary, key, t);
    }

    /// A Hugging Face snapshot link (or any watched alias) now resolves to a different file:
    /// the model a server loads by name was swapped underneath it.
    pub fn on_link_repointed(
        &mut self,
        link: &std::path::Path,
        now: &FileView,
        t: DateTime<Utc>,
        out: &mut Alerts,
    ) {
        super::tamper::link_repointed(&mut alert_sink!(self, out), link, now, t);
    }

    /// A file's SHA-256 differs from the manifest.
    pub fn on_manifest_mismatch(
        &mut self,
        file: &FileView,
        expected: &str,
        actual: &str,
        t: DateTime<Utc>,
        out: &mut Alerts,
    ) {
        super::tamper::manifest_mismatch(&mut alert_sink!(self, out), file, expected, actual, t);
    }

    /// Forgets state older than every rule's window.
    pub fn expire(&mut self) {
        let Some(now) = self.now else { return };
        let keep = TimeDelta::hours(2).max(delta(self.longest_window()));
        self.procs
            .retain(|_, p| !(p.exited && now - p.last_seen > TimeDelta::minutes(1)));
        self.flows.expire(now, keep);
        self.rules.expire(now, keep);
        self.dedup.expire(now, keep);
        while self.losses.front().is_some_and(|w| now - w.end > keep) {
            self.losses.pop_front();
        }
    }

    /// The longest window a rule looks back over (flows must live at least that long).
    fn longest_window(&self) -> std::time::Duration {
        let r = &self.cfg.rules;
        r.exfiltration.window.max(r.bulk_read.window)
    }

    fn proc_state(&mut self, p: &ProcessView, t: DateTime<Utc>) -> &ProcState {
        let cfg = &self.cfg;
        let st = self.procs.entry(p.pid).or_insert_with(|| {
            let id = cfg.server_for(&facts(p, p.exe.as_deref(), &p.argv));
            // Started before we saw it: give it a start-up window from now, so a server that
            // is loading while the agent starts is not flagged.
            ProcState {
                server: id.map(role),
                startup_until: t + id.map(|i| delta(i.startup_window)).unwrap_or_default(),
                exe: p.exe.clone(),
                last_seen: t,
                exited: false,
            }
        });
        st.last_seen = t;
        st
    }
}

fn role(id: &crate::config::ServerIdentity) -> Arc<ServerRole> {
    Arc::new(ServerRole {
        name: id.name.as_str().into(),
        strong: id.strong(),
    })
}

pub(crate) fn facts<'a>(p: &'a ProcessView, exe: Option<&'a str>, argv: &'a [String]) -> ProcessFacts<'a> {
    ProcessFacts {
        exe,
        comm: &p.comm,
        argv,
        container_id: p.container_id.as_deref(),
        cgroup: p.cgroup.as_deref(),
        uid: p.uid,
        user: p.user.as_deref(),
        namespace: p.kubernetes.as_deref().map(|k| k.namespace.as_str()),
        pod_labels: p.kubernetes.as_deref().map_or(&NO_LABELS, |k| &k.labels),
    }
}

static NO_LABELS: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();

pub(crate) fn delta(d: std::time::Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// The flows an event of `p` counts toward: its process tree (itself and up to `GROUP_DEPTH`
/// ancestors below a session or service boundary, nearest first), then its scope.
fn flow_keys(p: &ProcessView) -> Vec<FlowKey> {
    let mut keys: Vec<FlowKey> = groups_of(p.pid, &p.ancestry)
        .into_iter()
        .map(FlowKey::Tree)
        .collect();
    keys.push(FlowKey::Scope(Scope::of(p)));
    keys
}

/// The process itself and up to `GROUP_DEPTH` ancestors below a session/service boundary: a
/// reader and a sender that share one of these are one "process tree" (e.g. `cat m | nc`).
pub(super) fn groups_of(pid: u32, ancestry: &[crate::state::process::Ancestor]) -> Vec<u32> {
    let mut out = vec![pid];
    for a in ancestry.iter().take(GROUP_DEPTH) {
        if a.pid <= 1 || BOUNDARY_COMMS.contains(&a.comm.as_str()) || a.comm.starts_with("containerd-shim") {
            break;
        }
        out.push(a.pid);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{bulk_read, exfiltration, testing::*, unexpected_reader};
    use crate::config::Severity;

    #[test]
    fn a_server_loading_its_model_raises_nothing_even_off_hours() {
        let mut r = Run::new(cfg(""), SUNDAY_03);
        let w = weight(1, 64 * MIB);
        let s = vllm();
        r.exec(0, &s);
        for i in 0..64 {
            r.read(1 + i / 8, &s, &w, MIB);
        }
        assert!(r.alerts.is_empty(), "{:#?}", r.alerts);
    }

    #[test]
    fn a_server_seen_first_mid_flight_gets_a_start_up_window_from_then() {
        let mut r = Run::new(cfg(""), MONDAY_10);
        let w = weight(1, 64 * MIB);
        // No exec seen: the agent started while vLLM was loading.
        r.read(0, &vllm(), &w, 64 * MIB);
        assert!(r.alerts.is_empty(), "{:#?}", r.alerts);
    }

    #[test]
    fn one_pipeline_hits_each_rule_once_with_its_totals() {
        let mut r = Run::new(cfg(""), MONDAY_10);
        let w = weight(7, 128 * MIB);
        let cat = proc_(201, "cat", "/usr/bin/cat", "cat", &[(200, "bash"), (150, "sshd")]);
        let nc = proc_(202, "nc", "/usr/bin/nc", "nc", &[(200, "bash"), (150, "sshd")]);
        for i in 0..128 {
            r.read(1 + i / 16, &cat, &w, MIB);
            r.send(1 + i / 16, &nc, "203.0.113.9", 4444, MIB);
        }
        let count = |id: crate::rules::RuleId| r.of(id).len();
        assert_eq!(
            (
                count(unexpected_reader::ID),
                count(bulk_read::ID),
                count(exfiltration::ID),
                r.alerts.len()
            ),
            (2, 1, 1, 4),
            "medium then high, bulk, exfiltration: {:#?}",
            r.alerts
        );
        // Every hit is about one process tree: the incident stage folds them into one.
        let scopes: std::collections::BTreeSet<&str> = r.alerts.iter().map(|a| a.scope.as_str()).collect();
        assert_eq!(scopes.len(), 1, "{scopes:?}");
    }

    #[test]
    fn disabled_rules_are_silent_and_severity_overrides_apply() {
        let mut r = Run::new(
            cfg(
                "rules: {weight.unexpected_reader: {enabled: false}, weight.bulk_read: {severity: critical}}",
            ),
            MONDAY_10,
        );
        let w = weight(1, MIB);
        r.read(
            0,
            &proc_(101, "cp", "/usr/bin/cp", "cp", &[(100, "bash")]),
            &w,
            MIB,
        );
        assert!(r.of(unexpected_reader::ID).is_empty());
        assert_eq!(r.of(bulk_read::ID)[0].severity, Severity::Critical);
    }
}
