//! Builds the kernel programs (`llmwatch-ebpf`) for the BPF target and places the object in
//! OUT_DIR, where `probes::loader` embeds it.
//!
//! This needs the nightly toolchain with rust-src and bpf-linker; `cargo xtask setup` installs
//! them. `AYA_BUILD_SKIP=1` builds the agent without kernel programs (unit tests of pure
//! userspace code); such a binary refuses to start the probes and says why.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let object = out_dir.join("llmwatch");
    let skip = std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        if !object.exists() {
            std::fs::write(&object, b"").context("writing empty eBPF placeholder")?;
        }
        return Ok(());
    }
    if which_in_path("bpf-linker").is_none() {
        return Err(anyhow!(
            "bpf-linker is not installed; run `cargo xtask setup` (installs bpf-linker 0.10.0 and \
             rust-src for nightly), or set AYA_BUILD_SKIP=1 to build without kernel programs"
        ));
    }
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "llmwatch-ebpf")
        .ok_or_else(|| anyhow!("llmwatch-ebpf package not found in the workspace"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}

fn which_in_path(bin: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}
