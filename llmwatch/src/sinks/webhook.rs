//! One webhook target: the request, the payload presets, signing, and what a response means.
use std::{
    fmt::Write as _,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use sha2::Sha256;
use url::Url;

use super::{DeliveryError, Preset, Secret, WebhookTarget};
use crate::{
    alerts::human_bytes,
    http_client::{self, describe, excerpt},
};

pub const SIGNATURE_HEADER: &str = "X-Llmwatch-Signature";
pub const TIMESTAMP_HEADER: &str = "X-Llmwatch-Timestamp";
pub const ALERT_ID_HEADER: &str = "X-Llmwatch-Alert-Id";

/// `sha256=<hex HMAC-SHA256 of body>`: the value of `X-Llmwatch-Signature`.
pub fn signature(secret: &Secret, body: &[u8]) -> String {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret.expose()).expect("HMAC accepts any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Header names whose values are never logged.
pub(crate) fn is_sensitive(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "auth",
        "token",
        "key",
        "secret",
        "cookie",
        "password",
        "signature",
        "session",
    ]
    .iter()
    .any(|w| n.contains(w))
}

/// `name: value`, or `name: <redacted>` for a sensitive name.
pub(crate) fn show_header(name: &str, value: &str) -> String {
    if is_sensitive(name) {
        format!("{name}: <redacted>")
    } else {
        format!("{name}: {value}")
    }
}

/// `scheme://host[:port]`: what logs, errors and metrics call a target. The path, query and
/// user info are left out because webhook URLs often carry their credential there (Slack).
pub(crate) fn url_label(url: &Url) -> String {
    let mut s = format!("{}://{}", url.scheme(), url.host_str().unwrap_or("?"));
    if let Some(p) = url.port() {
        let _ = write!(s, ":{p}");
    }
    s
}

/// What one attempt came to.
#[derive(Debug)]
pub(crate) enum Attempt {
    Delivered(u16),
    /// 408, 429, 5xx, connection errors, timeouts. `after` is the receiver's Retry-After.
    Retry {
        after: Option<Duration>,
        why: String,
    },
    /// Any other status: retrying would get the same answer.
    Failed {
        why: String,
    },
}

pub(crate) struct Sender {
    pub label: String,
    url: Url,
    headers: HeaderMap,
    secret: Option<Secret>,
    preset: Preset,
    am: AlertmanagerOptions,
    client: reqwest::Client,
}

impl Sender {
    pub(crate) fn new(
        t: &WebhookTarget,
        label: String,
        am: &AlertmanagerOptions,
    ) -> Result<Sender, DeliveryError> {
        let bad = |reason: String| DeliveryError::Target {
            url: label.clone(),
            reason,
        };
        if !matches!(t.url.scheme(), "http" | "https") {
            return Err(bad(format!("scheme {:?} is not http or https", t.url.scheme())));
        }
        if t.url.host_str().is_none() {
            return Err(bad("the URL has no host".into()));
        }
        if t.timeout.is_zero() {
            return Err(bad("timeout must be above zero".into()));
        }
        let mut headers = HeaderMap::new();
        for (k, v) in &t.headers {
            let name = HeaderName::from_bytes(k.trim().as_bytes())
                .map_err(|_| bad(format!("header name {k:?} is not valid")))?;
            let mut value = HeaderValue::from_str(v.trim())
                .map_err(|_| bad(format!("the value of header {k:?} is not a valid header value")))?;
            if is_sensitive(k) {
                value.set_sensitive(true);
            }
            headers.append(name, value);
        }
        // HTTP(S)_PROXY is honored, except for this host's own loopback.
        let route = if http_client::is_loopback(&t.url) {
            http_client::Route::Direct
        } else {
            http_client::Route::ProxyAllowed
        };
        let client = http_client::builder(t.timeout, route)
            .build()
            .map_err(|e| bad(format!("HTTP client: {}", describe(e))))?;
        Ok(Sender {
            label,
            url: t.url.clone(),
            headers,
            secret: t.secret.clone(),
            preset: t.preset,
            am: am.clone(),
            client,
        })
    }

    /// How often the alerts of open incidents are re-posted, for a target that keeps them
    /// firing (the alertmanager preset).
    pub(crate) fn refresh(&self) -> Option<Duration> {
        (self.preset == Preset::Alertmanager).then_some(self.am.refresh)
    }

    /// The request body for one spooled alert (its exact JSON), built for an attempt at `now`
    /// (an Alertmanager alert's lease runs from the attempt, however long it waited to be sent).
    pub(crate) fn payload(&self, raw: &[u8], now: DateTime<Utc>) -> Result<Vec<u8>, String> {
        let built = match self.preset {
            Preset::Raw => return Ok(raw.to_vec()),
            Preset::Slack | Preset::Alertmanager => {
                let v: Value =
                    serde_json::from_slice(raw).map_err(|e| format!("spooled alert is not JSON: {e}"))?;
                if self.preset == Preset::Slack {
                    slack(&v)
                } else {
                    alertmanager(&v, now, &self.am)
                }
            }
        };
        serde_json::to_vec(&built).map_err(|e| e.to_string())
    }

    /// The Alertmanager body that keeps these incidents' alerts firing from `now` on (their
    /// latest messages, as delivered).
    pub(crate) fn refresh_payload<'a>(
        &self,
        latest: impl Iterator<Item = &'a Value>,
        now: DateTime<Utc>,
    ) -> Result<Vec<u8>, String> {
        let alerts: Vec<Value> = latest
            .map(|m| am_alert(m, &am_severity(m), AmSpan::Firing(now), &self.am))
            .collect();
        serde_json::to_vec(&alerts).map_err(|e| e.to_string())
    }

    /// One POST; `id` is the spooled alert's (a refresh of firing alerts has none). Never logs
    /// header values or the URL's path.
    pub(crate) async fn attempt(&self, body: &[u8], id: Option<&str>) -> Attempt {
        let mut headers = self.headers.clone();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        headers.insert(TIMESTAMP_HEADER, HeaderValue::from(ts));
        if let Some(Ok(v)) = id.map(HeaderValue::from_str) {
            headers.insert(ALERT_ID_HEADER, v);
        }
        if let Some(secret) = &self.secret
            && let Ok(mut v) = HeaderValue::from_str(&signature(secret, body))
        {
            v.set_sensitive(true);
            headers.insert(SIGNATURE_HEADER, v);
        }
        let resp = match self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(body.to_vec())
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Retry {
                    after: None,
                    why: describe(e),
                };
            }
        };
        let status = resp.status();
        let after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = excerpt(resp).await;
        let code = status.as_u16();
        if status.is_success() {
            return Attempt::Delivered(code);
        }
        let why = if text.is_empty() {
            format!("HTTP {code}")
        } else {
            format!("HTTP {code}: {text}")
        };
        if code == 408 || code == 429 || status.is_server_error() {
            Attempt::Retry {
                after: after.and_then(|a| parse_retry_after(&a, Utc::now())),
                why,
            }
        } else if status.is_redirection() {
            Attempt::Failed {
                why: format!("{why} (redirects are not followed)"),
            }
        } else {
            Attempt::Failed { why }
        }
    }
}

