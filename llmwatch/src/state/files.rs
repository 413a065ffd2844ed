//! The set of watched weight files.
//!
//! The kernel programs match files by (s_dev, inode) from a BPF map; this module decides which
//! files are model weights (by extension and magic bytes), keeps the set current as the roots
//! change, and hands out diffs for another module to apply to the map. It knows nothing of BPF.
//!
//! Identity is the inode, not the path: Hugging Face stores each file once as `blobs/<hash>` and
//! links `snapshots/<rev>/<name>` to it, and loaders open whichever path they were given, so one
//! entry per inode carries the real path plus every other name seen for it (the aliases).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::json_path::{path_to_json, ser_path, ser_paths};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::time::{Duration, Instant};

use llmwatch_common::event::FileId;
use llmwatch_common::maps::name_hash;
use notify::event::{AccessKind, AccessMode, MetadataKind, ModifyKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use serde::{Serialize, Serializer};

/// Deepest directory level walked below a root; HF and Ollama layouts are < 10 deep, and a bound
/// keeps bind-mount loops (which the visited set may not catch across file systems) finite.
const MAX_DEPTH: usize = 32;
/// No weight format fits in fewer bytes; also skips HF's empty `.lock` files cheaply.
const MIN_WEIGHT_LEN: u64 = 16;
/// Bytes read for magic checks: enough for an HDF5 superblock at offset 512.
const HEAD_LEN: usize = 520;
const MAX_ERRORS: usize = 100;
/// Paths in scan errors are cut in the middle past this many bytes (see [`path_for_message`]).
const MAX_SHOWN_PATH: usize = 400;
/// A scan that takes longer than this logs its progress, this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Userspace `st_dev` (glibc's `makedev` encoding) to the kernel's `s_dev` (`major << 20 | minor`),
/// which is what the kernel programs read from the super block.
pub fn kernel_dev(st_dev: u64) -> u32 {
    let major = libc::major(st_dev as libc::dev_t);
    let minor = libc::minor(st_dev as libc::dev_t);
    (major << 20) | (minor & 0xf_ffff)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightFormat {
    Safetensors,
    Gguf,
    PytorchZip,
    Pickle,
    Onnx,
    OnnxData,
    TensorRt,
    Hdf5,
    Tflite,
    Msgpack,
    Npz,
    OllamaBlob,
}

/// Classify by extension and magic bytes; `Some` only for weight files. Reads at most
/// [`HEAD_LEN`] bytes with positional reads (the file offset is left alone).
///
/// Extension rules need the magic to match where a format has one, so a `.bin` holding text or a
/// truncated `.safetensors` is not a weight. Magic alone counts for extensionless files: GGUF
/// anywhere (Ollama blobs, bare llama.cpp files), and safetensors/zip/pickle inside a `blobs`
/// directory (Hugging Face stores files there by hash). HF's in-flight `*.incomplete` blobs are
/// not weights until renamed; the rescan after the rename picks them up.
pub fn classify(path: &Path, file: &mut File, meta: &Metadata) -> Option<WeightFormat> {
    if !meta.is_file() || meta.len() < MIN_WEIGHT_LEN || !could_be_weight(path) {
        return None;
    }
    let head = read_head(file).ok()?;
    classify_head(path, &head, meta.len())
}

/// Extensions that name a weight format. `onnx.data`/`onnx_data` are ONNX external data.
fn weight_ext(name: &str) -> Option<&'static str> {
    if name.ends_with(".onnx.data") || name.ends_with(".onnx_data") {
        return Some("onnx.data");
    }
    let ext = name.rsplit_once('.')?.1;
    const KNOWN: &[&str] = &[
        "safetensors",
        "gguf",
        "bin",
        "pt",
        "pth",
        "ckpt",
        "onnx",
        "engine",
        "plan",
        "h5",
        "hdf5",
        "keras",
        "tflite",
        "msgpack",
        "npz",
    ];
    KNOWN.iter().copied().find(|k| *k == ext)
}

fn lower_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

fn in_blobs_dir(path: &Path) -> bool {
    path.parent().and_then(Path::file_name) == Some(OsStr::new("blobs"))
}

/// Content-addressed stores whose files are named by hash: HF/Ollama `blobs/`, and Git LFS's
/// `.git/lfs/objects/ab/cd/<oid>` (a cloned model repo keeps a second copy of every weight there).
fn in_blob_store(path: &Path) -> bool {
    // Asked of nearly every file in a tree: no allocation.
    let mut prev: Option<&OsStr> = None;
    in_blobs_dir(path)
        || path.parent().is_some_and(|p| {
            p.iter().any(|c| {
                let hit = prev == Some(OsStr::new("lfs")) && c == "objects";
                prev = Some(c);
                hit
            })
        })
}

/// Names that are classified by magic alone (see [`classify`]).
fn magic_only(path: &Path) -> bool {
    let name = lower_name(path);
    if name.ends_with(".incomplete") || name.ends_with(".lock") || name.ends_with(".partial") {
        return false;
    }
    path.extension().is_none() || in_blob_store(path)
}

/// Cheap name test so that files which cannot be weights are never opened.
fn could_be_weight(path: &Path) -> bool {
    weight_ext(&lower_name(path)).is_some() || magic_only(path)
}

fn read_head(file: &File) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; HEAD_LEN];
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(n);
    Ok(buf)
}

const ZIP_MAGIC: &[u8] = b"PK\x03\x04";
const HDF5_MAGIC: &[u8] = b"\x89HDF\r\n\x1a\n";

fn is_safetensors(head: &[u8], len: u64) -> bool {
    // 8-byte LE JSON header length, then the JSON object; the header must fit in the file.
    let Some(n) = head
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    else {
        return false;
    };
    n > 0 && n.checked_add(8).is_some_and(|end| end <= len) && head.get(8) == Some(&b'{')
}

fn is_pickle(head: &[u8]) -> bool {
    // PROTO opcode, protocols 2..5 (torch.save's legacy format starts with a protocol-2 pickle).
    head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1])
}

fn is_hdf5(head: &[u8]) -> bool {
    // The superblock may sit at 0, 512, 1024...; we read enough for the first two.
    head.starts_with(HDF5_MAGIC) || head.get(512..520) == Some(HDF5_MAGIC)
}

