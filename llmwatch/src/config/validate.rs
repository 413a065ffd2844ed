//! Walks the YAML tree, applies each known key onto a default `Config` and collects every
//! problem on the way (a bad value leaves the default in place, so checking goes on and later
//! problems are found too; the caller discards the config when any problem was found).
use std::{path::PathBuf, time::Duration};

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};

use super::{
    BusinessHours, Config, ContainersConfig, EgressTarget, ExfilTool, LabelMatch, Maintenance, Pattern,
    Problem, ReaderIdentity, RuleCommon, RuntimeApi, ServerIdentity, UserRef,
    defaults::DEFAULT_STARTUP_WINDOW,
    rules::COMMON_KEYS,
    values,
    yaml::{Node, Value},
};
use crate::rules::RuleId;

mod assets;
mod guard;
mod kubelet;

const TOP: &[&str] = &[
    "host",
    "models",
    "inference_ports",
    "servers",
    "readers",
    "egress",
    "business_hours",
    "gpu",
    "exfil_tools",
    "kernel",
    "rules",
    "metrics",
    "webhooks",
    "spool",
    "incidents",
    "state_dir",
    "assets",
    "containers",
    "guard",
];
const CONTAINERS: &[&str] = &[
    "runtime",
    "runtime_socket",
    "pod_labels",
    "refresh_interval",
    "lookup_timeout",
    "kubelet",
];
const METRICS: &[&str] = &["addr"];
const WEBHOOK: &[&str] = &["url", "headers", "secret_file", "secret_env", "timeout", "preset"];
const SPOOL: &[&str] = &["dir", "max_bytes", "memory_max_bytes"];
const MODELS: &[&str] = &["dirs", "extra_dirs", "manifest"];
const SERVER: &[&str] = &[
    "name",
    "exe",
    "comm",
    "argv",
    "containers",
    "cgroups",
    "users",
    "namespaces",
    "pod_labels",
    "startup_window",
];
const READER: &[&str] = &[
    "name",
    "exe",
    "comm",
    "argv",
    "containers",
    "cgroups",
    "users",
    "namespaces",
    "pod_labels",
    "files",
    "schedule",
];
const EGRESS: &[&str] = &["allow"];
const HOURS: &[&str] = &["timezone", "days", "start", "end", "maintenance"];
const SCHEDULE: &[&str] = &["timezone", "days", "start", "end"];
const MAINTENANCE: &[&str] = &["start", "end", "reason"];
const GPU: &[&str] = &["allow", "extra_majors"];
const KERNEL: &[&str] = &["read_report_bytes", "send_report_bytes", "flush_interval"];

/// Every mapping's keys, to point a key written in the wrong place to where it belongs.
pub(super) const SECTIONS: &[(&str, &[&str])] = &[
    ("", TOP),
    ("models", MODELS),
    ("servers[]", SERVER),
    ("readers[]", READER),
    ("readers[].schedule", SCHEDULE),
    ("egress", EGRESS),
    ("business_hours", HOURS),
    ("business_hours.maintenance[]", MAINTENANCE),
    ("gpu", GPU),
    ("kernel", KERNEL),
    ("metrics", METRICS),
    ("webhooks[]", WEBHOOK),
    ("spool", SPOOL),
    ("incidents", super::incidents::KEYS),
    ("assets[]", assets::ASSET),
    ("containers", CONTAINERS),
    ("containers.kubelet", kubelet::KEYS),
    ("guard", super::guard::KEYS),
    ("guard.egress_budget", super::guard::EGRESS_KEYS),
    ("guard.open_deny", super::guard::OPEN_KEYS),
];

pub(crate) fn apply(root: &Node, cfg: &mut Config) -> Vec<Problem> {
    let mut c = Checker::default();
    c.root(root, cfg);
    cfg.warnings = c.warnings;
    c.problems
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The selectors of one server or reader entry, as parsed.
struct OwnedSelectors {
    exe: Vec<Pattern>,
    comm: Vec<Pattern>,
    argv: Vec<Pattern>,
    containers: Vec<Pattern>,
    cgroups: Vec<Pattern>,
    users: Vec<UserRef>,
    namespaces: Vec<Pattern>,
    pod_labels: Vec<LabelMatch>,
}

/// The set keys of one mapping (null values, meaning "not set", left out).
struct Fields<'n> {
    entries: Vec<(&'n str, &'n Node)>,
}

impl<'n> Fields<'n> {
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .filter(|v| !v.is_null())
    }
}

#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
    /// Accepted, but probably not what was meant (weak identities, port-only egress entries):
    /// `config validate` prints them, the agent logs them.
    warnings: Vec<Problem>,
}

