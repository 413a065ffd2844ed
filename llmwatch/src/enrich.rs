//! Events joined with what the agent knows: the process (exe, user, parent chain, container)
//! and the watched file (path, size, format, class). Path-based kernel reports (refused opens,
//! renames, unlinks) are kept only when the path names a watched file.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{
    events::{Event, EventKind, FileKey},
    state::{
        files::{AssetClass, WatchedFile, WatchedSet, WeightFormat},
        gpu::GpuDevices,
        pods::{PodDirectory, PodIdentity},
        process::{Ancestor, ProcessTable},
    },
};

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    pub runtime: Option<crate::events::Name>,
    /// cgroup v2 path (what server identities and container rules match on).
    #[serde(default)]
    pub cgroup: Option<String>,
    /// Namespace, pod, container, owner and kept labels, as the container runtime names the
    /// container of `container_id`; absent outside pods, and where the runtime could not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<std::sync::Arc<PodIdentity>>,
    pub ancestry: Vec<Ancestor>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileView {
    #[serde(
        serialize_with = "crate::json_path::ser_path",
        deserialize_with = "crate::json_path::de_path"
    )]
    pub path: std::sync::Arc<std::path::Path>,
    pub dev: u32,
    pub ino: u64,
    pub size: u64,
    pub format: WeightFormat,
    /// What the file is: weights, adapter, dataset... Recordings made before classes existed
    /// hold only weights.
    #[serde(default)]
    pub class: AssetClass,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enriched {
    /// Wall-clock time of the event (RFC 3339), from the kernel timestamp.
    pub time: chrono::DateTime<chrono::Utc>,
    #[serde(flatten)]
    pub event: Event,
    /// Shared between the events of one process (see `Context::views`).
    pub process: std::sync::Arc<ProcessView>,
    /// The watched file the event is about, weights or another asset (the event's own `file` is
    /// its kernel identity).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<FileView>,
}

pub fn file_view(f: &WatchedFile) -> FileView {
    FileView {
        path: f.path.clone(),
        dev: f.id.dev,
        ino: f.id.ino,
        size: f.size,
        format: f.format,
        class: f.class,
    }
}

fn by_key(files: &WatchedSet, key: FileKey) -> Option<FileView> {
    files.get(&key.into()).map(file_view)
}

/// Absolute form of a path a process passed relative to `dirfd` (AT_FDCWD = its cwd).
/// Best effort: the process may be gone, then the path stays as passed.
pub fn resolve_user_path(pid: u32, dirfd: i32, path: &str) -> PathBuf {
    // Kernel paths arrive escaped as in JSON (non-UTF-8 bytes as \xNN).
    let decoded = crate::json_path::path_from_json(path).unwrap_or_else(|| PathBuf::from(path));
    let p = decoded.as_path();
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
    /// Maps kernel timestamps to wall time (see `BootAnchor`).
    pub anchor: crate::clock::BootAnchor,
    /// Process views built once per (pid, cgroup, comm) and shared by its events; the caller
    /// forgets a pid's view when it execs, forks or exits.
    pub views: &'a mut ProcessViews,
    /// Pod identities by container id, from the container runtime.
    pub pods: &'a PodDirectory,
}

