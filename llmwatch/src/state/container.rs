//! Container identity from a cgroup path.
//!
//! The kernel programs report a process's cgroup (id or path); runtimes encode the container id,
//! and Kubernetes the pod UID and QoS class, in the cgroup directory names. Parsing the path needs
//! no runtime socket, works for processes that already exited, and is the same for every runtime
//! as long as we know its naming scheme.

use serde::Serialize;

/// Who a process belongs to, as far as its cgroup path says. All `None` for host processes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ContainerInfo {
    /// "containerd" | "cri-o" | "docker" | "podman"; `None` when the path names a container but
    /// not the runtime (kubelet's cgroupfs driver uses bare ids for every runtime).
    pub runtime: Option<&'static str>,
    /// 64 lowercase hex characters.
    pub container_id: Option<String>,
    /// Kubernetes pod UID in dashed UUID form.
    pub pod_uid: Option<String>,
    /// "guaranteed" | "burstable" | "besteffort".
    pub qos: Option<&'static str>,
}

impl ContainerInfo {
    /// True when the path said nothing about containers or pods.
    pub fn is_host(&self) -> bool {
        self.container_id.is_none() && self.pod_uid.is_none()
    }
}

/// Prefixes of systemd scope / cgroupfs directory names that hold a container's processes,
/// with the runtime they mean. Checked in order: longer, more specific prefixes first.
const CONTAINER_PREFIXES: &[(&str, Option<&'static str>)] = &[
    ("cri-containerd-", Some("containerd")),
    ("nerdctl-", Some("containerd")),
    ("crio-", Some("cri-o")),
    ("docker-", Some("docker")),
    ("libpod-", Some("podman")),
];

/// Scopes that share a prefix with a container but hold the runtime's monitor process
/// (conmon), not the container: attributing their processes to the container would be wrong.
const NOT_CONTAINER_PREFIXES: &[&str] = &["crio-conmon-", "libpod-conmon-"];

/// Parse a cgroup path (the `<path>` of `/proc/<pid>/cgroup`'s `0::<path>`, or of a v1 line) into
/// container identity. A whole `/proc/<pid>/cgroup` line is accepted too. Never panics; anything
/// not recognised is left `None`. When containers nest (kind nodes, docker-in-docker), the
/// innermost container wins, since that is the one the process runs in.
pub fn parse_cgroup_path(path: &str) -> ContainerInfo {
    let path = strip_cgroup_line(path.trim());
    let mut info = ContainerInfo::default();
    // Only trust the cgroupfs driver's bare `pod<uid>` / qos names right under `kubepods`,
    // so an unrelated directory called `burstable` or `pod...` elsewhere does not count.
    let mut prev: &str = "";
    let mut under_kubepods = false;
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        if comp == "kubepods" || comp == "kubepods.slice" {
            under_kubepods = true;
        } else if let Some(rest) = comp.strip_prefix("kubepods-")
            && let Some(rest) = rest.strip_suffix(".slice")
        {
            // systemd driver: kubepods-burstable.slice, kubepods-besteffort.slice,
            // kubepods-<qos>-pod<uid>.slice, kubepods-pod<uid>.slice (guaranteed).
            under_kubepods = true;
            let (qos, pod) = match rest.split_once("pod") {
                Some((q, uid)) => (q.trim_end_matches('-'), Some(uid)),
                None => (rest, None),
            };
            if let Some(q) = qos_name(qos) {
                info.qos = Some(q);
            }
            if let Some(uid) = pod.and_then(normalize_pod_uid) {
                info.pod_uid = Some(uid);
                if qos.is_empty() {
                    info.qos = Some("guaranteed");
                }
            }
        } else if under_kubepods
            && (prev == "kubepods" || qos_name(prev).is_some())
            && comp.starts_with("pod")
        {
            // cgroupfs driver: /kubepods/<qos>/pod<uid> or /kubepods/pod<uid> (guaranteed).
            if let Some(uid) = normalize_pod_uid(&comp[3..]) {
                info.pod_uid = Some(uid);
                info.qos = Some(qos_name(prev).unwrap_or("guaranteed"));
            }
        } else if under_kubepods
            && prev == "kubepods"
            && let Some(q) = qos_name(comp)
        {
            info.qos = Some(q);
        } else if let Some((runtime, id)) = container_component(comp, prev) {
            info.runtime = runtime;
            info.container_id = Some(id);
        }
        prev = comp;
    }
    info
}

