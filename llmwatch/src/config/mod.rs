//! Agent settings: built-in defaults that work with no file, and the YAML file that overrides
//! them (`docs/configuration.md` describes every key).
//!
//! Loading is all-or-nothing: every problem in a file is collected in one pass (each with its
//! dotted key path and line) and any problem rejects the file, so a typo can never leave the
//! agent running on a half-applied configuration.
pub mod defaults;
pub mod guard;
pub mod incidents;
pub mod rules;
mod types;
mod validate;
mod values;
mod yaml;

#[cfg(test)]
mod tests;

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

pub use rules::{RuleCommon, RuleSettings};
pub use types::{
    BusinessHours, COMM_LEN, EgressAllow, EgressEntry, EgressTarget, ExfilTool, LabelMatch, Maintenance,
    Pattern, ProcessFacts, ReaderIdentity, Selectors, ServerIdentity, Severity, UserRef,
};

pub(crate) use types::basename;

/// Every rule's settings (`rules:`), gathered by the rule registry.
pub type Rules = crate::rules::Settings;

use crate::state::files::{AssetPattern, default_roots};

/// Local ports whose accepted connections are reported: vLLM/TGI/Triton HTTP (8000, 8080),
/// Triton gRPC/metrics (8001, 8002), Ollama (11434), llama.cpp server (8080), SGLang (30000).
pub const DEFAULT_INFERENCE_PORTS: &[u16] = &[8000, 8001, 8002, 8080, 11434, 30000];

/// The agent's own files on the host (heartbeat; the spool below it by default).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/llmwatch";

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Directories searched for weight files.
    pub model_dirs: Vec<PathBuf>,
    /// Other files to protect (datasets, adapters, tokenizers...), by glob, with their class.
    pub assets: Vec<AssetPattern>,
    pub inference_ports: Vec<u16>,
    /// Kernel reports bytes read per descriptor every this many bytes (and on first read/close).
    pub read_report_bytes: u64,
    /// Same for bytes sent per destination.
    pub send_report_bytes: u64,
    /// Extra GPU/accelerator majors beyond the fixed and /proc/devices ones.
    pub extra_gpu_majors: Vec<u32>,
    /// How often in-kernel counters of live processes are swept into events.
    pub flush_interval: Duration,
    /// Name of this host on alerts.
    pub host: String,
    /// Known-good hashes of weight files (`sha256sum` format).
    pub manifest: Option<PathBuf>,
    /// Inference servers, first match wins.
    pub servers: Vec<ServerIdentity>,
    /// Programs trusted to read protected files (integrity checks, backups, model sync).
    pub readers: Vec<ReaderIdentity>,
    /// Where inference servers may connect.
    pub egress: EgressAllow,
    pub business_hours: BusinessHours,
    /// Programs that may use GPUs (globs on comm, exe path or exe file name).
    pub gpu_allow: Vec<Pattern>,
    pub exfil_tools: Vec<ExfilTool>,
    pub rules: Rules,
    /// Where /metrics, /healthz and /readyz are served; None turns the endpoint off.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Receivers every alert is POSTed to.
    pub webhooks: Vec<WebhookConfig>,
    /// Durable queue of alerts not yet delivered to every webhook.
    pub spool: SpoolConfig,
    /// When rule hits folded into one incident are over.
    pub incidents: incidents::IncidentsConfig,
    /// Blocking in the kernel (opt-in; absent: off).
    pub guard: guard::GuardConfig,
    /// Where the agent keeps its heartbeat (how long it was not watching after a restart).
    pub state_dir: PathBuf,
    /// Where pod identity (namespace, pod, container, labels) comes from.
    pub containers: ContainersConfig,
    /// Use the raw tracepoint for the syscall hook even where tp_btf is allowed (command line
    /// `--syscall-hook raw`; for comparing the two and for testing the fallback).
    pub force_raw_syscall_hook: bool,
    /// Use the `sys_exit` tracepoint even where the per-syscall fexit programs load (command
    /// line `--syscall-hook tracepoint`, implied by `raw`): to compare the paths and to test
    /// the fallback on a kernel that has the faster one.
    pub force_tracepoint_hooks: bool,
    /// Count bytes sent at syscall exit even where `sock_send_length` exists (command line
    /// `--send-path syscalls`: the 6.1 path, testable on newer kernels).
    pub force_syscall_sends: bool,
    /// Touched mapping pages from /proc/PID/smaps samples only (command line `--mmap-touch
    /// smaps`: the path of kernels without the filemap fault tracepoints).
    pub force_smaps_touch: bool,
    /// The kernel's BTF (command line `--kernel-btf`; default /sys/kernel/btf/vmlinux). Without
    /// it the agent runs degraded (see `probes::NO_BTF_LOSS`).
    pub kernel_btf: std::path::PathBuf,
    /// Where tracefs is, or is mounted when missing (command line `--tracefs`).
    pub tracefs: std::path::PathBuf,
    /// What the file asks for that is accepted but probably not meant (weak identities,
    /// port-only egress entries): printed by `config validate`, logged at load.
    pub warnings: Vec<Problem>,
}

