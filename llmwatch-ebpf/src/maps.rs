//! Map definitions and the read-only globals the agent fills before load.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use llmwatch_common::{
    event::FileId,
    maps::{self as m, FdKey, OpenKey, SendKey, SendStats, Settings, TrackedFd, WatchedFile},
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
    _pad: 0,
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

/// Number of tracked descriptors per (tgid mod 65536): the fd-based syscalls of a process
/// with none (nearly every read on the host) stop after this inlined array load, before any
/// hash lookup or argument read. Collisions only cost an extra lookup.
#[map(name = "PID_FILTER")]
pub static PID_FILTER: Array<u32> = Array::with_max_entries(PID_FILTER_SLOTS, 0);
pub const PID_FILTER_SLOTS: u32 = 1 << 16;

/// Watched files each process has opened: repeated read-only opens are not reported again
/// (a loader reopening a shard, a worker pool), which keeps the event rate bounded. LRU, so a
/// long-gone process's entries age out.
#[map(name = "OPENS_SEEN")]
pub static OPENS_SEEN: LruHashMap<OpenKey, u8> = LruHashMap::with_max_entries(m::TRACKED_FDS_MAX, 0);

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
        // Per-CPU slot: no other CPU writes it, and programs do not nest on one CPU here.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn offsets() -> &'static Offsets {
    &OFFSETS
}

#[inline(always)]
pub fn settings_read_report() -> u64 {
    unsafe { core::ptr::read_volatile(&SETTINGS.read_report_bytes) }
}

#[inline(always)]
pub fn settings_send_report() -> u64 {
    unsafe { core::ptr::read_volatile(&SETTINGS.send_report_bytes) }
}

#[inline(always)]
pub fn agent_pid() -> u32 {
    unsafe { core::ptr::read_volatile(&SETTINGS.agent_pid) }
}
