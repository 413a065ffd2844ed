use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    net::SocketAddr,
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    server::{Limits, respond, serve_with},
    *,
};

/// Every metric the agent exports, with its type.
const EXPORTED: &[(&str, &str)] = &[
    ("llmwatch_events_total", "counter"),
    ("llmwatch_pod_unnamed_events_total", "counter"),
    ("llmwatch_kubelet_fetch_failures_total", "counter"),
    ("llmwatch_kernel_ringbuf_drops_total", "counter"),
    ("llmwatch_kernel_events_total", "counter"),
    ("llmwatch_hook_attached", "gauge"),
    ("llmwatch_watched_files", "gauge"),
    ("llmwatch_watched_bytes", "gauge"),
    ("llmwatch_weight_read_bytes_total", "counter"),
    ("llmwatch_egress_bytes_total", "counter"),
    ("llmwatch_gpu_processes", "gauge"),
    ("llmwatch_alerts_total", "counter"),
    ("llmwatch_alerts_suppressed_total", "counter"),
    ("llmwatch_incidents_total", "counter"),
    ("llmwatch_incidents_open", "gauge"),
    ("llmwatch_webhook_deliveries_total", "counter"),
    ("llmwatch_spool_depth", "gauge"),
    ("llmwatch_spool_dropped_total", "counter"),
    ("llmwatch_spool_write_errors_total", "counter"),
    ("llmwatch_capability", "gauge"),
    ("llmwatch_data_path", "gauge"),
    ("llmwatch_hook_path", "gauge"),
    ("llmwatch_event_to_alert_seconds", "histogram"),
    ("llmwatch_config_reloads_total", "counter"),
    ("llmwatch_decode_errors_total", "counter"),
    ("llmwatch_build_info", "gauge"),
    ("process_cpu_seconds_total", "counter"),
    ("process_resident_memory_bytes", "gauge"),
    ("process_virtual_memory_bytes", "gauge"),
    ("process_open_fds", "gauge"),
    ("process_max_fds", "gauge"),
    ("process_start_time_seconds", "gauge"),
    ("process_threads", "gauge"),
];

/// Metrics with every labelled family touched once, so every name is in the output.
fn touched() -> Metrics {
    let m = Metrics::new();
    m.event("file_read");
    m.set_kernel_drops("file_read", 3);
    m.set_kernel_events("file_read", 100);
    m.set_hook("raw_tracepoint/sys_exit", true);
    m.set_hook("lsm/file_open", false);
    m.set_capability("kernel_btf", true);
    m.set_capability("tracefs", false);
    m.set_data_path("sends", "sock_send_length tracepoint");
    m.set_hook_path("fentry");
    m.set_watched(3, 3 << 30);
    m.weight_read("inference_server", None, 4096);
    m.weight_read("other", Some("0123456789abcdef0123"), 1 << 20);
    m.egress("other", 1500);
    m.set_gpu_processes(2);
    m.alert("weight.bulk_read", "critical");
    m.alerts_suppressed("weight.bulk_read", 4);
    m.incident_opened("high");
    m.set_incidents_open(1);
    m.delivery("delivered");
    m.set_spool_depth(1);
    m.spool_dropped("low");
    m.latency(0.003);
    m.config_reload(true);
    m.decode_error();
    m
}

/// `# TYPE` lines of an exposition: name -> type.
fn types(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect()
}

/// The value of the sample line `series` (name and labels exactly as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.trim().parse().expect("numeric sample"))
}

