use std::{net::IpAddr, sync::Arc, time::Duration};

use super::*;
use crate::{
    alerts::AlertProcess,
    enrich::{FileView, ProcessView},
    events::{Event, FileKey, ReadReason, Task},
    rules::{bulk_read, exfiltration, gpu_spawn_storm, unexpected_reader},
    state::{
        files::{AssetClass, WeightFormat},
        process::Ancestor,
    },
};

const UNEXPECTED_READER: &str = unexpected_reader::ID.as_str();
const EXFILTRATION: &str = exfiltration::ID.as_str();
const BULK_READ: &str = bulk_read::ID.as_str();
const GPU_SPAWN_STORM: &str = gpu_spawn_storm::ID.as_str();

const SIZE: u64 = 3 << 20;
/// The shell that joined `cat model | nc`: the tree's root.
const SHELL: u32 = 100;
const CAT: u32 = 101;
const NC: u32 = 102;
/// A process outside the shell's tree.
const OUTSIDER: u32 = 999;

fn t(s: i64) -> DateTime<Utc> {
    "2026-11-23T10:00:00Z".parse::<DateTime<Utc>>().unwrap() + TimeDelta::seconds(s)
}

fn ancestry(pid: u32) -> Vec<Ancestor> {
    let a = |pid, comm: &str| Ancestor {
        pid,
        comm: comm.into(),
        exe: None,
    };
    match pid {
        CAT | NC => vec![a(SHELL, "bash"), a(1, "systemd")],
        _ => vec![a(1, "systemd")],
    }
}

fn file(ino: u64, bytes_read: u64) -> AlertFile {
    AlertFile {
        path: format!("/models/m{ino}.safetensors"),
        dev: 8,
        ino,
        size: SIZE,
        bytes_read,
        class: AssetClass::Weights,
    }
}

fn dest(last: u8, bytes_sent: u64) -> AlertNetwork {
    AlertNetwork {
        dest: IpAddr::from([203, 0, 113, last]),
        port: 443,
        bytes_sent,
    }
}

/// A hit of `rule` about `pid` (in the shell's tree) at second `at`.
fn hit(rule: &str, severity: Severity, pid: u32, at: i64) -> Alert {
    Alert {
        id: new_id(),
        time: t(at),
        rule: rule.into(),
        severity,
        summary: format!("{rule} about {pid}"),
        host: "gpu-node-1".into(),
        process: AlertProcess {
            pid,
            comm: if pid == NC { "nc" } else { "cat" }.into(),
            exe: None,
            uid: 1000,
            user: None,
            container_id: None,
            pod: Some("pod-uid-1".into()),
            ancestry: ancestry(pid),
        },
        files: vec![file(1, 0)],
        network: vec![],
        window: Window::at(t(at)),
        incomplete: false,
        dedup_key: format!("{rule}:{pid}"),
        suppressed: 0,
        scope: format!("tree:{SHELL}"),
    }
}

fn all_alive(_: u32) -> bool {
    true
}

/// The tracker after `hits`, and every message it gave.
fn fold(hits: Vec<Alert>) -> (Incidents, Vec<IncidentMessage>) {
    let mut inc = Incidents::new(Duration::from_secs(600));
    let mut out = Vec::new();
    for h in hits {
        inc.on_hit(h, &all_alive, &mut out);
    }
    (inc, out)
}

fn event(pid: u32, at: i64, kind: EventKind, weight: bool) -> Enriched {
    Enriched {
        time: t(at),
        event: Event {
            ts_ns: 0,
            task: Task {
                pid,
                tid: pid,
                uid: 1000,
                gid: 1000,
                comm: "x".into(),
                cgroup_id: 1,
            },
            kind,
        },
        process: Arc::new(ProcessView {
            pid,
            ppid: SHELL,
            comm: "x".into(),
            exe: None,
            argv: vec![],
            uid: 1000,
            user: None,
            container_id: None,
            pod_uid: None,
            runtime: None,
            cgroup: None,
            ancestry: ancestry(pid),
        }),
        weight: weight.then(|| FileView {
            path: std::path::Path::new("/models/m1.safetensors").into(),
            dev: 8,
            ino: 1,
            size: SIZE,
            format: WeightFormat::Safetensors,
            class: AssetClass::Weights,
        }),
    }
}

