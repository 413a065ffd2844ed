//! The kubelet's pod list (`GET https://<node>:10250/pods`): the one source on the node that
//! holds each pod's ownerReferences, so the owning workload is read rather than inferred from
//! labels anyone who creates a pod can set.
//!
//! The kubelet authenticates the request by the pod's service-account bearer token (the
//! kubelet asks the API server: TokenReview) and authorizes it as `get` on the `nodes/pods`
//! subresource, falling back to `nodes/proxy` (docs/deploy.md). The token file is read again
//! before every request, since bound tokens are rotated by the kubelet. The list is cached, and
//! fetched again periodically (`refresh`) and when a lookup misses (a new pod), at most once per
//! [`MIN_INTERVAL`]; a background task fetches, so a lookup only waits (within its budget) for
//! an answer and never makes the request itself, and a slow kubelet delays no event past the
//! lookup's budget. The body is parsed (only the fields used, by serde) on a blocking thread.
//!
//! Merge ([`WithKubelet`]): the container runtime stays the source of namespace, pod and
//! container names and pod labels (what selectors and the guard's pod pinning match); the
//! kubelet adds the workload from ownerReferences. Without a runtime, the kubelet names the pod
//! too, by the container id of the process's cgroup (its `containerStatuses`) or the cgroup's
//! pod UID.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use foldhash::HashMap;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue};
use serde::Deserialize;

use super::{
    Owner, RuntimePod, Workload,
    runtime::{Lookup, PodSource},
};
use crate::{config::KubeletConfig, http_client};

/// Fetches at most this often, however many lookups miss.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// One request's limit (connect, TLS, the whole body).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A bigger body is refused rather than held (a node's 110 pods are a few MB).
pub const MAX_BODY_BYTES: usize = 32 << 20;

/// Why the pod list could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("containers.kubelet.url {0}")]
    Url(String),
    #[error("containers.kubelet.ca_file {path}: {why}")]
    Ca { path: PathBuf, why: String },
    #[error("HTTP client: {0}")]
    Client(String),
    #[error("token file {path}: {source}")]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("token file {0} is empty or not a valid header value")]
    BadToken(PathBuf),
    #[error("{0}")]
    Request(String),
    #[error("HTTP {code}{}: {hint}", if .body.is_empty() { String::new() } else { format!(" ({})", .body) })]
    Status {
        code: u16,
        body: String,
        hint: &'static str,
    },
    #[error("the response is over {} MiB", MAX_BODY_BYTES >> 20)]
    TooLarge,
    #[error("not a pod list: {0}")]
    Parse(#[from] serde_json::Error),
}

// The document: a v1 PodList, only the fields used. Kubernetes leaves empty fields out or
// writes them as null; both read as empty.

#[derive(Deserialize)]
struct PodList {
    #[serde(default)]
    items: Option<Vec<Pod>>,
}

#[derive(Deserialize)]
struct Pod {
    #[serde(default)]
    metadata: Option<ObjectMeta>,
    #[serde(default)]
    status: Option<PodStatus>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ObjectMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    owner_references: Option<Vec<OwnerReference>>,
}

#[derive(Deserialize)]
struct OwnerReference {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    controller: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PodStatus {
    #[serde(default)]
    container_statuses: Option<Vec<ContainerStatus>>,
    #[serde(default)]
    init_container_statuses: Option<Vec<ContainerStatus>>,
    #[serde(default)]
    ephemeral_container_statuses: Option<Vec<ContainerStatus>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerStatus {
    #[serde(default)]
    name: String,
    /// `<runtime>://<id>`, absent until the container was created.
    #[serde(default, rename = "containerID")]
    container_id: Option<String>,
}

/// One pod as the kubelet lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    /// From the controller ownerReference; `None`: the pod has none (a bare or static pod).
    pub workload: Option<Workload>,
    /// (container id without the `<runtime>://` prefix, container name), init and ephemeral
    /// containers included.
    pub containers: Vec<(String, String)>,
}

/// The pod list, by pod UID and by container id.
#[derive(Debug, Default)]
pub struct PodIndex {
    by_uid: HashMap<String, Arc<KubeletPod>>,
    by_container: HashMap<String, Arc<KubeletPod>>,
}

impl PodIndex {
    pub fn len(&self) -> usize {
        self.by_uid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_uid.is_empty()
    }

