//! A descriptor of a watched file is followed wherever it goes: bytes read through it are
//! counted, exactly, and attributed to the process that reads, however that process got it
//! (opened it, inherited it, was handed it in a shell redirect, received it over a unix
//! socket, took it with pidfd_getfd, opened it through io_uring or by file handle, or held it
//! since before the agent started). Real processes, real syscalls, the real agent (root).
use std::{path::PathBuf, process::Command};

use llmwatch_e2e::{Agent, TempDir, Tool, Value, bytes_until_exit, is, secs, tcp_sink, write_safetensors};

const FDTOOL: &str = env!("CARGO_BIN_EXE_fdtool");

/// A model of a size no report threshold divides, in a directory of its own.
fn model(tag: &str) -> (TempDir, PathBuf, u64, u64) {
    let dir = TempDir::new(tag);
    let path = dir.path().join("model.safetensors");
    let size: u64 = 5 * 1024 * 1024 + 4321;
    let ino = write_safetensors(&path, size as usize);
    (dir, path, size, ino)
}

fn read_of(ino: u64) -> impl Fn(&Value) -> bool {
    move |v: &Value| v["kind"] == "file_read" && v["file"]["ino"] == ino
}

/// Runs `bash -c script`, returns its pid once it exited successfully.
fn bash(script: &str) -> u32 {
    let out = Command::new("bash").arg("-c").arg(script).spawn().unwrap();
    let pid = out.id();
    let status = out.wait_with_output().unwrap().status;
    assert!(status.success(), "bash -c {script}: {status:?}");
    pid
}

/// Bytes of `ino` read by each process until `marker` exited, by (pid, comm).
fn readers(agent: &mut Agent, ino: u64, marker: u32) -> std::collections::BTreeMap<(u64, String), u64> {
    let (_, reads) = bytes_until_exit(agent, marker, read_of(ino));
    let mut by = std::collections::BTreeMap::new();
    for r in reads {
        let key = (
            r["task"]["pid"].as_u64().unwrap(),
            r["task"]["comm"].as_str().unwrap().to_string(),
        );
        *by.entry(key).or_insert(0) += r["bytes"].as_u64().unwrap();
    }
    by
}

/// The one process (by comm) that read, and how much.
fn only_reader(by: &std::collections::BTreeMap<(u64, String), u64>, comm: &str) -> (u64, u64) {
    let hits: Vec<_> = by.iter().filter(|((_, c), _)| c == comm).collect();
    assert_eq!(hits.len(), 1, "expected one {comm} reader: {by:?}");
    let ((pid, _), bytes) = hits[0];
    (*pid, *bytes)
}

