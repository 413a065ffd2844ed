//! The value types of the configuration and the matching logic that goes with them.
use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, ToSocketAddrs},
    str::FromStr,
    time::Duration,
};

use chrono::{DateTime, Datelike, NaiveTime, Utc, Weekday};
use ipnet::IpNet;

use super::values::canonical_ip;

/// The kernel's `TASK_COMM_LEN - 1`: longer program names are cut to this in `comm`.
pub const COMM_LEN: usize = 15;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Severity {
    type Err = String;

    /// Case-insensitive.
    fn from_str(s: &str) -> Result<Self, String> {
        let l = s.trim().to_ascii_lowercase();
        Severity::ALL
            .into_iter()
            .find(|v| v.as_str() == l)
            .ok_or_else(|| format!("{s:?} is not a severity (info, low, medium, high, critical)"))
    }
}

/// A shell-style glob (`*`, `?`, `[a-z]`, `{a,b}`); `*` also crosses `/`, so `*/python3*`
/// matches `/usr/local/bin/python3.11`. Matching is case-sensitive and against the whole text.
#[derive(Clone)]
pub struct Pattern {
    text: String,
    matcher: globset::GlobMatcher,
}

impl Pattern {
    pub fn new(text: &str) -> Result<Pattern, globset::Error> {
        let glob = globset::GlobBuilder::new(text)
            .literal_separator(false)
            .backslash_escape(true)
            .build()?;
        Ok(Pattern {
            text: text.to_string(),
            matcher: glob.compile_matcher(),
        })
    }

    pub fn matches(&self, s: &str) -> bool {
        self.matcher.is_match(s)
    }

    /// Like `matches`, for a kernel `comm`: a comm of exactly 15 characters may be a longer name
    /// cut short, so a literal pattern (no wildcards) also matches when the comm is its prefix
    /// (`text-generation-launcher` matches comm `text-generation`).
    pub fn matches_comm(&self, comm: &str) -> bool {
        self.matches(comm)
            || (comm.len() == COMM_LEN
                && self.text.len() > COMM_LEN
                && !self.text.contains(['*', '?', '[', '{', '\\'])
                && self.text.starts_with(comm))
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.text)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl serde::Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// Any of the patterns matches `s`.
pub(crate) fn any_match(pats: &[Pattern], s: &str) -> bool {
    pats.iter().any(|p| p.matches(s))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserRef {
    Name(String),
    Uid(u32),
}

impl UserRef {
    pub fn matches(&self, uid: u32, user: Option<&str>) -> bool {
        match self {
            UserRef::Uid(u) => *u == uid,
            UserRef::Name(n) => user == Some(n.as_str()),
        }
    }
}

/// What identity matching may look at for one process.
#[derive(Debug, Clone, Copy)]
pub struct ProcessFacts<'a> {
    /// Full path of the executable (for a script: its interpreter).
    pub exe: Option<&'a str>,
    /// Kernel comm (at most 15 characters; for a script: the script's file name).
    pub comm: &'a str,
    pub argv: &'a [String],
    pub container_id: Option<&'a str>,
    pub cgroup: Option<&'a str>,
    pub uid: u32,
    /// User name of `uid`, when known; `users:` names match only against it.
    pub user: Option<&'a str>,
    /// Kubernetes namespace of the process's pod, from the container runtime (never from
    /// anything the process says about itself); `None` outside pods or while unknown.
    pub namespace: Option<&'a str>,
    /// The pod's labels the agent keeps (the `containers.pod_labels` allowlist and every key a
    /// selector names); empty outside pods or while unknown.
    pub pod_labels: &'a std::collections::BTreeMap<String, String>,
}

/// `pod_labels:` of a selector: every key must be present on the pod with a value the glob
/// matches (Kubernetes' `matchLabels`, with globs for values).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelMatch {
    pub key: String,
    pub value: Pattern,
}

impl LabelMatch {
    pub fn matches(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        labels.get(&self.key).is_some_and(|v| self.value.matches(v))
    }
}

