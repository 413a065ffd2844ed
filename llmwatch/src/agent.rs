//! The running agent: kernel events in, enriched events and alerts out.
//!
//! One task owns all state, so nothing is locked: it drains the ring buffer when it is
//! readable, rescans model directories when `notify` says they changed, and on a timer has the
//! collector sweep the in-kernel counters of live processes (the kernel only reports on
//! thresholds). Stages: collector (kernel I/O) → process and file state → enrichment → rules
//! engine → incidents (rule hits folded, see `alerts::incidents`) → sinks.
use foldhash::{HashMap, HashMapExt as _};
use std::{path::PathBuf, sync::Arc};

use llmwatch_common::{event::FileId, maps::Settings};
use serde::Serialize;
use tokio::io::unix::AsyncFd;

use crate::{
    alerts::{
        Alert,
        incidents::{IncidentMessage, IncidentStatus, Incidents},
    },
    clock::Clock,
    collector::{Collector, Record, SeedReport},
    config::Config,
    enrich::{self, Enriched},
    events::{Event, EventKind},
    metrics::{Health, Metrics},
    probes::{self, DataPaths, HookStatus, KernelStats},
    rules::Engine,
    state::{
        files::{RootWatcher, ScanReport, WatchedSet},
        gpu::GpuDevices,
        pods::{
            self, Admit, PodDirectory, RuntimePod,
            kubelet::{Kubelet, WithKubelet},
            runtime::PodSource,
        },
        process::ProcessTable,
    },
};