impl Checker {
    fn bad(&mut self, path: &str, node: &Node, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.to_string(),
            line: Some(node.line),
            message: message.into(),
        });
    }

    /// Accepted, but probably not what was meant.
    fn warn(&mut self, path: &str, node: &Node, message: impl Into<String>) {
        self.warnings.push(Problem {
            path: path.to_string(),
            line: Some(node.line),
            message: message.into(),
        });
    }

    /// Runs `f`; Some(its value) only when it reported no problem.
    fn clean<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Option<T> {
        let before = self.problems.len();
        let v = f(self);
        (self.problems.len() == before).then_some(v)
    }

    /// The keys of a mapping; unknown and repeated keys are reported. `section` names the
    /// mapping in `SECTIONS`.
    fn fields<'n>(&mut self, path: &str, node: &'n Node, known: &[&str], section: &str) -> Fields<'n> {
        let mut f = Fields { entries: Vec::new() };
        match &node.value {
            _ if node.is_null() => {}
            Value::Map(entries) => {
                let mut seen: Vec<(&str, usize)> = Vec::new();
                for (k, v) in entries {
                    let Some(name) = k.scalar() else {
                        self.bad(path, k, format!("a key must be a name, got {}", k.describe()));
                        continue;
                    };
                    let kp = join(path, name);
                    if let Some((_, line)) = seen.iter().find(|(n, _)| *n == name) {
                        self.bad(&kp, k, format!("{name:?} is set twice (also on line {line})"));
                        continue;
                    }
                    seen.push((name, k.line));
                    if known.contains(&name) {
                        f.entries.push((name, v));
                    } else {
                        self.bad(&kp, k, unknown_key(name, known, section));
                    }
                }
            }
            _ => self.bad(
                path,
                node,
                format!("expected a mapping (key: value), got {}", node.describe()),
            ),
        }
        f
    }

    fn scalar<'n>(&mut self, path: &str, node: &'n Node, what: &str) -> Option<&'n str> {
        let s = node.scalar();
        if s.is_none() {
            self.bad(path, node, format!("expected {what}, got {}", node.describe()));
        }
        s
    }

    fn value<T>(
        &mut self,
        path: &str,
        node: &Node,
        what: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let s = self.scalar(path, node, what)?;
        parse(s).map_err(|m| self.bad(path, node, m)).ok()
    }

    /// Sets `slot` from `key` when the key is set and valid.
    fn set<T>(
        &mut self,
        fields: &Fields,
        path: &str,
        key: &str,
        what: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
        slot: &mut T,
    ) {
        if let Some(n) = fields.get(key)
            && let Some(v) = self.value(&join(path, key), n, what, parse)
        {
            *slot = v;
        }
    }

    /// The items of a list with their paths; None (reported) when the node is not a list.
    fn items<'n>(&mut self, path: &str, node: &'n Node) -> Option<Vec<(String, &'n Node)>> {
        match &node.value {
            Value::Seq(items) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (format!("{path}[{i}]"), n))
                    .collect(),
            ),
            _ if node.is_null() => Some(Vec::new()),
            Value::Scalar { text, .. } => {
                self.bad(
                    path,
                    node,
                    format!("expected a list, got {text:?} (write [{text:?}] for one item)"),
                );
                None
            }
            _ => {
                self.bad(path, node, format!("expected a list, got {}", node.describe()));
                None
            }
        }
    }

    /// A list of scalars; None when the node or any item is bad (so a half-read list never
    /// replaces a default).
    fn list<T>(
        &mut self,
        path: &str,
        node: &Node,
        what: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<Vec<T>> {
        let items = self.items(path, node)?;
        let out: Vec<Option<T>> = items
            .iter()
            .map(|(p, n)| self.value(p, n, what, &parse))
            .collect();
        out.into_iter().collect()
    }

    fn set_list<T>(
        &mut self,
        fields: &Fields,
        path: &str,
        key: &str,
        what: &str,
        parse: impl Fn(&str) -> Result<T, String>,
        slot: &mut Vec<T>,
    ) {
        if let Some(n) = fields.get(key)
            && let Some(v) = self.list(&join(path, key), n, what, parse)
        {
            *slot = v;
        }
    }

    fn root(&mut self, root: &Node, cfg: &mut Config) {
        if !matches!(root.value, Value::Map(_)) && !root.is_null() {
            self.bad(
                "",
                root,
                format!(
                    "the file must be a mapping of keys (host:, models:, ...), got {}",
                    root.describe()
                ),
            );
            return;
        }
        let f = self.fields("", root, TOP, "");
        self.set(&f, "", "host", "a host name", non_empty, &mut cfg.host);
        self.set(
            &f,
            "",
            "state_dir",
            "a directory",
            absolute_path,
            &mut cfg.state_dir,
        );
        if let Some(n) = f.get("models") {
            self.models(n, cfg);
        }
        self.set_list(
            &f,
            "",
            "inference_ports",
            "a port",
            values::port,
            &mut cfg.inference_ports,
        );
        let mut seen = Vec::new();
        cfg.inference_ports.retain(|p| {
            !seen.contains(p) && {
                seen.push(*p);
                true
            }
        });
        if let Some(n) = f.get("servers") {
            self.servers(n, cfg);
        }
        if let Some(n) = f.get("readers") {
            self.readers(n, cfg);
        }
        if let Some(n) = f.get("egress") {
            let e = self.fields("egress", n, EGRESS, "egress");
            self.set_list(
                &e,
                "egress",
                "allow",
                "an address, network, host or :port",
                values::egress_entry,
                &mut cfg.egress.entries,
            );
            if let Some(list) = e.get("allow")
                && let Value::Seq(items) = &list.value
            {
                for (i, (entry, n)) in cfg.egress.entries.iter().zip(items).enumerate() {
                    if entry.target == EgressTarget::Any {
                        self.warn(
                            &format!("egress.allow[{i}]"),
                            n,
                            format!(
                                "{entry} allows connections to any host{}, not transfers of weights: \
                                 weight.exfiltration still judges what is sent there. Name the \
                                 destination by address, network or host name to exempt it",
                                entry.port.map(|p| format!(" on port {p}")).unwrap_or_default()
                            ),
                        );
                    }
                }
            }
        }
        if let Some(n) = f.get("business_hours") {
            self.business_hours(n, cfg);
        }
        if let Some(n) = f.get("gpu") {
            let g = self.fields("gpu", n, GPU, "gpu");
            self.set_list(&g, "gpu", "allow", "a glob", glob, &mut cfg.gpu_allow);
            let major = |s: &str| values::integer(s, 1, 4095).map(|v| v as u32);
            self.set_list(
                &g,
                "gpu",
                "extra_majors",
                "a device major (1..=4095)",
                major,
                &mut cfg.extra_gpu_majors,
            );
        }
        self.set_list(
            &f,
            "",
            "exfil_tools",
            "a program",
            ExfilTool::parse,
            &mut cfg.exfil_tools,
        );
        if let Some(n) = f.get("kernel") {
            let k = self.fields("kernel", n, KERNEL, "kernel");
            self.set(
                &k,
                "kernel",
                "read_report_bytes",
                "a size",
                positive_size,
                &mut cfg.read_report_bytes,
            );
            self.set(
                &k,
                "kernel",
                "send_report_bytes",
                "a size",
                positive_size,
                &mut cfg.send_report_bytes,
            );
            self.set(
                &k,
                "kernel",
                "flush_interval",
                "a duration",
                positive_duration,
                &mut cfg.flush_interval,
            );
        }
        if let Some(n) = f.get("rules") {
            self.rules(n, cfg);
        }
        if let Some(n) = f.get("metrics") {
            let m = self.fields("metrics", n, METRICS, "metrics");
            self.set(
                &m,
                "metrics",
                "addr",
                "an address (host:port) or off",
                metrics_addr,
                &mut cfg.metrics_addr,
            );
        }
        if let Some(n) = f.get("spool") {
            let sp = self.fields("spool", n, SPOOL, "spool");
            self.set(
                &sp,
                "spool",
                "dir",
                "a directory",
                absolute_path,
                &mut cfg.spool.dir,
            );
            self.set(
                &sp,
                "spool",
                "max_bytes",
                "a size",
                positive_size,
                &mut cfg.spool.max_bytes,
            );
            self.set(
                &sp,
                "spool",
                "memory_max_bytes",
                "a size",
                positive_size,
                &mut cfg.spool.memory_max_bytes,
            );
        }
        if let Some(n) = f.get("webhooks") {
            self.webhooks(n, cfg);
        }
        if let Some(n) = f.get("incidents") {
            let i = self.fields("incidents", n, super::incidents::KEYS, "incidents");
            let idle = &mut cfg.incidents.idle;
            self.set(
                &i,
                "incidents",
                "idle",
                "a duration",
                super::incidents::idle,
                idle,
            );
        }
        if let Some(n) = f.get("assets") {
            self.assets(n, cfg);
        }
        if let Some(n) = f.get("containers") {
            self.containers(n, &mut cfg.containers);
        }
        if let Some(n) = f.get("guard") {
            self.guard(n, cfg);
        }
    }

    fn containers(&mut self, node: &Node, c: &mut ContainersConfig) {
        let p = "containers";
        let f = self.fields(p, node, CONTAINERS, p);
        self.set(
            &f,
            p,
            "runtime",
            "auto, containerd, cri or off",
            runtime_api,
            &mut c.runtime,
        );
        self.set(
            &f,
            p,
            "runtime_socket",
            "a socket path",
            |s| absolute_path(s).map(Some),
            &mut c.runtime_socket,
        );
        self.set_list(&f, p, "pod_labels", "a label key", label_key, &mut c.pod_labels);
        self.set(
            &f,
            p,
            "refresh_interval",
            "a duration",
            positive_duration,
            &mut c.refresh_interval,
        );
        self.set(
            &f,
            p,
            "lookup_timeout",
            "a duration",
            positive_duration,
            &mut c.lookup_timeout,
        );
        if let Some(n) = f.get("kubelet") {
            self.kubelet(n, &mut c.kubelet);
        }
    }

    fn webhooks(&mut self, node: &Node, cfg: &mut Config) {
        let Some(items) = self.items("webhooks", node) else {
            return;
        };
        let parsed = self.clean(|c| {
            items
                .iter()
                .filter_map(|(p, n)| c.clean(|c| c.webhook(p, n)).flatten())
                .collect::<Vec<_>>()
        });
        if let Some(w) = parsed {
            cfg.webhooks = w;
        }
    }

    fn webhook(&mut self, path: &str, node: &Node) -> Option<super::WebhookConfig> {
        if !matches!(node.value, Value::Map(_)) {
            self.bad(
                path,
                node,
                format!(
                    "expected a webhook (url:, secret_file:, ...), got {}",
                    node.describe()
                ),
            );
            return None;
        }
        let f = self.fields(path, node, WEBHOOK, "webhooks[]");
        let mut w = super::WebhookConfig {
            url: String::new(),
            headers: Vec::new(),
            secret_file: None,
            secret_env: None,
            timeout: Duration::from_secs(10),
            preset: "raw".into(),
        };
        match f.get("url") {
            Some(_) => self.set(&f, path, "url", "an http(s) URL", webhook_url, &mut w.url),
            None => self.bad(path, node, "a webhook needs a url".to_string()),
        }
        if let Some(n) = f.get("headers") {
            let hp = join(path, "headers");
            let h = match &n.value {
                Value::Map(entries) => entries
                    .iter()
                    .filter_map(|(k, v)| match (k.scalar(), v.scalar()) {
                        (Some(k), Some(v)) if !k.is_empty() && !k.contains([':', '\n', '\r']) => {
                            Some((k.to_string(), v.to_string()))
                        }
                        _ => {
                            self.bad(
                                &hp,
                                k,
                                "a header is `Name: value` with a non-empty name".to_string(),
                            );
                            None
                        }
                    })
                    .collect(),
                _ => {
                    self.bad(
                        &hp,
                        n,
                        format!(
                            "expected a mapping of header names to values, got {}",
                            n.describe()
                        ),
                    );
                    Vec::new()
                }
            };
            w.headers = h;
        }
        let mut sf = None;
        self.set(
            &f,
            path,
            "secret_file",
            "a file",
            |s| absolute_path(s).map(Some),
            &mut sf,
        );
        w.secret_file = sf;
        let mut se = None;
        self.set(
            &f,
            path,
            "secret_env",
            "an environment variable name",
            |s| non_empty(s).map(Some),
            &mut se,
        );
        w.secret_env = se;
        if w.secret_file.is_some() && w.secret_env.is_some() {
            self.bad(path, node, "set secret_file or secret_env, not both".to_string());
        }
        self.set(
            &f,
            path,
            "timeout",
            "a duration",
            positive_duration,
            &mut w.timeout,
        );
        self.set(
            &f,
            path,
            "preset",
            "raw, slack or alertmanager",
            preset,
            &mut w.preset,
        );
        Some(w)
    }

    fn models(&mut self, node: &Node, cfg: &mut Config) {
        let f = self.fields("models", node, MODELS, "models");
        self.set_list(
            &f,
            "models",
            "dirs",
            "a directory",
            absolute_path,
            &mut cfg.model_dirs,
        );
        let mut extra = Vec::new();
        self.set_list(
            &f,
            "models",
            "extra_dirs",
            "a directory",
            absolute_path,
            &mut extra,
        );
        for d in extra {
            if !cfg.model_dirs.contains(&d) {
                cfg.model_dirs.push(d);
            }
        }
        if let Some(n) = f.get("manifest") {
            cfg.manifest = self.value("models.manifest", n, "a file path", absolute_path);
        }
    }

    fn servers(&mut self, node: &Node, cfg: &mut Config) {
        let Some(items) = self.items("servers", node) else {
            return;
        };
        let parsed = self.clean(|c| {
            let mut out: Vec<ServerIdentity> = Vec::new();
            for (p, n) in &items {
                let Some(s) = c.clean(|c| c.server(p, n)).flatten() else {
                    continue;
                };
                if out.iter().any(|o| o.name == s.name) {
                    c.bad(
                        &join(p, "name"),
                        n,
                        format!("another server is already named {:?}", s.name),
                    );
                }
                out.push(s);
            }
            out
        });
        if let Some(servers) = parsed {
            cfg.servers = servers;
        }
    }

    fn server(&mut self, path: &str, node: &Node) -> Option<ServerIdentity> {
        if !matches!(node.value, Value::Map(_)) {
            self.bad(
                path,
                node,
                format!(
                    "expected a server (name:, exe:, comm:, argv:, ...), got {}",
                    node.describe()
                ),
            );
            return None;
        }
        let f = self.fields(path, node, SERVER, "servers[]");
        let name = self.entry_name(&f, path, node);
        let sel = self.selectors(&f, path, node, "an inference server");
        let mut startup_window = DEFAULT_STARTUP_WINDOW;
        self.set(
            &f,
            path,
            "startup_window",
            "a duration",
            values::duration,
            &mut startup_window,
        );
        let server = ServerIdentity {
            name: name?,
            exe: sel.exe,
            comm: sel.comm,
            argv: sel.argv,
            containers: sel.containers,
            cgroups: sel.cgroups,
            users: sel.users,
            namespaces: sel.namespaces,
            pod_labels: sel.pod_labels,
            startup_window,
        };
        if !server.strong() {
            let why = weakness(&server.selectors());
            self.warn(
                path,
                node,
                format!(
                    "server {:?} is {why}: it exempts the start-up load only, never egress or \
                     exfiltration. Pin it with users, containers, cgroups, namespaces, pod_labels or the exe of a dedicated binary",
                    server.name
                ),
            );
        }
        Some(server)
    }

    fn entry_name(&mut self, f: &Fields, path: &str, node: &Node) -> Option<String> {
        match f.get("name") {
            Some(n) => self.value(&join(path, "name"), n, "a name", non_empty),
            None => {
                self.bad(path, node, "missing name");
                None
            }
        }
    }

    /// The process selectors of a server or reader entry; `what` says what a match makes a
    /// process, for the error about an entry that would match whole containers or users.
    fn selectors(&mut self, f: &Fields, path: &str, node: &Node, what: &str) -> OwnedSelectors {
        let mut globs = |key: &str| {
            f.get(key)
                .and_then(|n| self.list(&join(path, key), n, "a glob", glob))
                .unwrap_or_default()
        };
        let (exe, comm, argv) = (globs("exe"), globs("comm"), globs("argv"));
        let (containers, cgroups) = (globs("containers"), globs("cgroups"));
        let namespaces = globs("namespaces");
        let users = f
            .get("users")
            .and_then(|n| self.list(&join(path, "users"), n, "a user name or uid", user_ref))
            .unwrap_or_default();
        let pod_labels = f
            .get("pod_labels")
            .map(|n| self.label_matches(&join(path, "pod_labels"), n))
            .unwrap_or_default();
        let unset = |k: &&str| {
            f.get(k)
                .is_none_or(|n| matches!(&n.value, Value::Seq(v) if v.is_empty()))
        };
        if ["exe", "comm", "argv"].iter().all(unset) {
            self.bad(
                path,
                node,
                format!(
                    "needs at least one of exe, comm or argv: containers, cgroups, users, namespaces \
                     and pod_labels alone would make every process there {what}"
                ),
            );
        }
        OwnedSelectors {
            exe,
            comm,
            argv,
            containers,
            cgroups,
            users,
            namespaces,
            pod_labels,
        }
    }

    /// `pod_labels: {key: glob, ...}`: every key must be on the pod, its value matching.
    fn label_matches(&mut self, path: &str, node: &Node) -> Vec<LabelMatch> {
        let Value::Map(entries) = &node.value else {
            self.bad(
                path,
                node,
                format!(
                    "expected a mapping of label keys to value globs ({{app: vllm}}), got {}",
                    node.describe()
                ),
            );
            return Vec::new();
        };
        let mut out: Vec<LabelMatch> = Vec::new();
        for (k, v) in entries {
            let Some(key) = self.value(path, k, "a label key", label_key) else {
                continue;
            };
            let kp = join(path, &key);
            if out.iter().any(|m| m.key == key) {
                self.bad(&kp, k, format!("label {key:?} is set twice"));
                continue;
            }
            if let Some(value) = self.value(&kp, v, "a glob", glob) {
                out.push(LabelMatch { key, value });
            }
        }
        out
    }

    fn readers(&mut self, node: &Node, cfg: &mut Config) {
        let Some(items) = self.items("readers", node) else {
            return;
        };
        let parsed = self.clean(|c| {
            let mut out: Vec<ReaderIdentity> = Vec::new();
            for (p, n) in &items {
                let Some(r) = c.clean(|c| c.reader(p, n, cfg.business_hours.tz)).flatten() else {
                    continue;
                };
                if out.iter().any(|o| o.name == r.name) {
                    c.bad(
                        &join(p, "name"),
                        n,
                        format!("another reader is already named {:?}", r.name),
                    );
                }
                out.push(r);
            }
            out
        });
        if let Some(readers) = parsed {
            cfg.readers = readers;
        }
    }

    fn reader(&mut self, path: &str, node: &Node, tz: chrono_tz::Tz) -> Option<ReaderIdentity> {
        if !matches!(node.value, Value::Map(_)) {
            self.bad(
                path,
                node,
                format!(
                    "expected a trusted reader (name:, exe:, users:, files:, schedule:, ...), got {}",
                    node.describe()
                ),
            );
            return None;
        }
        let f = self.fields(path, node, READER, "readers[]");
        let name = self.entry_name(&f, path, node);
        let sel = self.selectors(&f, path, node, "a trusted reader");
        let files = f
            .get("files")
            .and_then(|n| self.list(&join(path, "files"), n, "a glob", glob))
            .unwrap_or_default();
        let schedule = f.get("schedule").map(|n| {
            let mut hours = BusinessHours {
                tz,
                ..Config::default().business_hours
            };
            self.hours(&join(path, "schedule"), n, &mut hours, false);
            hours
        });
        let reader = ReaderIdentity {
            name: name?,
            exe: sel.exe,
            comm: sel.comm,
            argv: sel.argv,
            containers: sel.containers,
            cgroups: sel.cgroups,
            users: sel.users,
            namespaces: sel.namespaces,
            pod_labels: sel.pod_labels,
            files,
            schedule,
        };
        if !reader.selectors().strong() {
            let why = weakness(&reader.selectors());
            self.warn(
                path,
                node,
                format!(
                    "reader {:?} is {why}: any program so named would read those files unseen by \
                     unexpected_reader and bulk_read. Pin it with users, containers, cgroups, \
                     namespaces, pod_labels or the exe of a dedicated binary",
                    reader.name
                ),
            );
        }
        Some(reader)
    }

    fn business_hours(&mut self, node: &Node, cfg: &mut Config) {
        let mut bh = cfg.business_hours.clone();
        self.hours("business_hours", node, &mut bh, true);
        cfg.business_hours = bh;
    }

    /// Weekly hours: `business_hours`, or a trusted reader's `schedule` (no maintenance
    /// windows there).
    fn hours(&mut self, p: &str, node: &Node, bh: &mut BusinessHours, maintenance: bool) {
        let (known, section) = if maintenance {
            (HOURS, "business_hours")
        } else {
            (SCHEDULE, "readers[].schedule")
        };
        let f = self.fields(p, node, known, section);
        self.set(&f, p, "timezone", "a time zone", time_zone, &mut bh.tz);
        if let Some(n) = f.get("days")
            && let Some(mut days) = self.list(&join(p, "days"), n, "a day", values::weekday)
        {
            let mut seen = Vec::new();
            days.retain(|d| {
                !seen.contains(d) && {
                    seen.push(*d);
                    true
                }
            });
            bh.days = days;
        }
        let start = f.get("start").and_then(|n| {
            self.value(&join(p, "start"), n, "a time (HH:MM)", |s| {
                values::time_of_day(s, false)
            })
        });
        let end = f.get("end").and_then(|n| {
            self.value(&join(p, "end"), n, "a time (HH:MM)", |s| {
                values::time_of_day(s, true)
            })
        });
        if let Some(Some(s)) = start {
            bh.start = s;
        }
        if let Some(e) = end {
            bh.end = e;
        }
        if (start.is_some() || end.is_some()) && bh.end == Some(bh.start) {
            let n = f.get("end").or(f.get("start")).unwrap_or(node);
            let at = if f.get("end").is_some() {
                join(p, "end")
            } else {
                join(p, "start")
            };
            self.bad(
                &at,
                n,
                "start and end are the same time; for all day write start: \"00:00\", end: \"24:00\"",
            );
        }
        if let Some(n) = f.get("maintenance") {
            let tz = bh.tz;
            let Some(items) = self.items(&join(p, "maintenance"), n) else {
                return;
            };
            let parsed: Vec<Option<Maintenance>> = items
                .iter()
                .map(|(p, n)| self.clean(|c| c.maintenance(p, n, tz)).flatten())
                .collect();
            if let Some(m) = parsed.into_iter().collect::<Option<Vec<_>>>() {
                bh.maintenance = m;
            }
        }
    }

    fn maintenance(&mut self, path: &str, node: &Node, tz: chrono_tz::Tz) -> Option<Maintenance> {
        if !matches!(node.value, Value::Map(_)) {
            self.bad(
                path,
                node,
                format!(
                    "expected a window (start:, end:, reason:), got {}",
                    node.describe()
                ),
            );
            return None;
        }
        let f = self.fields(path, node, MAINTENANCE, "business_hours.maintenance[]");
        let mut at = |key: &str| match f.get(key) {
            Some(n) => self
                .value(&join(path, key), n, "a date and time", |s| date_time(s, tz))
                .map(|t| (t, n)),
            None => {
                self.bad(path, node, format!("missing {key}"));
                None
            }
        };
        let (start, end) = (at("start"), at("end"));
        let mut reason = String::new();
        self.set(&f, path, "reason", "a text", |s| Ok(s.to_string()), &mut reason);
        let ((start, _), (end, end_node)) = (start?, end?);
        if end <= start {
            self.bad(
                &join(path, "end"),
                end_node,
                format!(
                    "end {} is not after start {}",
                    end.to_rfc3339(),
                    start.to_rfc3339()
                ),
            );
            return None;
        }
        Some(Maintenance { start, end, reason })
    }

    fn rules(&mut self, node: &Node, cfg: &mut Config) {
        let Value::Map(entries) = &node.value else {
            self.bad(
                "rules",
                node,
                format!("expected a mapping of rule ids, got {}", node.describe()),
            );
            return;
        };
        let mut seen: Vec<&str> = Vec::new();
        for (k, v) in entries {
            let Some(id) = k.scalar() else {
                self.bad(
                    "rules",
                    k,
                    format!("a rule id must be a name, got {}", k.describe()),
                );
                continue;
            };
            let path = join("rules", id);
            if seen.contains(&id) {
                self.bad(&path, k, format!("rule {id:?} is configured twice"));
                continue;
            }
            seen.push(id);
            let Some(rule) = RuleId::parse(id) else {
                let names = crate::rules::ALL.iter().map(|r| r.as_str());
                let hint = match values::closest(id, names.clone()) {
                    Some(c) => format!("; did you mean {c:?}?"),
                    None => format!("; rules are: {}", names.collect::<Vec<_>>().join(", ")),
                };
                self.bad(&path, k, format!("unknown rule {id:?}{hint}"));
                continue;
            };
            if v.is_null() {
                continue;
            }
            self.rule(rule, &path, v, cfg);
        }
    }

    fn rule(&mut self, id: RuleId, path: &str, node: &Node, cfg: &mut Config) {
        // `exfil.tool: false` is short for `exfil.tool: {enabled: false}`.
        if let Value::Scalar { text, .. } = &node.value {
            match values::boolean(text) {
                Ok(b) => cfg.rules.common_mut(id).enabled = b,
                Err(_) => self.bad(
                    path,
                    node,
                    format!(
                        "expected the rule's settings (enabled:, severity:, ...) or true/false, got {text:?}"
                    ),
                ),
            }
            return;
        }
        let mut known: Vec<&str> = COMMON_KEYS.to_vec();
        known.extend_from_slice(crate::rules::Settings::keys(id));
        let f = self.fields(path, node, &known, path);
        self.common(&f, path, cfg.rules.common_mut(id));
        let mut keys = RuleKeys {
            checker: self,
            fields: &f,
            path,
        };
        cfg.rules.apply(id, &mut keys);
    }

    fn common(&mut self, f: &Fields, path: &str, common: &mut RuleCommon) {
        self.set(
            f,
            path,
            "enabled",
            "true or false",
            values::boolean,
            &mut common.enabled,
        );
        self.set(
            f,
            path,
            "severity",
            "a severity",
            values::severity,
            &mut common.severity,
        );
        self.set(
            f,
            path,
            "suppress",
            "a duration",
            values::duration,
            &mut common.suppress,
        );
    }
}

