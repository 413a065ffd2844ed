//! What a person running `llmwatch run` sees: text at a terminal (a pseudo-terminal here, as a
//! shell gives one), `--output text` anywhere, JSON when stdout is a pipe and nothing was asked.
use std::{
    io::{BufRead, BufReader},
    os::fd::{FromRawFd, OwnedFd},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, channel},
    time::{Duration, Instant},
};

use llmwatch_e2e::{TempDir, agent_binary, require_root, secs, write_safetensors};

/// `llmwatch run` with its stdout on a terminal or a pipe: each line it prints (a terminal's
/// CR removed) in `lines`, each line of its log (stderr, also passed through) in `log`.
struct Run {
    child: Child,
    lines: Receiver<String>,
    log: Receiver<String>,
    seen: Vec<String>,
    _state: TempDir,
}

/// Each line `from` gives, to the receiver (and to our stderr when `echo`).
fn lines_of(from: impl std::io::Read + Send + 'static, echo: bool) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if echo {
                eprintln!("{line}");
            }
            if tx.send(line.trim_end_matches('\r').to_string()).is_err() {
                break;
            }
        }
    });
    rx
}

impl Run {
    fn start(args: &[&str], terminal: bool) -> Run {
        require_root();
        let state = TempDir::new("output-state");
        let mut cmd = Command::new(agent_binary());
        cmd.arg("run")
            .args(["--metrics-addr", "127.0.0.1:0", "--state-dir"])
            .arg(state.path())
            .args(args)
            .env_remove("NO_COLOR")
            .env_remove("RUST_LOG")
            .env("TERM", "xterm")
            .stderr(Stdio::piped());
        let (mut child, lines) = if terminal {
            let (master, slave) = openpty();
            cmd.stdout(Stdio::from(slave));
            let child = cmd.spawn().expect("starting llmwatch");
            // Our copy of the slave goes with `cmd`: once the agent has gone the master reads
            // EIO, which ends the reader.
            drop(cmd);
            (child, lines_of(std::fs::File::from(master), false))
        } else {
            cmd.stdout(Stdio::piped());
            let mut child = cmd.spawn().expect("starting llmwatch");
            let out = child.stdout.take().unwrap();
            (child, lines_of(out, false))
        };
        let log = lines_of(child.stderr.take().unwrap(), true);
        Run {
            child,
            lines,
            log,
            seen: Vec::new(),
            _state: state,
        }
    }

    /// The first line matching `pred` within `timeout` (lines before it are kept in `seen`).
    fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if pred(&l) => return Some(l),
                Ok(l) => self.seen.push(l),
                Err(_) => return None,
            }
        }
    }

    /// The lines following the one just waited for, up to the first that is not indented.
    fn block(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(secs(5)) {
            if !l.starts_with("  ") {
                self.seen.push(l);
                break;
            }
            out.push(l);
        }
        out
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        llmwatch_e2e::terminate(&mut self.child);
    }
}

/// A pseudo-terminal: (master, slave).
fn openpty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors into the ints we pass; name, termios and window
    // size are optional (null).
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both were just opened by openpty and are owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

fn model_dir() -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new("output");
    let model = dir.path().join("model.safetensors");
    write_safetensors(&model, 300_000);
    (dir, model)
}

/// `cat FILE`; its pid.
fn cat(model: &Path) -> u32 {
    let c = Command::new("cat")
        .arg(model)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = c.id();
    c.wait_with_output().unwrap();
    pid
}

fn is_json(line: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(line).is_ok()
}

