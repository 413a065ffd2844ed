//! The recorded scenarios under tests/scenarios replayed through the rules: each must raise
//! exactly the rules its `.expected` file lists (one id per line; empty = nothing at all).
//! Recordings come from real runs (tests/scenarios/record.sh); no kernel or root is needed here.
use std::{collections::BTreeSet, path::Path, sync::Arc};

fn scenarios_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/scenarios")
}

fn replay(name: &str) -> (BTreeSet<String>, Vec<llmwatch::alerts::Alert>) {
    let dir = scenarios_dir();
    let config = dir.join(format!("{name}.yaml"));
    let cfg = if config.exists() {
        llmwatch::config::load(&config).unwrap()
    } else {
        Default::default()
    };
    let input = std::fs::File::open(dir.join(format!("{name}.jsonl"))).unwrap();
    let mut alerts = Vec::new();
    let stats = llmwatch::replay::replay(std::io::BufReader::new(input), Arc::new(cfg), |a| {
        alerts.push(a.clone())
    })
    .unwrap();
    assert_eq!(stats.bad_lines, 0, "{name}: {:?}", stats.errors);
    assert!(stats.events > 0, "{name}: empty recording");
    (alerts.iter().map(|a| a.rule.clone()).collect(), alerts)
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
        let (got, alerts) = replay(&name);
        assert_eq!(got, expected, "{name}: {alerts:#?}");
    }
}

#[test]
fn the_exfiltration_recording_names_files_destination_and_chain() {
    let (_, alerts) = replay("exfil_cat_curl");
    let a = alerts.iter().find(|a| a.rule == "weight.exfiltration").unwrap();
    assert!(a.files[0].path.ends_with("model.safetensors"));
    assert_eq!(a.files[0].bytes_read, a.files[0].size);
    assert_eq!(a.network[0].dest.to_string(), "127.0.0.1");
    // Raised as soon as 10% of what was read had left, not when the upload finished.
    assert!(a.network[0].bytes_sent * 10 >= a.files[0].bytes_read);
    assert!(a.process.ancestry.iter().any(|p| p.comm == "bash"));
}

#[test]
fn replay_is_deterministic() {
    let (_, a) = replay("gpu_spawn_storm");
    let (_, b) = replay("gpu_spawn_storm");
    let strip = |v: Vec<llmwatch::alerts::Alert>| -> Vec<(String, String, String)> {
        v.into_iter().map(|a| (a.rule, a.summary, a.dedup_key)).collect()
    };
    assert_eq!(strip(a), strip(b));
}
