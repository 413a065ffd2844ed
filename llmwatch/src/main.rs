//! `llmwatch`: run the agent, record and replay what it sees, check what this host supports.
use std::{path::PathBuf, sync::Arc};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use llmwatch::{
    agent::{Agent, AlertsOnly, JsonLines, Output, Sink},
    clock::{Clock, ShiftedClock, SystemClock},
    config::{self, Config},
    metrics::{Health, Metrics},
    probes,
    text::{Colour, TextLines},
};

#[derive(Parser)]
#[command(
    name = "llmwatch",
    version,
    about = "Guards AI model weights and the hosts serving them (eBPF)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (the default when no command is given): alerts on stdout, one line each.
    Run {
        #[command(flatten)]
        opts: RunOpts,
        /// Also print every enriched event on stdout.
        #[arg(long)]
        events: bool,
        /// `text`: one line per alert a person reads, and a short start-up summary; `json`: one
        /// JSON object per line (what receivers and scripts read). Default: text when stdout
        /// is a terminal, json otherwise.
        #[arg(long, value_name = "text|json", value_enum)]
        output: Option<OutputFormat>,
    },
    /// Run the agent and print every enriched event (and alert) as one JSON line.
    Events {
        #[command(flatten)]
        opts: RunOpts,
    },
    /// Run the agent and also write the enriched event stream to FILE (JSON lines) for
    /// `replay`; alerts go to stdout.
    Record {
        file: PathBuf,
        #[command(flatten)]
        opts: RunOpts,
    },
    /// Run the rules over a recorded event stream and print the alerts (no kernel, no root).
    Replay {
        file: PathBuf,
        /// Configuration to judge with (default: built-in).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Configuration file tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Benchmark floor: attach empty programs to the agent's hooks and wait (cargo xtask bench).
    #[command(hide = true)]
    BenchFloor {
        /// Empty programs on the fast path's per-syscall fexit functions, or on `sys_exit`.
        #[arg(long, value_name = "fentry|tracepoint", default_value = "tracepoint", value_parser = ["fentry", "tracepoint"])]
        hook_path: String,
    },
    /// Engine throughput on synthetic events, one core (cargo xtask bench).
    #[command(hide = true)]
    BenchEngine { events: u64 },
    /// Report which kernel hooks this host allows; exits non-zero when the minimum is missing.
    Check {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        host: HostPaths,
    },
}

/// How `run` writes what it sees.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

impl OutputFormat {
    /// `--output`, else text for a person at a terminal and JSON for a pipe or file.
    fn resolve(chosen: Option<OutputFormat>) -> OutputFormat {
        use std::io::IsTerminal as _;
        chosen.unwrap_or(if std::io::stdout().is_terminal() {
            OutputFormat::Text
        } else {
            OutputFormat::Json
        })
    }
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a configuration file: every problem with its key path and line; non-zero exit if any.
    Validate { file: PathBuf },
}

