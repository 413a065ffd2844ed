//! The alert contract (stable: users, tests and receivers rely on the field names), the
//! deduplication that keeps repeats from becoming noise, and the incidents that fold the rule
//! hits about one process tree into one alert that grows ([`incidents`]).
pub mod incidents;

use std::net::IpAddr;

use foldhash::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    config::Severity,
    enrich::{Enriched, FileView, ProcessView},
    state::{files::AssetClass, pods::PodIdentity, process::Ancestor},
};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AlertProcess {
    pub pid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub uid: u32,
    pub user: Option<String>,
    pub container_id: Option<String>,
    /// Pod UID when the cgroup path carries it.
    pub pod: Option<String>,
    /// Namespace, pod name, container name, owner and kept pod labels, from the container
    /// runtime (see `state::pods`); absent outside pods or where the runtime could not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<PodIdentity>,
    pub ancestry: Vec<Ancestor>,
}

impl AlertProcess {
    pub fn of(ev: &Enriched) -> Self {
        Self::from_view(&ev.process)
    }

    pub fn from_view(p: &ProcessView) -> Self {
        AlertProcess {
            pid: p.pid,
            comm: p.comm.clone(),
            exe: p.exe.clone(),
            uid: p.uid,
            user: p.user.clone(),
            container_id: p.container_id.clone(),
            pod: p.pod_uid.clone(),
            kubernetes: p.kubernetes.as_deref().cloned(),
            ancestry: p.ancestry.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AlertFile {
    pub path: String,
    pub dev: u32,
    pub ino: u64,
    pub size: u64,
    pub bytes_read: u64,
    /// What the file is: weights, adapter, dataset, tokenizer, config, encrypted_weights.
    #[serde(default)]
    pub class: AssetClass,
}

impl AlertFile {
    pub fn of(f: &FileView, bytes_read: u64) -> Self {
        AlertFile {
            path: crate::json_path::path_to_json(&f.path).into_owned(),
            dev: f.dev,
            ino: f.ino,
            size: f.size,
            bytes_read,
            class: f.class,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AlertNetwork {
    pub dest: IpAddr,
    pub port: u16,
    pub bytes_sent: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Window {
    /// A window of one instant (an alert about a single event).
    pub fn at(t: DateTime<Utc>) -> Self {
        Window { start: t, end: t }
    }
}

/// One alert. Field names are a contract.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Alert {
    pub id: String,
    pub time: DateTime<Utc>,
    pub rule: String,
    pub severity: Severity,
    /// One human sentence.
    pub summary: String,
    pub host: String,
    pub process: AlertProcess,
    pub files: Vec<AlertFile>,
    pub network: Vec<AlertNetwork>,
    pub window: Window,
    /// The kernel lost events while this alert's window was open: counts may be low.
    pub incomplete: bool,
    pub dedup_key: String,
    /// Repeats of this rule and key suppressed since the previous alert for it.
    #[serde(default)]
    pub suppressed: u64,
    /// What the alert is about, for folding rule hits into incidents: `tree:<pid>` (the root
    /// of the process tree the rule judged: hits about the same tree are one incident),
    /// `agent:<rule>:<key>` (the agent about itself), or `<rule>:<key>` (rates per user,
    /// container or client). Not part of the JSON contract.
    #[serde(skip)]
    pub scope: String,
}

/// A random 128-bit id (hex), unique per alert.
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        // Fall back to time and a counter: still unique within this agent.
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let t = Utc::now().timestamp_nanos_opt().unwrap_or(0) as u64;
        b[..8].copy_from_slice(&t.to_le_bytes());
        b[8..].copy_from_slice(&N.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `512 B`, `3.0 MiB`: byte counts in summaries and receivers' messages.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut f = n as f64;
    let mut u = 0;
    while f >= 1024.0 && u + 1 < UNITS.len() {
        f /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{f:.1} {}", UNITS[u])
    }
}

/// Per (rule, key) suppression: a repeat inside the rule's window is counted, not sent. Keys
/// are independent, so noise under one key never hides an alert under another, and critical
/// alerts are never rate-limited across keys.
#[derive(Default)]
pub struct Dedup {
    /// Per rule, then per key: rules gate on every event, so lookups take the key as is
    /// (no `rule:key` string built per event; that allocation showed in the W4 profile).
    last: HashMap<&'static str, HashMap<String, (DateTime<Utc>, u64)>>,
}

impl Dedup {
    /// Whether an alert for (`rule`, `key`) at `t` would be sent; a repeat inside the window
    /// is counted here. Rules call this before building an alert (summaries are formatted
    /// strings), then `admit` with the same key.
    pub fn gate(
        &mut self,
        rule: &'static str,
        key: &str,
        t: DateTime<Utc>,
        suppress: std::time::Duration,
    ) -> bool {
        let window = chrono::TimeDelta::from_std(suppress).unwrap_or(chrono::TimeDelta::MAX);
        match self.last.get_mut(rule).and_then(|m| m.get_mut(key)) {
            Some((sent, n)) if t - *sent < window => {
                *n += 1;
                false
            }
            _ => true,
        }
    }

    /// Whether to send an alert for (`rule`, `key`) at `t` given the rule's suppression
    /// window; when sending, returns how many repeats were suppressed since the last one.
    pub fn admit(
        &mut self,
        rule: &'static str,
        key: &str,
        t: DateTime<Utc>,
        suppress: std::time::Duration,
    ) -> Option<u64> {
        let window = chrono::TimeDelta::from_std(suppress).unwrap_or(chrono::TimeDelta::MAX);
        let keys = self.last.entry(rule).or_default();
        match keys.get_mut(key) {
            Some((sent, n)) if t - *sent < window => {
                *n += 1;
                None
            }
            Some((sent, n)) => {
                let suppressed = *n;
                *sent = t;
                *n = 0;
                Some(suppressed)
            }
            None => {
                keys.insert(key.to_string(), (t, 0));
                Some(0)
            }
        }
    }

    /// Forgets keys idle for longer than `older_than`.
    pub fn expire(&mut self, now: DateTime<Utc>, older_than: chrono::TimeDelta) {
        for keys in self.last.values_mut() {
            keys.retain(|_, (sent, _)| now - *sent < older_than);
        }
        self.last.retain(|_, keys| !keys.is_empty());
    }

    pub fn len(&self) -> usize {
        self.last.values().map(|k| k.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_inside_the_window_are_counted_not_sent() {
        let mut d = Dedup::default();
        let t0: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let w = std::time::Duration::from_secs(600);
        assert_eq!(d.admit("r", "a", t0, w), Some(0));
        assert!(!d.gate("r", "a", t0 + chrono::TimeDelta::seconds(5), w));
        assert_eq!(d.admit("r", "a", t0 + chrono::TimeDelta::seconds(10), w), None);
        assert_eq!(d.admit("r", "a", t0 + chrono::TimeDelta::seconds(20), w), None);
        // Another key, or the same key under another rule, is independent.
        assert_eq!(d.admit("r", "b", t0 + chrono::TimeDelta::seconds(20), w), Some(0));
        assert!(d.gate("q", "a", t0 + chrono::TimeDelta::seconds(20), w));
        assert!(d.gate("r", "a", t0 + chrono::TimeDelta::seconds(700), w));
        assert_eq!(
            d.admit("r", "a", t0 + chrono::TimeDelta::seconds(700), w),
            Some(3)
        );
        d.expire(
            t0 + chrono::TimeDelta::seconds(800),
            chrono::TimeDelta::seconds(60),
        );
        assert!(d.is_empty());
    }

    #[test]
    fn ids_are_unique_hex() {
        let a = new_id();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_id());
    }
}
