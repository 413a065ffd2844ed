//! Records the kernel programs write into the `EVENTS` ring buffer.
//!
//! Every record starts with an [`EventHeader`]; `kind` says which struct follows. Records are
//! written straight into the ring-buffer reservation (the BPF stack is only 512 bytes).

/// Length of a task's `comm`.
pub const COMM_LEN: usize = 16;
/// Bytes of a path kept in an event; longer paths are cut and flagged by `path_truncated`.
pub const PATH_LEN: usize = 256;
/// Bytes of the argument vector kept on exec (NUL-separated, as in `/proc/<pid>/cmdline`).
pub const ARGS_LEN: usize = 256;

/// Values of [`EventHeader::kind`].
pub mod kind {
    pub const FILE_OPEN: u32 = 1;
    pub const FILE_OPEN_DENIED: u32 = 2;
    pub const FILE_READ: u32 = 3;
    pub const FILE_MMAP: u32 = 4;
    pub const FILE_TAMPER: u32 = 5;
    pub const NET_CONNECT: u32 = 6;
    pub const NET_SEND: u32 = 7;
    pub const NET_ACCEPT: u32 = 8;
    pub const PROC_EXEC: u32 = 9;
    pub const PROC_FORK: u32 = 10;
    pub const PROC_EXIT: u32 = 11;
    pub const GPU_OPEN: u32 = 12;
    pub const PROC_ACCESS: u32 = 13;
    pub const BPF_LOAD: u32 = 14;
    pub const BPF_ACCESS: u32 = 15;
    pub const FILE_TOUCH: u32 = 16;
    /// One past the largest kind: sizes per-kind counter arrays (at most
    /// [`crate::maps::stat::KINDS`]).
    pub const COUNT: u32 = 17;
}

/// Common prefix of every record. Captured in the kernel at event time so a process that has
/// already exited is still attributed.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// `bpf_ktime_get_boot_ns` (CLOCK_BOOTTIME).
    pub ts_ns: u64,
    /// cgroup v2 id of the task (`bpf_get_current_cgroup_id`).
    pub cgroup_id: u64,
    pub kind: u32,
    /// Process id (kernel tgid).
    pub pid: u32,
    /// Thread id (kernel pid).
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}

/// Identity of a file as the kernel sees it: `s_dev` of its super block (kernel encoding,
/// `major << 20 | minor`) and inode number.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
}

/// How a process came to hold a descriptor of a watched file ([`FileOpenEvent::origin`]).
pub mod open_origin {
    /// It opened the file (open family, open_by_handle_at).
    pub const OPENED: u32 = 0;
    /// First use of a descriptor it did not open itself: inherited across fork/exec, or opened
    /// before the agent started (`syscall` is the call that used it).
    pub const INHERITED: u32 = 1;
    /// Received over a unix socket (SCM_RIGHTS, recvmsg/recvmmsg).
    pub const RECEIVED: u32 = 2;
    /// Taken from another process with pidfd_getfd.
    pub const PIDFD_GETFD: u32 = 3;
    /// Got through io_uring: opened (IORING_OP_OPENAT/OPENAT2), or, where `fd_install` is
    /// hooked, received by an io_uring recvmsg.
    pub const IO_URING: u32 = 4;
    /// Installed by the kernel some other way (seccomp's SECCOMP_IOCTL_NOTIF_ADDFD, binder,
    /// ...): only seen where `fd_install` is hooked (the fast path); `syscall` is the call the
    /// process was in.
    pub const INSTALLED: u32 = 5;
}

/// A process got a descriptor of a watched file: opened it, or (see `origin`) inherited,
/// received or took one.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FileOpenEvent {
    pub hdr: EventHeader,
    pub file: FileId,
    /// `i_size` at open time.
    pub size: u64,
    pub fd: i32,
    /// `f_flags` of the opened file (O_ACCMODE, O_TRUNC, O_DIRECT...).
    pub flags: u32,
    pub syscall: u32,
    /// One of [`open_origin`].
    pub origin: u32,
}

