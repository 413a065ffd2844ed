//! `cargo xtask bench`: the agent's cost, measured side by side in one run.
//!
//! Setups: no agent; the floor (the agent's hooks with empty programs); llmwatch with the default
//! rules; and, when bpftrace is installed, a do-it-yourself bpftrace script. Each round runs every
//! setup (order alternating between rounds), each setup runs every workload, and the best round
//! counts. Ratios, not absolute numbers, are what carry across machines. W6 (bench/redis.rs)
//! runs a real server, redis, beside each setup.
use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::json;

mod redis;

pub(crate) const MIB: u64 = 1 << 20;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Setup {
    None,
    Floor,
    Llmwatch,
    Bpftrace,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::None => "no agent",
            Setup::Floor => "floor (empty programs)",
            Setup::Llmwatch => "llmwatch",
            Setup::Bpftrace => "bpftrace peer",
        }
    }
}

pub struct Opts {
    pub rounds: usize,
    pub file_mib: u64,
    pub quick: bool,
}

/// A running setup; dropping it stops it.
pub(crate) struct Running {
    pub(crate) child: Option<Child>,
    pub(crate) stderr: Option<mpsc::Receiver<String>>,
    pub(crate) stdout: Option<mpsc::Receiver<String>>,
}

impl Running {
    pub(crate) fn stop(&mut self) -> Vec<String> {
        let mut log = Vec::new();
        if let Some(child) = &mut self.child {
            // SAFETY: kill takes no pointers; the pid is our child's, not yet waited for, so it
            // cannot have been reused.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
        if let Some(rx) = &self.stderr {
            while let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
                log.push(l);
            }
        }
        self.child = None;
        log
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn lines_of(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

fn start(setup: Setup, agent: &Path, models: &Path) -> anyhow::Result<Running> {
    let mut cmd = match setup {
        Setup::None => {
            return Ok(Running {
                child: None,
                stderr: None,
                stdout: None,
            });
        }
        Setup::Floor => {
            let mut c = Command::new(agent);
            c.arg("bench-floor");
            c
        }
        Setup::Llmwatch => {
            let mut c = Command::new(agent);
            c.args(["run", "--model-dir"]).arg(models).env("RUST_LOG", "info");
            c
        }
        Setup::Bpftrace => {
            let script = format!(
                r#"tracepoint:syscalls:sys_enter_openat /strncmp(str(args->filename), "{dir}", {n}) == 0/ {{ @open[tid] = 1; }}
tracepoint:syscalls:sys_exit_openat /@open[tid]/ {{ if (args->ret >= 0) {{ @watched[pid, args->ret] = 1; }} delete(@open[tid]); }}
tracepoint:syscalls:sys_enter_read {{ @rfd[tid] = args->fd; }}
tracepoint:syscalls:sys_exit_read {{ if (@watched[pid, @rfd[tid]] && args->ret > 0) {{ @bytes[pid] = sum(args->ret); }} delete(@rfd[tid]); }}
BEGIN {{ printf("ready\n"); }}"#,
                dir = models.display(),
                n = models.as_os_str().len()
            );
            let mut c = Command::new("bpftrace");
            c.arg("-e").arg(script);
            c
        }
    };
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", setup.name()))?;
    let stdout = lines_of(child.stdout.take().unwrap());
    let stderr = lines_of(child.stderr.take().unwrap());
    // Ready: the agent's ready status (stdout for the floor, log for run), bpftrace's BEGIN line.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if Instant::now() > deadline {
            bail!("{} did not get ready in 60 s", setup.name());
        }
        let ready = |l: &str| l.contains("agent_ready") || l.trim() == "ready";
        if let Ok(l) = stdout.recv_timeout(Duration::from_millis(50))
            && ready(&l)
        {
            break;
        }
        if let Ok(l) = stderr.recv_timeout(Duration::from_millis(50))
            && ready(&l)
        {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("{} exited while starting: {status}", setup.name());
        }
    }
    Ok(Running {
        child: Some(child),
        stderr: Some(stderr),
        stdout: Some(stdout),
    })
}

// ---- workloads (run in this process, so the syscalls are ours) ----

fn cpath(p: &Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

/// Workload 1: ns per 64-byte read of /dev/zero.
/// Timed in 20 slices, the fastest counting: an interrupt or the other core's work lands in
/// some slices, not in the hook's cost (the same for every setup).
pub(crate) const SLICES: u64 = 20;

pub(crate) fn unrelated_syscalls(iters: u64) -> f64 {
    // SAFETY: the path is a NUL-terminated C string literal.
    let fd = unsafe { libc::open(c"/dev/zero".as_ptr(), libc::O_RDONLY) };
    let mut buf = [0u8; 64];
    let per_slice = (iters / SLICES).max(1);
    let mut best = f64::MAX;
    for _ in 0..SLICES {
        let t = Instant::now();
        for _ in 0..per_slice {
            // SAFETY: buf is valid for writes of 64 bytes (its length is at least that) for the
            // call.
            unsafe { libc::read(fd, buf.as_mut_ptr().cast(), 64) };
        }
        best = best.min(t.elapsed().as_nanos() as f64 / per_slice as f64);
    }
    // SAFETY: fd was opened above and is not used after this.
    unsafe { libc::close(fd) };
    best
}

/// Workload 2: GB/s reading the page-cached file in `chunk` reads.
pub(crate) fn weight_reads(path: &Path, chunk: usize) -> f64 {
    let mut buf = vec![0u8; chunk];
    // SAFETY: the C string lives until the end of the statement, after the call.
    let fd = unsafe { libc::open(cpath(path).as_ptr(), libc::O_RDONLY) };
    // The file in SLICES consecutive pieces, the fastest counting (see SLICES).
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let slice = (len / SLICES).max(chunk as u64);
    let mut best = 0f64;
    let mut done = false;
    while !done {
        let t = Instant::now();
        let mut total = 0u64;
        while total < slice {
            // SAFETY: buf is valid for writes of chunk bytes: it was allocated with that
            // length.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), chunk) };
            if n <= 0 {
                done = true;
                break;
            }
            total += n as u64;
        }
        if total >= slice {
            best = best.max(total as f64 / t.elapsed().as_secs_f64() / 1e9);
        }
    }
    // SAFETY: fd was opened above and is not used after this.
    unsafe { libc::close(fd) };
    best
}

/// Workload 3: GB/s mapping the file and touching every page.
/// Best of five whole passes (map, touch every page, unmap): see SLICES.
fn mmap_load(path: &Path) -> f64 {
    (0..5).map(|_| mmap_pass(path)).fold(0.0, f64::max)
}

fn mmap_pass(path: &Path) -> f64 {
    let len = std::fs::metadata(path).unwrap().len() as usize;
    // SAFETY: the C string lives until the end of the statement, after the call.
    let fd = unsafe { libc::open(cpath(path).as_ptr(), libc::O_RDONLY) };
    let t = Instant::now();
    let mut sum = 0u64;
    // SAFETY: the mapping is checked before use, and only offsets below its length (the file's
    // size) are read; it is unmapped and fd closed after the last read.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            fd,
            0,
        );
        assert!(p != libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
        let p = p as *const u8;
        for off in (0..len).step_by(4096) {
            sum = sum.wrapping_add(*p.add(off) as u64);
        }
        libc::munmap(p as *mut _, len);
        libc::close(fd);
    }
    std::hint::black_box(sum);
    len as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// Workload 4 worker (a separate process): open, read 4 KiB, close small watched files in a
/// loop for `secs`, at most `rate` cycles a second when given; prints how many cycles it did.
pub fn worker(dir: &Path, secs: f64, rate: Option<f64>) {
    let files: Vec<std::ffi::CString> = (0..8)
        .map(|i| cpath(&dir.join(format!("shard-{i}.safetensors"))))
        .collect();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut n = 0u64;
    while Instant::now() < end {
        if let Some(rate) = rate {
            // Ahead of schedule: wait until the cycles done so far are due.
            let due = start + Duration::from_secs_f64(n as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        for f in &files {
            // SAFETY: the path is a NUL-terminated C string kept in files for the whole loop.
            let fd = unsafe { libc::open(f.as_ptr(), libc::O_RDONLY) };
            // SAFETY: buf is valid for writes of its length; fd was just opened and is not used
            // after close.
            unsafe {
                libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                libc::close(fd);
            }
            n += 1;
        }
    }
    println!("{n}");
}

fn pipeline(dir: &Path, procs: usize, secs: f64) -> anyhow::Result<u64> {
    let children = spawn_workers(dir, procs, secs, None)?;
    wait_workers(children)
}

/// `procs` worker processes, each at most `rate` cycles a second when given.
fn spawn_workers(dir: &Path, procs: usize, secs: f64, rate: Option<f64>) -> anyhow::Result<Vec<Child>> {
    let me = std::env::current_exe()?;
    Ok((0..procs)
        .map(|_| {
            let mut c = Command::new(&me);
            c.args(["bench-worker", "--dir"])
                .arg(dir)
                .args(["--secs", &secs.to_string()]);
            if let Some(r) = rate {
                c.args(["--rate", &r.to_string()]);
            }
            c.stdout(Stdio::piped()).spawn()
        })
        .collect::<Result<_, _>>()?)
}

fn wait_workers(children: Vec<Child>) -> anyhow::Result<u64> {
    let mut cycles = 0;
    for c in children {
        let out = c.wait_with_output()?;
        cycles += String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u64>()
            .unwrap_or(0);
    }
    Ok(cycles)
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// One `kB` field of /proc/PID/status (VmRSS:, RssAnon:, RssFile:).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(field)
                    .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
            })
        })
        .unwrap_or(0)
}

