//! Each kernel hook proven with a real syscall and the real agent binary (root required).
//!
//! The agent runs as `llmwatch events --model-dir <temp dir>`; every assertion is on the JSON
//! lines it prints. Scenarios watch their own directories, so they can run in parallel.
use std::{
    ffi::CString,
    io::{Read, Write},
    os::{fd::AsRawFd, unix::ffi::OsStrExt},
    path::Path,
    process::Command,
};

use llmwatch_e2e::{Agent, TempDir, Value, is, secs, write_safetensors};

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn open(p: &Path, flags: i32) -> i32 {
    // SAFETY: the C string lives until the end of the statement, after the call.
    let fd = unsafe { libc::open(cpath(p).as_ptr(), flags, 0o644) };
    assert!(
        fd >= 0,
        "open {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    fd
}

fn me() -> u32 {
    std::process::id()
}

fn sum_bytes(events: &[Value]) -> u64 {
    events.iter().map(|v| v["bytes"].as_u64().unwrap()).sum()
}

/// Reads the whole of `fd` using `how`; returns the bytes the syscalls returned.
fn read_all(how: &str, fd: i32, scratch: &Path) -> u64 {
    let mut buf = vec![0u8; 1 << 16];
    let mut total: u64 = 0;
    // SAFETY: each call is given buf (or iovecs over it, or fd for the copies) with its real
    // length; buf outlives every call.
    unsafe {
        match how {
            "read" => loop {
                let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                assert!(n >= 0);
                if n == 0 {
                    break;
                }
                total += n as u64;
            },
            "pread64" => loop {
                let n = libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), total as i64);
                assert!(n >= 0);
                if n == 0 {
                    break;
                }
                total += n as u64;
            },
            "readv" | "preadv" => {
                let (a, b) = buf.split_at_mut(1 << 15);
                let iov = [
                    libc::iovec {
                        iov_base: a.as_mut_ptr().cast(),
                        iov_len: a.len(),
                    },
                    libc::iovec {
                        iov_base: b.as_mut_ptr().cast(),
                        iov_len: b.len(),
                    },
                ];
                loop {
                    let n = if how == "readv" {
                        libc::readv(fd, iov.as_ptr(), 2)
                    } else {
                        libc::preadv(fd, iov.as_ptr(), 2, total as i64)
                    };
                    assert!(n >= 0);
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
            }
            "sendfile" => {
                let null = open(Path::new("/dev/null"), libc::O_WRONLY);
                loop {
                    let n = libc::sendfile(null, fd, std::ptr::null_mut(), 1 << 20);
                    assert!(n >= 0, "sendfile: {}", std::io::Error::last_os_error());
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                libc::close(null);
            }
            "splice" => {
                let mut p = [0i32; 2];
                assert_eq!(libc::pipe(p.as_mut_ptr()), 0);
                loop {
                    let n = libc::splice(fd, std::ptr::null_mut(), p[1], std::ptr::null_mut(), 1 << 16, 0);
                    assert!(n >= 0, "splice: {}", std::io::Error::last_os_error());
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                    let mut left = n as usize;
                    while left > 0 {
                        let r = libc::read(p[0], buf.as_mut_ptr().cast(), left.min(buf.len()));
                        assert!(r > 0);
                        left -= r as usize;
                    }
                }
                libc::close(p[0]);
                libc::close(p[1]);
            }
            "copy_file_range" => {
                let out = open(
                    &scratch.join("copy.out"),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
                );
                loop {
                    let n = libc::copy_file_range(
                        fd,
                        std::ptr::null_mut(),
                        out,
                        std::ptr::null_mut(),
                        1 << 20,
                        0,
                    );
                    assert!(n >= 0, "copy_file_range: {}", std::io::Error::last_os_error());
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                libc::close(out);
            }
            other => panic!("unknown read path {other}"),
        }
    }
    total
}

#[test]
fn every_read_path_reports_exact_bytes_returned() {
    read_paths(&[]);
}

/// The same through the raw-tracepoint fallback (what runs where tp_btf is refused).
#[test]
fn every_read_path_through_the_raw_tracepoint_fallback() {
    read_paths(&["--syscall-hook", "raw"]);
}

fn read_paths(extra: &[&str]) {
    let dir = TempDir::new("reads");
    let scratch = TempDir::new("reads-out");
    let path = dir.path().join("model.safetensors");
    // Not a multiple of any chunk size, larger than several 1 MiB report thresholds.
    let size: u64 = 3 * 1024 * 1024 + 12_345;
    let ino = write_safetensors(&path, size as usize);
    // Opened last, as the marker that the reopens before it were judged.
    let marker = dir.path().join("marker.safetensors");
    let marker_ino = write_safetensors(&marker, 4096);
    let mut agent = Agent::watching(&[dir.path()], extra);
    assert_eq!(agent.ready["watched_files"], 2, "{}", agent.ready);
    // The syscall-level hook: `sys_exit` (tp_btf or raw) or the fast path's fexit set.
    let syscall_hooks: Vec<&str> = agent.ready["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["attached"] == true)
        .filter_map(|h| h["hook"].as_str())
        .filter(|h| h.ends_with("/sys_exit") || h.starts_with("fexit/__x64_sys_"))
        .collect();
    eprintln!(
        "read paths through hook path {} ({syscall_hooks:?})",
        agent.ready["hook_path"]
    );
    if extra.contains(&"raw") {
        assert_eq!(syscall_hooks, ["raw_tracepoint/sys_exit"], "{}", agent.ready);
        assert_eq!(agent.ready["hook_path"], "tracepoint", "{}", agent.ready);
        assert!(agent.ready["syscall_hook_fallback"].is_string());
    } else {
        assert_eq!(syscall_hooks.len(), 1, "{}", agent.ready);
    }

    let mut fds = Vec::new();
    for how in [
        "read",
        "pread64",
        "readv",
        "preadv",
        "sendfile",
        "splice",
        "copy_file_range",
    ] {
        let fd = open(&path, libc::O_RDONLY);
        fds.push(fd);
        let returned = read_all(how, fd, scratch.path());
        assert_eq!(returned, size);
        // SAFETY: fd was opened by this test and is not used after this.
        unsafe { libc::close(fd) };
        let ours = |v: &Value| is(v, "file_read", me()) && v["fd"] == fd && v["file"]["ino"] == ino;
        let events = agent.collect_until(secs(10), ours, |v| ours(v) && v["reason"] == "close");
        assert_eq!(
            events.last().map(|v| v["reason"].clone()),
            Some("close".into()),
            "{how}: no close report: {events:#?}"
        );
        assert_eq!(
            sum_bytes(&events),
            size,
            "{how}: reported bytes differ from bytes returned: {events:#?}"
        );
        assert!(
            events.iter().any(|v| v["syscall"] == how),
            "{how}: no event names the syscall: {events:#?}"
        );
        // Reports come as thresholds are crossed and on close; a sweep (every flush interval)
        // may land in between when the machine is slow, never anything else.
        assert!(
            events
                .iter()
                .all(|v| v["reason"] == "progress" || v["reason"] == "close" || v["reason"] == "flush"),
            "{how}: {events:#?}"
        );
        assert!(
            events.iter().all(|v| v["instance"] == events[0]["instance"]),
            "{how}: one open, one instance"
        );
        assert_eq!(events[0]["weight"]["path"], path.to_str().unwrap());
        assert_eq!(events[0]["weight"]["format"], "safetensors");
        assert_eq!(events[0]["process"]["pid"], me());
    }
    // The first open was reported with its descriptor; read-only reopens of the same file by
    // the same process are not reported again (their reads are). The marker: this process's
    // first open of another watched file, which must be reported, after those reopens.
    let fd = open(&marker, libc::O_RDONLY);
    // SAFETY: fd was opened by this test and is not used after this.
    unsafe { libc::close(fd) };
    let opens = agent.collect_until(
        secs(10),
        |v| is(v, "file_open", me()) && v["file"]["ino"] == ino,
        |v| is(v, "file_open", me()) && v["file"]["ino"] == marker_ino,
    );
    assert_eq!(
        opens.last().map(|v| v["file"]["ino"].clone()),
        Some(marker_ino.into()),
        "the marker's open was not reported: {opens:#?}"
    );
    let opens = &opens[..opens.len() - 1];
    assert_eq!(opens.len(), 1, "{opens:#?}");
    assert_eq!(opens[0]["fd"], fds[0]);
}

#[test]
fn cp_of_a_model_is_attributed_to_cp_with_exact_bytes() {
    let dir = TempDir::new("cp");
    let out = TempDir::new("cp-out");
    let path = dir.path().join("model.gguf");
    let size: usize = 2 * 1024 * 1024 + 99;
    let mut data = b"GGUF\x03\0\0\0".to_vec();
    data.resize(size, 7);
    std::fs::write(&path, &data).unwrap();
    let mut agent = Agent::watching(&[dir.path()], &[]);
    let child = Command::new("cp")
        .arg(&path)
        .arg(out.path().join("stolen.gguf"))
        .spawn()
        .unwrap();
    let cp_pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    let events = agent.collect_until(
        secs(10),
        |v| is(v, "file_read", cp_pid),
        |v| is(v, "proc_exit", cp_pid),
    );
    let reads: Vec<Value> = events
        .iter()
        .filter(|v| v["kind"] == "file_read")
        .cloned()
        .collect();
    assert_eq!(sum_bytes(&reads), size as u64, "{events:#?}");
    assert_eq!(reads[0]["process"]["comm"], "cp");
    assert_eq!(reads[0]["weight"]["format"], "gguf");
}

#[test]
fn mmap_of_a_watched_file_reports_length_and_prot() {
    let dir = TempDir::new("mmap");
    let path = dir.path().join("model.safetensors");
    let size: usize = 5 * 4096 + 100;
    let ino = write_safetensors(&path, size);
    let mut agent = Agent::watching(&[dir.path()], &[]);
    let fd = open(&path, libc::O_RDONLY);
    let mut sum: u64 = 0;
    // SAFETY: the mapping is checked before use, only offsets below its length (the file's
    // size) are read, and it is unmapped before fd is closed.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            fd,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        // Touch every page, the way a loader pulls tensors in.
        for off in (0..size).step_by(4096) {
            sum += *(p as *const u8).add(off) as u64;
        }
        libc::munmap(p, size);
        libc::close(fd);
    }
    assert!(sum > 0);
    let ev = agent
        .wait_for(secs(10), |v| is(v, "file_mmap", me()) && v["file"]["ino"] == ino)
        .expect("no file_mmap event");
    assert_eq!(ev["len"], size as u64);
    assert_eq!(ev["prot"], libc::PROT_READ as u64);
    assert_eq!(ev["fd"], fd);
    assert_eq!(ev["file_size"], size as u64);
    assert_eq!(ev["weight"]["path"], path.to_str().unwrap());
}

#[test]
fn unwatched_files_report_nothing() {
    let dir = TempDir::new("watched");
    let other = TempDir::new("unwatched");
    let watched = dir.path().join("model.safetensors");
    let unwatched = other.path().join("model.safetensors");
    let watched_ino = write_safetensors(&watched, 100_000);
    let unwatched_ino = write_safetensors(&unwatched, 100_000);
    let mut agent = Agent::watching(&[dir.path()], &[]);
    // Unwatched first, then the watched file as a marker: once the marker's close arrives,
    // anything about the unwatched file would have arrived before it.
    for p in [&unwatched, &watched] {
        let fd = open(p, libc::O_RDONLY);
        // SAFETY: fd was just opened by open() and nothing else owns it; the File closes it.
        let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let mut v = Vec::new();
        f.read_to_end(&mut v).unwrap();
    }
    let marker = agent.wait_for(secs(10), |v| {
        is(v, "file_read", me()) && v["file"]["ino"] == watched_ino && v["reason"] == "close"
    });
    assert!(marker.is_some(), "watched file read not reported");
    let leaked: Vec<&Value> = agent
        .seen
        .iter()
        .filter(|v| v["file"]["ino"] == unwatched_ino)
        .collect();
    assert!(leaked.is_empty(), "unwatched file reported: {leaked:#?}");
}

#[test]
fn hugging_face_snapshot_symlink_and_hard_link_resolve_to_the_blob() {
    let dir = TempDir::new("hf");
    let repo = dir.path().join("hub/models--acme--tiny");
    let blob = repo.join("blobs/4f2a0f06bd7e5b7fbe0e8b0c8e3a3f4b5c6d7e8f90a1b2c3d4e5f60718293a4b");
    std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
    std::fs::create_dir_all(repo.join("snapshots/main")).unwrap();
    let size = 200_000;
    let ino = write_safetensors(&blob, size);
    let snapshot = repo.join("snapshots/main/model.safetensors");
    std::os::unix::fs::symlink(
        format!("../../blobs/{}", blob.file_name().unwrap().to_str().unwrap()),
        &snapshot,
    )
    .unwrap();
    let hard = dir.path().join("copy-of-model.safetensors");
    std::fs::hard_link(&blob, &hard).unwrap();
    let mut agent = Agent::watching(&[dir.path()], &[]);
    assert_eq!(
        agent.ready["watched_files"], 1,
        "one inode, three names: {}",
        agent.ready
    );
    for p in [&snapshot, &hard] {
        let data = std::fs::read(p).unwrap();
        assert_eq!(data.len(), size);
        let ev = agent
            .wait_for(secs(10), |v| {
                is(v, "file_read", me()) && v["file"]["ino"] == ino && v["reason"] == "close"
            })
            .unwrap_or_else(|| panic!("read through {} not reported", p.display()));
        assert_eq!(ev["total"], size as u64);
        // Reported under the inode's real name (one of its hard links), never the symlink.
        let reported = ev["weight"]["path"].as_str().unwrap();
        assert!(
            reported == blob.to_str().unwrap() || reported == hard.to_str().unwrap(),
            "{reported}"
        );
    }
}

#[test]
fn new_model_files_are_watched_without_restart() {
    let dir = TempDir::new("notify");
    let mut agent = Agent::watching(&[dir.path()], &[]);
    assert_eq!(agent.ready["watched_files"], 0);
    let path = dir.path().join("fresh.safetensors");
    let ino = write_safetensors(&path, 300_000);
    let upd = agent
        .wait_for(secs(15), |v| {
            v["kind"] == "watch_update"
                && v["added"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|p| p == path.to_str().unwrap()))
        })
        .expect("new file not picked up");
    assert_eq!(upd["watched_files"], 1);
    let data = std::fs::read(&path).unwrap();
    let ev = agent
        .wait_for(secs(10), |v| {
            is(v, "file_read", me()) && v["file"]["ino"] == ino && v["reason"] == "close"
        })
        .expect("read of the new file not reported");
    assert_eq!(ev["total"], data.len() as u64);
    std::fs::remove_file(&path).unwrap();
    agent
        .wait_for(secs(15), |v| {
            v["kind"] == "watch_update"
                && v["removed"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|p| p == path.to_str().unwrap()))
        })
        .expect("removed file still watched");
}

