//! Known-good hashes of weight files (`sha256sum` format: `<64 hex>  <path>` per line) and
//! their verification, which reads whole files and so runs off the event loop.
use std::{
    collections::HashMap,
    io::Read,
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("manifest {path} line {line}: expected `<64 hex digits>  <absolute path>`, got {text:?}")]
    Syntax {
        path: PathBuf,
        line: usize,
        text: String,
    },
}

/// Expected SHA-256 (lowercase hex) by absolute path.
pub fn load(path: &Path) -> Result<HashMap<PathBuf, String>, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Io {
        path: path.into(),
        source,
    })?;
    parse(&text).map_err(|(line, text)| ManifestError::Syntax {
        path: path.into(),
        line,
        text,
    })
}

fn parse(text: &str) -> Result<HashMap<PathBuf, String>, (usize, String)> {
    let mut out = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (hash, file) = line
            .split_once(char::is_whitespace)
            .ok_or((i + 1, raw.to_string()))?;
        // sha256sum marks binary mode with a leading '*'.
        let file = file.trim_start().trim_start_matches('*');
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) || !file.starts_with('/') {
            return Err((i + 1, raw.to_string()));
        }
        out.insert(PathBuf::from(file), hash.to_ascii_lowercase());
    }
    Ok(out)
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sha256sum_output_and_rejects_garbage() {
        let h = "a".repeat(64);
        let m = parse(&format!(
            "# comment\n{h}  /models/a.safetensors\n{h} */models/b.bin\n"
        ))
        .unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[Path::new("/models/b.bin")], h);
        assert_eq!(parse("zz  /x\n"), Err((1, "zz  /x".into())));
        assert!(parse(&format!("{h}  relative/path\n")).is_err());
    }

    #[test]
    fn hashes_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
