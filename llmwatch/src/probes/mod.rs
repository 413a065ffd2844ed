//! Kernel programs: load the embedded object with offsets from this kernel's BTF, attach each
//! hook and say which attached, and hand out the maps the rest of the agent uses.
pub mod btf;
pub mod capabilities;
pub mod fast;
pub mod tracefs;

use std::{collections::HashSet, os::fd::AsFd};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSockAddr, FEntry, KProbe, Lsm, RawTracePoint, TracePoint,
    },
};
use llmwatch_common::{
    event::FileId,
    maps::{
        self as m, FdKey, ProcFileKey, SendKey, SendStats, Settings, TouchStats, TrackedFd, UringKey,
        WatchedFile, names,
    },
    offsets::Offsets,
};

pub mod slots;
/// Only a test: the embedded object against 6.1's combined stack limit.
#[cfg(test)]
mod stack_depth;

/// The kernel object built by build.rs from `llmwatch-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/llmwatch"));

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "this binary was built without kernel programs (AYA_BUILD_SKIP); rebuild with `cargo xtask build`"
    )]
    NoObject,
    #[error("reading kernel BTF: {0}")]
    Btf(#[from] btf::BtfError),
    #[error("loading the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error(
        "the kernel refused to create the agent's BPF maps and programs (EPERM): run as root, or \
         grant CAP_BPF and CAP_PERFMON (see docs/deploy.md, least privilege); this process has {have}"
    )]
    NotPermitted {
        have: String,
        source: Box<aya::EbpfError>,
    },
    #[error("map `{name}`: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("map `{name}` missing from the eBPF object")]
    MissingMap { name: &'static str },
    #[error("no required hook attached; the agent would see nothing: {0}")]
    NothingAttached(String),
}

/// One kernel hook and whether it is live.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HookStatus {
    pub program: &'static str,
    /// e.g. "raw_tracepoint/sys_exit".
    pub hook: &'static str,
    /// What the agent loses without it.
    pub purpose: &'static str,
    pub required: bool,
    pub attached: bool,
    pub error: Option<String>,
    /// When not attached but another path covers what it is for: that path (so nothing is
    /// lost and nobody is told otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instead: Option<String>,
}

impl HookStatus {
    /// One line for logs and `agent_ready.degraded` about a hook that is not attached.
    pub fn not_attached_line(&self) -> String {
        let why = self.error.as_deref().unwrap_or("?");
        match &self.instead {
            Some(instead) => format!("hook {} not attached ({why}); instead: {instead}", self.hook),
            None => format!(
                "hook {} not attached ({why}): {} not seen",
                self.hook, self.purpose
            ),
        }
    }
}

/// The hooks `run` attaches: program name, raw tracepoint, purpose, required.
const HOOKS: &[(&str, &str, &str, bool)] = &[
    (
        "llmwatch_sys_exit",
        "sys_exit",
        "file opens/reads/mmaps/changes, connects, accepts",
        true,
    ),
    (
        "llmwatch_exec",
        "sched_process_exec",
        "process exec (filename, argv, parent)",
        true,
    ),
    ("llmwatch_fork", "sched_process_fork", "process fork", true),
    ("llmwatch_exit", "sched_process_exit", "process exit", true),
    (
        "llmwatch_sock_send",
        "sock_send_length",
        "bytes sent per destination",
        false,
    ),
    (
        "llmwatch_io_uring_complete",
        "io_uring_complete",
        "io_uring reads of weight files, opens, connects and (without sock_send_length) sends",
        false,
    ),
    (
        "llmwatch_filemap_map_pages",
        "mm_filemap_map_pages",
        "pages of weight files touched through mappings (fault-around)",
        false,
    ),
    (
        "llmwatch_filemap_fault",
        "mm_filemap_fault",
        "pages of weight files touched through mappings (single faults)",
        false,
    ),
];

/// Kprobes standing in for the filemap fault tracepoints: program, kernel function, purpose.
const FAULT_KPROBES: [(&str, &str, &str); 2] = [
    (
        "llmwatch_kprobe_filemap_map_pages",
        "filemap_map_pages",
        "pages of weight files touched through mappings (fault-around), where the tracepoint is missing",
    ),
    (
        "llmwatch_kprobe_filemap_fault",
        "filemap_fault",
        "pages of weight files touched through mappings (single faults), where the tracepoint is missing",
    ),
];

fn function_hook_name(function: &str) -> &'static str {
    match function {
        "filemap_map_pages" => "kprobe/filemap_map_pages",
        _ => "kprobe/filemap_fault",
    }
}

fn attach_kprobe(ebpf: &mut Ebpf, program: &str, function: &str) -> Result<(), String> {
    let prog: &mut KProbe = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("program {program} missing from the object"))?
        .try_into()
        .map_err(|e| format!("{program}: {e}"))?;
    prog.load()
        .map_err(|e| format!("load {program}: {}", describe(&e)))?;
    prog.attach(function, 0)
        .map_err(|e| format!("attach {program} to {function}: {}", describe(&e)))?;
    Ok(())
}

/// Which way each kind of data reaches the agent on this kernel (chosen at start-up from what
/// the kernel has; `agent_ready.data_paths`, `llmwatch check`, `llmwatch_data_path`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DataPaths {
    /// Bytes read through descriptors: always the syscall exit hook (+ io_uring completions).
    pub reads: &'static str,
    /// Bytes sent: `sock_send_length` where the kernel has it, else the syscall exit hook.
    pub sends: &'static str,
    /// Bytes touched through mappings: `touch`'s name (`TouchCounter::path`).
    pub mmap_touch: &'static str,
    /// What counts the pages of mappings; set with `set_touch`, which names it in `mmap_touch`.
    #[serde(skip)]
    pub touch: TouchCounter,
    /// io_uring: completions, with the tracepoint layout of this kernel.
    pub io_uring: &'static str,
    /// How a process's descriptors of watched files are found: `fd_install` where fentry
    /// loads (every one, with its file), else the syscalls that hand them out.
    pub descriptors: &'static str,
}

