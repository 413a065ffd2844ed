//! Hosts that lack what the agent uses: no kernel BTF, no tracefs. The agent starts anyway,
//! says what it lost (agent_ready, a metric, `llmwatch check`), and keeps doing what it can.
use std::process::Command;

use llmwatch_e2e::{
    Agent, TempDir, Value, agent_binary, http_get, load_socket_filter, require_root, secs, write_safetensors,
};

fn metric(agent: &Agent, line_start: &str) -> Option<f64> {
    let addr = agent.ready["metrics_addr"].as_str().expect("metrics served");
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200);
    body.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn degraded_lines(agent: &Agent) -> Vec<String> {
    agent.ready["degraded"]
        .as_array()
        .expect("agent_ready lists what is degraded")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn without_kernel_btf_the_agent_runs_degraded_and_says_what_it_loses() {
    let dir = TempDir::new("nobtf");
    let weights = dir.path().join("model.safetensors");
    let ino = write_safetensors(&weights, 64 * 1024);
    // Unlinked after the read, as the marker that the read was judged (unlinks by path are
    // still seen without BTF).
    let marker = dir.path().join("marker.safetensors");
    write_safetensors(&marker, 4096);
    let mut agent = Agent::watching(&[dir.path()], &["--kernel-btf", "/nonexistent/vmlinux"]);
    let lines = degraded_lines(&agent);
    let btf = lines
        .iter()
        .find(|l| l.starts_with("kernel BTF missing"))
        .unwrap_or_else(|| panic!("no BTF line in {lines:#?}"));
    assert!(
        btf.contains("/nonexistent/vmlinux") && btf.contains("NOT seen"),
        "{btf}"
    );
    assert!(lines.iter().any(|l| l.contains("tp_btf")), "{lines:#?}");
    assert_eq!(
        metric(&agent, "llmwatch_capability{capability=\"kernel_btf\"}"),
        Some(0.0)
    );
    // The syscall hook itself still runs (raw tracepoint, ABI offsets).
    let hooks = agent.ready["hooks"].as_array().unwrap();
    assert!(
        hooks
            .iter()
            .any(|h| h["hook"] == "raw_tracepoint/sys_exit" && h["attached"] == true),
        "{hooks:#?}"
    );

    // What still works: bpf() use by another process.
    let fd = load_socket_filter(b"degraded_bpf");
    let me = std::process::id();
    let seen = agent.wait_for(secs(10), |v| {
        v["kind"] == "bpf_load" && v["task"]["pid"] == me && v["prog_name"] == "degraded_bpf"
    });
    // SAFETY: fd was opened by this test and is not used after this.
    unsafe { libc::close(fd) };
    assert!(seen.is_some(), "bpf() use is not seen without BTF");

    // What is lost, as announced: reads of the watched file.
    let cat = Command::new("cat").arg(&weights).output().unwrap();
    assert_eq!(cat.stdout.len(), 64 * 1024);
    std::fs::remove_file(&marker).unwrap();
    let reads = agent.collect_until(
        secs(10),
        |v: &Value| v["kind"] == "file_read" && v["file"]["ino"] == ino,
        |v: &Value| {
            v["kind"] == "file_tamper"
                && v["op"] == "unlink"
                && v["weight"]["path"] == marker.to_str().unwrap()
        },
    );
    assert!(
        reads.last().is_some_and(|v| v["kind"] == "file_tamper"),
        "the marker's unlink was not reported: {reads:#?}"
    );
    assert_eq!(
        reads.len(),
        1,
        "reads are seen after all; the degraded report is wrong: {reads:#?}"
    );
}

#[test]
fn without_tracefs_the_agent_loses_nothing_and_says_so() {
    let dir = TempDir::new("notracefs");
    let weights = dir.path().join("model.safetensors");
    let ino = write_safetensors(&weights, 64 * 1024);
    let mut agent = Agent::watching(&[dir.path()], &["--tracefs", "/nonexistent/tracing"]);
    let lines = degraded_lines(&agent);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("tracefs unavailable") && l.contains("/nonexistent/tracing")),
        "{lines:#?}"
    );
    assert!(
        agent.ready["tracefs"]["unavailable"].is_string(),
        "{}",
        agent.ready["tracefs"]
    );
    assert_eq!(
        metric(&agent, "llmwatch_capability{capability=\"tracefs\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(&agent, "llmwatch_capability{capability=\"kernel_btf\"}"),
        Some(1.0)
    );
    let cat = Command::new("cat").arg(&weights).output().unwrap();
    let read = agent.wait_for(secs(10), |v| v["kind"] == "file_read" && v["file"]["ino"] == ino);
    assert_eq!(cat.stdout.len(), 64 * 1024);
    assert!(read.is_some(), "file reads must still be seen without tracefs");
}

#[test]
fn check_names_the_missing_btf_and_what_it_costs() {
    require_root();
    let out = Command::new(agent_binary())
        .args(["check", "--json", "--kernel-btf", "/nonexistent/vmlinux"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the minimum is missing: check must fail");
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["btf"]["ok"], false, "{report:#}");
    assert!(
        report["btf"]["error"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/vmlinux"),
        "{report:#}"
    );
    assert!(
        report["btf"]["loses"].as_str().unwrap().contains("NOT seen"),
        "{report:#}"
    );
    let text = Command::new(agent_binary())
        .args([
            "check",
            "--kernel-btf",
            "/nonexistent/vmlinux",
            "--tracefs",
            "/nonexistent/tracing",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("kernel BTF:        MISSING"), "{text}");
    assert!(text.contains("tracefs:           MISSING"), "{text}");
}
