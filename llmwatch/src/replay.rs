//! Replay: the live rules and incidents over a recorded event stream (`llmwatch record` output,
//! or the JSON lines of `llmwatch events`). Lines that are not events (status lines) are
//! skipped, except kernel event-loss reports, which the rules need to mark alerts incomplete.
//! What comes out is what receivers would have got: incidents' messages, each incident
//! resolved by its processes' exits, by `incidents.idle` on the recording's clock, or at the end.
use std::{collections::HashSet, io::BufRead, sync::Arc};

use serde::Deserialize;

use crate::{
    alerts::incidents::{IncidentMessage, IncidentStatus, Incidents},
    config::Config,
    enrich::Enriched,
    events::EventKind,
    rules::Engine,
};

#[derive(Debug, Default, serde::Serialize)]
pub struct ReplayStats {
    pub lines: u64,
    pub events: u64,
    pub losses: u64,
    /// Rule hits.
    pub alerts: u64,
    /// Incidents opened, and messages about them (openings, escalations, resolutions).
    pub incidents: u64,
    pub messages: u64,
    /// Lines that were neither events nor known status lines (first 20 kept, as "line N: why").
    pub bad_lines: u64,
    pub errors: Vec<String>,
}

/// Longest line read (recordings' lines are a few KiB). A longer line is reported as bad and
/// skipped up to its newline without being buffered: `BufRead::lines` would hold a whole line
/// in memory however long, so an input without newlines was an unbounded allocation.
pub const MAX_LINE: usize = 1 << 20;

/// Reads one line into `buf` (without its `\n` or `\r\n`). `Ok(None)` at end of input,
/// `Ok(Some(false))` when the line was longer than `max` bytes: then `buf` is empty and the
/// rest of the line was consumed and dropped.
fn read_line_capped(
    input: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<bool>> {
    buf.clear();
    let (mut any, mut fits) = (false, true);
    loop {
        let avail = match input.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            break;
        }
        any = true;
        let newline = avail.iter().position(|&b| b == b'\n');
        let chunk = &avail[..newline.unwrap_or(avail.len())];
        if fits && buf.len() + chunk.len() <= max {
            buf.extend_from_slice(chunk);
        } else if fits {
            fits = false;
            *buf = Vec::new();
        }
        let used = newline.map_or(avail.len(), |i| i + 1);
        input.consume(used);
        if newline.is_some() {
            break;
        }
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(any.then_some(fits))
}

#[derive(Deserialize)]
struct LossLine {
    time: chrono::DateTime<chrono::Utc>,
    dropped: u64,
}

/// Runs `cfg`'s rules over every line of `input` and folds their hits into incidents;
/// `on_message` gets each incident's messages in order.
pub fn replay(
    mut input: impl BufRead,
    cfg: Arc<Config>,
    mut on_message: impl FnMut(&IncidentMessage),
) -> std::io::Result<ReplayStats> {
    let mut incidents = Incidents::new(cfg.incidents.idle);
    let mut engine = Engine::new(cfg);
    let mut stats = ReplayStats::default();
    let mut alerts = Vec::new();
    let mut messages = Vec::new();
    // What the live agent's process table says of a process named by a hit: the recording's
    // exits (a pid forked or exec'ing again is running again).
    let mut exited: HashSet<u32> = HashSet::new();
    let mut now = None;
    let bad = |stats: &mut ReplayStats, n: u64, why: String| {
        stats.bad_lines += 1;
        if stats.errors.len() < 20 {
            stats.errors.push(format!("line {n}: {why}"));
        }
    };
    let mut buf = Vec::new();
    let mut n = 0u64;
    while let Some(fits) = read_line_capped(&mut input, &mut buf, MAX_LINE)? {
        n += 1;
        if !fits {
            bad(&mut stats, n, format!("longer than {MAX_LINE} bytes; skipped"));
            continue;
        }
        let Ok(line) = std::str::from_utf8(&buf) else {
            bad(&mut stats, n, "not UTF-8".into());
            continue;
        };
        stats.lines += 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = match serde_json::from_str(line) {
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
                    let pid = ev.process.pid;
                    match &ev.event.kind {
                        EventKind::ProcExit { .. } => {
                            exited.insert(pid);
                        }
                        EventKind::ProcFork { child_pid } => {
                            exited.remove(child_pid);
                        }
                        EventKind::ProcExec { .. } => {
                            exited.remove(&pid);
                        }
                        _ => {}
                    }
                    now = now.max(Some(ev.time));
                    // As live: totals before the engine, exits after the hits they raised.
                    incidents.observe(&ev);
                    engine.on_event(&ev, &mut alerts);
                    stats.alerts += fold(&mut incidents, &mut alerts, &exited, &mut messages);
                    if let EventKind::ProcExit { .. } = ev.event.kind {
                        incidents.on_exit(pid, ev.time, &mut messages);
                    }
                }
                Err(e) => bad(&mut stats, n, format!("not an event: {e}")),
            }
        } else if value.get("kind").and_then(|k| k.as_str()) == Some("agent_event_loss") {
            match LossLine::deserialize(&value) {
                Ok(l) => {
                    stats.losses += 1;
                    now = now.max(Some(l.time));
                    engine.on_event_loss(l.dropped, l.time, &mut alerts);
                }
                Err(e) => bad(&mut stats, n, format!("bad agent_event_loss: {e}")),
            }
        }
        stats.alerts += fold(&mut incidents, &mut alerts, &exited, &mut messages);
        // Live, idle incidents are resolved on the flush timer; here on the recording's clock.
        if let Some(t) = now {
            incidents.tick(t, &mut messages);
        }
        emit(&mut messages, &mut stats, &mut on_message);
        if stats.events % 100_000 == 0 {
            engine.expire();
        }
    }
    // The recording ended: what is still open is summed up, as when the agent stops.
    if let Some(t) = now {
        incidents.stop(t, &mut messages);
    }
    emit(&mut messages, &mut stats, &mut on_message);
    Ok(stats)
}

