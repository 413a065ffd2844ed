//! Delivery against a real HTTP/1.1 receiver on loopback.
use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpSocket, TcpStream},
    task::JoinHandle,
};

use super::*;

// ---- the receiver ----

#[derive(Clone, Debug)]
struct Req {
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
    /// The status it was answered with.
    status: u16,
}

impl Req {
    fn id(&self) -> &str {
        self.headers
            .get("x-llmwatch-alert-id")
            .map(String::as_str)
            .unwrap_or("")
    }
}

struct Reply {
    status: u16,
    delay: Duration,
    headers: Vec<(&'static str, String)>,
    body: String,
}

fn ok() -> Reply {
    status(200)
}

fn status(status: u16) -> Reply {
    Reply {
        status,
        delay: Duration::ZERO,
        headers: Vec::new(),
        body: String::new(),
    }
}

/// Answers request number n (from 0).
type Handler = Arc<dyn Fn(usize) -> Reply + Send + Sync>;

struct Receiver {
    addr: SocketAddr,
    reqs: Arc<Mutex<Vec<Req>>>,
    task: JoinHandle<()>,
}

impl Receiver {
    /// Listens on any loopback port and answers with `handler`.
    async fn start(handler: Handler) -> Receiver {
        Receiver::listen(Down::new(), handler).await
    }

    /// Starts listening on a reserved port.
    async fn listen(down: Down, handler: Handler) -> Receiver {
        let listener = down.sock.listen(64).unwrap();
        let addr = listener.local_addr().unwrap();
        let reqs = Arc::new(Mutex::new(Vec::new()));
        let n = Arc::new(AtomicUsize::new(0));
        let r = reqs.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                tokio::spawn(serve(stream, handler.clone(), r.clone(), n.clone()));
            }
        });
        Receiver { addr, reqs, task }
    }

    fn url(&self) -> Url {
        Url::parse(&format!("http://{}/hook/secret-token-in-path", self.addr)).unwrap()
    }

    fn reqs(&self) -> Vec<Req> {
        self.reqs.lock().unwrap().clone()
    }

    /// Ids of the requests answered 2xx, in arrival order.
    fn delivered_ids(&self) -> Vec<String> {
        self.reqs()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .map(|r| r.id().to_string())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Minimal HTTP/1.1 with keep-alive: request line, headers, Content-Length body.
async fn serve(stream: TcpStream, handler: Handler, reqs: Arc<Mutex<Vec<Req>>>, n: Arc<AtomicUsize>) {
    let mut rd = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if rd.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if rd.read_line(&mut h).await.unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if rd.read_exact(&mut body).await.is_err() {
            return;
        }
        let reply = handler(n.fetch_add(1, Ordering::SeqCst));
        reqs.lock().unwrap().push(Req {
            path,
            headers,
            body,
            status: reply.status,
        });
        tokio::time::sleep(reply.delay).await;
        let mut out = format!(
            "HTTP/1.1 {} X\r\ncontent-length: {}\r\n",
            reply.status,
            reply.body.len()
        );
        for (k, v) in &reply.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.push_str(&reply.body);
        if rd.get_mut().write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A loopback port that is bound but not listening: connections to it are refused, and no
/// other test can take it before [`Receiver::listen`] starts listening on it.
struct Down {
    sock: TcpSocket,
    addr: SocketAddr,
}

impl Down {
    fn new() -> Down {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = sock.local_addr().unwrap();
        Down { sock, addr }
    }

    fn url(&self) -> Url {
        url_of(self.addr)
    }
}

fn url_of(addr: SocketAddr) -> Url {
    Url::parse(&format!("http://{addr}/hook")).unwrap()
}

// ---- the observer ----

#[derive(Default)]
struct Counts {
    outcomes: Mutex<HashMap<(String, &'static str), u64>>,
    dropped: Mutex<HashMap<String, u64>>,
    depth: Mutex<u64>,
    write_errors: AtomicUsize,
}

impl Counts {
    fn get(&self, outcome: &str) -> u64 {
        self.outcomes
            .lock()
            .unwrap()
            .iter()
            .filter(|((_, o), _)| *o == outcome)
            .map(|(_, n)| n)
            .sum()
    }

    fn get_for(&self, target: &str, outcome: &str) -> u64 {
        self.outcomes
            .lock()
            .unwrap()
            .iter()
            .filter(|((t, o), _)| t == target && *o == outcome)
            .map(|(_, n)| n)
            .sum()
    }

    fn dropped(&self, severity: &str) -> u64 {
        self.dropped.lock().unwrap().get(severity).copied().unwrap_or(0)
    }

    fn dropped_total(&self) -> u64 {
        self.dropped.lock().unwrap().values().sum()
    }

    fn write_errors(&self) -> usize {
        self.write_errors.load(Ordering::SeqCst)
    }
}

impl DeliveryObserver for Counts {
    fn outcome(&self, target: &str, outcome: &'static str) {
        *self
            .outcomes
            .lock()
            .unwrap()
            .entry((target.to_string(), outcome))
            .or_default() += 1;
    }

    fn spool_depth(&self, alerts: u64) {
        *self.depth.lock().unwrap() = alerts;
    }

    fn spool_dropped(&self, severity: &str) {
        *self
            .dropped
            .lock()
            .unwrap()
            .entry(severity.to_string())
            .or_default() += 1;
    }

    fn spool_write_error(&self) {
        self.write_errors.fetch_add(1, Ordering::SeqCst);
    }
}

// ---- logs: every record of this test binary, for tests that check what is logged ----

static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, r: &log::Record) {
        LOGS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{} {}", r.level(), r.args()));
    }

    fn flush(&self) {}
}

fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if log::set_logger(&Capture).is_ok() {
            log::set_max_level(log::LevelFilter::Info);
        }
    });
}

/// The records logged so far that contain every one of `words`.
fn logged(words: &[&str]) -> Vec<String> {
    LOGS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|l| words.iter().all(|w| l.contains(w)))
        .cloned()
        .collect()
}

// ---- a small tmpfs, to fill up ----