/// How a rule reads its thresholds from its section of `rules:` (each rule's `apply`): the
/// value types of the file, with the problems collected like every other key's.
pub struct RuleKeys<'c, 'n> {
    checker: &'c mut Checker,
    fields: &'c Fields<'n>,
    path: &'c str,
}

impl RuleKeys<'_, '_> {
    /// A fraction (0..=1, or a percentage).
    pub fn fraction(&mut self, key: &str, slot: &mut f64) {
        self.checker
            .set(self.fields, self.path, key, "a fraction", values::fraction, slot);
    }

    /// A size (bytes, or with a unit: 64MiB).
    pub fn size(&mut self, key: &str, slot: &mut u64) {
        self.checker
            .set(self.fields, self.path, key, "a size", values::size, slot);
    }

    /// A size larger than zero.
    pub fn positive_size(&mut self, key: &str, slot: &mut u64) {
        self.checker
            .set(self.fields, self.path, key, "a size", positive_size, slot);
    }

    /// A duration longer than zero.
    pub fn duration(&mut self, key: &str, slot: &mut Duration) {
        self.checker
            .set(self.fields, self.path, key, "a duration", positive_duration, slot);
    }

    /// A count of at least 1.
    pub fn count(&mut self, key: &str, slot: &mut u32) {
        self.checker
            .set(self.fields, self.path, key, "a count", count, slot);
    }

