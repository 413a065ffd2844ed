//! The scan's directory walker: `openat`/`readdir`/`fstatat` through directory descriptors (so
//! path length is no limit on what is found), and the classification of each inode it keeps.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use llmwatch_common::event::FileId;

use super::assets::AssetMatcher;
use super::format::{MIN_WEIGHT_LEN, WeightFormat, classify_head, lower_name, read_head, weight_ext};
use super::progress::Progress;
use super::watched::{ScanReport, Stamp};

/// Deepest directory level walked below a root; HF and Ollama layouts are < 10 deep, and a bound
/// keeps bind-mount loops (which the visited set may not catch across file systems) finite.
const MAX_DEPTH: usize = 32;

/// Longest path the kernel takes in one path-based call, NUL included.
pub(super) const PATH_MAX: usize = libc::PATH_MAX as usize;

/// Userspace `st_dev` (glibc's `makedev` encoding) to the kernel's `s_dev` (`major << 20 | minor`),
/// which is what the kernel programs read from the super block.
pub fn kernel_dev(st_dev: u64) -> u32 {
    let major = libc::major(st_dev as libc::dev_t);
    let minor = libc::minor(st_dev as libc::dev_t);
    (major << 20) | (minor & 0xf_ffff)
}

/// What the walk keeps of an `lstat`/`stat` made through a directory descriptor (std's
/// `Metadata` cannot be built from one).
#[derive(Clone, Copy, Debug)]
pub(super) struct Stat {
    dev: u64,
    ino: u64,
    mode: u32,
    /// More than one hard link.
    linked: bool,
    pub(super) size: u64,
    pub(super) mtime: (i64, i64),
    pub(super) ctime: (i64, i64),
}

impl Stat {
    fn of_raw(st: &libc::stat) -> Self {
        Stat {
            dev: st.st_dev,
            ino: st.st_ino,
            mode: st.st_mode,
            linked: st.st_nlink > 1,
            size: st.st_size.max(0) as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }

    fn of_meta(m: &Metadata) -> Self {
        Stat {
            dev: m.dev(),
            ino: m.ino(),
            mode: m.mode(),
            linked: m.nlink() > 1,
            size: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    fn kind(&self) -> libc::mode_t {
        self.mode & libc::S_IFMT
    }
}

fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// `openat(2)` with `O_CLOEXEC`, retried on EINTR.
pub(super) fn open_at(dir: RawFd, name: &OsStr, flags: i32) -> io::Result<OwnedFd> {
    let name = c_name(name)?;
    loop {
        // SAFETY: a valid NUL-terminated name; the fd returned is ours to own.
        let fd = unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC) };
        if fd >= 0 {
            // SAFETY: just opened, owned by nothing else.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `open(2)` for a path of any length: one call when it fits in PATH_MAX, else one `openat` per
/// component, so a file deeper than PATH_MAX can still be opened (just not by its whole name).
pub(super) fn open_path(path: &Path, flags: i32) -> io::Result<OwnedFd> {
    if path.as_os_str().len() < PATH_MAX {
        return open_at(libc::AT_FDCWD, path.as_os_str(), flags);
    }
    let mut at: Option<OwnedFd> = None;
    let mut comps = path.components().peekable();
    while let Some(c) = comps.next() {
        let base = at.as_ref().map_or(libc::AT_FDCWD, AsRawFd::as_raw_fd);
        let step = if comps.peek().is_some() {
            libc::O_PATH | libc::O_DIRECTORY
        } else {
            flags
        };
        at = Some(open_at(base, c.as_os_str(), step)?);
    }
    at.ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))
}

/// The entry is gone, or is no longer what it was when listed: skipped without an error.
pub(super) fn vanished(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR))
}

/// An open directory, read with `readdir(3)` and the base of the `*at` calls for its entries:
/// the walk never hands the kernel a whole path, so depth is no limit (only [`MAX_DEPTH`] is).
struct Dir(std::ptr::NonNull<libc::DIR>);

impl Dir {
    fn open(path: &Path) -> io::Result<Dir> {
        Dir::from_fd(open_path(path, libc::O_RDONLY | libc::O_DIRECTORY)?)
    }