/// `Retry-After`: delay-seconds or an HTTP date.
pub(crate) fn parse_retry_after(v: &str, now: DateTime<Utc>) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// Randomness for retry jitter: fastrand's generator (wyrand), seeded per target from the
/// process's random state, so targets retrying at once spread apart. Spreading retries needs
/// no cryptographic randomness.
pub(crate) struct Jitter(fastrand::Rng);

impl Jitter {
    pub(crate) fn new() -> Jitter {
        Jitter(fastrand::Rng::new())
    }

    /// Uniform in [0, d].
    pub(crate) fn upto(&mut self, d: Duration) -> Duration {
        let n = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.0.u64(0..=n))
    }
}

/// Full jitter: uniform in [0, min(max, initial * 2^attempt)], at least 1 ms.
pub(crate) fn backoff(attempt: u32, initial: Duration, max: Duration, jitter: &mut Jitter) -> Duration {
    let cap = initial.saturating_mul(1u32 << attempt.min(31)).min(max);
    jitter.upto(cap).max(Duration::from_millis(1))
}

// ---- payload presets, built from the alert's JSON (field names are the alert contract) ----

fn text<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn num(v: &Value, path: &[&str]) -> Option<u64> {
    path.iter().try_fold(v, |v, k| v.get(k)).and_then(Value::as_u64)
}