/// What the agent writes: enriched events, rule hits, incidents' messages and its own status
/// lines.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Output<'a> {
    Event(&'a Enriched),
    /// One hit of a rule as the engine raised it, before it is folded into an incident: what
    /// `llmwatch events` shows of the rules' work. Receivers get incidents, never these.
    RuleHit(RuleHit<'a>),
    /// What receivers get (stdout of `run`, every webhook).
    Incident(&'a IncidentMessage),
    Status(Status<'a>),
}

/// A rule hit as a JSON line: the alert's fields and `"kind": "rule_hit"`.
#[derive(Debug, Serialize)]
pub struct RuleHit<'a> {
    kind: &'static str,
    #[serde(flatten)]
    pub hit: &'a Alert,
}

impl<'a> RuleHit<'a> {
    pub fn of(hit: &'a Alert) -> Self {
        RuleHit {
            kind: "rule_hit",
            hit,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Status<'a> {
    /// Probes attached and the watched set is in the kernel: events from now on are seen.
    AgentReady {
        hooks: &'a [HookStatus],
        missing_offsets: &'a [&'static str],
        tracefs: &'a probes::tracefs::TracefsState,
        watched_files: usize,
        watched_bytes: u64,
        #[serde(serialize_with = "crate::json_path::ser_paths")]
        roots: &'a [std::path::PathBuf],
        scan: &'a ScanReport,
        processes: usize,
        metrics_addr: Option<std::net::SocketAddr>,
        /// Why the faster tp_btf syscall hook was not used (the raw tracepoint was), if it was not.
        syscall_hook_fallback: Option<&'a str>,
        /// `hook_path`: "fentry" (per-syscall fexit programs) or "tracepoint" (`sys_exit`);
        /// `hook_path_fallback`: why the per-syscall fexit programs were not used, if not.
        #[serde(flatten)]
        hook: &'a probes::fast::HookChoice,
        /// "inotify", or "periodic_rescan" when inotify could not be used (see watch_error).
        watch_mode: &'static str,
        watch_error: Option<&'a str>,
        /// What this host lacks and what the agent does without it, one line each; empty when
        /// nothing is missing (also `llmwatch_capability` and `llmwatch check`).
        degraded: &'a [String],
        /// This agent's BPF programs, maps and links by id ("map WATCHED_FILES": 42): what
        /// `agent.tamper` alerts name when another process takes a handle to one.
        bpf_objects: &'a std::collections::BTreeMap<String, u32>,
        /// Which way reads, sends, mapped pages and io_uring are seen on this kernel.
        data_paths: &'a DataPaths,
        /// Processes found holding or mapping watched files at start-up, now followed.
        seeded: &'a SeedReport,
    },
    /// The watched set changed after a rescan.
    WatchUpdate {
        #[serde(serialize_with = "crate::json_path::ser_paths")]
        added: Vec<&'a std::path::Path>,
        #[serde(serialize_with = "crate::json_path::ser_paths")]
        removed: Vec<&'a std::path::Path>,
        watched_files: usize,
        scan: &'a ScanReport,
    },
    /// The kernel dropped events (ring buffer full); alerts overlapping this are incomplete.
    AgentEventLoss {
        time: chrono::DateTime<chrono::Utc>,
        dropped: u64,
        total_dropped: u64,
        stats: &'a KernelStats,
    },
    /// The configuration was reloaded, or a reload was refused and the old one kept.
    ConfigReload {
        ok: bool,
        #[serde(serialize_with = "crate::json_path::ser_path")]
        path: &'a std::path::Path,
        error: Option<String>,
        /// Keys whose new values only take effect after a restart.
        restart_needed: Vec<&'static str>,
    },
    /// The agent is stopping: what it handled and what the kernel lost.
    AgentStopped { events: u64, kernel_drops: u64 },
    /// At start: how long nothing watched since the previous run's last heartbeat, and
    /// whether that run stopped in order (`agent.gap` is raised when it did not).
    AgentGap {
        #[serde(flatten)]
        gap: &'a crate::state::heartbeat::Gap,
    },
    /// A record the agent could not decode.
    AgentDecodeError { error: String },
}

pub trait Sink {
    fn emit(&mut self, out: Output<'_>);
    /// Called after each batch so buffered sinks can flush.
    fn flush(&mut self) {}
    /// The sink shows `agent_ready.degraded` to a person itself (`--output text`), so the
    /// agent need not also log each line of it.
    fn reports_degraded(&self) -> bool {
        false
    }
}

pub struct Agent {
    cfg: Arc<Config>,
    /// The guard's kernel side, with a `guard:` section.
    guard: Option<crate::guard::Guard>,
    config_path: Option<PathBuf>,
    clock: Arc<dyn Clock>,
    engine: Engine,
    /// Rule hits of the input being handled, for `incidents`.
    alerts: Vec<Alert>,
    incidents: Incidents,
    /// Incidents' messages to deliver (reused).
    messages: Vec<IncidentMessage>,
    /// Kernel I/O: programs, maps, counter reconciliation and sweeps.
    collector: Collector,
    files: WatchedSet,
    procs: ProcessTable,
    gpus: GpuDevices,
    tracefs: probes::tracefs::TracefsState,
    /// Normalized events of the record being handled (reused).
    pending: Vec<Event>,
    heartbeat: crate::state::heartbeat::Heartbeat,
    /// Why the heartbeat cannot be written, once it failed (said once, in `degraded`).
    heartbeat_error: Option<String>,
    /// Kernel records decoded and handled since start.
    events_handled: u64,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// Kernel timestamp of the event being handled (event-to-alert latency).
    current_ts_ns: Option<u64>,
    /// Where the metrics endpoint listens, when it does.
    metrics_addr: Option<std::net::SocketAddr>,
    /// Webhook delivery (spool first, then POST), when webhooks are configured.
    delivery: Option<crate::sinks::Delivery>,
    /// Manifest verification results come back from a blocking thread.
    manifest_tx: tokio::sync::mpsc::UnboundedSender<ManifestResult>,
    manifest_rx: Option<tokio::sync::mpsc::UnboundedReceiver<ManifestResult>>,
    /// (size, mtime) of each manifest file when last verified: only changed files are re-hashed.
    manifest_checked: HashMap<PathBuf, (u64, i64)>,
    /// Boot-to-wall clock mapping, refreshed per batch (see `BootAnchor`).
    anchor: crate::clock::BootAnchor,
    overrides: Option<Overrides>,
    views: enrich::ProcessViews,
    /// Hash of the configuration file's bytes as last loaded.
    config_fingerprint: Option<u64>,
    /// Pod identities by container id, and the events of containers being looked up.
    pods: PodDirectory,
    /// The container runtime that names pods; `None`: events carry the cgroup's pod UID only.
    pod_source: Option<Arc<dyn PodSource>>,
    /// Lookups answer here (they run as tasks: the event loop never waits on the runtime).
    pod_tx: tokio::sync::mpsc::UnboundedSender<PodAnswer>,
    pod_rx: Option<tokio::sync::mpsc::UnboundedReceiver<PodAnswer>>,
    /// The kubelet's pod list (owners), when `containers.kubelet` asks for it and it started.
    kubelet: Option<Arc<Kubelet>>,
    /// Why `containers.kubelet` is set but not used (its URL or CA), for the start-up report.
    kubelet_error: Option<String>,
    /// A container runtime names pods (else only the kubelet can).
    runtime_names_pods: bool,
    /// Kubelet fetch failures already counted in the metrics.
    kubelet_failures_counted: u64,
}

/// The runtime's answer about one container id.
type PodAnswer = (String, Result<Option<RuntimePod>, String>);

/// How often the model directories are rescanned when inotify cannot watch them.
pub const RESCAN_FALLBACK: std::time::Duration = std::time::Duration::from_secs(10);

/// Command-line settings re-applied to every reloaded configuration.
pub type Overrides = Arc<dyn Fn(&mut Config) + Send + Sync>;

/// One file checked against the manifest: (path, expected, actual).
type ManifestResult = (PathBuf, String, String);

impl Agent {
    /// Loads and attaches the probes and fills the kernel maps; nothing is read yet.
    pub fn start(
        cfg: Config,
        config_path: Option<PathBuf>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> anyhow::Result<Self> {
        let tracefs = probes::tracefs::ensure_mounted(&cfg.tracefs);
        if let probes::tracefs::TracefsState::Unavailable(why) = &tracefs {
            // Nothing the agent attaches needs it (raw and BTF tracepoints do not).
            log::warn!(
                "tracefs unavailable ({why}); the agent's hooks do not need it, `llmwatch check` does"
            );
        }
        let settings = Settings {
            read_report_bytes: cfg.read_report_bytes,
            send_report_bytes: cfg.send_report_bytes,
            agent_pid: std::process::id(),
            ..Settings::default()
        };
        let gpus = GpuDevices::from_host(&cfg.extra_gpu_majors);
        let collector = Collector::start(
            settings,
            probes::ProbeOptions {
                prefer_fentry: !cfg.force_tracepoint_hooks && !cfg.force_raw_syscall_hook,
                prefer_tp_btf: !cfg.force_raw_syscall_hook,
                syscall_sends: cfg.force_syscall_sends,
                smaps_touch_only: cfg.force_smaps_touch,
                guard: crate::guard::kernel_settings(&cfg.guard),
            },
            &cfg.kernel_btf,
            &gpus,
            &cfg.inference_ports,
        )?;
        for h in &collector.probes().hooks {
            if h.attached {
                log::info!("hook {} attached ({})", h.hook, h.purpose);
            } else if h.instead.is_some() {
                log::info!("{}", h.not_attached_line());
            } else {
                log::warn!("{}", h.not_attached_line());
            }
        }
        let mut procs = ProcessTable::new();
        procs.scan_proc();
        // SAFETY: malloc_trim only returns free heap pages to the OS. Start-up parsed the
        // kernel's BTF (megabytes) twice; the resident size should reflect what the agent keeps.
        unsafe { libc::malloc_trim(0) };
        let mut cfg = cfg;
        // Host names in the egress allowlist: resolved once here (blocking DNS, before the
        // event loop) and again on every reload.
        cfg.egress.resolve();
        if let Ok(host) = std::env::var("LLMWATCH_HOST")
            && !host.is_empty()
        {
            cfg.host = host;
        }
        let mut collector = collector;
        let mut guard = crate::guard::Guard::start(collector.probes_mut(), &cfg)?;
        if let Some(g) = &mut guard {
            // Servers and trusted readers already running are exempt from now on.
            for p in procs.iter().filter(|p| p.exited_at.is_none()) {
                let facts = crate::config::ProcessFacts {
                    exe: p.exe.as_deref(),
                    comm: &p.comm,
                    argv: &p.argv,
                    container_id: None,
                    cgroup: None,
                    uid: p.uid,
                    user: None,
                    // Pods are named later, and a pod-pinned process is exempted then.
                    namespace: None,
                    pod_labels: &std::collections::BTreeMap::new(),
                };
                g.on_exec(p.pid, &cfg, &facts);
            }
        }
        let cfg = Arc::new(cfg);
        let heartbeat = crate::state::heartbeat::Heartbeat::new(&cfg.state_dir);
        let config_fingerprint = config_path.as_deref().and_then(file_fingerprint);
        let (manifest_tx, manifest_rx) = tokio::sync::mpsc::unbounded_channel();
        let anchor = crate::clock::BootAnchor::now(&*clock);
        let runtime: Option<Arc<dyn PodSource>> = pods::runtime::from_config(&cfg.containers).map(Arc::from);
        if runtime.is_none() {
            log::info!(
                "pod names: no container runtime ({}); events carry the cgroup's pod UID only{}",
                if cfg.containers.runtime == crate::config::RuntimeApi::Off {
                    "containers.runtime: off"
                } else {
                    "no runtime socket found"
                },
                if cfg.containers.kubelet.is_some() {
                    ", unless the kubelet names them"
                } else {
                    ""
                }
            );
        }
        let runtime_names_pods = runtime.is_some();
        let (kubelet, kubelet_error) = match &cfg.containers.kubelet {
            None => (None, None),
            Some(k) => match Kubelet::start(k, |name| std::env::var(name).ok()) {
                Ok(k) => (Some(Arc::new(k)), None),
                Err(e) => {
                    log::warn!("kubelet pod list not used: {e}");
                    (None, Some(e.to_string()))
                }
            },
        };
        let pod_source: Option<Arc<dyn PodSource>> = match &kubelet {
            Some(k) => Some(Arc::new(WithKubelet {
                // Without a runtime nothing else names the pod: the kubelet may take longer.
                budget: if runtime.is_some() {
                    cfg.containers.lookup_timeout / 2
                } else {
                    cfg.containers.lookup_timeout * 3 / 4
                },
                runtime,
                kubelet: k.clone(),
            })),
            None => runtime,
        };
        if let Some(s) = &pod_source {
            log::info!("pod names from the {}", s.describe());
        }
        let (pod_tx, pod_rx) = tokio::sync::mpsc::unbounded_channel();
        Ok(Agent {
            pods: PodDirectory::new(
                cfg.pod_label_keys(),
                cfg.containers.refresh_interval,
                cfg.containers.lookup_timeout,
            ),
            pod_source,
            pod_tx,
            pod_rx: Some(pod_rx),
            kubelet,
            kubelet_error,
            runtime_names_pods,
            kubelet_failures_counted: 0,
            guard,
            files: watched_set(&cfg),
            engine: Engine::new(cfg.clone()),
            incidents: Incidents::new(cfg.incidents.idle),
            messages: Vec::new(),
            cfg,
            config_path,
            clock,
            alerts: Vec::new(),
            collector,
            procs,
            gpus,
            tracefs,
            pending: Vec::new(),
            heartbeat,
            heartbeat_error: None,
            events_handled: 0,
            metrics,
            health,
            current_ts_ns: None,
            metrics_addr: None,
            delivery: None,
            manifest_tx,
            manifest_rx: Some(manifest_rx),
            manifest_checked: HashMap::new(),
            anchor,
            overrides: None,
            views: enrich::ProcessViews::new(),
            config_fingerprint,
        })
    }

    fn cx(&mut self) -> enrich::Context<'_> {
        enrich::Context {
            procs: &mut self.procs,
            files: &self.files,
            gpus: &self.gpus,
            anchor: self.anchor,
            views: &mut self.views,
            pods: &self.pods,
        }
    }

    /// Command-line settings that win over the file, now and after every reload.
    pub fn set_overrides(&mut self, overrides: Overrides) {
        self.overrides = Some(overrides);
    }

    /// Rescans (on a notify signal or the fallback timer) and says what changed.
    fn rescan_and_report(&mut self, sink: &mut dyn Sink) {
        let rescanned = self.rescan();
        self.emit_alerts(sink);
        match rescanned {
            Ok((diff, report)) if !(diff.added.is_empty() && diff.removed.is_empty()) => {
                sink.emit(Output::Status(Status::WatchUpdate {
                    added: diff.added.iter().map(|f| &*f.path).collect(),
                    removed: diff.removed.iter().map(|f| &*f.path).collect(),
                    watched_files: self.files.len(),
                    scan: &report,
                }));
                sink.flush();
            }
            Ok(_) => {}
            Err(e) => log::error!("rescan failed: {e:#}"),
        }
    }

    /// Alerts also go to these webhooks (through the durable spool).
    pub fn set_delivery(&mut self, delivery: crate::sinks::Delivery) {
        self.delivery = Some(delivery);
    }

    /// Reported in `agent_ready`, so a user (or a test) knows where to scrape.
    pub fn set_metrics_addr(&mut self, addr: std::net::SocketAddr) {
        self.metrics_addr = Some(addr);
    }

    pub fn hooks(&self) -> &[HookStatus] {
        &self.collector.probes().hooks
    }

    /// Rescans the model directories and makes the kernel's watched set match.
    fn rescan(&mut self) -> anyhow::Result<(crate::state::files::Diff, ScanReport)> {
        let links_before: HashMap<PathBuf, FileId> = self
            .files
            .iter()
            .flat_map(|f| f.aliases.iter().map(move |a| (a.clone(), f.id)))
            .collect();
        let (diff, report) = self.files.rescan();
        let now = self.clock.now();
        for f in self.files.iter() {
            for a in &f.aliases {
                if links_before.get(a).is_some_and(|old| *old != f.id) {
                    self.engine
                        .on_link_repointed(a, &enrich::file_view(f), now, &mut self.alerts);
                }
            }
        }
        self.collector.sync_watched(&self.files)?;
        if let Some(g) = &mut self.guard {
            g.sync_files(&self.files, &self.cfg.guard);
        }
        self.engine.set_weights_present(!self.files.is_empty());
        self.verify_manifest();
        Ok((diff, report))
    }

    /// Runs until SIGINT/SIGTERM.
    pub async fn run(mut self, sink: &mut dyn Sink) -> anyhow::Result<()> {
        // SAFETY: the ring buffer owns its fd for as long as the AsyncFd holds it.
        let mut ring = unsafe { AsyncFd::register(self.collector.take_events()?) }
            .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
        let (_, report) = self.rescan()?;
        // After the kernel knows the watched set: who already holds or maps one of the files.
        let seeded = self.collector.seed_from_proc(&self.procs);
        if seeded.processes > 0 {
            log::info!(
                "{} processes already hold watched files ({} descriptors, {} mappings): followed from now on",
                seeded.processes,
                seeded.descriptors,
                seeded.mappings
            );
        }
        self.count_sends_of_servers();
        let (rescan_tx, mut rescan_rx) = tokio::sync::mpsc::channel(4);
        // inotify can fail (watch or instance limits exhausted): then rescan on a timer.
        let (_watcher, watch_error) = match RootWatcher::start(self.files.roots(), rescan_tx) {
            Ok(w) => (Some(w), None),
            Err(e) => {
                log::warn!(
                    "cannot watch model directories for changes ({e}); rescanning every {} s instead",
                    RESCAN_FALLBACK.as_secs()
                );
                (None, Some(e.to_string()))
            }
        };
        let mut fallback_rescan = tokio::time::interval(RESCAN_FALLBACK);
        fallback_rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Before `agent_ready`: a change made right after it must not be missed, and a stop
        // asked for right after it must be an orderly one (its heartbeat says so).
        let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let (config_tx, mut config_rx) = tokio::sync::mpsc::channel(4);
        // The directory, not the file: Kubernetes updates a mounted ConfigMap by swapping a
        // `..data` symlink, which a watch on the file itself stops seeing after the first time.
        // A reload of an unchanged file is harmless (validated, then applied as is).
        let _config_watcher = self.config_path.clone().and_then(|p| {
            let dir = p.parent().map(PathBuf::from).unwrap_or_else(|| p.clone());
            RootWatcher::start(std::slice::from_ref(&dir), config_tx)
                .map_err(|e| {
                    log::warn!(
                        "not watching {} for changes ({e}); reload with SIGHUP",
                        p.display()
                    )
                })
                .ok()
        });
        self.report_gap(sink);
        if let Some(k) = &self.kubelet {
            // The start-up report says whether the kubelet answers; a kubelet that does not
            // answer within the lookup timeout is reported as such.
            k.first_fetch(self.cfg.containers.lookup_timeout).await;
        }
        let degraded = self.degraded();
        if !sink.reports_degraded() {
            for d in &degraded {
                log::warn!("degraded: {d}");
            }
        }
        let probes = self.collector.probes();
        let bpf_objects: std::collections::BTreeMap<String, u32> = probes
            .own_objects
            .iter()
            .map(|((kind, id), name)| (format!("{kind} {name}"), *id))
            .collect();
        sink.emit(Output::Status(Status::AgentReady {
            hooks: &probes.hooks,
            missing_offsets: &probes.missing_offsets,
            tracefs: &self.tracefs,
            watched_files: self.files.len(),
            watched_bytes: self.files.total_bytes(),
            roots: self.files.roots(),
            scan: &report,
            processes: self.procs.len(),
            metrics_addr: self.metrics_addr,
            syscall_hook_fallback: match &probes.fast_path {
                Some(Err(e)) => Some(e.as_str()),
                _ => None,
            },
            hook: &probes.hook,
            watch_mode: if watch_error.is_some() {
                "periodic_rescan"
            } else {
                "inotify"
            },
            watch_error: watch_error.as_deref(),
            degraded: &degraded,
            bpf_objects: &bpf_objects,
            data_paths: &probes.paths,
            seeded: &seeded,
        }));
        sink.flush();
        for h in &probes.hooks {
            self.metrics.set_hook(h.hook, h.attached);
        }
        for (what, path) in probes.paths.pairs() {
            self.metrics.set_data_path(what, path);
        }
        self.metrics.set_hook_path(probes.hook.hook_path.as_str());
        self.metrics
            .set_capability("kernel_btf", probes.btf_error.is_none());
        self.metrics.set_capability(
            "tracefs",
            !matches!(self.tracefs, probes::tracefs::TracefsState::Unavailable(_)),
        );
        self.metrics
            .set_capability("tp_btf_syscall_hook", matches!(probes.fast_path, Some(Ok(_))));
        self.kubelet_metrics();
        self.metrics
            .set_watched(self.files.len(), self.files.total_bytes());
        for &id in crate::rules::ALL {
            let c = self.cfg.rules.common(id);
            if c.enabled {
                self.metrics.init_alert(id.as_str(), c.severity.as_str());
            }
        }
        self.metrics.set_incidents_open(0);
        self.health.set_ready(true);
        log::info!(
            "ready: {} files ({} bytes) watched under {} roots",
            self.files.len(),
            self.files.total_bytes(),
            self.files.roots().len()
        );

        let mut flush = tokio::time::interval(self.cfg.flush_interval);
        let mut poll = tokio::time::interval(std::time::Duration::from_millis(100));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut manifest_rx = self.manifest_rx.take().expect("run once");
        let mut pod_rx = self.pod_rx.take().expect("run once");
        let mut batch: Vec<Record> = Vec::with_capacity(256);
        loop {
            tokio::select! {
                // Kernel events first: a rename's event must be matched against the watched set
                // as it was before the rescan that the same rename triggers.
                biased;
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    Collector::drain(guard.get_inner_mut(), &mut batch);
                    guard.clear_ready();
                    self.handle_batch(&mut batch, sink);
                }
                // The kernel wakes us only when 64 KiB are waiting (batched wake-ups); a lone
                // event is picked up here within 100 ms.
                _ = poll.tick() => {
                    Collector::drain(ring.get_mut(), &mut batch);
                    if !batch.is_empty() {
                        self.handle_batch(&mut batch, sink);
                    }
                    self.sample_fresh_mappings(sink);
                    if self.pods.holding() {
                        for (id, held) in self.pods.expire() {
                            self.release(&id, held, sink);
                        }
                    }
                }
                Some((id, answer)) = pod_rx.recv() => {
                    let held = self.pods.resolve(&id, answer);
                    self.release(&id, held, sink);
                }
                _ = fallback_rescan.tick(), if watch_error.is_some() => self.rescan_and_report(sink),
                Some(()) = rescan_rx.recv() => self.rescan_and_report(sink),
                _ = flush.tick() => {
                    self.beat(false);
                    // What is waiting first: a sweep names processes as the table knows them,
                    // and an exec still in the ring would leave it the old name.
                    Collector::drain(ring.get_mut(), &mut batch);
                    if !batch.is_empty() {
                        self.handle_batch(&mut batch, sink);
                    }
                    let stats = self.collector.stats();
                    self.metrics.set_kernel_counters(&stats.ringbuf_drops, &stats.events);
                    self.sweep_live(sink);
                    self.report_drops(sink);
                    self.kubelet_metrics();
                    self.verify_own_maps(sink);
                    self.procs.reap();
                    let procs = &self.procs;
                    self.views.retain(|pid, _| procs.get(*pid).is_some_and(|p| p.exited_at.is_none()));
                    self.engine.expire();
                    self.incidents.tick(self.clock.now(), &mut self.messages);
                    self.deliver_messages(sink);
                    sink.flush();
                }
                Some((name, want, got)) = manifest_rx.recv() => {
                    if let Some(f) = self.files.find_path(&name) {
                        let view = enrich::file_view(f);
                        let now = self.clock.now();
                        self.engine.on_manifest_mismatch(&view, &want, &got, now, &mut self.alerts);
                        self.emit_alerts(sink);
                        sink.flush();
                    }
                }
                _ = sighup.recv() => self.reload(sink, true),
                Some(()) = config_rx.recv() => self.reload(sink, false),
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
            }
        }
        self.health.set_ready(false);
        self.report_drops(sink);
        // Receivers get every open incident's summary now rather than never: this run's
        // incidents are not known to the next one.
        self.incidents.stop(self.clock.now(), &mut self.messages);
        self.deliver_messages(sink);
        self.beat(true);
        sink.emit(Output::Status(Status::AgentStopped {
            events: self.events_handled,
            kernel_drops: self.collector.drops_seen(),
        }));
        sink.flush();
        if let Some(d) = self.delivery.take() {
            // Alerts not delivered in time stay in the spool for the next start.
            d.shutdown(std::time::Duration::from_secs(5)).await;
        }
        Ok(())
    }

    fn handle_batch(&mut self, batch: &mut Vec<Record>, sink: &mut dyn Sink) {
        self.anchor = crate::clock::BootAnchor::now(&*self.clock);
        for ev in batch.drain(..) {
            match ev {
                Ok(ev) => {
                    self.events_handled += 1;
                    let mut pending = std::mem::take(&mut self.pending);
                    self.collector.normalize(ev, &mut pending);
                    for ev in pending.drain(..) {
                        self.handle(ev, sink);
                    }
                    self.pending = pending;
                }
                Err(e) => {
                    self.metrics.decode_error();
                    sink.emit(Output::Status(Status::AgentDecodeError { error: e.to_string() }))
                }
            }
        }
        sink.flush();
    }

    /// One normalized event. An event of a container the runtime has not named yet waits
    /// (with the later events of that container, in order) for the runtime's answer, so what it
    /// raises names the pod; other containers and host processes go on meanwhile.
    fn handle(&mut self, ev: Event, sink: &mut dyn Sink) {
        let (ev_cgroup, ev_pid) = (ev.task.cgroup_id, ev.task.pid);
        if self.pod_source.is_some()
            && let Some(id) = self.procs.container_id(ev.task.cgroup_id, ev.task.pid)
        {
            match self.pods.admit(id, ev) {
                Admit::Now(ev) => self.handle_now(ev, sink),
                Admit::Held => {}
                Admit::Ask => {
                    let id = id.to_string();
                    let pod_uid = self.procs.container(ev_cgroup, ev_pid).1.pod_uid;
                    self.ask_runtime(id, pod_uid);
                }
                Admit::Overflow(evs) => {
                    self.metrics.pod_lookup_unnamed(evs.len() as u64);
                    for ev in evs {
                        self.handle_now(ev, sink);
                    }
                }
            }
            return;
        }
        self.handle_now(ev, sink);
    }

    /// Asks the runtime (and the kubelet) about a container, in a task: its answer comes back
    /// on `pod_rx`.
    fn ask_runtime(&self, container_id: String, pod_uid: Option<String>) {
        let Some(source) = self.pod_source.clone() else {
            return;
        };
        let tx = self.pod_tx.clone();
        tokio::spawn(async move {
            let answer = source
                .lookup(container_id.clone(), pod_uid)
                .await
                .map_err(|e| format!("{e:#}"));
            let _ = tx.send((container_id, answer));
        });
    }

    /// The runtime answered about `container_id` (or did not in time): its held events are
    /// handled in order, and the processes already known there are judged again as who they
    /// now are (a server selected by namespace has its sends counted from now on).
    fn release(&mut self, container_id: &str, held: Vec<Event>, sink: &mut dyn Sink) {
        self.views
            .retain(|_, v| v.container_id.as_deref() != Some(container_id));
        let named = self.pods.get(container_id);
        if named.is_none() {
            self.metrics.pod_lookup_unnamed(held.len() as u64);
        }
        for ev in held {
            self.handle_now(ev, sink);
        }
        if let Some(k) = named {
            let live: Vec<u32> = self
                .procs
                .iter()
                .filter(|p| p.exited_at.is_none())
                .map(|p| (p.pid, p.cgroup_id))
                .collect::<Vec<_>>()
                .into_iter()
                .filter(|&(pid, cg)| self.procs.container_id(cg, pid) == Some(container_id))
                .map(|(pid, _)| pid)
                .collect();
            for pid in live {
                let Some(p) = self.procs.get(pid) else { continue };
                let facts = crate::config::ProcessFacts {
                    exe: p.exe.as_deref(),
                    comm: &p.comm,
                    argv: &p.argv,
                    container_id: Some(container_id),
                    cgroup: None,
                    uid: p.uid,
                    user: None,
                    namespace: Some(&k.namespace),
                    pod_labels: &k.labels,
                };
                let server_by_pod = self
                    .cfg
                    .server_for(&facts)
                    .is_some_and(|s| s.selectors().by_pod());
                if server_by_pod {
                    self.collector.count_sends_of(pid);
                }
                // The guard exempts a server or trusted reader pinned by its pod once the pod
                // is named (its exec may have been judged before). Only then: these facts lack
                // the cgroup and user, so they could not take an exemption away fairly.
                let reader_by_pod = self
                    .cfg
                    .readers
                    .iter()
                    .any(|r| r.selectors().by_pod() && r.selectors().matches(&facts));
                if let Some(g) = &mut self.guard
                    && (server_by_pod || reader_by_pod)
                {
                    g.on_exec(pid, &self.cfg, &facts);
                }
            }
        }
        sink.flush();
    }

    /// One event whose pod (if any) is named: the process table learns from it, then it is
    /// judged.
    fn handle_now(&mut self, ev: Event, sink: &mut dyn Sink) {
        match &ev.kind {
            EventKind::ProcExec { .. } | EventKind::ProcExit { .. } => {
                self.views.remove(&ev.task.pid);
            }
            EventKind::ProcFork { child_pid } => {
                self.views.remove(child_pid);
            }
            EventKind::GpuOpen { .. } => self.metrics.set_gpu_processes(self.collector.gpu_processes()),
            _ => {}
        }
        self.procs.observe(&ev);
        let exec = matches!(ev.kind, EventKind::ProcExec { .. }).then_some(ev.task.pid);
        self.judge(ev, sink);
        // An inference server's sends are counted whatever it read (it holds weights in memory).
        if let Some(pid) = exec
            && self.engine.is_server(pid)
        {
            self.collector.count_sends_of(pid);
        }
    }

    /// Servers running when the agent starts: their sends are counted from now on.
    fn count_sends_of_servers(&mut self) {
        let pids: Vec<u32> = self
            .procs
            .iter()
            .filter(|p| p.exited_at.is_none())
            .filter(|p| {
                self.cfg
                    .server_for(&crate::config::ProcessFacts {
                        exe: p.exe.as_deref(),
                        comm: &p.comm,
                        argv: &p.argv,
                        container_id: None,
                        cgroup: None,
                        uid: p.uid,
                        user: None,
                        namespace: None,
                        pod_labels: &std::collections::BTreeMap::new(),
                    })
                    .is_some()
            })
            .map(|p| p.pid)
            .collect();
        for pid in pids {
            self.collector.count_sends_of(pid);
        }
    }

    /// Enriches one event (kernel record or swept counter) and passes it to the metrics, the
    /// output and the rules; the one path every event takes.
    fn judge(&mut self, ev: Event, sink: &mut dyn Sink) {
        if let Some(enriched) = enrich::enrich(ev, &mut self.cx()) {
            if let (EventKind::ProcExec { .. }, Some(g)) = (&enriched.event.kind, &mut self.guard) {
                let p = &enriched.process;
                let facts = crate::rules::facts(p, p.exe.as_deref(), &p.argv);
                g.on_exec(p.pid, &self.cfg, &facts);
            }
            self.count(&enriched);
            sink.emit(Output::Event(&enriched));
            // Before the engine: a hit this event raises already counts its bytes.
            self.incidents.observe(&enriched);
            self.current_ts_ns = Some(enriched.event.ts_ns);
            self.engine.on_event(&enriched, &mut self.alerts);
            self.emit_alerts(sink);
            // After the hits its exit raised (a process is judged on everything it did).
            if let EventKind::ProcExit { .. } = enriched.event.kind {
                let pid = enriched.process.pid;
                self.incidents.on_exit(pid, enriched.time, &mut self.messages);
                self.deliver_messages(sink);
            }
            self.current_ts_ns = None;
        }
    }

    /// One line per missing capability: what is missing, why, and what that costs.
    fn degraded(&self) -> Vec<String> {
        let probes = self.collector.probes();
        let mut out = Vec::new();
        if let Some(why) = &probes.btf_error {
            out.push(format!("kernel BTF missing ({why}): {}", probes::NO_BTF_LOSS));
        }
        if let probes::tracefs::TracefsState::Unavailable(why) = &self.tracefs {
            out.push(format!(
                "tracefs unavailable ({why}): nothing lost (raw and BTF tracepoints do not need it)"
            ));
        }
        if let Some(why) = &self.heartbeat_error {
            out.push(format!(
                "{why}: after a crash or kill, the next start cannot say how long nothing was watched (agent.gap)"
            ));
        }
        if let Some(why) = &probes.hook.hook_path_fallback
            && !why.starts_with("not tried")
        {
            out.push(format!(
                "per-syscall fexit hooks not used ({why}): every syscall on the host pays the sys_exit tracepoint"
            ));
        }
        if let Some(Err(why)) = &probes.fast_path {
            out.push(format!(
                "faster tp_btf syscall hook not used ({why}): the raw tracepoint costs more per syscall"
            ));
        }
        out.extend(probes::capabilities::lost_without());
        for h in probes.hooks.iter().filter(|h| !h.attached) {
            out.push(h.not_attached_line());
        }
        if let Some(g) = &self.guard {
            out.extend(g.degraded(&self.cfg.guard));
        }
        out.extend(self.kubelet_degraded());
        out
    }

    /// `containers.kubelet` set, but the pod list not had: why, and what that loses.
    fn kubelet_degraded(&self) -> Option<String> {
        let why = match (&self.kubelet, &self.kubelet_error) {
            (_, Some(e)) => format!("kubelet pod list not used ({e})"),
            (Some(k), None) => {
                let status = k.status();
                match (status.attempts, status.error) {
                    (_, Some(e)) => format!("kubelet pod list at {} unavailable ({e})", k.url()),
                    (0, None) => format!(
                        "kubelet pod list at {} did not answer within {:?}",
                        k.url(),
                        self.cfg.containers.lookup_timeout
                    ),
                    (_, None) => return None,
                }
            }
            (None, None) => return None,
        };
        let loses = if self.runtime_names_pods {
            "workloads are inferred from pod labels (which whoever creates a pod can set), not read from ownerReferences"
        } else {
            "no container runtime either: pods are not named, events carry the cgroup's pod UID only"
        };
        Some(format!("{why}: {loses}"))
    }

    /// The kubelet's fetches into the metrics: failures counted, `llmwatch_capability` 1 while
    /// its last fetch succeeded.
    fn kubelet_metrics(&mut self) {
        let Some(k) = &self.kubelet else { return };
        let status = k.status();
        self.metrics
            .kubelet_failures(status.failures.saturating_sub(self.kubelet_failures_counted));
        self.kubelet_failures_counted = self.kubelet_failures_counted.max(status.failures);
        self.metrics
            .set_capability("kubelet_pods", status.attempts > 0 && status.error.is_none());
    }

    /// agent.tamper when the kernel's watched set is not what the agent wrote (then restored).
    fn verify_own_maps(&mut self, sink: &mut dyn Sink) {
        let findings = match self.collector.verify_own_maps() {
            Ok(f) => f,
            Err(e) => {
                log::warn!("checking the agent's own maps: {e}");
                return;
            }
        };
        for (map, missing, unexpected) in findings {
            let summary = format!(
                "llmwatch's BPF map {map} was changed by another process ({missing} entries removed, \
                 {unexpected} added): weight-file accesses could go unseen; the agent restored it"
            );
            log::warn!("{summary}");
            let now = self.clock.now();
            self.engine
                .on_agent_tamper(summary, format!("map:{map}"), now, &mut self.alerts);
        }
        self.emit_alerts(sink);
    }

    /// At start: the time nothing watched since the previous run, from its last heartbeat. An
    /// orderly stop before it is only said; anything else (killed, crashed, host down) is
    /// `agent.gap`. Then the first beat of this run.
    fn report_gap(&mut self, sink: &mut dyn Sink) {
        use crate::state::heartbeat::human_seconds;
        let now = chrono::Utc::now();
        if let Some(gap) = self.heartbeat.gap(now) {
            sink.emit(Output::Status(Status::AgentGap { gap: &gap }));
            let span = format!(
                "{} (from {} to {})",
                human_seconds(gap.seconds),
                gap.from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                gap.to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
            if gap.clean {
                log::info!("not watching for {span}: the previous run stopped in order");
            } else {
                let summary = format!(
                    "llmwatch did not watch this host for {span}: the previous run (pid {}) did not \
                     stop in order (killed, crashed, or the host went down); nothing in that window was seen",
                    gap.previous_pid
                );
                log::warn!("{summary}");
                let window = crate::alerts::Window {
                    start: gap.from,
                    end: gap.to,
                };
                self.engine.on_agent_gap(summary, window, &mut self.alerts);
                self.emit_alerts(sink);
            }
        }
        self.beat(false);
    }

    fn beat(&mut self, clean: bool) {
        match self.heartbeat.beat(chrono::Utc::now(), clean) {
            Ok(()) => self.heartbeat_error = None,
            Err(e) => {
                if self.heartbeat_error.is_none() {
                    log::warn!("{e}");
                }
                self.heartbeat_error = Some(e.to_string());
            }
        }
    }

    /// Every flush interval: what the kernel counted but did not report yet, and the pages
    /// touched in mapped weight files.
    fn sweep_live(&mut self, sink: &mut dyn Sink) {
        self.anchor = crate::clock::BootAnchor::now(&*self.clock);
        let mut pending = std::mem::take(&mut self.pending);
        self.collector.sweep_live(&self.procs, &mut pending);
        for ev in pending.drain(..) {
            self.judge(ev, sink);
        }
        self.pending = pending;
    }

    /// Pages touched by processes that just mapped a weight file (see `collector::mappings`).
    fn sample_fresh_mappings(&mut self, sink: &mut dyn Sink) {
        let mut pending = std::mem::take(&mut self.pending);
        self.collector.sample_fresh_mappings(&self.procs, &mut pending);
        if !pending.is_empty() {
            self.anchor = crate::clock::BootAnchor::now(&*self.clock);
            for ev in pending.drain(..) {
                self.judge(ev, sink);
            }
            sink.flush();
        }
        self.pending = pending;
    }

    fn report_drops(&mut self, sink: &mut dyn Sink) {
        let Some(loss) = self.collector.new_losses() else {
            return;
        };
        log::warn!(
            "kernel dropped {} events (ring buffer full); {} in all",
            loss.dropped,
            loss.total
        );
        let time = self.clock.now();
        self.engine.on_event_loss(loss.dropped, time, &mut self.alerts);
        sink.emit(Output::Status(Status::AgentEventLoss {
            time,
            dropped: loss.dropped,
            total_dropped: loss.total,
            stats: &loss.stats,
        }));
        self.emit_alerts(sink);
    }

    /// Hashes watched files listed in the manifest that are new or changed since their last
    /// check, on a blocking thread; mismatches come back through `manifest_rx`.
    fn verify_manifest(&mut self) {
        let Some(path) = self.cfg.manifest.clone() else {
            return;
        };
        let expected = match crate::state::manifest::load(&path) {
            Ok(m) => m,
            Err(e) => {
                log::error!("{e}");
                return;
            }
        };
        let mut todo = Vec::new();
        for f in self.files.iter() {
            for p in std::iter::once(&*f.path).chain(f.aliases.iter().map(PathBuf::as_path)) {
                let Some(want) = expected.get(p) else { continue };
                let stamp = std::fs::metadata(&f.path)
                    .map(|m| (m.len(), std::os::unix::fs::MetadataExt::mtime(&m)))
                    .unwrap_or_default();
                if self.manifest_checked.get(p) != Some(&stamp) {
                    self.manifest_checked.insert(p.to_path_buf(), stamp);
                    todo.push((p.to_path_buf(), f.path.to_path_buf(), want.clone()));
                }
            }
        }
        if todo.is_empty() {
            return;
        }
        log::info!("verifying {} weight files against {}", todo.len(), path.display());
        let tx = self.manifest_tx.clone();
        tokio::task::spawn_blocking(move || {
            for (name, real, want) in todo {
                match crate::state::manifest::sha256_file(&real) {
                    Ok(got) if got == want => log::info!("{}: sha256 matches the manifest", name.display()),
                    Ok(got) => {
                        let _ = tx.send((name, want, got));
                    }
                    Err(e) => log::warn!("{}: cannot hash for the manifest: {e}", real.display()),
                }
            }
        });
    }

    /// The rule hits raised so far go to the incidents; their messages to the receivers.
    fn emit_alerts(&mut self, sink: &mut dyn Sink) {
        if self.alerts.is_empty() {
            return;
        }
        let mut hits = std::mem::take(&mut self.alerts);
        let procs = &self.procs;
        let alive = |pid: u32| procs.get(pid).is_some_and(|p| p.exited_at.is_none());
        for a in hits.drain(..) {
            self.metrics.alert(&a.rule, a.severity.as_str());
            if let Some(ts) = self.current_ts_ns {
                self.metrics
                    .latency(crate::clock::boot_ns_now().saturating_sub(ts) as f64 / 1e9);
            }
            sink.emit(Output::RuleHit(RuleHit::of(&a)));
            self.incidents.on_hit(a, &alive, &mut self.messages);
        }
        self.alerts = hits;
        self.deliver_messages(sink);
    }

    /// Incidents' messages to the webhooks (through the spool) and the sink.
    fn deliver_messages(&mut self, sink: &mut dyn Sink) {
        if self.messages.is_empty() {
            return;
        }
        for m in self.messages.drain(..) {
            if m.status == IncidentStatus::Opened {
                self.metrics.incident_opened(m.alert.severity.as_str());
            }
            if let Some(d) = &self.delivery {
                d.send(&m);
            }
            sink.emit(Output::Incident(&m));
        }
        self.metrics.set_incidents_open(self.incidents.open());
        if let Some(d) = &self.delivery {
            d.set_open_incidents(self.incidents.open_ids());
        }
    }

    /// Per-event counters for the metrics endpoint.
    fn count(&self, e: &Enriched) {
        self.metrics.event(e.event.kind.name());
        let class = |e: &Enriched| {
            if self.engine.is_server(e.process.pid) {
                "inference_server"
            } else {
                "other"
            }
        };
        match &e.event.kind {
            EventKind::FileRead { bytes, .. } if e.weight.is_some() => {
                self.metrics
                    .weight_read(class(e), e.process.container_id.as_deref(), *bytes)
            }
            // Pages touched through a mapping are what was read of it (not the mapped length).
            EventKind::FileTouch { bytes, .. } if e.weight.is_some() => {
                self.metrics
                    .weight_read(class(e), e.process.container_id.as_deref(), *bytes)
            }
            EventKind::NetSend { bytes, .. } => self.metrics.egress(class(e), *bytes),
            _ => {}
        }
    }

    /// Reloads the configuration file. A file with any problem is refused whole and the running
    /// configuration stays; settings that live in the kernel programs need a restart.
    fn reload(&mut self, sink: &mut dyn Sink, forced: bool) {
        let Some(path) = self.config_path.clone() else {
            log::info!("SIGHUP: no --config file to reload");
            return;
        };
        // The directory is watched, so other files in it wake us too: reload only when the
        // file's bytes changed (SIGHUP always reloads).
        let fingerprint = file_fingerprint(&path);
        if !forced && fingerprint.is_some() && fingerprint == self.config_fingerprint {
            return;
        }
        self.config_fingerprint = fingerprint;
        match crate::config::load(&path) {
            Ok(mut new) => {
                for w in &new.warnings {
                    log::warn!("configuration: {w}");
                }
                if let Some(o) = &self.overrides {
                    o(&mut new);
                }
                new.egress.resolve();
                if let Ok(host) = std::env::var("LLMWATCH_HOST")
                    && !host.is_empty()
                {
                    new.host = host;
                }
                let mut restart_needed = Vec::new();
                if new.read_report_bytes != self.cfg.read_report_bytes {
                    restart_needed.push("kernel.read_report_bytes");
                }
                if new.send_report_bytes != self.cfg.send_report_bytes {
                    restart_needed.push("kernel.send_report_bytes");
                }
                if new.extra_gpu_majors != self.cfg.extra_gpu_majors {
                    restart_needed.push("gpu.extra_majors");
                }
                if new.state_dir != self.cfg.state_dir {
                    restart_needed.push("state_dir");
                }
                if new.containers.runtime != self.cfg.containers.runtime
                    || new.containers.runtime_socket != self.cfg.containers.runtime_socket
                {
                    restart_needed.push("containers.runtime / containers.runtime_socket");
                }
                if new.containers.kubelet != self.cfg.containers.kubelet {
                    restart_needed.push("containers.kubelet");
                }
                self.collector
                    .set_inference_ports(&self.cfg.inference_ports, &new.inference_ports);
                if new.guard.enabled != self.cfg.guard.enabled
                    || crate::guard::kernel_settings(&new.guard)
                        != crate::guard::kernel_settings(&self.cfg.guard)
                {
                    restart_needed.push("guard (on/off and the budget live in the kernel programs)");
                }
                if let Some(g) = &mut self.guard {
                    g.sync_nets(&new.egress);
                    g.sync_exes(&new);
                    g.sync_files(&self.files, &new.guard);
                }
                let roots_changed = new.model_dirs != self.cfg.model_dirs;
                let assets_changed = new.assets != self.cfg.assets;
                let new = Arc::new(new);
                self.cfg = new.clone();
                self.pods.set_keep(
                    new.pod_label_keys(),
                    new.containers.refresh_interval,
                    new.containers.lookup_timeout,
                );
                self.views.clear();
                self.incidents.set_idle(new.incidents.idle);
                self.engine.set_config(new);
                if roots_changed {
                    restart_needed.push("models.dirs (watched now, but new directories are only noticed on change after a restart)");
                }
                if assets_changed {
                    restart_needed.push("assets (watched now, but new directories are only noticed on change after a restart)");
                }
                if roots_changed || assets_changed {
                    self.files = watched_set(&self.cfg);
                    if let Err(e) = self.rescan() {
                        log::error!("rescan after reload: {e:#}");
                    }
                }
                self.metrics.config_reload(true);
                log::info!("configuration reloaded from {}", path.display());
                sink.emit(Output::Status(Status::ConfigReload {
                    ok: true,
                    path: &path,
                    error: None,
                    restart_needed,
                }));
            }
            Err(e) => {
                self.metrics.config_reload(false);
                log::error!("configuration reload refused, keeping the running one: {e}");
                sink.emit(Output::Status(Status::ConfigReload {
                    ok: false,
                    path: &path,
                    error: Some(e.to_string()),
                    restart_needed: vec![],
                }));
            }
        }
        sink.flush();
    }
}

/// The files `cfg` protects: weights under the model directories, and the assets its globs name.
fn watched_set(cfg: &Config) -> WatchedSet {
    WatchedSet::new(cfg.model_dirs.clone()).with_assets(cfg.assets.clone())
}

/// A hash of a file's bytes (None when it cannot be read).
fn file_fingerprint(path: &std::path::Path) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let bytes = std::fs::read(path).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

/// Writes every output as one JSON line to stdout.
pub struct JsonLines<W: std::io::Write> {
    out: W,
    /// One line is serialized here first (reused: `events` prints every event).
    line: Vec<u8>,
}

impl<W: std::io::Write> JsonLines<W> {
    pub fn new(out: W) -> Self {
        JsonLines {
            out,
            line: Vec::new(),
        }
    }
}

impl<W: std::io::Write> Sink for JsonLines<W> {
    fn emit(&mut self, out: Output<'_>) {
        // Whole lines only: a value that fails half-way must not leave a fragment on stdout.
        self.line.clear();
        match serde_json::to_writer(&mut self.line, &out) {
            Ok(()) => {
                self.line.push(b'\n');
                let _ = self.out.write_all(&self.line);
            }
            Err(e) => log::error!("an output could not be written as JSON and is lost: {e}"),
        }
    }
    fn flush(&mut self) {
        let _ = self.out.flush();
    }
}

/// `run` without `--events`: incidents' messages as JSON lines on stdout, status lines in the
/// log, and a per-minute count of the events the rules saw.
pub struct AlertsOnly<W: std::io::Write> {
    out: W,
    pub by_kind: std::collections::BTreeMap<&'static str, u64>,
    since: std::time::Instant,
}

impl<W: std::io::Write> AlertsOnly<W> {
    pub fn new(out: W) -> Self {
        AlertsOnly {
            out,
            by_kind: Default::default(),
            since: std::time::Instant::now(),
        }
    }
}

impl<W: std::io::Write> Sink for AlertsOnly<W> {
    fn emit(&mut self, out: Output<'_>) {
        match out {
            Output::Event(e) => {
                *self.by_kind.entry(e.event.kind.name()).or_default() += 1;
            }
            // The rules' own hits are folded into the incidents printed here.
            Output::RuleHit(_) => {}
            Output::Incident(m) => {
                if serde_json::to_writer(&mut self.out, m).is_ok() {
                    let _ = self.out.write_all(b"\n");
                }
            }
            Output::Status(s) => {
                if let Ok(line) = serde_json::to_string(&s) {
                    log::info!("{line}");
                }
            }
        }
    }

    fn flush(&mut self) {
        let _ = self.out.flush();
        if self.since.elapsed() >= std::time::Duration::from_secs(60) && !self.by_kind.is_empty() {
            log::info!(
                "events in the last {} s: {:?}",
                self.since.elapsed().as_secs(),
                self.by_kind
            );
            self.by_kind.clear();
            self.since = std::time::Instant::now();
        }
    }
}
