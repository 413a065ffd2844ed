//! Incidents: the rule hits about one thing folded into one alert that grows.
//!
//! Each hit of the engine says what it is about ([`Alert::scope`]): the root of a process tree
//! (`tree:<pid>`), the agent itself (`agent:<rule>:<key>`), or a rate key (`<rule>:<key>`).
//! While an incident is open, every hit with its scope joins it. Receivers get one message when
//! it opens, one when it escalates (its severity rises, or a hit names a destination or a weight
//! file that no earlier hit named), and a closing summary when it is resolved: every process of
//! its tree has exited, nothing happened in it for `incidents.idle`, or watching stopped. A hit
//! that changes none of that is folded in silently (its rule joins `rules`).
//!
//! Totals: a hit carries what the tree had read and sent when its rule fired (an exfiltration
//! is raised once 10% has left, not when the upload ends), so the tracker keeps counting after
//! the incident opened: reads of weight files and sends by the incident's processes. Those are
//! the processes its hits named, their ancestors up to the tree's root, and any process whose
//! nearest ancestor among them is one (the sender beside a reader: `cat model | nc`). A hit's
//! count and the tracker's cover the same bytes, so per file and destination the larger one is
//! kept, never their sum; events must be observed before the engine judges them (the hit an
//! event raises already counts it).
//!
//! The same tracker runs live (`agent`) and over recordings (`replay`), on the events' times.
use chrono::{DateTime, TimeDelta, Utc};
use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};
use serde::{Deserialize, Serialize};

use super::{Alert, AlertFile, AlertNetwork, Window, human_bytes, new_id};
use crate::{config::Severity, enrich::Enriched, events::EventKind};

/// Where an incident is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IncidentStatus {
    Opened,
    Escalated,
    Resolved,
}

/// Why an incident escalated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// A hit more severe than any before.
    Severity,
    /// A hit named a destination no earlier hit named.
    Destination,
    /// A hit named a weight file no earlier hit named.
    File,
}

/// Why an incident was resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resolution {
    /// Every process of its tree exited.
    Exited,
    /// Nothing happened in it for `incidents.idle`.
    Idle,
    /// The agent stopped (or the recording ended) while it was open.
    Stopped,
}

/// What receivers get: the alert contract (its fields keep their names and meaning: `rule` is
/// the rule whose hit caused this message, `severity` the incident's highest so far, `files`
/// and `network` everything the incident read and sent, with totals) plus the incident's own.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IncidentMessage {
    #[serde(flatten)]
    pub alert: Alert,
    /// The same in every message about one incident (`id` is this message's own).
    pub incident_id: String,
    pub status: IncidentStatus,
    /// Rules hit so far, in the order first hit.
    pub rules: Vec<String>,
    /// Sums over `files` and `network`.
    pub bytes_read: u64,
    pub bytes_sent: u64,
    /// The earliest evidence in the incident, and its latest activity (hit, read or send).
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
    /// What escalated it (empty unless `status` is `escalated`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Change>,
    /// The severity before this message raised it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_severity: Option<Severity>,
    /// Why it is over (only when `status` is `resolved`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<Resolution>,
    /// The pod of the process whose hit opened the incident, when known: its name where the
    /// container runtime named it, else its UID from the cgroup path. The same in every message,
    /// so receivers can key on it (Alertmanager's `pod` label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// That pod's Kubernetes namespace, when the runtime named it (Alertmanager's `namespace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A weight file or destination of an incident, and whether a hit named it (only those count
/// as new for escalation: what the rules judged, not every socket the tree wrote to).
struct Tracked<T> {
    item: T,
    named: bool,
}

struct Incident {
    id: String,
    /// Opening order, so resolutions of one tick come out in a stable order.
    seq: u64,
    rules: Vec<String>,
    severity: Severity,
    /// The first hit at the incident's severity: the resolved message's rule and process.
    primary: Alert,
    files: Vec<Tracked<AlertFile>>,
    network: Vec<Tracked<AlertNetwork>>,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
    incomplete: bool,
    suppressed: u64,
    /// Live processes of a tree incident (empty for agent and rate scopes). A set: a tree can
    /// be thousands of short-lived readers.
    members: HashSet<u32>,
    /// Whether it is about a process tree (and so is resolved when its processes exit).
    tree: bool,
    pod: Option<String>,
    namespace: Option<String>,
}

/// A file or destination of an incident: what identifies it and what it counts.
trait Tally: Clone {
    fn same(&self, other: &Self) -> bool;
    fn bytes(&mut self) -> &mut u64;
}

