//! `weight.unexpected_reader`: a process that is not an inference server reads a protected
//! file. Opening it, or reading less than `min_bytes` (headers: `file`, `head -c`, a format
//! probe), is an access and is only logged; reading `min_bytes` is medium; reading
//! `high_fraction` of the file is high.
//!
//! Not judged: a server pinned by executable, user, container or cgroup (reading weights is
//! its job), any server's start-up load, and a trusted reader (`readers:`) on schedule.
use foldhash::HashMap;
use std::collections::hash_map::Entry;

use super::{
    Ctx, Rule, RuleId,
    flows::{Flows, fraction, human},
    sink::{AlertSink, AlertSpec},
};
use crate::{
    alerts::{AlertFile, AlertProcess, Window},
    config::{RuleCommon, RuleSettings, Severity, rules::RuleKeys},
    events::{EventKind, FileKey},
};

pub const ID: RuleId = RuleId::new("weight.unexpected_reader");

const MIB: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub common: RuleCommon,
    /// Reads below this many bytes of one file are an access, not an alert. `file(1)` reads
    /// 7 MiB from each end of a file; 16 MiB stays above that.
    pub min_bytes: u64,
    /// Severity becomes high once this fraction of the file is read.
    pub high_fraction: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            common: RuleCommon::new(Severity::Medium),
            min_bytes: 16 * MIB,
            high_fraction: 0.5,
        }
    }
}

impl RuleSettings for Settings {
    const KEYS: &'static [&'static str] = &["min_bytes", "high_fraction"];
    fn common(&self) -> &RuleCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut RuleCommon {
        &mut self.common
    }
    fn apply(&mut self, keys: &mut RuleKeys<'_, '_>) {
        keys.size("min_bytes", &mut self.min_bytes);
        keys.fraction("high_fraction", &mut self.high_fraction);
    }
}

/// How far one process got with one file.
#[derive(Clone, Copy, PartialEq, PartialOrd)]
enum Stage {
    /// Opened or read a little: logged once.
    Access,
    Medium,
    High,
}

#[derive(Default)]
pub(crate) struct State {
    /// Each stage is judged once per process and file: later reads would only be suppressed
    /// repeats, not worth formatting an alert for.
    /// By pid, then file: an exit drops one entry instead of scanning every process's.
    reached: HashMap<u32, HashMap<FileKey, Stage>>,
    /// When a small access was last logged at info, and how many came after it unlogged: one
    /// line a minute at most, so a loop of new processes opening a weight file floods neither
    /// the log nor the event loop (formatting a line per access cost two thirds of the
    /// engine's throughput). Every access is an event in `events`/`record` all the same.
    access_logged: Option<chrono::DateTime<chrono::Utc>>,
    accesses_unlogged: u64,
}

impl Rule for State {
    fn on_event(&mut self, ctx: &Ctx<'_>, flows: &Flows, sink: &mut AlertSink<'_>) {
        let Some(w) = &ctx.ev.weight else { return };
        if !matches!(
            ctx.ev.event.kind,
            EventKind::FileOpen { .. } | EventKind::FileRead { .. } | EventKind::FileMmap { .. } | EventKind::FileTouch { .. }
        ) {
            return;
        }
        if ctx.pinned_server() || ctx.startup_load || ctx.trusted_reader {
            return;
        }
        let pid = ctx.ev.process.pid;
        let file = FileKey { dev: w.dev, ino: w.ino };
        let read = flows.read_by(pid, file);
        let s = &sink.cfg().rules.unexpected_reader;
        let stage = if read > 0 && fraction(read, w.size) >= s.high_fraction {
            Stage::High
        } else if read >= s.min_bytes {
            Stage::Medium
        } else {
            Stage::Access
        };
        match self.reached.entry(pid).or_default().entry(file) {
            Entry::Occupied(mut seen) => {
                if *seen.get() >= stage {
                    return;
                }
                seen.insert(stage);
            }
            Entry::Vacant(v) => {
                v.insert(stage);
            }
        }
        let p = &ctx.ev.process;
        let who = p.exe.as_deref().unwrap_or(&p.comm);
        let server = match ctx.server {
            Some(s) => format!(", known as server {} by name only,", s.name),
            None => ", not an inference server,".into(),
        };
        if stage == Stage::Access {
            let due = self
                .access_logged
                .is_none_or(|last| ctx.t - last >= chrono::TimeDelta::seconds(60));
            if due {
                let more = std::mem::take(&mut self.accesses_unlogged);
                log::info!(
                    "{who} (pid {pid}){server} opened {} ({} read so far; below {} is an access, not an alert){}",
                    w.path.display(),
                    human(read),
                    human(s.min_bytes),
                    if more > 0 {
                        format!("; {more} more such accesses in the minute before, at debug level")
                    } else {
                        String::new()
                    }
                );
                self.access_logged = Some(ctx.t);
            } else {
                self.accesses_unlogged += 1;
                log::debug!(
                    "{who} (pid {pid}){server} opened {} ({} read so far): an access, not an alert",
                    w.path.display(),
                    human(read)
                );
            }
            return;
        }
        let (severity, tag) = match stage {
            Stage::High => (Some(Severity::High), "high"),
            _ => (None, "read"),
        };
        let key = format!("{pid}:{}:{}:{tag}", w.dev, w.ino);
        if !sink.gate(ID, &key, ctx.t) {
            return;
        }
        let summary = format!(
            "{who} (pid {pid}){server} read {} of {} ({:.0}%)",
            human(read),
            w.path.display(),
            100.0 * fraction(read, w.size)
        );
        sink.emit(AlertSpec {
            rule: ID,
            severity,
            summary,
            time: ctx.t,
            process: AlertProcess::of(ctx.ev),
            files: vec![AlertFile::of(w, read)],
            network: vec![],
            window: Window::at(ctx.t),
            key,
        });
    }