#[test]
fn counters_count() {
    let m = Metrics::new();
    m.event("file_read");
    m.event("file_read");
    m.event("proc_exec");
    assert_eq!(m.events.with_label_values(&["file_read"]).get(), 2);
    assert_eq!(m.events.with_label_values(&["proc_exec"]).get(), 1);
    m.alert("exfil.tool", "high");
    m.alert("exfil.tool", "high");
    m.alert("exfil.tool", "critical");
    assert_eq!(m.alerts.with_label_values(&["exfil.tool", "high"]).get(), 2);
    assert_eq!(m.alerts.with_label_values(&["exfil.tool", "critical"]).get(), 1);
    m.delivery("retried");
    m.delivery("delivered");
    assert_eq!(m.webhook_deliveries.with_label_values(&["delivered"]).get(), 1);
    m.egress("inference_server", 10);
    m.egress("inference_server", 5);
    assert_eq!(m.egress_bytes.with_label_values(&["inference_server"]).get(), 15);
    m.config_reload(false);
    assert_eq!(m.config_reloads.with_label_values(&["error"]).get(), 1);
    assert_eq!(m.config_reloads.with_label_values(&["ok"]).get(), 0);
    m.decode_error();
    assert_eq!(m.decode_errors.get(), 1);
    m.alerts_suppressed("exfil.tool", 3);
    assert_eq!(m.alerts_suppressed.with_label_values(&["exfil.tool"]).get(), 3);
    m.spool_dropped("info");
    assert_eq!(m.spool_dropped.with_label_values(&["info"]).get(), 1);
}