/// Pages of a watched file a process's mappings faulted in (what it touched, not what it
/// mapped), counted where the kernel has the filemap fault tracepoints.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FileTouchEvent {
    pub hdr: EventHeader,
    pub file: FileId,
    /// Bytes since the previous report for this process and file.
    pub bytes: u64,
    /// Bytes faulted in by this process from this file since it was first seen.
    pub total: u64,
}

/// An open that failed with EACCES or EPERM (refused), or ENXIO/ENODEV (device node without a
/// driver). No file was opened, so the agent resolves `path` against the watched set and the
/// GPU device nodes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FileOpenDeniedEvent {
    pub hdr: EventHeader,
    /// Negative errno returned by the syscall.
    pub ret: i32,
    /// Requested open flags.
    pub flags: u32,
    /// dirfd argument (AT_FDCWD for open/creat).
    pub dirfd: i32,
    pub syscall: u32,
    pub path: [u8; PATH_LEN],
}

/// Why a [`FileReadEvent`] was written.
pub mod read_reason {
    /// First report of a destination (sends); reads report on progress and close only.
    pub const FIRST: u32 = 1;
    /// Another `READ_REPORT_BYTES` were read since the last report.
    pub const PROGRESS: u32 = 2;
    /// The descriptor was closed; `bytes` is what was read since the last report.
    pub const CLOSE: u32 = 3;
    /// The agent swept the in-kernel counter (periodic flush or process exit).
    pub const FLUSH: u32 = 4;
    /// A read completed through io_uring (reported per completion).
    pub const IO_URING: u32 = 5;
}

/// Bytes actually returned (not requested) from a watched file.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FileReadEvent {
    pub hdr: EventHeader,
    pub file: FileId,
    /// Bytes since the previous report for this descriptor.
    pub bytes: u64,
    /// Bytes read through this descriptor since it was opened (or first seen).
    pub total: u64,
    /// -1 for io_uring completions.
    pub fd: i32,
    /// Syscall (or io_uring opcode) of the read that triggered the report.
    pub syscall: u32,
    pub reason: u32,
    pub _pad: u32,
    /// Identity of this open of the file (its `struct file`), so reports of a reused fd
    /// number are never mixed with the previous file's.
    pub instance: u64,
}

/// A watched file was mapped into memory. Real loaders (safetensors, llama.cpp, torch with
/// `mmap=True`) read weights this way, without read().
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FileMmapEvent {
    pub hdr: EventHeader,
    pub file: FileId,
    pub addr: u64,
    pub len: u64,
    pub offset: u64,
    /// File size at map time, so the agent can clip `len` to what the mapping can expose.
    pub size: u64,
    pub fd: i32,
    pub prot: u32,
    pub flags: u32,
    pub _pad: u32,
}

/// Operations reported by [`FileTamperEvent`].
pub mod tamper_op {
    /// Bytes written through a descriptor of a watched file (`bytes` set).
    pub const WRITE: u32 = 1;
    /// ftruncate on a watched descriptor, or truncate(2) of a path whose name is watched.
    pub const TRUNCATE: u32 = 2;
    /// A watched name was renamed away (`path` is the old name).
    pub const RENAME_FROM: u32 = 3;
    /// Something was renamed onto a watched name (`path` is the new name).
    pub const RENAME_TO: u32 = 4;
    /// A watched name was unlinked.
    pub const UNLINK: u32 = 5;
    /// A watched file was opened with O_TRUNC.
    pub const OPEN_TRUNCATE: u32 = 6;
    /// A watched file was opened for writing.
    pub const OPEN_WRITE: u32 = 7;
}

/// A change to a watched file. Descriptor-based operations carry `file`; path-based ones
/// (rename, unlink, truncate) carry the path as the caller passed it (relative to `dirfd`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FileTamperEvent {
    pub hdr: EventHeader,
    pub file: FileId,
    pub bytes: u64,
    pub op: u32,
    pub fd: i32,
    pub dirfd: i32,
    pub syscall: u32,
    pub path: [u8; PATH_LEN],
}

