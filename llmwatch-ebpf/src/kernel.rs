//! Reading kernel memory at offsets the agent resolved from BTF.
//!
//! The offsets live in the read-only `OFFSETS` global; reading them volatile keeps the compiler
//! from folding in the placeholder values the object is built with.
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_user};
use llmwatch_common::offsets::MISSING;

use crate::maps::stat_inc;

macro_rules! off {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&$crate::maps::offsets().$field) }
    };
}
pub(crate) use off;

/// Reads a `T` at `base + offset`, or `None` when the offset is missing or the read faults.
#[inline(always)]
pub fn read<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 || offset == MISSING {
        return None;
    }
    match unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) } {
        Ok(v) => Some(v),
        Err(_) => {
            stat_inc(llmwatch_common::maps::stat::PROBE_READ_ERRORS);
            None
        }
    }
}

#[inline(always)]
pub fn read_user<T>(addr: u64) -> Option<T> {
    if addr == 0 {
        return None;
    }
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}

/// Syscall number of a `sys_exit` (`regs->orig_ax`).
#[inline(always)]
pub fn regs_syscall(regs: u64) -> Option<u64> {
    read::<u64>(regs, off!(regs_orig_ax))
}

/// Syscall argument `n` (0-based, x86_64 order: di, si, dx, r10, r8, r9). The registers are not
/// clobbered between entry and `sys_exit`, so the arguments are still there.
#[inline(always)]
pub fn regs_arg(regs: u64, n: u32) -> u64 {
    let offset = match n {
        0 => off!(regs_di),
        1 => off!(regs_si),
        2 => off!(regs_dx),
        3 => off!(regs_r10),
        4 => off!(regs_r8),
        _ => off!(regs_r9),
    };
    read::<u64>(regs, offset).unwrap_or(0)
}

#[inline(always)]
pub fn current_task() -> u64 {
    unsafe { bpf_get_current_task() }
}

/// `struct file *` installed at `fd` in the current task's descriptor table.
#[inline(always)]
pub fn fd_file(fd: u64) -> Option<u64> {
    let files: u64 = read(current_task(), off!(task_files))?;
    let fdt: u64 = read(files, off!(files_fdt))?;
    let max_fds: u32 = read(fdt, off!(fdt_max_fds))?;
    if fd >= max_fds as u64 {
        return None;
    }
    let table: u64 = read(fdt, off!(fdt_fd))?;
    let file: u64 = read(table, (fd * 8) as u32)?;
    if file == 0 { None } else { Some(file) }
}

/// What an inode is, read once where a file is opened or mapped.
pub struct InodeInfo {
    pub sb: u64,
    pub mode: u16,
    pub dev: u32,
    pub ino: u64,
    pub rdev: u32,
    pub size: u64,
}

pub const S_IFMT: u16 = 0o170000;
pub const S_IFREG: u16 = 0o100000;
pub const S_IFCHR: u16 = 0o020000;

#[inline(always)]
pub fn file_inode(file: u64) -> Option<InodeInfo> {
    let inode: u64 = read(file, off!(file_inode))?;
    let mode: u16 = read(inode, off!(inode_mode))?;
    let ino: u64 = read(inode, off!(inode_ino))?;
    let sb: u64 = read(inode, off!(inode_sb))?;
    let dev: u32 = read(sb, off!(sb_dev))?;
    let (rdev, size) = if mode & S_IFMT == S_IFCHR {
        (read::<u32>(inode, off!(inode_rdev))?, 0)
    } else {
        (0, read::<u64>(inode, off!(inode_size)).unwrap_or(0))
    };
    Some(InodeInfo {
        sb,
        mode,
        dev,
        ino,
        rdev,
        size,
    })
}

/// The `struct sock *` behind a socket file (`file->private_data` is the `struct socket`).
#[inline(always)]
pub fn file_sock(file: u64) -> Option<(u64, u16)> {
    let socket: u64 = read(file, off!(file_private_data))?;
    let sk: u64 = read(socket, off!(socket_sk))?;
    let ty: u16 = read(socket, off!(socket_type)).unwrap_or(0);
    Some((sk, ty))
}

#[inline(always)]
pub fn current_pid_tgid() -> (u32, u32) {
    let v = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    ((v >> 32) as u32, v as u32)
}

/// Atomic add whose result is unused, so it lowers to the BPF `lock xadd` every kernel supports
/// (the BPF target has no `AtomicU64::fetch_add` in core).
#[inline(always)]
pub fn atomic_add(dst: *mut u64, v: u64) {
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(dst, v);
    }
}

/// 32-bit variant of `atomic_add` (wrapping: pass `-1i32 as u32` to subtract).
#[inline(always)]
pub fn atomic_add32(dst: *mut u32, v: u32) {
    unsafe {
        core::intrinsics::atomic_xadd::<u32, u32, { core::intrinsics::AtomicOrdering::Relaxed }>(dst, v);
    }
}