impl DataPaths {
    pub fn pairs(&self) -> [(&'static str, &'static str); 5] {
        [
            ("reads", self.reads),
            ("sends", self.sends),
            ("mmap_touch", self.mmap_touch),
            ("io_uring", self.io_uring),
            ("descriptors", self.descriptors),
        ]
    }
}

impl DataPaths {
    /// `touch` counts the pages of mappings; `pmd_fexit`: fexit on `do_set_pmd` counts PMDs
    /// beside it (the fast path on a kernel before 6.6).
    fn set_touch(&mut self, touch: TouchCounter, pmd_fexit: bool) {
        self.touch = touch;
        self.mmap_touch = touch.path(pmd_fexit);
    }
}

/// What counts the pages of weight files touched through mappings, besides the smaps samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TouchCounter {
    /// `mm_filemap_map_pages`/`mm_filemap_fault`.
    Tracepoints,
    /// kprobes on the functions that fire them, where the tracepoints are missing.
    Kprobes,
    /// fexit on `set_pte_range`/`do_set_pmd`: pages as mapped (`fast::FaultHooks::PageTables`).
    PageTables,
    /// Nothing in the kernel: the samples only.
    Smaps,
    /// The samples only, by `--mmap-touch smaps`.
    SmapsForced,
}

impl TouchCounter {
    /// `data_paths.mmap_touch`.
    pub fn path(self, pmd_fexit: bool) -> &'static str {
        match (self, pmd_fexit) {
            (TouchCounter::PageTables, _) => PAGE_TABLE_TOUCH,
            (TouchCounter::Tracepoints, false) => "filemap fault tracepoints + /proc/PID/smaps samples",
            (TouchCounter::Tracepoints, true) => {
                "filemap fault tracepoints + fexit/do_set_pmd (PMDs) + /proc/PID/smaps samples"
            }
            (TouchCounter::Kprobes, false) => "filemap kprobes + /proc/PID/smaps samples",
            (TouchCounter::Kprobes, true) => {
                "filemap kprobes + fexit/do_set_pmd (PMDs) + /proc/PID/smaps samples"
            }
            (TouchCounter::Smaps | TouchCounter::SmapsForced, true) => {
                "fexit/do_set_pmd (PMDs) + /proc/PID/smaps samples"
            }
            (TouchCounter::Smaps, false) => "/proc/PID/smaps samples",
            (TouchCounter::SmapsForced, false) => "/proc/PID/smaps samples (forced)",
        }
    }
}

/// `data_paths.descriptors` on the tracepoint path (and where `fd_install` is refused): the
/// syscall exits that hand descriptors out, with the limits README "Limits" lists.
pub const SYSCALL_DESCRIPTORS: &str = "syscall exits: opens, first use of inherited ones, SCM_RIGHTS \
     (first 2 control messages, 8 descriptors each), pidfd_getfd, io_uring opens";
/// `data_paths.descriptors` where `fentry/fd_install` is attached.
pub const FD_INSTALL_DESCRIPTORS: &str = "fentry/fd_install: every descriptor installed, with its file (opens, SCM_RIGHTS in any position, \
     pidfd_getfd, io_uring, seccomp addfd), first use of inherited ones";

/// Tracepoints the kernel may lack: the agent asks BTF before attaching, so what is missing
/// is said plainly instead of as an attach error.
const SOCK_SEND_LENGTH: &str = "sock_send_length";
const IO_URING_COMPLETE: &str = "io_uring_complete";
const FILEMAP_TRACEPOINTS: [&str; 2] = ["mm_filemap_map_pages", "mm_filemap_fault"];

/// `data_paths.mmap_touch` where fexit on the page-table functions counts every page mapped.
const PAGE_TABLE_TOUCH: &str =
    "page-table fexit (set_pte_range, do_set_pmd: pages as mapped) + /proc/PID/smaps samples";

/// Choices the command line can force, to compare paths and to test the fallbacks on a kernel
/// that has the better ones.
#[derive(Debug, Clone, Copy)]
pub struct ProbeOptions {
    /// The per-syscall fexit programs where the kernel allows them (else the tracepoint path).
    pub prefer_fentry: bool,
    /// tp_btf for the syscall hook where allowed (else the raw tracepoint).
    pub prefer_tp_btf: bool,
    /// Count bytes sent at syscall exit even where `sock_send_length` exists.
    pub syscall_sends: bool,
    /// Leave the filemap fault tracepoints unused: touched pages from smaps samples only.
    pub smaps_touch_only: bool,
    /// The guard's settings (`crate::guard`), written into its read-only global.
    pub guard: llmwatch_common::guard::GuardSettings,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            prefer_fentry: true,
            prefer_tp_btf: true,
            syscall_sends: false,
            smaps_touch_only: false,
            guard: llmwatch_common::guard::GuardSettings::off(),
        }
    }
}

