//! The guard, agent side: attaches the kernel's guard programs where this kernel allows them
//! (each probed by a real attach), and keeps the guard's maps current: which files are
//! enforced on, which destinations the allowlist exempts, which processes and executables are
//! servers or trusted readers.
//!
//! The decisions are the kernel's (`llmwatch-ebpf/src/guard.rs`): at loopback speed a tree
//! sends its budget long before the agent could read an event. Nothing is pinned: the programs
//! and maps live as long as the agent's file descriptors (fails open).
use std::{collections::HashMap as StdHashMap, net::IpAddr, os::fd::AsFd as _, path::Path};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, lpm_trie::Key},
    programs::{CgroupAttachMode, CgroupSockAddr, FEntry, Lsm},
};
use llmwatch_common::{
    event::FileId,
    guard::{GuardSettings, NetKey, PortNetKey, bits, counted_at, names},
};

use crate::{
    config::{
        Config, EgressAllow, EgressTarget, ProcessFacts,
        guard::{GuardConfig, GuardMode},
    },
    probes::{HookStatus, Probes, describe},
    state::files::WatchedSet,
};

/// The kernel's settings for `cfg` (all zero, the guard off, without a `guard:` section).
pub fn kernel_settings(cfg: &GuardConfig) -> GuardSettings {
    let mut s = GuardSettings::off();
    if !cfg.enabled {
        return s;
    }
    s.enabled = bits::EGRESS | bits::OPEN;
    s.max_bytes = cfg.egress_budget.max_bytes;
    s.read_ppm = (cfg.egress_budget.read_percent * 10_000.0).round() as u64;
    s.floor_bytes = cfg.egress_budget.floor_bytes;
    s
}

/// What the egress budget loses without BPF-LSM.
const NO_LSM_SOCKET: &str = "sends past the budget are stopped by SIGKILL from the send hook (the crossing send gets out) and connects by the cgroup hook";
/// What open deny loses without BPF-LSM.
pub const NO_LSM_OPEN: &str = "opens of protected files are NOT refused (open deny needs BPF-LSM: boot with lsm=...,bpf); weight.unexpected_reader still alerts on them";

const HOOKS_LSM: &[(&str, &str, &str)] = &[
    (
        "llmwatch_guard_sendmsg",
        "socket_sendmsg",
        "guard: refuse the send that would take a tree past its egress budget",
    ),
    (
        "llmwatch_guard_connect",
        "socket_connect",
        "guard: refuse connects of a tree past its egress budget",
    ),
    (
        "llmwatch_guard_file_open",
        "file_open",
        "guard: refuse opens of protected files by other than servers and trusted readers",
    ),
];

pub struct Guard {
    exempt: HashMap<MapData, u32, u8>,
    exempt_exes: HashMap<MapData, FileId, u8>,
    files: HashMap<MapData, FileId, u32>,
    nets: LpmTrie<MapData, NetKey, u8>,
    nets_port: LpmTrie<MapData, PortNetKey, u8>,
    files_in_kernel: StdHashMap<FileId, u32>,
    nets_in_kernel: Vec<(u32, NetKey)>,
    nets_port_in_kernel: Vec<(u32, PortNetKey)>,
    exes_in_kernel: Vec<FileId>,
    /// Executables already warned about (`unseen_identity`): once per path, not per reload.
    warned_exes: std::collections::HashSet<String>,
    /// BPF-LSM socket hooks attached (the send is refused before it leaves).
    pub lsm_socket: bool,
    /// BPF-LSM file_open attached (open deny can refuse).
    pub lsm_open: bool,
    /// cgroup connect hooks attached.
    pub cgroup_connect: bool,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> anyhow::Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow::anyhow!("map {name} missing from the object"))?;
    T::try_from(map).map_err(|e| anyhow::anyhow!("map {name}: {e}"))
}

fn attach_lsm(ebpf: &mut Ebpf, program: &str, hook: &str, btf: &aya::Btf) -> Result<(), String> {
    let p: &mut Lsm = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("program {program} missing from the object"))?
        .try_into()
        .map_err(|e| format!("{program}: {e}"))?;
    p.load(hook, btf)
        .map_err(|e| format!("load {program}: {}", describe(&e)))?;
    p.attach()
        .map_err(|e| format!("attach {program}: {}", describe(&e)))?;
    Ok(())
}

