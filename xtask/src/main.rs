//! Project tasks: `cargo xtask setup | build | run | test | vm-test | lint | bench | soak | fuzz`.
//!
//! Every task that builds first runs `setup`, so a fresh clone needs nothing installed by hand
//! beyond rustup and a C toolchain.
use std::{
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
};

mod bench;
mod fuzz;
mod vm;
mod vmbench;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

/// bpf-linker 0.10.0 links with rustc's own LLVM; newer releases need a system LLVM this
/// project does not assume.
const BPF_LINKER_VERSION: &str = "0.10.0";
const NIGHTLY: &str = "nightly";

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the kernel-program toolchain (nightly rust-src, bpf-linker) and check the host.
    Setup,
    /// Build the agent with its kernel programs embedded.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build (release) and run the agent; arguments after `--` go to `llmwatch`
    /// (default: `run`, watching the default model locations).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: unit tests, then the end-to-end scenarios against the real agent (root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The kernel-hook and alert scenarios inside Debian 12's 6.1 kernel (qemu, emulated), against
    /// the binaries built here; installs qemu, virtme-ng and the kernel package (cached) (root).
    VmTest {
        /// A test target of tests/ to run (repeatable; default: kernel_hooks and alerts).
        #[arg(long = "suite", value_name = "NAME")]
        suites: Vec<String>,
        /// Guest kernel release, e.g. 6.1.0-57-amd64 (default: the pinned one, or the newest
        /// 6.1 package when Debian no longer has it).
        #[arg(long, value_name = "RELEASE")]
        kernel: Option<String>,
        /// LLMWATCH_TEST_TIME_SCALE in the guest: emulation runs about ten times slower.
        #[arg(long, default_value_t = 10.0)]
        time_scale: f64,
        #[arg(long, default_value_t = 2)]
        cpus: u32,
        #[arg(long, default_value = "4G")]
        memory: String,
        /// Limit for each suite inside the guest, in minutes.
        #[arg(long, default_value_t = 30)]
        suite_timeout_min: u64,
        /// After the suites, run the in-VM bench (as `bench --vm`) in the same boot, this many
        /// rounds.
        #[arg(long, value_name = "ROUNDS")]
        bench: Option<usize>,
        /// Arguments for each test executable (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// rustfmt check and clippy with warnings denied.
    Lint,
    /// Measure the agent's cost side by side with no agent, the bare hooks and bpftrace (root).
    Bench {
        /// Rounds per setup; the best round counts.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Size of the page-cached weight file in MiB.
        #[arg(long, default_value_t = 512)]
        file_mib: u64,
        /// Shorter runs (a smoke test of the harness, not numbers to report).
        #[arg(long)]
        quick: bool,
        /// Instead: both hook paths side by side inside the 6.1 guest kernel (emulated; ratios
        /// only), where fentry loads. One VM at a time: wrap in `flock /work/vm.lock` if shared.
        #[arg(long)]
        vm: bool,
    },
    /// The agent under a steady event load; prints its RSS every 10 s (must stay flat).
    Soak {
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Events a second (watched-file open/read/close cycles, one event each).
        #[arg(long, default_value_t = 100_000.0)]
        rate: f64,
    },
    /// Run the cargo-fuzz targets (nightly) for a while each; fails naming any crashing input.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        secs: u64,
        /// Targets to run (default: all: config_parse, event_decode, replay_reader).
        targets: Vec<String>,
    },
    /// The in-guest half of `bench --vm` (runs inside the VM).
    #[command(hide = true)]
    BenchGuest {
        #[arg(long)]
        agent: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        rounds: usize,
        #[arg(long)]
        file_mib: u64,
        /// Only the no-agent and tracepoint setups (a harness smoke test where fentry is refused).
        #[arg(long)]
        tracepoint_only: bool,
    },
    #[command(hide = true)]
    BenchWorker {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        secs: f64,
        #[arg(long)]
        rate: Option<f64>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.task {
        Task::Setup => setup(),
        Task::Build { release } => {
            setup()?;
            build(release)
        }
        Task::Run { args } => {
            setup()?;
            build(true)?;
            run_agent(&root, args)
        }
        Task::Test { args } => {
            setup()?;
            test(&root, &args)
        }
        Task::VmTest {
            suites,
            kernel,
            time_scale,
            cpus,
            memory,
            suite_timeout_min,
            bench,
            args,
        } => {
            setup()?;
            let suites = if suites.is_empty() {
                vm::DEFAULT_SUITES.iter().map(|s| s.to_string()).collect()
            } else {
                suites
            };
            vm::run(
                &root,
                vm::Opts {
                    suites,
                    kernel,
                    time_scale,
                    cpus,
                    memory,
                    suite_timeout_min,
                    test_args: args,
                    bench_rounds: bench,
                },
            )
        }
        Task::Bench {
            rounds,
            file_mib,
            quick: _,
            vm: true,
        } => {
            setup()?;
            build(true)?;
            vmbench::run(
                &root,
                vmbench::Opts {
                    rounds,
                    file_mib: file_mib.min(vmbench::GUEST_FILE_MIB),
                    cpus: 2,
                    memory: "4G".into(),
                },
            )
        }
        Task::BenchGuest {
            agent,
            out,
            rounds,
            file_mib,
            tracepoint_only,
        } => vmbench::guest(&agent, &out, rounds, file_mib, tracepoint_only),
        Task::Bench {
            rounds,
            file_mib,
            quick,
            vm: false,
        } => {
            setup()?;
            build(true)?;
            bench::run(
                &root,
                bench::Opts {
                    rounds,
                    file_mib,
                    quick,
                },
            )?;
            let engine = Command::new(root.join("target/release/llmwatch"))
                .args(["bench-engine", "1000000"])
                .output()?;
            print!("{}", String::from_utf8_lossy(&engine.stdout));
            Ok(())
        }
        Task::Fuzz { secs, targets } => fuzz::run(&root, secs, &targets),
        Task::BenchWorker { dir, secs, rate } => {
            bench::worker(&dir, secs, rate);
            Ok(())
        }
        Task::Soak { minutes, rate } => {
            setup()?;
            build(true)?;
            bench::soak(&root, minutes, rate)
        }
        Task::Lint => {
            setup()?;
            check(
                cargo().args(["fmt", "--all", "--check"]).status()?,
                "cargo fmt --check",
            )?;
            check(
                cargo()
                    .args([
                        "clippy",
                        "--workspace",
                        "--exclude",
                        "llmwatch-ebpf",
                        "--all-targets",
                    ])
                    .args(["--", "-D", "warnings"])
                    .status()?,
                "cargo clippy",
            )?;
            // The kernel crate only builds for the BPF target, with nightly.
            check(
                Command::new("rustup")
                    .args(["run", NIGHTLY, "cargo", "clippy", "-p", "llmwatch-ebpf"])
                    .args([
                        "--target",
                        "bpfel-unknown-none",
                        "-Z",
                        "build-std=core",
                        "--",
                        "-D",
                        "warnings",
                    ])
                    .status()?,
                "cargo clippy (llmwatch-ebpf)",
            )
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn check(status: ExitStatus, what: &str) -> anyhow::Result<()> {
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn setup() -> anyhow::Result<()> {
    // 1. nightly with rust-src: the kernel crate is built with -Z build-std=core.
    let installed =
        output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", NIGHTLY]));
    match installed {
        None => {
            eprintln!("setup: installing the {NIGHTLY} toolchain with rust-src");
            check(
                Command::new("rustup")
                    .args([
                        "toolchain",
                        "install",
                        NIGHTLY,
                        "--profile",
                        "minimal",
                        "--component",
                        "rust-src",
                    ])
                    .status()
                    .context("running rustup (is it installed?)")?,
                "rustup toolchain install nightly",
            )?;
        }
        Some(list) if !list.lines().any(|l| l.starts_with("rust-src")) => {
            eprintln!("setup: adding rust-src to the {NIGHTLY} toolchain");
            check(
                Command::new("rustup")
                    .args(["component", "add", "rust-src", "--toolchain", NIGHTLY])
                    .status()?,
                "rustup component add rust-src",
            )?;
        }
        Some(_) => {}
    }
    // 2. bpf-linker at the pinned version.
    let version = output(Command::new("bpf-linker").arg("--version"));
    if !version.as_deref().is_some_and(|v| v.contains(BPF_LINKER_VERSION)) {
        eprintln!(
            "setup: installing bpf-linker {BPF_LINKER_VERSION} (found: {}); this takes a minute",
            version.as_deref().map(str::trim).unwrap_or("none")
        );
        check(
            cargo()
                .args([
                    "install",
                    &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                    "--locked",
                    "--force",
                ])
                .status()?,
            "cargo install bpf-linker",
        )?;
    }
    // 3. The host: what running the agent needs. Reported, not fatal: building works anyway.
    for problem in host_problems() {
        eprintln!("setup: warning: {problem}");
    }
    Ok(())
}

/// What this host lacks for running the agent, one clear line each.
fn host_problems() -> Vec<String> {
    let mut out = Vec::new();
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        out.push("no kernel BTF at /sys/kernel/btf/vmlinux: the agent needs a kernel built with CONFIG_DEBUG_INFO_BTF=y".into());
    }
    if !Path::new("/sys/kernel/tracing/events").exists() && !Path::new("/sys/kernel/tracing").is_dir() {
        out.push("tracefs is neither mounted nor mountable at /sys/kernel/tracing (the agent mounts it when it can)".into());
    }
    let caps = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:").map(|v| v.trim().to_string()))
        })
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .unwrap_or(0);
    const CAP_SYS_ADMIN: u64 = 21;
    const CAP_PERFMON: u64 = 38;
    const CAP_BPF: u64 = 39;
    let has = |c: u64| caps & (1 << c) != 0;
    if !(has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))) {
        out.push("not running as root (or with CAP_BPF + CAP_PERFMON): the agent and its end-to-end tests cannot load kernel programs".into());
    }
    out
}

