//! Alert delivery to webhooks, through a durable on-disk spool.
//!
//! [`Delivery::send`] writes the alert to the spool (see [`spool`] for the layout) and returns;
//! one task per target then POSTs spooled alerts in order. Delivery is at least once: a receiver
//! sees an alert again if the agent stops between the POST and recording it, so receivers should
//! dedupe on `X-Llmwatch-Alert-Id` (at-least-once plus the id gives exactly-once processing).
//!
//! Per target, alerts go out strictly in order: an alert that must be retried holds back the
//! ones after it, which wait in the spool.
//! - 2xx: delivered.
//! - 408, 429, 5xx, connection errors, timeouts: retried with exponential backoff and full
//!   jitter (uniform in `[0, min(retry_max, retry_initial * 2^n)]`, `n` counting the target's
//!   failed attempts in a row), waiting at least the receiver's `Retry-After` (seconds or HTTP
//!   date) capped at `retry_max`. Retries go on until the alert is delivered or evicted from a
//!   full spool. The backoff belongs to the target, not to the alert: when the alert being
//!   retried is evicted, the next one waits out the same backoff, so a long outage costs about
//!   one attempt per `retry_max / 2` (full jitter), whatever the rate of alerts.
//! - any other status (400, 401, 404, 413, a 3xx: redirects are not followed): counted `failed`,
//!   logged with the status and the start of the response body, and the alert is done for that
//!   target: the same request would never succeed, and retrying it would block every later alert.
//!
//! Requests carry `Content-Type: application/json`, `User-Agent: llmwatch/<version>`,
//! `X-Llmwatch-Alert-Id: <id>`, `X-Llmwatch-Timestamp: <unix seconds>` and, when the target has
//! a secret, `X-Llmwatch-Signature: sha256=<hex HMAC-SHA256(secret, body)>`. The signature
//! covers the exact body bytes only, not the timestamp: verify it over the raw body before
//! parsing, and dedupe replays on the alert id.
//!
//! The spool is bounded by `spool_max_bytes` (the sum of the alerts' JSON sizes). When a new
//! alert does not fit, the oldest alert of the lowest severity (info < low < medium < high <
//! critical) is evicted, which may be the new alert itself if everything queued is more severe.
//! A disk that refuses writes (full, I/O errors) loses nothing by itself: alerts are kept in
//! memory and delivered from there, bounded by `memory_max_bytes` (the same eviction rule), and
//! written to the spool once the disk takes writes again (see [`spool`]). Every alert is
//! delivered, refused by the receiver (`failed`), or counted as dropped (`spool_dropped`) and
//! logged with the reason; none is lost silently.
//!
//! Requests go through `HTTPS_PROXY`/`HTTP_PROXY` (and `NO_PROXY`) when set, except to a
//! loopback target; TLS is rustls with the Mozilla (webpki) roots.
//!
//! Nothing here logs a secret, the value of a header whose name looks like a credential
//! (authorization, token, key, secret, cookie, password...), or a URL's path and query (webhook
//! URLs such as Slack's carry their credential there): targets are named `scheme://host[:port]`.
use std::{
    fmt, io,
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::{sync::watch, task::JoinHandle};
use url::Url;

use crate::{
    alerts::{Alert, incidents::IncidentMessage},
    config::Severity,
};

pub mod spool;
pub mod webhook;

#[cfg(test)]
mod tests;

pub use webhook::{ALERT_ID_HEADER, AlertmanagerOptions, SIGNATURE_HEADER, TIMESTAMP_HEADER, signature};

pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/llmwatch/spool";
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 64 << 20;
/// Alert bytes waiting in memory: not yet written, or held while the disk refuses writes.
pub const DEFAULT_MEMORY_MAX_BYTES: u64 = 8 << 20;
pub const DEFAULT_RETRY_INITIAL: Duration = Duration::from_secs(1);
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(300);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the spool needs to know of a message besides its JSON (which is what `raw` sends).
pub trait Deliverable: serde::Serialize {
    /// Unique per message: `X-Llmwatch-Alert-Id`, what receivers dedupe on.
    fn id(&self) -> &str;
    fn rule(&self) -> &str;
    /// Which messages a full spool evicts first.
    fn severity(&self) -> Severity;
}

/// A rule hit as it is (the spool and its tests deal in these too).
impl Deliverable for Alert {
    fn id(&self) -> &str {
        &self.id
    }
    fn rule(&self) -> &str {
        &self.rule
    }
    fn severity(&self) -> Severity {
        self.severity
    }
}

/// What the agent delivers: an incident's message.
impl Deliverable for IncidentMessage {
    fn id(&self) -> &str {
        &self.alert.id
    }
    fn rule(&self) -> &str {
        &self.alert.rule
    }
    fn severity(&self) -> Severity {
        self.alert.severity
    }
}

/// The body sent to a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preset {
    /// The alert JSON exactly as serialized (the alert contract).
    #[default]
    Raw,
    /// A Slack incoming-webhook message (`text` + one colored attachment with the details).
    Slack,
    /// An Alertmanager `/api/v2/alerts` array of one alert (labels, annotations, startsAt).
    Alertmanager,
}

