//! With inotify exhausted the agent still keeps its watched set current, by rescanning on a
//! timer, and says so. The host-wide limit is lowered for this test only and restored after.
use llmwatch_e2e::{Agent, TempDir, secs, write_safetensors};

const LIMIT: &str = "/proc/sys/fs/inotify/max_user_instances";

/// Restores the limit even if the test fails.
struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::fs::write(LIMIT, &self.0);
    }
}

/// inotify instances root holds now (each is an fd linked to "anon_inode:inotify").
fn root_instances() -> usize {
    let mut n = 0;
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(status) = std::fs::read_to_string(p.path().join("status")) else {
            continue;
        };
        if !status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        n += fds
            .flatten()
            .filter(|f| {
                std::fs::read_link(f.path()).is_ok_and(|t| t.to_string_lossy() == "anon_inode:inotify")
            })
            .count();
    }
    n
}

#[test]
fn without_inotify_new_files_are_found_by_periodic_rescans() {
    llmwatch_e2e::require_root();
    let dir = TempDir::new("noinotify");
    let old = std::fs::read_to_string(LIMIT).unwrap();
    let _restore = Restore(old.clone());
    // No new instance can be created by root while the agent starts.
    std::fs::write(LIMIT, root_instances().to_string()).unwrap();
    let mut agent = Agent::watching(&[dir.path()], &[]);
    std::fs::write(LIMIT, &old).unwrap();
    assert_eq!(agent.ready["watch_mode"], "periodic_rescan", "{}", agent.ready);
    assert!(agent.ready["watch_error"].as_str().is_some_and(|e| !e.is_empty()));
    let path = dir.path().join("late.safetensors");
    write_safetensors(&path, 50_000);
    agent
        .wait_for(secs(30), |v| {
            v["kind"] == "watch_update"
                && v["added"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|p| p == path.to_str().unwrap()))
        })
        .expect("a file created without inotify was never picked up");
}