#[test]
fn refused_open_of_a_watched_file_is_reported() {
    let dir = TempDir::new("denied");
    let path = dir.path().join("secret.safetensors");
    write_safetensors(&path, 10_000);
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut agent = Agent::watching(&[dir.path()], &[]);
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(&path)
        .output()
        .expect("setpriv (util-linux) is needed to drop privileges");
    assert!(!out.status.success(), "nobody could read a 0600 root file?");
    let ev = agent
        .wait_for(secs(10), |v| {
            v["kind"] == "file_open_denied" && v["weight"]["path"] == path.to_str().unwrap()
        })
        .expect("refused open not reported");
    assert_eq!(ev["errno"], libc::EACCES);
    assert_eq!(ev["task"]["uid"], 65534);
    assert_eq!(ev["process"]["comm"], "cat");
}

#[test]
fn writes_truncates_renames_and_unlinks_are_tamper_events() {
    let dir = TempDir::new("tamper");
    let a = dir.path().join("a.safetensors");
    let b = dir.path().join("b.safetensors");
    let c = dir.path().join("c.safetensors");
    let ino_a = write_safetensors(&a, 50_000);
    write_safetensors(&b, 50_000);
    write_safetensors(&c, 50_000);
    // Unlinked last, as the marker that the unrelated file before it was judged.
    let d = dir.path().join("d.safetensors");
    write_safetensors(&d, 50_000);
    let mut agent = Agent::watching(&[dir.path()], &[]);
    assert_eq!(agent.ready["watched_files"], 4);
    let tamper = |op: &'static str| move |v: &Value| is(v, "file_tamper", me()) && v["op"] == op;

    // Write through a descriptor, then ftruncate it.
    let fd = open(&a, libc::O_WRONLY | libc::O_APPEND);
    // SAFETY: the buffer is a 10-byte literal, matching the count.
    assert_eq!(unsafe { libc::write(fd, b"0123456789".as_ptr().cast(), 10) }, 10);
    let ev = agent
        .wait_for(secs(10), tamper("write"))
        .expect("write not reported");
    assert_eq!(ev["file"]["ino"], ino_a);
    assert_eq!(ev["bytes"], 10);
    assert_eq!(ev["weight"]["path"], a.to_str().unwrap());
    // SAFETY: ftruncate takes no pointers; fd is open for writing.
    assert_eq!(unsafe { libc::ftruncate(fd, 10) }, 0);
    let ev = agent
        .wait_for(secs(10), |v| tamper("truncate")(v) && v["fd"] == fd)
        .expect("ftruncate not reported");
    assert_eq!(ev["file"]["ino"], ino_a);
    // SAFETY: fd was opened by this test and is not used after this.
    unsafe { libc::close(fd) };

    // Rename away, relative to a directory descriptor (resolved through /proc/<pid>/fd).
    let dirf = std::fs::File::open(dir.path()).unwrap();
    // SAFETY: both names are NUL-terminated C string literals; dirf is open for the whole call.
    let r = unsafe {
        libc::renameat(
            dirf.as_raw_fd(),
            c"b.safetensors".as_ptr(),
            dirf.as_raw_fd(),
            c"b.renamed".as_ptr(),
        )
    };
    assert_eq!(r, 0);
    let ev = agent
        .wait_for(secs(10), tamper("rename_from"))
        .expect("rename not reported");
    assert_eq!(ev["weight"]["path"], b.to_str().unwrap());
    assert_eq!(ev["path"], "b.safetensors");

    // Rename something else over a watched name (replacing weights).
    let evil = dir.path().join("evil.tmp");
    std::fs::write(&evil, b"not weights").unwrap();
    std::fs::rename(&evil, &a).unwrap();
    let ev = agent
        .wait_for(secs(10), tamper("rename_to"))
        .expect("rename over a watched file not reported");
    assert_eq!(ev["weight"]["path"], a.to_str().unwrap());

    // Unlink and path truncate.
    let p = cpath(&c);
    // SAFETY: the C string lives until the end of the statement, after the call.
    assert_eq!(unsafe { libc::truncate(p.as_ptr(), 0) }, 0);
    let ev = agent
        .wait_for(secs(10), |v| tamper("truncate")(v) && v["fd"] == -1)
        .expect("truncate(path) not reported");
    assert_eq!(ev["weight"]["path"], c.to_str().unwrap());
    std::fs::remove_file(&c).unwrap();
    let ev = agent
        .wait_for(secs(10), tamper("unlink"))
        .expect("unlink not reported");
    assert_eq!(ev["weight"]["path"], c.to_str().unwrap());

    // An unrelated file in the same directory is not a tamper event.
    let junk = dir.path().join("notes.txt");
    std::fs::write(&junk, b"x").unwrap();
    std::fs::remove_file(&junk).unwrap();
    std::fs::remove_file(&d).unwrap();
    let noise = agent.collect_until(
        secs(10),
        |v| v["kind"] == "file_tamper" && v["path"] == junk.to_str().unwrap(),
        |v| tamper("unlink")(v) && v["weight"]["path"] == d.to_str().unwrap(),
    );
    assert!(
        noise
            .last()
            .is_some_and(|v| v["weight"]["path"] == d.to_str().unwrap()),
        "the marker's unlink was not reported: {noise:#?}"
    );
    assert_eq!(noise.len(), 1, "{noise:#?}");
}

