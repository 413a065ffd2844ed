//! What process trees, users and containers read and sent: the accounting the weight rules
//! judge. The engine records every event here before any rule sees it.
//!
//! - A *flow* is kept per process tree (a process and its ancestors below a session or service
//!   boundary, `super::engine::correlation_groups`: `cat m | nc` shares its shell) and per
//!   *scope* (the container, or the user outside containers: two half-reads by two runs, or two
//!   logins, are one file). Exfiltration is judged on a flow: protected bytes read against bytes
//!   sent where they may not go.
//! - *Scope reads* are what bulk-read and off-hours judge: reads by the scope that are not a
//!   server's start-up load, a pinned server's own reads or a trusted reader's reads.
use foldhash::HashMap;
use std::{net::IpAddr, sync::Arc};

use chrono::{DateTime, TimeDelta, Utc};

use super::Ctx;
use crate::{
    alerts::{AlertFile, AlertNetwork, AlertProcess},
    config::Config,
    enrich::{FileView, ProcessView},
    events::{EventKind, FileKey},
};

/// Who a scope is: a container, or a user on the host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Scope {
    Container(String),
    User(u32),
}

impl Scope {
    pub fn of(p: &ProcessView) -> Scope {
        match &p.container_id {
            Some(c) => Scope::Container(c.clone()),
            None => Scope::User(p.uid),
        }
    }

    /// For dedup keys and summaries.
    pub fn label(&self) -> String {
        match self {
            Scope::Container(c) => format!("container {}", &c[..c.len().min(12)]),
            Scope::User(u) => format!("uid {u}"),
        }
    }
}

/// What a flow is kept for: a process tree (named by its root's pid) or a scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum FlowKey {
    Tree(u32),
    Scope(Scope),
}

/// Bytes one flow read from one file.
#[derive(Debug, Clone)]
pub(crate) struct FileUse {
    pub view: FileView,
    pub bytes: u64,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
    /// First process of the flow that read it: names the flow in dedup keys, so the same
    /// reader seen through a parent and a grandparent alerts once.
    pub first_reader: u32,
}

/// Where weights may go from one sender, and so how its bytes count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Destination {
    /// Named by address, network or host name in `egress.allow`, or a client a pinned server
    /// accepted: never counted.
    Exempt,
    /// A client a server known only by name accepted: judged per client, so a busy server's
    /// many small answers are not one transfer, but one client pulling a file is.
    ClientOfWeakServer,
    /// Anywhere else: all such destinations add up.
    Outside,
}

#[derive(Debug, Clone)]
pub(crate) struct SendUse {
    pub bytes: u64,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
    pub destination: Destination,
}

#[derive(Debug, Default)]
pub(crate) struct Flow {
    pub files: HashMap<FileKey, FileUse>,
    pub sends: HashMap<(IpAddr, u16), SendUse>,
    /// The process that most recently read protected files (what an alert names).
    pub reader: Option<Arc<ProcessView>>,
    pub last: Option<DateTime<Utc>>,
}

impl Flow {
    pub fn files_since(&self, since: DateTime<Utc>) -> Vec<&FileUse> {
        self.files.values().filter(|f| f.last >= since).collect()
    }

    /// Protected bytes read since `since`, and the size of the largest file among them.
    pub fn read_since(&self, since: DateTime<Utc>) -> (u64, u64) {
        self.files
            .values()
            .filter(|f| f.last >= since)
            .fold((0, 0), |(b, s), f| (b + f.bytes, s.max(f.view.size)))
    }

    /// Bytes sent where weights may not go since `since`: everything sent to outside
    /// destinations together, or the most one client of a name-only server got.
    pub fn sent_outside(&self, since: DateTime<Utc>) -> u64 {
        let (mut outside, mut client) = (0u64, 0u64);
        for s in self.sends.values().filter(|s| s.last >= since) {
            match s.destination {
                Destination::Exempt => {}
                Destination::ClientOfWeakServer => client = client.max(s.bytes),
                Destination::Outside => outside += s.bytes,
            }
        }
        outside.max(client)
    }

