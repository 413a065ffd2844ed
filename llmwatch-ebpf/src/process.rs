//! Process lifecycle from the sched tracepoints. Parent and arguments are captured here, at
//! event time, so short-lived processes are attributed even after they are gone.
use aya_ebpf::helpers::generated::{bpf_probe_read_kernel_str, bpf_probe_read_user};
use llmwatch_common::{
    event::{
        ARGS_LEN, BpfAccessEvent, BpfLoadEvent, PATH_LEN, ProcAccessEvent, ProcExecEvent, ProcExitEvent,
        ProcForkEvent, access_op, bpf_cmd, kind,
    },
    syscalls as nr,
};

use crate::{
    emit,
    kernel::{self, off, read},
};

#[inline(always)]
pub fn on_exec(task: u64, bprm: u64) {
    crate::holders::on_exec(kernel::current_pid_tgid().0);
    let Some(mut rec) = emit::reserve::<ProcExecEvent>(kind::PROC_EXEC) else {
        return;
    };
    let ev = rec.as_mut_ptr();
    let parent: u64 = read(task, off!(task_real_parent)).unwrap_or(0);
    let ppid: u32 = read(parent, off!(task_tgid)).unwrap_or(0);
    let filename: u64 = read(bprm, off!(bprm_filename)).unwrap_or(0);
    let mm: u64 = read(task, off!(task_mm)).unwrap_or(0);
    let start: u64 = read(mm, off!(mm_arg_start)).unwrap_or(0);
    let end: u64 = read(mm, off!(mm_arg_end)).unwrap_or(0);
    // Read exactly argv: the environment follows it in memory and may hold secrets.
    let mut len = end.wrapping_sub(start);
    if start == 0 || len > (1 << 20) {
        len = 0;
    }
    if len > ARGS_LEN as u64 {
        len = ARGS_LEN as u64;
    }
    // SAFETY: `ev` points into our own ring-buffer reservation of this event type, live until
    // it is submitted or discarded below; the helpers write at most the lengths of the fields
    // they are given.
    unsafe {
        (*ev).ppid = ppid;
        (*ev).filename[0] = 0;
        if filename != 0 {
            bpf_probe_read_kernel_str(
                (*ev).filename.as_mut_ptr() as *mut _,
                PATH_LEN as u32,
                filename as *const _,
            );
        }
        let n = len as u32;
        if n > 0
            && n <= ARGS_LEN as u32
            && bpf_probe_read_user((*ev).args.as_mut_ptr() as *mut _, n, start as *const _) < 0
        {
            len = 0;
        }
        (*ev).args_len = len as u32;
    }
    emit::submit(rec, kind::PROC_EXEC);
}

/// sched_process_fork runs in the parent.
#[inline(always)]
pub fn on_fork(child: u64) {
    let Some(child_pid) = read::<u32>(child, off!(task_pid)) else {
        return;
    };
    let Some(child_tgid) = read::<u32>(child, off!(task_tgid)) else {
        return;
    };
    if child_pid != child_tgid {
        return; // a new thread, not a new process
    }
    crate::holders::on_fork(kernel::current_pid_tgid().0, child_tgid);
    crate::guard::on_fork(kernel::current_pid_tgid().0, child_tgid);
    let Some(mut rec) = emit::reserve::<ProcForkEvent>(kind::PROC_FORK) else {
        return;
    };
    let ev = rec.as_mut_ptr();
    // SAFETY: `ev` points into our own ring-buffer reservation of this event type, live until
    // it is submitted or discarded below; the helpers write at most the lengths of the fields
    // they are given.
    unsafe {
        (*ev).child_pid = child_pid;
        (*ev)._pad = 0;
    }
    emit::submit(rec, kind::PROC_FORK);
}

#[inline(always)]
pub fn on_exit(task: u64) {
    let (pid, tid) = kernel::current_pid_tgid();
    if pid != tid {
        return; // a thread other than the leader
    }
    // Before the record, so a full ring buffer never leaves a stale holder behind.
    crate::holders::on_exit(pid);
    crate::guard::on_exit(pid);
    let exit_code: u32 = read(task, off!(task_exit_code)).unwrap_or(0);
    let Some(mut rec) = emit::reserve::<ProcExitEvent>(kind::PROC_EXIT) else {
        return;
    };
    let ev = rec.as_mut_ptr();
    // SAFETY: `ev` points into our own ring-buffer reservation of this event type, live until
    // it is submitted or discarded below; the helpers write at most the lengths of the fields
    // they are given.
    unsafe {
        (*ev).exit_code = exit_code;
        (*ev)._pad = 0;
    }
    emit::submit(rec, kind::PROC_EXIT);
}

