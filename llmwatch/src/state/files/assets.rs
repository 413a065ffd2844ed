//! Protected files beyond detected weights: datasets, adapters, tokenizers, configurations and
//! weights in formats without a magic we know. Model theft (OWASP LLM10) takes all of them, so
//! they are watched by identity exactly like weights; what differs is how they are found.
//!
//! A file is watched, and gets its class, by the first rule that fits:
//! 1. a configured [`AssetPattern`] (a glob on the full path, with a class) matching any of its
//!    names, whatever the content (an encrypted file has no magic, a dataset is text);
//! 2. a detected weight format (format.rs) under one of PEFT's adapter names: `adapter`;
//! 3. a detected weight format: `weights`.
//!
//! A glob's literal directory (everything before its first wildcard) is scanned besides the
//! model directories, so a glob must start with a real directory: `**/*.jsonl` would mean
//! walking the whole disk, and is refused.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::format::{WeightFormat, could_be_weight, lower_name};

/// What a watched file is, on every event and alert about it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssetClass {
    /// Model weights: a detected format, or named by a glob.
    #[default]
    Weights,
    /// Fine-tuning adapters (LoRA): PEFT's `adapter_model.*` by default.
    Adapter,
    /// Training and fine-tuning data.
    Dataset,
    /// Tokenizers and their configuration.
    Tokenizer,
    /// Model or training configuration.
    Config,
    /// Weights in a format with no magic we know (encrypted, proprietary).
    EncryptedWeights,
}

impl AssetClass {
    pub const ALL: [AssetClass; 6] = [
        AssetClass::Weights,
        AssetClass::Adapter,
        AssetClass::Dataset,
        AssetClass::Tokenizer,
        AssetClass::Config,
        AssetClass::EncryptedWeights,
    ];

    /// The same name as the JSON form.
    pub fn as_str(self) -> &'static str {
        match self {
            AssetClass::Weights => "weights",
            AssetClass::Adapter => "adapter",
            AssetClass::Dataset => "dataset",
            AssetClass::Tokenizer => "tokenizer",
            AssetClass::Config => "config",
            AssetClass::EncryptedWeights => "encrypted_weights",
        }
    }

    /// By its name, case-insensitive.
    pub fn from_name(name: &str) -> Option<AssetClass> {
        let name = name.trim().to_ascii_lowercase();
        AssetClass::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

impl fmt::Display for AssetClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a text is not a usable path glob.
#[derive(Debug, thiserror::Error)]
pub enum PathGlobError {
    #[error("{0:?} is not an absolute path (a glob matches the whole path: write /data/...)")]
    NotAbsolute(String),
    #[error(
        "{0:?} names no directory before its first wildcard, so the whole file system would be \
         walked; start it with the directory that holds the files (e.g. /data/finetune/**/*.jsonl)"
    )]
    NoBaseDirectory(String),
    #[error("{0:?} has a . or .. component; it is matched against real paths, which have none")]
    DotComponent(String),
    #[error("{text:?} is not a valid glob: {}", source.kind())]
    Invalid { text: String, source: globset::Error },
}

/// Characters that make a path component a pattern rather than a directory name.
const GLOB_SYNTAX: [char; 5] = ['*', '?', '[', '{', '\\'];

/// A glob on a whole path: `*` and `?` stay within one component, `**` crosses directories
/// (`/data/finetune/**/*.jsonl` matches `/data/finetune/a.jsonl` and `/data/finetune/x/y/a.jsonl`).
#[derive(Clone)]
pub struct PathGlob {
    text: String,
    /// The directory before the first wildcard (the parent of the last component for a glob
    /// without one): where the files it can match are, so where the scan looks for them.
    base: PathBuf,
    matcher: globset::GlobMatcher,
}