/// Refine a zip by its first member's name: numpy's savez writes `<name>.npy`, Keras 3 writes
/// `metadata.json`/`config.json`/`model.weights.h5`; PyTorch's `<stem>/data.pkl` and anything
/// else count as PyTorch (the usual zip in a model repo).
fn zip_kind(head: &[u8]) -> WeightFormat {
    let name_len = head
        .get(26..28)
        .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
        .unwrap_or(0);
    let name = head.get(30..30 + name_len).unwrap_or(&[]);
    if name.ends_with(b".npy") {
        WeightFormat::Npz
    } else if [&b"metadata.json"[..], b"config.json", b"model.weights.h5"].contains(&name) {
        WeightFormat::Hdf5
    } else {
        WeightFormat::PytorchZip
    }
}

/// The classification rules for one name of a file, given its first bytes and length.
fn classify_head(path: &Path, head: &[u8], len: u64) -> Option<WeightFormat> {
    use WeightFormat::*;
    if len < MIN_WEIGHT_LEN {
        return None;
    }
    let name = lower_name(path);
    let gguf = head.starts_with(b"GGUF");
    let zip = head.starts_with(ZIP_MAGIC);
    match weight_ext(&name) {
        Some("safetensors") => is_safetensors(head, len).then_some(Safetensors),
        // A .gguf without the magic is a partial download or not GGUF at all.
        Some("gguf") => gguf.then_some(Gguf),
        Some("bin" | "pt" | "pth" | "ckpt") => {
            if gguf {
                Some(Gguf)
            } else if zip {
                Some(PytorchZip)
            } else {
                is_pickle(head).then_some(Pickle)
            }
        }
        // Protobuf has no magic; the extension is the evidence.
        Some("onnx") => Some(Onnx),
        Some("onnx.data") => Some(OnnxData),
        Some("engine" | "plan") => Some(TensorRt),
        Some("h5" | "hdf5") => is_hdf5(head).then_some(Hdf5),
        Some("keras") => (zip || is_hdf5(head)).then_some(Hdf5),
        Some("tflite") => (head.get(4..8) == Some(b"TFL3")).then_some(Tflite),
        // Flax serializes a state dict: a msgpack map (fixmap, map16 or map32).
        Some("msgpack") => head
            .first()
            .is_some_and(|&b| (0x80..=0x8f).contains(&b) || b == 0xde || b == 0xdf)
            .then_some(Msgpack),
        Some("npz") => zip.then_some(Npz),
        Some(_) => None,
        None if !magic_only(path) => None,
        None if gguf => {
            // Ollama names blobs `sha256-<hex>` (older versions `sha256:<hex>`).
            Some(if in_blobs_dir(path) && name.starts_with("sha256") {
                OllamaBlob
            } else {
                Gguf
            })
        }
        None if !in_blob_store(path) => None,
        None if is_safetensors(head, len) => Some(Safetensors),
        None if zip => Some(zip_kind(head)),
        None if is_pickle(head) => Some(Pickle),
        None => None,
    }
}

fn ser_id<S: Serializer>(id: &FileId, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut st = s.serialize_struct("FileId", 2)?;
    st.serialize_field("dev", &id.dev)?;
    st.serialize_field("ino", &id.ino)?;
    st.end()
}

/// A path for a human-read message (scan errors): escaped as in JSON, and cut in the middle
/// when longer than [`MAX_SHOWN_PATH`] bytes so a path deeper than PATH_MAX stays readable.
pub fn path_for_message(p: &Path) -> String {
    let s = path_to_json(p);
    if s.len() <= MAX_SHOWN_PATH {
        return s.into_owned();
    }
    let mut head = 120;
    while !s.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = s.len() - (MAX_SHOWN_PATH - 120);
    while !s.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{}...[{} bytes]...{}",
        &s[..head],
        p.as_os_str().len(),
        &s[tail..]
    )
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WatchedFile {
    /// Serialized as `{"dev": .., "ino": ..}`.
    #[serde(serialize_with = "ser_id")]
    pub id: FileId,
    /// Canonical real path of the inode (the HF blob); the smallest one for hard links.
    #[serde(serialize_with = "ser_path")]
    pub path: std::sync::Arc<Path>,
    /// Other paths seen for the inode (HF `snapshots/` symlinks, hard links), sorted.
    #[serde(serialize_with = "ser_paths")]
    pub aliases: Vec<PathBuf>,
    pub size: u64,
    pub format: WeightFormat,
}

#[derive(Default, Debug)]
pub struct Diff {
    pub added: Vec<WatchedFile>,
    pub removed: Vec<WatchedFile>,
    /// Same inode, and a new size, mtime, path, alias set or format.
    pub changed: Vec<WatchedFile>,
}

impl WeightFormat {
    /// The same name as the JSON form, for log lines.
    pub fn as_str(self) -> &'static str {
        use WeightFormat::*;
        match self {
            Safetensors => "safetensors",
            Gguf => "gguf",
            PytorchZip => "pytorch_zip",
            Pickle => "pickle",
            Onnx => "onnx",
            OnnxData => "onnx_data",
            TensorRt => "tensor_rt",
            Hdf5 => "hdf5",
            Tflite => "tflite",
            Msgpack => "msgpack",
            Npz => "npz",
            OllamaBlob => "ollama_blob",
        }
    }
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct ScanReport {
    pub roots_scanned: usize,
    #[serde(serialize_with = "ser_paths")]
    pub roots_missing: Vec<PathBuf>,
    /// Directories read.
    pub dirs_seen: u64,
    /// Regular files, and links to them, seen: weights or not.
    pub files_seen: u64,
    pub weights: usize,
    /// Wall time of the scan.
    pub elapsed_ms: u64,
    /// "path: reason", at most 100, then one line counting the rest. Paths are escaped as in
    /// [`path_to_json`] and cut in the middle past a few hundred bytes ([`path_for_message`]).
    pub errors: Vec<String>,
}

impl ScanReport {
    fn error(&mut self, path: &Path, reason: impl std::fmt::Display, dropped: &mut usize) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(format!("{}: {reason}", path_for_message(path)));
        } else {
            *dropped += 1;
        }
    }
}

/// What decides whether a cached classification is still good, and whether an entry changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(st: &Stat) -> Self {
        Stamp {
            size: st.size,
            mtime: st.mtime,
            ctime: st.ctime,
        }
    }
}