    /// A list of globs.
    pub fn globs(&mut self, key: &str, slot: &mut Vec<Pattern>) {
        self.checker
            .set_list(self.fields, self.path, key, "a glob", glob, slot);
    }
}

/// Why an entry that is not `strong` pins nothing.
fn weakness(sel: &super::Selectors<'_>) -> String {
    match sel.interpreter_exe() {
        Some(p) => format!(
            "recognised by an exe glob ({p}) that matches an interpreter or shell anyone can run, \
             and otherwise by name or command line, which any process can take"
        ),
        None => "recognised by its name or command line only, which any process can take".into(),
    }
}

fn unknown_key(name: &str, known: &[&str], section: &str) -> String {
    if let Some(c) = values::closest(name, known.iter().copied()) {
        return format!("unknown key {name:?}; did you mean {c:?}?");
    }
    // Right name, wrong place: `extra_dirs` at the top instead of under `models`.
    let elsewhere: Vec<String> = SECTIONS
        .iter()
        .filter(|(s, keys)| *s != section && keys.contains(&name))
        .map(|(s, _)| join(s, name))
        .collect();
    if !elsewhere.is_empty() {
        return format!(
            "unknown key {name:?} here; it belongs at {}",
            elsewhere.join(" or ")
        );
    }
    format!("unknown key {name:?}; expected one of: {}", known.join(", "))
}

