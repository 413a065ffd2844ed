//! `cargo xtask vm-test [--suite NAME]... [-- FILTER...]`: the kernel-hook and alert scenarios
//! inside Debian 12's 6.1 LTS kernel, against the binaries built on this host.
//!
//! virtme-ng boots the guest kernel in qemu with this host's root file system shared read-only
//! (9p), so the guest runs exactly the `llmwatch` and test executables cargo built here, with
//! the same tools (bash, curl, python3) the host suite uses, and no cargo inside. The stock
//! kernel runs under emulation (TCG: hardware virtualization cannot be assumed on CI), about ten
//! times slower, so the harness's time windows are stretched with `LLMWATCH_TEST_TIME_SCALE`.
//!
//! What the guest produces lands in a directory shared read-write (target/vm-test/guest): each
//! suite's libtest output and exit status, `uname -r`, and `llmwatch check --json`. The console
//! is only a live view and a log (target/vm-test/console.log): on this kind of host virtme-ng
//! cannot always forward the command's exit status or stdout, the shared directory always works.
//! The summary goes to stdout and target/vm-test/results.json, with `llmwatch check --json` of
//! the host beside the guest's.
//!
//! Everything it needs it installs, saying what: Debian's qemu-system-x86, kmod, busybox-static
//! and file (apt-get), virtme-ng (PyPI, in its own virtual environment) and the kernel package
//! (`apt-get download`, unpacked with `dpkg-deb -x`). Downloads are cached under
//! ~/.cache/llmwatch/vm-test (`LLMWATCH_CACHE_DIR` moves it), so a second run starts at the build.
use std::{
    fs,
    io::{BufRead as _, BufReader, Read, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{cargo, check, output};

/// The guest kernel: Debian 12's 6.1 LTS build, by ABI name. Pinned so every run tests the same
/// kernel and the cache stays valid; when Debian drops it from the archive (old ABIs go after a
/// point release) the newest 6.1 package is used instead and the run says so.
const PINNED_KERNEL: &str = "6.1.0-57-amd64";
/// virtme-ng's release, pinned: its guest init and command line have changed between releases.
const VIRTME_NG_VERSION: &str = "1.42";
/// Debian packages the guest boot needs: qemu itself; kmod (depmod/modprobe) and busybox-static
/// for the initramfs virtme-ng builds to load the 9p and virtio modules; file, which virtme-ng
/// reads the kernel version with.
const DEBIAN_PACKAGES: &[&str] = &["qemu-system-x86", "kmod", "busybox-static", "file"];
/// Suites run when none are named: the ones that exercise the kernel programs (`guard`: the
/// BPF-LSM refusals, which only this kernel loads).
pub const DEFAULT_SUITES: &[&str] = &["kernel_hooks", "follow", "touch", "sends", "alerts", "guard"];
/// Prefix of the lines the guest writes to its console for the host to show live.
const GUEST_LINE: &str = "guest| ";
/// The guest script's first line (after `say`'s "vm-test: "), which marks the end of the boot.
const GUEST_UP: &str = "vm-test: guest up";

pub struct Opts {
    /// Test targets of tests/ to run in the guest.
    pub suites: Vec<String>,
    /// Guest kernel ABI name (e.g. 6.1.0-57-amd64) instead of the pinned one.
    pub kernel: Option<String>,
    /// `LLMWATCH_TEST_TIME_SCALE` in the guest.
    pub time_scale: f64,
    pub cpus: u32,
    pub memory: String,
    /// Limit for each suite inside the guest, in minutes.
    pub suite_timeout_min: u64,
    /// Passed to every test executable (a name filter, `--exact`, ...).
    pub test_args: Vec<String>,
    /// After the suites, the in-VM bench (`cargo xtask bench --vm`) in the same boot, with this
    /// many rounds: one boot and one turn of the shared VM lock for both.
    pub bench_rounds: Option<usize>,
}

/// Seconds each phase took, in the order they ran.
#[derive(Default)]
struct Timings(Vec<(String, f64)>);

impl Timings {
    fn add(&mut self, phase: &str, since: Instant) {
        self.0.push((phase.to_string(), since.elapsed().as_secs_f64()));
    }
    fn to_json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(phase, s)| (phase.clone(), json!((s * 10.0).round() / 10.0)))
                .collect(),
        )
    }
}