    pub fn by_uid(&self, uid: &str) -> Option<&Arc<KubeletPod>> {
        self.by_uid.get(uid)
    }

    pub fn by_container(&self, container_id: &str) -> Option<&Arc<KubeletPod>> {
        self.by_container.get(container_id)
    }
}

/// `workload.from` of an owner read from ownerReferences.
pub const FROM_KUBELET: &str = "kubelet";
/// `workload.from` of a Deployment read from its ReplicaSet's name (`<deployment>-<hash>`).
pub const FROM_KUBELET_REPLICASET: &str = "kubelet+replicaset-name";

/// The owning workload: the controller ownerReference (else the first). A ReplicaSet named
/// `<deployment>-<pod-template-hash>` (the pod's label) is that Deployment's: the pod's own
/// references stop at the ReplicaSet, and the Deployment controller names its ReplicaSets so.
fn owner(refs: &[OwnerReference], labels: &BTreeMap<String, String>) -> Option<Workload> {
    let r = refs
        .iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())
        .filter(|r| !r.kind.is_empty() && !r.name.is_empty())?;
    if r.kind == "ReplicaSet"
        && let Some(hash) = labels.get("pod-template-hash").filter(|h| !h.is_empty())
        && let Some(deployment) = r
            .name
            .strip_suffix(hash.as_str())
            .and_then(|d| d.strip_suffix('-'))
        && !deployment.is_empty()
    {
        return Some(Workload {
            kind: "Deployment".into(),
            name: deployment.into(),
            from: FROM_KUBELET_REPLICASET.into(),
        });
    }
    Some(Workload {
        kind: r.kind.clone(),
        name: r.name.clone(),
        from: FROM_KUBELET.into(),
    })
}

/// Parses a kubelet `/pods` body. Pods without a UID are left out (nothing can find them).
pub fn parse_pods(body: &[u8]) -> Result<PodIndex, serde_json::Error> {
    let list: PodList = serde_json::from_slice(body)?;
    let mut index = PodIndex::default();
    for pod in list.items.unwrap_or_default() {
        let meta = pod.metadata.unwrap_or_default();
        let Some(uid) = meta.uid.filter(|u| !u.is_empty()) else {
            continue;
        };
        let labels = meta.labels.unwrap_or_default();
        let status = pod.status.unwrap_or_default();
        let containers: Vec<(String, String)> = [
            status.container_statuses,
            status.init_container_statuses,
            status.ephemeral_container_statuses,
        ]
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|c| {
            let id = c.container_id?;
            let id = id.split_once("://").map_or(id.as_str(), |(_, id)| id);
            (!id.is_empty()).then(|| (id.to_string(), c.name))
        })
        .collect();
        let p = Arc::new(KubeletPod {
            namespace: meta.namespace.unwrap_or_default(),
            name: meta.name.unwrap_or_default(),
            workload: owner(&meta.owner_references.unwrap_or_default(), &labels),
            uid: uid.clone(),
            labels,
            containers,
        });
        for (id, _) in &p.containers {
            index.by_container.insert(id.clone(), p.clone());
        }
        index.by_uid.insert(uid, p);
    }
    Ok(index)
}

/// How the last fetches went, for the start-up report and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeletStatus {
    /// Fetches finished, successful or not.
    pub attempts: u64,
    pub failures: u64,
    /// Why the last fetch failed; `None` after a success (or before the first).
    pub error: Option<String>,
    /// Pods in the last list fetched.
    pub pods: usize,
}

struct State {
    index: Arc<PodIndex>,
    status: KubeletStatus,
    /// A fetch is under way: a lookup that missed waits for the one after it (this one may
    /// have been asked before the pod existed).
    in_flight: bool,
    last_attempt: Option<Instant>,
    /// The agent waits for the first fetch for its start-up report, which then says how it
    /// went: the log need not say it too.
    startup_waiting: bool,
}

struct Shared {
    url: url::Url,
    token_file: PathBuf,
    client: reqwest::Client,
    state: Mutex<State>,
    /// A lookup missed: fetch now (or as soon as `MIN_INTERVAL` allows).
    wake: tokio::sync::Notify,
    /// Counts finished fetches.
    fetched: tokio::sync::watch::Sender<u64>,
}

