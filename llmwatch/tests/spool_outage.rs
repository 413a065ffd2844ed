//! A webhook that is down for an hour while alerts keep coming at 10/s (36,000 alerts), against
//! a real HTTP receiver on loopback, with time compressed 1000×: retries start at 1 ms and are
//! capped at 300 ms (the agent's 1 s and 300 s), and the 36,000 alerts come in 3.6 s.
//!
//! Checked: the spool stays within its byte cap; the heap (counted by this binary's global
//! allocator, so nothing else in the process interferes) does not grow with the number of
//! alerts; the alerts evicted are the oldest of the lowest severity first (every critical
//! survives), and every one of them is counted; the receiver is not stormed with retries; when
//! it comes back the kept alerts arrive in order, exactly once.
//!
//! Its own test binary, with a single test: the allocator's counts are process-wide. The
//! spool is on a tmpfs when one can be had (see [`SpoolDir`]), so the disk's fsync speed does
//! not decide how far the writer lags.
use std::{
    alloc::{GlobalAlloc, Layout, System},
    collections::BTreeSet,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use llmwatch::{
    alerts::Alert,
    sinks::{Delivery, DeliveryConfig, DeliveryObserver, WebhookTarget},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};

// ---- heap accounting ----

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on.
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: the caller's contract is passed on.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            LIVE.fetch_sub(l.size(), Ordering::Relaxed);
            grew(new);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// VmRSS of this process, in KiB (for the report only: the heap counts are what is asserted).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

// ---- the receiver: minimal HTTP/1.1 with keep-alive; 503 while down, 200 once up ----

#[derive(Default)]
struct Receiver {
    up: AtomicBool,
    /// Requests answered 503.
    refused: AtomicU64,
    /// Ids of the requests answered 200, in arrival order.
    delivered: Mutex<Vec<String>>,
}

async fn serve(stream: TcpStream, rx: Arc<Receiver>) {
    let mut rd = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if rd.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let (mut len, mut id) = (0usize, String::new());
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
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    "x-llmwatch-alert-id" => id = v.trim().to_string(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; len];
        if rd.read_exact(&mut body).await.is_err() {
            return;
        }
        let status = if rx.up.load(Ordering::SeqCst) {
            rx.delivered.lock().unwrap().push(id);
            "200 OK"
        } else {
            rx.refused.fetch_add(1, Ordering::SeqCst);
            "503 Service Unavailable"
        };
        let out = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
        if rd.get_mut().write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

// ---- the observer: fixed-size counters only ----

#[derive(Default)]
struct Counts {
    delivered: AtomicU64,
    retried: AtomicU64,
    dropped: AtomicU64,
    /// spool_dropped by severity rank (info, low, medium, high, critical).
    spool_dropped: [AtomicU64; 5],
    depth: AtomicU64,
}

impl DeliveryObserver for Counts {
    fn outcome(&self, _target: &str, outcome: &'static str) {
        match outcome {
            "delivered" => &self.delivered,
            "retried" => &self.retried,
            "dropped" => &self.dropped,
            _ => return,
        }
        .fetch_add(1, Ordering::SeqCst);
    }

    fn spool_depth(&self, alerts: u64) {
        self.depth.store(alerts, Ordering::SeqCst);
    }

    fn spool_dropped(&self, severity: &str) {
        self.spool_dropped[rank(severity)].fetch_add(1, Ordering::SeqCst);
    }
}

const SEVERITIES: [&str; 5] = ["info", "low", "medium", "high", "critical"];

fn rank(severity: &str) -> usize {
    SEVERITIES.iter().position(|s| *s == severity).unwrap()
}

/// Every alert has the same JSON length whatever its severity.
fn template() -> Alert {
    serde_json::from_value(serde_json::json!({
        "id": "id-00000",
        "time": "2026-03-01T12:00:00Z",
        "rule": "weights_exfil",
        "severity": "info",
        "summary": "python3 read 2 GiB of llama.safetensors and sent it to 203.0.113.9",
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

fn alert(t: &Alert, i: usize, sev: usize) -> Alert {
    let mut a = t.clone();
    a.id = format!("id-{i:05}");
    a.severity = serde_json::from_value(serde_json::json!(SEVERITIES[sev])).unwrap();
    a.summary.push_str(&"x".repeat(10 - SEVERITIES[sev].len()));
    a
}

/// Alert `i`'s severity: over the second half hour one in 100 is critical; the rest are spread
/// over the four others. No critical in the first half hour: the oldest alert, the one being
/// retried, is evicted again and again (a critical at the head would never be).
fn severity_of(i: usize) -> usize {
    if i >= ALERTS / 2 && i % 100 == 50 {
        4
    } else {
        (i * 7919 / 13) % 4
    }
}

/// The spool's eviction rule on equal-sized alerts: the oldest of the lowest severity goes
/// first, the new alert included.
fn model(n: usize, room: usize) -> (BTreeSet<usize>, [u64; 5]) {
    let mut set = BTreeSet::new();
    let mut evicted = [0u64; 5];
    for i in 0..n {
        set.insert((severity_of(i), i));
        if set.len() > room {
            let (sev, _) = set.pop_first().unwrap();
            evicted[sev] += 1;
        }
    }
    (set.into_iter().map(|(_, i)| i).collect(), evicted)
}

/// The names of the alert files in the spool directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    v.sort();
    v
}

/// (alert files, their total bytes) in the spool directory.
fn on_disk(dir: &Path) -> (usize, u64) {
    let mut n = 0;
    let mut bytes = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().ends_with(".json") {
            n += 1;
            bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    (n, bytes)
}

async fn wait_for(what: &str, limit: Duration, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The spool's directory, on a tmpfs where possible (fsync is free there, so the test measures
/// the delivery's bookkeeping, not the disk): under /dev/shm, else a tmpfs mounted for the test
/// (root), else a plain temporary directory (saying so). Unmounted on drop, also on failure.
struct SpoolDir {
    dir: tempfile::TempDir,
    mounted: bool,
    /// On a tmpfs.
    fast: bool,
}

fn is_tmpfs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated string and a zeroed statfs for the kernel to fill.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type == libc::TMPFS_MAGIC
    }
}

impl SpoolDir {
    fn new() -> SpoolDir {
        let shm = Path::new("/dev/shm");
        if is_tmpfs(shm)
            && let Ok(dir) = tempfile::tempdir_in(shm)
        {
            return SpoolDir {
                dir,
                mounted: false,
                fast: true,
            };
        }
        let dir = tempfile::tempdir().unwrap();
        let path = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                path.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                c"size=256m,mode=0700".as_ptr().cast(),
            )
        };
        let mounted = rc == 0;
        if !mounted {
            eprintln!(
                "note: no tmpfs (/dev/shm is none, and mounting one failed: {}); the spool is on {} \
                 instead, where fsync makes the writer slower",
                std::io::Error::last_os_error(),
                dir.path().display()
            );
        }
        SpoolDir {
            dir,
            mounted,
            fast: mounted,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SpoolDir {
    fn drop(&mut self) {
        if self.mounted {
            let path = std::ffi::CString::new(self.dir.path().as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: a valid NUL-terminated string.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

const ALERTS: usize = 36_000;
/// Per compressed millisecond (10/s for an hour, 1000× faster).
const PER_TICK: usize = 10;
const SPOOL_MAX_BYTES: u64 = 1 << 20;
const RETRY_MAX: Duration = Duration::from_millis(300);

#[test]
fn an_hour_long_outage_at_10_alerts_per_second_stays_bounded_and_drains_in_order() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(outage());
}

async fn outage() {
    let spool_dir = SpoolDir::new();
    let dir = spool_dir.path();
    let t = template();
    let size = serde_json::to_vec(&alert(&t, 0, 4)).unwrap().len() as u64;
    for sev in 0..5 {
        assert_eq!(
            serde_json::to_vec(&alert(&t, 35_999, sev)).unwrap().len() as u64,
            size
        );
    }
    let room = (SPOOL_MAX_BYTES / size) as usize;
    let (kept, evicted) = model(ALERTS, room);
    // The files the spool holds half way and at the end (seq = i + 1).
    let file_names = |kept: &BTreeSet<usize>| -> Vec<String> {
        kept.iter()
            .map(|i| format!("{:020}-{}.json", i + 1, SEVERITIES[severity_of(*i)]))
            .collect()
    };
    let files_half = file_names(&model(ALERTS / 2, room).0);
    let files_end = file_names(&kept);
    let criticals = (0..ALERTS).filter(|i| severity_of(*i) == 4).count();
    assert!(
        criticals < room,
        "the test needs fewer criticals than the spool holds"
    );
    let want: Vec<String> = kept.iter().map(|i| format!("id-{i:05}")).collect();

    let rx = Arc::new(Receiver::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = {
        let rx = rx.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve(s, rx.clone()));
            }
        })
    };
    let counts = Arc::new(Counts::default());
    let mut target = WebhookTarget::new(format!("http://{addr}/hook").parse().unwrap());
    target.timeout = Duration::from_secs(2);
    let d = Delivery::start(
        DeliveryConfig {
            targets: vec![target],
            spool_dir: dir.to_path_buf(),
            spool_max_bytes: SPOOL_MAX_BYTES,
            retry_initial: Duration::from_millis(1),
            retry_max: RETRY_MAX,
            ..Default::default()
        },
        counts.clone(),
    )
    .await
    .unwrap();

    // Warm up (the HTTP client, the runtime) with the first alert, the receiver down; then measure.
    d.send(&alert(&t, 0, severity_of(0)));
    wait_for("the first refusal", Duration::from_secs(5), || {
        rx.refused.load(Ordering::SeqCst) > 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (rss_before, heap_before) = (rss_kib(), live());
    PEAK.store(heap_before, Ordering::Relaxed);
    let refused_before = rx.refused.load(Ordering::SeqCst);
    // What the spool's index may use per alert it holds, generously; the alerts' bytes wait in
    // memory only until written (at most the spool's size here).
    let index = room * 512 + (512 << 10);
    // The writer has caught up (the spool on disk is what the index holds, a full spool) and
    // the heap is down to the index: returns the heap then.
    let settled = async |files: &[String]| {
        wait_for("the writer to catch up", Duration::from_secs(30), || {
            names(dir) == files && counts.depth.load(Ordering::SeqCst) == room as u64
        })
        .await;
        wait_for("the heap to settle", Duration::from_secs(10), || {
            live() < heap_before + index
        })
        .await;
        live()
    };

    // The outage: 36,000 alerts in 3,600 compressed ms (and a pause half way, to measure).
    let start = tokio::time::Instant::now();
    let mut heap_half = 0;
    let mut max_disk = 0;
    let mut paused = Duration::ZERO;
    for tick in 0..ALERTS / PER_TICK {
        for i in (tick * PER_TICK).max(1)..(tick + 1) * PER_TICK {
            d.send(&alert(&t, i, severity_of(i)));
        }
        if tick % 500 == 499 {
            max_disk = max_disk.max(on_disk(dir).1);
        }
        if tick == ALERTS / PER_TICK / 2 - 1 {
            let p = Instant::now();
            heap_half = settled(&files_half).await;
            paused = p.elapsed();
        }
        tokio::time::sleep_until(start + paused + Duration::from_millis(tick as u64 + 1)).await;
    }
    let heap_peak = PEAK.load(Ordering::Relaxed);
    let heap_after = settled(&files_end).await;
    let outage = start.elapsed();
    let rss_after = rss_kib();
    let (files, disk_bytes) = on_disk(dir);
    let posts = rx.refused.load(Ordering::SeqCst) - refused_before;
    let dropped: u64 = counts
        .spool_dropped
        .iter()
        .map(|c| c.load(Ordering::SeqCst))
        .sum();
    eprintln!(
        "outage of {outage:?} ({ALERTS} alerts of {size} bytes, {paused:?} paused half way): heap \
         {heap_before} -> {heap_half} (half) -> {heap_after} bytes, peak {heap_peak}; VmRSS {rss_before} -> \
         {rss_after} KiB; spool {files} files, {disk_bytes} bytes (cap {SPOOL_MAX_BYTES}, max seen while \
         sending {max_disk}); evicted {dropped}; POST attempts while down {posts}, retried {}",
        counts.retried.load(Ordering::SeqCst)
    );

    // The spool stays within its cap.
    assert!(disk_bytes <= SPOOL_MAX_BYTES, "{disk_bytes} bytes on disk");
    assert_eq!(files, room, "the spool is full, no more");
    // Bounded memory: the second 18,000 alerts left nothing behind, and the peak is the index
    // plus at most a spool's worth of alerts waiting for the writer.
    // (On a slow disk, either measure may catch the writer with a batch not yet released.)
    let late = heap_after.saturating_sub(heap_half);
    assert!(
        late < if spool_dir.fast { 256 << 10 } else { index },
        "the heap grew by {late} bytes over the second 18,000 alerts: per-alert bookkeeping?"
    );
    let peak = heap_peak - heap_before;
    assert!(
        peak < SPOOL_MAX_BYTES as usize + index + (1 << 20),
        "the heap peaked {peak} bytes above its start"
    );
    // Evictions: the oldest of the lowest severity first, every one counted.
    assert_eq!(dropped, (ALERTS - room) as u64);
    assert_eq!(counts.dropped.load(Ordering::SeqCst), dropped);
    let by_sev: Vec<u64> = counts
        .spool_dropped
        .iter()
        .map(|c| c.load(Ordering::SeqCst))
        .collect();
    assert_eq!(by_sev[4], 0, "no critical alert is evicted");
    assert_eq!(by_sev, evicted);
    // No retry storm: about one attempt per half retry_max (full jitter), plus the ramp-up.
    let bound = 4 * outage.as_millis() as u64 / RETRY_MAX.as_millis() as u64 + 20;
    assert!(
        posts <= bound,
        "{posts} POST attempts in {outage:?} (at most {bound})"
    );

    // The receiver comes back: the kept alerts arrive in order, exactly once.
    rx.up.store(true, Ordering::SeqCst);
    wait_for("the backlog to drain", Duration::from_secs(60), || {
        rx.delivered.lock().unwrap().len() >= want.len()
    })
    .await;
    wait_for("an empty spool", Duration::from_secs(5), || on_disk(dir).0 == 0).await;
    // The marker for "exactly once": one more alert, sent after the backlog. A target is
    // served in spool order, so a second copy of any kept alert would arrive before it.
    let marker = alert(&t, ALERTS, 4);
    d.send(&marker);
    let want: Vec<String> = want.into_iter().chain([marker.id.clone()]).collect();
    // Received, and its delivery counted (the count follows the receiver's answer).
    wait_for("the marker alert", Duration::from_secs(10), || {
        rx.delivered.lock().unwrap().contains(&marker.id)
            && counts.delivered.load(Ordering::SeqCst) >= want.len() as u64
    })
    .await;
    assert_eq!(*rx.delivered.lock().unwrap(), want, "in order, exactly once");
    assert_eq!(counts.delivered.load(Ordering::SeqCst), want.len() as u64);
    wait_for("an empty spool", Duration::from_secs(5), || on_disk(dir).0 == 0).await;
    assert_eq!(counts.depth.load(Ordering::SeqCst), 0);
    d.shutdown(Duration::from_secs(1)).await;
    server.abort();
}