/// An outbound connect() that succeeded or is in progress.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NetConnectEvent {
    pub hdr: EventHeader,
    /// IPv4 addresses use the first 4 bytes; network byte order.
    pub addr: [u8; 16],
    /// AF_INET or AF_INET6.
    pub family: u16,
    /// Host byte order.
    pub port: u16,
    /// SOCK_STREAM / SOCK_DGRAM (socket type), 0 if unknown.
    pub sock_type: u16,
    pub _pad: u16,
    pub fd: i32,
    pub ret: i32,
}

/// Bytes a process sent to one destination, aggregated in the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NetSendEvent {
    pub hdr: EventHeader,
    pub addr: [u8; 16],
    pub family: u16,
    pub port: u16,
    /// IPPROTO_TCP / IPPROTO_UDP.
    pub protocol: u16,
    pub _pad: u16,
    /// Bytes since the previous report for this (process, destination).
    pub bytes: u64,
    /// Bytes since the first report.
    pub total: u64,
    pub reason: u32,
    pub _pad2: u32,
}

/// An inbound connection accepted on a configured inference port.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NetAcceptEvent {
    pub hdr: EventHeader,
    /// Client address.
    pub addr: [u8; 16],
    pub family: u16,
    /// Client port.
    pub port: u16,
    /// Local (listening) port.
    pub local_port: u16,
    pub _pad: u16,
    pub fd: i32,
    pub _pad2: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcExecEvent {
    pub hdr: EventHeader,
    pub ppid: u32,
    /// Bytes of `args` that are valid.
    pub args_len: u32,
    pub filename: [u8; PATH_LEN],
    pub args: [u8; ARGS_LEN],
}

/// A new process (not a thread) was forked; the header is the parent.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcForkEvent {
    pub hdr: EventHeader,
    pub child_pid: u32,
    pub _pad: u32,
}

/// A process (its thread-group leader) exited.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcExitEvent {
    pub hdr: EventHeader,
    /// `task->exit_code` (wait status encoding).
    pub exit_code: u32,
    pub _pad: u32,
}

/// A GPU/accelerator character device was opened.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GpuOpenEvent {
    pub hdr: EventHeader,
    pub major: u32,
    pub minor: u32,
    pub fd: i32,
    pub flags: u32,
}

/// How one process reached into another's memory.
pub mod access_op {
    pub const PTRACE_ATTACH: u32 = 1;
    pub const PTRACE_SEIZE: u32 = 2;
    pub const PROCESS_VM_READV: u32 = 3;
    pub const PROCESS_VM_WRITEV: u32 = 4;
    /// open() of /proc/<pid>/mem.
    pub const PROC_MEM_OPEN: u32 = 5;
}

/// A process attached to, or read/wrote the memory of, another process.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcAccessEvent {
    pub hdr: EventHeader,
    /// Bytes transferred (process_vm_readv/writev), else 0.
    pub bytes: u64,
    pub target_pid: u32,
    pub op: u32,
}

/// Another process loaded a BPF program (a rootkit's or a competing agent's, or a debugger's).
/// Another process took a handle to a BPF object by its id (`bpf(BPF_*_GET_FD_BY_ID)`): the
/// step before changing a map's contents, reading a ring buffer, or detaching a program, for
/// objects that are not pinned (the agent pins nothing).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BpfAccessEvent {
    pub hdr: EventHeader,
    /// The bpf() command (BPF_PROG_GET_FD_BY_ID = 13, BPF_MAP_GET_FD_BY_ID = 14,
    /// BPF_LINK_GET_FD_BY_ID = 30).
    pub cmd: u32,
    /// The object id asked for.
    pub id: u32,
    /// The fd returned.
    pub fd: i32,
    pub _pad: u32,
}

pub mod bpf_cmd {
    pub const PROG_GET_FD_BY_ID: u32 = 13;
    pub const MAP_GET_FD_BY_ID: u32 = 14;
    pub const LINK_GET_FD_BY_ID: u32 = 30;
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BpfLoadEvent {
    pub hdr: EventHeader,
    /// `bpf_attr.prog_type` (BPF_PROG_TYPE_*).
    pub prog_type: u32,
    /// The new program's fd.
    pub fd: i32,
    /// `bpf_attr.prog_name` (NUL-padded).
    pub name: [u8; 16],
}
