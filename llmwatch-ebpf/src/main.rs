//! llmwatch kernel programs.
//!
//! One `sys_exit` raw tracepoint dispatches on the syscall number: at exit the arguments are
//! still in `pt_regs` and the return value says what really happened (bytes returned, fd
//! opened), so no `sys_enter` program is needed and unrelated syscalls pay one compare.
//! Process lifecycle comes from the sched tracepoints, socket sends from `sock_send_length`,
//! io_uring reads from `io_uring_complete`.
//!
//! Module per concern: `kernel` (reading kernel memory with BTF-resolved offsets), `emit`
//! (ring-buffer records), `files`, `net`, `process`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
// Map keys are passed by reference on purpose: the BPF stack is 512 bytes.
#![allow(clippy::needless_borrows_for_generic_args)]

#[cfg(target_arch = "bpf")]
mod emit;
#[cfg(target_arch = "bpf")]
mod feature_probes;
#[cfg(target_arch = "bpf")]
mod files;
#[cfg(target_arch = "bpf")]
mod floor;
#[cfg(target_arch = "bpf")]
mod kernel;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod net;
#[cfg(target_arch = "bpf")]
mod process;

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        macros::{btf_tracepoint, raw_tracepoint},
        programs::{BtfTracePointContext, RawTracePointContext},
    };
    use llmwatch_common::syscalls as nr;

    use crate::{files, kernel, net};

    #[raw_tracepoint(tracepoint = "sys_exit")]
    pub fn llmwatch_sys_exit(ctx: RawTracePointContext) -> i32 {
        let regs: u64 = ctx.arg(0);
        let ret: i64 = ctx.arg(1);
        let Some(sysno) = kernel::regs_syscall(regs) else {
            return 0;
        };
        dispatch(regs, sysno, ret)
    }

    /// The same hook as a BTF tracepoint: `regs` is a typed kernel pointer, so the syscall
    /// number is a direct load (no helper call) at the BTF-resolved offset, which the verifier
    /// sees as a constant because it comes from the frozen read-only globals. Preferred when
    /// the kernel allows it; the agent falls back to the raw tracepoint otherwise.
    #[btf_tracepoint(function = "sys_exit")]
    pub fn llmwatch_sys_exit_btf(ctx: BtfTracePointContext) -> i32 {
        let regs: u64 = ctx.arg(0);
        let ret: i64 = ctx.arg(1);
        let off = kernel::off!(regs_orig_ax) as u64;
        if off == llmwatch_common::offsets::MISSING as u64 {
            return 0;
        }
        let sysno = unsafe { core::ptr::read_volatile((regs + off) as *const u64) };
        dispatch(regs, sysno, ret)
    }

    #[inline(always)]
    fn dispatch(regs: u64, sysno: u64, ret: i64) -> i32 {
        if sysno > nr::MAX_INTERESTING {
            return 0;
        }
        match sysno {
            // Descriptor-based syscalls only matter for processes holding a watched file: one
            // inlined array load decides, before any argument is read.
            nr::READ
            | nr::PREAD64
            | nr::READV
            | nr::PREADV
            | nr::PREADV2
            | nr::SENDFILE
            | nr::SPLICE
            | nr::COPY_FILE_RANGE
            | nr::WRITE
            | nr::PWRITE64
            | nr::WRITEV
            | nr::PWRITEV
            | nr::PWRITEV2
            | nr::CLOSE
            | nr::MMAP
            | nr::DUP
            | nr::DUP2
            | nr::DUP3
            | nr::FCNTL
            | nr::FTRUNCATE => {
                if files::pid_may_track() {
                    on_fd_syscall(regs, sysno, ret);
                }
            }
            nr::OPEN | nr::OPENAT | nr::OPENAT2 | nr::CREAT => files::on_open(regs, sysno, ret),
            nr::TRUNCATE | nr::UNLINK | nr::UNLINKAT | nr::RENAME | nr::RENAMEAT | nr::RENAMEAT2 => {
                files::on_path_change(regs, sysno, ret)
            }
            nr::PTRACE | nr::PROCESS_VM_READV | nr::PROCESS_VM_WRITEV => {
                crate::process::on_access(regs, sysno, ret)
            }
            nr::BPF => crate::process::on_bpf(regs, ret),
            nr::CONNECT => net::on_connect(regs, ret),
            nr::ACCEPT | nr::ACCEPT4 => net::on_accept(ret),
            nr::SENDTO => net::on_sendto(regs, kernel::regs_arg(regs, 4), ret),
            // struct msghdr (UAPI): msg_name is its first field.
            nr::SENDMSG => net::on_sendto(
                regs,
                kernel::read_user::<u64>(kernel::regs_arg(regs, 1)).unwrap_or(0),
                ret,
            ),
            _ => {}
        }
        0
    }

    #[inline(always)]
    fn on_fd_syscall(regs: u64, sysno: u64, ret: i64) {
        match sysno {
            nr::READ | nr::PREAD64 | nr::READV | nr::PREADV | nr::PREADV2 => {
                files::on_read(regs, sysno, kernel::regs_arg(regs, 0), ret)
            }
            nr::SENDFILE => files::on_read(regs, sysno, kernel::regs_arg(regs, 1), ret),
            nr::SPLICE => files::on_read(regs, sysno, kernel::regs_arg(regs, 0), ret),
            nr::COPY_FILE_RANGE => {
                files::on_read(regs, sysno, kernel::regs_arg(regs, 0), ret);
                files::on_write(sysno, kernel::regs_arg(regs, 2), ret);
            }
            nr::CLOSE => files::on_close(kernel::regs_arg(regs, 0), ret),
            nr::MMAP => files::on_mmap(regs, ret),
            nr::DUP | nr::DUP2 | nr::DUP3 => files::on_dup(kernel::regs_arg(regs, 0), ret),
            nr::FCNTL => {
                // F_DUPFD (0) and F_DUPFD_CLOEXEC (1030) make a new descriptor.
                let cmd = kernel::regs_arg(regs, 1);
                if cmd == 0 || cmd == 1030 {
                    files::on_dup(kernel::regs_arg(regs, 0), ret);
                }
            }
            nr::FTRUNCATE => files::on_ftruncate(kernel::regs_arg(regs, 0), ret),
            // write family
            _ => files::on_write(sysno, kernel::regs_arg(regs, 0), ret),
        }
    }

    #[raw_tracepoint(tracepoint = "sock_send_length")]
    pub fn llmwatch_sock_send(ctx: RawTracePointContext) -> i32 {
        let sk: u64 = ctx.arg(0);
        let ret: i32 = ctx.arg(1);
        net::on_sock_send(sk, ret);
        0
    }

    #[raw_tracepoint(tracepoint = "sched_process_exec")]
    pub fn llmwatch_exec(ctx: RawTracePointContext) -> i32 {
        crate::process::on_exec(ctx.arg(0), ctx.arg(2));
        0
    }

    #[raw_tracepoint(tracepoint = "sched_process_fork")]
    pub fn llmwatch_fork(ctx: RawTracePointContext) -> i32 {
        crate::process::on_fork(ctx.arg(1));
        0
    }

    #[raw_tracepoint(tracepoint = "sched_process_exit")]
    pub fn llmwatch_exit(ctx: RawTracePointContext) -> i32 {
        crate::process::on_exit(ctx.arg(0));
        0
    }

    #[raw_tracepoint(tracepoint = "io_uring_complete")]
    pub fn llmwatch_io_uring_complete(ctx: RawTracePointContext) -> i32 {
        files::on_io_uring_complete(ctx.arg(1), ctx.arg(2));
        0
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
