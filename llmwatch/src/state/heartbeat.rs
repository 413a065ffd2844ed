//! The agent's heartbeat: a small file in its state directory, rewritten every flush interval
//! and marked clean on an orderly stop. At the next start it says how long nothing watched
//! this host, and whether the last run ended cleanly (`agent.gap` when it did not: the agent
//! was killed, crashed, or the host went down with it).
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const FILE: &str = "heartbeat.json";

#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    #[error("cannot write the heartbeat {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What one heartbeat says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Beat {
    /// Wall-clock time of the beat (real time, whatever clock the rules run on).
    pub time: DateTime<Utc>,
    pub pid: u32,
    /// The run that wrote it stopped in order after this beat.
    pub clean: bool,
}

/// Time nothing watched, from the last beat of the previous run to now.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Gap {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub seconds: i64,
    /// The previous run stopped in order (SIGTERM, SIGINT); false: killed, crashed, or the
    /// host went down.
    pub clean: bool,
    pub previous_pid: u32,
}

pub struct Heartbeat {
    path: PathBuf,
}

impl Heartbeat {
    pub fn new(state_dir: &Path) -> Self {
        Heartbeat {
            path: state_dir.join(FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The gap since the previous run's last beat, if there was a previous run (a missing or
    /// unreadable file means none: the first start on this host).
    pub fn gap(&self, now: DateTime<Utc>) -> Option<Gap> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        let last: Beat = match serde_json::from_str(&text) {
            Ok(b) => b,
            Err(e) => {
                log::warn!("ignoring the unreadable heartbeat {}: {e}", self.path.display());
                return None;
            }
        };
        Some(Gap {
            from: last.time,
            to: now,
            seconds: (now - last.time).num_seconds().max(0),
            clean: last.clean,
            previous_pid: last.pid,
        })
    }

    /// Writes a beat (atomically: a reader never sees half a file).
    pub fn beat(&self, time: DateTime<Utc>, clean: bool) -> Result<(), HeartbeatError> {
        let err = |source| HeartbeatError::Write {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let beat = Beat {
            time,
            pid: std::process::id(),
            clean,
        };
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_vec(&beat).expect("a beat serializes");
        std::fs::write(&tmp, body).map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)
    }
}

/// Human form of a duration in seconds: "2h 3m 4s", "45s".
pub fn human_seconds(s: i64) -> String {
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    match (h, m) {
        (0, 0) => format!("{sec}s"),
        (0, _) => format!("{m}m {sec}s"),
        _ => format!("{h}h {m}m {sec}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("llmwatch-hb-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn no_file_no_gap_then_the_last_beat_says_how_long_and_how_it_ended() {
        let d = dir("gap");
        let hb = Heartbeat::new(&d);
        let t0: DateTime<Utc> = "2026-12-01T10:00:00Z".parse().unwrap();
        assert_eq!(hb.gap(t0), None, "first start");
        hb.beat(t0, false).unwrap();
        let t1 = t0 + chrono::TimeDelta::seconds(125);
        let gap = hb.gap(t1).unwrap();
        assert_eq!((gap.from, gap.to, gap.seconds, gap.clean), (t0, t1, 125, false));
        hb.beat(t1, true).unwrap();
        assert!(hb.gap(t1).unwrap().clean);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_garbled_heartbeat_is_no_gap() {
        let d = dir("garbled");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(FILE), b"{not json").unwrap();
        assert_eq!(Heartbeat::new(&d).gap(Utc::now()), None);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn durations_read_like_a_person_writes_them() {
        assert_eq!(human_seconds(45), "45s");
        assert_eq!(human_seconds(125), "2m 5s");
        assert_eq!(human_seconds(7384), "2h 3m 4s");
    }
}
