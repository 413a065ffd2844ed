//! The on-disk spool: every accepted alert is a file here until every target has it.
//!
//! Layout of the spool directory (mode 0700, files 0600):
//!
//! ```text
//! <dir>/lock                                   flock()ed by the running agent: one agent per spool
//! <dir>/00000000000000000042-critical.json     one alert: its JSON exactly as `Raw` sends it
//! <dir>/progress/<target key>                  "<seq>\n": this target is done with every seq <= it
//! <dir>/.tmp-<seq>, progress/.<key>.tmp        being written (removed on start)
//! ```
//!
//! The sequence number is a zero-padded u64, so file names sort in delivery order. A target's
//! key is the first 16 hex digits of SHA-256 of its URL (so no URL secret lands in a file name).
//! Each target is served in sequence order and its progress only moves forward, so "done up to
//! seq N" is the whole per-target state. A file is deleted once every configured target's
//! progress has passed it. A target that has no progress file yet (newly configured) starts at
//! the oldest alert still in the spool.
//!
//! Writes: `send` only updates the in-memory index (sequence number, size, eviction) and queues
//! the alert for the writer thread, so it never waits for the disk. The writer writes each alert
//! to a temporary file and renames it into place, then fsyncs the files and the directory once
//! per batch, and only then publishes the batch to the senders: nothing is POSTed before it is
//! durable. The writer is woken at once, so the alerts a SIGKILL can lose are those accepted in
//! the last moments (microseconds to a few ms); `shutdown` and drop let the writer finish its
//! queue. The writer holds the spool's flock until its queue is empty, so a new agent never
//! opens a spool that is still being written. Progress files are renamed into place without
//! fsync: after a power loss a target may get an alert again, which receivers dedupe by its id.
//!
//! A disk that refuses writes (full, read-only, I/O errors) does not lose alerts: an alert the
//! writer cannot write (or fsync) is *held* in memory, published to the senders and delivered
//! from there; the failure is logged once per episode (naming the spool and the error) and each
//! alert held is counted (`DeliveryObserver::spool_write_error`). While alerts are held, the
//! writer tries the disk again every [`PROBE_INTERVAL`] (the oldest held alert first; new alerts
//! are held without a try in between), and once a write succeeds it writes every held alert, in
//! order, and logs that the spool is writable again. What waits in memory (alerts not yet
//! written, and held ones) is bounded by the delivery's `memory_max_bytes`: past it the oldest
//! of the lowest severity in memory is evicted, counted and logged like any eviction. Alerts
//! still held when the agent stops are tried once more, then counted as dropped and logged.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use tokio::sync::watch;

use super::{DeliveryError, DeliveryObserver};

/// How often the writer tries the disk again while alerts are held in memory.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Alert ids named in one log line about many alerts (the rest are counted).
const IDS_LOGGED: usize = 20;

/// What the spool knows of one alert without reading its file.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub size: u64,
    pub rank: u8,
    pub severity: String,
    pub rule: String,
    pub id: String,
}

/// The next thing a target should do.
pub(crate) enum Next {
    /// Deliver this alert.
    Ready(u64, Entry),
    /// Nothing durable is pending; `unsynced` tells whether alerts are waiting for the writer.
    Wait { unsynced: bool },
}

/// An alert whose bytes are in memory: not yet written, or held because the disk refused it.
struct InMemory {
    body: Arc<[u8]>,
    /// The writer could not write it: delivered from memory, written when the disk allows.
    held: bool,
}

struct State {
    next_seq: u64,
    entries: BTreeMap<u64, Entry>,
    /// (severity rank, seq): the first element is the next to evict.
    by_rank: BTreeSet<(u8, u64)>,
    bytes: u64,
    /// The entries whose bytes are in memory, by seq and by (rank, seq), and their total size.
    memory: BTreeMap<u64, InMemory>,
    memory_by_rank: BTreeSet<(u8, u64)>,
    memory_bytes: u64,
    /// How many of `memory` are held.
    held: usize,
    /// Files of evicted alerts, for the writer to delete (`send` never touches the disk). At
    /// most one per file on disk, so bounded like the spool.
    removals: Vec<PathBuf>,
    evict_log: EvictLog,
    /// Per target: every seq <= this is done (delivered, failed or evicted).
    progress: Vec<u64>,
    /// Wakes the writer (a full buffer means it is already woken).
    writer: Option<mpsc::SyncSender<()>>,
}

