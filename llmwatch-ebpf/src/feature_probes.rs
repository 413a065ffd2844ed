//! Empty programs of each program type the agent could use. `llmwatch check` loads and attaches
//! each to learn what this kernel (and its security policy) allows, instead of guessing from the
//! version number. None of them is attached by `llmwatch run`.
use aya_ebpf::{
    macros::{btf_tracepoint, cgroup_sock_addr, fentry, kprobe, lsm, tracepoint},
    programs::{
        BtfTracePointContext, FEntryContext, LsmContext, ProbeContext, SockAddrContext, TracePointContext,
    },
};

#[tracepoint(category = "syscalls", name = "sys_enter_getppid")]
pub fn probe_tracepoint(_ctx: TracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "sched_process_fork")]
pub fn probe_tp_btf(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[fentry(function = "vfs_read")]
pub fn probe_fentry(_ctx: FEntryContext) -> u32 {
    0
}

#[kprobe]
pub fn probe_kprobe(_ctx: ProbeContext) -> u32 {
    0
}

#[lsm(hook = "file_open")]
pub fn probe_lsm(_ctx: LsmContext) -> i32 {
    0
}

#[cgroup_sock_addr(connect4)]
pub fn probe_sock_addr(_ctx: SockAddrContext) -> i32 {
    1
}