/// One webhook receiver as configured (the sink turns it into a delivery target).
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    /// http:// or https:// URL.
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// HMAC-SHA256 signing secret, read from this file...
    pub secret_file: Option<PathBuf>,
    /// ...or from this environment variable (never from the YAML itself, so it is never printed).
    pub secret_env: Option<String>,
    pub timeout: Duration,
    /// "raw" (the alert JSON), "slack" or "alertmanager".
    pub preset: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    /// Alerts the disk has not taken yet (not written, or refused: disk full) wait in memory up
    /// to this many bytes; past it the oldest lowest-severity one is evicted and counted.
    pub memory_max_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: PathBuf::from(DEFAULT_STATE_DIR).join("spool"),
            max_bytes: 64 << 20,
            memory_max_bytes: 8 << 20,
        }
    }
}

/// Which container runtime API names the pods (`containers.runtime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeApi {
    /// By the socket found: containerd's own API on containerd's socket, the CRI on CRI-O's.
    Auto,
    /// containerd's API (its containers and their labels, in every containerd namespace).
    Containerd,
    /// The Kubernetes CRI (CRI-O; containerd's CRI plugin too).
    Cri,
    /// Do not ask any runtime: events carry no pod names (only the cgroup's pod UID).
    Off,
}

/// Sockets tried, in order, when `containers.runtime_socket` is not set: containerd's, then
/// CRI-O's (where the DaemonSet mounts them).
pub const DEFAULT_RUNTIME_SOCKETS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/var/run/crio/crio.sock",
];

/// Pod label keys copied onto events and alerts by default: the names Kubernetes recommends
/// for what an application is, none of them likely to hold a secret or many values.
pub const DEFAULT_POD_LABELS: &[&str] = &[
    "app",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
];

/// Where pod identity comes from (`containers:`).
#[derive(Debug, Clone, PartialEq)]
pub struct ContainersConfig {
    pub runtime: RuntimeApi,
    /// The runtime's socket; `None`: the first of `DEFAULT_RUNTIME_SOCKETS` that exists.
    pub runtime_socket: Option<PathBuf>,
    /// Pod label keys copied onto events and alerts (never all labels: their values can be
    /// many, and some hold what should not travel with every event). Keys that selectors name
    /// are kept too.
    pub pod_labels: Vec<String>,
    /// How long a container the runtime did not name (or a failed lookup) stays unnamed before
    /// the runtime is asked again.
    pub refresh_interval: Duration,
    /// How long a new container's events wait for the runtime's answer before they are judged
    /// without pod names.
    pub lookup_timeout: Duration,
    /// The kubelet's pod list (`containers.kubelet`), the source of ownerReferences; `None`
    /// (the default): not asked.
    pub kubelet: Option<KubeletConfig>,
}

impl Default for ContainersConfig {
    fn default() -> Self {
        ContainersConfig {
            runtime: RuntimeApi::Auto,
            runtime_socket: None,
            pod_labels: DEFAULT_POD_LABELS.iter().map(|s| s.to_string()).collect(),
            refresh_interval: Duration::from_secs(30),
            lookup_timeout: Duration::from_secs(2),
            kubelet: None,
        }
    }
}

/// The kubelet's authenticated API (`containers.kubelet`): its `/pods` list names each pod's
/// owner (ownerReferences), which no container runtime holds.
#[derive(Debug, Clone, PartialEq)]
pub struct KubeletConfig {
    /// The kubelet's base URL, `https://host:port` (`/pods` is appended). `${NAME}` stands for
    /// the environment variable NAME, read when the agent starts (the DaemonSet sets the node's
    /// IP in one from the downward API).
    pub url: String,
    /// The bearer token, read again before every request (bound service-account tokens rotate).
    pub token_file: PathBuf,
    /// PEM CA bundle the kubelet's serving certificate must chain to.
    pub ca_file: PathBuf,
    /// Accept any serving certificate (kubelets whose certificate is self-signed and whose CA
    /// is not at hand). The token still goes only to `url`.
    pub insecure_skip_verify: bool,
    /// How often the pod list is fetched even without a miss.
    pub refresh: Duration,
}

