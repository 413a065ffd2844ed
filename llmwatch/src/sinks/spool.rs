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
};

use tokio::sync::watch;

use super::{DeliveryError, DeliveryObserver};

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

struct State {
    next_seq: u64,
    entries: BTreeMap<u64, Entry>,
    /// (severity rank, seq): the first element is the next to evict.
    by_rank: BTreeSet<(u8, u64)>,
    bytes: u64,
    /// Per target: every seq <= this is done (delivered, failed or evicted).
    progress: Vec<u64>,
    writer: Option<mpsc::Sender<Op>>,
}

/// Work for the writer thread, in order.
enum Op {
    Write {
        seq: u64,
        severity: String,
        body: Vec<u8>,
    },
    Remove(PathBuf),
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
    observer: Arc<dyn DeliveryObserver>,
    pub targets: Vec<Target>,
    state: Mutex<State>,
    /// Every seq <= this has been written and fsynced (or given up on) by the writer.
    synced: watch::Sender<u64>,
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

fn remove_all(files: &[PathBuf]) {
    for path in files {
        if let Err(e) = fs::remove_file(path)
            && e.kind() != io::ErrorKind::NotFound
        {
            log::warn!("spool: cannot remove delivered alert {}: {e}", path.display());
        }
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

impl Spool {
    /// Opens (creating) the spool at `dir` for these targets (label, key) and loads what is in it.
    pub(crate) fn open(
        dir: &Path,
        max_bytes: u64,
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
        let (tx, rx) = mpsc::channel();
        let spool = Arc::new(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
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
                progress,
                writer: Some(tx),
            }),
            synced,
        });
        let writer = {
            let spool = spool.clone();
            std::thread::Builder::new()
                .name("llmwatch-spool".into())
                .spawn(move || spool.writer(&rx, lock))
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
    /// the network or an fsync; a failure is logged and counted as dropped.
    pub(crate) fn append(&self, body: &[u8], severity: &str, rule: &str, id: &str) {
        let severity = clean_severity(severity);
        let rank = rank(&severity);
        let size = body.len() as u64;
        let mut st = self.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        if size > self.max_bytes {
            log::warn!(
                "spool: alert {id} (rule {rule}, {severity}) is {size} bytes, more than the whole spool \
                 ({} bytes); dropped",
                self.max_bytes
            );
            self.count_dropped(&st, None, &severity);
            return;
        }
        while st.bytes + size > self.max_bytes {
            // The oldest alert of the lowest severity goes, which may be this new one.
            match st.by_rank.first().copied() {
                Some(first) if first < (rank, seq) => {
                    self.evict_first(&mut st);
                }
                _ => {
                    log::warn!(
                        "spool full ({} bytes): alert {id} (rule {rule}, {severity}) dropped; everything \
                         queued is at least as severe",
                        self.max_bytes
                    );
                    self.count_dropped(&st, None, &severity);
                    return;
                }
            }
        }
        let Some(writer) = &st.writer else {
            log::error!(
                "spool {}: stopped; alert {id} (rule {rule}) dropped",
                self.dir.display()
            );
            self.count_dropped(&st, None, &severity);
            return;
        };
        if writer
            .send(Op::Write {
                seq,
                severity: severity.clone(),
                body: body.to_vec(),
            })
            .is_err()
        {
            log::error!(
                "spool {}: the writer is gone; alert {id} (rule {rule}) dropped",
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
        for t in &self.targets {
            if !t.healthy.load(Ordering::Relaxed) {
                self.observer.outcome(&t.label, "spooled");
            }
        }
        self.observer.spool_depth(st.entries.len() as u64);
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
        let Some((_, seq)) = st.by_rank.pop_first() else {
            return false;
        };
        let Some(e) = st.entries.remove(&seq) else {
            return true;
        };
        st.bytes -= e.size;
        // Through the writer: it may not have written it yet, and `send` must not touch the disk.
        let path = self.dir.join(entry_name(seq, &e.severity));
        if let Some(w) = &st.writer {
            let _ = w.send(Op::Remove(path));
        } else {
            let _ = fs::remove_file(&path);
        }
        log::warn!(
            "spool full ({} bytes): evicted alert {} (rule {}, {}) queued as #{seq}; it will not be \
             delivered",
            self.max_bytes,
            e.id,
            e.rule,
            e.severity
        );
        self.count_dropped(st, Some(seq), &e.severity);
        self.observer.spool_depth(st.entries.len() as u64);
        true
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

    /// The alert's bytes; None once it has been evicted.
    pub(crate) fn read(&self, seq: u64, e: &Entry) -> io::Result<Option<Vec<u8>>> {
        if !self.contains(seq) {
            return Ok(None);
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
        if let Err(e) = fs::write(&tmp, format!("{seq}\n")).and_then(|_| fs::rename(&tmp, &path)) {
            log::warn!(
                "spool: cannot record progress of webhook {} in {}: {e}",
                t.label,
                path.display()
            );
        }
        remove_all(&gone);
    }

    /// Takes the alerts every target is done with out of the index; returns their files.
    fn collect_done(&self, st: &mut State) -> Vec<PathBuf> {
        let min = st.progress.iter().copied().min().unwrap_or(u64::MAX);
        let keep = st.entries.split_off(&min.saturating_add(1));
        let gone = std::mem::replace(&mut st.entries, keep);
        if gone.is_empty() {
            return Vec::new();
        }
        let mut files = Vec::with_capacity(gone.len());
        for (seq, e) in gone {
            st.by_rank.remove(&(e.rank, seq));
            st.bytes -= e.size;
            files.push(self.dir.join(entry_name(seq, &e.severity)));
        }
        self.observer.spool_depth(st.entries.len() as u64);
        files
    }

    /// Lets the writer finish its queue and exit; later alerts are dropped.
    pub(crate) fn stop_writer(&self) {
        self.lock().writer = None;
    }

    /// The writer thread: writes and removes files in order, fsyncs each batch, then publishes
    /// it to the senders. Holds `lock` (the spool's flock) until its queue is done.
    fn writer(&self, rx: &mpsc::Receiver<Op>, lock: File) {
        while let Ok(first) = rx.recv() {
            let mut written = Vec::new();
            let mut top = 0;
            for op in std::iter::once(first).chain(rx.try_iter()) {
                match op {
                    Op::Write { seq, severity, body } => {
                        top = top.max(seq);
                        if !self.contains(seq) {
                            continue; // evicted before it was written
                        }
                        match self.write_file(seq, &severity, &body) {
                            Ok(f) => written.push((seq, f)),
                            Err(e) => self.write_failed(seq, &e),
                        }
                    }
                    Op::Remove(path) => {
                        if let Err(e) = fs::remove_file(&path)
                            && e.kind() != io::ErrorKind::NotFound
                        {
                            log::warn!("spool: cannot remove {}: {e}", path.display());
                        }
                    }
                }
            }
            for (seq, f) in &written {
                if let Err(e) = f.sync_all() {
                    log::warn!("spool {}: fsync of alert #{seq} failed: {e}", self.dir.display());
                }
            }
            if !written.is_empty()
                && let Err(e) = sync_dir(&self.dir)
            {
                log::warn!("spool {}: fsync of the directory failed: {e}", self.dir.display());
            }
            self.synced.send_if_modified(|v| {
                let newer = top > *v;
                if newer {
                    *v = top;
                }
                newer
            });
        }
        drop(lock);
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

    /// A write error (disk full...): the alert is dropped and counted.
    fn write_failed(&self, seq: u64, err: &io::Error) {
        let mut st = self.lock();
        let Some(e) = st.entries.remove(&seq) else { return };
        st.by_rank.remove(&(e.rank, seq));
        st.bytes -= e.size;
        log::error!(
            "spool {}: cannot write alert {} (rule {}, {}): {err}; dropped",
            self.dir.display(),
            e.id,
            e.rule,
            e.severity
        );
        self.count_dropped(&st, Some(seq), &e.severity);
        self.observer.spool_depth(st.entries.len() as u64);
    }
}
