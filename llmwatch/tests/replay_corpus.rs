//! The recorded scenarios under tests/scenarios replayed through the rules and the incidents:
//! the incidents of each must have hit exactly the rules its `.expected` file lists (one id per
//! line; empty = nothing at all), and every incident must end with one summary.
//! Recordings come from real runs (tests/scenarios/record.sh); no kernel or root is needed here.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::Arc,
};

use llmwatch::alerts::incidents::{Change, IncidentMessage, IncidentStatus};

const UNEXPECTED_READER: &str = llmwatch::rules::unexpected_reader::ID.as_str();
const EXFILTRATION: &str = llmwatch::rules::exfiltration::ID.as_str();
const BULK_READ: &str = llmwatch::rules::bulk_read::ID.as_str();

fn scenarios_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/scenarios")
}

/// The rules the scenario's incidents hit, and every message, in order.
fn replay(name: &str) -> (BTreeSet<String>, Vec<IncidentMessage>) {
    let dir = scenarios_dir();
    let config = dir.join(format!("{name}.yaml"));
    let cfg = if config.exists() {
        llmwatch::config::load(&config).unwrap()
    } else {
        Default::default()
    };
    let input = std::fs::File::open(dir.join(format!("{name}.jsonl"))).unwrap();
    let mut messages = Vec::new();
    let stats = llmwatch::replay::replay(std::io::BufReader::new(input), Arc::new(cfg), |m| {
        messages.push(m.clone())
    })
    .unwrap();
    assert_eq!(stats.bad_lines, 0, "{name}: {:?}", stats.errors);
    assert!(stats.events > 0, "{name}: empty recording");
    // Each incident: opened first, resolved last and once, the rules of its summary those it hit.
    let mut by_incident: BTreeMap<&str, Vec<&IncidentMessage>> = BTreeMap::new();
    for m in &messages {
        by_incident.entry(&m.incident_id).or_default().push(m);
    }
    let mut rules = BTreeSet::new();
    for (id, ms) in &by_incident {
        let statuses: Vec<IncidentStatus> = ms.iter().map(|m| m.status).collect();
        assert_eq!(
            statuses.first(),
            Some(&IncidentStatus::Opened),
            "{name} {id}: {ms:#?}"
        );
        assert_eq!(
            statuses.last(),
            Some(&IncidentStatus::Resolved),
            "{name} {id}: {ms:#?}"
        );
        assert_eq!(
            statuses
                .iter()
                .filter(|s| **s == IncidentStatus::Resolved)
                .count(),
            1,
            "{name} {id}: {ms:#?}"
        );
        rules.extend(ms.last().unwrap().rules.iter().cloned());
    }
    assert_eq!(stats.incidents as usize, by_incident.len());
    assert_eq!(stats.messages as usize, messages.len());
    (rules, messages)
}

#[test]
fn every_recorded_scenario_raises_exactly_its_expected_rules() {
    let mut names: Vec<String> = std::fs::read_dir(scenarios_dir())
        .unwrap()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".jsonl")
                .map(str::to_string)
        })
        .collect();
    names.sort();
    assert!(names.len() >= 5, "corpus is missing scenarios: {names:?}");
    for name in names {
        let expected_text = std::fs::read_to_string(scenarios_dir().join(format!("{name}.expected")))
            .unwrap_or_else(|_| panic!("{name}.jsonl has no {name}.expected"));
        let expected: BTreeSet<String> = expected_text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        let (got, messages) = replay(&name);
        assert_eq!(got, expected, "{name}: {messages:#?}");
    }
}

#[test]
fn the_exfiltration_recording_is_one_incident_that_grows() {
    let (_, messages) = replay("exfil_cat_curl");
    let ids: BTreeSet<&str> = messages.iter().map(|m| m.incident_id.as_str()).collect();
    assert_eq!(ids.len(), 1, "cat | curl is one incident: {messages:#?}");
    let statuses: Vec<(IncidentStatus, &str)> = messages
        .iter()
        .map(|m| (m.status, m.alert.rule.as_str()))
        .collect();
    // The reader opens it (high: it read more than half the file), the upload makes it
    // critical; the bulk read (high, like the reader's hit) says nothing of its own.
    assert_eq!(
        statuses,
        [
            (IncidentStatus::Opened, UNEXPECTED_READER),
            (IncidentStatus::Escalated, EXFILTRATION),
            (IncidentStatus::Resolved, EXFILTRATION),
        ],
        "{messages:#?}"
    );
    let exfil = &messages[1];
    assert_eq!(exfil.changes, [Change::Severity, Change::Destination]);
    assert!(exfil.alert.files[0].path.ends_with("model.safetensors"));
    assert_eq!(exfil.alert.files[0].bytes_read, exfil.alert.files[0].size);
    assert_eq!(exfil.alert.network[0].dest.to_string(), "127.0.0.1");
    // Raised as soon as 10% of what was read had left, not when the upload finished.
    assert!(exfil.alert.network[0].bytes_sent * 10 >= exfil.alert.files[0].bytes_read);
    assert!(exfil.alert.process.ancestry.iter().any(|p| p.comm == "bash"));
    // The summary has the end of the upload: the whole file read and sent (curl adds its
    // request head), every rule hit in order.
    let done = &messages[2];
    let size = done.alert.files[0].size;
    assert_eq!(done.bytes_read, size);
    assert!(
        done.bytes_sent >= size && done.bytes_sent < size + 4096,
        "{done:#?}"
    );
    assert_eq!(done.rules, [UNEXPECTED_READER, BULK_READ, EXFILTRATION]);
}

#[test]
fn replay_is_deterministic() {
    let (_, a) = replay("gpu_spawn_storm");
    let (_, b) = replay("gpu_spawn_storm");
    let strip = |v: Vec<IncidentMessage>| -> Vec<(IncidentStatus, String, String, Vec<String>)> {
        v.into_iter()
            .map(|m| (m.status, m.alert.rule, m.alert.summary, m.rules))
            .collect()
    };
    assert_eq!(strip(a), strip(b));
}
