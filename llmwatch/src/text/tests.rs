use serde_json::json;

use super::*;

fn message(extra: serde_json::Value) -> IncidentMessage {
    let mut v = json!({
        "id": "0123456789abcdef0123456789abcdef",
        "time": "2026-11-23T10:00:05.123Z",
        "rule": "weights.exfiltration",
        "severity": "critical",
        "summary": "curl read 2.0 GiB of /models/m.safetensors and sent 2.0 GiB to 203.0.113.9:443",
        "host": "gpu-1",
        "process": {"pid": 4242, "comm": "curl", "exe": "/usr/bin/curl", "uid": 1000,
                    "user": "alice", "container_id": null, "pod": null, "ancestry": []},
        "files": [], "network": [],
        "window": {"start": "2026-11-23T10:00:00Z", "end": "2026-11-23T10:00:05Z"},
        "incomplete": false,
        "dedup_key": "k",
        "incident_id": "fedcba9876543210fedcba9876543210",
        "status": "opened",
        "rules": ["weights.exfiltration"],
        "bytes_read": 0, "bytes_sent": 0,
        "first": "2026-11-23T10:00:00Z", "last": "2026-11-23T10:00:05Z",
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    serde_json::from_value(v).unwrap()
}

#[test]
fn an_opened_incident_is_one_line_with_time_severity_status_rule_summary_and_process() {
    let line = incident_line(&message(json!({})), Colour::Never);
    assert_eq!(
        line,
        "2026-11-23 10:00:05Z CRITICAL opened    weights.exfiltration  curl read 2.0 GiB of \
         /models/m.safetensors and sent 2.0 GiB to 203.0.113.9:443  process=curl[4242] \
         user=alice  (incident fedcba98)"
    );
}

#[test]
fn an_escalation_says_what_changed_and_a_resolution_why() {
    let up = incident_line(
        &message(json!({"status": "escalated", "previous_severity": "medium",
                        "changes": ["severity", "destination"],
                        "rules": ["weights.unexpected_reader", "weights.exfiltration"]})),
        Colour::Never,
    );
    assert!(up.contains(" escalated "), "{up}");
    assert!(
        up.ends_with(
            "(rules weights.unexpected_reader, weights.exfiltration; was medium; \
             new severity, destination; incident fedcba98)"
        ),
        "{up}"
    );
    let done = incident_line(
        &message(json!({"status": "resolved", "resolved_by": "exited"})),
        Colour::Never,
    );
    assert!(done.contains(" resolved "), "{done}");
    assert!(done.contains("by exited"), "{done}");
}

#[test]
fn the_pod_is_named_when_known_and_left_out_when_not() {
    let mut m = message(json!({}));
    assert!(!incident_line(&m, Colour::Never).contains("pod="));
    m.alert.process.pod = Some("8d2c1f8e-pod".into());
    assert!(incident_line(&m, Colour::Never).contains("user=alice pod=8d2c1f8e-pod"));
    // The incident's pod stands in when this hit's process has none.
    m.alert.process.pod = None;
    m.pod = Some("opener-pod".into());
    assert!(incident_line(&m, Colour::Never).contains(" pod=opener-pod"));
}

#[test]
fn a_user_without_a_name_is_shown_by_uid() {
    let mut m = message(json!({}));
    m.alert.process.user = None;
    assert!(incident_line(&m, Colour::Never).contains("process=curl[4242] user=1000"));
}

#[test]
fn colour_only_paints_and_never_changes_the_words() {
    let m = message(json!({}));
    let plain = incident_line(&m, Colour::Never);
    let painted = incident_line(&m, Colour::Always);
    assert!(!plain.contains('\x1b'));
    assert!(painted.contains("\x1b[1;31mCRITICAL"), "{painted:?}");
    let stripped: String = {
        let mut out = String::new();
        let mut chars = painted.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    assert_eq!(stripped, plain);
}

#[test]
fn no_colour_when_not_a_terminal() {
    assert_eq!(Colour::for_terminal(false), Colour::Never);
}

#[test]
fn the_start_up_summary_says_what_is_watched_chosen_and_lost() {
    use crate::probes::{DataPaths, HookStatus, tracefs::TracefsState};
    let hook = |hook: &'static str, attached: bool| HookStatus {
        program: "p",
        hook,
        purpose: "what it sees",
        required: true,
        attached,
        error: (!attached).then(|| "EPERM".to_string()),
        instead: None,
    };
    let hooks = [
        hook("raw_tracepoint/sys_exit", true),
        hook("raw_tracepoint/sock_send_length", false),
    ];
    let paths = DataPaths {
        reads: "syscall exit hook",
        sends: "syscall exit hook",
        mmap_touch: "/proc/PID/smaps samples",
        touch: crate::probes::TouchCounter::Smaps,
        io_uring: "io_uring completions",
        descriptors: "syscall exits",
    };
    let roots = [std::path::PathBuf::from("/models")];
    let degraded = ["no sock_send_length: bytes sent are counted at syscall exit".to_string()];
    let status = Status::AgentReady {
        hooks: &hooks,
        missing_offsets: &[],
        tracefs: &TracefsState::Mounted,
        watched_files: 3,
        watched_bytes: 3 << 30,
        roots: &roots,
        scan: &Default::default(),
        processes: 1,
        metrics_addr: Some("127.0.0.1:9477".parse().unwrap()),
        syscall_hook_fallback: Some("tp_btf: EPERM"),
        hook: &crate::probes::fast::HookChoice {
            hook_path: crate::probes::fast::HookPath::Tracepoint,
            hook_path_fallback: Some("fexit: EPERM".into()),
        },
        watch_mode: "inotify",
        watch_error: None,
        degraded: &degraded,
        bpf_objects: &Default::default(),
        data_paths: &paths,
        seeded: &Default::default(),
    };
    let text = status_text(&status, &["https://hooks.example/x".into()], Colour::Never);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].ends_with("llmwatch ready: watching 3 files (3.0 GiB) under /models; 1 process known"),
        "{text}"
    );
    let has = |want: &str| lines.iter().any(|l| l.contains(want));
    assert!(
        has(
            "hooks:             1 of 2 attached; tracepoint path: syscalls through raw_tracepoint/sys_exit (fexit refused: fexit: EPERM) (tp_btf refused: tp_btf: EPERM)"
        ),
        "{text}"
    );
    assert!(has("sends:             syscall exit hook"), "{text}");
    assert!(has("mmap_touch:        /proc/PID/smaps samples"), "{text}");
    assert!(has("metrics:           http://127.0.0.1:9477/metrics"), "{text}");
    assert!(
        has("alerts:            this output and https://hooks.example/x"),
        "{text}"
    );
    assert!(
        has("degraded (what this host lacks, and what is lost):"),
        "{text}"
    );
    assert!(
        has("    - no sock_send_length: bytes sent are counted at syscall exit"),
        "{text}"
    );
    assert!(lines.len() <= 12, "not short: {text}");

    // No model directory there yet: said once, not as "0 files under" each missing one.
    let roots = [std::path::PathBuf::from("/models"), "/opt/models".into()];
    let scan = crate::state::files::ScanReport {
        roots_missing: roots.to_vec(),
        ..Default::default()
    };
    let status = Status::AgentReady {
        hooks: &hooks,
        missing_offsets: &[],
        tracefs: &TracefsState::Mounted,
        watched_files: 0,
        watched_bytes: 0,
        roots: &roots,
        scan: &scan,
        processes: 2,
        metrics_addr: None,
        syscall_hook_fallback: None,
        hook: &crate::probes::fast::HookChoice {
            hook_path: crate::probes::fast::HookPath::Fentry,
            hook_path_fallback: None,
        },
        watch_mode: "inotify",
        watch_error: None,
        degraded: &[],
        bpf_objects: &Default::default(),
        data_paths: &paths,
        seeded: &Default::default(),
    };
    let text = status_text(&status, &[], Colour::Never);
    assert!(
        text.contains("fentry path: syscalls through fexit/__x64_sys_* (per syscall)"),
        "{text}"
    );
    assert!(
        text.lines().next().unwrap().ends_with(
            "llmwatch ready: watching nothing yet: none of the 2 model directories exists (each is \
             watched for creation); 2 processes known"
        ),
        "{text}"
    );
    assert!(
        text.contains("  missing:           /models, /opt/models (watched for creation)"),
        "{text}"
    );
}