    /// A subdirectory, not through a symlink (one swapped in after listing reads as vanished).
    fn open_child(&self, name: &OsStr) -> io::Result<Dir> {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        match open_at(self.fd(), name, flags) {
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                Err(io::Error::from_raw_os_error(libc::ENOTDIR))
            }
            r => Dir::from_fd(r?),
        }
    }

    fn from_fd(fd: OwnedFd) -> io::Result<Dir> {
        let raw = fd.into_raw_fd();
        // SAFETY: `raw` is an open directory descriptor; on success the DIR owns it.
        match std::ptr::NonNull::new(unsafe { libc::fdopendir(raw) }) {
            Some(d) => Ok(Dir(d)),
            None => {
                let e = io::Error::last_os_error();
                // SAFETY: fdopendir failed, so the descriptor is still ours.
                unsafe { libc::close(raw) };
                Err(e)
            }
        }
    }

    fn fd(&self) -> RawFd {
        // SAFETY: the DIR is open for as long as self lives.
        unsafe { libc::dirfd(self.0.as_ptr()) }
    }

    /// `fstatat(2)` of an entry; `follow` resolves a symlink to its target.
    fn stat(&self, name: &OsStr, follow: bool) -> io::Result<Stat> {
        let name = c_name(name)?;
        let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: valid name and output buffer; the kernel fills the buffer on success.
        if unsafe { libc::fstatat(self.fd(), name.as_ptr(), st.as_mut_ptr(), flags) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fstatat succeeded.
        Ok(Stat::of_raw(unsafe { st.assume_init_ref() }))
    }

    /// The next entry's name and `d_type`, `.` and `..` left out.
    fn next_entry(&self) -> Option<io::Result<(OsString, u8)>> {
        loop {
            // SAFETY: errno is thread-local; readdir reports errors only through it.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: the DIR is open; only this thread reads it (Dir is neither Send nor Sync).
            let ent = unsafe { libc::readdir(self.0.as_ptr()) };
            if ent.is_null() {
                let e = io::Error::last_os_error();
                return (e.raw_os_error() != Some(0)).then_some(Err(e));
            }
            // SAFETY: `ent` is valid until the next readdir on this DIR; the name is copied out
            // first, through raw pointers (a record may be shorter than `struct dirent`).
            let (name, d_type) = unsafe {
                let name = CStr::from_ptr(std::ptr::addr_of!((*ent).d_name).cast());
                (name.to_bytes(), (*ent).d_type)
            };
            if name != b"." && name != b".." {
                return Some(Ok((OsStr::from_bytes(name).to_owned(), d_type)));
            }
        }
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        // SAFETY: opened by fdopendir, closed once.
        unsafe { libc::closedir(self.0.as_ptr()) };
    }
}

/// The canonical path of a symlink's target. A link deeper than PATH_MAX cannot go through
/// `realpath`; its target is opened through the directory instead and named by the kernel, which
/// still fails (ENAMETOOLONG) when the target's own path is too long.
fn resolve_link(dir: &Dir, name: &OsStr, path: &Path) -> io::Result<PathBuf> {
    if path.as_os_str().len() < PATH_MAX {
        return fs::canonicalize(path);
    }
    let fd = open_at(dir.fd(), name, libc::O_PATH)?;
    fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Names and stat of one inode gathered during a walk.
#[derive(Default)]
pub(super) struct Seen {
    pub(super) names: BTreeSet<PathBuf>,
    pub(super) real: BTreeSet<PathBuf>,
    pub(super) stamp: Option<Stamp>,
    /// A link to this inode whose target's real path could not be resolved, and why: reported
    /// only if no other name gives the real path.
    pub(super) unresolved: Option<(PathBuf, io::Error)>,
}

/// One scan's walk over all roots: what it found, and what it could not read.
pub(super) struct Walk<'a> {
    /// Which names may be watched files (weights by name, or named by an asset glob).
    assets: &'a AssetMatcher<'a>,
    pub(super) seen: HashMap<FileId, Seen>,
    /// (st_dev, st_ino) of every directory walked, so each is walked once.
    visited: HashSet<(u64, u64)>,
    /// Directories (or files) that could not be read: entries under them keep their old state.
    pub(super) incomplete: Vec<PathBuf>,
    pub(super) report: ScanReport,
    pub(super) dropped: usize,
    pub(super) progress: Progress,
}

impl<'a> Walk<'a> {
    pub(super) fn new(progress: Progress, assets: &'a AssetMatcher<'a>) -> Self {
        Walk {
            assets,
            seen: HashMap::new(),
            visited: HashSet::new(),
            incomplete: Vec::new(),
            report: ScanReport::default(),
            dropped: 0,
            progress,
        }
    }

