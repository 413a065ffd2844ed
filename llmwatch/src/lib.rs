//! llmwatch: a host agent that guards AI model weights.
//!
//! Data flows through the modules in this order:
//! `probes` (kernel programs, loading, attach) → `collector` (kernel I/O: records decoded by
//! `events`, counters reconciled and swept, mappings sampled) →
//! `state` (watched files, processes, containers) → `enrich` (events with who/what) →
//! `rules` (correlation into alerts) → `alerts` (the alert contract, dedup) → sinks.
//! `agent` runs it live (`text` writes its output for a person); `replay` runs the same rules over a recording.
pub mod agent;
pub mod alerts;
pub mod clock;
pub mod collector;
pub mod config;
pub mod enrich;
pub mod events;
pub mod guard;
pub mod http_client;
pub mod json_path;
pub mod metrics;
pub mod probes;
pub mod redact;
pub mod replay;
pub mod rules;
pub mod sinks;
pub mod state;
pub mod text;