impl PathGlob {
    pub fn new(text: &str) -> Result<PathGlob, PathGlobError> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(PathGlobError::NotAbsolute(text.to_string()));
        };
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.iter().any(|p| *p == "." || *p == "..") {
            return Err(PathGlobError::DotComponent(text.to_string()));
        }
        // The last component names the files, never a directory to scan.
        let dirs = &parts[..parts.len() - 1];
        let mut base = PathBuf::from("/");
        base.extend(
            dirs.iter()
                .take_while(|p| !p.contains(GLOB_SYNTAX))
                .filter(|p| !p.is_empty()),
        );
        if base == Path::new("/") {
            return Err(PathGlobError::NoBaseDirectory(text.to_string()));
        }
        let glob = globset::GlobBuilder::new(text)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|source| PathGlobError::Invalid {
                text: text.to_string(),
                source,
            })?;
        Ok(PathGlob {
            text: text.to_string(),
            base,
            matcher: glob.compile_matcher(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    pub fn matches(&self, path: &Path) -> bool {
        self.matcher.is_match(path)
    }
}

impl fmt::Debug for PathGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PathGlob({:?})", self.text)
    }
}

impl PartialEq for PathGlob {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

/// One entry of the `assets` configuration: the files a glob matches are watched as `class`.
#[derive(Clone, Debug, PartialEq)]
pub struct AssetPattern {
    pub glob: PathGlob,
    pub class: AssetClass,
}

/// The roots a scan walks: the model directories, then each pattern's base that is not one of
/// them or below one (walking it again would find nothing new; watching it twice with inotify
/// would only double the events).
pub fn scan_roots(model_dirs: &[PathBuf], patterns: &[AssetPattern]) -> Vec<PathBuf> {
    let mut roots = model_dirs.to_vec();
    for p in patterns {
        let base = p.glob.base();
        if !roots.iter().any(|r| base.starts_with(r)) {
            roots.push(base.to_path_buf());
        }
    }
    roots
}

/// The patterns as one scan matches them. The walk names files by their real paths (a root is
/// canonicalized before it is walked), so a glob whose base is, or lies below, a symlink
/// (`/data -> /mnt/nvme/data`) is also tried with the base's real path put back in front.
pub(super) struct AssetMatcher<'a> {
    patterns: Vec<(&'a AssetPattern, Option<PathBuf>)>,
}

impl<'a> AssetMatcher<'a> {
    pub(super) fn new(patterns: &'a [AssetPattern]) -> Self {
        let patterns = patterns
            .iter()
            .map(|p| {
                let base = p.glob.base();
                let real = fs::canonicalize(base).ok().filter(|r| r != base);
                (p, real)
            })
            .collect();
        AssetMatcher { patterns }
    }

    /// The class the first pattern (in configuration order) matching any of `names` gives.
    pub(super) fn configured<P: AsRef<Path>>(&self, names: &[P]) -> Option<AssetClass> {
        self.patterns
            .iter()
            .find(|(p, real_base)| names.iter().any(|n| matches(p, real_base.as_deref(), n.as_ref())))
            .map(|(p, _)| p.class)
    }

    /// Whether a name may belong to a watched file: a weight by its name, or matched by a
    /// pattern. Cheap: asked of every file the walk lists.
    pub(super) fn candidate(&self, path: &Path) -> bool {
        could_be_weight(path) || self.configured(&[path]).is_some()
    }

    /// The class and format of a file known by `names` whose content was detected as
    /// `detected` (None: no weight format); None when it is not watched at all.
    pub(super) fn classify(
        &self,
        names: &[PathBuf],
        detected: Option<WeightFormat>,
    ) -> Option<(AssetClass, WeightFormat)> {
        let detected = detected.filter(|f| *f != WeightFormat::Unknown);
        if let Some(class) = self.configured(names) {
            return Some((class, detected.unwrap_or(WeightFormat::Unknown)));
        }
        let format = detected?;
        let class = if names.iter().any(|n| is_adapter_name(n)) {
            AssetClass::Adapter
        } else {
            AssetClass::Weights
        };
        Some((class, format))
    }
}

fn matches(pattern: &AssetPattern, real_base: Option<&Path>, path: &Path) -> bool {
    let glob = &pattern.glob;
    glob.matches(path)
        || real_base
            .and_then(|b| path.strip_prefix(b).ok())
            .is_some_and(|rest| glob.matches(&glob.base().join(rest)))
}

/// PEFT's `save_pretrained` names an adapter's weights `adapter_model.safetensors` (or
/// `adapter_model.bin`), in the output directory, in one directory per adapter name, in each
/// `checkpoint-N/`, and as the snapshot link to its blob in a Hugging Face cache.
fn is_adapter_name(path: &Path) -> bool {
    lower_name(path).starts_with("adapter_model")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str, class: AssetClass) -> AssetPattern {
        AssetPattern {
            glob: PathGlob::new(text).unwrap(),
            class,
        }
    }

