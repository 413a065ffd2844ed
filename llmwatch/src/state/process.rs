//! The process table: who each pid is, its parent chain and its container.
//!
//! Seeded from /proc at start-up, then kept by exec/fork/exit events. Kernel events carry
//! pid, comm, uid and cgroup id captured at event time, so a process that has already exited
//! is still attributed; /proc is only read for processes older than the agent.
use std::time::{Duration, Instant};

use foldhash::HashMap;

use serde::{Deserialize, Serialize};

use super::container::{self, ContainerInfo};
use crate::events::{Event, EventKind};

/// Parent-chain depth kept on events (init is usually reached well before).
pub const MAX_ANCESTRY: usize = 16;
/// How long an exited process stays resolvable for late events and lineage of its children.
pub const EXITED_GRACE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub argv: Vec<String>,
    pub uid: u32,
    pub cgroup_id: u64,
    #[serde(skip)]
    pub exited_at: Option<Instant>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ancestor {
    pub pid: u32,
    pub comm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
}

#[derive(Default)]
pub struct ProcessTable {
    procs: HashMap<u32, ProcessInfo>,
    /// cgroup id -> (cgroup path, container identity).
    containers: HashMap<u64, (String, ContainerInfo)>,
    users: super::users::UserNames,
    cgroups: CgroupIndex,
}

/// cgroup v2 directory inode -> path below the mount, rebuilt (at most every 2 s) on a miss.
#[derive(Default)]
struct CgroupIndex {
    root: Option<std::path::PathBuf>,
    by_id: HashMap<u64, String>,
    built: Option<Instant>,
}

impl CgroupIndex {
    fn path(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.by_id.get(&id) {
            return Some(p.clone());
        }
        // The cgroup of a container that just started is not in the index yet: ask the kernel
        // for that one directory by its id (a cgroup v2 id is its kernfs file handle) rather
        // than walk the tree again, which is rate-limited and would miss a short-lived one.
        self.find_root();
        if let Some(root) = &self.root
            && let Some(p) = cgroup_path_by_id(root, id)
        {
            self.by_id.insert(id, p.clone());
            return Some(p);
        }
        if self.built.is_some_and(|t| t.elapsed() < Duration::from_secs(2)) {
            return None;
        }
        self.rebuild();
        self.by_id.get(&id).cloned()
    }

    fn find_root(&mut self) {
        if self.root.is_none() {
            self.root = std::fs::read_to_string("/proc/self/mountinfo")
                .ok()
                .and_then(|m| cgroup2_mount(&m));
        }
    }

    fn rebuild(&mut self) {
        self.built = Some(Instant::now());
        self.find_root();
        let Some(root) = self.root.clone() else { return };
        self.by_id.clear();
        let mut stack = vec![(root.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            use std::os::unix::fs::MetadataExt as _;
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            let rel = dir
                .strip_prefix(&root)
                .map(|r| format!("/{}", r.to_string_lossy()))
                .unwrap_or_default();
            self.by_id.insert(meta.ino(), rel);
            if depth >= 32 {
                continue;
            }
            let Ok(rd) = std::fs::read_dir(&dir) else { continue };
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((e.path(), depth + 1));
                }
            }
        }
    }
}

/// The path below `root` (the cgroup2 mount) of the cgroup whose id is `id`, by
/// `open_by_handle_at` (kernfs ids are file handles of type FILEID_KERNFS, 8 bytes). Needs
/// CAP_DAC_READ_SEARCH, which the agent has as root; `None` if the cgroup is gone.
fn cgroup_path_by_id(root: &std::path::Path, id: u64) -> Option<String> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    /// `struct file_handle` with its 8-byte kernfs id.
    #[repr(C)]
    struct KernfsHandle {
        handle_bytes: u32,
        handle_type: i32,
        id: u64,
    }
    const FILEID_KERNFS: i32 = 0xfe;
    let mount = std::fs::File::open(root).ok()?;
    let mut handle = KernfsHandle {
        handle_bytes: 8,
        handle_type: FILEID_KERNFS,
        id,
    };
    // SAFETY: `handle` is a `struct file_handle` header followed by `handle_bytes` (8) bytes of
    // handle, alive for the call; `mount` is an open descriptor of the cgroup2 mount.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            (&raw mut handle).cast::<libc::file_handle>(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` was just opened by us and is owned by nothing else.
    let dir = unsafe { std::fs::File::from_raw_fd(fd) };
    let path = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())).ok()?;
    let rel = path.strip_prefix(root).ok()?;
    Some(format!("/{}", rel.to_string_lossy()))
}