/// Read `/proc/<pid>/cgroup` and pick the path that identifies the process's container: the
/// cgroup v2 (`0::`) path, unless only a v1 hierarchy names a container (hybrid hosts put the
/// container in v1 hierarchies and leave the v2 path at `/`).
pub fn cgroup_path_of(pid: u32) -> std::io::Result<String> {
    let file = format!("/proc/{pid}/cgroup");
    let contents = std::fs::read_to_string(&file)?;
    select_cgroup_path(&contents).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{file}: no cgroup line"))
    })
}

/// The selection rule of [`cgroup_path_of`] over the file's contents.
pub fn select_cgroup_path(contents: &str) -> Option<String> {
    let mut v2: Option<&str> = None;
    let mut v1_with_id: Option<&str> = None;
    let mut first: Option<&str> = None;
    for line in contents.lines() {
        // hierarchy-id:controllers:path; the path itself may contain ':'.
        let mut parts = line.splitn(3, ':');
        let (Some(hier), Some(_ctrl), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        first.get_or_insert(path);
        if hier == "0" {
            v2.get_or_insert(path);
        } else if v1_with_id.is_none() && parse_cgroup_path(path).container_id.is_some() {
            v1_with_id = Some(path);
        }
    }
    let v2_has_id = v2.is_some_and(|p| parse_cgroup_path(p).container_id.is_some());
    let chosen = if v2_has_id {
        v2
    } else {
        v1_with_id.or(v2).or(first)
    };
    chosen.map(str::to_owned)
}

/// Accept `0::/path` or `4:memory:/path` as well as a bare path.
fn strip_cgroup_line(s: &str) -> &str {
    if s.starts_with('/') || s.is_empty() {
        return s;
    }
    let mut parts = s.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(_), Some(path)) => path,
        _ => s,
    }
}

fn qos_name(s: &str) -> Option<&'static str> {
    match s {
        "burstable" => Some("burstable"),
        "besteffort" => Some("besteffort"),
        "guaranteed" => Some("guaranteed"),
        _ => None,
    }
}

/// A container id in one path component, with the runtime its naming scheme implies.
fn container_component(comp: &str, prev: &str) -> Option<(Option<&'static str>, String)> {
    if NOT_CONTAINER_PREFIXES.iter().any(|p| comp.starts_with(p)) {
        return None;
    }
    // systemd driver names are `<prefix><id>.scope`; cgroupfs drivers drop the `.scope`.
    let base = comp.strip_suffix(".scope").unwrap_or(comp);
    for (prefix, runtime) in CONTAINER_PREFIXES {
        if let Some(id) = base.strip_prefix(prefix) {
            return is_container_id(id).then(|| (*runtime, id.to_owned()));
        }
    }
    if is_container_id(base) {
        // Bare ids: docker's cgroupfs driver (`/docker/<id>`) says the runtime by its parent;
        // kubelet's cgroupfs driver (`/kubepods/.../pod<uid>/<id>`) does not.
        let runtime = (prev == "docker").then_some("docker");
        return Some((runtime, base.to_owned()));
    }
    None
}

