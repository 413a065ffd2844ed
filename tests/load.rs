//! Load held: 10,000 short-lived processes a minute, each reading a weight file and exiting
//! before the agent could look it up in /proc. Every read must still be attributed (comm,
//! parent, exe, cgroup), from what the kernel captured at event time. Its own test binary: it
//! loads the machine, and other scenarios' timing should not suffer from it.
use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    time::Instant,
};

use llmwatch_e2e::{Agent, TempDir, Value, secs, write_safetensors};

const PROCESSES: usize = 10_000;
const AT_ONCE: usize = 16;

#[test]
fn ten_thousand_short_lived_readers_a_minute_are_all_attributed() {
    let dir = TempDir::new("load");
    let weights = dir.path().join("model.safetensors");
    let ino = write_safetensors(&weights, 8 * 1024);
    let mut agent = Agent::watching(&[dir.path()], &[]);
    let me = std::process::id();
    let my_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap();

    let start = Instant::now();
    let mut running: Vec<Child> = Vec::with_capacity(AT_ONCE);
    let mut pids = Vec::with_capacity(PROCESSES);
    for _ in 0..PROCESSES {
        if running.len() == AT_ONCE {
            running.remove(0).wait().unwrap();
        }
        let child = Command::new("cat")
            .arg(&weights)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        pids.push(child.id());
        running.push(child);
    }
    for mut c in running {
        c.wait().unwrap();
    }
    let elapsed = start.elapsed();
    let per_minute = PROCESSES as f64 / elapsed.as_secs_f64() * 60.0;
    eprintln!("spawned {PROCESSES} readers in {elapsed:.1?} ({per_minute:.0} per minute)");
    assert!(
        per_minute >= 10_000.0,
        "this host spawned only {per_minute:.0} processes a minute: the load asked for is not reached"
    );

    // Every reader's read, attributed.
    let mut reads: HashMap<u32, Value> = HashMap::new();
    let wanted: std::collections::HashSet<u32> = pids.iter().copied().collect();
    let deadline = Instant::now() + secs(60);
    while reads.len() < PROCESSES && Instant::now() < deadline {
        let got = agent.collect_for(secs(1), |v| {
            v["kind"] == "file_read"
                && v["file"]["ino"] == ino
                && v["task"]["pid"]
                    .as_u64()
                    .is_some_and(|p| wanted.contains(&(p as u32)))
        });
        for v in got {
            reads.insert(v["task"]["pid"].as_u64().unwrap() as u32, v);
        }
    }
    let losses: Vec<&Value> = agent
        .seen
        .iter()
        .filter(|v| v["kind"] == "agent_event_loss")
        .collect();
    assert!(
        losses.is_empty(),
        "the kernel dropped events under this load: {losses:#?}"
    );
    assert_eq!(
        reads.len(),
        PROCESSES,
        "reads seen for {} of {PROCESSES} readers",
        reads.len()
    );

    let mut bad = Vec::new();
    for (pid, v) in &reads {
        let p = &v["process"];
        let ok = v["total"] == 8 * 1024
            && p["pid"] == *pid
            && p["comm"] == "cat"
            && p["ppid"] == me
            && p["exe"].as_str().is_some_and(|e| e.ends_with("/cat"))
            && p["argv"][1].as_str() == weights.to_str()
            && p["ancestry"][0]["pid"] == me
            && p["cgroup"]
                .as_str()
                .is_some_and(|c| my_cgroup.trim_end().ends_with(c));
        if !ok {
            bad.push(v.clone());
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {PROCESSES} reads not fully attributed, first: {:#}",
        bad.len(),
        bad[0]
    );
}
