//! `cargo xtask bench --vm`: both hook paths measured side by side inside Debian 12's 6.1
//! kernel, where fentry/fexit load (this host's kernel refuses them, so the fast path can only
//! be measured there).
//!
//! The guest boots as for `vm-test` (qemu, emulated) and runs this same xtask binary's hidden
//! `bench-guest` task, which alternates the setups round by round: no agent; the floor of each
//! path (the same hooks with empty programs); llmwatch on the fast path (per-syscall fexit
//! programs); llmwatch forced onto the tracepoint path (`--syscall-hook tracepoint`). Each
//! setup that says which path it took is checked to have taken it.
//!
//! Emulation (TCG) runs every instruction about ten times slower, and not uniformly (a BPF
//! trampoline, a syscall entry and a page copy are slowed by different factors), so only
//! ratios between setups measured in the same guest are reported, never absolute times, and
//! even the ratios are an emulated kernel's, to be confirmed on hardware.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::bench::{MIB, Running, SLICES, lines_of, make_file, unrelated_syscalls, weight_reads};

pub struct Opts {
    pub rounds: usize,
    pub file_mib: u64,
    pub cpus: u32,
    pub memory: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Setup {
    None,
    FloorFentry,
    Fast,
    FloorTracepoint,
    Tracepoint,
}

const SETUPS: [Setup; 5] = [
    Setup::None,
    Setup::FloorFentry,
    Setup::Fast,
    Setup::FloorTracepoint,
    Setup::Tracepoint,
];

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::None => "no agent",
            Setup::FloorFentry => "floor, fast path (empty fexit programs)",
            Setup::Fast => "llmwatch, fast path (fentry)",
            Setup::FloorTracepoint => "floor, tracepoint path (empty programs)",
            Setup::Tracepoint => "llmwatch, tracepoint path",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Setup::None => "none",
            Setup::FloorFentry => "floor_fentry",
            Setup::Fast => "llmwatch_fentry",
            Setup::FloorTracepoint => "floor_tracepoint",
            Setup::Tracepoint => "llmwatch_tracepoint",
        }
    }
    /// The hook path the setup must report in its ready line.
    fn path(self) -> Option<&'static str> {
        match self {
            Setup::None => None,
            Setup::FloorFentry | Setup::Fast => Some("fentry"),
            Setup::FloorTracepoint | Setup::Tracepoint => Some("tracepoint"),
        }
    }
}

/// The host half: build, boot the guest with `bench-guest`, print and keep its table.
pub fn run(root: &Path, opts: Opts) -> anyhow::Result<()> {
    let agent = root.join("target/release/llmwatch");
    let xtask = std::env::current_exe().context("finding this xtask binary")?;
    // The guest sees this host's file system (read-only), so it runs these very binaries.
    let body = format!(
        "{} bench-guest --agent {} --out \"$out\" --rounds {} --file-mib {}",
        sh_quote(&xtask),
        sh_quote(&agent),
        opts.rounds,
        opts.file_mib
    );
    let limit_min = 10 + opts.rounds as u64 * 5;
    let guest_dir = crate::vm::boot_with_script(root, "vm-bench", &body, opts.cpus, &opts.memory, limit_min)?;
    report(root, &guest_dir)
}

/// Size of the weight file in the guest: emulated reads are slow, a smaller file keeps a round
/// short.
pub const GUEST_FILE_MIB: u64 = 64;

/// Prints the table the guest wrote to `guest_dir/bench.json` and keeps it in
/// target/bench/vm.json.
pub fn report(root: &Path, guest_dir: &Path) -> anyhow::Result<()> {
    let exit = std::fs::read_to_string(guest_dir.join("exit")).unwrap_or_default();
    let table: Value = std::fs::read_to_string(guest_dir.join("bench.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .with_context(|| {
            format!(
                "the guest wrote no bench.json (bench exit {:?}; its output is in the console log beside {})",
                exit.trim(),
                guest_dir.display()
            )
        })?;
    print_table(&table);
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("vm.json"), serde_json::to_string_pretty(&table)? + "\n")?;
    eprintln!("bench --vm: wrote {}", out.join("vm.json").display());
    Ok(())
}

fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// ns per getppid(): a syscall no llmwatch hook looks at.
fn getppid_ns(iters: u64) -> f64 {
    let per_slice = (iters / SLICES).max(1);
    let mut best = f64::MAX;
    for _ in 0..SLICES {
        let t = Instant::now();
        for _ in 0..per_slice {
            // SAFETY: getppid takes nothing and cannot fail.
            std::hint::black_box(unsafe { libc::getppid() });
        }
        best = best.min(t.elapsed().as_nanos() as f64 / per_slice as f64);
    }
    best
}

#[derive(Clone, Copy, Default, Debug)]
struct Sample {
    getppid_ns: f64,
    devzero_read_ns: f64,
    gbps_4k: f64,
    gbps_1m: f64,
}