fn non_empty(s: &str) -> Result<String, String> {
    match s.trim() {
        "" => Err("must not be empty".into()),
        t => Ok(t.to_string()),
    }
}

fn glob(s: &str) -> Result<Pattern, String> {
    if s.is_empty() {
        return Err("empty glob (it would match only an empty text)".into());
    }
    Pattern::new(s).map_err(|e| format!("{s:?} is not a valid glob: {}", e.kind()))
}

fn absolute_path(s: &str) -> Result<PathBuf, String> {
    if s.starts_with('/') {
        Ok(PathBuf::from(s))
    } else {
        Err(format!(
            "{s:?} is not an absolute path (the agent runs as a service; write /...)"
        ))
    }
}

fn user_ref(s: &str) -> Result<UserRef, String> {
    let t = s.trim();
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        return t
            .parse::<u32>()
            .map(UserRef::Uid)
            .map_err(|_| format!("{s:?} is not a uid"));
    }
    if t.is_empty() || t.contains(char::is_whitespace) || t.contains(':') {
        return Err(format!("{s:?} is not a user name or uid"));
    }
    Ok(UserRef::Name(t.to_string()))
}

fn runtime_api(s: &str) -> Result<RuntimeApi, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "auto" => Ok(RuntimeApi::Auto),
        "containerd" => Ok(RuntimeApi::Containerd),
        "cri" | "cri-o" | "crio" => Ok(RuntimeApi::Cri),
        "off" | "none" => Ok(RuntimeApi::Off),
        _ => Err(format!(
            "{s:?} is not a runtime API: auto, containerd, cri or off"
        )),
    }
}

