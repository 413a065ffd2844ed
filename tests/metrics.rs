//! The metrics endpoint of a running agent: scraped directly, by promtool, and by a real
//! Prometheus server on loopback that the series is queried back from.
use std::{
    io::Write,
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use llmwatch_e2e::{Agent, TempDir, debian_tool, http_get as get, secs, write_safetensors};

fn value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Tools from Debian's `prometheus` package.
fn tool(name: &str) -> Option<&'static str> {
    debian_tool(name, "prometheus")
}

#[test]
fn agent_exports_metrics_health_and_readiness() {
    let dir = TempDir::new("metrics");
    let model = dir.path().join("model.safetensors");
    write_safetensors(&model, 1_000_000);
    let mut agent = Agent::watching(&[dir.path()], &[]);
    let addr = agent.ready["metrics_addr"]
        .as_str()
        .expect("agent_ready names the metrics address")
        .to_string();
    assert_eq!(get(&addr, "/healthz").0, 200);
    assert_eq!(get(&addr, "/readyz").0, 200);
    assert_eq!(get(&addr, "/nope").0, 404);
    let (_, before) = get(&addr, "/metrics");
    // The syscall hook is the per-syscall fexit set where fentry loads, else tp_btf/sys_exit
    // where the kernel allows it, else the raw tracepoint; agent_ready says which.
    let sys_exit = agent.ready["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| {
            h["hook"]
                .as_str()
                .is_some_and(|n| n.ends_with("/sys_exit") || n.starts_with("fexit/"))
        })
        .map(|h| h["hook"].as_str().unwrap().to_string())
        .unwrap();
    assert_eq!(
        value(&before, &format!("llmwatch_hook_attached{{hook=\"{sys_exit}\"}}")),
        Some(1.0),
        "{before}"
    );
    let path = agent.ready["hook_path"].as_str().unwrap();
    assert_eq!(
        value(&before, &format!("llmwatch_hook_path{{path=\"{path}\"}}")),
        Some(1.0),
        "{before}"
    );
    assert_eq!(value(&before, "llmwatch_watched_files"), Some(1.0));
    let reads_before = value(&before, "llmwatch_events_total{kind=\"file_read\"}").unwrap_or(0.0);
    // A read of the watched file moves the event and byte counters and raises alerts.
    std::fs::read(&model).unwrap();
    agent
        .wait_for(secs(10), |v| v["rule"] == "weight.unexpected_reader")
        .expect("alert");
    let (_, after) = get(&addr, "/metrics");
    assert!(
        value(&after, "llmwatch_events_total{kind=\"file_read\"}").unwrap() > reads_before,
        "{after}"
    );
    assert!(
        value(
            &after,
            "llmwatch_weight_read_bytes_total{class=\"other\",container=\"host\"}"
        )
        .unwrap()
            >= 1_000_000.0
    );
    assert!(
        value(
            &after,
            "llmwatch_alerts_total{rule=\"weight.unexpected_reader\",severity=\"high\"}"
        )
        .unwrap_or(0.0)
            >= 1.0
            || value(
                &after,
                "llmwatch_alerts_total{rule=\"weight.unexpected_reader\",severity=\"medium\"}"
            )
            .unwrap_or(0.0)
                >= 1.0,
        "{after}"
    );
    assert!(after.contains("process_resident_memory_bytes"));

    if let Some(promtool) = tool("promtool") {
        let mut child = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(after.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_real_prometheus_scrapes_the_agent() {
    let Some(prometheus) = tool("prometheus") else {
        return;
    };
    let dir = TempDir::new("prom");
    let agent = Agent::watching(&[dir.path()], &[]);
    let target = agent.ready["metrics_addr"].as_str().unwrap().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(&cfg, format!("global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: llmwatch\n    static_configs: [{{targets: ['{target}']}}]\n")).unwrap();
    let mut prom = Command::new(prometheus)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let api = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + secs(30);
    let mut last = String::new();
    let found = loop {
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(500));
        if TcpStream::connect(&api).is_err() {
            continue;
        }
        let (_, body) = get(
            &api,
            // hook=~".*sys_exit": whichever variant the agent attached.
            "/api/v1/query?query=llmwatch_hook_attached%7Bhook%3D~%22.%2Asys_exit%22%7D",
        );
        last = body.clone();
        if body.contains("\"result\":[{") && body.contains("\"1\"]") {
            break true;
        }
    };
    let _ = prom.kill();
    let _ = prom.wait();
    assert!(found, "Prometheus never returned the agent's series: {last}");
}
