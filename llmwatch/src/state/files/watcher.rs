//! The inotify watch on the roots: a debounced signal to rescan when something under them changes.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, MetadataKind, ModifyKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use super::watched::path_for_message;

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("starting inotify watcher: {source}")]
    Init { source: notify::Error },
    #[error("watching {}: {source}", path.display())]
    Watch { path: PathBuf, source: notify::Error },
    #[error("starting the watcher thread: {source}")]
    Thread { source: io::Error },
}

/// Debounce: signal once the events of a burst have been quiet this long...
const QUIET: Duration = Duration::from_millis(200);
/// ...or this long after its first event, so a long download still triggers periodic rescans.
const MAX_DELAY: Duration = Duration::from_secs(2);

enum RootState {
    Watched,
    /// Missing; its nearest existing ancestor (if any) is watched non-recursively.
    Pending(Option<PathBuf>),
}

/// Watches the roots with inotify and sends `()` (debounced) whenever something under a root is
/// created, modified, renamed or removed. Keep it alive; dropping it stops the watch and its
/// thread. Signals are coalesced: if one is already queued, no second one is sent.
pub struct RootWatcher {
    _watcher: Arc<Mutex<RecommendedWatcher>>,
}

impl RootWatcher {
    pub fn start(roots: &[PathBuf], tx: tokio::sync::mpsc::Sender<()>) -> Result<Self, FilesError> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let mut uniq = HashSet::new();
        // notify reports absolute paths; relevance checks compare against these.
        let roots: Vec<PathBuf> = roots
            .iter()
            .map(|r| cwd.join(r))
            .filter(|r| uniq.insert(r.clone()))
            .collect();
        let (ev_tx, ev_rx) = mpsc::channel::<notify::Result<notify::Event>>();
        // Do not follow symlinked directories, as the scan does not (loops, escaping the root).
        // No access events (IN_OPEN, IN_CLOSE_NOWRITE) and no IN_MODIFY per write: every open
        // of a weight file by a model server would otherwise wake the agent (the W4 profile:
        // an inotify event and a wake-up per open). Creation, removal, renames, attribute
        // changes and the close after writing are what change the watched set.
        let config = notify::Config::default()
            .with_follow_symlinks(false)
            .with_event_kinds(
                notify::EventKindMask::CREATE
                    | notify::EventKindMask::REMOVE
                    | notify::EventKindMask::MODIFY_NAME
                    | notify::EventKindMask::MODIFY_META
                    | notify::EventKindMask::ACCESS_CLOSE,
            );
        // Belt and braces where a backend still reports accesses: drop them in notify's thread
        // rather than paying a channel wake-up each.
        let handler = move |ev: notify::Result<notify::Event>| {
            if !is_access(&ev) {
                let _ = ev_tx.send(ev);
            }
        };
        let mut watcher =
            RecommendedWatcher::new(handler, config).map_err(|source| FilesError::Init { source })?;
        let mut watch = |path: &Path, mode| {
            watcher.watch(path, mode).map_err(|source| FilesError::Watch {
                path: path.to_owned(),
                source,
            })
        };
        let mut states = Vec::with_capacity(roots.len());
        for root in &roots {
            if root.exists() {
                watch(root, RecursiveMode::Recursive)?;
                states.push(RootState::Watched);
            } else {
                let anc = nearest_existing_ancestor(root);
                if let Some(a) = &anc {
                    watch(a, RecursiveMode::NonRecursive)?;
                }
                states.push(RootState::Pending(anc));
            }
        }
        let watcher = Arc::new(Mutex::new(watcher));
        // The thread holds only a weak reference, so dropping RootWatcher drops the watcher, which
        // drops the event sender and ends the thread.
        let weak = Arc::downgrade(&watcher);
        std::thread::Builder::new()
            .name("llmwatch-roots".into())
            .spawn(move || debounce_loop(ev_rx, tx, weak, roots, states))
            .map_err(|source| FilesError::Thread { source })?;
        Ok(RootWatcher { _watcher: watcher })
    }
}

fn nearest_existing_ancestor(p: &Path) -> Option<PathBuf> {
    p.ancestors().skip(1).find(|a| a.is_dir()).map(Path::to_owned)
}

/// Opens and reads (the model server's, and our own scan's) change nothing in the set; a close
/// after writing does.
fn is_access(ev: &notify::Result<notify::Event>) -> bool {
    let Ok(ev) = ev else { return false };
    !ev.need_rescan()
        && match ev.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => false,
            EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => true,
            _ => false,
        }
}

fn relevant(ev: &notify::Result<notify::Event>, roots: &[PathBuf], states: &[RootState]) -> bool {
    let ev = match ev {
        Ok(ev) => ev,
        Err(e) => {
            // A directory that cannot be watched (deeper than PATH_MAX, no permission, the watch
            // limit reached after start): its changes are seen only when something else causes
            // a rescan, so the SRE is told which one.
            match e.paths.first() {
                Some(p) => log::warn!(
                    "cannot watch {} for changes ({}); changes below it are picked up only by later \
                     rescans",
                    path_for_message(p),
                    match &e.kind {
                        notify::ErrorKind::Io(io) => io.to_string(),
                        notify::ErrorKind::MaxFilesWatch => {
                            "the inotify watch limit (fs.inotify.max_user_watches) is reached".into()
                        }
                        k => format!("{k:?}"),
                    }
                ),
                None => log::debug!("inotify watcher error: {e}"),
            }
            return true; // e.g. queue overflow: rescan to be safe
        }
    };
    if ev.need_rescan() {
        return true;
    }
    ev.paths.is_empty()
        || ev.paths.iter().any(|p| {
            roots
                .iter()
                .zip(states)
                .any(|(r, s)| p.starts_with(r) || (matches!(s, RootState::Pending(_)) && r.starts_with(p)))
        })
}