/// Mount point of the cgroup v2 hierarchy, from /proc/self/mountinfo text.
fn cgroup2_mount(mountinfo: &str) -> Option<std::path::PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (post.split_whitespace().next()? == "cgroup2")
            .then(|| pre.split_whitespace().nth(4).map(Into::into))?
    })
}

impl ProcessTable {
    pub fn new() -> Self {
        ProcessTable {
            users: super::users::UserNames::from_host(),
            ..Default::default()
        }
    }

    /// Learns every process alive now from /proc.
    pub fn scan_proc(&mut self) -> usize {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return 0;
        };
        for entry in dir.flatten() {
            if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                && let Some(info) = from_proc(pid)
            {
                self.procs.insert(pid, info);
            }
        }
        self.procs.len()
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    pub fn get(&self, pid: u32) -> Option<&ProcessInfo> {
        self.procs.get(&pid)
    }

    pub fn iter(&self) -> impl Iterator<Item = &ProcessInfo> {
        self.procs.values()
    }

    /// Live processes whose parent is `pid`.
    pub fn children(&self, pid: u32) -> Vec<u32> {
        self.procs
            .values()
            .filter(|p| p.ppid == pid && p.exited_at.is_none())
            .map(|p| p.pid)
            .collect()
    }

    /// Updates the table from a lifecycle event; other events make sure their process is known.
    pub fn observe(&mut self, ev: &Event) {
        let t = &ev.task;
        match &ev.kind {
            EventKind::ProcExec { ppid, filename, argv } => {
                let info = self.procs.entry(t.pid).or_insert_with(|| ProcessInfo {
                    pid: t.pid,
                    ppid: *ppid,
                    comm: t.comm.clone(),
                    exe: None,
                    argv: Vec::new(),
                    uid: t.uid,
                    cgroup_id: t.cgroup_id,
                    exited_at: None,
                });
                info.ppid = *ppid;
                info.comm = t.comm.clone();
                info.exe = Some(resolved_exe(t.pid, filename));
                info.argv = argv.clone();
                info.uid = t.uid;
                info.cgroup_id = t.cgroup_id;
                info.exited_at = None;
            }
            EventKind::ProcFork { child_pid } => {
                self.ensure(ev);
                let parent = self.procs.get(&t.pid).cloned();
                let child = ProcessInfo {
                    pid: *child_pid,
                    ppid: t.pid,
                    comm: t.comm.clone(),
                    exe: parent.as_ref().and_then(|p| p.exe.clone()),
                    argv: parent.map(|p| p.argv).unwrap_or_default(),
                    uid: t.uid,
                    cgroup_id: t.cgroup_id,
                    exited_at: None,
                };
                self.procs.insert(*child_pid, child);
            }
            EventKind::ProcExit { .. } => {
                if let Some(p) = self.procs.get_mut(&t.pid) {
                    p.exited_at = Some(Instant::now());
                }
            }
            _ => self.ensure(ev),
        }
    }

    /// Makes sure the event's process is in the table: from /proc if it is older than the
    /// agent, else from what the kernel captured.
    fn ensure(&mut self, ev: &Event) {
        let t = &ev.task;
        if let Some(p) = self.procs.get_mut(&t.pid) {
            // comm can change (prctl, exec we missed); the kernel's is current.
            if p.comm != t.comm {
                p.comm = t.comm.clone();
            }
            return;
        }
        let info = from_proc(t.pid).unwrap_or(ProcessInfo {
            pid: t.pid,
            ppid: 0,
            comm: t.comm.clone(),
            exe: None,
            argv: Vec::new(),
            uid: t.uid,
            cgroup_id: t.cgroup_id,
            exited_at: None,
        });
        self.procs.insert(t.pid, info);
    }