/// The kubelet's pod list, cached and refreshed by a background task (stopped on drop).
pub struct Kubelet {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

/// What the kubelet says about a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Its pod, and the container's name when the kubelet has the container's id.
    Pod(Arc<KubeletPod>, Option<String>),
    /// The kubelet's list (fetched after the miss, or the last one within the budget) has
    /// neither the container nor the pod.
    Unknown,
    /// The last fetch failed: why.
    Unavailable(String),
}

impl Kubelet {
    /// Builds the client (the CA is read now) and starts the background fetches; `env` expands
    /// `${NAME}` in the URL. Must be called within a tokio runtime.
    pub fn start(c: &KubeletConfig, env: impl Fn(&str) -> Option<String>) -> Result<Kubelet, KubeletError> {
        let url = c.pods_url(env).map_err(KubeletError::Url)?;
        let mut b = http_client::builder(REQUEST_TIMEOUT, http_client::Route::Direct).https_only(true);
        if c.insecure_skip_verify {
            b = b.danger_accept_invalid_certs(true);
        } else {
            let ca = |why: String| KubeletError::Ca {
                path: c.ca_file.clone(),
                why,
            };
            let pem = std::fs::read(&c.ca_file).map_err(|e| ca(e.to_string()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                ca(format!(
                    "not a PEM certificate bundle ({})",
                    http_client::describe(e)
                ))
            })?;
            if certs.is_empty() {
                return Err(ca("holds no PEM certificate".into()));
            }
            // Only this CA: a kubelet's certificate from a public CA means nothing here.
            b = b.tls_built_in_root_certs(false);
            for cert in certs {
                b = b.add_root_certificate(cert);
            }
        }
        let client = b
            .build()
            .map_err(|e| KubeletError::Client(http_client::describe(e)))?;
        let (fetched, _) = tokio::sync::watch::channel(0);
        let shared = Arc::new(Shared {
            url,
            token_file: c.token_file.clone(),
            client,
            state: Mutex::new(State {
                index: Arc::new(PodIndex::default()),
                status: KubeletStatus::default(),
                in_flight: false,
                last_attempt: None,
                startup_waiting: false,
            }),
            wake: tokio::sync::Notify::new(),
            fetched,
        });
        let task = tokio::spawn(refresher(shared.clone(), c.refresh));
        Ok(Kubelet { shared, task })
    }

    /// `https://host:port/pods`, for logs.
    pub fn url(&self) -> &url::Url {
        &self.shared.url
    }

    pub fn status(&self) -> KubeletStatus {
        self.shared.lock().status.clone()
    }

    /// Waits (at most `within`) for the first fetch to finish; its status. A first fetch that
    /// fails meanwhile is not logged: the caller reports it.
    pub async fn first_fetch(&self, within: Duration) -> KubeletStatus {
        let mut rx = self.shared.fetched.subscribe();
        self.shared.lock().startup_waiting = true;
        let _ = tokio::time::timeout(within, rx.wait_for(|n| *n > 0)).await;
        let mut s = self.shared.lock();
        s.startup_waiting = false;
        s.status.clone()
    }

    /// The pod of `container_id` (else of `pod_uid`). A miss asks the background task for a
    /// fetch and waits for one that began after the miss, at most `budget`; with
    /// `need_container`, a pod found without the container counts as a miss too, once (the
    /// kubelet reports a new container's id a moment after it starts). While the kubelet is
    /// failing a miss waits for nothing: the answer is the cached list's.
    pub async fn find(
        &self,
        container_id: &str,
        pod_uid: Option<&str>,
        need_container: bool,
        budget: Duration,
    ) -> Found {
        let deadline = tokio::time::Instant::now() + budget;
        for _ in 0..if need_container { 2 } else { 1 } {
            let (found, failing, wait_for) = {
                let s = self.shared.lock();
                let found = lookup(&s.index, container_id, pod_uid);
                // A fetch under way may have been asked before this pod existed: wait for the
                // one after it. (The count is raised under the same lock as the list is set.)
                let done = *self.shared.fetched.borrow();
                (found, s.status.error.is_some(), done + 1 + u64::from(s.in_flight))
            };
            match &found {
                Some((_, Some(_))) => return to_found(found),
                Some((_, None)) if !need_container => return to_found(found),
                _ => {}
            }
            let mut rx = self.shared.fetched.subscribe();
            self.shared.wake.notify_one();
            if failing {
                break;
            }
            if tokio::time::timeout_at(deadline, rx.wait_for(|n| *n >= wait_for))
                .await
                .is_err()
            {
                break;
            }
        }
        self.settle(container_id, pod_uid)
    }

