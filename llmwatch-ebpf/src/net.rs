//! Outbound connects, bytes sent per destination (aggregated in the kernel), and accepted
//! connections on inference ports.
use llmwatch_common::{
    event::{NetAcceptEvent, NetConnectEvent, NetSendEvent, kind},
    maps::{SendKey, SendStats, stat},
};

use llmwatch_common::syscalls as nr;

use crate::{
    emit, holders,
    kernel::{self, off, read},
    maps::{INFERENCE_PORTS, SEND_STATS, agent_pid, sends_at_syscalls, settings_send_report, stat_inc},
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const EINPROGRESS: i64 = 115;
const IPPROTO_TCP: u16 = 6;
const IPPROTO_UDP: u16 = 17;
const SOCK_DGRAM: u16 = 2;

/// A destination read from a user `struct sockaddr`.
struct Dest {
    family: u16,
    port: u16,
    addr: [u8; 16],
}

/// The peer address of a socket, in the 16-byte form events carry.
#[inline(always)]
fn sk_peer(sk: u64, family: u16) -> Option<[u8; 16]> {
    if family == AF_INET {
        read::<[u8; 4]>(sk, off!(sk_daddr)).map(v4)
    } else {
        read::<[u8; 16]>(sk, off!(sk_v6_daddr))
    }
}

/// An IPv4 address in the 16-byte field events carry (first four bytes).
#[inline(always)]
fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut addr = [0u8; 16];
    addr[0] = a[0];
    addr[1] = a[1];
    addr[2] = a[2];
    addr[3] = a[3];
    addr
}

#[inline(always)]
fn read_sockaddr(uaddr: u64) -> Option<Dest> {
    let family: u16 = kernel::read_user(uaddr)?;
    let port_be: u16 = kernel::read_user(uaddr + 2)?;
    let addr = match family {
        AF_INET => v4(kernel::read_user(uaddr + 4)?),
        AF_INET6 => kernel::read_user(uaddr + 8)?,
        _ => return None,
    };
    Some(Dest {
        family,
        port: u16::from_be(port_be),
        addr,
    })
}

#[inline(always)]
pub fn on_connect(regs: u64, ret: i64) {
    if ret != 0 && ret != -EINPROGRESS {
        return;
    }
    let fd = kernel::regs_arg(regs, 0);
    let Some(dest) = read_sockaddr(kernel::regs_arg(regs, 1)) else {
        return;
    };
    let sock_type = kernel::fd_file(fd)
        .and_then(kernel::file_sock)
        .map(|(_, t)| t)
        .unwrap_or(0);
    emit_connect(&dest, sock_type, fd as i32, ret as i32);
}

#[inline(always)]
fn emit_connect(dest: &Dest, sock_type: u16, fd: i32, ret: i32) {
    let Some(mut rec) = emit::reserve::<NetConnectEvent>(kind::NET_CONNECT) else {
        return;
    };
    let ev = rec.as_mut_ptr();
    // SAFETY: `ev` points into our own ring-buffer reservation of a NetConnectEvent.
    unsafe {
        (*ev).addr = dest.addr;
        (*ev).family = dest.family;
        (*ev).port = dest.port;
        (*ev).sock_type = sock_type;
        (*ev)._pad = 0;
        (*ev).fd = fd;
        (*ev).ret = ret;
    }
    emit::submit(rec, kind::NET_CONNECT);
}

/// A connect through io_uring completed on socket `file`: the destination is the peer the
/// kernel now has.
#[inline(always)]
pub fn connected_file(file: u64) {
    if !is_socket(file) {
        return;
    }
    let Some((sk, sock_type)) = kernel::file_sock(file) else {
        return;
    };
    let Some(dest) = sk_dest(sk) else {
        return;
    };
    emit_connect(&dest, sock_type, -1, 0);
}

/// The connected peer of `sk` (an IPv4/IPv6 socket with a destination port).
#[inline(always)]
fn sk_dest(sk: u64) -> Option<Dest> {
    let family = read::<u16>(sk, off!(sk_family))?;
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    let dport_be = read::<u16>(sk, off!(sk_dport))?;
    if dport_be == 0 {
        return None;
    }
    Some(Dest {
        family,
        port: u16::from_be(dport_be),
        addr: sk_peer(sk, family)?,
    })
}