/// Resident kB of the process's BPF map mappings (the event ring buffer: the kernel maps its
/// data pages twice so that a record wrapping the end reads contiguously, and both count).
fn bpf_map_rss_kib(pid: u32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut in_map = false;
    let mut kib = 0;
    for l in smaps.lines() {
        if let Some(v) = l.strip_prefix("Rss:") {
            if in_map {
                kib += v
                    .trim()
                    .trim_end_matches(" kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
            }
        } else if l
            .split_ascii_whitespace()
            .next()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            in_map = l.ends_with("anon_inode:bpf-map");
        }
    }
    kib
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

pub(crate) fn make_file(path: &Path, bytes: u64) -> anyhow::Result<()> {
    if std::fs::metadata(path).map(|m| m.len() == bytes).unwrap_or(false) {
        return Ok(());
    }
    let header = br#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    use std::io::Write;
    f.write_all(&(header.len() as u64).to_le_bytes())?;
    f.write_all(header)?;
    let block: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8 + 1).collect();
    let mut left = bytes - 8 - header.len() as u64;
    while left > 0 {
        let n = left.min(MIB);
        f.write_all(&block[..n as usize])?;
        left -= n;
    }
    Ok(())
}

#[derive(Default, Clone, Debug)]
struct Sample {
    ns_per_syscall: f64,
    gbps_4k: f64,
    gbps_1m: f64,
    gbps_mmap: f64,
}