impl Tally for AlertFile {
    fn same(&self, other: &Self) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }
    fn bytes(&mut self) -> &mut u64 {
        &mut self.bytes_read
    }
}

impl Tally for AlertNetwork {
    fn same(&self, other: &Self) -> bool {
        (self.dest, self.port) == (other.dest, other.port)
    }
    fn bytes(&mut self) -> &mut u64 {
        &mut self.bytes_sent
    }
}

/// Merges `x` (from a hit when `named`, else from an event adding `add` bytes) into `items`;
/// whether a hit named it for the first time.
fn merge<T: Tally>(items: &mut Vec<Tracked<T>>, x: &T, named: bool, add: u64) -> bool {
    let mut x = x.clone();
    match items.iter_mut().find(|t| t.item.same(&x)) {
        Some(t) => {
            // A hit's count and ours cover the same bytes: the larger, not the sum.
            let ours = *t.item.bytes() + add;
            *t.item.bytes() = ours.max(*x.bytes());
            let new = named && !t.named;
            t.named |= named;
            new
        }
        None => {
            *x.bytes() += add;
            items.push(Tracked { item: x, named });
            named
        }
    }
}

impl Incident {
    fn open(hit: &Alert, seq: u64) -> Incident {
        let mut inc = Incident {
            id: new_id(),
            seq,
            rules: Vec::new(),
            severity: hit.severity,
            primary: hit.clone(),
            files: Vec::new(),
            network: Vec::new(),
            first: hit.window.start.min(hit.time),
            last: hit.time,
            incomplete: false,
            suppressed: 0,
            members: HashSet::new(),
            tree: hit.scope.starts_with("tree:"),
            pod: hit
                .process
                .kubernetes
                .as_ref()
                .map(|k| k.pod.clone())
                .or_else(|| hit.process.pod.clone()),
            namespace: hit.process.kubernetes.as_ref().map(|k| k.namespace.clone()),
        };
        inc.join(hit);
        inc
    }

    /// Adds a hit; what about it is new.
    fn join(&mut self, hit: &Alert) -> Vec<Change> {
        let mut changes = Vec::new();
        if hit.severity > self.severity {
            self.severity = hit.severity;
            self.primary = hit.clone();
            changes.push(Change::Severity);
        }
        let mut new_file = false;
        for f in &hit.files {
            new_file |= merge(&mut self.files, f, true, 0);
        }
        if new_file {
            changes.push(Change::File);
        }
        let mut new_dest = false;
        for n in &hit.network {
            new_dest |= merge(&mut self.network, n, true, 0);
        }
        if new_dest {
            changes.push(Change::Destination);
        }
        if !self.rules.contains(&hit.rule) {
            self.rules.push(hit.rule.clone());
        }
        self.first = self.first.min(hit.window.start);
        self.last = self.last.max(hit.time);
        self.incomplete |= hit.incomplete;
        self.suppressed += hit.suppressed;
        changes
    }

    /// A message about this incident from `base` (the hit that caused it, or the primary one).
    fn message(&self, base: &Alert, status: IncidentStatus) -> IncidentMessage {
        let mut alert = base.clone();
        alert.id = new_id();
        alert.severity = self.severity;
        alert.files = self.files.iter().map(|t| t.item.clone()).collect();
        alert.network = self.network.iter().map(|t| t.item.clone()).collect();
        alert.incomplete = self.incomplete;
        IncidentMessage {
            incident_id: self.id.clone(),
            status,
            rules: self.rules.clone(),
            bytes_read: alert.files.iter().map(|f| f.bytes_read).sum(),
            bytes_sent: alert.network.iter().map(|n| n.bytes_sent).sum(),
            first: self.first,
            last: self.last,
            changes: Vec::new(),
            previous_severity: None,
            resolved_by: None,
            pod: self.pod.clone(),
            namespace: self.namespace.clone(),
            alert,
        }
    }

