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
