//! Harness for the end-to-end scenarios: runs the real `llmwatch events` binary and reads its
//! JSON lines, so every assertion is about what a user would see.
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        OnceLock,
        mpsc::{Receiver, RecvTimeoutError, channel},
    },
    time::{Duration, Instant},
};

pub use serde_json::Value;

pub mod containerd;

/// The agent binary: `LLMWATCH_BIN` (set by `cargo xtask test`) or the workspace's debug build.
pub fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("LLMWATCH_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/llmwatch");
    assert!(
        p.exists(),
        "{} not built: run the tests with `cargo xtask test`",
        p.display()
    );
    p
}

/// The scenarios load kernel programs; without the privilege they cannot test anything, and
/// they say so by failing rather than passing vacuously.
pub fn require_root() {
    // SAFETY: geteuid takes no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "end-to-end tests load eBPF programs and must run as root (CAP_BPF+CAP_PERFMON)"
    );
}

pub struct Agent {
    child: Child,
    /// The agent's own state directory (heartbeat) when the test did not choose one.
    _state: Option<TempDir>,
    rx: Receiver<Value>,
    /// Lines read but not yet consumed by a `wait_for`.
    pub seen: Vec<Value>,
    pub ready: Value,
}

impl Agent {
    /// Starts `llmwatch events` with `args` and waits until it reports ready.
    pub fn start(args: &[&str]) -> Agent {
        Agent::start_wrapped(&[], args)
    }

    /// Like `start`, with the agent run through `wrapper` (e.g. `setpriv ... --`).
    pub fn start_wrapped(wrapper: &[&str], args: &[&str]) -> Agent {
        require_root();
        // Scenarios run in parallel: each agent's metrics endpoint on its own free port.
        let metrics: &[&str] = if args.contains(&"--metrics-addr") {
            &[]
        } else {
            &["--metrics-addr", "127.0.0.1:0"]
        };
        // Each agent its own heartbeat, so scenarios running side by side never read each
        // other's (a test of the heartbeat passes --state-dir itself).
        let state = (!args.contains(&"--state-dir")).then(|| {
            let d = TempDir::new("state");
            // Writable by an agent that runs as another user (tests/privilege.rs).
            std::fs::set_permissions(d.path(), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
            d
        });
        let state_args: Vec<&str> = match &state {
            Some(d) => vec!["--state-dir", d.path().to_str().unwrap()],
            None => vec![],
        };
        let mut cmd = match wrapper.split_first() {
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(agent_binary());
                c
            }
            None => Command::new(agent_binary()),
        };
        let mut child = cmd
            .arg("events")
            .args(metrics)
            .args(&state_args)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting llmwatch");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(e) => panic!("agent printed a line that is not JSON ({e}): {line}"),
                }
            }
        });
        let mut agent = Agent {
            child,
            _state: state,
            rx,
            seen: Vec::new(),
            ready: Value::Null,
        };
        let ready_timeout = secs(60);
        let ready = agent
            .wait_for(ready_timeout, |v| v["kind"] == "agent_ready")
            .unwrap_or_else(|| panic!("agent did not report ready within {ready_timeout:?}"));
        agent.ready = ready;
        agent
    }

    /// Convenience: start watching `dirs`.
    pub fn watching(dirs: &[&Path], extra: &[&str]) -> Agent {
        let mut args: Vec<String> = Vec::new();
        for d in dirs {
            args.push("--model-dir".into());
            args.push(d.to_str().unwrap().into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Agent::start(&refs)
    }

    /// The first line (already seen or arriving within `timeout`) matching `pred`; it is
    /// consumed, lines before it stay available.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        if let Some(i) = self.seen.iter().position(&pred) {
            return Some(self.seen.remove(i));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) if pred(&v) => return Some(v),
                Ok(v) => self.seen.push(v),
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.try_wait();
                    panic!("agent stopped: {status:?}");
                }
            }
        }
    }

    /// Every line arriving within `dur` (plus those already seen) that matches `pred`.
    pub fn collect_for(&mut self, dur: Duration, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + dur;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(v) => self.seen.push(v),
                Err(_) => break,
            }
        }
        let (hit, rest): (Vec<Value>, Vec<Value>) = self.seen.drain(..).partition(|v| pred(v));
        self.seen = rest;
        hit
    }

    /// Lines matching `pred` until one matching `stop` arrives (included), or `timeout`.
    pub fn collect_until(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
        stop: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let end = self.wait_for(timeout, &stop);
        let mut hit: Vec<Value> = Vec::new();
        let rest: Vec<Value> = std::mem::take(&mut self.seen);
        for v in rest {
            if pred(&v) {
                hit.push(v);
            } else {
                self.seen.push(v);
            }
        }
        if let Some(e) = end {
            hit.push(e);
        }
        hit
    }
}

