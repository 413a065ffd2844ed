//! The kernel's per-process filter arrays (`PID_FILTER`, `SEND_FILTER`), mapped into the
//! agent's memory so that the agent's changes are atomic adds like the programs' own: a
//! read-modify-write through the bpf() syscall could lose a concurrent kernel update, and a
//! lost decrement or increment would make the filter skip a process it must look at.
use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::maps::MapData;

/// Bytes between two elements of a BPF array map.
const ELEMENT_STRIDE: usize = 8;

/// A `BPF_F_MMAPABLE` array of u32 counters shared with the kernel. The kernel lays array
/// elements out 8 bytes apart whatever their size (`round_up(value_size, 8)`), so element `i`
/// is the u32 at byte `8 * i`.
pub struct SlotCounts {
    ptr: NonNull<AtomicU32>,
    len: usize,
    bytes: usize,
    /// Kept so the map outlives the mapping (the mapping holds a reference of its own too).
    _map: MapData,
}

// SAFETY: the memory is only ever accessed through atomics, from any thread.
unsafe impl Send for SlotCounts {}

impl SlotCounts {
    pub fn map(map: MapData, len: usize) -> std::io::Result<Self> {
        let page = 4096;
        let bytes = (len * ELEMENT_STRIDE).div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks the size against
        // the map and refuses maps without BPF_F_MMAPABLE.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<AtomicU32>()).ok_or_else(std::io::Error::last_os_error)?;
        Ok(SlotCounts {
            ptr,
            len,
            bytes,
            _map: map,
        })
    }

    fn slot(&self, tgid: u32) -> &AtomicU32 {
        let i = tgid as usize % self.len;
        // SAFETY: `i < len` and the mapping holds `len` elements of ELEMENT_STRIDE bytes, each
        // starting with the u32 (aligned: the base is page-aligned); AtomicU32 has the layout
        // of u32.
        unsafe { &*self.ptr.as_ptr().byte_add(i * ELEMENT_STRIDE) }
    }

    /// One more member hashing to `tgid`'s slot.
    pub fn add(&self, tgid: u32) {
        self.slot(tgid).fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, tgid: u32) -> u32 {
        self.slot(tgid).load(Ordering::Relaxed)
    }
}

impl Drop for SlotCounts {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `map`, which nothing references after
        // this (the struct is being dropped).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}