/// Runs `bash -c script` and returns its pid after it exits successfully.
fn bash(script: &str) -> u32 {
    let child = Command::new("bash").arg("-c").arg(script).spawn().unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "bash -c {script}: {:?}", out.status);
    pid
}

fn sends_to(agent: &mut Agent, port: u16) -> (Value, Vec<Value>) {
    let connect = agent
        .wait_for(secs(10), |v| v["kind"] == "net_connect" && v["port"] == port)
        .unwrap_or_else(|| panic!("no connect to port {port}"));
    let pid = connect["task"]["pid"].as_u64().unwrap() as u32;
    let events = agent.collect_until(
        secs(10),
        |v| is(v, "net_send", pid) && v["port"] == port,
        |v| is(v, "proc_exit", pid),
    );
    let sends = events.into_iter().filter(|v| v["kind"] == "net_send").collect();
    (connect, sends)
}

/// A watched file in `dir`; a shell that reads it first (`cat` it) is a tree whose sends the
/// kernel counts (the sends of processes that never touched weights are not looked at).
fn reader_tree_model(dir: &Path) -> std::path::PathBuf {
    let model = dir.join("model.safetensors");
    write_safetensors(&model, 64 * 1024);
    model
}

/// The send tests run on the path this kernel chose and on the syscall path (what kernels
/// without `sock_send_length` use), forced.
const SEND_PATHS: [&[&str]; 2] = [&[], &["--send-path", "syscalls"]];

