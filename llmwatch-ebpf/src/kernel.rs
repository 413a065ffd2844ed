//! Reading kernel memory at offsets the agent resolved from BTF.
//!
//! The offsets live in the read-only `OFFSETS` global; reading them volatile keeps the compiler
//! from folding in the placeholder values the object is built with.
use core::mem::MaybeUninit;

use aya_ebpf::helpers::{bpf_get_current_task, generated as helper};
use llmwatch_common::offsets::MISSING;

use crate::maps::stat_inc;

macro_rules! off {
    ($field:ident) => {
        // SAFETY: `offsets()` is a reference to the OFFSETS global, valid and aligned for the
        // program's life; a volatile read of a plain integer field of it.
        unsafe { core::ptr::read_volatile(&$crate::maps::offsets().$field) }
    };
}
pub(crate) use off;

/// Reads a `T` at `base + offset`, or `None` when the offset is missing or the read faults.
#[inline(always)]
pub fn read<T: Copy>(base: u64, offset: u32) -> Option<T> {
    if base == 0 || offset == MISSING {
        return None;
    }
    let mut v = MaybeUninit::<T>::zeroed();
    // SAFETY: the helper writes at most size_of::<T>() bytes into `v`, our own stack slot, and
    // faults are caught by the helper (it zeroes the destination then).
    let r = unsafe {
        helper::bpf_probe_read_kernel(
            v.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u32,
            (base + offset as u64) as *const core::ffi::c_void,
        )
    };
    if r < 0 {
        stat_inc(llmwatch_common::maps::stat::PROBE_READ_ERRORS);
        return None;
    }
    // SAFETY: zero-initialised, then filled by the helper; T is plain data.
    Some(unsafe { v.assume_init() })
}

/// Reads a `T` from user memory. The value starts zeroed (not uninitialised, as aya's helper
/// leaves it on failure): LLVM may otherwise turn `read_user(..).unwrap_or(0)` into a select
/// on an undefined register, which the verifier rejects.
#[inline(always)]
pub fn read_user<T: Copy>(addr: u64) -> Option<T> {
    if addr == 0 {
        return None;
    }
    let mut v = MaybeUninit::<T>::zeroed();
    // SAFETY: as in `read`, from user memory.
    let r = unsafe {
        helper::bpf_probe_read_user(
            v.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u32,
            addr as *const core::ffi::c_void,
        )
    };
    if r < 0 {
        return None;
    }
    // SAFETY: as in `read`.
    Some(unsafe { v.assume_init() })
}

/// Syscall number of a `sys_exit` (`regs->orig_ax`).
#[inline(always)]
pub fn regs_syscall(regs: u64) -> Option<u64> {
    read::<u64>(regs, off!(regs_orig_ax))
}

/// The syscall the current task is in, for a hook inside the kernel rather than on a syscall:
/// `orig_ax` of its user registers (an io_uring worker thread carries the registers of the
/// `io_uring_enter`/`io_uring_setup` that created it). Tracing programs only (the helpers take
/// and give BTF pointers).
#[inline(always)]
pub fn current_syscall() -> Option<u64> {
    // SAFETY: the current task as a trusted BTF pointer, handed straight to the helper that
    // returns its user-mode registers; both helpers take no memory from us.
    let regs = unsafe { helper::bpf_task_pt_regs(helper::bpf_get_current_task_btf()) };
    regs_syscall(regs as u64)
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
    // SAFETY: a helper without arguments; the pointer is only ever read through helpers.
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
    // SAFETY: callers pass a pointer to a live map value (a u64 field of it).
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(dst, v);
    }
}

/// 32-bit variant of `atomic_add` (wrapping: pass `-1i32 as u32` to subtract).
#[inline(always)]
pub fn atomic_add32(dst: *mut u32, v: u32) {
    // SAFETY: callers pass a pointer to a live map value (a u32 element).
    unsafe {
        core::intrinsics::atomic_xadd::<u32, u32, { core::intrinsics::AtomicOrdering::Relaxed }>(dst, v);
    }
}