    /// Parents of `pid`, nearest first, bounded and loop-safe.
    pub fn ancestry(&self, pid: u32) -> Vec<Ancestor> {
        let mut out = Vec::new();
        let mut cur = self.procs.get(&pid).map(|p| p.ppid).unwrap_or(0);
        while cur != 0 && out.len() < MAX_ANCESTRY {
            let Some(p) = self.procs.get(&cur) else {
                out.push(Ancestor {
                    pid: cur,
                    comm: String::new(),
                    exe: None,
                });
                break;
            };
            out.push(Ancestor {
                pid: p.pid,
                comm: p.comm.clone(),
                exe: p.exe.clone(),
            });
            if out.iter().filter(|a| a.pid == p.ppid).count() > 0 {
                break;
            }
            cur = p.ppid;
        }
        out
    }

    /// Container of the cgroup the kernel captured at event time. A cgroup v2 id is the inode
    /// number of the cgroup's directory, so it resolves even after the process is gone (and is
    /// right even if the pid was reused); /proc/<pid>/cgroup is the fallback.
    pub fn container(&mut self, cgroup_id: u64, pid: u32) -> (Option<String>, ContainerInfo) {
        if let Some((path, c)) = self.containers.get(&cgroup_id) {
            return (Some(path.clone()), c.clone());
        }
        let path = self
            .cgroups
            .path(cgroup_id)
            .or_else(|| container::cgroup_path_of(pid).ok());
        match path {
            Some(path) => {
                let info = container::parse_cgroup_path(&path);
                self.containers.insert(cgroup_id, (path.clone(), info.clone()));
                (Some(path), info)
            }
            // Unknown: don't cache a guess.
            None => (None, ContainerInfo::default()),
        }
    }

    /// The container id of the cgroup, as [`container`](Self::container) finds it, without
    /// copying (asked for every event when pod names are on).
    pub fn container_id(&mut self, cgroup_id: u64, pid: u32) -> Option<&str> {
        if !self.containers.contains_key(&cgroup_id) {
            self.container(cgroup_id, pid);
        }
        self.containers
            .get(&cgroup_id)
            .and_then(|(_, c)| c.container_id.as_deref())
    }

    /// Through NSS, never blocking: see `state::users`.
    pub fn user_name(&mut self, uid: u32) -> Option<&str> {
        self.users.get(uid)
    }

    /// Forgets processes that exited more than `EXITED_GRACE` ago.
    pub fn reap(&mut self) -> usize {
        let before = self.procs.len();
        self.procs
            .retain(|_, p| p.exited_at.is_none_or(|t| t.elapsed() < EXITED_GRACE));
        before - self.procs.len()
    }
}

/// The executable a process runs, as the kernel resolved it: `/proc/<pid>/exe` (symlinks
/// followed, a script's interpreter), else the exec'd path with its symlinks resolved, else the
/// path as given. Server and reader identities match this, not the path the caller passed: a
/// link named `/opt/vllm/bin/python` to `/tmp/x` is `/tmp/x`.
fn resolved_exe(pid: u32, filename: &str) -> String {
    if let Ok(p) = std::fs::read_link(format!("/proc/{pid}/exe")) {
        return p.to_string_lossy().into_owned();
    }
    // `/proc/self/exe` (busybox runs its applets so) is the agent's own binary here.
    if filename.starts_with('/')
        && !filename.starts_with("/proc/")
        && let Ok(p) = std::fs::canonicalize(filename)
    {
        return p.to_string_lossy().into_owned();
    }
    filename.to_string()
}