    fn resolved(&self, why: Resolution, t: DateTime<Utc>, idle: TimeDelta) -> IncidentMessage {
        let mut m = self.message(&self.primary, IncidentStatus::Resolved);
        let reason = match why {
            Resolution::Exited => "its processes exited".to_string(),
            Resolution::Idle => match idle.num_seconds() {
                s if s % 60 == 0 => format!("nothing happened for {} min", s / 60),
                s => format!("nothing happened for {s} s"),
            },
            Resolution::Stopped => "watching stopped".to_string(),
        };
        let p = &self.primary.process;
        let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        let rules = self.rules.join(", ");
        let mut summary = if self.tree {
            format!(
                "incident over ({reason}): {} (pid {}) and its process tree hit {rules}",
                p.comm, p.pid
            )
        } else {
            // A rate (per user, container, client) or the agent itself: no one process tree.
            format!(
                "incident over ({reason}): {rules}, raised about {} (pid {})",
                p.comm, p.pid
            )
        };
        let mut totals = Vec::new();
        if m.bytes_read > 0 {
            totals.push(format!(
                "read {} from {}",
                human_bytes(m.bytes_read),
                plural(m.alert.files.len(), "weight file")
            ));
        }
        if m.bytes_sent > 0 {
            totals.push(format!(
                "sent {} to {}",
                human_bytes(m.bytes_sent),
                plural(m.alert.network.len(), "destination")
            ));
        }
        if !totals.is_empty() {
            summary = format!("{summary}; {}", totals.join(", "));
        }
        m.alert.summary = summary;
        m.alert.time = t.max(self.last);
        m.alert.window = Window {
            start: self.first,
            end: self.last,
        };
        m.alert.suppressed = self.suppressed;
        m.resolved_by = Some(why);
        m
    }
}

/// The pid a `tree:<pid>` scope is rooted at.
fn tree_root(scope: &str) -> Option<u32> {
    scope.strip_prefix("tree:")?.parse().ok()
}

/// The open incidents and the processes that belong to them.
pub struct Incidents {
    idle: TimeDelta,
    /// By scope.
    open: HashMap<String, Incident>,
    /// Live processes of open tree incidents, to the scopes they belong to (a process is in two
    /// when its tree's root and a deeper root both have incidents).
    members: HashMap<u32, Vec<String>>,
    next_seq: u64,
}

impl Incidents {
    pub fn new(idle: std::time::Duration) -> Self {
        Incidents {
            idle: TimeDelta::from_std(idle).unwrap_or(TimeDelta::MAX),
            open: HashMap::new(),
            members: HashMap::new(),
            next_seq: 0,
        }
    }

    /// A reloaded `incidents.idle`; open incidents are judged by it from now on.
    pub fn set_idle(&mut self, idle: std::time::Duration) {
        self.idle = TimeDelta::from_std(idle).unwrap_or(TimeDelta::MAX);
    }

    /// Incidents open now.
    pub fn open(&self) -> usize {
        self.open.len()
    }

    /// The ids of the incidents open now.
    pub fn open_ids(&self) -> impl Iterator<Item = &str> {
        self.open.values().map(|i| i.id.as_str())
    }

    /// One rule hit; a message when it opens or escalates an incident. `alive` says whether a
    /// process is still running: a hit may name one that has exited (the reader of a tree whose
    /// sender tripped the rule), which must not keep the incident open.
    pub fn on_hit(&mut self, hit: Alert, alive: &dyn Fn(u32) -> bool, out: &mut Vec<IncidentMessage>) {
        let scope = if hit.scope.is_empty() {
            // Not from the engine (which always says): an incident of its own per rule and key.
            hit.dedup_key.clone()
        } else {
            hit.scope.clone()
        };
        let (message, tree) = match self.open.get_mut(&scope) {
            None => {
                let inc = Incident::open(&hit, self.next_seq);
                self.next_seq += 1;
                let m = inc.message(&hit, IncidentStatus::Opened);
                let tree = inc.tree;
                self.open.insert(scope.clone(), inc);
                (Some(m), tree)
            }
            Some(inc) => {
                let before = inc.severity;
                let changes = inc.join(&hit);
                let m = (!changes.is_empty()).then(|| {
                    let mut m = inc.message(&hit, IncidentStatus::Escalated);
                    m.previous_severity = changes.contains(&Change::Severity).then_some(before);
                    m.changes = changes;
                    m
                });
                (m, inc.tree)
            }
        };
        if tree {
            self.add_members(&scope, &hit, alive);
        }
        out.extend(message);
    }

    /// The hit's process and its ancestors up to the tree's root, those still running.
    fn add_members(&mut self, scope: &str, hit: &Alert, alive: &dyn Fn(u32) -> bool) {
        let p = &hit.process;
        // The engine roots a tree in the ancestry it was given; the root is the process itself
        // when it has no ancestor below a session or service boundary.
        let ancestors = tree_root(scope)
            .and_then(|root| p.ancestry.iter().position(|a| a.pid == root))
            .map_or(&[][..], |i| &p.ancestry[..=i]);
        for pid in std::iter::once(p.pid).chain(ancestors.iter().map(|a| a.pid)) {
            if alive(pid) {
                self.add_member(scope, pid);
            }
        }
    }

