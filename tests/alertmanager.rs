//! The alertmanager preset against a real Alertmanager (Debian's prometheus-alertmanager) on
//! loopback: a real `cat model | nc` through the real agent is one alert there, under labels
//! that stay the same while the incident grows (the lower-severity ones it escalated from are
//! resolved), and it is resolved when the tree exits: Alertmanager itself says so to its own
//! webhook receiver.
use std::{
    io::Write as _,
    net::TcpListener,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use llmwatch_e2e::{
    Agent, TempDir, Value, debian_tool, http_get, http_receiver, is_incident, own_tree, secs, tcp_sink,
    write_safetensors,
};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Alertmanager, killed on drop.
struct Alertmanager {
    child: std::process::Child,
    addr: String,
    log: std::path::PathBuf,
}

impl Alertmanager {
    /// Groups by incident and notifies `notify` within a second of any change, resolutions too.
    fn start(bin: &str, dir: &std::path::Path, notify: u16) -> Alertmanager {
        let cfg = dir.join("alertmanager.yml");
        std::fs::write(
            &cfg,
            format!(
                "route:\n  receiver: test\n  group_by: [incident_id]\n  group_wait: 1s\n  group_interval: 1s\n  \
                 repeat_interval: 1h\nreceivers:\n  - name: test\n    webhook_configs:\n      - url: \
                 http://127.0.0.1:{notify}/notify\n        send_resolved: true\n"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let log = dir.join("alertmanager.log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            // One instance, no gossip port.
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let am = Alertmanager { child, addr, log };
        let deadline = Instant::now() + secs(30);
        while !(std::net::TcpStream::connect(&am.addr).is_ok() && http_get(&am.addr, "/-/ready").0 == 200) {
            assert!(Instant::now() < deadline, "Alertmanager not ready: {}", am.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        am
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The active alerts of one incident.
    fn alerts_of(&self, incident: &str) -> Vec<Value> {
        let (status, body) = http_get(
            &self.addr,
            &format!("/api/v2/alerts?filter=incident_id%3D%22{incident}%22"),
        );
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Vec<Value>>(&body).unwrap()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first alert of incident `id` at `severity` in `status` that Alertmanager notified its
/// receiver of (notifications about other incidents are skipped).
fn notified(
    notifications: &std::sync::mpsc::Receiver<llmwatch_e2e::Request>,
    am: &Alertmanager,
    id: &str,
    severity: &str,
    status: &str,
) -> Value {
    let deadline = Instant::now() + secs(30);
    let mut about_it = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = notifications.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "Alertmanager never notified {status} {severity}; of this incident it notified: {about_it:#?}\n{}",
                am.log()
            )
        });
        let n: Value = serde_json::from_slice(&n.body).unwrap();
        for a in n["alerts"].as_array().unwrap() {
            if a["labels"]["incident_id"] != id {
                continue;
            }
            if a["labels"]["severity"] == severity && a["status"] == status {
                return a.clone();
            }
            about_it.push(a.clone());
        }
    }
}

#[test]
fn an_incident_is_one_alertmanager_alert_resolved_when_its_tree_exits() {
    let Some(bin) = debian_tool("prometheus-alertmanager", "prometheus-alertmanager") else {
        return;
    };
    let dir = TempDir::new("am");
    let cfgdir = TempDir::new("am-cfg");
    let model = dir.path().join("model.safetensors");
    let size: u64 = 3 * 1024 * 1024 + 777;
    write_safetensors(&model, size as usize);
    let notify = TcpListener::bind("127.0.0.1:0").unwrap();
    let notify_port = notify.local_addr().unwrap().port();
    let notifications = http_receiver(notify);
    let am = Alertmanager::start(bin, cfgdir.path(), notify_port);
    let cfg = cfgdir.path().join("llmwatch.yaml");
    std::fs::write(
        &cfg,
        format!(
            "webhooks:\n  - url: http://{}/api/v2/alerts\n    preset: alertmanager\n    timeout: 2s\n\
             spool:\n  dir: {}\nincidents:\n  idle: 10m\n",
            am.addr,
            cfgdir.path().join("spool").display()
        ),
    )
    .unwrap();
    let mut agent = Agent::watching(&[dir.path()], &["--config", cfg.to_str().unwrap()]);

    // The tree stays alive (its shell waits for a line) until the alert has been looked at.
    let (port, sink) = tcp_sink();
    let mut tree = own_tree(&format!(
        "cat {} | nc -N 127.0.0.1 {port}; read _",
        model.display()
    ))
    .stdin(Stdio::piped())
    .spawn()
    .unwrap();
    assert_eq!(sink.join().unwrap(), size);
    let critical = agent
        .wait_for(secs(20), |v| {
            is_incident(v) && v["severity"] == "critical" && v["files"][0]["path"] == model.to_str().unwrap()
        })
        .unwrap_or_else(|| panic!("the incident never became critical: {:#?}", agent.seen));
    let id = critical["incident_id"].as_str().unwrap().to_string();
    let host = critical["host"].as_str().unwrap().to_string();

    // In Alertmanager: one active alert for the incident, at its current severity.
    let deadline = Instant::now() + secs(20);
    let active = loop {
        let active = am.alerts_of(&id);
        if active.iter().any(|a| a["labels"]["severity"] == "critical") {
            break active;
        }
        assert!(
            Instant::now() < deadline,
            "not in Alertmanager: {active:#?}\n{}",
            am.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        active.len(),
        1,
        "the medium and high alerts it escalated from are resolved: {active:#?}"
    );
    let alert = &active[0];
    assert_eq!(
        alert["labels"],
        serde_json::json!({
            "alertname": "weight.unexpected_reader",
            "severity": "critical",
            "host": host,
            "instance": host,
            "job": "llmwatch",
            "incident_id": id,
        }),
        "labels: the rule that opened it, the severity, host and incident only"
    );
    let ann = &alert["annotations"];
    assert_eq!(ann["rule"], "weight.exfiltration");
    assert!(ann["process"].as_str().unwrap().contains("pid "), "{ann}");
    assert!(
        ann["files"].as_str().unwrap().contains(model.to_str().unwrap()),
        "{ann}"
    );
    assert!(
        ann["network"]
            .as_str()
            .unwrap()
            .contains(&format!("127.0.0.1:{port}")),
        "{ann}"
    );
    let metrics = agent.ready["metrics_addr"].as_str().unwrap();
    assert_eq!(alert["generatorURL"], format!("http://{metrics}/metrics"));
    assert_eq!(alert["status"]["state"], "active");

    // Alertmanager told its receiver (a resolution alone is not notified: it must have fired).
    let fired = notified(&notifications, &am, &id, "critical", "firing");
    assert_eq!(fired["labels"], alert["labels"]);

    // The tree exits: the agent resolves the incident, Alertmanager resolves the alert.
    tree.stdin.take().unwrap().write_all(b"\n").unwrap();
    assert!(tree.wait().unwrap().success());
    let done = agent
        .wait_for(secs(20), |v| {
            is_incident(v) && v["incident_id"] == id.as_str() && v["status"] == "resolved"
        })
        .unwrap_or_else(|| panic!("the incident was not resolved: {:#?}", agent.seen));
    assert_eq!(done["resolved_by"], "exited");
    let resolved = notified(&notifications, &am, &id, "critical", "resolved");
    assert_eq!(
        resolved["labels"], alert["labels"],
        "resolved under the labels it fired with"
    );
    // Ended when the incident was (Alertmanager keeps milliseconds, the agent nanoseconds).
    let second = |v: &Value| v.as_str().unwrap()[..19].to_string();
    assert_eq!(
        second(&resolved["endsAt"]),
        second(&done["time"]),
        "{resolved} {done}"
    );
    assert!(
        am.alerts_of(&id).is_empty(),
        "still active: {:#?}",
        am.alerts_of(&id)
    );
}
