//! Which processes the descriptor and send paths look at.
//!
//! A *holder* is a process that holds, or may hold, a descriptor or mapping of a watched file;
//! its descriptor syscalls are checked, and a descriptor it did not open in front of us
//! (inherited, opened before the agent started) is recognised by the file it refers to the
//! first time it is used. Everybody else's descriptor syscalls stop at one array load.
//!
//! A process whose sends are counted is *of interest*: the holder itself, up to two ancestors
//! below a session leader, their children and grandchildren at that moment, and every later
//! child of any of them (so `cat model | nc host`: the shell and its other child `nc` are in).
//! The agent adds inference servers. Everybody else's sends stop at one array load.
//!
//! Both sets are a hash map (exact membership, removed at exit) plus a counting array indexed
//! by tgid modulo `FILTER_SLOTS` (the cheap first check; a collision only costs a lookup).
use aya_ebpf::{bindings::BPF_NOEXIST, maps::HashMap};
use llmwatch_common::maps::{FILTER_SLOTS, stat};

use crate::{
    kernel::{self, off, read},
    maps::{HOLDERS, PID_FILTER, SEND_FILTER, SEND_INTEREST, agent_pid, stat_inc},
};

/// What the map helpers return when a key is already there.
const EEXIST: i32 = 17;

#[inline(always)]
fn slot_nonzero(filter: &aya_ebpf::maps::Array<u32>, tgid: u32) -> bool {
    match filter.get_ptr(tgid & (FILTER_SLOTS - 1)) {
        // SAFETY: a 4-byte load from an element of the array map, which lives as long as the
        // program.
        Some(p) => (unsafe { core::ptr::read_volatile(p) }) != 0,
        None => false,
    }
}

#[inline(always)]
fn slot_add(filter: &aya_ebpf::maps::Array<u32>, tgid: u32, delta: i32) {
    if let Some(p) = filter.get_ptr_mut(tgid & (FILTER_SLOTS - 1)) {
        // SAFETY: as in `slot_nonzero`; the counter is shared with other CPUs and the agent,
        // hence the atomic add.
        let v = unsafe { core::ptr::read_volatile(p) };
        // Never below zero: a count that wrapped would never return to zero.
        if delta > 0 || v > 0 {
            kernel::atomic_add32(p, delta as u32);
        }
    }
}

/// Adds `tgid` to `set` (with value 1); true when it was not in it before.
#[inline(always)]
fn set_add<V: From<u8>>(
    set: &HashMap<u32, V>,
    filter: &aya_ebpf::maps::Array<u32>,
    tgid: u32,
    full: u32,
) -> bool {
    match set.insert(&tgid, &V::from(1), BPF_NOEXIST as u64) {
        Ok(()) => {
            slot_add(filter, tgid, 1);
            true
        }
        Err(e) => {
            if e != -EEXIST {
                stat_inc(full);
            }
            false
        }
    }
}

#[inline(always)]
fn set_remove<V>(set: &HashMap<u32, V>, filter: &aya_ebpf::maps::Array<u32>, tgid: u32) {
    if set.remove(&tgid).is_ok() {
        slot_add(filter, tgid, -1);
    }
}

#[inline(always)]
fn set_has<V>(set: &HashMap<u32, V>, filter: &aya_ebpf::maps::Array<u32>, tgid: u32) -> bool {
    // SAFETY: a lookup whose value is only tested for presence.
    slot_nonzero(filter, tgid) && unsafe { set.get(&tgid) }.is_some()
}

/// The one check in front of every descriptor syscall: may the current process be a holder?
#[inline(always)]
pub fn current_may_hold() -> bool {
    slot_nonzero(&PID_FILTER, kernel::current_pid_tgid().0)
}

/// Whether `tgid` is a holder (exact).
#[inline(always)]
pub fn is_holder(tgid: u32) -> bool {
    set_has(&HOLDERS, &PID_FILTER, tgid)
}

/// A holder's generation: it changes at each exec (which closes close-on-exec descriptors
/// without a close we see), so what was learnt about its descriptor numbers before is void.
#[inline(always)]
pub fn generation(tgid: u32) -> Option<u32> {
    if !slot_nonzero(&PID_FILTER, tgid) {
        return None;
    }
    // SAFETY: a 4-byte copy out of a live map value.
    unsafe { HOLDERS.get(&tgid) }.copied()
}

/// The current process exec'd: a new generation if it is a holder.
#[inline(always)]
pub fn on_exec(tgid: u32) {
    if !slot_nonzero(&PID_FILTER, tgid) {
        return;
    }
    if let Some(g) = HOLDERS.get_ptr_mut(&tgid) {
        kernel::atomic_add32(g, 1);
    }
}