fn attach_fentry(ebpf: &mut Ebpf, program: &str, function: &str, btf: &aya::Btf) -> Result<(), String> {
    let p: &mut FEntry = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("program {program} missing from the object"))?
        .try_into()
        .map_err(|e| format!("{program}: {e}"))?;
    p.load(function, btf)
        .map_err(|e| format!("load {program}: {}", describe(&e)))?;
    p.attach()
        .map_err(|e| format!("attach {program}: {}", describe(&e)))?;
    Ok(())
}

fn attach_cgroup(ebpf: &mut Ebpf, program: &str) -> Result<(), String> {
    let p: &mut CgroupSockAddr = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("program {program} missing from the object"))?
        .try_into()
        .map_err(|e| format!("{program}: {e}"))?;
    p.load()
        .map_err(|e| format!("load {program}: {}", describe(&e)))?;
    let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .find(|p| std::path::Path::new(p).join("cgroup.controllers").exists())
        .ok_or_else(|| "no cgroup v2 mount (/sys/fs/cgroup or /sys/fs/cgroup/unified)".to_string())?;
    let cgroup = std::fs::File::open(root).map_err(|e| format!("{root}: {e}"))?;
    // Beside whatever else is attached there, never in place of it (a single attach would
    // replace another agent's or the system's program at the root cgroup).
    p.attach(cgroup.as_fd(), CgroupAttachMode::AllowMultiple)
        .map_err(|e| format!("attach {program} beside others: {}", describe(&e)))?;
    Ok(())
}

impl Guard {
    /// Attaches the guard's hooks (adding their status to `probes.hooks`) and takes its maps.
    /// None when the configuration has no `guard:` section.
    pub fn start(probes: &mut Probes, cfg: &Config) -> anyhow::Result<Option<Guard>> {
        if !cfg.guard.enabled {
            return Ok(None);
        }
        let btf = aya::Btf::parse_file(&cfg.kernel_btf, aya::Endianness::default())
            .map_err(|e| format!("kernel BTF {}: {e}", cfg.kernel_btf.display()));
        let mut statuses = Vec::new();
        let mut attached = [false; 3];
        for (i, &(program, hook, purpose)) in HOOKS_LSM.iter().enumerate() {
            let r = match &btf {
                Ok(btf) => attach_lsm(probes.ebpf_mut(), program, hook, btf),
                Err(e) => Err(e.clone()),
            };
            attached[i] = r.is_ok();
            statuses.push(HookStatus {
                program,
                hook: match hook {
                    "socket_sendmsg" => "lsm/socket_sendmsg",
                    "socket_connect" => "lsm/socket_connect",
                    _ => "lsm/file_open",
                },
                purpose,
                required: false,
                attached: r.is_ok(),
                error: r.err(),
                instead: match hook {
                    "file_open" => None,
                    _ => Some(NO_LSM_SOCKET.into()),
                },
            });
        }
        let lsm_socket = attached[0] && attached[1];
        // The cgroup hooks add nothing where the LSM refuses connects.
        let mut cgroup_connect = false;
        if !lsm_socket {
            for (program, hook) in [
                ("llmwatch_guard_connect4", "cgroup/connect4"),
                ("llmwatch_guard_connect6", "cgroup/connect6"),
            ] {
                let r = attach_cgroup(probes.ebpf_mut(), program);
                cgroup_connect |= r.is_ok();
                statuses.push(HookStatus {
                    program,
                    hook,
                    purpose: "guard: refuse connects of a tree past its egress budget (no BPF-LSM)",
                    required: false,
                    attached: r.is_ok(),
                    error: r.err(),
                    instead: Some("the send hook kills the tree's senders past the budget".into()),
                });
            }
        }
        // Before 6.5, sendfile/splice into a socket go through `sendpage`, which the LSM hook
        // does not see: counted per chunk before they leave where fentry loads.
        let mut sendpage = false;
        if let Ok(btf) = &btf
            && btf
                .id_by_type_name_kind("kernel_sendpage", aya_obj::btf::BtfKind::Func)
                .is_ok()
        {
            let r = attach_fentry(
                probes.ebpf_mut(),
                "llmwatch_guard_sendpage",
                "kernel_sendpage",
                btf,
            );
            sendpage = r.is_ok();
            statuses.push(HookStatus {
                program: "llmwatch_guard_sendpage",
                hook: "fentry/kernel_sendpage",
                purpose: "guard: count sendfile/splice into sockets before they leave (sendpage, which BPF-LSM does not see)",
                required: false,
                attached: r.is_ok(),
                error: r.err(),
                instead: Some(
                    "sendfile/splice past the budget are stopped by SIGKILL where the syscall returns (one call can carry the whole file)"
                        .into(),
                ),
            });
        }
        probes.hooks.extend(statuses);
        let ebpf = probes.ebpf_mut();
        let counted = (if attached[0] { counted_at::LSM_SENDMSG } else { 0 })
            | (if sendpage { counted_at::SENDPAGE } else { 0 });
        let mut counted_map: Array<MapData, u32> = take(ebpf, names::GUARD_COUNTED_AT)?;
        counted_map
            .set(0, counted, 0)
            .map_err(|e| anyhow::anyhow!("{}: {e}", names::GUARD_COUNTED_AT))?;
        let mut g = Guard {
            exempt: take(ebpf, names::GUARD_EXEMPT)?,
            exempt_exes: take(ebpf, names::GUARD_EXEMPT_EXES)?,
            files: take(ebpf, names::GUARD_FILES)?,
            nets: take(ebpf, names::GUARD_NETS)?,
            nets_port: take(ebpf, names::GUARD_NETS_PORT)?,
            files_in_kernel: StdHashMap::new(),
            nets_in_kernel: Vec::new(),
            nets_port_in_kernel: Vec::new(),
            exes_in_kernel: Vec::new(),
            warned_exes: Default::default(),
            lsm_socket,
            lsm_open: attached[2],
            cgroup_connect,
        };
        g.sync_nets(&cfg.egress);
        g.sync_exes(cfg);
        Ok(Some(g))
    }

