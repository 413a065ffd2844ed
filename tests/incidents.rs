//! One `cat model | nc` is one incident, as a receiver sees it on the agent's stdout: opened by
//! the reader, escalated when it has read half the file and again when the sender's bytes make
//! it exfiltration, and resolved once the tree's processes have exited, with the final totals.
//! The real agent, real processes and a real socket (root).
use std::path::Path;

use llmwatch_e2e::{
    Agent, TempDir, Value, http_get, is_incident, own_tree, secs, tcp_sink, write_safetensors,
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
        is_incident(v)
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
            is_incident(v) && v["status"] == "resolved" && v["files"][0]["path"] == model.to_str().unwrap()
        })
        .unwrap_or_else(|| panic!("no resolved incident: {:#?}", agent.seen));
    let id = done["incident_id"].clone();
    let mut messages = agent.collect_for(secs(0), |v| is_incident(v) && v["incident_id"] == id);
    messages.push(done.clone());
    let own = |s: &str, r: &str, v: &str| (s.to_string(), r.to_string(), v.to_string());
    assert_eq!(
        statuses(&messages),
        [
            own("opened", "weight.unexpected_reader", "medium"),
            own("escalated", "weight.unexpected_reader", "high"),
            own("escalated", "weight.exfiltration", "critical"),
            own("resolved", "weight.exfiltration", "critical"),
        ],
        "{messages:#?}"
    );
    assert_eq!(messages[1]["changes"], serde_json::json!(["severity"]));
    assert_eq!(messages[1]["previous_severity"], "medium");
    assert_eq!(
        messages[2]["changes"],
        serde_json::json!(["severity", "destination"])
    );
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
    assert_eq!(
        done["rules"],
        serde_json::json!([
            "weight.unexpected_reader",
            "weight.bulk_read",
            "weight.exfiltration"
        ])
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
    // The rules' own hits were four separate ones, as before: the folding is what changed.
    let hits = agent.collect_for(secs(0), |v| {
        v["kind"] == "rule_hit" && v["files"][0]["path"] == model.to_str().unwrap()
    });
    assert!(hits.len() >= 4, "{hits:#?}");

    // Nothing more about that tree: a later reader in a tree of its own is a new incident, and
    // once its summary is in, anything the first tree still caused would have come before it.
    let status = own_tree(&format!("head -c 4096 {} > /dev/null", model.display()))
        .status()
        .unwrap();
    assert!(status.success());
    let marker = agent
        .wait_for(secs(20), resolved_about(&model, "head"))
        .unwrap_or_else(|| panic!("no incident for the marker: {:#?}", agent.seen));
    assert_ne!(marker["incident_id"], id);
    let later: Vec<&Value> = agent
        .seen
        .iter()
        .filter(|v| is_incident(v) && v["incident_id"] != marker["incident_id"])
        .filter(|v| v["files"][0]["path"] == model.to_str().unwrap())
        .collect();
    assert!(
        later.is_empty(),
        "the tree raised more after its summary: {later:#?}"
    );

    // Counted: two incidents opened at medium, the rule hits by rule.
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
        value("llmwatch_incidents_total{severity=\"medium\"}") >= 2.0,
        "{metrics}"
    );
    assert!(value("llmwatch_alerts_total{rule=\"weight.exfiltration\",severity=\"critical\"}") >= 1.0);
    value("llmwatch_incidents_open");
}