    fn error(&mut self, path: &Path, reason: impl std::fmt::Display) {
        self.report.error(path, reason, &mut self.dropped);
    }

    /// A path that could not be read: reported, and the watched entries under it are kept as
    /// they were (a transient EACCES/EIO must not unwatch a weight).
    fn unreadable(&mut self, path: PathBuf, e: io::Error) {
        self.error(&path, e);
        self.incomplete.push(path);
    }

    pub(super) fn root(&mut self, root: &Path) {
        // A configured root may itself be a symlink (/models -> /mnt/nvme/models): follow it
        // once, and walk its real path so regular files' paths are already canonical.
        let meta = match fs::metadata(root) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.report.roots_missing.push(root.to_owned());
                return;
            }
            Err(e) => {
                self.report.roots_missing.push(root.to_owned());
                self.unreadable(root.to_owned(), e);
                return;
            }
        };
        let real_root = fs::canonicalize(root).unwrap_or_else(|_| root.to_owned());
        self.report.roots_scanned += 1;
        if meta.is_file() {
            self.report.files_seen += 1;
            self.record(real_root.clone(), Some(real_root), &Stat::of_meta(&meta), None);
            return;
        }
        if !meta.is_dir() || !self.visited.insert((meta.dev(), meta.ino())) {
            return;
        }
        let top = match Dir::open(&real_root) {
            Ok(d) => d,
            Err(e) if vanished(&e) => return,
            Err(e) => {
                self.unreadable(real_root, e);
                return;
            }
        };
        // Depth first; a pending subdirectory holds its parent open (at most MAX_DEPTH + 1
        // directories are open at once), and is opened by name relative to it.
        let mut pending: Vec<(Rc<Dir>, OsString, PathBuf, usize)> = Vec::new();
        self.read(top, &real_root, 0, &mut pending);
        while let Some((parent, name, path, depth)) = pending.pop() {
            let dir = match parent.open_child(&name) {
                Ok(d) => d,
                Err(e) if vanished(&e) => continue,
                Err(e) => {
                    self.unreadable(path, e);
                    continue;
                }
            };
            drop(parent);
            self.read(dir, &path, depth, &mut pending);
        }
    }

    /// Lists one directory: files are recorded, subdirectories queued on `pending`.
    fn read(
        &mut self,
        dir: Dir,
        path: &Path,
        depth: usize,
        pending: &mut Vec<(Rc<Dir>, OsString, PathBuf, usize)>,
    ) {
        self.report.dirs_seen += 1;
        let dir = Rc::new(dir);
        loop {
            let (name, d_type) = match dir.next_entry() {
                None => break,
                Some(Ok(entry)) => entry,
                Some(Err(e)) => {
                    self.unreadable(path.to_owned(), e);
                    break;
                }
            };
            let child = path.join(&name);
            #[cfg(test)]
            test_hook::fire(test_hook::Phase::Listed, &child);
            self.progress.tick(&self.report, self.seen.len(), path);
            let kind = match d_type {
                libc::DT_DIR => libc::S_IFDIR,
                libc::DT_REG => libc::S_IFREG,
                libc::DT_LNK => libc::S_IFLNK,
                // Some file systems do not fill d_type.
                libc::DT_UNKNOWN => match dir.stat(&name, false) {
                    Ok(st) => st.kind(),
                    Err(e) if vanished(&e) => continue,
                    Err(e) => {
                        self.unreadable(child, e);
                        continue;
                    }
                },
                // FIFOs, sockets, devices: never weights.
                _ => continue,
            };
            match kind {
                libc::S_IFDIR => {
                    let st = match dir.stat(&name, false) {
                        Ok(st) if st.kind() == libc::S_IFDIR => st,
                        Ok(_) => continue, // replaced since it was listed
                        Err(e) if vanished(&e) => continue,
                        Err(e) => {
                            self.unreadable(child, e);
                            continue;
                        }
                    };
                    if !self.visited.insert((st.dev, st.ino)) {
                        continue;
                    }
                    if depth + 1 > MAX_DEPTH {
                        self.error(&child, format_args!("deeper than {MAX_DEPTH} levels, not walked"));
                        continue;
                    }
                    pending.push((dir.clone(), name, child, depth + 1));
                }
                libc::S_IFREG => {
                    let st = match dir.stat(&name, false) {
                        Ok(st) if st.kind() == libc::S_IFREG => st,
                        Ok(_) => continue,
                        Err(e) if vanished(&e) => continue,
                        Err(e) => {
                            self.unreadable(child, e);
                            continue;
                        }
                    };
                    self.report.files_seen += 1;
                    // Most files in a model tree are configs, tokenizers and READMEs: not kept,
                    // unless an asset glob names them or another name (a hard link) may make
                    // the inode a watched file.
                    if st.linked || self.assets.candidate(&child) {
                        self.record(child.clone(), Some(child), &st, None);
                    }
                }
                libc::S_IFLNK => self.link(&dir, &name, child),
                _ => {}
            }
        }
    }

    /// A symlink: recorded (as an alias of its target's inode) when it leads to a file.
    fn link(&mut self, dir: &Dir, name: &OsStr, path: PathBuf) {
        let st = match dir.stat(name, true) {
            Ok(st) if st.kind() == libc::S_IFREG => st,
            Ok(_) => return,                       // directory link: not descended
            Err(e) if vanished(&e) => return,      // dangling
            Err(e) => return self.error(&path, e), // ELOOP, EACCES
        };
        self.report.files_seen += 1;
        let (real, unresolved) = match resolve_link(dir, name, &path) {
            Ok(real) => (Some(real), None),
            Err(e) if vanished(&e) => return,
            // Kept by name: the target's own entry may give the real path (reported if not).
            Err(e) => (None, Some(e)),
        };
        let candidate = st.linked
            || self.assets.candidate(&path)
            || real.as_deref().is_none_or(|r| self.assets.candidate(r));
        if candidate {
            self.record(path.clone(), real, &st, unresolved.map(|e| (path, e)));
        }
    }

    fn record(
        &mut self,
        name: PathBuf,
        real: Option<PathBuf>,
        st: &Stat,
        unresolved: Option<(PathBuf, io::Error)>,
    ) {
        // Too small for any weight format; an asset a glob names is watched at any size (a
        // tokenizer config may be a few bytes, a dataset may be empty until it is written).
        if st.size < MIN_WEIGHT_LEN {
            let names: Vec<&Path> = std::iter::once(name.as_path()).chain(real.as_deref()).collect();
            if self.assets.configured(&names).is_none() {
                return;
            }
        }
        let id = FileId {
            dev: kernel_dev(st.dev),
            _pad: 0,
            ino: st.ino,
        };
        let s = self.seen.entry(id).or_default();
        s.names.insert(name);
        s.real.extend(real);
        if s.unresolved.is_none() {
            s.unresolved = unresolved;
        }
        s.stamp = Some(Stamp::of(st));
    }
}