/// Result of looking inside an inode, kept so unchanged files are not reopened on every rescan
/// (our own opens would show up as accesses to the kernel programs, and cost I/O).
#[derive(Clone, Debug)]
struct Examined {
    stamp: Stamp,
    names: Vec<PathBuf>,
    format: Option<WeightFormat>,
}

/// Names and stat of one inode gathered during a walk.
#[derive(Default)]
struct Seen {
    names: BTreeSet<PathBuf>,
    real: BTreeSet<PathBuf>,
    stamp: Option<Stamp>,
    /// A link to this inode whose target's real path could not be resolved, and why: reported
    /// only if no other name gives the real path.
    unresolved: Option<(PathBuf, io::Error)>,
}

pub struct WatchedSet {
    roots: Vec<PathBuf>,
    files: BTreeMap<FileId, WatchedFile>,
    stamps: HashMap<FileId, Stamp>,
    examined: HashMap<FileId, Examined>,
    by_path: HashMap<PathBuf, FileId>,
    by_name: HashMap<OsString, Vec<FileId>>,
    /// A scan that takes longer than this logs what it has done so far, this often.
    progress_every: Duration,
    /// Inodes the last walk kept for classification (the walk's transient memory).
    #[cfg(test)]
    last_walk_inodes: usize,
}

