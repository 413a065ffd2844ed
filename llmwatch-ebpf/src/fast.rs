//! The fast path: one fexit program per syscall the agent looks at, on the kernel's syscall
//! entry function (`__x64_sys_read(const struct pt_regs *regs)`), instead of the `sys_exit`
//! tracepoint that every syscall of every process passes through. Unrelated syscalls (getpid,
//! futex, epoll_wait, ...) then run no program at all; a read pays one BPF trampoline.
//!
//! Each program hands the syscall's registers and return value to the same `dispatch` the
//! tracepoint path uses, with the syscall number a constant, so both paths see exactly the
//! same events and the inlined `match` folds down to the one arm. The agent attaches all of
//! them or none (`llmwatch::probes::fast`, which lists the same programs): half the syscalls on one path would be a
//! count that looks complete and is not.
//!
//! The `floor_fx_*` twins are empty programs on the same functions: the benchmark's floor for
//! this path (the trampoline's own cost).
use aya_ebpf::{macros::fexit, programs::FExitContext};
use llmwatch_common::syscalls as nr;

macro_rules! syscall_fexits {
    ($( $prog:ident, $floor:ident, $func:tt, $nr:expr; )*) => {
        $(
            #[fexit(function = $func)]
            pub fn $prog(ctx: FExitContext) -> i32 {
                // fexit arguments: the traced function's one argument (`regs`), then its
                // return value.
                let regs: u64 = ctx.arg(0);
                let ret: i64 = ctx.arg(1);
                crate::programs::dispatch(regs, $nr, ret)
            }

            #[fexit(function = $func)]
            pub fn $floor(_ctx: FExitContext) -> i32 {
                0
            }
        )*
    };
}

syscall_fexits! {
    llmwatch_fx_read, floor_fx_read, "__x64_sys_read", nr::READ;
    llmwatch_fx_pread64, floor_fx_pread64, "__x64_sys_pread64", nr::PREAD64;
    llmwatch_fx_readv, floor_fx_readv, "__x64_sys_readv", nr::READV;
    llmwatch_fx_preadv, floor_fx_preadv, "__x64_sys_preadv", nr::PREADV;
    llmwatch_fx_preadv2, floor_fx_preadv2, "__x64_sys_preadv2", nr::PREADV2;
    llmwatch_fx_copy_file_range, floor_fx_copy_file_range, "__x64_sys_copy_file_range", nr::COPY_FILE_RANGE;
    llmwatch_fx_write, floor_fx_write, "__x64_sys_write", nr::WRITE;
    llmwatch_fx_writev, floor_fx_writev, "__x64_sys_writev", nr::WRITEV;
    llmwatch_fx_pwrite64, floor_fx_pwrite64, "__x64_sys_pwrite64", nr::PWRITE64;
    llmwatch_fx_pwritev, floor_fx_pwritev, "__x64_sys_pwritev", nr::PWRITEV;
    llmwatch_fx_pwritev2, floor_fx_pwritev2, "__x64_sys_pwritev2", nr::PWRITEV2;
    llmwatch_fx_close, floor_fx_close, "__x64_sys_close", nr::CLOSE;
    llmwatch_fx_close_range, floor_fx_close_range, "__x64_sys_close_range", nr::CLOSE_RANGE;
    llmwatch_fx_mmap, floor_fx_mmap, "__x64_sys_mmap", nr::MMAP;
    llmwatch_fx_dup, floor_fx_dup, "__x64_sys_dup", nr::DUP;
    llmwatch_fx_dup2, floor_fx_dup2, "__x64_sys_dup2", nr::DUP2;
    llmwatch_fx_dup3, floor_fx_dup3, "__x64_sys_dup3", nr::DUP3;
    llmwatch_fx_fcntl, floor_fx_fcntl, "__x64_sys_fcntl", nr::FCNTL;
    llmwatch_fx_ftruncate, floor_fx_ftruncate, "__x64_sys_ftruncate", nr::FTRUNCATE;
    llmwatch_fx_sendfile, floor_fx_sendfile, "__x64_sys_sendfile64", nr::SENDFILE;
    llmwatch_fx_splice, floor_fx_splice, "__x64_sys_splice", nr::SPLICE;
    llmwatch_fx_sendto, floor_fx_sendto, "__x64_sys_sendto", nr::SENDTO;
    llmwatch_fx_sendmsg, floor_fx_sendmsg, "__x64_sys_sendmsg", nr::SENDMSG;
    llmwatch_fx_sendmmsg, floor_fx_sendmmsg, "__x64_sys_sendmmsg", nr::SENDMMSG;
    llmwatch_fx_open, floor_fx_open, "__x64_sys_open", nr::OPEN;
    llmwatch_fx_openat, floor_fx_openat, "__x64_sys_openat", nr::OPENAT;
    llmwatch_fx_openat2, floor_fx_openat2, "__x64_sys_openat2", nr::OPENAT2;
    llmwatch_fx_creat, floor_fx_creat, "__x64_sys_creat", nr::CREAT;
    llmwatch_fx_open_by_handle_at, floor_fx_open_by_handle_at, "__x64_sys_open_by_handle_at", nr::OPEN_BY_HANDLE_AT;
    llmwatch_fx_recvmsg, floor_fx_recvmsg, "__x64_sys_recvmsg", nr::RECVMSG;
    llmwatch_fx_recvmmsg, floor_fx_recvmmsg, "__x64_sys_recvmmsg", nr::RECVMMSG;
    llmwatch_fx_pidfd_getfd, floor_fx_pidfd_getfd, "__x64_sys_pidfd_getfd", nr::PIDFD_GETFD;
    llmwatch_fx_truncate, floor_fx_truncate, "__x64_sys_truncate", nr::TRUNCATE;
    llmwatch_fx_unlink, floor_fx_unlink, "__x64_sys_unlink", nr::UNLINK;
    llmwatch_fx_unlinkat, floor_fx_unlinkat, "__x64_sys_unlinkat", nr::UNLINKAT;
    llmwatch_fx_rename, floor_fx_rename, "__x64_sys_rename", nr::RENAME;
    llmwatch_fx_renameat, floor_fx_renameat, "__x64_sys_renameat", nr::RENAMEAT;
    llmwatch_fx_renameat2, floor_fx_renameat2, "__x64_sys_renameat2", nr::RENAMEAT2;
    llmwatch_fx_ptrace, floor_fx_ptrace, "__x64_sys_ptrace", nr::PTRACE;
    llmwatch_fx_process_vm_readv, floor_fx_process_vm_readv, "__x64_sys_process_vm_readv", nr::PROCESS_VM_READV;
    llmwatch_fx_process_vm_writev, floor_fx_process_vm_writev, "__x64_sys_process_vm_writev", nr::PROCESS_VM_WRITEV;
    llmwatch_fx_bpf, floor_fx_bpf, "__x64_sys_bpf", nr::BPF;
    llmwatch_fx_connect, floor_fx_connect, "__x64_sys_connect", nr::CONNECT;
    llmwatch_fx_accept, floor_fx_accept, "__x64_sys_accept", nr::ACCEPT;
    llmwatch_fx_accept4, floor_fx_accept4, "__x64_sys_accept4", nr::ACCEPT4;
}
