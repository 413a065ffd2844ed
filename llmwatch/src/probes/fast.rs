//! The fast path: per-syscall fexit programs (`llmwatch-ebpf/src/fast.rs`) instead of the
//! `sys_exit` tracepoint every syscall on the host goes through. Tried with a real load and
//! attach at start-up; where the kernel refuses fentry/fexit (this sandbox's 6.18: EPERM) the
//! agent falls back to the tracepoint path and says why (`agent_ready.hook_path_fallback`,
//! `llmwatch check`, `llmwatch_hook_path`).
//!
//! All or none: a syscall this kernel has but whose program does not attach would be a hole
//! that looks like coverage, so one failure detaches the others. A syscall function missing
//! from this kernel's BTF is a syscall the kernel does not have (openat2 before 5.6,
//! close_range before 5.9, ...), and is skipped and listed.
use aya::{
    Btf, BtfError, Ebpf,
    programs::{FEntry, FExit, ProgramError},
};

/// Which hooks carry the syscall-level data (opens, reads, mmaps, changes, connects, sends at
/// syscalls) on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HookPath {
    /// One fexit program per syscall looked at: unrelated syscalls run no program.
    Fentry,
    /// The `sys_exit` tracepoint (tp_btf, else raw): every syscall runs the dispatch.
    Tracepoint,
}

impl HookPath {
    pub fn as_str(self) -> &'static str {
        match self {
            HookPath::Fentry => "fentry",
            HookPath::Tracepoint => "tracepoint",
        }
    }
}

/// The path chosen at start-up (`agent_ready.hook_path`, `llmwatch check --json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct HookChoice {
    pub hook_path: HookPath,
    /// Why the per-syscall fexit programs are not used, when they are not.
    pub hook_path_fallback: Option<String>,
}

/// The name shown for the fast path's hooks (one `HookStatus` for the whole set).
pub const HOOK_NAME: &str = "fexit/__x64_sys_* (per syscall)";

/// (program suffix, kernel function): `llmwatch_fx_<suffix>` and the floor's `floor_fx_<suffix>`
/// are defined in `llmwatch-ebpf/src/fast.rs`, one per syscall its `dispatch` handles.
pub const SYSCALL_FEXITS: &[(&str, &str)] = &[
    ("read", "__x64_sys_read"),
    ("pread64", "__x64_sys_pread64"),
    ("readv", "__x64_sys_readv"),
    ("preadv", "__x64_sys_preadv"),
    ("preadv2", "__x64_sys_preadv2"),
    ("copy_file_range", "__x64_sys_copy_file_range"),
    ("write", "__x64_sys_write"),
    ("writev", "__x64_sys_writev"),
    ("pwrite64", "__x64_sys_pwrite64"),
    ("pwritev", "__x64_sys_pwritev"),
    ("pwritev2", "__x64_sys_pwritev2"),
    ("close", "__x64_sys_close"),
    ("close_range", "__x64_sys_close_range"),
    ("mmap", "__x64_sys_mmap"),
    ("dup", "__x64_sys_dup"),
    ("dup2", "__x64_sys_dup2"),
    ("dup3", "__x64_sys_dup3"),
    ("fcntl", "__x64_sys_fcntl"),
    ("ftruncate", "__x64_sys_ftruncate"),
    ("sendfile", "__x64_sys_sendfile64"),
    ("splice", "__x64_sys_splice"),
    ("sendto", "__x64_sys_sendto"),
    ("sendmsg", "__x64_sys_sendmsg"),
    ("sendmmsg", "__x64_sys_sendmmsg"),
    ("open", "__x64_sys_open"),
    ("openat", "__x64_sys_openat"),
    ("openat2", "__x64_sys_openat2"),
    ("creat", "__x64_sys_creat"),
    ("open_by_handle_at", "__x64_sys_open_by_handle_at"),
    ("recvmsg", "__x64_sys_recvmsg"),
    ("recvmmsg", "__x64_sys_recvmmsg"),
    ("pidfd_getfd", "__x64_sys_pidfd_getfd"),
    ("truncate", "__x64_sys_truncate"),
    ("unlink", "__x64_sys_unlink"),
    ("unlinkat", "__x64_sys_unlinkat"),
    ("rename", "__x64_sys_rename"),
    ("renameat", "__x64_sys_renameat"),
    ("renameat2", "__x64_sys_renameat2"),
    ("ptrace", "__x64_sys_ptrace"),
    ("process_vm_readv", "__x64_sys_process_vm_readv"),
    ("process_vm_writev", "__x64_sys_process_vm_writev"),
    ("bpf", "__x64_sys_bpf"),
    ("connect", "__x64_sys_connect"),
    ("accept", "__x64_sys_accept"),
    ("accept4", "__x64_sys_accept4"),
];