#[test]
fn tcp_connect_and_bytes_sent_are_reported_with_destination() {
    for opts in SEND_PATHS {
        tcp_sends(opts);
    }
}

fn tcp_sends(opts: &[&str]) {
    let dir = TempDir::new("net");
    let model = reader_tree_model(dir.path());
    let mut agent = Agent::watching(&[dir.path()], opts);
    let n: u64 = 3 * 1024 * 1024 + 17;
    for (bind, host) in [("127.0.0.1:0", "127.0.0.1"), ("[::1]:0", "::1")] {
        let listener = std::net::TcpListener::bind(bind).unwrap();
        let port = listener.local_addr().unwrap().port();
        let sink = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut v = Vec::new();
            s.read_to_end(&mut v).unwrap();
            v.len() as u64
        });
        bash(&format!(
            "cat {} > /dev/null; head -c {n} /dev/zero > /dev/tcp/{host}/{port}",
            model.display()
        ));
        assert_eq!(sink.join().unwrap(), n);
        let (connect, sends) = sends_to(&mut agent, port);
        assert_eq!(connect["dest"], host);
        assert_eq!(connect["proto"], "tcp");
        assert_eq!(sum_bytes(&sends), n, "{host} {opts:?}: {sends:#?}");
        assert!(sends.iter().all(|v| v["dest"] == host && v["proto"] == "tcp"));
        assert_eq!(sends[0]["reason"], "first");
    }
}

