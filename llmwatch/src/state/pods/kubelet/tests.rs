use std::collections::BTreeSet;

use super::*;
use crate::state::pods::infer_workload;

/// A kubelet `/pods` body in the shape kubelets return (fields the agent does not read
/// included): pods owned by a ReplicaSet, a StatefulSet, a Job and a DaemonSet, a bare pod with
/// an ephemeral container, a static pod, a pending pod without container ids, a pod whose
/// controller is not its first ownerReference, and an item without a UID.
const PODS: &str = include_str!("pods.json");

fn workload(index: &PodIndex, uid: &str) -> Option<(String, String, String)> {
    index
        .by_uid(uid)
        .unwrap_or_else(|| panic!("pod {uid} not indexed"))
        .workload
        .clone()
        .map(|w| (w.kind, w.name, w.from))
}

fn own(kind: &str, name: &str, from: &str) -> Option<(String, String, String)> {
    Some((kind.into(), name.into(), from.into()))
}

#[test]
fn owners_come_from_owner_references() {
    let index = parse_pods(PODS.as_bytes()).unwrap();
    assert_eq!(index.len(), 8, "the item without a UID is left out");
    // A ReplicaSet named <deployment>-<pod-template-hash> is the Deployment's.
    assert_eq!(
        workload(&index, "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"),
        own("Deployment", "vllm", FROM_KUBELET_REPLICASET)
    );
    // The StatefulSet's pod also carries a `job-name` label: inference would call it a Job.
    let shard = "2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f";
    assert_eq!(
        workload(&index, shard),
        own("StatefulSet", "model-shard", FROM_KUBELET)
    );
    let p = index.by_uid(shard).unwrap();
    assert_eq!(
        infer_workload(&p.name, &p.labels).map(|w| w.kind).as_deref(),
        Some("Job"),
        "the fixture is one inference gets wrong"
    );
    assert_eq!(
        workload(&index, "7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d"),
        own("Job", "finetune-28991430", FROM_KUBELET)
    );
    assert_eq!(
        workload(&index, "8b9c0d1e-2f3a-4b4c-9d5e-6f7a8b9c0d1e"),
        own("DaemonSet", "nvidia-device-plugin-daemonset", FROM_KUBELET)
    );
    // A bare pod labelled like a Deployment's has no owner; so has a static pod.
    assert_eq!(workload(&index, "9c0d1e2f-3a4b-4c5d-8e6f-7a8b9c0d1e2f"), None);
    assert_eq!(workload(&index, "b1f0e7a3c2d94e5f8a6b7c8d9e0f1a2b"), None);
    // The controller reference wins over the first one; a ReplicaSet whose name does not end
    // in the pod's hash stays a ReplicaSet.
    assert_eq!(
        workload(&index, "1b2c3d4e-5f6a-4b7c-9d8e-9f0a1b2c3d4e"),
        own("ReplicaSet", "batch-runner", FROM_KUBELET)
    );
}

#[test]
fn containers_are_found_by_id_of_every_kind_and_runtime() {
    let index = parse_pods(PODS.as_bytes()).unwrap();
    let name = |id: &str| {
        let p = index.by_container(id)?;
        let c = p.containers.iter().find(|(i, _)| i == id)?;
        Some((p.name.clone(), c.1.clone()))
    };
    let n = |pod: &str, c: &str| Some((pod.to_string(), c.to_string()));
    assert_eq!(
        name("9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0"),
        n("vllm-7d4b9c8f6-x2k9q", "server")
    );
    assert_eq!(
        name("1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809"),
        n("vllm-7d4b9c8f6-x2k9q", "fetch-weights"),
        "init containers"
    );
    assert_eq!(
        name("f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4"),
        n("debug-shell", "debugger-4xk2m"),
        "ephemeral containers (kubectl debug)"
    );
    assert_eq!(
        name("bb22cc33dd44ee55ff6677889900aa11bb22cc33dd44ee55ff6677889900aa11"),
        n("model-shard-2", "shard"),
        "cri-o:// ids"
    );
    // A pending container has no id yet; its pod is found by UID only.
    let pending = index.by_uid("0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d").unwrap();
    assert!(pending.containers.is_empty());
    assert_eq!(pending.namespace, "ml-serving");
    assert!(index.by_container("").is_none());
}

