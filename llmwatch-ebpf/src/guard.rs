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
    maps::{HashMap, LruHashMap, lpm_trie::Key, lpm_trie::LpmTrie},
};
use llmwatch_common::{
    event::FileId,
    guard::{self as g, GuardEvent, GuardSettings, GuardTree, NetKey, PortNetKey, action, bits, hook},
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
    let _ = GUARD_TREES.insert(&root, &GuardTree::default(), BPF_NOEXIST as u64);
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

/// The 16-byte IPv6 form of a destination (IPv4 mapped), as `GUARD_NETS` keys it.
#[inline(always)]
fn mapped(addr: &[u8; 16], family: u16) -> [u8; 16] {
    if family != AF_INET {
        return *addr;
    }
    let mut a = [0u8; 16];
    a[10] = 0xff;
    a[11] = 0xff;
    a[12] = addr[0];
    a[13] = addr[1];
    a[14] = addr[2];
    a[15] = addr[3];
    a
}

/// Whether the allowlist exempts transfers to (addr, port).
#[inline(always)]
fn dest_exempt(addr: &[u8; 16], family: u16, port: u16) -> bool {
    let a = mapped(addr, family);
    let any = Key::new(128, NetKey { addr: a });
    if GUARD_NETS.get(&any).is_some() {
        return true;
    }
    let pinned = Key::new(
        144,
        PortNetKey {
            port_be: port.to_be_bytes(),
            addr: a,
        },
    );
    GUARD_NETS_PORT.get(&pinned).is_some()
}

/// What one record says, besides the header.
struct Report<'a> {
    action: u32,
    hook: u32,
    enforced: bool,
    root: u32,
    tree: Option<&'a GuardTree>,
    addr: [u8; 16],
    family: u16,
    port: u16,
    file: FileId,
    count: u32,
}

#[inline(always)]
fn report(r: &Report) {
    let Some(mut rec) = emit::reserve::<GuardEvent>(g::KIND) else {
        return;
    };
    let ev = rec.as_mut_ptr();
    let (read, sent) = match r.tree {
        Some(t) => (t.read, t.sent),
        None => (0, 0),
    };
    // SAFETY: `ev` points into our own ring-buffer reservation of a GuardEvent.
    unsafe {
        (*ev).addr = r.addr;
        (*ev).file = r.file;
        (*ev).read = read;
        (*ev).sent = sent;
        (*ev).budget = if r.tree.is_some() { budget(read) } else { 0 };
        (*ev).root = r.root;
        (*ev).action = r.action;
        (*ev).hook = r.hook;
        (*ev).enforced = r.enforced as u32;
        (*ev).count = r.count;
        (*ev).family = r.family;
        (*ev).port = r.port;
    }
    emit::submit(rec, g::KIND);
}

/// The tree of the current process, when the guard judges its egress to (addr, port).
#[inline(always)]
fn judged_tree(addr: &[u8; 16], family: u16, port: u16) -> Option<(u32, *mut GuardTree)> {
    if !enabled(bits::EGRESS) || (family != AF_INET && family != AF_INET6) {
        return None;
    }
    let root = current_tree()?;
    if exempt(kernel::current_pid_tgid().0) || dest_exempt(addr, family, port) {
        return None;
    }
    GUARD_TREES.get_ptr_mut(&root).map(|t| (root, t))
}

/// First time over budget: mark the tree and say so.
#[inline(always)]
fn trip(root: u32, t: *mut GuardTree, hook_id: u32, addr: &[u8; 16], family: u16, port: u16) {
    // SAFETY: `t` points at a live GUARD_TREES value (for this whole program run).
    let tree = unsafe { &mut *t };
    if tree.tripped != 0 {
        return;
    }
    tree.tripped = 1;
    report(&Report {
        action: action::EGRESS_OVER_BUDGET,
        hook: hook_id,
        enforced: tree.enforce & bits::EGRESS != 0,
        root,
        tree: Some(tree),
        addr: *addr,
        family,
        port,
        file: FileId::default(),
        count: 0,
    });
}

/// A refusal by a hook that can refuse: counted, reported on the first and then in batches.
#[inline(always)]
fn refused(root: u32, t: *mut GuardTree, act: u32, hook_id: u32, addr: &[u8; 16], family: u16, port: u16) {
    // SAFETY: as in `trip`.
    let tree = unsafe { &mut *t };
    tree.refused += 1;
    let n = tree.refused;
    if n != 1 && n % REFUSED_BATCH != 0 {
        return;
    }
    report(&Report {
        action: act,
        hook: hook_id,
        enforced: true,
        root,
        tree: Some(tree),
        addr: *addr,
        family,
        port,
        file: FileId::default(),
        count: if n == 1 { 1 } else { REFUSED_BATCH },
    });
}