/// The rule hits into the incidents; how many there were.
fn fold(
    incidents: &mut Incidents,
    hits: &mut Vec<crate::alerts::Alert>,
    exited: &HashSet<u32>,
    out: &mut Vec<IncidentMessage>,
) -> u64 {
    let n = hits.len() as u64;
    for hit in hits.drain(..) {
        incidents.on_hit(hit, &|pid| !exited.contains(&pid), out);
    }
    n
}

fn emit(
    messages: &mut Vec<IncidentMessage>,
    stats: &mut ReplayStats,
    on_message: &mut impl FnMut(&IncidentMessage),
) {
    for m in messages.drain(..) {
        stats.messages += 1;
        stats.incidents += u64::from(m.status == IncidentStatus::Opened);
        on_message(&m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8]) -> ReplayStats {
        let cfg = Arc::new(crate::config::parse("").unwrap());
        replay(input, cfg, |_| {}).unwrap()
    }

    const LOSS: &str = r#"{"kind":"agent_event_loss","time":"2026-11-23T10:00:00Z","dropped":3}"#;

    #[test]
    fn a_line_over_the_cap_is_a_bad_line_and_the_next_one_is_read() {
        let mut input = vec![b'x'; 3 * MAX_LINE];
        input.push(b'\n');
        input.extend_from_slice(LOSS.as_bytes());
        input.push(b'\n');
        let stats = run(&input);
        assert_eq!(stats.bad_lines, 1, "{:?}", stats.errors);
        assert!(
            stats.errors[0].starts_with("line 1: longer than 1048576 bytes"),
            "{:?}",
            stats.errors
        );
        assert_eq!((stats.lines, stats.losses), (1, 1), "line 2 is still read");
    }

    #[test]
    fn an_unterminated_line_over_the_cap_ends_the_input_as_one_bad_line() {
        let big = std::io::BufReader::new(std::io::Read::take(std::io::repeat(b'{'), 8 * MAX_LINE as u64));
        let stats = replay(big, Arc::new(crate::config::parse("").unwrap()), |_| {}).unwrap();
        assert_eq!((stats.lines, stats.bad_lines), (0, 1), "{:?}", stats.errors);
        assert!(stats.errors[0].contains("longer than"), "{:?}", stats.errors);
    }

    #[test]
    fn lines_up_to_the_cap_crlf_and_bad_utf8_are_read_as_before() {
        let mut at_cap = LOSS.as_bytes().to_vec();
        at_cap.resize(MAX_LINE, b' ');
        let mut input = at_cap;
        input.extend_from_slice(b"\n\xff\xfe\n");
        input.extend_from_slice(LOSS.as_bytes());
        input.extend_from_slice(b"\r\n\n");
        input.extend_from_slice(LOSS.as_bytes());
        let stats = run(&input);
        assert_eq!(stats.losses, 3, "{:?}", stats.errors);
        assert_eq!(stats.bad_lines, 1);
        assert_eq!(stats.errors, ["line 2: not UTF-8"]);
        assert_eq!(stats.lines, 4);
    }
}