/// Open one inode (by its real path), check it is still the inode we stat'ed, and classify it
/// under each of its names: names with a weight extension first, since the extension is more
/// specific than magic (an HF blob named by hash is known by its snapshot link's name).
pub(super) fn examine(path: &Path, id: FileId, names: &[PathBuf]) -> io::Result<Option<WeightFormat>> {
    #[cfg(test)]
    test_hook::fire(test_hook::Phase::Examine, path);
    let file = open_quiet(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || kernel_dev(meta.dev()) != id.dev || meta.ino() != id.ino {
        return Err(io::Error::new(io::ErrorKind::NotFound, "replaced during scan"));
    }
    let head = read_head(&file)?;
    let mut ordered: Vec<&PathBuf> = names.iter().collect();
    ordered.sort_by_key(|n| weight_ext(&lower_name(n)).is_none());
    Ok(ordered
        .into_iter()
        .find_map(|n| classify_head(n, &head, meta.len())))
}

/// O_NOATIME so scans do not make weights look recently used; O_NONBLOCK so a file swapped for a
/// FIFO between stat and open cannot hang the scan. O_NOATIME needs ownership or CAP_FOWNER.
fn open_quiet(path: &Path) -> io::Result<File> {
    let open = |flags| open_path(path, libc::O_RDONLY | flags).map(File::from);
    match open(libc::O_NOATIME | libc::O_NONBLOCK) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(libc::O_NONBLOCK),
        r => r,
    }
}

/// Test seams: a hook called between the phases of a scan (to make files vanish exactly there),
/// and the progress lines a scan logged.
#[cfg(test)]
pub(super) mod test_hook {
    use std::cell::RefCell;
    use std::path::Path;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Phase {
        /// An entry was listed by readdir; nothing else is known of it yet.
        Listed,
        /// An inode is about to be opened for classification (after its stat).
        Examine,
    }

