//! `guard:`: stopping weights leaving in the kernel (see `crate::guard`). Absent: the guard is
//! off. Present: every guard rule runs, in `monitor` mode (reports what it would have blocked)
//! unless the rule or the protected file says `enforce`.
use crate::state::files::PathGlob;

/// Keys of the `guard` mapping and its rule sub-mappings.
pub(super) const KEYS: &[&str] = &["mode", "egress_budget", "open_deny", "enforce_files"];
pub(super) const EGRESS_KEYS: &[&str] = &["mode", "max_bytes", "read_percent", "floor_bytes"];
pub(super) const OPEN_KEYS: &[&str] = &["mode"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardMode {
    /// Report what would have been blocked; block nothing.
    Monitor,
    /// Block in the kernel.
    Enforce,
}

impl GuardMode {
    pub fn as_str(self) -> &'static str {
        match self {
            GuardMode::Monitor => "monitor",
            GuardMode::Enforce => "enforce",
        }
    }
}

pub(super) fn mode(s: &str) -> Result<GuardMode, String> {
    match s.trim() {
        "monitor" => Ok(GuardMode::Monitor),
        "enforce" => Ok(GuardMode::Enforce),
        _ => Err(format!("{s:?} is not a guard mode (monitor, enforce)")),
    }
}

/// `guard.read_percent`: a percentage above 0 and at most 100.
pub(super) fn percent(s: &str) -> Result<f64, String> {
    let t = s.trim().trim_end_matches('%');
    let v: f64 = t
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage (e.g. 1 or 0.5%)"))?;
    if !(v > 0.0 && v <= 100.0) {
        return Err(format!("{s:?} is out of range: above 0 and at most 100"));
    }
    Ok(v)
}

#[derive(Debug, Clone, PartialEq)]
pub struct EgressBudget {
    /// None: `guard.mode`.
    pub mode: Option<GuardMode>,
    /// The budget is at most this...
    pub max_bytes: u64,
    /// ...or this percentage of the bytes of protected files the tree read, when less...
    pub read_percent: f64,
    /// ...and never below this (request headers and handshakes after a header read).
    pub floor_bytes: u64,
}

impl Default for EgressBudget {
    fn default() -> Self {
        EgressBudget {
            mode: None,
            max_bytes: 16 << 20,
            read_percent: 1.0,
            floor_bytes: 64 << 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct GuardConfig {
    /// The `guard:` section is present.
    pub enabled: bool,
    pub mode: Option<GuardMode>,
    pub egress_budget: EgressBudget,
    /// `open_deny.mode`; None: `guard.mode`.
    pub open_mode: Option<GuardMode>,
    /// Protected files (by path glob) every guard rule enforces on, whatever the modes.
    pub enforce_files: Vec<PathGlob>,
}

impl GuardConfig {
    pub fn mode(&self) -> GuardMode {
        self.mode.unwrap_or(GuardMode::Monitor)
    }

    pub fn egress_mode(&self) -> GuardMode {
        self.egress_budget.mode.unwrap_or(self.mode())
    }

    pub fn open_mode(&self) -> GuardMode {
        self.open_mode.unwrap_or(self.mode())
    }

    /// Whether anything is enforced anywhere (rules, or files by path).
    pub fn enforces(&self) -> bool {
        self.enabled
            && (self.egress_mode() == GuardMode::Enforce
                || self.open_mode() == GuardMode::Enforce
                || !self.enforce_files.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_is_off_present_is_monitor_and_rules_and_files_enforce() {
        let c = crate::config::Config::default();
        assert!(!c.guard.enabled);
        let c = crate::config::parse("guard: {}\n").unwrap();
        assert!(c.guard.enabled);
        assert_eq!(c.guard.egress_mode(), GuardMode::Monitor);
        assert!(!c.guard.enforces());
        let c = crate::config::parse(
            "guard:\n  mode: monitor\n  egress_budget:\n    mode: enforce\n    max_bytes: 8MiB\n    read_percent: 0.5\n  enforce_files: [\"/models/prod/**\"]\n",
        )
        .unwrap();
        assert_eq!(c.guard.egress_mode(), GuardMode::Enforce);
        assert_eq!(c.guard.open_mode(), GuardMode::Monitor);
        assert_eq!(c.guard.egress_budget.max_bytes, 8 << 20);
        assert_eq!(c.guard.egress_budget.read_percent, 0.5);
        assert_eq!(c.guard.enforce_files.len(), 1);
        assert!(c.guard.enforces());
    }

    #[test]
    fn bad_values_name_their_key() {
        for (bad, path) in [
            ("guard:\n  mode: block\n", "guard.mode"),
            (
                "guard:\n  egress_budget:\n    read_percent: 0\n",
                "guard.egress_budget.read_percent",
            ),
            (
                "guard:\n  egress_budget:\n    max_bytes: lots\n",
                "guard.egress_budget.max_bytes",
            ),
            ("guard:\n  open_deny:\n    mod: enforce\n", "guard.open_deny.mod"),
            (
                "guard:\n  enforce_files: [relative/*]\n",
                "guard.enforce_files[0]",
            ),
        ] {
            let e = crate::config::parse(bad).unwrap_err();
            assert_eq!(e.problems()[0].path, path, "{bad}: {e}");
        }
    }
}