impl Preset {
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Raw => "raw",
            Preset::Slack => "slack",
            Preset::Alertmanager => "alertmanager",
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Preset {
    type Err = String;

    /// `raw`, `slack` or `alertmanager`, case-insensitive.
    fn from_str(s: &str) -> Result<Preset, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "raw" => Ok(Preset::Raw),
            "slack" => Ok(Preset::Slack),
            "alertmanager" => Ok(Preset::Alertmanager),
            _ => Err(format!(
                "{s:?} is not a webhook preset (raw, slack, alertmanager)"
            )),
        }
    }
}

/// An HMAC key. Never printed: `Debug` and `Display` show `<redacted>`; zeroed on drop.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(bytes.into())
    }

    /// The file's content without trailing CR/LF. An empty secret is an error. Warns when the
    /// file is readable by everyone.
    pub fn from_file(path: impl AsRef<Path>) -> io::Result<Secret> {
        let path = path.as_ref();
        let named = |e: io::Error| io::Error::new(e.kind(), format!("secret file {}: {e}", path.display()));
        let mut bytes = std::fs::read(path).map_err(named)?;
        if let Ok(m) = std::fs::metadata(path)
            && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o004 != 0
        {
            log::warn!("secret file {} is readable by every user", path.display());
        }
        while matches!(bytes.last(), Some(b'\n' | b'\r')) {
            bytes.pop();
        }
        if bytes.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("secret file {} is empty", path.display()),
            ));
        }
        Ok(Secret(bytes))
    }

    /// The value of environment variable `var`; unset or empty is an error naming it.
    pub fn from_env(var: &str) -> io::Result<Secret> {
        use std::os::unix::ffi::OsStringExt;
        match std::env::var_os(var) {
            Some(v) if !v.is_empty() => Ok(Secret(v.into_vec())),
            Some(_) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("environment variable {var} is empty"),
            )),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("environment variable {var} is not set"),
            )),
        }
    }

    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // SAFETY: a valid, exclusive reference; volatile so the wipe is not optimized out.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One receiver.
#[derive(Clone)]
pub struct WebhookTarget {
    pub url: Url,
    /// Sent with every request; values of credential-like names are never logged.
    pub headers: Vec<(String, String)>,
    /// When set, requests are signed (`X-Llmwatch-Signature`).
    pub secret: Option<Secret>,
    /// Per request, connecting included.
    pub timeout: Duration,
    pub preset: Preset,
}

impl WebhookTarget {
    /// No headers, no secret, a 10 s timeout, the raw alert JSON.
    pub fn new(url: Url) -> WebhookTarget {
        WebhookTarget {
            url,
            headers: Vec::new(),
            secret: None,
            timeout: DEFAULT_TIMEOUT,
            preset: Preset::Raw,
        }
    }

    /// `scheme://host[:port]`: how logs and metrics name this target (the path may hold a token).
    pub fn label(&self) -> String {
        webhook::url_label(&self.url)
    }
}

