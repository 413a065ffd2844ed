//! Byte offsets of the kernel struct fields the programs read.
//!
//! Rust eBPF gets no CO-RE relocations, so the agent resolves these from the running kernel's
//! BTF at start-up and writes them into the programs' read-only globals before load. A field the
//! kernel does not have is [`MISSING`]; the programs skip what needs it.

pub const MISSING: u32 = u32::MAX;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    // struct pt_regs (x86_64 argument registers and the syscall number)
    pub regs_di: u32,
    pub regs_si: u32,
    pub regs_dx: u32,
    pub regs_r10: u32,
    pub regs_r8: u32,
    pub regs_r9: u32,
    pub regs_orig_ax: u32,
    // struct task_struct
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_real_parent: u32,
    pub task_files: u32,
    pub task_mm: u32,
    pub task_exit_code: u32,
    // task_struct.children / .sibling (list_head), .signal; signal_struct.leader (session leader)
    pub task_children: u32,
    pub task_sibling: u32,
    pub task_signal: u32,
    pub signal_leader: u32,
    // struct files_struct / struct fdtable
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    // struct file
    pub file_inode: u32,
    pub file_flags: u32,
    pub file_private_data: u32,
    // struct inode / struct super_block
    pub inode_mode: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub inode_rdev: u32,
    pub inode_size: u32,
    pub sb_dev: u32,
    // struct socket / struct sock (sock_common is its first member)
    pub socket_type: u32,
    pub socket_sk: u32,
    pub sk_family: u32,
    pub sk_daddr: u32,
    pub sk_rcv_saddr: u32,
    pub sk_dport: u32,
    pub sk_num: u32,
    pub sk_v6_daddr: u32,
    pub sk_protocol: u32,
    // struct mm_struct
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    // struct linux_binprm
    pub bprm_filename: u32,
    // struct io_kiocb (io_uring request)
    pub req_file: u32,
    pub req_opcode: u32,
    // struct io_uring_cqe (UAPI, but resolved like the rest)
    pub cqe_res: u32,
    // struct address_space (filemap fault tracepoints): the inode it caches
    pub mapping_host: u32,
    // struct vm_fault / vm_area_struct / file.f_mapping (filemap kprobes, where the tracepoints
    // are missing)
    pub vmf_vma: u32,
    pub vmf_pgoff: u32,
    pub vma_file: u32,
    pub file_mapping: u32,
    // /proc/<pid>/mem opens: super_block.s_magic, file.f_path.dentry, dentry.d_name.name, dentry.d_parent
    pub sb_magic: u32,
    pub file_dentry: u32,
    pub dentry_name: u32,
    pub dentry_parent: u32,
    // The guard: mm_struct.exe_file (a process's executable, for exemptions by binary)
    pub mm_exe_file: u32,
}

impl Offsets {
    /// What is known without kernel BTF: x86_64 `struct pt_regs` is user ABI (the layout the
    /// syscall entry code pushes, arch/x86/include/uapi/asm/ptrace.h), so syscall numbers and
    /// arguments stay readable. Every kernel struct field stays [`MISSING`].
    pub const fn syscall_abi_only() -> Self {
        let mut o = Self::missing();
        o.regs_r10 = 56;
        o.regs_r9 = 64;
        o.regs_r8 = 72;
        o.regs_dx = 96;
        o.regs_si = 104;
        o.regs_di = 112;
        o.regs_orig_ax = 120;
        o
    }

    /// Every field marked missing; what the kernel-side default looks like before the agent fills it.
    pub const fn missing() -> Self {
        Offsets {
            regs_di: MISSING,
            regs_si: MISSING,
            regs_dx: MISSING,
            regs_r10: MISSING,
            regs_r8: MISSING,
            regs_r9: MISSING,
            regs_orig_ax: MISSING,
            task_pid: MISSING,
            task_tgid: MISSING,
            task_real_parent: MISSING,
            task_files: MISSING,
            task_mm: MISSING,
            task_exit_code: MISSING,
            task_children: MISSING,
            task_sibling: MISSING,
            task_signal: MISSING,
            signal_leader: MISSING,
            mapping_host: MISSING,
            vmf_vma: MISSING,
            vmf_pgoff: MISSING,
            vma_file: MISSING,
            file_mapping: MISSING,
            files_fdt: MISSING,
            fdt_max_fds: MISSING,
            fdt_fd: MISSING,
            file_inode: MISSING,
            file_flags: MISSING,
            file_private_data: MISSING,
            inode_mode: MISSING,
            inode_ino: MISSING,
            inode_sb: MISSING,
            inode_rdev: MISSING,
            inode_size: MISSING,
            sb_dev: MISSING,
            socket_type: MISSING,
            socket_sk: MISSING,
            sk_family: MISSING,
            sk_daddr: MISSING,
            sk_rcv_saddr: MISSING,
            sk_dport: MISSING,
            sk_num: MISSING,
            sk_v6_daddr: MISSING,
            sk_protocol: MISSING,
            mm_arg_start: MISSING,
            mm_arg_end: MISSING,
            bprm_filename: MISSING,
            req_file: MISSING,
            req_opcode: MISSING,
            cqe_res: MISSING,
            sb_magic: MISSING,
            file_dentry: MISSING,
            dentry_name: MISSING,
            dentry_parent: MISSING,
            mm_exe_file: MISSING,
        }
    }
}