    #[test]
    fn class_names_round_trip() {
        for c in AssetClass::ALL {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
            assert_eq!(AssetClass::from_name(c.as_str()), Some(c));
        }
        assert_eq!(
            AssetClass::from_name(" Encrypted_Weights"),
            Some(AssetClass::EncryptedWeights)
        );
        assert_eq!(AssetClass::from_name("datasets"), None);
        assert_eq!(AssetClass::default(), AssetClass::Weights);
    }

    #[test]
    fn a_glob_scans_its_literal_directory() {
        let base = |t: &str| PathGlob::new(t).map(|g| g.base().to_path_buf());
        assert_eq!(
            base("/data/finetune/**/*.jsonl").unwrap(),
            Path::new("/data/finetune")
        );
        assert_eq!(base("/models/**/*.enc").unwrap(), Path::new("/models"));
        assert_eq!(base("/data/fine*/x.jsonl").unwrap(), Path::new("/data"));
        assert_eq!(base("/data/{a,b}/x").unwrap(), Path::new("/data"));
        // No wildcard at all: one file, found in its directory.
        assert_eq!(base("/etc/llm/tokenizer.json").unwrap(), Path::new("/etc/llm"));
        assert_eq!(base("/data//x/*.csv").unwrap(), Path::new("/data/x"));
        // Nothing to start from but the whole file system: refused.
        for bad in [
            "/**/*.jsonl",
            "/*/finetune/*.jsonl",
            "/x.jsonl",
            "/{data,models}/x",
        ] {
            assert!(
                matches!(base(bad), Err(PathGlobError::NoBaseDirectory(_))),
                "{bad}: {:?}",
                base(bad)
            );
        }
        for bad in ["**/*.jsonl", "data/*.jsonl", ""] {
            assert!(matches!(base(bad), Err(PathGlobError::NotAbsolute(_))), "{bad}");
        }
        assert!(matches!(
            base("/data/../etc/*.json"),
            Err(PathGlobError::DotComponent(_))
        ));
        let e = base("/data/[x").unwrap_err();
        assert!(
            matches!(e, PathGlobError::Invalid { .. }) && e.to_string().contains("\"/data/[x\""),
            "{e}"
        );
    }

    #[test]
    fn globs_match_whole_paths_component_by_component() {
        let g = PathGlob::new("/data/finetune/**/*.jsonl").unwrap();
        for hit in [
            "/data/finetune/a.jsonl",
            "/data/finetune/x/a.jsonl",
            "/data/finetune/x/y/a.jsonl",
        ] {
            assert!(g.matches(Path::new(hit)), "{hit}");
        }
        for miss in [
            "/data/finetune/a.json",
            "/data/other/a.jsonl",
            "/srv/data/finetune/a.jsonl",
            "/data/finetune",
        ] {
            assert!(!g.matches(Path::new(miss)), "{miss}");
        }
        // `*` stays within one directory.
        let g = PathGlob::new("/models/*.enc").unwrap();
        assert!(g.matches(Path::new("/models/m.enc")));
        assert!(!g.matches(Path::new("/models/sub/m.enc")));
        // Names that are not UTF-8 still match.
        use std::os::unix::ffi::OsStrExt;
        assert!(g.matches(Path::new(std::ffi::OsStr::from_bytes(b"/models/\xff.enc"))));
    }

    #[test]
    fn roots_are_the_model_dirs_then_new_bases() {
        let model_dirs = vec![PathBuf::from("/models"), PathBuf::from("/srv/hf")];
        let patterns = [
            pattern("/data/finetune/**/*.jsonl", AssetClass::Dataset),
            pattern("/data/finetune/*.parquet", AssetClass::Dataset),
            pattern("/models/**/*.enc", AssetClass::EncryptedWeights),
            pattern("/srv/tok/*.json", AssetClass::Tokenizer),
        ];
        assert_eq!(
            scan_roots(&model_dirs, &patterns),
            ["/models", "/srv/hf", "/data/finetune", "/srv/tok"].map(PathBuf::from)
        );
        assert_eq!(scan_roots(&model_dirs, &[]), model_dirs);
    }

