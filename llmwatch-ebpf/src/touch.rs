//! Pages of watched files that processes touch through their mappings.
//!
//! A mapping says how much a process *could* read; the page faults say what it did. The
//! filemap tracepoints fire in the faulting task: `mm_filemap_map_pages` when fault-around maps
//! a range of cached pages (start..=last, clipped to the file), `mm_filemap_fault` when one
//! page is faulted in. They are recent (6.18 has them, 6.1 does not); where they are missing,
//! kprobes on `filemap_map_pages` / `filemap_fault` see the same calls, and where those are
//! refused too the agent has only its `/proc/PID/smaps` samples. A fault that maps a whole
//! large folio or a 2 MiB PMD is counted as one page or not at all: a lower bound. Large folios
//! are the page cache's norm on new kernels (XFS since 5.18, ext4 since 6.16, tmpfs with
//! `huge=`), and since 6.18 fault-around maps whole folios while the tracepoint still reports
//! its 64 KiB window: one 64 MiB model touched end to end counts about 2 MiB there.
//!
//! Where fentry/fexit load (the fast path), fexit programs on the functions that install the
//! page-table entries count the pages as mapped instead: `set_pte_range(vmf, folio, page, nr,
//! addr)` (6.6+) and `do_set_pmd` (a whole PMD). Every file-backed fault that maps pages goes
//! through one of them, whatever the folio size, so the count is exact; the tracepoints and
//! kprobes are then not attached (they would count the same pages twice). Before 6.6 the PTE
//! function was `do_set_pte`, called once per page: a trampoline per page of every process's
//! file faults costs more than the kprobes' one call per fault, and fault-around there maps
//! only its window, which the kprobes count exactly; so those kernels keep the kprobes and add
//! `do_set_pmd` alone (a PMD fault then counts its window too: at most 16 pages over).
use llmwatch_common::{
    event::{FileId, FileTouchEvent, kind},
    maps::{ProcFileKey, TouchStats, stat},
};

use crate::{
    emit, holders,
    kernel::{self, off, read},
    maps::{TOUCHES, WATCHED_FILES, settings_read_report, stat_inc},
};

const PAGE_SHIFT: u64 = 12;

/// kprobe on `filemap_map_pages(vmf, start_pgoff, end_pgoff)`: the range is not yet clipped
/// to the file (`on_pages` does).
#[inline(always)]
pub fn on_map_pages_call(vmf: u64, first: u64, last: u64) {
    if let Some(mapping) = vmf_mapping(vmf) {
        on_pages(mapping, first, last);
    }
}

/// kprobe on `filemap_fault(vmf)`: one page, at `vmf->pgoff`.
#[inline(always)]
pub fn on_fault_call(vmf: u64) {
    let Some(mapping) = vmf_mapping(vmf) else {
        return;
    };
    let Some(index) = read::<u64>(vmf, off!(vmf_pgoff)) else {
        return;
    };
    on_pages(mapping, index, index);
}

/// `vmf->vma->vm_file->f_mapping`, for a process that may hold a watched file: only a holder
/// can have a mapping of one (mapping needs a descriptor; a child inherits the holder mark
/// with the mapping), so everyone else stops at one array load.
#[inline(always)]
fn vmf_mapping(vmf: u64) -> Option<u64> {
    if !holders::current_may_hold() {
        return None;
    }
    let vma: u64 = read(vmf, off!(vmf_vma))?;
    let file: u64 = read(vma, off!(vma_file))?;
    read(file, off!(file_mapping))
}

/// Pages in one PMD mapping: 2 MiB of 4 KiB pages (the fast path is x86_64 only).
const PMD_PAGES: u64 = 512;

/// fexit on `set_pte_range(vmf, folio, page, nr, addr)` (6.6+): `nr` pages of one folio mapped.
#[inline(always)]
pub fn on_ptes_set(vmf: u64, nr: u64) {
    on_mapped(vmf, nr & 0xffff_ffff);
}

