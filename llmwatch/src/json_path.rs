//! How paths are written in JSON (events, alerts, status lines): exactly, even when they are
//! not UTF-8. Every layer that prints a path uses these.
use std::{
    borrow::Cow,
    ffi::OsString,
    fmt::Write as _,
    os::unix::ffi::{OsStrExt as _, OsStringExt as _},
    path::{Path, PathBuf},
};

use serde::Serializer;

/// A path as a JSON string, unambiguously: valid UTF-8 as it is, except that a backslash is
/// written `\\`, and every byte that is not part of valid UTF-8 as `\xNN` (lowercase hex).
///
/// serde refuses non-UTF-8 paths, and a lossy conversion would give `m\xff.gguf` and
/// `m\xfe.gguf` the same name (both `m\u{FFFD}.gguf`): two weights an SRE could not tell apart.
/// Names with newlines, tabs or quotes need nothing here; JSON escapes them, so every output
/// stays one line. [`path_from_json`] is the inverse.
pub fn path_to_json(p: &Path) -> Cow<'_, str> {
    let bytes = p.as_os_str().as_bytes();
    if let Ok(s) = std::str::from_utf8(bytes)
        && !s.contains('\\')
    {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(bytes.len() + 16);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    Cow::Owned(out)
}

/// The path a [`path_to_json`] string names; `None` for a string it cannot have produced (a
/// lone backslash, or `\x` without two hex digits).
pub fn path_from_json(s: &str) -> Option<PathBuf> {
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match rest {
            [b'\\', tail @ ..] => {
                out.push(b'\\');
                rest = tail;
            }
            [b'x', h, l, tail @ ..] => {
                let nibble = |c: u8| (c as char).to_digit(16);
                out.push((nibble(*h)? << 4 | nibble(*l)?) as u8);
                rest = tail;
            }
            _ => return None,
        }
    }
    Some(PathBuf::from(OsString::from_vec(out)))
}

/// `serialize_with` for a path field: see [`path_to_json`].
pub fn ser_path<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path_to_json(p))
}

/// `serialize_with` for a list of paths (`Vec<PathBuf>`, `Vec<&Path>`, `&[PathBuf]`): see
/// [`path_to_json`].
pub fn ser_paths<S: Serializer, P: AsRef<Path>>(ps: &[P], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(ps.iter().map(|p| path_to_json(p.as_ref())))
}

/// `deserialize_with` for a path field written by [`ser_path`] (`PathBuf`, `Arc<Path>`, ...).
pub fn de_path<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: From<PathBuf>,
{
    let s = <Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
    path_from_json(&s)
        .map(T::from)
        .ok_or_else(|| serde::de::Error::custom(format!("not an escaped path: {s:?}")))
}