pub fn run(root: &Path, opts: Opts) -> anyhow::Result<()> {
    if opts.suites.is_empty() {
        bail!("vm-test: no suite to run");
    }
    if !(opts.time_scale.is_finite() && opts.time_scale > 0.0) {
        bail!(
            "vm-test: --time-scale must be a positive number, not {}",
            opts.time_scale
        );
    }
    if crate::effective_uid() != 0 {
        bail!(
            "vm-test: run it as root (it installs Debian packages, and the guest runs the scenarios as root)"
        );
    }
    let cache = cache_dir()?;
    let out_dir = root.join("target/vm-test");
    let mut timings = Timings::default();

    let started = Instant::now();
    let vng = ensure_vm_tools(&cache, &mut timings)?;
    timings.add("tools (total)", started);

    let started = Instant::now();
    let kernel = ensure_kernel(&cache.join("kernels"), opts.kernel.as_deref())?;
    timings.add(
        if kernel.downloaded {
            "kernel download and unpack"
        } else {
            "kernel (cached)"
        },
        started,
    );
    println!(
        "vm-test: guest kernel {} {} ({})",
        kernel.package, kernel.package_version, kernel.choice
    );

    let started = Instant::now();
    crate::build(false)?;
    if opts.bench_rounds.is_some() {
        crate::build(true)?;
    }
    let agent = root.join("target/debug/llmwatch");
    let executables = test_executables(&opts.suites)?;
    timings.add("build", started);

    let host = host_report(&agent);

    let guest_dir = out_dir.join("guest");
    if guest_dir.exists() {
        fs::remove_dir_all(&guest_dir).with_context(|| format!("clearing {}", guest_dir.display()))?;
    }
    fs::create_dir_all(&guest_dir).with_context(|| format!("creating {}", guest_dir.display()))?;
    let script = guest_dir.join("guest.sh");
    fs::write(
        &script,
        guest_script(root, &guest_dir, &agent, &executables, &opts)?,
    )
    .with_context(|| format!("writing {}", script.display()))?;

    let boot = boot_guest(
        &vng,
        &kernel,
        &guest_dir,
        &script,
        &out_dir.join("console.log"),
        &opts,
    )?;
    timings.0.push(("boot".into(), boot.boot_s.unwrap_or(f64::NAN)));

    let guest = guest_report(&guest_dir, &opts.suites, &executables);
    for suite in guest["suites"].as_array().into_iter().flatten() {
        if let (Some(name), Some(s)) = (suite["name"].as_str(), suite["duration_s"].as_f64()) {
            timings.0.push((format!("suite {name}"), s));
        }
    }
    timings.0.push(("vm total".into(), boot.total_s));

    let results = json!({
        "kernel": {
            "package": kernel.package,
            "package_version": kernel.package_version,
            "release": kernel.release,
            "choice": kernel.choice,
        },
        "time_scale": opts.time_scale,
        "test_args": opts.test_args,
        "timings_s": timings.to_json(),
        "host": host,
        "guest": guest,
    });
    let results_path = out_dir.join("results.json");
    fs::write(&results_path, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("writing {}", results_path.display()))?;

    print_summary(&results, &timings);
    println!("vm-test: results in {}", results_path.display());
    if opts.bench_rounds.is_some() {
        crate::vmbench::report(root, &guest_dir)?;
    }
    let problems = problems(&results["guest"]);
    if !problems.is_empty() {
        bail!(
            "vm-test failed in the {} guest:\n  {}\n(logs: {}, {})",
            kernel.release,
            problems.join("\n  "),
            guest_dir.display(),
            out_dir.join("console.log").display()
        );
    }
    Ok(())
}

/// Boots the guest kernel (as `run` does) with `body` as the script after the common header (a
/// tmpfs /tmp, the host's PATH, `$out` the shared directory), for `limit_min` minutes at most;
/// returns the shared directory (target/<name>/guest) with what the script wrote there.
/// `cargo xtask bench --vm` runs its in-guest half this way.
pub fn boot_with_script(
    root: &Path,
    name: &str,
    body: &str,
    cpus: u32,
    memory: &str,
    limit_min: u64,
) -> anyhow::Result<PathBuf> {
    if crate::effective_uid() != 0 {
        bail!("{name}: run it as root (it installs Debian packages and boots the guest)");
    }
    let cache = cache_dir()?;
    let mut timings = Timings::default();
    let vng = ensure_vm_tools(&cache, &mut timings)?;
    let kernel = ensure_kernel(&cache.join("kernels"), None)?;
    println!(
        "{name}: guest kernel {} {} ({})",
        kernel.package, kernel.package_version, kernel.choice
    );
    let out_dir = root.join("target").join(name);
    let guest_dir = out_dir.join("guest");
    if guest_dir.exists() {
        fs::remove_dir_all(&guest_dir).with_context(|| format!("clearing {}", guest_dir.display()))?;
    }
    fs::create_dir_all(&guest_dir).with_context(|| format!("creating {}", guest_dir.display()))?;
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    let script = guest_dir.join("guest.sh");
    fs::write(
        &script,
        format!(
            r#"#!/bin/sh
# Written by `cargo xtask {name}`; the guest kernel runs it as its only command.
out={out}
say() {{ echo "{GUEST_LINE}{name}: $*"; }}
echo "{GUEST_LINE}{GUEST_UP}: $(uname -r)"
uname -r > "$out/uname-r"
export PATH={path}
mount -t tmpfs -o mode=1777 vm-test-tmp /tmp || say "could not mount a tmpfs on /tmp"
export TMPDIR=/tmp
{{ {body} ; echo $? > "$out/exit"; }} 2>&1 | sed -u 's/^/{GUEST_LINE}/'
say done
"#,
            out = sh_quote(path_str(&guest_dir)?),
            path = sh_quote(&path),
        ),
    )
    .with_context(|| format!("writing {}", script.display()))?;
    let opts = Opts {
        suites: vec![name.to_string()],
        kernel: None,
        time_scale: 1.0,
        cpus,
        memory: memory.to_string(),
        suite_timeout_min: limit_min,
        test_args: Vec::new(),
        bench_rounds: None,
    };
    boot_guest(
        &vng,
        &kernel,
        &guest_dir,
        &script,
        &out_dir.join("console.log"),
        &opts,
    )?;
    Ok(guest_dir)
}

/// Where downloads are kept between runs: `LLMWATCH_CACHE_DIR`, else the XDG cache directory.
fn cache_dir() -> anyhow::Result<PathBuf> {
    let base = if let Some(dir) = std::env::var_os("LLMWATCH_CACHE_DIR") {
        PathBuf::from(dir)
    } else if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        PathBuf::from(dir).join("llmwatch")
    } else if let Some(home) = std::env::var_os("HOME") {
        PathBuf::from(home).join(".cache/llmwatch")
    } else {
        bail!("vm-test: no cache directory: set LLMWATCH_CACHE_DIR (or HOME)");
    };
    let dir = base.join("vm-test");
    fs::create_dir_all(&dir).with_context(|| format!("creating the cache directory {}", dir.display()))?;
    Ok(dir)
}