impl WatchedSet {
    pub fn new(roots: Vec<PathBuf>) -> Self {
        WatchedSet {
            roots,
            files: BTreeMap::new(),
            stamps: HashMap::new(),
            examined: HashMap::new(),
            by_path: HashMap::new(),
            by_name: HashMap::new(),
            progress_every: PROGRESS_EVERY,
            #[cfg(test)]
            last_walk_inodes: 0,
        }
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Walk every root, classify, and return what changed since the last scan.
    ///
    /// Symlinks to files are followed (HF snapshot links resolve to the blob inode, recorded with
    /// the link as alias); symlinked directories are not descended, and each real directory is
    /// walked once per scan, so loops and overlapping roots terminate; a link loop is reported.
    /// Files under a directory that could not be read, or that could not be opened, keep their
    /// previous entry: a transient EACCES/EIO must not unwatch a weight. Files that vanish
    /// while being scanned are left out without an error.
    ///
    /// Directories are walked through descriptors, so files deeper than PATH_MAX are found and
    /// watched like any other. A scan that takes long logs its progress (see `progress_every`).
    pub fn rescan(&mut self) -> (Diff, ScanReport) {
        let start = Instant::now();
        let mut walk = Walk {
            seen: HashMap::new(),
            visited: HashSet::new(),
            incomplete: Vec::new(),
            report: ScanReport::default(),
            dropped: 0,
            progress: Progress::new(start, self.progress_every),
        };
        for root in &self.roots {
            walk.root(root);
        }
        let Walk {
            seen,
            incomplete,
            mut report,
            mut dropped,
            progress,
            ..
        } = walk;
        #[cfg(test)]
        {
            self.last_walk_inodes = seen.len();
        }

        let mut files = BTreeMap::new();
        let mut stamps = HashMap::new();
        let mut examined = HashMap::new();
        for (id, s) in seen {
            let Some(stamp) = s.stamp else { continue };
            let Some(primary) = s.real.iter().next().cloned() else {
                // Known only through links whose target could not be resolved (its real path is
                // too long for the kernel to name, say): say so if it may be a weight.
                if let Some((link, e)) = s.unresolved
                    && s.names.iter().any(|n| could_be_weight(n))
                {
                    report.error(
                        &link,
                        format_args!("cannot resolve the link's target, not watched: {e}"),
                        &mut dropped,
                    );
                }
                continue;
            };
            let names: Vec<PathBuf> = s
                .real
                .iter()
                .chain(s.names.iter())
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            if !names.iter().any(|n| could_be_weight(n)) {
                continue;
            }
            let cached = self
                .examined
                .get(&id)
                .filter(|e| e.stamp == stamp && e.names == names);
            let format = match cached {
                Some(e) => e.format,
                None => match examine(&primary, id, &names) {
                    Ok(f) => {
                        let names = names.clone();
                        examined.insert(
                            id,
                            Examined {
                                stamp,
                                names,
                                format: f,
                            },
                        );
                        f
                    }
                    // Vanished (or replaced) since the walk saw it: the next scan sees what is there.
                    Err(e) if e.kind() == io::ErrorKind::NotFound || vanished(&e) => continue,
                    Err(e) => {
                        report.error(&primary, e, &mut dropped);
                        // Keep what we knew rather than dropping a watched weight on EACCES/EIO;
                        // not cached, so the next scan tries again.
                        let Some(old) = self.files.get(&id) else {
                            continue;
                        };
                        Some(old.format)
                    }
                },
            };
            if let Some(e) = cached {
                examined.insert(id, e.clone());
            }
            let Some(format) = format else { continue };
            let aliases = names.into_iter().filter(|n| *n != primary).collect();
            stamps.insert(id, stamp);
            files.insert(
                id,
                WatchedFile {
                    id,
                    path: primary.into(),
                    aliases,
                    size: stamp.size,
                    format,
                },
            );
        }
        // Carry over entries under directories we failed to read.
        for (id, old) in &self.files {
            if files.contains_key(id) {
                continue;
            }
            let under = |p: &Path| incomplete.iter().any(|d| p.starts_with(d));
            if under(&old.path) || old.aliases.iter().any(|p| under(p)) {
                files.insert(*id, old.clone());
                if let Some(s) = self.stamps.get(id) {
                    stamps.insert(*id, *s);
                }
            }
        }

        let mut diff = Diff::default();
        for (id, new) in &files {
            match self.files.get(id) {
                None => diff.added.push(new.clone()),
                Some(old)
                    if old != new
                        || self.stamps.get(id).map(|s| s.mtime) != stamps.get(id).map(|s| s.mtime) =>
                {
                    diff.changed.push(new.clone())
                }
                Some(_) => {}
            }
        }
        diff.removed = self
            .files
            .iter()
            .filter(|(id, _)| !files.contains_key(id))
            .map(|(_, f)| f.clone())
            .collect();
        for v in [&mut diff.added, &mut diff.removed, &mut diff.changed] {
            v.sort_by(|a, b| a.path.cmp(&b.path));
        }

        self.files = files;
        self.stamps = stamps;
        self.examined = examined;
        self.reindex();
        if dropped > 0 {
            report.errors.push(format!("... and {dropped} more errors"));
        }
        report.weights = self.files.len();
        report.elapsed_ms = start.elapsed().as_millis() as u64;
        if progress.logged {
            progress.emit(format!(
                "scan of model directories done: {} files in {} directories, {} weights, {} errors, \
                 in {:.1} s",
                report.files_seen,
                report.dirs_seen,
                report.weights,
                report.errors.len(),
                start.elapsed().as_secs_f64()
            ));
        }
        (diff, report)
    }

    fn reindex(&mut self) {
        self.by_path.clear();
        self.by_name.clear();
        for (id, f) in &self.files {
            for p in std::iter::once(&*f.path).chain(f.aliases.iter().map(PathBuf::as_path)) {
                self.by_path.insert(p.to_path_buf(), *id);
                if let Some(n) = p.file_name() {
                    let ids = self.by_name.entry(n.to_owned()).or_default();
                    if !ids.contains(id) {
                        ids.push(*id);
                    }
                }
            }
        }
    }

    pub fn get(&self, id: &FileId) -> Option<&WatchedFile> {
        self.files.get(id)
    }

    /// By path or alias, exactly; then by the path's canonical form if it exists.
    pub fn find_path(&self, path: &Path) -> Option<&WatchedFile> {
        let id = match self.by_path.get(path) {
            Some(id) => id,
            None => self.by_path.get(&fs::canonicalize(path).ok()?)?,
        };
        self.files.get(id)
    }

    /// By basename of the path or any alias.
    pub fn find_name(&self, basename: &OsStr) -> Vec<&WatchedFile> {
        self.by_name
            .get(basename)
            .map(|ids| ids.iter().filter_map(|id| self.files.get(id)).collect())
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.values().map(|f| f.size).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = &WatchedFile> {
        self.files.values()
    }

    /// Basenames (path + aliases) of all watched files, for the kernel's rename/unlink filter.
    pub fn name_hashes(&self) -> HashSet<u64> {
        self.by_name.keys().map(|n| name_hash(n.as_bytes())).collect()
    }
}

/// Longest path the kernel takes in one path-based call, NUL included.
const PATH_MAX: usize = libc::PATH_MAX as usize;

/// What the walk keeps of an `lstat`/`stat` made through a directory descriptor (std's
/// `Metadata` cannot be built from one).
#[derive(Clone, Copy, Debug)]
struct Stat {
    dev: u64,
    ino: u64,
    mode: u32,
    /// More than one hard link.
    linked: bool,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
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
fn open_at(dir: RawFd, name: &OsStr, flags: i32) -> io::Result<OwnedFd> {
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
fn open_path(path: &Path, flags: i32) -> io::Result<OwnedFd> {
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
fn vanished(e: &io::Error) -> bool {
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

/// Logs what a long scan has done so far, so a big tree does not look like a hung agent.
struct Progress {
    start: Instant,
    every: Duration,
    next: Instant,
    /// Whether a progress line was logged (then the end of the scan is logged too).
    logged: bool,
}

impl Progress {
    fn new(start: Instant, every: Duration) -> Self {
        Progress {
            start,
            every,
            next: start + every,
            logged: false,
        }
    }

    fn tick(&mut self, report: &ScanReport, candidates: usize, dir: &Path) {
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now + self.every;
        self.logged = true;
        self.emit(format!(
            "scanning model directories: {} files in {} directories so far, {} weight candidates, \
             {} errors, {:.0} s; now in {}",
            report.files_seen,
            report.dirs_seen,
            candidates,
            report.errors.len(),
            (now - self.start).as_secs_f64(),
            path_for_message(dir)
        ));
    }

    fn emit(&self, line: String) {
        log::info!("{line}");
        #[cfg(test)]
        test_hook::LOG.with(|l| l.borrow_mut().push(line));
    }
}

/// One scan's walk over all roots: what it found, and what it could not read.
struct Walk {
    seen: HashMap<FileId, Seen>,
    /// (st_dev, st_ino) of every directory walked, so each is walked once.
    visited: HashSet<(u64, u64)>,
    /// Directories (or files) that could not be read: entries under them keep their old state.
    incomplete: Vec<PathBuf>,
    report: ScanReport,
    dropped: usize,
    progress: Progress,
}

impl Walk {
    fn error(&mut self, path: &Path, reason: impl std::fmt::Display) {
        self.report.error(path, reason, &mut self.dropped);
    }

    fn root(&mut self, root: &Path) {
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
                self.error(root, e);
                self.incomplete.push(root.to_owned());
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
                self.error(&real_root, e);
                self.incomplete.push(real_root);
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
                    self.error(&path, e);
                    self.incomplete.push(path);
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
                    self.error(path, e);
                    self.incomplete.push(path.to_owned());
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
                        self.error(&child, e);
                        self.incomplete.push(child);
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
                            self.error(&child, e);
                            self.incomplete.push(child);
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
                            self.error(&child, e);
                            self.incomplete.push(child);
                            continue;
                        }
                    };
                    self.report.files_seen += 1;
                    // Most files in a model tree are configs, tokenizers and READMEs: not kept,
                    // unless another name (a hard link) may make the inode a weight.
                    if st.linked || could_be_weight(&child) {
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
        let candidate = st.linked || could_be_weight(&path) || real.as_deref().is_none_or(could_be_weight);
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
        if st.size < MIN_WEIGHT_LEN {
            return;
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
fn examine(path: &Path, id: FileId, names: &[PathBuf]) -> io::Result<Option<WeightFormat>> {
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

/// Default model locations when no config says otherwise.
pub fn default_roots() -> Vec<PathBuf> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    default_roots_from(|k| std::env::var_os(k), &cwd)
}

fn default_roots_from(env: impl Fn(&str) -> Option<OsString>, cwd: &Path) -> Vec<PathBuf> {
    let var = |k: &str| env(k).filter(|v| !v.is_empty()).map(|v| cwd.join(v));
    let home = var("HOME");
    let mut roots = vec![
        PathBuf::from("/models"),
        PathBuf::from("/var/lib/models"),
        PathBuf::from("/opt/models"),
    ];
    let hf: Vec<PathBuf> = [var("HF_HUB_CACHE"), var("HF_HOME")]
        .into_iter()
        .flatten()
        .collect();
    if hf.is_empty() {
        // huggingface_hub's own default: $XDG_CACHE_HOME/huggingface, else ~/.cache/huggingface.
        match var("XDG_CACHE_HOME") {
            Some(x) => roots.push(x.join("huggingface")),
            None => roots.extend(home.as_ref().map(|h| h.join(".cache/huggingface"))),
        }
    } else {
        roots.extend(hf);
    }
    match var("OLLAMA_MODELS") {
        Some(o) => roots.push(o),
        None => {
            roots.extend(home.as_ref().map(|h| h.join(".ollama/models")));
            roots.push(PathBuf::from("/usr/share/ollama/.ollama/models"));
        }
    }
    roots.push(cwd.join("models"));
    let mut seen = HashSet::new();
    roots.retain(|r| seen.insert(r.clone()));
    roots
}

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
        let mut states = Vec::with_capacity(roots.len());
        for root in &roots {
            if root.exists() {
                watcher
                    .watch(root, RecursiveMode::Recursive)
                    .map_err(|source| FilesError::Watch {
                        path: root.clone(),
                        source,
                    })?;
                states.push(RootState::Watched);
            } else {
                let anc = nearest_existing_ancestor(root);
                if let Some(a) = &anc {
                    watcher
                        .watch(a, RecursiveMode::NonRecursive)
                        .map_err(|source| FilesError::Watch {
                            path: a.clone(),
                            source,
                        })?;
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

/// Test seams: a hook called between the phases of a scan (to make files vanish exactly there),
/// and the progress lines a scan logged.
#[cfg(test)]
mod test_hook {
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
    use crate::json_path::{de_path, path_from_json};
    use std::borrow::Cow;
    use std::os::unix::ffi::OsStringExt as _;
    use std::os::unix::fs::symlink;

    fn safetensors_bytes() -> Vec<u8> {
        let header = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header);
        v.extend_from_slice(&[0u8; 8]);
        v
    }

    fn padded(prefix: &[u8]) -> Vec<u8> {
        let mut v = prefix.to_vec();
        v.resize(64.max(prefix.len()), 0);
        v
    }

    fn write(path: &Path, bytes: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }

    fn classify_bytes(dir: &Path, rel: &str, bytes: &[u8]) -> Option<WeightFormat> {
        let p = dir.join(rel);
        write(&p, bytes);
        let mut f = File::open(&p).unwrap();
        let m = f.metadata().unwrap();
        classify(&p, &mut f, &m)
    }

    fn hdf5_bytes() -> Vec<u8> {
        padded(HDF5_MAGIC)
    }

    fn zip_with_member(name: &str) -> Vec<u8> {
        let mut v = ZIP_MAGIC.to_vec();
        v.resize(26, 0);
        v.extend_from_slice(&(name.len() as u16).to_le_bytes());
        v.extend_from_slice(&[0, 0]);
        v.extend_from_slice(name.as_bytes());
        padded(&v)
    }

    #[test]
    fn kernel_dev_encoding() {
        assert_eq!(kernel_dev(libc::makedev(8, 1)), (8 << 20) | 1);
        assert_eq!(kernel_dev(libc::makedev(259, 3)), (259 << 20) | 3);
        // Minors above 255 are split across st_dev's bits in userspace.
        assert_eq!(kernel_dev(libc::makedev(0, 300)), 300);
    }

    #[test]
    fn classify_formats() {
        use WeightFormat::*;
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let cases: Vec<(&str, Vec<u8>, Option<WeightFormat>)> = vec![
            ("a.safetensors", safetensors_bytes(), Some(Safetensors)),
            (
                "adapter_model.SAFETENSORS",
                safetensors_bytes(),
                Some(Safetensors),
            ),
            ("bad.safetensors", padded(&u64::MAX.to_le_bytes()), None),
            ("nobrace.safetensors", padded(&16u64.to_le_bytes()), None),
            ("m.gguf", padded(b"GGUF\x03\0\0\0"), Some(Gguf)),
            ("notgguf.gguf", padded(b"hello world, not gguf"), None),
            ("bare-gguf", padded(b"GGUF\x03\0\0\0"), Some(Gguf)),
            (
                "ollama/blobs/sha256-0123abcd",
                padded(b"GGUF\x03\0\0\0"),
                Some(OllamaBlob),
            ),
            (
                "ollama/blobs/sha256-4567ef00",
                padded(br#"{"model_format":"gguf"}"#),
                None,
            ),
            ("text.txt", padded(b"GGUF\x03\0\0\0"), None),
            (
                "pytorch_model.bin",
                zip_with_member("archive/data.pkl"),
                Some(PytorchZip),
            ),
            (
                "legacy.pt",
                padded(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"),
                Some(Pickle),
            ),
            ("m.pth", padded(b"\x80\x05\x95"), Some(Pickle)),
            ("m.ckpt", zip_with_member("m/data.pkl"), Some(PytorchZip)),
            ("vocab.bin", padded(b"just some bytes that are not a model"), None),
            ("proto1.bin", padded(b"\x80\x01abc"), None),
            ("model.onnx", padded(b"\x08\x07\x12\x07pytorch"), Some(Onnx)),
            ("model.onnx.data", padded(b"\x01\x02"), Some(OnnxData)),
            ("model.onnx_data", padded(b"\x01\x02"), Some(OnnxData)),
            ("rank0.engine", padded(b"ftrt"), Some(TensorRt)),
            ("model.plan", padded(b"ftrt"), Some(TensorRt)),
            ("tf_model.h5", hdf5_bytes(), Some(Hdf5)),
            ("notreally.h5", padded(b"CSV,data"), None),
            ("model.keras", zip_with_member("metadata.json"), Some(Hdf5)),
            ("model.keras.bad", zip_with_member("metadata.json"), None),
            ("m.tflite", padded(b"\x1c\0\0\0TFL3"), Some(Tflite)),
            ("bad.tflite", padded(b"\x1c\0\0\0TFL2"), None),
            ("flax_model.msgpack", padded(b"\x81\xa6params"), Some(Msgpack)),
            ("notmap.msgpack", padded(b"\x93\x01\x02\x03"), None),
            ("w.npz", zip_with_member("arr_0.npy"), Some(Npz)),
            ("bad.npz", padded(b"not a zip"), None),
            ("tiny.safetensors", b"\x02\0\0\0\0\0\0\0{}".to_vec(), None),
            ("tiny.onnx", b"\x08\x07".to_vec(), None),
            // Extensionless HF blobs: by magic.
            ("hub/blobs/aaaa01", safetensors_bytes(), Some(Safetensors)),
            (
                "hub/blobs/aaaa02",
                zip_with_member("archive/data.pkl"),
                Some(PytorchZip),
            ),
            ("hub/blobs/aaaa03", zip_with_member("arr_0.npy"), Some(Npz)),
            ("hub/blobs/aaaa04", padded(b"\x80\x04\x95"), Some(Pickle)),
            (
                "hub/blobs/aaaa05",
                padded(br#"{"architectures":["LlamaForCausalLM"]}"#),
                None,
            ),
            ("hub/blobs/aaaa06.incomplete", safetensors_bytes(), None),
            (
                ".git/lfs/objects/ab/cd/abcd99",
                safetensors_bytes(),
                Some(Safetensors),
            ),
            // Extensionless outside blobs: only GGUF counts.
            ("README", safetensors_bytes(), None),
        ];
        for (rel, bytes, want) in cases {
            let got = classify_bytes(d, rel, &bytes);
            assert_eq!(got, want, "{rel}");
            if let Some(f) = got {
                assert_eq!(serde_json::to_value(f).unwrap(), f.as_str(), "{rel}");
            }
        }
    }

    #[test]
    fn classify_hdf5_superblock_at_512() {
        let t = tempfile::tempdir().unwrap();
        let mut v = vec![0u8; 512];
        v.extend_from_slice(HDF5_MAGIC);
        v.resize(600, 0);
        assert_eq!(classify_bytes(t.path(), "m.hdf5", &v), Some(WeightFormat::Hdf5));
    }

    /// models--org--name/{blobs/<hash>, snapshots/<rev>/model.safetensors -> ../../blobs/<hash>}
    fn hf_layout(root: &Path) -> (PathBuf, PathBuf) {
        let repo = root.join("hub/models--org--name");
        let blob = repo.join("blobs/3f2a9c");
        write(&blob, &safetensors_bytes());
        write(
            &repo.join("blobs/77aa01"),
            br#"{"architectures":["LlamaForCausalLM"], "x": 1}"#,
        );
        let snap = repo.join("snapshots/abc123");
        fs::create_dir_all(&snap).unwrap();
        symlink("../../blobs/3f2a9c", snap.join("model.safetensors")).unwrap();
        symlink("../../blobs/77aa01", snap.join("config.json")).unwrap();
        (
            fs::canonicalize(&blob).unwrap(),
            fs::canonicalize(&snap).unwrap().join("model.safetensors"),
        )
    }

    #[test]
    fn hf_layout_one_entry_with_alias() {
        let t = tempfile::tempdir().unwrap();
        let (blob, alias) = hf_layout(t.path());
        let mut set = WatchedSet::new(vec![t.path().to_owned()]);
        let (diff, report) = set.rescan();
        assert_eq!(report.weights, 1, "{report:?}");
        assert_eq!(diff.added.len(), 1);
        let f = &diff.added[0];
        assert_eq!(
            (f.path.clone(), f.aliases.clone(), f.format),
            (
                blob.clone().into(),
                vec![alias.clone()],
                WeightFormat::Safetensors
            )
        );
        assert_eq!(*set.find_path(&alias).unwrap().path, *blob);
        assert_eq!(set.find_name(OsStr::new("model.safetensors")).len(), 1);
        assert_eq!(set.find_name(OsStr::new("3f2a9c")).len(), 1);
        assert!(set.find_name(OsStr::new("config.json")).is_empty());
        assert!(set.name_hashes().contains(&name_hash(b"model.safetensors")));
        assert!(set.name_hashes().contains(&name_hash(b"3f2a9c")));
        let md = fs::metadata(&blob).unwrap();
        assert_eq!(
            set.get(&FileId {
                dev: kernel_dev(md.dev()),
                _pad: 0,
                ino: md.ino()
            })
            .unwrap()
            .path,
            blob.into()
        );
        assert_eq!(set.total_bytes(), md.len());
        // The JSON form carries dev/ino numbers.
        let j = serde_json::to_value(f).unwrap();
        assert_eq!(j["id"]["ino"], md.ino());
        assert_eq!(j["format"], "safetensors");
        // A second scan with nothing changed: empty diff, classification reused from the cache.
        let (diff, _) = set.rescan();
        assert!(diff.is_empty(), "{diff:?}");
        assert_eq!(set.examined.len(), 2); // the weight and the config blob (negative)
    }

    #[test]
    fn hard_link_one_entry() {
        let t = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(t.path()).unwrap();
        write(&root.join("a/model.gguf"), &padded(b"GGUF\x03"));
        fs::create_dir_all(root.join("b")).unwrap();
        fs::hard_link(root.join("a/model.gguf"), root.join("b/copy.gguf")).unwrap();
        let mut set = WatchedSet::new(vec![root.clone()]);
        set.rescan();
        assert_eq!(set.len(), 1);
        let f = set.iter().next().unwrap();
        assert_eq!(*f.path, *root.join("a/model.gguf"));
        assert_eq!(f.aliases, vec![root.join("b/copy.gguf")]);
    }

    #[test]
    fn rescan_diff_add_grow_remove() {
        let t = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(t.path()).unwrap();
        let mut set = WatchedSet::new(vec![root.clone()]);
        let (diff, _) = set.rescan();
        assert!(diff.is_empty() && set.is_empty());

        let p = root.join("m.safetensors");
        write(&p, &safetensors_bytes());
        write(&root.join("notes.txt"), b"not a model at all, just notes");
        let (diff, report) = set.rescan();
        assert_eq!(
            (diff.added.len(), diff.changed.len(), diff.removed.len()),
            (1, 0, 0)
        );
        assert_eq!(report.files_seen, 2);

        let mut bytes = safetensors_bytes();
        bytes.extend_from_slice(&[0u8; 100]);
        fs::write(&p, &bytes).unwrap();
        let (diff, _) = set.rescan();
        assert_eq!(
            (diff.added.len(), diff.changed.len(), diff.removed.len()),
            (0, 1, 0)
        );
        assert_eq!(diff.changed[0].size, bytes.len() as u64);

        fs::remove_file(&p).unwrap();
        let (diff, _) = set.rescan();
        assert_eq!(
            (diff.added.len(), diff.changed.len(), diff.removed.len()),
            (0, 0, 1)
        );
        assert!(set.is_empty());
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
    fn non_utf8_name() {
        let t = tempfile::tempdir().unwrap();
        let name = OsString::from_vec(b"m\xff\xfe.gguf".to_vec());
        let p = t.path().join(&name);
        write(&p, &padded(b"GGUF\x03"));
        let mut set = WatchedSet::new(vec![t.path().to_owned()]);
        let (diff, report) = set.rescan();
        assert_eq!(diff.added.len(), 1, "{report:?}");
        assert_eq!(set.find_name(&name).len(), 1);
        assert!(set.name_hashes().contains(&name_hash(b"m\xff\xfe.gguf")));
        // Serializing must not fail on the non-UTF-8 path.
        serde_json::to_string(&diff.added[0]).unwrap();
    }

    #[test]
    fn odd_names_are_watched_and_stay_distinct_in_json() {
        let t = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(t.path()).unwrap();
        let names: Vec<&[u8]> = vec![
            b"my model.gguf",
            b"tab\there.gguf",
            b"new\nline.gguf",
            b" lead and trail .gguf",
            b"quote\"d.gguf",
            // Three names a lossy conversion would all turn into "m\u{FFFD}.gguf"...
            b"m\xff.gguf",
            b"m\xfe.gguf",
            "m\u{FFFD}.gguf".as_bytes(),
            // ...and one that spells out the escape itself.
            b"m\\xff.gguf",
            b"back\\slash.gguf",
        ];
        for n in &names {
            write(&root.join(OsStr::from_bytes(n)), &padded(b"GGUF\x03"));
        }
        let mut set = WatchedSet::new(vec![root.clone()]);
        let (diff, report) = set.rescan();
        assert!(report.errors.is_empty(), "{report:?}");
        assert_eq!(diff.added.len(), names.len());
        let mut shown = HashSet::new();
        for f in &diff.added {
            // One JSON object per line: the newline in a name is escaped, never printed raw.
            let line = serde_json::to_string(f).unwrap();
            assert!(!line.contains('\n'), "{line}");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let p = v["path"].as_str().unwrap();
            assert!(shown.insert(p.to_owned()), "two files shown as {p:?}");
            // The string names exactly one file: it decodes to the real name.
            assert_eq!(path_from_json(p).as_deref(), Some(&*f.path), "{p:?}");
            assert_eq!(set.find_name(f.path.file_name().unwrap()).len(), 1);
        }
        let m = |n: &[u8]| path_to_json(&root.join(OsStr::from_bytes(n))).into_owned();
        assert!(m(b"m\xff.gguf").ends_with("/m\\xff.gguf"));
        assert!(m(b"m\\xff.gguf").ends_with("/m\\\\xff.gguf"));
        assert!(m("m\u{FFFD}.gguf".as_bytes()).ends_with("/m\u{FFFD}.gguf"));
        assert!(m(b"new\nline.gguf").ends_with("/new\nline.gguf"));
        // Plain names are unchanged (and not copied).
        assert!(matches!(
            path_to_json(Path::new("/models/a b.gguf")),
            Cow::Borrowed(_)
        ));
        for bad in ["a\\", "a\\x4", "a\\xzz", "a\\q"] {
            assert_eq!(path_from_json(bad), None, "{bad:?}");
        }
        // A path field written this way reads back into a path.
        #[derive(serde::Deserialize)]
        struct P {
            #[serde(deserialize_with = "de_path")]
            p: Arc<Path>,
        }
        let odd = root.join(OsStr::from_bytes(b"m\xff\n.gguf"));
        let j = serde_json::json!({ "p": path_to_json(&odd) }).to_string();
        assert_eq!(*serde_json::from_str::<P>(&j).unwrap().p, *odd);
        // Lists of borrowed paths (as in the agent's status lines) serialize the same way.
        #[derive(Serialize)]
        struct L<'a> {
            #[serde(serialize_with = "ser_paths")]
            added: Vec<&'a Path>,
            #[serde(serialize_with = "ser_paths")]
            roots: &'a [PathBuf],
        }
        let l = L {
            added: vec![&odd],
            roots: std::slice::from_ref(&odd),
        };
        let j = serde_json::to_value(&l).unwrap();
        assert_eq!(j["added"][0], j["roots"][0]);
        assert_eq!(path_from_json(j["added"][0].as_str().unwrap()).unwrap(), odd);
        // Report paths too: a missing root with an odd name, and scan errors.
        let missing = root.join(OsStr::from_bytes(b"gone\xff"));
        let mut set = WatchedSet::new(vec![missing]);
        let (_, report) = set.rescan();
        let j = serde_json::to_value(&report).unwrap();
        assert_eq!(j["roots_missing"][0], format!("{}/gone\\xff", root.display()));
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

    fn rss_kib() -> u64 {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Where to build a throwaway tree of `files` files: a tmpfs with room for them if there is
    /// one (on a disk, ext4 without a journal can take a minute to make 100k files shortly after
    /// another mass deletion), else the usual temp dir.
    fn big_tempdir(files: u64) -> tempfile::TempDir {
        let shm = c"/dev/shm";
        let mut fs_st = std::mem::MaybeUninit::<libc::statfs>::uninit();
        let mut vfs = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: a NUL-terminated path and output buffers of the right types; each buffer is
        // read only after its call returned 0 (`&&` stops at the first failure).
        let roomy_tmpfs = unsafe {
            libc::statfs(shm.as_ptr(), fs_st.as_mut_ptr()) == 0
                && libc::statvfs(shm.as_ptr(), vfs.as_mut_ptr()) == 0
                && fs_st.assume_init().f_type == libc::TMPFS_MAGIC
                && vfs.assume_init().f_favail >= 2 * files
        };
        if roomy_tmpfs && let Ok(t) = tempfile::tempdir_in("/dev/shm") {
            return t;
        }
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn hundred_thousand_files() {
        let t = big_tempdir(100_000);
        let root = fs::canonicalize(t.path()).unwrap();
        // 10 x 10 directories of 1,000 files; every hundredth a (tiny) safetensors, the rest
        // configs and text that are never opened. Those are 64-byte sparse files (big enough
        // not to be skipped by size; no data blocks, so making and removing them is cheap even on
        // a busy disk).
        let made = Instant::now();
        let st = safetensors_bytes();
        for d in 0..100 {
            let dir = root.join(format!("org{}/model{}", d / 10, d % 10));
            fs::create_dir_all(&dir).unwrap();
            for i in 0..1000 {
                if i % 100 == 7 {
                    fs::write(dir.join(format!("shard-{i:05}.safetensors")), &st).unwrap();
                } else {
                    let ext = if i % 2 == 0 { "json" } else { "txt" };
                    File::create(dir.join(format!("f-{i}.{ext}")))
                        .unwrap()
                        .set_len(64)
                        .unwrap();
                }
            }
        }
        let made = made.elapsed();
        let rss0 = rss_kib();
        let mut set = WatchedSet::new(vec![root.clone()]);
        let scan = Instant::now();
        let (diff, report) = set.rescan();
        let scan = scan.elapsed();
        let rss1 = rss_kib();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!((report.files_seen, report.dirs_seen), (100_000, 111));
        assert_eq!((report.weights, diff.added.len(), set.len()), (1000, 1000, 1000));
        // Only weight candidates were kept during the walk, and only they were opened.
        assert_eq!(set.last_walk_inodes, 1000);
        assert_eq!(set.examined.len(), 1000);
        let again = Instant::now();
        let (diff, report) = set.rescan();
        let again = again.elapsed();
        assert!(diff.is_empty(), "{diff:?}");
        assert_eq!(report.weights, 1000);
        println!(
            "100k files in {}: created in {made:.2?}; first scan {scan:.2?} (RSS {rss0} -> {rss1} KiB, \
             +{} KiB), rescan with no change {again:.2?}",
            root.display(),
            rss1.saturating_sub(rss0)
        );
    }

    #[test]
    fn long_scans_log_progress() {
        let t = tempfile::tempdir().unwrap();
        for i in 0..3 {
            write(&t.path().join(format!("d{i}/m.gguf")), &padded(b"GGUF\x03"));
        }
        let mut set = WatchedSet::new(vec![t.path().to_owned()]);
        let logged = || test_hook::LOG.with(|l| std::mem::take(&mut *l.borrow_mut()));
        // A quick scan says nothing.
        set.rescan();
        assert_eq!(logged(), Vec::<String>::new());
        // One that takes longer than the interval says what it has done so far, then that it
        // is done, with counts.
        set.progress_every = Duration::ZERO;
        set.rescan();
        let lines = logged();
        assert!(lines.len() >= 2, "{lines:?}");
        assert!(
            lines[0].starts_with("scanning model directories: ") && lines[0].contains(" files in "),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("weight candidates") && l.contains("; now in /"))
        );
        assert!(
            lines
                .last()
                .unwrap()
                .starts_with("scan of model directories done: 3 files in 4 directories, 3 weights, 0 errors"),
            "{lines:?}"
        );
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

    /// A chain of `levels` directories below `root`, each named with `name_len` bytes, made with
    /// `mkdirat`/`openat` (a path-based mkdir fails past PATH_MAX). Returns the deepest one.
    fn mkdir_deep(root: &Path, levels: usize, name_len: usize) -> (OwnedFd, PathBuf) {
        let mut dir = open_path(root, libc::O_RDONLY | libc::O_DIRECTORY).unwrap();
        let mut path = root.to_owned();
        for i in 0..levels {
            let name = format!("{i:03}{}", "d".repeat(name_len - 3));
            let c = CString::new(name.clone()).unwrap();
            // SAFETY: an open directory descriptor and a NUL-terminated name.
            assert_eq!(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o755) }, 0);
            dir = open_at(
                dir.as_raw_fd(),
                OsStr::new(&name),
                libc::O_RDONLY | libc::O_DIRECTORY,
            )
            .unwrap();
            path.push(name);
        }
        (dir, path)
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
    fn path_for_message_cuts_the_middle() {
        assert_eq!(
            path_for_message(Path::new(OsStr::from_bytes(b"/m/a\xffb"))),
            "/m/a\\xffb"
        );
        let long = PathBuf::from(format!("/models/{}/tail/model.gguf", "x".repeat(5000)));
        let shown = path_for_message(&long);
        assert!(shown.len() <= MAX_SHOWN_PATH + 30, "{}", shown.len());
        assert!(
            shown.starts_with("/models/xxx") && shown.ends_with("xxx/tail/model.gguf"),
            "{shown}"
        );
        assert!(
            shown.contains(&format!("...[{} bytes]...", long.as_os_str().len())),
            "{shown}"
        );
        // Multi-byte characters are not cut in half.
        let wide = PathBuf::from(format!("/m/{}", "\u{e9}".repeat(400)));
        assert!(path_for_message(&wide).contains("...["));
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

    #[test]
    fn error_list_is_capped() {
        let mut r = ScanReport::default();
        let mut dropped = 0;
        for _ in 0..150 {
            r.error(Path::new("/x"), "boom", &mut dropped);
        }
        assert_eq!((r.errors.len(), dropped), (MAX_ERRORS, 50));
    }

    #[test]
    fn default_roots_follow_env() {
        let cwd = Path::new("/srv/app");
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let r = default_roots_from(env(&[("HOME", "/home/u")]), cwd);
        for want in [
            "/models",
            "/var/lib/models",
            "/opt/models",
            "/home/u/.cache/huggingface",
            "/home/u/.ollama/models",
            "/usr/share/ollama/.ollama/models",
            "/srv/app/models",
        ] {
            assert!(r.contains(&PathBuf::from(want)), "{want} in {r:?}");
        }
        let r = default_roots_from(
            env(&[
                ("HOME", "/home/u"),
                ("HF_HOME", "/data/hf"),
                ("OLLAMA_MODELS", "/data/ollama"),
            ]),
            cwd,
        );
        assert!(r.contains(&PathBuf::from("/data/hf")) && r.contains(&PathBuf::from("/data/ollama")));
        assert!(!r.iter().any(|p| p.starts_with("/home/u")), "{r:?}");
        // Running from / makes ./models the same as /models: listed once.
        let r = default_roots_from(env(&[]), Path::new("/"));
        assert_eq!(r.iter().filter(|p| *p == Path::new("/models")).count(), 1);
    }

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