#[test]
fn what_is_not_a_pod_list_is_an_error_and_an_empty_one_is_empty() {
    assert!(parse_pods(b"<html>Unauthorized</html>").is_err());
    assert!(parse_pods(br#"{"items": "no"}"#).is_err());
    assert!(
        parse_pods(br#"{"kind":"PodList","items":null}"#)
            .unwrap()
            .is_empty()
    );
    assert!(
        parse_pods(br#"{"kind":"PodList","metadata":{}}"#)
            .unwrap()
            .is_empty()
    );
}

fn config(url: &str) -> KubeletConfig {
    KubeletConfig {
        url: url.into(),
        ..KubeletConfig::default()
    }
}

#[test]
fn the_url_names_its_variable_and_its_fault() {
    let env = |name: &str| (name == "NODE_IP").then(|| "10.20.3.17".to_string());
    assert_eq!(
        config("https://${NODE_IP}:10250").pods_url(env).unwrap().as_str(),
        "https://10.20.3.17:10250/pods"
    );
    assert_eq!(
        config("https://gpu-node-17:10250/")
            .pods_url(env)
            .unwrap()
            .as_str(),
        "https://gpu-node-17:10250/pods"
    );
    let err = |url: &str| config(url).pods_url(env).unwrap_err();
    let e = err("https://${NODE_NAME}:10250");
    assert!(e.contains("${NODE_NAME}") && e.contains("not set"), "{e}");
    let e = err("http://10.0.0.1:10255");
    assert!(e.contains("http://10.0.0.1:10255") && e.contains("https"), "{e}");
    let e = err("https://10.0.0.1:10250/pods");
    assert!(e.contains("without a path"), "{e}");
    let e = err("https://${NODE-IP}:10250");
    assert!(e.contains("NODE-IP"), "{e}");
    let e = err("https://${NODE_IP:10250");
    assert!(e.contains("closing"), "{e}");
    let e = err("https://user:pw@10.0.0.1:10250");
    assert!(e.contains("user"), "{e}");
}

#[tokio::test]
async fn a_missing_or_bad_ca_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let start = |ca: &std::path::Path| {
        Kubelet::start(
            &KubeletConfig {
                url: "https://127.0.0.1:10250".into(),
                ca_file: ca.to_path_buf(),
                ..KubeletConfig::default()
            },
            |_| None,
        )
        .err()
        .expect("refused")
        .to_string()
    };
    let missing = dir.path().join("missing.crt");
    let e = start(&missing);
    assert!(
        e.contains("containers.kubelet.ca_file") && e.contains("missing.crt"),
        "{e}"
    );
    let not_pem = dir.path().join("token");
    std::fs::write(&not_pem, "eyJhbGciOiJSUzI1NiJ9.not-a-certificate").unwrap();
    let e = start(&not_pem);
    assert!(e.contains("token") && e.contains("no PEM certificate"), "{e}");
}

fn runtime_pod(uid: &str) -> RuntimePod {
    RuntimePod {
        namespace: "ml-serving".into(),
        pod: "model-shard-2".into(),
        pod_uid: uid.into(),
        container: "shard".into(),
        labels: [
            ("app", "model-shard"),
            ("job-name", "warmup"),
            ("controller-revision-hash", "model-shard-5c7d9f8b6"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into(),
        owner: Owner::Infer,
        source: "containerd",
    }
}

/// A runtime that names every container as `runtime_pod`.
struct FixedRuntime(RuntimePod);

impl PodSource for FixedRuntime {
    fn lookup(&self, _container_id: String, _pod_uid: Option<String>) -> Lookup {
        let p = self.0.clone();
        Box::pin(async move { Ok(Some(p)) })
    }
    fn describe(&self) -> String {
        "fixed".into()
    }
}

/// A kubelet nothing listens for (port 1 on loopback), its list seeded by the test.
async fn offline_kubelet(dir: &std::path::Path) -> Arc<Kubelet> {
    let token = dir.join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let k = Kubelet::start(
        &KubeletConfig {
            url: "https://127.0.0.1:1".into(),
            token_file: token,
            insecure_skip_verify: true,
            refresh: Duration::from_secs(3600),
            ..KubeletConfig::default()
        },
        |_| None,
    )
    .unwrap();
    let first = k.first_fetch(Duration::from_secs(10)).await;
    assert_eq!(first.failures, 1, "{first:?}");
    let why = first.error.unwrap();
    assert!(why.contains("connect"), "{why}");
    Arc::new(k)
}

/// What the runtime (naming every container as `from_runtime`) and `kubelet` say together of a
/// container the kubelet's list does not have, in `from_runtime`'s pod.
async fn with_runtime(kubelet: &Arc<Kubelet>, from_runtime: RuntimePod, budget: Duration) -> RuntimePod {
    let uid = from_runtime.pod_uid.clone();
    let merged = WithKubelet {
        runtime: Some(Arc::new(FixedRuntime(from_runtime))),
        kubelet: kubelet.clone(),
        budget,
    };
    merged
        .lookup("not-in-the-list".into(), Some(uid))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn the_runtime_names_the_pod_and_the_kubelet_its_owner() {
    let dir = tempfile::tempdir().unwrap();
    let kubelet = offline_kubelet(dir.path()).await;
    kubelet.seed(parse_pods(PODS.as_bytes()).unwrap());
    let shard = "2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f";
    let mut from_runtime = runtime_pod(shard);
    // The runtime's names stay, even where the kubelet's differ.
    from_runtime.container = "shard-from-runtime".into();
    let p = with_runtime(&kubelet, from_runtime, Duration::from_secs(1)).await;
    assert_eq!(p.source, "containerd+kubelet");
    assert_eq!(p.container, "shard-from-runtime");
    let id = p.identity(&BTreeSet::new());
    let w = id.workload.unwrap();
    assert_eq!(
        (w.kind.as_str(), w.name.as_str(), w.from.as_str()),
        ("StatefulSet", "model-shard", "kubelet")
    );

    // A pod the kubelet does not list: the runtime's names, the owner inferred. The miss asked
    // for a fetch, which failed: the lookup says nothing of it but the kubelet's status does.
    let unknown = "00000000-0000-4000-8000-000000000000";
    let p = with_runtime(&kubelet, runtime_pod(unknown), Duration::from_secs(5)).await;
    assert_eq!(p.source, "containerd");
    let w = p.identity(&BTreeSet::new()).workload.unwrap();
    assert_eq!(w.kind, "Job", "inferred from the labels, and says so: {w:?}");
    assert!(w.from.starts_with("label"), "{w:?}");
    let status = kubelet.status();
    assert_eq!(status.failures, 2, "the miss fetched again: {status:?}");
    assert!(status.error.is_some());
    // The last good list is kept while the kubelet fails.
    assert_eq!(status.pods, 8);
    assert!(matches!(
        kubelet.find("x", Some(shard), false, Duration::ZERO).await,
        Found::Pod(..)
    ));
    // While it fails a miss waits for nothing.
    let started = std::time::Instant::now();
    assert!(matches!(
        kubelet
            .find("x", Some(unknown), false, Duration::from_secs(30))
            .await,
        Found::Unavailable(_)
    ));
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn without_a_runtime_the_kubelet_names_the_container_by_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let kubelet = offline_kubelet(dir.path()).await;
    kubelet.seed(parse_pods(PODS.as_bytes()).unwrap());
    let merged = WithKubelet {
        runtime: None,
        kubelet,
        budget: Duration::from_secs(1),
    };
    let p = merged
        .lookup(
            "1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809".into(),
            None,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            p.namespace.as_str(),
            p.pod.as_str(),
            p.container.as_str(),
            p.source
        ),
        ("ml-serving", "vllm-7d4b9c8f6-x2k9q", "fetch-weights", "kubelet")
    );
    let keep: BTreeSet<String> = ["app".to_string()].into();
    let id = p.identity(&keep);
    assert_eq!(id.labels.get("app").map(String::as_str), Some("vllm"));
    assert_eq!(id.workload.unwrap().kind, "Deployment");
    // A container of no pod it lists (and no pod UID from the cgroup): not named.
    assert!(merged.lookup("feed".into(), None).await.unwrap().is_none());
}