/// `python3 (pid 42, user alice, /usr/bin/python3)`.
fn process_line(a: &Value) -> String {
    let p = |k: &str| text(a, &["process", k]);
    let mut s = format!("{} (pid {}", p("comm"), num(a, &["process", "pid"]).unwrap_or(0));
    match (p("user"), num(a, &["process", "uid"])) {
        ("", Some(uid)) => {
            let _ = write!(s, ", uid {uid}");
        }
        ("", None) => {}
        (user, _) => {
            let _ = write!(s, ", user {user}");
        }
    }
    if !p("exe").is_empty() {
        let _ = write!(s, ", {}", p("exe"));
    }
    s.push(')');
    s
}

fn container_line(a: &Value) -> Option<String> {
    let k = |key: &str| text(a, &["process", "kubernetes", key]);
    if !k("pod").is_empty() {
        let mut s = format!("{}/{} container {}", k("namespace"), k("pod"), k("container"));
        let w = |key: &str| text(a, &["process", "kubernetes", "workload", key]);
        if !w("kind").is_empty() {
            let _ = write!(s, " ({} {})", w("kind"), w("name"));
        }
        return Some(s);
    }
    let c = text(a, &["process", "container_id"]);
    let pod = text(a, &["process", "pod"]);
    match (c.is_empty(), pod.is_empty()) {
        (true, true) => None,
        (false, true) => Some(c.chars().take(12).collect()),
        (true, false) => Some(format!("pod {pod}")),
        (false, false) => Some(format!("{} (pod {pod})", c.chars().take(12).collect::<String>())),
    }
}

/// At most `max` lines, then "… and N more".
fn list(items: Vec<String>, max: usize) -> String {
    let n = items.len();
    let mut out: Vec<String> = items.into_iter().take(max).collect();
    if n > max {
        out.push(format!("… and {} more", n - max));
    }
    out.join("\n")
}

fn files_lines(a: &Value) -> Vec<String> {
    let files = a
        .get("files")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    files
        .iter()
        .map(|f| {
            format!(
                "{} (read {} of {})",
                text(f, &["path"]),
                human_bytes(num(f, &["bytes_read"]).unwrap_or(0)),
                human_bytes(num(f, &["size"]).unwrap_or(0))
            )
        })
        .collect()
}

fn network_lines(a: &Value) -> Vec<String> {
    let net = a
        .get("network")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    net.iter()
        .map(|n| {
            let dest = n
                .get("dest")
                .map(|d| d.as_str().map(str::to_owned).unwrap_or_else(|| d.to_string()));
            let dest = dest.unwrap_or_default();
            let dest = if dest.contains(':') {
                format!("[{dest}]")
            } else {
                dest
            };
            format!(
                "{dest}:{} ({} sent)",
                num(n, &["port"]).unwrap_or(0),
                human_bytes(num(n, &["bytes_sent"]).unwrap_or(0))
            )
        })
        .collect()
}

fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// `[weight.unexpected_reader, weight.exfiltration]` as `a, b`.
fn joined(a: &Value, key: &str) -> String {
    strings(a, key).join(", ")
}

/// The strings of a list field.
fn strings<'a>(a: &'a Value, key: &str) -> Vec<&'a str> {
    let items = a
        .get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    items.iter().filter_map(Value::as_str).collect()
}

