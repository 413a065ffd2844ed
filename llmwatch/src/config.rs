//! Agent settings. Every value has a default that works with no configuration; the YAML file
//! and its validation arrive with the detection engine.
use std::path::PathBuf;

use crate::state::files::default_roots;

/// Local ports whose accepted connections are reported: vLLM/TGI/Triton HTTP (8000, 8080),
/// Triton gRPC/metrics (8001, 8002), Ollama (11434), llama.cpp server (8080), SGLang (30000).
pub const DEFAULT_INFERENCE_PORTS: &[u16] = &[8000, 8001, 8002, 8080, 11434, 30000];

/// Fixed GPU/accelerator character-device majors (see shared notes: NVIDIA 195, DRM 226,
/// accel 261). Majors assigned at load time (nvidia-uvm, kfd, ...) are read from /proc/devices.
pub const FIXED_GPU_MAJORS: &[u32] = &[195, 226, 261];
/// Driver names in /proc/devices whose majors are GPUs too.
pub const DYNAMIC_GPU_DRIVERS: &[&str] =
    &["nvidia-uvm", "nvidia-caps", "nvidia-nvswitch", "nvidia-nvlink", "nvidia-fs", "kfd", "habanalabs", "accel"];

#[derive(Debug, Clone)]
pub struct Config {
    /// Directories searched for weight files.
    pub model_dirs: Vec<PathBuf>,
    pub inference_ports: Vec<u16>,
    /// Kernel reports bytes read per descriptor every this many bytes (and on first read/close).
    pub read_report_bytes: u64,
    /// Same for bytes sent per destination.
    pub send_report_bytes: u64,
    /// Extra GPU majors beyond the fixed and /proc/devices ones.
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

/// GPU majors on this host: the fixed ones plus those /proc/devices assigns to GPU drivers.
pub fn gpu_majors(proc_devices: &str, extra: &[u32]) -> Vec<u32> {
    let mut majors: Vec<u32> = FIXED_GPU_MAJORS.to_vec();
    let mut in_char = false;
    for line in proc_devices.lines() {
        if line.starts_with("Character devices") {
            in_char = true;
            continue;
        }
        if line.starts_with("Block devices") {
            in_char = false;
        }
        if !in_char {
            continue;
        }
        let mut it = line.split_whitespace();
        if let (Some(num), Some(name)) = (it.next(), it.next()) {
            if DYNAMIC_GPU_DRIVERS.contains(&name) {
                if let Ok(n) = num.parse() {
                    majors.push(n);
                }
            }
        }
    }
    majors.extend_from_slice(extra);
    majors.sort_unstable();
    majors.dedup();
    majors
}

#[cfg(test)]
mod tests {
    #[test]
    fn gpu_majors_from_proc_devices() {
        let text = "Character devices:\n  1 mem\n195 nvidia-frontend\n235 nvidia-uvm\n240 kfd\n\nBlock devices:\n  8 sd\n240 kfd-not\n";
        assert_eq!(super::gpu_majors(text, &[300]), vec![195, 226, 235, 240, 261, 300]);
    }
}