impl fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|(k, v)| webhook::show_header(k, v))
            .collect();
        f.debug_struct("WebhookTarget")
            .field("url", &self.label())
            .field("headers", &headers)
            .field("secret", &self.secret)
            .field("timeout", &self.timeout)
            .field("preset", &self.preset)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub targets: Vec<WebhookTarget>,
    pub spool_dir: PathBuf,
    /// Bound on the sum of the spooled alerts' JSON sizes.
    pub spool_max_bytes: u64,
    /// Bound on the alert bytes waiting in memory (for the writer, or held while the disk
    /// refuses writes); at most `spool_max_bytes` is used.
    pub memory_max_bytes: u64,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// What the alertmanager preset adds: `generatorURL`, and how often it renews the alerts of
    /// open incidents.
    pub alertmanager: AlertmanagerOptions,
}

impl Default for DeliveryConfig {
    fn default() -> DeliveryConfig {
        DeliveryConfig {
            targets: Vec::new(),
            spool_dir: PathBuf::from(DEFAULT_SPOOL_DIR),
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            memory_max_bytes: DEFAULT_MEMORY_MAX_BYTES,
            retry_initial: DEFAULT_RETRY_INITIAL,
            retry_max: DEFAULT_RETRY_MAX,
            alertmanager: AlertmanagerOptions::default(),
        }
    }
}

/// Outcome hooks (for metrics), called from the delivery tasks and from `send`; must not block.
/// `target` is the target's label (`scheme://host[:port]`, `#n` added when two share one).
pub trait DeliveryObserver: Send + Sync {
    /// `delivered` (2xx), `retried` (one retryable attempt), `failed` (permanent refusal),
    /// `spooled` (accepted while this target is failing: it waits in the spool), `dropped`
    /// (evicted from a full spool, or not written, before this target had it).
    fn outcome(&self, target: &str, outcome: &'static str);
    /// Alerts in the spool now.
    fn spool_depth(&self, alerts: u64);
    /// One alert lost from the spool (full, or unwritable with memory full too), by its severity.
    fn spool_dropped(&self, severity: &str);
    /// One alert the spool could not write to disk (full, I/O error): it is held in memory,
    /// delivered from there and written once the disk takes writes again. Not a loss (a loss
    /// is `spool_dropped`).
    fn spool_write_error(&self) {}
}

/// An observer that ignores everything.
pub struct NoObserver;

impl DeliveryObserver for NoObserver {
    fn outcome(&self, _: &str, _: &'static str) {}
    fn spool_depth(&self, _: u64) {}
    fn spool_dropped(&self, _: &str) {}
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("spool {}: {source}", path.display())]
    Spool { path: PathBuf, source: io::Error },
    #[error("spool {} is in use by another llmwatch process", path.display())]
    SpoolBusy { path: PathBuf },
    #[error("webhook {url}: {reason}")]
    Target { url: String, reason: String },
}

/// The ids of the incidents open now, as the agent's tracker knows them: targets that keep
/// alerts firing (alertmanager) renew only these, so an incident whose resolution was lost
/// (evicted from a full spool) or that a restart forgot stops being renewed.
type OpenIncidents = Arc<std::sync::Mutex<std::collections::HashSet<String>>>;

/// The running delivery: the spool and one task per target.
pub struct Delivery {
    spool: Arc<spool::Spool>,
    open: OpenIncidents,
    tasks: Vec<JoinHandle<()>>,
    drain: watch::Sender<bool>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Delivery {
    /// Opens (creating) the spool, starts one background tokio task per target. Alerts already
    /// in the spool are delivered first, in order. Errors name the path or the target.
    pub async fn start(
        cfg: DeliveryConfig,
        observer: Arc<dyn DeliveryObserver>,
    ) -> Result<Delivery, DeliveryError> {
        let mut senders = Vec::new();
        let mut names = Vec::new();
        for (i, t) in cfg.targets.iter().enumerate() {
            let mut label = t.label();
            if names.iter().any(|(l, _): &(String, String)| *l == label) {
                label = format!("{label}#{}", i + 1);
            }
            let mut key = {
                use sha2::Digest;
                hex::encode(&sha2::Sha256::digest(t.url.as_str().as_bytes())[..8])
            };
            if names.iter().any(|(_, k)| *k == key) {
                key = format!("{key}-{}", i + 1);
            }
            senders.push(webhook::Sender::new(t, label.clone(), &cfg.alertmanager)?);
            let headers: Vec<String> = t
                .headers
                .iter()
                .map(|(k, v)| webhook::show_header(k, v))
                .collect();
            log::info!(
                "webhook {label}: preset {}, timeout {:?}, {}, headers [{}]",
                t.preset,
                t.timeout,
                if t.secret.is_some() {
                    "signed"
                } else {
                    "not signed"
                },
                headers.join(", ")
            );
            names.push((label, key));
        }
        for (what, v) in [
            ("the size limit", cfg.spool_max_bytes),
            (
                "the limit on alerts waiting in memory (memory_max_bytes)",
                cfg.memory_max_bytes,
            ),
        ] {
            if v == 0 {
                let source =
                    io::Error::new(io::ErrorKind::InvalidInput, format!("{what} must be above zero"));
                return Err(DeliveryError::Spool {
                    path: cfg.spool_dir,
                    source,
                });
            }
        }
        let opened = spool::Spool::open(
            &cfg.spool_dir,
            cfg.spool_max_bytes,
            cfg.memory_max_bytes,
            names,
            observer,
        )?;
        let (drain, _) = watch::channel(false);
        let retry_max = cfg.retry_max.max(cfg.retry_initial);
        let open = OpenIncidents::default();
        let tasks = senders
            .into_iter()
            .enumerate()
            .map(|(i, sender)| {
                let t = TargetTask {
                    index: i,
                    sender,
                    spool: opened.spool.clone(),
                    drain: drain.subscribe(),
                    retry_initial: cfg.retry_initial,
                    retry_max,
                    failures: 0,
                    not_before: None,
                    open: open.clone(),
                    firing: Default::default(),
                };
                tokio::spawn(t.run())
            })
            .collect();
        Ok(Delivery {
            spool: opened.spool,
            open,
            tasks,
            drain,
            writer: Some(opened.writer),
        })
    }

    /// Never blocks and never fails: the alert is queued for the spool's writer thread, which
    /// writes and fsyncs it (or, when the disk refuses it, holds it in memory) before any target
    /// may POST it (see [`spool`] for what a SIGKILL can lose). Room is made at once (eviction);
    /// an alert the spool cannot take is logged and counted as dropped.
    pub fn send(&self, alert: &impl Deliverable) {
        if self.spool.targets.is_empty() {
            return;
        }
        let severity = alert.severity().as_str();
        match serde_json::to_vec(alert) {
            Ok(body) => self.spool.append(body, severity, alert.rule(), alert.id()),
            Err(e) => {
                log::error!(
                    "alert {} (rule {}) cannot be serialized: {e}; dropped",
                    alert.id(),
                    alert.rule()
                );
                self.spool.dropped_unspooled(severity);
            }
        }
    }

    /// The incidents open now (replacing the previous set): see [`OpenIncidents`].
    pub fn set_open_incidents<'a>(&self, ids: impl Iterator<Item = &'a str>) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.clear();
        open.extend(ids.map(str::to_string));
    }

