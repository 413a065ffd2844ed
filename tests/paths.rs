//! Hostile file names end to end (root required): a weight whose name holds a space, a newline
//! and a byte that is not UTF-8 is watched, and a read of it is reported for the right inode, with
//! the exact bytes, on one JSON line, with a path that names exactly that file; one that appears
//! after start is announced (`watch_update`) by its exact name.
use std::{
    ffi::OsStr,
    os::unix::ffi::{OsStrExt, OsStringExt},
    path::PathBuf,
    process::{Command, Stdio},
};

use llmwatch_e2e::{Agent, TempDir, Value, is, secs, write_safetensors};

/// The agent's path form back to the path: `\\` is a backslash, `\xNN` a raw byte, the rest is
/// the UTF-8 of the name (see `path_to_json` in the agent).
fn unescape(s: &str) -> PathBuf {
    let (mut out, mut rest) = (Vec::new(), s.as_bytes());
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        match (b, rest) {
            (b'\\', [b'\\', tail @ ..]) => {
                out.push(b'\\');
                rest = tail;
            }
            (b'\\', [b'x', h, l, tail @ ..]) => {
                let hex = std::str::from_utf8(&[*h, *l]).unwrap().to_owned();
                out.push(u8::from_str_radix(&hex, 16).unwrap());
                rest = tail;
            }
            (b'\\', _) => panic!("not an escaped path: {s:?}"),
            (b, _) => out.push(b),
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[test]
fn read_of_a_weight_with_a_hostile_name_is_reported_exactly() {
    let dir = TempDir::new("paths");
    let path = dir.path().join(OsStr::from_bytes(b"my model\n\xff.safetensors"));
    let size: usize = 3 * 65536 + 17;
    let ino = write_safetensors(&path, size);
    let content = std::fs::read(&path).unwrap();
    // The name a lossy conversion would give it belongs to another file: the two stay apart.
    let twin = dir.path().join("my model\n\u{FFFD}.safetensors");
    let twin_ino = write_safetensors(&twin, 4096);
    let mut agent = Agent::watching(&[dir.path()], &[]);
    assert_eq!(agent.ready["watched_files"], 2, "{:#}", agent.ready);
    assert_eq!(
        agent.ready["scan"]["errors"],
        Value::Array(vec![]),
        "{:#}",
        agent.ready
    );

    let child = Command::new("cat")
        .arg(&path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, content);

    let events = agent.collect_until(secs(10), |v| is(v, "file_read", pid), |v| is(v, "proc_exit", pid));
    let reads: Vec<&Value> = events.iter().filter(|v| v["kind"] == "file_read").collect();
    assert!(!reads.is_empty(), "no read reported: {events:#?}");
    assert!(
        reads.iter().all(|v| v["file"]["ino"] == ino),
        "reads of another inode: {reads:#?}"
    );
    let bytes: u64 = reads.iter().map(|v| v["bytes"].as_u64().unwrap()).sum();
    assert_eq!(bytes, size as u64, "{reads:#?}");
    assert_eq!(reads[0]["process"]["comm"], "cat");
    for r in &reads {
        let shown = r["weight"]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("no weight path: {r:#}"));
        assert_eq!(unescape(shown), path, "{shown:?}");
        assert_eq!(r["weight"]["ino"], ino);
        assert_ne!(r["weight"]["ino"], twin_ino);
    }
}

#[test]
fn weight_with_a_hostile_name_appearing_later_is_announced() {
    let dir = TempDir::new("paths-later");
    let mut agent = Agent::watching(&[dir.path()], &[]);
    assert_eq!(agent.ready["watched_files"], 0);
    // Written under a temporary name and renamed into place, as downloaders do.
    let path = dir.path().join(OsStr::from_bytes(b"late\t\xfe\n.safetensors"));
    let tmp = dir.path().join("late.tmp");
    write_safetensors(&tmp, 8192);
    std::fs::rename(&tmp, &path).unwrap();
    let update = agent
        .wait_for(secs(15), |v| {
            v["kind"] == "watch_update" && v["added"].as_array().is_some_and(|a| !a.is_empty())
        })
        .expect("no watch_update for the new weight");
    let added: Vec<PathBuf> = update["added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| unescape(p.as_str().unwrap()))
        .collect();
    assert_eq!(added, vec![path], "{update:#}");
    assert_eq!(update["watched_files"], 1);
}
