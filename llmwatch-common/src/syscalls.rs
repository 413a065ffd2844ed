//! x86_64 syscall numbers the programs dispatch on (`orig_ax` at sys_exit).
//!
//! Only x86_64 is supported today; other architectures need their own table here.

pub const READ: u64 = 0;
pub const WRITE: u64 = 1;
pub const OPEN: u64 = 2;
pub const CLOSE: u64 = 3;
pub const MMAP: u64 = 9;
pub const PREAD64: u64 = 17;
pub const PWRITE64: u64 = 18;
pub const READV: u64 = 19;
pub const WRITEV: u64 = 20;
pub const DUP: u64 = 32;
pub const DUP2: u64 = 33;
pub const SENDFILE: u64 = 40;
pub const CONNECT: u64 = 42;
pub const ACCEPT: u64 = 43;
pub const SENDTO: u64 = 44;
pub const SENDMSG: u64 = 46;
pub const RECVMSG: u64 = 47;
pub const FCNTL: u64 = 72;
pub const PTRACE: u64 = 101;
pub const TRUNCATE: u64 = 76;
pub const FTRUNCATE: u64 = 77;
pub const RENAME: u64 = 82;
pub const CREAT: u64 = 85;
pub const UNLINK: u64 = 87;
pub const OPENAT: u64 = 257;
pub const UNLINKAT: u64 = 263;
pub const RENAMEAT: u64 = 264;
pub const SPLICE: u64 = 275;
pub const ACCEPT4: u64 = 288;
pub const RECVMMSG: u64 = 299;
pub const OPEN_BY_HANDLE_AT: u64 = 304;
pub const SENDMMSG: u64 = 307;
pub const DUP3: u64 = 292;
pub const PREADV: u64 = 295;
pub const PWRITEV: u64 = 296;
pub const PROCESS_VM_READV: u64 = 310;
pub const PROCESS_VM_WRITEV: u64 = 311;
pub const RENAMEAT2: u64 = 316;
pub const BPF: u64 = 321;
pub const COPY_FILE_RANGE: u64 = 326;
pub const PREADV2: u64 = 327;
pub const PWRITEV2: u64 = 328;
pub const CLOSE_RANGE: u64 = 436;
pub const IO_URING_SETUP: u64 = 425;
pub const IO_URING_ENTER: u64 = 426;
pub const IO_URING_REGISTER: u64 = 427;
pub const OPENAT2: u64 = 437;
pub const PIDFD_GETFD: u64 = 438;

/// Largest syscall number the dispatcher cares about; anything above is skipped with one compare.
pub const MAX_INTERESTING: u64 = PIDFD_GETFD;

/// Name of a syscall number this module knows, for events and logs.
pub fn name(nr: u64) -> &'static str {
    match nr {
        READ => "read",
        WRITE => "write",
        OPEN => "open",
        CLOSE => "close",
        MMAP => "mmap",
        PREAD64 => "pread64",
        PWRITE64 => "pwrite64",
        READV => "readv",
        WRITEV => "writev",
        DUP => "dup",
        DUP2 => "dup2",
        SENDFILE => "sendfile",
        CONNECT => "connect",
        ACCEPT => "accept",
        SENDTO => "sendto",
        SENDMSG => "sendmsg",
        RECVMSG => "recvmsg",
        FCNTL => "fcntl",
        PTRACE => "ptrace",
        PROCESS_VM_READV => "process_vm_readv",
        PROCESS_VM_WRITEV => "process_vm_writev",
        TRUNCATE => "truncate",
        FTRUNCATE => "ftruncate",
        RENAME => "rename",
        CREAT => "creat",
        UNLINK => "unlink",
        OPENAT => "openat",
        UNLINKAT => "unlinkat",
        RENAMEAT => "renameat",
        SPLICE => "splice",
        ACCEPT4 => "accept4",
        RECVMMSG => "recvmmsg",
        OPEN_BY_HANDLE_AT => "open_by_handle_at",
        SENDMMSG => "sendmmsg",
        DUP3 => "dup3",
        PREADV => "preadv",
        PWRITEV => "pwritev",
        RENAMEAT2 => "renameat2",
        BPF => "bpf",
        COPY_FILE_RANGE => "copy_file_range",
        PREADV2 => "preadv2",
        PWRITEV2 => "pwritev2",
        CLOSE_RANGE => "close_range",
        IO_URING_SETUP => "io_uring_setup",
        IO_URING_ENTER => "io_uring_enter",
        IO_URING_REGISTER => "io_uring_register",
        OPENAT2 => "openat2",
        PIDFD_GETFD => "pidfd_getfd",
        _ => "other",
    }
}