/// Every sendmsg path (write, send, sendto, sendmsg, sendfile/splice to a socket) ends in
/// `sock_sendmsg_nosec`, which fires `sock_send_length` in the sender's context.
#[inline(always)]
pub fn on_sock_send(sk: u64, ret: i32) {
    if ret <= 0 || !holders::current_sends_counted() {
        return;
    }
    // Unconnected (UDP sendto) has no destination here; the syscall hook counts it.
    let Some(dest) = sk_dest(sk) else {
        return;
    };
    let protocol: u16 = read(sk, off!(sk_protocol)).unwrap_or(0);
    account_send(dest, protocol, ret as u64, false);
}

const S_IFSOCK: u16 = 0o140000;

#[inline(always)]
fn is_socket(file: u64) -> bool {
    let inode: u64 = read(file, off!(file_inode)).unwrap_or(0);
    read::<u16>(inode, off!(inode_mode)).is_some_and(|m| m & kernel::S_IFMT == S_IFSOCK)
}

/// A send-family syscall returned `ret` bytes (messages, for sendmmsg). Where
/// `sock_send_length` counts connected sockets, only sends to an explicit address (an
/// unconnected UDP socket) are counted here; without it (6.1 and older), every send to a
/// socket: write/writev, send/sendto/sendmsg/sendmmsg, sendfile/splice into a socket.
#[inline(always)]
pub fn on_send_syscall(regs: u64, sysno: u64, ret: i64) {
    if ret <= 0 {
        return;
    }
    let all = sends_at_syscalls();
    let (fd, uaddr) = match sysno {
        // struct msghdr (UAPI): msg_name is its first field.
        nr::SENDMSG => (
            kernel::regs_arg(regs, 0),
            kernel::read_user::<u64>(kernel::regs_arg(regs, 1)).unwrap_or(0),
        ),
        nr::SENDTO => (kernel::regs_arg(regs, 0), kernel::regs_arg(regs, 4)),
        nr::SENDMMSG => (kernel::regs_arg(regs, 0), 0),
        // Writes into a socket only count where nothing else sees them.
        nr::SPLICE if all => (kernel::regs_arg(regs, 2), 0),
        nr::SENDFILE | nr::WRITE | nr::WRITEV if all => (kernel::regs_arg(regs, 0), 0),
        _ => return,
    };
    if !all && uaddr == 0 && sysno != nr::SENDMMSG {
        return;
    }
    let Some(file) = kernel::fd_file(fd) else {
        return;
    };
    if !is_socket(file) {
        return;
    }
    let Some((sk, sock_type)) = kernel::file_sock(file) else {
        return;
    };
    if sysno == nr::SENDMMSG {
        sendmmsg(sk, sock_type, kernel::regs_arg(regs, 1), ret as u64, all);
        return;
    }
    // sendfile and splice into a socket go through `sendpage` before 6.5 (see guard::on_sent).
    let page = sysno == nr::SENDFILE || sysno == nr::SPLICE;
    sent(sk, sock_type, uaddr, ret as u64, all, page);
}

/// Messages of one sendmmsg looked at.
const MAX_MMSG: u64 = 16;

/// sendmmsg(fd, msgvec, vlen) sent `count` messages: `struct mmsghdr` is a msghdr (56 bytes,
/// msg_name first) and the bytes sent (`msg_len`, u32) padded to 64.
#[inline(always)]
fn sendmmsg(sk: u64, sock_type: u16, msgvec: u64, count: u64, all: bool) {
    let mut i = 0;
    while i < MAX_MMSG && i < count {
        let m = msgvec + i * 64;
        let len = kernel::read_user::<u32>(m + 56).unwrap_or(0) as u64;
        let uaddr = kernel::read_user::<u64>(m).unwrap_or(0);
        if len > 0 {
            sent(sk, sock_type, uaddr, len, all, false);
        }
        i += 1;
    }
}

/// `bytes` went out of socket `sk`: to its peer when connected (counted here only with
/// `all`), else to the address the caller passed.
#[inline(always)]
fn sent(sk: u64, sock_type: u16, uaddr: u64, bytes: u64, all: bool, page: bool) {
    if let Some(dest) = sk_dest(sk) {
        if all {
            let protocol: u16 = read(sk, off!(sk_protocol)).unwrap_or(0);
            account_send(dest, protocol, bytes, page);
        }
        return;
    }
    let Some(dest) = read_sockaddr(uaddr) else {
        return;
    };
    let protocol = if sock_type == SOCK_DGRAM {
        IPPROTO_UDP
    } else {
        IPPROTO_TCP
    };
    account_send(dest, protocol, bytes, page);
}