/// What an incident message says about the incident (empty for a plain alert, as spooled by
/// an agent from before incidents): `opened`, `escalated (medium → critical, new destination)`,
/// `resolved (exited)`.
fn incident_status(a: &Value) -> String {
    let status = text(a, &["status"]);
    let mut why = Vec::new();
    if let Some(before) = a.get("previous_severity").and_then(Value::as_str) {
        why.push(format!("{before} → {}", text(a, &["severity"])));
    }
    // The severity's change is said above, with its values; what else is new.
    let new: Vec<&str> = strings(a, "changes")
        .into_iter()
        .filter(|c| *c != "severity")
        .collect();
    if !new.is_empty() {
        why.push(format!("new {}", new.join(", ")));
    }
    if let Some(r) = a.get("resolved_by").and_then(Value::as_str) {
        why.push(r.to_string());
    }
    match (status, why.is_empty()) {
        ("", _) => String::new(),
        (s, true) => s.to_string(),
        (s, false) => format!("{s} ({})", why.join(", ")),
    }
}

/// Slack incoming-webhook message: `text` (what notifications show) plus one attachment with
/// a severity color and the details as fields. Mattermost and Rocket.Chat accept the same shape.
/// An incident's messages say whether it opened, escalated or was resolved.
pub(crate) fn slack(a: &Value) -> Value {
    let sev = text(a, &["severity"]);
    let color = match sev {
        "critical" => "#b00020",
        "high" => "#e8590c",
        "medium" => "#f2c744",
        "low" => "#2f80ed",
        _ => "#8a8a8a",
    };
    let status = incident_status(a);
    let headline = format!(
        "[{}] {}{}{} on {}: {}",
        sev.to_uppercase(),
        status,
        if status.is_empty() { "" } else { ": " },
        text(a, &["rule"]),
        text(a, &["host"]),
        text(a, &["summary"])
    );
    let field = |title: &str, value: String, short: bool| {
        let value = slack_escape(&value);
        json!({"title": title, "value": value, "short": short})
    };
    let mut fields = vec![
        field("Rule", text(a, &["rule"]).into(), true),
        field("Severity", sev.into(), true),
        field("Host", text(a, &["host"]).into(), true),
        field("Process", process_line(a), false),
    ];
    if !status.is_empty() {
        fields.push(field("Status", status.clone(), true));
        fields.push(field("Rules", joined(a, "rules"), false));
        fields.push(field(
            "Totals",
            format!(
                "read {}, sent {} ({} to {})",
                human_bytes(num(a, &["bytes_read"]).unwrap_or(0)),
                human_bytes(num(a, &["bytes_sent"]).unwrap_or(0)),
                text(a, &["first"]),
                text(a, &["last"])
            ),
            false,
        ));
    }
    if let Some(c) = container_line(a) {
        fields.push(field("Container", c, true));
    }
    let files = files_lines(a);
    if !files.is_empty() {
        fields.push(field("Files", list(files, 10), false));
    }
    let net = network_lines(a);
    if !net.is_empty() {
        fields.push(field("Network", list(net, 10), false));
    }
    if a.get("incomplete").and_then(Value::as_bool) == Some(true) {
        fields.push(field(
            "Note",
            "the kernel lost events during this alert: counts may be low".into(),
            false,
        ));
    }
    if let Some(n) = num(a, &["suppressed"]).filter(|n| *n > 0) {
        fields.push(field("Suppressed repeats", n.to_string(), true));
    }
    if !status.is_empty() {
        fields.push(field("Incident id", text(a, &["incident_id"]).into(), true));
    }
    fields.push(field("Alert id", text(a, &["id"]).into(), true));
    let ts = DateTime::parse_from_rfc3339(text(a, &["time"]))
        .map(|t| t.timestamp())
        .unwrap_or(0);
    json!({
        "text": slack_escape(&headline),
        "attachments": [{
            "fallback": slack_escape(&headline),
            "color": color,
            "title": slack_escape(text(a, &["summary"])),
            "fields": fields,
            "footer": "llmwatch",
            "ts": ts,
        }],
    })
}

