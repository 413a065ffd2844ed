//! Prometheus metrics of the agent, and the HTTP endpoint that serves them.
//!
//! Metric names and labels are a contract (dashboards and alerting rules rely on them); see
//! `deploy/grafana/llmwatch.json`. Every label has a bounded set of values: event kinds, hooks,
//! rules, severities and outcomes come from the code, and container ids are capped at
//! [`MAX_CONTAINERS`] distinct values. Everything is registered on the agent's own
//! [`Registry`], never on the process-global one.
use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
};

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

mod server;
#[cfg(test)]
mod tests;

pub use server::{Health, serve};

/// Where the endpoint listens unless configured otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9477";

/// `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// Distinct `container` values of `llmwatch_weight_read_bytes_total` (besides `host` and
/// `other`); readers in further containers are counted under `other`.
pub const MAX_CONTAINERS: usize = 64;

/// Length of the container id prefix used as a label value (as `docker ps` shows it).
pub const CONTAINER_ID_LEN: usize = 12;

/// Upper bounds of `llmwatch_event_to_alert_seconds`: 1 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Values of `outcome` in `llmwatch_webhook_deliveries_total`.
pub const DELIVERY_OUTCOMES: &[&str] = &["delivered", "retried", "failed", "spooled", "dropped"];

/// Values of `severity` (as alerts spell them).
pub const SEVERITIES: &[&str] = &["info", "low", "medium", "high", "critical"];

/// Values of `class` in the byte counters.
pub const PROCESS_CLASSES: &[&str] = &["inference_server", "other"];

/// The name (as events spell it, e.g. `file_read`) of a kernel event kind number.
pub fn kind_name(kind: u32) -> &'static str {
    use llmwatch_common::event::kind as k;
    match kind {
        k::FILE_OPEN => "file_open",
        k::FILE_OPEN_DENIED => "file_open_denied",
        k::FILE_READ => "file_read",
        k::FILE_MMAP => "file_mmap",
        k::FILE_TAMPER => "file_tamper",
        k::NET_CONNECT => "net_connect",
        k::NET_SEND => "net_send",
        k::NET_ACCEPT => "net_accept",
        k::PROC_EXEC => "proc_exec",
        k::PROC_FORK => "proc_fork",
        k::PROC_EXIT => "proc_exit",
        k::GPU_OPEN => "gpu_open",
        k::PROC_ACCESS => "proc_access",
        k::BPF_LOAD => "bpf_load",
        k::BPF_ACCESS => "bpf_access",
        k::FILE_TOUCH => "file_touch",
        llmwatch_common::guard::KIND => "guard",
        _ => "unknown",
    }
}

/// The kernel's cumulative counters that [`Metrics`] turns into counter increments.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Cumulative {
    Drops,
    Events,
}

