//! llmwatch: a host agent that guards AI model weights.
//!
//! Data flows through the modules in this order:
//! `probes` (kernel programs, loading, attach) → `events` (decoded kernel records) →
//! `state` (watched files, processes, containers) → `enrich` (events with who/what) → output.
pub mod agent;
pub mod config;
pub mod enrich;
pub mod events;
pub mod probes;
pub mod state;
