//! Keys and values of the maps the agent and the kernel programs share, and the map names.

use crate::event::FileId;

/// Map names, so the agent refers to the same maps the kernel crate defines.
pub mod names {
    pub const EVENTS: &str = "EVENTS";
    pub const WATCHED_FILES: &str = "WATCHED_FILES";
    pub const WATCHED_NAMES: &str = "WATCHED_NAMES";
    pub const TRACKED_FDS: &str = "TRACKED_FDS";
    pub const OPENS_SEEN: &str = "OPENS_SEEN";
    pub const SEND_STATS: &str = "SEND_STATS";
    pub const GPU_MAJORS: &str = "GPU_MAJORS";
    pub const INFERENCE_PORTS: &str = "INFERENCE_PORTS";
    pub const STATS: &str = "STATS";
    pub const HOLDERS: &str = "HOLDERS";
    pub const PID_FILTER: &str = "PID_FILTER";
    pub const SEND_INTEREST: &str = "SEND_INTEREST";
    pub const SEND_FILTER: &str = "SEND_FILTER";
    pub const URING_READS: &str = "URING_READS";
    pub const TOUCHES: &str = "TOUCHES";
}

/// Value of `WATCHED_FILES` (key: [`FileId`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct WatchedFile {
    /// Reserved for per-file classes (weights, manifest, adapter); 0 today.
    pub class: u32,
    pub _pad: u32,
}

/// Key of `TRACKED_FDS`: one open descriptor of a watched file.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FdKey {
    pub pid: u32,
    pub fd: u32,
}

/// Value of `TRACKED_FDS`: what the descriptor refers to and what has been read through it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TrackedFd {
    pub file: FileId,
    /// `struct file *` at open time; a read through an fd whose table slot no longer holds this
    /// pointer (closed by close_range or exec and reused) is not counted.
    pub file_ptr: u64,
    /// Bytes read through this descriptor since open.
    pub bytes: u64,
    /// Value of `bytes` at the last report.
    pub reported: u64,
    /// `i_size` at open, so mmap events can be clipped to the file.
    pub size: u64,
    /// Bytes written through this descriptor (a tamper event is sent on the first write).
    pub written: u64,
}

/// A process and a watched file: key of `OPENS_SEEN` (read-only opens after the first are not
/// reported again; their reads still are) and of `TOUCHES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProcFileKey {
    pub file: FileId,
    pub pid: u32,
    pub _pad: u32,
}

/// Key of `URING_READS`: bytes a process read from one open watched file through io_uring,
/// where no descriptor number is involved (the `struct file` is the identity).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UringKey {
    pub file_ptr: u64,
    pub pid: u32,
    pub _pad: u32,
}

/// Value of `TOUCHES`: pages of a watched file faulted into one process's mappings.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TouchStats {
    pub file: FileId,
    pub pages: u64,
    /// Value of `pages` at the last report.
    pub reported: u64,
}

/// Slots of the per-process filter arrays (`PID_FILTER`, `SEND_FILTER`): tgid modulo this.
pub const FILTER_SLOTS: u32 = 1 << 16;

/// Values of [`Settings::send_path`]: where bytes sent are counted.
pub mod send_path {
    /// The `sock_send_length` tracepoint: every sendmsg in the kernel, whatever the syscall.
    pub const SOCK_SEND_LENGTH: u32 = 0;
    /// The syscall exit hook (write/writev/send*/sendmmsg/sendfile/splice on sockets) plus
    /// io_uring send completions: kernels without `sock_send_length` (6.1 and older).
    pub const SYSCALLS: u32 = 1;
}

/// Key of `SEND_STATS`: one (process, destination) pair.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SendKey {
    pub addr: [u8; 16],
    pub pid: u32,
    pub family: u16,
    pub port: u16,
}

/// Value of `SEND_STATS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SendStats {
    pub bytes: u64,
    pub reported: u64,
    pub protocol: u16,
    pub _pad: [u16; 3],
}

/// Indexes into the per-CPU `STATS` array (u64 counters).
pub mod stat {
    /// Event kinds each per-kind range below has room for (`kind & (KINDS - 1)`).
    pub const KINDS: u32 = 32;
    /// Ring-buffer reservations that failed, i.e. events lost. Index = EVENT kind (1..COUNT).
    pub const RINGBUF_DROPS_BASE: u32 = 0;
    /// Events submitted, by kind (index = base + kind).
    pub const EVENTS_BASE: u32 = KINDS;
    /// `TRACKED_FDS` inserts refused (map full): reads through that fd go uncounted.
    pub const TRACKED_FDS_FULL: u32 = 2 * KINDS;
    /// `SEND_STATS` inserts refused.
    pub const SEND_STATS_FULL: u32 = 2 * KINDS + 1;
    /// Kernel memory reads (bpf_probe_read_kernel) that failed.
    pub const PROBE_READ_ERRORS: u32 = 66;
    /// `HOLDERS` / `SEND_INTEREST` / `URING_READS` / `TOUCHES` inserts refused (map full).
    pub const HOLDERS_FULL: u32 = 67;
    pub const INTEREST_FULL: u32 = 68;
    pub const URING_READS_FULL: u32 = 69;
    pub const TOUCHES_FULL: u32 = 70;
    pub const COUNT: u32 = 80;
}

/// Settings the agent writes into the programs' read-only globals before load.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// A read event is written each time this many more bytes were read through a descriptor.
    pub read_report_bytes: u64,
    /// Same for bytes sent to one destination.
    pub send_report_bytes: u64,
    /// Pid of the agent itself: its own reads of weight files (hashing, discovery) are not events.
    pub agent_pid: u32,
    /// One of [`send_path`].
    pub send_path: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            read_report_bytes: 1 << 20,
            send_report_bytes: 1 << 20,
            agent_pid: 0,
            send_path: send_path::SOCK_SEND_LENGTH,
        }
    }
}

pub const WATCHED_FILES_MAX: u32 = 1 << 16;
pub const WATCHED_NAMES_MAX: u32 = 1 << 16;
pub const TRACKED_FDS_MAX: u32 = 1 << 16;
pub const SEND_STATS_MAX: u32 = 1 << 16;
/// Processes holding (or that may hold) a descriptor or mapping of a watched file.
pub const HOLDERS_MAX: u32 = 1 << 16;
/// Processes whose sends are counted (trees that read weights, inference servers).
pub const SEND_INTEREST_MAX: u32 = 1 << 16;
pub const URING_READS_MAX: u32 = 1 << 14;
pub const TOUCHES_MAX: u32 = 1 << 16;
pub const EVENTS_RINGBUF_BYTES: u32 = 8 << 20;

/// FNV-1a over a file name, as both sides compute it for `WATCHED_NAMES`.
pub const fn name_hash(name: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < name.len() {
        h ^= name[i] as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    h
}

const _: () = assert!(core::mem::size_of::<FileId>() == 16);
