//! `cargo xtask fuzz [--secs N] [TARGET...]`: runs the cargo-fuzz targets in fuzz/ (libFuzzer,
//! nightly, AddressSanitizer) one after another, each for N seconds.
//!
//! Each target starts from its committed corpus (fuzz/corpus/<target>, read only here) and its
//! regressions (fuzz/regressions/<target>); what a run discovers goes to fuzz/target/corpus,
//! outside git, so a run never dirties the tree. A crash, a panic, an RSS over 512 MiB or a
//! single allocation over 128 MiB fails the task, naming the target and the input libFuzzer
//! saved under fuzz/artifacts/<target>/.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{NIGHTLY, check, output};

/// Every target in fuzz/fuzz_targets, in the order they run.
pub const TARGETS: &[&str] = &["config_parse", "event_decode", "replay_reader"];
const RSS_LIMIT_MB: u32 = 512;
const MALLOC_LIMIT_MB: u32 = 128;

pub fn run(root: &Path, secs: u64, targets: &[String]) -> anyhow::Result<()> {
    let targets: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        targets.iter().map(String::as_str).collect()
    };
    if let Some(t) = targets.iter().find(|t| !TARGETS.contains(t)) {
        bail!("unknown fuzz target {t:?}; targets are: {}", TARGETS.join(", "));
    }
    ensure_cargo_fuzz()?;
    let fuzz = root.join("fuzz");
    for target in targets {
        let scratch = fuzz.join("target/corpus").join(target);
        std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
        let mut seeds: Vec<PathBuf> = vec![fuzz.join("corpus").join(target)];
        let regressions = fuzz.join("regressions").join(target);
        if regressions.is_dir() {
            seeds.push(regressions);
        }
        let artifacts = fuzz.join("artifacts").join(target);
        let before = artifact_names(&artifacts);
        eprintln!("fuzz: {target} for {secs}s");
        let status = Command::new("rustup")
            .args(["run", NIGHTLY, "cargo", "fuzz", "run", target])
            // libFuzzer writes new inputs to the first directory only.
            .arg(&scratch)
            .args(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={secs}"))
            .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
            .arg(format!("-malloc_limit_mb={MALLOC_LIMIT_MB}"))
            .arg("-print_final_stats=1")
            // The parsers need no kernel programs; see llmwatch/build.rs.
            .env("AYA_BUILD_SKIP", "1")
            .env("ASAN_OPTIONS", asan_options())
            // This process runs under the stable toolchain's cargo; cargo fuzz must use nightly's.
            .env_remove("CARGO")
            .current_dir(root)
            .status()
            .context("running cargo fuzz")?;
        if !status.success() {
            let new: Vec<String> = artifact_names(&artifacts)
                .into_iter()
                .filter(|a| !before.contains(a))
                .map(|a| artifacts.join(a).display().to_string())
                .collect();
            match new.as_slice() {
                [] => bail!("fuzz target {target} failed ({status}) without saving an input"),
                found => bail!(
                    "fuzz target {target} found a bug ({status}); the input: {}\n  reproduce: \
                     AYA_BUILD_SKIP=1 cargo +{NIGHTLY} fuzz run {target} {}\n  then fix it and copy \
                     the input to fuzz/regressions/{target}/ under a name that says what it caught",
                    found.join(", "),
                    found[0]
                ),
            }
        }
    }
    Ok(())
}

/// AddressSanitizer holds freed memory in a quarantine (256 MiB by default) that counts
/// toward the RSS limit: with it, a config_parse run reached 530 MiB on its corpus alone. At
/// 32 MiB the limit measures the parsers, not the sanitizer. The user's own options come first.
fn asan_options() -> String {
    match std::env::var("ASAN_OPTIONS") {
        Ok(o) if o.contains("quarantine_size_mb") => o,
        Ok(o) if !o.is_empty() => format!("{o}:quarantine_size_mb=32"),
        _ => "quarantine_size_mb=32".into(),
    }
}

fn artifact_names(dir: &Path) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| Some(e.ok()?.file_name())).collect())
        .unwrap_or_default()
}

/// cargo-fuzz is a cargo subcommand installed once, like bpf-linker.
fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    if output(Command::new("rustup").args(["run", NIGHTLY, "cargo", "fuzz", "--version"])).is_some() {
        return Ok(());
    }
    eprintln!("fuzz: cargo-fuzz is not installed; installing it (cargo install cargo-fuzz --locked)");
    check(
        crate::cargo()
            .args(["install", "cargo-fuzz", "--locked"])
            .status()
            .context("running cargo install")?,
        "cargo install cargo-fuzz",
    )
}