    fn on_exit(&mut self, pid: u32) {
        self.reached.remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::config::Severity;

    #[test]
    fn a_full_read_is_medium_then_high_once_each() {
        let mut r = Run::new(cfg(""), MONDAY_10);
        let w = weight(1, 64 * MIB);
        let cat = proc_(101, "cat", "/usr/bin/cat", "cat /models/m1.safetensors", &[(100, "bash")]);
        r.open(0, &cat, &w);
        assert!(r.of(super::ID).is_empty(), "an open is an access: {:#?}", r.alerts);
        r.read(1, &cat, &w, 20 * MIB);
        r.read(1, &cat, &w, MIB);
        let first = r.of(super::ID);
        assert_eq!(first.len(), 1, "one alert per stage: {:#?}", r.alerts);
        assert_eq!(first[0].severity, Severity::Medium);
        r.read(2, &cat, &w, 20 * MIB);
        let all = r.of(super::ID);
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].severity, Severity::High, "more than half read escalates");
        assert_eq!(all[1].files[0].bytes_read, 41 * MIB);
    }

    #[test]
    fn header_reads_are_no_alert_but_a_whole_small_file_is() {
        let mut r = Run::new(cfg(""), MONDAY_10);
        let big = weight(1, 128 * MIB);
        // file(1): 7 MiB from the start and 7 MiB from the end; head -c 64; xxd | head.
        let file = proc_(101, "file", "/usr/bin/file", "file /models/m1.safetensors", &[(100, "bash")]);
        r.open(0, &file, &big);
        r.read(0, &file, &big, 7 * MIB);
        r.read(0, &file, &big, 7 * MIB);
        let head = proc_(102, "head", "/usr/bin/head", "head -c 64", &[(100, "bash")]);
        r.open(1, &head, &big);
        r.read(1, &head, &big, 64);
        assert!(r.alerts.is_empty(), "{:#?}", r.alerts);
        // An 8 MiB adapter read whole is below min_bytes but past high_fraction.
        let small = weight(2, 8 * MIB);
        let cat = proc_(103, "cat", "/usr/bin/cat", "cat", &[(100, "bash")]);
        r.read(2, &cat, &small, 8 * MIB);
        let a = r.of(super::ID);
        assert_eq!(a.len(), 1, "{:#?}", r.alerts);
        assert_eq!(a[0].severity, Severity::High);
    }

    #[test]
    fn pinned_servers_and_trusted_readers_are_not_judged_but_a_name_is_not_enough() {
        let yaml = "servers: [{name: vllm, argv: ['*vllm serve*'], users: [1000]}]\n\
                    readers: [{name: integrity, exe: [/usr/bin/sha256sum], files: ['/models/*']}]";
        let mut r = Run::new(cfg(yaml), MONDAY_10);
        let w = weight(1, 64 * MIB);
        let server = proc_(500, "vllm", "/usr/bin/python3", "vllm serve /models", &[(1, "systemd")]);
        r.exec(0, &server);
        r.read(3600, &server, &w, 64 * MIB); // long after start-up: a pinned server may read
        let sum = proc_(600, "sha256sum", "/usr/bin/sha256sum", "sha256sum /models/m1.safetensors", &[(1, "cron")]);
        r.read(3601, &sum, &w, 64 * MIB);
        assert!(r.of(super::ID).is_empty(), "{:#?}", r.alerts);
        // Named like the server, but another user: judged as anyone.
        let mut fake = proc_(700, "vllm", "/usr/bin/python3", "python3 steal.py vllm serve", &[(699, "bash")]);
        fake.uid = 1001;
        r.exec(3602, &fake);
        r.read(3603, &fake, &w, 64 * MIB);
        // A copy of sha256sum elsewhere is not the trusted reader.
        let copy = proc_(701, "sha256sum", "/tmp/sha256sum", "sha256sum /models/m1.safetensors", &[(699, "bash")]);
        r.read(3604, &copy, &w, 64 * MIB);
        let pids: Vec<u32> = r.of(super::ID).iter().map(|a| a.process.pid).collect();
        assert_eq!(pids, vec![700, 701], "{:#?}", r.alerts);
    }

    #[test]
    fn a_name_only_server_is_exempt_during_start_up_only() {
        let mut r = Run::new(cfg(""), MONDAY_10);
        let w = weight(1, 64 * MIB);
        let s = vllm();
        r.exec(0, &s);
        r.read(5, &s, &w, 64 * MIB);
        assert!(r.of(super::ID).is_empty(), "start-up load: {:#?}", r.alerts);
        let w2 = weight(2, 64 * MIB);
        r.read(3600, &s, &w2, 64 * MIB);
        let a = r.of(super::ID);
        assert_eq!(a.len(), 1, "{:#?}", r.alerts);
        assert!(a[0].summary.contains("by name only"), "{}", a[0].summary);
    }
}