/// `line` without its ANSI colour escapes (`ESC [ ... m`).
fn strip_colour(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn at_a_terminal_run_prints_text_a_person_reads() {
    let (dir, model) = model_dir();
    let mut run = Run::start(&["--model-dir", dir.path().to_str().unwrap()], true);
    let ready = run
        .wait_for(secs(60), |l| l.contains("llmwatch ready:"))
        .unwrap_or_else(|| panic!("no start-up summary at a terminal; printed: {:#?}", run.seen));
    // A terminal with NO_COLOR unset: coloured.
    assert!(ready.contains("\x1b[1;32mllmwatch ready:\x1b[0m"), "{ready:?}");
    assert!(
        ready.contains(&format!(
            "watching 1 file (293.0 KiB) under {}",
            dir.path().display()
        )),
        "{ready:?}"
    );
    let summary = run.block();
    let joined = summary.join("\n");
    for field in [
        "hooks:",
        "reads:",
        "sends:",
        "mmap_touch:",
        "io_uring:",
        "directory changes:",
        "metrics:",
        "alerts:",
        "degraded",
    ] {
        // The words, whatever colour they are printed in ("degraded" is yellow when it lists
        // something).
        assert!(
            summary
                .iter()
                .any(|l| strip_colour(l).trim_start().starts_with(field)),
            "the summary has no {field:?} line:\n{joined}"
        );
    }
    assert!(summary.len() < 30, "the start-up summary is not short:\n{joined}");
    assert!(
        !run.seen.iter().any(|l| is_json(l)),
        "JSON at a terminal: {:#?}",
        run.seen
    );
    let pid = cat(&model);
    let line = run
        .wait_for(secs(15), |l| l.contains(&format!("process=cat[{pid}]")))
        .unwrap_or_else(|| panic!("no alert line for cat {pid}; printed: {:#?}", run.seen));
    assert!(!is_json(&line), "{line}");
    assert!(line.contains("weight.unexpected_reader"), "{line:?}");
}

#[test]
fn output_text_names_time_severity_status_rule_summary_process_and_pod() {
    let (dir, model) = model_dir();
    // The reader runs in a pod's cgroup, named the way the kubelet's cgroupfs driver names it;
    // made before the agent starts, so its index of cgroups has it from the beginning.
    let pod = format!(
        "0e2e{:04x}-aaaa-4bbb-8ccc-{:012x}",
        std::process::id() & 0xffff,
        std::process::id()
    );
    let cgroup = cgroup2_mount()
        .join("kubepods/besteffort")
        .join(format!("pod{pod}"));
    std::fs::create_dir_all(&cgroup).unwrap_or_else(|e| panic!("creating {}: {e}", cgroup.display()));
    assert!(
        cgroup.join("cgroup.procs").exists(),
        "{} is not a cgroup (no cgroup.procs)",
        cgroup.display()
    );
    let _remove = RemoveCgroups(vec![
        cgroup.clone(),
        cgroup.parent().unwrap().to_path_buf(),
        cgroup.parent().unwrap().parent().unwrap().to_path_buf(),
    ]);
    let mut run = Run::start(
        &["--model-dir", dir.path().to_str().unwrap(), "--output", "text"],
        false,
    );
    run.wait_for(secs(60), |l| l.contains("llmwatch ready:"))
        .unwrap_or_else(|| panic!("no start-up summary; printed: {:#?}", run.seen));
    let summary = run.block();
    let hooks = summary
        .iter()
        .find(|l| l.trim_start().starts_with("hooks:"))
        .unwrap_or_else(|| panic!("no hooks line: {summary:#?}"));
    // The path chosen (here, where fentry is refused, the tracepoint path) and its hook.
    assert!(
        hooks.contains(" attached; tracepoint path: syscalls through ") && hooks.contains("/sys_exit")
            || hooks.contains(" attached; fentry path: syscalls through fexit/"),
        "{hooks}"
    );
    // A pipe is not a terminal: no colour even though text was asked for.
    assert!(!summary.iter().any(|l| l.contains('\x1b')), "{summary:#?}");

    let reader = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec cat {} > /dev/null",
            cgroup.display(),
            model.display()
        ))
        .spawn()
        .unwrap();
    let pid = reader.id();
    let status = reader.wait_with_output().unwrap().status;
    assert!(
        status.success(),
        "the reader in the pod's cgroup failed: {status}"
    );

    let line = run
        .wait_for(secs(15), |l| l.contains(&format!("process=cat[{pid}]")))
        .unwrap_or_else(|| panic!("no alert line for cat {pid}; printed: {:#?}", run.seen));
    // 2026-11-23 10:00:05Z HIGH     opened    weight.unexpected_reader  SUMMARY  process=… user=… pod=…  (…)
    let (date, rest) = line.split_once(' ').unwrap();
    let (clock, rest) = rest.split_once(' ').unwrap();
    assert!(
        date.len() == 10 && date.as_bytes()[4] == b'-' && clock.len() == 9 && clock.ends_with('Z'),
        "no time first: {line}"
    );
    let words: Vec<&str> = rest.split_whitespace().collect();
    assert_eq!(
        &words[..3],
        ["HIGH", "opened", "weight.unexpected_reader"],
        "{line}"
    );
    assert!(
        line.contains(&format!("read 293.0 KiB of {} (100%)", model.display())),
        "no summary naming the file: {line}"
    );
    assert!(
        line.contains(&format!("process=cat[{pid}] user=root pod={pod}")),
        "process and pod not named: {line}"
    );
    assert!(line.contains("(incident "), "{line}");
}

#[test]
fn a_piped_run_prints_json_lines() {
    let (dir, model) = model_dir();
    let mut run = Run::start(&["--model-dir", dir.path().to_str().unwrap()], false);
    // Piped, the start-up report goes to the log as JSON; `agent_ready` there is the marker.
    let deadline = Instant::now() + secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let l = run.log.recv_timeout(left).expect("no agent_ready in the log");
        if l.contains("\"kind\":\"agent_ready\"") {
            break;
        }
    }
    let pid = cat(&model);
    let line = run
        .wait_for(secs(15), |l| l.contains(&format!("\"pid\":{pid},")))
        .unwrap_or_else(|| panic!("no alert for cat {pid}; printed: {:#?}", run.seen));
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(v["rule"], "weight.unexpected_reader", "{line}");
    assert_eq!(v["process"]["pid"], pid, "{line}");
    assert!(run.seen.iter().all(|l| is_json(l)), "{:#?}", run.seen);
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
/// hybrid hosts), from /proc/self/mountinfo.
fn cgroup2_mount() -> std::path::PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(Into::into))?
        })
        .expect("this host has no cgroup v2 hierarchy mounted: pod identity cannot be tested")
}

struct RemoveCgroups(Vec<std::path::PathBuf>);

impl Drop for RemoveCgroups {
    fn drop(&mut self) {
        // Innermost first; a parent another test still uses stays (rmdir refuses).
        for d in &self.0 {
            let _ = std::fs::remove_dir(d);
        }
    }
}