/// Eviction log lines: the first `EVICT_LINES` of each minute one by one, the rest as one
/// summary line (an hour-long outage at 10 alerts/s would otherwise log 34,000 warnings). Every
/// eviction is counted in `llmwatch_spool_dropped_total` either way.
#[derive(Default)]
struct EvictLog {
    since: Option<std::time::Instant>,
    lines: u32,
    quiet: u64,
}

const EVICT_LINES: u32 = 10;

impl EvictLog {
    /// Whether this eviction gets its own line; logs the summary of a finished minute.
    fn line_for_next(&mut self, what: &str) -> bool {
        let now = std::time::Instant::now();
        if self
            .since
            .is_none_or(|s| now.duration_since(s) >= std::time::Duration::from_secs(60))
        {
            if self.quiet > 0 {
                log::warn!(
                    "{what}: {} more alerts evicted in the last minute (each counted in \
                     llmwatch_spool_dropped_total, oldest lowest-severity first)",
                    self.quiet
                );
            }
            *self = EvictLog {
                since: Some(now),
                lines: 0,
                quiet: 0,
            };
        }
        if self.lines < EVICT_LINES {
            self.lines += 1;
            true
        } else {
            self.quiet += 1;
            false
        }
    }
}

impl State {
    /// Takes `seq` out of the index; whether its bytes were in memory (else: in its file).
    fn take(&mut self, seq: u64) -> Option<(Entry, bool)> {
        let e = self.entries.remove(&seq)?;
        self.by_rank.remove(&(e.rank, seq));
        self.bytes -= e.size;
        let in_memory = match self.memory.remove(&seq) {
            Some(m) => {
                self.memory_by_rank.remove(&(e.rank, seq));
                self.memory_bytes -= e.size;
                if m.held {
                    self.held -= 1;
                }
                true
            }
            None => false,
        };
        Some((e, in_memory))
    }
}

/// Why an alert is evicted.
#[derive(Clone, Copy)]
enum Full {
    /// The spool's byte limit.
    Spool,
    /// The limit on alert bytes waiting in memory.
    Memory,
}

/// A time the disk refused writes, from the first failure to the first write that succeeds.
struct Episode {
    since: Instant,
    last_probe: Instant,
    /// Alerts held in memory since it began.
    held: u64,
    /// The latest error.
    error: String,
}

/// One alert for the writer.
struct Job {
    seq: u64,
    severity: String,
    body: Arc<[u8]>,
}

pub(crate) struct Target {
    pub label: String,
    pub key: String,
    /// False while the target's last attempt asked for a retry.
    pub healthy: AtomicBool,
}

pub(crate) struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// Bound on the bytes of alerts waiting in memory (queued for the writer, or held).
    memory_max: u64,
    observer: Arc<dyn DeliveryObserver>,
    pub targets: Vec<Target>,
    state: Mutex<State>,
    /// Every seq <= this has been written and fsynced, held in memory, or given up on.
    synced: watch::Sender<u64>,
    /// Progress files cannot be written (logged once until they can again).
    progress_failing: AtomicBool,
    /// The writer thread's id, for tests that measure its CPU time.
    #[cfg(test)]
    pub(crate) writer_tid: std::sync::atomic::AtomicI32,
}

/// The open spool and its writer thread.
pub(crate) struct Opened {
    pub spool: Arc<Spool>,
    pub writer: std::thread::JoinHandle<()>,
}

/// info < low < medium < high < critical; anything else counts as medium.
pub(crate) fn rank(severity: &str) -> u8 {
    match severity {
        "info" => 0,
        "low" => 1,
        "high" => 3,
        "critical" => 4,
        _ => 2,
    }
}