    type Hook = Box<dyn FnMut(Phase, &Path)>;

    thread_local! {
        static HOOK: RefCell<Option<Hook>> = const { RefCell::new(None) };
        pub static LOG: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    }

    pub fn fire(phase: Phase, path: &Path) {
        HOOK.with(|h| {
            if let Some(f) = h.borrow_mut().as_mut() {
                f(phase, path)
            }
        })
    }

    /// Installs `f` on this thread until the guard is dropped.
    pub fn set(f: impl FnMut(Phase, &Path) + 'static) -> Guard {
        HOOK.with(|h| *h.borrow_mut() = Some(Box::new(f)));
        Guard
    }

    pub struct Guard;

    impl Drop for Guard {
        fn drop(&mut self) {
            HOOK.with(|h| *h.borrow_mut() = None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::files::fixtures::{mkdir_deep, padded, safetensors_bytes, write};
    use crate::state::files::watched::{MAX_SHOWN_PATH, WatchedSet};
    use std::os::unix::fs::symlink;

    #[test]
    fn kernel_dev_encoding() {
        assert_eq!(kernel_dev(libc::makedev(8, 1)), (8 << 20) | 1);
        assert_eq!(kernel_dev(libc::makedev(259, 3)), (259 << 20) | 3);
        // Minors above 255 are split across st_dev's bits in userspace.
        assert_eq!(kernel_dev(libc::makedev(0, 300)), 300);
    }

    #[test]
    fn missing_root_reported() {
        let t = tempfile::tempdir().unwrap();
        let missing = t.path().join("nope");
        let mut set = WatchedSet::new(vec![missing.clone(), t.path().to_owned()]);
        let (diff, report) = set.rescan();
        assert!(diff.is_empty());
        assert_eq!(report.roots_missing, vec![missing]);
        assert_eq!(report.roots_scanned, 1);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
    }

    #[test]
    fn files_vanishing_mid_scan_are_skipped_quietly() {
        use test_hook::Phase;
        let t = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(t.path()).unwrap();
        let w = |rel: &str| write(&root.join(rel), &safetensors_bytes());
        for rel in [
            "stay.safetensors",
            "listed.safetensors",
            "sub/x.safetensors",
            "swap/y.safetensors",
        ] {
            w(rel);
        }
        // Removed right after readdir listed them: a file, a directory with a weight in it, and
        // a directory replaced by a file of the same name.
        let r = root.clone();
        let _hook = test_hook::set(move |phase, p| {
            if phase != Phase::Listed {
                return;
            }
            match p.strip_prefix(&r).unwrap().to_str().unwrap() {
                "listed.safetensors" => fs::remove_file(p).unwrap(),
                "sub" => fs::remove_dir_all(p).unwrap(),
                "swap" => {
                    fs::remove_dir_all(p).unwrap();
                    fs::write(p, b"now a file").unwrap();
                }
                _ => {}
            }
        });
        let mut set = WatchedSet::new(vec![root.clone()]);
        let (diff, report) = set.rescan();
        drop(_hook);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let added: Vec<&Path> = diff.added.iter().map(|f| &*f.path).collect();
        assert_eq!(added, vec![root.join("stay.safetensors")]);

        // Removed after its stat, before it is opened for classification: a new file, and a
        // watched one that changed (so it is reopened).
        w("new.safetensors");
        let mut grown = safetensors_bytes();
        grown.extend_from_slice(&[0; 10]);
        fs::write(root.join("stay.safetensors"), &grown).unwrap();
        let _hook = test_hook::set(|phase, p| {
            if phase == Phase::Examine {
                fs::remove_file(p).unwrap();
            }
        });
        let (diff, report) = set.rescan();
        drop(_hook);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert!(diff.added.is_empty() && diff.changed.is_empty(), "{diff:?}");
        assert_eq!(diff.removed.len(), 1);
        assert_eq!(*diff.removed[0].path, *root.join("stay.safetensors"));
        assert!(set.is_empty());
        // And the next scan does not bring either back.
        let (diff, report) = set.rescan();
        assert!(
            diff.is_empty() && report.errors.is_empty() && set.is_empty(),
            "{diff:?}"
        );

        // Replaced (another inode renamed over it) between stat and open: skipped, and the new
        // inode is picked up by the next scan.
        w("r.safetensors");
        let r = root.clone();
        let _hook = test_hook::set(move |phase, p| {
            if phase == Phase::Examine && p.ends_with("r.safetensors") {
                write(&r.join("tmp.safetensors"), &safetensors_bytes());
                fs::rename(r.join("tmp.safetensors"), p).unwrap();
            }
        });
        let (diff, report) = set.rescan();
        drop(_hook);
        assert!(diff.is_empty() && report.errors.is_empty(), "{diff:?} {report:?}");
        let (diff, _) = set.rescan();
        assert_eq!(diff.added.len(), 1);
        let md = fs::metadata(root.join("r.safetensors")).unwrap();
        assert_eq!(diff.added[0].id.ino, md.ino());
    }

    #[test]
    fn symlink_loops_terminate_and_are_reported() {
        let t = tempfile::tempdir().unwrap();
        let root = &fs::canonicalize(t.path()).unwrap();
        write(&root.join("a/m.gguf"), &padded(b"GGUF\x03"));
        write(&root.join("b/n.gguf"), &padded(b"GGUF\x03"));
        // Directory links back up, to themselves, and across: never descended.
        symlink("..", root.join("a/up")).unwrap();
        symlink(root.join("a"), root.join("a/self")).unwrap();
        symlink("../b", root.join("a/to_b")).unwrap();
        symlink("../a", root.join("b/to_a")).unwrap();
        // File links that never reach a file: a -> b -> a, a link to itself, and one named
        // with a byte that is not UTF-8. Each is one error naming it; nothing else is lost.
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        symlink("self.safetensors", root.join("self.safetensors")).unwrap();
        symlink(
            OsStr::from_bytes(b"loop\xff.gguf"),
            root.join(OsStr::from_bytes(b"loop\xff.gguf")),
        )
        .unwrap();
        // Two roots that overlap: each directory is walked once.
        let mut set = WatchedSet::new(vec![root.to_owned(), root.join("a")]);
        let (diff, report) = set.rescan();
        assert_eq!(diff.added.len(), 2, "{report:?}");
        assert_eq!(set.len(), 2);
        assert!(set.iter().all(|f| f.aliases.is_empty()), "{diff:?}");
        assert_eq!(report.roots_scanned, 2);
        let eloop = std::io::Error::from_raw_os_error(libc::ELOOP);
        let mut want: Vec<String> = ["loop1", "loop2", "self.safetensors", "loop\\xff.gguf"]
            .iter()
            .map(|n| format!("{}/{n}: {eloop}", root.display()))
            .collect();
        let mut got = report.errors.clone();
        want.sort();
        got.sort();
        assert_eq!(got, want);
        // The next scan ends the same way: no endless retries, no growing error list.
        let (diff, again) = set.rescan();
        assert!(diff.is_empty(), "{diff:?}");
        assert_eq!(again.errors.len(), 4, "{again:?}");
    }

    fn write_at(dir: &OwnedFd, name: &str, bytes: &[u8], flags: i32) {
        let c = CString::new(name).unwrap();
        // SAFETY: an open directory descriptor and a NUL-terminated name; the fd returned is
        // ours to own.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                c.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | flags,
                0o644,
            )
        };
        assert!(fd >= 0, "{}", io::Error::last_os_error());
        // SAFETY: just opened (checked above), owned by nothing else.
        let f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        use std::io::Write;
        (&f).write_all(bytes).unwrap();
    }

