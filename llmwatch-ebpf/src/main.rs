//! llmwatch kernel programs.
//!
//! One `sys_exit` raw tracepoint dispatches on the syscall number: at exit the arguments are
//! still in `pt_regs` and the return value says what really happened (bytes returned, fd
//! opened), so no `sys_enter` program is needed and unrelated syscalls pay one compare.
//! Process lifecycle comes from the sched tracepoints, socket sends from `sock_send_length`
//! (or the syscall hook where the kernel lacks it), io_uring from `io_uring_complete`, pages
//! touched through mappings from the filemap fault tracepoints.
//!
//! Module per concern: `kernel` (reading kernel memory with BTF-resolved offsets), `emit`
//! (ring-buffer records), `holders` (which processes are looked at), `files`, `touch`, `net`,
//! `uring`, `process`; `fast` holds the per-syscall fexit programs that replace the `sys_exit`
//! hook where the kernel allows fentry/fexit.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
// Map keys are passed by reference on purpose: the BPF stack is 512 bytes.
#![allow(clippy::needless_borrows_for_generic_args)]

#[cfg(target_arch = "bpf")]
mod emit;
#[cfg(target_arch = "bpf")]
mod fast;
#[cfg(target_arch = "bpf")]
mod feature_probes;
#[cfg(target_arch = "bpf")]
mod files;
#[cfg(target_arch = "bpf")]
mod floor;
#[cfg(target_arch = "bpf")]
mod guard;
#[cfg(target_arch = "bpf")]
mod holders;
#[cfg(target_arch = "bpf")]
mod kernel;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod net;
#[cfg(target_arch = "bpf")]
mod process;
#[cfg(target_arch = "bpf")]
mod touch;
#[cfg(target_arch = "bpf")]
mod uring;

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        EbpfContext as _,
        macros::{btf_tracepoint, fentry, fexit, kprobe, raw_tracepoint},
        programs::{BtfTracePointContext, FEntryContext, FExitContext, ProbeContext, RawTracePointContext},
    };
    use llmwatch_common::syscalls as nr;

    use crate::{files, holders, kernel, maps, net};

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
        // SAFETY: `regs` is the typed `struct pt_regs *` of the BTF tracepoint and `off` the
        // BTF offset of its `orig_ax`, a constant the verifier checks against the type.
        let sysno = unsafe { core::ptr::read_volatile((regs + off) as *const u64) };
        dispatch(regs, sysno, ret)
    }

    /// Also the body of every fast-path program (`fast`), with `sysno` a constant there.
    #[inline(always)]
    pub(crate) fn dispatch(regs: u64, sysno: u64, ret: i64) -> i32 {
        if sysno > nr::MAX_INTERESTING {
            return 0;
        }
        match sysno {
            // Descriptor-based syscalls only matter for holders of a watched file: one inlined
            // array load decides, before any argument is read.
            nr::READ
            | nr::PREAD64
            | nr::READV
            | nr::PREADV
            | nr::PREADV2
            | nr::COPY_FILE_RANGE
            | nr::PWRITE64
            | nr::PWRITEV
            | nr::PWRITEV2
            | nr::CLOSE
            | nr::CLOSE_RANGE
            | nr::MMAP
            | nr::DUP
            | nr::DUP2
            | nr::DUP3
            | nr::FCNTL
            | nr::FTRUNCATE => {
                if holders::current_may_hold() {
                    on_fd_syscall(regs, sysno, ret);
                }
            }
            // Reads of a file and sends into a socket in one call; writes may be either.
            nr::SENDFILE | nr::SPLICE | nr::WRITE | nr::WRITEV => {
                if holders::current_may_hold() {
                    on_fd_syscall(regs, sysno, ret);
                }
                if maps::sends_at_syscalls() && holders::current_sends_counted() {
                    net::on_send_syscall(regs, sysno, ret);
                }
            }
            nr::SENDTO | nr::SENDMSG | nr::SENDMMSG => {
                if holders::current_sends_counted() {
                    net::on_send_syscall(regs, sysno, ret);
                }
                if sysno != nr::SENDTO && holders::current_may_hold() {
                    files::on_holder_sendmsg(regs, ret);
                }
            }
            nr::OPEN | nr::OPENAT | nr::OPENAT2 | nr::CREAT | nr::OPEN_BY_HANDLE_AT => {
                files::on_open(regs, sysno, ret)
            }
            nr::RECVMSG | nr::RECVMMSG => files::on_recvmsg(regs, sysno, ret),
            nr::PIDFD_GETFD => {
                if ret >= 0 {
                    files::adopt(
                        ret as u64,
                        sysno,
                        llmwatch_common::event::open_origin::PIDFD_GETFD,
                    );
                }
            }
            nr::TRUNCATE | nr::UNLINK | nr::UNLINKAT | nr::RENAME | nr::RENAMEAT | nr::RENAMEAT2 => {
                files::on_path_change(regs, sysno, ret)
            }
            nr::PTRACE | nr::PROCESS_VM_READV | nr::PROCESS_VM_WRITEV => {
                crate::process::on_access(regs, sysno, ret)
            }
            nr::BPF => crate::process::on_bpf(regs, ret),
            nr::CONNECT => net::on_connect(regs, ret),
            nr::ACCEPT | nr::ACCEPT4 => net::on_accept(ret),
            _ => {}
        }
        0
    }

    #[inline(always)]
    fn on_fd_syscall(regs: u64, sysno: u64, ret: i64) {
        match sysno {
            nr::READ | nr::PREAD64 | nr::READV | nr::PREADV | nr::PREADV2 => {
                files::on_read(sysno, kernel::regs_arg(regs, 0), ret)
            }
            nr::SENDFILE => files::on_read(sysno, kernel::regs_arg(regs, 1), ret),
            nr::SPLICE => files::on_read(sysno, kernel::regs_arg(regs, 0), ret),
            nr::COPY_FILE_RANGE => {
                files::on_read(sysno, kernel::regs_arg(regs, 0), ret);
                files::on_write(sysno, kernel::regs_arg(regs, 2), ret);
            }
            nr::CLOSE => files::on_close(kernel::regs_arg(regs, 0), ret),
            nr::CLOSE_RANGE => files::on_close_range(
                kernel::regs_arg(regs, 0),
                kernel::regs_arg(regs, 1),
                kernel::regs_arg(regs, 2),
                ret,
            ),
            nr::MMAP => files::on_mmap(regs, ret),
            nr::DUP | nr::DUP2 | nr::DUP3 => files::on_dup(sysno, kernel::regs_arg(regs, 0), ret),
            nr::FCNTL => {
                // F_DUPFD (0) and F_DUPFD_CLOEXEC (1030) make a new descriptor.
                let cmd = kernel::regs_arg(regs, 1);
                if cmd == 0 || cmd == 1030 {
                    files::on_dup(sysno, kernel::regs_arg(regs, 0), ret);
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

    /// io_uring_complete(ctx, req, cqe): Linux 6.3 and later.
    #[raw_tracepoint(tracepoint = "io_uring_complete")]
    pub fn llmwatch_io_uring_complete(ctx: RawTracePointContext) -> i32 {
        crate::uring::on_complete(ctx.arg(1), crate::uring::Res::Cqe(ctx.arg(2)));
        0
    }

    /// io_uring_complete(ctx, req, user_data, res, cflags, extra1, extra2): before 6.3.
    #[raw_tracepoint(tracepoint = "io_uring_complete")]
    pub fn llmwatch_io_uring_complete_res(ctx: RawTracePointContext) -> i32 {
        let res: u64 = ctx.arg(3);
        crate::uring::on_complete(ctx.arg(1), crate::uring::Res::Value(res as i32));
        0
    }

    #[raw_tracepoint(tracepoint = "mm_filemap_map_pages")]
    pub fn llmwatch_filemap_map_pages(ctx: RawTracePointContext) -> i32 {
        crate::touch::on_traced_pages(ctx.arg(0), ctx.arg(1), ctx.arg(2));
        0
    }

    #[raw_tracepoint(tracepoint = "mm_filemap_fault")]
    pub fn llmwatch_filemap_fault(ctx: RawTracePointContext) -> i32 {
        let index: u64 = ctx.arg(1);
        crate::touch::on_traced_pages(ctx.arg(0), index, index);
        0
    }

    /// Every descriptor installed, with its file (the fast path, see `files::on_fd_install`):
    /// `fd_install(unsigned int fd, struct file *file)`.
    #[fentry(function = "fd_install")]
    pub fn llmwatch_fe_fd_install(ctx: FEntryContext) -> i32 {
        let fd: u64 = ctx.arg(0);
        files::on_fd_install(fd & 0xffff_ffff, ctx.arg(1));
        0
    }

    /// Pages as mapped (the fast path, see `touch`): `set_pte_range(vmf, folio, page, nr,
    /// addr)`, 6.6+.
    #[fexit(function = "set_pte_range")]
    pub fn llmwatch_fx_set_pte_range(ctx: FExitContext) -> i32 {
        crate::touch::on_ptes_set(ctx.arg(0), ctx.arg(3));
        0
    }

    /// `do_set_pmd(vmf, [folio,] page)`: its arguments changed in 6.8, so the return value
    /// comes from the helper rather than from an argument position.
    #[fexit(function = "do_set_pmd")]
    pub fn llmwatch_fx_do_set_pmd(ctx: FExitContext) -> i32 {
        let mut ret: u64 = u64::MAX;
        // SAFETY: the helper writes the traced function's return value into our own `ret`.
        let got = unsafe { aya_ebpf::helpers::generated::bpf_get_func_ret(ctx.as_ptr(), &mut ret) };
        if got == 0 {
            crate::touch::on_pmd_set(ctx.arg(0), ret);
        }
        0
    }

    /// The same as `llmwatch_filemap_map_pages`, where the kernel lacks the tracepoint.
    #[kprobe]
    pub fn llmwatch_kprobe_filemap_map_pages(ctx: ProbeContext) -> u32 {
        if let (Some(vmf), Some(first), Some(last)) =
            (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(2))
        {
            crate::touch::on_map_pages_call(vmf, first, last);
        }
        0
    }

    /// The same as `llmwatch_filemap_fault`, where the kernel lacks the tracepoint.
    #[kprobe]
    pub fn llmwatch_kprobe_filemap_fault(ctx: ProbeContext) -> u32 {
        if let Some(vmf) = ctx.arg::<u64>(0) {
            crate::touch::on_fault_call(vmf);
        }
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
