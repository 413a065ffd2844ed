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
    // The workspace's release profile links the agent with fat LTO (see Cargo.toml). The kernel
    // object is built as before, without it: bpf-linker links the crate graph itself, and a
    // different object would need its verifier runs on every supported kernel again. aya-build's
    // cargo inherits this process's environment, where a profile setting beats the manifest's.
    // SAFETY: the build script has started no thread, so nothing reads the environment while
    // it changes.
    unsafe { std::env::set_var("CARGO_PROFILE_RELEASE_LTO", "false") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )?;
    strip_dwarf(&object)
}

/// Removes the DWARF sections from the kernel object. bpf-linker needs the debug info to emit
/// BTF (the kernel crate is built with `debug = 2`), and BTF stays: the verifier's line info
/// and every map's and program's types are in `.BTF`/`.BTF.ext`. The DWARF itself is never
/// loaded, and it was three quarters of the object, embedded in the agent binary and resident
/// once the loader had touched it.
fn strip_dwarf(path: &std::path::Path) -> anyhow::Result<()> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut elf =
        object::build::elf::Builder::read(&*data).map_err(|e| anyhow!("parsing {}: {e}", path.display()))?;
    for section in elf.sections.iter_mut() {
        let name = section.name.as_slice();
        if name.starts_with(b".debug_") || name.starts_with(b".rel.debug_") {
            section.delete = true;
        }
    }
    elf.delete_orphans();
    // LLVM names the sections from the symbol string table (.strtab); the writer wants a
    // section header string table of its own.
    if !elf
        .sections
        .iter()
        .any(|s| matches!(s.data, object::build::elf::SectionData::SectionString))
    {
        let shstrtab = elf.sections.add();
        shstrtab.name = b".shstrtab"[..].into();
        shstrtab.sh_type = object::elf::SHT_STRTAB;
        shstrtab.sh_addralign = 1;
        shstrtab.data = object::build::elf::SectionData::SectionString;
    }
    let mut out = Vec::new();
    elf.write(&mut out)
        .map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

fn which_in_path(bin: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}
