//! The guard: stops weights leaving, in the kernel, at send time (the agent's reaction time is
//! far too slow at loopback speed).
//!
//! Egress budget: a process tree (the tree a holder's sends are counted in, see `holders`)
//! that got hold of a protected file may send `GuardSettings::budget(read)` bytes to
//! destinations the allowlist does not exempt (`GUARD_NETS*`). Past it:
//! - BPF-LSM `socket_sendmsg` refuses the send that would cross the budget and every later
//!   one, `socket_connect` every connect outside the allowlist (-EPERM), where BPF-LSM loads;
//! - the cgroup `connect4/6` hooks refuse its connects where BPF-LSM does not load;
//! - the send hook (`sock_send_length`, or syscall exit on 6.1) kills the sender with SIGKILL
//!   when bytes went past the budget anyway (no LSM, or a path the LSM hook does not see,
//!   such as sendfile through `sendpage` on 6.1).
//!
//! Open deny: BPF-LSM `file_open` refuses opens of protected files by processes that are
//! neither servers nor trusted readers (`GUARD_EXEMPT` by pid, `GUARD_EXEMPT_EXES` by
//! executable).
//!
//! Each rule enforces only where `GUARD_FILES` says so for the file (by asset or rule);
//! elsewhere it reports what it would have blocked (monitor). Nothing is pinned: when the agent
//! exits, these programs and maps go with it (fails open).
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::generated::bpf_send_signal,
    macros::map,
    maps::{Array, HashMap, LruHashMap, lpm_trie::Key, lpm_trie::LpmTrie},
};
use llmwatch_common::{
    event::FileId,
    guard::{
        self as g, GuardEvent, GuardSettings, GuardTree, NetKey, PortNetKey, action, bits, counted_at, hook,
    },
    maps::ProcFileKey,
};

use crate::{
    emit,
    kernel::{self, off, read},
    maps::{WATCHED_FILES, agent_pid},
};

const EPERM: i32 = 1;
const SIGKILL: u32 = 9;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// A refusal report per tree is written for the first refusal and then every this many.
const REFUSED_BATCH: u32 = 64;

#[unsafe(no_mangle)]
pub static GUARD: GuardSettings = GuardSettings::off();

static EMPTY_TREE: GuardTree = GuardTree::EMPTY;

/// [`counted_at`] bits: which hooks count sends before they leave (set by the agent after it
/// attached them; until then the after-the-fact hooks count too, which only errs strict).
#[map(name = "GUARD_COUNTED_AT")]
static GUARD_COUNTED_AT: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
fn counted_at(bit: u32) -> bool {
    GUARD_COUNTED_AT.get(0).is_some_and(|v| *v & bit != 0)
}

/// Process (tgid) -> root tgid of the tree it is accounted in.
#[map(name = "GUARD_TREE_OF")]
static GUARD_TREE_OF: HashMap<u32, u32> = HashMap::with_max_entries(g::TREE_OF_MAX, 0);

/// Root tgid -> what the tree read, sent and whether it is over budget. LRU: a tree whose
/// processes are all gone ages out.
#[map(name = "GUARD_TREES")]
static GUARD_TREES: LruHashMap<u32, GuardTree> = LruHashMap::with_max_entries(g::TREES_MAX, 0);

/// Processes the guard leaves alone (the agent's servers and trusted readers, strong
/// identities only): value 1. Removed at exit, so a reused pid is not exempt.
#[map(name = "GUARD_EXEMPT")]
static GUARD_EXEMPT: HashMap<u32, u8> = HashMap::with_max_entries(g::EXEMPT_MAX, 0);

/// Executables (by file identity) whose processes the guard leaves alone: known from the
/// first instruction, before the agent has seen the exec.
#[map(name = "GUARD_EXEMPT_EXES")]
static GUARD_EXEMPT_EXES: HashMap<FileId, u8> = HashMap::with_max_entries(1024, 0);

/// Protected file -> which guard rules enforce on it ([`bits`]); no entry: monitor only.
#[map(name = "GUARD_FILES")]
static GUARD_FILES: HashMap<FileId, u32> =
    HashMap::with_max_entries(llmwatch_common::maps::WATCHED_FILES_MAX, 0);

/// Exempt destinations, any port: IPv6 (IPv4 mapped) prefixes.
#[map(name = "GUARD_NETS")]
static GUARD_NETS: LpmTrie<NetKey, u8> = LpmTrie::with_max_entries(g::NETS_MAX, 0);

