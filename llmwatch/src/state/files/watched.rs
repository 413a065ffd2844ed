//! The watched set: one entry per watched inode (weights and other assets), what changed between
//! two scans, and what a scan saw and could not read.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use llmwatch_common::event::FileId;
use llmwatch_common::maps::name_hash;
use serde::{Serialize, Serializer};

use crate::json_path::{path_to_json, ser_path, ser_paths};

use super::assets::{AssetClass, AssetMatcher, AssetPattern, scan_roots};
use super::format::WeightFormat;
use super::progress::{PROGRESS_EVERY, Progress};
use super::walk::{Stat, Walk, examine, vanished};

const MAX_ERRORS: usize = 100;
/// Paths in scan errors are cut in the middle past this many bytes (see [`path_for_message`]).
pub(super) const MAX_SHOWN_PATH: usize = 400;

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
    /// `unknown` for an asset a glob names whose content has no weight format.
    pub format: WeightFormat,
    /// What the file is (see `assets`): on every event and alert about it.
    pub class: AssetClass,
}

#[derive(Default, Debug)]
pub struct Diff {
    pub added: Vec<WatchedFile>,
    pub removed: Vec<WatchedFile>,
    /// Same inode, and a new size, mtime, path, alias set, format or class.
    pub changed: Vec<WatchedFile>,
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
    /// Regular files, and links to them, seen: watched or not.
    pub files_seen: u64,
    /// Files watched after the scan, of every class.
    pub weights: usize,
    /// The same by class (classes with none left out).
    pub classes: BTreeMap<AssetClass, usize>,
    /// Wall time of the scan.
    pub elapsed_ms: u64,
    /// "path: reason", at most 100, then one line counting the rest. Paths are escaped as in
    /// [`path_to_json`] and cut in the middle past a few hundred bytes ([`path_for_message`]).
    pub errors: Vec<String>,
}

impl ScanReport {
    pub(super) fn error(&mut self, path: &Path, reason: impl std::fmt::Display, dropped: &mut usize) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(format!("{}: {reason}", path_for_message(path)));
        } else {
            *dropped += 1;
        }
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

/// What decides whether a cached classification is still good, and whether an entry changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stamp {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    pub(super) fn of(st: &Stat) -> Self {
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
    /// The weight format detected in its content, if any.
    format: Option<WeightFormat>,
}

pub struct WatchedSet {
    /// What a scan walks: the model directories, then the asset globs' base directories.
    roots: Vec<PathBuf>,
    /// Configured asset globs, in configuration order (the first match gives the class).
    assets: Vec<AssetPattern>,
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
            assets: Vec::new(),
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