#[derive(Args, Default)]
struct RunOpts {
    /// YAML configuration (docs/configuration.md); reloaded on SIGHUP and when the file changes.
    /// The options below override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory to search for weight files (repeatable). Replaces the configured/default ones.
    #[arg(long = "model-dir", value_name = "DIR")]
    model_dirs: Vec<PathBuf>,
    /// Local port of an inference server whose accepted connections are reported (repeatable).
    /// Replaces the defaults (8000, 8001, 8002, 8080, 11434, 30000).
    #[arg(long = "inference-port", value_name = "PORT")]
    inference_ports: Vec<u16>,
    /// Report bytes read through a descriptor every this many bytes (plus first read and close).
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    read_report_bytes: Option<u64>,
    /// Report bytes sent to one destination every this many bytes (plus first send and exit).
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    send_report_bytes: Option<u64>,
    /// Extra character-device major to treat as a GPU/accelerator (repeatable), on top of
    /// NVIDIA 195, DRM 226, accel 261 and the drivers /proc/devices lists.
    #[arg(long = "gpu-major", value_name = "MAJOR")]
    gpu_majors: Vec<u32>,
    /// Run as if the wall clock read this RFC 3339 instant at start-up (time still flows); for
    /// testing time-dependent rules such as business hours.
    #[arg(long, value_name = "TIME")]
    clock_start: Option<chrono::DateTime<chrono::Utc>>,
    /// Syscall hooks: `auto` uses per-syscall fexit programs where the kernel allows fentry
    /// (unrelated syscalls then run no program), else the `sys_exit` BTF tracepoint, else the
    /// raw tracepoint; `tracepoint` skips the fexit programs; `raw` uses the raw tracepoint.
    #[arg(long, value_name = "auto|tracepoint|raw", default_value = "auto", value_parser = ["auto", "tracepoint", "raw"])]
    syscall_hook: String,
    /// Where bytes sent are counted: `auto` uses the `sock_send_length` tracepoint where the
    /// kernel has it; `syscalls` counts at syscall exit and io_uring completion as on kernels
    /// without it (6.1).
    #[arg(long, value_name = "auto|syscalls", default_value = "auto", value_parser = ["auto", "syscalls"])]
    send_path: String,
    /// Pages touched through mappings: `auto` counts faults where the kernel has the filemap
    /// tracepoints and samples /proc/PID/smaps; `smaps` samples only, as on kernels without them.
    #[arg(long, value_name = "auto|smaps", default_value = "auto", value_parser = ["auto", "smaps"])]
    mmap_touch: String,
    /// Serve /metrics, /healthz and /readyz here (default 127.0.0.1:9477; `off` to disable).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<String>,
    /// The agent's own state (heartbeat): default /var/lib/llmwatch, or `state_dir` in the file.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    #[command(flatten)]
    host: HostPaths,
}

/// Where the host's kernel interfaces are, for hosts (and tests) where they are elsewhere.
#[derive(Args, Clone)]
struct HostPaths {
    /// The running kernel's BTF, e.g. a BTFHub file for a kernel built without
    /// CONFIG_DEBUG_INFO_BTF. Without usable BTF the agent runs degraded and says what it loses.
    #[arg(long, value_name = "FILE", default_value = "/sys/kernel/btf/vmlinux")]
    kernel_btf: PathBuf,
    /// Where tracefs is mounted, or is mounted by the agent when missing.
    #[arg(long, value_name = "DIR", default_value = "/sys/kernel/tracing")]
    tracefs: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths {
            kernel_btf: probes::btf::KernelBtf::SYSFS_PATH.into(),
            tracefs: probes::tracefs::TRACEFS.into(),
        }
    }
}

impl RunOpts {
    fn config(&self) -> anyhow::Result<Config> {
        let mut cfg = match &self.config {
            Some(path) => config::load(path)?,
            None => Config::default(),
        };
        for w in &cfg.warnings {
            log::warn!("configuration: {w}");
        }
        (self.overrides()?)(&mut cfg);
        Ok(cfg)
    }

    /// The command-line options as a function applied to every configuration, the one read at
    /// start and each reloaded one (a reload must not undo `--model-dir`).
    fn overrides(&self) -> anyhow::Result<llmwatch::agent::Overrides> {
        let metrics_addr = match &self.metrics_addr {
            None => None,
            Some(a) if a.eq_ignore_ascii_case("off") => Some(None),
            Some(a) => Some(Some(a.parse().with_context(|| {
                format!("--metrics-addr {a:?} is not an address like 127.0.0.1:9477")
            })?)),
        };
        let model_dirs: Vec<PathBuf> = self
            .model_dirs
            .iter()
            .map(|d| std::path::absolute(d).unwrap_or(d.clone()))
            .collect();
        let inference_ports = self.inference_ports.clone();
        let (read, send) = (self.read_report_bytes, self.send_report_bytes);
        let gpu_majors = self.gpu_majors.clone();
        let force_raw = self.syscall_hook == "raw";
        let force_tracepoint = self.syscall_hook != "auto";
        let syscall_sends = self.send_path == "syscalls";
        let smaps_touch = self.mmap_touch == "smaps";
        let host = self.host.clone();
        let state_dir = self
            .state_dir
            .as_ref()
            .map(|d| std::path::absolute(d).unwrap_or(d.clone()));
        Ok(Arc::new(move |cfg: &mut Config| {
            if let Some(d) = &state_dir {
                cfg.state_dir = d.clone();
            }
            cfg.kernel_btf = host.kernel_btf.clone();
            cfg.tracefs = host.tracefs.clone();
            if !model_dirs.is_empty() {
                cfg.model_dirs = model_dirs.clone();
            }
            if !inference_ports.is_empty() {
                cfg.inference_ports = inference_ports.clone();
            }
            if let Some(n) = read {
                cfg.read_report_bytes = n;
            }
            if let Some(n) = send {
                cfg.send_report_bytes = n;
            }
            cfg.extra_gpu_majors.extend(&gpu_majors);
            cfg.force_raw_syscall_hook = force_raw;
            cfg.force_tracepoint_hooks = force_tracepoint;
            cfg.force_syscall_sends = syscall_sends;
            cfg.force_smaps_touch = smaps_touch;
            if let Some(a) = metrics_addr {
                cfg.metrics_addr = a;
            }
        }))
    }