/// Exempt destinations on one port: 16 bits of port, then the address prefix.
#[map(name = "GUARD_NETS_PORT")]
static GUARD_NETS_PORT: LpmTrie<PortNetKey, u8> = LpmTrie::with_max_entries(g::NETS_MAX, 0);

/// Refused opens already reported, per process and file (a retry loop is one report).
#[map(name = "GUARD_OPENS_SEEN")]
static GUARD_OPENS_SEEN: LruHashMap<ProcFileKey, u8> = LruHashMap::with_max_entries(4096, 0);

/// The refusing verdict of the LSM programs, as a read-only global. Since 6.9 the verifier
/// checks that an LSM program returns a value in [-4095, 0], and LLVM writes `if refuse {
/// -EPERM } else { 0 }` as the negation of a 0/1 value, through which the verifier keeps no
/// bounds (6.12 refused `lsm/file_open` so: "R0 has unknown scalar value"). A volatile load
/// cannot be hoisted out of its branch, and on that branch the verifier knows the constant.
#[unsafe(no_mangle)]
static GUARD_EPERM: i32 = -EPERM;

#[inline(always)]
fn eperm() -> i32 {
    // SAFETY: a plain load of a static (read-only global).
    unsafe { core::ptr::read_volatile(&GUARD_EPERM) }
}

#[inline(always)]
fn enabled(bit: u32) -> bool {
    // SAFETY: a plain load of a field of a static (read-only global, set before load).
    unsafe { core::ptr::read_volatile(&GUARD.enabled) & bit != 0 }
}

#[inline(always)]
fn budget(read: u64) -> u64 {
    // SAFETY: as in `enabled`.
    let s = unsafe {
        GuardSettings {
            enabled: 0,
            _pad: 0,
            max_bytes: core::ptr::read_volatile(&GUARD.max_bytes),
            read_ppm: core::ptr::read_volatile(&GUARD.read_ppm),
            floor_bytes: core::ptr::read_volatile(&GUARD.floor_bytes),
        }
    };
    s.budget(read)
}

#[inline(always)]
fn task_tgid(task: u64) -> u32 {
    read::<u32>(task, off!(task_tgid)).unwrap_or(0)
}

#[inline(always)]
fn parent(task: u64) -> u64 {
    read::<u64>(task, off!(task_real_parent)).unwrap_or(0)
}

#[inline(always)]
fn session_leader(task: u64) -> bool {
    let signal: u64 = read(task, off!(task_signal)).unwrap_or(0);
    read::<i32>(signal, off!(signal_leader)).unwrap_or(0) != 0
}

/// Whether the current process (`tgid`) is a server or trusted reader the guard leaves alone.
#[inline(always)]
fn exempt(tgid: u32) -> bool {
    if tgid == agent_pid() {
        return true;
    }
    // SAFETY: lookups whose values are only tested for presence.
    if unsafe { GUARD_EXEMPT.get(&tgid) }.is_some() {
        return true;
    }
    let mm: u64 = read(kernel::current_task(), off!(task_mm)).unwrap_or(0);
    let Some(exe) = read::<u64>(mm, off!(mm_exe_file)) else {
        return false;
    };
    let Some(inode) = kernel::file_inode(exe) else {
        return false;
    };
    let id = FileId {
        dev: inode.dev,
        _pad: 0,
        ino: inode.ino,
    };
    // SAFETY: as above.
    unsafe { GUARD_EXEMPT_EXES.get(&id) }.is_some()
}

/// The tree the current process is accounted in: its own entry, else its parent's or
/// grandparent's (a sibling of the holder forked before the tree was marked: `nc` in
/// `cat model | nc`), remembered for next time.
#[inline(always)]
fn current_tree() -> Option<u32> {
    let task = kernel::current_task();
    let tgid = task_tgid(task);
    // SAFETY: a 4-byte copy out of a live map value.
    if let Some(root) = unsafe { GUARD_TREE_OF.get(&tgid) }.copied() {
        return Some(root);
    }
    let p = parent(task);
    // SAFETY: as above.
    let root = match unsafe { GUARD_TREE_OF.get(&task_tgid(p)) }.copied() {
        Some(r) => r,
        // SAFETY: as above.
        None => unsafe { GUARD_TREE_OF.get(&task_tgid(parent(p))) }.copied()?,
    };
    let _ = GUARD_TREE_OF.insert(&tgid, &root, BPF_NOEXIST as u64);
    Some(root)
}

