//! What the rule tests share: a configuration from YAML, hand-built processes and files, and
//! an engine run fed one enriched event at a time.
use std::{path::PathBuf, sync::Arc};

use chrono::{DateTime, TimeDelta, Utc};

use super::{Engine, RuleId};
use crate::{
    alerts::Alert,
    config::Config,
    enrich::{Enriched, FileView, ProcessView},
    events::{Event, EventKind, FileKey, ReadReason, Task},
    state::{files::WeightFormat, process::Ancestor},
};

pub const MIB: u64 = 1 << 20;
/// A Monday, 10:00 UTC: inside the test business hours.
pub const MONDAY_10: &str = "2026-11-23T10:00:00Z";
/// A Sunday, 03:00 UTC.
pub const SUNDAY_03: &str = "2026-11-22T03:00:00Z";

/// A configuration from YAML, with business hours Monday to Friday 08:00-20:00 UTC.
pub fn cfg(yaml: &str) -> Arc<Config> {
    let base =
        "business_hours: {timezone: UTC, days: [mon, tue, wed, thu, fri], start: '08:00', end: '20:00'}\n";
    Arc::new(crate::config::parse(&format!("{base}{yaml}")).unwrap_or_else(|e| panic!("{e}")))
}

pub struct Proc {
    pub pid: u32,
    pub comm: &'static str,
    pub exe: &'static str,
    pub argv: Vec<String>,
    pub ancestry: Vec<Ancestor>,
    pub uid: u32,
}

/// A process of uid 1000 with `parents` (pid, comm), nearest first.
pub fn proc_(pid: u32, comm: &'static str, exe: &'static str, argv: &str, parents: &[(u32, &str)]) -> Proc {
    Proc {
        pid,
        comm,
        exe,
        argv: argv.split(' ').map(str::to_string).collect(),
        ancestry: parents
            .iter()
            .map(|(p, c)| Ancestor {
                pid: *p,
                comm: c.to_string(),
                exe: None,
            })
            .collect(),
        uid: 1000,
    }
}

/// vLLM as the built-in identity knows it: by its command line only.
pub fn vllm() -> Proc {
    proc_(
        500,
        "python3",
        "/usr/bin/python3",
        "python3 -m vllm.entrypoints.openai.api_server --model /models",
        &[(400, "bash")],
    )
}

pub fn weight(ino: u64, size: u64) -> FileView {
    FileView {
        path: PathBuf::from(format!("/models/m{ino}.safetensors")).into(),
        dev: 8,
        ino,
        size,
        format: WeightFormat::Safetensors,
        class: crate::state::files::AssetClass::Weights,
    }
}

pub fn gpu(major: u32, minor: u32) -> EventKind {
    EventKind::GpuOpen {
        major,
        minor,
        device: format!("nvidia{minor}"),
        path: None,
        fd: 3,
        flags: 2,
        errno: None,
    }
}

pub struct Run {
    pub engine: Engine,
    pub t0: DateTime<Utc>,
    pub alerts: Vec<Alert>,
}

impl Run {
    pub fn new(cfg: Arc<Config>, start: &str) -> Run {
        Run {
            engine: Engine::new(cfg),
            t0: start.parse().unwrap(),
            alerts: vec![],
        }
    }

    pub fn feed(&mut self, secs: i64, p: &Proc, kind: EventKind, w: Option<&FileView>) {
        let ev = Enriched {
            time: self.t0 + TimeDelta::seconds(secs),
            event: Event {
                ts_ns: 0,
                task: Task {
                    pid: p.pid,
                    tid: p.pid,
                    uid: p.uid,
                    gid: p.uid,
                    comm: p.comm.into(),
                    cgroup_id: 0,
                },
                kind,
            },
            process: Arc::new(ProcessView {
                pid: p.pid,
                ppid: p.ancestry.first().map(|a| a.pid).unwrap_or(1),
                comm: p.comm.into(),
                exe: Some(p.exe.into()),
                argv: p.argv.clone(),
                uid: p.uid,
                user: None,
                container_id: None,
                pod_uid: None,
                kubernetes: None,
                runtime: None,
                cgroup: None,
                ancestry: p.ancestry.clone(),
            }),
            weight: w.cloned(),
        };
        self.engine.on_event(&ev, &mut self.alerts);
    }

    pub fn exec(&mut self, secs: i64, p: &Proc) {
        let kind = EventKind::ProcExec {
            ppid: p.ancestry.first().map(|a| a.pid).unwrap_or(1),
            filename: p.exe.into(),
            argv: p.argv.clone(),
        };
        self.feed(secs, p, kind, None);
    }

    pub fn open(&mut self, secs: i64, p: &Proc, w: &FileView) {
        let kind = EventKind::FileOpen {
            file: FileKey {
                dev: w.dev,
                ino: w.ino,
            },
            fd: 3,
            flags: 0,
            size: w.size,
            syscall: "openat".into(),
            origin: "opened".into(),
        };
        self.feed(secs, p, kind, Some(w));
    }

    pub fn read(&mut self, secs: i64, p: &Proc, w: &FileView, bytes: u64) {
        let kind = EventKind::FileRead {
            file: FileKey {
                dev: w.dev,
                ino: w.ino,
            },
            fd: 3,
            bytes,
            total: bytes,
            reason: ReadReason::Progress,
            syscall: "read".into(),
            instance: 0,
        };
        self.feed(secs, p, kind, Some(w));
    }

    pub fn send(&mut self, secs: i64, p: &Proc, dest: &str, port: u16, bytes: u64) {
        let kind = EventKind::NetSend {
            dest: dest.parse().unwrap(),
            port,
            proto: "tcp".into(),
            bytes,
            total: bytes,
            reason: ReadReason::Progress,
        };
        self.feed(secs, p, kind, None);
    }

    pub fn accept(&mut self, secs: i64, p: &Proc, client: &str) {
        let kind = EventKind::NetAccept {
            client: client.parse().unwrap(),
            client_port: 5000,
            local_port: 8000,
            fd: 7,
        };
        self.feed(secs, p, kind, None);
    }

    pub fn connect(&mut self, secs: i64, p: &Proc, dest: &str, port: u16) {
        let kind = EventKind::NetConnect {
            dest: dest.parse().unwrap(),
            port,
            proto: "tcp".into(),
            fd: 9,
            in_progress: false,
        };
        self.feed(secs, p, kind, None);
    }

    pub fn rules(&self) -> Vec<&str> {
        self.alerts.iter().map(|a| a.rule.as_str()).collect()
    }

    pub fn of(&self, rule: RuleId) -> Vec<&Alert> {
        self.alerts.iter().filter(|a| a.rule == rule.as_str()).collect()
    }
}