    /// The destinations `sent_outside` counts, largest first.
    pub fn outside(&self, since: DateTime<Utc>) -> Vec<(IpAddr, u16, &SendUse)> {
        let mut v: Vec<(IpAddr, u16, &SendUse)> = self
            .sends
            .iter()
            .filter(|(_, s)| s.destination != Destination::Exempt && s.last >= since)
            .map(|((ip, port), s)| (*ip, *port, s))
            .collect();
        v.sort_by_key(|(_, _, s)| std::cmp::Reverse(s.bytes));
        v
    }

    pub fn reader_or(&self, ctx: &Ctx<'_>) -> AlertProcess {
        match &self.reader {
            Some(p) => AlertProcess::from_view(p),
            None => AlertProcess::of(ctx.ev),
        }
    }
}

/// Bytes one scope read from one file, as bulk-read and off-hours judge them.
#[derive(Debug, Clone)]
pub(crate) struct ScopeFile {
    pub view: FileView,
    pub bytes: u64,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
}

#[derive(Debug, Default)]
pub(crate) struct ScopeReads {
    pub files: HashMap<FileKey, ScopeFile>,
    pub reader: Option<Arc<ProcessView>>,
    pub last: Option<DateTime<Utc>>,
}

impl ScopeReads {
    pub fn total_since(&self, since: DateTime<Utc>) -> u64 {
        self.files
            .values()
            .filter(|f| f.last >= since)
            .map(|f| f.bytes)
            .sum()
    }

    pub fn files_since(&self, since: DateTime<Utc>) -> Vec<&ScopeFile> {
        self.files.values().filter(|f| f.last >= since).collect()
    }
}

/// Clients one server identity accepted, with when it last did.
type Clients = HashMap<IpAddr, DateTime<Utc>>;

#[derive(Default)]
pub(crate) struct Flows {
    pub flows: HashMap<FlowKey, Flow>,
    pub scope_reads: HashMap<Scope, ScopeReads>,
    /// Bytes each process read per file (unexpected_reader judges a process, not a tree).
    /// By pid, then file: an exit drops one entry instead of scanning every process's.
    per_process: HashMap<u32, HashMap<FileKey, u64>>,
    /// Clients each inference server identity accepted (any of its processes answers them).
    clients: HashMap<Arc<str>, Clients>,
}

/// Bytes of a protected file an event says its process read (a read, or pages touched in a
/// mapping).
pub(crate) fn read_bytes(kind: &EventKind) -> u64 {
    match kind {
        EventKind::FileRead { bytes, .. } | EventKind::FileTouch { bytes, .. } => *bytes,
        _ => 0,
    }
}

/// Whether a read by this event counts toward its scope's reads (bulk-read, off-hours): not
/// a server's start-up load, a pinned server's own read or a trusted reader's.
pub(crate) fn counts_for_scope(ctx: &Ctx<'_>) -> bool {
    !(ctx.startup_load || ctx.trusted_reader || ctx.pinned_server())
}

