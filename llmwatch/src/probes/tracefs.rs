//! tracefs: raw tracepoints do not need it, but tracepoint programs and the capability report
//! do, and it is often unmounted inside containers and minimal hosts.
use std::path::Path;

pub const TRACEFS: &str = "/sys/kernel/tracing";

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TracefsState {
    Mounted,
    /// The agent mounted it.
    MountedNow,
    Unavailable(String),
}

/// Mounts tracefs at `dir` (normally /sys/kernel/tracing) when it is not there yet.
pub fn ensure_mounted(dir: &Path) -> TracefsState {
    if dir.join("events").is_dir() {
        return TracefsState::Mounted;
    }
    let src = c"nodev";
    let Ok(target) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return TracefsState::Unavailable(format!("{}: not a path", dir.display()));
    };
    let fstype = c"tracefs";
    // SAFETY: all pointers are valid NUL-terminated strings; data is null.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        TracefsState::MountedNow
    } else {
        let err = std::io::Error::last_os_error();
        TracefsState::Unavailable(format!("mount -t tracefs nodev {}: {err}", dir.display()))
    }
}