/// Loaded and attached kernel programs plus the maps the agent shares with them.
pub struct Probes {
    ebpf: Ebpf,
    pub hooks: Vec<HookStatus>,
    /// Offsets this kernel lacks (their features are off).
    pub missing_offsets: Vec<&'static str>,
    /// Which syscall hook was chosen: Ok(the faster tp_btf hook) or Err(why it was refused and
    /// the raw tracepoint used instead).
    pub fast_path: Option<Result<&'static str, String>>,
    /// Per-syscall fexit programs, or the `sys_exit` tracepoint (`fast_path` says which kind),
    /// and why not the former when not.
    pub hook: fast::HookChoice,
    /// Syscall functions the fast path found missing from this kernel's BTF (their syscalls do
    /// not exist here); empty on the tracepoint path.
    pub fast_absent: Vec<&'static str>,
    /// Page-table functions whose fexit programs count the pages of mappings (fast path), in
    /// place of the filemap tracepoints or kprobes; None where those count.
    pub touch_fexits: Option<fast::FaultHooks>,
    /// This agent's own BPF objects, ("prog" | "map" | "link", id) -> name: another process
    /// taking a handle to one of them is how its maps get changed or its ring buffer read.
    pub own_objects: std::collections::HashMap<(&'static str, u32), String>,
    /// Why the kernel's BTF could not be used, when it could not: the programs then run with
    /// syscall arguments only (see `Offsets::syscall_abi_only`).
    pub btf_error: Option<String>,
    /// The paths chosen for this kernel (filled at load).
    pub paths: DataPaths,
    /// Tracepoints not used, with why: this kernel does not have them (by BTF) and what the
    /// agent does instead, or an option said not to.
    missing_tracepoints: Vec<(&'static str, String)>,
}

/// What the agent loses without kernel BTF (every struct offset unknown).
pub const NO_BTF_LOSS: &str = "weight-file opens, reads, mmaps and changes through a descriptor, \
     connections and bytes sent, GPU opens, io_uring, parent pids and exec paths are NOT seen; \
     refused opens, renames/unlinks by path, bpf() use, ptrace and process_vm_* still are";

impl Probes {
    /// Resolves offsets from BTF, loads the object and attaches every hook. Fails only when no
    /// required hook could be attached; partial attachment is reported in `hooks`.
    ///
    /// Without usable BTF at `btf_path` the agent degrades instead of refusing to start: the
    /// programs get the syscall ABI offsets only and `btf_error` says why (see `NO_BTF_LOSS`).
    pub fn load(
        settings: Settings,
        opts: ProbeOptions,
        btf_path: &std::path::Path,
    ) -> Result<Self, ProbeError> {
        let prefer_tp_btf = opts.prefer_tp_btf;
        if OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        let kbtf = btf::KernelBtf::from_file(btf_path);
        let mut settings = settings;
        let (paths, missing_tracepoints) = choose_paths(kbtf.as_ref().ok(), opts, &mut settings);
        let resolved = kbtf
            .map_err(ProbeError::from)
            .and_then(|kbtf| btf::resolve_offsets(&kbtf).map_err(ProbeError::from));
        let (offsets, missing_offsets, btf_error) = match resolved {
            Ok((offsets, missing)) => (offsets, missing, None),
            Err(e) => {
                let why = format!("{}: {e}", btf_path.display());
                log::error!(
                    "no usable kernel BTF ({why}): {NO_BTF_LOSS}; pass --kernel-btf FILE (e.g. from BTFHub)"
                );
                (
                    Offsets::syscall_abi_only(),
                    vec!["every kernel struct field (no BTF)"],
                    Some(why),
                )
            }
        };
        let ebpf = load_object(&offsets, &settings, &opts.guard)?;
        let mut probes = Probes {
            ebpf,
            hooks: Vec::new(),
            missing_offsets,
            fast_path: None,
            hook: fast::HookChoice {
                hook_path: fast::HookPath::Tracepoint,
                hook_path_fallback: None,
            },
            fast_absent: Vec::new(),
            touch_fexits: None,
            own_objects: Default::default(),
            btf_error,
            paths,
            missing_tracepoints,
        };
        if probes.btf_error.is_some() && prefer_tp_btf {
            probes.fast_path = Some(Err("no kernel BTF (tp_btf needs it)".into()));
        }
        probes.attach_fast(opts.prefer_fentry, !opts.smaps_touch_only, btf_path);
        probes.attach_all(prefer_tp_btf && probes.btf_error.is_none(), btf_path);
        if !opts.smaps_touch_only {
            probes.attach_fault_kprobes();
            probes.note_pmd_only_hook();
        }
        probes.own_objects = own_objects(&probes.ebpf);
        if !probes.hooks.iter().any(|h| h.required && h.attached) {
            let why = probes
                .hooks
                .iter()
                .map(|h| format!("{}: {}", h.hook, h.error.as_deref().unwrap_or("?")))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(ProbeError::NothingAttached(why));
        }
        Ok(probes)
    }

    fn attach_all(&mut self, prefer_tp_btf: bool, btf_path: &std::path::Path) {
        for &(program, tp, mut purpose, required) in HOOKS {
            let hook = tp_hook_name(tp);
            // The ≤ 6.2 layout passes `res` as an argument: only the request fields are needed.
            let cqe_needed = self.paths.io_uring == URING_CQE;
            let skip = program == "llmwatch_io_uring_complete"
                && (self.btf_error.is_some()
                    || self
                        .missing_offsets
                        .iter()
                        .any(|o| o.starts_with("req_") || (cqe_needed && o.starts_with("cqe_"))));
            let mut hook = hook;
            let mut program = program;
            let absent = self
                .missing_tracepoints
                .iter()
                .find(|(name, _)| *name == tp)
                .map(|(_, why)| why.as_str());
            let page_tables = matches!(self.touch_fexits, Some(fast::FaultHooks::PageTables { .. }));
            let result = if page_tables && program.starts_with("llmwatch_filemap_") {
                // The page-table fexit programs count every page these would (`attach_fast`);
                // both tracepoints are one hook there.
                if program == "llmwatch_filemap_fault" {
                    continue;
                }
                hook = self.touch_fexits.map_or("?", fast::FaultHooks::hook_name);
                program = "llmwatch_fx_set_pte_range/do_set_pmd";
                purpose = "pages of weight files touched through mappings (as mapped: any folio size, PMDs)";
                Ok(())
            } else if program == "llmwatch_sys_exit" && self.hook.hook_path == fast::HookPath::Fentry {
                // The per-syscall programs carry what `sys_exit` would (`attach_fast`).
                hook = fast::HOOK_NAME;
                program = "llmwatch_fx_*";
                Ok(())
            } else if let Some(why) = absent {
                Err(why.to_string())
            } else if skip {
                Err("io_uring request layout not in this kernel's BTF".to_string())
            } else if program == "llmwatch_io_uring_complete" && self.paths.io_uring == URING_RES_ARG {
                program = "llmwatch_io_uring_complete_res";
                attach_raw_tracepoint(&mut self.ebpf, program, tp)
            } else if program == "llmwatch_sys_exit" && !prefer_tp_btf {
                if self.fast_path.is_none() {
                    self.fast_path = Some(Err("not tried (--syscall-hook raw)".into()));
                }
                attach_raw_tracepoint(&mut self.ebpf, program, tp)
            } else if program == "llmwatch_sys_exit" {
                // The faster variant first (typed arguments, no helper call for the syscall
                // number); the raw tracepoint when the kernel refuses it.
                match attach_btf_tracepoint(&mut self.ebpf, "llmwatch_sys_exit_btf", tp, btf_path) {
                    Ok(()) => {
                        hook = "tp_btf/sys_exit";
                        program = "llmwatch_sys_exit_btf";
                        self.fast_path = Some(Ok("tp_btf/sys_exit"));
                        Ok(())
                    }
                    Err(e) => {
                        log::info!("tp_btf/sys_exit refused ({e}); using raw_tracepoint/sys_exit");
                        self.fast_path = Some(Err(e));
                        attach_raw_tracepoint(&mut self.ebpf, program, tp)
                    }
                }
            } else {
                attach_raw_tracepoint(&mut self.ebpf, program, tp)
            };
            self.hooks.push(HookStatus {
                program,
                hook,
                purpose,
                required,
                attached: result.is_ok(),
                error: result.err(),
                instead: None,
            });
        }
        self.note_fallbacks();
    }

    /// The fast path: per-syscall fexit programs instead of `sys_exit`, all or none; on any
    /// refusal the tracepoint path, with why in `hook.hook_path_fallback`.
    ///
    /// With the fast path, and unless `touch_fexits` is false (`--mmap-touch smaps`), the pages
    /// of mappings are counted by fexit on the page-table functions instead of the filemap
    /// tracepoints or kprobes (`fast::attach_fault_hooks`; exact for large folios and PMDs).
    fn attach_fast(&mut self, prefer_fentry: bool, touch_fexits: bool, btf_path: &std::path::Path) {
        let tried = if !prefer_fentry {
            Err("not tried (--syscall-hook tracepoint|raw)".to_string())
        } else if self.btf_error.is_some() {
            Err("no kernel BTF (fentry needs it)".to_string())
        } else {
            aya::Btf::parse_file(btf_path, aya::Endianness::default())
                .map_err(|e| format!("kernel BTF {}: {e}", btf_path.display()))
                .and_then(|btf| fast::attach(&mut self.ebpf, &btf, "llmwatch").map(|done| (done, btf)))
        };
        match tried {
            Ok((done, btf)) => {
                let need = ["vmf_vma", "vma_file", "file_mapping"];
                let missing_offset = self.missing_offsets.iter().find(|o| need.contains(o));
                match missing_offset {
                    _ if !touch_fexits => {}
                    Some(o) => log::info!("page-table fexit hooks not used: {o} not in this kernel's BTF"),
                    None => match fast::attach_fault_hooks(&mut self.ebpf, &btf) {
                        Ok(hooks) => {
                            log::info!("pages of mappings counted as mapped: {}", hooks.hook_name());
                            if let fast::FaultHooks::PageTables { .. } = hooks {
                                self.paths.set_touch(TouchCounter::PageTables, false);
                            }
                            self.touch_fexits = Some(hooks);
                        }
                        Err(e) => log::info!(
                            "page-table fexit hooks not used ({e}); filemap tracepoints or kprobes count faults"
                        ),
                    },
                }
                log::info!(
                    "fast path: fexit on {} syscall functions{}",
                    done.functions.len(),
                    if done.absent.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " ({} not in this kernel: {})",
                            done.absent.len(),
                            done.absent.join(", ")
                        )
                    }
                );
                self.attach_fd_install(&btf);
                self.hook.hook_path = fast::HookPath::Fentry;
                self.fast_absent = done.absent;
                self.paths.reads =
                    "per-syscall fexit (descriptors followed by struct file) + io_uring completions";
                if self.paths.sends.starts_with("syscall exit hook") {
                    self.paths.sends = if self.paths.sends.ends_with("(forced)") {
                        "per-syscall fexit + io_uring completions (forced)"
                    } else {
                        "per-syscall fexit + io_uring completions"
                    };
                }
            }
            Err(why) => {
                log::info!("per-syscall fexit hooks not used ({why}); using the sys_exit tracepoint");
                self.hook.hook_path_fallback = Some(why);
            }
        }
    }