fn read(pid: u32, at: i64, bytes: u64) -> Enriched {
    let kind = EventKind::FileRead {
        file: FileKey { dev: 8, ino: 1 },
        fd: 3,
        bytes,
        total: bytes,
        reason: ReadReason::Progress,
        syscall: "read".into(),
        instance: 0,
    };
    event(pid, at, kind, true)
}

fn send(pid: u32, at: i64, to: u8, bytes: u64) -> Enriched {
    let kind = EventKind::NetSend {
        dest: IpAddr::from([203, 0, 113, to]),
        port: 443,
        proto: "tcp".into(),
        bytes,
        total: bytes,
        reason: ReadReason::Progress,
    };
    event(pid, at, kind, false)
}

#[test]
fn the_first_hit_opens_an_incident() {
    let (inc, out) = fold(vec![hit(UNEXPECTED_READER, Severity::Medium, CAT, 0)]);
    assert_eq!(out.len(), 1);
    let m = &out[0];
    assert_eq!(m.status, IncidentStatus::Opened);
    assert_eq!(
        (m.alert.rule.as_str(), m.alert.severity),
        (UNEXPECTED_READER, Severity::Medium)
    );
    assert_eq!(m.rules, [UNEXPECTED_READER]);
    assert_eq!(m.incident_id.len(), 32);
    assert_ne!(m.alert.id, m.incident_id);
    assert_eq!((m.first, m.last), (t(0), t(0)));
    assert_eq!(m.pod.as_deref(), Some("pod-uid-1"));
    assert!(m.changes.is_empty() && m.previous_severity.is_none() && m.resolved_by.is_none());
    assert_eq!(inc.open(), 1);
    // Every field of the alert contract, plus the incident's, in one JSON object.
    let v = serde_json::to_value(m).unwrap();
    let contract = serde_json::to_value(hit(UNEXPECTED_READER, Severity::Medium, CAT, 0)).unwrap();
    let incident = [
        "incident_id",
        "status",
        "rules",
        "bytes_read",
        "bytes_sent",
        "first",
        "last",
    ];
    for key in contract
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .chain(incident)
    {
        assert!(v.get(key).is_some(), "{key} missing: {v}");
    }
    assert_eq!(v["status"], "opened");
    assert!(v.get("scope").is_none() && v.get("changes").is_none(), "{v}");
    let back: IncidentMessage = serde_json::from_value(v).unwrap();
    assert_eq!(back.incident_id, m.incident_id);
}

#[test]
fn a_higher_severity_escalates_and_says_from_what() {
    let (_, out) = fold(vec![
        hit(UNEXPECTED_READER, Severity::Medium, CAT, 0),
        hit(UNEXPECTED_READER, Severity::High, CAT, 1),
    ]);
    assert_eq!(out.len(), 2, "{out:#?}");
    let m = &out[1];
    assert_eq!(m.status, IncidentStatus::Escalated);
    assert_eq!(m.incident_id, out[0].incident_id);
    assert_eq!(m.alert.severity, Severity::High);
    assert_eq!(m.changes, [Change::Severity]);
    assert_eq!(m.previous_severity, Some(Severity::Medium));
    assert_eq!(m.rules, [UNEXPECTED_READER], "a rule is listed once");
    assert_eq!(m.last, t(1));
}

#[test]
fn a_new_destination_escalates_at_the_same_severity() {
    let mut first = hit(EXFILTRATION, Severity::Critical, NC, 0);
    first.network = vec![dest(9, 1000)];
    let mut second = hit(EXFILTRATION, Severity::Critical, NC, 5);
    second.network = vec![dest(9, 2000), dest(10, 500)];
    let (_, out) = fold(vec![first, second]);
    assert_eq!(out.len(), 2, "{out:#?}");
    assert_eq!(out[1].changes, [Change::Destination]);
    assert_eq!(out[1].previous_severity, None);
    assert_eq!(out[1].alert.network, [dest(9, 2000), dest(10, 500)]);
    assert_eq!(out[1].bytes_sent, 2500);
}

#[test]
fn a_new_weight_file_escalates_at_the_same_severity() {
    let first = hit(BULK_READ, Severity::High, CAT, 0);
    let mut second = hit(BULK_READ, Severity::High, CAT, 5);
    second.files = vec![file(2, SIZE)];
    let (_, out) = fold(vec![first, second]);
    assert_eq!(out.len(), 2, "{out:#?}");
    assert_eq!(out[1].changes, [Change::File]);
    let inos: Vec<u64> = out[1].alert.files.iter().map(|f| f.ino).collect();
    assert_eq!(inos, [1, 2], "the incident's files, in the order named");
}

