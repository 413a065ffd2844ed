//! Pod identity: which Kubernetes namespace, pod and container a container id belongs to.
//!
//! The cgroup path gives the container id and pod UID (see [`super::container`]); names come
//! from the container runtime, which holds the labels the kubelet set when it created the
//! container (`io.kubernetes.pod.name`, `io.kubernetes.pod.namespace`, `io.kubernetes.pod.uid`,
//! `io.kubernetes.container.name`) and, on the pod's sandbox, the pod's own labels. The runtime
//! is asked by container id, which the agent learns from the kernel's cgroup of the process,
//! so a process cannot name a pod for itself: one outside any container has no container id
//! and is never looked up, whatever its argv or environment say.
//!
//! [`PodDirectory`] caches the answers by container id. The agent asks ([`runtime`]) once per
//! new container, asynchronously; until the answer comes (or `lookup_timeout` passes) the
//! agent holds that container's events back, so what they raise carries the names.
//!
//! The kubelet's pod list ([`kubelet`], optional) adds what no runtime holds: the pod's
//! ownerReferences, so the owning workload is read rather than inferred.
pub mod kubelet;
pub mod runtime;

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use foldhash::{HashMap, HashMapExt as _};

use crate::events::Event;
use serde::{Deserialize, Serialize};

/// Who owns a pod, and how the agent knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    /// "Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job".
    pub kind: String,
    pub name: String,
    /// What the name was read from: "kubelet" (the pod's controller ownerReference in the
    /// kubelet's pod list), "kubelet+replicaset-name" (a Deployment, from the name of the
    /// ReplicaSet that owns the pod), or, without the kubelet (the runtime holds no
    /// ownerReferences), inferred from labels the controllers set and the pod's generated
    /// name: "label <key>" or "label <key> and the pod name".
    pub from: String,
}

/// A container's Kubernetes identity, as its runtime names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodIdentity {
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    pub pod_uid: String,
    /// The container's name in the pod spec ("POD" for the pod's sandbox).
    pub container: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
    /// The pod's labels the agent keeps: the `containers.pod_labels` allowlist and every key a
    /// selector names.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Which APIs answered: "containerd" or "cri", with "+kubelet" when the kubelet's pod list
    /// named the owner; "kubelet" when it named the pod alone (no runtime).
    pub source: String,
}

/// What a runtime says about one container, before the label allowlist is applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimePod {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
    /// All of the pod's labels (the sandbox's, the kubelet's `io.kubernetes.*` left out).
    pub labels: BTreeMap<String, String>,
    pub owner: Owner,
    pub source: &'static str,
}

/// Where a pod's owner comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Owner {
    /// Not known: inferred from the labels ([`infer_workload`]).
    #[default]
    Infer,
    /// The kubelet's ownerReferences; `None`: the pod has none (bare or static), so no
    /// workload, whatever its labels claim.
    Kubelet(Option<Workload>),
}

/// The labels the kubelet sets on every container it creates through the CRI.
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";

impl RuntimePod {
    /// From a container's labels (the kubelet's `io.kubernetes.*`); `None` if the container was
    /// not made by the kubelet (no pod name or namespace).
    pub fn from_container_labels(labels: &BTreeMap<String, String>, source: &'static str) -> Option<Self> {
        let get = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
        Some(RuntimePod {
            namespace: get(LABEL_POD_NAMESPACE)?,
            pod: get(LABEL_POD_NAME)?,
            pod_uid: get(LABEL_POD_UID).unwrap_or_default(),
            // The sandbox (pause) container has no container name label.
            container: get(LABEL_CONTAINER_NAME).unwrap_or_else(|| "POD".into()),
            labels: BTreeMap::new(),
            owner: Owner::Infer,
            source,
        })
    }