    /// One line per guard capability this kernel lacks, for `agent_ready.degraded`.
    pub fn degraded(&self, cfg: &GuardConfig) -> Vec<String> {
        let mut out = Vec::new();
        if !self.lsm_open {
            out.push(format!("guard: BPF-LSM file_open not attached: {NO_LSM_OPEN}"));
        }
        if !self.lsm_socket && cfg.egress_mode() == GuardMode::Enforce {
            out.push(format!(
                "guard: BPF-LSM socket hooks not attached: {NO_LSM_SOCKET}"
            ));
        }
        out
    }

    /// Which guard rules enforce on each watched file: the rule's mode, or every rule where an
    /// `enforce_files` glob matches one of the file's names.
    pub fn sync_files(&mut self, files: &WatchedSet, cfg: &GuardConfig) {
        let mut rule_bits = 0;
        if cfg.egress_mode() == GuardMode::Enforce {
            rule_bits |= bits::EGRESS;
        }
        if cfg.open_mode() == GuardMode::Enforce {
            rule_bits |= bits::OPEN;
        }
        let want: StdHashMap<FileId, u32> = files
            .iter()
            .map(|f| {
                let by_path = std::iter::once(&*f.path)
                    .chain(f.aliases.iter().map(|p| p.as_path()))
                    .any(|p| cfg.enforce_files.iter().any(|g| g.matches(p)));
                let b = if by_path {
                    bits::EGRESS | bits::OPEN
                } else {
                    rule_bits
                };
                (f.id, b)
            })
            .filter(|(_, b)| *b != 0)
            .collect();
        for id in self.files_in_kernel.keys() {
            if !want.contains_key(id) {
                let _ = self.files.remove(id);
            }
        }
        for (id, b) in &want {
            if self.files_in_kernel.get(id) != Some(b)
                && let Err(e) = self.files.insert(*id, *b, 0)
            {
                log::error!("GUARD_FILES: {e}; a protected file is monitored only");
            }
        }
        self.files_in_kernel = want;
    }