    /// The targets' labels, as passed to the observer.
    pub fn targets(&self) -> Vec<String> {
        self.spool.targets.iter().map(|t| t.label.clone()).collect()
    }

    /// Delivers what it can within `deadline` (in-flight requests, then the backlog of targets
    /// that answer; a target that needs a retry stops), then stops. Whatever is not delivered
    /// stays in the spool for the next start. For SIGTERM.
    pub async fn shutdown(mut self, deadline: Duration) {
        let start = tokio::time::Instant::now();
        let _ = self.drain.send(true);
        let tasks = std::mem::take(&mut self.tasks);
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(deadline, all).await.is_err() {
            for a in aborts {
                a.abort();
            }
        }
        self.spool.stop_writer();
        if let Some(h) = self.writer.take() {
            // The last writes; bounded so a hung disk cannot hold up the exit.
            let left = deadline
                .saturating_sub(start.elapsed())
                .max(Duration::from_secs(1));
            let _ = tokio::time::timeout(left, tokio::task::spawn_blocking(move || h.join())).await;
        }
        if !self.spool.is_empty() {
            log::info!("delivery stopped; undelivered alerts stay in the spool for the next start");
        }
    }
}

impl Drop for Delivery {
    /// Stops at once: nothing more is delivered, everything undelivered stays in the spool. The
    /// writer finishes writing what was sent in the background, holding the spool's lock until
    /// then (a `start` on the same spool waits up to 2 s for it).
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        // The writer finishes its queue in the background, then releases the spool's lock.
        self.spool.stop_writer();
    }
}

