//! Ring-buffer records: reserve (counting every failure), fill the common header, submit.
use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use aya_ebpf::{
    helpers::generated::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_ktime_get_boot_ns,
    },
    maps::ring_buf::RingBufEntry,
};
use llmwatch_common::{event::EventHeader, maps::stat};

use crate::maps::{EVENTS, stat_inc};

/// Reserves a record of type `T` (which starts with an `EventHeader`) and fills the header.
/// A full ring buffer is counted per kind in `STATS`, so the agent can report the loss.
#[inline(always)]
pub fn reserve<T: 'static>(kind: u32) -> Option<RingBufEntry<T>> {
    let Some(mut entry) = EVENTS.reserve::<T>(0) else {
        stat_inc(stat::RINGBUF_DROPS_BASE + (kind & (stat::KINDS - 1)));
        return None;
    };
    let hdr = entry.as_mut_ptr() as *mut EventHeader;
    // SAFETY: `hdr` points at the start of a reservation of `size_of::<T>()` bytes that this
    // program owns until submit, and every record type `T` begins with an `EventHeader`.
    unsafe {
        let pid_tgid = bpf_get_current_pid_tgid();
        let uid_gid = bpf_get_current_uid_gid();
        (*hdr).ts_ns = bpf_ktime_get_boot_ns();
        (*hdr).cgroup_id = bpf_get_current_cgroup_id();
        (*hdr).kind = kind;
        (*hdr).pid = (pid_tgid >> 32) as u32;
        (*hdr).tid = pid_tgid as u32;
        (*hdr).uid = uid_gid as u32;
        (*hdr).gid = (uid_gid >> 32) as u32;
        (*hdr)._pad = 0;
        bpf_get_current_comm((*hdr).comm.as_mut_ptr() as *mut _, 16);
    }
    Some(entry)
}

/// Userspace is woken only once this much is waiting; it also drains on a short timer, so a
/// lone event waits at most that long. Batching wake-ups keeps the reader's cost per event low.
const WAKEUP_BYTES: u64 = 64 * 1024;

#[inline(always)]
pub fn submit<T>(entry: RingBufEntry<T>, kind: u32) {
    // What this record added to the ring: its 8-byte header and the body rounded up to 8.
    let size = (core::mem::size_of::<T>() as u64 + 8 + 7) & !7;
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    // Wake when this record crosses a WAKEUP_BYTES boundary, not on every record past the
    // first: while the reader lags, a forced wake-up per record (an irq_work IPI each) cost
    // the producers more than their own syscalls. At most one wake-up per 64 KiB written.
    let flags = if pending >= WAKEUP_BYTES && pending % WAKEUP_BYTES < size {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags as u64);
    stat_inc(stat::EVENTS_BASE + (kind & (stat::KINDS - 1)));
}