    fn symlink_at(dir: &OwnedFd, target: &Path, name: &str) {
        let (t, n) = (
            CString::new(target.as_os_str().as_bytes()).unwrap(),
            CString::new(name).unwrap(),
        );
        assert_eq!(
            // SAFETY: NUL-terminated target and name, and an open directory descriptor.
            unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), n.as_ptr()) },
            0
        );
    }

    #[test]
    fn paths_longer_than_path_max_are_watched() {
        let t = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(t.path()).unwrap();
        fs::create_dir(root.join("models")).unwrap();
        // 17 levels of 250-byte names: the weight's path is over 4,300 bytes (PATH_MAX is 4,096),
        // well inside MAX_DEPTH.
        let (deep, deep_path) = mkdir_deep(&root.join("models"), 17, 250);
        let weight = deep_path.join("m.safetensors");
        assert!(
            weight.as_os_str().len() > PATH_MAX,
            "{}",
            weight.as_os_str().len()
        );
        assert_eq!(
            fs::metadata(&weight).unwrap_err().raw_os_error(),
            Some(libc::ENAMETOOLONG),
            "the kernel refuses the whole path"
        );
        write_at(&deep, "m.safetensors", &safetensors_bytes(), libc::O_TRUNC);
        // A link beside it: an alias, though neither path can be resolved by name.
        symlink_at(&deep, Path::new("m.safetensors"), "alias.safetensors");
        // A link to a weight deeper than PATH_MAX outside the roots: its real path cannot be
        // named by the kernel at all. Reported, naming the link, cut to a readable length.
        // (A link's target is limited to PATH_MAX too: two hops through shorter links.)
        let (half, half_path) = mkdir_deep(&root, 9, 250);
        let (outside, outside_path) = mkdir_deep(&half_path, 8, 250);
        write_at(&outside, "other.gguf", &padded(b"GGUF\x03"), libc::O_TRUNC);
        symlink(&half_path, root.join("j1")).unwrap();
        symlink_at(&half, outside_path.strip_prefix(&half_path).unwrap(), "j2");
        symlink_at(&deep, &root.join("j1/j2/other.gguf"), "escape.gguf");

        let mut set = WatchedSet::new(vec![root.join("models")]);
        let (diff, report) = set.rescan();
        assert_eq!(diff.added.len(), 1, "{report:?}");
        let f = &diff.added[0];
        assert_eq!(*f.path, *weight);
        assert_eq!(f.aliases, vec![deep_path.join("alias.safetensors")]);
        assert_eq!(f.format, WeightFormat::Safetensors);
        assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
        let err = &report.errors[0];
        assert!(err.len() < MAX_SHOWN_PATH + 200, "{} bytes: {err}", err.len());
        assert!(
            err.starts_with(&format!("{}/models/000ddd", root.display()))
                && err.contains(&format!(
                    "...[{} bytes]...",
                    deep_path.join("escape.gguf").as_os_str().len()
                ))
                && err.contains("/escape.gguf: cannot resolve the link's target, not watched:")
                && err.ends_with(&io::Error::from_raw_os_error(libc::ENAMETOOLONG).to_string()),
            "{err}"
        );
        // The JSON names the file in full.
        let j = serde_json::to_value(f).unwrap();
        assert_eq!(j["path"], weight.to_str().unwrap());
        // Nothing changed: nothing reopened, an empty diff, the same single error.
        let (diff, report) = set.rescan();
        assert!(diff.is_empty(), "{diff:?}");
        assert_eq!(report.errors.len(), 1);
        // It grows: reopened (component by component) and reported with its new size.
        write_at(&deep, "m.safetensors", &[0u8; 100], libc::O_APPEND);
        let (diff, report) = set.rescan();
        assert_eq!(diff.changed.len(), 1, "{diff:?} {report:?}");
        assert_eq!(diff.changed[0].size, safetensors_bytes().len() as u64 + 100);
        let md = File::from(open_path(&weight, libc::O_RDONLY).unwrap())
            .metadata()
            .unwrap();
        assert!(
            set.get(&FileId {
                dev: kernel_dev(md.dev()),
                _pad: 0,
                ino: md.ino()
            })
            .is_some()
        );
    }

    #[test]
    fn depth_is_bounded() {
        let t = tempfile::tempdir().unwrap();
        let mut deep = t.path().to_owned();
        for _ in 0..(MAX_DEPTH + 2) {
            deep.push("d");
        }
        write(&deep.join("m.gguf"), &padded(b"GGUF\x03"));
        let mut set = WatchedSet::new(vec![t.path().to_owned()]);
        let (_, report) = set.rescan();
        assert!(set.is_empty());
        assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    }

    #[test]
    fn symlinked_root_is_followed() {
        let t = tempfile::tempdir().unwrap();
        let real = fs::canonicalize(t.path()).unwrap().join("real");
        write(&real.join("m.gguf"), &padded(b"GGUF\x03"));
        symlink(&real, t.path().join("models")).unwrap();
        let mut set = WatchedSet::new(vec![t.path().join("models")]);
        set.rescan();
        assert_eq!(*set.iter().next().unwrap().path, *real.join("m.gguf"));
        // Looked up through the symlinked root: found after canonicalization.
        assert!(set.find_path(&t.path().join("models/m.gguf")).is_some());
    }
}
