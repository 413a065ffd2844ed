//! Events joined with what the agent knows: the process (exe, user, parent chain, container)
//! and the watched file (path, size, format). Path-based kernel reports (refused opens,
//! renames, unlinks) are kept only when the path names a watched file.
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{
    events::{Event, EventKind, FileKey},
    state::{
        files::{WatchedFile, WatchedSet, WeightFormat},
        gpu::GpuDevices,
        process::{Ancestor, ProcessTable},
    },
};

#[derive(Debug, Clone, Serialize)]
pub struct ProcessView {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub argv: Vec<String>,
    pub uid: u32,
    pub user: Option<String>,
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
    pub runtime: Option<&'static str>,
    pub ancestry: Vec<Ancestor>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileView {
    pub path: PathBuf,
    pub dev: u32,
    pub ino: u64,
    pub size: u64,
    pub format: WeightFormat,
}

#[derive(Debug, Clone, Serialize)]
pub struct Enriched {
    #[serde(flatten)]
    pub event: Event,
    pub process: ProcessView,
    /// The watched weight file the event is about (the event's own `file` is its kernel identity).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<FileView>,
}

fn file_view(f: &WatchedFile) -> FileView {
    FileView {
        path: f.path.clone(),
        dev: f.id.dev,
        ino: f.id.ino,
        size: f.size,
        format: f.format,
    }
}

fn by_key(files: &WatchedSet, key: FileKey) -> Option<FileView> {
    files.get(&key.into()).map(file_view)
}

/// Absolute form of a path a process passed relative to `dirfd` (AT_FDCWD = its cwd).
/// Best effort: the process may be gone, then the path stays as passed.
pub fn resolve_user_path(pid: u32, dirfd: i32, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    let base = if dirfd == libc::AT_FDCWD {
        std::fs::read_link(format!("/proc/{pid}/cwd"))
    } else {
        std::fs::read_link(format!("/proc/{pid}/fd/{dirfd}"))
    };
    match base {
        Ok(b) => b.join(p),
        Err(_) => p.to_path_buf(),
    }
}

/// What enrichment reads.
pub struct Context<'a> {
    pub procs: &'a mut ProcessTable,
    pub files: &'a WatchedSet,
    pub gpus: &'a GpuDevices,
}

/// A failed open of a path that is a GPU device node becomes a `GpuOpen` with the errno.
fn failed_gpu_open(ev: &mut Event, gpus: &GpuDevices) {
    use std::os::unix::fs::FileTypeExt as _;
    let EventKind::FileOpenDenied {
        path,
        dirfd,
        flags,
        errno,
        ..
    } = &ev.kind
    else {
        return;
    };
    let abs = resolve_user_path(ev.task.pid, *dirfd, path);
    let Ok(meta) = std::fs::metadata(&abs) else {
        return;
    };
    if !meta.file_type().is_char_device() {
        return;
    }
    use std::os::unix::fs::MetadataExt as _;
    let rdev = meta.rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    if !gpus.is_gpu(major, minor) {
        return;
    }
    ev.kind = EventKind::GpuOpen {
        major,
        minor,
        device: gpus.device_name(major, minor),
        path: Some(abs.to_string_lossy().into_owned()),
        fd: -1,
        flags: *flags,
        errno: Some(*errno),
    };
}

/// Joins `ev` with process and file state. `None` means the event is not about anything
/// watched: a path report the kernel could only pre-filter, or a display (not compute) node.
pub fn enrich(mut ev: Event, cx: &mut Context<'_>) -> Option<Enriched> {
    let (procs, files) = (&mut *cx.procs, cx.files);
    match &mut ev.kind {
        EventKind::GpuOpen {
            major,
            minor,
            device,
            path,
            fd,
            ..
        } => {
            if !cx.gpus.is_gpu(*major, *minor) {
                return None;
            }
            *device = cx.gpus.device_name(*major, *minor);
            *path = std::fs::read_link(format!("/proc/{}/fd/{fd}", ev.task.pid))
                .ok()
                .map(|p| p.to_string_lossy().into_owned());
        }
        _ => {}
    }
    if matches!(ev.kind, EventKind::FileOpenDenied { .. }) {
        failed_gpu_open(&mut ev, cx.gpus);
    }
    let file = match &ev.kind {
        EventKind::FileOpen { file, .. }
        | EventKind::FileRead { file, .. }
        | EventKind::FileMmap { file, .. } => by_key(files, *file),
        EventKind::FileTamper {
            file: Some(file), ..
        } => by_key(files, *file),
        EventKind::FileTamper {
            file: None,
            path: Some(path),
            dirfd,
            ..
        }
        | EventKind::FileOpenDenied { path, dirfd, .. } => {
            let abs = resolve_user_path(ev.task.pid, *dirfd, path);
            Some(files.find_path(&abs).map(file_view)?)
        }
        _ => None,
    };
    let pid = ev.task.pid;
    let container = procs.container(ev.task.cgroup_id, pid);
    let (ppid, exe, argv, uid) = match procs.get(pid) {
        Some(p) => (p.ppid, p.exe.clone(), p.argv.clone(), p.uid),
        None => (0, None, Vec::new(), ev.task.uid),
    };
    let process = ProcessView {
        pid,
        ppid,
        comm: ev.task.comm.clone(),
        exe,
        argv,
        uid,
        user: procs.user_name(uid).map(str::to_string),
        container_id: container.container_id,
        pod_uid: container.pod_uid,
        runtime: container.runtime,
        ancestry: procs.ancestry(pid),
    };
    Some(Enriched {
        event: ev,
        process,
        weight: file,
    })
}