/// Installs what booting the guest needs; returns the directory holding `vng`.
fn ensure_vm_tools(cache: &Path, timings: &mut Timings) -> anyhow::Result<PathBuf> {
    let installed = |package: &str| {
        output(Command::new("dpkg-query").args(["-W", "-f", "${db:Status-Status}", package]))
            .is_some_and(|status| status.trim() == "installed")
    };
    let mut missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    // Debian's own python3 leaves venv support in a package of its own.
    let has_venv = Command::new("python3")
        .args(["-c", "import ensurepip, venv"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_venv {
        missing.push("python3-venv");
    }
    if !missing.is_empty() {
        let started = Instant::now();
        println!(
            "vm-test: installing Debian's {} (qemu boots the guest kernel; kmod and busybox-static \
             build virtme-ng's initramfs; file reads the kernel version; python3-venv holds virtme-ng)",
            missing.join(", ")
        );
        let backports = qemu_from_backports()?;
        let apt = |args: &[&str]| {
            let mut cmd = Command::new("apt-get");
            if let Some(b) = &backports {
                cmd.arg("-o")
                    .arg(format!("Dir::Etc::SourceParts={}", b.source_parts.display()));
            }
            cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
            cmd
        };
        let updated = apt(&["update", "-qq"]).status().is_ok_and(|s| s.success());
        if !updated {
            eprintln!("vm-test: warning: apt-get update failed; using the package lists as they are");
        }
        let mut install = apt(&["install", "-y", "-qq", "--no-install-recommends", "--no-remove"]);
        if let Some(b) = &backports {
            println!(
                "vm-test: this host's qemu-utils is {} (from {}): qemu-system-x86 comes from there \
                 too (the suite's qemu-system-common would break it)",
                b.installed, b.suite
            );
            install.args(["-t", &b.suite]);
        }
        check(
            // Never trade a package the host has for these: fail and say so instead.
            install
                .args(&missing)
                .status()
                .context("running apt-get (as root)")?,
            &format!("apt-get install {}", missing.join(" ")),
        )?;
        timings.add("apt-get install", started);
    }
    let venv = cache.join(format!("virtme-ng-{VIRTME_NG_VERSION}"));
    let bin = venv.join("bin");
    let version = output(Command::new(bin.join("vng")).arg("--version"));
    if !version
        .as_deref()
        .is_some_and(|v| v.trim().ends_with(VIRTME_NG_VERSION))
    {
        let started = Instant::now();
        println!(
            "vm-test: installing virtme-ng {VIRTME_NG_VERSION} from PyPI into {}",
            venv.display()
        );
        if venv.exists() {
            fs::remove_dir_all(&venv)
                .with_context(|| format!("removing the outdated or broken {}", venv.display()))?;
        }
        check(
            Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .context("running python3 -m venv")?,
            "python3 -m venv",
        )?;
        check(
            Command::new(bin.join("python"))
                .args(["-m", "pip", "install", "-q"])
                .arg(format!("virtme-ng=={VIRTME_NG_VERSION}"))
                .status()
                .context("running pip in the virtme-ng environment")?,
            &format!("pip install virtme-ng=={VIRTME_NG_VERSION}"),
        )?;
        timings.add("pip install virtme-ng", started);
    }
    Ok(bin)
}

/// Refreshes apt's package lists; a failure is reported, and the install or download that
/// follows says what is missing.
/// Where the host's qemu-utils came from a backports suite (Debian 12 images ship qemu-img
/// 10 from bookworm-backports), the suite's own qemu-system-x86 (7.2) depends on a
/// qemu-system-common that this qemu-utils declares it breaks: installing it would remove
/// qemu-utils. The backports suite then serves qemu-system-x86 too, through a source-parts
/// directory of our own (the host's sources plus that suite), so no host file changes.
struct Backports {
    suite: String,
    installed: String,
    source_parts: PathBuf,
}

fn qemu_from_backports() -> anyhow::Result<Option<Backports>> {
    let Some(installed) = output(Command::new("dpkg-query").args(["-W", "-f", "${Version}", "qemu-utils"]))
        .map(|v| v.trim().to_string())
        .filter(|v| v.contains("~bpo"))
    else {
        return Ok(None);
    };
    let os_release = fs::read_to_string("/etc/os-release").unwrap_or_default();
    let Some(codename) = os_release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_string())
        .filter(|c| !c.is_empty())
    else {
        bail!(
            "vm-test: qemu-utils {installed} is from backports, but /etc/os-release names no VERSION_CODENAME"
        );
    };
    let suite = format!("{codename}-backports");
    let source_parts = std::env::temp_dir().join("llmwatch-vm-test-apt-sources");
    let _ = fs::remove_dir_all(&source_parts);
    fs::create_dir_all(&source_parts).with_context(|| format!("creating {}", source_parts.display()))?;
    let mut has_backports = false;
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        for entry in dir.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if !(name.ends_with(".list") || name.ends_with(".sources")) {
                continue;
            }
            let text = fs::read_to_string(&path).unwrap_or_default();
            has_backports |= text.contains(&suite);
            fs::copy(&path, source_parts.join(&name))
                .with_context(|| format!("copying {}", path.display()))?;
        }
    }
    if !has_backports {
        fs::write(
            source_parts.join("llmwatch-vm-test-backports.sources"),
            format!(
                "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: {suite}\nComponents: main\n\
                 Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
            ),
        )?;
    }
    Ok(Some(Backports {
        suite,
        installed,
        source_parts,
    }))
}