fn best(a: Option<Sample>, b: Sample) -> Sample {
    match a {
        None => b,
        Some(a) => Sample {
            ns_per_syscall: a.ns_per_syscall.min(b.ns_per_syscall),
            gbps_4k: a.gbps_4k.max(b.gbps_4k),
            gbps_1m: a.gbps_1m.max(b.gbps_1m),
            gbps_mmap: a.gbps_mmap.max(b.gbps_mmap),
        },
    }
}

pub fn run(root: &Path, opts: Opts) -> anyhow::Result<()> {
    // SAFETY: geteuid takes no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark attaches kernel programs: run it as root");
    }
    let agent = root.join("target/release/llmwatch");
    let work = PathBuf::from("/var/tmp/llmwatch-bench");
    let models = work.join("models");
    let pipe_dir = work.join("models/pipeline");
    std::fs::create_dir_all(&pipe_dir)?;
    let big = models.join("model.safetensors");
    eprintln!(
        "bench: preparing a {} MiB weight file and 8 small shards under {}",
        opts.file_mib,
        models.display()
    );
    make_file(&big, opts.file_mib * MIB)?;
    for i in 0..8 {
        make_file(&pipe_dir.join(format!("shard-{i}.safetensors")), 64 * 1024)?;
    }
    // Page-cache the file so the workloads measure the hooks, not the disk.
    let _ = weight_reads(&big, MIB as usize);

    let mut setups = vec![Setup::None, Setup::Floor, Setup::Llmwatch];
    let have_bpftrace = Command::new("bpftrace")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if have_bpftrace {
        setups.push(Setup::Bpftrace);
    } else {
        eprintln!("bench: bpftrace not installed (apt-get install bpftrace): the peer column is skipped");
    }
    let syscalls = if opts.quick { 200_000 } else { 2_000_000 };
    let mut results: Vec<(Setup, Option<Sample>)> = setups.iter().map(|s| (*s, None)).collect();
    for round in 0..opts.rounds {
        let mut order = setups.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for setup in order {
            eprintln!("bench: round {}/{}: {}", round + 1, opts.rounds, setup.name());
            let mut running = start(setup, &agent, &models)?;
            std::thread::sleep(Duration::from_millis(300));
            let s = Sample {
                ns_per_syscall: unrelated_syscalls(syscalls),
                gbps_4k: weight_reads(&big, 4096),
                gbps_1m: weight_reads(&big, MIB as usize),
                gbps_mmap: mmap_load(&big),
            };
            running.stop();
            let slot = results.iter_mut().find(|(x, _)| *x == setup).unwrap();
            slot.1 = Some(best(slot.1.take(), s));
        }
    }
    let get = |s: Setup| results.iter().find(|(x, _)| *x == s).and_then(|(_, v)| v.clone());
    let none = get(Setup::None).unwrap();
    let floor = get(Setup::Floor).unwrap();
    let ours = get(Setup::Llmwatch).unwrap();
    let peer = get(Setup::Bpftrace);

    // Workloads 4 and 5 run against llmwatch alone.
    eprintln!("bench: event pipeline, footprint and latency (llmwatch)");
    let footprint = footprint(&agent, &models, &pipe_dir, &opts)?;
    let redis_rounds = if opts.quick { 3 } else { opts.rounds.max(7) };
    let redis = redis::run(&agent, &models, &setups, redis_rounds, opts.quick)?;

    let over = |x: f64| x - none.ns_per_syscall;
    let table = json!({
        "machine": machine(),
        "rounds": opts.rounds,
        "file_mib": opts.file_mib,
        "setups": results.iter().map(|(s, v)| json!({
            "setup": s.name(),
            "ns_per_unrelated_syscall": v.as_ref().map(|v| v.ns_per_syscall),
            "gbps_read_4k": v.as_ref().map(|v| v.gbps_4k),
            "gbps_read_1m": v.as_ref().map(|v| v.gbps_1m),
            "gbps_mmap": v.as_ref().map(|v| v.gbps_mmap),
        })).collect::<Vec<_>>(),
        "ratios": {
            "w1_overhead_vs_floor": over(ours.ns_per_syscall) / over(floor.ns_per_syscall),
            "w1_overhead_vs_bpftrace": peer.as_ref().map(|p| over(ours.ns_per_syscall) / over(p.ns_per_syscall)),
            "w2_read_4k_vs_none": ours.gbps_4k / none.gbps_4k,
            "w2_read_1m_vs_none": ours.gbps_1m / none.gbps_1m,
            "w3_mmap_vs_none": ours.gbps_mmap / none.gbps_mmap,
        },
        "footprint": footprint,
        "redis": redis,
    });
    print_table(&table);
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&table)?)?;
    eprintln!("bench: wrote {}", out.join("results.json").display());
    Ok(())
}