impl Sample {
    fn best(self, o: Sample) -> Sample {
        Sample {
            getppid_ns: self.getppid_ns.min(o.getppid_ns),
            devzero_read_ns: self.devzero_read_ns.min(o.devzero_read_ns),
            gbps_4k: self.gbps_4k.max(o.gbps_4k),
            gbps_1m: self.gbps_1m.max(o.gbps_1m),
        }
    }
}

fn start(setup: Setup, agent: &Path, work: &Path) -> anyhow::Result<Running> {
    let mut cmd = Command::new(agent);
    match setup {
        Setup::None => {
            return Ok(Running {
                child: None,
                stderr: None,
                stdout: None,
            });
        }
        Setup::FloorFentry | Setup::FloorTracepoint => {
            cmd.args(["bench-floor", "--hook-path", setup.path().unwrap_or_default()]);
        }
        Setup::Fast | Setup::Tracepoint => {
            cmd.arg("run")
                .arg("--model-dir")
                .arg(work.join("models"))
                // The guest's root file system is the host's, read-only.
                .arg("--state-dir")
                .arg(work.join("state"))
                .args(["--metrics-addr", "off"]);
            if setup == Setup::Tracepoint {
                cmd.args(["--syscall-hook", "tracepoint"]);
            }
        }
    }
    // `run` logs its agent_ready status (stderr); bench-floor prints its own on stdout.
    cmd.env("RUST_LOG", "warn,llmwatch::agent=info");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", setup.name()))?;
    let stdout = lines_of(child.stdout.take().unwrap());
    let stderr = lines_of(child.stderr.take().unwrap());
    let mut running = Running {
        child: Some(child),
        stderr: Some(stderr),
        stdout: Some(stdout),
    };
    // Under emulation loading and verifying some 50 programs takes a while.
    let deadline = Instant::now() + Duration::from_secs(300);
    let (stdout, stderr) = (running.stdout.as_ref().unwrap(), running.stderr.as_ref().unwrap());
    let mut closed = 0;
    let mut seen = Vec::new();
    loop {
        if Instant::now() > deadline || closed == 2 {
            running.stop();
            bail!(
                "{} {}: {}",
                setup.name(),
                if closed == 2 {
                    "exited before it was ready"
                } else {
                    "not ready in 300 s"
                },
                seen.join("\n")
            );
        }
        let mut line = None;
        for rx in [stdout, stderr] {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => line = Some(l),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => closed += 1,
            }
        }
        let Some(l) = line else { continue };
        // The JSON status (the log prefix before it, for `run`).
        let at = l.find('{').filter(|_| l.contains("\"kind\":\"agent_ready\""));
        let Some(at) = at else {
            seen.push(l);
            continue;
        };
        let v: Value = serde_json::from_str(&l[at..]).unwrap_or(Value::Null);
        let path = v["hook_path"].as_str().unwrap_or("?");
        if Some(path) != setup.path() {
            running.stop();
            bail!(
                "{} came up on hook path {path}, not {:?}: {l}",
                setup.name(),
                setup.path()
            );
        }
        return Ok(running);
    }
}

