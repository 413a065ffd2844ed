//! The kernel's per-process filter arrays (`PID_FILTER`, `SEND_FILTER`), changed by the agent
//! through a memory mapping so that its changes are atomic adds like the programs' own: a
//! read-modify-write through the bpf() syscall could lose a concurrent kernel update, and a
//! lost decrement or increment would make the filter skip a process it must look at.
//!
//! Only the page holding the slot is mapped, for the one add, then unmapped: the agent changes
//! these rarely (processes found at start-up, inference servers), and keeping both arrays
//! mapped would count a megabyte of kernel memory as the agent's resident size.
use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    sync::atomic::{AtomicU32, Ordering},
};

use aya::maps::MapData;

/// Bytes between two elements of a BPF array map: the kernel lays them out 8 bytes apart
/// whatever their size (`round_up(value_size, 8)`), so element `i` is the u32 at `8 * i`.
const ELEMENT_STRIDE: usize = 8;
const PAGE: usize = 4096;

/// A `BPF_F_MMAPABLE` array of u32 counters shared with the kernel.
pub struct SlotCounts {
    map: MapData,
    len: usize,
}

impl SlotCounts {
    pub fn new(map: MapData, len: usize) -> Self {
        SlotCounts { map, len }
    }

    /// One more member hashing to `tgid`'s slot.
    pub fn add(&self, tgid: u32) -> std::io::Result<()> {
        let byte = (tgid as usize % self.len) * ELEMENT_STRIDE;
        let (page, within) = (byte / PAGE, byte % PAGE);
        // SAFETY: a fresh shared mapping of one page of the map at a page offset inside it
        // (the kernel checks the range against the map and refuses maps without
        // BPF_F_MMAPABLE); unmapped below, and nothing else refers to it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.map.fd().as_fd().as_raw_fd(),
                (page * PAGE) as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `within` is inside the page and 8-aligned (ELEMENT_STRIDE), so the u32 at
        // it is aligned; AtomicU32 has the layout of u32; the page is mapped until munmap.
        let slot = unsafe { &*ptr.cast::<u8>().add(within).cast::<AtomicU32>() };
        slot.fetch_add(1, Ordering::Relaxed);
        // SAFETY: unmapping exactly the page mapped above; `slot` is not used after this.
        unsafe { libc::munmap(ptr, PAGE) };
        Ok(())
    }
}
