//! Replay: the live rules over a recorded event stream (`llmwatch record` output, or the
//! JSON lines of `llmwatch events`). Lines that are not events (status lines) are skipped,
//! except kernel event-loss reports, which the rules need to mark alerts incomplete.
use std::{io::BufRead, sync::Arc};

use serde::Deserialize;

use crate::{alerts::Alert, config::Config, enrich::Enriched, rules::Engine};

#[derive(Debug, Default, serde::Serialize)]
pub struct ReplayStats {
    pub lines: u64,
    pub events: u64,
    pub losses: u64,
    pub alerts: u64,
    /// Lines that were neither events nor known status lines (first 20 kept, as "line N: why").
    pub bad_lines: u64,
    pub errors: Vec<String>,
}

#[derive(Deserialize)]
struct LossLine {
    time: chrono::DateTime<chrono::Utc>,
    dropped: u64,
}

/// Runs `cfg`'s rules over every line of `input`; `on_alert` gets each alert in order.
pub fn replay(
    input: impl BufRead,
    cfg: Arc<Config>,
    mut on_alert: impl FnMut(&Alert),
) -> std::io::Result<ReplayStats> {
    let mut engine = Engine::new(cfg);
    let mut stats = ReplayStats::default();
    let mut alerts = Vec::new();
    let bad = |stats: &mut ReplayStats, n: u64, why: String| {
        stats.bad_lines += 1;
        if stats.errors.len() < 20 {
            stats.errors.push(format!("line {n}: {why}"));
        }
    };
    for (i, line) in input.lines().enumerate() {
        let n = i as u64 + 1;
        let line = match line {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                bad(&mut stats, n, "not UTF-8".into());
                continue;
            }
            Err(e) => return Err(e),
        };
        stats.lines += 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                bad(&mut stats, n, format!("not JSON: {e}"));
                continue;
            }
        };
        if value.get("task").is_some() {
            match Enriched::deserialize(&value) {
                Ok(ev) => {
                    stats.events += 1;
                    engine.on_event(&ev, &mut alerts);
                }
                Err(e) => bad(&mut stats, n, format!("not an event: {e}")),
            }
        } else if value.get("kind").and_then(|k| k.as_str()) == Some("agent_event_loss") {
            match LossLine::deserialize(&value) {
                Ok(l) => {
                    stats.losses += 1;
                    engine.on_event_loss(l.dropped, l.time, &mut alerts);
                }
                Err(e) => bad(&mut stats, n, format!("bad agent_event_loss: {e}")),
            }
        }
        for a in alerts.drain(..) {
            stats.alerts += 1;
            on_alert(&a);
        }
        if stats.events % 100_000 == 0 {
            engine.expire();
        }
    }
    Ok(stats)
}
