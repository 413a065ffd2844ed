//! `run --output text`: what the agent writes, as lines a person reads at a terminal.
//!
//! One line per incident message (and per event with `--events`): time, severity, status,
//! rule, summary, process, pod. The start-up report (`agent_ready`, a couple of KiB of JSON)
//! becomes a short summary: what is watched, which hooks and data paths this kernel got, what
//! is degraded and what that loses. Other status lines are one line each. Everything a line
//! leaves out is in the JSON output (`--output json`), which receivers and tests read.
use std::io::Write;

use crate::{
    agent::{Output, Sink, Status},
    alerts::{
        AlertProcess, human_bytes,
        incidents::{IncidentMessage, IncidentStatus},
    },
    config::Severity,
    enrich::Enriched,
    state::pods::PodIdentity,
};

/// Colour (ANSI escapes) or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    Never,
    Always,
}

impl Colour {
    /// Colour for a terminal, unless `NO_COLOR` is set (https://no-color.org) or the terminal
    /// says it cannot (`TERM=dumb`).
    pub fn for_terminal(is_terminal: bool) -> Colour {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
        if is_terminal && !no_color && !dumb {
            Colour::Always
        } else {
            Colour::Never
        }
    }

    fn paint(self, code: &str, text: &str) -> String {
        match self {
            Colour::Never => text.to_string(),
            Colour::Always => format!("\x1b[{code}m{text}\x1b[0m"),
        }
    }

    fn severity(self, s: Severity) -> String {
        let code = match s {
            Severity::Critical => "1;31",
            Severity::High => "31",
            Severity::Medium => "33",
            Severity::Low => "36",
            Severity::Info => "2",
        };
        self.paint(code, &format!("{:<8}", s.as_str().to_ascii_uppercase()))
    }
}

/// The text sink of `run`: incidents' messages (and events, with `--events`) on `out`, one
/// line each; status lines as short human text on `out` too.
pub struct TextLines<W: Write> {
    out: W,
    colour: Colour,
    events: bool,
    /// Where alerts are delivered besides this output (webhook targets), for the summary.
    delivery: Vec<String>,
}

impl<W: Write> TextLines<W> {
    /// `events`: also print every enriched event (`run --events`).
    pub fn new(out: W, colour: Colour, events: bool) -> Self {
        TextLines {
            out,
            colour,
            events,
            delivery: Vec::new(),
        }
    }

    /// Named in the start-up summary: where else alerts go.
    pub fn with_delivery(mut self, targets: Vec<String>) -> Self {
        self.delivery = targets;
        self
    }

    fn line(&mut self, text: &str) {
        let _ = writeln!(self.out, "{text}");
    }
}

impl<W: Write> Sink for TextLines<W> {
    fn emit(&mut self, out: Output<'_>) {
        match out {
            Output::Event(e) if self.events => {
                let l = event_line(e);
                self.line(&l);
            }
            Output::Event(_) | Output::RuleHit(_) => {}
            Output::Incident(m) => {
                let l = incident_line(m, self.colour);
                self.line(&l);
            }
            Output::Status(s) => {
                let text = status_text(&s, &self.delivery, self.colour);
                self.line(&text);
            }
        }
    }

    fn flush(&mut self) {
        let _ = self.out.flush();
    }

    fn reports_degraded(&self) -> bool {
        true
    }
}

fn time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// ` pod=<namespace>/<name> container=<name>` where the container runtime named the pod, else
/// ` pod=<uid>` from the cgroup path; empty outside pods.
fn pod_words(kubernetes: Option<&PodIdentity>, pod_uid: Option<&str>) -> String {
    match (kubernetes, pod_uid) {
        (Some(k), _) => format!(" pod={}/{} container={}", k.namespace, k.pod, k.container),
        (None, Some(uid)) => format!(" pod={uid}"),
        (None, None) => String::new(),
    }
}

/// `process=curl[4242] user=alice pod=<pod>`: who, in the words of the alert contract.
fn who(p: &AlertProcess) -> String {
    let user = p.user.clone().unwrap_or_else(|| p.uid.to_string());
    format!(
        "process={}[{}] user={user}{}",
        p.comm,
        p.pid,
        pod_words(p.kubernetes.as_ref(), p.pod.as_deref())
    )
}

