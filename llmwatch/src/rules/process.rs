//! Rules about what processes run and touch: inference.exec, inference.egress, exfil.tool,
//! gpu.unexpected_user, gpu.spawn_storm, host.memory_scrape.
use foldhash::{HashMap, HashSet};
use std::{collections::VecDeque, net::IpAddr};

use chrono::{DateTime, TimeDelta, Utc};

use super::{AlertSink, AlertSpec, Ctx, delta};
use crate::{
    alerts::{AlertNetwork, AlertProcess, Window},
    events::EventKind,
};

/// Programs that give an attacker a shell: never expected under an inference server.
const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "fish", "busybox", "ash", "csh", "tcsh",
];

#[derive(Default)]
pub(crate) struct ProcessRules {
    /// GPU processes started per user/container key, for spawn-rate limits.
    gpu_spawns: HashMap<String, VecDeque<DateTime<Utc>>>,
    /// Processes currently holding a GPU.
    gpu_live: HashSet<u32>,
}

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

impl ProcessRules {
    pub fn on_exec(
        &mut self,
        ctx: &Ctx<'_>,
        filename: &str,
        argv: &[String],
        spawned_by_server: Option<&str>,
        weights_present: bool,
        sink: &mut AlertSink<'_>,
    ) {
        let p = &ctx.ev.process;
        let window = Window::at(ctx.t);
        if let Some(server) = spawned_by_server {
            let allow = &sink.cfg().rules.inference_exec.allow;
            let name = basename(filename);
            if SHELLS.contains(&name) || !allow.iter().any(|a| a.matches(filename)) {
                let what = if SHELLS.contains(&name) {
                    "a shell"
                } else {
                    "an unexpected program"
                };
                sink.emit(AlertSpec {
                    rule: "inference.exec",
                    severity: None,
                    summary: format!("inference server {server} spawned {what}: {}", argv.join(" ")),
                    time: ctx.t,
                    process: AlertProcess::of(ctx.ev),
                    files: vec![],
                    network: vec![],
                    window,
                    key: format!("{}:{filename}", p.ppid),
                });
            }
        }
        if weights_present {
            let tool = sink
                .cfg()
                .exfil_tools
                .iter()
                .find(|t| t.matches(basename(filename), argv))
                .map(|t| match &t.subcommand {
                    Some(s) => format!("{} {s}", t.program),
                    None => t.program.clone(),
                });
            if let Some(tool) = tool {
                sink.emit(AlertSpec {
                    rule: "exfil.tool",
                    severity: None,
                    summary: format!(
                        "transfer tool {tool} run on a host that holds model weights: {}",
                        argv.join(" ")
                    ),
                    time: ctx.t,
                    process: AlertProcess::of(ctx.ev),
                    files: vec![],
                    network: vec![],
                    window,
                    key: format!("{}:{tool}", p.pid),
                });
            }
        }
    }

    pub fn on_connect(&mut self, ctx: &Ctx<'_>, dest: IpAddr, port: u16, sink: &mut AlertSink<'_>) {
        let Some(server) = ctx.server else { return };
        if ctx.startup_load || sink.cfg().egress.allows(dest, port) {
            return;
        }
        let p = &ctx.ev.process;
        sink.emit(AlertSpec {
            rule: "inference.egress",
            severity: None,
            summary: format!("inference server {server} (pid {}) connected to {dest} port {port}, outside the egress allowlist", p.pid),
            time: ctx.t,
            process: AlertProcess::of(ctx.ev),
            files: vec![],
            network: vec![AlertNetwork { dest, port, bytes_sent: 0 }],
            window: Window::at(ctx.t),
            key: format!("{}:{dest}:{port}", p.pid),
        });
    }