impl Agent {
    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash or the OOM killer would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stops an agent `child` the way a service manager would: SIGTERM, 5 s (scaled) to exit in
/// order, then SIGKILL.
pub fn terminate(child: &mut std::process::Child) {
    // SAFETY: kill takes no pointers; the pid is our child's, not yet waited for, so it
    // cannot have been reused.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Agent {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// A directory under /tmp, world-traversable (scenarios drop privileges), removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "llmwatch-e2e-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a valid safetensors file of exactly `size` bytes (header + zero payload).
pub fn write_safetensors(path: &Path, size: usize) -> u64 {
    let header = br#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#;
    let mut bytes = Vec::with_capacity(size);
    bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
    bytes.extend_from_slice(header);
    assert!(size > bytes.len());
    // Non-zero, varying payload so nothing is sparse.
    bytes.extend((0..size - bytes.len()).map(|i| (i % 251) as u8 + 1));
    std::fs::write(path, &bytes).unwrap();
    inode(path)
}

pub fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

/// Events of `kind` from process `pid`.
pub fn is(v: &Value, kind: &str, pid: u32) -> bool {
    v["kind"] == kind && v["task"]["pid"] == pid
}

/// How many times slower than real time this machine runs the scenarios, from
/// `LLMWATCH_TEST_TIME_SCALE` (a positive float, default 1). `cargo xtask vm-test` sets it for
/// a guest kernel under emulation (TCG), where everything runs about ten times slower; every
/// time window the harness builds goes through it, so a slow machine waits longer instead of
/// failing, and a fast one is not slowed down.
pub fn time_scale() -> f64 {
    static SCALE: OnceLock<f64> = OnceLock::new();
    *SCALE.get_or_init(|| match std::env::var("LLMWATCH_TEST_TIME_SCALE") {
        Err(_) => 1.0,
        Ok(raw) => match raw.trim().parse::<f64>() {
            Ok(scale) if scale.is_finite() && scale > 0.0 => scale,
            // A typo must not quietly run the scenarios with the wrong windows.
            _ => panic!("LLMWATCH_TEST_TIME_SCALE={raw:?} is not a positive number"),
        },
    })
}

/// `d` stretched by `time_scale()`.
pub fn scaled(d: Duration) -> Duration {
    d.mul_f64(time_scale())
}

/// A time window of `n` seconds on this machine (`n` × `time_scale()`).
pub fn secs(n: u64) -> Duration {
    scaled(Duration::from_secs(n))
}

/// A program from a Debian package the tests use for real (promtool, prometheus,
/// prometheus-alertmanager): required in CI (`cargo xtask test` installs them and sets
/// LLMWATCH_REQUIRE_PROMTOOL=1), skipped with a line otherwise.
pub fn debian_tool(name: &str, package: &str) -> Option<&'static str> {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if found {
        return Some(Box::leak(name.to_string().into_boxed_str()));
    }
    if std::env::var("LLMWATCH_REQUIRE_PROMTOOL").as_deref() == Ok("1") {
        panic!("{name} not installed: apt-get install {package} (cargo xtask test installs it)");
    }
    eprintln!("skipped: {name} not installed (apt-get install {package})");
    None
}

/// A file from a Debian package the tests use for real, by its path (containerd, runc,
/// busybox-static, openssl): required in CI (`cargo xtask test` installs the package and sets
/// LLMWATCH_REQUIRE_PROMTOOL=1), skipped with a line otherwise.
pub fn debian_file(path: &str, package: &str) -> Option<PathBuf> {
    let p = PathBuf::from(path);
    if p.exists() {
        return Some(p);
    }
    if std::env::var("LLMWATCH_REQUIRE_PROMTOOL").as_deref() == Ok("1") {
        panic!("{path} not installed: apt-get install {package} (cargo xtask test installs it)");
    }
    eprintln!("skipped: {path} not installed (apt-get install {package})");
    None
}