fn build(release: bool) -> anyhow::Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "--package", "llmwatch"]);
    if release {
        cmd.arg("--release");
    }
    check(cmd.status()?, "cargo build")
}

fn run_agent(root: &Path, args: Vec<String>) -> anyhow::Result<()> {
    let bin = root.join("target/release/llmwatch");
    let args = if args.is_empty() {
        vec!["run".to_string()]
    } else {
        args
    };
    // Loading kernel programs needs root (or CAP_BPF+CAP_PERFMON); go through sudo when we
    // are not, so the README's one command works from a developer account too.
    let mut cmd = if effective_uid() != 0 && Path::new("/usr/bin/sudo").exists() {
        let mut c = Command::new("sudo");
        c.arg("--preserve-env=RUST_LOG").arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    eprintln!("xtask: {} {}", bin.display(), args.join(" "));
    let status = cmd
        .args(&args)
        .status()
        .with_context(|| format!("starting {}", bin.display()))?;
    check(status, "llmwatch")
}

/// Tools the tests use for real (no mocks): Debian's prometheus (promtool + server) and
/// prometheus-alertmanager, netcat and fio, and PyPI's kubernetes-validate. Installed when
/// missing, then required, so a test never skips silently.
fn ensure_test_tools() -> anyhow::Result<()> {
    let have = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let deb = |package: &str| {
        Command::new("dpkg-query")
            .args(["-W", "-f", "${Status}", package])
            .output()
            .is_ok_and(|o| {
                o.status.success() && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
            })
    };
    // (package, what the tests use it for, whether it is installed). The end-to-end tests drive
    // real tools: OpenBSD netcat (`nc -N`, the sender in the exfiltration scenarios), fio (its
    // io_uring engine reads a model), a real Alertmanager that tests/alertmanager.rs posts
    // incidents to and reads back, and a real containerd that tests/pods.rs and
    // tests/alertmanager.rs run kubelet-labelled containers in (a busybox-static root: no image,
    // no registry); openssl makes the simulated kubelet's certificates in tests/pods.rs.
    let tools = [
        (
            "prometheus",
            "promtool and the server, for the metrics tests",
            have("promtool", "--version") && have("prometheus", "--version"),
        ),
        (
            "prometheus-alertmanager",
            "the receiver of the alertmanager webhook preset",
            have("prometheus-alertmanager", "--version"),
        ),
        (
            "netcat-openbsd",
            "the sender in the exfiltration scenarios",
            have("nc", "-h"),
        ),
        ("fio", "io_uring reads of a model", have("fio", "-h")),
        (
            "containerd",
            "the runtime that names pods (tests/pods.rs, tests/alertmanager.rs)",
            deb("containerd"),
        ),
        ("runc", "containerd's OCI runtime", deb("runc")),
        (
            "busybox-static",
            "the containers' root filesystem",
            deb("busybox-static"),
        ),
        (
            "openssl",
            "the test CA and certificate of the simulated kubelet (tests/pods.rs)",
            have("openssl", "version"),
        ),
    ];
    let missing: Vec<&str> = tools.iter().filter(|t| !t.2).map(|t| t.0).collect();
    if !missing.is_empty() {
        for (package, why, _) in tools.iter().filter(|t| !t.2) {
            eprintln!("test: installing Debian's {package} ({why})");
        }
        let _ = Command::new("apt-get").args(["update", "-qq"]).status();
        check(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .context("running apt-get (as root)")?,
            &format!("apt-get install {}", missing.join(" ")),
        )?;
    }
    if !have("kubernetes-validate", "--version") {
        eprintln!("test: installing kubernetes-validate from PyPI (offline Kubernetes schemas)");
        check(
            Command::new("python3")
                .args(["-m", "pip", "install", "-q", "kubernetes-validate==1.37.0"])
                .status()
                .context("running pip")?,
            "pip install kubernetes-validate",
        )?;
    }
    Ok(())
}

fn test(root: &Path, args: &[String]) -> anyhow::Result<()> {
    ensure_test_tools()?;
    // The end-to-end scenarios run the real binary, so build it first and tell them where it is.
    build(false)?;
    let bin = root.join("target/debug/llmwatch");
    let mut child = cargo()
        .args([
            "test",
            "--workspace",
            "--exclude",
            "llmwatch-ebpf",
            "--no-fail-fast",
        ])
        .args(args)
        .env("LLMWATCH_BIN", &bin)
        .env("LLMWATCH_REQUIRE_PROMTOOL", "1")
        .env("LLMWATCH_REQUIRE_DEPLOY_TOOLS", "1")
        .env("LLMWATCH_REQUIRE_ROOT", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    // Pass the output through and add one closing line for the whole run: cargo prints a
    // result per test binary, and the last one is often a crate with no tests.
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    let stdout = child.stdout.take().expect("piped");
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .trim_start_matches("ok. ")
                            .trim_start_matches("FAILED. ")
                            .strip_suffix(word)
                    })
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
            ignored += count(" ignored");
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    check(status, "cargo test")
}

/// Effective uid from /proc/self/status ("Uid: real effective saved fs").
fn effective_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Uid:")
                    .and_then(|v| v.split_whitespace().nth(1)?.parse().ok())
            })
        })
        .unwrap_or(u32::MAX)
}
