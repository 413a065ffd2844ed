//! Weight-file access: classify at open, count bytes actually returned, report mmaps and changes.
use aya_ebpf::helpers::generated::bpf_probe_read_user_str;
use llmwatch_common::{
    event::{
        FileId, FileMmapEvent, FileOpenDeniedEvent, FileOpenEvent, FileReadEvent, FileTamperEvent,
        GpuOpenEvent, PATH_LEN, kind, open_origin, read_reason, tamper_op,
    },
    maps::{FdKey, ProcFileKey, TrackedFd, name_hash, stat},
    syscalls as nr,
};

use crate::{
    emit, holders,
    kernel::{self, S_IFCHR, S_IFMT, S_IFREG, off, read},
    maps::{
        GPU_MAJORS, NOT_WATCHED, OPENS_SEEN, RIGHTS_IN_FLIGHT, TRACKED_FDS, WATCHED_FILES, WATCHED_NAMES,
        agent_pid, settings_read_report, stat_inc,
    },
};

const EACCES: i64 = 13;
const EPERM: i64 = 1;
/// A device node whose driver is not loaded (or not present): how an attempt to use a GPU looks
/// on a host without the driver, and how a fake node made with mknod behaves.
const ENXIO: i64 = 6;
const ENODEV: i64 = 19;
const AT_FDCWD: i32 = -100;

#[inline(always)]
fn tracked_insert(key: &FdKey, value: &TrackedFd) -> bool {
    if TRACKED_FDS.insert(key, value, 0).is_err() {
        stat_inc(stat::TRACKED_FDS_FULL);
        return false;
    }
    true
}

/// The tracked descriptor `fd` of the current process, if it is one.
#[inline(always)]
fn tracked(fd: u64) -> Option<(FdKey, *mut TrackedFd)> {
    let (pid, _) = kernel::current_pid_tgid();
    let key = FdKey { pid, fd: fd as u32 };
    TRACKED_FDS.get_ptr_mut(&key).map(|p| (key, p))
}

/// Like `tracked`, and for a holder, a descriptor it did not open in front of us (inherited
/// across fork/exec, duplicated before we saw it, opened before the agent started) is
/// recognised by the file it refers to and tracked from this use on.
#[inline(always)]
fn tracked_or_adopt(fd: u64, sysno: u64) -> Option<(FdKey, *mut TrackedFd)> {
    if let Some(hit) = tracked(fd) {
        return Some(hit);
    }
    let (pid, _) = kernel::current_pid_tgid();
    let generation = holders::generation(pid)?;
    let key = FdKey { pid, fd: fd as u32 };
    // SAFETY: a 4-byte copy out of a live map value.
    if unsafe { NOT_WATCHED.get(&key) }.copied() == Some(generation) {
        return None;
    }
    if !adopt(fd, sysno, open_origin::INHERITED) {
        let _ = NOT_WATCHED.insert(&key, &generation, 0);
        return None;
    }
    tracked(fd)
}

/// Tracks `fd` of the current process if it refers to a watched file; reports how the process
/// got it. True when it is tracked now.
#[inline(always)]
pub fn adopt(fd: u64, sysno: u64, origin: u32) -> bool {
    let Some(file) = kernel::fd_file(fd) else {
        return false;
    };
    let Some((inode, id)) = watched_regular(file) else {
        return false;
    };
    track(fd as i64, file, &inode, id, sysno, origin)
}

/// `file`'s inode and id when it is a watched regular file.
#[inline(always)]
pub fn watched_regular(file: u64) -> Option<(kernel::InodeInfo, FileId)> {
    let inode = kernel::file_inode(file)?;
    if inode.mode & S_IFMT != S_IFREG {
        return None;
    }
    let id = FileId {
        dev: inode.dev,
        _pad: 0,
        ino: inode.ino,
    };
    // SAFETY: a lookup whose value is only tested for presence.
    unsafe { WATCHED_FILES.get(&id) }?;
    Some((inode, id))
}

