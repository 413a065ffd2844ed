//! Kernel records decoded into typed events.
//!
//! The decoder trusts nothing: a record shorter than its kind's struct, or of an unknown kind,
//! is an error that names the kind and sizes, never a panic.
use std::net::IpAddr;

use llmwatch_common::{
    event::{self as raw, EventHeader, kind, read_reason, tamper_op},
    syscalls,
};
use serde::{Deserialize, Serialize};

/// A short name that is static when decoded live and owned when read back from a recording.
pub type Name = std::borrow::Cow<'static, str>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than the {need}-byte header")]
    ShortHeader { len: usize, need: usize },
    #[error("{kind} record of {len} bytes is shorter than its {need}-byte layout")]
    Short {
        kind: &'static str,
        len: usize,
        need: usize,
    },
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
}

/// Who did it, as captured in the kernel at event time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub cgroup_id: u64,
}

/// A file identity in kernel encoding.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    pub dev: u32,
    pub ino: u64,
}

impl From<raw::FileId> for FileKey {
    fn from(f: raw::FileId) -> Self {
        FileKey {
            dev: f.dev,
            ino: f.ino,
        }
    }
}

impl From<FileKey> for raw::FileId {
    fn from(f: FileKey) -> Self {
        raw::FileId {
            dev: f.dev,
            _pad: 0,
            ino: f.ino,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReadReason {
    First,
    Progress,
    Close,
    Flush,
    IoUring,
    Unknown,
}

impl ReadReason {
    fn from_raw(v: u32) -> Self {
        match v {
            read_reason::FIRST => Self::First,
            read_reason::PROGRESS => Self::Progress,
            read_reason::CLOSE => Self::Close,
            read_reason::FLUSH => Self::Flush,
            read_reason::IO_URING => Self::IoUring,
            _ => Self::Unknown,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TamperOp {
    Write,
    Truncate,
    RenameFrom,
    RenameTo,
    Unlink,
    OpenTruncate,
    OpenWrite,
    Unknown,
}

impl TamperOp {
    fn from_raw(v: u32) -> Self {
        match v {
            tamper_op::WRITE => Self::Write,
            tamper_op::TRUNCATE => Self::Truncate,
            tamper_op::RENAME_FROM => Self::RenameFrom,
            tamper_op::RENAME_TO => Self::RenameTo,
            tamper_op::UNLINK => Self::Unlink,
            tamper_op::OPEN_TRUNCATE => Self::OpenTruncate,
            tamper_op::OPEN_WRITE => Self::OpenWrite,
            _ => Self::Unknown,
        }
    }
}

/// What happened. Field names are part of the JSON event stream users and rules read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    FileOpen {
        file: FileKey,
        fd: i32,
        flags: u32,
        size: u64,
        syscall: Name,
        /// How the process got the descriptor: "opened", or "inherited" (first use of one it
        /// did not open: fork/exec, or opened before the agent started), "received"
        /// (SCM_RIGHTS), "pidfd_getfd", "io_uring".
        #[serde(default = "opened")]
        origin: Name,
    },
    FileOpenDenied {
        path: String,
        dirfd: i32,
        flags: u32,
        errno: i32,
        syscall: Name,
    },
    FileRead {
        file: FileKey,
        fd: i32,
        bytes: u64,
        total: u64,
        reason: ReadReason,
        syscall: Name,
        /// Which open of the file (a reused fd number gets a new instance).
        #[serde(default)]
        instance: u64,
    },
    FileMmap {
        file: FileKey,
        fd: i32,
        addr: u64,
        len: u64,
        offset: u64,
        prot: u32,
        flags: u32,
        file_size: u64,
    },
    /// Pages of a watched file this process touched through its mappings (faulted in), as
    /// bytes: what it read of a mapping, as opposed to `file_mmap`'s `len`, what it could read.
    FileTouch {
        file: FileKey,
        /// Bytes since the previous report for this process and file.
        bytes: u64,
        /// Bytes of the file touched by this process so far (at most the file's size).
        total: u64,
        /// Bytes of the file this process has mapped (the largest mapping seen).
        mapped: u64,
        /// "faults" (counted in the kernel) or "smaps" (resident pages sampled from
        /// /proc/PID/smaps), whichever saw more.
        source: Name,
    },
    FileTamper {
        file: Option<FileKey>,
        op: TamperOp,
        fd: i32,
        dirfd: i32,
        path: Option<String>,
        bytes: u64,
        syscall: Name,
    },
    NetConnect {
        dest: IpAddr,
        port: u16,
        proto: Name,
        fd: i32,
        in_progress: bool,
    },
    NetSend {
        dest: IpAddr,
        port: u16,
        proto: Name,
        bytes: u64,
        total: u64,
        reason: ReadReason,
    },
    NetAccept {
        client: IpAddr,
        client_port: u16,
        local_port: u16,
        fd: i32,
    },
    ProcExec {
        ppid: u32,
        filename: String,
        argv: Vec<String>,
    },
    ProcFork {
        child_pid: u32,
    },
    ProcExit {
        exit_code: u32,
    },
    /// Another process loaded a BPF program.
    BpfLoad {
        prog_type: u32,
        prog_name: String,
        fd: i32,
    },
    /// Another process took a handle to a BPF object by id ("prog", "map" or "link").
    BpfAccess {
        object: Name,
        id: u32,
        fd: i32,
        /// Set by the agent when the object is one of its own: the program or map name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ours: Option<String>,
    },
    /// A process attached to or read/wrote another's memory (ptrace, process_vm_*, /proc/<pid>/mem).
    ProcAccess {
        target_pid: u32,
        op: Name,
        bytes: u64,
    },
    /// A process opened (or, with `errno`, tried to open) a GPU/accelerator device node.
    GpuOpen {
        major: u32,
        minor: u32,
        /// Conventional /dev name ("nvidia0", "dri/renderD128"); filled in by enrichment.
        device: String,
        /// Path as opened, when known (failed opens; successful ones via /proc/<pid>/fd).
        path: Option<String>,
        fd: i32,
        flags: u32,
        /// Set when the open failed (e.g. ENXIO: node without a loaded driver).
        errno: Option<i32>,
    },
    /// The guard blocked something in the kernel or, `enforced: false`, would have (monitor).
    Guard {
        /// "over_budget" (a tree went past its egress budget), "connect_refused",
        /// "send_refused", "killed" (the sender got SIGKILL), "open_refused".
        action: Name,
        /// The hook that acted: "lsm/socket_sendmsg", "lsm/socket_connect", "lsm/file_open",
        /// "cgroup/connect", "sock_send_length", "sys_exit".
        hook: Name,
        enforced: bool,
        /// Root pid of the process tree whose egress is accounted (0 for opens).
        root: u32,
        /// Bytes of protected files the tree read, bytes it sent outside the allowlist (what
        /// got out), its budget then.
        read: u64,
        sent: u64,
        budget: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dest: Option<IpAddr>,
        #[serde(default)]
        port: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<FileKey>,
        /// Refusals this record stands for (the first, then batches of 64).
        #[serde(default)]
        count: u32,
    },
}

impl EventKind {
    /// The `kind` tag as serialized, without serializing.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::FileOpen { .. } => "file_open",
            EventKind::FileOpenDenied { .. } => "file_open_denied",
            EventKind::FileRead { .. } => "file_read",
            EventKind::FileMmap { .. } => "file_mmap",
            EventKind::FileTouch { .. } => "file_touch",
            EventKind::FileTamper { .. } => "file_tamper",
            EventKind::NetConnect { .. } => "net_connect",
            EventKind::NetSend { .. } => "net_send",
            EventKind::NetAccept { .. } => "net_accept",
            EventKind::ProcExec { .. } => "proc_exec",
            EventKind::ProcFork { .. } => "proc_fork",
            EventKind::ProcExit { .. } => "proc_exit",
            EventKind::ProcAccess { .. } => "proc_access",
            EventKind::BpfLoad { .. } => "bpf_load",
            EventKind::BpfAccess { .. } => "bpf_access",
            EventKind::GpuOpen { .. } => "gpu_open",
            EventKind::Guard { .. } => "guard",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// CLOCK_BOOTTIME nanoseconds.
    pub ts_ns: u64,
    pub task: Task,
    #[serde(flatten)]
    pub kind: EventKind,
}

fn opened() -> Name {
    "opened".into()
}

/// Name of a [`raw::open_origin`] value.
pub fn origin_name(origin: u32) -> &'static str {
    match origin {
        raw::open_origin::OPENED => "opened",
        raw::open_origin::INHERITED => "inherited",
        raw::open_origin::RECEIVED => "received",
        raw::open_origin::PIDFD_GETFD => "pidfd_getfd",
        raw::open_origin::IO_URING => "io_uring",
        raw::open_origin::INSTALLED => "installed",
        _ => "unknown",
    }
}

fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// A NUL-terminated path from the kernel, written as in JSON (`json_path`): exact, also when
/// it is not UTF-8, so it still names the file it named.
fn cpath(bytes: &[u8]) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    crate::json_path::path_to_json(std::path::Path::new(std::ffi::OsStr::from_bytes(&bytes[..end])))
        .into_owned()
}

/// An address as the kernel records carry it (IPv4 in the first four bytes) as an IpAddr.
pub fn ip(family: u16, addr: [u8; 16]) -> IpAddr {
    if family == libc::AF_INET as u16 {
        IpAddr::from([addr[0], addr[1], addr[2], addr[3]])
    } else {
        IpAddr::from(addr)
    }
}

/// Name of an IP protocol number as events carry it.
pub fn proto_name(p: u16) -> &'static str {
    match p {
        6 => "tcp",
        17 => "udp",
        _ => "other",
    }
}

fn sock_type_name(t: u16) -> &'static str {
    match t {
        1 => "tcp",
        2 => "udp",
        _ => "other",
    }
}