    fn add_member(&mut self, scope: &str, pid: u32) {
        let Some(inc) = self.open.get_mut(scope) else {
            return;
        };
        if !inc.members.insert(pid) {
            return;
        }
        self.members.entry(pid).or_default().push(scope.to_string());
    }

    /// Reads and sends by processes of open incidents go into their totals. Call for every
    /// event before the engine judges it.
    pub fn observe(&mut self, ev: &Enriched) {
        if self.members.is_empty() {
            return;
        }
        let bytes = match &ev.event.kind {
            EventKind::FileRead { bytes, .. } | EventKind::FileTouch { bytes, .. } if ev.weight.is_some() => {
                *bytes
            }
            EventKind::NetSend { bytes, .. } => *bytes,
            _ => return,
        };
        if bytes == 0 {
            return;
        }
        let pid = ev.process.pid;
        // Every incident the process or one of its ancestors belongs to: incidents nest (the
        // test harness's or a login shell's tree may have one, and a `cat | nc` inside it its
        // own), and a process already counted for the outer one still counts for the inner.
        let mut scopes: Vec<String> = Vec::new();
        for p in std::iter::once(pid).chain(ev.process.ancestry.iter().map(|a| a.pid)) {
            for scope in self.members.get(&p).into_iter().flatten() {
                if !scopes.contains(scope) {
                    scopes.push(scope.clone());
                }
            }
        }
        if scopes.is_empty() {
            return;
        }
        for scope in &scopes {
            let Some(inc) = self.open.get_mut(scope) else {
                continue;
            };
            match &ev.event.kind {
                EventKind::NetSend { dest, port, .. } => {
                    let n = AlertNetwork {
                        dest: *dest,
                        port: *port,
                        bytes_sent: 0,
                    };
                    merge(&mut inc.network, &n, false, bytes);
                }
                _ => {
                    if let Some(w) = &ev.weight {
                        merge(&mut inc.files, &AlertFile::of(w, 0), false, bytes);
                    }
                }
            }
            inc.last = inc.last.max(ev.time);
            self.add_member(scope, pid);
        }
    }

    /// `pid` exited at `t`: a tree incident whose last process it was is resolved.
    pub fn on_exit(&mut self, pid: u32, t: DateTime<Utc>, out: &mut Vec<IncidentMessage>) {
        let Some(scopes) = self.members.remove(&pid) else {
            return;
        };
        for scope in scopes {
            let over = self.open.get_mut(&scope).is_some_and(|inc| {
                inc.members.remove(&pid);
                inc.members.is_empty()
            });
            if over {
                self.resolve(&scope, Resolution::Exited, t, out);
            }
        }
    }

    /// Resolves the incidents quiet for `incidents.idle` at `now`, and tree incidents none of
    /// whose processes is running any more (every process a hit named had already exited).
    pub fn tick(&mut self, now: DateTime<Utc>, out: &mut Vec<IncidentMessage>) {
        let mut due: Vec<(u64, String, Resolution)> = self
            .open
            .iter()
            .filter_map(|(scope, inc)| {
                let why = if inc.tree && inc.members.is_empty() {
                    Resolution::Exited
                } else if now - inc.last >= self.idle {
                    Resolution::Idle
                } else {
                    return None;
                };
                Some((inc.seq, scope.clone(), why))
            })
            .collect();
        due.sort_unstable_by_key(|(seq, _, _)| *seq);
        for (_, scope, why) in due {
            self.resolve(&scope, why, now, out);
        }
    }

    /// Resolves every open incident (the agent stops, or the recording ended), oldest first.
    pub fn stop(&mut self, now: DateTime<Utc>, out: &mut Vec<IncidentMessage>) {
        let mut all: Vec<(u64, String)> = self.open.iter().map(|(s, i)| (i.seq, s.clone())).collect();
        all.sort_unstable_by_key(|(seq, _)| *seq);
        for (_, scope) in all {
            self.resolve(&scope, Resolution::Stopped, now, out);
        }
    }

    fn resolve(&mut self, scope: &str, why: Resolution, t: DateTime<Utc>, out: &mut Vec<IncidentMessage>) {
        let Some(inc) = self.open.remove(scope) else {
            return;
        };
        for pid in &inc.members {
            if let Some(scopes) = self.members.get_mut(pid) {
                scopes.retain(|s| s != scope);
                if scopes.is_empty() {
                    self.members.remove(pid);
                }
            }
        }
        out.push(inc.resolved(why, t, self.idle));
    }
}

#[cfg(test)]
mod tests;