    fn clock(&self) -> Arc<dyn Clock> {
        match self.clock_start {
            Some(t) => Arc::new(ShiftedClock::starting_at(t)),
            None => Arc::new(SystemClock),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run {
        opts: RunOpts::default(),
        events: false,
        output: None,
    });
    // Text output says what the info lines would (hooks, watched files, where metrics are):
    // only warnings and errors go to the log then, unless RUST_LOG asks for more.
    let text = matches!(&command, Command::Run { output, .. } if OutputFormat::resolve(*output) == OutputFormat::Text);
    let default_log = if text { "warn" } else { "info" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_log)).init();
    match command {
        Command::Run { opts, events, output } => run(
            &opts,
            match (OutputFormat::resolve(output), events) {
                (OutputFormat::Text, events) => Mode::Text { events },
                (OutputFormat::Json, true) => Mode::Events,
                (OutputFormat::Json, false) => Mode::Alerts,
            },
        ),
        Command::Events { opts } => run(&opts, Mode::Events),
        Command::Record { file, opts } => run(&opts, Mode::Record(file)),
        Command::Replay { file, config } => replay(&file, config.as_deref()),
        Command::Config {
            command: ConfigCommand::Validate { file },
        } => validate(&file),
        Command::Check { json, host } => check(json, &host),
        Command::BenchFloor { hook_path } => bench_floor(if hook_path == "fentry" {
            probes::fast::HookPath::Fentry
        } else {
            probes::fast::HookPath::Tracepoint
        }),
        Command::BenchEngine { events } => bench_engine(events),
    }
}

/// Replays `n` synthetic enriched events (reads, sends, opens, execs of 1000 processes)
/// through the rules on this thread and prints events per second.
fn bench_engine(n: u64) -> anyhow::Result<()> {
    use llmwatch::{
        enrich::{Enriched, FileView, ProcessView},
        events::{Event, EventKind, FileKey, ReadReason, Task},
        rules::Engine,
        state::{
            files::{AssetClass, WeightFormat},
            process::Ancestor,
        },
    };
    let t0: chrono::DateTime<chrono::Utc> = "2026-11-23T10:00:00Z".parse()?;
    let weight = FileView {
        path: std::path::Path::new("/models/m.safetensors").into(),
        dev: 8,
        ino: 1,
        size: 1 << 40,
        format: WeightFormat::Safetensors,
        class: AssetClass::Weights,
    };
    let make = |i: u64| -> Enriched {
        let pid = 10_000 + (i % 1000) as u32;
        let kind = match i % 4 {
            0 => EventKind::FileRead {
                file: FileKey { dev: 8, ino: 1 },
                fd: 3,
                bytes: 4096,
                total: 4096,
                reason: ReadReason::Progress,
                syscall: "read".into(),
                instance: 0,
            },
            1 => EventKind::NetSend {
                dest: std::net::IpAddr::from([10, 0, (i % 7) as u8, 1]),
                port: 443,
                proto: "tcp".into(),
                bytes: 100,
                total: 100,
                reason: ReadReason::Progress,
            },
            2 => EventKind::FileOpen {
                file: FileKey { dev: 8, ino: 1 },
                fd: 3,
                flags: 0,
                size: 1 << 40,
                syscall: "openat".into(),
                origin: "opened".into(),
            },
            _ => EventKind::ProcExit { exit_code: 0 },
        };
        let has_weight = matches!(kind, EventKind::FileRead { .. } | EventKind::FileOpen { .. });
        Enriched {
            time: t0 + chrono::TimeDelta::microseconds(i as i64),
            event: Event {
                ts_ns: i,
                task: Task {
                    pid,
                    tid: pid,
                    uid: 1000,
                    gid: 1000,
                    comm: "worker".into(),
                    cgroup_id: 1,
                },
                kind,
            },
            process: std::sync::Arc::new(ProcessView {
                pid,
                ppid: 1,
                comm: "worker".into(),
                exe: Some("/usr/bin/worker".into()),
                argv: vec!["worker".into()],
                uid: 1000,
                user: None,
                container_id: None,
                pod_uid: None,
                kubernetes: None,
                runtime: None,
                cgroup: None,
                ancestry: vec![Ancestor {
                    pid: 900,
                    comm: "bash".into(),
                    exe: None,
                }],
            }),
            weight: has_weight.then(|| weight.clone()),
        }
    };
    let events: Vec<Enriched> = (0..n.min(1_000_000)).map(make).collect();
    let mut engine = Engine::new(Arc::new(Config::default()));
    let mut alerts = Vec::new();
    let start = std::time::Instant::now();
    let mut done = 0u64;
    while done < n {
        for ev in &events {
            engine.on_event(ev, &mut alerts);
            alerts.clear();
        }
        done += events.len() as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "engine alone (replay of synthetic events, one core): {:.0} events/s (target >= 1000000)",
        done as f64 / secs
    );
    Ok(())
}