/// Splits a NUL-separated argv block.
fn argv(block: &[u8]) -> Vec<String> {
    block
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn read_as<T: Copy>(buf: &[u8], name: &'static str) -> Result<T, DecodeError> {
    let need = std::mem::size_of::<T>();
    if buf.len() < need {
        return Err(DecodeError::Short {
            kind: name,
            len: buf.len(),
            need,
        });
    }
    // SAFETY: length checked; T is a repr(C) plain-data type for which every bit pattern is
    // valid; read_unaligned makes no alignment assumption about the ring-buffer slice.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr() as *const T) })
}

/// Decodes one ring-buffer record.
pub fn decode(buf: &[u8]) -> Result<Event, DecodeError> {
    let need = std::mem::size_of::<EventHeader>();
    if buf.len() < need {
        return Err(DecodeError::ShortHeader { len: buf.len(), need });
    }
    let hdr: EventHeader = read_as(buf, "header")?;
    let kind = match hdr.kind {
        kind::FILE_OPEN => {
            let e: raw::FileOpenEvent = read_as(buf, "file_open")?;
            let io_uring = e.origin == raw::open_origin::IO_URING;
            EventKind::FileOpen {
                file: e.file.into(),
                fd: e.fd,
                flags: e.flags,
                size: e.size,
                // io_uring opens carry the opcode, not a syscall number.
                syscall: if io_uring {
                    "io_uring".into()
                } else {
                    syscalls::name(e.syscall as u64).into()
                },
                origin: origin_name(e.origin).into(),
            }
        }
        kind::FILE_TOUCH => {
            let e: raw::FileTouchEvent = read_as(buf, "file_touch")?;
            EventKind::FileTouch {
                file: e.file.into(),
                bytes: e.bytes,
                total: e.total,
                mapped: 0,
                source: "faults".into(),
            }
        }
        kind::FILE_OPEN_DENIED => {
            let e: raw::FileOpenDeniedEvent = read_as(buf, "file_open_denied")?;
            EventKind::FileOpenDenied {
                path: cpath(&e.path),
                dirfd: e.dirfd,
                flags: e.flags,
                // A garbage record can hold i32::MIN, whose negation overflows (a panic in
                // debug builds; found by fuzzing). The kernel only writes -4095..0 here.
                errno: e.ret.saturating_neg(),
                syscall: syscalls::name(e.syscall as u64).into(),
            }
        }
        kind::FILE_READ => {
            let e: raw::FileReadEvent = read_as(buf, "file_read")?;
            let reason = ReadReason::from_raw(e.reason);
            EventKind::FileRead {
                file: e.file.into(),
                fd: e.fd,
                bytes: e.bytes,
                total: e.total,
                reason,
                syscall: if reason == ReadReason::IoUring {
                    "io_uring".into()
                } else {
                    syscalls::name(e.syscall as u64).into()
                },
                instance: e.instance,
            }
        }
        kind::FILE_MMAP => {
            let e: raw::FileMmapEvent = read_as(buf, "file_mmap")?;
            EventKind::FileMmap {
                file: e.file.into(),
                fd: e.fd,
                addr: e.addr,
                len: e.len,
                offset: e.offset,
                prot: e.prot,
                flags: e.flags,
                file_size: e.size,
            }
        }
        kind::FILE_TAMPER => {
            let e: raw::FileTamperEvent = read_as(buf, "file_tamper")?;
            let by_fd = e.fd >= 0;
            EventKind::FileTamper {
                file: by_fd.then(|| e.file.into()),
                op: TamperOp::from_raw(e.op),
                fd: e.fd,
                dirfd: e.dirfd,
                path: (!by_fd).then(|| cpath(&e.path)),
                bytes: e.bytes,
                syscall: syscalls::name(e.syscall as u64).into(),
            }
        }
        kind::NET_CONNECT => {
            let e: raw::NetConnectEvent = read_as(buf, "net_connect")?;
            EventKind::NetConnect {
                dest: ip(e.family, e.addr),
                port: e.port,
                proto: sock_type_name(e.sock_type).into(),
                fd: e.fd,
                in_progress: e.ret != 0,
            }
        }
        kind::NET_SEND => {
            let e: raw::NetSendEvent = read_as(buf, "net_send")?;
            EventKind::NetSend {
                dest: ip(e.family, e.addr),
                port: e.port,
                proto: proto_name(e.protocol).into(),
                bytes: e.bytes,
                total: e.total,
                reason: ReadReason::from_raw(e.reason),
            }
        }
        kind::NET_ACCEPT => {
            let e: raw::NetAcceptEvent = read_as(buf, "net_accept")?;
            EventKind::NetAccept {
                client: ip(e.family, e.addr),
                client_port: e.port,
                local_port: e.local_port,
                fd: e.fd,
            }
        }
        kind::PROC_EXEC => {
            let e: raw::ProcExecEvent = read_as(buf, "proc_exec")?;
            let n = (e.args_len as usize).min(e.args.len());
            EventKind::ProcExec {
                ppid: e.ppid,
                filename: cpath(&e.filename),
                argv: crate::redact::argv(argv(&e.args[..n])),
            }
        }
        kind::PROC_FORK => {
            let e: raw::ProcForkEvent = read_as(buf, "proc_fork")?;
            EventKind::ProcFork {
                child_pid: e.child_pid,
            }
        }
        kind::PROC_EXIT => {
            let e: raw::ProcExitEvent = read_as(buf, "proc_exit")?;
            EventKind::ProcExit {
                exit_code: e.exit_code,
            }
        }
        kind::GPU_OPEN => {
            let e: raw::GpuOpenEvent = read_as(buf, "gpu_open")?;
            EventKind::GpuOpen {
                major: e.major,
                minor: e.minor,
                device: String::new(),
                path: None,
                fd: e.fd,
                flags: e.flags,
                errno: None,
            }
        }
        kind::BPF_LOAD => {
            let e: raw::BpfLoadEvent = read_as(buf, "bpf_load")?;
            EventKind::BpfLoad {
                prog_type: e.prog_type,
                prog_name: cstr(&e.name),
                fd: e.fd,
            }
        }
        kind::BPF_ACCESS => {
            let e: raw::BpfAccessEvent = read_as(buf, "bpf_access")?;
            EventKind::BpfAccess {
                object: match e.cmd {
                    raw::bpf_cmd::PROG_GET_FD_BY_ID => "prog".into(),
                    raw::bpf_cmd::MAP_GET_FD_BY_ID => "map".into(),
                    raw::bpf_cmd::LINK_GET_FD_BY_ID => "link".into(),
                    other => format!("cmd {other}").into(),
                },
                id: e.id,
                fd: e.fd,
                ours: None,
            }
        }
        kind::PROC_ACCESS => {
            let e: raw::ProcAccessEvent = read_as(buf, "proc_access")?;
            let op = match e.op {
                raw::access_op::PTRACE_ATTACH => "ptrace_attach",
                raw::access_op::PTRACE_SEIZE => "ptrace_seize",
                raw::access_op::PROCESS_VM_READV => "process_vm_readv",
                raw::access_op::PROCESS_VM_WRITEV => "process_vm_writev",
                raw::access_op::PROC_MEM_OPEN => "proc_mem_open",
                _ => "unknown",
            };
            EventKind::ProcAccess {
                target_pid: e.target_pid,
                op: op.into(),
                bytes: e.bytes,
            }
        }
        llmwatch_common::guard::KIND => {
            use llmwatch_common::guard::{action, hook};
            let e: llmwatch_common::guard::GuardEvent = read_as(buf, "guard")?;
            let action = match e.action {
                action::EGRESS_OVER_BUDGET => "over_budget",
                action::CONNECT_REFUSED => "connect_refused",
                action::SEND_REFUSED => "send_refused",
                action::KILLED => "killed",
                action::OPEN_REFUSED => "open_refused",
                _ => "unknown",
            };
            let hook = match e.hook {
                hook::SEND_TRACEPOINT => "sock_send_length",
                hook::SEND_SYSCALL => "sys_exit",
                hook::LSM_SOCKET_CONNECT => "lsm/socket_connect",
                hook::LSM_SOCKET_SENDMSG => "lsm/socket_sendmsg",
                hook::LSM_FILE_OPEN => "lsm/file_open",
                hook::CGROUP_CONNECT => "cgroup/connect",
                hook::SENDPAGE => "fentry/kernel_sendpage",
                _ => "unknown",
            };
            let has_dest = e.family != 0;
            EventKind::Guard {
                action: action.into(),
                hook: hook.into(),
                enforced: e.enforced != 0,
                root: e.root,
                read: e.read,
                sent: e.sent,
                budget: e.budget,
                dest: has_dest.then(|| ip(e.family, e.addr)),
                port: e.port,
                file: (e.file.ino != 0).then(|| e.file.into()),
                count: e.count,
            }
        }
        other => return Err(DecodeError::UnknownKind(other)),
    };
    Ok(Event {
        ts_ns: hdr.ts_ns,
        task: Task {
            pid: hdr.pid,
            tid: hdr.tid,
            uid: hdr.uid,
            gid: hdr.gid,
            comm: cstr(&hdr.comm),
            cgroup_id: hdr.cgroup_id,
        },
        kind,
    })
}

/// Raw bytes of a record, for tests and the fuzzers: the inverse of `decode` for one struct.
pub fn encode<T: Copy>(record: &T) -> Vec<u8> {
    // SAFETY: T is a repr(C) plain-data record; we copy its bytes, padding fields included.
    unsafe { std::slice::from_raw_parts(record as *const T as *const u8, std::mem::size_of::<T>()) }.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(kind: u32) -> EventHeader {
        let mut comm = [0u8; 16];
        comm[..3].copy_from_slice(b"cat");
        EventHeader {
            ts_ns: 7,
            cgroup_id: 9,
            kind,
            pid: 100,
            tid: 101,
            uid: 1000,
            gid: 1000,
            _pad: 0,
            comm,
        }
    }

    #[test]
    fn decodes_read_with_header() {
        let rec = raw::FileReadEvent {
            hdr: hdr(kind::FILE_READ),
            file: raw::FileId {
                dev: 0x80_0001,
                _pad: 0,
                ino: 42,
            },
            bytes: 4096,
            total: 8192,
            fd: 3,
            syscall: syscalls::PREAD64 as u32,
            reason: read_reason::PROGRESS,
            _pad: 0,
            instance: 0,
        };
        let ev = decode(&encode(&rec)).unwrap();
        assert_eq!(ev.task.pid, 100);
        assert_eq!(ev.task.comm, "cat");
        assert_eq!(
            ev.kind,
            EventKind::FileRead {
                file: FileKey {
                    dev: 0x80_0001,
                    ino: 42
                },
                fd: 3,
                bytes: 4096,
                total: 8192,
                reason: ReadReason::Progress,
                syscall: "pread64".into(),
                instance: 0
            }
        );
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["kind"], "file_read");
        assert_eq!(
            ev.kind.name(),
            "file_read",
            "name() agrees with the serialized tag"
        );
        assert_eq!(json["syscall"], "pread64");
    }

    #[test]
    fn decodes_exec_argv_only_to_args_len() {
        let mut args = [0u8; raw::ARGS_LEN];
        args[..14].copy_from_slice(b"nc\0-q\x001\0SECRET");
        let mut filename = [0u8; raw::PATH_LEN];
        filename[..11].copy_from_slice(b"/usr/bin/nc");
        let rec = raw::ProcExecEvent {
            hdr: hdr(kind::PROC_EXEC),
            ppid: 1,
            args_len: 8,
            filename,
            args,
        };
        let ev = decode(&encode(&rec)).unwrap();
        assert_eq!(
            ev.kind,
            EventKind::ProcExec {
                ppid: 1,
                filename: "/usr/bin/nc".into(),
                argv: vec!["nc".into(), "-q".into(), "1".into()]
            }
        );
    }

    #[test]
    fn decodes_ipv4_and_ipv6_destinations() {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let rec = raw::NetSendEvent {
            hdr: hdr(kind::NET_SEND),
            addr,
            family: 2,
            port: 9000,
            protocol: 6,
            _pad: 0,
            bytes: 10,
            total: 10,
            reason: read_reason::FIRST,
            _pad2: 0,
        };
        let ev = decode(&encode(&rec)).unwrap();
        assert!(
            matches!(ev.kind, EventKind::NetSend { dest, port: 9000, ref proto, .. } if dest == IpAddr::from([127,0,0,1]) && proto == "tcp")
        );
        let rec6 = raw::NetConnectEvent {
            hdr: hdr(kind::NET_CONNECT),
            addr: std::net::Ipv6Addr::LOCALHOST.octets(),
            family: 10,
            port: 443,
            sock_type: 2,
            _pad: 0,
            fd: 5,
            ret: -115,
        };
        let ev = decode(&encode(&rec6)).unwrap();
        assert_eq!(
            ev.kind,
            EventKind::NetConnect {
                dest: "::1".parse().unwrap(),
                port: 443,
                proto: "udp".into(),
                fd: 5,
                in_progress: true
            }
        );
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        assert!(matches!(
            decode(&[0u8; 10]),
            Err(DecodeError::ShortHeader { len: 10, .. })
        ));
        let mut buf = encode(&hdr(kind::FILE_OPEN));
        assert!(matches!(
            decode(&buf),
            Err(DecodeError::Short {
                kind: "file_open",
                ..
            })
        ));
        buf = encode(&hdr(999));
        assert_eq!(decode(&buf), Err(DecodeError::UnknownKind(999)));
        // Every truncation of a valid record is an error, never a panic.
        let rec = raw::GpuOpenEvent {
            hdr: hdr(kind::GPU_OPEN),
            major: 195,
            minor: 0,
            fd: 3,
            flags: 2,
        };
        let full = encode(&rec);
        for n in 0..full.len() {
            assert!(decode(&full[..n]).is_err(), "truncated to {n}");
        }
        assert!(decode(&full).is_ok());
    }

    #[test]
    fn path_tamper_has_path_not_file() {
        let mut path = [0u8; raw::PATH_LEN];
        path[..18].copy_from_slice(b"model.safetensors\0");
        let rec = raw::FileTamperEvent {
            hdr: hdr(kind::FILE_TAMPER),
            file: raw::FileId::default(),
            bytes: 0,
            op: tamper_op::UNLINK,
            fd: -1,
            dirfd: -100,
            syscall: syscalls::UNLINKAT as u32,
            path,
        };
        let ev = decode(&encode(&rec)).unwrap();
        assert_eq!(
            ev.kind,
            EventKind::FileTamper {
                file: None,
                op: TamperOp::Unlink,
                fd: -1,
                dirfd: -100,
                path: Some("model.safetensors".into()),
                bytes: 0,
                syscall: "unlinkat".into()
            }
        );
    }

    #[test]
    fn denied_open_with_i32_min_ret_does_not_overflow() {
        // fuzz/regressions/event_decode/file_open_denied_ret_i32_min_negate_overflow
        let rec = raw::FileOpenDeniedEvent {
            hdr: hdr(kind::FILE_OPEN_DENIED),
            ret: i32::MIN,
            flags: 0,
            dirfd: -100,
            syscall: syscalls::OPENAT as u32,
            path: [0xff; raw::PATH_LEN],
        };
        let ev = decode(&encode(&rec)).unwrap();
        assert!(
            matches!(ev.kind, EventKind::FileOpenDenied { errno: i32::MAX, .. }),
            "{ev:?}"
        );
        serde_json::to_string(&ev).unwrap();
    }

    #[test]
    fn kernel_paths_keep_non_utf8_bytes() {
        let mut path = [0u8; raw::PATH_LEN];
        let name = b"/models/m\xff\\x.gguf";
        path[..name.len()].copy_from_slice(name);
        let rec = raw::FileOpenDeniedEvent {
            hdr: hdr(kind::FILE_OPEN_DENIED),
            ret: -13,
            flags: 0,
            dirfd: -100,
            syscall: syscalls::OPENAT as u32,
            path,
        };
        let ev = decode(&encode(&rec)).unwrap();
        let EventKind::FileOpenDenied { path, .. } = &ev.kind else {
            panic!("{ev:?}")
        };
        // Escaped, not replaced: the byte and the backslash both come back.
        assert_eq!(path, "/models/m\\xff\\\\x.gguf");
        use std::os::unix::ffi::OsStrExt as _;
        let back = crate::enrich::resolve_user_path(1, -100, path);
        assert_eq!(back.as_os_str().as_bytes(), name);
    }
}