/// One inference server: processes matching it may read weights (within limits) and serve
/// clients.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerIdentity {
    pub name: String,
    /// Globs on the executable path.
    pub exe: Vec<Pattern>,
    /// Globs on comm (see `Pattern::matches_comm`).
    pub comm: Vec<Pattern>,
    /// Globs on the command line joined with single spaces.
    pub argv: Vec<Pattern>,
    /// Globs on the container id; a non-empty list never matches a process outside containers.
    pub containers: Vec<Pattern>,
    /// Globs on the cgroup path.
    pub cgroups: Vec<Pattern>,
    pub users: Vec<UserRef>,
    /// Globs on the pod's Kubernetes namespace; a non-empty list never matches a process
    /// outside pods, or one whose pod the runtime has not named (yet).
    pub namespaces: Vec<Pattern>,
    /// Labels the pod must carry (all of them).
    pub pod_labels: Vec<LabelMatch>,
    /// Reads within this long after exec are the server's start-up load.
    pub startup_window: Duration,
}

impl ServerIdentity {
    /// True when every non-empty selector list has a match (lists are ANDed, the entries of one
    /// list ORed). An identity with none of exe/comm/argv matches nothing: containers, cgroups or
    /// users alone would make every process there a server (the parser rejects such entries).
    pub fn matches(&self, p: &ProcessFacts) -> bool {
        self.selectors().matches(p)
    }

    pub fn selectors(&self) -> Selectors<'_> {
        Selectors {
            exe: &self.exe,
            comm: &self.comm,
            argv: &self.argv,
            containers: &self.containers,
            cgroups: &self.cgroups,
            users: &self.users,
            namespaces: &self.namespaces,
            pod_labels: &self.pod_labels,
        }
    }

    /// See [`Selectors::strong`].
    pub fn strong(&self) -> bool {
        self.selectors().strong()
    }
}

/// The process selectors a server or trusted-reader entry has.
#[derive(Debug, Clone, Copy)]
pub struct Selectors<'a> {
    pub exe: &'a [Pattern],
    pub comm: &'a [Pattern],
    pub argv: &'a [Pattern],
    pub containers: &'a [Pattern],
    pub cgroups: &'a [Pattern],
    pub users: &'a [UserRef],
    pub namespaces: &'a [Pattern],
    pub pod_labels: &'a [LabelMatch],
}

impl Selectors<'_> {
    /// Every non-empty list has a match (lists ANDed, entries of one list ORed); none of
    /// exe/comm/argv matches nothing.
    pub fn matches(&self, p: &ProcessFacts) -> bool {
        if self.exe.is_empty() && self.comm.is_empty() && self.argv.is_empty() {
            return false;
        }
        let opt =
            |pats: &[Pattern], v: Option<&str>| pats.is_empty() || v.is_some_and(|v| any_match(pats, v));
        opt(self.exe, p.exe)
            && (self.comm.is_empty() || self.comm.iter().any(|c| c.matches_comm(p.comm)))
            && (self.argv.is_empty() || any_match(self.argv, &p.argv.join(" ")))
            && opt(self.containers, p.container_id)
            && opt(self.cgroups, p.cgroup)
            && (self.users.is_empty() || self.users.iter().any(|u| u.matches(p.uid, p.user)))
            && opt(self.namespaces, p.namespace)
            && self.pod_labels.iter().all(|l| l.matches(p.pod_labels))
    }

    /// Whether the entry selects by pod (namespace or labels): such an entry can only match
    /// once the runtime has named the process's pod, so a process first seen without a name
    /// is matched again when the name arrives.
    pub fn by_pod(&self) -> bool {
        !self.namespaces.is_empty() || !self.pod_labels.is_empty()
    }

    /// Pinned to something a process cannot choose for itself: its executable (the kernel's
    /// resolved path), its user, container, cgroup, or its pod's namespace or labels (which
    /// the agent learns from the container runtime by the process's cgroup, not from the
    /// process: a process outside a pod cannot claim one). A name and a command line are whatever
    /// the process says they are, so an entry matching by comm/argv alone is weak: it may
    /// exempt a server's start-up load but never egress or exfiltration. An `exe` that matches
    /// an interpreter (`/usr/bin/python3*`) pins nothing either: anyone can run
    /// `python3 steal.py vllm serve`, and a virtualenv's python resolves to the system one.
    pub fn strong(&self) -> bool {
        !self.users.is_empty()
            || !self.containers.is_empty()
            || !self.cgroups.is_empty()
            || self.by_pod()
            || (!self.exe.is_empty() && self.interpreter_exe().is_none())
    }

    /// The first `exe` glob that matches a common interpreter, which makes it no pin.
    pub fn interpreter_exe(&self) -> Option<&Pattern> {
        self.exe
            .iter()
            .find(|p| INTERPRETERS.iter().any(|i| p.matches(i)))
    }
}