#[test]
fn gauges_follow_the_last_value() {
    let m = Metrics::new();
    m.set_hook("tp_btf/sched_process_exec", true);
    assert_eq!(
        m.hook_attached
            .with_label_values(&["tp_btf/sched_process_exec"])
            .get(),
        1
    );
    m.set_hook("tp_btf/sched_process_exec", false);
    assert_eq!(
        m.hook_attached
            .with_label_values(&["tp_btf/sched_process_exec"])
            .get(),
        0
    );
    m.set_watched(7, 70_000_000_000);
    assert_eq!(
        (m.watched_files.get(), m.watched_bytes.get()),
        (7, 70_000_000_000)
    );
    m.set_watched(0, 0);
    assert_eq!((m.watched_files.get(), m.watched_bytes.get()), (0, 0));
    m.set_watched(1, u64::MAX);
    assert_eq!(
        m.watched_bytes.get(),
        i64::MAX,
        "saturates instead of wrapping negative"
    );
    m.set_gpu_processes(3);
    m.set_spool_depth(12);
    assert_eq!((m.gpu_processes.get(), m.spool_depth.get()), (3, 12));
    let text = m.render();
    assert_eq!(
        sample(
            &text,
            &format!("llmwatch_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))
        ),
        Some(1.0)
    );
}

#[test]
fn cumulative_setters_add_deltas_and_never_decrease() {
    let m = Metrics::new();
    let drops = || m.kernel_ringbuf_drops.with_label_values(&["file_read"]).get();
    m.set_kernel_drops("file_read", 10);
    assert_eq!(drops(), 10);
    m.set_kernel_drops("file_read", 10);
    assert_eq!(drops(), 10, "same cumulative value adds nothing");
    m.set_kernel_drops("file_read", 25);
    assert_eq!(drops(), 25);
    m.set_kernel_drops("file_read", 0); // a failed read of the kernel map
    assert_eq!(drops(), 25, "never decreases");
    m.set_kernel_drops("file_read", 7);
    assert_eq!(drops(), 25);
    m.set_kernel_drops("file_read", 30);
    assert_eq!(drops(), 30, "counts only what is beyond the largest value seen");
    // Kinds and the two kernel counters are independent.
    m.set_kernel_drops("net_send", 4);
    m.set_kernel_events("file_read", 1000);
    assert_eq!(m.kernel_ringbuf_drops.with_label_values(&["net_send"]).get(), 4);
    assert_eq!(m.kernel_events.with_label_values(&["file_read"]).get(), 1000);
    assert_eq!(drops(), 30);

    use llmwatch_common::event::kind;
    m.set_kernel_counters(
        &[(kind::FILE_READ, 31), (kind::GPU_OPEN, 2)],
        &[(kind::PROC_EXEC, 50)],
    );
    assert_eq!(drops(), 31);
    assert_eq!(m.kernel_ringbuf_drops.with_label_values(&["gpu_open"]).get(), 2);
    assert_eq!(m.kernel_events.with_label_values(&["proc_exec"]).get(), 50);
}

#[test]
fn every_kernel_kind_has_a_name() {
    for k in 1..llmwatch_common::event::kind::COUNT {
        assert_ne!(
            kind_name(k),
            "unknown",
            "kind {k} has no name in metrics::kind_name"
        );
    }
    assert_eq!(kind_name(0), "unknown");
}

#[test]
fn container_label_is_a_prefix_and_capped() {
    let m = Metrics::new();
    let read =
        |class: &str, container: &str| m.weight_read_bytes.with_label_values(&[class, container]).get();
    m.weight_read("inference_server", None, 100);
    m.weight_read("inference_server", Some(""), 1);
    assert_eq!(read("inference_server", "host"), 101);
    m.weight_read(
        "other",
        Some("4f2a9c1b7d3e8f60a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718"),
        50,
    );
    assert_eq!(read("other", "4f2a9c1b7d3e"), 50);
    m.weight_read("curl", None, 7);
    assert_eq!(read("other", "host"), 7, "unknown classes count as other");

    for i in 1..MAX_CONTAINERS {
        m.weight_read("other", Some(&format!("{i:012x}ffff")), 1);
    }
    // 64 distinct containers now; more are counted as "other".
    m.weight_read("other", Some("ffffffffffff0000"), 5);
    m.weight_read("other", Some("eeeeeeeeeeee0000"), 6);
    assert_eq!(read("other", "other"), 11);
    // Containers already seen keep their own series.
    m.weight_read("other", Some("4f2a9c1b7d3eXXXX"), 10);
    assert_eq!(read("other", "4f2a9c1b7d3e"), 60);
    m.weight_read("inference_server", None, 1);
    assert_eq!(
        read("inference_server", "host"),
        102,
        "host is not a container and never capped"
    );

    let text = m.render();
    let containers: BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("llmwatch_weight_read_bytes_total{"))
        .filter_map(|l| l.split("container=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(containers.len(), MAX_CONTAINERS + 2, "{containers:?}"); // + host + other
}

#[test]
fn latency_histogram() {
    let m = Metrics::new();
    m.latency(0.002);
    m.latency(0.5);
    m.latency(-1.0); // clock step: counts as 0
    m.latency(f64::NAN);
    m.latency(f64::INFINITY);
    m.latency(60.0);
    let text = m.render();
    let bucket = |le: &str| {
        sample(
            &text,
            &format!("llmwatch_event_to_alert_seconds_bucket{{le=\"{le}\"}}"),
        )
    };
    assert_eq!(bucket("0.001"), Some(1.0));
    assert_eq!(bucket("0.0025"), Some(2.0));
    assert_eq!(bucket("0.5"), Some(3.0));
    assert_eq!(bucket("10"), Some(3.0));
    assert_eq!(bucket("+Inf"), Some(4.0));
    assert_eq!(sample(&text, "llmwatch_event_to_alert_seconds_count"), Some(4.0));
    assert_eq!(sample(&text, "llmwatch_event_to_alert_seconds_sum"), Some(60.502));
}

#[test]
fn render_has_help_and_type_for_every_metric() {
    let text = touched().render();
    let types = types(&text);
    for (name, kind) in EXPORTED {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no HELP for {name}:\n{text}"
        );
        assert_eq!(
            types.get(*name).map(String::as_str),
            Some(*kind),
            "TYPE of {name}"
        );
    }
    let ours: BTreeSet<&str> = types.keys().map(String::as_str).collect();
    let listed: BTreeSet<&str> = EXPORTED.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        ours, listed,
        "EXPORTED (and the README/dashboard) must list every metric"
    );
}

