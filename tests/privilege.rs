//! Least privilege: the agent as an unprivileged user (nobody) holding only the capabilities
//! docs/deploy.md lists, and what it says when one it needs is missing.
use std::{
    os::unix::fs::PermissionsExt,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use llmwatch_e2e::{Agent, TempDir, agent_binary, require_root, secs, write_safetensors};

/// Whether this process may grant `bit` (it is in the bounding set).
fn grantable(bit: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .unwrap()
        .trim();
    u64::from_str_radix(hex, 16).unwrap() & (1 << bit) != 0
}

/// `setpriv` arguments that run a command as nobody with exactly `caps` (ambient, so they
/// survive the exec of the agent).
fn as_nobody_with(caps: &[&str]) -> Vec<String> {
    let set = format!(
        "-all,{}",
        caps.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(",")
    );
    vec![
        "setpriv".into(),
        "--reuid=65534".into(),
        "--regid=65534".into(),
        "--clear-groups".into(),
        format!("--inh-caps={set}"),
        format!("--ambient-caps={set}"),
        format!("--bounding-set={set}"),
        "--".into(),
    ]
}

#[test]
fn as_nobody_with_the_documented_capabilities_the_agent_sees_weight_reads() {
    let mut caps = vec!["bpf", "perfmon", "dac_read_search"];
    if grantable(24) {
        caps.push("sys_resource");
    } else {
        // Visible in the test output: this sandbox's own bounding set lacks it, so the run
        // below proves the agent does not need it on this kernel (>= 5.11).
        eprintln!("note: CAP_SYS_RESOURCE is not in this host's bounding set; running without it");
    }
    // A model tree only root can read: discovery needs CAP_DAC_READ_SEARCH.
    let dir = TempDir::new("leastpriv");
    let weights = dir.path().join("model.safetensors");
    let ino = write_safetensors(&weights, 96 * 1024);
    std::fs::set_permissions(&weights, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    // An empty directory where tracefs is not mounted: mounting it needs CAP_SYS_ADMIN.
    let no_tracefs = TempDir::new("leastpriv-tracefs");

    let wrapper = as_nobody_with(&caps);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let model_dir = dir.path().to_str().unwrap();
    let tracefs = no_tracefs.path().to_str().unwrap();
    let mut agent = Agent::start_wrapped(&wrapper, &["--model-dir", model_dir, "--tracefs", tracefs]);

    assert_eq!(agent.ready["watched_files"], 1, "{}", agent.ready);
    let hooks = agent.ready["hooks"].as_array().unwrap();
    assert!(hooks.iter().all(|h| h["attached"] == true), "{hooks:#?}");
    let degraded: Vec<&str> = agent.ready["degraded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    // What is lost without CAP_SYS_ADMIN and CAP_SYS_PTRACE, said at start.
    assert!(
        degraded.iter().any(|l| l.starts_with("no CAP_SYS_ADMIN")),
        "{degraded:#?}"
    );
    assert!(
        degraded.iter().any(|l| l.starts_with("no CAP_SYS_PTRACE")),
        "{degraded:#?}"
    );
    assert!(
        degraded
            .iter()
            .any(|l| l.starts_with("tracefs unavailable") && l.contains("Operation not permitted")),
        "{degraded:#?}"
    );
    assert!(
        !degraded.iter().any(|l| l.contains("kernel BTF")),
        "{degraded:#?}"
    );

    let cat = Command::new("cat").arg(&weights).output().unwrap();
    assert_eq!(cat.stdout.len(), 96 * 1024);
    let read = agent
        .wait_for(secs(10), |v| v["kind"] == "file_read" && v["file"]["ino"] == ino)
        .expect("a weight read is seen by the least-privileged agent");
    assert_eq!(read["total"], 96 * 1024);
    assert_eq!(read["process"]["comm"], "cat");
    // Its own scan of the root-only tree (O_NOATIME refused as non-owner) is not an event.
    let me = agent.pid();
    let own: Vec<_> = agent
        .seen
        .iter()
        .filter(|v| v["kind"] == "file_open_denied" && v["task"]["pid"] == me)
        .collect();
    assert!(
        own.is_empty(),
        "the agent reported its own refused opens: {own:#?}"
    );
}

#[test]
fn without_cap_bpf_the_agent_stops_and_names_what_to_grant() {
    require_root();
    let wrapper = as_nobody_with(&["perfmon", "dac_read_search"]);
    let mut child = Command::new(&wrapper[0])
        .args(&wrapper[1..])
        .arg(agent_binary())
        .args(["events", "--metrics-addr", "off", "--model-dir", "/nonexistent"])
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the agent kept running without CAP_BPF"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("grant CAP_BPF and CAP_PERFMON"), "{err}");
    assert!(err.contains("missing: CAP_BPF"), "{err}");
}