#[test]
fn a_repeat_or_a_new_rule_at_the_same_severity_says_nothing() {
    let (inc, out) = fold(vec![
        hit(UNEXPECTED_READER, Severity::High, CAT, 0),
        hit(UNEXPECTED_READER, Severity::High, CAT, 1),
        hit(BULK_READ, Severity::High, CAT, 2),
        hit(UNEXPECTED_READER, Severity::Medium, CAT, 3),
    ]);
    assert_eq!(out.len(), 1, "{out:#?}");
    // Folded in all the same: the closing summary lists every rule, in order.
    let mut inc = inc;
    let mut done = Vec::new();
    inc.stop(t(4), &mut done);
    assert_eq!(done[0].rules, [UNEXPECTED_READER, BULK_READ]);
    assert_eq!(done[0].last, t(3));
}

#[test]
fn other_scopes_are_other_incidents() {
    let mut storm = hit(GPU_SPAWN_STORM, Severity::High, 500, 0);
    storm.scope = format!("{GPU_SPAWN_STORM}:uid:1000");
    let mut other_tree = hit(UNEXPECTED_READER, Severity::Medium, 700, 0);
    other_tree.scope = "tree:700".into();
    let (inc, out) = fold(vec![
        hit(UNEXPECTED_READER, Severity::Medium, CAT, 0),
        storm,
        other_tree,
    ]);
    assert_eq!(out.len(), 3);
    assert!(out.iter().all(|m| m.status == IncidentStatus::Opened));
    assert_eq!(inc.open(), 3);
    let mut ids: Vec<&str> = out.iter().map(|m| m.incident_id.as_str()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3);
}

#[test]
fn the_tree_is_resolved_when_its_last_process_exits() {
    let (mut inc, _) = fold(vec![hit(UNEXPECTED_READER, Severity::Medium, CAT, 0)]);
    // The sender is in the tree because its parent is: its sends make it a member.
    inc.observe(&send(NC, 1, 9, 100));
    let mut out = Vec::new();
    for pid in [CAT, NC] {
        inc.on_exit(pid, t(2), &mut out);
        assert!(
            out.is_empty(),
            "resolved while the shell ({SHELL}) still runs: {out:#?}"
        );
    }
    // A process of no incident exiting changes nothing.
    inc.on_exit(OUTSIDER, t(2), &mut out);
    inc.on_exit(SHELL, t(3), &mut out);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].status, IncidentStatus::Resolved);
    assert_eq!(out[0].resolved_by, Some(Resolution::Exited));
    assert_eq!(out[0].alert.time, t(3));
    assert_eq!(inc.open(), 0);
    assert!(inc.members.is_empty(), "nothing is kept of a resolved incident");
    // The same tree hit again later is a new incident.
    inc.on_hit(
        hit(UNEXPECTED_READER, Severity::Medium, CAT, 9),
        &all_alive,
        &mut out,
    );
    assert_eq!(out[1].status, IncidentStatus::Opened);
    assert_ne!(out[1].incident_id, out[0].incident_id);
}

#[test]
fn a_hit_naming_exited_processes_does_not_keep_the_tree_open() {
    let mut inc = Incidents::new(Duration::from_secs(600));
    let mut out = Vec::new();
    inc.on_hit(hit(BULK_READ, Severity::High, CAT, 0), &|_| false, &mut out);
    assert_eq!(out.len(), 1);
    inc.tick(t(1), &mut out);
    assert_eq!(out.len(), 2, "{out:#?}");
    assert_eq!(out[1].resolved_by, Some(Resolution::Exited));
}

