//! The end-to-end tests' helper: each subcommand gets hold of a file one particular way and
//! reads (or maps, or sends) it, so a test can prove the kernel side follows that way. It
//! prints what it did as `key value` lines on stdout (bytes read, fd numbers) and waits for a
//! line on stdin where a test needs to act between two steps.
//!
//! Usage: fdtool SUBCOMMAND ARGS... (see `main`).
use std::{
    ffi::CString,
    io::{BufRead as _, Read as _, Write as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::{ffi::OsStrExt as _, net::UnixListener, net::UnixStream},
    },
    path::Path,
};

fn fail(what: &str) -> ! {
    eprintln!("fdtool: {what}: {}", std::io::Error::last_os_error());
    std::process::exit(2);
}

fn cpath(p: &str) -> CString {
    CString::new(Path::new(p).as_os_str().as_bytes()).expect("no NUL in a path")
}

fn open_ro(path: &str) -> RawFd {
    // SAFETY: a NUL-terminated path; the fd returned is owned by the caller.
    let fd = unsafe { libc::open(cpath(path).as_ptr(), libc::O_RDONLY) };
    if fd < 0 {
        fail(&format!("open {path}"));
    }
    fd
}

/// read() until EOF; the bytes the calls returned.
fn read_all(fd: RawFd) -> u64 {
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        // SAFETY: `buf` is a valid writable buffer of its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            fail("read");
        }
        if n == 0 {
            return total;
        }
        total += n as u64;
    }
}

/// Blocks until the test writes a line (or closes stdin).
fn wait_line() {
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
}

fn say(key: &str, value: impl std::fmt::Display) {
    println!("{key} {value}");
    let _ = std::io::stdout().flush();
}

fn mapping(fd: RawFd, len: usize) -> &'static [u8] {
    // SAFETY: a fresh shared read-only mapping of `len` bytes of `fd`, never unmapped (the
    // process exits soon after).
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        fail("mmap");
    }
    // SAFETY: the mapping is `len` readable bytes that live for the rest of the process.
    unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) }
}

fn file_len(fd: RawFd) -> usize {
    // SAFETY: fstat into a zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        fail("fstat");
    }
    st.st_size as usize
}

/// Touches one byte of every page of `m` (what a loader copying weights out does).
fn touch_every_page(m: &[u8]) -> u64 {
    let mut sum = 0u64;
    for i in (0..m.len()).step_by(4096) {
        // SAFETY: in bounds; volatile so the read is not optimized away.
        sum = sum.wrapping_add(u64::from(unsafe { std::ptr::read_volatile(&m[i]) }));
    }
    sum
}

/// Bytes of the mapping starting at `start` that are mapped with PMDs (`FilePmdMapped` and
/// `ShmemPmdMapped` of its smaps entry).
fn pmd_mapped(start: usize) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_else(|_| fail("smaps"));
    let header = format!("{start:x}-");
    let mut inside = false;
    let mut kib = 0u64;
    for line in smaps.lines() {
        if line
            .split_ascii_whitespace()
            .next()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            inside = line.starts_with(&header);
            continue;
        }
        if inside && (line.starts_with("FilePmdMapped:") || line.starts_with("ShmemPmdMapped:")) {
            kib += line
                .split_ascii_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    kib * 1024
}