struct TargetTask {
    index: usize,
    sender: webhook::Sender,
    spool: Arc<spool::Spool>,
    drain: watch::Receiver<bool>,
    retry_initial: Duration,
    retry_max: Duration,
    /// Failed attempts in a row (any alert): the backoff's exponent.
    failures: u64,
    /// No attempt before this (the backoff), whichever alert is next.
    not_before: Option<tokio::time::Instant>,
    open: OpenIncidents,
    /// For a target that keeps incidents' alerts firing: the latest message delivered of each
    /// open incident, by incident id.
    firing: std::collections::HashMap<String, serde_json::Value>,
}

/// Whether the task goes on after one alert.
enum Step {
    Next,
    Stop,
}

impl TargetTask {
    async fn run(mut self) {
        let mut synced = self.spool.subscribe();
        let mut jitter = webhook::Jitter::new();
        let refresh = self.sender.refresh();
        let mut next_refresh = refresh.map(|r| tokio::time::Instant::now() + r);
        loop {
            if let (Some(every), Some(at)) = (refresh, next_refresh)
                && tokio::time::Instant::now() >= at
            {
                self.refresh().await;
                next_refresh = Some(tokio::time::Instant::now() + every);
            }
            let renew_at = next_refresh.filter(|_| !self.firing.is_empty());
            let upto = *synced.borrow_and_update();
            match self.spool.next_for(self.index, upto) {
                spool::Next::Ready(seq, entry) => {
                    if let Step::Stop = self.deliver(seq, &entry, &mut jitter).await {
                        return;
                    }
                }
                spool::Next::Wait { unsynced } => {
                    let draining = *self.drain.borrow_and_update();
                    if draining && !unsynced {
                        return;
                    }
                    if draining {
                        if synced.changed().await.is_err() {
                            return;
                        }
                    } else {
                        let renew = async {
                            match renew_at {
                                Some(at) => tokio::time::sleep_until(at).await,
                                None => std::future::pending().await,
                            }
                        };
                        tokio::select! {
                            r = synced.changed() => if r.is_err() { return },
                            r = self.drain.changed() => if r.is_err() { return },
                            _ = renew => {}
                        }
                    }
                }
            }
        }
    }

    /// After a delivery to a target that keeps alerts firing: remembers an open incident's
    /// latest message, forgets a resolved one.
    fn keep_firing(&mut self, raw: &[u8]) {
        if self.sender.refresh().is_none() {
            return;
        }
        let Ok(m) = serde_json::from_slice::<serde_json::Value>(raw) else {
            return;
        };
        let Some(id) = m.get("incident_id").and_then(|i| i.as_str()).map(str::to_string) else {
            return;
        };
        if m.get("status").and_then(|s| s.as_str()) == Some("resolved") {
            self.firing.remove(&id);
        } else {
            self.firing.insert(id, m);
        }
    }

    /// Renews the alerts of the incidents still open (one post); forgets the others. A failed
    /// renewal is only logged: the next one comes a refresh interval later, well inside the lease.
    async fn refresh(&mut self) {
        {
            let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            self.firing.retain(|id, _| open.contains(id));
        }
        if self.firing.is_empty() {
            return;
        }
        let label = &self.sender.label;
        let body = match self
            .sender
            .refresh_payload(self.firing.values(), chrono::Utc::now())
        {
            Ok(b) => b,
            Err(e) => {
                log::error!("webhook {label}: cannot build the renewal of open incidents' alerts: {e}");
                return;
            }
        };
        match self.sender.attempt(&body, None).await {
            webhook::Attempt::Delivered(_) => {
                log::debug!(
                    "webhook {label}: renewed {} open incidents' alerts",
                    self.firing.len()
                )
            }
            webhook::Attempt::Retry { why, .. } | webhook::Attempt::Failed { why } => log::warn!(
                "webhook {label}: renewing {} open incidents' alerts failed ({why}); tried again in {:?}",
                self.firing.len(),
                self.sender.refresh().unwrap_or_default()
            ),
        }
    }