fn apt_get_update() {
    let ok = Command::new("apt-get")
        .args(["update", "-qq"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("vm-test: warning: apt-get update failed; using the package lists as they are");
    }
}

/// An unpacked kernel package.
struct GuestKernel {
    package: String,
    package_version: String,
    /// The kernel release, `uname -r` in the guest (e.g. 6.1.0-57-amd64).
    release: String,
    vmlinuz: PathBuf,
    /// Why this kernel: pinned, asked for, or the newest when the pinned one is gone.
    choice: String,
    /// Fetched by this run (not from the cache).
    downloaded: bool,
}

fn kernel_package(release: &str) -> String {
    format!("linux-image-{release}-unsigned")
}

/// The pinned (or asked-for) kernel from the cache, else downloaded and unpacked into it.
fn ensure_kernel(kernels: &Path, asked: Option<&str>) -> anyhow::Result<GuestKernel> {
    let wanted = asked.unwrap_or(PINNED_KERNEL);
    let choice = if asked.is_some() { "--kernel" } else { "pinned" };
    if let Some(k) = cached_kernel(kernels, wanted, &format!("{choice}, cached")) {
        return Ok(k);
    }
    let mut available = apt_kernels();
    // An asked-for kernel of another series (a backports 6.12, say) is looked up by name.
    let by_name = || {
        output(Command::new("apt-cache").args(["show", "--no-all-versions", &kernel_package(wanted)]))
            .is_some_and(|s| s.contains("Package:"))
    };
    if asked.is_some() && !available.iter().any(|r| r == wanted) && by_name() {
        available.push(wanted.to_string());
    }
    if !available.iter().any(|r| r == wanted) {
        apt_get_update();
        available = apt_kernels();
        if asked.is_some() && by_name() {
            available.push(wanted.to_string());
        }
    }
    let (release, choice) = if available.iter().any(|r| r == wanted) {
        (wanted.to_string(), choice.to_string())
    } else if asked.is_some() {
        bail!(
            "vm-test: {} is not in apt's package lists (available: {})",
            kernel_package(wanted),
            if available.is_empty() {
                "none".to_string()
            } else {
                available.join(", ")
            }
        );
    } else {
        let Some(newest) = available.last() else {
            bail!(
                "vm-test: apt knows no linux-image-6.1.0-*-amd64-unsigned package (is this Debian 12 \
                 with bookworm and bookworm-security in its sources?)"
            );
        };
        (
            newest.clone(),
            format!("newest available: the pinned {PINNED_KERNEL} is no longer in the archive"),
        )
    };
    if let Some(k) = cached_kernel(kernels, &release, &format!("{choice}, cached")) {
        return Ok(k);
    }
    download_kernel(kernels, &release, &choice)
}

/// 6.1 kernel releases apt can download, oldest ABI first.
fn apt_kernels() -> Vec<String> {
    let Some(list) = output(Command::new("apt-cache").args([
        "search",
        "--names-only",
        r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$",
    ])) else {
        return Vec::new();
    };
    releases_in_apt_search(&list)
}

/// The kernel releases in `apt-cache search` output, ordered by ABI number (so -57 after -9).
fn releases_in_apt_search(list: &str) -> Vec<String> {
    let mut releases: Vec<(u32, String)> = list
        .lines()
        .filter_map(|line| {
            let package = line.split_whitespace().next()?;
            let release = package.strip_prefix("linux-image-")?.strip_suffix("-unsigned")?;
            let abi = release
                .strip_prefix("6.1.0-")?
                .strip_suffix("-amd64")?
                .parse()
                .ok()?;
            Some((abi, release.to_string()))
        })
        .collect();
    releases.sort();
    releases.into_iter().map(|(_, r)| r).collect()
}

/// Name of the file, inside an unpacked kernel, that says which package it came from; written
/// last, so a directory without it is an interrupted unpack.
const PACKAGE_NOTE: &str = "llmwatch-package";

fn cached_kernel(kernels: &Path, release: &str, choice: &str) -> Option<GuestKernel> {
    let dir = kernels.join(release);
    let note = fs::read_to_string(dir.join(PACKAGE_NOTE)).ok()?;
    let (package, version) = note.trim().split_once(' ')?;
    let vmlinuz = dir.join(format!("boot/vmlinuz-{release}"));
    let modules = dir.join(format!("lib/modules/{release}"));
    (vmlinuz.is_file() && modules.is_dir()).then(|| GuestKernel {
        package: package.to_string(),
        package_version: version.to_string(),
        release: release.to_string(),
        vmlinuz,
        choice: choice.to_string(),
        downloaded: false,
    })
}

/// `apt-get download`s the kernel package and unpacks it to `kernels/<release>`: the image in
/// boot/ and its modules in lib/modules/<release>, side by side, which is where virtme-ng looks
/// for the modules of an image it is given (it links them to /lib/modules/<release> in the
/// guest, so nothing on the host's /lib/modules changes).
fn download_kernel(kernels: &Path, release: &str, choice: &str) -> anyhow::Result<GuestKernel> {
    let package = kernel_package(release);
    let staging = kernels.join(format!(".download-{release}"));
    if staging.exists() {
        fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    println!("vm-test: downloading {package} with apt-get download (about 70 MB)");
    let download = || {
        Command::new("apt-get")
            // The download lands in root's cache directory, which apt's sandbox user cannot write.
            .args(["download", "-qq", "-o", "APT::Sandbox::User=root", &package])
            .current_dir(&staging)
            .status()
            .is_ok_and(|s| s.success())
    };
    // Stale package lists name versions the mirror no longer has; refresh once and retry.
    if !download() {
        apt_get_update();
        if !download() {
            bail!("vm-test: apt-get download {package} failed");
        }
    }
    let deb = fs::read_dir(&staging)
        .with_context(|| format!("reading {}", staging.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("apt-get download {package} left no .deb in {}", staging.display()))?;
    let version = output(Command::new("dpkg-deb").args(["-f"]).arg(&deb).arg("Version"))
        .map(|v| v.trim().to_string())
        .with_context(|| format!("reading the version of {}", deb.display()))?;
    let unpacked = staging.join("root");
    check(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&unpacked)
            .status()
            .context("running dpkg-deb")?,
        &format!("dpkg-deb -x {}", deb.display()),
    )?;
    if !unpacked.join(format!("boot/vmlinuz-{release}")).is_file()
        || !unpacked.join(format!("lib/modules/{release}")).is_dir()
    {
        bail!(
            "vm-test: {package} has no boot/vmlinuz-{release} and lib/modules/{release}; its layout changed"
        );
    }
    fs::write(unpacked.join(PACKAGE_NOTE), format!("{package} {version}\n"))?;
    let dir = kernels.join(release);
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing the incomplete {}", dir.display()))?;
    }
    fs::rename(&unpacked, &dir).with_context(|| format!("moving the kernel to {}", dir.display()))?;
    // The unpacked tree is the cache; the .deb would only double it.
    let _ = fs::remove_dir_all(&staging);
    let kernel = cached_kernel(kernels, release, choice)
        .with_context(|| format!("vm-test: the unpacked kernel in {} is incomplete", dir.display()))?;
    Ok(GuestKernel {
        downloaded: true,
        ..kernel
    })
}

/// Builds the suites' test executables on the host (`cargo test --no-run`); returns each
/// suite's executable, in the order asked.
fn test_executables(suites: &[String]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut cmd = cargo();
    // The package selection of `cargo xtask test`: features unify per selection, and `-p
    // llmwatch-e2e` alone builds other executables than the ones the host suite ran.
    cmd.args(["test", "--workspace", "--exclude", "llmwatch-ebpf", "--no-run"])
        .arg("--message-format=json-render-diagnostics");
    for suite in suites {
        cmd.args(["--test", suite]);
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    check(out.status, "cargo test --no-run (the guest's test executables)")?;
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let (Some(name), Some(exe)) = (msg["target"]["name"].as_str(), msg["executable"].as_str()) else {
            continue;
        };
        let is_test = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        if is_test && suites.iter().any(|s| s == name) {
            found.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    suites
        .iter()
        .map(|s| {
            found
                .iter()
                .find(|(name, _)| name == s)
                .cloned()
                .with_context(|| format!("vm-test: cargo built no test executable for suite {s}"))
        })
        .collect()
}

/// `s` quoted for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str().with_context(|| {
        format!(
            "vm-test: {} is not UTF-8; the guest script cannot name it",
            p.display()
        )
    })
}