/// Syscalls without which the fast path would see nothing worth having: their functions must be
/// in BTF (else this is not an x86_64 kernel with the usual syscall wrappers).
const ESSENTIAL: [&str; 3] = ["__x64_sys_read", "__x64_sys_openat", "__x64_sys_close"];

/// The page-table functions whose fexit programs count the pages of a mapping as they are
/// mapped (`llmwatch-ebpf/src/touch.rs`): (program, kernel function). `set_pte_range` (6.6+)
/// maps PTEs, `do_set_pmd` (with transparent huge pages) a PMD.
pub const FAULT_FEXITS: [(&str, &str); 2] = [
    ("llmwatch_fx_set_pte_range", "set_pte_range"),
    ("llmwatch_fx_do_set_pmd", "do_set_pmd"),
];

/// (program, kernel function) of the fentry program that sees every descriptor installed
/// (`llmwatch-ebpf/src/files.rs`, `on_fd_install`).
pub const FD_INSTALL: (&str, &str) = ("llmwatch_fe_fd_install", "fd_install");

/// Loads and attaches the `fd_install` program.
pub fn attach_fd_install(ebpf: &mut Ebpf, btf: &Btf) -> Result<(), String> {
    let (program, function) = FD_INSTALL;
    let prog: &mut FEntry = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("program {program} missing from the object"))?
        .try_into()
        .map_err(|e| format!("{program}: {e}"))?;
    prog.load(function, btf)
        .map_err(|e| format!("load {program} on {function}: {}", super::describe(&e)))?;
    if let Err(e) = prog.attach() {
        let _ = prog.unload();
        return Err(format!("attach {program} to {function}: {}", super::describe(&e)));
    }
    Ok(())
}

/// What `attach_fault_hooks` attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultHooks {
    /// Every page as mapped: `set_pte_range`, and `do_set_pmd` where the kernel has it; the
    /// filemap tracepoints and kprobes are not used.
    PageTables { pmd: bool },
    /// `do_set_pmd` alone (a kernel before 6.6, whose PTE function runs once per page): PMDs
    /// as mapped, PTE faults still from the filemap tracepoints or kprobes.
    PmdOnly,
}

impl FaultHooks {
    pub fn hook_name(self) -> &'static str {
        match self {
            FaultHooks::PageTables { pmd: true } => "fexit/set_pte_range + fexit/do_set_pmd",
            FaultHooks::PageTables { pmd: false } => "fexit/set_pte_range",
            FaultHooks::PmdOnly => "fexit/do_set_pmd",
        }
    }
}

/// Loads and attaches the page-table fexit programs this kernel has functions for. All or
/// none, as for the syscall programs: returns what was attached, or why nothing was.
pub fn attach_fault_hooks(ebpf: &mut Ebpf, btf: &Btf) -> Result<FaultHooks, String> {
    let mut hooked: Vec<&'static str> = Vec::new();
    let mut tried = || -> Result<(), String> {
        for (program, function) in FAULT_FEXITS {
            if attach_one(ebpf, btf, program, function)? {
                hooked.push(function);
            }
        }
        Ok(())
    };
    let result = tried().and_then(|()| {
        let pmd = hooked.contains(&"do_set_pmd");
        match (hooked.contains(&"set_pte_range"), pmd) {
            (true, _) => Ok(FaultHooks::PageTables { pmd }),
            (false, true) => Ok(FaultHooks::PmdOnly),
            (false, false) => Err("neither set_pte_range nor do_set_pmd in this kernel's BTF".into()),
        }
    });
    if result.is_err() {
        unload_fexits(ebpf, FAULT_FEXITS.iter().map(|(program, _)| program.to_string()));
    }
    result
}