fn footprint(agent: &Path, models: &Path, pipe_dir: &Path, opts: &Opts) -> anyhow::Result<serde_json::Value> {
    let mut running = start(Setup::Llmwatch, agent, models)?;
    let pid = running.child.as_ref().unwrap().id();
    let idle_secs = if opts.quick { 5 } else { 30 };
    let (rss0, cpu0, t0) = (rss_kib(pid), cpu_ticks(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(idle_secs));
    // SAFETY: sysconf takes no pointers.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let idle_cpu = (cpu_ticks(pid) - cpu0) as f64 / hz / t0.elapsed().as_secs_f64();
    let idle_rss = rss_kib(pid).max(rss0);
    let (idle_anon, idle_bpf_maps) = (status_kib(pid, "RssAnon:"), bpf_map_rss_kib(pid));

    // Workload 4: sustained opens/reads of watched files from several processes.
    let secs = if opts.quick { 3.0 } else { 10.0 };
    let t = Instant::now();
    let cycles = pipeline(pipe_dir, 4, secs)?;
    let elapsed = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let rss_after = rss_kib(pid);

    // Exfil-to-alert latency: cat model | sender to a loopback sink, time until the alert line.
    let latencies = exfil_latency(
        &mut running,
        &models.join("pipeline/shard-0.safetensors"),
        if opts.quick { 5 } else { 20 },
    )?;
    let (events, drops) = stop_and_count(&mut running);
    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    let p = |q: f64| {
        sorted
            .get(((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
    };
    Ok(json!({
        "idle_rss_mib": idle_rss as f64 / 1024.0,
        "idle_rss_anon_mib": idle_anon as f64 / 1024.0,
        "idle_rss_bpf_maps_mib": idle_bpf_maps as f64 / 1024.0,
        "idle_cpu_percent": idle_cpu * 100.0,
        "pipeline_open_read_close_cycles": cycles,
        "pipeline_events_per_sec": events as f64 / elapsed,
        "events_handled": events,
        "kernel_drops": drops,
        "rss_after_pipeline_mib": rss_after as f64 / 1024.0,
        "exfil_to_alert_p50_ms": p(0.5).map(|s| s * 1000.0),
        "exfil_to_alert_p99_ms": p(0.99).map(|s| s * 1000.0),
    }))
}

/// Stops the agent; (events it handled, kernel drops) from its agent_stopped line.
fn stop_and_count(running: &mut Running) -> (u64, u64) {
    let log = running.stop();
    let stopped = log
        .iter()
        .rev()
        .find(|l| l.contains("agent_stopped"))
        .cloned()
        .unwrap_or_default();
    (
        extract(&stopped, "\"events\":").unwrap_or(0),
        extract(&stopped, "\"kernel_drops\":").unwrap_or(0),
    )
}

fn extract(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .ok()
}

fn exfil_latency(running: &mut Running, file: &Path, trials: usize) -> anyhow::Result<Vec<f64>> {
    let stdout = running.stdout.as_ref().unwrap();
    let mut out = Vec::new();
    for _ in 0..trials {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let sink = std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut v = Vec::new();
                let _ = s.read_to_end(&mut v);
            }
        });
        let t = Instant::now();
        let status = Command::new("bash")
            .arg("-c")
            .arg(format!("cat {} > /dev/tcp/127.0.0.1/{port}", file.display()))
            .status()?;
        let _ = sink.join();
        if !status.success() {
            bail!("exfil workload failed: {status}");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match stdout.recv_timeout(left) {
                Ok(l) if l.contains("\"rule\":\"weight.exfiltration\"") => {
                    out.push(t.elapsed().as_secs_f64());
                    break;
                }
                Ok(_) => {}
                Err(_) => bail!("no weight.exfiltration alert within 10 s"),
            }
        }
    }
    Ok(out)
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, kernel {}", kernel.trim())
}

fn print_table(t: &serde_json::Value) {
    println!("machine: {}", t["machine"].as_str().unwrap_or(""));
    println!(
        "{:<24} {:>14} {:>12} {:>12} {:>12}",
        "setup", "ns/syscall", "read 4K GB/s", "read 1M GB/s", "mmap GB/s"
    );
    for s in t["setups"].as_array().unwrap() {
        let f = |k: &str| {
            s[k].as_f64()
                .map(|v| format!("{v:.2}"))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "{:<24} {:>14} {:>12} {:>12} {:>12}",
            s["setup"].as_str().unwrap(),
            f("ns_per_unrelated_syscall"),
            f("gbps_read_4k"),
            f("gbps_read_1m"),
            f("gbps_mmap")
        );
    }
    let r = &t["ratios"];
    let f = |v: &serde_json::Value| {
        v.as_f64()
            .map(|v| format!("{v:.2}"))
            .unwrap_or_else(|| "n/a".into())
    };
    println!(
        "W1 overhead vs floor:    {} (target <= 1.25)",
        f(&r["w1_overhead_vs_floor"])
    );
    println!(
        "W1 overhead vs bpftrace: {} (target <= 0.50)",
        f(&r["w1_overhead_vs_bpftrace"])
    );
    println!(
        "W2 4K reads vs none:     {} (target >= 0.85)",
        f(&r["w2_read_4k_vs_none"])
    );
    println!(
        "W2 1M reads vs none:     {} (target >= 0.97)",
        f(&r["w2_read_1m_vs_none"])
    );
    println!(
        "W3 mmap vs none:         {} (target >= 0.97)",
        f(&r["w3_mmap_vs_none"])
    );
    let fp = &t["footprint"];
    println!(
        "W4 events/s into engine: {} ({} open/read/close cycles, about one record each; kernel drops {})",
        f(&fp["pipeline_events_per_sec"]),
        fp["pipeline_open_read_close_cycles"],
        fp["kernel_drops"]
    );
    println!(
        "W5 idle RSS {} MiB (target <= 30; of it anonymous {} MiB, BPF ring-buffer mappings {} MiB), idle CPU {} %, RSS after pipeline {} MiB, exfil-to-alert p50 {} ms p99 {} ms",
        f(&fp["idle_rss_mib"]),
        f(&fp["idle_rss_anon_mib"]),
        f(&fp["idle_rss_bpf_maps_mib"]),
        f(&fp["idle_cpu_percent"]),
        f(&fp["rss_after_pipeline_mib"]),
        f(&fp["exfil_to_alert_p50_ms"]),
        f(&fp["exfil_to_alert_p99_ms"])
    );
    let redis = &t["redis"];
    let pct = |v: &serde_json::Value| {
        v.as_f64()
            .map(|v| format!("{:.1}%", v * 100.0))
            .unwrap_or_else(|| "n/a".into())
    };
    println!(
        "W6 redis-benchmark loss vs none (median of {}): floor {}, llmwatch {}, bpftrace {}; llmwatch/floor {} (target <= 1.10)",
        redis["rounds"],
        pct(&redis["loss_floor"]),
        pct(&redis["loss_llmwatch"]),
        pct(&redis["loss_bpftrace"]),
        f(&redis["llmwatch_loss_vs_floor_loss"])
    );
}

/// `cargo xtask soak`: the agent under a steady event load for a long time; its resident memory
/// sampled every 10 s must stay flat (issue: 100k events/s for 10 minutes).
pub fn soak(root: &Path, minutes: f64, rate: f64) -> anyhow::Result<()> {
    // SAFETY: geteuid takes no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the soak attaches kernel programs: run it as root");
    }
    let agent = root.join("target/release/llmwatch");
    let models = PathBuf::from("/var/tmp/llmwatch-bench/models");
    let pipe_dir = models.join("pipeline");
    std::fs::create_dir_all(&pipe_dir)?;
    for i in 0..8 {
        make_file(&pipe_dir.join(format!("shard-{i}.safetensors")), 64 * 1024)?;
    }
    let mut running = start(Setup::Llmwatch, &agent, &models)?;
    let pid = running.child.as_ref().unwrap().id();
    std::thread::sleep(Duration::from_secs(1));
    let secs = minutes * 60.0;
    let procs = 4;
    eprintln!(
        "soak: {rate:.0} open/read/close cycles a second (one event each) from {procs} processes for {minutes} min"
    );
    let t0 = Instant::now();
    let workers = spawn_workers(&pipe_dir, procs, secs, Some(rate / procs as f64))?;
    let mut curve = vec![(0.0, rss_kib(pid))];
    println!("{:>7}  {:>9}", "t (s)", "RSS (MiB)");
    println!("{:>7.0}  {:>9.1}", 0.0, curve[0].1 as f64 / 1024.0);
    while t0.elapsed().as_secs_f64() < secs {
        std::thread::sleep(Duration::from_secs(10).min(Duration::from_secs_f64(
            (secs - t0.elapsed().as_secs_f64()).max(0.1),
        )));
        let t = t0.elapsed().as_secs_f64();
        let rss = rss_kib(pid);
        println!("{t:>7.0}  {:>9.1}", rss as f64 / 1024.0);
        curve.push((t, rss));
    }
    let cycles = wait_workers(workers)?;
    let elapsed = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let (events, drops) = stop_and_count(&mut running);
    // Flat: after the first minute (maps and caches filled), RSS does not keep growing.
    let settled: Vec<u64> = curve
        .iter()
        .filter(|(t, _)| *t >= 60.0)
        .map(|(_, r)| *r)
        .collect();
    let (first, last, max) = (
        settled.first().copied().unwrap_or(0),
        settled.last().copied().unwrap_or(0),
        settled.iter().copied().max().unwrap_or(0),
    );
    let growth_mib = (last as f64 - first as f64) / 1024.0;
    let summary = json!({
        "machine": machine(),
        "minutes": minutes,
        "target_events_per_sec": rate,
        "cycles": cycles,
        "events_handled": events,
        "events_per_sec": events as f64 / elapsed,
        "kernel_drops": drops,
        "rss_mib_after_1min": first as f64 / 1024.0,
        "rss_mib_end": last as f64 / 1024.0,
        "rss_mib_max": max as f64 / 1024.0,
        "rss_growth_mib_after_1min": growth_mib,
        "rss_curve": curve.iter().map(|(t, r)| json!({"t_s": t.round(), "rss_mib": *r as f64 / 1024.0})).collect::<Vec<_>>(),
    });
    println!(
        "soak: {events} events in {elapsed:.0} s ({:.0}/s), kernel drops {drops}; RSS after 1 min {:.1} MiB, \
         at the end {:.1} MiB (growth {growth_mib:+.1} MiB), max {:.1} MiB",
        events as f64 / elapsed,
        first as f64 / 1024.0,
        last as f64 / 1024.0,
        max as f64 / 1024.0
    );
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("soak.json"), serde_json::to_string_pretty(&summary)?)?;
    eprintln!("soak: wrote {}", out.join("soak.json").display());
    Ok(())
}
