//! Alerts at a real HTTP receiver on loopback: signed, exactly once by id, and not lost when the
//! receiver is down and the agent is killed and restarted meanwhile.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    sync::mpsc,
    time::Duration,
};

use hmac::{Hmac, Mac};
use llmwatch_e2e::{Agent, TempDir, Value, secs, write_safetensors};

struct Request {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Accepts connections on `listener` and sends every request it receives; answers 200.
fn receiver(listener: TcpListener) -> mpsc::Receiver<Request> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut headers = Vec::new();
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h).unwrap();
                        let h = h.trim_end().to_string();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                        }
                    }
                    let len: usize = headers
                        .iter()
                        .find(|(k, _)| k == "content-length")
                        .map(|(_, v)| v.parse().unwrap())
                        .unwrap_or(0);
                    let mut body = vec![0u8; len];
                    r.read_exact(&mut body).unwrap();
                    w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .unwrap();
                    if tx.send(Request { headers, body }).is_err() {
                        return;
                    }
                }
            });
        }
    });
    rx
}

fn config(dir: &std::path::Path, port: u16) -> String {
    let secret = dir.join("secret");
    std::fs::write(&secret, "s3cret-for-tests\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let cfg = dir.join("llmwatch.yaml");
    std::fs::write(
        &cfg,
        format!(
            "webhooks:\n  - url: http://127.0.0.1:{port}/hook\n    secret_file: {}\n    timeout: 2s\nspool:\n  dir: {}\n",
            secret.display(),
            dir.join("spool").display()
        ),
    )
    .unwrap();
    cfg.to_str().unwrap().to_string()
}

/// Waits until every alert of `ids` is in a file of its own in `spool` (written and renamed
/// into place: what a restarted agent delivers), or fails.
fn wait_until_spooled(spool: &std::path::Path, ids: &[String]) {
    let deadline = std::time::Instant::now() + secs(10);
    loop {
        let spooled: Vec<Value> = std::fs::read_dir(spool)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect();
        let missing: Vec<&String> = ids
            .iter()
            .filter(|id| !spooled.iter().any(|a| a["id"] == id.as_str()))
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "alerts {missing:?} not in the spool {} within 10 s",
            spool.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn header<'a>(r: &'a Request, name: &str) -> Option<&'a str> {
    r.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[test]
fn alerts_reach_the_webhook_signed() {
    let dir = TempDir::new("hook");
    let cfgdir = TempDir::new("hook-cfg");
    let model = dir.path().join("model.safetensors");
    write_safetensors(&model, 200_000);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let rx = receiver(listener);
    let cfg = config(cfgdir.path(), port);
    let mut agent = Agent::watching(&[dir.path()], &["--config", &cfg]);
    std::fs::read(&model).unwrap();
    let alert = agent
        .wait_for(secs(10), |v| v["rule"] == "weight.unexpected_reader")
        .expect("alert");
    let id = alert["id"].as_str().expect("the printed alert has an id");
    // Other agents starting in parallel tests load BPF programs, which this agent reports too
    // (host.bpf_load): the printed alert is found among what arrives by its id (the same
    // alert, not another of the same rule), and every request on the way must be signed.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let req = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("the printed alert {id} never reached the webhook"));
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"s3cret-for-tests").unwrap();
        mac.update(&req.body);
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(
            header(&req, "x-llmwatch-signature"),
            Some(expected.as_str()),
            "signature does not verify"
        );
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(header(&req, "x-llmwatch-alert-id"), body["id"].as_str());
        if body["id"] == id {
            break body;
        }
    };
    // What was delivered is what was printed.
    assert_eq!(body, alert);
}

#[test]
fn nothing_is_lost_when_the_receiver_is_down_and_the_agent_is_killed() {
    let dir = TempDir::new("hook-down");
    let cfgdir = TempDir::new("hook-down-cfg");
    let model = dir.path().join("model.safetensors");
    write_safetensors(&model, 200_000);
    // Reserve a port but do not listen yet: connections are refused.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = config(cfgdir.path(), port);
    let mut agent = Agent::watching(&[dir.path()], &["--config", &cfg]);
    // Several readers: several alerts, each with its own id.
    let mut ids = Vec::new();
    for _ in 0..3 {
        let child = std::process::Command::new("cat")
            .arg(&model)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        child.wait_with_output().unwrap();
        let a = agent
            .wait_for(secs(10), |v| {
                v["rule"] == "weight.unexpected_reader" && v["process"]["pid"] == pid
            })
            .expect("alert");
        ids.push(a["id"].as_str().unwrap().to_string());
    }
    // The marker that a SIGKILL now loses nothing: each alert is in its file in the spool.
    wait_until_spooled(&cfgdir.path().join("spool"), &ids);
    agent.kill(); // SIGKILL: no flush, no goodbye
    drop(agent);
    // Receiver comes back; a restarted agent drains the spool.
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let rx = receiver(listener);
    let mut agent = Agent::watching(&[dir.path()], &["--config", &cfg]);
    let mut got: Vec<String> = Vec::new();
    let mut receive_until = |done: &dyn Fn(&[String]) -> bool| {
        while let Ok(req) = rx.recv_timeout(Duration::from_secs(15)) {
            let body: Value = serde_json::from_slice(&req.body).unwrap();
            got.push(body["id"].as_str().unwrap().to_string());
            if done(&got) {
                return;
            }
        }
    };
    receive_until(&|got| ids.iter().all(|i| got.contains(i)));
    // The marker for "no second copy": a new alert of the restarted agent. A target is served
    // in spool order, so a repeat of any earlier alert would arrive before it.
    let child = std::process::Command::new("cat")
        .arg(&model)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    child.wait_with_output().unwrap();
    let marker = agent
        .wait_for(secs(10), |v| {
            v["rule"] == "weight.unexpected_reader" && v["process"]["pid"] == pid
        })
        .expect("alert of the restarted agent");
    let marker = marker["id"].as_str().unwrap().to_string();
    receive_until(&|got| got.contains(&marker));
    assert!(
        got.contains(&marker),
        "the new alert {marker} was not delivered: {got:?}"
    );
    for id in &ids {
        assert_eq!(
            got.iter().filter(|g| *g == id).count(),
            1,
            "alert {id} delivered {:?} times: {got:?}",
            got.iter().filter(|g| *g == id).count()
        );
    }
}