    /// An alert this target can never send (unreadable, no payload): counted failed, done with.
    fn give_up(&self, seq: u64, e: &spool::Entry, why: String) -> Step {
        let label = &self.sender.label;
        log::error!("webhook {label}: alert {} (rule {}): {why}", e.id, e.rule);
        self.spool.observer_outcome(label, "failed");
        self.spool.done(self.index, seq);
        Step::Next
    }

    /// Delivers one alert: retries until delivered, refused for good, evicted, or draining.
    /// Waits out the target's backoff first, even when it was set while retrying an alert
    /// that has been evicted since.
    async fn deliver(&mut self, seq: u64, e: &spool::Entry, jitter: &mut webhook::Jitter) -> Step {
        let label = self.sender.label.clone();
        let target = &self.spool.targets[self.index];
        let raw = match self.spool.read(seq, e) {
            Ok(Some(b)) => b,
            Ok(None) => return Step::Next, // evicted
            Err(err) => return self.give_up(seq, e, format!("cannot read spooled alert: {err}; skipped")),
        };
        loop {
            if !self.spool.contains(seq) {
                return Step::Next; // evicted while we waited
            }
            if let Some(at) = self.not_before
                && tokio::time::Instant::now() < at
            {
                if *self.drain.borrow() {
                    return Step::Stop; // draining: a target that needs a retry stops
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = self.drain.changed() => return Step::Stop,
                }
                continue;
            }
            // Built for each attempt: an Alertmanager lease runs from when it is sent.
            let body = match self.sender.payload(&raw, chrono::Utc::now()) {
                Ok(b) => b,
                Err(err) => return self.give_up(seq, e, format!("cannot build the payload: {err}")),
            };
            match self.sender.attempt(&body, Some(&e.id)).await {
                webhook::Attempt::Delivered(code) => {
                    if self.failures > 0 {
                        log::info!(
                            "webhook {label}: delivering again after {} failed attempt(s)",
                            self.failures
                        );
                    }
                    self.failures = 0;
                    self.not_before = None;
                    target.healthy.store(true, Ordering::Relaxed);
                    log::debug!(
                        "webhook {label}: alert {} (rule {}) delivered (HTTP {code})",
                        e.id,
                        e.rule
                    );
                    self.spool.observer_outcome(&label, "delivered");
                    self.spool.done(self.index, seq);
                    self.keep_firing(&raw);
                    return Step::Next;
                }
                webhook::Attempt::Failed { why } => {
                    self.failures = 0;
                    self.not_before = None;
                    target.healthy.store(true, Ordering::Relaxed);
                    log::warn!(
                        "webhook {label}: alert {} (rule {}, {}) refused: {why}; not retried (the same \
                         request would be refused again)",
                        e.id,
                        e.rule,
                        e.severity
                    );
                    self.spool.observer_outcome(&label, "failed");
                    self.spool.done(self.index, seq);
                    return Step::Next;
                }
                webhook::Attempt::Retry { after, why } => {
                    self.spool.observer_outcome(&label, "retried");
                    target.healthy.store(false, Ordering::Relaxed);
                    self.failures += 1;
                    let failures = self.failures;
                    if *self.drain.borrow() {
                        log::info!(
                            "webhook {label}: {why}; stopping, alert {} stays in the spool",
                            e.id
                        );
                        return Step::Stop;
                    }
                    let exponent = u32::try_from(failures - 1).unwrap_or(u32::MAX);
                    let mut wait = webhook::backoff(exponent, self.retry_initial, self.retry_max, jitter);
                    if let Some(after) = after {
                        wait = wait.max(after.min(self.retry_max));
                    }
                    self.not_before = Some(tokio::time::Instant::now() + wait);
                    if failures == 1 || failures.is_power_of_two() {
                        log::warn!(
                            "webhook {label}: alert {} not delivered ({why}); retry in {wait:?} \
                             ({failures} failed attempt(s) in a row); later alerts wait in the spool",
                            e.id
                        );
                    } else {
                        log::debug!(
                            "webhook {label}: alert {} not delivered ({why}); retry in {wait:?}",
                            e.id
                        );
                    }
                }
            }
        }
    }
}