/// What the alertmanager preset adds to the messages: where the alerts come from, and how
/// often the alerts of open incidents are re-posted. Like Prometheus, a firing alert is a
/// lease its sender renews (for [`AM_LEASE_REFRESHES`] refresh intervals each time): an agent
/// that dies has its alerts resolved by Alertmanager after the lease, and an open incident is
/// never resolved early by Alertmanager's own `resolve_timeout` (5 min by default, shorter
/// than `incidents.idle`).
#[derive(Debug, Clone, PartialEq)]
pub struct AlertmanagerOptions {
    /// `generatorURL` of every alert.
    pub generator_url: String,
    pub refresh: Duration,
}

/// Where alerts come from when the agent has no metrics endpoint to point to.
pub const PLACEHOLDER_GENERATOR_URL: &str = "llmwatch://localhost/";

impl Default for AlertmanagerOptions {
    fn default() -> Self {
        AlertmanagerOptions {
            generator_url: PLACEHOLDER_GENERATOR_URL.to_string(),
            refresh: Duration::from_secs(60),
        }
    }
}

impl AlertmanagerOptions {
    fn lease_end(&self, now: DateTime<Utc>) -> String {
        let lease = self.refresh.saturating_mul(AM_LEASE_REFRESHES);
        let lease = chrono::TimeDelta::from_std(lease).unwrap_or(chrono::TimeDelta::MAX);
        (now + lease).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }
}

/// Four refreshes: a few lost posts (Alertmanager restarting) resolve nothing.
pub const AM_LEASE_REFRESHES: u32 = 4;

/// The severity label of an incident message's current alert.
fn am_severity(a: &Value) -> String {
    text(a, &["severity"]).to_string()
}

/// Labels: what Alertmanager routes, groups, silences and inhibits on, so only values that stay
/// the same for an incident's whole life and are few: the rule that opened it (`alertname`, the
/// first of `rules`: the primary rule changes as it escalates), `severity`, the host, the
/// incident id, the pod and its namespace when known (the pod's name where the container runtime
/// named it, else its UID; `asset_class` when the message has it). Severity is a label because routes key on it (page on critical);
/// when an incident's severity rises, its alert under the old severity is resolved in the same
/// post that fires the new one (see [`alertmanager`]). Everything that varies (pids, paths, byte
/// counts, the rule of each hit) is in the annotations.
fn am_labels(a: &Value, severity: &str) -> serde_json::Map<String, Value> {
    let mut labels = serde_json::Map::new();
    let mut label = |k: &str, v: &str| {
        if !v.is_empty() {
            labels.insert(k.into(), Value::String(v.into()));
        }
    };
    let first_rule = strings(a, "rules")
        .first()
        .copied()
        .unwrap_or_else(|| text(a, &["rule"]));
    label("alertname", first_rule);
    label("severity", severity);
    label("host", text(a, &["host"]));
    label("instance", text(a, &["host"]));
    label("job", "llmwatch");
    label("incident_id", text(a, &["incident_id"]));
    label("pod", text(a, &["pod"]));
    label("namespace", text(a, &["namespace"]));
    label("asset_class", text(a, &["asset_class"]));
    labels
}