/// The current process got a descriptor of protected file `id`: its tree (the holder, up to
/// two ancestors below a session leader, never init; as `holders::mark_tree`) is accounted
/// from now on, and enforced on when the file is.
#[inline(always)]
pub fn on_track(id: &FileId) {
    if enabled(bits::EGRESS) {
        llmwatch_guard_track(id.dev, id.ino);
    }
}

/// A BPF global function (verified once, on its own stack frame) with scalar arguments.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn llmwatch_guard_track(dev: u32, ino: u64) -> i32 {
    let id = FileId { dev, _pad: 0, ino };
    track(&id);
    0
}

#[inline(always)]
fn track(id: &FileId) {
    let task = kernel::current_task();
    let tgid = task_tgid(task);
    if exempt(tgid) {
        return;
    }
    let root = match current_tree() {
        Some(r) => r,
        None => {
            let mut root = task;
            let mut chain = [0u32; 2];
            let mut up = 0;
            while up < 2 {
                if session_leader(root) {
                    break;
                }
                let p = parent(root);
                if task_tgid(p) <= 1 {
                    break;
                }
                root = p;
                chain[up] = task_tgid(p);
                up += 1;
            }
            let root = task_tgid(root);
            let _ = GUARD_TREE_OF.insert(&tgid, &root, BPF_NOEXIST as u64);
            if chain[0] != 0 {
                let _ = GUARD_TREE_OF.insert(&chain[0], &root, BPF_NOEXIST as u64);
            }
            if chain[1] != 0 {
                let _ = GUARD_TREE_OF.insert(&chain[1], &root, BPF_NOEXIST as u64);
            }
            root
        }
    };
    // The new value from read-only global data: one on the stack would be zeroed by a call to
    // the object's memset, a frame more in a chain 6.1 keeps to 512 bytes (see `on_sent`).
    let _ = GUARD_TREES.insert(&root, &EMPTY_TREE, BPF_NOEXIST as u64);
    // SAFETY: a 4-byte copy out of a live map value.
    let file_bits = unsafe { GUARD_FILES.get(id) }.copied().unwrap_or(0);
    if file_bits & bits::EGRESS != 0
        && let Some(t) = GUARD_TREES.get_ptr_mut(&root)
    {
        // SAFETY: `t` points at a live GUARD_TREES value; a racing writer sets the same bit.
        unsafe { (*t).enforce |= bits::EGRESS };
    }
}