#[test]
fn udp_connect_and_datagrams_are_reported() {
    for opts in SEND_PATHS {
        udp_sends(opts);
    }
}

fn udp_sends(opts: &[&str]) {
    let dir = TempDir::new("udp");
    let model = reader_tree_model(dir.path());
    let mut agent = Agent::watching(&[dir.path()], opts);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    bash(&format!(
        "cat {} > /dev/null; head -c 1000 /dev/zero > /dev/udp/127.0.0.1/{port}",
        model.display()
    ));
    let mut buf = [0u8; 2000];
    assert_eq!(sock.recv(&mut buf).unwrap(), 1000);
    let (connect, sends) = sends_to(&mut agent, port);
    assert_eq!(connect["proto"], "udp");
    assert_eq!(sum_bytes(&sends), 1000, "{opts:?}: {sends:#?}");
    assert_eq!(sends[0]["proto"], "udp");
}

#[test]
fn unconnected_udp_sendto_is_counted_per_destination() {
    for opts in SEND_PATHS {
        unconnected_udp(opts);
    }
}

fn unconnected_udp(opts: &[&str]) {
    let dir = TempDir::new("sendto");
    let model = reader_tree_model(dir.path());
    let mut agent = Agent::watching(&[dir.path()], opts);
    let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = rx.local_addr().unwrap().port();
    // A child process so its exit flushes the in-kernel counter; it reads the model first.
    // Three sendto(), two sendmsg() with an address and one sendmmsg() of two datagrams.
    let script = format!(
        "import socket; open({model:?}, 'rb').read()\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor _ in range(3): s.sendto(b'x'*500, ('127.0.0.1', {port}))\nfor _ in range(2): s.sendmsg([b'y'*100], [], 0, ('127.0.0.1', {port}))\nimport ctypes, struct\nlibc = ctypes.CDLL(None, use_errno=True)\naddr = struct.pack('<HH4s8x', socket.AF_INET, socket.htons({port}), socket.inet_aton('127.0.0.1'))\nsa = ctypes.create_string_buffer(addr)\nbufs = [ctypes.create_string_buffer(b'z'*300), ctypes.create_string_buffer(b'w'*200)]\nclass iovec(ctypes.Structure): _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]\nclass msghdr(ctypes.Structure): _fields_ = [('name', ctypes.c_void_p), ('namelen', ctypes.c_uint32), ('iov', ctypes.c_void_p), ('iovlen', ctypes.c_size_t), ('control', ctypes.c_void_p), ('controllen', ctypes.c_size_t), ('flags', ctypes.c_int)]\nclass mmsghdr(ctypes.Structure): _fields_ = [('hdr', msghdr), ('len', ctypes.c_uint32)]\niovs = [iovec(ctypes.cast(b, ctypes.c_void_p), len(b) - 1) for b in bufs]\nmsgs = (mmsghdr * 2)(*[mmsghdr(msghdr(ctypes.cast(sa, ctypes.c_void_p), 16, ctypes.cast(ctypes.pointer(iovs[i]), ctypes.c_void_p), 1, None, 0, 0), 0) for i in range(2)])\nassert libc.sendmmsg(s.fileno(), msgs, 2, 0) == 2, ctypes.get_errno()",
        model = model.display().to_string()
    );
    let child = Command::new("python3").arg("-c").arg(&script).spawn().unwrap();
    let pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    let events = agent.collect_until(secs(10), |v| is(v, "net_send", pid), |v| is(v, "proc_exit", pid));
    let sends: Vec<Value> = events.into_iter().filter(|v| v["kind"] == "net_send").collect();
    assert_eq!(sum_bytes(&sends), 1700 + 500, "{opts:?}: {sends:#?}");
    assert!(
        sends
            .iter()
            .all(|v| v["port"] == port && v["dest"] == "127.0.0.1")
    );
}