/// A tmpfs mounted on a temporary directory, unmounted on drop (also when the test fails).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// None, saying why, when this process cannot mount one (not root, no CAP_SYS_ADMIN). Under
    /// `cargo xtask test` (LLMWATCH_REQUIRE_ROOT=1, as root) that is a failure, not a skip.
    fn mount(test: &str, size: &str) -> Option<Tmpfs> {
        let skip = |why: String| {
            assert!(
                std::env::var("LLMWATCH_REQUIRE_ROOT").as_deref() != Ok("1"),
                "{test}: {why} (LLMWATCH_REQUIRE_ROOT=1)"
            );
            eprintln!("SKIPPED {test}: {why}");
        };
        // SAFETY: no arguments, cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            skip("mounting a tmpfs needs root".into());
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
        let opts = std::ffi::CString::new(format!("size={size},mode=0700")).unwrap();
        // SAFETY: valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                path.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            skip(format!("cannot mount a tmpfs on {}: {e}", dir.path().display()));
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system with `filler` until it refuses more.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.filler()).unwrap();
        let chunk = [0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
    }

    /// Gives the space back.
    fn unfill(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }

    fn filler(&self) -> PathBuf {
        self.dir.path().join("filler")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let path = std::ffi::CString::new(self.dir.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated string.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
}

/// CPU time (user + system) a thread of this process has used, in clock ticks.
fn thread_cpu_ticks(tid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

// ---- helpers ----

/// Alert `i`; every alert has the same JSON length whatever its severity.
fn alert(i: usize, severity: &str) -> Alert {
    let pad = "x".repeat(10 - severity.len());
    serde_json::from_value(json!({
        "id": format!("id-{i:04}"),
        "time": "2026-03-01T12:00:00Z",
        "rule": "weights_exfil",
        "severity": severity,
        "summary": format!("python3 read 2 GiB of llama.safetensors and sent it to 203.0.113.9 {pad}"),
        "host": "gpu-node-1",
        "process": {
            "pid": 4242, "comm": "python3", "exe": "/usr/bin/python3", "uid": 1000, "user": "alice",
            "container_id": "0123456789abcdef0123", "pod": null,
            "ancestry": [{"pid": 1, "comm": "systemd"}]
        },
        "files": [{"path": "/models/llama.safetensors", "dev": 2049, "ino": 77, "size": 2147483648u64,
                   "bytes_read": 2147483648u64}],
        "network": [{"dest": "203.0.113.9", "port": 443, "bytes_sent": 2147483648u64}],
        "window": {"start": "2026-03-01T11:59:00Z", "end": "2026-03-01T12:00:00Z"},
        "incomplete": false,
        "dedup_key": "4242",
        "suppressed": 0
    }))
    .unwrap()
}

fn cfg(dir: &Path, targets: Vec<WebhookTarget>) -> DeliveryConfig {
    DeliveryConfig {
        targets,
        spool_dir: dir.to_path_buf(),
        spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
        memory_max_bytes: DEFAULT_MEMORY_MAX_BYTES,
        retry_initial: Duration::from_millis(20),
        retry_max: Duration::from_millis(200),
        alertmanager: AlertmanagerOptions::default(),
    }
}

fn target(url: Url) -> WebhookTarget {
    WebhookTarget {
        timeout: Duration::from_secs(2),
        ..WebhookTarget::new(url)
    }
}

async fn wait_for(what: &str, limit: Duration, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The alert files in the spool, by name.
fn spooled(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    v.sort();
    v
}

fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("id-{i:04}")).collect()
}

fn always(r: fn() -> Reply) -> Handler {
    Arc::new(move |_| r())
}

// ---- the tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_down_then_up_gets_every_alert_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let down = Down::new();
    let counts = Arc::new(Counts::default());
    let d = Delivery::start(cfg(dir.path(), vec![target(down.url())]), counts.clone())
        .await
        .unwrap();
    for i in 0..10 {
        d.send(&alert(i, "high"));
    }
    wait_for("a few refused attempts", Duration::from_secs(5), || {
        counts.get("retried") >= 3
    })
    .await;
    for i in 10..20 {
        d.send(&alert(i, "high"));
    }
    assert_eq!(counts.get("delivered"), 0);
    wait_for("20 spooled alerts", Duration::from_secs(2), || {
        spooled(dir.path()).len() == 20
    })
    .await;
    // Alerts accepted while the target is failing are counted as spooled (some of the first ten
    // may be too, when the first refusal came before they were sent).
    assert!(
        (10..20).contains(&counts.get("spooled")),
        "{}",
        counts.get("spooled")
    );

    let rx = Receiver::listen(down, always(ok)).await;
    wait_for("20 deliveries", Duration::from_secs(10), || {
        rx.delivered_ids().len() >= 20
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        rx.delivered_ids(),
        ids(0..20),
        "every alert exactly once, in order"
    );
    assert_eq!(counts.get("delivered"), 20);
    wait_for("an empty spool", Duration::from_secs(2), || {
        spooled(dir.path()).is_empty()
    })
    .await;
    assert_eq!(*counts.depth.lock().unwrap(), 0);
    d.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_from_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let down = Down::new();
    let url = down.url();
    let c = || cfg(dir.path(), vec![target(url.clone())]);

    // First run: receiver down, stopped cleanly.
    let d = Delivery::start(c(), Arc::new(NoObserver)).await.unwrap();
    for i in 0..5 {
        d.send(&alert(i, "medium"));
    }
    d.shutdown(Duration::from_millis(300)).await;
    assert_eq!(spooled(dir.path()).len(), 5);

    // Second run: still down, then dropped as if killed.
    let d = Delivery::start(c(), Arc::new(NoObserver)).await.unwrap();
    for i in 5..10 {
        d.send(&alert(i, "medium"));
    }
    drop(d);

    // Third run: starting waits for the dropped one's writer, so all ten are on disk.
    let counts = Arc::new(Counts::default());
    let d = Delivery::start(c(), counts.clone()).await.unwrap();
    let names = spooled(dir.path());
    assert_eq!(names.len(), 10);
    assert!(names[0].starts_with("00000000000000000001-medium"), "{names:?}");
    // The receiver comes up.
    let rx = Receiver::listen(down, always(ok)).await;
    wait_for("10 deliveries", Duration::from_secs(10), || {
        rx.delivered_ids().len() >= 10
    })
    .await;
    d.send(&alert(10, "medium"));
    wait_for("11 deliveries", Duration::from_secs(10), || {
        rx.delivered_ids().len() >= 11
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        rx.delivered_ids(),
        ids(0..11),
        "exactly once, in order, across restarts"
    );
    wait_for("an empty spool", Duration::from_secs(2), || {
        spooled(dir.path()).is_empty()
    })
    .await;
    d.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_cannot_share_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let url = Down::new().url();
    let d = Delivery::start(cfg(dir.path(), vec![target(url.clone())]), Arc::new(NoObserver))
        .await
        .unwrap();
    let err = Delivery::start(cfg(dir.path(), vec![target(url)]), Arc::new(NoObserver))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, DeliveryError::SpoolBusy { .. }));
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_then_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(Arc::new(|n| {
        if n < 2 {
            Reply {
                body: "overloaded".into(),
                ..status(503)
            }
        } else {
            ok()
        }
    }))
    .await;
    let counts = Arc::new(Counts::default());
    let d = Delivery::start(cfg(dir.path(), vec![target(rx.url())]), counts.clone())
        .await
        .unwrap();
    d.send(&alert(1, "critical"));
    wait_for("delivery", Duration::from_secs(5), || {
        counts.get("delivered") == 1
    })
    .await;
    let reqs = rx.reqs();
    assert_eq!(reqs.iter().map(|r| r.status).collect::<Vec<_>>(), [503, 503, 200]);
    assert!(reqs.iter().all(|r| r.id() == "id-0001"));
    assert_eq!(counts.get("retried"), 2);
    assert_eq!(counts.get("delivered"), 1);
    assert_eq!(counts.get("failed"), 0);
    d.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_respected_up_to_retry_max() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(Arc::new(|n| {
        if n == 0 {
            Reply {
                headers: vec![("retry-after", "3600".into())],
                ..status(429)
            }
        } else {
            ok()
        }
    }))
    .await;
    let counts = Arc::new(Counts::default());
    let mut c = cfg(dir.path(), vec![target(rx.url())]);
    c.retry_max = Duration::from_millis(400);
    let d = Delivery::start(c, counts.clone()).await.unwrap();
    let start = Instant::now();
    d.send(&alert(1, "high"));
    wait_for("delivery", Duration::from_secs(5), || {
        counts.get("delivered") == 1
    })
    .await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(380),
        "waited the capped Retry-After: {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "Retry-After is capped at retry_max: {took:?}"
    );
    d.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_times_out_and_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(Arc::new(|n| {
        if n == 0 {
            Reply {
                delay: Duration::from_secs(2),
                ..ok()
            }
        } else {
            ok()
        }
    }))
    .await;
    let counts = Arc::new(Counts::default());
    let t = WebhookTarget {
        timeout: Duration::from_millis(200),
        ..target(rx.url())
    };
    let d = Delivery::start(cfg(dir.path(), vec![t]), counts.clone())
        .await
        .unwrap();
    d.send(&alert(1, "high"));
    wait_for("delivery", Duration::from_secs(5), || {
        counts.get("delivered") == 1
    })
    .await;
    assert!(counts.get("retried") >= 1);
    assert_eq!(counts.get("delivered"), 1);
    assert!(rx.reqs().len() >= 2);
    wait_for("an empty spool", Duration::from_secs(2), || {
        spooled(dir.path()).is_empty()
    })
    .await;
    d.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_4xx_fails_once_and_is_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(Arc::new(|_| Reply {
        body: "bad payload\nfield x".into(),
        ..status(400)
    }))
    .await;
    let counts = Arc::new(Counts::default());
    let d = Delivery::start(cfg(dir.path(), vec![target(rx.url())]), counts.clone())
        .await
        .unwrap();
    d.send(&alert(1, "high"));
    d.send(&alert(2, "high"));
    wait_for("two failures", Duration::from_secs(5), || {
        counts.get("failed") == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got: Vec<String> = rx.reqs().iter().map(|r| r.id().to_string()).collect();
    assert_eq!(
        got,
        ids(1..3),
        "each refused alert was tried once, and did not block the next"
    );
    assert_eq!(counts.get("retried"), 0);
    assert_eq!(counts.get("delivered"), 0);
    wait_for("an empty spool", Duration::from_secs(2), || {
        spooled(dir.path()).is_empty()
    })
    .await;
    d.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_signed_over_the_exact_body() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(always(ok)).await;
    let counts = Arc::new(Counts::default());
    let t = WebhookTarget {
        secret: Some(Secret::new(&b"s3cret-key"[..])),
        headers: vec![
            ("Authorization".into(), "Bearer abc".into()),
            ("X-Env".into(), "prod".into()),
        ],
        ..target(rx.url())
    };
    let d = Delivery::start(cfg(dir.path(), vec![t]), counts.clone())
        .await
        .unwrap();
    let a = alert(7, "critical");
    d.send(&a);
    wait_for("delivery", Duration::from_secs(5), || {
        counts.get("delivered") == 1
    })
    .await;
    let r = rx.reqs().remove(0);

    let hmac_hex = |key: &[u8]| {
        let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).unwrap();
        m.update(&r.body);
        format!("sha256={}", hex::encode(m.finalize().into_bytes()))
    };
    let sig = &r.headers["x-llmwatch-signature"];
    assert_eq!(*sig, hmac_hex(b"s3cret-key"));
    assert_ne!(*sig, hmac_hex(b"wrong-key"));

    // Raw is the alert JSON exactly; the headers are all there.
    assert_eq!(r.body, serde_json::to_vec(&a).unwrap());
    assert_eq!(serde_json::from_slice::<Alert>(&r.body).unwrap(), a);
    assert_eq!(r.path, "/hook/secret-token-in-path");
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(
        r.headers["user-agent"],
        format!("llmwatch/{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(r.headers["x-llmwatch-alert-id"], "id-0007");
    assert_eq!(r.headers["authorization"], "Bearer abc");
    assert_eq!(r.headers["x-env"], "prod");
    let ts: i64 = r.headers["x-llmwatch-timestamp"].parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - ts).abs() < 60);
    d.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_evicts_the_oldest_least_severe_first() {
    let dir = tempfile::tempdir().unwrap();
    let down = Down::new();
    let size = serde_json::to_vec(&alert(0, "low")).unwrap().len() as u64;
    assert_eq!(
        size,
        serde_json::to_vec(&alert(0, "critical")).unwrap().len() as u64
    );
    let counts = Arc::new(Counts::default());
    let mut c = cfg(dir.path(), vec![target(down.url())]);
    c.spool_max_bytes = 6 * size;
    let d = Delivery::start(c, counts.clone()).await.unwrap();
    // Room for 6. c0 l1 l2 c3 l4 l5 | c6 l7 l8 c9 → the four oldest lows go.
    let plan = [
        "critical", "low", "low", "critical", "low", "low", "critical", "low", "low", "critical",
    ];
    for (i, sev) in plan.iter().enumerate() {
        d.send(&alert(i, sev));
    }
    // Full of critical and low: an info alert is the least severe, so it is the one dropped.
    d.send(&alert(10, "info"));
    assert_eq!(counts.dropped("low"), 4);
    assert_eq!(counts.dropped("info"), 1);
    assert_eq!(counts.dropped("critical"), 0);
    assert_eq!(counts.get("dropped"), 5);
    assert_eq!(*counts.depth.lock().unwrap(), 6);
    // On disk (the writer is asynchronous): the four criticals and the two newest lows.
    let want: Vec<String> = [
        (0, "critical"),
        (3, "critical"),
        (6, "critical"),
        (7, "low"),
        (8, "low"),
        (9, "critical"),
    ]
    .iter()
    .map(|(i, sev)| format!("{:020}-{sev}.json", i + 1))
    .collect();
    wait_for("the survivors on disk", Duration::from_secs(2), || {
        spooled(dir.path()) == want
    })
    .await;

    let rx = Receiver::listen(down, always(ok)).await;
    wait_for("6 deliveries", Duration::from_secs(10), || {
        rx.delivered_ids().len() >= 6
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let want: Vec<String> = [0, 3, 6, 7, 8, 9].iter().map(|i| format!("id-{i:04}")).collect();
    assert_eq!(rx.delivered_ids(), want);
    d.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_does_not_block_on_a_hanging_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(Arc::new(|_| Reply {
        delay: Duration::from_secs(30),
        ..ok()
    }))
    .await;
    let t = WebhookTarget {
        timeout: Duration::from_secs(20),
        ..target(rx.url())
    };
    let d = Delivery::start(cfg(dir.path(), vec![t]), Arc::new(NoObserver))
        .await
        .unwrap();
    d.send(&alert(0, "high"));
    wait_for("the first request to hang", Duration::from_secs(5), || {
        !rx.reqs().is_empty()
    })
    .await;
    let alerts: Vec<Alert> = (1..101).map(|i| alert(i, "high")).collect();
    let start = Instant::now();
    for a in &alerts {
        d.send(a);
    }
    let took = start.elapsed();
    assert!(took < Duration::from_millis(50), "100 sends took {took:?}");

    // Shutdown honors its deadline even with a request in flight; everything stays spooled.
    let start = Instant::now();
    d.shutdown(Duration::from_millis(200)).await;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        start.elapsed()
    );
    assert_eq!(spooled(dir.path()).len(), 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_and_alertmanager_payloads() {
    let dir = tempfile::tempdir().unwrap();
    let slack = Receiver::start(always(ok)).await;
    let am = Receiver::start(always(ok)).await;
    let counts = Arc::new(Counts::default());
    let targets = vec![
        WebhookTarget {
            preset: Preset::Slack,
            ..target(slack.url())
        },
        WebhookTarget {
            preset: Preset::Alertmanager,
            ..target(am.url())
        },
    ];
    let d = Delivery::start(cfg(dir.path(), targets), counts.clone())
        .await
        .unwrap();
    d.send(&alert(3, "critical"));
    wait_for("both deliveries", Duration::from_secs(5), || {
        counts.get("delivered") == 2
    })
    .await;

    let s: Value = serde_json::from_slice(&slack.reqs()[0].body).unwrap();
    let text = s["text"].as_str().unwrap();
    assert!(
        text.starts_with("[CRITICAL] weights_exfil on gpu-node-1: python3 read 2 GiB"),
        "{text}"
    );
    let att = &s["attachments"][0];
    assert_eq!(att["color"], "#b00020");
    let fields: HashMap<&str, &str> = att["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["title"].as_str().unwrap(), f["value"].as_str().unwrap()))
        .collect();
    assert_eq!(fields["Rule"], "weights_exfil");
    assert_eq!(fields["Severity"], "critical");
    assert_eq!(fields["Alert id"], "id-0003");
    assert_eq!(
        fields["Process"],
        "python3 (pid 4242, user alice, /usr/bin/python3)"
    );
    assert_eq!(fields["Container"], "0123456789ab");
    assert_eq!(
        fields["Files"],
        "/models/llama.safetensors (read 2.0 GiB of 2.0 GiB)"
    );
    assert_eq!(fields["Network"], "203.0.113.9:443 (2.0 GiB sent)");
    assert_eq!(att["ts"], 1772366400);

    let a: Value = serde_json::from_slice(&am.reqs()[0].body).unwrap();
    let list = a.as_array().expect("Alertmanager takes an array");
    assert_eq!(list.len(), 1);
    let labels = &list[0]["labels"];
    assert_eq!(labels["alertname"], "weights_exfil");
    assert_eq!(labels["rule"], "weights_exfil");
    assert_eq!(labels["severity"], "critical");
    assert_eq!(labels["host"], "gpu-node-1");
    assert!(
        labels.as_object().unwrap().values().all(Value::is_string),
        "label values are strings"
    );
    let ann = &list[0]["annotations"];
    assert!(ann["summary"].as_str().unwrap().starts_with("python3 read 2 GiB"));
    assert_eq!(ann["alert_id"], "id-0003");
    assert!(
        ann.as_object().unwrap().values().all(Value::is_string),
        "annotation values are strings"
    );
    assert_eq!(list[0]["startsAt"], "2026-03-01T12:00:00Z");
    assert_eq!(list[0]["generatorURL"], webhook::PLACEHOLDER_GENERATOR_URL);
    // An alert spooled before incidents keeps its old shape: no lease, Alertmanager's own
    // resolve_timeout ends it.
    assert!(list[0].get("endsAt").is_none());
    wait_for("an empty spool", Duration::from_secs(2), || {
        spooled(dir.path()).is_empty()
    })
    .await;
    d.shutdown(Duration::from_secs(1)).await;
}

/// One incident's three messages, as the tracker makes them from two hits about one process
/// tree: opened (medium), escalated to critical, resolved.
fn incident_messages() -> Vec<crate::alerts::incidents::IncidentMessage> {
    use crate::rules::{exfiltration::ID as EXFILTRATION, unexpected_reader::ID as UNEXPECTED_READER};
    let mut tracker = crate::alerts::incidents::Incidents::new(Duration::from_secs(600));
    let mut out = Vec::new();
    for (i, severity, rule) in [(1, "medium", UNEXPECTED_READER), (2, "critical", EXFILTRATION)] {
        let mut hit = alert(i, severity);
        hit.rule = rule.to_string();
        hit.scope = "tree:4242".into();
        hit.process.pod = Some("6f1c0e1e-pod".into());
        tracker.on_hit(hit, &|_| true, &mut out);
    }
    tracker.stop("2026-03-01T12:00:09Z".parse().unwrap(), &mut out);
    assert_eq!(out.len(), 3);
    out
}

fn labels_but_severity(alert: &Value) -> serde_json::Map<String, Value> {
    let mut l = alert["labels"].as_object().unwrap().clone();
    l.remove("severity");
    l
}

#[test]
fn alertmanager_keeps_an_incidents_labels_and_resolves_it() {
    use crate::rules::unexpected_reader::ID as UNEXPECTED_READER;
    let msgs = incident_messages();
    let am = AlertmanagerOptions {
        generator_url: "http://gpu-node-1:9477/metrics".into(),
        refresh: Duration::from_secs(60),
    };
    let now: chrono::DateTime<chrono::Utc> = "2026-03-01T12:00:05Z".parse().unwrap();
    let body = |i: usize| webhook::alertmanager(&serde_json::to_value(&msgs[i]).unwrap(), now, &am);

    let opened = body(0);
    let opened = opened.as_array().unwrap();
    assert_eq!(opened.len(), 1);
    let labels = &opened[0]["labels"];
    assert_eq!(labels["alertname"], UNEXPECTED_READER.as_str());
    assert_eq!(labels["severity"], "medium");
    assert_eq!(labels["host"], "gpu-node-1");
    assert_eq!(labels["incident_id"], msgs[0].incident_id.as_str());
    assert_eq!(labels["pod"], "6f1c0e1e-pod");
    // Nothing per process, file or hit: those are annotations.
    for key in ["rule", "dedup_key", "pid", "path"] {
        assert!(labels.get(key).is_none(), "{key} is a label: {labels}");
    }
    let ann = &opened[0]["annotations"];
    assert!(ann["process"].as_str().unwrap().contains("pid 4242"), "{ann}");
    assert!(
        ann["files"]
            .as_str()
            .unwrap()
            .contains("/models/llama.safetensors"),
        "{ann}"
    );
    assert_eq!(ann["bytes_read"], "2147483648");
    assert_eq!(ann["status"], "opened");
    assert!(ann.as_object().unwrap().values().all(Value::is_string));
    assert_eq!(
        opened[0]["startsAt"], "2026-03-01T11:59:00Z",
        "from the first evidence"
    );
    assert_eq!(
        opened[0]["endsAt"], "2026-03-01T12:04:05.000Z",
        "a lease of four refreshes"
    );
    assert_eq!(opened[0]["generatorURL"], "http://gpu-node-1:9477/metrics");

    // Severity rose: the medium alert is resolved in the same post that fires the critical one.
    let escalated = body(1);
    let escalated = escalated.as_array().unwrap();
    assert_eq!(escalated.len(), 2, "{escalated:#?}");
    let time = serde_json::to_value(msgs[1].alert.time).unwrap();
    assert_eq!(escalated[0]["labels"]["severity"], "medium");
    assert_eq!(escalated[0]["endsAt"], time);
    assert_eq!(escalated[1]["labels"]["severity"], "critical");
    assert_eq!(escalated[1]["endsAt"], "2026-03-01T12:04:05.000Z");
    assert_eq!(
        escalated[1]["annotations"]["status"],
        "escalated (medium → critical)"
    );
    for a in escalated {
        assert_eq!(labels_but_severity(a), labels_but_severity(&opened[0]));
    }

    let resolved = body(2);
    let resolved = resolved.as_array().unwrap();
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0]["labels"], escalated[1]["labels"]);
    assert_eq!(resolved[0]["endsAt"], "2026-03-01T12:00:09Z");
    assert_eq!(resolved[0]["annotations"]["status"], "resolved (stopped)");
}

#[test]
fn slack_says_whether_an_incident_opened_escalated_or_was_resolved() {
    let msgs = incident_messages();
    let headline = |i: usize| {
        let s = webhook::slack(&serde_json::to_value(&msgs[i]).unwrap());
        s["text"].as_str().unwrap().to_string()
    };
    assert!(
        headline(0).starts_with("[MEDIUM] opened: weight.unexpected_reader on gpu-node-1: python3"),
        "{}",
        headline(0)
    );
    assert!(
        headline(1)
            .starts_with("[CRITICAL] escalated (medium → critical): weight.exfiltration on gpu-node-1"),
        "{}",
        headline(1)
    );
    assert!(
        headline(2)
            .starts_with("[CRITICAL] resolved (stopped): weight.exfiltration on gpu-node-1: incident over"),
        "{}",
        headline(2)
    );
    let s = webhook::slack(&serde_json::to_value(&msgs[2]).unwrap());
    let fields: HashMap<&str, &str> = s["attachments"][0]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["title"].as_str().unwrap(), f["value"].as_str().unwrap()))
        .collect();
    assert_eq!(fields["Rules"], "weight.unexpected_reader, weight.exfiltration");
    assert_eq!(fields["Incident id"], msgs[0].incident_id);
    assert!(
        fields["Totals"].starts_with("read 2.0 GiB, sent 2.0 GiB"),
        "{}",
        fields["Totals"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_incidents_alerts_are_renewed_until_resolved() {
    let dir = tempfile::tempdir().unwrap();
    let am = Receiver::start(always(ok)).await;
    let mut c = cfg(
        dir.path(),
        vec![WebhookTarget {
            preset: Preset::Alertmanager,
            ..target(am.url())
        }],
    );
    c.alertmanager.refresh = Duration::from_millis(100);
    let d = Delivery::start(c, Arc::new(NoObserver)).await.unwrap();
    // Renewals are not spooled alerts: they carry no alert id.
    let renewals = || {
        am.reqs()
            .into_iter()
            .filter(|r| r.id().is_empty())
            .collect::<Vec<_>>()
    };
    let msgs = incident_messages();
    d.set_open_incidents(std::iter::once(msgs[0].incident_id.as_str()));
    d.send(&msgs[0]);
    wait_for("two renewals", Duration::from_secs(5), || renewals().len() >= 2).await;
    let first: Value = serde_json::from_slice(&am.reqs()[0].body).unwrap();
    let renewed: Value = serde_json::from_slice(&renewals().last().unwrap().body).unwrap();
    assert_eq!(renewed.as_array().unwrap().len(), 1);
    assert_eq!(renewed[0]["labels"], first[0]["labels"]);
    assert!(
        renewed[0]["endsAt"].as_str().unwrap() > first[0]["endsAt"].as_str().unwrap(),
        "the lease moves on: {renewed}"
    );

    // Once its resolution is delivered, nothing renews it (whatever the open set says yet).
    d.send(&msgs[2]);
    wait_for("the resolution", Duration::from_secs(5), || {
        am.delivered_ids().contains(&msgs[2].alert.id)
    })
    .await;
    let n = renewals().len();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(renewals().len(), n, "a resolved incident was renewed");

    // An incident the agent no longer has open (its resolution evicted, a restart) is not
    // renewed either: its alert ends with its lease.
    let other = incident_messages();
    d.set_open_incidents(std::iter::empty());
    d.send(&other[0]);
    wait_for("the other opening", Duration::from_secs(5), || {
        am.delivered_ids().contains(&other[0].alert.id)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(renewals().len(), n, "an incident that is not open was renewed");
    d.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_target_keeps_its_own_place_in_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let up = Receiver::start(always(ok)).await;
    let down = Down::new();
    let counts = Arc::new(Counts::default());
    let down_url = down.url();
    let c = || cfg(dir.path(), vec![target(up.url()), target(down_url.clone())]);
    let d = Delivery::start(c(), counts.clone()).await.unwrap();
    for i in 0..5 {
        d.send(&alert(i, "high"));
    }
    wait_for("5 deliveries", Duration::from_secs(5), || {
        counts.get("delivered") == 5
    })
    .await;
    assert_eq!(spooled(dir.path()).len(), 5, "kept for the target that is down");
    let labels = d.targets();
    assert_eq!(
        labels,
        [format!("http://{}", up.addr), format!("http://{}", down.addr)]
    );
    assert_eq!(counts.get_for(&labels[0], "delivered"), 5);
    assert_eq!(counts.get_for(&labels[1], "delivered"), 0);
    assert!(counts.get_for(&labels[1], "retried") > 0);
    d.shutdown(Duration::from_millis(300)).await;

    // After a restart only the target that was down gets them.
    let late = Receiver::listen(down, always(ok)).await;
    let d = Delivery::start(c(), counts.clone()).await.unwrap();
    wait_for("5 late deliveries", Duration::from_secs(10), || {
        late.delivered_ids().len() == 5
    })
    .await;
    wait_for("an empty spool", Duration::from_secs(2), || {
        spooled(dir.path()).is_empty()
    })
    .await;
    assert_eq!(late.delivered_ids(), ids(0..5));
    assert_eq!(
        up.delivered_ids(),
        ids(0..5),
        "nothing sent twice to the target that was up"
    );
    d.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_in_the_spool_are_cleaned_on_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".tmp-00000000000000000009"), b"half").unwrap();
    std::fs::write(dir.path().join("00000000000000000003-high.json"), b"{not json").unwrap();
    std::fs::write(
        dir.path().join("00000000000000000004-high.json"),
        serde_json::to_vec(&alert(4, "high")).unwrap(),
    )
    .unwrap();
    let rx = Receiver::start(always(ok)).await;
    let d = Delivery::start(cfg(dir.path(), vec![target(rx.url())]), Arc::new(NoObserver))
        .await
        .unwrap();
    d.send(&alert(5, "high"));
    wait_for("2 deliveries", Duration::from_secs(5), || {
        rx.delivered_ids().len() == 2
    })
    .await;
    assert_eq!(rx.delivered_ids(), ids(4..6));
    assert!(!dir.path().join(".tmp-00000000000000000009").exists());
    assert!(dir.path().join("00000000000000000003-high.json.corrupt").exists());
    d.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn bad_targets_are_named_without_their_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let t = target(Url::parse("ftp://user:pw@example.com/hooks/T0/B0/XYZ").unwrap());
    let err = Delivery::start(cfg(dir.path(), vec![t]), Arc::new(NoObserver))
        .await
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("ftp://example.com") && msg.contains("scheme"),
        "{msg}"
    );
    assert!(!msg.contains("XYZ") && !msg.contains("pw"), "{msg}");

    let t = WebhookTarget {
        headers: vec![("X-Api-Key".into(), "line\nbreak".into())],
        ..target(Url::parse("https://example.com/x").unwrap())
    };
    let err = Delivery::start(cfg(dir.path(), vec![t]), Arc::new(NoObserver))
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("X-Api-Key") && !err.to_string().contains("line"),
        "{err}"
    );

    let mut zero = cfg(dir.path(), vec![]);
    zero.spool_max_bytes = 0;
    let err = Delivery::start(zero, Arc::new(NoObserver)).await.err().unwrap();
    assert!(err.to_string().contains("above zero"), "{err}");
    let mut zero = cfg(dir.path(), vec![]);
    zero.memory_max_bytes = 0;
    let err = Delivery::start(zero, Arc::new(NoObserver)).await.err().unwrap();
    assert!(
        err.to_string().contains("memory_max_bytes") && err.to_string().contains("above zero"),
        "{err}"
    );

    let err = Delivery::start(
        cfg(Path::new("/proc/llmwatch-spool"), vec![]),
        Arc::new(NoObserver),
    )
    .await
    .err()
    .unwrap();
    assert!(err.to_string().contains("/proc/llmwatch-spool"), "{err}");
}

#[tokio::test]
async fn targets_sharing_a_host_get_distinct_labels_and_progress() {
    let dir = tempfile::tempdir().unwrap();
    let a = target(Url::parse("https://hooks.example.com/a").unwrap());
    let b = target(Url::parse("https://hooks.example.com/b").unwrap());
    let d = Delivery::start(cfg(dir.path(), vec![a.clone(), b, a]), Arc::new(NoObserver))
        .await
        .unwrap();
    assert_eq!(
        d.targets(),
        [
            "https://hooks.example.com",
            "https://hooks.example.com#2",
            "https://hooks.example.com#3"
        ]
    );
    d.shutdown(Duration::from_millis(100)).await;
}

#[test]
fn secrets_and_credential_headers_are_never_printed() {
    let s = Secret::new(&b"hunter2"[..]);
    assert_eq!(format!("{s:?}"), "<redacted>");
    assert_eq!(format!("{s}"), "<redacted>");
    let t = WebhookTarget {
        headers: vec![
            ("Authorization".into(), "Bearer abc".into()),
            ("X-Auth-Token".into(), "tok".into()),
            ("X-Api-Key".into(), "k".into()),
            ("X-Env".into(), "prod".into()),
        ],
        secret: Some(s),
        ..WebhookTarget::new(Url::parse("https://hooks.slack.com/services/T0/B0/XYZ?token=q").unwrap())
    };
    let shown = format!("{t:?}");
    for leak in ["hunter2", "Bearer", "tok\"", "\"k\"", "XYZ", "token=q"] {
        assert!(!shown.contains(leak), "{leak} in {shown}");
    }
    assert!(
        shown.contains("X-Env: prod") && shown.contains("https://hooks.slack.com"),
        "{shown}"
    );
}

#[test]
fn secrets_load_from_files_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("secret");
    std::fs::write(&p, "abc\r\n").unwrap();
    assert_eq!(Secret::from_file(&p).unwrap().expose(), b"abc");
    std::fs::write(&p, "\n").unwrap();
    assert!(Secret::from_file(&p).unwrap_err().to_string().contains("empty"));
    let missing = dir.path().join("nope");
    assert!(
        Secret::from_file(&missing)
            .unwrap_err()
            .to_string()
            .contains("nope")
    );
    let err = Secret::from_env("LLMWATCH_TEST_SURELY_UNSET_VAR").unwrap_err();
    assert!(err.to_string().contains("LLMWATCH_TEST_SURELY_UNSET_VAR"));
    // PATH is set in any test environment.
    assert!(Secret::from_env("PATH").is_ok());
}

#[test]
fn retry_after_and_backoff() {
    let now: chrono::DateTime<chrono::Utc> = "2026-03-01T12:00:00Z".parse().unwrap();
    assert_eq!(
        webhook::parse_retry_after("120", now),
        Some(Duration::from_secs(120))
    );
    assert_eq!(
        webhook::parse_retry_after("Sun, 01 Mar 2026 12:00:30 GMT", now),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        webhook::parse_retry_after("Sun, 01 Mar 2026 11:00:00 GMT", now),
        Some(Duration::ZERO)
    );
    assert_eq!(webhook::parse_retry_after("soon", now), None);

    let mut j = webhook::Jitter::new();
    let (init, max) = (Duration::from_millis(100), Duration::from_secs(5));
    for attempt in 0..40 {
        let cap = init.saturating_mul(1 << attempt.min(31)).min(max);
        for _ in 0..50 {
            let d = webhook::backoff(attempt, init, max, &mut j);
            assert!(d <= cap.max(Duration::from_millis(1)), "{d:?} > {cap:?}");
        }
    }
    // Full jitter spreads: not all the same.
    let v: Vec<_> = (0..20).map(|_| webhook::backoff(10, init, max, &mut j)).collect();
    assert!(v.iter().any(|d| *d != v[0]));
}

#[test]
fn presets_parse() {
    assert_eq!("Slack".parse::<Preset>().unwrap(), Preset::Slack);
    assert_eq!("alertmanager".parse::<Preset>().unwrap(), Preset::Alertmanager);
    assert_eq!("raw".parse::<Preset>().unwrap(), Preset::Raw);
    assert!("teams".parse::<Preset>().is_err());
}

// ---- a disk that refuses writes ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_holds_alerts_in_memory_and_spooling_resumes_by_itself() {
    let Some(fs) = Tmpfs::mount(
        "a_full_disk_holds_alerts_in_memory_and_spooling_resumes_by_itself",
        "64k",
    ) else {
        return;
    };
    capture_logs();
    let dir = fs.path().join("spool");
    let shown = dir.display().to_string();
    let size = serde_json::to_vec(&alert(0, "low")).unwrap().len() as u64;
    let down = Down::new();
    let counts = Arc::new(Counts::default());
    let mut c = cfg(&dir, vec![target(down.url())]);
    c.memory_max_bytes = 8 * size;
    let d = Delivery::start(c, counts.clone()).await.unwrap();
    let sev = |i: usize| if i.is_multiple_of(4) { "critical" } else { "low" };

    // Episode 1, receiver down: nothing can be written; 8 alerts fit in memory, so of these 12
    // the 4 oldest lows (1, 2, 3, 5) are evicted, counted; the other 8 are held.
    fs.fill();
    for i in 0..12 {
        d.send(&alert(i, sev(i)));
    }
    assert_eq!(counts.dropped("low"), 4);
    assert_eq!(counts.get("dropped"), 4);
    wait_for("8 alerts held", Duration::from_secs(5), || {
        counts.write_errors() >= 8
    })
    .await;
    assert!(counts.write_errors() <= 12, "{}", counts.write_errors());
    assert_eq!(*counts.depth.lock().unwrap(), 8);
    assert!(spooled(&dir).is_empty(), "{:?}", spooled(&dir));
    // The writer is idle between its tries of the disk (one a second): no busy loop.
    let tid = d.spool.writer_tid.load(Ordering::Relaxed);
    let cpu = thread_cpu_ticks(tid);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let spent = thread_cpu_ticks(tid) - cpu;
    assert!(spent <= 10, "the writer used {spent} ticks of CPU in 2.5 s");
    // Once per episode, naming the spool and the error.
    let errors = logged(&[&shown, "cannot write", "No space left on device"]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("ERROR"), "{errors:?}");
    let evicted = logged(&[&shown, "waiting in memory at their limit", "evicted"]);
    assert_eq!(evicted.len(), 4, "{evicted:?}");

    // Space comes back: the held alerts are written by themselves, in a second or so.
    fs.unfill();
    let on_disk: Vec<String> = [0, 4, 6, 7, 8, 9, 10, 11]
        .iter()
        .map(|i| format!("{:020}-{}.json", i + 1, sev(*i)))
        .collect();
    wait_for("the held alerts on disk", Duration::from_secs(5), || {
        spooled(&dir) == on_disk
    })
    .await;
    wait_for("the recovery logged", Duration::from_secs(2), || {
        logged(&[&shown, "writable again"]).len() == 1
    })
    .await;

    // Episode 2: the disk fills again; 4 more alerts are held; the receiver comes up meanwhile.
    fs.fill();
    let held = counts.write_errors();
    for i in 12..16 {
        d.send(&alert(i, sev(i)));
    }
    wait_for("4 more held", Duration::from_secs(5), || {
        counts.write_errors() == held + 4
    })
    .await;
    assert_eq!(
        logged(&[&shown, "cannot write", "No space left on device"]).len(),
        2,
        "once per episode"
    );
    let rx = Receiver::listen(down, always(ok)).await;
    let want: Vec<String> = [0, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
        .iter()
        .map(|i| format!("id-{i:04}"))
        .collect();
    wait_for("12 deliveries", Duration::from_secs(10), || {
        rx.delivered_ids().len() >= 12
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rx.delivered_ids(), want, "in order, exactly once");
    // Every alert is delivered or counted as dropped.
    assert_eq!(counts.get("delivered") + counts.dropped_total(), 16);
    assert!(
        logged(&[&shown, "cannot record progress"]).len() <= 1,
        "progress failures are logged once: {:?}",
        logged(&[&shown, "cannot record progress"])
    );
    wait_for("an empty spool", Duration::from_secs(5), || {
        spooled(&dir).is_empty() && *counts.depth.lock().unwrap() == 0
    })
    .await;
    fs.unfill();
    d.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_held_in_memory_when_delivery_stops_are_counted_as_lost() {
    let Some(fs) = Tmpfs::mount(
        "alerts_held_in_memory_when_delivery_stops_are_counted_as_lost",
        "64k",
    ) else {
        return;
    };
    capture_logs();
    let dir = fs.path().join("spool");
    let down = Down::new();
    let counts = Arc::new(Counts::default());
    let d = Delivery::start(cfg(&dir, vec![target(down.url())]), counts.clone())
        .await
        .unwrap();
    fs.fill();
    for i in 0..3 {
        d.send(&alert(i, "high"));
    }
    wait_for("3 alerts held", Duration::from_secs(5), || {
        counts.write_errors() == 3
    })
    .await;
    assert_eq!(counts.dropped_total(), 0, "held, not lost (yet)");
    d.shutdown(Duration::from_millis(300)).await;
    assert_eq!(counts.dropped("high"), 3);
    assert_eq!(counts.get("dropped"), 3);
    let lost = logged(&[&dir.display().to_string(), "lost as delivery stops"]);
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert!(
        lost[0].contains("id-0000, id-0001, id-0002") && lost[0].contains("No space left on device"),
        "{lost:?}"
    );
    fs.unfill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backoff_is_the_targets_not_the_alerts() {
    // A spool of 2 alerts, the receiver answering 503, alerts coming faster than retries: the
    // alert being retried is evicted again and again. The next one must wait out the backoff,
    // not be tried at once with a fresh one.
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(always(|| status(503))).await;
    let size = serde_json::to_vec(&alert(0, "low")).unwrap().len() as u64;
    let counts = Arc::new(Counts::default());
    let mut c = cfg(dir.path(), vec![target(rx.url())]);
    c.spool_max_bytes = 2 * size;
    c.retry_initial = Duration::from_millis(10);
    c.retry_max = Duration::from_millis(200);
    let d = Delivery::start(c, counts.clone()).await.unwrap();
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(2) {
        d.send(&alert(i, "low"));
        i += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let posts = rx.reqs().len();
    let took = start.elapsed();
    eprintln!("{posts} attempts in {took:?} while {i} alerts came");
    // Full jitter averages half of retry_max once ramped up (5 doublings from 10 ms): about 20
    // attempts in 2 s. A backoff restarting with each alert makes hundreds.
    assert!(posts <= 45, "{posts} attempts in {took:?}");
    assert!(counts.dropped("low") as usize >= i - 2);
    d.shutdown(Duration::from_millis(100)).await;
}

#[test]
fn alertmanager_labels_name_the_pod_and_keep_them_for_the_incident() {
    use crate::state::pods::{PodIdentity, Workload};
    let pod = |name: &str| PodIdentity {
        namespace: "ml-team".into(),
        pod: name.into(),
        pod_uid: "6f1c0e1e-pod".into(),
        container: "shell".into(),
        workload: Some(Workload {
            kind: "Deployment".into(),
            name: "thief".into(),
            from: "label pod-template-hash and the pod name".into(),
        }),
        labels: [("app".to_string(), "thief".to_string())].into(),
        source: "containerd".into(),
    };
    let mut tracker = crate::alerts::incidents::Incidents::new(Duration::from_secs(600));
    let mut out = Vec::new();
    for (i, severity, name) in [
        (1, "medium", "thief-7d4b9c8f6-x2k9q"),
        (2, "critical", "other-pod"),
    ] {
        let mut hit = alert(i, severity);
        hit.scope = "tree:4242".into();
        hit.process.pod = Some("6f1c0e1e-pod".into());
        hit.process.kubernetes = Some(pod(name));
        tracker.on_hit(hit, &|_| true, &mut out);
    }
    let am = AlertmanagerOptions::default();
    let now: chrono::DateTime<chrono::Utc> = "2026-03-01T12:00:05Z".parse().unwrap();
    for m in &out {
        let body = webhook::alertmanager(&serde_json::to_value(m).unwrap(), now, &am);
        for a in body.as_array().unwrap() {
            // The incident's pod (the first hit's), in every message, whatever a later hit says.
            assert_eq!(a["labels"]["namespace"], "ml-team", "{a}");
            assert_eq!(a["labels"]["pod"], "thief-7d4b9c8f6-x2k9q", "{a}");
            assert!(a["labels"].get("container").is_none(), "{a}");
        }
    }
    let body = webhook::alertmanager(&serde_json::to_value(&out[0]).unwrap(), now, &am);
    let ann = &body[0]["annotations"];
    assert_eq!(
        ann["container"], "ml-team/thief-7d4b9c8f6-x2k9q container shell (Deployment thief)",
        "{ann}"
    );
}
