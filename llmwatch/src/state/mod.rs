//! What the agent knows about the host: watched weight files, processes and their containers.
pub mod container;
pub mod files;
pub mod gpu;
pub mod manifest;
pub mod process;