    /// With the fast path: `fentry/fd_install`, which sees every descriptor the kernel gives a
    /// process (`files::on_fd_install` in the kernel crate). Refused, the syscall exits find
    /// them as on the tracepoint path, and the hook list says so.
    fn attach_fd_install(&mut self, btf: &aya::Btf) {
        let result = fast::attach_fd_install(&mut self.ebpf, btf);
        match &result {
            Ok(()) => self.paths.descriptors = FD_INSTALL_DESCRIPTORS,
            Err(e) => log::info!("fentry/fd_install not used ({e}); descriptors found at syscall exits"),
        }
        self.hooks.push(HookStatus {
            program: fast::FD_INSTALL.0,
            hook: "fentry/fd_install",
            purpose: "descriptors of weight files given some way the syscall hooks do not parse \
                      (SCM_RIGHTS past the first 8, io_uring recvmsg, seccomp addfd)",
            required: false,
            attached: result.is_ok(),
            instead: result.is_err().then(|| SYSCALL_DESCRIPTORS.to_string()),
            error: result.err(),
        });
    }

    /// Hooks that are missing but whose data another path brings: say which.
    fn note_fallbacks(&mut self) {
        let sends = self.paths.sends;
        let touch = self.paths.mmap_touch;
        for h in self.hooks.iter_mut().filter(|h| !h.attached) {
            h.instead = match h.program {
                "llmwatch_sock_send" if !sends.starts_with("sock_send_length") => Some(sends.to_string()),
                "llmwatch_filemap_map_pages" | "llmwatch_filemap_fault" => Some(touch.to_string()),
                _ => None,
            };
        }
    }

    /// On a kernel whose only page-table hook is `do_set_pmd` (`fast::FaultHooks::PmdOnly`):
    /// list it beside the tracepoints or kprobes that count the PTE faults, and say so in
    /// `data_paths.mmap_touch`.
    fn note_pmd_only_hook(&mut self) {
        if self.touch_fexits != Some(fast::FaultHooks::PmdOnly) {
            return;
        }
        self.hooks.push(HookStatus {
            program: "llmwatch_fx_do_set_pmd",
            hook: fast::FaultHooks::PmdOnly.hook_name(),
            purpose: "pages of weight files mapped as 2 MiB PMDs (which the fault hooks do not see)",
            required: false,
            attached: true,
            error: None,
            instead: None,
        });
        self.paths.set_touch(self.paths.touch, true);
        // The missing filemap tracepoints' `instead` names this path too.
        self.note_fallbacks();
    }