#[test]
fn known_series_start_at_zero() {
    let text = Metrics::new().render();
    for series in [
        "llmwatch_events_total{kind=\"file_read\"}",
        "llmwatch_events_total{kind=\"proc_exec\"}",
        "llmwatch_kernel_ringbuf_drops_total{kind=\"net_send\"}",
        "llmwatch_kernel_events_total{kind=\"gpu_open\"}",
        "llmwatch_weight_read_bytes_total{class=\"other\",container=\"host\"}",
        "llmwatch_egress_bytes_total{class=\"inference_server\"}",
        "llmwatch_webhook_deliveries_total{outcome=\"dropped\"}",
        "llmwatch_spool_dropped_total{severity=\"critical\"}",
        "llmwatch_config_reloads_total{result=\"error\"}",
        "llmwatch_decode_errors_total",
        "llmwatch_spool_depth",
        "llmwatch_incidents_total{severity=\"critical\"}",
        "llmwatch_incidents_open",
    ] {
        assert_eq!(sample(&text, series), Some(0.0), "{series}");
    }
    let m = Metrics::new();
    m.init_alert("weight.bulk_read", "high");
    let text = m.render();
    assert_eq!(
        sample(
            &text,
            "llmwatch_alerts_total{rule=\"weight.bulk_read\",severity=\"high\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "llmwatch_alerts_suppressed_total{rule=\"weight.bulk_read\"}"
        ),
        Some(0.0)
    );
}

#[test]
fn registries_are_independent() {
    let a = Metrics::new();
    let b = Metrics::new();
    a.event("file_open");
    assert_eq!(b.events.with_label_values(&["file_open"]).get(), 0);
    assert!(
        prometheus::gather()
            .iter()
            .all(|mf| !mf.name().starts_with("llmwatch_"))
    );
}

// ---- promtool

/// Runs promtool, or says why not: `None` when it is not installed and not required.
fn promtool(args: &[&str], stdin: &str) -> Option<std::process::Output> {
    let required = std::env::var("LLMWATCH_REQUIRE_PROMTOOL").is_ok_and(|v| v == "1");
    let child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                !required,
                "LLMWATCH_REQUIRE_PROMTOOL=1 but promtool is not installed (Debian/Ubuntu: apt-get install prometheus)"
            );
            eprintln!("skipped: promtool not installed");
            return None;
        }
        Err(e) => panic!("running promtool: {e}"),
    };
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("writing to promtool");
    drop(input);
    Some(child.wait_with_output().expect("waiting for promtool"))
}

#[test]
fn promtool_check_metrics() {
    for text in [touched().render(), Metrics::new().render()] {
        let Some(out) = promtool(&["check", "metrics"], &text) else {
            return;
        };
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("promtool check metrics: {} {}", out.status, report.trim());
        assert!(
            out.status.success() && report.trim().is_empty(),
            "promtool check metrics:\n{report}\n---\n{text}"
        );
    }
}

// ---- the Grafana dashboard

const DASHBOARD: &str = include_str!("../../../deploy/grafana/llmwatch.json");

/// PromQL keywords that look like identifiers but are not metric names (aggregations are
/// here because `sum by (x) (...)` puts a label list between the name and its parenthesis).
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
    "atan2",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Keywords followed by a parenthesised label list.
const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

