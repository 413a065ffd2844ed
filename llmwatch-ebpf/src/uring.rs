//! io_uring completions: no syscall returns what these did, so `io_uring_complete` is where
//! reads of watched files, opens, connects and (without `sock_send_length`) sends are seen.
//!
//! The tracepoint's arguments changed in Linux 6.3: (ctx, req, cqe) since, (ctx, req,
//! user_data, res, cflags, extra1, extra2) before. A raw tracepoint program may not read past
//! the arguments its tracepoint has, so there is one entry program per layout and the agent
//! attaches the one BTF says this kernel has.
use llmwatch_common::{
    event::{FileReadEvent, kind, open_origin, read_reason},
    maps::{TrackedFd, UringKey, stat},
};

use crate::{
    emit, files, holders,
    kernel::{self, off, read},
    maps::{URING_READS, agent_pid, sends_at_syscalls, settings_read_report, stat_inc},
    net,
};

// IORING_OP_* (UAPI, stable numbering).
const OP_READV: u8 = 1;
const OP_WRITEV: u8 = 2;
const OP_READ_FIXED: u8 = 4;
const OP_WRITE_FIXED: u8 = 5;
const OP_SENDMSG: u8 = 9;
const OP_CONNECT: u8 = 16;
const OP_OPENAT: u8 = 18;
const OP_READ: u8 = 22;
const OP_WRITE: u8 = 23;
const OP_SEND: u8 = 26;
const OP_OPENAT2: u8 = 28;
const OP_SEND_ZC: u8 = 47;
const OP_SENDMSG_ZC: u8 = 48;
const OP_READ_MULTISHOT: u8 = 49;

/// Where this kernel's tracepoint has the completion's result.
pub enum Res {
    /// In the `struct io_uring_cqe` passed (6.3 and later).
    Cqe(u64),
    /// Passed as an argument (before 6.3).
    Value(i32),
}

#[inline(always)]
pub fn on_complete(req: u64, res: Res) {
    let Some(opcode) = read::<u8>(req, off!(req_opcode)) else {
        return;
    };
    let is_read = matches!(opcode, OP_READV | OP_READ_FIXED | OP_READ | OP_READ_MULTISHOT);
    let is_open = matches!(opcode, OP_OPENAT | OP_OPENAT2);
    let is_send = matches!(
        opcode,
        OP_SEND | OP_SENDMSG | OP_SEND_ZC | OP_SENDMSG_ZC | OP_WRITE | OP_WRITEV | OP_WRITE_FIXED
    );
    if !(is_read || is_open || is_send || opcode == OP_CONNECT) {
        return;
    }
    let res = match res {
        Res::Value(v) => v,
        Res::Cqe(cqe) => match read::<i32>(cqe, off!(cqe_res)) {
            Some(v) => v,
            None => return,
        },
    };
    if res < 0 {
        return;
    }
    if is_open {
        // res is the new descriptor in the submitter's table (a direct/fixed open returns 0
        // and installs no descriptor: not followed).
        files::adopt(res as u64, opcode as u64, open_origin::IO_URING);
        return;
    }
    let Some(file) = read::<u64>(req, off!(req_file)) else {
        return;
    };
    if opcode == OP_CONNECT {
        if res == 0 {
            net::connected_file(file);
        }
        return;
    }
    if res == 0 {
        return;
    }
    if is_send {
        // With `sock_send_length` every socket send is counted there already.
        if sends_at_syscalls() && holders::current_sends_counted() {
            net::sent_on_file(file, res as u64);
        }
        return;
    }
    on_read(file, opcode, res as u64);
}

/// Bytes read from `file` through io_uring, summed per process and open file and reported
/// like descriptor reads (every `read_report_bytes`; the agent sweeps the rest).
#[inline(always)]
fn on_read(file: u64, opcode: u8, bytes: u64) {
    let Some((inode, id)) = files::watched_regular(file) else {
        return;
    };
    let (pid, _) = kernel::current_pid_tgid();
    if pid == agent_pid() {
        return;
    }
    // A process reading weights is a holder whichever way it got the file (registered
    // files, a descriptor from before the agent started).
    holders::become_holder();
    let key = UringKey {
        file_ptr: file,
        pid,
        _pad: 0,
    };
    let (total, reported) = match URING_READS.get_ptr_mut(&key) {
        Some(entry) => {
            // SAFETY: `entry` points at a live URING_READS value.
            kernel::atomic_add(unsafe { &raw mut (*entry).bytes }, bytes);
            // SAFETY: as above.
            let (total, reported) = unsafe { ((*entry).bytes, (*entry).reported) };
            if total.wrapping_sub(reported) < settings_read_report() {
                return;
            }
            // SAFETY: as above.
            unsafe { (*entry).reported = total };
            (total, reported)
        }
        None => {
            let value = TrackedFd {
                file: id,
                file_ptr: file,
                bytes,
                reported: bytes,
                size: inode.size,
                written: 0,
            };
            if URING_READS.insert(&key, &value, 0).is_err() {
                stat_inc(stat::URING_READS_FULL);
            }
            // The first completion is reported at once: it says who reads what this way.
            (bytes, 0)
        }
    };
    let Some(mut rec) = emit::reserve::<FileReadEvent>(kind::FILE_READ) else {
        return;
    };
    let ev = rec.as_mut_ptr();
    // SAFETY: `ev` points into our own ring-buffer reservation of a FileReadEvent.
    unsafe {
        (*ev).file = id;
        (*ev).bytes = total - reported;
        (*ev).total = total;
        (*ev).fd = -1;
        (*ev).syscall = opcode as u32;
        (*ev).reason = read_reason::IO_URING;
        (*ev)._pad = 0;
        (*ev).instance = file;
    }
    emit::submit(rec, kind::FILE_READ);
}
