//! Empty programs on exactly the hooks the agent uses: `cargo xtask bench` attaches these as
//! "the floor", the cost of the hook itself, so llmwatch's own cost can be read off as a ratio.
use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn floor_sys_exit(_ctx: RawTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "sys_exit")]
pub fn floor_sys_exit_btf(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn floor_exec(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn floor_fork(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn floor_exit(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn floor_sock_send(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "io_uring_complete")]
pub fn floor_io_uring_complete(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "mm_filemap_map_pages")]
pub fn floor_filemap_map_pages(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "mm_filemap_fault")]
pub fn floor_filemap_fault(_ctx: RawTracePointContext) -> i32 {
    0
}
