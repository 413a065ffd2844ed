//! The guard's shared types: per-tree egress budgets, exempt destinations and processes, the
//! per-file enforcement bits, and the record the kernel writes when it blocks (or would).
//!
//! Kept apart from `maps` and `event` so the guard is one module on each side.
use crate::event::{EventHeader, FileId};

/// Map and global names.
pub mod names {
    pub const GUARD: &str = "GUARD";
    pub const GUARD_TREE_OF: &str = "GUARD_TREE_OF";
    pub const GUARD_TREES: &str = "GUARD_TREES";
    pub const GUARD_EXEMPT: &str = "GUARD_EXEMPT";
    pub const GUARD_FILES: &str = "GUARD_FILES";
    pub const GUARD_NETS: &str = "GUARD_NETS";
    pub const GUARD_NETS_PORT: &str = "GUARD_NETS_PORT";
    pub const GUARD_EXEMPT_EXES: &str = "GUARD_EXEMPT_EXES";
    pub const GUARD_COUNTED_AT: &str = "GUARD_COUNTED_AT";
}

/// Where the guard counts a tree's sends (bits of `GUARD_COUNTED_AT[0]`, set by the agent once
/// the hook is attached). A hook that sees a send before it leaves counts it there, so the
/// budget holds across the messages of one sendmmsg, the SQEs of one io_uring submission and
/// the pages of one sendfile; the after-the-fact send hooks then leave those bytes alone.
pub mod counted_at {
    /// BPF-LSM `socket_sendmsg` counts every send through `sock_sendmsg` (all of them but
    /// sendfile/splice on kernels with `sendpage`, before 6.5).
    pub const LSM_SENDMSG: u32 = 1;
    /// fentry on `kernel_sendpage` counts sendfile/splice into sockets (kernels before 6.5).
    pub const SENDPAGE: u32 = 2;
}

/// Bits of [`GuardSettings::enabled`] and of `GUARD_FILES` values (which guard rules enforce
/// on that file; a file without an entry is monitored only).
pub mod bits {
    /// The egress budget.
    pub const EGRESS: u32 = 1;
    /// Refusing opens by programs that are neither servers nor trusted readers.
    pub const OPEN: u32 = 2;
}

/// The guard's read-only global, written by the agent before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuardSettings {
    /// [`bits`] of the guard rules that run at all (monitor or enforce); 0: the guard is off.
    pub enabled: u32,
    pub _pad: u32,
    /// The budget is at most this many bytes...
    pub max_bytes: u64,
    /// ... or this many millionths of what the tree read, when that is less...
    pub read_ppm: u64,
    /// ... but never below this (handshakes and request headers of a tree that opened a
    /// protected file but read little of it, or only its header).
    pub floor_bytes: u64,
}

impl GuardSettings {
    pub const fn off() -> Self {
        GuardSettings {
            enabled: 0,
            _pad: 0,
            max_bytes: 16 << 20,
            read_ppm: 10_000,
            floor_bytes: 64 << 10,
        }
    }

    /// The budget of a tree that read `read` bytes of protected files.
    pub const fn budget(&self, read: u64) -> u64 {
        // read / 1e6 * ppm without overflow for any file size.
        let share = (read / 1_000_000) * self.read_ppm + (read % 1_000_000) * self.read_ppm / 1_000_000;
        let b = if share < self.max_bytes {
            share
        } else {
            self.max_bytes
        };
        if b < self.floor_bytes { self.floor_bytes } else { b }
    }
}

/// Value of `GUARD_TREES` (key: the tree's root tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GuardTree {
    /// Bytes of protected files the tree's processes read (servers excepted).
    pub read: u64,
    /// Bytes the tree's processes sent to destinations the allowlist does not exempt.
    pub sent: u64,
    /// [`bits::EGRESS`] when a file the tree opened is enforced.
    pub enforce: u32,
    /// Set once the tree went over its budget: its further connects and sends outside the
    /// allowlist are refused (enforce) or reported once (monitor).
    pub tripped: u32,
    /// Refusals since the last report (each report carries the count).
    pub refused: u32,
    pub _pad: u32,
}

impl GuardTree {
    /// A tree that read, sent and was refused nothing (`Default`, usable in a `static`).
    pub const EMPTY: GuardTree = GuardTree {
        read: 0,
        sent: 0,
        enforce: 0,
        tripped: 0,
        refused: 0,
        _pad: 0,
    };
}

/// Key of the `GUARD_NETS` LPM trie: the address as IPv6 (IPv4 mapped, `::ffff:a.b.c.d`).
/// `GUARD_NETS_PORT` keys put the port (big-endian) in front so an entry can pin it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetKey {
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortNetKey {
    pub port_be: [u8; 2],
    pub addr: [u8; 16],
}

/// What a [`GuardEvent`] says happened ([`GuardEvent::action`]).
pub mod action {
    /// The tree went over its egress budget (`enforced`: and is now blocked).
    pub const EGRESS_OVER_BUDGET: u32 = 1;
    /// A connect of an over-budget tree refused (BPF-LSM or cgroup hook).
    pub const CONNECT_REFUSED: u32 = 2;
    /// A send of an over-budget tree refused (BPF-LSM).
    pub const SEND_REFUSED: u32 = 3;
    /// The sender was killed (SIGKILL from the send hook).
    pub const KILLED: u32 = 4;
    /// An open of a protected file refused (or, monitor, that would have been).
    pub const OPEN_REFUSED: u32 = 5;
}

/// Which hook acted ([`GuardEvent::hook`]).
pub mod hook {
    pub const SEND_TRACEPOINT: u32 = 1;
    pub const LSM_SOCKET_CONNECT: u32 = 2;
    pub const LSM_SOCKET_SENDMSG: u32 = 3;
    pub const CGROUP_CONNECT: u32 = 4;
    pub const LSM_FILE_OPEN: u32 = 5;
    pub const SEND_SYSCALL: u32 = 6;
    pub const SENDPAGE: u32 = 7;
}

/// Record kind of [`GuardEvent`] (after the `event::kind` values).
pub const KIND: u32 = 24;

/// The guard blocked something, or in monitor mode would have.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GuardEvent {
    pub hdr: EventHeader,
    /// The destination (16-byte form; IPv4 in the first four bytes), for egress actions.
    pub addr: [u8; 16],
    /// The file, for opens.
    pub file: FileId,
    /// Bytes of protected files the tree read, bytes it sent outside, its budget then.
    pub read: u64,
    pub sent: u64,
    pub budget: u64,
    /// The tree's root tgid (egress) or 0.
    pub root: u32,
    pub action: u32,
    pub hook: u32,
    /// 1: blocked; 0: monitor mode, nothing blocked.
    pub enforced: u32,
    /// Refusals this record stands for (the first, then batches).
    pub count: u32,
    pub family: u16,
    pub port: u16,
}

pub const TREES_MAX: u32 = 1 << 14;
pub const TREE_OF_MAX: u32 = 1 << 16;
pub const EXEMPT_MAX: u32 = 1 << 14;
pub const NETS_MAX: u32 = 1024;