/// Where interpreters and shells live on common distributions and images: an `exe` glob
/// matching one of these lets any script through.
const INTERPRETERS: &[&str] = &[
    "/usr/bin/python3",
    "/usr/bin/python3.11",
    "/usr/bin/python3.12",
    "/usr/local/bin/python3",
    "/usr/local/bin/python3.11",
    "/opt/conda/bin/python3.11",
    "/usr/bin/perl",
    "/usr/bin/ruby",
    "/usr/bin/node",
    "/usr/local/bin/node",
    "/usr/bin/java",
    "/usr/lib/jvm/java-17-openjdk-amd64/bin/java",
    "/usr/bin/bash",
    "/usr/bin/dash",
    "/bin/sh",
    "/usr/bin/busybox",
];

/// A program trusted to read protected files (integrity checks, backups, model sync): its
/// reads of the files its globs match raise no unexpected-reader, bulk-read or off-hours
/// alert while its schedule is open; what it sends outside the allowlist is still judged.
#[derive(Debug, Clone, PartialEq)]
pub struct ReaderIdentity {
    pub name: String,
    pub exe: Vec<Pattern>,
    pub comm: Vec<Pattern>,
    pub argv: Vec<Pattern>,
    pub containers: Vec<Pattern>,
    pub cgroups: Vec<Pattern>,
    pub users: Vec<UserRef>,
    pub namespaces: Vec<Pattern>,
    pub pod_labels: Vec<LabelMatch>,
    /// Globs on the file's path (any of its names); empty: every protected file.
    pub files: Vec<Pattern>,
    /// When its reads are trusted; None: always.
    pub schedule: Option<BusinessHours>,
}

impl ReaderIdentity {
    pub fn selectors(&self) -> Selectors<'_> {
        Selectors {
            exe: &self.exe,
            comm: &self.comm,
            argv: &self.argv,
            containers: &self.containers,
            cgroups: &self.cgroups,
            users: &self.users,
            namespaces: &self.namespaces,
            pod_labels: &self.pod_labels,
        }
    }

    /// Whether process `p` reading the file at `path` at `t` is this trusted reader at work.
    pub fn trusts(&self, p: &ProcessFacts, path: &str, t: DateTime<Utc>) -> bool {
        self.selectors().matches(p)
            && (self.files.is_empty() || any_match(&self.files, path))
            && self.schedule.as_ref().is_none_or(|s| s.in_hours(t))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressTarget {
    /// Any destination (`:53`, `*`).
    Any,
    /// An address or network.
    Net(IpNet),
    /// A host name (lower case); it allows the addresses it resolved to at the last `resolve()`.
    Host(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressEntry {
    pub target: EgressTarget,
    /// None: any port.
    pub port: Option<u16>,
}

impl fmt::Display for EgressEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.target, self.port) {
            (EgressTarget::Any, None) => f.write_str("*"),
            (EgressTarget::Any, Some(p)) => write!(f, ":{p}"),
            (EgressTarget::Net(n), p) => {
                let single = n.prefix_len() == n.max_prefix_len();
                let a = if single {
                    n.addr().to_string()
                } else {
                    n.to_string()
                };
                match p {
                    None => f.write_str(&a),
                    Some(p) if n.addr().is_ipv6() => write!(f, "[{a}]:{p}"),
                    Some(p) => write!(f, "{a}:{p}"),
                }
            }
            (EgressTarget::Host(h), None) => f.write_str(h),
            (EgressTarget::Host(h), Some(p)) => write!(f, "{h}:{p}"),
        }
    }
}