/// A Kubernetes label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters (letters, digits, `-`, `_`, `.`), starting and ending with a letter or digit.
fn label_key(s: &str) -> Result<String, String> {
    let bad = || format!("{s:?} is not a Kubernetes label key (e.g. app, app.kubernetes.io/name)");
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let edge_ok = |t: &str| {
        t.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && t.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
    };
    let name_ok = name.len() <= 63
        && edge_ok(name)
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let prefix_ok = prefix.is_none_or(|p| {
        p.len() <= 253
            && edge_ok(p)
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
    });
    if name_ok && prefix_ok {
        Ok(s.to_string())
    } else {
        Err(bad())
    }
}

fn count(s: &str) -> Result<u32, String> {
    values::integer(s, 1, u32::MAX as u64).map(|v| v as u32)
}

fn positive_size(s: &str) -> Result<u64, String> {
    match values::size(s)? {
        0 => Err(format!("{s:?}: must be more than 0")),
        v => Ok(v),
    }
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    match values::duration(s)? {
        d if d.is_zero() => Err(format!("{s:?}: must be longer than 0")),
        d => Ok(d),
    }
}

fn time_zone(s: &str) -> Result<chrono_tz::Tz, String> {
    s.trim().parse::<chrono_tz::Tz>().map_err(|_| {
        let names = chrono_tz::TZ_VARIANTS.iter().map(|t| t.name());
        match values::closest(s, names) {
            Some(c) => format!("{s:?} is not a time zone; did you mean {c:?}?"),
            None => format!("{s:?} is not an IANA time zone (e.g. Europe/Berlin, America/New_York, UTC)"),
        }
    })
}

