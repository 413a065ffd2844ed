//! One `cat model | nc` is one incident, as a receiver sees it on the agent's stdout: opened by
//! the first rule hit, escalated when a later hit is more severe or names a new file or
//! destination, and resolved once the tree's processes have exited (or it stayed quiet for
//! `incidents.idle`), with the final totals. The real agent, real processes and a real socket
//! (root).
use std::{io::Write, path::Path};

use llmwatch_e2e::{
    Agent, TempDir, Value, http_get, is_incident, is_weight_incident, own_tree, secs, tcp_sink,
    write_safetensors,
};

fn statuses(messages: &[Value]) -> Vec<(String, String, String)> {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    messages
        .iter()
        .map(|m| (s(&m["status"]), s(&m["rule"]), s(&m["severity"])))
        .collect()
}

/// The incident's summary about `model` that `comm` opened.
fn resolved_about(model: &Path, comm: &'static str) -> impl Fn(&Value) -> bool {
    let path = model.to_str().unwrap().to_string();
    move |v: &Value| {
        is_weight_incident(v)
            && v["status"] == "resolved"
            && v["files"][0]["path"] == path.as_str()
            && v["process"]["comm"] == comm
    }
}

#[test]
fn cat_piped_to_nc_is_one_incident_that_grows_and_ends_with_its_totals() {
    let dir = TempDir::new("incident");
    let cfgdir = TempDir::new("incident-cfg");
    let model = dir.path().join("model.safetensors");
    let size: u64 = 3 * 1024 * 1024 + 777;
    write_safetensors(&model, size as usize);
    // Idle long enough that only the tree's exit can resolve it here; business hours all the
    // time, so the rules are the same whenever the test runs (no weight.off_hours_access).
    let cfg = cfgdir.path().join("llmwatch.yaml");
    std::fs::write(
        &cfg,
        "incidents:\n  idle: 10m\nbusiness_hours: {timezone: UTC, days: [mon, tue, wed, thu, fri, sat, sun], \
         start: '00:00', end: '24:00'}\n",
    )
    .unwrap();
    let mut agent = Agent::watching(&[dir.path()], &["--config", cfg.to_str().unwrap()]);

    // The reader (cat) and the sender (nc) are siblings in one shell's tree.
    let (port, sink) = tcp_sink();
    let status = own_tree(&format!("cat {} | nc -N 127.0.0.1 {port}", model.display()))
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(sink.join().unwrap(), size);

    // The summary is the positive marker: every message of the incident comes before it.
    let done = agent
        .wait_for(secs(20), |v| {
            is_weight_incident(v)
                && v["status"] == "resolved"
                && v["files"][0]["path"] == model.to_str().unwrap()
        })
        .unwrap_or_else(|| panic!("no resolved incident: {:#?}", agent.seen));
    let id = done["incident_id"].clone();
    let mut messages = agent.collect_for(secs(0), |v| is_incident(v) && v["incident_id"] == id);
    messages.push(done.clone());
    // Which hit comes first races (the reader's fraction against the sender's bytes): the
    // exfiltration usually opens it at critical, or the reader at high and the exfiltration
    // escalates it. Either way: one opening, at most one escalation (to critical, naming the
    // destination), one summary; the other hits (bulk read, the reader) join silently.
    let got = statuses(&messages);
    let own = |s: &str, r: &str, v: &str| (s.to_string(), r.to_string(), v.to_string());
    let first_exfil = [
        own("opened", "weight.exfiltration", "critical"),
        own("resolved", "weight.exfiltration", "critical"),
    ];
    let first_reader = [
        own("opened", "weight.unexpected_reader", "high"),
        own("escalated", "weight.exfiltration", "critical"),
        own("resolved", "weight.exfiltration", "critical"),
    ];
    assert!(
        got == first_exfil || got == first_reader,
        "{got:?}: {messages:#?}"
    );
    if got == first_reader {
        assert_eq!(
            messages[1]["changes"],
            serde_json::json!(["severity", "destination"])
        );
        assert_eq!(messages[1]["previous_severity"], "high");
    }
    assert!(
        messages.iter().all(|m| m["id"] != id),
        "each message has its own id"
    );

    // The closing summary: the final totals, not the ones when the rules fired.
    assert_eq!(done["resolved_by"], "exited", "{done}");
    assert_eq!(done["bytes_read"], size, "{done}");
    assert_eq!(done["bytes_sent"], size, "{done}");
    assert_eq!(done["files"][0]["bytes_read"], size);
    assert_eq!(done["files"].as_array().unwrap().len(), 1);
    let net = done["network"].as_array().unwrap();
    assert_eq!(net.len(), 1, "{done}");
    assert_eq!(
        (&net[0]["dest"], &net[0]["port"], &net[0]["bytes_sent"]),
        (&"127.0.0.1".into(), &port.into(), &size.into())
    );
    let mut rules: Vec<&str> = done["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(rules[0], messages[0]["rule"], "in the order first hit: {done}");
    rules.sort();
    assert_eq!(
        rules,
        [
            "weight.bulk_read",
            "weight.exfiltration",
            "weight.unexpected_reader"
        ],
        "{done}"
    );
    assert!(
        done["first"].as_str().unwrap() <= done["last"].as_str().unwrap(),
        "{done}"
    );
    assert_eq!(done["window"]["start"], done["first"]);
    let summary = done["summary"].as_str().unwrap();
    assert!(
        summary.contains("its processes exited") && summary.contains("sent 3.0 MiB to 1 destination"),
        "{summary}"
    );
    // The rules' own hits were three separate ones: the folding is what changed.
    let hits = agent.collect_for(secs(0), |v| {
        v["kind"] == "rule_hit" && v["files"][0]["path"] == model.to_str().unwrap()
    });
    let mut hit_rules: Vec<&str> = hits.iter().map(|h| h["rule"].as_str().unwrap()).collect();
    hit_rules.sort();
    assert_eq!(hit_rules, rules, "{hits:#?}");

    // Nothing more about that tree: a later reader in a tree of its own is a new incident, and
    // once its summary is in, anything the first tree still caused would have come before it.
    let status = own_tree(&format!("cat {} > /dev/null", model.display()))
        .status()
        .unwrap();
    assert!(status.success());
    let marker = agent
        .wait_for(secs(20), |v| {
            resolved_about(&model, "cat")(v) && v["incident_id"] != id
        })
        .unwrap_or_else(|| panic!("no incident for the marker: {:#?}", agent.seen));
    assert_ne!(marker["incident_id"], id);
    let later: Vec<&Value> = agent
        .seen
        .iter()
        .filter(|v| is_weight_incident(v) && v["incident_id"] != marker["incident_id"])
        .filter(|v| v["files"][0]["path"] == model.to_str().unwrap())
        .collect();
    assert!(
        later.is_empty(),
        "the tree raised more after its summary: {later:#?}"
    );

    // Counted: the marker's incident opened at high (cat read the whole file, sent nothing),
    // the rule hits by rule.
    let addr = agent.ready["metrics_addr"].as_str().unwrap().to_string();
    let (_, metrics) = http_get(&addr, "/metrics");
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{series} not in {metrics}"))
    };
    assert!(
        value("llmwatch_incidents_total{severity=\"high\"}") >= 1.0,
        "{metrics}"
    );
    assert!(value("llmwatch_alerts_total{rule=\"weight.exfiltration\",severity=\"critical\"}") >= 1.0);
    value("llmwatch_incidents_open");
}

