//! Map definitions and the read-only globals the agent fills before load.
use aya_ebpf::bindings::BPF_F_MMAPABLE;
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use llmwatch_common::{
    event::FileId,
    maps::{
        self as m, FdKey, ProcFileKey, SendKey, SendStats, Settings, TouchStats, TrackedFd, UringKey,
        WatchedFile,
    },
    offsets::Offsets,
};

/// Kernel struct offsets, resolved from BTF by the agent (see `llmwatch::probes::btf`).
#[unsafe(no_mangle)]
pub static OFFSETS: Offsets = Offsets::missing();

#[unsafe(no_mangle)]
pub static SETTINGS: Settings = Settings {
    read_report_bytes: 1 << 20,
    send_report_bytes: 1 << 20,
    agent_pid: 0,
    send_path: m::send_path::SOCK_SEND_LENGTH,
};

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(m::EVENTS_RINGBUF_BYTES, 0);

/// Weight files by identity; filled and kept current by the agent.
#[map(name = "WATCHED_FILES")]
pub static WATCHED_FILES: HashMap<FileId, WatchedFile> = HashMap::with_max_entries(m::WATCHED_FILES_MAX, 0);

/// FNV-1a hashes of watched basenames: the cheap filter for path-based changes
/// (rename, unlink, truncate), where the file may be gone by the time the syscall returns.
#[map(name = "WATCHED_NAMES")]
pub static WATCHED_NAMES: HashMap<u64, u8> = HashMap::with_max_entries(m::WATCHED_NAMES_MAX, 0);

/// Open descriptors of watched files, classified once at open.
#[map(name = "TRACKED_FDS")]
pub static TRACKED_FDS: HashMap<FdKey, TrackedFd> = HashMap::with_max_entries(m::TRACKED_FDS_MAX, 0);

/// Processes that hold, or may hold, a descriptor or mapping of a watched file: they opened
/// one, were forked by a holder, received one (SCM_RIGHTS, pidfd_getfd, io_uring), or held
/// one when the agent started (seeded from /proc). Removed when the process exits.
///
/// The value is the holder's generation (see `holders::generation`).
#[map(name = "HOLDERS")]
pub static HOLDERS: HashMap<u32, u32> = HashMap::with_max_entries(m::HOLDERS_MAX, 0);

/// Descriptors of holders found not to refer to a watched file (a socket, a pipe, another
/// file), with the holder's generation then: their next use costs one lookup instead of
/// reading the descriptor table and the inode again. Removed on close and replaced on open;
/// void after an exec (new generation). LRU, apart from TRACKED_FDS, so it can never crowd
/// out a descriptor that is tracked.
#[map(name = "NOT_WATCHED")]
pub static NOT_WATCHED: LruHashMap<FdKey, u32> = LruHashMap::with_max_entries(m::TRACKED_FDS_MAX, 0);

/// Number of `HOLDERS` per (tgid mod FILTER_SLOTS): the fd-based syscalls of a process that
/// is no holder (nearly every syscall on the host) stop after this inlined array load, before
/// any hash lookup or argument read. Collisions only cost an extra lookup. Memory-mappable so
/// the agent's own additions (seeding) are atomic adds like the kernel's.
#[map(name = "PID_FILTER")]
pub static PID_FILTER: Array<u32> = Array::with_max_entries(m::FILTER_SLOTS, BPF_F_MMAPABLE);

/// Processes whose bytes sent are counted: every process of a tree that got hold of a watched
/// file (the reader, up to two ancestors below a session leader, their descendants, and
/// later children of any of them) and the inference servers the agent names. Everything else
/// sends without a hash-map update.
#[map(name = "SEND_INTEREST")]
pub static SEND_INTEREST: HashMap<u32, u8> = HashMap::with_max_entries(m::SEND_INTEREST_MAX, 0);

/// Number of `SEND_INTEREST` entries per (tgid mod FILTER_SLOTS), as `PID_FILTER` is for
/// `HOLDERS`: the one inlined check on every send.
#[map(name = "SEND_FILTER")]
pub static SEND_FILTER: Array<u32> = Array::with_max_entries(m::FILTER_SLOTS, BPF_F_MMAPABLE);

/// Index 0: a holder has sent a message with control data (possibly SCM_RIGHTS). Until one
/// has, no descriptor of a watched file can be in flight between processes, and recvmsg stops
/// at this one array load instead of reading the caller's message header.
#[map(name = "RIGHTS_IN_FLIGHT")]
pub static RIGHTS_IN_FLIGHT: Array<u32> = Array::with_max_entries(1, 0);

/// Bytes read from watched files through io_uring, per process and open file (no descriptor
/// number is involved there), reported like descriptor reads.
#[map(name = "URING_READS")]
pub static URING_READS: LruHashMap<UringKey, TrackedFd> = LruHashMap::with_max_entries(m::URING_READS_MAX, 0);

/// Pages of watched files faulted into each process's mappings (filemap fault tracepoints).
#[map(name = "TOUCHES")]
pub static TOUCHES: LruHashMap<ProcFileKey, TouchStats> = LruHashMap::with_max_entries(m::TOUCHES_MAX, 0);

/// Watched files each process has opened: repeated read-only opens are not reported again
/// (a loader reopening a shard, a worker pool), which keeps the event rate bounded. LRU, so a
/// long-gone process's entries age out.
#[map(name = "OPENS_SEEN")]
pub static OPENS_SEEN: LruHashMap<ProcFileKey, u8> = LruHashMap::with_max_entries(m::TRACKED_FDS_MAX, 0);

/// Bytes sent per (process, destination). LRU so entries of processes whose exit the agent
/// missed age out instead of filling the map.
#[map(name = "SEND_STATS")]
pub static SEND_STATS: LruHashMap<SendKey, SendStats> = LruHashMap::with_max_entries(m::SEND_STATS_MAX, 0);

/// Character-device majors of GPUs and accelerators (195 NVIDIA, 226 DRM, ...).
#[map(name = "GPU_MAJORS")]
pub static GPU_MAJORS: HashMap<u32, u8> = HashMap::with_max_entries(64, 0);

/// Local ports of inference servers whose accepted connections are reported.
#[map(name = "INFERENCE_PORTS")]
pub static INFERENCE_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(256, 0);

/// Per-CPU counters, indexed by `llmwatch_common::maps::stat`.
#[map(name = "STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(m::stat::COUNT, 0);

#[inline(always)]
pub fn stat_inc(index: u32) {
    if let Some(p) = STATS.get_ptr_mut(index) {
        // SAFETY: `p` points into this CPU's slot of a per-CPU array: no other CPU writes it,
        // and the programs do not nest on one CPU.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn offsets() -> &'static Offsets {
    &OFFSETS
}

// The settings are read volatile: the object is built with placeholder values that the agent
// overrides before load, which the compiler must not fold in.

#[inline(always)]
pub fn settings_read_report() -> u64 {
    // SAFETY: a plain load of a field of a static (read-only global).
    unsafe { core::ptr::read_volatile(&SETTINGS.read_report_bytes) }
}

#[inline(always)]
pub fn settings_send_report() -> u64 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&SETTINGS.send_report_bytes) }
}

#[inline(always)]
pub fn agent_pid() -> u32 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&SETTINGS.agent_pid) }
}

/// Whether bytes sent are counted at syscall exit (no `sock_send_length` on this kernel).
#[inline(always)]
pub fn sends_at_syscalls() -> bool {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&SETTINGS.send_path) == m::send_path::SYSCALLS }
}
