//! `incidents:`: how rule hits about one process tree (or one rate key) fold into one incident
//! (see `alerts::incidents`), and when an incident is over.
use std::time::Duration;

/// An incident with no rule hit and no read or send by its processes for this long is resolved.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(10 * 60);

/// The keys of the `incidents` mapping.
pub(super) const KEYS: &[&str] = &["idle"];

#[derive(Debug, Clone, PartialEq)]
pub struct IncidentsConfig {
    /// Resolve an incident once it has been quiet for this long (its processes may live on: a
    /// login shell is a tree root that rarely exits).
    pub idle: Duration,
}

impl Default for IncidentsConfig {
    fn default() -> Self {
        IncidentsConfig { idle: DEFAULT_IDLE }
    }
}

/// `incidents.idle`: a duration of at least a second (the agent checks once per flush
/// interval, so less could never be honoured) and at most a day (an incident open for longer
/// than that with nothing happening is a forgotten one, and the summary is what receivers wait for).
pub(super) fn idle(s: &str) -> Result<Duration, String> {
    let d = super::values::duration(s)?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(24 * 3600) {
        return Err(format!("{s:?} is out of range: between 1s and 24h"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_parses_and_names_its_key_when_out_of_range() {
        assert_eq!(crate::config::Config::default().incidents.idle, DEFAULT_IDLE);
        let c = crate::config::parse("incidents:\n  idle: 90s\n").unwrap();
        assert_eq!(c.incidents.idle, Duration::from_secs(90));
        for bad in ["incidents:\n  idle: 500ms\n", "incidents:\n  idle: 2d\n"] {
            let e = crate::config::parse(bad).unwrap_err();
            let p = &e.problems()[0];
            assert_eq!((p.path.as_str(), p.line), ("incidents.idle", Some(2)), "{p:?}");
        }
        let e = crate::config::parse("incidents:\n  idel: 1m\n").unwrap_err();
        assert_eq!(e.problems()[0].path, "incidents.idel", "{e}");
    }
}