/// ptrace attach/seize and process_vm_readv/writev that succeeded: one process reaching into
/// another's memory (where an inference server keeps its weights).
#[inline(always)]
pub fn on_access(regs: u64, sysno: u64, ret: i64) {
    let (op, target, bytes) = match sysno {
        nr::PTRACE => {
            const PTRACE_ATTACH: u64 = 16;
            const PTRACE_SEIZE: u64 = 0x4206;
            let req = kernel::regs_arg(regs, 0);
            if ret != 0 || !(req == PTRACE_ATTACH || req == PTRACE_SEIZE) {
                return;
            }
            let op = if req == PTRACE_ATTACH {
                access_op::PTRACE_ATTACH
            } else {
                access_op::PTRACE_SEIZE
            };
            (op, kernel::regs_arg(regs, 1), 0)
        }
        _ => {
            if ret <= 0 {
                return;
            }
            let op = if sysno == nr::PROCESS_VM_READV {
                access_op::PROCESS_VM_READV
            } else {
                access_op::PROCESS_VM_WRITEV
            };
            (op, kernel::regs_arg(regs, 0), ret as u64)
        }
    };
    emit_access(op, target as u32, bytes);
}

#[inline(always)]
pub fn emit_access(op: u32, target_pid: u32, bytes: u64) {
    let Some(mut rec) = emit::reserve::<ProcAccessEvent>(kind::PROC_ACCESS) else {
        return;
    };
    let ev = rec.as_mut_ptr();
    // SAFETY: `ev` points into our own ring-buffer reservation of this event type, live until
    // it is submitted or discarded below; the helpers write at most the lengths of the fields
    // they are given.
    unsafe {
        (*ev).bytes = bytes;
        (*ev).target_pid = target_pid;
        (*ev).op = op;
    }
    emit::submit(rec, kind::PROC_ACCESS);
}

/// bpf(BPF_PROG_LOAD, attr) succeeded in a process other than the agent.
#[inline(always)]
pub fn on_bpf(regs: u64, ret: i64) {
    const BPF_PROG_LOAD: u64 = 5;
    if ret < 0 {
        return;
    }
    let cmd = kernel::regs_arg(regs, 0);
    let by_id = cmd == bpf_cmd::PROG_GET_FD_BY_ID as u64
        || cmd == bpf_cmd::MAP_GET_FD_BY_ID as u64
        || cmd == bpf_cmd::LINK_GET_FD_BY_ID as u64;
    if cmd != BPF_PROG_LOAD && !by_id {
        return;
    }
    let (pid, _) = kernel::current_pid_tgid();
    if pid == crate::maps::agent_pid() {
        return;
    }
    if by_id {
        on_bpf_get_fd_by_id(regs, cmd as u32, ret);
        return;
    }
    // union bpf_attr (UAPI): prog_type at 0, prog_name[16] at 48.
    let attr = kernel::regs_arg(regs, 1);
    let Some(mut rec) = emit::reserve::<BpfLoadEvent>(kind::BPF_LOAD) else {
        return;
    };
    let ev = rec.as_mut_ptr();
    // SAFETY: `ev` points into our own ring-buffer reservation of this event type, live until
    // it is submitted or discarded below; the helpers write at most the lengths of the fields
    // they are given.
    unsafe {
        (*ev).prog_type = kernel::read_user::<u32>(attr).unwrap_or(u32::MAX);
        (*ev).fd = ret as i32;
        (*ev).name = kernel::read_user::<[u8; 16]>(attr + 48).unwrap_or([0; 16]);
    }
    emit::submit(rec, kind::BPF_LOAD);
}

/// A handle taken to a BPF object by id; the agent tells whether the object is one of its own
/// (a map it reads from, a program that watches). bpf() is rare: no filtering here.
#[inline(always)]
fn on_bpf_get_fd_by_id(regs: u64, cmd: u32, ret: i64) {
    // union bpf_attr (UAPI): prog_id / map_id / link_id all at offset 0.
    let attr = kernel::regs_arg(regs, 1);
    let Some(mut rec) = emit::reserve::<BpfAccessEvent>(kind::BPF_ACCESS) else {
        return;
    };
    let ev = rec.as_mut_ptr();
    // SAFETY: `ev` points into our own ring-buffer reservation of this event type, live until
    // it is submitted or discarded below; the helpers write at most the lengths of the fields
    // they are given.
    unsafe {
        (*ev).cmd = cmd;
        (*ev).id = kernel::read_user::<u32>(attr).unwrap_or(0);
        (*ev).fd = ret as i32;
        (*ev)._pad = 0;
    }
    emit::submit(rec, kind::BPF_ACCESS);
}