    /// The allowlist entries that exempt transfers (an address, network or resolved host
    /// name; never a port-only entry or `*`), as LPM-trie prefixes.
    pub fn sync_nets(&mut self, egress: &EgressAllow) {
        for (len, k) in self.nets_in_kernel.drain(..) {
            let _ = self.nets.remove(&Key::new(len, k));
        }
        for (len, k) in self.nets_port_in_kernel.drain(..) {
            let _ = self.nets_port.remove(&Key::new(len, k));
        }
        for e in &egress.entries {
            let nets: Vec<(IpAddr, u8)> = match &e.target {
                EgressTarget::Any => continue,
                EgressTarget::Net(n) => vec![(n.addr(), n.prefix_len())],
                EgressTarget::Host(h) => egress
                    .resolved
                    .get(h)
                    .map(|v| {
                        v.iter()
                            .map(|ip| (*ip, if ip.is_ipv4() { 32 } else { 128 }))
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            for (ip, prefix) in nets {
                let (addr, bits) = match ip {
                    IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), 96 + prefix as u32),
                    IpAddr::V6(v6) => (v6.octets(), prefix as u32),
                };
                let r = match e.port {
                    None => {
                        let k = NetKey { addr };
                        self.nets_in_kernel.push((bits, k));
                        self.nets.insert(&Key::new(bits, k), 1, 0)
                    }
                    Some(port) => {
                        let k = PortNetKey {
                            port_be: port.to_be_bytes(),
                            addr,
                        };
                        self.nets_port_in_kernel.push((16 + bits, k));
                        self.nets_port.insert(&Key::new(16 + bits, k), 1, 0)
                    }
                };
                if let Err(err) = r {
                    log::error!("GUARD_NETS: {err}; egress.allow entry {e} is not exempt from the guard");
                }
            }
        }
    }

    /// Executables of strong server and trusted-reader identities whose `exe` is a literal path:
    /// exempt from their first instruction, before the agent has seen the exec.
    pub fn sync_exes(&mut self, cfg: &Config) {
        for id in self.exes_in_kernel.drain(..) {
            let _ = self.exempt_exes.remove(&id);
        }
        let literal = |s: &str| !s.contains(['*', '?', '[', '{', '\\']);
        let server_exes = cfg
            .servers
            .iter()
            .filter(|s| s.strong())
            .flat_map(|s| s.exe.iter());
        let reader_exes = cfg
            .readers
            .iter()
            .filter(|r| r.selectors().strong())
            .flat_map(|r| r.exe.iter());
        for pat in server_exes.chain(reader_exes) {
            if !literal(pat.as_str()) {
                continue;
            }
            let Ok(meta) = std::fs::metadata(pat.as_str()) else {
                continue;
            };
            if let Some(why) = unseen_identity(Path::new(pat.as_str()), &meta)
                && self.warned_exes.insert(pat.as_str().to_string())
            {
                log::warn!(
                    "guard: {pat} {why}: the kernel sees it by another identity than stat gives, so it is \
                     exempt only once the agent has seen its exec (by pid, tens of ms after it \
                     starts); in enforce mode its first open of a protected file can be refused"
                );
            }
            let id = file_id(&meta);
            if self.exempt_exes.insert(id, 1, 0).is_ok() {
                self.exes_in_kernel.push(id);
            }
        }
    }

    /// A process exec'd: exempt it when it is a strong server or a trusted reader (pinned by
    /// more than its name), else make sure it is not (a pid reused, an exempt process that
    /// exec'd something else).
    pub fn on_exec(&mut self, pid: u32, cfg: &Config, facts: &ProcessFacts) {
        let server = cfg.server_for(facts).is_some_and(|s| s.strong());
        let reader = cfg
            .readers
            .iter()
            .any(|r| r.selectors().strong() && r.selectors().matches(facts));
        if server || reader {
            if let Err(e) = self.exempt.insert(pid, 1, 0) {
                log::error!("GUARD_EXEMPT: {e}; pid {pid} is judged by the guard like anyone");
            }
        } else {
            let _ = self.exempt.remove(&pid);
        }
    }
}

/// Why the kernel's identity of executable `path` (its `struct file`'s inode: the overlay's
/// device and inode number) differs from what `stat` gives, if it does. An overlay whose
/// layers are on different file systems without `xino` reports a lower file's own device
/// (or a per-layer pseudo device); its directories still report the overlay's. Overlays on
/// one file system (Docker's overlay2 on ext4/xfs) or with xino report the overlay's device
/// for files too and need nothing. No alias is added for the mismatching case: there, inode
/// numbers of different layers may collide, and a file in a writable upper layer with the
/// same number would be exempt.
fn unseen_identity(path: &Path, meta: &std::fs::Metadata) -> Option<&'static str> {
    use std::os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _};
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut fs = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `c` is a NUL-terminated path and `fs` a writable statfs the call fills.
    if unsafe { libc::statfs(c.as_ptr(), fs.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: statfs returned 0, so it filled `fs`.
    let fs = unsafe { fs.assume_init() };
    // libc's constant has `f_type`'s type on each target (c_long here, c_uint on s390x).
    if fs.f_type != libc::OVERLAYFS_SUPER_MAGIC {
        return None;
    }
    let dir = std::fs::metadata(path.parent()?).ok()?;
    (dir.dev() != meta.dev())
        .then_some("is on an overlay whose layers are on different file systems (no xino)")
}

/// The kernel's identity of a file from its metadata (`s_dev` in the kernel's encoding).
fn file_id(meta: &std::fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt as _;
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    FileId {
        dev: (major << 20) | minor,
        _pad: 0,
        ino: meta.ino(),
    }
}