/// The script the guest runs: environment as on the host, `llmwatch check --json`, then each
/// suite's executable, every result written to `guest_dir` (shared read-write) and its output
/// also shown on the console.
fn guest_script(
    root: &Path,
    guest_dir: &Path,
    agent: &Path,
    executables: &[(String, PathBuf)],
    opts: &Opts,
) -> anyhow::Result<String> {
    let out = sh_quote(path_str(guest_dir)?);
    // The guest starts with a minimal PATH; the host's finds the same tools the host suite uses.
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    let test_args: String = opts
        .test_args
        .iter()
        .map(|a| format!(" {}", sh_quote(a)))
        .collect();
    let mut s = format!(
        r#"#!/bin/sh
# Written by `cargo xtask vm-test`; the guest kernel runs it as its only command.
out={out}
say() {{ echo "{GUEST_LINE}vm-test: $*"; }}
echo "{GUEST_LINE}{GUEST_UP}: $(uname -r)"
uname -r > "$out/uname-r"
export PATH={path}
# virtme-ng's /tmp is an overlay of the host's, and the agent cannot attribute files on overlayfs
# (README, Limits): the scenarios' directories go on a tmpfs of their own, as on most hosts.
mount -t tmpfs -o mode=1777 vm-test-tmp /tmp || say "could not mount a tmpfs on /tmp"
export TMPDIR=/tmp
export LLMWATCH_BIN={agent}
export LLMWATCH_REQUIRE_ROOT=1
export LLMWATCH_TEST_TIME_SCALE={scale}
export RUST_BACKTRACE=1
"$LLMWATCH_BIN" check --json > "$out/check.json" 2> "$out/check.stderr"
echo $? > "$out/check.exit"
say "llmwatch check: exit $(cat "$out/check.exit")"
# The test executables run from the package directory, as under cargo.
cd {tests}
"#,
        path = sh_quote(&path),
        agent = sh_quote(path_str(agent)?),
        scale = opts.time_scale,
        tests = sh_quote(path_str(&root.join("tests"))?),
    );
    let limit_s = opts.suite_timeout_min * 60;
    for (suite, exe) in executables {
        s += &format!(
            r#"say "suite {suite}: starting"
date +%s.%N > "$out/{suite}.start"
{{ timeout -k 10 {limit_s} {exe} --test-threads={threads}{test_args} 2>&1; echo $? > "$out/{suite}.exit"; }} \
  | tee "$out/{suite}.log" | sed -u 's/^/{GUEST_LINE}/'
date +%s.%N > "$out/{suite}.end"
say "suite {suite}: exit $(cat "$out/{suite}.exit")"
"#,
            exe = sh_quote(path_str(exe)?),
            threads = opts.cpus.max(1),
        );
    }
    if let Some(rounds) = opts.bench_rounds {
        let xtask = std::env::current_exe().context("finding this xtask binary")?;
        s += &format!(
            r#"say "bench: starting"
{{ {xtask} bench-guest --agent {agent} --out "$out" --rounds {rounds} --file-mib {mib} 2>&1; echo $? > "$out/exit"; }} \
  | sed -u 's/^/{GUEST_LINE}/'
say "bench: exit $(cat "$out/exit")"
"#,
            xtask = sh_quote(path_str(&xtask)?),
            agent = sh_quote(path_str(&root.join("target/release/llmwatch"))?),
            mib = crate::vmbench::GUEST_FILE_MIB,
        );
    }
    s += "say done\n";
    Ok(s)
}

struct BootTimes {
    /// From starting vng to the guest script's first line, when the console showed it.
    boot_s: Option<f64>,
    total_s: f64,
}