    /// Where the filemap fault tracepoints are missing, kprobes on the two functions that fire
    /// them count the same faults (6.1 allows kprobes). Both or neither: half the faults would
    /// be a count that looks complete and is not.
    fn attach_fault_kprobes(&mut self) {
        let traced = self
            .hooks
            .iter()
            .filter(|h| h.program.starts_with("llmwatch_filemap_"))
            .all(|h| h.attached);
        let page_tables = matches!(self.touch_fexits, Some(fast::FaultHooks::PageTables { .. }));
        if traced || self.btf_error.is_some() || page_tables {
            return;
        }
        let need = ["vmf_vma", "vmf_pgoff", "vma_file", "file_mapping"];
        let missing_offset = self.missing_offsets.iter().find(|o| need.contains(o)).copied();
        let mut all = true;
        for (program, function, purpose) in FAULT_KPROBES {
            let result = match missing_offset {
                Some(o) => Err(format!("{o} not in this kernel's BTF")),
                None => attach_kprobe(&mut self.ebpf, program, function),
            };
            all &= result.is_ok();
            self.hooks.push(HookStatus {
                program,
                hook: function_hook_name(function),
                purpose,
                required: false,
                attached: result.is_ok(),
                error: result.err(),
                instead: None,
            });
        }
        if all {
            self.paths.set_touch(TouchCounter::Kprobes, false);
            self.note_fallbacks();
        } else {
            // One attached without the other: detach it (dropping the link) by unloading.
            for (program, ..) in FAULT_KPROBES {
                let kprobe: Option<&mut KProbe> =
                    self.ebpf.program_mut(program).and_then(|p| p.try_into().ok());
                if let Some(p) = kprobe {
                    let _ = p.unload();
                }
            }
            for h in self
                .hooks
                .iter_mut()
                .filter(|h| h.program.starts_with("llmwatch_kprobe_"))
            {
                if h.attached {
                    h.attached = false;
                    h.error = Some("unloaded: its twin did not attach".into());
                }
            }
        }
    }

    /// The loaded object, for the guard's programs and maps (`crate::guard`).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map(names::EVENTS)
            .ok_or(ProbeError::MissingMap { name: names::EVENTS })?;
        RingBuf::try_from(map).map_err(|source| ProbeError::Map {
            name: names::EVENTS,
            source,
        })
    }

    fn take<T>(&mut self, name: &'static str) -> Result<T, ProbeError>
    where
        T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self.ebpf.take_map(name).ok_or(ProbeError::MissingMap { name })?;
        T::try_from(map).map_err(|source| ProbeError::Map { name, source })
    }

    /// Takes the shared maps out of the object; the programs keep their own references.
    pub fn take_maps(&mut self) -> Result<KernelMaps, ProbeError> {
        Ok(KernelMaps {
            watched_files: self.take(names::WATCHED_FILES)?,
            watched_names: self.take(names::WATCHED_NAMES)?,
            tracked_fds: self.take(names::TRACKED_FDS)?,
            send_stats: self.take(names::SEND_STATS)?,
            gpu_majors: self.take(names::GPU_MAJORS)?,
            inference_ports: self.take(names::INFERENCE_PORTS)?,
            stats: self.take(names::STATS)?,
            holders: self.take(names::HOLDERS)?,
            send_interest: self.take(names::SEND_INTEREST)?,
            uring_reads: self.take(names::URING_READS)?,
            touches: self.take(names::TOUCHES)?,
            pid_filter: self.take_slots(names::PID_FILTER)?,
            send_filter: self.take_slots(names::SEND_FILTER)?,
        })
    }

    fn take_slots(&mut self, name: &'static str) -> Result<slots::SlotCounts, ProbeError> {
        let map = self.ebpf.take_map(name).ok_or(ProbeError::MissingMap { name })?;
        let aya::maps::Map::Array(data) = map else {
            return Err(ProbeError::MissingMap { name });
        };
        Ok(slots::SlotCounts::new(data, m::FILTER_SLOTS as usize))
    }
}

fn not_in_kernel(tp: &str, instead: &str) -> String {
    format!("tracepoint {tp} not in this kernel: {instead}")
}

const URING_CQE: &str = "completions (ctx, req, cqe)";
const URING_RES_ARG: &str = "completions (ctx, req, user_data, res, ...)";

