//! What the agent knows about the host: watched weight files, processes and their containers,
//! and its own heartbeat.
pub mod container;
pub mod files;
pub mod gpu;
pub mod heartbeat;
pub mod manifest;
pub mod pods;
pub mod process;
pub mod users;