fn debounce_loop(
    rx: mpsc::Receiver<notify::Result<notify::Event>>,
    tx: tokio::sync::mpsc::Sender<()>,
    watcher: Weak<Mutex<RecommendedWatcher>>,
    roots: Vec<PathBuf>,
    mut states: Vec<RootState>,
) {
    loop {
        let Ok(first) = rx.recv() else { return };
        if !relevant(&first, &roots, &states) {
            continue;
        }
        let mut touched: HashSet<usize> = HashSet::new();
        let note = |ev: &notify::Result<notify::Event>, touched: &mut HashSet<usize>| {
            if let Ok(ev) = ev {
                for p in &ev.paths {
                    touched.extend(roots.iter().position(|r| r == p));
                }
            }
        };
        note(&first, &mut touched);
        let start = Instant::now();
        loop {
            let left = MAX_DELAY.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            match rx.recv_timeout(QUIET.min(left)) {
                Ok(ev) => {
                    if relevant(&ev, &roots, &states) {
                        note(&ev, &mut touched);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
        let Some(w) = watcher.upgrade() else { return };
        reconcile(&w, &roots, &mut states, &touched);
        drop(w);
        match tx.try_send(()) {
            Ok(()) | Err(tokio::sync::mpsc::error::TrySendError::Full(())) => {}
            Err(tokio::sync::mpsc::error::TrySendError::Closed(())) => return,
        }
    }
}

/// Move watches as roots appear or disappear: a created root gets its recursive watch, a
/// removed one falls back to watching its nearest ancestor, and a root whose own directory
/// event was seen is re-watched (it may have been removed and recreated within one burst).
fn reconcile(
    w: &Mutex<RecommendedWatcher>,
    roots: &[PathBuf],
    states: &mut [RootState],
    touched: &HashSet<usize>,
) {
    let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
    for (i, (root, state)) in roots.iter().zip(states.iter_mut()).enumerate() {
        let exists = root.exists();
        match state {
            RootState::Watched if exists && !touched.contains(&i) => {}
            RootState::Pending(anc) if !exists => {
                let now = nearest_existing_ancestor(root);
                if now != *anc
                    && let Some(a) = &now
                {
                    if let Err(e) = w.watch(a, RecursiveMode::NonRecursive) {
                        log::warn!("watching {} for {} to appear: {e}", a.display(), root.display());
                    }
                    *anc = now;
                }
            }
            _ if exists => match w.watch(root, RecursiveMode::Recursive) {
                Ok(()) => *state = RootState::Watched,
                Err(e) => log::warn!("watching {}: {e}", root.display()),
            },
            _ => {
                let anc = nearest_existing_ancestor(root);
                if let Some(a) = &anc
                    && let Err(e) = w.watch(a, RecursiveMode::NonRecursive)
                {
                    log::warn!("watching {} for {} to appear: {e}", a.display(), root.display());
                }
                *state = RootState::Pending(anc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::files::WatchedSet;
    use crate::state::files::fixtures::{mkdir_deep, padded, write};
    use crate::state::files::walk::PATH_MAX;
    use std::fs;

    async fn expect_signal(rx: &mut tokio::sync::mpsc::Receiver<()>, what: &str) {
        let got = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
        assert!(matches!(got, Ok(Some(()))), "no signal within 2 s after {what}");
    }

    #[tokio::test]
    async fn root_watcher_signals_on_create() {
        let t = tempfile::tempdir().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let _w = RootWatcher::start(&[t.path().to_owned()], tx).unwrap();
        write(&t.path().join("sub/m.gguf"), &padded(b"GGUF\x03"));
        expect_signal(&mut rx, "creating a file").await;
    }

    #[tokio::test]
    async fn root_watcher_notices_root_created_later() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("models");
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let _w = RootWatcher::start(std::slice::from_ref(&root), tx).unwrap();
        // Unrelated changes beside the missing root are not signalled.
        write(&t.path().join("other.txt"), b"x");
        assert!(
            tokio::time::timeout(Duration::from_millis(600), rx.recv())
                .await
                .is_err()
        );
        fs::create_dir(&root).unwrap();
        expect_signal(&mut rx, "creating the root").await;
        // The root now has its own recursive watch.
        write(&root.join("m.gguf"), &padded(b"GGUF\x03"));
        expect_signal(&mut rx, "creating a file in the new root").await;
    }

    #[tokio::test]
    async fn root_watcher_survives_paths_longer_than_path_max() {
        let t = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(t.path()).unwrap();
        // inotify cannot watch a directory whose path is over PATH_MAX: the rest of the tree
        // is still watched (the agent does not drop to periodic rescans for one deep path).
        let (_deep, deep_path) = mkdir_deep(&root, 17, 250);
        assert!(deep_path.as_os_str().len() > PATH_MAX);
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let _w = RootWatcher::start(std::slice::from_ref(&root), tx).unwrap();
        // The failed watches themselves cause one rescan; let it pass.
        let _ = tokio::time::timeout(Duration::from_millis(600), rx.recv()).await;
        write(&root.join("m.gguf"), &padded(b"GGUF\x03"));
        expect_signal(&mut rx, "creating a file beside the deep tree").await;
    }

    #[tokio::test]
    async fn root_watcher_ignores_reads() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("m.gguf");
        write(&p, &padded(b"GGUF\x03"));
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let _w = RootWatcher::start(&[t.path().to_owned()], tx).unwrap();
        // Our own rescans open every candidate; that must not trigger another rescan.
        let mut set = WatchedSet::new(vec![t.path().to_owned()]);
        set.rescan();
        let _ = fs::read(&p).unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(600), rx.recv())
                .await
                .is_err()
        );
    }
}