/// `bytes` of a protected file were read by the current process.
#[inline(always)]
pub fn on_read(bytes: u64) {
    if enabled(bits::EGRESS) {
        llmwatch_guard_read(bytes);
    }
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn llmwatch_guard_read(bytes: u64) -> i32 {
    read_counted(bytes);
    0
}

#[inline(always)]
fn read_counted(bytes: u64) {
    let Some(root) = current_tree() else {
        return;
    };
    if exempt(kernel::current_pid_tgid().0) {
        return;
    }
    if let Some(t) = GUARD_TREES.get_ptr_mut(&root) {
        // SAFETY: `t` points at a live GUARD_TREES value.
        kernel::atomic_add(unsafe { &raw mut (*t).read }, bytes);
    }
}

/// A child of an accounted process is accounted in the same tree.
#[inline(always)]
pub fn on_fork(parent_tgid: u32, child: u32) {
    if !enabled(bits::EGRESS) {
        return;
    }
    // SAFETY: a 4-byte copy out of a live map value.
    if let Some(root) = unsafe { GUARD_TREE_OF.get(&parent_tgid) }.copied() {
        let _ = GUARD_TREE_OF.insert(&child, &root, 0);
    }
}

#[inline(always)]
pub fn on_exit(tgid: u32) {
    if enabled(bits::EGRESS | bits::OPEN) {
        let _ = GUARD_TREE_OF.remove(&tgid);
        let _ = GUARD_EXEMPT.remove(&tgid);
    }
}

/// A destination as the guard's global functions take it: the 16-byte address (IPv4 in its
/// first four bytes) as two native-endian words, the family and the port. Words rather than
/// byte arrays keep the callers' frames small: on 6.1 a global function's frame counts in its
/// callers' 512-byte stack limit, and the syscall-exit program already uses two thirds of it.
#[derive(Clone, Copy)]
struct Dest {
    hi: u64,
    lo: u64,
    family: u16,
    port: u16,
}

impl Dest {
    #[inline(always)]
    fn new(addr: &[u8; 16], family: u16, port: u16) -> Dest {
        let (hi, lo) = split(addr);
        Dest { hi, lo, family, port }
    }

    /// Family and port in one argument word.
    #[inline(always)]
    fn family_port(&self) -> u32 {
        self.family as u32 | (self.port as u32) << 16
    }

    #[inline(always)]
    fn from_args(hi: u64, lo: u64, family_port: u32) -> Dest {
        Dest {
            hi,
            lo,
            family: family_port as u16,
            port: (family_port >> 16) as u16,
        }
    }

    /// The 16-byte IPv6 form (IPv4 mapped, `::ffff:a.b.c.d`) as `GUARD_NETS` keys it, as two
    /// words: the IPv4 address is the low four bytes of `hi`.
    #[inline(always)]
    fn mapped(&self) -> (u64, u64) {
        if self.family != AF_INET {
            return (self.hi, self.lo);
        }
        let v4 = self.hi & 0xffff_ffff;
        (0, u64::from_ne_bytes([0, 0, 0xff, 0xff, 0, 0, 0, 0]) | v4 << 32)
    }
}

/// The 16-byte address as two words. Read in place: copies into byte arrays here cost the
/// caller (the syscall-exit program, inlined) stack it does not have on 6.1.
#[inline(always)]
fn split(a: &[u8; 16]) -> (u64, u64) {
    let p = a.as_ptr() as *const u64;
    // SAFETY: `a` is 16 readable bytes; both unaligned 8-byte reads stay inside it.
    unsafe { (core::ptr::read_unaligned(p), core::ptr::read_unaligned(p.add(1))) }
}

/// Two words as the 16 bytes they were split from, written at `dst`.
#[inline(always)]
fn put_words(dst: *mut [u8; 16], hi: u64, lo: u64) {
    let p = dst as *mut u64;
    // SAFETY: `dst` is 16 writable bytes; both unaligned 8-byte writes stay inside it.
    unsafe {
        core::ptr::write_unaligned(p, hi);
        core::ptr::write_unaligned(p.add(1), lo);
    }
}

/// Whether the allowlist exempts transfers to the destination. Both LPM keys are built in
/// one buffer, one after the other: two keys would take 24 more bytes of a frame that has to
/// stay small (see [`on_sent`]).
#[inline(always)]
fn dest_exempt(d: &Dest) -> bool {
    // Big enough and aligned for either key: Key<NetKey> is 20 bytes, Key<PortNetKey> 22.
    let mut buf = [0u32; 6];
    let (mhi, mlo) = d.mapped();
    let any = buf.as_mut_ptr() as *mut Key<NetKey>;
    // SAFETY: `buf` is 24 writable bytes, 4-aligned, enough for a Key<NetKey> (repr(C):
    // prefix_len, then 16 address bytes); `&raw mut` takes the field's place without a read.
    unsafe {
        (*any).prefix_len = 128;
        put_words(&raw mut (*any).data.addr, mhi, mlo);
    }
    // SAFETY: `any` was fully written above.
    if GUARD_NETS.get(unsafe { &*any }).is_some() {
        return true;
    }
    let pinned = buf.as_mut_ptr() as *mut Key<PortNetKey>;
    // SAFETY: as above, for a Key<PortNetKey> (prefix_len, 2 port bytes, 16 address bytes).
    unsafe {
        (*pinned).prefix_len = 144;
        (*pinned).data.port_be = d.port.to_be_bytes();
        put_words(&raw mut (*pinned).data.addr, mhi, mlo);
    }
    // SAFETY: `pinned` was fully written above.
    GUARD_NETS_PORT.get(unsafe { &*pinned }).is_some()
}

/// Writes an egress record: `what` packs the action (bits 0-7), the hook (8-15), whether it
/// was enforced (bit 16) and the count (32-63); the tree's read, sent and budget come from
/// `GUARD_TREES` by `root`. A global function (five scalar arguments, its own small frame):
/// inlined, each report's fields were built on the sender's stack.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn llmwatch_guard_report(root: u32, what: u64, hi: u64, lo: u64, family_port: u32) -> i32 {
    let Some(mut rec) = emit::reserve::<GuardEvent>(g::KIND) else {
        return 0;
    };
    let ev = rec.as_mut_ptr();
    // SAFETY: a copy of two fields out of a live map value (absent: zeros).
    let (read, sent) = match unsafe { GUARD_TREES.get(&root) } {
        Some(t) => (t.read, t.sent),
        None => (0, 0),
    };
    // SAFETY: `ev` points into our own ring-buffer reservation of a GuardEvent.
    unsafe {
        put_words(&raw mut (*ev).addr, hi, lo);
        // Field by field and volatile: a plain zeroing becomes a call to the object's memset
        // (a byte loop, and one more frame in the chain).
        core::ptr::write_volatile(&raw mut (*ev).file.dev, 0);
        core::ptr::write_volatile(&raw mut (*ev).file._pad, 0);
        core::ptr::write_volatile(&raw mut (*ev).file.ino, 0);
        (*ev).read = read;
        (*ev).sent = sent;
        (*ev).budget = budget(read);
        (*ev).root = root;
        (*ev).action = (what & 0xff) as u32;
        (*ev).hook = ((what >> 8) & 0xff) as u32;
        (*ev).enforced = ((what >> 16) & 1) as u32;
        (*ev).count = (what >> 32) as u32;
        (*ev).family = family_port as u16;
        (*ev).port = (family_port >> 16) as u16;
    }
    emit::submit(rec, g::KIND);
    0
}