    /// The answer from what is cached now.
    fn settle(&self, container_id: &str, pod_uid: Option<&str>) -> Found {
        let s = self.shared.lock();
        match lookup(&s.index, container_id, pod_uid) {
            Some(f) => to_found(Some(f)),
            None => match &s.status.error {
                Some(why) => Found::Unavailable(why.clone()),
                None => Found::Unknown,
            },
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lookup(
    index: &PodIndex,
    container_id: &str,
    pod_uid: Option<&str>,
) -> Option<(Arc<KubeletPod>, Option<String>)> {
    if let Some(p) = index.by_container(container_id) {
        let name = p
            .containers
            .iter()
            .find(|(id, _)| id == container_id)
            .map(|(_, n)| n.clone());
        return Some((p.clone(), name));
    }
    pod_uid.and_then(|u| index.by_uid(u)).map(|p| (p.clone(), None))
}

fn to_found(f: Option<(Arc<KubeletPod>, Option<String>)>) -> Found {
    match f {
        Some((p, c)) => Found::Pod(p, c),
        None => Found::Unknown,
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn fetch(&self) -> Result<PodIndex, KubeletError> {
        // Read every time: the kubelet rotates a bound token in place (a new file behind the
        // same path), and a token read once would expire within the hour.
        let token = tokio::fs::read_to_string(&self.token_file)
            .await
            .map_err(|source| KubeletError::Token {
                path: self.token_file.clone(),
                source,
            })?;
        let token = token.trim();
        let mut auth = HeaderValue::from_str(&format!("Bearer {token}"))
            .ok()
            .filter(|_| !token.is_empty())
            .ok_or_else(|| KubeletError::BadToken(self.token_file.clone()))?;
        auth.set_sensitive(true);
        let mut resp = self
            .client
            .get(self.url.clone())
            .header(AUTHORIZATION, auth)
            .header(ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| KubeletError::Request(http_client::describe(e)))?;
        let code = resp.status().as_u16();
        if code != 200 {
            let hint = match code {
                401 => {
                    "the kubelet refused the token (expired, wrong audience, or the kubelet does not accept bearer tokens: --authentication-token-webhook)"
                }
                403 => {
                    "the service account may not get nodes/pods (Kubernetes 1.33+) or nodes/proxy on this node (docs/deploy.md)"
                }
                _ => "not the kubelet's pod list",
            };
            return Err(KubeletError::Status {
                code,
                body: http_client::excerpt(resp).await,
                hint,
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| KubeletError::Request(http_client::describe(e)))?
        {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(KubeletError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        // Megabytes of JSON: parsed off the event loop's thread.
        tokio::task::spawn_blocking(move || parse_pods(&body))
            .await
            .map_err(|e| KubeletError::Request(format!("parsing the pod list: {e}")))?
            .map_err(KubeletError::Parse)
    }
}

/// Fetches the pod list now, then every `refresh` and whenever a lookup misses, never twice
/// within `MIN_INTERVAL`. Says in the log when the kubelet stops answering and when it answers
/// again, once each.
async fn refresher(shared: Arc<Shared>, refresh: Duration) {
    loop {
        {
            let mut s = shared.lock();
            s.in_flight = true;
            s.last_attempt = Some(Instant::now());
        }
        let result = shared.fetch().await;
        {
            let mut s = shared.lock();
            s.in_flight = false;
            s.status.attempts += 1;
            match result {
                Ok(index) => {
                    if let Some(why) = s.status.error.take() {
                        log::info!(
                            "kubelet pod list at {} answers again ({} pods; it had failed: {why})",
                            shared.url,
                            index.len()
                        );
                    } else if s.status.attempts == 1 {
                        log::info!("kubelet pod list at {}: {} pods", shared.url, index.len());
                    }
                    s.status.pods = index.len();
                    s.index = Arc::new(index);
                }
                Err(e) => {
                    s.status.failures += 1;
                    let why = e.to_string();
                    let reported_at_start = s.status.attempts == 1 && s.startup_waiting;
                    if s.status.error.is_none() && !reported_at_start {
                        log::warn!(
                            "kubelet pod list at {} unavailable ({why}): until it answers, pods it has not listed get no owner from it",
                            shared.url
                        );
                    }
                    // The last good list stays: pods that existed then still exist or are gone
                    // (a gone pod's containers raise nothing new).
                    s.status.error = Some(why);
                }
            }
            // Under the lock: a lookup reads the list and this count together.
            shared.fetched.send_modify(|n| *n += 1);
        }
        tokio::select! {
            _ = tokio::time::sleep(refresh) => {}
            _ = shared.wake.notified() => {}
        }
        let since = shared.lock().last_attempt.map_or(MIN_INTERVAL, |t| t.elapsed());
        if since < MIN_INTERVAL {
            tokio::time::sleep(MIN_INTERVAL - since).await;
        }
    }
}

/// The container runtime and the kubelet asked together (see the module's doc). `runtime`
/// `None`: the kubelet alone names pods.
pub struct WithKubelet {
    pub runtime: Option<Arc<dyn PodSource>>,
    pub kubelet: Arc<Kubelet>,
    /// How long a lookup waits for the kubelet: less than `containers.lookup_timeout`, so a
    /// slow kubelet costs the owner, never the runtime's names.
    pub budget: Duration,
}

impl PodSource for WithKubelet {
    fn lookup(&self, container_id: String, pod_uid: Option<String>) -> Lookup {
        let runtime = self.runtime.clone();
        let kubelet = self.kubelet.clone();
        let budget = self.budget;
        Box::pin(async move {
            let Some(runtime) = runtime else {
                return Ok(named_by_kubelet(
                    kubelet
                        .find(&container_id, pod_uid.as_deref(), true, budget)
                        .await,
                ));
            };
            let Some(mut pod) = runtime.lookup(container_id.clone(), pod_uid.clone()).await? else {
                return Ok(None);
            };
            // The runtime's pod UID (the kubelet's label) over the cgroup's.
            let uid = Some(pod.pod_uid.as_str())
                .filter(|u| !u.is_empty())
                .or(pod_uid.as_deref())
                .map(str::to_owned);
            if let Found::Pod(k, _) = kubelet.find(&container_id, uid.as_deref(), false, budget).await {
                pod.owner = Owner::Kubelet(k.workload.clone());
                pod.source = match pod.source {
                    "containerd" => "containerd+kubelet",
                    "cri" => "cri+kubelet",
                    _ => "kubelet",
                };
            }
            Ok(Some(pod))
        })
    }

    fn describe(&self) -> String {
        match &self.runtime {
            Some(r) => format!(
                "{}, owners from the kubelet at {}",
                r.describe(),
                self.kubelet.url()
            ),
            None => format!("kubelet at {} (no container runtime)", self.kubelet.url()),
        }
    }
}

/// A pod named by the kubelet alone. The container's name is empty while the kubelet has not
/// reported the container's id yet.
fn named_by_kubelet(found: Found) -> Option<RuntimePod> {
    let Found::Pod(k, container) = found else {
        return None;
    };
    Some(RuntimePod {
        namespace: k.namespace.clone(),
        pod: k.name.clone(),
        pod_uid: k.uid.clone(),
        container: container.unwrap_or_default(),
        labels: k.labels.clone(),
        owner: Owner::Kubelet(k.workload.clone()),
        source: "kubelet",
    })
}

#[cfg(test)]
impl Kubelet {
    /// As if a fetch had just returned `index`.
    fn seed(&self, index: PodIndex) {
        let mut s = self.shared.lock();
        s.status.attempts += 1;
        s.status.error = None;
        s.status.pods = index.len();
        s.index = Arc::new(index);
        s.last_attempt = Some(Instant::now());
        self.shared.fetched.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
mod tests;