/// Boots the guest with `script` as its command and waits for it to power off, showing the
/// guest's own lines live and keeping the whole console in `console_log`.
fn boot_guest(
    vng_dir: &Path,
    kernel: &GuestKernel,
    guest_dir: &Path,
    script: &Path,
    console_log: &Path,
    opts: &Opts,
) -> anyhow::Result<BootTimes> {
    let pidfile = guest_dir.join("qemu.pid");
    let path = format!(
        "{}:{}",
        vng_dir.display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
    );
    let mut cmd = Command::new(vng_dir.join("vng"));
    cmd.arg("--run")
        .arg(&kernel.vmlinuz)
        // Emulation: the host's /dev/kvm cannot be assumed to run a full guest kernel.
        .arg("--disable-kvm")
        // The root file system over 9p: virtiofs would need virtiofsd, which is not installed.
        .arg("--force-9p")
        // The console carries the guest's live output (see the module comment).
        .arg("--verbose")
        .args(["--cpus", &opts.cpus.to_string(), "--memory", &opts.memory])
        .arg("--rwdir")
        .arg(guest_dir)
        .arg("--exec")
        .arg(format!("/bin/sh {}", sh_quote(path_str(script)?)))
        // vng hands this to a shell, hence the quoting. The pid lets a timeout stop qemu.
        .arg(format!("--qemu-opts=-pidfile {}", sh_quote(path_str(&pidfile)?)))
        // virtme-run and qemu are found on PATH.
        .env("PATH", path)
        // Nothing to read: keeps qemu off the terminal, so Ctrl-C still stops it.
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    println!(
        "vm-test: booting {} under emulation ({} CPUs, {}); the boot takes about 20 s. Console: {}",
        kernel.release,
        opts.cpus,
        opts.memory,
        console_log.display()
    );
    let started = Instant::now();
    let mut child = cmd.spawn().context("starting vng (virtme-ng)")?;
    let (tx, rx) = mpsc::channel::<String>();
    for stream in [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            // The console is bytes, not always UTF-8; lines are read lossily.
            while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                buf.clear();
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut log =
        fs::File::create(console_log).with_context(|| format!("creating {}", console_log.display()))?;
    // Boot, then each suite up to its limit in the guest, plus a margin.
    let limit = Duration::from_secs(300 + (opts.suite_timeout_min * 60 + 60) * opts.suites.len() as u64);
    let deadline = started + limit;
    let mut boot_s = None;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                let _ = writeln!(log, "{line}");
                // Kernel messages can land in the middle of a guest line; the prefix finds it.
                if let Some((_, guest)) = line.split_once(GUEST_LINE) {
                    if boot_s.is_none() && guest.starts_with(GUEST_UP) {
                        boot_s = Some(started.elapsed().as_secs_f64());
                    }
                    println!("  {guest}");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                stop_qemu(&pidfile);
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "vm-test: the guest was still running after {} min; stopped it (console: {})",
                    limit.as_secs() / 60,
                    console_log.display()
                );
            }
        }
    }
    let status = child.wait().context("waiting for vng")?;
    let total_s = started.elapsed().as_secs_f64();
    // Without script I/O ports (no udev in the guest) vng reports 255 even when the script ran
    // to its end; the script's own files below are the verdict. A guest that wrote nothing is
    // a boot failure, shown with the end of its console.
    if !guest_dir.join("uname-r").exists() {
        let text = fs::read_to_string(console_log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        bail!(
            "vm-test: the guest never ran its script (vng: {status}); the console's last lines:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(BootTimes { boot_s, total_s })
}

/// Stops the qemu this run started, by the pid it wrote at start.
fn stop_qemu(pidfile: &Path) {
    let Some(pid) = fs::read_to_string(pidfile)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return;
    };
    if pid > 0 {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours; the pid is the
        // qemu this run started (qemu wrote it to our own -pidfile), and a positive pid never
        // addresses a process group.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// `llmwatch check --json` on this host, and its kernel release.
fn host_report(agent: &Path) -> Value {
    let check = Command::new(agent).args(["check", "--json"]).output();
    let (report, exit) = match &check {
        Ok(out) => (
            serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null),
            json!(out.status.code()),
        ),
        Err(e) => (
            json!({ "agent_error": format!("running {}: {e}", agent.display()) }),
            Value::Null,
        ),
    };
    json!({
        "uname_r": output(Command::new("uname").arg("-r")).map(|s| s.trim().to_string()),
        "check": report,
        "check_exit": exit,
    })
}

/// What the guest wrote: its kernel, its `llmwatch check`, and each suite's tests.
fn guest_report(guest_dir: &Path, suites: &[String], executables: &[(String, PathBuf)]) -> Value {
    let read = |name: &str| fs::read_to_string(guest_dir.join(name)).ok();
    let number = |name: &str| read(name).and_then(|s| s.trim().parse::<f64>().ok());
    let suites: Vec<Value> = suites
        .iter()
        .map(|suite| {
            let log = read(&format!("{suite}.log")).unwrap_or_default();
            let tests = parse_libtest(&log);
            let count = |result: &str| tests.iter().filter(|t| t["result"] == result).count();
            let duration = match (number(&format!("{suite}.start")), number(&format!("{suite}.end"))) {
                (Some(a), Some(b)) => json!(((b - a) * 10.0).round() / 10.0),
                _ => Value::Null,
            };
            let exit = read(&format!("{suite}.exit")).and_then(|s| s.trim().parse::<i32>().ok());
            json!({
                "name": suite,
                "executable": executables.iter().find(|(s, _)| s == suite).map(|(_, e)| e.display().to_string()),
                "exit": exit,
                "passed": count("ok"),
                "failed": count("FAILED"),
                "ignored": count("ignored"),
                "unfinished": count("unfinished"),
                "summary": log.lines().rev().find(|l| l.starts_with("test result: ")),
                "duration_s": duration,
                "tests": tests,
            })
        })
        .collect();
    json!({
        "uname_r": read("uname-r").map(|s| s.trim().to_string()),
        "check": read("check.json").and_then(|s| serde_json::from_str::<Value>(&s).ok()),
        "check_exit": read("check.exit").and_then(|s| s.trim().parse::<i32>().ok()),
        "check_stderr": read("check.stderr"),
        "suites": suites,
    })
}

/// Each test's result from libtest's output, a failure with the panic that failed it.
fn parse_libtest(log: &str) -> Vec<Value> {
    let mut tests: Vec<Value> = Vec::new();
    for line in log.lines() {
        let Some(rest) = line.strip_prefix("test ") else {
            continue;
        };
        let Some((name, result)) = rest.rsplit_once(" ... ") else {
            continue;
        };
        let result = result.trim();
        let result = if result.starts_with("ignored") {
            "ignored"
        } else {
            result
        };
        if matches!(result, "ok" | "FAILED" | "ignored") {
            tests.push(json!({ "name": name, "result": result, "reason": Value::Null }));
        }
    }
    // A suite stopped at its time limit: the tests libtest said were still running.
    for line in log.lines() {
        let Some(name) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.split_once(" has been running for over "))
            .map(|(name, _)| name)
        else {
            continue;
        };
        if !tests.iter().any(|t| t["name"] == name) {
            tests.push(json!({ "name": name, "result": "unfinished", "reason": "still running when the suite ended" }));
        }
    }
    for test in tests.iter_mut().filter(|t| t["result"] == "FAILED") {
        let name = test["name"].as_str().unwrap_or_default().to_string();
        test["reason"] = json!(failure_reason(log, &name));
    }
    tests
}

/// How much of a panic message a failure's reason keeps.
const REASON_CHARS: usize = 300;

/// The panic in `---- NAME stdout ----`: "file:line:col: message".
fn failure_reason(log: &str, name: &str) -> Option<String> {
    let header = format!("---- {name} stdout ----");
    let mut lines = log.lines().skip_while(|l| l.trim() != header).skip(1);
    let mut location = None;
    for line in lines.by_ref() {
        if line.starts_with("---- ") || line == "failures:" {
            return None;
        }
        // "thread 'NAME' (TID) panicked at FILE:LINE:COL:"
        if let Some((_, at)) = line.split_once(" panicked at ") {
            location = Some(at.trim_end_matches(':').to_string());
            break;
        }
    }
    // The message up to the backtrace, on one line and cut short: assertion messages carry
    // their `left:`/`right:` lines, which say the most, but can also dump whole event lists.
    let mut message: String = lines
        .take_while(|l| {
            !l.trim().is_empty() && !l.starts_with("stack backtrace:") && !l.starts_with("note: ")
        })
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    if let Some((cut, _)) = message.char_indices().nth(REASON_CHARS) {
        message.truncate(cut);
        message.push_str(" ...");
    }
    Some(match location {
        Some(at) => format!("{at}: {message}"),
        None => message.to_string(),
    })
}

/// Why the guest run fails, one line each; empty when it passed.
fn problems(guest: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if guest["check"].is_null() {
        out.push("llmwatch check --json printed no report in the guest".to_string());
    }
    for suite in guest["suites"].as_array().into_iter().flatten() {
        let name = suite["name"].as_str().unwrap_or("?");
        for test in suite["tests"].as_array().into_iter().flatten() {
            let verdict = match test["result"].as_str() {
                Some("FAILED") => "failed",
                Some("unfinished") => "did not finish",
                _ => continue,
            };
            out.push(format!(
                "{name}::{} {verdict}: {}",
                test["name"].as_str().unwrap_or("?"),
                test["reason"].as_str().unwrap_or("no panic message in the log")
            ));
        }
        match suite["exit"].as_i64() {
            Some(0) => {}
            // 124: timeout(1) stopped it.
            Some(124) | Some(137) => out.push(format!("{name}: stopped at its time limit")),
            Some(code) if suite["failed"] == 0 => out.push(format!("{name}: exited {code}")),
            Some(_) => {}
            None => out.push(format!("{name}: did not finish")),
        }
    }
    out
}

fn print_summary(results: &Value, timings: &Timings) {
    let host = &results["host"];
    let guest = &results["guest"];
    println!();
    println!(
        "vm-test timings: {}",
        timings
            .0
            .iter()
            .map(|(phase, s)| if s.is_nan() {
                format!("{phase} ?")
            } else {
                format!("{phase} {s:.1}s")
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    let host_name = format!("host {}", host["uname_r"].as_str().unwrap_or("?"));
    let guest_name = format!("guest {}", guest["uname_r"].as_str().unwrap_or("?"));
    println!("kernel by capability (llmwatch check):");
    println!("  {:<36} {:<28} {}", "", host_name, guest_name);
    let rows = |list: &str, key: &str, ok_key: &str| -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for side in [host, guest] {
            for item in side["check"][list].as_array().into_iter().flatten() {
                if let Some(n) = item[key].as_str().filter(|n| !names.iter().any(|m| m == n)) {
                    names.push(n.to_string());
                }
            }
        }
        let cell = |side: &Value, name: &str| -> String {
            let item = side["check"][list]
                .as_array()
                .and_then(|items| items.iter().find(|i| i[key] == name));
            match item {
                None => "-".into(),
                Some(i) if i[ok_key] == true => "ok".into(),
                Some(i) => format!("no ({})", short_error(i["error"].as_str().unwrap_or("refused"))),
            }
        };
        names
            .iter()
            .map(|n| format!("  {:<36} {:<28} {}", n, cell(host, n), cell(guest, n)))
            .collect()
    };
    println!(" program types");
    for row in rows("program_types", "program_type", "ok") {
        println!("{row}");
    }
    println!(" agent hooks");
    for row in rows("hooks", "hook", "attached") {
        println!("{row}");
    }
    let minimum = |side: &Value| match side["check"]["minimum_ok"].as_bool() {
        Some(true) => "ok",
        Some(false) => "MISSING",
        None => "?",
    };
    println!("  {:<36} {:<28} {}", "minimum", minimum(host), minimum(guest));
    // The syscall-level hooks the agent chooses (and so the path the suites below ran on).
    let hook_path = |side: &Value| side["check"]["hook_path"].as_str().unwrap_or("?").to_string();
    println!(
        "  {:<36} {:<28} {}",
        "hook path (agent's choice)",
        hook_path(host),
        hook_path(guest)
    );
    println!("tests in the {guest_name} (hook path {}):", hook_path(guest));
    for suite in guest["suites"].as_array().into_iter().flatten() {
        println!(
            "  {}: {} passed, {} failed, {} ignored, {} unfinished ({}, exit {})",
            suite["name"].as_str().unwrap_or("?"),
            suite["passed"],
            suite["failed"],
            suite["ignored"],
            suite["unfinished"],
            suite["duration_s"]
                .as_f64()
                .map_or("?".into(), |s| format!("{s:.0} s")),
            suite["exit"].as_i64().map_or("none".into(), |c| c.to_string()),
        );
        let mut tests: Vec<&Value> = suite["tests"].as_array().into_iter().flatten().collect();
        tests.sort_by_key(|t| t["name"].as_str().unwrap_or_default());
        for test in tests {
            let mark = match test["result"].as_str() {
                Some("ok") => "ok     ",
                Some("ignored") => "ignored",
                Some("unfinished") => "UNFINISHED",
                _ => "FAILED ",
            };
            let reason = test["reason"]
                .as_str()
                .map(|r| format!(" -- {r}"))
                .unwrap_or_default();
            println!("    {mark} {}{reason}", test["name"].as_str().unwrap_or("?"));
        }
    }
}

/// The errno name in one of `llmwatch check`'s errors ("load: EPERM: ..." gives "load: EPERM"),
/// short enough for a table cell; the whole error is in results.json.
fn short_error(error: &str) -> String {
    let mut kept = Vec::new();
    for part in error.split(": ") {
        kept.push(part);
        let is_errno =
            part.len() > 1 && part.starts_with('E') && part.chars().all(|c| c.is_ascii_uppercase());
        if is_errno || kept.len() == 2 {
            break;
        }
    }
    let short = kept.join(": ");
    match short.char_indices().nth(60) {
        Some((cut, _)) => format!("{} ...", &short[..cut]),
        None => short,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from a real guest run (Rust 1.95 libtest, RUST_BACKTRACE=1).
    const LOG: &str = "\
running 3 tests
[2026-12-01T22:31:00Z WARN  llmwatch::agent] hook raw_tracepoint/sock_send_length NOT attached
test check_reports_each_program_type ... ok
test every_read_path_reports_exact_bytes_returned ... FAILED
test slow_one ... ignored, needs a GPU
test hung_one has been running for over 60 seconds
test check_reports_each_program_type has been running for over 60 seconds

failures:

---- every_read_path_reports_exact_bytes_returned stdout ----

thread 'every_read_path_reports_exact_bytes_returned' (139) panicked at tests/kernel_hooks.rs:197:9:
assertion `left == right` failed: read: no close report: []
  left: None
 right: Some(String(\"close\"))
stack backtrace:
   0: __rustc::rust_begin_unwind

failures:
    every_read_path_reports_exact_bytes_returned

test result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 553.50s
";

    #[test]
    fn libtest_output_gives_each_result_and_the_panic_of_a_failure() {
        let tests = parse_libtest(LOG);
        let results: Vec<(&str, &str)> = tests
            .iter()
            .map(|t| {
                (
                    t["name"].as_str().unwrap_or(""),
                    t["result"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            results,
            [
                ("check_reports_each_program_type", "ok"),
                ("every_read_path_reports_exact_bytes_returned", "FAILED"),
                ("slow_one", "ignored"),
                ("hung_one", "unfinished"),
            ]
        );
        assert_eq!(
            tests[1]["reason"],
            "tests/kernel_hooks.rs:197:9: assertion `left == right` failed: read: no close report: [] \
             left: None right: Some(String(\"close\"))"
        );
        assert!(tests[0]["reason"].is_null());
    }

    #[test]
    fn a_long_panic_message_is_cut() {
        let long = format!(
            "---- t stdout ----\nthread 't' (1) panicked at a.rs:1:1:\n{}\n",
            "x".repeat(1000)
        );
        let reason = failure_reason(&long, "t").unwrap_or_default();
        assert!(
            reason.len() < REASON_CHARS + 20 && reason.ends_with(" ..."),
            "{reason}"
        );
    }

    #[test]
    fn check_errors_shorten_to_the_errno() {
        assert_eq!(
            short_error(
                "load: EPERM: the BPF_PROG_LOAD syscall returned Operation not permitted (os error 1)"
            ),
            "load: EPERM"
        );
        assert_eq!(
            short_error(
                "attach llmwatch_sock_send to sock_send_length: ENOENT: `bpf_raw_tracepoint_open` failed"
            ),
            "attach llmwatch_sock_send to sock_send_length: ENOENT"
        );
        assert_eq!(short_error("refused"), "refused");
    }

    #[test]
    fn apt_search_gives_releases_by_abi_number() {
        let list = "linux-image-6.1.0-57-amd64-unsigned - Linux 6.1 for 64-bit PCs\n\
                    linux-image-6.1.0-9-amd64-unsigned - Linux 6.1 for 64-bit PCs\n\
                    linux-image-6.1.0-47-amd64-unsigned - Linux 6.1 for 64-bit PCs\n";
        assert_eq!(
            releases_in_apt_search(list),
            ["6.1.0-9-amd64", "6.1.0-47-amd64", "6.1.0-57-amd64"]
        );
        assert_eq!(
            kernel_package("6.1.0-57-amd64"),
            "linux-image-6.1.0-57-amd64-unsigned"
        );
    }

    #[test]
    fn sh_quote_survives_quotes() {
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }
}
