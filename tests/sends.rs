//! Bytes sent are counted for the process trees that got hold of weights (and inference
//! servers), on every kernel: where `sock_send_length` exists, and at syscall exit and io_uring
//! completion where it does not (6.1). Senders that never touched a weight file are not looked
//! at (that is what keeps every other send on the host cheap). Real sockets (root).
use std::{path::PathBuf, process::Command};

use llmwatch_e2e::{Agent, TempDir, Tool, Value, bytes_until_exit, is, secs, tcp_sink, write_safetensors};

const FDTOOL: &str = env!("CARGO_BIN_EXE_fdtool");

fn model(tag: &str) -> (TempDir, PathBuf, u64) {
    let dir = TempDir::new(tag);
    let path = dir.path().join("model.safetensors");
    let size: u64 = 3 * 1024 * 1024 + 777;
    write_safetensors(&path, size as usize);
    (dir, path, size)
}

fn bash(script: &str) -> u32 {
    let child = Command::new("bash").arg("-c").arg(script).spawn().unwrap();
    let pid = child.id();
    let status = child.wait_with_output().unwrap().status;
    assert!(status.success(), "bash -c {script}: {status:?}");
    pid
}

/// Every test runs on the path this kernel chose and on the syscall path (what kernels without
/// `sock_send_length` use), forced.
const SEND_PATHS: [&[&str]; 2] = [&[], &["--send-path", "syscalls"]];

fn sent_to(port: u16) -> impl Fn(&Value) -> bool {
    move |v: &Value| v["kind"] == "net_send" && v["port"] == port
}

#[test]
fn senders_outside_reader_trees_are_not_counted_and_cat_piped_to_nc_is() {
    for opts in SEND_PATHS {
        send_filter(opts);
    }
}

fn send_filter(opts: &[&str]) {
    let (dir, path, size) = model("send-filter");
    let mut agent = Agent::watching(&[dir.path()], opts);

    // Nothing in this shell's tree has touched a weight file.
    let (port, sink) = tcp_sink();
    let sh = bash(&format!("head -c 1048576 /dev/zero > /dev/tcp/127.0.0.1/{port}"));
    assert_eq!(sink.join().unwrap(), 1 << 20);
    // Connections are reported for everyone: the marker that the agent saw this sender.
    let connect = agent
        .wait_for(secs(10), |v| v["kind"] == "net_connect" && v["port"] == port)
        .expect("the connect is reported");
    let head = connect["task"]["pid"].as_u64().unwrap() as u32;
    let (sent, sends) = bytes_until_exit(&mut agent, sh, sent_to(port));
    assert_eq!(sent, 0, "an unrelated sender's bytes were counted: {sends:#?}");
    assert!(
        agent.collect_for(secs(0), |v| is(v, "proc_exit", head)).len() == 1,
        "its exit was seen, so any count would have been swept"
    );

    // The reader (cat) and the sender (nc) are siblings.
    let (port, sink) = tcp_sink();
    let sh = bash(&format!("cat {} | nc -N 127.0.0.1 {port}", path.display()));
    assert_eq!(sink.join().unwrap(), size);
    let (sent, sends) = bytes_until_exit(&mut agent, sh, sent_to(port));
    assert_eq!(sent, size, "{opts:?}: {sends:#?}");
    assert!(sends.iter().all(|v| v["task"]["comm"] == "nc"), "{sends:#?}");
}

#[test]
fn python_socket_sendfile_of_a_model_is_counted() {
    for opts in SEND_PATHS {
        python_sendfile(opts);
    }
}

fn python_sendfile(opts: &[&str]) {
    let (dir, path, size) = model("sendfile");
    let mut agent = Agent::watching(&[dir.path()], opts);
    let (port, sink) = tcp_sink();
    let script = format!(
        "import socket\ns = socket.create_connection(('127.0.0.1', {port}))\ns.sendfile(open({:?}, 'rb'))",
        path.display().to_string()
    );
    let py = Command::new("python3").arg("-c").arg(&script).spawn().unwrap();
    let pid = py.id();
    assert!(py.wait_with_output().unwrap().status.success());
    assert_eq!(sink.join().unwrap(), size);
    let (sent, sends) = bytes_until_exit(&mut agent, pid, |v| sent_to(port)(v) && v["task"]["pid"] == pid);
    assert_eq!(sent, size, "{opts:?}: {sends:#?}");
}

#[test]
fn sendfile_and_io_uring_sends_of_a_model_are_counted() {
    for opts in SEND_PATHS {
        sendfile_and_uring(opts);
    }
}

fn sendfile_and_uring(opts: &[&str]) {
    let (dir, path, size) = model("uring-send");
    let mut agent = Agent::watching(&[dir.path()], opts);
    for how in ["sendfile", "uring-send"] {
        let (port, sink) = tcp_sink();
        let mut tool = Tool::spawn(
            FDTOOL,
            &[how, path.to_str().unwrap(), "127.0.0.1", &port.to_string()],
        );
        assert_eq!(tool.expect("sent"), size.to_string());
        let pid = tool.pid();
        tool.finish();
        assert_eq!(sink.join().unwrap(), size);
        let (sent, sends) =
            bytes_until_exit(&mut agent, pid, |v| sent_to(port)(v) && v["task"]["pid"] == pid);
        assert_eq!(sent, size, "{how} {opts:?}: {sends:#?}");
        assert!(
            sends
                .iter()
                .all(|v| v["dest"] == "127.0.0.1" && v["proto"] == "tcp")
        );
    }
}