/// One incident message: `TIME SEVERITY STATUS RULE  SUMMARY  process=… user=… pod=…`, then
/// what changed (escalated) or why it ended (resolved).
pub fn incident_line(m: &IncidentMessage, colour: Colour) -> String {
    let a = &m.alert;
    let status = match m.status {
        IncidentStatus::Opened => "opened",
        IncidentStatus::Escalated => "escalated",
        IncidentStatus::Resolved => "resolved",
    };
    let mut line = format!(
        "{} {} {:<9} {}  {}  {}",
        time(a.time),
        colour.severity(a.severity),
        status,
        colour.paint("1", &a.rule),
        a.summary,
        who(&a.process)
    );
    // The incident's pod when the process's own is not known (it is the opener's).
    if a.process.pod.is_none()
        && a.process.kubernetes.is_none()
        && let Some(pod) = &m.pod
    {
        match &m.namespace {
            Some(ns) => line.push_str(&format!(" pod={ns}/{pod}")),
            None => line.push_str(&format!(" pod={pod}")),
        }
    }
    let mut extra = Vec::new();
    if m.rules.len() > 1 {
        extra.push(format!("rules {}", m.rules.join(", ")));
    }
    if let Some(prev) = m.previous_severity {
        extra.push(format!("was {}", prev.as_str()));
    }
    if !m.changes.is_empty() {
        let changes: Vec<String> = m
            .changes
            .iter()
            .map(|c| {
                serde_json::to_value(c)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default()
            })
            .collect();
        extra.push(format!("new {}", changes.join(", ")));
    }
    if let Some(r) = m.resolved_by {
        let why = serde_json::to_value(r)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        extra.push(format!("by {why}"));
    }
    if a.incomplete {
        extra.push("incomplete: the kernel lost events".into());
    }
    extra.push(format!("incident {}", short_id(&m.incident_id)));
    line.push_str(&format!("  ({})", extra.join("; ")));
    line
}

/// The first 8 hex digits: enough to tell incidents apart on a screen; the JSON has all 32.
fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// One event: `TIME event KIND process=… user=… pod=…  field=value …`, the file named by path.
pub fn event_line(e: &Enriched) -> String {
    let p = &e.process;
    let user = p.user.clone().unwrap_or_else(|| p.uid.to_string());
    let mut line = format!(
        "{} {:<8} {:<9} {}  process={}[{}] user={user}",
        time(e.time),
        "event",
        "",
        e.event.kind.name(),
        p.comm,
        p.pid
    );
    line.push_str(&pod_words(p.kubernetes.as_deref(), p.pod_uid.as_deref()));
    if let Some(w) = &e.weight {
        line.push_str(&format!("  file={}", crate::json_path::path_to_json(&w.path)));
    }
    // The kind's own fields, whatever they are: scalars as `name=value`.
    if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(&e.event.kind) {
        for (k, v) in fields {
            let v = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => continue,
            };
            if k != "kind" {
                line.push_str(&format!(" {k}={v}"));
            }
        }
    }
    line
}