fn am_annotations(a: &Value) -> serde_json::Map<String, Value> {
    let mut ann = serde_json::Map::new();
    let mut note = |k: &str, v: String| {
        if !v.is_empty() {
            ann.insert(k.into(), Value::String(v));
        }
    };
    note("summary", text(a, &["summary"]).into());
    note("status", incident_status(a));
    note("rule", text(a, &["rule"]).into());
    note("rules", joined(a, "rules"));
    note("alert_id", text(a, &["id"]).into());
    note("dedup_key", text(a, &["dedup_key"]).into());
    note("process", process_line(a));
    note("container", container_line(a).unwrap_or_default());
    note("files", list(files_lines(a), 20));
    note("network", list(network_lines(a), 20));
    for key in ["bytes_read", "bytes_sent"] {
        note(key, num(a, &[key]).map(|n| n.to_string()).unwrap_or_default());
    }
    for key in ["first", "last"] {
        note(key, text(a, &[key]).into());
    }
    note("window_start", text(a, &["window", "start"]).into());
    note("window_end", text(a, &["window", "end"]).into());
    if a.get("incomplete").and_then(Value::as_bool) == Some(true) {
        note("incomplete", "true".into());
    }
    if let Some(n) = num(a, &["suppressed"]).filter(|n| *n > 0) {
        note("suppressed", n.to_string());
    }
    let mut description = format!("{}\nprocess: {}", text(a, &["summary"]), process_line(a));
    for (k, v) in [
        ("files", list(files_lines(a), 5)),
        ("network", list(network_lines(a), 5)),
    ] {
        if !v.is_empty() {
            let _ = write!(description, "\n{k}:\n{v}");
        }
    }
    note("description", description);
    ann
}

/// When one alert of an incident starts and ends.
enum AmSpan {
    /// Firing from the message's time, for a lease from the attempt at this instant.
    Firing(DateTime<Utc>),
    /// Resolved at the message's time.
    Resolved,
}

fn am_alert(a: &Value, severity: &str, span: AmSpan, am: &AlertmanagerOptions) -> Value {
    let time = text(a, &["time"]);
    // Alertmanager keeps the earliest startsAt of an alert it already has, so a later one (an
    // escalation, a refresh, the resolution) never moves it back; an opening starts at the
    // incident's first evidence.
    let (starts, ends) = match span {
        AmSpan::Firing(now) if text(a, &["status"]) == "opened" => (text(a, &["first"]), am.lease_end(now)),
        AmSpan::Firing(now) => (time, am.lease_end(now)),
        // Ended at the message's time, which has passed when it is delivered: an end still in
        // Alertmanager's future would not cut the lease short (it keeps a firing alert's later end).
        AmSpan::Resolved => (time, time.to_string()),
    };
    json!({
        "labels": am_labels(a, severity),
        "annotations": am_annotations(a),
        "startsAt": starts,
        "endsAt": ends,
        "generatorURL": am.generator_url,
    })
}

/// Alertmanager `POST /api/v2/alerts` body. An incident's message becomes its firing alert with
/// a lease from `now` (see [`AlertmanagerOptions`]: the delivery renews it while the incident is
/// open), plus,
/// when the message raised the severity, the alert under the old severity resolved; a resolved
/// incident's alert gets `endsAt`. Every alert of one incident has the same labels but
/// `severity` (see [`am_labels`]). A plain alert (spooled by an agent from before incidents) is
/// one alert with its rule and dedup key as labels and no `endsAt`, as then.
pub(crate) fn alertmanager(a: &Value, now: DateTime<Utc>, am: &AlertmanagerOptions) -> Value {
    let severity = am_severity(a);
    if a.get("incident_id").is_none() {
        let mut labels = am_labels(a, &severity);
        labels.insert("rule".into(), Value::String(text(a, &["rule"]).into()));
        labels.insert("dedup_key".into(), Value::String(text(a, &["dedup_key"]).into()));
        return json!([{
            "labels": labels,
            "annotations": am_annotations(a),
            "startsAt": text(a, &["time"]),
            "generatorURL": am.generator_url,
        }]);
    }
    if text(a, &["status"]) == "resolved" {
        return json!([am_alert(a, &severity, AmSpan::Resolved, am)]);
    }
    let mut alerts = Vec::new();
    if let Some(before) = a.get("previous_severity").and_then(Value::as_str) {
        alerts.push(am_alert(a, before, AmSpan::Resolved, am));
    }
    alerts.push(am_alert(a, &severity, AmSpan::Firing(now), am));
    Value::Array(alerts)
}