    /// Also watches the files `patterns` name, with their classes; their base directories are
    /// scanned (and watched for changes) besides the roots.
    pub fn with_assets(mut self, patterns: Vec<AssetPattern>) -> Self {
        self.roots = scan_roots(&self.roots, &patterns);
        self.assets = patterns;
        self
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
        let assets = AssetMatcher::new(&self.assets);
        let mut walk = Walk::new(Progress::new(start, self.progress_every), &assets);
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
                // too long for the kernel to name, say): say so if it may be watched.
                if let Some((link, e)) = s.unresolved
                    && s.names.iter().any(|n| assets.candidate(n))
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
            if !names.iter().any(|n| assets.candidate(n)) {
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
                        // Keep what we knew rather than dropping a watched file on EACCES/EIO;
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
            // The class comes from the names (and the configuration), not the content: asked
            // again every scan, so a rename into or out of a glob takes effect.
            let Some((class, format)) = assets.classify(&names, format) else {
                continue;
            };
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
                    class,
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
        for f in self.files.values() {
            *report.classes.entry(f.class).or_default() += 1;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json_path::{de_path, path_from_json};
    use crate::state::files::fixtures::{padded, safetensors_bytes, write};
    use crate::state::files::walk::{kernel_dev, test_hook};
    use std::borrow::Cow;
    use std::fs::File;
    use std::os::unix::ffi::OsStringExt as _;
    use std::os::unix::fs::{MetadataExt, symlink};
    use std::sync::Arc;

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

    fn asset(glob: String, class: AssetClass) -> AssetPattern {
        AssetPattern {
            glob: crate::state::files::PathGlob::new(&glob).unwrap(),
            class,
        }
    }

    fn classes(set: &WatchedSet) -> BTreeMap<PathBuf, (AssetClass, WeightFormat)> {
        set.iter()
            .map(|f| (f.path.to_path_buf(), (f.class, f.format)))
            .collect()
    }

    #[test]
    fn assets_named_by_glob_are_watched_whatever_their_content() {
        use AssetClass::*;
        let t = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(t.path()).unwrap();
        let (models, data) = (root.join("models"), root.join("data/finetune"));
        write(&models.join("m.safetensors"), &safetensors_bytes());
        write(
            &models.join("secret.enc"),
            b"\x13\x37 ciphertext: no magic anywhere in it",
        );
        write(
            &models.join("notes.txt"),
            b"named by no glob, and not a weight either",
        );
        write(
            &data.join("a/train.jsonl"),
            b"{\"prompt\": \"hi\", \"completion\": \"there\"}\n",
        );
        // Below the size any weight format needs: watched anyway, a glob names it.
        write(&data.join("tiny.jsonl"), b"{}\n");
        write(
            &data.join("README.md"),
            b"what the data set is, not named by a glob",
        );
        // A weight file under the data directory is a weight there too.
        write(&data.join("base.safetensors"), &safetensors_bytes());
        let patterns = vec![
            asset(format!("{}/**/*.jsonl", data.display()), Dataset),
            asset(format!("{}/**/*.enc", models.display()), EncryptedWeights),
        ];
        let mut set = WatchedSet::new(vec![models.clone()]).with_assets(patterns);
        assert_eq!(set.roots(), [models.clone(), data.clone()]);
        let (diff, report) = set.rescan();
        assert!(report.errors.is_empty(), "{report:?}");
        let want: BTreeMap<PathBuf, (AssetClass, WeightFormat)> = [
            (models.join("m.safetensors"), (Weights, WeightFormat::Safetensors)),
            (
                models.join("secret.enc"),
                (EncryptedWeights, WeightFormat::Unknown),
            ),
            (data.join("a/train.jsonl"), (Dataset, WeightFormat::Unknown)),
            (data.join("tiny.jsonl"), (Dataset, WeightFormat::Unknown)),
            (
                data.join("base.safetensors"),
                (Weights, WeightFormat::Safetensors),
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(classes(&set), want);
        assert_eq!(diff.added.len(), 5);
        assert_eq!(report.weights, 5);
        assert_eq!(
            report.classes,
            [(Weights, 2), (Dataset, 2), (EncryptedWeights, 1)]
                .into_iter()
                .collect()
        );
        let j = serde_json::to_value(&report).unwrap();
        assert_eq!(j["classes"]["encrypted_weights"], 1);
        let enc = set.find_path(&models.join("secret.enc")).unwrap();
        let j = serde_json::to_value(enc).unwrap();
        assert_eq!(
            (&j["class"], &j["format"]),
            (&"encrypted_weights".into(), &"unknown".into())
        );
        // Their names go to the kernel's rename/unlink filter like any watched file's.
        assert!(set.name_hashes().contains(&name_hash(b"train.jsonl")));

        // Renamed within the glob: the same file, under its new name.
        let id = set.find_path(&data.join("a/train.jsonl")).unwrap().id;
        fs::rename(data.join("a/train.jsonl"), data.join("a/train-2.jsonl")).unwrap();
        let (diff, _) = set.rescan();
        assert_eq!(
            (diff.added.len(), diff.removed.len(), diff.changed.len()),
            (0, 0, 1)
        );
        assert_eq!(
            (diff.changed[0].id, &*diff.changed[0].path),
            (id, &*data.join("a/train-2.jsonl"))
        );
        // Renamed out of it: no longer an asset, and not a weight: dropped.
        fs::rename(data.join("a/train-2.jsonl"), data.join("a/train-2.txt")).unwrap();
        let (diff, _) = set.rescan();
        assert_eq!((diff.added.len(), diff.removed.len()), (0, 1));
        assert_eq!(diff.removed[0].id, id);
        // Only weight candidates and glob matches are ever opened: notes.txt and README.md not.
        let examined: BTreeSet<FileId> = set.examined.keys().copied().collect();
        assert_eq!(examined, set.iter().map(|f| f.id).collect());
    }

    #[test]
    fn snapshot_links_give_their_blob_its_class() {
        let t = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(t.path()).unwrap();
        // The config blob behind snapshots/abc123/config.json is JSON, no weight format.
        let (weight_blob, _) = hf_layout(&root);
        let config_blob = root.join("hub/models--org--name/blobs/77aa01");
        // A PEFT adapter downloaded into the same cache.
        let lora = root.join("hub/models--org--lora");
        write(&lora.join("blobs/5e5e5e"), &safetensors_bytes());
        fs::create_dir_all(lora.join("snapshots/main")).unwrap();
        symlink(
            "../../blobs/5e5e5e",
            lora.join("snapshots/main/adapter_model.safetensors"),
        )
        .unwrap();
        let patterns = vec![asset(
            format!("{}/hub/**/snapshots/*/config.json", root.display()),
            AssetClass::Config,
        )];
        let mut set = WatchedSet::new(vec![root.clone()]).with_assets(patterns);
        // Under a model directory already: nothing more to scan.
        assert_eq!(set.roots(), std::slice::from_ref(&root));
        set.rescan();
        let want: BTreeMap<PathBuf, (AssetClass, WeightFormat)> = [
            (weight_blob, (AssetClass::Weights, WeightFormat::Safetensors)),
            (config_blob, (AssetClass::Config, WeightFormat::Unknown)),
            (
                lora.join("blobs/5e5e5e"),
                (AssetClass::Adapter, WeightFormat::Safetensors),
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(classes(&set), want);
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
    fn error_list_is_capped() {
        let mut r = ScanReport::default();
        let mut dropped = 0;
        for _ in 0..150 {
            r.error(Path::new("/x"), "boom", &mut dropped);
        }
        assert_eq!((r.errors.len(), dropped), (MAX_ERRORS, 50));
    }
}