fn tcp(host: &str, port: &str) -> std::net::TcpStream {
    std::net::TcpStream::connect(format!("{host}:{port}")).unwrap_or_else(|_| fail("connect"))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = |i: usize| {
        args.get(i)
            .map(String::as_str)
            .unwrap_or_else(|| fail("missing argument"))
    };
    match a(0) {
        // Open and read the whole file.
        "read" => say("read", read_all(open_ro(a(1)))),
        // Open through io_uring (IORING_OP_OPENAT), then read() the descriptor.
        "uring-open-read" => {
            let mut ring = io_uring::IoUring::new(4).unwrap_or_else(|_| fail("io_uring_setup"));
            let path = cpath(a(1));
            let sqe = io_uring::opcode::OpenAt::new(io_uring::types::Fd(libc::AT_FDCWD), path.as_ptr())
                .flags(libc::O_RDONLY)
                .build();
            // SAFETY: `path` outlives the submission, which completes before it is dropped.
            unsafe { ring.submission().push(&sqe).unwrap_or_else(|_| fail("sq full")) };
            ring.submit_and_wait(1).unwrap_or_else(|_| fail("io_uring_enter"));
            let fd = ring.completion().next().map(|c| c.result()).unwrap_or(-1);
            if fd < 0 {
                fail("IORING_OP_OPENAT");
            }
            say("fd", fd);
            say("read", read_all(fd));
        }
        // Open by file handle (name_to_handle_at + open_by_handle_at), then read.
        "handle-open-read" => {
            const MAX_HANDLE_SZ: usize = 128;
            let mut buf = vec![0u8; 8 + MAX_HANDLE_SZ];
            buf[..4].copy_from_slice(&(MAX_HANDLE_SZ as u32).to_ne_bytes());
            let mut mount_id: libc::c_int = 0;
            let path = cpath(a(1));
            // SAFETY: `buf` is a struct file_handle with room for MAX_HANDLE_SZ bytes.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_name_to_handle_at,
                    libc::AT_FDCWD,
                    path.as_ptr(),
                    buf.as_mut_ptr(),
                    &mut mount_id,
                    0,
                )
            };
            if r != 0 {
                fail("name_to_handle_at");
            }
            let dir = Path::new(a(1)).parent().map(|p| p.to_string_lossy().into_owned());
            let mount_fd = open_ro(dir.as_deref().unwrap_or("/"));
            // SAFETY: the handle filled in above; the fd returned is ours.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_open_by_handle_at,
                    mount_fd,
                    buf.as_mut_ptr(),
                    libc::O_RDONLY,
                )
            };
            if fd < 0 {
                fail("open_by_handle_at");
            }
            say("fd", fd);
            say("read", read_all(fd as RawFd));
        }
        // Open, say so, wait; read all, say so, wait; exit. (Holds a descriptor across an
        // agent start.)
        "hold" => {
            let fd = open_ro(a(1));
            say("fd", fd);
            wait_line();
            say("read", read_all(fd));
            wait_line();
        }
        // Map the whole file, say so, wait; touch every page, wait; exit.
        "map-hold" => {
            let fd = open_ro(a(1));
            let m = mapping(fd, file_len(fd));
            // SAFETY: closing our own descriptor; the mapping stays.
            unsafe { libc::close(fd) };
            say("mapped", m.len());
            wait_line();
            say("touched", touch_every_page(m));
            wait_line();
        }
        // Map the file and read only its safetensors header, as `safe_open` does to list
        // tensor names.
        "mmap-header" => {
            let fd = open_ro(a(1));
            let m = mapping(fd, file_len(fd));
            let n = u64::from_le_bytes(m[..8].try_into().unwrap_or([0; 8])) as usize;
            let header = std::str::from_utf8(&m[8..8 + n.min(m.len() - 8)]).unwrap_or("");
            say("header_bytes", header.len());
        }
        // Map the file and touch every page; wait (so a test can sample) then exit. With
        // `report-pmd`, also say how much of the mapping the kernel mapped with PMDs.
        "mmap-all" => {
            let fd = open_ro(a(1));
            let m = mapping(fd, file_len(fd));
            say("touched", touch_every_page(m));
            if args.iter().any(|a| a == "report-pmd") {
                say("pmd_mapped", pmd_mapped(m.as_ptr() as usize));
            }
            if args.get(2).map(String::as_str) == Some("wait") {
                wait_line();
            }
        }
        // Listen on unix socket PATH, receive one message of descriptors (SCM_RIGHTS), read the
        // last one all.
        "recv-read" => {
            let listener = UnixListener::bind(a(1)).unwrap_or_else(|_| fail("bind"));
            say("listening", a(1));
            let (stream, _) = listener.accept().unwrap_or_else(|_| fail("accept"));
            let fds = recv_fds(&stream);
            let fd = *fds.last().unwrap_or_else(|| fail("no descriptor"));
            say("fds", fds.len());
            say("fd", fd);
            say("read", read_all(fd));
        }
        // As recv-read, the message received with io_uring (IORING_OP_RECVMSG).
        "uring-recv-read" => {
            let listener = UnixListener::bind(a(1)).unwrap_or_else(|_| fail("bind"));
            say("listening", a(1));
            let (stream, _) = listener.accept().unwrap_or_else(|_| fail("accept"));
            let mut ring = io_uring::IoUring::new(4).unwrap_or_else(|_| fail("io_uring_setup"));
            let fds = recv_fds_with(|msg| {
                let sqe =
                    io_uring::opcode::RecvMsg::new(io_uring::types::Fd(stream.as_raw_fd()), msg).build();
                // SAFETY: `msg` and its buffers outlive the submission, which completes before
                // this closure returns.
                unsafe { ring.submission().push(&sqe).unwrap_or_else(|_| fail("sq full")) };
                ring.submit_and_wait(1).unwrap_or_else(|_| fail("io_uring_enter"));
                ring.completion().next().map_or(-1, |c| c.result() as isize)
            });
            let fd = *fds.last().unwrap_or_else(|| fail("no descriptor"));
            say("fds", fds.len());
            say("fd", fd);
            say("read", read_all(fd));
        }
        // Open FILE and pass the descriptor to the unix socket at PATH, after PADDING (default
        // 0) descriptors of /dev/null in the same SCM_RIGHTS message.
        "send-fd" => {
            let padding: usize = args
                .get(3)
                .map_or(0, |n| n.parse().unwrap_or_else(|_| fail("padding")));
            let mut fds: Vec<RawFd> = (0..padding).map(|_| open_ro("/dev/null")).collect();
            let fd = open_ro(a(2));
            fds.push(fd);
            let stream = UnixStream::connect(a(1)).unwrap_or_else(|_| fail("connect"));
            send_fds(&stream, &fds);
            say("sent", fd);
        }
        // Take descriptor FD of process PID (pidfd_getfd) and read it all.
        "getfd" => {
            let pid: i32 = a(1).parse().unwrap_or_else(|_| fail("pid"));
            let target: i32 = a(2).parse().unwrap_or_else(|_| fail("fd"));
            // SAFETY: plain syscalls with integer arguments.
            let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
            if pidfd < 0 {
                fail("pidfd_open");
            }
            // SAFETY: as above.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, target, 0) };
            if fd < 0 {
                fail("pidfd_getfd");
            }
            say("fd", fd);
            say("read", read_all(fd as RawFd));
        }
        // Open and read N bytes; then make the descriptor number refer to /dev/null (dup2) and
        // read from it; then close everything from 3 up (close_range).
        "dup2-over" => {
            let fd = open_ro(a(1));
            let n: usize = a(2).parse().unwrap_or_else(|_| fail("N"));
            let mut buf = vec![0u8; n];
            // SAFETY: reading into our own buffer.
            let got = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), n) };
            say("read", got);
            let null = open_ro("/dev/null");
            // SAFETY: both are our descriptors.
            if unsafe { libc::dup2(null, fd) } != fd {
                fail("dup2");
            }
            say("after_dup2", read_all(fd));
            // SAFETY: closing our own descriptors.
            unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
            say("closed", "3..");
        }
        // Send FILE to HOST:PORT with sendfile(2) (what Python's socket.sendfile() does).
        "sendfile" => {
            let fd = open_ro(a(1));
            let sock = tcp(a(2), a(3));
            let mut total = 0u64;
            loop {
                // SAFETY: both descriptors are ours.
                let n = unsafe { libc::sendfile(sock.as_raw_fd(), fd, std::ptr::null_mut(), 1 << 20) };
                if n < 0 {
                    fail("sendfile");
                }
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            say("sent", total);
        }
        // Read FILE with read(), send it to HOST:PORT with sendmmsg(2), 64 messages of 32 KiB
        // per call (each message below any budget; one call carries 2 MiB).
        "sendmmsg" => {
            let fd = open_ro(a(1));
            let mut data = Vec::new();
            // SAFETY: `fd` is ours and is not used again after the File takes it.
            let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            f.read_to_end(&mut data).unwrap_or_else(|_| fail("read"));
            let sock = tcp(a(2), a(3));
            const MSG: usize = 32 << 10;
            let mut sent = 0usize;
            while sent < data.len() {
                let chunks: Vec<&[u8]> = data[sent..].chunks(MSG).take(64).collect();
                let mut iovs: Vec<libc::iovec> = chunks
                    .iter()
                    .map(|c| libc::iovec {
                        iov_base: c.as_ptr() as *mut libc::c_void,
                        iov_len: c.len(),
                    })
                    .collect();
                let mut msgs: Vec<libc::mmsghdr> = iovs
                    .iter_mut()
                    .map(|iov| {
                        // SAFETY: an all-zero msghdr is a valid empty one; the fields set
                        // below point at `iovs`, which outlives the call.
                        let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                        m.msg_hdr.msg_iov = iov;
                        m.msg_hdr.msg_iovlen = 1;
                        m
                    })
                    .collect();
                // SAFETY: `msgs` holds `msgs.len()` initialised headers over live buffers.
                let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as u32, 0) };
                if n <= 0 {
                    fail("sendmmsg");
                }
                sent += msgs[..n as usize]
                    .iter()
                    .map(|m| m.msg_len as usize)
                    .sum::<usize>();
            }
            say("sent", sent);
        }
        // Read FILE with read(), send it to HOST:PORT with io_uring IORING_OP_SEND.
        "uring-send" => {
            let fd = open_ro(a(1));
            let mut data = Vec::new();
            // SAFETY: `fd` is ours and is not used again after the File takes it.
            let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            f.read_to_end(&mut data).unwrap_or_else(|_| fail("read"));
            let sock = tcp(a(2), a(3));
            let mut ring = io_uring::IoUring::new(4).unwrap_or_else(|_| fail("io_uring_setup"));
            let mut sent = 0usize;
            while sent < data.len() {
                let chunk = &data[sent..];
                let sqe = io_uring::opcode::Send::new(
                    io_uring::types::Fd(sock.as_raw_fd()),
                    chunk.as_ptr(),
                    chunk.len().min(1 << 20) as u32,
                )
                .build();
                // SAFETY: `data` outlives the submission, which completes before the next.
                unsafe { ring.submission().push(&sqe).unwrap_or_else(|_| fail("sq full")) };
                ring.submit_and_wait(1).unwrap_or_else(|_| fail("io_uring_enter"));
                let res = ring.completion().next().map(|c| c.result()).unwrap_or(-1);
                if res <= 0 {
                    fail("IORING_OP_SEND");
                }
                sent += res as usize;
            }
            say("sent", sent);
        }
        other => {
            eprintln!("fdtool: unknown subcommand {other}");
            std::process::exit(2);
        }
    }
}

