//! Which files are model weights: classification by extension and magic bytes.

use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::Serialize;

/// No weight format fits in fewer bytes; also skips HF's empty `.lock` files cheaply.
pub(super) const MIN_WEIGHT_LEN: u64 = 16;
/// Bytes read for magic checks: enough for an HDF5 superblock at offset 512.
const HEAD_LEN: usize = 520;

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
    /// No weight format recognised: a file watched because a configured asset glob names it
    /// (a dataset, an encrypted weight file). Detection never gives this.
    Unknown,
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
            Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Extensions that name a weight format. `onnx.data`/`onnx_data` are ONNX external data.
pub(super) fn weight_ext(name: &str) -> Option<&'static str> {
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

pub(super) fn lower_name(path: &Path) -> String {
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
pub(super) fn could_be_weight(path: &Path) -> bool {
    weight_ext(&lower_name(path)).is_some() || magic_only(path)
}

pub(super) fn read_head(file: &File) -> io::Result<Vec<u8>> {
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
pub(super) fn classify_head(path: &Path, head: &[u8], len: u64) -> Option<WeightFormat> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::files::fixtures::{padded, safetensors_bytes, write};

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
}