impl Flows {
    /// Accounts one event before the rules judge it.
    pub fn record(&mut self, ctx: &Ctx<'_>, cfg: &Config) {
        let ev = ctx.ev;
        let pid = ev.process.pid;
        // What was last added longer ago than its rule looks back starts over.
        let flow_window = super::delta(cfg.rules.exfiltration.window);
        let scope_window = super::delta(cfg.rules.bulk_read.window);
        match &ev.event.kind {
            EventKind::FileRead { .. } | EventKind::FileTouch { .. } => {
                let (Some(w), bytes) = (&ev.weight, read_bytes(&ev.event.kind)) else {
                    return;
                };
                if bytes == 0 {
                    return;
                }
                let key = FileKey {
                    dev: w.dev,
                    ino: w.ino,
                };
                *self.per_process.entry(pid).or_default().entry(key).or_default() += bytes;
                // Every read counts toward what a flow has in hand, a server's start-up load
                // and a trusted reader's included: what they send is judged against it.
                for g in ctx.groups {
                    let flow = self.flows.entry(g.clone()).or_default();
                    let f = flow.files.entry(key).or_insert_with(|| FileUse {
                        view: w.clone(),
                        bytes: 0,
                        first: ctx.t,
                        last: ctx.t,
                        first_reader: pid,
                    });
                    if ctx.t - f.last > flow_window {
                        (f.bytes, f.first) = (0, ctx.t);
                    }
                    f.bytes += bytes;
                    f.last = ctx.t;
                    if flow.reader.as_ref().map(|r| r.pid) != Some(pid) {
                        flow.reader = Some(ev.process.clone());
                    }
                    flow.last = Some(ctx.t);
                }
                if !counts_for_scope(ctx) {
                    return;
                }
                let scope = self.scope_reads.entry(Scope::of(&ev.process)).or_default();
                let f = scope.files.entry(key).or_insert_with(|| ScopeFile {
                    view: w.clone(),
                    bytes: 0,
                    first: ctx.t,
                    last: ctx.t,
                });
                if ctx.t - f.last > scope_window {
                    (f.bytes, f.first) = (0, ctx.t);
                }
                f.bytes += bytes;
                f.last = ctx.t;
                if scope.reader.as_ref().map(|r| r.pid) != Some(pid) {
                    scope.reader = Some(ev.process.clone());
                }
                scope.last = Some(ctx.t);
            }
            EventKind::NetSend {
                dest, port, bytes, ..
            } => {
                if *bytes == 0 {
                    return;
                }
                let client = ctx
                    .server
                    .is_some_and(|s| self.clients.get(&s.name).is_some_and(|c| c.contains_key(dest)));
                let destination =
                    if cfg.egress.exempts_transfer(*dest, *port) || (client && ctx.pinned_server()) {
                        Destination::Exempt
                    } else if client {
                        Destination::ClientOfWeakServer
                    } else {
                        Destination::Outside
                    };
                for g in ctx.groups {
                    let flow = self.flows.entry(g.clone()).or_default();
                    let s = flow.sends.entry((*dest, *port)).or_insert(SendUse {
                        bytes: 0,
                        first: ctx.t,
                        last: ctx.t,
                        destination,
                    });
                    if ctx.t - s.last > flow_window {
                        (s.bytes, s.first) = (0, ctx.t);
                    }
                    s.bytes += bytes;
                    s.last = ctx.t;
                    s.destination = destination;
                    flow.last = Some(ctx.t);
                }
            }
            EventKind::NetAccept { client, .. } => {
                if let Some(s) = ctx.server {
                    self.clients
                        .entry(s.name.clone())
                        .or_default()
                        .insert(*client, ctx.t);
                }
            }
            _ => {}
        }
    }

    pub fn on_exit(&mut self, pid: u32) {
        self.per_process.remove(&pid);
    }

    /// Bytes `pid` read of `file` (while it runs).
    pub fn read_by(&self, pid: u32, file: FileKey) -> u64 {
        self.per_process
            .get(&pid)
            .and_then(|files| files.get(&file))
            .copied()
            .unwrap_or(0)
    }

    pub fn expire(&mut self, now: DateTime<Utc>, keep: TimeDelta) {
        self.flows.retain(|_, g| g.last.is_some_and(|t| now - t < keep));
        self.scope_reads
            .retain(|_, s| s.last.is_some_and(|t| now - t < keep));
        for c in self.clients.values_mut() {
            c.retain(|_, t| now - *t < keep);
        }
        self.clients.retain(|_, c| !c.is_empty());
    }
}

pub(crate) fn file_alert(f: &FileUse) -> AlertFile {
    AlertFile::of(&f.view, f.bytes)
}

pub(crate) fn network_alert(dest: IpAddr, port: u16, s: &SendUse) -> AlertNetwork {
    AlertNetwork {
        dest,
        port,
        bytes_sent: s.bytes,
    }
}

pub(crate) fn fraction(bytes: u64, size: u64) -> f64 {
    if size == 0 {
        0.0
    } else {
        bytes as f64 / size as f64
    }
}

pub(crate) use crate::alerts::human_bytes as human;

pub(crate) fn humantime_short(d: TimeDelta) -> String {
    let s = d.num_seconds().max(0);
    if s < 120 {
        format!("{s} s")
    } else if s < 7200 {
        format!("{} min", s / 60)
    } else {
        format!("{} h", s / 3600)
    }
}

pub(crate) fn endpoint(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V6(_) => format!("[{ip}]:{port}"),
        IpAddr::V4(_) => format!("{ip}:{port}"),
    }
}