/// `bytes` went out of the current process to (addr, port): the send hook, after the fact.
/// Past the budget in enforce mode the sender is killed. Where the LSM hook runs it refuses
/// the send that would cross, so only bytes through a path it does not see get here.
#[inline(always)]
pub fn on_sent(addr: &[u8; 16], family: u16, port: u16, bytes: u64, hook_id: u32) {
    if !enabled(bits::EGRESS) {
        return;
    }
    let (hi, lo) = split(addr);
    llmwatch_guard_sent(hi, lo, family as u32 | (port as u32) << 16, bytes, hook_id);
}

/// The 16-byte address as two words, for a global function's scalar arguments. Read in
/// place: copies into byte arrays here cost the caller (the syscall-exit program, inlined)
/// 16 bytes of stack, which on 6.1 put its call chain past the verifier's 512-byte limit.
#[inline(always)]
fn split(a: &[u8; 16]) -> (u64, u64) {
    let p = a.as_ptr() as *const u64;
    // SAFETY: `a` is 16 readable bytes; both unaligned 8-byte reads stay inside it.
    unsafe { (core::ptr::read_unaligned(p), core::ptr::read_unaligned(p.add(1))) }
}

#[inline(always)]
fn join(hi: u64, lo: u64) -> [u8; 16] {
    let h = hi.to_ne_bytes();
    let l = lo.to_ne_bytes();
    let mut a = [0u8; 16];
    let mut i = 0;
    while i < 8 {
        a[i] = h[i];
        a[i + 8] = l[i];
        i += 1;
    }
    a
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn llmwatch_guard_sent(hi: u64, lo: u64, family_port: u32, bytes: u64, hook_id: u32) -> i32 {
    let addr = join(hi, lo);
    sent(
        &addr,
        family_port as u16,
        (family_port >> 16) as u16,
        bytes,
        hook_id,
    );
    0
}

#[inline(always)]
fn sent(addr: &[u8; 16], family: u16, port: u16, bytes: u64, hook_id: u32) {
    let Some((root, t)) = judged_tree(addr, family, port) else {
        return;
    };
    // SAFETY: `t` points at a live GUARD_TREES value.
    kernel::atomic_add(unsafe { &raw mut (*t).sent }, bytes);
    // SAFETY: as above.
    let (read, sent, enforce) = unsafe { ((*t).read, (*t).sent, (*t).enforce & bits::EGRESS != 0) };
    if sent <= budget(read) {
        return;
    }
    trip(root, t, hook_id, addr, family, port);
    if enforce {
        // SAFETY: a helper taking a signal number; it signals the current process.
        unsafe { bpf_send_signal(SIGKILL) };
        // SAFETY: as in `trip`.
        let tree = unsafe { &*t };
        report(&Report {
            action: action::KILLED,
            hook: hook_id,
            enforced: true,
            root,
            tree: Some(tree),
            addr: *addr,
            family,
            port,
            file: FileId::default(),
            count: 1,
        });
    }
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
    let Some((root, t)) = judged_tree(&addr, family, port) else {
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
        return 0;
    }
    trip(root, t, hook::LSM_SOCKET_SENDMSG, &addr, family, port);
    if !enforce {
        return 0;
    }
    refused(
        root,
        t,
        action::SEND_REFUSED,
        hook::LSM_SOCKET_SENDMSG,
        &addr,
        family,
        port,
    );
    -EPERM
}

/// BPF-LSM `socket_connect(sock, address, addrlen)` and the cgroup connect hooks: an
/// over-budget tree connects nowhere outside the allowlist.
#[inline(always)]
pub fn connect_refused(addr: &[u8; 16], family: u16, port: u16, hook_id: u32) -> bool {
    let Some((root, t)) = judged_tree(addr, family, port) else {
        return false;
    };
    // SAFETY: `t` points at a live GUARD_TREES value.
    let (tripped, enforce) = unsafe { ((*t).tripped, (*t).enforce & bits::EGRESS != 0) };
    if tripped == 0 || !enforce {
        return false;
    }
    refused(root, t, action::CONNECT_REFUSED, hook_id, addr, family, port);
    true
}

#[inline(always)]
pub fn lsm_connect(address: u64) -> i32 {
    let Some((addr, family, port)) = sockaddr(address) else {
        return 0;
    };
    if connect_refused(&addr, family, port, hook::LSM_SOCKET_CONNECT) {
        -EPERM
    } else {
        0
    }
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
        report(&Report {
            action: action::OPEN_REFUSED,
            hook: hook::LSM_FILE_OPEN,
            enforced: enforce,
            root: 0,
            tree: None,
            addr: [0; 16],
            family: 0,
            port: 0,
            file: id,
            count: 1,
        });
    }
    if enforce { -EPERM } else { 0 }
}

pub mod programs {
    use aya_ebpf::{
        macros::{cgroup_sock_addr, lsm},
        programs::{LsmContext, SockAddrContext},
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