/// A status line as text: the start-up report as a few lines, the others as one.
pub fn status_text(s: &Status<'_>, delivery: &[String], colour: Colour) -> String {
    let now = time(chrono::Utc::now());
    match s {
        Status::AgentReady {
            hooks,
            watched_files,
            watched_bytes,
            roots,
            scan,
            processes,
            metrics_addr,
            syscall_hook_fallback,
            watch_mode,
            watch_error,
            degraded,
            data_paths,
            seeded,
            hook,
            ..
        } => {
            let shown = |p: &std::path::PathBuf| crate::json_path::path_to_json(p).into_owned();
            let present: Vec<String> = roots
                .iter()
                .filter(|r| !scan.roots_missing.contains(r))
                .map(shown)
                .collect();
            let missing: Vec<String> = scan.roots_missing.iter().map(shown).collect();
            let watching = if present.is_empty() && roots.len() == 1 {
                "watching nothing yet: the model directory does not exist (watched for creation)".to_string()
            } else if present.is_empty() {
                format!(
                    "watching nothing yet: none of the {} model directories exists (each is watched for \
                     creation)",
                    roots.len()
                )
            } else {
                format!(
                    "watching {} ({}) under {}",
                    count(*watched_files, "file"),
                    human_bytes(*watched_bytes),
                    present.join(", ")
                )
            };
            let mut out = vec![format!(
                "{now} {} {watching}; {} known",
                colour.paint("1;32", "llmwatch ready:"),
                count(*processes, "process")
            )];
            if !missing.is_empty() {
                out.push(format!(
                    "  {:<18} {} (watched for creation)",
                    "missing:",
                    missing.join(", ")
                ));
            }
            if seeded.processes > 0 {
                out.push(format!(
                    "  already open at start: {} hold or map watched files (followed from now on)",
                    count(seeded.processes, "process")
                ));
            }
            let attached = hooks.iter().filter(|h| h.attached).count();
            let syscalls = match hook.hook_path {
                crate::probes::fast::HookPath::Fentry => crate::probes::fast::HOOK_NAME,
                crate::probes::fast::HookPath::Tracepoint => hooks
                    .iter()
                    .find(|h| h.attached && h.hook.ends_with("/sys_exit"))
                    .map_or("none attached", |h| h.hook),
            };
            let mut hook_line = format!(
                "  {:<18} {attached} of {} attached; {} path: syscalls through {syscalls}",
                "hooks:",
                hooks.len(),
                hook.hook_path.as_str()
            );
            if let Some(why) = &hook.hook_path_fallback {
                hook_line.push_str(&format!(" (fexit refused: {why})"));
            }
            if let Some(why) = syscall_hook_fallback {
                hook_line.push_str(&format!(" (tp_btf refused: {why})"));
            }
            out.push(hook_line);
            for (what, path) in data_paths.pairs() {
                out.push(format!("  {:<18} {path}", format!("{what}:")));
            }
            out.push(match watch_error {
                None => format!("  {:<18} {watch_mode}", "directory changes:"),
                Some(e) => format!("  {:<18} {watch_mode} ({e})", "directory changes:"),
            });
            if let Some(a) = metrics_addr {
                out.push(format!("  {:<18} http://{a}/metrics", "metrics:"));
            }
            out.push(if delivery.is_empty() {
                format!("  {:<18} this output only (no webhooks configured)", "alerts:")
            } else {
                format!("  {:<18} this output and {}", "alerts:", delivery.join(", "))
            });
            if degraded.is_empty() {
                out.push(format!(
                    "  {:<18} nothing: every hook this agent uses is attached",
                    "degraded:"
                ));
            } else {
                out.push(format!(
                    "  {} (what this host lacks, and what is lost):",
                    colour.paint("33", "degraded")
                ));
                out.extend(degraded.iter().map(|d| format!("    - {d}")));
            }
            out.join("\n")
        }
        Status::WatchUpdate {
            added,
            removed,
            watched_files,
            ..
        } => format!(
            "{now} watched files changed: {} added, {} removed, {watched_files} watched{}",
            added.len(),
            removed.len(),
            first_paths(added, removed)
        ),
        Status::AgentEventLoss {
            time: t,
            dropped,
            total_dropped,
            ..
        } => format!(
            "{} {} the kernel dropped {dropped} events ({total_dropped} since start): alerts overlapping this may be incomplete",
            time(*t),
            colour.paint("33", "event loss:")
        ),
        Status::ConfigReload {
            ok: true,
            path,
            restart_needed,
            ..
        } => {
            let mut l = format!("{now} configuration reloaded from {}", path.display());
            if !restart_needed.is_empty() {
                l.push_str(&format!(
                    "; takes effect after a restart: {}",
                    restart_needed.join(", ")
                ));
            }
            l
        }
        Status::ConfigReload { path, error, .. } => format!(
            "{now} {} {}: {}; the previous configuration stays",
            colour.paint("31", "configuration reload refused:"),
            path.display(),
            error.as_deref().unwrap_or("?")
        ),
        Status::AgentStopped { events, kernel_drops } => {
            format!("{now} llmwatch stopped: {events} events handled, {kernel_drops} lost in the kernel")
        }
        Status::AgentGap { gap } => format!(
            "{now} not watched for {} (from {} to {}); the previous run (pid {}) {}",
            crate::state::heartbeat::human_seconds(gap.seconds),
            time(gap.from),
            time(gap.to),
            gap.previous_pid,
            if gap.clean {
                "stopped in order"
            } else {
                "did not stop in order (agent.gap)"
            }
        ),
        Status::AgentDecodeError { error } => format!("{now} a kernel record could not be decoded: {error}"),
    }
}

/// `1 file`, `3 files`, `2 processes`.
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else if noun.ends_with('s') {
        format!("{n} {noun}es")
    } else {
        format!("{n} {noun}s")
    }
}

/// ": /a/b.safetensors, …" naming up to three changed files.
fn first_paths(added: &[&std::path::Path], removed: &[&std::path::Path]) -> String {
    let named: Vec<String> = added
        .iter()
        .map(|p| format!("+{}", crate::json_path::path_to_json(p)))
        .chain(
            removed
                .iter()
                .map(|p| format!("-{}", crate::json_path::path_to_json(p))),
        )
        .collect();
    match named.len() {
        0 => String::new(),
        n if n <= 3 => format!(": {}", named.join(", ")),
        n => format!(": {}, and {} more", named[..3].join(", "), n - 3),
    }
}

#[cfg(test)]
mod tests;
