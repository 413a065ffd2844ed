//! Where models are looked for when the configuration names no roots.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
