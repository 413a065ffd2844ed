//! The correlation engine: enriched events in, alerts out.
//!
//! The same code runs live and over a recording (`llmwatch replay`): it keeps its own state
//! (which process is an inference server, what each process tree read and sent) and takes time
//! from the events, so results do not depend on when it runs.
mod activity;
mod process;

use foldhash::{HashMap, HashMapExt as _};
use std::{collections::VecDeque, sync::Arc};

use chrono::{DateTime, TimeDelta, Utc};

use crate::{
    alerts::{Alert, AlertFile, AlertNetwork, AlertProcess, Dedup, Window, new_id},
    config::{Config, ProcessFacts, Severity},
    enrich::{Enriched, ProcessView},
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
    /// Name of the inference-server identity it matches (or inherited as a worker).
    server: Option<std::sync::Arc<str>>,
    /// Reads before this instant are the server's start-up load.
    startup_until: DateTime<Utc>,
    exe: Option<String>,
    last_seen: DateTime<Utc>,
    exited: bool,
}

/// What one event needs of its process's state (the name is shared, not copied).
struct ProcStateView {
    server: Option<std::sync::Arc<str>>,
}

/// Output of the engine for one input.
pub type Alerts = Vec<Alert>;

/// The sink the engine's rules write to, from the engine's own fields (a macro, not a method:
/// `on_event` borrows other fields of `self` beside it).
macro_rules! alert_sink {
    ($engine:ident, $out:expr) => {
        AlertSink {
            engine_cfg: &$engine.cfg,
            dedup: &mut $engine.dedup,
            losses: &$engine.losses,
            out: $out,
        }
    };
}

pub struct Engine {
    cfg: Arc<Config>,
    procs: HashMap<u32, ProcState>,
    activity: activity::Activity,
    process_rules: process::ProcessRules,
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
            activity: Default::default(),
            process_rules: Default::default(),
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

    /// Whether this host holds weights (exfil tools only matter where there is something to take).
    pub fn set_weights_present(&mut self, present: bool) {
        self.weights_present = present;
    }