/// A plain HTTP/1.1 GET on loopback: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(secs(5))).unwrap();
    use std::io::{Read as _, Write as _};
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Loads a two-instruction socket filter (r0 = 0; exit) named `name` (at most 15 bytes) with the
/// raw bpf(2) syscall, as another process loading BPF would; returns its fd.
pub fn load_socket_filter(name: &[u8]) -> i32 {
    assert!(name.len() < 16, "BPF program names are at most 15 bytes");
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = c"GPL";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&1u32.to_ne_bytes()); // BPF_PROG_TYPE_SOCKET_FILTER
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes()); // insn_cnt
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[48..48 + name.len()].copy_from_slice(name);
    // SAFETY: attr is a bpf_attr-sized buffer that outlives the call, and the instruction and
    // license pointers it holds point at locals alive until it returns.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 5, attr.as_ptr(), attr.len()) };
    assert!(fd >= 0, "BPF_PROG_LOAD: {}", std::io::Error::last_os_error());
    fd as i32
}

/// A helper process driven line by line: it prints `key value` lines and waits for a line on
/// stdin between steps (see tests/bin/fdtool.rs).
pub struct Tool {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Tool {
    pub fn spawn(program: &str, args: &[&str]) -> Tool {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"));
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Tool { child, lines }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The value of the next line starting with `key` (earlier lines are skipped).
    pub fn expect(&mut self, key: &str) -> String {
        for line in self.lines.by_ref() {
            let line = line.unwrap();
            if let Some(v) = line.strip_prefix(key).and_then(|r| r.strip_prefix(' ')) {
                return v.to_string();
            }
        }
        let status = self.child.wait();
        panic!("helper ended before printing {key:?}: {status:?}");
    }

    /// Lets the helper take its next step.
    pub fn step(&mut self) {
        use std::io::Write as _;
        let stdin = self.child.stdin.as_mut().expect("stdin piped");
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    /// Closes its stdin and waits for it to exit successfully.
    pub fn finish(mut self) {
        drop(self.child.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "helper failed: {status:?}");
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `bash -c "(SCRIPT; exit $?)"`: SCRIPT in a process tree of its own, rooted at that
/// `bash -c`. The rules root a tree at most two ancestors above a process, so `bash -c "cat m |
/// nc"` alone would be rooted at the test binary (which outlives every test, and whose other
/// tests' hits would fold into the same incident); the subshell puts the root at the `bash -c`,
/// which exits when SCRIPT is done. (`exit` after SCRIPT: a subshell runs its last command by
/// exec, which would make a one-command SCRIPT the subshell itself.) The `bash -c` also leads a
/// session of its own, since the walk stops at a session leader: a SCRIPT that `exec`s its one
/// command (the guard's sendmmsg test) would otherwise root its tree at the test binary, and
/// an enforcing agent would then refuse the connects of every other test's tree (a parallel
/// guard test's `nc` was refused so, and its agent saw no send at all).
pub fn own_tree(script: &str) -> Command {
    use std::os::unix::process::CommandExt as _;
    let mut c = Command::new("bash");
    c.arg("-c").arg(format!("({script}; exit $?)"));
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent; the child calls
    // it between fork and exec. A failure (never for a fresh child, which leads no group)
    // leaves the child in the test's session, as before.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    c
}

/// Lines the agent printed that are incidents' messages (not rule hits, events or status).
pub fn is_incident(v: &Value) -> bool {
    v.get("incident_id").is_some()
}

/// An incident's message opened by a `weight.*` rule. Incidents nest: the test binary's own
/// tree has one when another test's agent loads BPF (`host.bpf_load`), and it counts the reads
/// and sends of every tree inside it, a test's `cat | nc` included.
pub fn is_weight_incident(v: &Value) -> bool {
    is_incident(v) && v["rules"][0].as_str().is_some_and(|r| r.starts_with("weight."))
}

/// One HTTP request a receiver got.
pub struct Request {
    /// The request line's target (`/pods`).
    pub target: String,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads HTTP/1.1 requests (keep-alive, Content-Length bodies) from `stream` until it closes;
/// `answer` gets each with the stream to write its response on, and says whether to go on.
fn serve_http<S: std::io::Read + std::io::Write>(
    stream: S,
    mut answer: impl FnMut(Request, &mut S) -> std::io::Result<bool>,
) {
    use std::io::Read as _;
    let mut r = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end().to_string();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let req = Request {
            target,
            headers,
            body,
        };
        if !matches!(answer(req, r.get_mut()), Ok(true)) {
            return;
        }
    }
}

/// Writes one HTTP/1.1 response with a JSON (or empty) body.
fn respond(w: &mut impl std::io::Write, code: u16, body: &[u8]) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Status",
    };
    write!(
        w,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    w.write_all(body)?;
    w.flush()
}

/// Accepts connections on `listener` (HTTP/1.1, keep-alive, Content-Length bodies), answers
/// every request 200 and passes it on.
pub fn http_receiver(listener: std::net::TcpListener) -> Receiver<Request> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            let tx = tx.clone();
            std::thread::spawn(move || {
                serve_http(conn, |req, w| {
                    respond(w, 200, b"")?;
                    Ok(tx.send(req).is_ok())
                })
            });
        }
    });
    rx
}