#[inline(always)]
fn report_egress(root: u32, act: u32, hook_id: u32, enforced: bool, count: u32, d: &Dest) {
    let what =
        act as u64 & 0xff | (hook_id as u64 & 0xff) << 8 | (enforced as u64) << 16 | (count as u64) << 32;
    llmwatch_guard_report(root, what, d.hi, d.lo, d.family_port());
}

/// The tree of the current process, when the guard judges its egress to `d`.
#[inline(always)]
fn judged_tree(d: &Dest) -> Option<(u32, *mut GuardTree)> {
    let root = llmwatch_guard_judged(d.hi, d.lo, d.family_port());
    if root <= 0 {
        return None;
    }
    let root = root as u32;
    GUARD_TREES.get_ptr_mut(&root).map(|t| (root, t))
}

/// The root of the current process's tree (a tgid) when the guard judges its egress to the
/// destination, else 0: not enabled, not IP, no tree, a server or reader, or an exempt
/// destination. A leaf global function, like the others the send path calls: see
/// [`on_sent`] for why none of them calls another.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn llmwatch_guard_judged(hi: u64, lo: u64, family_port: u32) -> i32 {
    let d = Dest::from_args(hi, lo, family_port);
    if !enabled(bits::EGRESS) || (d.family != AF_INET && d.family != AF_INET6) {
        return 0;
    }
    let Some(root) = current_tree() else {
        return 0;
    };
    if exempt(kernel::current_pid_tgid().0) || dest_exempt(&d) {
        return 0;
    }
    root as i32
}

/// First time over budget: mark the tree and say so.
#[inline(always)]
fn trip(root: u32, t: *mut GuardTree, hook_id: u32, d: &Dest) {
    // SAFETY: `t` points at a live GUARD_TREES value (for this whole program run).
    let tree = unsafe { &mut *t };
    if tree.tripped != 0 {
        return;
    }
    tree.tripped = 1;
    let enforced = tree.enforce & bits::EGRESS != 0;
    report_egress(root, action::EGRESS_OVER_BUDGET, hook_id, enforced, 0, d);
}

/// A refusal by a hook that can refuse: counted, reported on the first and then in batches.
#[inline(always)]
fn refused(root: u32, t: *mut GuardTree, act: u32, hook_id: u32, d: &Dest) {
    // SAFETY: as in `trip`.
    let tree = unsafe { &mut *t };
    tree.refused += 1;
    let n = tree.refused;
    if n != 1 && n % REFUSED_BATCH != 0 {
        return;
    }
    let count = if n == 1 { 1 } else { REFUSED_BATCH };
    report_egress(root, act, hook_id, true, count, d);
}

/// `bytes` went out of the current process to (addr, port): the send hook, after the fact.
/// Past the budget in enforce mode the sender is killed. Where the LSM hook runs it refuses
/// the send that would cross, so only bytes through a path it does not see get here.
///
/// Called from the syscall-exit dispatch, whose own frame (about 330 bytes) leaves 6.1's
/// verifier, which counts global functions' frames in the 512-byte limit of the chain
/// (each rounded up to 32, an empty one as 32), under 128 bytes for what the guard calls.
/// So the work is split into leaf functions called one after another from here, never one
/// from another: the deepest chain is the dispatch plus the largest of them.
///
/// `page`: the bytes went through `sendpage` (sendfile/splice into a socket before 6.5), which
/// BPF-LSM `socket_sendmsg` does not see. Bytes a hook counted before they left
/// ([`counted_at`]) are not counted again here.
#[inline(always)]
pub fn on_sent(addr: &[u8; 16], family: u16, port: u16, bytes: u64, hook_id: u32, page: bool) {
    if !enabled(bits::EGRESS) {
        return;
    }
    if counted_at(if page {
        counted_at::SENDPAGE
    } else {
        counted_at::LSM_SENDMSG
    }) {
        return;
    }
    judge_sent(&Dest::new(addr, family, port), bytes, hook_id);
}