/// RFC 3339 (`2026-12-01T22:00:00Z`, `...+01:00`, a space for the `T` as YAML allows), or a
/// date and time without offset, read in the business-hours time zone.
fn date_time(s: &str, tz: chrono_tz::Tz) -> Result<DateTime<Utc>, String> {
    let t = s.trim().replacen(' ', "T", 1);
    if let Ok(d) = DateTime::parse_from_rfc3339(&t) {
        return Ok(d.with_timezone(&Utc));
    }
    let naive = ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(&t, f).ok())
        .ok_or_else(|| format!("{s:?} is not a date and time (write e.g. 2026-12-01T22:00:00Z)"))?;
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|d| d.with_timezone(&Utc))
        .ok_or_else(|| format!("{s:?} does not exist in {tz} (skipped by a daylight-saving change)"))
}

fn metrics_addr(s: &str) -> Result<Option<std::net::SocketAddr>, String> {
    if s.eq_ignore_ascii_case("off") || s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| format!("{s:?} is not an address like 127.0.0.1:9477 or [::1]:9477 (or off)"))
}

fn webhook_url(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or_else(|| format!("{s:?} is not an http:// or https:// URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("{s:?} has no host"));
    }
    Ok(s.to_string())
}

fn preset(s: &str) -> Result<String, String> {
    match s.to_ascii_lowercase().as_str() {
        p @ ("raw" | "slack" | "alertmanager") => Ok(p.to_string()),
        _ => Err(format!("{s:?} is not a preset: raw, slack or alertmanager")),
    }
}