#[test]
fn accepted_connections_on_inference_ports_are_reported() {
    let dir = TempDir::new("accept");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut agent = Agent::watching(&[dir.path()], &["--inference-port", &port.to_string()]);
    let client = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        s.local_addr().unwrap().port()
    });
    let (conn, _) = listener.accept().unwrap();
    let client_port = client.join().unwrap();
    let ev = agent
        .wait_for(secs(10), |v| is(v, "net_accept", me()) && v["local_port"] == port)
        .expect("accept not reported");
    assert_eq!(ev["client"], "127.0.0.1");
    assert_eq!(ev["client_port"], client_port);
    assert_eq!(ev["fd"], conn.as_raw_fd());
    // A port that is not an inference port is not reported.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other_port = other.local_addr().unwrap().port();
    let _c = std::net::TcpStream::connect(("127.0.0.1", other_port)).unwrap();
    let _a = other.accept().unwrap();
    // The marker: a second connection to the inference port, accepted after that one.
    let client = std::thread::spawn(move || std::net::TcpStream::connect(("127.0.0.1", port)).unwrap());
    let _again = listener.accept().unwrap();
    drop(client.join().unwrap());
    let accepts = agent.collect_until(
        secs(10),
        |v| v["kind"] == "net_accept" && v["local_port"] == other_port,
        |v| is(v, "net_accept", me()) && v["local_port"] == port,
    );
    assert!(
        accepts.last().is_some_and(|v| v["local_port"] == port),
        "the marker's accept was not reported: {accepts:#?}"
    );
    assert_eq!(
        accepts.len(),
        1,
        "a port that is no inference port was reported: {accepts:#?}"
    );
}

#[test]
fn exec_fork_exit_carry_lineage() {
    let dir = TempDir::new("exec");
    let mut agent = Agent::watching(&[dir.path()], &[]);
    // bash forks for `env` (a command follows it), env execs `true`, bash exits 3.
    let child = Command::new("bash")
        .args(["-c", "/usr/bin/env true; exit 3"])
        .spawn()
        .unwrap();
    let bash_pid = child.id();
    assert_eq!(child.wait_with_output().unwrap().status.code(), Some(3));
    let exec = agent
        .wait_for(secs(10), |v| is(v, "proc_exec", bash_pid))
        .expect("bash exec not reported");
    assert_eq!(exec["ppid"], me());
    assert!(exec["filename"].as_str().unwrap().ends_with("bash"), "{exec}");
    assert_eq!(exec["argv"][1], "-c");
    let fork = agent
        .wait_for(secs(10), |v| is(v, "proc_fork", bash_pid))
        .expect("fork not reported");
    let env_pid = fork["child_pid"].as_u64().unwrap() as u32;
    let env_exec = agent
        .wait_for(secs(10), |v| {
            is(v, "proc_exec", env_pid) && v["filename"] == "/usr/bin/env"
        })
        .expect("env exec");
    assert_eq!(env_exec["ppid"], bash_pid);
    assert_eq!(env_exec["argv"], serde_json::json!(["/usr/bin/env", "true"]));
    let ancestry = env_exec["process"]["ancestry"].as_array().unwrap();
    assert_eq!(ancestry[0]["pid"], bash_pid, "{ancestry:?}");
    assert_eq!(ancestry[1]["pid"], me(), "{ancestry:?}");
    let true_exec = agent
        .wait_for(secs(10), |v| {
            is(v, "proc_exec", env_pid) && v["filename"].as_str().is_some_and(|f| f.ends_with("/true"))
        })
        .expect("true exec");
    assert_eq!(true_exec["process"]["exe"], true_exec["filename"]);
    let env_exit = agent
        .wait_for(secs(10), |v| is(v, "proc_exit", env_pid))
        .expect("env exit");
    assert_eq!(env_exit["exit_code"], 0);
    let bash_exit = agent
        .wait_for(secs(10), |v| is(v, "proc_exit", bash_pid))
        .expect("bash exit");
    assert_eq!(bash_exit["exit_code"], 3 << 8, "wait-status encoding");
}