/// Counts `bytes` to `d` for the current process's tree and acts past the budget.
#[inline(always)]
fn judge_sent(d: &Dest, bytes: u64, hook_id: u32) {
    let root = llmwatch_guard_judged(d.hi, d.lo, d.family_port());
    if root <= 0 {
        return;
    }
    let root = root as u32;
    let r = llmwatch_guard_account(root, bytes);
    if r & SENT_TRIPPED != 0 {
        let enforced = r & SENT_ENFORCED != 0;
        report_egress(root, action::EGRESS_OVER_BUDGET, hook_id, enforced, 0, d);
    }
    if r & SENT_KILLED != 0 {
        report_egress(root, action::KILLED, hook_id, true, 1, d);
    }
}

/// What [`llmwatch_guard_account`] did: the tree went over budget with this send,
/// it is enforced on, the sender was killed.
const SENT_TRIPPED: i32 = 1;
const SENT_ENFORCED: i32 = 2;
const SENT_KILLED: i32 = 4;

/// Adds `bytes` to tree `root`'s sends; past its budget, marks it over budget (the first
/// time) and, in enforce mode, kills the sender. Returns the `SENT_*` bits.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn llmwatch_guard_account(root: u32, bytes: u64) -> i32 {
    let Some(t) = GUARD_TREES.get_ptr_mut(&root) else {
        return 0;
    };
    // SAFETY: `t` points at a live GUARD_TREES value.
    kernel::atomic_add(unsafe { &raw mut (*t).sent }, bytes);
    // SAFETY: as above.
    let tree = unsafe { &mut *t };
    let enforce = tree.enforce & bits::EGRESS != 0;
    if tree.sent <= budget(tree.read) {
        return 0;
    }
    let mut r = if enforce { SENT_ENFORCED } else { 0 };
    if tree.tripped == 0 {
        tree.tripped = 1;
        r |= SENT_TRIPPED;
    }
    if enforce {
        // SAFETY: a helper taking a signal number; it signals the current process.
        unsafe { bpf_send_signal(SIGKILL) };
        r |= SENT_KILLED;
    }
    r
}

/// Where a socket sends: its connected peer, else the address the caller passed (a kernel
/// copy of a `struct sockaddr`).
#[inline(always)]
fn sock_dest(sk: u64, uaddr_kernel: u64) -> Option<([u8; 16], u16, u16)> {
    let family: u16 = read(sk, off!(sk_family))?;
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    let dport_be: u16 = read(sk, off!(sk_dport)).unwrap_or(0);
    if dport_be != 0 {
        let addr = if family == AF_INET {
            let a: [u8; 4] = read(sk, off!(sk_daddr))?;
            let mut v = [0u8; 16];
            v[0] = a[0];
            v[1] = a[1];
            v[2] = a[2];
            v[3] = a[3];
            v
        } else {
            read(sk, off!(sk_v6_daddr))?
        };
        return Some((addr, family, u16::from_be(dport_be)));
    }
    sockaddr(uaddr_kernel)
}

/// A kernel copy of a `struct sockaddr_in`/`sockaddr_in6`.
#[inline(always)]
fn sockaddr(p: u64) -> Option<([u8; 16], u16, u16)> {
    let family: u16 = read(p, 0)?;
    let port_be: u16 = read(p, 2)?;
    let addr = match family {
        AF_INET => {
            let a: [u8; 4] = read(p, 4)?;
            let mut v = [0u8; 16];
            v[0] = a[0];
            v[1] = a[1];
            v[2] = a[2];
            v[3] = a[3];
            v
        }
        AF_INET6 => read(p, 8)?,
        _ => return None,
    };
    Some((addr, family, u16::from_be(port_be)))
}

