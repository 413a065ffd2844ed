//! The set of watched files: model weights and the other assets that configured globs name.
//!
//! The kernel programs match files by (s_dev, inode) from a BPF map; this module decides which
//! files are watched (weights by extension and magic bytes, other assets by glob, see
//! `assets`), keeps the set current as the roots change, and hands out diffs for another module
//! to apply to the map. It knows nothing of BPF.
//!
//! Identity is the inode, not the path: Hugging Face stores each file once as `blobs/<hash>` and
//! links `snapshots/<rev>/<name>` to it, and loaders open whichever path they were given, so one
//! entry per inode carries the real path plus every other name seen for it (the aliases).

mod assets;
mod format;
mod progress;
mod roots;
mod walk;
mod watched;
mod watcher;

#[cfg(test)]
mod fixtures;

pub use assets::{AssetClass, AssetPattern, PathGlob, PathGlobError};
pub use format::{WeightFormat, classify};
pub use roots::default_roots;
pub use walk::kernel_dev;
pub use watched::{Diff, ScanReport, WatchedFile, WatchedSet, path_for_message};
pub use watcher::{FilesError, RootWatcher};