fn bench_floor(path: probes::fast::HookPath) -> anyhow::Result<()> {
    let (_ebpf, hooks) = probes::attach_floor(path)?;
    println!(
        "{}",
        serde_json::json!({"kind": "agent_ready", "floor": true, "hook_path": path, "hooks": hooks})
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        anyhow::Ok(())
    })
}

enum Mode {
    /// Incidents as JSON lines.
    Alerts,
    /// Events and incidents as JSON lines.
    Events,
    /// Incidents (and events) as lines a person reads.
    Text {
        events: bool,
    },
    Record(PathBuf),
}

/// Events and status lines to the recording (what replay reads), incidents to stdout.
struct Recorder<F: std::io::Write, O: std::io::Write> {
    file: JsonLines<F>,
    alerts: AlertsOnly<O>,
}

impl<F: std::io::Write, O: std::io::Write> Sink for Recorder<F, O> {
    fn emit(&mut self, out: Output<'_>) {
        match out {
            Output::RuleHit(_) | Output::Incident(_) => self.alerts.emit(out),
            other => self.file.emit(other),
        }
    }
    fn flush(&mut self) {
        self.file.flush();
        self.alerts.flush();
    }
}

fn run(opts: &RunOpts, mode: Mode) -> anyhow::Result<()> {
    let cfg = opts.config()?;
    let overrides = opts.overrides()?;
    let clock = opts.clock();
    let config_path = opts
        .config
        .as_ref()
        .map(|p| std::path::absolute(p).unwrap_or(p.clone()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::new());
        let mut bound = None;
        if let Some(addr) = cfg.metrics_addr {
            let (b, _task) = llmwatch::metrics::serve(addr, metrics.clone(), health.clone())
                .await
                .with_context(|| format!("serving metrics on {addr} (metrics.addr / --metrics-addr)"))?;
            log::info!("metrics on http://{b}/metrics");
            bound = Some(b);
        }
        let delivery = start_delivery(&cfg, bound, metrics.clone()).await?;
        let delivered_to = delivery.as_ref().map(|d| d.targets()).unwrap_or_default();
        let mut agent = Agent::start(cfg, config_path, clock, metrics, health)?;
        agent.set_overrides(overrides);
        if let Some(d) = delivery {
            agent.set_delivery(d);
        }
        if let Some(b) = bound {
            agent.set_metrics_addr(b);
        }
        let stdout = std::io::stdout();
        match mode {
            Mode::Events => {
                agent
                    .run(&mut JsonLines::new(std::io::BufWriter::new(stdout.lock())))
                    .await
            }
            Mode::Alerts => {
                agent
                    .run(&mut AlertsOnly::new(std::io::BufWriter::new(stdout.lock())))
                    .await
            }
            Mode::Text { events } => {
                use std::io::IsTerminal as _;
                let colour = Colour::for_terminal(stdout.is_terminal());
                let sink = TextLines::new(std::io::BufWriter::new(stdout.lock()), colour, events);
                agent.run(&mut sink.with_delivery(delivered_to)).await
            }
            Mode::Record(path) => {
                let file =
                    std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
                let mut sink = Recorder {
                    file: JsonLines::new(std::io::BufWriter::new(file)),
                    alerts: AlertsOnly::new(std::io::BufWriter::new(stdout.lock())),
                };
                agent.run(&mut sink).await
            }
        }
    })
}