/// BPF-LSM `socket_sendmsg(sock, msg, size)`: refuse the send that would take the tree past
/// its budget, and every later one outside the allowlist.
#[inline(always)]
pub fn lsm_sendmsg(sock: u64, msg: u64, size: i64) -> i32 {
    let Some(sk) = read::<u64>(sock, off!(socket_sk)) else {
        return 0;
    };
    // struct msghdr: msg_name (a kernel copy of the address here) is its first field.
    let name: u64 = read(msg, 0).unwrap_or(0);
    let Some((addr, family, port)) = sock_dest(sk, name) else {
        return 0;
    };
    let d = Dest::new(&addr, family, port);
    let Some((root, t)) = judged_tree(&d) else {
        return 0;
    };
    // SAFETY: `t` points at a live GUARD_TREES value.
    let (read_b, sent, enforce, tripped) = unsafe {
        (
            (*t).read,
            (*t).sent,
            (*t).enforce & bits::EGRESS != 0,
            (*t).tripped,
        )
    };
    let size = if size > 0 { size as u64 } else { 0 };
    if tripped == 0 && sent + size <= budget(read_b) {
        // Counted now, before it leaves: the next message of the same sendmmsg, or the next
        // SQE of the same io_uring submission, is judged with it (the send hooks after the
        // fact leave these bytes alone, see `on_sent`). What the caller asked to send, not
        // what went: a short send errs strict.
        // SAFETY: `t` points at a live GUARD_TREES value.
        kernel::atomic_add(unsafe { &raw mut (*t).sent }, size);
        return 0;
    }
    trip(root, t, hook::LSM_SOCKET_SENDMSG, &d);
    if !enforce {
        return 0;
    }
    refused(root, t, action::SEND_REFUSED, hook::LSM_SOCKET_SENDMSG, &d);
    eperm()
}

/// `kernel_sendpage` of `size` bytes on `sock` (see the program).
#[inline(always)]
pub fn sendpage(sock: u64, size: u64) {
    if !enabled(bits::EGRESS) {
        return;
    }
    let Some(sk) = read::<u64>(sock, off!(socket_sk)) else {
        return;
    };
    let Some((addr, family, port)) = sock_dest(sk, 0) else {
        return;
    };
    judge_sent(&Dest::new(&addr, family, port), size, hook::SENDPAGE);
}

/// BPF-LSM `socket_connect(sock, address, addrlen)` and the cgroup connect hooks: an
/// over-budget tree connects nowhere outside the allowlist.
#[inline(always)]
pub fn connect_refused(addr: &[u8; 16], family: u16, port: u16, hook_id: u32) -> bool {
    let d = Dest::new(addr, family, port);
    let Some((root, t)) = judged_tree(&d) else {
        return false;
    };
    // SAFETY: `t` points at a live GUARD_TREES value.
    let (tripped, enforce) = unsafe { ((*t).tripped, (*t).enforce & bits::EGRESS != 0) };
    if tripped == 0 || !enforce {
        return false;
    }
    refused(root, t, action::CONNECT_REFUSED, hook_id, &d);
    true
}

#[inline(always)]
pub fn lsm_connect(address: u64) -> i32 {
    let Some((addr, family, port)) = sockaddr(address) else {
        return 0;
    };
    if connect_refused(&addr, family, port, hook::LSM_SOCKET_CONNECT) {
        eperm()
    } else {
        0
    }
}

/// A refused (or, in monitor mode, would-be refused) open of protected file `id`.
#[inline(always)]
fn report_open(id: &FileId, enforce: bool) {
    let Some(mut rec) = emit::reserve::<GuardEvent>(g::KIND) else {
        return;
    };
    let ev = rec.as_mut_ptr();
    // SAFETY: `ev` points into our own ring-buffer reservation of a GuardEvent.
    unsafe {
        (*ev).addr = [0; 16];
        (*ev).file = *id;
        (*ev).read = 0;
        (*ev).sent = 0;
        (*ev).budget = 0;
        (*ev).root = 0;
        (*ev).action = action::OPEN_REFUSED;
        (*ev).hook = hook::LSM_FILE_OPEN;
        (*ev).enforced = enforce as u32;
        (*ev).count = 1;
        (*ev).family = 0;
        (*ev).port = 0;
    }
    emit::submit(rec, g::KIND);
}

/// BPF-LSM `file_open(file)`: a protected file opened by a process that is neither a server
/// nor a trusted reader. Refused where the file is enforced; reported once per process and
/// file either way.
#[inline(always)]
pub fn lsm_file_open(file: u64) -> i32 {
    if !enabled(bits::OPEN) {
        return 0;
    }
    let Some(inode) = kernel::file_inode(file) else {
        return 0;
    };
    if inode.mode & kernel::S_IFMT != kernel::S_IFREG {
        return 0;
    }
    let id = FileId {
        dev: inode.dev,
        _pad: 0,
        ino: inode.ino,
    };
    // SAFETY: a lookup whose value is only tested for presence.
    if unsafe { WATCHED_FILES.get(&id) }.is_none() {
        return 0;
    }
    let (tgid, _) = kernel::current_pid_tgid();
    if exempt(tgid) {
        return 0;
    }
    // SAFETY: a 4-byte copy out of a live map value.
    let enforce = unsafe { GUARD_FILES.get(&id) }.copied().unwrap_or(0) & bits::OPEN != 0;
    let seen = ProcFileKey {
        file: id,
        pid: tgid,
        _pad: 0,
    };
    // SAFETY: a lookup whose value is only tested for presence.
    if unsafe { GUARD_OPENS_SEEN.get(&seen) }.is_none() {
        let _ = GUARD_OPENS_SEEN.insert(&seen, &1, 0);
        report_open(&id, enforce);
    }
    if enforce { eperm() } else { 0 }
}