/// The agent's metrics. All methods take `&self`: share it as an `Arc<Metrics>`.
pub struct Metrics {
    pub registry: Registry,
    /// `llmwatch_events_total{kind}`: enriched events passed on, by kind.
    pub events: IntCounterVec,
    /// `llmwatch_kernel_ringbuf_drops_total{kind}`: events the kernel lost (ring buffer full).
    pub kernel_ringbuf_drops: IntCounterVec,
    /// `llmwatch_kernel_events_total{kind}`: events the kernel submitted.
    pub kernel_events: IntCounterVec,
    /// `llmwatch_hook_attached{hook}`: 1 when the hook is attached, 0 when not.
    pub hook_attached: IntGaugeVec,
    /// `llmwatch_capability{capability}`: 1 when the host provides it (kernel_btf, tracefs,
    /// tp_btf_syscall_hook; kubelet_pods while the kubelet's pod list answers), 0 when the
    /// agent runs without it.
    pub capability: IntGaugeVec,
    /// `llmwatch_data_path{what, path}`: 1 for the path chosen for reads, sends, mmap touches
    /// and io_uring on this kernel (see `probes::DataPaths`).
    pub data_path: IntGaugeVec,
    /// `llmwatch_hook_path{path}`: 1 for the syscall-level hooks in use, "fentry" (per-syscall
    /// fexit programs) or "tracepoint" (`sys_exit`).
    pub hook_path: IntGaugeVec,
    /// `llmwatch_watched_files`.
    pub watched_files: IntGauge,
    /// `llmwatch_watched_bytes`.
    pub watched_bytes: IntGauge,
    /// `llmwatch_weight_read_bytes_total{class, container}`.
    pub weight_read_bytes: IntCounterVec,
    /// `llmwatch_egress_bytes_total{class}`.
    pub egress_bytes: IntCounterVec,
    /// `llmwatch_gpu_processes`.
    pub gpu_processes: IntGauge,
    /// `llmwatch_alerts_total{rule, severity}`: rule hits (before they are folded into incidents).
    pub alerts: IntCounterVec,
    /// `llmwatch_incidents_total{severity}`: incidents opened, by their severity then.
    pub incidents: IntCounterVec,
    /// `llmwatch_incidents_open`.
    pub incidents_open: IntGauge,
    /// `llmwatch_alerts_suppressed_total{rule}`.
    pub alerts_suppressed: IntCounterVec,
    /// `llmwatch_webhook_deliveries_total{outcome}`.
    pub webhook_deliveries: IntCounterVec,
    /// `llmwatch_spool_depth`.
    pub spool_depth: IntGauge,
    /// `llmwatch_spool_dropped_total{severity}`.
    pub spool_dropped: IntCounterVec,
    /// `llmwatch_spool_write_errors_total`.
    pub spool_write_errors: IntCounter,
    /// `llmwatch_event_to_alert_seconds`.
    pub event_to_alert_seconds: Histogram,
    /// `llmwatch_config_reloads_total{result}`.
    pub config_reloads: IntCounterVec,
    /// `llmwatch_decode_errors_total`.
    pub decode_errors: IntCounter,
    /// `llmwatch_pod_unnamed_events_total`.
    pub pod_unnamed_events: IntCounter,
    /// `llmwatch_kubelet_fetch_failures_total`: fetches of the kubelet's pod list that failed.
    pub kubelet_fetch_failures: IntCounter,
    /// `llmwatch_build_info{version}`, always 1.
    pub build_info: IntGaugeVec,
    /// Container label values handed out so far (at most [`MAX_CONTAINERS`]).
    containers: Mutex<HashSet<String>>,
    /// Last cumulative value seen per kernel counter and kind.
    cumulative: Mutex<HashMap<(Cumulative, String), u64>>,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
    registry.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid gauge");
    registry.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn clamp_i64<T: TryInto<i64>>(n: T) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

impl Metrics {
    /// Creates and registers every metric (and the process collector) on a new registry.
    pub fn new() -> Self {
        let r = Registry::new();
        let events = counter_vec(
            &r,
            "llmwatch_events_total",
            "Enriched events passed on by the agent, by kind.",
            &["kind"],
        );
        let kernel_ringbuf_drops = counter_vec(
            &r,
            "llmwatch_kernel_ringbuf_drops_total",
            "Events the kernel programs lost because the ring buffer was full, by kind.",
            &["kind"],
        );
        let kernel_events = counter_vec(
            &r,
            "llmwatch_kernel_events_total",
            "Events the kernel programs submitted to the ring buffer, by kind.",
            &["kind"],
        );
        let hook_attached = IntGaugeVec::new(
            Opts::new(
                "llmwatch_hook_attached",
                "Whether a kernel hook is attached (1) or not (0).",
            ),
            &["hook"],
        )
        .expect("valid gauge");
        r.register(Box::new(hook_attached.clone()))
            .expect("unique metric");
        let capability = IntGaugeVec::new(
            Opts::new(
                "llmwatch_capability",
                "Whether a host capability the agent uses is present (1) or missing, degraded (0).",
            ),
            &["capability"],
        )
        .expect("valid gauge");
        r.register(Box::new(capability.clone())).expect("unique metric");
        let data_path = IntGaugeVec::new(
            Opts::new(
                "llmwatch_data_path",
                "The way each kind of data reaches the agent on this kernel (1 for the path in use).",
            ),
            &["what", "path"],
        )
        .expect("valid gauge");
        r.register(Box::new(data_path.clone())).expect("unique metric");
        let hook_path = IntGaugeVec::new(
            Opts::new(
                "llmwatch_hook_path",
                "The syscall-level hooks in use (1): fentry (per-syscall fexit programs) or tracepoint (sys_exit).",
            ),
            &["path"],
        )
        .expect("valid gauge");
        r.register(Box::new(hook_path.clone())).expect("unique metric");
        let watched_files = gauge(
            &r,
            "llmwatch_watched_files",
            "Files currently watched: weights and the other assets configured globs name.",
        );
        let watched_bytes = gauge(
            &r,
            "llmwatch_watched_bytes",
            "Total size of the files currently watched (weights and other assets).",
        );
        let weight_read_bytes = counter_vec(
            &r,
            "llmwatch_weight_read_bytes_total",
            "Bytes read from watched weight files, by reader class and container (id prefix, host or other).",
            &["class", "container"],
        );
        let egress_bytes = counter_vec(
            &r,
            "llmwatch_egress_bytes_total",
            "Bytes sent to the network, by sender class.",
            &["class"],
        );
        let gpu_processes = gauge(&r, "llmwatch_gpu_processes", "Processes currently using a GPU.");
        let alerts = counter_vec(
            &r,
            "llmwatch_alerts_total",
            "Rule hits raised, by rule and severity (folded into incidents before they are sent).",
            &["rule", "severity"],
        );
        let incidents = counter_vec(
            &r,
            "llmwatch_incidents_total",
            "Incidents opened (rule hits about one process tree or rate key, folded), by severity at opening.",
            &["severity"],
        );
        let incidents_open = gauge(&r, "llmwatch_incidents_open", "Incidents open now.");
        let alerts_suppressed = counter_vec(
            &r,
            "llmwatch_alerts_suppressed_total",
            "Repeats of an alert suppressed by its rule's suppression window, by rule.",
            &["rule"],
        );
        let webhook_deliveries = counter_vec(
            &r,
            "llmwatch_webhook_deliveries_total",
            "Webhook delivery attempts, by outcome (delivered, retried, failed, spooled, dropped).",
            &["outcome"],
        );
        let spool_depth = gauge(
            &r,
            "llmwatch_spool_depth",
            "Alerts waiting in the on-disk spool for delivery.",
        );
        let spool_dropped = counter_vec(
            &r,
            "llmwatch_spool_dropped_total",
            "Alerts dropped because the spool was full, by severity.",
            &["severity"],
        );
        let spool_write_errors = IntCounter::new(
            "llmwatch_spool_write_errors_total",
            "Alerts the spool could not write to disk (full, I/O error): held in memory (bounded), \
             delivered from there and written when the disk takes writes again; losses are in \
             llmwatch_spool_dropped_total.",
        )
        .expect("valid counter");
        r.register(Box::new(spool_write_errors.clone()))
            .expect("unique metric");
        let event_to_alert_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "llmwatch_event_to_alert_seconds",
                "Time from the kernel event that completed an alert to the alert being emitted.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid histogram");
        r.register(Box::new(event_to_alert_seconds.clone()))
            .expect("unique metric");
        let config_reloads = counter_vec(
            &r,
            "llmwatch_config_reloads_total",
            "Configuration reloads, by result (ok, error).",
            &["result"],
        );
        let decode_errors = IntCounter::new(
            "llmwatch_decode_errors_total",
            "Kernel records the agent could not decode.",
        )
        .expect("valid counter");
        r.register(Box::new(decode_errors.clone()))
            .expect("unique metric");
        let pod_unnamed_events = IntCounter::new(
            "llmwatch_pod_unnamed_events_total",
            "Events of a container judged without its pod's names: the runtime failed, did not answer within containers.lookup_timeout, or too many events waited.",
        )
        .expect("valid counter");
        r.register(Box::new(pod_unnamed_events.clone()))
            .expect("unique metric");
        let kubelet_fetch_failures = IntCounter::new(
            "llmwatch_kubelet_fetch_failures_total",
            "Fetches of the kubelet's pod list (containers.kubelet) that failed: unreachable, refused (401/403), or not a pod list. While it fails, owners are inferred from pod labels.",
        )
        .expect("valid counter");
        r.register(Box::new(kubelet_fetch_failures.clone()))
            .expect("unique metric");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "llmwatch_build_info",
                "Always 1; the version label says which agent is running.",
            ),
            &["version"],
        )
        .expect("valid gauge");
        r.register(Box::new(build_info.clone())).expect("unique metric");
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);

        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("unique metric");

        // Series with known label values start at 0, so rate() and increase() see the first one.
        for kind in (1..llmwatch_common::event::kind::COUNT)
            .map(kind_name)
            .filter(|k| *k != "unknown")
        {
            events.with_label_values(&[kind]);
            kernel_ringbuf_drops.with_label_values(&[kind]);
            kernel_events.with_label_values(&[kind]);
        }
        for class in PROCESS_CLASSES {
            weight_read_bytes.with_label_values(&[class, "host"]);
            egress_bytes.with_label_values(&[class]);
        }
        for outcome in DELIVERY_OUTCOMES {
            webhook_deliveries.with_label_values(&[outcome]);
        }
        for severity in SEVERITIES {
            spool_dropped.with_label_values(&[severity]);
            incidents.with_label_values(&[severity]);
        }
        for result in ["ok", "error"] {
            config_reloads.with_label_values(&[result]);
        }

        Metrics {
            registry: r,
            events,
            kernel_ringbuf_drops,
            kernel_events,
            hook_attached,
            capability,
            data_path,
            hook_path,
            watched_files,
            watched_bytes,
            weight_read_bytes,
            egress_bytes,
            gpu_processes,
            alerts,
            incidents,
            incidents_open,
            alerts_suppressed,
            webhook_deliveries,
            spool_depth,
            spool_dropped,
            spool_write_errors,
            event_to_alert_seconds,
            config_reloads,
            decode_errors,
            pod_unnamed_events,
            kubelet_fetch_failures,
            build_info,
            containers: Mutex::new(HashSet::new()),
            cumulative: Mutex::new(HashMap::new()),
        }
    }

    /// Everything, in the text exposition format 0.0.4 ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# llmwatch: encoding metrics failed: {e}\n"))
    }

    /// One enriched event of `kind` (`file_read`, `proc_exec`, ...) was passed on.
    pub fn event(&self, kind: &str) {
        self.events.with_label_values(&[kind]).inc();
    }

    /// The kernel's cumulative count of events of `kind` lost to a full ring buffer.
    pub fn set_kernel_drops(&self, kind: &str, cumulative: u64) {
        self.advance(Cumulative::Drops, &self.kernel_ringbuf_drops, kind, cumulative);
    }

    /// The kernel's cumulative count of events of `kind` submitted.
    pub fn set_kernel_events(&self, kind: &str, cumulative: u64) {
        self.advance(Cumulative::Events, &self.kernel_events, kind, cumulative);
    }

    /// Both kernel counters at once, as `(kind number, cumulative)` pairs (`KernelStats`'
    /// `ringbuf_drops` and `events`).
    pub fn set_kernel_counters(&self, drops: &[(u32, u64)], events: &[(u32, u64)]) {
        for &(kind, n) in drops {
            self.set_kernel_drops(kind_name(kind), n);
        }
        for &(kind, n) in events {
            self.set_kernel_events(kind_name(kind), n);
        }
    }

    /// Adds what `cumulative` grew by beyond the largest value seen so far. A smaller value (a
    /// failed map read counts as 0) adds nothing, and is not taken as a reset: the kernel's
    /// counters live as long as the agent, so counting it all again would count twice.
    fn advance(&self, which: Cumulative, counter: &IntCounterVec, kind: &str, cumulative: u64) {
        let mut seen = self.cumulative.lock().unwrap_or_else(|e| e.into_inner());
        let last = seen.entry((which, kind.to_string())).or_insert(0);
        let delta = cumulative.saturating_sub(*last);
        *last = (*last).max(cumulative);
        counter.with_label_values(&[kind]).inc_by(delta);
    }

    pub fn set_capability(&self, capability: &str, present: bool) {
        self.capability
            .with_label_values(&[capability])
            .set(i64::from(present));
    }

    pub fn set_data_path(&self, what: &str, path: &str) {
        self.data_path.with_label_values(&[what, path]).set(1);
    }

    pub fn set_hook_path(&self, path: &str) {
        self.hook_path.with_label_values(&[path]).set(1);
    }

    pub fn set_hook(&self, hook: &str, attached: bool) {
        self.hook_attached
            .with_label_values(&[hook])
            .set(i64::from(attached));
    }

    pub fn set_watched(&self, files: usize, bytes: u64) {
        self.watched_files.set(clamp_i64(files));
        self.watched_bytes.set(clamp_i64(bytes));
    }

    /// `bytes` read from weight files by a process of `class` (`inference_server`, or anything
    /// else, counted as `other`) in `container` (a container id, or `None` on the host).
    pub fn weight_read(&self, class: &str, container: Option<&str>, bytes: u64) {
        let class = if class == "inference_server" {
            class
        } else {
            "other"
        };
        let container = self.container_label(container);
        self.weight_read_bytes
            .with_label_values(&[class, &container])
            .inc_by(bytes);
    }

    /// The label value for a container: its 12-character id prefix, `host` for none, and
    /// `other` once [`MAX_CONTAINERS`] distinct containers have been seen.
    fn container_label(&self, container: Option<&str>) -> String {
        let id = match container.map(str::trim) {
            None | Some("") => return "host".to_string(),
            Some(id) => id,
        };
        let end = id
            .char_indices()
            .nth(CONTAINER_ID_LEN)
            .map_or(id.len(), |(i, _)| i);
        let id = &id[..end];
        let mut seen = self.containers.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(id) {
            id.to_string()
        } else if seen.len() < MAX_CONTAINERS {
            seen.insert(id.to_string());
            id.to_string()
        } else {
            "other".to_string()
        }
    }

    /// `bytes` sent to the network by a process of `class`.
    pub fn egress(&self, class: &str, bytes: u64) {
        self.egress_bytes.with_label_values(&[class]).inc_by(bytes);
    }

    pub fn set_gpu_processes(&self, n: usize) {
        self.gpu_processes.set(clamp_i64(n));
    }

    pub fn alert(&self, rule: &str, severity: &str) {
        self.alerts.with_label_values(&[rule, severity]).inc();
    }

    /// An incident was opened at `severity`.
    pub fn incident_opened(&self, severity: &str) {
        self.incidents.with_label_values(&[severity]).inc();
    }

    pub fn set_incidents_open(&self, n: usize) {
        self.incidents_open.set(clamp_i64(n));
    }

    /// Creates the `{rule, severity}` series at 0 (call at start for each enabled rule), so
    /// the first alert shows in `increase()`.
    pub fn init_alert(&self, rule: &str, severity: &str) {
        self.alerts.with_label_values(&[rule, severity]);
        self.alerts_suppressed.with_label_values(&[rule]);
    }

    /// `n` repeats of `rule`'s alert were suppressed.
    pub fn alerts_suppressed(&self, rule: &str, n: u64) {
        self.alerts_suppressed.with_label_values(&[rule]).inc_by(n);
    }

    /// One webhook delivery attempt ended with `outcome` (see [`DELIVERY_OUTCOMES`]).
    pub fn delivery(&self, outcome: &str) {
        self.webhook_deliveries.with_label_values(&[outcome]).inc();
    }

    pub fn set_spool_depth(&self, alerts: usize) {
        self.spool_depth.set(clamp_i64(alerts));
    }

    /// An alert of `severity` was dropped because the spool was full.
    pub fn spool_dropped(&self, severity: &str) {
        self.spool_dropped.with_label_values(&[severity]).inc();
    }

    /// An alert could not be written to the spool and is held in memory instead.
    pub fn spool_write_error(&self) {
        self.spool_write_errors.inc();
    }

    /// Seconds from the event that completed an alert to the alert. Negative values (clock
    /// steps) count as 0; NaN and infinities are ignored.
    pub fn latency(&self, seconds: f64) {
        if seconds.is_finite() {
            self.event_to_alert_seconds.observe(seconds.max(0.0));
        }
    }

    pub fn config_reload(&self, ok: bool) {
        self.config_reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    pub fn decode_error(&self) {
        self.decode_errors.inc();
    }

    pub fn pod_lookup_unnamed(&self, events: u64) {
        self.pod_unnamed_events.inc_by(events);
    }

    pub fn kubelet_failures(&self, failures: u64) {
        self.kubelet_fetch_failures.inc_by(failures);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