/// Destinations inference servers may connect to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EgressAllow {
    pub entries: Vec<EgressEntry>,
    /// Addresses of each `Host` entry's name as of the last `resolve()` (or set by hand, e.g. by
    /// a test or a replay).
    pub resolved: HashMap<String, Vec<IpAddr>>,
}

impl EgressAllow {
    pub fn new(entries: Vec<EgressEntry>) -> Self {
        EgressAllow {
            entries,
            resolved: HashMap::new(),
        }
    }

    /// Names of the `Host` entries.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().filter_map(|e| match &e.target {
            EgressTarget::Host(h) => Some(h.as_str()),
            _ => None,
        })
    }

    /// Resolves every host name with the system resolver (blocking: call it off the async
    /// runtime, and again from time to time, since the addresses behind a name change). A name
    /// that does not resolve keeps its previous addresses and is logged.
    pub fn resolve(&mut self) {
        let hosts: Vec<String> = self.hosts().map(str::to_string).collect();
        for h in hosts {
            match (h.as_str(), 0).to_socket_addrs() {
                Ok(addrs) => {
                    let mut ips: Vec<IpAddr> = addrs.map(|a| canonical_ip(a.ip())).collect();
                    ips.sort();
                    ips.dedup();
                    self.resolved.insert(h, ips);
                }
                Err(e) => log::warn!("egress.allow: cannot resolve {h}: {e}"),
            }
        }
    }

    /// The connection may be made (any entry allows it, `:53` and `*` included).
    pub fn allows(&self, ip: IpAddr, port: u16) -> bool {
        self.allowed_by(ip, port).is_some()
    }

    /// Weights may go there: an entry names the destination by address, network or host name.
    /// An entry naming only a port (`:53`) or everything (`*`) allows connections, not bulk
    /// transfer: anyone can run a listener on port 53.
    pub fn exempts_transfer(&self, ip: IpAddr, port: u16) -> bool {
        let ip = canonical_ip(ip);
        self.entries.iter().any(|e| {
            e.port.is_none_or(|p| p == port)
                && match &e.target {
                    EgressTarget::Any => false,
                    EgressTarget::Net(n) => n.contains(&ip),
                    EgressTarget::Host(h) => self.resolved.get(h).is_some_and(|v| v.contains(&ip)),
                }
        })
    }

    /// The first entry that allows the destination.
    pub fn allowed_by(&self, ip: IpAddr, port: u16) -> Option<&EgressEntry> {
        let ip = canonical_ip(ip);
        self.entries.iter().find(|e| {
            e.port.is_none_or(|p| p == port)
                && match &e.target {
                    EgressTarget::Any => true,
                    EgressTarget::Net(n) => n.contains(&ip),
                    EgressTarget::Host(h) => self.resolved.get(h).is_some_and(|v| v.contains(&ip)),
                }
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BusinessHours {
    pub tz: chrono_tz::Tz,
    /// Days on which the hours start.
    pub days: Vec<Weekday>,
    pub start: NaiveTime,
    /// None: until midnight (24:00). An end at or before `start` runs past midnight into the
    /// next day (a night shift: 22:00 to 06:00).
    pub end: Option<NaiveTime>,
    pub maintenance: Vec<Maintenance>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Maintenance {
    pub start: DateTime<Utc>,
    /// Exclusive.
    pub end: DateTime<Utc>,
    pub reason: String,
}

impl BusinessHours {
    /// True inside business hours or a maintenance window.
    pub fn is_business_time(&self, t: DateTime<Utc>) -> bool {
        self.in_maintenance(t).is_some() || self.in_hours(t)
    }

    /// Inside the weekly hours, in the configured time zone (so a DST change moves them with
    /// the wall clock).
    pub fn in_hours(&self, t: DateTime<Utc>) -> bool {
        let local = t.with_timezone(&self.tz);
        let (day, time) = (local.weekday(), local.time());
        let open = |d: Weekday| self.days.contains(&d);
        match self.end {
            None => open(day) && time >= self.start,
            Some(end) if end > self.start => open(day) && time >= self.start && time < end,
            Some(end) => (open(day) && time >= self.start) || (open(day.pred()) && time < end),
        }
    }

    pub fn in_maintenance(&self, t: DateTime<Utc>) -> Option<&Maintenance> {
        self.maintenance.iter().find(|m| m.start <= t && t < m.end)
    }
}

/// A program whose use on a host with weights is itself suspicious (uploaders, sync and
/// peer-to-peer tools).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExfilTool {
    /// Program file name (`rclone`).
    pub program: String,
    /// Only with this subcommand (`aws s3`).
    pub subcommand: Option<String>,
}

impl ExfilTool {
    /// Parses `program` or `program subcommand`; a path keeps only its file name.
    pub fn parse(s: &str) -> Result<ExfilTool, String> {
        let words: Vec<&str> = s.split_whitespace().collect();
        match words.as_slice() {
            [p] => Ok(ExfilTool {
                program: basename(p).to_string(),
                subcommand: None,
            }),
            [p, sub] => Ok(ExfilTool {
                program: basename(p).to_string(),
                subcommand: Some(sub.to_string()),
            }),
            _ => Err(format!("{s:?}: expected \"program\" or \"program subcommand\"")),
        }
    }

    /// `exe_or_comm_basename` is the exe path or comm (a path is cut to its file name). The
    /// program is also found in argv: as argv[0], or after interpreters
    /// (`python3 /usr/local/bin/huggingface-cli upload`, `/usr/bin/env python3 script`). A
    /// subcommand must be one of the first two non-option arguments after the program, which
    /// covers `aws --profile x s3 cp` without matching `aws ec2 ... s3`.
    pub fn matches(&self, exe_or_comm_basename: &str, argv: &[String]) -> bool {
        let is_prog = |name: &str| {
            let b = basename(name);
            b == self.program
                || (b.len() == COMM_LEN && self.program.len() > COMM_LEN && self.program.starts_with(b))
        };
        let in_argv = argv.iter().take(4).enumerate().find_map(|(i, a)| {
            let before_ok = argv[..i].iter().all(|x| x.starts_with('-') || is_interpreter(x));
            (before_ok && is_prog(a)).then_some(i)
        });
        let pos = match in_argv {
            Some(i) => i,
            None if is_prog(exe_or_comm_basename) => 0,
            None => return false,
        };
        match &self.subcommand {
            None => true,
            Some(sub) => argv
                .iter()
                .skip(pos + 1)
                .filter(|a| !a.starts_with('-'))
                .take(2)
                .any(|a| a == sub),
        }
    }
}

impl fmt::Display for ExfilTool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subcommand {
            Some(s) => write!(f, "{} {s}", self.program),
            None => f.write_str(&self.program),
        }
    }
}

fn is_interpreter(arg: &str) -> bool {
    let b = basename(arg);
    [
        "python", "perl", "ruby", "node", "bash", "sh", "dash", "zsh", "env", "pypy",
    ]
    .iter()
    .any(|i| {
        b.strip_prefix(i)
            .is_some_and(|v| v.chars().all(|c| c.is_ascii_digit() || c == '.'))
    }) || b == "nodejs"
}

pub(crate) fn basename(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}