/// An io_uring send or write of `bytes` completed on `file` (counted here only where the
/// kernel has no `sock_send_length`; the caller checks).
#[inline(always)]
pub fn sent_on_file(file: u64, bytes: u64) {
    if !is_socket(file) {
        return;
    }
    if let Some((sk, sock_type)) = kernel::file_sock(file) {
        sent(sk, sock_type, 0, bytes, true, false);
    }
}

#[inline(always)]
fn account_send(dest: Dest, protocol: u16, bytes: u64, page: bool) {
    let (pid, _) = kernel::current_pid_tgid();
    if pid == agent_pid() {
        return;
    }
    let guard_hook = if sends_at_syscalls() {
        llmwatch_common::guard::hook::SEND_SYSCALL
    } else {
        llmwatch_common::guard::hook::SEND_TRACEPOINT
    };
    crate::guard::on_sent(&dest.addr, dest.family, dest.port, bytes, guard_hook, page);
    let key = SendKey {
        addr: dest.addr,
        pid,
        family: dest.family,
        port: dest.port,
    };
    let (total, reported, reason) = match SEND_STATS.get_ptr_mut(&key) {
        Some(stats) => {
            // SAFETY: `stats` points at a live SEND_STATS value.
            crate::kernel::atomic_add(unsafe { &raw mut (*stats).bytes }, bytes);
            // SAFETY: as above.
            let (total, reported) = unsafe { ((*stats).bytes, (*stats).reported) };
            if total.wrapping_sub(reported) < settings_send_report() {
                return;
            }
            // SAFETY: as above.
            unsafe { (*stats).reported = total };
            (total, reported, llmwatch_common::event::read_reason::PROGRESS)
        }
        None => {
            let value = SendStats {
                bytes,
                reported: bytes,
                protocol,
                _pad: [0; 3],
            };
            if SEND_STATS.insert(&key, &value, 0).is_err() {
                stat_inc(stat::SEND_STATS_FULL);
            }
            (bytes, 0, llmwatch_common::event::read_reason::FIRST)
        }
    };
    let Some(mut rec) = emit::reserve::<NetSendEvent>(kind::NET_SEND) else {
        return;
    };
    let ev = rec.as_mut_ptr();
    // SAFETY: `ev` points into our own ring-buffer reservation of a NetSendEvent.
    unsafe {
        (*ev).addr = dest.addr;
        (*ev).family = dest.family;
        (*ev).port = dest.port;
        (*ev).protocol = protocol;
        (*ev)._pad = 0;
        (*ev).bytes = total - reported;
        (*ev).total = total;
        (*ev).reason = reason;
        (*ev)._pad2 = 0;
    }
    emit::submit(rec, kind::NET_SEND);
}

#[inline(always)]
pub fn on_accept(ret: i64) {
    if ret < 0 {
        return;
    }
    let Some((sk, _)) = kernel::fd_file(ret as u64).and_then(kernel::file_sock) else {
        return;
    };
    let Some(local_port) = read::<u16>(sk, off!(sk_num)) else {
        return;
    };
    // SAFETY: a lookup whose value is only tested for presence.
    if unsafe { INFERENCE_PORTS.get(&local_port) }.is_none() {
        return;
    }
    let family: u16 = read(sk, off!(sk_family)).unwrap_or(0);
    let addr = sk_peer(sk, family).unwrap_or([0u8; 16]);
    let port = u16::from_be(read::<u16>(sk, off!(sk_dport)).unwrap_or(0));
    let Some(mut rec) = emit::reserve::<NetAcceptEvent>(kind::NET_ACCEPT) else {
        return;
    };
    let ev = rec.as_mut_ptr();
    // SAFETY: `ev` points into our own ring-buffer reservation of a NetAcceptEvent.
    unsafe {
        (*ev).addr = addr;
        (*ev).family = family;
        (*ev).port = port;
        (*ev).local_port = local_port;
        (*ev)._pad = 0;
        (*ev).fd = ret as i32;
        (*ev)._pad2 = 0;
    }
    emit::submit(rec, kind::NET_ACCEPT);
}
