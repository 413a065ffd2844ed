//! The capabilities the agent runs with, for messages that tell an operator what to grant and
//! for the start-up report (least privilege: docs/deploy.md).

/// (bit, name, what the agent uses it for). The agent needs the first two; the rest widen what
/// it sees or does (see `lost_without`).
pub const USED: &[(u32, &str, &str)] = &[
    (39, "CAP_BPF", "create maps and load programs"),
    (
        38,
        "CAP_PERFMON",
        "load tracing programs and read kernel memory from them",
    ),
    (
        2,
        "CAP_DAC_READ_SEARCH",
        "walk and hash model directories whatever their permissions",
    ),
    (
        24,
        "CAP_SYS_RESOURCE",
        "raise RLIMIT_MEMLOCK (kernels before 5.11 charge BPF memory to it)",
    ),
    (
        19,
        "CAP_SYS_PTRACE",
        "read /proc/<pid>/exe, cwd, fd and smaps of other users' processes (so those that held or mapped weights before the agent started are not followed, and their mappings' touched pages are not sampled)",
    ),
    (21, "CAP_SYS_ADMIN", "mount tracefs when it is not mounted"),
];

/// The effective capability set of this process (from /proc/self/status), or None if unreadable.
pub fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// "CAP_BPF, CAP_PERFMON (missing: CAP_DAC_READ_SEARCH, ...)" for the capabilities in `USED`.
pub fn describe_effective() -> String {
    let Some(eff) = effective() else {
        return "unknown capabilities (/proc/self/status unreadable)".into();
    };
    describe(eff)
}

fn describe(eff: u64) -> String {
    let (have, missing): (Vec<_>, Vec<_>) = USED.iter().partition(|(bit, _, _)| eff & (1 << bit) != 0);
    let names = |v: &[&(u32, &str, &str)]| v.iter().map(|(_, n, _)| *n).collect::<Vec<_>>().join(", ");
    format!(
        "{} (missing: {})",
        if have.is_empty() {
            "none of CAP_BPF, CAP_PERFMON, ...".to_string()
        } else {
            names(&have)
        },
        if missing.is_empty() {
            "none".to_string()
        } else {
            names(&missing)
        }
    )
}

/// One line per capability in `USED` the process lacks and this kernel would use: what the
/// agent cannot do without it.
pub fn lost_without() -> Vec<String> {
    let eff = effective().unwrap_or(0);
    let memlock_matters = kernel_release().is_some_and(|(major, minor)| (major, minor) < (5, 11));
    USED.iter()
        .filter(|(bit, _, _)| eff & (1 << bit) == 0)
        .filter(|(bit, _, _)| *bit != 24 || memlock_matters)
        .map(|(_, name, what)| format!("no {name}: cannot {what}"))
        .collect()
}

/// (major, minor) of the running kernel.
fn kernel_release() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_what_is_held_and_missing() {
        let eff = (1 << 39) | (1 << 38);
        let d = describe(eff);
        assert!(
            d.starts_with("CAP_BPF, CAP_PERFMON (missing: CAP_DAC_READ_SEARCH"),
            "{d}"
        );
        assert!(describe(0).contains("missing: CAP_BPF"), "{}", describe(0));
        assert!(describe(u64::MAX).ends_with("(missing: none)"));
    }
}