/// Makes the current process a holder; the first time, its process tree becomes of interest.
#[inline(always)]
pub fn become_holder() {
    let (tgid, _) = kernel::current_pid_tgid();
    if tgid == agent_pid() {
        return;
    }
    if set_add(&HOLDERS, &PID_FILTER, tgid, stat::HOLDERS_FULL) {
        llmwatch_mark_tree(kernel::current_task());
    }
}

/// The one check in front of every send: are the current process's sends counted?
#[inline(always)]
pub fn current_sends_counted() -> bool {
    let (tgid, _) = kernel::current_pid_tgid();
    set_has(&SEND_INTEREST, &SEND_FILTER, tgid)
}

#[inline(always)]
fn interest_add(tgid: u32) -> bool {
    tgid > 1 && set_add(&SEND_INTEREST, &SEND_FILTER, tgid, stat::INTEREST_FULL)
}

/// A child of a holder holds what its parent held (the descriptor table and the mappings
/// are copied); a child of a process of interest is of interest.
#[inline(always)]
pub fn on_fork(parent: u32, child: u32) {
    if is_holder(parent) {
        set_add(&HOLDERS, &PID_FILTER, child, stat::HOLDERS_FULL);
    }
    if set_has(&SEND_INTEREST, &SEND_FILTER, parent) {
        interest_add(child);
    }
}

#[inline(always)]
pub fn on_exit(tgid: u32) {
    set_remove(&HOLDERS, &PID_FILTER, tgid);
    set_remove(&SEND_INTEREST, &SEND_FILTER, tgid);
}

/// Children (and grandchildren) looked at when a tree is marked: enough for shells and
/// loaders; a later child of a marked process is marked at fork whatever this bound.
const MAX_CHILDREN: u32 = 32;
const MAX_GRANDCHILDREN: u32 = 16;

#[inline(always)]
fn task_tgid(task: u64) -> u32 {
    read::<u32>(task, off!(task_tgid)).unwrap_or(0)
}

#[inline(always)]
fn session_leader(task: u64) -> bool {
    let signal: u64 = read(task, off!(task_signal)).unwrap_or(0);
    read::<i32>(signal, off!(signal_leader)).unwrap_or(0) != 0
}

/// Marks the tree of `task` (which just became a holder) as of interest: itself, its root
/// (up to two ancestors, not above a session leader, never init), and the root's children
/// and grandchildren that exist now. Done once per root: children born later are marked at
/// fork.
///
/// A BPF *global* function (exported, not inlined): the verifier checks it once, on its own,
/// instead of once per call site with its loops unrolled into every caller.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn llmwatch_mark_tree(task: u64) -> i32 {
    mark_tree(task);
    0
}

#[inline(always)]
fn mark_tree(task: u64) {
    if !interest_add(task_tgid(task)) {
        return;
    }
    let mut root = task;
    let mut up = 0;
    while up < 2 {
        if session_leader(root) {
            break;
        }
        let parent: u64 = read(root, off!(task_real_parent)).unwrap_or(0);
        if task_tgid(parent) <= 1 {
            break;
        }
        root = parent;
        up += 1;
    }
    if root != task && !interest_add(task_tgid(root)) {
        // The root was marked before, and its tree with it.
        return;
    }
    mark_children(root, 2);
}

/// Marks the children of `parent` and, with `depth` 2, their children.
#[inline(always)]
fn mark_children(parent: u64, depth: u32) {
    let children = off!(task_children);
    let sibling = off!(task_sibling);
    if children == llmwatch_common::offsets::MISSING || sibling == llmwatch_common::offsets::MISSING {
        return;
    }
    // `children` is a list_head whose entries are the children's `sibling` list_heads.
    let head = parent + children as u64;
    let mut pos: u64 = read(head, 0).unwrap_or(head);
    let mut i = 0;
    while i < MAX_CHILDREN && pos != head && pos != 0 {
        let child = pos - sibling as u64;
        interest_add(task_tgid(child));
        if depth > 1 {
            let ghead = child + children as u64;
            let mut gpos: u64 = read(ghead, 0).unwrap_or(ghead);
            let mut j = 0;
            while j < MAX_GRANDCHILDREN && gpos != ghead && gpos != 0 {
                interest_add(task_tgid(gpos - sibling as u64));
                gpos = read(gpos, 0).unwrap_or(ghead);
                j += 1;
            }
        }
        pos = read(pos, 0).unwrap_or(head);
        i += 1;
    }
}
