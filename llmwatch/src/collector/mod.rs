//! Kernel I/O: the stage between the kernel programs and the rest of the agent.
//!
//! It owns the loaded programs and their maps, and turns what the kernel reports into
//! normalized events: running totals become deltas (a report is never counted twice), the
//! in-kernel counters of live and exiting processes are swept, mapped files are sampled for
//! the pages touched, processes that held weights before the agent started are found in
//! /proc, and the watched set in the kernel is kept equal to the agent's. Nothing here judges.
pub mod mappings;
pub mod seed;

use std::{net::IpAddr, path::Path};

use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};

use aya::maps::{MapData, RingBuf};
use llmwatch_common::{
    event::FileId,
    maps::{FdKey, ProcFileKey, SendKey, Settings, UringKey},
};

use crate::{
    events::{self, Event, EventKind, FileKey, ReadReason, Task},
    probes::{KernelMaps, KernelStats, ProbeError, Probes},
    state::{files::WatchedSet, gpu::GpuDevices, process::ProcessTable},
};

pub use seed::SeedReport;

/// What the kernel side reports, decoded (or the reason a record could not be).
pub type Record = Result<Event, events::DecodeError>;

/// `BPF_NOEXIST` (UAPI): insert only if the key is not there.
const BPF_NOEXIST: u64 = 1;

/// The task a swept counter is attributed to, by pid. `None`: a live process the agent does
/// not know yet (its fork or exec is still in flight behind the counter): its counters are
/// running totals in the kernel, so they wait for a later sweep rather than be reported
/// about a nameless process outside its tree (which split one `cat | nc` into two incidents).
type TaskOf<'a> = &'a dyn Fn(u32) -> Option<Task>;

pub struct Collector {
    probes: Probes,
    maps: KernelMaps,
    /// Last cumulative byte count passed on per read stream: (pid, fd or -1 for io_uring,
    /// instance = the `struct file`). Deltas are derived from the kernel's running totals.
    read_totals: HashMap<(u32, i32, u64), u64>,
    /// Processes that opened or read watched files (their counters are swept on exit).
    read_pids: HashSet<u32>,
    send_totals: HashMap<SendKey, u64>,
    mappings: mappings::Mappings,
    gpu_seen: HashSet<(u32, u32, u32)>,
    /// The watched set as written into the kernel (with sizes, which cap touched bytes).
    in_kernel: HashMap<FileId, u64>,
    names_in_kernel: std::collections::HashSet<u64>,
    drops_seen: u64,
    /// Processes a live sweep found gone without their exit having been handled. Their
    /// entries are kept until the next sweep: reports of theirs may still be in the ring, and
    /// forgetting the totals now would count those twice.
    gone: HashSet<u32>,
}

/// The kernel dropped events since the last check.
pub struct Loss {
    pub dropped: u64,
    pub total: u64,
    pub stats: KernelStats,
}

impl Collector {
    /// Loads and attaches the programs and fills the maps that configure them.
    pub fn start(
        settings: Settings,
        opts: crate::probes::ProbeOptions,
        btf: &Path,
        gpus: &GpuDevices,
        inference_ports: &[u16],
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let mut probes = Probes::load(settings, opts, btf).context("starting kernel probes")?;
        let mut maps = probes.take_maps()?;
        for major in gpus.majors() {
            maps.gpu_majors
                .insert(major, 1, 0)
                .context("filling GPU_MAJORS")?;
        }
        let mut collector = Collector {
            probes,
            maps,
            read_totals: HashMap::new(),
            read_pids: HashSet::new(),
            send_totals: HashMap::new(),
            mappings: mappings::Mappings::new(),
            gpu_seen: HashSet::new(),
            in_kernel: HashMap::new(),
            names_in_kernel: Default::default(),
            drops_seen: 0,
            gone: HashSet::new(),
        };
        collector.set_inference_ports(&[], inference_ports);
        Ok(collector)
    }

    pub fn probes(&self) -> &Probes {
        &self.probes
    }