/// Runtimes use full 64-character lowercase hex ids; anything else (short ids, uppercase,
/// systemd unit names) is not counted, so random directory names are not taken for containers.
fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Pod UIDs appear with `_` instead of `-` under the systemd driver (systemd reserves `-` as the
/// slice hierarchy separator). Returns the dashed lowercase 8-4-4-4-12 form, or `None` if the
/// text is not a UUID.
fn normalize_pod_uid(s: &str) -> Option<String> {
    let uid: String = s
        .chars()
        .map(|c| if c == '_' { '-' } else { c.to_ascii_lowercase() })
        .collect();
    let b = uid.as_bytes();
    if b.len() != 36 {
        return None;
    }
    for (i, &c) in b.iter().enumerate() {
        let ok = if matches!(i, 8 | 13 | 18 | 23) {
            c == b'-'
        } else {
            c.is_ascii_hexdigit()
        };
        if !ok {
            return None;
        }
    }
    Some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b";
    const UID_US: &str = "6f1c2a3b_4d5e_4f60_8a7b_9c0d1e2f3a4b";

    fn info(runtime: Option<&'static str>, id: bool, pod: bool, qos: Option<&'static str>) -> ContainerInfo {
        ContainerInfo {
            runtime,
            container_id: id.then(|| ID.to_owned()),
            pod_uid: pod.then(|| UID.to_owned()),
            qos,
        }
    }

    #[test]
    fn systemd_containerd_burstable() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(
            parse_cgroup_path(&p),
            info(Some("containerd"), true, true, Some("burstable"))
        );
    }

    #[test]
    fn systemd_crio_besteffort() {
        let p = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_US}.slice/crio-{ID}.scope"
        );
        assert_eq!(
            parse_cgroup_path(&p),
            info(Some("cri-o"), true, true, Some("besteffort"))
        );
    }

    #[test]
    fn systemd_crio_conmon_is_not_a_container() {
        let p = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_US}.slice/crio-conmon-{ID}.scope"
        );
        assert_eq!(parse_cgroup_path(&p), info(None, false, true, Some("besteffort")));
    }

    #[test]
    fn systemd_docker_guaranteed_pod() {
        let p = format!("/kubepods.slice/kubepods-pod{UID_US}.slice/docker-{ID}.scope");
        assert_eq!(
            parse_cgroup_path(&p),
            info(Some("docker"), true, true, Some("guaranteed"))
        );
    }

    #[test]
    fn cgroupfs_burstable() {
        let p = format!("/kubepods/burstable/pod{UID}/{ID}");
        assert_eq!(parse_cgroup_path(&p), info(None, true, true, Some("burstable")));
    }

    #[test]
    fn cgroupfs_besteffort() {
        let p = format!("/kubepods/besteffort/pod{UID}/{ID}");
        assert_eq!(parse_cgroup_path(&p), info(None, true, true, Some("besteffort")));
    }

    #[test]
    fn cgroupfs_guaranteed() {
        let p = format!("/kubepods/pod{UID}/{ID}");
        assert_eq!(parse_cgroup_path(&p), info(None, true, true, Some("guaranteed")));
    }

    #[test]
    fn cgroupfs_crio_prefixed() {
        let p = format!("/kubepods/burstable/pod{UID}/crio-{ID}");
        assert_eq!(
            parse_cgroup_path(&p),
            info(Some("cri-o"), true, true, Some("burstable"))
        );
    }

    #[test]
    fn pod_slice_without_container() {
        let p = format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice");
        assert_eq!(parse_cgroup_path(&p), info(None, false, true, Some("burstable")));
    }

    #[test]
    fn plain_docker_cgroupfs() {
        assert_eq!(
            parse_cgroup_path(&format!("/docker/{ID}")),
            info(Some("docker"), true, false, None)
        );
    }

    #[test]
    fn plain_docker_systemd() {
        let p = format!("/system.slice/docker-{ID}.scope");
        assert_eq!(parse_cgroup_path(&p), info(Some("docker"), true, false, None));
    }

    #[test]
    fn podman_and_conmon() {
        let p = format!("/machine.slice/libpod-{ID}.scope");
        assert_eq!(parse_cgroup_path(&p), info(Some("podman"), true, false, None));
        // --cgroups=split puts the container's processes in a `container` child.
        let p = format!("/machine.slice/libpod-{ID}.scope/container");
        assert_eq!(parse_cgroup_path(&p), info(Some("podman"), true, false, None));
        let p = format!("/machine.slice/libpod-conmon-{ID}.scope");
        assert_eq!(parse_cgroup_path(&p), ContainerInfo::default());
    }

    #[test]
    fn rootless_podman_under_user_slice() {
        let p = format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope");
        assert_eq!(parse_cgroup_path(&p), info(Some("podman"), true, false, None));
    }

    #[test]
    fn host_processes() {
        for p in [
            "/",
            "",
            "/user.slice/user-1000.slice/session-3.scope",
            "/system.slice/sshd.service",
            "/init.scope",
        ] {
            let i = parse_cgroup_path(p);
            assert_eq!(i, ContainerInfo::default(), "{p}");
            assert!(i.is_host());
        }
    }

    #[test]
    fn invalid_ids_are_not_counted() {
        let upper = ID.to_ascii_uppercase();
        let short = &ID[..12];
        let not_hex = format!("{}g", &ID[..63]);
        for id in [upper.as_str(), short, not_hex.as_str()] {
            assert_eq!(
                parse_cgroup_path(&format!("/docker/{id}")).container_id,
                None,
                "{id}"
            );
            assert_eq!(
                parse_cgroup_path(&format!("/system.slice/docker-{id}.scope")).container_id,
                None
            );
        }
        // A non-UUID pod name is not a pod.
        let p = format!("/kubepods/burstable/podnotauuid/{ID}");
        assert_eq!(parse_cgroup_path(&p).pod_uid, None);
    }

    #[test]
    fn nested_container_innermost_wins() {
        let outer = "f".repeat(64);
        let p = format!("/docker/{outer}/kubepods/besteffort/pod{UID}/{ID}");
        assert_eq!(parse_cgroup_path(&p), info(None, true, true, Some("besteffort")));
    }

    #[test]
    fn odd_input_does_not_panic() {
        for p in [
            "//",
            "/kubepods/pod",
            "kubepods-.slice",
            "/kubepods.slice/kubepods-pod.slice",
            "::",
            "0::",
            "é/ü/ñ",
        ] {
            let _ = parse_cgroup_path(p);
        }
    }

    #[test]
    fn whole_proc_line_accepted() {
        let p = format!("0::/system.slice/docker-{ID}.scope");
        assert_eq!(parse_cgroup_path(&p), info(Some("docker"), true, false, None));
    }

    #[test]
    fn select_v2_line() {
        let c = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(
            select_cgroup_path(&c).unwrap(),
            format!("/system.slice/docker-{ID}.scope")
        );
        assert_eq!(
            select_cgroup_path("0::/user.slice/session-1.scope\n").unwrap(),
            "/user.slice/session-1.scope"
        );
    }

    #[test]
    fn select_v1_fallback_on_hybrid_host() {
        let c = format!(
            "12:pids:/kubepods/burstable/pod{UID}/{ID}\n4:memory:/kubepods/burstable/pod{UID}/{ID}\n1:name=systemd:/\n0::/\n"
        );
        assert_eq!(
            select_cgroup_path(&c).unwrap(),
            format!("/kubepods/burstable/pod{UID}/{ID}")
        );
        // v1-only host without containers: first line.
        assert_eq!(
            select_cgroup_path("3:cpu,cpuacct:/user.slice\n").unwrap(),
            "/user.slice"
        );
        assert_eq!(select_cgroup_path(""), None);
        assert_eq!(select_cgroup_path("garbage\n"), None);
    }

    #[test]
    fn own_process_cgroup_path() {
        let p = cgroup_path_of(std::process::id()).expect("reading own /proc/self/cgroup");
        assert!(p.starts_with('/'), "{p}");
        // A pid that cannot exist: an error, not a panic.
        assert!(cgroup_path_of(u32::MAX).is_err());
    }
}
