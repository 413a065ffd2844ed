//! Rule ids: each rule module defines its own (`pub const ID`), the registry lists them all.
//! An id is a typed constant, never a string typed at the call site, so a misspelt rule can
//! not compile (a string typo used to drop the alert silently in release builds).
use std::fmt;

/// The id of one rule, as alerts, metrics and the configuration spell it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(&'static str);

impl RuleId {
    /// Only the rule modules make ids (one each, `pub const ID`).
    pub(super) const fn new(name: &'static str) -> Self {
        RuleId(name)
    }

    pub const fn as_str(self) -> &'static str {
        self.0
    }

    /// The registered rule with this name.
    pub fn parse(name: &str) -> Option<RuleId> {
        super::ALL.iter().copied().find(|id| id.0 == name)
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl fmt::Debug for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl serde::Serialize for RuleId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

impl PartialEq<str> for RuleId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for RuleId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}