/// Where a pod's service-account token and the cluster CA are mounted.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// `containers.kubelet.url` when not set: the kubelet's authenticated port on the node's IP, which
/// the DaemonSet passes in NODE_IP (the read-only port 10255 is off on current clusters).
pub const DEFAULT_KUBELET_URL: &str = "https://${NODE_IP}:10250";

impl Default for KubeletConfig {
    fn default() -> Self {
        KubeletConfig {
            url: DEFAULT_KUBELET_URL.into(),
            token_file: PathBuf::from(SERVICE_ACCOUNT_DIR).join("token"),
            ca_file: PathBuf::from(SERVICE_ACCOUNT_DIR).join("ca.crt"),
            insecure_skip_verify: false,
            refresh: Duration::from_secs(60),
        }
    }
}

impl KubeletConfig {
    /// The URL of the pod list, with each `${NAME}` replaced by `env(NAME)`. Errors name the
    /// variable that is not set or the part of the URL that is wrong.
    pub fn pods_url(&self, env: impl Fn(&str) -> Option<String>) -> Result<url::Url, String> {
        let mut expanded = String::new();
        let mut rest = self.url.as_str();
        while let Some(at) = rest.find("${") {
            expanded.push_str(&rest[..at]);
            let after = &rest[at + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("{:?}: \"${{\" without its closing \"}}\"", self.url))?;
            let name = &after[..end];
            let name_ok = name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !name_ok {
                return Err(format!(
                    "{:?}: ${{{name}}} is not an environment variable name",
                    self.url
                ));
            }
            match env(name).filter(|v| !v.is_empty()) {
                Some(v) => expanded.push_str(&v),
                None => {
                    return Err(format!(
                        "{:?} names ${{{name}}}, which is not set in the agent's environment",
                        self.url
                    ));
                }
            }
            rest = &after[end + 1..];
        }
        expanded.push_str(rest);
        let bad = |why: &str| format!("{:?}: {why}", self.url);
        let mut url = url::Url::parse(&expanded).map_err(|e| bad(&format!("not a URL ({e})")))?;
        if url.scheme() != "https" {
            return Err(bad(
                "must be https:// (the kubelet's authenticated port, 10250; the bearer token never goes over plain HTTP)",
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("has no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "must not carry a user or password (the token file authenticates)",
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("must not have a query or fragment"));
        }
        if !matches!(url.path(), "" | "/") {
            return Err(bad(&format!(
                "is the kubelet's base URL, without a path (the agent asks {}/pods); got path {:?}",
                url.origin().ascii_serialization(),
                url.path()
            )));
        }
        url.set_path("/pods");
        Ok(url)
    }
}

/// Default address of the metrics endpoint: loopback, so nothing is exposed unless asked.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9477";

impl Default for Config {
    fn default() -> Self {
        Config {
            model_dirs: default_roots(),
            assets: Vec::new(),
            inference_ports: DEFAULT_INFERENCE_PORTS.to_vec(),
            read_report_bytes: 1 << 20,
            send_report_bytes: 1 << 20,
            extra_gpu_majors: Vec::new(),
            flush_interval: Duration::from_secs(5),
            host: defaults::hostname(),
            manifest: None,
            servers: defaults::servers(),
            readers: Vec::new(),
            egress: EgressAllow::default_allow(),
            business_hours: BusinessHours::default(),
            gpu_allow: defaults::gpu_allow(),
            exfil_tools: defaults::exfil_tools(),
            rules: Rules::default(),
            metrics_addr: DEFAULT_METRICS_ADDR.parse().ok(),
            webhooks: Vec::new(),
            spool: SpoolConfig::default(),
            incidents: Default::default(),
            guard: Default::default(),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            containers: ContainersConfig::default(),
            warnings: Vec::new(),
            force_raw_syscall_hook: false,
            force_tracepoint_hooks: false,
            force_syscall_sends: false,
            force_smaps_touch: false,
            kernel_btf: crate::probes::btf::KernelBtf::SYSFS_PATH.into(),
            tracefs: crate::probes::tracefs::TRACEFS.into(),
        }
    }
}

impl Config {
    /// The first server identity the process matches.
    /// Pod label keys events carry: `containers.pod_labels` and every key a server or reader
    /// selects on (a selector can only match a label the agent kept).
    pub fn pod_label_keys(&self) -> std::collections::BTreeSet<String> {
        let servers = self.servers.iter().flat_map(|s| &s.pod_labels);
        let readers = self.readers.iter().flat_map(|r| &r.pod_labels);
        self.containers
            .pod_labels
            .iter()
            .cloned()
            .chain(servers.chain(readers).map(|m| m.key.clone()))
            .collect()
    }

    pub fn server_for(&self, p: &ProcessFacts) -> Option<&ServerIdentity> {
        self.servers.iter().find(|s| s.matches(p))
    }

    /// Whether a program may use GPUs: a `gpu.allow` glob matches its comm (see
    /// `Pattern::matches_comm`), its exe path or its exe file name.
    pub fn gpu_allowed(&self, comm: &str, exe: Option<&str>) -> bool {
        self.gpu_allow.iter().any(|p| {
            p.matches_comm(comm) || exe.is_some_and(|e| p.matches(e) || p.matches(types::basename(e)))
        })
    }

    /// The exfiltration tool a program is (see `ExfilTool::matches`).
    pub fn exfil_tool_for(&self, exe_or_comm: &str, argv: &[String]) -> Option<&ExfilTool> {
        self.exfil_tools.iter().find(|t| t.matches(exe_or_comm, argv))
    }
}

impl EgressAllow {
    /// Only DNS (any destination, port 53). Private ranges are not allowed by default: an
    /// attacker's staging box is as likely to sit in 10.0.0.0/8 as anywhere.
    pub fn default_allow() -> Self {
        EgressAllow::new(vec![EgressEntry {
            target: EgressTarget::Any,
            port: Some(53),
        }])
    }
}

impl Default for BusinessHours {
    /// Monday to Friday, 08:00 to 20:00 in the host's time zone.
    fn default() -> Self {
        use chrono::Weekday::*;
        BusinessHours {
            tz: defaults::local_timezone(),
            days: vec![Mon, Tue, Wed, Thu, Fri],
            start: chrono::NaiveTime::from_hms_opt(8, 0, 0).expect("valid time"),
            end: chrono::NaiveTime::from_hms_opt(20, 0, 0),
            maintenance: Vec::new(),
        }
    }
}

/// One mistake in a configuration file.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Problem {
    /// Dotted key path: `rules.weight.bulk_read.min_fraction`, `egress.allow[2]`; empty for the
    /// file as a whole (a YAML syntax error).
    pub path: String,
    /// 1-based line in the file.
    pub line: Option<usize>,
    /// What is wrong, naming the bad value.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.path.as_str(), self.line) {
            ("", Some(l)) => write!(f, "line {l}: {}", self.message),
            ("", None) => f.write_str(&self.message),
            (p, Some(l)) => write!(f, "{p} (line {l}): {}", self.message),
            (p, None) => write!(f, "{p}: {}", self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}", invalid_message(file.as_deref(), problems))]
    Invalid {
        file: Option<PathBuf>,
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The problems of an invalid file (none for an I/O error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            ConfigError::Io { .. } => &[],
        }
    }
}

fn invalid_message(file: Option<&Path>, problems: &[Problem]) -> String {
    let n = problems.len();
    let mut s = match file {
        Some(f) => format!(
            "invalid configuration {} ({n} problem{}):",
            f.display(),
            if n == 1 { "" } else { "s" }
        ),
        None => format!(
            "invalid configuration ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        ),
    };
    for p in problems {
        s.push_str("\n  ");
        s.push_str(&p.to_string());
    }
    s
}

/// Reads and parses a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|e| match e {
        ConfigError::Invalid { problems, .. } => ConfigError::Invalid {
            file: Some(path.to_path_buf()),
            problems,
        },
        other => other,
    })
}

/// Parses configuration text; an empty text (or only comments) gives the defaults. Every
/// problem is reported, not just the first.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let problems = vec![Problem {
                path: String::new(),
                line: Some(e.line),
                message: format!("YAML syntax: {}", e.message),
            }];
            return Err(ConfigError::Invalid { file: None, problems });
        }
    };
    let mut cfg = Config::default();
    let mut problems = Vec::new();
    if let Some(root) = root {
        problems = validate::apply(&root, &mut cfg);
    }
    if problems.is_empty() {
        Ok(cfg)
    } else {
        problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        Err(ConfigError::Invalid { file: None, problems })
    }
}
