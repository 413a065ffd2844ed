//! Outbound connects, bytes sent per destination (aggregated in the kernel), and accepted
//! connections on inference ports.
use llmwatch_common::{
    event::{NetAcceptEvent, NetConnectEvent, NetSendEvent, kind},
    maps::{SendKey, SendStats, stat},
};

use crate::{
    emit,
    kernel::{self, off, read},
    maps::{INFERENCE_PORTS, SEND_STATS, agent_pid, settings_send_report, stat_inc},
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
    let Some(mut rec) = emit::reserve::<NetConnectEvent>(kind::NET_CONNECT) else {
        return;
    };
    let ev = rec.as_mut_ptr();
    unsafe {
        (*ev).addr = dest.addr;
        (*ev).family = dest.family;
        (*ev).port = dest.port;
        (*ev).sock_type = sock_type;
        (*ev)._pad = 0;
        (*ev).fd = fd as i32;
        (*ev).ret = ret as i32;
    }
    emit::submit(rec, kind::NET_CONNECT);
}

/// Every sendmsg path (write, send, sendto, sendmsg, sendfile/splice to a socket) ends in
/// `sock_sendmsg_nosec`, which fires `sock_send_length` in the sender's context.
#[inline(always)]
pub fn on_sock_send(sk: u64, ret: i32) {
    if ret <= 0 {
        return;
    }
    let Some(family) = read::<u16>(sk, off!(sk_family)) else {
        return;
    };
    if family != AF_INET && family != AF_INET6 {
        return;
    }
    let Some(dport_be) = read::<u16>(sk, off!(sk_dport)) else {
        return;
    };
    if dport_be == 0 {
        // Unconnected (UDP sendto): the destination is only in the message; `on_sendto` counts it.
        return;
    }
    let Some(addr) = sk_peer(sk, family) else {
        return;
    };
    let protocol: u16 = read(sk, off!(sk_protocol)).unwrap_or(0);
    account_send(
        Dest {
            family,
            port: u16::from_be(dport_be),
            addr,
        },
        protocol,
        ret as u64,
    );
}

/// sendto()/sendmsg() with an address (`uaddr`) on an unconnected socket (UDP): the kernel
/// socket has no peer, so the destination is only in the call.
#[inline(always)]
pub fn on_sendto(regs: u64, uaddr: u64, ret: i64) {
    if ret <= 0 {
        return;
    }
    if uaddr == 0 {
        return;
    }
    let Some((sk, sock_type)) = kernel::fd_file(kernel::regs_arg(regs, 0)).and_then(kernel::file_sock) else {
        return;
    };
    // A connected socket was already counted by `sock_send_length`.
    if read::<u16>(sk, off!(sk_dport)).unwrap_or(0) != 0 {
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
    account_send(dest, protocol, ret as u64);
}

#[inline(always)]
fn account_send(dest: Dest, protocol: u16, bytes: u64) {
    let (pid, _) = kernel::current_pid_tgid();
    if pid == agent_pid() {
        return;
    }
    let key = SendKey {
        addr: dest.addr,
        pid,
        family: dest.family,
        port: dest.port,
    };
    let (total, reported, reason) = match SEND_STATS.get_ptr_mut(&key) {
        Some(stats) => {
            crate::kernel::atomic_add(unsafe { &raw mut (*stats).bytes }, bytes);
            let (total, reported) = unsafe { ((*stats).bytes, (*stats).reported) };
            if total.wrapping_sub(reported) < settings_send_report() {
                return;
            }
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