/// Metric names in a PromQL expression: identifiers outside label matchers, strings and
/// ranges that are not functions, keywords, label lists or (Grafana) variables.
fn metric_names(expr: &str) -> Vec<String> {
    // Keep `{}` and `[]` but drop what is inside them, and drop string literals.
    let mut cleaned = String::new();
    let (mut braces, mut brackets) = (0usize, 0usize);
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in expr.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' && q != '`' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '{' => {
                braces += 1;
                if braces == 1 && brackets == 0 {
                    cleaned.push(c);
                }
            }
            '}' => {
                braces = braces.saturating_sub(1);
                if braces == 0 && brackets == 0 {
                    cleaned.push(c);
                }
            }
            '[' => {
                brackets += 1;
                if brackets == 1 && braces == 0 {
                    cleaned.push(c);
                }
            }
            ']' => {
                brackets = brackets.saturating_sub(1);
                if brackets == 0 && braces == 0 {
                    cleaned.push(c);
                }
            }
            _ if braces == 0 && brackets == 0 => cleaned.push(c),
            _ => {}
        }
    }
    let s: Vec<char> = cleaned.chars().collect();
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c.is_ascii_digit() || c == '.' || c == '$' {
            // A number (0.99, 1e3, 0x1f) or a Grafana variable: skip it whole.
            i += 1;
            while i < s.len() && (ident(s[i]) || s[i] == '.') {
                i += 1;
            }
            continue;
        }
        if !ident_start(c) {
            i += 1;
            continue;
        }
        let start = i;
        while i < s.len() && ident(s[i]) {
            i += 1;
        }
        let word: String = s[start..i].iter().collect();
        let mut next = i;
        while next < s.len() && s[next].is_whitespace() {
            next += 1;
        }
        let before_paren = s.get(next) == Some(&'(');
        if LABEL_LISTS.contains(&word.as_str()) && before_paren {
            // Skip the label list.
            let mut depth = 0;
            i = next;
            while i < s.len() {
                match s[i] {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            i += 1;
                            break;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            continue;
        }
        if before_paren || KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
            continue; // a function or keyword
        }
        names.push(word);
    }
    names
}

#[test]
fn metric_names_of_promql() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (le) (rate(a_seconds_bucket{x="b{c}[d]", le!=""}[5m])))"#
        ),
        ["a_seconds_bucket"]
    );
    assert_eq!(
        metric_names(
            r#"sum(rate(c_total{instance=~"$instance"}[$__rate_interval])) by (job) / on (instance) group_left (version) d"#
        ),
        ["c_total", "d"]
    );
    assert_eq!(
        metric_names("topk(10, e) > bool 1e3 and f offset 5m unless g[1h:5m]"),
        ["e", "f", "g"]
    );
    assert_eq!(
        metric_names(r#"label_replace(h, "dst", "$1", "src", "(.*)")"#),
        ["h"]
    );
    assert_eq!(metric_names("count without (cpu) (i) * Inf + NaN"), ["i"]);
}

/// Every `expr` string in the dashboard, with where it is.
fn exprs(v: &serde_json::Value, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(o) => {
            let title = o
                .get("title")
                .and_then(|t| t.as_str())
                .map(|t| format!("{at}/{t}"))
                .unwrap_or(at.into());
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push((title.clone(), e.clone())),
                    _ => exprs(v, &title, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, at, out)),
        _ => {}
    }
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(DASHBOARD).expect("deploy/grafana/llmwatch.json is JSON")
}

#[test]
fn dashboard_queries_only_exported_metrics() {
    let dash = dashboard();
    let mut found = Vec::new();
    exprs(&dash, "", &mut found);
    assert!(found.len() >= 10, "dashboard has too few queries: {found:?}");
    let types = types(&touched().render());
    let mut used = BTreeSet::new();
    for (panel, expr) in &found {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{panel}: no metric in {expr}");
        for name in names {
            let exported = types.contains_key(&name)
                || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                    name.strip_suffix(suffix)
                        .and_then(|base| types.get(base))
                        .is_some_and(|t| t == "histogram" || t == "summary")
                });
            assert!(
                exported,
                "{panel}: `{name}` is not exported by the agent (in: {expr})"
            );
            used.insert(name.trim_end_matches("_bucket").to_string());
        }
    }
    for needed in [
        "llmwatch_alerts_total",
        "llmwatch_incidents_total",
        "llmwatch_incidents_open",
        "llmwatch_weight_read_bytes_total",
        "llmwatch_egress_bytes_total",
        "llmwatch_gpu_processes",
        "llmwatch_watched_files",
        "llmwatch_watched_bytes",
        "llmwatch_kernel_ringbuf_drops_total",
        "llmwatch_hook_attached",
        "llmwatch_webhook_deliveries_total",
        "llmwatch_spool_depth",
        "llmwatch_event_to_alert_seconds",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(used.contains(needed), "the dashboard has no panel on {needed}");
    }
}

#[test]
fn dashboard_is_importable() {
    let dash = dashboard();
    assert!(
        dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion"
    );
    assert!(dash["uid"].is_string() && dash["title"].is_string());
    let vars = dash["templating"]["list"].as_array().expect("templating.list");
    assert!(
        vars.iter()
            .any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource" && v["query"] == "prometheus"),
        "no DS_PROMETHEUS datasource variable"
    );
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate panel id at {title}"
        );
        let g = &p["gridPos"];
        let (x, w) = (
            g["x"].as_u64().expect("gridPos.x"),
            g["w"].as_u64().expect("gridPos.w"),
        );
        assert!(
            x + w <= 24 && g["h"].as_u64().is_some() && g["y"].as_u64().is_some(),
            "gridPos of {title}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${DS_PROMETHEUS}",
            "datasource of {title}"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            assert_eq!(
                t["datasource"]["uid"], "${DS_PROMETHEUS}",
                "datasource of a query in {title}"
            );
        }
    }
}

/// The dashboard's PromQL parses (promtool checks it as recording rules).
#[test]
fn promtool_parses_dashboard_queries() {
    let mut found = Vec::new();
    exprs(&dashboard(), "", &mut found);
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in found.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$__range", "6h")
            .replace("$__interval", "1m")
            .replace("$instance", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dashboard.rules.yml");
    std::fs::write(&path, &rules).expect("writing rules");
    let Some(out) = promtool(&["check", "rules", path.to_str().unwrap()], "") else {
        return;
    };
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("promtool check rules: {} {}", out.status, report.trim());
    assert!(
        out.status.success(),
        "dashboard PromQL does not parse:\n{report}\n---\n{rules}"
    );
}

// ---- the HTTP endpoint

async fn start(limits: Limits) -> (SocketAddr, Arc<Metrics>, Arc<Health>, tokio::task::JoinHandle<()>) {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new());
    let (addr, task) = serve_with(
        "127.0.0.1:0".parse().unwrap(),
        metrics.clone(),
        health.clone(),
        limits,
    )
    .await
    .expect("binding 127.0.0.1:0");
    (addr, metrics, health, task)
}

/// Sends `request` as is and returns (status, headers, body) of the answer.
async fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("answer within 10 s")
        .expect("read");
    let raw = String::from_utf8(raw).expect("utf-8 answer");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head end in {raw:?}"));
    // An HTTP/1.0 request is answered in HTTP/1.0.
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| head.strip_prefix("HTTP/1.0 "))
        .and_then(|r| r[..3].parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.parse().ok())
        .expect("Content-Length");
    if !request.starts_with(b"HEAD ") {
        assert_eq!(length, body.len(), "Content-Length");
    }
    (status, head.to_string(), body.to_string())
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n").as_bytes(),
    )
    .await
}

#[tokio::test]
async fn serves_metrics_health_and_readiness() {
    let (addr, metrics, health, task) = start(Limits::default()).await;
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 0, "the bound port is returned");
    metrics.alert("weight.bulk_read", "critical");

    let (status, head, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    assert!(
        body.contains("llmwatch_alerts_total{rule=\"weight.bulk_read\",severity=\"critical\"} 1"),
        "{body}"
    );
    assert!(body.contains("# TYPE llmwatch_build_info gauge"));
    assert!(body.contains("process_resident_memory_bytes"));
    assert_eq!(
        get(addr, "/metrics?name[]=x").await.0,
        200,
        "query strings are ignored"
    );

    assert_eq!(
        get(addr, "/healthz").await,
        (200, get(addr, "/healthz").await.1, "ok".into())
    );
    assert_eq!(get(addr, "/readyz").await.0, 503, "not ready until told");
    health.set_ready(true);
    let (status, _, body) = get(addr, "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready"));
    health.ready.store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(get(addr, "/readyz").await.0, 503);
    health.set_live(false);
    assert_eq!(get(addr, "/healthz").await.0, 503);

    assert_eq!(get(addr, "/nope").await.0, 404);
    assert_eq!(get(addr, "/").await.0, 404);
    assert_eq!(get(addr, "/metricsX").await.0, 404);

    let (status, head, _) = exchange(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
    assert_eq!(status, 405);
    assert!(head.contains("Allow: GET, HEAD"), "{head}");
    assert_eq!(exchange(addr, b"DELETE /nope HTTP/1.1\r\n\r\n").await.0, 405);
    let (status, head, body) = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!((status, body.as_str()), (200, ""), "HEAD: no body");
    assert!(head.contains("Content-Length: "));
    // HTTP/1.0 and bare-LF clients (nc, old tools) are answered too.
    health.set_live(true);
    assert_eq!(exchange(addr, b"GET /healthz HTTP/1.0\n\n").await.0, 200);
    task.abort();
}

#[tokio::test]
async fn garbage_and_oversized_requests() {
    let (addr, ..) = start(Limits::default()).await;
    assert_eq!(exchange(addr, b"\x00\x01\x02 garbage\r\n\r\n").await.0, 400);
    assert_eq!(exchange(addr, b"GET\r\n\r\n").await.0, 400);
    assert_eq!(exchange(addr, b"GET /metrics\r\n\r\n").await.0, 400);
    assert_eq!(exchange(addr, b"GET metrics HTTP/1.1\r\n\r\n").await.0, 400);
    // HTTP/1.x only: hyper's parser refuses any other version.
    assert_eq!(exchange(addr, b"GET /metrics HTTP/2.0\r\n\r\n").await.0, 400);
    assert_eq!(exchange(addr, b"\xff\xfe /metrics HTTP/1.1\r\n\r\n").await.0, 400);
    // 8 KiB of header and no end: refused without waiting for more.
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    big.resize(20_000, b'a');
    assert_eq!(exchange(addr, &big).await.0, 431);
    // Just under the cap is fine.
    let mut fits = b"GET /healthz HTTP/1.1\r\nX-Filler: ".to_vec();
    fits.resize(8 * 1024 - 4, b'a');
    fits.extend_from_slice(b"\r\n\r\n");
    assert_eq!(exchange(addr, &fits).await.0, 200);
    // A client that connects and closes at once costs nothing.
    drop(tokio::net::TcpStream::connect(addr).await.unwrap());
    assert_eq!(get(addr, "/healthz").await.0, 200);
}

#[tokio::test]
async fn slow_clients_do_not_block_others() {
    let limits = Limits {
        read_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let (addr, ..) = start(limits).await;
    // Many clients that send half a request and stall.
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metr").await.unwrap();
        stalled.push(s);
    }
    let t = std::time::Instant::now();
    assert_eq!(get(addr, "/metrics").await.0, 200);
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "scrape waited {:?} behind slow clients",
        t.elapsed()
    );
    // The stalled ones are closed once their time is up (hyper answers nothing then).
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stalled[0].read_to_end(&mut raw))
        .await
        .expect("closed after the read timeout")
        .unwrap();
    assert!(raw.is_empty(), "{}", String::from_utf8_lossy(&raw));
}

#[tokio::test]
async fn bind_error_is_returned() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = serve(addr, Arc::new(Metrics::new()), Arc::new(Health::new()))
        .await
        .expect_err("address in use");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    assert_eq!(DEFAULT_ADDR.parse::<SocketAddr>().unwrap().port(), 9477);
}

#[test]
fn respond_routes_without_a_socket() {
    use hyper::Method;
    let (m, h) = (Metrics::new(), Health::new());
    assert_eq!(respond(&Method::GET, "/healthz", &m, &h).status, 200);
    assert_eq!(respond(&Method::GET, "/readyz", &m, &h).status, 503);
    assert_eq!(respond(&Method::PUT, "/healthz", &m, &h).status, 405);
    assert_eq!(respond(&Method::GET, "/healthz/", &m, &h).status, 404);
    let r = respond(&Method::HEAD, "/metrics", &m, &h);
    assert!(r.status == 200 && !r.body.is_empty());
}