/// The guest half (hidden task `bench-guest`): every setup, rounds alternating in order, the
/// best of the rounds per setup and workload; writes `<out>/bench.json`.
///
/// `tracepoint_only` leaves out the fast-path setups: a smoke test of the harness on a kernel
/// that refuses fentry (its table then has no fast-path ratios).
pub fn guest(
    agent: &Path,
    out: &Path,
    rounds: usize,
    file_mib: u64,
    tracepoint_only: bool,
) -> anyhow::Result<()> {
    let work = PathBuf::from("/tmp/llmwatch-vm-bench");
    let models = work.join("models");
    std::fs::create_dir_all(&models)?;
    let big = models.join("model.safetensors");
    eprintln!(
        "preparing a {file_mib} MiB weight file under {}",
        models.display()
    );
    make_file(&big, file_mib * MIB)?;
    let _ = weight_reads(&big, MIB as usize);
    let iters = 200_000;
    let mut best: Vec<Option<Sample>> = vec![None; SETUPS.len()];
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..SETUPS.len())
            .filter(|&i| !(tracepoint_only && SETUPS[i].path() == Some("fentry")))
            .collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let setup = SETUPS[i];
            eprintln!("round {}/{rounds}: {}", round + 1, setup.name());
            let mut running = start(setup, agent, &work)?;
            // Let the agent's start-up work (scan, /proc seeding) finish first.
            std::thread::sleep(Duration::from_secs(2));
            let s = Sample {
                getppid_ns: getppid_ns(iters),
                devzero_read_ns: unrelated_syscalls(iters),
                gbps_4k: weight_reads(&big, 4096),
                gbps_1m: weight_reads(&big, MIB as usize),
            };
            running.stop();
            best[i] = Some(best[i].map_or(s, |b| b.best(s)));
        }
    }
    let get = |s: Setup| {
        best[SETUPS.iter().position(|x| *x == s).unwrap()].unwrap_or(Sample {
            getppid_ns: f64::NAN,
            devzero_read_ns: f64::NAN,
            gbps_4k: f64::NAN,
            gbps_1m: f64::NAN,
        })
    };
    let none = get(Setup::None);
    let (ff, fast, ft, tp) = (
        get(Setup::FloorFentry),
        get(Setup::Fast),
        get(Setup::FloorTracepoint),
        get(Setup::Tracepoint),
    );
    // llmwatch's cost over its hooks' own: (ours - none) / (floor - none).
    let over = |ours: f64, floor: f64, base: f64| (ours - base) / (floor - base);
    let table = json!({
        "machine": crate::bench::machine(),
        "emulated": true,
        "note": "qemu TCG emulation: absolute times are distorted (about 10x, not uniformly), so only ratios between setups in the same guest are given; confirm on hardware",
        "rounds": rounds,
        "file_mib": file_mib,
        "setups": SETUPS.iter().map(|s| json!({"setup": s.name(), "key": s.key()})).collect::<Vec<_>>(),
        "ratios": {
            "fentry": {
                "unrelated_getppid_vs_none": fast.getppid_ns / none.getppid_ns,
                "devzero_read_vs_none": fast.devzero_read_ns / none.devzero_read_ns,
                "devzero_read_overhead_vs_floor": over(fast.devzero_read_ns, ff.devzero_read_ns, none.devzero_read_ns),
                "read_4k_vs_none": fast.gbps_4k / none.gbps_4k,
                "read_1m_vs_none": fast.gbps_1m / none.gbps_1m,
            },
            "tracepoint": {
                "unrelated_getppid_vs_none": tp.getppid_ns / none.getppid_ns,
                "devzero_read_vs_none": tp.devzero_read_ns / none.devzero_read_ns,
                "w1_overhead_vs_floor": over(tp.devzero_read_ns, ft.devzero_read_ns, none.devzero_read_ns),
                "read_4k_vs_none": tp.gbps_4k / none.gbps_4k,
                "read_1m_vs_none": tp.gbps_1m / none.gbps_1m,
            },
            "floors_vs_none": {
                "fentry_getppid": ff.getppid_ns / none.getppid_ns,
                "fentry_devzero_read": ff.devzero_read_ns / none.devzero_read_ns,
                "tracepoint_getppid": ft.getppid_ns / none.getppid_ns,
                "tracepoint_devzero_read": ft.devzero_read_ns / none.devzero_read_ns,
            },
        },
    });
    std::fs::write(
        out.join("bench.json"),
        serde_json::to_string_pretty(&table)? + "\n",
    )?;
    Ok(())
}

/// One target: the measured ratio, the bound and whether it holds.
fn target(v: &Value, bound: f64, at_most: bool) -> String {
    match v.as_f64() {
        Some(x) => {
            let ok = if at_most { x <= bound } else { x >= bound };
            format!(
                "{x:.3} (target {} {bound}: {})",
                if at_most { "<=" } else { ">=" },
                if ok { "met" } else { "MISSED" }
            )
        }
        None => "n/a".into(),
    }
}

fn print_table(t: &Value) {
    println!("in-VM run, {}", t["machine"].as_str().unwrap_or("?"));
    println!("NOTE: {}", t["note"].as_str().unwrap_or(""));
    println!(
        "setups (rounds alternating, best of {}): {}",
        t["rounds"],
        t["setups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["setup"].as_str())
            .collect::<Vec<_>>()
            .join("; ")
    );
    let r = &t["ratios"];
    let f = &r["fentry"];
    let p = &r["tracepoint"];
    let plain = |v: &Value| v.as_f64().map_or("n/a".into(), |x| format!("{x:.3}"));
    println!("fast path (per-syscall fexit), llmwatch vs no agent:");
    println!(
        "  unrelated syscall (getppid):  {}",
        target(&f["unrelated_getppid_vs_none"], 1.05, true)
    );
    println!(
        "  64 B read of /dev/zero:       {} (a read: its fexit runs; overhead vs floor {})",
        plain(&f["devzero_read_vs_none"]),
        plain(&f["devzero_read_overhead_vs_floor"])
    );
    println!(
        "  4 KiB weight reads:           {}",
        target(&f["read_4k_vs_none"], 0.85, false)
    );
    println!(
        "  1 MiB weight reads:           {}",
        target(&f["read_1m_vs_none"], 0.97, false)
    );
    println!("tracepoint path (sys_exit), llmwatch vs no agent:");
    println!(
        "  unrelated syscall (getppid):  {}",
        plain(&p["unrelated_getppid_vs_none"])
    );
    println!(
        "  W1 /dev/zero overhead vs floor: {}",
        target(&p["w1_overhead_vs_floor"], 1.25, true)
    );
    println!("  4 KiB weight reads:           {}", plain(&p["read_4k_vs_none"]));
    println!(
        "  1 MiB weight reads:           {}",
        target(&p["read_1m_vs_none"], 0.97, false)
    );
    let fl = &r["floors_vs_none"];
    println!(
        "floors vs no agent: fexit getppid {}, /dev/zero read {}; sys_exit getppid {}, /dev/zero read {}",
        plain(&fl["fentry_getppid"]),
        plain(&fl["fentry_devzero_read"]),
        plain(&fl["tracepoint_getppid"]),
        plain(&fl["tracepoint_devzero_read"])
    );
}
