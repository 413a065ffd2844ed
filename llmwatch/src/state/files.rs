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
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
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
    let comps: Vec<&OsStr> = path.parent().map(|p| p.iter().collect()).unwrap_or_default();
    in_blobs_dir(path) || comps.windows(2).any(|w| w[0] == "lfs" && w[1] == "objects")
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

// serde refuses non-UTF-8 paths; a weight with an odd name must still be reportable.
fn ser_path<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

fn ser_paths<S: Serializer>(ps: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(ps.iter().map(|p| p.to_string_lossy()))
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
    pub files_seen: u64,
    pub weights: usize,
    /// "path: reason", at most 100, then one line counting the rest.
    pub errors: Vec<String>,
}

impl ScanReport {
    fn error(&mut self, path: &Path, reason: impl std::fmt::Display, dropped: &mut usize) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(format!("{}: {reason}", path.display()));
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
    fn of(m: &Metadata) -> Self {
        Stamp {
            size: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
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
}

pub struct WatchedSet {
    roots: Vec<PathBuf>,
    files: BTreeMap<FileId, WatchedFile>,
    stamps: HashMap<FileId, Stamp>,
    examined: HashMap<FileId, Examined>,
    by_path: HashMap<PathBuf, FileId>,
    by_name: HashMap<OsString, Vec<FileId>>,
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
        }
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Walk every root, classify, and return what changed since the last scan.
    ///
    /// Symlinks to files are followed (HF snapshot links resolve to the blob inode, recorded with
    /// the link as alias); symlinked directories are not descended, and each real directory is
    /// walked once per scan, so loops and overlapping roots terminate. Files under a directory
    /// that could not be read, or that could not be opened, keep their previous entry: a
    /// transient EACCES/EIO must not unwatch a weight.
    pub fn rescan(&mut self) -> (Diff, ScanReport) {
        let mut report = ScanReport::default();
        let mut dropped = 0usize;
        let mut seen: HashMap<FileId, Seen> = HashMap::new();
        let mut visited: HashSet<(u64, u64)> = HashSet::new();
        let mut incomplete: Vec<PathBuf> = Vec::new();
        for root in &self.roots {
            walk_root(
                root,
                &mut seen,
                &mut visited,
                &mut incomplete,
                &mut report,
                &mut dropped,
            );
        }

        let mut files = BTreeMap::new();
        let mut stamps = HashMap::new();
        let mut examined = HashMap::new();
        for (id, s) in seen {
            let Some(stamp) = s.stamp else { continue };
            let Some(primary) = s.real.iter().next().cloned() else {
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
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // vanished mid-scan
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

fn walk_root(
    root: &Path,
    seen: &mut HashMap<FileId, Seen>,
    visited: &mut HashSet<(u64, u64)>,
    incomplete: &mut Vec<PathBuf>,
    report: &mut ScanReport,
    dropped: &mut usize,
) {
    // A configured root may itself be a symlink (/models -> /mnt/nvme/models): follow it once,
    // and walk its real path so regular files' paths are already canonical.
    let meta = match fs::metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            report.roots_missing.push(root.to_owned());
            return;
        }
        Err(e) => {
            report.roots_missing.push(root.to_owned());
            report.error(root, e, dropped);
            incomplete.push(root.to_owned());
            return;
        }
    };
    let real_root = fs::canonicalize(root).unwrap_or_else(|_| root.to_owned());
    report.roots_scanned += 1;
    if meta.is_file() {
        report.files_seen += 1;
        record(seen, real_root.clone(), real_root, &meta);
        return;
    }
    if !meta.is_dir() || !visited.insert((meta.dev(), meta.ino())) {
        return;
    }
    let mut stack = vec![(real_root, 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                report.error(&dir, e, dropped);
                incomplete.push(dir);
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    report.error(&dir, e, dropped);
                    incomplete.push(dir.clone());
                    break;
                }
            };
            let path = entry.path();
            // file_type() and metadata() do not follow symlinks.
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                let Ok(m) = entry.metadata() else { continue };
                if !visited.insert((m.dev(), m.ino())) {
                    continue;
                }
                if depth + 1 > MAX_DEPTH {
                    report.error(
                        &path,
                        format_args!("deeper than {MAX_DEPTH} levels, not walked"),
                        dropped,
                    );
                    continue;
                }
                stack.push((path, depth + 1));
            } else if ft.is_file() {
                report.files_seen += 1;
                if let Ok(m) = entry.metadata() {
                    record(seen, path.clone(), path, &m);
                }
            } else if ft.is_symlink() {
                match fs::metadata(&path) {
                    Ok(m) if m.is_file() => {
                        report.files_seen += 1;
                        match fs::canonicalize(&path) {
                            Ok(real) => record(seen, path, real, &m),
                            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                            Err(e) => report.error(&path, e, dropped),
                        }
                    }
                    Ok(_) => {} // directory link: not descended
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {} // dangling
                    Err(e) => report.error(&path, e, dropped), // ELOOP, EACCES
                }
            }
        }
    }
}

fn record(seen: &mut HashMap<FileId, Seen>, name: PathBuf, real: PathBuf, m: &Metadata) {
    if m.len() < MIN_WEIGHT_LEN {
        return;
    }
    let id = FileId {
        dev: kernel_dev(m.dev()),
        _pad: 0,
        ino: m.ino(),
    };
    let s = seen.entry(id).or_default();
    s.names.insert(name);
    s.real.insert(real);
    s.stamp = Some(Stamp::of(m));
}

/// Open one inode (by its real path), check it is still the inode we stat'ed, and classify it
/// under each of its names: names with a weight extension first, since the extension is more
/// specific than magic (an HF blob named by hash is known by its snapshot link's name).
fn examine(path: &Path, id: FileId, names: &[PathBuf]) -> io::Result<Option<WeightFormat>> {
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
    let open = |flags| fs::OpenOptions::new().read(true).custom_flags(flags).open(path);
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
            log::debug!("inotify watcher error: {e}");
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
    use std::os::unix::ffi::OsStringExt;
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
    fn symlinked_dir_loop_terminates() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        write(&root.join("a/m.gguf"), &padded(b"GGUF\x03"));
        symlink("..", root.join("a/up")).unwrap();
        symlink(root.join("a"), root.join("a/self")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        // Two roots that overlap: each directory is walked once.
        let mut set = WatchedSet::new(vec![root.to_owned(), root.join("a")]);
        let (_, report) = set.rescan();
        assert_eq!(set.len(), 1);
        assert_eq!(set.iter().next().unwrap().aliases, Vec::<PathBuf>::new());
        assert_eq!(report.roots_scanned, 2);
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