#[test]
fn a_quiet_incident_is_resolved_after_the_idle_window() {
    let mut storm = hit(GPU_SPAWN_STORM, Severity::High, 500, 0);
    storm.scope = format!("{GPU_SPAWN_STORM}:uid:1000");
    let mut inc = Incidents::new(Duration::from_secs(60));
    let mut out = Vec::new();
    inc.on_hit(storm, &all_alive, &mut out);
    inc.on_hit(
        hit(UNEXPECTED_READER, Severity::Medium, CAT, 30),
        &all_alive,
        &mut out,
    );
    // Rate scopes have no processes: exits do not end them.
    inc.on_exit(500, t(1), &mut out);
    inc.tick(t(59), &mut out);
    assert_eq!(out.len(), 2, "{out:#?}");
    // Activity keeps an incident open: a read by the tree at 50 s.
    inc.observe(&read(CAT, 50, 4096));
    inc.tick(t(60), &mut out);
    assert_eq!(out.len(), 3, "{out:#?}");
    assert_eq!(out[2].rules, [GPU_SPAWN_STORM]);
    assert_eq!(out[2].resolved_by, Some(Resolution::Idle));
    assert!(
        out[2].alert.summary.contains("nothing happened for 1 min"),
        "{}",
        out[2].alert.summary
    );
    inc.tick(t(109), &mut out);
    assert_eq!(out.len(), 3, "the tree read at 50 s: idle only from 110 s");
    inc.tick(t(110), &mut out);
    assert_eq!(out.len(), 4);
    assert_eq!(out[3].rules, [UNEXPECTED_READER]);
    assert_eq!(inc.open(), 0);
}

#[test]
fn the_summary_has_the_final_totals_counted_once() {
    let mut inc = Incidents::new(Duration::from_secs(600));
    let mut out = Vec::new();
    // Events before any incident are the engine's to count (a hit carries them).
    inc.observe(&read(CAT, 0, 1 << 20));
    let mut opened = hit(UNEXPECTED_READER, Severity::Medium, CAT, 0);
    opened.files = vec![file(1, 1 << 20)];
    inc.on_hit(opened, &all_alive, &mut out);
    inc.observe(&read(CAT, 1, 1 << 20));
    inc.observe(&send(NC, 1, 9, 512 << 10));
    // The exfiltration hit counts what the tree read and sent so far: the same bytes.
    let mut exfil = hit(EXFILTRATION, Severity::Critical, NC, 2);
    exfil.files = vec![file(1, 2 << 20)];
    exfil.network = vec![dest(9, 512 << 10)];
    inc.on_hit(exfil, &all_alive, &mut out);
    assert_eq!(out[1].changes, [Change::Severity, Change::Destination]);
    assert_eq!((out[1].bytes_read, out[1].bytes_sent), (2 << 20, 512 << 10));
    // The rest of the transfer, after every hit.
    inc.observe(&read(CAT, 3, 1 << 20));
    inc.observe(&send(NC, 3, 9, SIZE - (512 << 10)));
    // Not weights, not the tree: not counted.
    inc.observe(&event(CAT, 3, read(CAT, 3, 7).event.kind, false));
    inc.observe(&send(OUTSIDER, 3, 9, 1 << 30));
    for pid in [CAT, NC, SHELL] {
        inc.on_exit(pid, t(4), &mut out);
    }
    let done = out.last().unwrap();
    assert_eq!(done.status, IncidentStatus::Resolved);
    assert_eq!((done.bytes_read, done.bytes_sent), (SIZE, SIZE));
    assert_eq!(done.alert.files[0].bytes_read, SIZE);
    assert_eq!(done.alert.network, [dest(9, SIZE)]);
    assert_eq!(done.rules, [UNEXPECTED_READER, EXFILTRATION]);
    assert_eq!((done.first, done.last), (t(0), t(3)));
    assert_eq!(
        done.alert.window,
        Window {
            start: t(0),
            end: t(3)
        }
    );
    // Named after the hit that set the severity.
    assert_eq!(
        (done.alert.rule.as_str(), done.alert.severity),
        (EXFILTRATION, Severity::Critical)
    );
    assert_eq!(done.alert.process.pid, NC);
    let s = &done.alert.summary;
    assert!(
        s.contains("its processes exited")
            && s.contains("read 3.0 MiB from 1 weight file")
            && s.contains("sent 3.0 MiB to 1 destination"),
        "{s}"
    );
}

#[test]
fn stopping_resolves_every_open_incident_oldest_first() {
    let mut storm = hit(GPU_SPAWN_STORM, Severity::High, 500, 1);
    storm.scope = format!("{GPU_SPAWN_STORM}:uid:1000");
    let (mut inc, opened) = fold(vec![hit(UNEXPECTED_READER, Severity::Medium, CAT, 0), storm]);
    let mut out = Vec::new();
    inc.stop(t(5), &mut out);
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|m| m.resolved_by == Some(Resolution::Stopped)));
    let ids = |v: &[IncidentMessage]| v.iter().map(|m| m.incident_id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&out), ids(&opened));
    assert_eq!(inc.open(), 0);
}