/// Which path each kind of data takes on this kernel, and the settings that tell the programs;
/// plus the tracepoints BTF says this kernel lacks, with what is done instead.
fn choose_paths(
    btf: Option<&btf::KernelBtf>,
    opts: ProbeOptions,
    settings: &mut Settings,
) -> (DataPaths, Vec<(&'static str, String)>) {
    let has = |tp: &str| btf.is_none_or(|b| b.tracepoint_arity(tp).is_some());
    let mut missing = Vec::new();
    let sends = if opts.syscall_sends {
        settings.send_path = m::send_path::SYSCALLS;
        missing.push((SOCK_SEND_LENGTH, "not used (--send-path syscalls)".into()));
        "syscall exit hook + io_uring completions (forced)"
    } else if has(SOCK_SEND_LENGTH) {
        settings.send_path = m::send_path::SOCK_SEND_LENGTH;
        "sock_send_length tracepoint"
    } else {
        settings.send_path = m::send_path::SYSCALLS;
        missing.push((
            SOCK_SEND_LENGTH,
            not_in_kernel(
                SOCK_SEND_LENGTH,
                "bytes sent are counted where write/send*/sendfile/splice return (the syscall hooks) and at io_uring completions",
            ),
        ));
        "syscall exit hook + io_uring completions"
    };
    let touch = if opts.smaps_touch_only {
        for tp in FILEMAP_TRACEPOINTS {
            missing.push((tp, "not used (--mmap-touch smaps)".into()));
        }
        TouchCounter::SmapsForced
    } else if FILEMAP_TRACEPOINTS.iter().all(|tp| has(tp)) {
        TouchCounter::Tracepoints
    } else {
        for tp in FILEMAP_TRACEPOINTS {
            if !has(tp) {
                missing.push((
                    tp,
                    not_in_kernel(
                        tp,
                        "pages touched through mappings are counted by kprobes where allowed, else only sampled from /proc/PID/smaps (a process that maps, touches and exits between samples is then not seen touching)",
                    ),
                ));
            }
        }
        TouchCounter::Smaps
    };
    let io_uring = match btf.and_then(|b| b.tracepoint_arity(IO_URING_COMPLETE)) {
        Some(7) => URING_RES_ARG,
        None if btf.is_some() => {
            missing.push((
                IO_URING_COMPLETE,
                not_in_kernel(IO_URING_COMPLETE, "io_uring is not seen"),
            ));
            "none"
        }
        _ => URING_CQE,
    };
    let paths = DataPaths {
        reads: "syscall exit hook (descriptors followed by struct file) + io_uring completions",
        sends,
        mmap_touch: touch.path(false),
        touch,
        io_uring,
        descriptors: SYSCALL_DESCRIPTORS,
    };
    (paths, missing)
}

/// Ids of the programs and maps in `ebpf` and of the links attaching those programs.
fn own_objects(ebpf: &Ebpf) -> std::collections::HashMap<(&'static str, u32), String> {
    let mut own = std::collections::HashMap::new();
    for (name, p) in ebpf.programs() {
        if let Ok(info) = p.info() {
            own.insert(("prog", info.id()), name.to_string());
        }
    }
    for (name, m) in ebpf.maps() {
        let info = match m {
            aya::maps::Map::RingBuf(d)
            | aya::maps::Map::HashMap(d)
            | aya::maps::Map::LruHashMap(d)
            | aya::maps::Map::Array(d)
            | aya::maps::Map::PerCpuArray(d)
            | aya::maps::Map::PerCpuHashMap(d) => d.info(),
            _ => continue,
        };
        if let Ok(info) = info {
            own.insert(("map", info.id()), name.to_string());
        }
    }
    let progs: std::collections::HashMap<u32, String> = own
        .iter()
        .filter(|((k, _), _)| *k == "prog")
        .map(|((_, id), n)| (*id, n.clone()))
        .collect();
    for link in aya::programs::loaded_links().flatten() {
        if let Some(name) = progs.get(&link.program_id()) {
            own.insert(("link", link.id()), name.clone());
        }
    }
    own
}

fn load_object(
    offsets: &Offsets,
    settings: &Settings,
    guard: &llmwatch_common::guard::GuardSettings,
) -> Result<Ebpf, ProbeError> {
    EbpfLoader::new()
        .override_global("OFFSETS", offsets, true)
        .override_global("SETTINGS", settings, true)
        .override_global(llmwatch_common::guard::names::GUARD, guard, true)
        .load(OBJECT)
        .map_err(|e| {
            if is_eperm(&e) {
                ProbeError::NotPermitted {
                    have: capabilities::describe_effective(),
                    source: Box::new(e),
                }
            } else {
                ProbeError::Load(e)
            }
        })
}

fn is_eperm(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.raw_os_error() == Some(libc::EPERM)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

fn attach_btf_tracepoint(
    ebpf: &mut Ebpf,
    program: &str,
    tp: &str,
    btf_path: &std::path::Path,
) -> Result<(), String> {
    let btf = aya::Btf::parse_file(btf_path, aya::Endianness::default())
        .map_err(|e| format!("kernel BTF {}: {e}", btf_path.display()))?;
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("program {program} missing from the object"))?
        .try_into()
        .map_err(|e| format!("{program}: {e}"))?;
    prog.load(tp, &btf)
        .map_err(|e| format!("load {program}: {}", describe(&e)))?;
    prog.attach()
        .map_err(|e| format!("attach {program}: {}", describe(&e)))?;
    Ok(())
}

fn attach_raw_tracepoint(ebpf: &mut Ebpf, program: &str, tp: &str) -> Result<(), String> {
    let prog: &mut RawTracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("program {program} missing from the object"))?
        .try_into()
        .map_err(|e| format!("{program}: {e}"))?;
    prog.load()
        .map_err(|e| format!("load {program}: {}", describe(&e)))?;
    prog.attach(tp)
        .map_err(|e| format!("attach {program} to {tp}: {}", describe(&e)))?;
    Ok(())
}

/// Error text led by the OS errno name (EPERM, ENOENT...), which is what an operator needs to
/// tell "policy refused" from "kernel lacks it".
pub(crate) fn describe(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut errno = None;
    let mut src = e.source();
    while let Some(s) = src {
        if let Some(code) = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error())
        {
            errno = Some(code);
        }
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        src = s.source();
    }
    let joined = parts.join(": ");
    // aya appends the verifier log even when it is empty.
    let text = joined
        .trim_end()
        .trim_end_matches("Verifier output:")
        .trim_end()
        .trim_end_matches('.');
    match errno {
        Some(code) => format!("{}: {text}", errno_name(code)),
        None => text.to_string(),
    }
}

fn errno_name(code: i32) -> &'static str {
    match code {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::ENOENT => "ENOENT",
        libc::EINVAL => "EINVAL",
        libc::ENOTSUP => "ENOTSUP",
        libc::E2BIG => "E2BIG",
        libc::ESRCH => "ESRCH",
        libc::ENOMEM => "ENOMEM",
        libc::EBADF => "EBADF",
        _ => "errno",
    }
}

/// Maps the agent reads and writes while running.
pub struct KernelMaps {
    pub watched_files: HashMap<MapData, FileId, WatchedFile>,
    pub watched_names: HashMap<MapData, u64, u8>,
    pub tracked_fds: HashMap<MapData, FdKey, TrackedFd>,
    pub send_stats: HashMap<MapData, SendKey, SendStats>,
    pub gpu_majors: HashMap<MapData, u32, u8>,
    pub inference_ports: HashMap<MapData, u16, u8>,
    pub stats: PerCpuArray<MapData, u64>,
    pub holders: HashMap<MapData, u32, u32>,
    pub send_interest: HashMap<MapData, u32, u8>,
    pub uring_reads: HashMap<MapData, UringKey, TrackedFd>,
    pub touches: HashMap<MapData, ProcFileKey, TouchStats>,
    pub pid_filter: slots::SlotCounts,
    pub send_filter: slots::SlotCounts,
}

