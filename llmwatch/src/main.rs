//! `llmwatch`: run the agent, print what the kernel sees, or check what this host supports.
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use llmwatch::{
    agent::{Agent, Counting, JsonLines},
    config::Config,
    probes,
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
    /// Run the agent (the default when no command is given).
    Run {
        #[command(flatten)]
        opts: RunOpts,
        /// Print every enriched event as one JSON line on stdout.
        #[arg(long)]
        events: bool,
    },
    /// Run the agent and print every enriched event as one JSON line (same as `run --events`).
    Events {
        #[command(flatten)]
        opts: RunOpts,
    },
    /// Report which kernel hooks this host allows; exits non-zero when the minimum is missing.
    Check {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Default)]
struct RunOpts {
    /// Directory to search for weight files (repeatable). Replaces the default locations.
    #[arg(long = "model-dir", value_name = "DIR")]
    model_dirs: Vec<PathBuf>,
    /// Local port of an inference server whose accepted connections are reported (repeatable).
    /// Replaces the defaults (8000, 8001, 8002, 8080, 11434, 30000).
    #[arg(long = "inference-port", value_name = "PORT")]
    inference_ports: Vec<u16>,
    /// Report bytes read through a descriptor every this many bytes (plus first read and close).
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    read_report_bytes: u64,
    /// Report bytes sent to one destination every this many bytes (plus first send and exit).
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    send_report_bytes: u64,
    /// Extra character-device major to treat as a GPU/accelerator (repeatable), on top of
    /// NVIDIA 195, DRM 226, accel 261 and the drivers /proc/devices lists.
    #[arg(long = "gpu-major", value_name = "MAJOR")]
    gpu_majors: Vec<u32>,
}

impl RunOpts {
    fn config(self) -> Config {
        let mut cfg = Config::default();
        if !self.model_dirs.is_empty() {
            cfg.model_dirs = self
                .model_dirs
                .into_iter()
                .map(|d| std::path::absolute(&d).unwrap_or(d))
                .collect();
        }
        if !self.inference_ports.is_empty() {
            cfg.inference_ports = self.inference_ports;
        }
        cfg.read_report_bytes = self.read_report_bytes;
        cfg.send_report_bytes = self.send_report_bytes;
        cfg.extra_gpu_majors = self.gpu_majors;
        cfg
    }
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run {
        opts: RunOpts::default_cli(),
        events: false,
    }) {
        Command::Run { opts, events } => run(opts.config(), events),
        Command::Events { opts } => run(opts.config(), true),
        Command::Check { json } => check(json),
    }
}

impl RunOpts {
    fn default_cli() -> Self {
        RunOpts {
            read_report_bytes: 1 << 20,
            send_report_bytes: 1 << 20,
            ..Default::default()
        }
    }
}

fn run(cfg: Config, events: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let agent = Agent::start(cfg)?;
        if events {
            let stdout = std::io::stdout();
            let mut sink = JsonLines::new(std::io::BufWriter::new(stdout.lock()));
            agent.run(&mut sink).await
        } else {
            let mut sink = Counting::default();
            agent.run(&mut sink).await
        }
    })
}

/// The capability report: each program type tried for real, then the agent's own hooks.
fn check(json: bool) -> anyhow::Result<()> {
    let tracefs = probes::tracefs::ensure_mounted();
    let btf_path = std::path::Path::new(probes::btf::KernelBtf::SYSFS_PATH);
    let btf = probes::btf::KernelBtf::from_file(btf_path)
        .map_err(|e| e.to_string())
        .and_then(|b| probes::btf::resolve_offsets(&b).map_err(|e| e.to_string()));
    let root = unsafe { libc::geteuid() } == 0;
    let caps = probes::probe_capabilities().context("probing program types")?;
    let agent = probes::Probes::load(Default::default());
    let hooks = match &agent {
        Ok(p) => p.hooks.clone(),
        Err(_) => Vec::new(),
    };
    let minimum_ok = btf.is_ok() && agent.is_ok() && hooks.iter().filter(|h| h.required).all(|h| h.attached);
    if json {
        let report = serde_json::json!({
            "root": root,
            "tracefs": tracefs,
            "btf": match &btf { Ok((_, missing)) => serde_json::json!({"ok": true, "missing_optional": missing}), Err(e) => serde_json::json!({"ok": false, "error": e}) },
            "program_types": caps,
            "hooks": hooks,
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
        println!("  tracefs:           {tracefs:?}");
        match &btf {
            Ok((_, missing)) if missing.is_empty() => {
                println!("  kernel BTF:        ok, all offsets resolved")
            }
            Ok((_, missing)) => println!(
                "  kernel BTF:        ok, optional offsets missing: {}",
                missing.join(", ")
            ),
            Err(e) => println!("  kernel BTF:        MISSING: {e}"),
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
                "  {} {:<36} {}{}",
                mark(h.attached),
                h.hook,
                h.purpose,
                h.error.as_ref().map(|e| format!(" -- {e}")).unwrap_or_default()
            );
        }
        if let Err(e) = &agent {
            println!("  agent probes failed to load: {e:#}");
        }
        println!(
            "minimum (BTF + syscall exit + process hooks): {}",
            if minimum_ok { "ok" } else { "MISSING" }
        );
    }
    if !minimum_ok {
        std::process::exit(1);
    }
    Ok(())
}