    pub fn probes_mut(&mut self) -> &mut Probes {
        &mut self.probes
    }

    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        self.probes.take_events()
    }

    /// Local ports whose accepted connections the kernel reports.
    pub fn set_inference_ports(&mut self, old: &[u16], new: &[u16]) {
        for port in old {
            let _ = self.maps.inference_ports.remove(port);
        }
        for port in new {
            if let Err(e) = self.maps.inference_ports.insert(port, 1, 0) {
                log::error!("inference port {port}: {e}");
            }
        }
    }

    /// Decodes every record waiting in the ring buffer.
    pub fn drain(rb: &mut RingBuf<MapData>, batch: &mut Vec<Record>) {
        while let Some(item) = rb.next() {
            batch.push(events::decode(&item));
        }
    }

    /// One kernel event in, the events to judge out (none for a repeat, several on exit:
    /// the process's unreported counters first, then the exit).
    pub fn normalize(&mut self, mut ev: Event, out: &mut Vec<Event>) {
        let pid = ev.task.pid;
        match &mut ev.kind {
            EventKind::FileOpen { .. } => {
                self.read_pids.insert(pid);
            }
            EventKind::FileRead {
                fd,
                bytes,
                total,
                reason,
                instance,
                ..
            } => {
                self.read_pids.insert(pid);
                let key = (pid, *fd, *instance);
                let seen = self.read_totals.get(&key).copied().unwrap_or(0);
                if *reason == ReadReason::Close {
                    self.read_totals.remove(&key);
                } else {
                    self.read_totals.insert(key, (*total).max(seen));
                }
                if *total <= seen && *reason != ReadReason::Close {
                    return; // already passed on (a racing report)
                }
                *bytes = total.saturating_sub(seen);
            }
            EventKind::FileMmap { file, len, .. } => {
                let t = self.mappings.entry(pid, *file);
                t.mapped = t.mapped.max(*len);
            }
            EventKind::FileTouch { file, total, .. } => {
                let file = *file;
                let faults = *total;
                let t = self.mappings.entry(pid, file);
                t.faults = t.faults.max(faults);
                if let Some(e) = self.touch_event(pid, file, &ev.task, ev.ts_ns) {
                    out.push(e);
                }
                return;
            }
            EventKind::NetSend {
                dest,
                port,
                bytes,
                total,
                ..
            } => {
                let key = send_key(pid, *dest, *port);
                let seen = self.send_totals.get(&key).copied().unwrap_or(0);
                self.send_totals.insert(key, (*total).max(seen));
                if *total <= seen {
                    return;
                }
                *bytes = *total - seen;
            }
            // "process P started using GPU device D": once per process and device.
            EventKind::GpuOpen { major, minor, .. } if !self.gpu_seen.insert((pid, *major, *minor)) => {
                return;
            }
            EventKind::BpfAccess { object, id, ours, .. } => {
                *ours = self.probes.own_objects.get(&(object.as_ref(), *id)).cloned();
            }
            EventKind::ProcExit { .. } => {
                let task = ev.task.clone();
                self.sweep_exited(pid, &|_| Some(task.clone()), out);
                self.gpu_seen.retain(|(p, _, _)| *p != pid);
            }
            _ => {}
        }
        out.push(ev);
    }

    /// Processes currently using a GPU (once per process, as `gpu_open` events are).
    pub fn gpu_processes(&self) -> usize {
        self.gpu_seen
            .iter()
            .map(|(p, _, _)| *p)
            .collect::<HashSet<u32>>()
            .len()
    }

    /// A `file_touch` event for what `pid` touched of `file` beyond what was passed on.
    fn touch_event(&mut self, pid: u32, file: FileKey, task: &Task, ts_ns: u64) -> Option<Event> {
        let cap = self.in_kernel.get(&file.into()).copied().unwrap_or(0);
        let t = self.mappings.files_of(pid)?.get_mut(&file)?;
        let (touched, source) = t.touched(cap);
        if touched <= t.reported {
            return None;
        }
        let bytes = touched - t.reported;
        t.reported = touched;
        Some(Event {
            ts_ns,
            task: task.clone(),
            kind: EventKind::FileTouch {
                file,
                bytes,
                total: touched,
                mapped: t.mapped,
                source: source.into(),
            },
        })
    }

    /// Passes on what the kernel counted but has not reported for `pid`, which exited, and
    /// removes its entries from the kernel maps.
    fn sweep_exited(&mut self, pid: u32, task_of: TaskOf<'_>, out: &mut Vec<Event>) {
        if self.read_pids.contains(&pid) {
            self.sweep_reads(Some(pid), task_of, out);
        }
        self.sweep_touches(Some(pid), task_of, out);
        self.sweep_sends(pid, task_of, true, out);
        self.mappings.remove(pid);
        self.gone.remove(&pid);
    }

    /// Every live counter, every flush interval: the smaps of processes that map weights,
    /// descriptors, io_uring reads, touches, then every destination. Entries of processes
    /// that are gone (an exit the agent missed) are removed.
    pub fn sweep_live(&mut self, procs: &ProcessTable, out: &mut Vec<Event>) {
        let known = |pid| procs.get(pid).map(|_| task_of(procs, pid));
        let task_of = |pid| Some(task_of(procs, pid));
        // Gone since the last sweep and still no exit seen (it was lost): end them now.
        for pid in std::mem::take(&mut self.gone) {
            self.sweep_exited(pid, &task_of, out);
        }
        let task_of = known;
        self.sample_mappings(&task_of, out);
        self.sweep_reads(None, &task_of, out);
        self.sweep_touches(None, &task_of, out);
        let pids: HashSet<u32> = self.send_totals.keys().map(|k| k.pid).collect();
        for pid in pids {
            self.sweep_sends(pid, &task_of, false, out);
        }
        // Every process with state here or in the kernel maps, checked once.
        let mut pids: HashSet<u32> = self.read_pids.iter().copied().collect();
        pids.extend(self.send_totals.keys().map(|k| k.pid));
        pids.extend(self.mappings.pids());
        pids.extend(self.maps.tracked_fds.keys().filter_map(Result::ok).map(|k| k.pid));
        pids.extend(self.maps.uring_reads.keys().filter_map(Result::ok).map(|k| k.pid));
        pids.extend(self.maps.touches.keys().filter_map(Result::ok).map(|k| k.pid));
        self.gone = pids.into_iter().filter(|p| !alive(*p)).collect();
    }

    /// Descriptor and io_uring read counters the kernel has not reported yet (it reports every
    /// `read_report_bytes` and on close). `exited`: only that process's, which are removed.
    fn sweep_reads(&mut self, exited: Option<u32>, task_of: TaskOf<'_>, out: &mut Vec<Event>) {
        let fds: Vec<FdKey> = self
            .maps
            .tracked_fds
            .keys()
            .filter_map(Result::ok)
            .filter(|k| exited.is_none_or(|p| k.pid == p))
            .collect();
        for key in fds {
            let Ok(tracked) = self.maps.tracked_fds.get(&key, 0) else {
                continue;
            };
            self.swept_read(key.pid, key.fd as i32, &tracked, task_of, out);
            if exited.is_some() {
                let _ = self.maps.tracked_fds.remove(&key);
                self.read_totals
                    .remove(&(key.pid, key.fd as i32, tracked.file_ptr));
            }
        }
        let urings: Vec<UringKey> = self
            .maps
            .uring_reads
            .keys()
            .filter_map(Result::ok)
            .filter(|k| exited.is_none_or(|p| k.pid == p))
            .collect();
        for key in urings {
            let Ok(tracked) = self.maps.uring_reads.get(&key, 0) else {
                continue;
            };
            self.swept_read(key.pid, -1, &tracked, task_of, out);
            if exited.is_some() {
                let _ = self.maps.uring_reads.remove(&key);
                self.read_totals.remove(&(key.pid, -1, key.file_ptr));
            }
        }
        if let Some(pid) = exited {
            self.read_pids.remove(&pid);
            self.read_totals.retain(|(p, _, _), _| *p != pid);
        }
    }

    fn swept_read(
        &mut self,
        pid: u32,
        fd: i32,
        tracked: &llmwatch_common::maps::TrackedFd,
        task_of: TaskOf<'_>,
        out: &mut Vec<Event>,
    ) {
        let key = (pid, fd, tracked.file_ptr);
        let seen = self.read_totals.get(&key).copied().unwrap_or(0);
        if tracked.bytes <= seen {
            return;
        }
        let Some(task) = task_of(pid) else {
            return;
        };
        self.read_totals.insert(key, tracked.bytes);
        out.push(Event {
            ts_ns: crate::clock::boot_ns_now(),
            task,
            kind: EventKind::FileRead {
                file: tracked.file.into(),
                fd,
                bytes: tracked.bytes - seen,
                total: tracked.bytes,
                reason: ReadReason::Flush,
                syscall: if fd < 0 { "io_uring" } else { "flush" }.into(),
                instance: tracked.file_ptr,
            },
        });
    }

    /// Pages faulted in that the kernel counted but has not reported.
    fn sweep_touches(&mut self, exited: Option<u32>, task_of: TaskOf<'_>, out: &mut Vec<Event>) {
        let keys: Vec<ProcFileKey> = self
            .maps
            .touches
            .keys()
            .filter_map(Result::ok)
            .filter(|k| exited.is_none_or(|p| k.pid == p))
            .collect();
        for key in keys {
            let Ok(stats) = self.maps.touches.get(&key, 0) else {
                continue;
            };
            let file: FileKey = key.file.into();
            let faults = stats.pages << 12;
            let t = self.mappings.entry(key.pid, file);
            t.faults = t.faults.max(faults);
            if let Some(task) = task_of(key.pid)
                && let Some(e) = self.touch_event(key.pid, file, &task, crate::clock::boot_ns_now())
            {
                out.push(e);
            }
            if exited.is_some() {
                let _ = self.maps.touches.remove(&key);
            }
        }
    }

    /// Every poll tick: the processes that mapped a watched file in the last few seconds
    /// (a loader or a copy touches a mapping soon after making it, and may not live until the
    /// next flush).
    pub fn sample_fresh_mappings(&mut self, procs: &ProcessTable, out: &mut Vec<Event>) {
        let pids = self.mappings.fresh_pids();
        if !pids.is_empty() {
            self.sample(pids, &|pid| Some(task_of(procs, pid)), out);
        }
    }

    /// Resident pages of the mappings of watched files, for every process that maps one.
    fn sample_mappings(&mut self, task_of: TaskOf<'_>, out: &mut Vec<Event>) {
        self.sample(self.mappings.pids(), task_of, out);
    }

    fn sample(&mut self, pids: Vec<u32>, task_of: TaskOf<'_>, out: &mut Vec<Event>) {
        for pid in pids {
            let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
                continue; // gone: its exit sweeps what the kernel counted
            };
            let sampled = mappings::parse_smaps(&text);
            let Some(files) = self.mappings.files_of(pid) else {
                continue;
            };
            let mut changed = Vec::new();
            for (file, t) in files.iter_mut() {
                let (mapped, resident) = sampled.get(file).copied().unwrap_or((0, 0));
                t.mapped = t.mapped.max(mapped);
                t.resident = t.resident.max(resident);
                changed.push(*file);
            }
            if changed.is_empty() {
                continue;
            }
            let Some(task) = task_of(pid) else {
                continue;
            };
            for file in changed {
                if let Some(e) = self.touch_event(pid, file, &task, crate::clock::boot_ns_now()) {
                    out.push(e);
                }
            }
        }
    }

    /// Bytes sent to each destination that the kernel counted but has not reported; `gone`
    /// also removes the process's entries.
    fn sweep_sends(&mut self, pid: u32, task_of: TaskOf<'_>, gone: bool, out: &mut Vec<Event>) {
        let Some(task) = task_of(pid) else {
            return;
        };
        let sends: Vec<SendKey> = self
            .send_totals
            .keys()
            .filter(|k| k.pid == pid)
            .copied()
            .collect();
        for key in sends {
            let seen = self.send_totals[&key];
            if let Ok(stats) = self.maps.send_stats.get(&key, 0) {
                if stats.bytes > seen {
                    out.push(Event {
                        ts_ns: crate::clock::boot_ns_now(),
                        task: task.clone(),
                        kind: EventKind::NetSend {
                            dest: key_ip(&key),
                            port: key.port,
                            proto: events::proto_name(stats.protocol).into(),
                            bytes: stats.bytes - seen,
                            total: stats.bytes,
                            reason: ReadReason::Flush,
                        },
                    });
                    self.send_totals.insert(key, stats.bytes);
                }
                if gone {
                    let _ = self.maps.send_stats.remove(&key);
                }
            }
            if gone {
                self.send_totals.remove(&key);
            }
        }
    }

    /// Makes the kernel's watched set (files by identity, names by hash) equal the agent's.
    pub fn sync_watched(&mut self, files: &WatchedSet) -> Result<(), ProbeError> {
        let want: std::collections::HashSet<FileId> = files.iter().map(|f| f.id).collect();
        let mut have: std::collections::HashSet<FileId> = self.in_kernel.keys().copied().collect();
        self.maps.sync_watched(&want, &mut have)?;
        self.in_kernel = files.iter().map(|f| (f.id, f.size)).collect();
        let names = files.name_hashes();
        self.maps.sync_names(&names, &mut self.names_in_kernel)
    }

    /// The watched-set maps compared with what the agent wrote, restored where they differ:
    /// one finding per changed map (name, entries missing, entries not written by the agent).
    pub fn verify_own_maps(&mut self) -> Result<Vec<(&'static str, usize, usize)>, ProbeError> {
        let files: std::collections::HashSet<FileId> = self.in_kernel.keys().copied().collect();
        self.maps.verify_and_restore(&files, &self.names_in_kernel)
    }

    pub fn stats(&self) -> KernelStats {
        self.maps.stats()
    }

    /// Events the kernel dropped since the last call, if any.
    pub fn new_losses(&mut self) -> Option<Loss> {
        let stats = self.maps.stats();
        let total = stats.total_drops();
        if total <= self.drops_seen {
            return None;
        }
        let dropped = total - self.drops_seen;
        self.drops_seen = total;
        Some(Loss {
            dropped,
            total,
            stats,
        })
    }

    pub fn drops_seen(&self) -> u64 {
        self.drops_seen
    }

    /// Finds processes that hold or map watched files now and has the kernel follow them:
    /// they become holders (their next read of such a descriptor is counted), their trees'
    /// sends are counted, and their mappings are sampled from here on.
    pub fn seed_from_proc(&mut self, procs: &ProcessTable) -> SeedReport {
        let watched: HashSet<FileKey> = self.in_kernel.keys().map(|&id| id.into()).collect();
        let found = seed::scan(Path::new("/proc"), &watched, std::process::id());
        let mut report = SeedReport::default();
        for (pid, held) in &found {
            report.processes += 1;
            report.descriptors += held.fds.len();
            report.mappings += held.maps.len();
            self.add_holder(*pid);
            self.read_pids.insert(*pid);
            // What is resident now was touched before we watched: the baseline, sampled here,
            // before `agent_ready`, so touches from then on are all reported.
            let resident = if held.maps.is_empty() {
                Default::default()
            } else {
                std::fs::read_to_string(format!("/proc/{pid}/smaps"))
                    .map(|t| mappings::parse_smaps(&t))
                    .unwrap_or_default()
            };
            for (file, len) in &held.maps {
                let t = self.mappings.entry(*pid, *file);
                t.mapped = t.mapped.max(*len);
                let now = resident.get(file).map_or(0, |(_, r)| *r);
                t.resident = t.resident.max(now);
                t.reported = t.reported.max(now);
            }
            report.trees += self.mark_tree(*pid, procs);
        }
        report
    }

    /// `pid` may hold watched files: the kernel looks at its descriptors.
    fn add_holder(&mut self, pid: u32) {
        if self.maps.holders.insert(pid, 1, BPF_NOEXIST).is_ok()
            && let Err(e) = self.maps.pid_filter.add(pid)
        {
            // The kernel would not look at its descriptors: undo, so the sets stay exact.
            log::error!("PID_FILTER: {e}; pid {pid} is not followed");
            let _ = self.maps.holders.remove(&pid);
        }
    }

    /// The sends of `pid` are counted (an inference server, or a tree that holds weights).
    /// True when it was not before.
    pub fn count_sends_of(&mut self, pid: u32) -> bool {
        if pid <= 1 || pid == std::process::id() {
            return false;
        }
        if self.maps.send_interest.insert(pid, 1, BPF_NOEXIST).is_err() {
            return false;
        }
        if let Err(e) = self.maps.send_filter.add(pid) {
            // The kernel would not look at its sends: undo, so the sets stay exact.
            log::error!("SEND_FILTER: {e}; the sends of pid {pid} are not counted");
            let _ = self.maps.send_interest.remove(&pid);
            return false;
        }
        true
    }

    /// What the kernel does when a process becomes a holder, for one found in /proc: the
    /// process, its root (up to two ancestors, not above a session leader, never init), and
    /// the root's children and grandchildren. Returns how many were newly marked.
    fn mark_tree(&mut self, pid: u32, procs: &ProcessTable) -> usize {
        let mut marked = usize::from(self.count_sends_of(pid));
        let mut root = pid;
        for _ in 0..2 {
            let Some((parent, leader)) = seed::parent_and_leader(root) else {
                break;
            };
            if leader || parent <= 1 {
                break;
            }
            root = parent;
        }
        marked += usize::from(self.count_sends_of(root));
        let children = procs.children(root);
        for child in children {
            marked += usize::from(self.count_sends_of(child));
            for grandchild in procs.children(child) {
                marked += usize::from(self.count_sends_of(grandchild));
            }
        }
        marked
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The task for a swept counter of `pid`: what the process table knows.
pub fn task_of(procs: &ProcessTable, pid: u32) -> Task {
    match procs.get(pid) {
        Some(p) => Task {
            pid,
            tid: pid,
            uid: p.uid,
            gid: 0,
            comm: p.comm.clone(),
            cgroup_id: p.cgroup_id,
        },
        None => bare_task(pid),
    }
}

fn bare_task(pid: u32) -> Task {
    Task {
        pid,
        tid: pid,
        uid: 0,
        gid: 0,
        comm: String::new(),
        cgroup_id: 0,
    }
}

fn send_key(pid: u32, dest: IpAddr, port: u16) -> SendKey {
    let (family, addr) = match dest {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (libc::AF_INET as u16, b)
        }
        IpAddr::V6(a) => (libc::AF_INET6 as u16, a.octets()),
    };
    SendKey {
        addr,
        pid,
        family,
        port,
    }
}

fn key_ip(k: &SendKey) -> IpAddr {
    events::ip(k.family, k.addr)
}