#[test]
fn gpu_device_opens_are_reported_by_major() {
    let dir = TempDir::new("gpu");
    // A fake NVIDIA node: no driver here, so the open fails (ENXIO) and is reported as an attempt.
    let node = dir.path().join("nvidia0");
    let dev = libc::makedev(195, 0);
    assert_eq!(
        // SAFETY: the C string lives until the end of the statement, after the call.
        unsafe { libc::mknod(cpath(&node).as_ptr(), libc::S_IFCHR | 0o666, dev) },
        0
    );
    // Major 1 (mem) stands in for a GPU whose open succeeds, via the configurable extra major.
    let mut agent = Agent::watching(&[dir.path()], &["--gpu-major", "1"]);
    // SAFETY: the C string lives until the end of the statement, after the call.
    let fd = unsafe { libc::open(cpath(&node).as_ptr(), libc::O_RDWR) };
    assert!(fd < 0, "fake node opened?");
    let ev = agent
        .wait_for(secs(10), |v| is(v, "gpu_open", me()) && v["major"] == 195)
        .expect("fake GPU open not reported");
    assert_eq!(ev["minor"], 0);
    assert_eq!(ev["device"], "nvidia0");
    assert_eq!(ev["path"], node.to_str().unwrap());
    assert!(
        ev["errno"]
            .as_i64()
            .is_some_and(|e| e == libc::ENXIO as i64 || e == libc::EACCES as i64),
        "{ev}"
    );
    let fd = open(Path::new("/dev/zero"), libc::O_RDONLY);
    let ev = agent
        .wait_for(secs(10), |v| {
            is(v, "gpu_open", me()) && v["major"] == 1 && v["minor"] == 5
        })
        .expect("GPU open not reported");
    assert_eq!(ev["fd"], fd);
    assert_eq!(ev["path"], "/dev/zero");
    assert!(ev["errno"].is_null());
    // Once per process and device.
    let fd2 = open(Path::new("/dev/zero"), libc::O_RDONLY);
    // The marker: this process's first open of another device of the major (/dev/null, 1:3),
    // which must be reported, after the second open of /dev/zero.
    let fd3 = open(Path::new("/dev/null"), libc::O_RDONLY);
    let opens = agent.collect_until(
        secs(10),
        |v| is(v, "gpu_open", me()) && v["major"] == 1 && v["minor"] == 5,
        |v| is(v, "gpu_open", me()) && v["major"] == 1 && v["minor"] == 3,
    );
    assert!(
        opens.last().is_some_and(|v| v["minor"] == 3),
        "the marker's open was not reported: {opens:?}"
    );
    assert_eq!(
        opens.len(),
        1,
        "a second open of the same device was reported: {opens:?}"
    );
    // SAFETY: the three descriptors were opened by this test and are not used after this.
    unsafe {
        libc::close(fd);
        libc::close(fd2);
        libc::close(fd3);
    }
}