pub type ProcessViews = foldhash::HashMap<u32, std::sync::Arc<ProcessView>>;

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
    if let EventKind::GpuOpen {
        major,
        minor,
        device,
        path,
        fd,
        ..
    } = &mut ev.kind
    {
        if !cx.gpus.is_gpu(*major, *minor) {
            return None;
        }
        *device = cx.gpus.device_name(*major, *minor);
        *path = std::fs::read_link(format!("/proc/{}/fd/{fd}", ev.task.pid))
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
    }
    if matches!(ev.kind, EventKind::FileOpenDenied { .. }) {
        failed_gpu_open(&mut ev, cx.gpus);
    }
    let file = match &ev.kind {
        EventKind::FileOpen { file, .. }
        | EventKind::FileRead { file, .. }
        | EventKind::FileMmap { file, .. }
        | EventKind::FileTouch { file, .. } => by_key(files, *file),
        EventKind::FileTamper { file: Some(file), .. } | EventKind::Guard { file: Some(file), .. } => {
            by_key(files, *file)
        }
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
    let time = cx.anchor.wall(ev.ts_ns);
    if let Some(v) = cx.views.get(&pid).filter(|v| v.comm == ev.task.comm) {
        return Some(Enriched {
            time,
            event: ev,
            process: v.clone(),
            weight: file,
        });
    }
    let (cgroup, container) = procs.container(ev.task.cgroup_id, pid);
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
        kubernetes: container.container_id.as_deref().and_then(|id| cx.pods.get(id)),
        container_id: container.container_id,
        pod_uid: container.pod_uid,
        runtime: container.runtime.map(Into::into),
        cgroup,
        ancestry: procs.ancestry(pid),
    };
    let process = std::sync::Arc::new(process);
    // Only processes the table knows are cached (an unknown one may be resolved later).
    if procs.get(pid).is_some() {
        cx.views.insert(pid, process.clone());
    }
    Some(Enriched {
        time,
        event: ev,
        process,
        weight: file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{ReadReason, TamperOp, Task};

    fn event(kind: EventKind) -> Event {
        // A pid no process has, so nothing is looked up from /proc.
        Event {
            ts_ns: 1,
            task: Task {
                pid: 90_000_123,
                tid: 90_000_123,
                uid: 0,
                gid: 0,
                comm: "cp".into(),
                cgroup_id: 0,
            },
            kind,
        }
    }

    fn setup() -> (tempfile::TempDir, WatchedSet, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let header = br#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[1u8; 64]);
        std::fs::write(&path, bytes).unwrap();
        let mut set = WatchedSet::new(vec![dir.path().to_path_buf()]);
        set.rescan();
        assert_eq!(set.len(), 1);
        (dir, set, path)
    }

    #[test]
    fn file_events_get_the_weight_and_process() {
        let (_d, files, path) = setup();
        let key: FileKey = files.iter().next().unwrap().id.into();
        let mut procs = ProcessTable::default();
        let gpus = GpuDevices::new("", &[]);
        let clock = crate::clock::SystemClock;
        let mut views = ProcessViews::default();
        let pods = PodDirectory::new(
            Default::default(),
            std::time::Duration::ZERO,
            std::time::Duration::ZERO,
        );
        let mut cx = Context {
            pods: &pods,
            anchor: crate::clock::BootAnchor::now(&clock),
            views: &mut views,
            procs: &mut procs,
            files: &files,
            gpus: &gpus,
        };
        let ev = event(EventKind::FileRead {
            file: key,
            fd: 3,
            bytes: 10,
            total: 10,
            reason: ReadReason::First,
            syscall: "read".into(),
            instance: 0,
        });
        let e = enrich(ev, &mut cx).unwrap();
        assert_eq!(*e.weight.as_ref().unwrap().path, *path);
        let weight = e.weight.unwrap();
        assert_eq!(
            (weight.format, weight.class),
            (WeightFormat::Safetensors, AssetClass::Weights)
        );
        assert_eq!(e.process.comm, "cp");
        let json = serde_json::to_value(
            enrich(
                event(EventKind::FileMmap {
                    file: key,
                    fd: 3,
                    addr: 0,
                    len: 1,
                    offset: 0,
                    prot: 1,
                    flags: 2,
                    file_size: 1,
                }),
                &mut cx,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(json["kind"], "file_mmap");
        assert_eq!(json["weight"]["path"], path.to_str().unwrap());
        assert_eq!(json["weight"]["class"], "weights");
        assert_eq!(json["file"]["ino"], key.ino);
        // A recording from before classes existed reads back as weights.
        let mut old = json["weight"].clone();
        old.as_object_mut().unwrap().remove("class");
        let view: FileView = serde_json::from_value(old).unwrap();
        assert_eq!(view.class, AssetClass::Weights);
    }

    #[test]
    fn path_reports_are_kept_only_for_watched_paths() {
        let (_d, files, path) = setup();
        let mut procs = ProcessTable::default();
        let gpus = GpuDevices::new("", &[]);
        let clock = crate::clock::SystemClock;
        let mut views = ProcessViews::default();
        let pods = PodDirectory::new(
            Default::default(),
            std::time::Duration::ZERO,
            std::time::Duration::ZERO,
        );
        let mut cx = Context {
            pods: &pods,
            anchor: crate::clock::BootAnchor::now(&clock),
            views: &mut views,
            procs: &mut procs,
            files: &files,
            gpus: &gpus,
        };
        let tamper = |p: &str| {
            event(EventKind::FileTamper {
                file: None,
                op: TamperOp::Unlink,
                fd: -1,
                dirfd: libc::AT_FDCWD,
                path: Some(p.into()),
                bytes: 0,
                syscall: "unlink".into(),
            })
        };
        let kept = enrich(tamper(path.to_str().unwrap()), &mut cx).unwrap();
        assert_eq!(*kept.weight.unwrap().path, *path);
        // Same basename elsewhere (the kernel's name filter lets it through): dropped.
        assert!(enrich(tamper("/elsewhere/model.safetensors"), &mut cx).is_none());
        let denied = event(EventKind::FileOpenDenied {
            path: "/nope/x.bin".into(),
            dirfd: libc::AT_FDCWD,
            flags: 0,
            errno: 13,
            syscall: "openat".into(),
        });
        assert!(enrich(denied, &mut cx).is_none());
    }

    #[test]
    fn gpu_opens_are_named_and_display_nodes_dropped() {
        let (_d, files, _) = setup();
        let mut procs = ProcessTable::default();
        let gpus = GpuDevices::new("", &[]);
        let clock = crate::clock::SystemClock;
        let mut views = ProcessViews::default();
        let pods = PodDirectory::new(
            Default::default(),
            std::time::Duration::ZERO,
            std::time::Duration::ZERO,
        );
        let mut cx = Context {
            pods: &pods,
            anchor: crate::clock::BootAnchor::now(&clock),
            views: &mut views,
            procs: &mut procs,
            files: &files,
            gpus: &gpus,
        };
        let gpu = |major, minor| {
            event(EventKind::GpuOpen {
                major,
                minor,
                device: String::new(),
                path: None,
                fd: 4,
                flags: 2,
                errno: None,
            })
        };
        let e = enrich(gpu(195, 0), &mut cx).unwrap();
        assert!(matches!(e.event.kind, EventKind::GpuOpen { ref device, .. } if device == "nvidia0"));
        assert!(
            enrich(gpu(226, 0), &mut cx).is_none(),
            "DRM card node is display, not compute"
        );
        assert!(enrich(gpu(226, 128), &mut cx).is_some());
    }
}
