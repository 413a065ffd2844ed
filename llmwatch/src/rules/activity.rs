//! Rules over what process trees read and send: weight.unexpected_reader, weight.bulk_read,
//! weight.exfiltration, weight.off_hours_access, weight.tamper, api.client_flood.
use foldhash::HashMap;
use std::{collections::VecDeque, net::IpAddr, sync::Arc};

use chrono::{DateTime, TimeDelta, Utc};

use super::{AlertSink, AlertSpec, Ctx, delta};
use crate::{
    alerts::{AlertFile, AlertNetwork, AlertProcess, Window},
    config::Severity,
    enrich::{FileView, ProcessView},
    events::{EventKind, FileKey, TamperOp},
};

/// Bytes one group read from one file.
#[derive(Debug, Clone)]
struct FileUse {
    view: FileView,
    bytes: u64,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
    /// First process of the group that read it: names the group in dedup keys, so the same
    /// reader seen through a parent and a grandparent group alerts once.
    first_reader: u32,
    /// `first_reader:dev:ino`, the bulk and off-hours dedup key (built once, checked per read).
    dkey: String,
}

#[derive(Debug, Clone)]
struct SendUse {
    bytes: u64,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
    allowed: bool,
}

#[derive(Debug, Default)]
struct Group {
    files: HashMap<FileKey, FileUse>,
    sends: HashMap<(IpAddr, u16), SendUse>,
    /// The process that most recently read weights (what the alert names).
    reader: Option<Arc<ProcessView>>,
    last: Option<DateTime<Utc>>,
}

impl Group {
    /// Bytes read from files used since `since` (the per-event check; `read_in` lists them
    /// once an alert is due).
    fn read_total(&self, since: DateTime<Utc>) -> u64 {
        self.files
            .values()
            .filter(|f| f.last >= since)
            .map(|f| f.bytes)
            .sum()
    }

    /// Bytes sent outside the egress allowlist since `since`.
    fn sent_outside(&self, since: DateTime<Utc>) -> u64 {
        self.sends
            .values()
            .filter(|s| !s.allowed && s.last >= since)
            .map(|s| s.bytes)
            .sum()
    }

    fn reader_or(&self, ev: &crate::enrich::Enriched) -> AlertProcess {
        match &self.reader {
            Some(p) => AlertProcess::from_view(p),
            None => AlertProcess::of(ev),
        }
    }

    fn read_in(&self, since: DateTime<Utc>) -> (u64, Vec<&FileUse>) {
        let files: Vec<&FileUse> = self.files.values().filter(|f| f.last >= since).collect();
        (files.iter().map(|f| f.bytes).sum(), files)
    }
}

#[derive(Default)]
pub(crate) struct Activity {
    groups: HashMap<u32, Group>,
    /// Bytes each process read per file and the unexpected_reader stage reached (0 none,
    /// 1 opened, 2 past high_fraction).
    per_process: HashMap<(u32, FileKey), (u64, u8)>,
    /// Accepted connections and bytes served per client (api.client_flood).
    clients: HashMap<IpAddr, VecDeque<(DateTime<Utc>, u64, u64)>>,
}

fn file_alert(f: &FileUse) -> AlertFile {
    AlertFile::of(&f.view, f.bytes)
}

fn fraction(bytes: u64, size: u64) -> f64 {
    if size == 0 {
        0.0
    } else {
        bytes as f64 / size as f64
    }
}