#[test]
fn io_uring_reads_of_watched_files_are_reported() {
    let dir = TempDir::new("uring");
    let path = dir.path().join("model.safetensors");
    let size: usize = 3 * 1024 * 1024 + 5;
    let ino = write_safetensors(&path, size);
    let mut agent = Agent::watching(&[dir.path()], &[]);
    let hook = agent.ready["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["hook"] == "raw_tracepoint/io_uring_complete")
        .cloned()
        .unwrap();
    assert_eq!(hook["attached"], true, "{hook}");
    let file = std::fs::File::open(&path).unwrap();
    let mut ring = io_uring::IoUring::new(8).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut off: u64 = 0;
    loop {
        let sqe = io_uring::opcode::Read::new(
            io_uring::types::Fd(file.as_raw_fd()),
            buf.as_mut_ptr(),
            buf.len() as u32,
        )
        .offset(off)
        .build();
        // SAFETY: the read's buffer (buf) and file outlive the submission: the loop waits for
        // its completion before either is touched or dropped.
        unsafe { ring.submission().push(&sqe).unwrap() };
        ring.submit_and_wait(1).unwrap();
        let cqe = ring.completion().next().unwrap();
        assert!(cqe.result() >= 0);
        if cqe.result() == 0 {
            break;
        }
        off += cqe.result() as u64;
    }
    assert_eq!(off, size as u64);
    let ours = |v: &Value| is(v, "file_read", me()) && v["file"]["ino"] == ino && v["syscall"] == "io_uring";
    let mut events = Vec::new();
    let deadline = std::time::Instant::now() + secs(10);
    while sum_bytes(&events) < size as u64 && std::time::Instant::now() < deadline {
        if let Some(v) = agent.wait_for(secs(1), ours) {
            events.push(v);
        }
    }
    assert_eq!(sum_bytes(&events), size as u64, "{events:#?}");
    // Summed in the kernel per process and open file: completions as they cross the report
    // threshold, the rest when the agent sweeps.
    assert!(
        events
            .iter()
            .all(|v| v["reason"] == "io_uring" || v["reason"] == "flush"),
        "{events:#?}"
    );
    assert_eq!(
        events[0]["reason"], "io_uring",
        "the first completion is reported at once"
    );
}

/// fio's io_uring engine reading a whole model: every byte counted, attributed to fio.
#[test]
fn fio_io_uring_whole_file_read_is_counted() {
    let dir = TempDir::new("fio");
    let path = dir.path().join("model.safetensors");
    // A whole number of fio blocks (fio reads no partial last block), not of report thresholds.
    let size = 8 * 1024 * 1024 + 128 * 1024;
    let ino = write_safetensors(&path, size);
    let mut agent = Agent::watching(&[dir.path()], &[]);
    let child = Command::new("fio")
        .args([
            "--name=llmwatch",
            "--rw=read",
            "--bs=128k",
            "--ioengine=io_uring",
            "--iodepth=4",
        ])
        .arg(format!("--filename={}", path.display()))
        .arg(format!("--size={size}"))
        .arg("--output=/dev/null")
        .spawn()
        .expect("fio (Debian's fio package; cargo xtask test installs it)");
    let pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    let reads = agent.collect_until(
        secs(20),
        |v| v["kind"] == "file_read" && v["file"]["ino"] == ino,
        |v| is(v, "proc_exit", pid),
    );
    let bytes: u64 = reads
        .iter()
        .filter(|v| v["kind"] == "file_read")
        .map(|v| v["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(bytes, size as u64, "{reads:#?}");
    assert!(
        reads
            .iter()
            .filter(|v| v["kind"] == "file_read")
            .all(|v| v["task"]["comm"].as_str().unwrap().starts_with("fio")),
        "{reads:#?}"
    );
}

/// `llmwatch check` tries fentry for real; where it loads, the agent must take the fast path
/// (per-syscall fexit programs, no `sys_exit` hook), and where it is refused, the tracepoint
/// path with the refusal said. Which one ran is printed, so a run's log shows it.
#[test]
fn the_fast_path_is_chosen_exactly_where_fentry_loads() {
    let out = Command::new(llmwatch_e2e::agent_binary())
        .args(["check", "--json"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let fentry_ok = report["program_types"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["program_type"] == "fentry" && t["ok"] == true);
    let dir = TempDir::new("hook-path");
    write_safetensors(&dir.path().join("m.safetensors"), 4096);
    let agent = Agent::watching(&[dir.path()], &[]);
    let ready = &agent.ready;
    eprintln!(
        "hook path: {} (fentry loads here: {fentry_ok}; fallback: {})",
        ready["hook_path"], ready["hook_path_fallback"]
    );
    let attached: Vec<&str> = ready["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["attached"] == true)
        .filter_map(|h| h["hook"].as_str())
        .collect();
    // check and the agent agree.
    assert_eq!(report["hook_path"], ready["hook_path"], "{report:#}");
    if fentry_ok {
        assert_eq!(ready["hook_path"], "fentry", "{ready:#}");
        assert!(ready["hook_path_fallback"].is_null(), "{ready:#}");
        assert!(attached.iter().any(|h| h.starts_with("fexit/")), "{attached:?}");
        assert!(!attached.iter().any(|h| h.ends_with("/sys_exit")), "{attached:?}");
        assert!(
            ready["data_paths"]["reads"]
                .as_str()
                .unwrap()
                .starts_with("per-syscall fexit"),
            "{ready:#}"
        );
        // Every descriptor installed is seen with its file (`fd_install`), not only those the
        // syscall hooks parse.
        assert!(attached.contains(&"fentry/fd_install"), "{attached:?}");
        assert!(
            ready["data_paths"]["descriptors"]
                .as_str()
                .unwrap()
                .starts_with("fentry/fd_install"),
            "{ready:#}"
        );
    } else {
        assert_eq!(ready["hook_path"], "tracepoint", "{ready:#}");
        let why = ready["hook_path_fallback"].as_str().unwrap_or("");
        assert!(why.contains("EPERM") || why.contains("BTF"), "{ready:#}");
        assert!(attached.iter().any(|h| h.ends_with("/sys_exit")), "{attached:?}");
        assert!(
            ready["degraded"].as_array().unwrap().iter().any(|l| l
                .as_str()
                .unwrap()
                .starts_with("per-syscall fexit hooks not used")),
            "{ready:#}"
        );
    }
    // Forcing the tracepoint path works on either kernel.
    let forced = Agent::watching(&[dir.path()], &["--syscall-hook", "tracepoint"]);
    assert_eq!(forced.ready["hook_path"], "tracepoint", "{}", forced.ready);
    assert!(
        forced.ready["hook_path_fallback"]
            .as_str()
            .is_some_and(|w| w.starts_with("not tried")),
        "{}",
        forced.ready
    );
}

#[test]
fn check_reports_each_program_type() {
    let out = Command::new(llmwatch_e2e::agent_binary())
        .args(["check", "--json"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert!(
        out.status.success(),
        "minimum missing on the test host: {report:#}"
    );
    assert_eq!(report["minimum_ok"], true);
    let types = report["program_types"].as_array().unwrap();
    let names: Vec<&str> = types
        .iter()
        .map(|t| t["program_type"].as_str().unwrap())
        .collect();
    for t in [
        "raw_tracepoint",
        "tracepoint",
        "tp_btf",
        "fentry",
        "kprobe",
        "lsm",
        "cgroup_sock_addr",
    ] {
        assert!(names.contains(&t), "{t} not probed");
    }
    let raw = types
        .iter()
        .find(|t| t["program_type"] == "raw_tracepoint")
        .unwrap();
    assert_eq!(raw["ok"], true, "{raw}");
    for t in types {
        // Every refusal says what failed; none is a bare "false".
        assert!(
            t["ok"] == true || t["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{t}"
        );
    }
    assert!(
        report["hooks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["required"] == true)
            .all(|h| h["attached"] == true)
    );
    // Which path each kind of data takes here, and the same choice as the agent makes.
    let paths = &report["data_paths"];
    for what in ["reads", "sends", "mmap_touch", "io_uring", "descriptors"] {
        assert!(paths[what].as_str().is_some_and(|p| !p.is_empty()), "{paths}");
    }
    let hooks = report["hooks"].as_array().unwrap();
    let attached = |hook: &str| hooks.iter().any(|h| h["hook"] == hook && h["attached"] == true);
    assert_eq!(
        paths["sends"].as_str().unwrap().starts_with("sock_send_length"),
        attached("raw_tracepoint/sock_send_length"),
        "{paths} {hooks:#?}"
    );
}
