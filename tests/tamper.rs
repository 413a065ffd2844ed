//! Attacks on the agent itself: another process takes a handle to the agent's BPF map and
//! changes what the kernel watches. Its own test binary: every agent running at the same time
//! would (rightly) see the handle being taken, so no other scenario runs beside it.
use std::process::Command;

use llmwatch_e2e::{Agent, TempDir, Value, secs, write_safetensors};

const BPF_MAP_DELETE_ELEM: i64 = 3;
const BPF_MAP_GET_NEXT_KEY: i64 = 4;
const BPF_MAP_GET_FD_BY_ID: i64 = 14;

fn bpf(cmd: i64, attr: &mut [u8; 128]) -> i64 {
    // SAFETY: attr is a bpf_attr-sized buffer borrowed for the whole call; the commands used
    // here read only integer fields from it.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) }
}

#[test]
fn a_handle_to_the_agents_map_and_a_change_to_it_are_reported_and_undone() {
    let dir = TempDir::new("tamper");
    let weights = dir.path().join("model.safetensors");
    let ino = write_safetensors(&weights, 64 * 1024);
    let mut agent = Agent::watching(&[dir.path()], &[]);
    let map_id = agent.ready["bpf_objects"]["map WATCHED_FILES"]
        .as_u64()
        .unwrap_or_else(|| panic!("agent_ready names its maps: {}", agent.ready["bpf_objects"]))
        as u32;

    // 1. Take a handle by id, the way bpftool (or an attacker) gets at an unpinned map.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&map_id.to_ne_bytes());
    let fd = bpf(BPF_MAP_GET_FD_BY_ID, &mut attr);
    assert!(
        fd >= 0,
        "BPF_MAP_GET_FD_BY_ID: {}",
        std::io::Error::last_os_error()
    );
    let me = std::process::id();
    let a = agent
        .wait_for(secs(10), |v| {
            v["rule"] == "agent.tamper" && v["process"]["pid"] == me
        })
        .expect("agent.tamper not raised for a handle to WATCHED_FILES");
    assert_eq!(a["severity"], "critical");
    let summary = a["summary"].as_str().unwrap();
    assert!(
        summary.contains("WATCHED_FILES") && summary.contains(&map_id.to_string()),
        "{a}"
    );

    // 2. Delete the watched file's entry: reads of it would go unseen.
    let mut key = [0u8; 16];
    attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(fd as u32).to_ne_bytes());
    attr[16..24].copy_from_slice(&(key.as_mut_ptr() as u64).to_ne_bytes());
    assert_eq!(
        bpf(BPF_MAP_GET_NEXT_KEY, &mut attr),
        0,
        "{}",
        std::io::Error::last_os_error()
    );
    assert_eq!(
        u64::from_ne_bytes(key[8..16].try_into().unwrap()),
        ino,
        "the one watched file"
    );
    attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(fd as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(key.as_ptr() as u64).to_ne_bytes());
    assert_eq!(
        bpf(BPF_MAP_DELETE_ELEM, &mut attr),
        0,
        "{}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd was opened by this test and is not used after this.
    unsafe { libc::close(fd as i32) };

    let changed = agent
        .wait_for(secs(15), |v| {
            v["rule"] == "agent.tamper" && v["summary"].as_str().is_some_and(|s| s.contains("was changed"))
        })
        .expect("the changed map was not noticed");
    assert_eq!(changed["severity"], "critical");
    assert!(
        changed["summary"].as_str().unwrap().contains("1 entries removed"),
        "{changed}"
    );

    // 3. Restored: a read of the file is seen again.
    let cat = Command::new("cat").arg(&weights).output().unwrap();
    assert_eq!(cat.stdout.len(), 64 * 1024);
    let read = agent.wait_for(secs(10), |v: &Value| {
        v["kind"] == "file_read" && v["file"]["ino"] == ino && v["total"] == 64 * 1024
    });
    assert!(read.is_some(), "reads of the file are not seen after the restore");
}