#[test]
fn an_event_is_one_line_naming_kind_process_file_and_its_fields() {
    use crate::{
        enrich::{FileView, ProcessView},
        events::{Event, EventKind, FileKey, ReadReason, Task},
        state::files::{AssetClass, WeightFormat},
    };
    let e = Enriched {
        time: "2026-11-23T10:00:00Z".parse().unwrap(),
        event: Event {
            ts_ns: 1,
            task: Task {
                pid: 77,
                tid: 77,
                uid: 1000,
                gid: 1000,
                comm: "python3".into(),
                cgroup_id: 1,
            },
            kind: EventKind::FileRead {
                file: FileKey { dev: 8, ino: 1 },
                fd: 3,
                bytes: 4096,
                total: 8192,
                reason: ReadReason::Progress,
                syscall: "pread64".into(),
                instance: 0,
            },
        },
        process: std::sync::Arc::new(ProcessView {
            pid: 77,
            ppid: 1,
            comm: "python3".into(),
            exe: None,
            argv: vec![],
            uid: 1000,
            user: Some("alice".into()),
            container_id: None,
            pod_uid: Some("pod-uid".into()),
            kubernetes: None,
            runtime: None,
            cgroup: None,
            ancestry: vec![],
        }),
        weight: Some(FileView {
            path: std::path::Path::new("/models/m.safetensors").into(),
            dev: 8,
            ino: 1,
            size: 1 << 20,
            format: WeightFormat::Safetensors,
            class: AssetClass::Weights,
        }),
    };
    let line = event_line(&e);
    assert!(
        line.starts_with(
            "2026-11-23 10:00:00Z event              file_read  process=python3[77] user=alice pod=pod-uid  file=/models/m.safetensors"
        ),
        "{line}"
    );
    for field in [" fd=3", " bytes=4096", " total=8192", " syscall=pread64"] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
}

#[test]
fn a_pod_the_runtime_named_is_shown_by_namespace_name_and_container() {
    let mut m = message(json!({}));
    m.alert.process.pod = Some("8d2c1f8e-pod".into());
    m.alert.process.kubernetes = Some(crate::state::pods::PodIdentity {
        namespace: "inference".into(),
        pod: "vllm-0".into(),
        pod_uid: "8d2c1f8e-pod".into(),
        container: "server".into(),
        workload: None,
        labels: Default::default(),
        source: "containerd".into(),
    });
    let line = incident_line(&m, Colour::Never);
    assert!(
        line.contains("user=alice pod=inference/vllm-0 container=server"),
        "{line}"
    );
    assert!(!line.contains("8d2c1f8e"), "{line}");
}