/// fexit on `do_set_pmd(vmf, ...)`: `ret` 0 when it mapped a whole PMD (else the fault falls
/// back to page-sized entries, counted by `on_ptes_set`).
#[inline(always)]
pub fn on_pmd_set(vmf: u64, ret: u64) {
    if ret == 0 {
        on_mapped(vmf, PMD_PAGES);
    }
}

/// `pages` just mapped by a fault in `vmf->vma`, a file-backed mapping.
#[inline(always)]
fn on_mapped(vmf: u64, pages: u64) {
    if pages == 0 {
        return;
    }
    let Some(mapping) = vmf_mapping(vmf) else {
        return;
    };
    let Some((pid, file, _)) = watched_holder_file(mapping) else {
        return;
    };
    count(pid, file, pages);
}

/// The holder (the current process) and watched file behind `mapping`, with the file's size.
/// Callers have checked `holders::current_may_hold` (`vmf_mapping`, `on_traced_pages`).
#[inline(always)]
fn watched_holder_file(mapping: u64) -> Option<(u32, FileId, u64)> {
    if mapping == 0 {
        return None;
    }
    let (pid, _) = kernel::current_pid_tgid();
    if !holders::is_holder(pid) {
        return None;
    }
    let inode = read::<u64>(mapping, off!(mapping_host))?;
    let ino = read::<u64>(inode, off!(inode_ino))?;
    let sb = read::<u64>(inode, off!(inode_sb))?;
    let dev = read::<u32>(sb, off!(sb_dev))?;
    let file = FileId { dev, _pad: 0, ino };
    // SAFETY: a lookup whose value is only tested for presence.
    unsafe { WATCHED_FILES.get(&file) }?;
    let size: u64 = read(inode, off!(inode_size)).unwrap_or(0);
    if size == 0 {
        return None;
    }
    Some((pid, file, size))
}

/// The filemap tracepoints: pages `first..=last` of `mapping` faulted in.
#[inline(always)]
pub fn on_traced_pages(mapping: u64, first: u64, last: u64) {
    if holders::current_may_hold() {
        on_pages(mapping, first, last);
    }
}

#[inline(always)]
fn on_pages(mapping: u64, first: u64, last: u64) {
    if last < first {
        return;
    }
    let Some((pid, file, size)) = watched_holder_file(mapping) else {
        return;
    };
    // Never past the end of the file (the kprobe sees the range before the kernel clips it).
    let last = last.min((size - 1) >> PAGE_SHIFT);
    if last < first {
        return;
    }
    count(pid, file, last - first + 1);
}

/// Adds `pages` to what `pid` touched of `file`; reports the first touch at once, then every
/// `read_report` bytes.
#[inline(always)]
fn count(pid: u32, file: FileId, pages: u64) {
    let key = ProcFileKey { file, pid, _pad: 0 };
    let report_pages = settings_read_report() >> PAGE_SHIFT;
    let (total, reported) = match TOUCHES.get_ptr_mut(&key) {
        Some(t) => {
            // SAFETY: `t` points at a live TOUCHES value.
            kernel::atomic_add(unsafe { &raw mut (*t).pages }, pages);
            // SAFETY: as above.
            let (total, reported) = unsafe { ((*t).pages, (*t).reported) };
            if total.wrapping_sub(reported) < report_pages {
                return;
            }
            // SAFETY: as above.
            unsafe { (*t).reported = total };
            (total, reported)
        }
        None => {
            let value = TouchStats {
                file,
                pages,
                reported: pages,
            };
            if TOUCHES.insert(&key, &value, 0).is_err() {
                stat_inc(stat::TOUCHES_FULL);
            }
            // The first touch is reported at once: it says which process reads the mapping.
            (pages, 0)
        }
    };
    let Some(mut rec) = emit::reserve::<FileTouchEvent>(kind::FILE_TOUCH) else {
        return;
    };
    let ev = rec.as_mut_ptr();
    // SAFETY: `ev` points into our own ring-buffer reservation of a FileTouchEvent.
    unsafe {
        (*ev).file = file;
        (*ev).bytes = (total - reported) << PAGE_SHIFT;
        (*ev).total = total << PAGE_SHIFT;
    }
    emit::submit(rec, kind::FILE_TOUCH);
}