    pub fn on_event(&mut self, ev: &Enriched, out: &mut Alerts) {
        let t = ev.time;
        self.now = Some(self.now.map_or(t, |n| n.max(t)));
        let pid = ev.process.pid;
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
            EventKind::ProcExec { filename, argv, .. } => {
                let before = self.procs.get(&pid).cloned();
                self.on_exec(ev, before.as_ref(), filename, argv, out);
                return;
            }
            EventKind::ProcExit { .. } => {
                if let Some(p) = self.procs.get_mut(&pid) {
                    p.exited = true;
                    p.last_seen = t;
                }
                self.activity.on_exit(pid);
                self.process_rules.on_exit(pid);
                return;
            }
            _ => {}
        }
        let (server, startup_until) = {
            let st = self.proc_state(&ev.process, t);
            (st.server.clone(), st.startup_until)
        };
        let state = ProcStateView { server };
        let is_server = state.server.is_some();
        let startup_load = is_server && t < startup_until;
        let ctx = Ctx {
            ev,
            t,
            server: state.server.as_deref(),
            startup_load,
        };
        let mut sink = alert_sink!(self, out);
        match &ev.event.kind {
            EventKind::FileOpen { .. }
            | EventKind::FileRead { .. }
            | EventKind::FileMmap { .. }
            | EventKind::FileTouch { .. }
            | EventKind::FileTamper { .. }
            | EventKind::FileOpenDenied { .. }
            | EventKind::NetSend { .. }
            | EventKind::NetAccept { .. } => {
                let groups = correlation_groups(&ev.process);
                self.activity.on_event(&ctx, &groups, &mut sink);
            }
            EventKind::NetConnect { dest, port, .. } => {
                self.process_rules.on_connect(&ctx, *dest, *port, &mut sink);
            }
            EventKind::GpuOpen { .. } => self.process_rules.on_gpu_open(&ctx, &mut sink),
            EventKind::BpfLoad { .. } => self.process_rules.on_bpf_load(&ctx, &mut sink),
            EventKind::BpfAccess { .. } => self.process_rules.on_bpf_access(&ctx, &mut sink),
            EventKind::ProcAccess { target_pid, .. } => {
                let target = self.procs.get(target_pid).and_then(|p| p.server.clone());
                self.process_rules
                    .on_proc_access(&ctx, target.as_deref(), &mut sink);
            }
            _ => {}
        }
    }

    fn on_exec(
        &mut self,
        ev: &Enriched,
        before: Option<&ProcState>,
        filename: &str,
        argv: &[String],
        out: &mut Alerts,
    ) {
        let t = ev.time;
        let pid = ev.process.pid;
        let matched = self
            .cfg
            .server_for(&facts(&ev.process, Some(filename), argv))
            .cloned();
        // A server's worker re-executing the same interpreter stays part of the server.
        let inherited = before.filter(|b| b.server.is_some() && b.exe.as_deref() == Some(filename));
        let state = match (&matched, inherited) {
            (Some(id), _) => ProcState {
                server: Some(id.name.as_str().into()),
                startup_until: t + delta(id.startup_window),
                exe: Some(filename.to_string()),
                last_seen: t,
                exited: false,
            },
            (None, Some(b)) => ProcState {
                exe: Some(filename.to_string()),
                last_seen: t,
                ..b.clone()
            },
            (None, None) => ProcState {
                server: None,
                startup_until: t,
                exe: Some(filename.to_string()),
                last_seen: t,
                exited: false,
            },
        };
        let spawned_by_server = before
            .and_then(|b| b.server.clone())
            .filter(|_| inherited.is_none() && matched.is_none());
        self.procs.insert(pid, state.clone());
        let ctx = Ctx {
            ev,
            t,
            server: state.server.as_deref(),
            startup_load: false,
        };
        let mut sink = alert_sink!(self, out);
        self.process_rules.on_exec(
            &ctx,
            filename,
            argv,
            spawned_by_server.as_deref(),
            self.weights_present,
            &mut sink,
        );
    }

    /// The kernel reported lost events at `t` (its ring buffer was full).
    pub fn on_event_loss(&mut self, dropped: u64, t: DateTime<Utc>, out: &mut Alerts) {
        // The loss happened since the previous report (or within the last flush interval).
        let start = self
            .last_loss_report
            .unwrap_or(t - delta(self.cfg.flush_interval))
            .min(t);
        self.last_loss_report = Some(t);
        self.losses.push_back(Window { start, end: t });
        let summary = format!(
            "the kernel dropped {dropped} events (ring buffer full); alerts in this window may be incomplete"
        );
        let window = Window { start, end: t };
        self.about_the_agent(
            "agent.event_loss",
            summary,
            "agent.event_loss".into(),
            window,
            out,
        );
    }

    /// agent.gap: nothing watched this host between the previous run's last heartbeat and
    /// this start, and the previous run did not stop in order.
    pub fn on_agent_gap(&mut self, summary: String, window: Window, out: &mut Alerts) {
        let key = format!("gap:{}", window.start.timestamp());
        self.about_the_agent(crate::config::rules::AGENT_GAP, summary, key, window, out);
    }

    /// agent.tamper found by the agent's own checks (its maps changed underneath it).
    pub fn on_agent_tamper(&mut self, summary: String, key: String, t: DateTime<Utc>, out: &mut Alerts) {
        self.about_the_agent("agent.tamper", summary, key, Window::at(t), out);
    }

    /// An alert the agent raises about itself (no event, no files): named by `agent_process`.
    fn about_the_agent(
        &mut self,
        rule: &'static str,
        summary: String,
        key: String,
        window: Window,
        out: &mut Alerts,
    ) {
        let mut sink = alert_sink!(self, out);
        sink.emit(AlertSpec {
            rule,
            severity: None,
            summary,
            time: window.end,
            process: agent_process(),
            files: vec![],
            network: vec![],
            window,
            key,
        });
    }

    /// A Hugging Face snapshot link (or any watched alias) now resolves to a different file:
    /// the model a server loads by name was swapped underneath it.
    pub fn on_link_repointed(
        &mut self,
        link: &std::path::Path,
        now: &crate::enrich::FileView,
        t: DateTime<Utc>,
        out: &mut Alerts,
    ) {
        let summary = format!(
            "{} now points to a different file ({}); the model behind that name was swapped",
            link.display(),
            now.path.display()
        );
        let key = format!("link:{}:{}:{}", link.display(), now.dev, now.ino);
        self.file_tamper_by_agent(now, None, summary, key, t, out);
    }

    /// A file's SHA-256 differs from the manifest.
    pub fn on_manifest_mismatch(
        &mut self,
        file: &crate::enrich::FileView,
        expected: &str,
        actual: &str,
        t: DateTime<Utc>,
        out: &mut Alerts,
    ) {
        let summary = format!(
            "{} does not match the manifest: sha256 {actual}, expected {expected}",
            file.path.display()
        );
        let key = format!("manifest:{}:{actual}", file.path.display());
        self.file_tamper_by_agent(file, Some(Severity::Critical), summary, key, t, out);
    }

    /// weight.tamper found by the agent's own checks (no process to blame: the agent reports).
    fn file_tamper_by_agent(
        &mut self,
        file: &crate::enrich::FileView,
        severity: Option<Severity>,
        summary: String,
        key: String,
        t: DateTime<Utc>,
        out: &mut Alerts,
    ) {
        let mut sink = alert_sink!(self, out);
        sink.emit(AlertSpec {
            rule: "weight.tamper",
            severity,
            summary,
            time: t,
            process: agent_process(),
            files: vec![AlertFile::of(file, 0)],
            network: vec![],
            window: Window::at(t),
            key,
        });
    }

    /// Forgets state older than every rule's window.
    pub fn expire(&mut self) {
        let Some(now) = self.now else { return };
        let keep = TimeDelta::hours(2);
        self.procs
            .retain(|_, p| !(p.exited && now - p.last_seen > TimeDelta::minutes(1)));
        self.activity.expire(now, keep);
        self.process_rules.expire(now, keep);
        self.dedup.expire(now, keep);
        while self.losses.front().is_some_and(|w| now - w.end > keep) {
            self.losses.pop_front();
        }
    }

    fn proc_state(&mut self, p: &ProcessView, t: DateTime<Utc>) -> &ProcState {
        let cfg = &self.cfg;
        let st = self.procs.entry(p.pid).or_insert_with(|| {
            let id = cfg.server_for(&facts(p, p.exe.as_deref(), &p.argv));
            // Started before we saw it: give it a start-up window from now, so a server that
            // is loading while the agent starts is not flagged.
            ProcState {
                server: id.map(|i| i.name.as_str().into()),
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

fn facts<'a>(p: &'a ProcessView, exe: Option<&'a str>, argv: &'a [String]) -> ProcessFacts<'a> {
    ProcessFacts {
        exe,
        comm: &p.comm,
        argv,
        container_id: p.container_id.as_deref(),
        cgroup: p.cgroup.as_deref(),
        uid: p.uid,
        user: p.user.as_deref(),
    }
}

pub(crate) fn delta(d: std::time::Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// The process itself and up to `GROUP_DEPTH` ancestors below a session/service boundary: a
/// reader and a sender that share one of these are one "process tree" (e.g. `cat m | nc`).
fn correlation_groups(p: &ProcessView) -> Vec<u32> {
    groups_of(p.pid, &p.ancestry)
}

fn groups_of(pid: u32, ancestry: &[crate::state::process::Ancestor]) -> Vec<u32> {
    let mut out = vec![pid];
    for a in ancestry.iter().take(GROUP_DEPTH) {
        if a.pid <= 1 || BOUNDARY_COMMS.contains(&a.comm.as_str()) || a.comm.starts_with("containerd-shim") {
            break;
        }
        out.push(a.pid);
    }
    out
}

/// See `Alert::scope`.
fn incident_scope(spec: &AlertSpec) -> String {
    use crate::config::rules::{API_CLIENT_FLOOD, GPU_SPAWN_STORM};
    if spec.process.pid == std::process::id() {
        return format!("agent:{}:{}", spec.rule, spec.key);
    }
    if spec.rule == GPU_SPAWN_STORM || spec.rule == API_CLIENT_FLOOD {
        return format!("{}:{}", spec.rule, spec.key);
    }
    let root = groups_of(spec.process.pid, &spec.process.ancestry)
        .last()
        .copied()
        .unwrap_or(spec.process.pid);
    format!("tree:{root}")
}

fn agent_process() -> AlertProcess {
    AlertProcess {
        pid: std::process::id(),
        comm: "llmwatch".into(),
        exe: std::env::current_exe()
            .ok()
            .map(|p| p.to_string_lossy().into_owned()),
        uid: unsafe { libc::geteuid() },
        user: None,
        container_id: None,
        pod: None,
        ancestry: vec![],
    }
}

/// One event being judged.
pub(crate) struct Ctx<'a> {
    pub ev: &'a Enriched,
    pub t: DateTime<Utc>,
    /// Server identity name of the acting process, if it is an inference server.
    pub server: Option<&'a str>,
    /// The event is part of that server's start-up load.
    pub startup_load: bool,
}

/// What a rule wants to say; the sink applies enablement, severity override, dedup and the
/// incomplete mark.
pub(crate) struct AlertSpec {
    pub rule: &'static str,
    /// None: the rule's configured severity.
    pub severity: Option<Severity>,
    pub summary: String,
    pub time: DateTime<Utc>,
    pub process: AlertProcess,
    pub files: Vec<AlertFile>,
    pub network: Vec<AlertNetwork>,
    pub window: Window,
    pub key: String,
}

pub(crate) struct AlertSink<'a> {
    engine_cfg: &'a Config,
    dedup: &'a mut Dedup,
    losses: &'a VecDeque<Window>,
    out: &'a mut Alerts,
}

impl AlertSink<'_> {
    pub fn cfg(&self) -> &Config {
        self.engine_cfg
    }

    /// Cheap check before a rule builds an alert: false (and the repeat counted) when the rule
    /// is off or `rule:key` is inside its suppression window.
    pub fn gate(&mut self, rule: &'static str, key: &str, t: DateTime<Utc>) -> bool {
        let Some(common) = self.engine_cfg.rules.common(rule) else {
            return false;
        };
        common.enabled && self.dedup.gate(rule, key, t, common.suppress)
    }

    pub fn emit(&mut self, spec: AlertSpec) {
        let Some(common) = self.engine_cfg.rules.common(spec.rule) else {
            debug_assert!(false, "unknown rule {}", spec.rule);
            return;
        };
        if !common.enabled {
            return;
        }
        let Some(suppressed) = self.dedup.admit(spec.rule, &spec.key, spec.time, common.suppress) else {
            return;
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
            host: self.engine_cfg.host.clone(),
            process: spec.process,
            files: spec.files,
            network: spec.network,
            window: spec.window,
            incomplete,
            dedup_key: format!("{}:{}", spec.rule, spec.key),
            suppressed,
            scope,
        });
    }
}

#[cfg(test)]
mod tests;