#[test]
fn a_shell_redirect_into_nc_is_read_and_sent_by_nc() {
    let (dir, path, size, ino) = model("redirect");
    let mut agent = Agent::watching(&[dir.path()], &[]);
    let (port, sink) = tcp_sink();
    // The shell opens the file; nc, exec'd in the child, reads it from its stdin.
    let sh = bash(&format!("nc -N 127.0.0.1 {port} < {}; true", path.display()));
    assert_eq!(sink.join().unwrap(), size);
    let by = readers(&mut agent, ino, sh);
    let (nc, bytes) = only_reader(&by, "nc");
    assert_eq!(bytes, size, "{by:?}");
    assert_ne!(nc, u64::from(sh));
    // And what it sent, attributed to nc too.
    let sent: u64 = agent
        .collect_for(secs(0), |v| {
            v["kind"] == "net_send" && v["task"]["pid"] == nc && v["port"] == port
        })
        .iter()
        .map(|v| v["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(sent, size);
}

#[test]
fn a_descriptor_opened_by_the_shell_is_read_by_its_child() {
    let (dir, path, size, ino) = model("inherit");
    let mut agent = Agent::watching(&[dir.path()], &[]);
    let sh = bash(&format!("exec 3< {}; cat <&3 > /dev/null", path.display()));
    let by = readers(&mut agent, ino, sh);
    let (cat, bytes) = only_reader(&by, "cat");
    assert_eq!(bytes, size, "{by:?}");
    // The child says how it got the descriptor.
    let got = agent
        .collect_for(secs(0), |v| v["kind"] == "file_open" && v["task"]["pid"] == cat)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no file_open for cat {cat}"));
    assert_eq!(got["origin"], "inherited", "{got}");
}

#[test]
fn python_subprocess_with_stdin_from_an_open_model_is_read_by_the_child() {
    let (dir, path, size, ino) = model("subprocess");
    let mut agent = Agent::watching(&[dir.path()], &[]);
    let script = format!(
        "import subprocess\nsubprocess.run(['cat'], stdin=open({:?}, 'rb'), stdout=subprocess.DEVNULL, check=True)",
        path.display().to_string()
    );
    let py = Command::new("python3").arg("-c").arg(&script).spawn().unwrap();
    let pid = py.id();
    assert!(py.wait_with_output().unwrap().status.success());
    let by = readers(&mut agent, ino, pid);
    let (_, bytes) = only_reader(&by, "cat");
    assert_eq!(bytes, size, "{by:?}");
    let by_python: u64 = by
        .iter()
        .filter(|((p, _), _)| *p == u64::from(pid))
        .map(|(_, b)| b)
        .sum();
    assert_eq!(by_python, 0, "python only opened it: {by:?}");
}

#[test]
fn a_descriptor_passed_over_a_unix_socket_is_read_by_the_receiver() {
    // The first descriptor of a message: the syscall hooks parse it, so every path follows it.
    received_by_another_process(
        "scm-rights",
        "recv-read",
        "0",
        ("received", "recvmsg"),
        Followed::Everywhere,
    );
}

/// The syscall hooks parse the first 8 descriptors of a message: a weight file passed ninth,
/// behind eight of /dev/null, is what a reader of README "Limits" tries. Where `fd_install` is
/// hooked (the fast path) every descriptor is seen as the kernel installs it, and the receiver
/// is followed whole; elsewhere the test says so.
#[test]
fn a_descriptor_passed_ninth_in_one_message_is_followed_where_fd_install_is_hooked() {
    received_by_another_process(
        "scm-rights-ninth",
        "recv-read",
        "8",
        ("received", "recvmsg"),
        Followed::WhereFdInstallIsHooked("the ninth descriptor"),
    );
}

/// SCM_RIGHTS received through io_uring (IORING_OP_RECVMSG) passes no syscall the hooks parse:
/// followed where `fd_install` is hooked, and said otherwise.
#[test]
fn a_descriptor_received_through_io_uring_recvmsg_is_followed_where_fd_install_is_hooked() {
    received_by_another_process(
        "uring-recvmsg",
        "uring-recv-read",
        "0",
        ("io_uring", "io_uring"),
        Followed::WhereFdInstallIsHooked("a descriptor received through io_uring"),
    );
}

/// Which kernels follow a descriptor received some way.
enum Followed {
    /// Every path: the syscall hooks parse it.
    Everywhere,
    /// Only where `fd_install` is hooked (the fast path); elsewhere the test prints NOT
    /// followed with both figures. The text names the descriptor.
    WhereFdInstallIsHooked(&'static str),
}

/// A model passed over a unix socket (after `padding` descriptors of /dev/null in the same
/// message) to fdtool's `receiver` command, which reads it all: counted whole, its `file_open`
/// with `(origin, syscall)`, where `followed` says it is.
fn received_by_another_process(
    tag: &str,
    receiver: &str,
    padding: &str,
    (origin, syscall): (&str, &str),
    followed: Followed,
) {
    let (dir, path, size, ino) = model(tag);
    let mut agent = Agent::watching(&[dir.path()], &[]);
    let how = agent.ready["data_paths"]["descriptors"]
        .as_str()
        .expect("agent_ready.data_paths.descriptors")
        .to_string();
    let sock = dir.path().join("pass.sock");
    let sock = sock.to_str().unwrap();
    let mut receiver = Tool::spawn(FDTOOL, &[receiver, sock]);
    receiver.expect("listening");
    let mut sender = Tool::spawn(FDTOOL, &["send-fd", sock, path.to_str().unwrap(), padding]);
    sender.expect("sent");
    sender.finish();
    let padding: usize = padding.parse().unwrap();
    assert_eq!(receiver.expect("fds"), (padding + 1).to_string());
    assert_eq!(receiver.expect("read"), size.to_string());
    let rpid = receiver.pid();
    receiver.finish();
    let (bytes, reads) = bytes_until_exit(&mut agent, rpid, |v| read_of(ino)(v) && v["task"]["pid"] == rpid);
    if let Followed::WhereFdInstallIsHooked(what) = followed
        && !how.starts_with("fentry/fd_install")
    {
        println!(
            "NOT followed on this kernel ({how}): the receiver read {size} bytes of {what}, the agent counted {bytes}"
        );
        return;
    }
    assert_eq!(bytes, size, "{reads:#?}");
    let got = agent
        .collect_for(secs(0), |v| is(v, "file_open", rpid))
        .into_iter()
        .next()
        .expect("the receiver's file_open");
    assert_eq!(
        (got["origin"].as_str(), got["syscall"].as_str()),
        (Some(origin), Some(syscall)),
        "{got}"
    );
}

#[test]
fn a_descriptor_taken_with_pidfd_getfd_is_read_by_the_taker() {
    let (dir, path, size, ino) = model("pidfd");
    let mut agent = Agent::watching(&[dir.path()], &[]);
    let mut holder = Tool::spawn(FDTOOL, &["hold", path.to_str().unwrap()]);
    let fd = holder.expect("fd");
    let pid = holder.pid().to_string();
    let mut thief = Tool::spawn(FDTOOL, &["getfd", &pid, &fd]);
    assert_eq!(thief.expect("read"), size.to_string());
    let tpid = thief.pid();
    thief.finish();
    let (bytes, reads) = bytes_until_exit(&mut agent, tpid, |v| read_of(ino)(v) && v["task"]["pid"] == tpid);
    assert_eq!(bytes, size, "{reads:#?}");
    let got = agent
        .collect_for(secs(0), |v| is(v, "file_open", tpid))
        .into_iter()
        .next()
        .expect("the taker's file_open");
    assert_eq!(got["origin"], "pidfd_getfd", "{got}");
    // The holder's own reads (the shared file offset moved: it reads what is left) are its own.
    holder.step();
    let left: u64 = holder.expect("read").parse().unwrap();
    let hpid = holder.pid();
    holder.finish();
    let (bytes, _) = bytes_until_exit(&mut agent, hpid, |v| read_of(ino)(v) && v["task"]["pid"] == hpid);
    assert_eq!(bytes, left);
}

#[test]
fn a_descriptor_opened_before_the_agent_started_is_counted_from_its_next_read() {
    let (dir, path, size, ino) = model("before");
    let mut holder = Tool::spawn(FDTOOL, &["hold", path.to_str().unwrap()]);
    holder.expect("fd");
    let mut agent = Agent::watching(&[dir.path()], &[]);
    let seeded = &agent.ready["seeded"];
    assert!(seeded["processes"].as_u64().unwrap() >= 1, "{seeded}");
    assert!(seeded["descriptors"].as_u64().unwrap() >= 1, "{seeded}");
    holder.step();
    assert_eq!(holder.expect("read"), size.to_string());
    let pid = holder.pid();
    holder.finish();
    let (bytes, reads) = bytes_until_exit(&mut agent, pid, |v| read_of(ino)(v) && v["task"]["pid"] == pid);
    assert_eq!(bytes, size, "{reads:#?}");
    assert_eq!(reads[0]["task"]["comm"], "fdtool");
}

#[test]
fn a_file_opened_through_io_uring_then_read_with_read_is_counted() {
    let (dir, path, size, ino) = model("uring-open");
    let mut agent = Agent::watching(&[dir.path()], &[]);
    let mut tool = Tool::spawn(FDTOOL, &["uring-open-read", path.to_str().unwrap()]);
    assert_eq!(tool.expect("read"), size.to_string());
    let pid = tool.pid();
    tool.finish();
    let (bytes, reads) = bytes_until_exit(&mut agent, pid, |v| read_of(ino)(v) && v["task"]["pid"] == pid);
    assert_eq!(bytes, size, "{reads:#?}");
    let got = agent
        .collect_for(secs(0), |v| is(v, "file_open", pid))
        .into_iter()
        .next()
        .expect("a file_open for the io_uring open");
    assert_eq!(got["origin"], "io_uring", "{got}");
}

#[test]
fn a_file_opened_by_handle_is_counted() {
    let (dir, path, size, ino) = model("by-handle");
    let mut agent = Agent::watching(&[dir.path()], &[]);
    let mut tool = Tool::spawn(FDTOOL, &["handle-open-read", path.to_str().unwrap()]);
    assert_eq!(tool.expect("read"), size.to_string());
    let pid = tool.pid();
    tool.finish();
    let (bytes, reads) = bytes_until_exit(&mut agent, pid, |v| read_of(ino)(v) && v["task"]["pid"] == pid);
    assert_eq!(bytes, size, "{reads:#?}");
    let got = agent
        .collect_for(secs(0), |v| is(v, "file_open", pid))
        .into_iter()
        .next()
        .expect("a file_open for open_by_handle_at");
    assert_eq!(got["syscall"], "open_by_handle_at", "{got}");
}

#[test]
fn a_descriptor_number_reused_by_dup2_stops_counting_for_the_old_file() {
    let (dir, path, _, ino) = model("dup2");
    let mut agent = Agent::watching(&[dir.path()], &[]);
    let n: u64 = 1_234_567;
    let mut tool = Tool::spawn(FDTOOL, &["dup2-over", path.to_str().unwrap(), &n.to_string()]);
    assert_eq!(tool.expect("read"), n.to_string());
    let pid = tool.pid();
    tool.finish();
    let (bytes, reads) = bytes_until_exit(&mut agent, pid, |v| read_of(ino)(v) && v["task"]["pid"] == pid);
    assert_eq!(bytes, n, "{reads:#?}");
    let last = reads.last().unwrap();
    assert_eq!(
        last["reason"], "close",
        "dup2 over it ended the old file's count: {reads:#?}"
    );
    assert_eq!(last["syscall"], "dup2");
}