/// Feeds webhook delivery outcomes into the metrics.
struct DeliveryMetrics(Arc<Metrics>);

impl llmwatch::sinks::DeliveryObserver for DeliveryMetrics {
    fn outcome(&self, _target: &str, outcome: &'static str) {
        self.0.delivery(outcome);
    }
    fn spool_depth(&self, alerts: u64) {
        self.0.set_spool_depth(alerts as usize);
    }
    fn spool_dropped(&self, severity: &str) {
        self.0.spool_dropped(severity);
    }

    fn spool_write_error(&self) {
        self.0.spool_write_error();
    }
}

/// Builds the webhook targets; a bad URL or an unreadable secret stops the start with a message
/// naming it (an agent that silently cannot deliver is worse than one that does not start).
async fn start_delivery(
    cfg: &Config,
    metrics_addr: Option<std::net::SocketAddr>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Option<llmwatch::sinks::Delivery>> {
    use llmwatch::sinks::{AlertmanagerOptions, Delivery, DeliveryConfig, Secret, WebhookTarget};
    if cfg.webhooks.is_empty() {
        return Ok(None);
    }
    let mut targets = Vec::new();
    for (i, w) in cfg.webhooks.iter().enumerate() {
        let url: url::Url = w
            .url
            .parse()
            .with_context(|| format!("webhooks[{i}].url {:?} is not a valid URL", w.url))?;
        let mut t = WebhookTarget::new(url);
        t.headers = w.headers.clone();
        t.timeout = w.timeout;
        t.preset = w
            .preset
            .parse()
            .map_err(|e| anyhow::anyhow!("webhooks[{i}].preset: {e}"))?;
        t.secret = match (&w.secret_file, &w.secret_env) {
            (Some(f), _) => Some(
                Secret::from_file(f).with_context(|| format!("webhooks[{i}].secret_file {}", f.display()))?,
            ),
            (None, Some(var)) => {
                Some(Secret::from_env(var).with_context(|| format!("webhooks[{i}].secret_env {var}"))?)
            }
            (None, None) => None,
        };
        targets.push(t);
    }
    let delivery = Delivery::start(
        DeliveryConfig {
            targets,
            spool_dir: cfg.spool.dir.clone(),
            spool_max_bytes: cfg.spool.max_bytes,
            memory_max_bytes: cfg.spool.memory_max_bytes,
            alertmanager: AlertmanagerOptions {
                generator_url: generator_url(&cfg.host, metrics_addr),
                ..Default::default()
            },
            ..Default::default()
        },
        Arc::new(DeliveryMetrics(metrics)),
    )
    .await
    .context("starting webhook delivery")?;
    log::info!(
        "alerts are delivered to {} (spool {})",
        delivery.targets().join(", "),
        cfg.spool.dir.display()
    );
    Ok(Some(delivery))
}

/// Alertmanager's `generatorURL`: this agent's metrics endpoint (named by the host when it
/// listens on every address), or `llmwatch://<host>/` when it serves none.
fn generator_url(host: &str, metrics_addr: Option<std::net::SocketAddr>) -> String {
    match metrics_addr {
        Some(a) if a.ip().is_unspecified() => format!("http://{host}:{}/metrics", a.port()),
        Some(a) => format!("http://{a}/metrics"),
        None => format!("llmwatch://{host}/"),
    }
}

fn replay(file: &std::path::Path, config: Option<&std::path::Path>) -> anyhow::Result<()> {
    let mut cfg = match config {
        Some(p) => config::load(p)?,
        None => Config::default(),
    };
    cfg.egress.resolve();
    let input = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let stats = llmwatch::replay::replay(std::io::BufReader::new(input), Arc::new(cfg), |m| {
        if serde_json::to_writer(&mut out, m).is_ok() {
            let _ = std::io::Write::write_all(&mut out, b"\n");
        }
    })?;
    std::io::Write::flush(&mut out)?;
    eprintln!(
        "replayed {} lines: {} events, {} event-loss reports, {} rule hits in {} incidents ({} messages), {} lines skipped",
        stats.lines,
        stats.events,
        stats.losses,
        stats.alerts,
        stats.incidents,
        stats.messages,
        stats.bad_lines
    );
    for e in &stats.errors {
        eprintln!("  {e}");
    }
    Ok(())
}

fn validate(file: &std::path::Path) -> anyhow::Result<()> {
    match config::load(file) {
        Ok(cfg) => {
            // Warnings describe what the file accepts but probably does not mean; it is valid.
            match cfg.warnings.len() {
                0 => println!("{}: ok", file.display()),
                n => println!(
                    "{}: ok, {n} warning{}:",
                    file.display(),
                    if n == 1 { "" } else { "s" }
                ),
            }
            for w in &cfg.warnings {
                println!("  warning: {w}");
            }
            Ok(())
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}

/// The capability report: each program type tried for real, then the agent's own hooks.
fn check(json: bool, host: &HostPaths) -> anyhow::Result<()> {
    let tracefs = probes::tracefs::ensure_mounted(&host.tracefs);
    let btf_path = host.kernel_btf.as_path();
    let btf = probes::btf::KernelBtf::from_file(btf_path)
        .map_err(|e| e.to_string())
        .and_then(|b| probes::btf::resolve_offsets(&b).map_err(|e| e.to_string()));
    // SAFETY: geteuid takes no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let caps = probes::probe_capabilities().context("probing program types")?;
    let agent = probes::Probes::load(Default::default(), Default::default(), btf_path);
    let hooks = match &agent {
        Ok(p) => p.hooks.clone(),
        Err(_) => Vec::new(),
    };
    let paths = agent.as_ref().ok().map(|p| p.paths.clone());
    let minimum_ok = btf.is_ok() && agent.is_ok() && hooks.iter().filter(|h| h.required).all(|h| h.attached);
    if json {
        let report = serde_json::json!({
            "root": root,
            "tracefs": tracefs,
            "btf": match &btf { Ok((_, missing)) => serde_json::json!({"ok": true, "missing_optional": missing}), Err(e) => serde_json::json!({"ok": false, "error": e, "loses": probes::NO_BTF_LOSS}) },
            "program_types": caps,
            "hooks": hooks,
            "data_paths": paths,
            "hook_path": agent.as_ref().ok().map(|p| p.hook.hook_path),
            "hook_path_fallback": agent.as_ref().ok().and_then(|p| p.hook.hook_path_fallback.clone()),
            "agent_error": agent.as_ref().err().map(|e| format!("{e:#}")),
            "minimum_ok": minimum_ok,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let mark = |ok: bool| if ok { "ok     " } else { "REFUSED" };
        println!("llmwatch capability report");
        println!(
            "  running as root:   {}",
            if root {
                "yes"
            } else {
                "no (needs CAP_BPF, CAP_PERFMON)"
            }
        );
        match &tracefs {
            probes::tracefs::TracefsState::Unavailable(why) => println!(
                "  tracefs:           MISSING: {why} (the agent's hooks do not need it; the tracepoint probe below does)"
            ),
            other => println!("  tracefs:           ok ({other:?})"),
        }
        match &btf {
            Ok((_, missing)) if missing.is_empty() => {
                println!("  kernel BTF:        ok, all offsets resolved")
            }
            Ok((_, missing)) => println!(
                "  kernel BTF:        ok, optional offsets missing: {}",
                missing.join(", ")
            ),
            Err(e) => println!(
                "  kernel BTF:        MISSING: {e}; the agent runs degraded: {}",
                probes::NO_BTF_LOSS
            ),
        }
        println!("program types:");
        for c in &caps {
            println!(
                "  {} {:<17} {}{}",
                mark(c.ok),
                c.program_type,
                c.used_for,
                c.error.as_ref().map(|e| format!(" -- {e}")).unwrap_or_default()
            );
        }
        println!("agent hooks:");
        for h in &hooks {
            println!(
                "  {} {:<36} {}{}{}",
                mark(h.attached),
                h.hook,
                h.purpose,
                h.error.as_ref().map(|e| format!(" -- {e}")).unwrap_or_default(),
                h.instead
                    .as_ref()
                    .map(|i| format!("; instead: {i}"))
                    .unwrap_or_default()
            );
        }
        if let Err(e) = &agent {
            println!("  agent probes failed to load: {e:#}");
        }
        if let Ok(p) = &agent {
            match &p.hook.hook_path_fallback {
                None => println!(
                    "syscall hooks:     {} (per-syscall fexit programs: unrelated syscalls run none)",
                    p.hook.hook_path.as_str()
                ),
                Some(why) => println!(
                    "syscall hooks:     {} (per-syscall fexit not used: {why})",
                    p.hook.hook_path.as_str()
                ),
            }
        }
        if let Some(paths) = &paths {
            println!("data paths on this kernel:");
            for (what, path) in paths.pairs() {
                println!("  {what:<11} {path}");
            }
        }
        println!(
            "minimum (BTF + syscall hooks + process hooks): {}",
            if minimum_ok { "ok" } else { "MISSING" }
        );
    }
    if !minimum_ok {
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clap::CommandFactory as _;

    use super::Cli;

    const README: &str = include_str!("../../README.md");

    /// The long options a subcommand accepts, as `--name`.
    fn accepted(command: &str) -> BTreeSet<String> {
        let cli = Cli::command();
        let sub = cli
            .find_subcommand(command)
            .unwrap_or_else(|| panic!("no `{command}` command"));
        sub.get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| !["help", "version"].contains(l))
            .map(|l| format!("--{l}"))
            .collect()
    }

    /// Every `--option` named in `text`.
    fn options_in(text: &str) -> BTreeSet<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(str::to_string)
            .collect()
    }

    /// The first cell of each row of the README's command table, and the rows of its options
    /// table (both under "## Command line").
    fn command_line_tables() -> (Vec<&'static str>, Vec<&'static str>) {
        let section = README
            .split_once("## Command line")
            .and_then(|(_, rest)| rest.split("\n## ").next())
            .expect("README: a \"## Command line\" section");
        let rows =
            |first: &str| -> Vec<&'static str> { section.lines().filter(|l| l.starts_with(first)).collect() };
        let commands = rows("| `llmwatch ")
            .into_iter()
            .map(|r| r.split(" | ").next().unwrap())
            .collect();
        (commands, rows("| `--"))
    }

    /// The options the README's command table names in `command`'s row.
    fn in_command_row(command: &str) -> BTreeSet<String> {
        let (commands, _) = command_line_tables();
        let row = commands
            .iter()
            .find(|c| c.starts_with(&format!("| `llmwatch {command}")))
            .unwrap_or_else(|| panic!("README: no row for `llmwatch {command}`"));
        options_in(row)
    }

    /// The options of the README's options table ("Options of `run` / `events` / `record`"),
    /// and those of them it says are "also for `check`".
    fn in_options_table() -> (BTreeSet<String>, BTreeSet<String>) {
        let (_, rows) = command_line_tables();
        let (mut all, mut check) = (BTreeSet::new(), BTreeSet::new());
        for row in rows {
            let (option, rest) = row.trim_start_matches("| ").split_once(" | ").unwrap();
            all.extend(options_in(option));
            if rest.contains("also for `check`") {
                check.extend(options_in(option));
            }
        }
        (all, check)
    }

    #[test]
    fn the_readme_names_every_option_each_command_accepts_and_no_other() {
        let (table, also_for_check) = in_options_table();
        for command in ["run", "events", "record"] {
            let documented: BTreeSet<String> = in_command_row(command).union(&table).cloned().collect();
            assert_eq!(
                documented,
                accepted(command),
                "README's command line tables and `llmwatch {command}` disagree"
            );
        }
        // `check` is not one of the commands the options table is about: its own row says
        // everything it takes, and the table's "also for `check`" agrees with it.
        let check = in_command_row("check");
        assert_eq!(
            check,
            accepted("check"),
            "README's row for `llmwatch check` and the command disagree"
        );
        assert_eq!(
            also_for_check,
            check.intersection(&table).cloned().collect(),
            "README's options table says \"also for `check`\" of other options than `check` takes"
        );
    }
}