/// Most descriptors one message carries here (the kernel's SCM_MAX_FD is 253).
const MAX_FDS: usize = 64;

fn send_fds(stream: &UnixStream, fds: &[RawFd]) {
    if fds.len() > MAX_FDS {
        fail("too many descriptors");
    }
    let mut data = [b'x'];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let bytes = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(bytes) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: a zeroed msghdr pointing at our iovec and control buffer.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: the control buffer has room for one cmsghdr with `fds` (CMSG_SPACE above).
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(bytes) as usize;
        std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), bytes as usize);
    }
    // SAFETY: `msg` and what it points to are valid for the call.
    if unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, 0) } != 1 {
        fail("sendmsg");
    }
}

fn recv_fds(stream: &UnixStream) -> Vec<RawFd> {
    recv_fds_with(|msg| {
        // SAFETY: `msg` and what it points to are valid for the call.
        unsafe { libc::recvmsg(stream.as_raw_fd(), msg, 0) }
    })
}

/// The descriptors of one SCM_RIGHTS message, received by `recv` (which returns the bytes of
/// data received, or a negative value).
fn recv_fds_with(mut recv: impl FnMut(*mut libc::msghdr) -> isize) -> Vec<RawFd> {
    let mut data = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: a zeroed msghdr pointing at our iovec and control buffer.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    if recv(&mut msg) != 1 {
        fail("recvmsg");
    }
    // SAFETY: the kernel filled the control buffer; CMSG_FIRSTHDR checks its length, and the
    // header's length says how many descriptors follow it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            fail("no SCM_RIGHTS");
        }
        let n = ((*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
        let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
        (0..n).map(|i| std::ptr::read_unaligned(data.add(i))).collect()
    }
}
