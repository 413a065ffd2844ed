//! The `guard` section (see `config::guard`).
use crate::state::files::PathGlob;

use super::{Checker, Config, Node, join, positive_size};
use crate::config::guard::{self as g, GuardMode};

impl Checker {
    pub(super) fn guard(&mut self, node: &Node, cfg: &mut Config) {
        let f = self.fields("guard", node, g::KEYS, "guard");
        let guard = &mut cfg.guard;
        guard.enabled = true;
        let mut mode = None;
        self.set(
            &f,
            "guard",
            "mode",
            "monitor or enforce",
            |s| g::mode(s).map(Some),
            &mut mode,
        );
        guard.mode = mode;
        if let Some(n) = f.get("egress_budget") {
            let p = "guard.egress_budget";
            let e = self.fields(p, n, g::EGRESS_KEYS, p);
            let b = &mut guard.egress_budget;
            let mut m = None;
            self.set(
                &e,
                p,
                "mode",
                "monitor or enforce",
                |s| g::mode(s).map(Some),
                &mut m,
            );
            b.mode = m;
            self.set(&e, p, "max_bytes", "a size", positive_size, &mut b.max_bytes);
            self.set(
                &e,
                p,
                "read_percent",
                "a percentage",
                g::percent,
                &mut b.read_percent,
            );
            self.set(
                &e,
                p,
                "floor_bytes",
                "a size",
                crate::config::values::size,
                &mut b.floor_bytes,
            );
            if b.floor_bytes > b.max_bytes {
                self.bad(
                    &join(p, "floor_bytes"),
                    n,
                    format!(
                        "floor_bytes ({}) is above max_bytes ({}): the budget would never be below the floor",
                        b.floor_bytes, b.max_bytes
                    ),
                );
            }
        }
        if let Some(n) = f.get("open_deny") {
            let p = "guard.open_deny";
            let o = self.fields(p, n, g::OPEN_KEYS, p);
            let mut m: Option<GuardMode> = None;
            self.set(
                &o,
                p,
                "mode",
                "monitor or enforce",
                |s| g::mode(s).map(Some),
                &mut m,
            );
            guard.open_mode = m;
        }
        self.set_list(
            &f,
            "guard",
            "enforce_files",
            "an absolute path glob",
            |s| PathGlob::new(s).map_err(|e| e.to_string()),
            &mut guard.enforce_files,
        );
        if cfg.guard.enabled
            && (cfg.guard.open_mode() == GuardMode::Enforce || !cfg.guard.enforce_files.is_empty())
            && let Some(why) = no_bpf_lsm()
        {
            self.warn(
                "guard",
                node,
                format!(
                    "open deny enforces, but {why}: opens of protected files will NOT be refused on this host (boot with lsm=...,bpf; `llmwatch check` tries it)"
                ),
            );
        }
        if cfg.guard.enforces() {
            let weak: Vec<&str> = cfg
                .servers
                .iter()
                .filter(|s| !s.strong())
                .map(|s| s.name.as_str())
                .collect();
            if !weak.is_empty() {
                self.warn(
                    "guard",
                    node,
                    format!(
                        "servers {weak:?} are pinned by name only: the guard never exempts them, so in enforce mode their opens of protected files and their egress are refused like anyone's (pin them by exe, user, container or cgroup)"
                    ),
                );
            }
        }
    }
}

/// Why BPF-LSM programs cannot run on this host, when the kernel says so: its active LSM list
/// (securityfs) lacks `bpf`. None when it has it or cannot be read (then `llmwatch check`,
/// which really attaches one, is the answer).
fn no_bpf_lsm() -> Option<String> {
    let path = "/sys/kernel/security/lsm";
    let list = std::fs::read_to_string(path).ok()?;
    (!list.trim().split(',').any(|l| l == "bpf")).then(|| format!("{path} ({}) has no bpf", list.trim()))
}
