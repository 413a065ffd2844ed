//! Incidents' messages at a real HTTP receiver on loopback: signed, exactly once by id, and
//! not lost when the receiver is down and the agent is killed and restarted meanwhile.
use std::{net::TcpListener, time::Duration};

use hmac::{Hmac, Mac};
use llmwatch_e2e::{Agent, TempDir, Value, http_receiver, is_incident, own_tree, secs, write_safetensors};

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

#[test]
fn alerts_reach_the_webhook_signed() {
    let dir = TempDir::new("hook");
    let cfgdir = TempDir::new("hook-cfg");
    let model = dir.path().join("model.safetensors");
    write_safetensors(&model, 200_000);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let rx = http_receiver(listener);
    let cfg = config(cfgdir.path(), port);
    let mut agent = Agent::watching(&[dir.path()], &["--config", &cfg]);
    std::fs::read(&model).unwrap();
    let alert = agent
        // The incident's message (what receivers get), not the rule hit `events` also prints.
        .wait_for(secs(10), |v| {
            is_incident(v) && v["rule"] == "weight.unexpected_reader"
        })
        .expect("alert");
    let id = alert["id"].as_str().expect("the printed message has an id");
    // Other agents starting in parallel tests load BPF programs, which this agent reports too
    // (host.bpf_load): the printed message is found among what arrives by its id (the same
    // message, not another of the same rule), and every request on the way must be signed.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let req = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("the printed message {id} never reached the webhook"));
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"s3cret-for-tests").unwrap();
        mac.update(&req.body);
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(
            req.header("x-llmwatch-signature"),
            Some(expected.as_str()),
            "signature does not verify"
        );
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(req.header("x-llmwatch-alert-id"), body["id"].as_str());
        if body["id"] == id {
            break body;
        }
    };
    // What was delivered is what was printed: the incident's opening, the rule hit's fields
    // and the incident's.
    assert_eq!(body, alert);
    assert_eq!(body["status"], "opened", "{body}");
    assert!(
        body["incident_id"].is_string() && body["incident_id"] != body["id"],
        "{body}"
    );
}

/// Waits until every message of `ids` is in a file of its own in `spool` (written and renamed
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
            "messages {missing:?} not in the spool {} within 10 s",
            spool.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
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
    // Several readers, each in a tree of its own: several incidents, each opened, escalated
    // (the whole file read) and resolved (its processes exited), every message with its own id.
    let mut ids = Vec::new();
    for _ in 0..3 {
        let status = own_tree(&format!("cat {} > /dev/null", model.display()))
            .status()
            .unwrap();
        assert!(status.success());
        // Its summary is the marker: every message of the incident was printed (and spooled) first.
        let messages = agent.collect_until(secs(10), is_incident, |v| {
            is_incident(v) && v["status"] == "resolved" && v["files"][0]["path"] == model.to_str().unwrap()
        });
        let done = messages.last().expect("no incident message");
        assert_eq!(done["status"], "resolved", "{messages:#?}");
        let ours: Vec<&Value> = messages
            .iter()
            .filter(|m| m["incident_id"] == done["incident_id"])
            .collect();
        let statuses: Vec<&str> = ours.iter().map(|m| m["status"].as_str().unwrap()).collect();
        assert_eq!(statuses, ["opened", "escalated", "resolved"], "{ours:#?}");
        ids.extend(ours.iter().map(|m| m["id"].as_str().unwrap().to_string()));
    }
    // The marker that a SIGKILL now loses nothing: each message is in its file in the spool.
    wait_until_spooled(&cfgdir.path().join("spool"), &ids);
    agent.kill(); // SIGKILL: no flush, no goodbye
    drop(agent);
    // Receiver comes back; a restarted agent drains the spool.
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let rx = http_receiver(listener);
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
    // The marker for "no second copy": a new message of the restarted agent. A target is
    // served in spool order, so a repeat of any earlier message would arrive before it.
    let status = own_tree(&format!("cat {} > /dev/null", model.display()))
        .status()
        .unwrap();
    assert!(status.success());
    let marker = agent
        .wait_for(secs(10), |v| {
            v["rule"] == "weight.unexpected_reader" && v["status"] == "opened"
        })
        .expect("a message of the restarted agent");
    let marker = marker["id"].as_str().unwrap().to_string();
    receive_until(&|got| got.contains(&marker));
    assert!(
        got.contains(&marker),
        "the new message {marker} was not delivered: {got:?}"
    );
    for id in &ids {
        assert_eq!(
            got.iter().filter(|g| *g == id).count(),
            1,
            "message {id} delivered {:?} times: {got:?}",
            got.iter().filter(|g| *g == id).count()
        );
    }
}