/// Counters summed over CPUs.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct KernelStats {
    /// Events lost because the ring buffer was full, by event kind.
    pub ringbuf_drops: Vec<(u32, u64)>,
    pub events: Vec<(u32, u64)>,
    pub tracked_fds_full: u64,
    pub send_stats_full: u64,
    pub probe_read_errors: u64,
    pub holders_full: u64,
    pub interest_full: u64,
    pub uring_reads_full: u64,
    pub touches_full: u64,
}

impl KernelStats {
    pub fn total_drops(&self) -> u64 {
        self.ringbuf_drops.iter().map(|(_, n)| n).sum()
    }
}

impl KernelMaps {
    pub fn stats(&self) -> KernelStats {
        let sum = |i: u32| -> u64 { self.stats.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0) };
        let kinds = 1..llmwatch_common::event::kind::COUNT;
        KernelStats {
            ringbuf_drops: kinds
                .clone()
                .map(|k| (k, sum(m::stat::RINGBUF_DROPS_BASE + k)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            events: kinds
                .map(|k| (k, sum(m::stat::EVENTS_BASE + k)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            tracked_fds_full: sum(m::stat::TRACKED_FDS_FULL),
            send_stats_full: sum(m::stat::SEND_STATS_FULL),
            probe_read_errors: sum(m::stat::PROBE_READ_ERRORS),
            holders_full: sum(m::stat::HOLDERS_FULL),
            interest_full: sum(m::stat::INTEREST_FULL),
            uring_reads_full: sum(m::stat::URING_READS_FULL),
            touches_full: sum(m::stat::TOUCHES_FULL),
        }
    }

    /// Makes the kernel's watched set equal `want`, touching only the difference.
    pub fn sync_watched(
        &mut self,
        want: &HashSet<FileId>,
        have: &mut HashSet<FileId>,
    ) -> Result<(), ProbeError> {
        let map_err = |source| ProbeError::Map {
            name: names::WATCHED_FILES,
            source,
        };
        for id in have.difference(want) {
            match self.watched_files.remove(id) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(e)),
            }
        }
        for id in want.difference(have) {
            self.watched_files
                .insert(id, WatchedFile::default(), 0)
                .map_err(map_err)?;
        }
        *have = want.clone();
        Ok(())
    }

    /// Compares the maps that decide what the kernel reports with what the agent wrote, and
    /// puts them back when they differ. Returns one finding per changed map: (name, entries
    /// missing, entries not written by the agent). Another process can only get at these maps
    /// through a handle (see `agent.tamper`); this catches the change itself.
    pub fn verify_and_restore(
        &mut self,
        files: &HashSet<FileId>,
        names: &HashSet<u64>,
    ) -> Result<Vec<(&'static str, usize, usize)>, ProbeError> {
        let mut findings = Vec::new();
        let actual: HashSet<FileId> = self.watched_files.keys().filter_map(Result::ok).collect();
        if actual != *files {
            findings.push((
                names::WATCHED_FILES,
                files.difference(&actual).count(),
                actual.difference(files).count(),
            ));
            let mut have = actual;
            self.sync_watched(files, &mut have)?;
        }
        let actual: HashSet<u64> = self.watched_names.keys().filter_map(Result::ok).collect();
        if actual != *names {
            findings.push((
                names::WATCHED_NAMES,
                names.difference(&actual).count(),
                actual.difference(names).count(),
            ));
            let mut have = actual;
            self.sync_names(names, &mut have)?;
        }
        Ok(findings)
    }

    pub fn sync_names(&mut self, want: &HashSet<u64>, have: &mut HashSet<u64>) -> Result<(), ProbeError> {
        let map_err = |source| ProbeError::Map {
            name: names::WATCHED_NAMES,
            source,
        };
        for h in have.difference(want) {
            let _ = self.watched_names.remove(h);
        }
        for h in want.difference(have) {
            self.watched_names.insert(h, 1, 0).map_err(map_err)?;
        }
        *have = want.clone();
        Ok(())
    }
}

/// The benchmark floor: empty programs attached to the agent's hooks, held until dropped.
/// `path`: the fast path's per-syscall fexit functions (an error where the kernel refuses
/// them) or the `sys_exit` tracepoint.
pub fn attach_floor(path: fast::HookPath) -> Result<(Ebpf, Vec<HookStatus>), ProbeError> {
    if OBJECT.is_empty() {
        return Err(ProbeError::NoObject);
    }
    let mut ebpf = load_object(
        &Offsets::missing(),
        &Settings::default(),
        &llmwatch_common::guard::GuardSettings::off(),
    )?;
    let mut hooks = Vec::new();
    for &(program, tp, purpose, required) in HOOKS {
        let floor = program.replacen("llmwatch_", "floor_", 1);
        if tp == "sys_exit" && path == fast::HookPath::Fentry {
            let r = aya::Btf::from_sys_fs()
                .map_err(|e| format!("kernel BTF: {e}"))
                .and_then(|btf| fast::attach(&mut ebpf, &btf, "floor"));
            if let Err(e) = r {
                return Err(ProbeError::NothingAttached(format!("floor fexit programs: {e}")));
            }
            hooks.push(HookStatus {
                program: "floor_fx_*",
                hook: fast::HOOK_NAME,
                purpose,
                required,
                attached: true,
                error: None,
                instead: None,
            });
            continue;
        }
        // The same hook type the agent chooses: tp_btf for the syscall hook when allowed.
        let r = if tp == "sys_exit"
            && attach_btf_tracepoint(
                &mut ebpf,
                "floor_sys_exit_btf",
                tp,
                std::path::Path::new(btf::KernelBtf::SYSFS_PATH),
            )
            .is_ok()
        {
            Ok(())
        } else {
            attach_raw_tracepoint(&mut ebpf, &floor, tp)
        };
        hooks.push(HookStatus {
            program,
            hook: tp_hook_name(tp),
            purpose,
            required,
            attached: r.is_ok(),
            error: r.err(),
            instead: None,
        });
    }
    Ok((ebpf, hooks))
}

fn tp_hook_name(tp: &str) -> &'static str {
    match tp {
        "sys_exit" => "raw_tracepoint/sys_exit",
        "sched_process_exec" => "raw_tracepoint/sched_process_exec",
        "sched_process_fork" => "raw_tracepoint/sched_process_fork",
        "sched_process_exit" => "raw_tracepoint/sched_process_exit",
        "sock_send_length" => "raw_tracepoint/sock_send_length",
        "mm_filemap_map_pages" => "raw_tracepoint/mm_filemap_map_pages",
        "mm_filemap_fault" => "raw_tracepoint/mm_filemap_fault",
        _ => "raw_tracepoint/io_uring_complete",
    }
}

