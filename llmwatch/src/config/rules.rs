//! What every rule's settings have, and how a rule reads its own thresholds from the file.
//! The settings of each rule live with the rule (`rules/<rule>.rs`); the registry in
//! `rules/mod.rs` gathers them into [`crate::rules::Settings`] (`Config::rules`).
use std::time::Duration;

use super::Severity;

pub use super::validate::RuleKeys;

/// Keys every rule has.
pub const COMMON_KEYS: &[&str] = &["enabled", "severity", "suppress"];

pub(crate) const MINUTE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq)]
pub struct RuleCommon {
    pub enabled: bool,
    pub severity: Severity,
    /// The same rule and key within this long after an alert updates its counts instead of
    /// alerting again; zero alerts every time.
    pub suppress: Duration,
}

impl RuleCommon {
    pub fn new(severity: Severity) -> Self {
        RuleCommon {
            enabled: true,
            severity,
            suppress: 10 * MINUTE,
        }
    }
}

/// One rule's settings: the common keys, plus its thresholds (`KEYS`, read by `apply`).
pub trait RuleSettings: Default + Clone + PartialEq + std::fmt::Debug {
    /// Threshold keys beyond [`COMMON_KEYS`].
    const KEYS: &'static [&'static str] = &[];
    fn common(&self) -> &RuleCommon;
    fn common_mut(&mut self) -> &mut RuleCommon;
    /// Reads the thresholds; the common keys were read before.
    fn apply(&mut self, _keys: &mut RuleKeys<'_, '_>) {}
}

/// Settings of a rule that has only the common keys, with its default severity.
macro_rules! basic_settings {
    ($severity:expr) => {
        #[derive(Debug, Clone, PartialEq)]
        pub struct Settings {
            pub common: $crate::config::rules::RuleCommon,
        }

        impl Default for Settings {
            fn default() -> Self {
                Settings {
                    common: $crate::config::rules::RuleCommon::new($severity),
                }
            }
        }

        impl $crate::config::rules::RuleSettings for Settings {
            fn common(&self) -> &$crate::config::rules::RuleCommon {
                &self.common
            }
            fn common_mut(&mut self) -> &mut $crate::config::rules::RuleCommon {
                &mut self.common
            }
        }
    };
}
pub(crate) use basic_settings;
