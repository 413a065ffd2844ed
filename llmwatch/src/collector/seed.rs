//! Processes that already hold or map a watched file when the agent starts (or after it was
//! restarted): found in /proc so the kernel follows them from their next read on.
//!
//! Bytes they read before are not known; what is resident in their mappings then is taken
//! as the baseline (see `mappings::Touch::seeded`).
use std::path::Path;

use foldhash::{HashMap, HashMapExt as _, HashSet};

use crate::events::FileKey;
use crate::state::files::kernel_dev;

/// What one process holds of the watched files.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Held {
    /// Descriptors: (fd, file).
    pub fds: Vec<(i32, FileKey)>,
    /// Mappings: file -> total mapped length.
    pub maps: HashMap<FileKey, u64>,
}

/// Counts for `agent_ready.seeded`.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SeedReport {
    /// Processes found holding or mapping a watched file.
    pub processes: usize,
    pub descriptors: usize,
    pub mappings: usize,
    /// Processes whose sends are counted because of them (their trees).
    pub trees: usize,
}

/// Every process (but `skip`, the agent) holding or mapping one of `watched`.
pub fn scan(proc_root: &Path, watched: &HashSet<FileKey>, skip: u32) -> HashMap<u32, Held> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == skip {
            continue;
        }
        let held = held_by(&entry.path(), watched);
        if !(held.fds.is_empty() && held.maps.is_empty()) {
            out.insert(pid, held);
        }
    }
    out
}

/// What the process at `/proc/PID` (`dir`) holds of `watched`. Races with the process (it
/// exits, closes) only make the answer smaller.
pub fn held_by(dir: &Path, watched: &HashSet<FileKey>) -> Held {
    use std::os::unix::fs::MetadataExt as _;
    let mut held = Held::default();
    if let Ok(fds) = std::fs::read_dir(dir.join("fd")) {
        for fd in fds.flatten() {
            let Some(n) = fd.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            // stat() follows the magic link to the open file itself (also for deleted files).
            let Ok(meta) = std::fs::metadata(fd.path()) else {
                continue;
            };
            let key = FileKey {
                dev: kernel_dev(meta.dev()),
                ino: meta.ino(),
            };
            if watched.contains(&key) {
                held.fds.push((n, key));
            }
        }
    }
    if let Ok(maps) = std::fs::read_to_string(dir.join("maps")) {
        for line in maps.lines() {
            if let Some((Some(key), len)) = super::mappings::vma_header(line)
                && watched.contains(&key)
            {
                *held.maps.entry(key).or_default() += len;
            }
        }
    }
    held.fds.sort_unstable();
    held
}

/// Parent and whether `pid` leads its session, from /proc/PID/stat.
pub fn parent_and_leader(pid: u32) -> Option<(u32, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: the fields start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let mut f = rest.split_ascii_whitespace();
    let _state = f.next()?;
    let ppid: u32 = f.next()?.parse().ok()?;
    let _pgrp = f.next()?;
    let session: u32 = f.next()?.parse().ok()?;
    Some((ppid, session == pid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn finds_own_descriptor_and_mapping_of_a_watched_file() {
        let dir = std::env::temp_dir().join(format!("llmwatch-seed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.safetensors");
        std::fs::write(&path, vec![1u8; 3 * 4096]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let meta = file.metadata().unwrap();
        let key = FileKey {
            dev: kernel_dev(meta.dev()),
            ino: meta.ino(),
        };
        // SAFETY: a private read-only mapping of a file we own, unmapped below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                3 * 4096,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        let watched: HashSet<FileKey> = [key].into_iter().collect();
        let held = held_by(Path::new("/proc/self"), &watched);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        assert_eq!(held.fds, vec![(fd, key)]);
        assert_eq!(held.maps.get(&key), Some(&(3 * 4096)));
        // An unwatched file is not reported.
        let none = held_by(Path::new("/proc/self"), &HashSet::default());
        assert_eq!(none, Held::default());
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(addr, 3 * 4096) };
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn stat_parent_and_session() {
        let (ppid, _) = parent_and_leader(std::process::id()).unwrap();
        assert_eq!(ppid, std::os::unix::process::parent_id());
        assert!(parent_and_leader(u32::MAX).is_none());
    }
}