/// What `attach` did.
#[derive(Debug, Default, Clone)]
pub struct Attached {
    /// Kernel functions with an attached program.
    pub functions: Vec<&'static str>,
    /// Syscall functions this kernel's BTF lacks (so the kernel lacks the syscall).
    pub absent: Vec<&'static str>,
}

/// Loads and attaches `<prefix>_fx_*` ("llmwatch" or "floor") on every syscall function this
/// kernel has, or none of them (everything loaded is unloaded again) with why.
pub fn attach(ebpf: &mut Ebpf, btf: &Btf, prefix: &str) -> Result<Attached, String> {
    if !cfg!(target_arch = "x86_64") {
        return Err("the per-syscall programs hook x86_64 syscall functions only".into());
    }
    let mut done = Attached::default();
    for &(suffix, function) in SYSCALL_FEXITS {
        match attach_one(ebpf, btf, &format!("{prefix}_fx_{suffix}"), function) {
            Ok(true) => done.functions.push(function),
            Ok(false) => done.absent.push(function),
            Err(e) => {
                unload(ebpf, prefix);
                return Err(e);
            }
        }
    }
    if let Some(missing) = ESSENTIAL.iter().find(|f| done.absent.contains(f)) {
        unload(ebpf, prefix);
        return Err(format!("{missing} not in this kernel's BTF"));
    }
    Ok(done)
}

/// Ok(false) when `function` is not in BTF.
fn attach_one(ebpf: &mut Ebpf, btf: &Btf, program: &str, function: &str) -> Result<bool, String> {
    let prog: &mut FExit = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("program {program} missing from the object"))?
        .try_into()
        .map_err(|e| format!("{program}: {e}"))?;
    match prog.load(function, btf) {
        Err(ProgramError::Btf(BtfError::UnknownBtfTypeName { .. })) => return Ok(false),
        Err(e) => return Err(format!("load {program} on {function}: {}", super::describe(&e))),
        Ok(()) => {}
    }
    prog.attach()
        .map_err(|e| format!("attach {program} to {function}: {}", super::describe(&e)))?;
    Ok(true)
}

/// Detaches and unloads every `<prefix>_fx_*` program (those never loaded are left alone).
fn unload(ebpf: &mut Ebpf, prefix: &str) {
    unload_fexits(
        ebpf,
        SYSCALL_FEXITS
            .iter()
            .map(|(suffix, _)| format!("{prefix}_fx_{suffix}")),
    );
}

/// Detaches and unloads the named fexit programs (those never loaded are left alone).
fn unload_fexits(ebpf: &mut Ebpf, programs: impl Iterator<Item = String>) {
    for program in programs {
        let prog: Option<&mut FExit> = ebpf.program_mut(&program).and_then(|p| p.try_into().ok());
        if let Some(p) = prog {
            let _ = p.unload();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every syscall the kernel programs dispatch on has its program here, once.
    #[test]
    fn one_program_per_dispatched_syscall() {
        let src = include_str!("../../../llmwatch-ebpf/src/fast.rs");
        let mut seen = std::collections::HashSet::new();
        for &(suffix, function) in SYSCALL_FEXITS {
            assert!(seen.insert(suffix), "{suffix} twice");
            let line = format!("llmwatch_fx_{suffix}, floor_fx_{suffix}, \"{function}\",");
            assert!(src.contains(&line), "llmwatch-ebpf/src/fast.rs lacks `{line}`");
        }
        let defined = src.matches(", floor_fx_").count();
        assert_eq!(
            defined,
            SYSCALL_FEXITS.len(),
            "programs in fast.rs not listed here"
        );
    }
}