#[test]
fn a_second_file_escalates_and_a_quiet_tree_is_resolved_when_idle() {
    let dir = TempDir::new("incident-idle");
    let cfgdir = TempDir::new("incident-idle-cfg");
    let first = dir.path().join("a.safetensors");
    let second = dir.path().join("b.safetensors");
    let size: u64 = 1024 * 1024;
    write_safetensors(&first, size as usize);
    write_safetensors(&second, size as usize);
    let idle = secs(2).as_secs().max(1);
    let cfg = cfgdir.path().join("llmwatch.yaml");
    std::fs::write(
        &cfg,
        format!(
            "incidents:\n  idle: {idle}s\nbusiness_hours: {{timezone: UTC, days: [mon, tue, wed, thu, fri, sat, sun], \
             start: '00:00', end: '24:00'}}\n"
        ),
    )
    .unwrap();
    let mut agent = Agent::watching(&[dir.path()], &["--config", cfg.to_str().unwrap()]);

    // One tree reads two files, then waits (alive, quiet) for a line that comes only after
    // the incident is over: only `incidents.idle` can resolve it.
    let mut tree = own_tree(&format!(
        "cat {} > /dev/null; cat {} > /dev/null; read _",
        first.display(),
        second.display()
    ))
    .stdin(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let done = agent
        .wait_for(secs(30), |v| {
            is_weight_incident(v)
                && v["status"] == "resolved"
                && v["files"][0]["path"] == first.to_str().unwrap()
        })
        .unwrap_or_else(|| panic!("no resolved incident: {:#?}", agent.seen));
    assert!(
        tree.try_wait().unwrap().is_none(),
        "the tree is still running: only idleness resolved it"
    );
    tree.stdin.take().unwrap().write_all(b"\n").unwrap();
    assert!(tree.wait().unwrap().success());
    assert_eq!(done["resolved_by"], "idle", "{done}");
    let id = done["incident_id"].clone();
    let mut messages = agent.collect_for(secs(0), |v| is_incident(v) && v["incident_id"] == id);
    messages.push(done.clone());
    let got = statuses(&messages);
    let own = |s: &str, r: &str, v: &str| (s.to_string(), r.to_string(), v.to_string());
    // The second file at the same severity is news: one escalation naming it; the bulk reads
    // of each (high too) join silently.
    assert_eq!(
        got,
        [
            own("opened", "weight.unexpected_reader", "high"),
            own("escalated", "weight.unexpected_reader", "high"),
            own("resolved", "weight.unexpected_reader", "high"),
        ],
        "{messages:#?}"
    );
    assert_eq!(
        messages[1]["changes"],
        serde_json::json!(["file"]),
        "{messages:#?}"
    );
    let paths: Vec<&str> = done["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [first.to_str().unwrap(), second.to_str().unwrap()],
        "{done}"
    );
    assert_eq!(done["bytes_read"], 2 * size, "{done}");
}