/// Result of trying one program type on this kernel.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Capability {
    pub program_type: &'static str,
    pub ok: bool,
    /// What failed: the load or attach error with its errno.
    pub error: Option<String>,
    pub used_for: &'static str,
}

/// Loads (and attaches, then detaches) an empty program of each type the agent could use.
pub fn probe_capabilities() -> Result<Vec<Capability>, ProbeError> {
    if OBJECT.is_empty() {
        return Err(ProbeError::NoObject);
    }
    let mut ebpf = load_object(
        &Offsets::missing(),
        &Settings::default(),
        &llmwatch_common::guard::GuardSettings::off(),
    )?;
    let aya_btf = aya::Btf::from_sys_fs().ok();
    let mut out = Vec::new();
    let mut push = |program_type, used_for, r: Result<(), String>| {
        out.push(Capability {
            program_type,
            ok: r.is_ok(),
            error: r.err(),
            used_for,
        })
    };
    push(
        "raw_tracepoint",
        "baseline: syscall exit, sched, sock, io_uring hooks",
        attach_raw_tracepoint(&mut ebpf, "llmwatch_exit", "sched_process_exit"),
    );
    push("tracepoint", "per-syscall tracepoints", try_tracepoint(&mut ebpf));
    let btf_ref = aya_btf.as_ref();
    push(
        "tp_btf",
        "BTF tracepoints (typed arguments)",
        try_tp_btf(&mut ebpf, btf_ref),
    );
    push(
        "fentry",
        "faster per-function hooks (fentry/fexit)",
        try_fentry(&mut ebpf, btf_ref),
    );
    push(
        "kprobe",
        "per-function hooks where fentry is refused",
        try_kprobe(&mut ebpf),
    );
    push(
        "lsm",
        "BPF-LSM (blocking, bpf_d_path)",
        try_lsm(&mut ebpf, btf_ref),
    );
    push(
        "cgroup_sock_addr",
        "connect/sendmsg address hooks per cgroup",
        try_sock_addr(&mut ebpf),
    );
    Ok(out)
}

fn prog<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the object"))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())
}

fn need_btf(btf: Option<&aya::Btf>) -> Result<&aya::Btf, String> {
    btf.ok_or_else(|| format!("no kernel BTF at {}", btf::KernelBtf::SYSFS_PATH))
}

fn try_tracepoint(ebpf: &mut Ebpf) -> Result<(), String> {
    let p: &mut TracePoint = prog(ebpf, "probe_tracepoint")?;
    p.load().map_err(|e| format!("load: {}", describe(&e)))?;
    p.attach("syscalls", "sys_enter_getppid")
        .map_err(|e| format!("attach: {}", describe(&e)))?;
    Ok(())
}

fn try_tp_btf(ebpf: &mut Ebpf, btf: Option<&aya::Btf>) -> Result<(), String> {
    let btf = need_btf(btf)?;
    let p: &mut BtfTracePoint = prog(ebpf, "probe_tp_btf")?;
    p.load("sched_process_fork", btf)
        .map_err(|e| format!("load: {}", describe(&e)))?;
    p.attach().map_err(|e| format!("attach: {}", describe(&e)))?;
    Ok(())
}

fn try_fentry(ebpf: &mut Ebpf, btf: Option<&aya::Btf>) -> Result<(), String> {
    let btf = need_btf(btf)?;
    let p: &mut FEntry = prog(ebpf, "probe_fentry")?;
    p.load("vfs_read", btf)
        .map_err(|e| format!("load: {}", describe(&e)))?;
    p.attach().map_err(|e| format!("attach: {}", describe(&e)))?;
    Ok(())
}

fn try_kprobe(ebpf: &mut Ebpf) -> Result<(), String> {
    let p: &mut KProbe = prog(ebpf, "probe_kprobe")?;
    p.load().map_err(|e| format!("load: {}", describe(&e)))?;
    p.attach("vfs_read", 0)
        .map_err(|e| format!("attach: {}", describe(&e)))?;
    Ok(())
}

fn try_lsm(ebpf: &mut Ebpf, btf: Option<&aya::Btf>) -> Result<(), String> {
    let btf = need_btf(btf)?;
    let p: &mut Lsm = prog(ebpf, "probe_lsm")?;
    p.load("file_open", btf)
        .map_err(|e| format!("load: {}", describe(&e)))?;
    p.attach().map_err(|e| format!("attach: {}", describe(&e)))?;
    Ok(())
}

fn try_sock_addr(ebpf: &mut Ebpf) -> Result<(), String> {
    let p: &mut CgroupSockAddr = prog(ebpf, "probe_sock_addr")?;
    p.load().map_err(|e| format!("load: {}", describe(&e)))?;
    let cgroup = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .find_map(|p| {
            let f = std::fs::File::open(p).ok()?;
            // cgroup v2 root has cgroup.controllers
            std::path::Path::new(p)
                .join("cgroup.controllers")
                .exists()
                .then_some(f)
        })
        .ok_or_else(|| "no cgroup v2 mount found".to_string())?;
    p.attach(cgroup.as_fd(), CgroupAttachMode::Single)
        .map_err(|e| format!("attach: {}", describe(&e)))?;
    Ok(())
}
