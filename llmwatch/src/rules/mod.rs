//! The correlation engine: enriched events in, rule hits out.
//!
//! The same code runs live and over a recording (`llmwatch replay`): it keeps its own state
//! (which process is an inference server, what each process tree and scope read and sent) and
//! takes time from the events, so results do not depend on when it runs.
//!
//! Each rule is one file here: its id, its settings, its logic and its unit tests. The
//! registry below lists them once; adding a rule is that file, one line in `registry!`, and
//! its rows in the docs (README.md and `docs/configuration.md`, checked by `docs.rs` and the
//! config tests).
#[cfg(test)]
mod docs;
mod engine;
pub(crate) use engine::facts;
mod flows;
mod id;
mod sink;
#[cfg(test)]
mod testing;

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};

pub(crate) use engine::delta;
pub use engine::{Alerts, Engine};
pub use id::RuleId;

use crate::{
    config::{RuleCommon, RuleSettings, rules::RuleKeys},
    enrich::Enriched,
};
use flows::{FlowKey, Flows};
use sink::AlertSink;

/// What one rule does with what the engine sees; each rule module's `State` implements it
/// (the defaults do nothing, most rules need one or two of them).
trait Rule: Default {
    /// Judges one event; the flows already hold what it read or sent.
    fn on_event(&mut self, _ctx: &Ctx<'_>, _flows: &Flows, _sink: &mut AlertSink<'_>) {}
    /// A process exited.
    fn on_exit(&mut self, _pid: u32) {}
    /// Forgets state older than `keep`.
    fn expire(&mut self, _now: DateTime<Utc>, _keep: TimeDelta) {}
}

/// Lists the rule modules once and derives from that list: their settings (`Settings`, one
/// field per module, what `Config::rules` holds), their ids (`ALL`) and their state.
macro_rules! registry {
    ($($rule:ident),+ $(,)?) => {
        $(pub mod $rule;)+

        /// Every rule's settings (`rules:` in the file), one field per rule module.
        #[derive(Debug, Clone, PartialEq, Default)]
        pub struct Settings {
            $(pub $rule: $rule::Settings,)+
        }

        /// Every rule, in the order the docs list them.
        pub const ALL: &[RuleId] = &[$($rule::ID),+];

        impl Settings {
            pub fn common(&self, id: RuleId) -> &RuleCommon {
                $(if id == $rule::ID {
                    return self.$rule.common();
                })+
                unreachable!("rule {id} is not registered")
            }

            pub fn common_mut(&mut self, id: RuleId) -> &mut RuleCommon {
                $(if id == $rule::ID {
                    return self.$rule.common_mut();
                })+
                unreachable!("rule {id} is not registered")
            }

            /// The rule's keys beyond the common ones.
            pub fn keys(id: RuleId) -> &'static [&'static str] {
                $(if id == $rule::ID {
                    return <$rule::Settings as RuleSettings>::KEYS;
                })+
                &[]
            }

            /// Reads the rule's own keys from its section of the file.
            pub fn apply(&mut self, id: RuleId, keys: &mut RuleKeys<'_, '_>) {
                $(if id == $rule::ID {
                    return self.$rule.apply(keys);
                })+
            }
        }

        /// Every rule's state.
        #[derive(Default)]
        struct States {
            $($rule: $rule::State,)+
        }

        impl States {
            fn on_event(&mut self, ctx: &Ctx<'_>, flows: &Flows, sink: &mut AlertSink<'_>) {
                $(self.$rule.on_event(ctx, flows, sink);)+
            }

            fn on_exit(&mut self, pid: u32) {
                $(self.$rule.on_exit(pid);)+
            }

            fn expire(&mut self, now: DateTime<Utc>, keep: TimeDelta) {
                $(self.$rule.expire(now, keep);)+
            }
        }
    };
}

registry! {
    unexpected_reader,
    bulk_read,
    exfiltration,
    off_hours,
    tamper,
    inference_egress,
    inference_exec,
    exfil_tool,
    gpu_unexpected_user,
    gpu_spawn_storm,
    api_client_flood,
    memory_scrape,
    event_loss,
    bpf_load,
    agent_gap,
    agent_tamper,
    guard,
}

/// What a process is to the rules when it matches an inference-server identity.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ServerRole {
    /// The identity's name.
    pub name: Arc<str>,
    /// Pinned by executable, user, container or cgroup (see `Selectors::strong`); a role known
    /// by name only exempts start-up reads, never egress or exfiltration.
    pub strong: bool,
}

/// One event being judged, with what the engine knows around it.
pub(crate) struct Ctx<'a> {
    pub ev: &'a Enriched,
    pub t: DateTime<Utc>,
    /// The acting process's server role, if it is (part of) an inference server.
    pub server: Option<&'a ServerRole>,
    /// The event is part of that server's start-up load (inside its start-up window).
    pub startup_load: bool,
    /// A `readers:` entry trusts this process with this file now.
    pub trusted_reader: bool,
    /// On an exec: the server role of the process before it ran something else.
    pub spawned_by_server: Option<&'a ServerRole>,
    /// On a process access: the server role of the target.
    pub target_server: Option<&'a ServerRole>,
    /// This host holds protected files (transfer tools only matter where there is something
    /// to take).
    pub weights_present: bool,
    /// The flows this event counts toward: its process tree, nearest first, then its scope.
    pub groups: &'a [FlowKey],
}

impl Ctx<'_> {
    /// The acting process is a server pinned by more than its name.
    pub fn pinned_server(&self) -> bool {
        self.server.is_some_and(|s| s.strong)
    }
}
