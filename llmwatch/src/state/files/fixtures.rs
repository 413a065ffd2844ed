//! What the unit tests of this module build: weight files, and directory trees deeper than
//! PATH_MAX.

use std::ffi::{CString, OsStr};
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::walk::{open_at, open_path};

pub(super) fn safetensors_bytes() -> Vec<u8> {
    let header = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header);
    v.extend_from_slice(&[0u8; 8]);
    v
}

pub(super) fn padded(prefix: &[u8]) -> Vec<u8> {
    let mut v = prefix.to_vec();
    v.resize(64.max(prefix.len()), 0);
    v
}

pub(super) fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

/// A chain of `levels` directories below `root`, each named with `name_len` bytes, made with
/// `mkdirat`/`openat` (a path-based mkdir fails past PATH_MAX). Returns the deepest one.
pub(super) fn mkdir_deep(root: &Path, levels: usize, name_len: usize) -> (OwnedFd, PathBuf) {
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