fn entry_name(seq: u64, severity: &str) -> String {
    format!("{seq:020}-{severity}.json")
}

/// `00000000000000000042-critical.json` → (42, "critical").
fn parse_name(name: &str) -> Option<(u64, &str)> {
    let stem = name.strip_suffix(".json")?;
    let (seq, sev) = stem.split_once('-')?;
    if seq.len() != 20 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if sev.is_empty() || !sev.bytes().all(|b| b.is_ascii_lowercase()) {
        return None;
    }
    Some((seq.parse().ok()?, sev))
}

/// Lowercase letters only, so it is safe in a file name.
pub(crate) fn clean_severity(s: &str) -> String {
    let s: String = s
        .chars()
        .filter(|c| c.is_ascii_alphabetic())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if s.is_empty() { "unknown".to_string() } else { s }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Takes the spool's flock, waiting a moment for a writer that is finishing its queue.
fn lock_dir(dir: &Path) -> Result<File, DeliveryError> {
    let path = dir.join("lock");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|source| DeliveryError::Spool {
            path: path.clone(),
            source,
        })?;
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        // SAFETY: flock on a descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(f);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(DeliveryError::Spool { path, source: e });
        }
        if std::time::Instant::now() >= give_up {
            return Err(DeliveryError::SpoolBusy {
                path: dir.to_path_buf(),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Deletes `files` (a missing one is fine); one warning for all the failures.
fn remove_all(files: &[PathBuf]) {
    let mut failed = 0;
    let mut first = None;
    for path in files {
        if let Err(e) = fs::remove_file(path)
            && e.kind() != io::ErrorKind::NotFound
        {
            failed += 1;
            first.get_or_insert((path, e));
        }
    }
    if let Some((path, e)) = first {
        log::warn!(
            "spool: cannot remove {} ({e}) and {} other file(s) of delivered or evicted alerts",
            path.display(),
            failed - 1
        );
    }
}

fn read_progress(path: &Path) -> Option<u64> {
    fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `a, b, c and 7 more`.
fn some_ids<'a>(ids: impl ExactSizeIterator<Item = &'a str>) -> String {
    let n = ids.len();
    let s: Vec<&str> = ids.take(IDS_LOGGED).collect();
    let more = n - s.len();
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!("{}{more}", s.join(", "))
}

impl Spool {
    /// Opens (creating) the spool at `dir` for these targets (label, key) and loads what is in it.
    /// `memory_max` bounds the alert bytes waiting in memory (at most `max_bytes`).
    pub(crate) fn open(
        dir: &Path,
        max_bytes: u64,
        memory_max: u64,
        targets: Vec<(String, String)>,
        observer: Arc<dyn DeliveryObserver>,
    ) -> Result<Opened, DeliveryError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DeliveryError::Spool { path, source }
        };
        let progress_dir = dir.join("progress");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&progress_dir)
            .map_err(err(&progress_dir))?;
        let lock = lock_dir(dir)?;

        // Progress of every target ever seen here (removed targets count for the next seq).
        let mut known: HashMap<String, u64> = HashMap::new();
        for de in fs::read_dir(&progress_dir).map_err(err(&progress_dir))? {
            let de = de.map_err(err(&progress_dir))?;
            let name = de.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                let _ = fs::remove_file(de.path());
            } else if let Some(seq) = read_progress(&de.path()) {
                known.insert(name, seq);
            }
        }
        let progress: Vec<u64> = targets
            .iter()
            .map(|(_, key)| known.get(key).copied().unwrap_or(0))
            .collect();

        let mut entries = BTreeMap::new();
        for de in fs::read_dir(dir).map_err(err(dir))? {
            let de = de.map_err(err(dir))?;
            let name = de.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") {
                let _ = fs::remove_file(de.path());
                continue;
            }
            let Some((seq, sev)) = parse_name(&name) else {
                continue;
            };
            match fs::read(de.path()).map_err(|e| e.to_string()).and_then(|b| {
                let v: serde_json::Value = serde_json::from_slice(&b).map_err(|e| e.to_string())?;
                Ok((b.len() as u64, v))
            }) {
                Ok((size, v)) => {
                    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
                    let severity = sev.to_string();
                    entries.insert(
                        seq,
                        Entry {
                            size,
                            rank: rank(&severity),
                            severity,
                            rule: field("rule"),
                            id: field("id"),
                        },
                    );
                }
                Err(e) => {
                    let aside = de.path().with_extension("json.corrupt");
                    log::warn!(
                        "spool: {} is unreadable ({e}); moved aside to {}",
                        de.path().display(),
                        aside.display()
                    );
                    let _ = fs::rename(de.path(), &aside);
                }
            }
        }
        sync_dir(dir).map_err(err(dir))?;
        let max_seen = entries
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(known.values().copied().max().unwrap_or(0));
        let loaded = entries.len();
        let by_rank = entries.iter().map(|(s, e)| (e.rank, *s)).collect();
        let bytes = entries.values().map(|e| e.size).sum();
        let (synced, _) = watch::channel(max_seen);
        let (tx, rx) = mpsc::sync_channel(1);
        let spool = Arc::new(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            memory_max: memory_max.min(max_bytes),
            observer,
            targets: targets
                .into_iter()
                .map(|(label, key)| Target {
                    label,
                    key,
                    healthy: AtomicBool::new(true),
                })
                .collect(),
            state: Mutex::new(State {
                next_seq: max_seen + 1,
                entries,
                by_rank,
                bytes,
                memory: BTreeMap::new(),
                memory_by_rank: BTreeSet::new(),
                memory_bytes: 0,
                held: 0,
                removals: Vec::new(),
                evict_log: EvictLog::default(),
                progress,
                writer: Some(tx),
            }),
            synced,
            progress_failing: AtomicBool::new(false),
            #[cfg(test)]
            writer_tid: std::sync::atomic::AtomicI32::new(0),
        });
        let writer = {
            let spool = spool.clone();
            let from = max_seen + 1;
            std::thread::Builder::new()
                .name("llmwatch-spool".into())
                .spawn(move || spool.writer(&rx, lock, from))
                .map_err(err(dir))?
        };
        {
            let mut st = spool.lock();
            // Done everywhere but not yet deleted (stopped between the two steps).
            remove_all(&spool.collect_done(&mut st));
            if st.bytes > max_bytes {
                log::warn!(
                    "spool {}: {} bytes over the limit of {max_bytes}; evicting",
                    dir.display(),
                    st.bytes
                );
            }
            while st.bytes > max_bytes && spool.evict_first(&mut st) {}
            remove_all(&std::mem::take(&mut st.removals));
            if loaded > 0 {
                log::info!(
                    "spool {}: {} alert(s) ({} bytes) from before the restart will be delivered first",
                    dir.display(),
                    st.entries.len(),
                    st.bytes
                );
            }
            spool.observer.spool_depth(st.entries.len() as u64);
        }
        Ok(Opened { spool, writer })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.synced.subscribe()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lock().entries.is_empty()
    }

    /// Appends one alert (its exact JSON), making room first. Never panics, never waits for
    /// the disk or the network; an alert that cannot be taken is logged and counted as dropped.
    pub(crate) fn append(&self, body: Vec<u8>, severity: &str, rule: &str, id: &str) {
        let severity = clean_severity(severity);
        let rank = rank(&severity);
        let size = body.len() as u64;
        let mut st = self.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        if st.writer.is_none() {
            log::error!(
                "spool {}: stopped; alert {id} (rule {rule}, {severity}) dropped",
                self.dir.display()
            );
            self.count_dropped(&st, None, &severity);
            return;
        }
        if size > self.memory_max {
            let (what, limit) = if size > self.max_bytes {
                ("the whole spool", self.max_bytes)
            } else {
                ("the limit on alerts waiting in memory", self.memory_max)
            };
            log::warn!(
                "spool {}: alert {id} (rule {rule}, {severity}) is {size} bytes, more than {what} \
                 ({limit} bytes); dropped",
                self.dir.display()
            );
            self.count_dropped(&st, None, &severity);
            return;
        }
        for full in [Full::Spool, Full::Memory] {
            loop {
                let (used, max, set) = match full {
                    Full::Spool => (st.bytes, self.max_bytes, &st.by_rank),
                    Full::Memory => (st.memory_bytes, self.memory_max, &st.memory_by_rank),
                };
                if used + size <= max {
                    break;
                }
                // The oldest alert of the lowest severity goes, which may be this new one.
                match set.first().copied() {
                    Some(first) if first < (rank, seq) => self.evict(&mut st, first.1, full),
                    _ => {
                        log::warn!(
                            "{}: alert {id} (rule {rule}, {severity}) dropped; everything queued is at \
                             least as severe",
                            self.full(full)
                        );
                        self.count_dropped(&st, None, &severity);
                        return;
                    }
                }
            }
        }
        let woken = match &st.writer {
            Some(w) => !matches!(w.try_send(()), Err(mpsc::TrySendError::Disconnected(_))),
            None => false,
        };
        if !woken {
            log::error!(
                "spool {}: the writer is gone; alert {id} (rule {rule}, {severity}) dropped",
                self.dir.display()
            );
            self.count_dropped(&st, None, &severity);
            return;
        }
        st.entries.insert(
            seq,
            Entry {
                size,
                rank,
                severity,
                rule: rule.to_string(),
                id: id.to_string(),
            },
        );
        st.by_rank.insert((rank, seq));
        st.bytes += size;
        st.memory.insert(
            seq,
            InMemory {
                body: body.into(),
                held: false,
            },
        );
        st.memory_by_rank.insert((rank, seq));
        st.memory_bytes += size;
        for t in &self.targets {
            if !t.healthy.load(Ordering::Relaxed) {
                self.observer.outcome(&t.label, "spooled");
            }
        }
        self.observer.spool_depth(st.entries.len() as u64);
    }

    /// What is full, for logs.
    fn full(&self, full: Full) -> String {
        match full {
            Full::Spool => format!("spool full ({} bytes)", self.max_bytes),
            Full::Memory => format!(
                "spool {}: alerts waiting in memory at their limit ({} bytes; the disk refuses writes \
                 or is slow)",
                self.dir.display(),
                self.memory_max
            ),
        }
    }

    /// Counts one alert dropped before it reached the spool (the caller logs why).
    pub(crate) fn dropped_unspooled(&self, severity: &str) {
        let st = self.lock();
        self.count_dropped(&st, None, &clean_severity(severity));
    }

    /// Counts one dropped alert: per target that still needed it (all when `seq` is None).
    fn count_dropped(&self, st: &State, seq: Option<u64>, severity: &str) {
        self.observer.spool_dropped(severity);
        for (t, done) in self.targets.iter().zip(&st.progress) {
            if seq.is_none_or(|s| s > *done) {
                self.observer.outcome(&t.label, "dropped");
            }
        }
    }

    /// Evicts the oldest alert of the lowest severity. False when the spool is empty.
    fn evict_first(&self, st: &mut State) -> bool {
        match st.by_rank.first().copied() {
            Some((_, seq)) => {
                self.evict(st, seq, Full::Spool);
                true
            }
            None => false,
        }
    }

    /// Evicts `seq`: counted and logged; its file (if written) goes to the writer to delete.
    fn evict(&self, st: &mut State, seq: u64, full: Full) {
        let Some((e, in_memory)) = st.take(seq) else {
            return;
        };
        if !in_memory {
            st.removals.push(self.dir.join(entry_name(seq, &e.severity)));
        }
        let what = self.full(full);
        if st.evict_log.line_for_next(&what) {
            log::warn!(
                "{what}: evicted alert {} (rule {}, {}) queued as #{seq}; it will not be delivered",
                e.id,
                e.rule,
                e.severity
            );
        }
        self.count_dropped(st, Some(seq), &e.severity);
        self.observer.spool_depth(st.entries.len() as u64);
    }

    /// The first alert after `target`'s progress that the writer has made durable (`upto`).
    pub(crate) fn next_for(&self, target: usize, upto: u64) -> Next {
        let st = self.lock();
        let from = st.progress[target] + 1;
        match st.entries.range(from..).next() {
            Some((seq, e)) if *seq <= upto => Next::Ready(*seq, e.clone()),
            Some(_) => Next::Wait { unsynced: true },
            None => Next::Wait { unsynced: false },
        }
    }

    pub(crate) fn observer_outcome(&self, target: &str, outcome: &'static str) {
        self.observer.outcome(target, outcome);
    }

    pub(crate) fn contains(&self, seq: u64) -> bool {
        self.lock().entries.contains_key(&seq)
    }

    /// The alert's bytes (from memory while it is there, else from its file); None once it has
    /// been evicted.
    pub(crate) fn read(&self, seq: u64, e: &Entry) -> io::Result<Option<Vec<u8>>> {
        {
            let st = self.lock();
            if !st.entries.contains_key(&seq) {
                return Ok(None);
            }
            if let Some(m) = st.memory.get(&seq) {
                return Ok(Some(m.body.to_vec()));
            }
        }
        match fs::read(self.dir.join(entry_name(seq, &e.severity))) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !self.contains(seq) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `target` is done with `seq` (and everything before): records it and deletes the alerts
    /// every target is done with. The disk work happens outside the lock, so `send` never waits
    /// for it.
    pub(crate) fn done(&self, target: usize, seq: u64) {
        let gone = {
            let mut st = self.lock();
            if st.progress[target] >= seq {
                return;
            }
            st.progress[target] = seq;
            self.collect_done(&mut st)
        };
        let t = &self.targets[target];
        let path = self.dir.join("progress").join(&t.key);
        let tmp = self.dir.join("progress").join(format!(".{}.tmp", t.key));
        match fs::write(&tmp, format!("{seq}\n")).and_then(|_| fs::rename(&tmp, &path)) {
            Ok(()) => {
                if self.progress_failing.swap(false, Ordering::Relaxed) {
                    log::info!("spool: progress of webhook {} is recorded again", t.label);
                }
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                // Once until it works again: a full disk would otherwise log every delivery.
                if !self.progress_failing.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "spool: cannot record progress of webhook {} in {}: {e}; until it can, a restart \
                         may deliver some alerts again (receivers dedupe on the alert id)",
                        t.label,
                        path.display()
                    );
                }
            }
        }
        remove_all(&gone);
    }

    /// Takes the alerts every target is done with out of the index; returns their files.
    fn collect_done(&self, st: &mut State) -> Vec<PathBuf> {
        let min = st.progress.iter().copied().min().unwrap_or(u64::MAX);
        let gone: Vec<u64> = st.entries.range(..=min).map(|(s, _)| *s).collect();
        if gone.is_empty() {
            return Vec::new();
        }
        let mut files = Vec::with_capacity(gone.len());
        for seq in gone {
            // One in memory has no file (or the writer, finding it gone, deletes what it wrote).
            if let Some((e, false)) = st.take(seq) {
                files.push(self.dir.join(entry_name(seq, &e.severity)));
            }
        }
        self.observer.spool_depth(st.entries.len() as u64);
        files
    }

    /// Lets the writer finish its queue and exit; later alerts are dropped.
    pub(crate) fn stop_writer(&self) {
        self.lock().writer = None;
    }

    /// The writer thread: passes over the work (see [`Spool::pass`]) when woken, and every
    /// [`PROBE_INTERVAL`] while alerts are held in memory. Holds `lock` (the spool's flock)
    /// until its queue is done. `from`: the first seq it has to write.
    fn writer(&self, rx: &mpsc::Receiver<()>, lock: File, mut from: u64) {
        #[cfg(test)]
        // SAFETY: gettid has no arguments and cannot fail.
        self.writer_tid
            .store(unsafe { libc::gettid() }, Ordering::Relaxed);
        let mut episode: Option<Episode> = None;
        loop {
            let stopping = if episode.is_some() {
                matches!(
                    rx.recv_timeout(PROBE_INTERVAL),
                    Err(mpsc::RecvTimeoutError::Disconnected)
                )
            } else {
                rx.recv().is_err()
            };
            self.pass(&mut from, &mut episode, stopping);
            if stopping {
                break;
            }
        }
        drop(lock);
    }

    /// One pass of the writer: deletes the evicted alerts' files; while the disk refuses
    /// writes, tries the held alerts again when a probe is due; writes the new alerts (or holds
    /// them, while the disk refuses writes), fsyncs them and the directory, then publishes
    /// everything up to the newest alert to the senders. `stopping`: the last pass, where held
    /// alerts get a last try and are dropped, counted, if the disk still refuses them.
    fn pass(&self, from: &mut u64, episode: &mut Option<Episode>, stopping: bool) {
        let (removals, queued, top) = {
            let mut st = self.lock();
            let removals = std::mem::take(&mut st.removals);
            let queued: Vec<Job> = st
                .memory
                .range(*from..)
                .filter(|(_, m)| !m.held)
                .map(|(seq, m)| Job {
                    seq: *seq,
                    severity: st.entries[seq].severity.clone(),
                    body: m.body.clone(),
                })
                .collect();
            (removals, queued, st.next_seq - 1)
        };
        remove_all(&removals);

        // Whether to try the disk in this pass; whether a write worked; the first failure.
        let probe = episode
            .as_ref()
            .is_some_and(|e| stopping || e.last_probe.elapsed() >= PROBE_INTERVAL);
        let mut try_disk = episode.is_none() || probe;
        let mut failure: Option<(u64, io::Error)> = None;
        let mut written: Vec<(u64, String, File)> = Vec::new();
        let mut hold: Vec<u64> = Vec::new();
        if let Some(ep) = episode.as_mut()
            && probe
        {
            ep.last_probe = Instant::now();
            let held: Vec<Job> = {
                let st = self.lock();
                st.memory
                    .iter()
                    .filter(|(_, m)| m.held)
                    .map(|(seq, m)| Job {
                        seq: *seq,
                        severity: st.entries[seq].severity.clone(),
                        body: m.body.clone(),
                    })
                    .collect()
            };
            for job in held {
                match self.write_file(job.seq, &job.severity, &job.body) {
                    Ok(f) => written.push((job.seq, job.severity, f)),
                    Err(e) => {
                        failure = Some((job.seq, e));
                        try_disk = false;
                        break;
                    }
                }
            }
        }
        for job in queued {
            if !self.contains(job.seq) {
                continue; // evicted or delivered before it was written
            }
            if !try_disk {
                hold.push(job.seq);
                continue;
            }
            match self.write_file(job.seq, &job.severity, &job.body) {
                Ok(f) => written.push((job.seq, job.severity, f)),
                Err(e) => {
                    failure.get_or_insert((job.seq, e));
                    try_disk = false;
                    hold.push(job.seq);
                }
            }
        }
        let mut durable = Vec::with_capacity(written.len());
        for (seq, severity, f) in written {
            match f.sync_all() {
                Ok(()) => durable.push((seq, severity)),
                Err(e) => {
                    let _ = fs::remove_file(self.dir.join(entry_name(seq, &severity)));
                    failure.get_or_insert((seq, e));
                    try_disk = false;
                    hold.push(seq);
                }
            }
        }
        if !durable.is_empty()
            && let Err(e) = sync_dir(&self.dir)
        {
            // The renames may not survive a crash: hold the batch (and take its files back).
            for (seq, severity) in durable.drain(..) {
                let _ = fs::remove_file(self.dir.join(entry_name(seq, &severity)));
                hold.push(seq);
            }
            failure.get_or_insert((0, e)); // seq 0 is none: the directory
            try_disk = false;
        }

        let wrote_any = !durable.is_empty();
        let (orphans, newly_held, held_left, first_failed) = {
            let mut guard = self.lock();
            let st = &mut *guard;
            let mut orphans = Vec::new();
            for (seq, severity) in durable {
                match st.memory.remove(&seq) {
                    Some(m) => {
                        let e = &st.entries[&seq];
                        st.memory_by_rank.remove(&(e.rank, seq));
                        st.memory_bytes -= e.size;
                        if m.held {
                            st.held -= 1;
                        }
                    }
                    // Evicted or delivered while being written: its file must not outlive it.
                    None => orphans.push(self.dir.join(entry_name(seq, &severity))),
                }
            }
            let mut newly_held = 0;
            for seq in hold {
                if let Some(m) = st.memory.get_mut(&seq)
                    && !m.held
                {
                    m.held = true;
                    newly_held += 1;
                }
            }
            st.held += newly_held;
            let first_failed = failure.as_ref().map(|(seq, e)| match st.entries.get(seq) {
                Some(a) => format!("alert {} (rule {}, {}): {e}", a.id, a.rule, a.severity),
                None => format!("to the directory: {e}"),
            });
            (orphans, newly_held, st.held, first_failed)
        };
        remove_all(&orphans);
        for _ in 0..newly_held {
            self.observer.spool_write_error();
        }

        match (episode.as_mut(), first_failed) {
            (None, Some(what)) => {
                log::error!(
                    "spool {}: cannot write {what}; alerts are kept in memory (at most {} bytes) and \
                     delivered from there, the disk is tried again every {PROBE_INTERVAL:?}, and \
                     llmwatch_spool_write_errors_total counts the alerts held",
                    self.dir.display(),
                    self.memory_max
                );
                let now = Instant::now();
                *episode = Some(Episode {
                    since: now,
                    last_probe: now,
                    held: newly_held as u64,
                    error: what,
                });
            }
            (Some(ep), failed) => {
                ep.held += newly_held as u64;
                if let Some(what) = failed {
                    log::debug!("spool {}: still cannot write {what}", self.dir.display());
                    ep.error = what;
                } else if try_disk && wrote_any && held_left == 0 {
                    log::info!(
                        "spool {}: writable again after {:.1?}; the {} alert(s) held in memory meanwhile \
                         are written or delivered",
                        self.dir.display(),
                        ep.since.elapsed(),
                        ep.held
                    );
                    *episode = None;
                }
            }
            (None, None) => {}
        }

        *from = top + 1;
        self.synced.send_if_modified(|v| {
            let newer = top > *v;
            if newer {
                *v = top;
            }
            newer
        });

        if stopping && held_left > 0 {
            self.drop_held(episode.as_ref().map(|e| e.error.as_str()).unwrap_or("?"));
        }
    }

    /// At exit: the alerts still held in memory are lost; counted and logged.
    fn drop_held(&self, error: &str) {
        let mut st = self.lock();
        let seqs: Vec<u64> = st
            .memory
            .iter()
            .filter(|(_, m)| m.held)
            .map(|(s, _)| *s)
            .collect();
        let mut lost = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if let Some((e, _)) = st.take(seq) {
                self.count_dropped(&st, Some(seq), &e.severity);
                lost.push(e.id);
            }
        }
        self.observer.spool_depth(st.entries.len() as u64);
        log::error!(
            "spool {}: {} alert(s) held in memory are lost as delivery stops: the disk still refuses them \
             ({error}): {}",
            self.dir.display(),
            lost.len(),
            some_ids(lost.iter().map(String::as_str))
        );
    }

    fn write_file(&self, seq: u64, severity: &str, body: &[u8]) -> io::Result<File> {
        let tmp = self.dir.join(format!(".tmp-{seq:020}"));
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(body)?;
                fs::rename(&tmp, self.dir.join(entry_name(seq, severity)))?;
                Ok(f)
            });
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }
}