/// A descriptor of watched file `id` in the current process: track it, make the process a
/// holder, and report it (read-only ones once per process and file).
#[inline(always)]
fn track(fd: i64, file: u64, inode: &kernel::InodeInfo, id: FileId, sysno: u64, origin: u32) -> bool {
    let (pid, _) = kernel::current_pid_tgid();
    if pid == agent_pid() {
        return false;
    }
    let key = FdKey { pid, fd: fd as u32 };
    // Seen already for this struct file: where `fd_install` is hooked it sees the descriptor
    // first, and the syscall's own exit (open, recvmsg, pidfd_getfd, io_uring) is the second
    // sight of the same descriptor, not a second open.
    // SAFETY: a copy of two fields out of a live map value.
    if let Some(t) = unsafe { TRACKED_FDS.get(&key) }
        && t.file_ptr == file
        && t.file == id
    {
        return true;
    }
    let value = TrackedFd {
        file: id,
        file_ptr: file,
        bytes: 0,
        reported: 0,
        size: inode.size,
        written: 0,
    };
    let tracked = tracked_insert(&key, &value);
    let _ = NOT_WATCHED.remove(&key);
    holders::become_holder();
    crate::guard::on_track(&id);
    let flags: u32 = read(file, off!(file_flags)).unwrap_or(0);
    // O_WRONLY | O_RDWR | O_TRUNC: a possible change, always reported. Read-only opens are
    // reported once per process and file.
    if flags & 0o1003 == 0 {
        let seen = ProcFileKey {
            file: id,
            pid,
            _pad: 0,
        };
        // SAFETY: a lookup whose value is only tested for presence.
        if unsafe { OPENS_SEEN.get(&seen) }.is_some() {
            return tracked;
        }
        let _ = OPENS_SEEN.insert(&seen, &1, 0);
    }
    let Some(mut entry) = emit::reserve::<FileOpenEvent>(kind::FILE_OPEN) else {
        return tracked;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points into our own ring-buffer reservation of a FileOpenEvent.
    unsafe {
        (*ev).file = id;
        (*ev).size = inode.size;
        (*ev).fd = fd as i32;
        (*ev).flags = flags;
        (*ev).syscall = sysno as u32;
        (*ev).origin = origin;
    }
    emit::submit(entry, kind::FILE_OPEN);
    tracked
}

/// fentry on `fd_install(fd, file)` (the fast path): every descriptor the kernel puts into the
/// current process's table, however it came (an open, SCM_RIGHTS in any control message or
/// position, pidfd_getfd, io_uring, seccomp's addfd, binder), with its `struct file`, so no
/// syscall's arguments have to be parsed to find it. A watched file's descriptor is tracked and
/// the process becomes a holder; the syscall exits that also track descriptors see it tracked.
/// `dup`/`fcntl(F_DUPFD)` copies are left to `on_dup`, which carries the count over.
#[inline(always)]
pub fn on_fd_install(fd: u64, file: u64) {
    let Some((inode, id)) = watched_regular(file) else {
        return;
    };
    let sysno = kernel::current_syscall().unwrap_or(u64::MAX);
    let origin = match sysno {
        nr::DUP | nr::DUP2 | nr::DUP3 | nr::FCNTL => return,
        nr::OPEN | nr::OPENAT | nr::OPENAT2 | nr::CREAT | nr::OPEN_BY_HANDLE_AT => open_origin::OPENED,
        nr::RECVMSG | nr::RECVMMSG => open_origin::RECEIVED,
        nr::PIDFD_GETFD => open_origin::PIDFD_GETFD,
        nr::IO_URING_SETUP | nr::IO_URING_ENTER | nr::IO_URING_REGISTER => open_origin::IO_URING,
        _ => open_origin::INSTALLED,
    };
    track(fd as i64, file, &inode, id, sysno, origin);
}

/// open/openat/openat2/creat/open_by_handle_at returned: classify the new descriptor once.
#[inline(always)]
pub fn on_open(regs: u64, sysno: u64, ret: i64) {
    if ret == -EACCES || ret == -EPERM || ret == -ENXIO || ret == -ENODEV {
        if sysno != nr::OPEN_BY_HANDLE_AT {
            on_open_denied(regs, sysno, ret);
        }
        return;
    }
    if ret < 0 {
        return;
    }
    let Some(file) = kernel::fd_file(ret as u64) else {
        return;
    };
    let Some(inode) = kernel::file_inode(file) else {
        return;
    };
    let fmt = inode.mode & S_IFMT;
    if fmt == S_IFCHR {
        on_char_open(file, &inode, ret);
        return;
    }
    if fmt != S_IFREG {
        return;
    }
    let id = FileId {
        dev: inode.dev,
        _pad: 0,
        ino: inode.ino,
    };
    // SAFETY: a lookup whose value is only tested for presence.
    if unsafe { WATCHED_FILES.get(&id) }.is_none() {
        proc_mem_open(file, inode.sb);
        return;
    }
    track(ret, file, &inode, id, sysno, open_origin::OPENED);
}

#[inline(always)]
fn on_char_open(file: u64, inode: &kernel::InodeInfo, fd: i64) {
    let major = inode.rdev >> 20;
    // SAFETY: a lookup whose value is only tested for presence.
    if unsafe { GPU_MAJORS.get(&major) }.is_none() {
        return;
    }
    let flags: u32 = read(file, off!(file_flags)).unwrap_or(0);
    let Some(mut entry) = emit::reserve::<GpuOpenEvent>(kind::GPU_OPEN) else {
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points into our own ring-buffer reservation of this event type, live until
    // it is submitted or discarded below; the helpers write at most the lengths of the fields
    // they are given.
    unsafe {
        (*ev).major = major;
        (*ev).minor = inode.rdev & ((1 << 20) - 1);
        (*ev).fd = fd as i32;
        (*ev).flags = flags;
    }
    emit::submit(entry, kind::GPU_OPEN);
}

/// A refused open (or a device node without a driver): the kernel never gave us a file, so
/// report the path as passed and let the agent match it against the watched set and GPU nodes.
#[inline(always)]
fn on_open_denied(regs: u64, sysno: u64, ret: i64) {
    // The agent's own refusals (a scan as a non-owner falling back from O_NOATIME) are not news.
    if kernel::current_pid_tgid().0 == agent_pid() {
        return;
    }
    let (path, dirfd, flags) = match sysno {
        nr::OPEN => (
            kernel::regs_arg(regs, 0),
            AT_FDCWD,
            kernel::regs_arg(regs, 1) as u32,
        ),
        nr::CREAT => (kernel::regs_arg(regs, 0), AT_FDCWD, 0o1101),
        nr::OPENAT2 => {
            let how: u64 = kernel::regs_arg(regs, 2);
            let flags = kernel::read_user::<u64>(how).unwrap_or(0) as u32;
            (kernel::regs_arg(regs, 1), kernel::regs_arg(regs, 0) as i32, flags)
        }
        _ => (
            kernel::regs_arg(regs, 1),
            kernel::regs_arg(regs, 0) as i32,
            kernel::regs_arg(regs, 2) as u32,
        ),
    };
    let Some(mut entry) = emit::reserve::<FileOpenDeniedEvent>(kind::FILE_OPEN_DENIED) else {
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points into our own ring-buffer reservation of this event type, live until
    // it is submitted or discarded below; the helpers write at most the lengths of the fields
    // they are given.
    unsafe {
        (*ev).ret = ret as i32;
        (*ev).flags = flags;
        (*ev).dirfd = dirfd;
        (*ev).syscall = sysno as u32;
        read_path((*ev).path.as_mut_ptr(), path);
    }
    emit::submit(entry, kind::FILE_OPEN_DENIED);
}

/// Copies the NUL-terminated user string at `src` into `dst` (empty when it cannot be read).
///
/// # Safety
/// `dst` must point at `PATH_LEN` writable bytes.
#[inline(always)]
unsafe fn read_path(dst: *mut u8, src: u64) -> i64 {
    // SAFETY: `dst` is PATH_LEN writable bytes (the caller's contract), and the helper writes
    // at most that many.
    let n = unsafe { bpf_probe_read_user_str(dst as *mut _, PATH_LEN as u32, src as *const _) };
    if n < 0 {
        // SAFETY: the read failed, so `dst` (at least one writable byte) is made an empty
        // string.
        unsafe { *dst = 0 };
    }
    n
}

/// Bytes came out of `fd` (read family, sendfile/splice/copy_file_range source).
#[inline(always)]
pub fn on_read(sysno: u64, fd: u64, ret: i64) {
    if ret <= 0 {
        return;
    }
    let Some((key, entry)) = tracked_or_adopt(fd, sysno) else {
        return;
    };
    let bytes = ret as u64;
    // SAFETY: `entry` points at a TRACKED_FDS value, valid for the rest of this program run.
    crate::kernel::atomic_add(unsafe { &raw mut (*entry).bytes }, bytes);
    crate::guard::on_read(bytes);
    // SAFETY: as above.
    let (total, reported, file_ptr) = unsafe { ((*entry).bytes, (*entry).reported, (*entry).file_ptr) };
    // Aggregate in the kernel: userspace hears every `read_report_bytes` and on close (and
    // sweeps the counter of a live descriptor itself), not per syscall.
    if total.wrapping_sub(reported) < settings_read_report() {
        return;
    }
    // Only when reporting, check the slot still holds the file we classified: close_range or
    // exec may have closed it without a close() we saw, and the number been reused. Then the
    // old file's report ends before this read, and this read starts the new one's.
    if kernel::fd_file(fd) != Some(file_ptr) {
        let before = total - bytes;
        report_read(
            entry,
            fd as i32,
            nr::CLOSE as u32,
            before.saturating_sub(reported),
            before,
            read_reason::CLOSE,
        );
        let _ = TRACKED_FDS.remove(&key);
        if let Some((_, fresh)) = tracked_or_adopt(fd, sysno) {
            // SAFETY: as above, for the new entry.
            crate::kernel::atomic_add(unsafe { &raw mut (*fresh).bytes }, bytes);
        }
        return;
    }
    // SAFETY: as above.
    unsafe { (*entry).reported = total };
    report_read(
        entry,
        fd as i32,
        sysno as u32,
        total - reported,
        total,
        read_reason::PROGRESS,
    );
}

#[inline(always)]
fn report_read(entry: *const TrackedFd, fd: i32, syscall: u32, bytes: u64, total: u64, reason: u32) {
    let Some(mut rec) = emit::reserve::<FileReadEvent>(kind::FILE_READ) else {
        return;
    };
    let ev = rec.as_mut_ptr();
    // SAFETY: `ev` is our own reservation; `entry` a live map value (see `on_read`).
    unsafe {
        (*ev).file = (*entry).file;
        (*ev).bytes = bytes;
        (*ev).total = total;
        (*ev).fd = fd;
        (*ev).syscall = syscall;
        (*ev).reason = reason;
        (*ev)._pad = 0;
        (*ev).instance = (*entry).file_ptr;
    }
    emit::submit(rec, kind::FILE_READ);
}

/// `fd` of the current process is closed (close, close_range, or replaced by dup2): report
/// its final count and stop tracking it.
#[inline(always)]
fn closed(fd: u64, sysno: u64) {
    let Some((key, entry)) = tracked(fd) else {
        let key = FdKey {
            pid: kernel::current_pid_tgid().0,
            fd: fd as u32,
        };
        let _ = NOT_WATCHED.remove(&key);
        return;
    };
    // Always reported, even with nothing new: "this descriptor is done, total N" is what
    // per-read rules key on, and it costs one record per open of a watched file.
    // SAFETY: `entry` points at a live TRACKED_FDS value.
    let (total, reported) = unsafe { ((*entry).bytes, (*entry).reported) };
    report_read(
        entry,
        fd as i32,
        sysno as u32,
        total - reported,
        total,
        read_reason::CLOSE,
    );
    let _ = TRACKED_FDS.remove(&key);
}

#[inline(always)]
pub fn on_close(fd: u64, ret: i64) {
    if ret == 0 {
        closed(fd, nr::CLOSE);
    }
}

/// Descriptors close_range looks at: enough for `closefrom(3)` before an exec in the usual
/// process; a tracked descriptor beyond is still caught when its number is reused (`on_read`).
const CLOSE_RANGE_SPAN: u64 = 64;

/// close_range(first, last, flags): every tracked descriptor in the range is closed (unless
/// only marked close-on-exec).
#[inline(always)]
pub fn on_close_range(first: u64, last: u64, flags: u64, ret: i64) {
    const CLOSE_RANGE_CLOEXEC: u64 = 1 << 2;
    if ret != 0 || flags & CLOSE_RANGE_CLOEXEC != 0 {
        return;
    }
    let mut i = 0;
    while i < CLOSE_RANGE_SPAN {
        let fd = first + i;
        if fd > last {
            break;
        }
        closed(fd, nr::CLOSE_RANGE);
        i += 1;
    }
}

/// dup/dup2/dup3/fcntl(F_DUPFD): the new descriptor refers to the old one's file (a tracked
/// descriptor it replaced is closed).
#[inline(always)]
pub fn on_dup(sysno: u64, old_fd: u64, ret: i64) {
    if ret < 0 || ret as u64 == old_fd {
        return;
    }
    closed(ret as u64, sysno);
    let Some((key, entry)) = tracked(old_fd) else {
        return;
    };
    // SAFETY: `entry` points at a live TRACKED_FDS value.
    let mut copy = unsafe { *entry };
    copy.bytes = 0;
    copy.reported = 0;
    copy.written = 0;
    let new_key = FdKey {
        pid: key.pid,
        fd: ret as u32,
    };
    tracked_insert(&new_key, &copy);
}

#[inline(always)]
pub fn on_mmap(regs: u64, ret: i64) {
    // Errors come back as -4095..-1.
    if (ret as u64) >= (-4095i64) as u64 {
        return;
    }
    let fd = kernel::regs_arg(regs, 4) as i64;
    if fd < 0 {
        return;
    }
    let Some((_, entry)) = tracked_or_adopt(fd as u64, nr::MMAP) else {
        return;
    };
    let Some(mut rec) = emit::reserve::<FileMmapEvent>(kind::FILE_MMAP) else {
        return;
    };
    let ev = rec.as_mut_ptr();
    // SAFETY: `ev` is our own reservation; `entry` a live map value.
    unsafe {
        (*ev).file = (*entry).file;
        (*ev).addr = ret as u64;
        (*ev).len = kernel::regs_arg(regs, 1);
        (*ev).prot = kernel::regs_arg(regs, 2) as u32;
        (*ev).flags = kernel::regs_arg(regs, 3) as u32;
        (*ev).offset = kernel::regs_arg(regs, 5);
        (*ev).size = (*entry).size;
        (*ev).fd = fd as i32;
        (*ev)._pad = 0;
    }
    emit::submit(rec, kind::FILE_MMAP);
}

/// Bytes written into a watched file: reported on the first write through each descriptor.
#[inline(always)]
pub fn on_write(sysno: u64, fd: u64, ret: i64) {
    if ret <= 0 {
        return;
    }
    let Some((_, entry)) = tracked_or_adopt(fd, sysno) else {
        return;
    };
    // SAFETY: `entry` points at a live TRACKED_FDS value.
    let before = unsafe { (*entry).written };
    // SAFETY: as above.
    unsafe { (*entry).written = before + ret as u64 };
    if before == 0 {
        tamper_fd(entry, tamper_op::WRITE, fd as i32, sysno, ret as u64);
    }
}

#[inline(always)]
pub fn on_ftruncate(fd: u64, ret: i64) {
    if ret != 0 {
        return;
    }
    let Some((_, entry)) = tracked_or_adopt(fd, nr::FTRUNCATE) else {
        return;
    };
    tamper_fd(entry, tamper_op::TRUNCATE, fd as i32, nr::FTRUNCATE, 0);
}

/// sendmsg/sendmmsg by a holder returned: if the (first) message carried control data, a
/// descriptor of a watched file may be on its way to another process (`on_recvmsg` looks).
#[inline(always)]
pub fn on_holder_sendmsg(regs: u64, ret: i64) {
    if ret <= 0 {
        return;
    }
    // struct msghdr (UAPI): msg_controllen at 40; a struct mmsghdr starts with one.
    let controllen = kernel::read_user::<u64>(kernel::regs_arg(regs, 1) + 40).unwrap_or(0);
    if controllen == 0 {
        return;
    }
    if let Some(p) = RIGHTS_IN_FLIGHT.get_ptr_mut(0) {
        // SAFETY: a 4-byte store into the map's only element; racing stores all write 1.
        unsafe { core::ptr::write_volatile(p, 1) };
    }
}

#[inline(always)]
fn rights_may_be_in_flight() -> bool {
    match RIGHTS_IN_FLIGHT.get_ptr(0) {
        // SAFETY: a 4-byte load from the map's only element.
        Some(p) => (unsafe { core::ptr::read_volatile(p) }) != 0,
        None => true,
    }
}

/// recvmsg/recvmmsg returned: descriptors of watched files that came in as SCM_RIGHTS are
/// tracked in the receiver (which usually holds nothing yet, so this is not holder-gated:
/// once a holder has sent control data, a message costs one user read).
#[inline(always)]
pub fn on_recvmsg(regs: u64, sysno: u64, ret: i64) {
    if ret < 0 || !rights_may_be_in_flight() {
        return;
    }
    // struct msghdr (UAPI): msg_control at 32, msg_controllen at 40; for recvmmsg the first
    // struct mmsghdr starts with one. Only the first message of a recvmmsg batch is looked at.
    let msg = kernel::regs_arg(regs, 1);
    if sysno == nr::RECVMMSG && ret == 0 {
        return;
    }
    let Some(controllen) = kernel::read_user::<u64>(msg + 40) else {
        return;
    };
    // One cmsghdr (16 bytes) and one descriptor at least.
    if controllen < 20 {
        return;
    }
    let Some(control) = kernel::read_user::<u64>(msg + 32) else {
        return;
    };
    received_rights(control, controllen);
}

/// struct cmsghdr (UAPI).
#[repr(C)]
#[derive(Clone, Copy)]
struct CmsgHdr {
    len: u64,
    level: i32,
    ty: i32,
}

/// Control messages looked at per recvmsg, and descriptors per message.
const MAX_CMSGS: u32 = 2;
const MAX_RIGHTS: u64 = 8;

/// Descriptors that arrived as SCM_RIGHTS: if one refers to a watched file, the receiver
/// becomes a holder (each such descriptor is then tracked from its first use, see
/// `tracked_or_adopt`) and the first one is reported as received.
#[inline(always)]
fn received_rights(control: u64, controllen: u64) {
    const SOL_SOCKET: i32 = 1;
    const SCM_RIGHTS: i32 = 1;
    let mut off: u64 = 0;
    let mut n = 0;
    let mut found: i64 = -1;
    while n < MAX_CMSGS && off + 20 <= controllen && found < 0 {
        let cmsg = control + off;
        let Some(hdr) = kernel::read_user::<CmsgHdr>(cmsg) else {
            return;
        };
        let len = hdr.len;
        if len < 16 {
            return;
        }
        if hdr.level == SOL_SOCKET && hdr.ty == SCM_RIGHTS {
            let fds = (len - 16) / 4;
            let mut i = 0;
            while i < MAX_RIGHTS && i < fds {
                if let Some(fd) = kernel::read_user::<i32>(cmsg + 16 + i * 4)
                    && fd >= 0
                    && refers_to_watched(fd as u64)
                {
                    found = fd as i64;
                    break;
                }
                i += 1;
            }
        }
        // CMSG_NXTHDR: the next header starts at the 8-byte-aligned end of this one.
        off += (len + 7) & !7;
        n += 1;
    }
    if found >= 0 {
        adopt(found as u64, nr::RECVMSG, open_origin::RECEIVED);
    }
}

/// Whether descriptor `fd` of the current process is a watched file.
#[inline(always)]
fn refers_to_watched(fd: u64) -> bool {
    kernel::fd_file(fd).and_then(watched_regular).is_some()
}

#[inline(always)]
fn tamper_fd(entry: *const TrackedFd, op: u32, fd: i32, sysno: u64, bytes: u64) {
    let Some(mut rec) = emit::reserve::<FileTamperEvent>(kind::FILE_TAMPER) else {
        return;
    };
    let ev = rec.as_mut_ptr();
    // SAFETY: `ev` is our own reservation; `entry` a live map value.
    unsafe {
        (*ev).file = (*entry).file;
        (*ev).bytes = bytes;
        (*ev).op = op;
        (*ev).fd = fd;
        (*ev).dirfd = AT_FDCWD;
        (*ev).syscall = sysno as u32;
        (*ev).path[0] = 0;
    }
    emit::submit(rec, kind::FILE_TAMPER);
}

/// truncate/unlink/rename succeeded on some path. Only names whose basename hash is in
/// `WATCHED_NAMES` are reported; the agent resolves the path.
#[inline(always)]
pub fn on_path_change(regs: u64, sysno: u64, ret: i64) {
    if ret != 0 {
        return;
    }
    let a0 = kernel::regs_arg(regs, 0);
    let a1 = kernel::regs_arg(regs, 1);
    match sysno {
        nr::TRUNCATE => tamper_path(a0, AT_FDCWD, tamper_op::TRUNCATE, sysno),
        nr::UNLINK => tamper_path(a0, AT_FDCWD, tamper_op::UNLINK, sysno),
        nr::UNLINKAT => tamper_path(a1, a0 as i32, tamper_op::UNLINK, sysno),
        nr::RENAME => {
            tamper_path(a0, AT_FDCWD, tamper_op::RENAME_FROM, sysno);
            tamper_path(a1, AT_FDCWD, tamper_op::RENAME_TO, sysno);
        }
        _ => {
            // renameat/renameat2(olddirfd, oldpath, newdirfd, newpath, ...)
            tamper_path(a1, a0 as i32, tamper_op::RENAME_FROM, sysno);
            let newdirfd = kernel::regs_arg(regs, 2) as i32;
            tamper_path(kernel::regs_arg(regs, 3), newdirfd, tamper_op::RENAME_TO, sysno);
        }
    }
}

#[inline(always)]
fn tamper_path(path: u64, dirfd: i32, op: u32, sysno: u64) {
    let Some(mut rec) = emit::reserve::<FileTamperEvent>(kind::FILE_TAMPER) else {
        return;
    };
    let ev = rec.as_mut_ptr();
    // SAFETY: `ev` points into our own ring-buffer reservation of a FileTamperEvent, whose
    // `path` is PATH_LEN bytes.
    let n = unsafe { read_path((*ev).path.as_mut_ptr(), path) };
    // SAFETY: as above; the helper has finished writing `path`.
    if n <= 0 || !basename_watched(unsafe { &(*ev).path }) {
        rec.discard(0);
        return;
    }
    // SAFETY: `ev` points into our own ring-buffer reservation of this event type, live until
    // it is submitted or discarded below; the helpers write at most the lengths of the fields
    // they are given.
    unsafe {
        (*ev).file = FileId::default();
        (*ev).bytes = 0;
        (*ev).op = op;
        (*ev).fd = -1;
        (*ev).dirfd = dirfd;
        (*ev).syscall = sysno as u32;
    }
    emit::submit(rec, kind::FILE_TAMPER);
}

/// FNV-1a of the last path component (restarting at every '/'), looked up in `WATCHED_NAMES`.
#[inline(always)]
fn basename_watched(path: &[u8; PATH_LEN]) -> bool {
    const BASIS: u64 = name_hash(b"");
    let mut h = BASIS;
    let mut i = 0;
    while i < PATH_LEN {
        let b = path[i];
        if b == 0 {
            break;
        }
        if b == b'/' {
            h = BASIS;
        } else {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        i += 1;
    }
    // SAFETY: a lookup whose value is only tested for presence.
    unsafe { WATCHED_NAMES.get(&h) }.is_some()
}

/// An open of /proc/<pid>/mem: reading another process's memory through procfs.
#[inline(always)]
fn proc_mem_open(file: u64, sb: u64) {
    const PROC_SUPER_MAGIC: u64 = 0x9fa0;
    if read::<u64>(sb, off!(sb_magic)) != Some(PROC_SUPER_MAGIC) {
        return;
    }
    let Some(dentry) = read::<u64>(file, off!(file_dentry)) else {
        return;
    };
    let Some(name) = read::<u64>(dentry, off!(dentry_name)) else {
        return;
    };
    if read::<[u8; 4]>(name, 0) != Some(*b"mem\0") {
        return;
    }
    let Some(parent) = read::<u64>(dentry, off!(dentry_parent)) else {
        return;
    };
    let Some(pname) = read::<u64>(parent, off!(dentry_name)) else {
        return;
    };
    let Some(digits) = read::<[u8; 8]>(pname, 0) else {
        return;
    };
    // The parent directory is the target pid in decimal.
    let mut pid: u32 = 0;
    let mut i = 0;
    while i < 8 {
        let d = digits[i];
        if d == 0 {
            break;
        }
        if !d.is_ascii_digit() {
            return;
        }
        pid = pid * 10 + (d - b'0') as u32;
        i += 1;
    }
    if pid != 0 {
        crate::process::emit_access(llmwatch_common::event::access_op::PROC_MEM_OPEN, pid, 0);
    }
}