/// An HTTPS server on 127.0.0.1 (rustls, the certificate chain and key from PEM files):
/// `answer` gives each request's status and body; every request is passed on after its answer.
pub fn https_server(
    cert_chain: &Path,
    key: &Path,
    answer: impl Fn(&Request) -> (u16, Vec<u8>) + Send + Sync + 'static,
) -> (std::net::SocketAddr, Receiver<Request>) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_chain)
        .unwrap_or_else(|e| panic!("{}: {e}", cert_chain.display()))
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap_or_else(|e| panic!("{}: {e}", key.display()));
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let config = std::sync::Arc::new(config);
    let answer = std::sync::Arc::new(answer);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            let (tx, answer) = (tx.clone(), answer.clone());
            let tls = rustls::ServerConnection::new(config.clone()).unwrap();
            std::thread::spawn(move || {
                serve_http(rustls::StreamOwned::new(tls, conn), |req, w| {
                    let (code, body) = answer(&req);
                    respond(w, code, &body)?;
                    Ok(tx.send(req).is_ok())
                })
            });
        }
    });
    (addr, rx)
}

/// A CA and a serving certificate for 127.0.0.1 signed by it (ECDSA P-256, two days), made with
/// the openssl command in `dir`: (CA PEM, certificate PEM, key PEM).
pub fn test_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::write(
        dir.join("openssl.cnf"),
        "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = llmwatch-test-ca\n\
         [ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n\
         [leaf]\nbasicConstraints = CA:FALSE\nkeyUsage = critical, digitalSignature\n\
         extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1\n",
    )
    .unwrap();
    let openssl = |args: &str| {
        let out = Command::new("openssl")
            .args(args.split_whitespace())
            .current_dir(dir)
            .output()
            .expect("running openssl");
        assert!(
            out.status.success(),
            "openssl {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    openssl(&format!(
        "req -x509 -config openssl.cnf -extensions ca -days 2 {ec} -keyout ca.key -out ca.pem"
    ));
    openssl(&format!(
        "req -new -config openssl.cnf -subj /CN=127.0.0.1 {ec} -keyout node.key -out node.csr"
    ));
    openssl(
        "x509 -req -in node.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
         -extfile openssl.cnf -extensions leaf -out node.pem",
    );
    (dir.join("ca.pem"), dir.join("node.pem"), dir.join("node.key"))
}

/// A TCP listener on 127.0.0.1 that accepts one connection and counts what it receives.
pub fn tcp_sink() -> (u16, std::thread::JoinHandle<u64>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        use std::io::Read as _;
        // A sender that never came (a tool missing, a refused connect) fails the test instead
        // of hanging it.
        listener.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + secs(60);
        let mut s = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "nothing connected to the sink on port {port} within 60 s (is `nc` installed? \
                         `cargo xtask test` installs it)"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("accept on the sink: {e}"),
            }
        };
        s.set_nonblocking(false).unwrap();
        let mut total = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n as u64,
            }
        }
    });
    (port, handle)
}

/// Sum of `bytes` of the events matching `pred` that arrive until `pid` has exited (its exit
/// event is the marker: the kernel's unreported counters of a process are swept before it).
pub fn bytes_until_exit(agent: &mut Agent, pid: u32, pred: impl Fn(&Value) -> bool) -> (u64, Vec<Value>) {
    let events = agent.collect_until(secs(20), &pred, |v| is(v, "proc_exit", pid));
    assert!(
        events.last().is_some_and(|v| is(v, "proc_exit", pid)),
        "no proc_exit of {pid} within the timeout: {events:#?}"
    );
    let hits: Vec<Value> = events
        .into_iter()
        .filter(|v| pred(v) && !is(v, "proc_exit", pid))
        .collect();
    let sum = hits.iter().map(|v| v["bytes"].as_u64().unwrap_or(0)).sum();
    (sum, hits)
}
