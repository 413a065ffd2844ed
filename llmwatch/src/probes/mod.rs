//! Kernel programs: load the embedded object with offsets from this kernel's BTF, attach each
//! hook and say which attached, and hand out the maps the rest of the agent uses.
pub mod btf;
pub mod capabilities;
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
    maps::{self as m, FdKey, SendKey, SendStats, Settings, TrackedFd, WatchedFile, names},
    offsets::Offsets,
};

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
        "io_uring reads of weight files",
        false,
    ),
];

/// Loaded and attached kernel programs plus the maps the agent shares with them.
pub struct Probes {
    ebpf: Ebpf,
    pub hooks: Vec<HookStatus>,
    /// Offsets this kernel lacks (their features are off).
    pub missing_offsets: Vec<&'static str>,
    /// Which syscall hook was chosen: Ok(the faster tp_btf hook) or Err(why it was refused and
    /// the raw tracepoint used instead).
    pub fast_path: Option<Result<&'static str, String>>,
    /// This agent's own BPF objects, ("prog" | "map" | "link", id) -> name: another process
    /// taking a handle to one of them is how its maps get changed or its ring buffer read.
    pub own_objects: std::collections::HashMap<(&'static str, u32), String>,
    /// Why the kernel's BTF could not be used, when it could not: the programs then run with
    /// syscall arguments only (see `Offsets::syscall_abi_only`).
    pub btf_error: Option<String>,
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
        prefer_tp_btf: bool,
        btf_path: &std::path::Path,
    ) -> Result<Self, ProbeError> {
        if OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        let resolved = btf::KernelBtf::from_file(btf_path)
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
        let ebpf = load_object(&offsets, &settings)?;
        let mut probes = Probes {
            ebpf,
            hooks: Vec::new(),
            missing_offsets,
            fast_path: None,
            own_objects: Default::default(),
            btf_error,
        };
        if probes.btf_error.is_some() && prefer_tp_btf {
            probes.fast_path = Some(Err("no kernel BTF (tp_btf needs it)".into()));
        }
        probes.attach_all(prefer_tp_btf && probes.btf_error.is_none(), btf_path);
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
        for &(program, tp, purpose, required) in HOOKS {
            let hook = tp_hook_name(tp);
            let skip = program == "llmwatch_io_uring_complete"
                && (self.btf_error.is_some()
                    || self
                        .missing_offsets
                        .iter()
                        .any(|o| o.starts_with("req_") || o.starts_with("cqe_")));
            let mut hook = hook;
            let mut program = program;
            let result = if skip {
                Err("io_uring request layout not in this kernel's BTF".to_string())
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
            });
        }
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
        })
    }
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

fn load_object(offsets: &Offsets, settings: &Settings) -> Result<Ebpf, ProbeError> {
    EbpfLoader::new()
        .override_global("OFFSETS", offsets, true)
        .override_global("SETTINGS", settings, true)
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
fn describe(e: &dyn std::error::Error) -> String {
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
pub fn attach_floor() -> Result<(Ebpf, Vec<HookStatus>), ProbeError> {
    if OBJECT.is_empty() {
        return Err(ProbeError::NoObject);
    }
    let mut ebpf = load_object(&Offsets::missing(), &Settings::default())?;
    let mut hooks = Vec::new();
    for &(program, tp, purpose, required) in HOOKS {
        let floor = program.replacen("llmwatch_", "floor_", 1);
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
    let mut ebpf = load_object(&Offsets::missing(), &Settings::default())?;
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