pub mod programs {
    use aya_ebpf::{
        macros::{cgroup_sock_addr, fentry, lsm},
        programs::{FEntryContext, LsmContext, SockAddrContext},
    };

    /// LSM hooks get the previous hook's verdict last; a refusal stands.
    #[lsm(hook = "socket_sendmsg")]
    pub fn llmwatch_guard_sendmsg(ctx: LsmContext) -> i32 {
        // socket_sendmsg(struct socket *sock, struct msghdr *msg, int size), then the verdict.
        let (sock, msg, size, prev): (u64, u64, i32, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(3));
        if prev != 0 {
            return prev;
        }
        super::lsm_sendmsg(sock, msg, size as i64)
    }

    #[lsm(hook = "socket_connect")]
    pub fn llmwatch_guard_connect(ctx: LsmContext) -> i32 {
        // socket_connect(struct socket *sock, struct sockaddr *address, int addrlen), verdict.
        let (address, prev): (u64, i32) = (ctx.arg(1), ctx.arg(3));
        if prev != 0 {
            return prev;
        }
        super::lsm_connect(address)
    }

    #[lsm(hook = "file_open")]
    pub fn llmwatch_guard_file_open(ctx: LsmContext) -> i32 {
        // file_open(struct file *file), then the verdict.
        let (file, prev): (u64, i32) = (ctx.arg(0), ctx.arg(1));
        if prev != 0 {
            return prev;
        }
        super::lsm_file_open(file)
    }

    /// fentry on `kernel_sendpage(sock, page, offset, size, flags)` (kernels before 6.5):
    /// sendfile/splice into a socket, which BPF-LSM `socket_sendmsg` does not see, counted
    /// per chunk before it is sent; past the budget the sender is killed, and the splice loop
    /// stops at its next chunk (it checks for a pending signal), not at the end of the call.
    #[fentry(function = "kernel_sendpage")]
    pub fn llmwatch_guard_sendpage(ctx: FEntryContext) -> i32 {
        let (sock, size): (u64, u64) = (ctx.arg(0), ctx.arg(3));
        super::sendpage(sock, size);
        0
    }

    /// cgroup connect4/connect6 (attached at the root cgroup): 0 refuses (EPERM), 1 allows.
    #[cgroup_sock_addr(connect4)]
    pub fn llmwatch_guard_connect4(ctx: SockAddrContext) -> i32 {
        // SAFETY: the context's bpf_sock_addr, readable fields only.
        let (ip, port) = unsafe { ((*ctx.sock_addr).user_ip4, (*ctx.sock_addr).user_port) };
        let mut addr = [0u8; 16];
        let b = ip.to_ne_bytes();
        addr[0] = b[0];
        addr[1] = b[1];
        addr[2] = b[2];
        addr[3] = b[3];
        let port = u16::from_be(port as u16);
        if super::connect_refused(
            &addr,
            super::AF_INET,
            port,
            llmwatch_common::guard::hook::CGROUP_CONNECT,
        ) {
            0
        } else {
            1
        }
    }

    #[cgroup_sock_addr(connect6)]
    pub fn llmwatch_guard_connect6(ctx: SockAddrContext) -> i32 {
        // SAFETY: as above.
        let (ip, port) = unsafe { ((*ctx.sock_addr).user_ip6, (*ctx.sock_addr).user_port) };
        let mut addr = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            let b = ip[i].to_ne_bytes();
            addr[i * 4] = b[0];
            addr[i * 4 + 1] = b[1];
            addr[i * 4 + 2] = b[2];
            addr[i * 4 + 3] = b[3];
            i += 1;
        }
        let port = u16::from_be(port as u16);
        if super::connect_refused(
            &addr,
            super::AF_INET6,
            port,
            llmwatch_common::guard::hook::CGROUP_CONNECT,
        ) {
            0
        } else {
            1
        }
    }
}