    #[test]
    fn a_configured_pattern_wins_over_format_detection() {
        use WeightFormat::Safetensors;
        let patterns = [
            pattern("/models/secret/**", AssetClass::EncryptedWeights),
            pattern("/models/**/*.safetensors", AssetClass::Config),
            pattern("/data/**/*.jsonl", AssetClass::Dataset),
        ];
        let m = AssetMatcher::new(&patterns);
        let names = |ps: &[&str]| ps.iter().map(PathBuf::from).collect::<Vec<_>>();
        // A pattern gives the class whatever the content; the detected format stays.
        assert_eq!(
            m.classify(&names(&["/models/a/m.safetensors"]), Some(Safetensors)),
            Some((AssetClass::Config, Safetensors))
        );
        assert_eq!(
            m.classify(&names(&["/data/x/train.jsonl"]), None),
            Some((AssetClass::Dataset, WeightFormat::Unknown))
        );
        // The first pattern in configuration order wins, whichever name matched it.
        assert_eq!(
            m.classify(
                &names(&["/models/a/m.safetensors", "/models/secret/blob"]),
                Some(Safetensors)
            ),
            Some((AssetClass::EncryptedWeights, Safetensors))
        );
        // No pattern: only a detected format is watched.
        assert_eq!(m.classify(&names(&["/data/x/notes.txt"]), None), None);
        assert_eq!(
            m.classify(&names(&["/other/m.safetensors"]), Some(Safetensors)),
            Some((AssetClass::Weights, Safetensors))
        );
        assert!(m.candidate(Path::new("/data/a/b.jsonl")));
        assert!(m.candidate(Path::new("/anywhere/m.gguf")));
        assert!(!m.candidate(Path::new("/data/a/b.txt")));
    }

    #[test]
    fn peft_adapters_are_their_own_class_by_default() {
        let m = AssetMatcher::new(&[]);
        let f = Some(WeightFormat::Safetensors);
        for adapter in [
            &["/out/adapter_model.safetensors"][..],
            &["/out/checkpoint-500/adapter_model.bin"],
            &["/out/my_adapter/Adapter_Model.safetensors"],
            // A Hugging Face cache: the blob is known as adapter_model by its snapshot link.
            &[
                "/hf/hub/models--me--lora/blobs/9f8e7d",
                "/hf/hub/models--me--lora/snapshots/abc/adapter_model.safetensors",
            ],
        ] {
            let names: Vec<PathBuf> = adapter.iter().map(PathBuf::from).collect();
            assert_eq!(
                m.classify(&names, f).map(|(c, _)| c),
                Some(AssetClass::Adapter),
                "{adapter:?}"
            );
        }
        let names = vec![PathBuf::from("/out/model.safetensors")];
        assert_eq!(m.classify(&names, f).map(|(c, _)| c), Some(AssetClass::Weights));
        // By name alone nothing is watched: an adapter is a weight file first.
        let names = vec![PathBuf::from("/out/adapter_model.safetensors")];
        assert_eq!(m.classify(&names, None), None);
    }

    #[test]
    fn a_symlinked_base_matches_the_real_paths_the_walk_reports() {
        let t = tempfile::tempdir().unwrap();
        let real = fs::canonicalize(t.path()).unwrap().join("nvme/data");
        fs::create_dir_all(&real).unwrap();
        let link = t.path().join("data");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let patterns = [AssetPattern {
            glob: PathGlob::new(&format!("{}/**/*.jsonl", link.display())).unwrap(),
            class: AssetClass::Dataset,
        }];
        let m = AssetMatcher::new(&patterns);
        assert!(m.candidate(&real.join("x/train.jsonl")));
        assert!(m.candidate(&link.join("train.jsonl")));
        assert!(!m.candidate(&real.join("x/train.txt")));
    }
}