fn from_proc(pid: u32) -> Option<ProcessInfo> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let comm = field("Name:").unwrap_or_default();
    let ppid = field("PPid:").and_then(|v| v.parse().ok()).unwrap_or(0);
    let uid = field("Uid:")
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let argv = crate::redact::argv(
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                b.split(|&c| c == 0)
                    .filter(|s| !s.is_empty())
                    .take(16)
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            })
            .unwrap_or_default(),
    );
    Some(ProcessInfo {
        pid,
        ppid,
        comm,
        exe,
        argv,
        uid,
        cgroup_id: 0,
        exited_at: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Task;

    fn ev(pid: u32, comm: &str, kind: EventKind) -> Event {
        Event {
            ts_ns: 1,
            task: Task {
                pid,
                tid: pid,
                uid: 0,
                gid: 0,
                comm: comm.into(),
                cgroup_id: 1,
            },
            kind,
        }
    }

    #[test]
    fn lineage_from_fork_and_exec_events() {
        let mut t = ProcessTable::default();
        // pids far above pid_max so /proc lookups find nothing
        t.observe(&ev(
            90_000_001,
            "bash",
            EventKind::ProcExec {
                ppid: 0,
                filename: "/bin/bash".into(),
                argv: vec!["bash".into()],
            },
        ));
        t.observe(&ev(
            90_000_001,
            "bash",
            EventKind::ProcFork {
                child_pid: 90_000_002,
            },
        ));
        t.observe(&ev(
            90_000_002,
            "bash",
            EventKind::ProcExec {
                ppid: 90_000_001,
                filename: "/bin/cat".into(),
                argv: vec!["cat".into(), "m".into()],
            },
        ));
        let child = t.get(90_000_002).unwrap();
        // The process is gone (never was): the path with its links resolved (/bin -> usr/bin).
        let cat = std::fs::canonicalize("/bin/cat").unwrap();
        assert_eq!(child.exe.as_deref(), cat.to_str());
        assert_eq!(child.argv, vec!["cat", "m"]);
        assert_eq!(
            t.ancestry(90_000_002),
            vec![Ancestor {
                pid: 90_000_001,
                comm: "bash".into(),
                exe: std::fs::canonicalize("/bin/bash")
                    .ok()
                    .map(|p| p.to_string_lossy().into_owned())
            }]
        );
        t.observe(&ev(90_000_002, "cat", EventKind::ProcExit { exit_code: 0 }));
        assert!(t.get(90_000_002).unwrap().exited_at.is_some());
        assert_eq!(t.reap(), 0, "exited processes stay resolvable for a grace period");
    }

    #[test]
    fn ancestry_survives_loops() {
        let mut t = ProcessTable::default();
        for (pid, ppid) in [(1u32, 2u32), (2, 1)] {
            t.procs.insert(
                pid,
                ProcessInfo {
                    pid,
                    ppid,
                    comm: "x".into(),
                    exe: None,
                    argv: vec![],
                    uid: 0,
                    cgroup_id: 0,
                    exited_at: None,
                },
            );
        }
        assert!(t.ancestry(1).len() <= 2);
    }

    #[test]
    fn an_exec_is_judged_by_the_executable_the_kernel_runs_not_the_path_passed() {
        let mut t = ProcessTable::default();
        let me = std::process::id();
        t.observe(&ev(
            me,
            "vllm",
            EventKind::ProcExec {
                ppid: 1,
                filename: "/opt/vllm/bin/python".into(),
                argv: vec!["vllm".into(), "serve".into()],
            },
        ));
        let own = std::fs::read_link("/proc/self/exe").unwrap();
        assert_eq!(t.get(me).unwrap().exe.as_deref(), own.to_str());
        // Gone, relative: kept as given (matches no absolute exe glob).
        t.observe(&ev(
            90_000_003,
            "x",
            EventKind::ProcExec {
                ppid: 1,
                filename: "./x".into(),
                argv: vec![],
            },
        ));
        assert_eq!(t.get(90_000_003).unwrap().exe.as_deref(), Some("./x"));
    }

    #[test]
    fn own_process_from_proc() {
        let me = std::process::id();
        let info = from_proc(me).unwrap();
        assert_eq!(info.pid, me);
        assert!(info.exe.is_some());
    }

    #[test]
    fn cgroup2_mount_from_mountinfo() {
        let m = "35 24 0:30 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n36 24 0:31 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(m), Some("/sys/fs/cgroup/unified".into()));
        assert_eq!(cgroup2_mount("1 2 0:1 / / rw - ext4 /dev/vda rw\n"), None);
    }

    #[test]
    fn cgroup_id_resolves_through_directory_inode() {
        // Our own cgroup: its directory's inode is the id the kernel reports for us.
        let mut idx = CgroupIndex::default();
        idx.rebuild();
        let Some(root) = idx.root.clone() else {
            panic!("no cgroup2 mount on this host (needed by the agent's container attribution)");
        };
        let own = container::cgroup_path_of(std::process::id()).unwrap();
        use std::os::unix::fs::MetadataExt as _;
        let ino = std::fs::metadata(root.join(own.trim_start_matches('/')))
            .unwrap()
            .ino();
        assert_eq!(idx.path(ino).as_deref(), Some(own.as_str()));
        // And by the kernel's file handle, without the index (a cgroup created since).
        assert_eq!(cgroup_path_by_id(&root, ino).as_deref(), Some(own.as_str()));
        assert_eq!(cgroup_path_by_id(&root, u64::MAX), None);
    }
}
