//! Agent settings. Every value has a default that works with no configuration; the YAML file
//! and its validation arrive with the detection engine.
use std::path::PathBuf;

use crate::state::files::default_roots;

/// Local ports whose accepted connections are reported: vLLM/TGI/Triton HTTP (8000, 8080),
/// Triton gRPC/metrics (8001, 8002), Ollama (11434), llama.cpp server (8080), SGLang (30000).
pub const DEFAULT_INFERENCE_PORTS: &[u16] = &[8000, 8001, 8002, 8080, 11434, 30000];

#[derive(Debug, Clone)]
pub struct Config {
    /// Directories searched for weight files.
    pub model_dirs: Vec<PathBuf>,
    pub inference_ports: Vec<u16>,
    /// Kernel reports bytes read per descriptor every this many bytes (and on first read/close).
    pub read_report_bytes: u64,
    /// Same for bytes sent per destination.
    pub send_report_bytes: u64,
    /// Extra GPU/accelerator majors beyond the fixed and /proc/devices ones.
    pub extra_gpu_majors: Vec<u32>,
    /// How often in-kernel counters of live processes are swept into events.
    pub flush_interval: std::time::Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            model_dirs: default_roots(),
            inference_ports: DEFAULT_INFERENCE_PORTS.to_vec(),
            read_report_bytes: 1 << 20,
            send_report_bytes: 1 << 20,
            extra_gpu_majors: Vec::new(),
            flush_interval: std::time::Duration::from_secs(5),
        }
    }
}
