//! Weight files mapped into processes, and how much of each mapping they touched.
//!
//! A mapping's length is what a process *could* read; what it read is the pages it faulted
//! in. The kernel counts them (`FileTouch` records: page-table fexit programs on the fast path,
//! else the filemap tracepoints or kprobes); here `/proc/PID/smaps` is sampled (resident pages of
//! the mappings of each watched file) every flush interval for processes that map one, and every
//! poll tick (100 ms) during the first seconds after a process maps one, which also covers
//! kernels without the tracepoints and mappings made before the agent started. A process is
//! judged on the larger of the two, never more than the file's size.
//!
//! Off the fast path the kernel's counts are a lower bound: a PMD mapping is not traced, and a
//! fault that maps a whole large folio is traced as its fault-around window or one page, so a
//! process that maps, touches and exits between two samples can be seen touching less than it
//! did (`llmwatch-ebpf/src/touch.rs`).
use foldhash::{HashMap, HashMapExt as _};

use crate::events::FileKey;

/// One process's use of one mapped file.
#[derive(Debug, Clone, Default)]
pub struct Touch {
    /// Bytes faulted in, as the kernel counted (cumulative).
    pub faults: u64,
    /// Largest resident size of its mappings of the file seen in smaps.
    pub resident: u64,
    /// Largest total length of its mappings of the file seen (mmap events, smaps).
    pub mapped: u64,
    /// Touched bytes already passed on (for a mapping older than the agent, starting at what
    /// was resident when the agent started: that happened before we watched).
    pub reported: u64,
}

impl Touch {
    /// Bytes touched and which source saw them, at most `cap` (the file's size).
    pub fn touched(&self, cap: u64) -> (u64, &'static str) {
        let (v, source) = if self.faults >= self.resident {
            (self.faults, "faults")
        } else {
            (self.resident, "smaps")
        };
        (if cap > 0 { v.min(cap) } else { v }, source)
    }
}

/// How long after its first mapping of a watched file a process is sampled every poll tick.
pub const FRESH: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Default)]
pub struct Mappings {
    by_pid: HashMap<u32, HashMap<FileKey, Touch>>,
    /// When each process was first seen mapping a watched file.
    since: HashMap<u32, std::time::Instant>,
}

impl Mappings {
    pub fn new() -> Self {
        Mappings {
            by_pid: HashMap::new(),
            since: HashMap::new(),
        }
    }

    pub fn entry(&mut self, pid: u32, file: FileKey) -> &mut Touch {
        self.since.entry(pid).or_insert_with(std::time::Instant::now);
        self.by_pid.entry(pid).or_default().entry(file).or_default()
    }

    pub fn remove(&mut self, pid: u32) -> Option<HashMap<FileKey, Touch>> {
        self.since.remove(&pid);
        self.by_pid.remove(&pid)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.by_pid.keys().copied().collect()
    }

    /// Processes that mapped a watched file less than `FRESH` ago.
    pub fn fresh_pids(&self) -> Vec<u32> {
        self.since
            .iter()
            .filter(|(_, t)| t.elapsed() < FRESH)
            .map(|(p, _)| *p)
            .collect()
    }

    pub fn files_of(&mut self, pid: u32) -> Option<&mut HashMap<FileKey, Touch>> {
        self.by_pid.get_mut(&pid)
    }
}

/// What one process maps of each file: (mapped bytes, resident bytes), from smaps text.
/// Files are identified as the kernel does (`major << 20 | minor`, inode).
pub fn parse_smaps(text: &str) -> HashMap<FileKey, (u64, u64)> {
    let mut out: HashMap<FileKey, (u64, u64)> = HashMap::new();
    let mut current: Option<FileKey> = None;
    for line in text.lines() {
        if let Some((file, len)) = vma_header(line) {
            current = file;
            if let Some(f) = file {
                out.entry(f).or_default().0 += len;
            }
            continue;
        }
        if let (Some(f), Some(rest)) = (current, line.strip_prefix("Rss:")) {
            let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            out.entry(f).or_default().1 += kb * 1024;
        }
    }
    out
}

/// A `/proc/PID/maps` or smaps VMA line: `start-end perms offset major:minor inode [path]`.
/// Returns the file (None for anonymous mappings) and the length, or None for other lines.
pub fn vma_header(line: &str) -> Option<(Option<FileKey>, u64)> {
    let mut f = line.split_ascii_whitespace();
    let (start, end) = f.next()?.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let perms = f.next()?;
    if perms.len() != 4 {
        return None;
    }
    u64::from_str_radix(f.next()?, 16).ok()?;
    let (major, minor) = f.next()?.split_once(':')?;
    let major = u32::from_str_radix(major, 16).ok()?;
    let minor = u32::from_str_radix(minor, 16).ok()?;
    let ino: u64 = f.next()?.parse().ok()?;
    let file = (ino != 0).then_some(FileKey {
        dev: (major << 20) | minor,
        ino,
    });
    Some((file, end.saturating_sub(start)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0021000 r--p 00000000 fd:01 1234                       /usr/bin/python3
Size:                132 kB
Rss:                 128 kB
7f0000000000-7f0000400000 r--s 00000000 00:2a 777                        /models/m.safetensors
Size:               4096 kB
KernelPageSize:        4 kB
Rss:                  64 kB
Pss:                  64 kB
7f0000400000-7f0000500000 rw-p 00000000 00:00 0
Size:               1024 kB
Rss:                1024 kB
7f0000500000-7f0000600000 r--s 00400000 00:2a 777                        /models/m.safetensors
Rss:                  32 kB
VmFlags: rd sh mr mw me ms sd
";

    #[test]
    fn smaps_sums_mapped_and_resident_per_file() {
        let m = parse_smaps(SMAPS);
        let model = FileKey { dev: 0x2a, ino: 777 };
        assert_eq!(m[&model], (4 * 1024 * 1024 + 1024 * 1024, 96 * 1024));
        let python = FileKey {
            dev: (0xfd << 20) | 1,
            ino: 1234,
        };
        assert_eq!(m[&python], (0x21000, 128 * 1024));
        assert_eq!(m.len(), 2, "anonymous mappings are not files: {m:?}");
    }

    #[test]
    fn field_lines_are_not_vma_headers() {
        assert!(vma_header("Rss:                  64 kB").is_none());
        assert!(vma_header("VmFlags: rd sh mr mw me ms sd").is_none());
        assert!(vma_header("").is_none());
        let (file, len) = vma_header("7f0000400000-7f0000500000 rw-p 00000000 00:00 0").unwrap();
        assert_eq!((file, len), (None, 0x100000));
    }

    #[test]
    fn touched_is_the_larger_source_capped_at_the_file() {
        let t = Touch {
            faults: 10,
            resident: 20,
            ..Default::default()
        };
        assert_eq!(t.touched(100), (20, "smaps"));
        assert_eq!(t.touched(15), (15, "smaps"));
        let t = Touch {
            faults: 30,
            resident: 20,
            ..Default::default()
        };
        assert_eq!(t.touched(100), (30, "faults"));
    }
}
