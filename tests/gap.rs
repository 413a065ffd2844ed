//! Time the agent did not watch is reported: the heartbeat in its state directory says, at
//! the next start, how long nothing was watched and whether the last run stopped in order.
//! SIGKILL then restart: one `agent.gap` incident naming the window; a clean stop and start: an
//! `agent_gap` status line and no alert. The agent's own `agent_ready` is the marker: the gap
//! is judged before it.
use llmwatch_e2e::{Agent, TempDir, Value, is_incident, secs};

fn start(state: &TempDir, models: &TempDir) -> Agent {
    Agent::start(&[
        "--state-dir",
        state.path().to_str().unwrap(),
        "--model-dir",
        models.path().to_str().unwrap(),
    ])
}

/// What the agent printed before `agent_ready`.
fn before_ready(agent: &Agent, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    agent.seen.iter().filter(|v| pred(v)).cloned().collect()
}

fn parse_time(v: &Value) -> chrono_like::Time {
    chrono_like::Time::parse(v.as_str().unwrap())
}

#[test]
fn a_killed_agent_reports_the_gap_at_its_next_start() {
    let state = TempDir::new("gap-kill");
    let models = TempDir::new("gap-kill-models");
    let mut first = start(&state, &models);
    let first_pid = first.pid();
    assert!(
        before_ready(&first, |v| v["kind"] == "agent_gap").is_empty(),
        "first start: no gap"
    );
    first.kill();
    let killed_at = chrono_like::Time::now();
    std::thread::sleep(secs(3));
    let second = start(&state, &models);
    // What receivers get: the incident's opening (the rule hit itself is printed too).
    let gaps = before_ready(&second, |v| v["rule"] == "agent.gap" && is_incident(v));
    assert_eq!(gaps.len(), 1, "{:#?}", second.seen);
    assert_eq!(gaps[0]["status"], "opened");
    let alert = &gaps[0];
    assert_eq!(alert["severity"], "high");
    let summary = alert["summary"].as_str().unwrap();
    assert!(summary.contains("did not stop in order"), "{summary}");
    assert!(summary.contains(&format!("pid {first_pid}")), "{summary}");
    // The window runs from the last heartbeat (at most one flush interval before the kill) to
    // this start, which came at least 3 s after the kill.
    let (from, to) = (
        parse_time(&alert["window"]["start"]),
        parse_time(&alert["window"]["end"]),
    );
    assert!(from.0 <= killed_at.0 && killed_at.0 - from.0 <= 6.0, "{alert}");
    assert!(to.0 - killed_at.0 >= 3.0, "{alert}");
    let status = before_ready(&second, |v| v["kind"] == "agent_gap");
    assert_eq!(status.len(), 1);
    assert_eq!(status[0]["clean"], false);
    assert!(status[0]["seconds"].as_i64().unwrap() >= 3, "{}", status[0]);
}

#[test]
fn a_clean_stop_and_start_says_so_without_an_alert() {
    let state = TempDir::new("gap-clean");
    let models = TempDir::new("gap-clean-models");
    drop(start(&state, &models)); // SIGTERM, waits for the exit
    std::thread::sleep(secs(1));
    let second = start(&state, &models);
    let status = before_ready(&second, |v| v["kind"] == "agent_gap");
    assert_eq!(status.len(), 1, "{:#?}", second.seen);
    assert_eq!(status[0]["clean"], true, "{}", status[0]);
    let alerts = before_ready(&second, |v| v["rule"] == "agent.gap");
    assert!(alerts.is_empty(), "{alerts:#?}");
}

/// RFC 3339 times as seconds since the epoch, via `date` (no time crate in this test crate).
mod chrono_like {
    pub struct Time(pub f64);

    impl Time {
        pub fn now() -> Time {
            let d = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            Time(d.as_secs_f64())
        }

        pub fn parse(s: &str) -> Time {
            let out = std::process::Command::new("date")
                .args(["-u", "-d", s, "+%s.%N"])
                .output()
                .unwrap();
            assert!(out.status.success(), "date -d {s}");
            Time(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap())
        }
    }
}
