//! GPU and accelerator device nodes: which character-device majors are GPUs on this host and
//! what to call a (major, minor) pair.
use std::collections::{HashMap, HashSet};

/// Majors fixed by the kernel's device list: NVIDIA (195), DRM (226), accel (261).
pub const FIXED_MAJORS: &[(u32, &str)] = &[(195, "nvidia"), (226, "drm"), (261, "accel")];
/// Drivers whose majors are assigned at load time; read from /proc/devices.
pub const DYNAMIC_DRIVERS: &[&str] = &[
    "nvidia-uvm",
    "nvidia-caps",
    "nvidia-nvswitch",
    "nvidia-nvlink",
    "nvidia-fs",
    "kfd",
    "habanalabs",
    "accel",
];

#[derive(Debug, Clone, Default)]
pub struct GpuDevices {
    names: HashMap<u32, String>,
}

impl GpuDevices {
    /// From the text of /proc/devices plus operator-configured extra majors.
    pub fn new(proc_devices: &str, extra: &[u32]) -> Self {
        let mut names: HashMap<u32, String> = FIXED_MAJORS.iter().map(|(m, n)| (*m, n.to_string())).collect();
        let mut in_char = false;
        for line in proc_devices.lines() {
            if line.starts_with("Character devices") {
                in_char = true;
                continue;
            }
            if line.starts_with("Block devices") {
                in_char = false;
            }
            let mut it = line.split_whitespace();
            if let (true, Some(num), Some(name)) = (in_char, it.next(), it.next())
                && let (true, Ok(n)) = (DYNAMIC_DRIVERS.contains(&name), num.parse())
            {
                names.insert(n, name.to_string());
            }
        }
        for m in extra {
            names.entry(*m).or_insert_with(|| format!("major{m}"));
        }
        GpuDevices { names }
    }

    /// Reads /proc/devices of this host.
    pub fn from_host(extra: &[u32]) -> Self {
        Self::new(
            &std::fs::read_to_string("/proc/devices").unwrap_or_default(),
            extra,
        )
    }

    pub fn majors(&self) -> HashSet<u32> {
        self.names.keys().copied().collect()
    }

    /// Whether (major, minor) is a compute device. DRM minors below 128 are display (card)
    /// nodes that compositors open; compute goes through render nodes (renderD128+).
    pub fn is_gpu(&self, major: u32, minor: u32) -> bool {
        self.names.contains_key(&major) && !(major == 226 && minor < 128)
    }

    /// The /dev name the device conventionally has.
    pub fn device_name(&self, major: u32, minor: u32) -> String {
        match (major, minor) {
            (195, 255) => "nvidiactl".into(),
            (195, 254) => "nvidia-modeset".into(),
            (195, m) => format!("nvidia{m}"),
            (226, m) if m >= 128 => format!("dri/renderD{m}"),
            (226, m) => format!("dri/card{m}"),
            (261, m) => format!("accel/accel{m}"),
            (maj, m) => match self.names.get(&maj).map(String::as_str) {
                Some("kfd") => "kfd".into(),
                Some(name) => format!("{name}{m}"),
                None => format!("{maj}:{m}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majors_from_proc_devices() {
        let text = "Character devices:\n  1 mem\n195 nvidia-frontend\n235 nvidia-uvm\n240 kfd\n\nBlock devices:\n  8 sd\n241 kfd\n";
        let g = GpuDevices::new(text, &[300]);
        let mut m: Vec<u32> = g.majors().into_iter().collect();
        m.sort();
        assert_eq!(m, vec![195, 226, 235, 240, 261, 300]);
        assert_eq!(g.device_name(240, 0), "kfd");
        assert_eq!(g.device_name(235, 0), "nvidia-uvm0");
        assert_eq!(g.device_name(195, 1), "nvidia1");
        assert_eq!(g.device_name(195, 255), "nvidiactl");
        assert_eq!(g.device_name(226, 128), "dri/renderD128");
    }

    #[test]
    fn drm_card_nodes_are_not_compute() {
        let g = GpuDevices::new("", &[]);
        assert!(g.is_gpu(226, 128));
        assert!(!g.is_gpu(226, 0));
        assert!(g.is_gpu(195, 0));
        assert!(!g.is_gpu(1, 3));
    }
}