    pub fn on_gpu_open(&mut self, ctx: &Ctx<'_>, sink: &mut AlertSink<'_>) {
        let EventKind::GpuOpen { device, .. } = &ctx.ev.event.kind else {
            return;
        };
        let p = &ctx.ev.process;
        let exe = p.exe.as_deref().unwrap_or("");
        let allowed = ctx.server.is_some() || sink.cfg().gpu_allowed(&p.comm, p.exe.as_deref());
        if !allowed {
            sink.emit(AlertSpec {
                rule: "gpu.unexpected_user",
                severity: None,
                summary: format!(
                    "{} (pid {}) started using GPU device {device}; it is not an allowed GPU program",
                    if exe.is_empty() { &p.comm } else { exe },
                    p.pid
                ),
                time: ctx.t,
                process: AlertProcess::of(ctx.ev),
                files: vec![],
                network: vec![],
                window: Window::at(ctx.t),
                key: format!("{}:{device}", if exe.is_empty() { &p.comm } else { exe }),
            });
        }
        // Rates: first GPU use of each process counts as one GPU process start.
        if !self.gpu_live.insert(p.pid) {
            return;
        }
        let cfg = &sink.cfg().rules.gpu_spawn_storm;
        let (max_spawns, per, max_concurrent) = (
            cfg.max_spawns as usize,
            delta(cfg.per),
            cfg.max_concurrent as usize,
        );
        let key = match &p.container_id {
            Some(c) => format!("container {}", &c[..c.len().min(12)]),
            None => format!("uid {}", p.uid),
        };
        let q = self.gpu_spawns.entry(key.clone()).or_default();
        q.push_back(ctx.t);
        while q.front().is_some_and(|t| ctx.t - *t > per) {
            q.pop_front();
        }
        let start = q.front().copied().unwrap_or(ctx.t);
        if q.len() > max_spawns {
            let n = q.len();
            sink.emit(AlertSpec {
                rule: "gpu.spawn_storm",
                severity: None,
                summary: format!(
                    "{n} GPU processes started by {key} within {} s (limit {max_spawns})",
                    (ctx.t - start).num_seconds()
                ),
                time: ctx.t,
                process: AlertProcess::of(ctx.ev),
                files: vec![],
                network: vec![],
                window: Window { start, end: ctx.t },
                key: format!("rate:{key}"),
            });
        }
        if self.gpu_live.len() > max_concurrent {
            let n = self.gpu_live.len();
            sink.emit(AlertSpec {
                rule: "gpu.spawn_storm",
                severity: None,
                summary: format!("{n} processes are using GPUs at once (limit {max_concurrent})"),
                time: ctx.t,
                process: AlertProcess::of(ctx.ev),
                files: vec![],
                network: vec![],
                window: Window::at(ctx.t),
                key: "concurrent".into(),
            });
        }
    }

    pub fn on_exit(&mut self, pid: u32) {
        self.gpu_live.remove(&pid);
    }

    pub fn on_proc_access(&mut self, ctx: &Ctx<'_>, target_server: Option<&str>, sink: &mut AlertSink<'_>) {
        let EventKind::ProcAccess { target_pid, op, .. } = &ctx.ev.event.kind else {
            return;
        };
        let Some(server) = target_server else { return };
        let p = &ctx.ev.process;
        if p.pid == *target_pid {
            return;
        }
        sink.emit(AlertSpec {
            rule: "host.memory_scrape",
            severity: None,
            summary: format!("{} (pid {}) used {op} on inference server {server} (pid {target_pid}): its memory holds the weights", p.comm, p.pid),
            time: ctx.t,
            process: AlertProcess::of(ctx.ev),
            files: vec![],
            network: vec![],
            window: Window::at(ctx.t),
            key: format!("{}:{target_pid}", p.pid),
        });
    }

    /// host.bpf_load: another process loaded a BPF program (info: debuggers and other agents
    /// do this too, but a rootkit does it first).
    pub fn on_bpf_load(&mut self, ctx: &Ctx<'_>, sink: &mut AlertSink<'_>) {
        let EventKind::BpfLoad {
            prog_type, prog_name, ..
        } = &ctx.ev.event.kind
        else {
            return;
        };
        let key = format!("{}:{prog_name}", ctx.ev.process.pid);
        about_the_process(ctx, sink, "host.bpf_load", key, |who| {
            format!("{who} loaded a BPF program {prog_name:?} (type {prog_type})")
        });
    }

    /// agent.tamper: another process took a handle to one of the agent's own BPF objects. With
    /// a map handle it can change what the agent watches or drain its events; with a program or
    /// link handle, inspect or detach it. (`bpftool prog/map show` takes handles too.)
    pub fn on_bpf_access(&mut self, ctx: &Ctx<'_>, sink: &mut AlertSink<'_>) {
        let EventKind::BpfAccess {
            object,
            id,
            ours: Some(name),
            ..
        } = &ctx.ev.event.kind
        else {
            return;
        };
        let key = format!("{}:{object}:{id}", ctx.ev.process.pid);
        let what = match object.as_ref() {
            "map" => "it can now change what the agent watches or read its events",
            _ => "it can now inspect or detach the agent's kernel hooks",
        };
        about_the_process(ctx, sink, "agent.tamper", key, |who| {
            format!("{who} took a handle to llmwatch's BPF {object} {name} (id {id}): {what}")
        });
    }

    pub fn expire(&mut self, now: DateTime<Utc>, keep: TimeDelta) {
        self.gpu_spawns
            .retain(|_, q| q.back().is_some_and(|t| now - *t < keep));
    }
}

/// A one-event alert about the acting process, gated on (`rule`, `key`) before the summary is
/// built; `summary` gets "exe (pid N)".
fn about_the_process(
    ctx: &Ctx<'_>,
    sink: &mut AlertSink<'_>,
    rule: &'static str,
    key: String,
    summary: impl FnOnce(&str) -> String,
) {
    if !sink.gate(rule, &key, ctx.t) {
        return;
    }
    let p = &ctx.ev.process;
    let who = format!("{} (pid {})", p.exe.as_deref().unwrap_or(&p.comm), p.pid);
    sink.emit(AlertSpec {
        rule,
        severity: None,
        summary: summary(&who),
        time: ctx.t,
        process: AlertProcess::of(ctx.ev),
        files: vec![],
        network: vec![],
        window: Window::at(ctx.t),
        key,
    });
}