fn human(bytes: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

impl Activity {
    pub fn on_exit(&mut self, pid: u32) {
        self.per_process.retain(|(p, _), _| *p != pid);
    }

    pub fn on_event(&mut self, ctx: &Ctx<'_>, groups: &[u32], sink: &mut AlertSink<'_>) {
        let ev = ctx.ev;
        match &ev.event.kind {
            EventKind::FileOpen { flags, .. } => {
                if let Some(w) = &ev.weight {
                    self.unexpected_reader(ctx, w, 0, sink);
                    // O_WRONLY | O_RDWR | O_TRUNC on a weight file is a change, whoever does it.
                    if flags & (libc::O_WRONLY | libc::O_RDWR | libc::O_TRUNC) as u32 != 0 {
                        tamper(ctx, w, "opened for writing", sink);
                    }
                }
            }
            EventKind::FileRead { bytes, .. } => {
                if let Some(w) = &ev.weight {
                    self.unexpected_reader(ctx, w, *bytes, sink);
                    self.read(ctx, groups, w, *bytes, sink);
                }
            }
            // A mapping is an access, not a read: what was read of it arrives as the pages it
            // touched (`file_touch`), so a header lookup through mmap is not a bulk read.
            EventKind::FileMmap { .. } => {
                if let Some(w) = &ev.weight {
                    self.unexpected_reader(ctx, w, 0, sink);
                }
            }
            EventKind::FileTouch { bytes, .. } => {
                if let Some(w) = &ev.weight {
                    self.unexpected_reader(ctx, w, *bytes, sink);
                    self.read(ctx, groups, w, *bytes, sink);
                }
            }
            EventKind::FileTamper { op, .. } => {
                if let Some(w) = &ev.weight {
                    let what = match op {
                        TamperOp::Write => "written to",
                        TamperOp::Truncate => "truncated",
                        TamperOp::RenameFrom => "renamed away",
                        TamperOp::RenameTo => "replaced by a rename over it",
                        TamperOp::Unlink => "deleted",
                        TamperOp::OpenTruncate => "opened with O_TRUNC",
                        TamperOp::OpenWrite => "opened for writing",
                        TamperOp::Unknown => "changed",
                    };
                    tamper(ctx, w, what, sink);
                }
            }
            EventKind::NetSend {
                dest, port, bytes, ..
            } => {
                self.send(ctx, groups, *dest, *port, *bytes, sink);
                if ctx.server.is_some() {
                    self.served(ctx, *dest, 0, *bytes, sink);
                }
            }
            EventKind::NetAccept { client, .. } => self.served(ctx, *client, 1, 0, sink),
            _ => {}
        }
    }

    fn unexpected_reader(&mut self, ctx: &Ctx<'_>, w: &FileView, bytes: u64, sink: &mut AlertSink<'_>) {
        if ctx.server.is_some() {
            return;
        }
        let pid = ctx.ev.process.pid;
        let key = (
            pid,
            FileKey {
                dev: w.dev,
                ino: w.ino,
            },
        );
        let high_fraction = sink.cfg().rules.unexpected_reader.high_fraction;
        let (total, high, already) = {
            let e = self.per_process.entry(key).or_insert((0, 0));
            e.0 += bytes;
            let high = fraction(e.0, w.size) >= high_fraction;
            // Each stage (opened, read past high_fraction) is judged once per process and file:
            // later reads would only be suppressed repeats, not worth formatting an alert for.
            let stage = if high { 2 } else { 1 };
            let already = e.1 >= stage;
            e.1 = e.1.max(stage);
            (e.0, high, already)
        };
        if already {
            return;
        }
        let who = ctx
            .ev
            .process
            .exe
            .as_deref()
            .unwrap_or(&ctx.ev.process.comm)
            .to_string();
        let (sev, tag) = if high {
            (Some(Severity::High), "high")
        } else {
            (None, "open")
        };
        let key = format!("{pid}:{}:{}:{tag}", w.dev, w.ino);
        if !sink.gate("weight.unexpected_reader", &key, ctx.t) {
            return;
        }
        let summary = if high {
            format!(
                "{who} (pid {pid}), not an inference server, read {} of {} ({:.0}%)",
                human(total),
                w.path.display(),
                100.0 * fraction(total, w.size)
            )
        } else {
            format!(
                "{who} (pid {pid}), not an inference server, opened {}",
                w.path.display()
            )
        };
        sink.emit(AlertSpec {
            rule: "weight.unexpected_reader",
            severity: sev,
            summary,
            time: ctx.t,
            process: AlertProcess::of(ctx.ev),
            files: vec![AlertFile::of(w, total)],
            network: vec![],
            window: Window::at(ctx.t),
            key,
        });
    }

    fn read(&mut self, ctx: &Ctx<'_>, groups: &[u32], w: &FileView, bytes: u64, sink: &mut AlertSink<'_>) {
        if ctx.startup_load || bytes == 0 {
            return; // an allowed server loading its model
        }
        let key = FileKey {
            dev: w.dev,
            ino: w.ino,
        };
        for g in groups {
            let group = self.groups.entry(*g).or_default();
            let f = group.files.entry(key).or_insert_with(|| FileUse {
                view: w.clone(),
                bytes: 0,
                first: ctx.t,
                last: ctx.t,
                first_reader: ctx.ev.process.pid,
                dkey: format!("{}:{}:{}", ctx.ev.process.pid, key.dev, key.ino),
            });
            f.bytes += bytes;
            f.last = ctx.t;
            if group.reader.as_ref().map(|r| r.pid) != Some(ctx.ev.process.pid) {
                group.reader = Some(ctx.ev.process.clone());
            }
            group.last = Some(ctx.t);
        }
        // Judge nearest group first; one alert per rule per event.
        for g in groups {
            if self.bulk(ctx, *g, key, sink) {
                break;
            }
        }
        for g in groups {
            if self.exfiltration(ctx, *g, sink) {
                break;
            }
        }
    }

    /// weight.bulk_read and weight.off_hours_access; true when either fired.
    fn bulk(&self, ctx: &Ctx<'_>, g: u32, key: FileKey, sink: &mut AlertSink<'_>) -> bool {
        let Some(group) = self.groups.get(&g) else {
            return false;
        };
        let Some(f) = group.files.get(&key) else {
            return false;
        };
        let rules = &sink.cfg().rules;
        let (bulk_min_fraction, bulk_min_bytes, bulk_window) = (
            rules.bulk_read.min_fraction,
            rules.bulk_read.min_bytes,
            rules.bulk_read.window,
        );
        let (off_min_fraction, off_min_bytes) = (rules.off_hours.min_fraction, rules.off_hours.min_bytes);
        let since = ctx.t - delta(bulk_window);
        // This runs for every read report: decide on plain numbers first, format nothing
        // until an alert is due.
        let total = group.read_total(since);
        let file_frac = fraction(f.bytes, f.view.size);
        let bulk_due = (file_frac >= bulk_min_fraction || total >= bulk_min_bytes)
            && sink.gate("weight.bulk_read", &f.dkey, ctx.t);
        let off_due = (file_frac >= off_min_fraction || total >= off_min_bytes)
            && !sink.cfg().business_hours.is_business_time(ctx.t)
            && sink.gate("weight.off_hours_access", &f.dkey, ctx.t);
        if !bulk_due && !off_due {
            return false;
        }
        let dkey = f.dkey.clone();
        let (total, files) = group.read_in(since);
        let process = group.reader_or(ctx.ev);
        let window = Window {
            start: files.iter().map(|f| f.first).min().unwrap_or(ctx.t),
            end: ctx.t,
        };
        let mut fired = false;
        if bulk_due {
            let before = sink_len(sink);
            sink.emit(AlertSpec {
                rule: "weight.bulk_read",
                severity: None,
                summary: format!(
                    "{} (pid {}) and its process tree read {} of weights in {} ({} of {}, {:.0}%)",
                    process.comm,
                    process.pid,
                    human(total),
                    humantime_short(ctx.t - window.start),
                    human(f.bytes),
                    f.view.path.display(),
                    100.0 * file_frac
                ),
                time: ctx.t,
                process: process.clone(),
                files: files.iter().map(|f| file_alert(f)).collect(),
                network: vec![],
                window,
                key: dkey.clone(),
            });
            fired |= sink_len(sink) > before;
        }
        if off_due {
            let bh = &sink.cfg().business_hours;
            let before = sink_len(sink);
            let local = ctx.t.with_timezone(&bh.tz);
            sink.emit(AlertSpec {
                rule: "weight.off_hours_access",
                severity: None,
                summary: format!(
                    "{} (pid {}) read {} of weights outside business hours ({} {})",
                    process.comm,
                    process.pid,
                    human(total),
                    local.format("%a %H:%M"),
                    bh.tz
                ),
                time: ctx.t,
                process,
                files: files.iter().map(|f| file_alert(f)).collect(),
                network: vec![],
                window,
                key: dkey,
            });
            fired |= sink_len(sink) > before;
        }
        fired
    }

    fn send(
        &mut self,
        ctx: &Ctx<'_>,
        groups: &[u32],
        dest: IpAddr,
        port: u16,
        bytes: u64,
        sink: &mut AlertSink<'_>,
    ) {
        if bytes == 0 {
            return;
        }
        let allowed = sink.cfg().egress.allows(dest, port);
        for g in groups {
            let group = self.groups.entry(*g).or_default();
            let s = group.sends.entry((dest, port)).or_insert(SendUse {
                bytes: 0,
                first: ctx.t,
                last: ctx.t,
                allowed,
            });
            s.bytes += bytes;
            s.last = ctx.t;
            group.last = Some(ctx.t);
        }
        if allowed {
            return;
        }
        for g in groups {
            if self.exfiltration(ctx, *g, sink) {
                break;
            }
        }
    }

    /// weight.exfiltration: the group read enough weights and sent a share of it outside the
    /// egress allowlist within the window.
    fn exfiltration(&self, ctx: &Ctx<'_>, g: u32, sink: &mut AlertSink<'_>) -> bool {
        let Some(group) = self.groups.get(&g) else {
            return false;
        };
        let cfg = &sink.cfg().rules.exfiltration;
        let since = ctx.t - delta(cfg.window);
        // Per event: sums first (most groups never send outside the allowlist), lists after.
        let sent = group.sent_outside(since);
        if sent == 0 {
            return false;
        }
        let read = group.read_total(since);
        if read == 0 || (sent as f64) < cfg.send_fraction * read as f64 {
            return false;
        }
        let (read, files) = group.read_in(since);
        let enough = read >= cfg.min_read_bytes
            || files
                .iter()
                .any(|f| fraction(f.bytes, f.view.size) >= cfg.min_read_fraction);
        if !enough {
            return false;
        }
        let mut outside: Vec<(&(IpAddr, u16), &SendUse)> = group
            .sends
            .iter()
            .filter(|(_, s)| !s.allowed && s.last >= since)
            .collect();
        outside.sort_by_key(|(_, s)| std::cmp::Reverse(s.bytes));
        let ((top_ip, top_port), _) = outside[0];
        let first_reader = files.iter().map(|f| f.first_reader).min().unwrap_or(0);
        let process = group.reader_or(ctx.ev);
        let start = files
            .iter()
            .map(|f| f.first)
            .chain(outside.iter().map(|(_, s)| s.first))
            .min()
            .unwrap_or(ctx.t);
        let dkey = format!("{first_reader}:{top_ip}:{top_port}");
        if !sink.gate("weight.exfiltration", &dkey, ctx.t) {
            return false;
        }
        let before = sink_len(sink);
        sink.emit(AlertSpec {
            rule: "weight.exfiltration",
            severity: None,
            summary: format!(
                "{} (pid {}) and its process tree read {} of weights and sent {} to {} outside the egress allowlist",
                process.comm,
                process.pid,
                human(read),
                human(sent),
                match top_ip {
                    IpAddr::V6(_) => format!("[{top_ip}]:{top_port}"),
                    IpAddr::V4(_) => format!("{top_ip}:{top_port}"),
                }
            ),
            time: ctx.t,
            process,
            files: files.iter().map(|f| file_alert(f)).collect(),
            network: outside
                .iter()
                .map(|((ip, port), s)| AlertNetwork { dest: *ip, port: *port, bytes_sent: s.bytes })
                .collect(),
            window: Window { start, end: ctx.t },
            key: dkey,
        });
        sink_len(sink) > before
    }

    /// api.client_flood: connections accepted from / bytes served to one client.
    fn served(&mut self, ctx: &Ctx<'_>, client: IpAddr, conns: u64, bytes: u64, sink: &mut AlertSink<'_>) {
        let cfg = &sink.cfg().rules.api_client_flood;
        let (max_conns, max_bytes, per) = (cfg.max_connections as u64, cfg.max_bytes, delta(cfg.per));
        let q = self.clients.entry(client).or_default();
        q.push_back((ctx.t, conns, bytes));
        while q.front().is_some_and(|(t, _, _)| ctx.t - *t > per) {
            q.pop_front();
        }
        let (c, b) = q
            .iter()
            .fold((0u64, 0u64), |(c, b), (_, dc, db)| (c + dc, b + db));
        if c <= max_conns && b <= max_bytes {
            return;
        }
        let start = q.front().map(|(t, _, _)| *t).unwrap_or(ctx.t);
        sink.emit(AlertSpec {
            rule: "api.client_flood",
            severity: None,
            summary: format!(
                "client {client} opened {c} connections and was served {} in {} (limits {max_conns} connections, {})",
                human(b),
                humantime_short(ctx.t - start),
                human(max_bytes)
            ),
            time: ctx.t,
            process: AlertProcess::of(ctx.ev),
            files: vec![],
            network: vec![AlertNetwork { dest: client, port: 0, bytes_sent: b }],
            window: Window { start, end: ctx.t },
            key: client.to_string(),
        });
    }

    pub fn expire(&mut self, now: DateTime<Utc>, keep: TimeDelta) {
        self.groups.retain(|_, g| g.last.is_some_and(|t| now - t < keep));
        self.clients
            .retain(|_, q| q.back().is_some_and(|(t, _, _)| now - *t < keep));
    }
}

fn tamper(ctx: &Ctx<'_>, w: &FileView, what: &str, sink: &mut AlertSink<'_>) {
    let p = &ctx.ev.process;
    sink.emit(AlertSpec {
        rule: "weight.tamper",
        severity: None,
        summary: format!(
            "{} (pid {}): weight file {} {what}",
            p.comm,
            p.pid,
            w.path.display()
        ),
        time: ctx.t,
        process: AlertProcess::of(ctx.ev),
        files: vec![AlertFile::of(w, 0)],
        network: vec![],
        window: Window::at(ctx.t),
        key: format!("{}:{}:{}:{what}", p.pid, w.dev, w.ino),
    });
}

fn sink_len(sink: &AlertSink<'_>) -> usize {
    sink.out.len()
}

fn humantime_short(d: TimeDelta) -> String {
    let s = d.num_seconds().max(0);
    if s < 120 {
        format!("{s} s")
    } else if s < 7200 {
        format!("{} min", s / 60)
    } else {
        format!("{} h", s / 3600)
    }
}