    /// Sets the pod's labels from its sandbox's, leaving out what the kubelet and runtime add.
    pub fn set_pod_labels(&mut self, sandbox_labels: &BTreeMap<String, String>) {
        self.labels = sandbox_labels
            .iter()
            .filter(|(k, _)| !k.starts_with("io.kubernetes.") && !k.starts_with("io.cri-containerd."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
    }

    /// The identity events carry: only the labels in `keep`.
    pub fn identity(&self, keep: &BTreeSet<String>) -> PodIdentity {
        PodIdentity {
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            pod_uid: self.pod_uid.clone(),
            container: self.container.clone(),
            workload: match &self.owner {
                Owner::Infer => infer_workload(&self.pod, &self.labels),
                Owner::Kubelet(w) => w.clone(),
            },
            labels: self
                .labels
                .iter()
                .filter(|(k, _)| keep.contains(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            source: self.source.into(),
        }
    }
}

/// The owning workload, from the labels Kubernetes' controllers put on the pods they create and
/// the names they generate. Weak by nature (anyone who can create a pod can set these labels),
/// and said so in [`Workload::from`]; `None` for a pod no rule recognises (a bare pod, a static
/// pod, a custom controller).
pub fn infer_workload(pod: &str, labels: &BTreeMap<String, String>) -> Option<Workload> {
    let label = |k: &str| labels.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let w = |kind: &str, name: &str, from: String| {
        Some(Workload {
            kind: kind.into(),
            name: name.into(),
            from,
        })
    };
    // The Job controller labels its pods with the Job's name (both keys since 1.27).
    for key in ["batch.kubernetes.io/job-name", "job-name"] {
        if let Some(job) = label(key) {
            return w("Job", job, format!("label {key}"));
        }
    }
    // The StatefulSet controller names pods <set>-<ordinal> and labels each with its name.
    if label("controller-revision-hash").is_some()
        && label("statefulset.kubernetes.io/pod-name") == Some(pod)
        && let Some((set, ordinal)) = pod.rsplit_once('-')
        && !set.is_empty()
        && ordinal.bytes().all(|b| b.is_ascii_digit())
    {
        return w(
            "StatefulSet",
            set,
            "label statefulset.kubernetes.io/pod-name and the pod name".into(),
        );
    }
    // A Deployment's ReplicaSet is <deployment>-<pod-template-hash>, its pods
    // <replicaset>-<5 random characters>.
    if let Some(hash) = label("pod-template-hash")
        && let Some((rs, _)) = pod.rsplit_once('-')
        && let Some(deployment) = rs.strip_suffix(hash).and_then(|d| d.strip_suffix('-'))
        && !deployment.is_empty()
    {
        return w(
            "Deployment",
            deployment,
            "label pod-template-hash and the pod name (ReplicaSet name minus the hash)".into(),
        );
    }
    // The DaemonSet controller sets pod-template-generation and names pods <set>-<5 chars>.
    if label("controller-revision-hash").is_some()
        && label("pod-template-generation").is_some()
        && let Some((set, suffix)) = pod.rsplit_once('-')
        && !set.is_empty()
        && suffix.len() == 5
    {
        return w(
            "DaemonSet",
            set,
            "label pod-template-generation and the pod name".into(),
        );
    }
    None
}

/// What the directory knows about one container id.
enum Entry {
    /// Asked; the container's events wait here (in order) for the answer.
    Pending { since: Instant, held: VecDeque<Event> },
    /// Answered: the identity, or `None` (not a kubelet container, or the runtime could not
    /// say), kept until `refresh` passes for a `None`.
    Known {
        raw: Option<RuntimePod>,
        identity: Option<Arc<PodIdentity>>,
        at: Instant,
    },
}

/// Events of one container held at most (beyond that they are judged without names rather
/// than the agent growing without bound; counted in `overflowed`).
pub const MAX_HELD_PER_CONTAINER: usize = 4096;
/// Containers remembered at most; past it, answers are forgotten and asked again.
pub const MAX_ENTRIES: usize = 16_384;

/// What [`PodDirectory::admit`] decided for an event.
#[derive(Debug)]
pub enum Admit {
    /// Handle it now (given back).
    Now(Event),
    /// Held behind an earlier event of the same container, whose lookup is under way.
    Held,
    /// Held; the caller asks the runtime about this container (the first of its events).
    Ask,
    /// Too many held: these (the held ones, then this one) are handled now, without names,
    /// rather than the agent growing without bound or judging them out of order.
    Overflow(Vec<Event>),
}

/// Pod identities by container id.
pub struct PodDirectory {
    entries: HashMap<String, Entry>,
    keep: BTreeSet<String>,
    refresh: Duration,
    timeout: Duration,
    /// Events judged without names because their container's queue was full.
    pub overflowed: u64,
    /// Lookups answered with an error or not answered in time.
    pub failed: u64,
}

impl PodDirectory {
    pub fn new(keep: BTreeSet<String>, refresh: Duration, timeout: Duration) -> Self {
        PodDirectory {
            entries: HashMap::new(),
            keep,
            refresh,
            timeout,
            overflowed: 0,
            failed: 0,
        }
    }

    /// New label allowlist (a reload): the identities already known are rebuilt with it.
    pub fn set_keep(&mut self, keep: BTreeSet<String>, refresh: Duration, timeout: Duration) {
        self.refresh = refresh;
        self.timeout = timeout;
        if keep == self.keep {
            return;
        }
        self.keep = keep;
        for e in self.entries.values_mut() {
            if let Entry::Known { raw, identity, .. } = e {
                *identity = raw.as_ref().map(|r| Arc::new(r.identity(&self.keep)));
            }
        }
    }

    /// The identity of `container_id`, when the runtime named it.
    pub fn get(&self, container_id: &str) -> Option<Arc<PodIdentity>> {
        match self.entries.get(container_id)? {
            Entry::Known { identity, .. } => identity.clone(),
            Entry::Pending { .. } => None,
        }
    }

    /// Whether an event of `container_id` can be handled now; holds it otherwise (it is
    /// given back by [`resolve`](Self::resolve) or [`expire`](Self::expire)).
    pub fn admit(&mut self, container_id: &str, ev: Event) -> Admit {
        match self.entries.get_mut(container_id) {
            Some(Entry::Known {
                identity: Some(_), ..
            }) => Admit::Now(ev),
            Some(Entry::Known {
                identity: None, at, ..
            }) if at.elapsed() < self.refresh => Admit::Now(ev),
            Some(Entry::Pending { held, .. }) => {
                if held.len() >= MAX_HELD_PER_CONTAINER {
                    let mut all: Vec<Event> = std::mem::take(held).into();
                    all.push(ev);
                    self.overflowed += all.len() as u64;
                    log::warn!(
                        "container runtime: {} events of container {container_id} waited for its pod's name; judged without it",
                        all.len()
                    );
                    self.resolve_quiet(container_id);
                    return Admit::Overflow(all);
                }
                held.push_back(ev);
                Admit::Held
            }
            _ => {
                if self.entries.len() >= MAX_ENTRIES {
                    self.entries.retain(|_, e| matches!(e, Entry::Pending { .. }));
                }
                self.entries.insert(
                    container_id.to_string(),
                    Entry::Pending {
                        since: Instant::now(),
                        held: VecDeque::from([ev]),
                    },
                );
                Admit::Ask
            }
        }
    }

    /// The runtime's answer about `container_id`; the events held for it, in order.
    pub fn resolve(&mut self, container_id: &str, answer: Result<Option<RuntimePod>, String>) -> Vec<Event> {
        let raw = match answer {
            Ok(raw) => raw,
            Err(e) => {
                self.failed += 1;
                log::warn!("container runtime: no pod identity for container {container_id}: {e}");
                None
            }
        };
        let identity = raw.as_ref().map(|r| Arc::new(r.identity(&self.keep)));
        match self.entries.insert(
            container_id.to_string(),
            Entry::Known {
                raw,
                identity,
                at: Instant::now(),
            },
        ) {
            Some(Entry::Pending { held, .. }) => held.into(),
            _ => Vec::new(),
        }
    }

    /// Containers whose lookup took longer than `lookup_timeout`: they are taken as unnamed
    /// (until `refresh` passes), and their held events given back to be judged without names.
    pub fn expire(&mut self) -> Vec<(String, Vec<Event>)> {
        let late: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Pending { since, .. } if since.elapsed() >= self.timeout))
            .map(|(k, _)| k.clone())
            .collect();
        late.into_iter()
            .map(|id| {
                log::warn!(
                    "container runtime: no answer about container {id} within {:?}; its events go without pod names",
                    self.timeout
                );
                self.failed += 1;
                let held = self.resolve_quiet(&id);
                (id, held)
            })
            .collect()
    }

    fn resolve_quiet(&mut self, id: &str) -> Vec<Event> {
        match self.entries.insert(
            id.to_string(),
            Entry::Known {
                raw: None,
                identity: None,
                at: Instant::now(),
            },
        ) {
            Some(Entry::Pending { held, .. }) => held.into(),
            _ => Vec::new(),
        }
    }

    /// Whether any container's events are held.
    pub fn holding(&self) -> bool {
        self.entries.values().any(|e| matches!(e, Entry::Pending { .. }))
    }
}

#[cfg(test)]
mod tests;
