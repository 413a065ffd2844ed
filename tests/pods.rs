//! Pod identity from a real containerd (Debian's containerd and runc): containers started with
//! `ctr run --rootfs` on a busybox-static root (no image, no registry), labelled the way the
//! kubelet labels them, in a kubelet-style cgroup, with the models directory bind-mounted.
//! What a container reads names its namespace, pod and container; a host process claiming a pod
//! in its argv and environment names none and is not exempted by a server selecting that
//! pod's namespace. Root; containerd runs with its own temporary root, state and socket.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex, mpsc::Receiver},
};

use llmwatch_e2e::{
    Agent, Request, TempDir, Value,
    containerd::{Containerd, Pod},
    debian_file, http_get, https_server, is_incident, secs, test_certificates, write_safetensors,
};
use serde_json::json;

#[test]
fn what_a_container_reads_names_its_pod_and_a_host_process_cannot_claim_one() {
    let Some(containerd) = Containerd::start_if_installed() else {
        return;
    };
    let models = TempDir::new("pods-models");
    let model = models.path().join("model.safetensors");
    write_safetensors(&model, 256 * 1024);
    let cfgdir = TempDir::new("pods-cfg");
    let cfg = cfgdir.path().join("llmwatch.yaml");
    // `cat` is an inference server in namespace ml-serving, nowhere else.
    std::fs::write(
        &cfg,
        format!(
            "containers:\n  runtime: containerd\n  runtime_socket: {}\n  pod_labels: [app]\n\
             servers:\n  - name: in-pod-cat\n    comm: [cat]\n    namespaces: [ml-serving]\n\
             business_hours: {{timezone: UTC, days: [mon, tue, wed, thu, fri, sat, sun], start: '00:00', end: '24:00'}}\n",
            containerd.socket.display()
        ),
    )
    .unwrap();
    let mut agent = Agent::watching(&[models.path()], &["--config", cfg.to_str().unwrap()]);

    // 1. A pod of a Deployment in ml-team reads the model: the alert names it.
    let thief = Pod::create(
        &containerd,
        "ml-team",
        "thief-7d4b9c8f6-x2k9q",
        &["app=thief", "team=red", "pod-template-hash=7d4b9c8f6"],
    );
    // The container lives on a moment after its read, as a workload does: the agent names a
    // container by its cgroup, which `ctr run --rm` removes as soon as the task exits.
    thief.run(
        "shell",
        models.path(),
        &[
            "/bin/sh",
            "-c",
            "/bin/cat /models/model.safetensors; /bin/sleep 1",
        ],
    );
    let hit = agent
        .wait_for(secs(20), |v| {
            v["rule"] == "weight.unexpected_reader" && v["process"]["kubernetes"]["pod"] == thief.name
        })
        .unwrap_or_else(|| panic!("no alert naming the pod: {:#?}", agent.seen));
    let k = &hit["process"]["kubernetes"];
    assert_eq!(k["namespace"], "ml-team", "{k}");
    assert_eq!(k["container"], "shell", "{k}");
    assert_eq!(k["pod_uid"], thief.uid.as_str(), "{k}");
    assert_eq!(
        hit["process"]["pod"],
        thief.uid.as_str(),
        "the cgroup's pod UID stays"
    );
    // Only allowlisted labels travel; the owner is inferred and says from what.
    assert_eq!(k["labels"], serde_json::json!({"app": "thief"}), "{k}");
    assert_eq!(k["workload"]["kind"], "Deployment", "{k}");
    assert_eq!(k["workload"]["name"], "thief", "{k}");
    assert!(
        k["workload"]["from"]
            .as_str()
            .unwrap()
            .contains("pod-template-hash"),
        "{k}"
    );
    // The incident receivers get carries namespace and pod (Alertmanager's labels).
    let incident = agent
        .wait_for(secs(20), |v| {
            is_incident(v) && v["process"]["kubernetes"]["pod"] == thief.name
        })
        .expect("incident about the pod");
    assert_eq!(incident["namespace"], "ml-team");
    assert_eq!(incident["pod"], thief.name);
    // Every event of that container names it too, its first (the exec) included: events wait
    // for the runtime's answer.
    let events: Vec<&Value> = agent
        .seen
        .iter()
        .filter(|v| {
            v["process"]["pod_uid"] == thief.uid.as_str() && v.get("rule").is_none() && !is_incident(v)
        })
        .collect();
    assert!(!events.is_empty());
    for e in &events {
        assert_eq!(
            e["process"]["kubernetes"]["pod"], thief.name,
            "unnamed event: {e}"
        );
    }

    // 2. cat in a pod of ml-serving is the server: its read raises nothing. Its exit event is
    // the marker: its reads were judged before it.
    let server = Pod::create(&containerd, "ml-serving", "server-0", &["app=server"]);
    server.run(
        "server",
        models.path(),
        &[
            "/bin/sh",
            "-c",
            "/bin/cat /models/model.safetensors; /bin/sleep 1",
        ],
    );
    let exit = agent
        .wait_for(secs(20), |v| {
            v["kind"] == "proc_exit"
                && v["process"]["comm"] == "cat"
                && v["process"]["kubernetes"]["pod"] == "server-0"
        })
        .unwrap_or_else(|| panic!("no exit event of the server's cat: {:#?}", agent.seen));
    assert_eq!(exit["process"]["kubernetes"]["namespace"], "ml-serving");
    let about_server: Vec<&Value> = agent
        .seen
        .iter()
        .filter(|v| v.get("rule").is_some() && v["process"]["kubernetes"]["pod"] == "server-0")
        .collect();
    assert!(
        about_server.is_empty(),
        "the pod's server raised: {about_server:#?}"
    );

    // 3. A host process named cat that claims that pod in its argv and environment is no one's
    // pod and no server.
    let claim = cfgdir.path().join("io.kubernetes.pod.namespace=ml-serving");
    std::fs::write(&claim, b"").unwrap();
    let impostor = Command::new("cat")
        .arg(&model)
        .arg(&claim)
        .env("POD_NAMESPACE", "ml-serving")
        .env("POD_NAME", "server-0")
        .env("KUBERNETES_SERVICE_HOST", "10.0.0.1")
        .env("HOSTNAME", "server-0")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = impostor.id();
    assert!(impostor.wait_with_output().unwrap().status.success());
    let hit = agent
        .wait_for(secs(20), |v| {
            v["rule"] == "weight.unexpected_reader" && v["process"]["pid"] == pid
        })
        .unwrap_or_else(|| panic!("the impostor was exempted: {:#?}", agent.seen));
    assert!(hit["process"].get("kubernetes").is_none(), "{hit}");
    assert!(hit["process"]["pod"].is_null(), "{hit}");
}

// The kubelet's pod list. There is no kubelet on this machine: it is simulated by an HTTPS
// server answering `GET /pods` with a document in the shape of the kubelet's v1 PodList (the
// fields a kubelet returns for a running pod: metadata with labels and ownerReferences, spec,
// status.containerStatuses with `containerd://<id>`), written after that shape, not captured
// from a kubelet. What is real: containerd, the containers and their cgroups, the agent's TLS
// client against a CA it was given, and the bearer token it reads from a file.

/// The stand-in kubelet: HTTPS on 127.0.0.1 with a certificate from a test CA; `/pods` answers
/// only the bearer token it currently accepts (401 otherwise, as a kubelet with webhook
/// authentication does for a token the API server rejects).
struct Kubelet {
    url: String,
    ca: PathBuf,
    accepted: Arc<Mutex<String>>,
    pods: Arc<Mutex<Vec<Value>>>,
    requests: Receiver<Request>,
    _dir: TempDir,
}

impl Kubelet {
    fn start(accepted: &str) -> Kubelet {
        let dir = TempDir::new("kubelet");
        let (ca, cert, key) = test_certificates(dir.path());
        let accepted = Arc::new(Mutex::new(accepted.to_string()));
        let pods: Arc<Mutex<Vec<Value>>> = Arc::default();
        let (token, list) = (accepted.clone(), pods.clone());
        let (addr, requests) = https_server(&cert, &key, move |req| {
            let want = format!("Bearer {}", token.lock().unwrap());
            if req.header("authorization") != Some(want.as_str()) {
                return (401, b"Unauthorized".to_vec());
            }
            if req.target != "/pods" {
                return (404, b"404 page not found".to_vec());
            }
            let doc = json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": *list.lock().unwrap()});
            (200, serde_json::to_vec(&doc).unwrap())
        });
        Kubelet {
            url: format!("https://{addr}"),
            ca,
            accepted,
            pods,
            requests,
            _dir: dir,
        }
    }

    /// Lists `pod` (its containers run by `Pod::run`), owned by `owner` (kind, name) if any.
    fn list(&self, pod: &Pod, labels: &[&str], owner: Option<(&str, &str)>, containers: &[&str]) {
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap();
                (k.to_string(), Value::from(v))
            })
            .collect();
        let mut metadata = json!({
            "name": pod.name,
            "namespace": pod.namespace,
            "uid": pod.uid,
            "resourceVersion": "418273",
            "creationTimestamp": "2026-03-02T09:14:07Z",
            "labels": labels,
            "annotations": {"kubernetes.io/config.source": "api"},
        });
        if let Some((kind, name)) = owner {
            metadata["ownerReferences"] = json!([{
                "apiVersion": if kind == "Job" { "batch/v1" } else { "apps/v1" },
                "kind": kind,
                "name": name,
                "uid": "0b7e6c1d-2a3f-4b5c-9d8e-7f6a5b4c3d2e",
                "controller": true,
                "blockOwnerDeletion": true,
            }]);
        }
        let statuses: Vec<Value> = containers
            .iter()
            .map(|c| {
                json!({
                    "name": c,
                    "state": {"running": {"startedAt": "2026-03-02T09:14:41Z"}},
                    "lastState": {},
                    "ready": true,
                    "restartCount": 0,
                    "image": "docker.io/library/busybox:1.36",
                    "imageID": "",
                    "containerID": format!("containerd://{}", pod.container_id(c)),
                    "started": true,
                })
            })
            .collect();
        self.pods.lock().unwrap().push(json!({
            "metadata": metadata,
            "spec": {
                "containers": containers.iter().map(|c| json!({"name": c, "image": "busybox:1.36"})).collect::<Vec<_>>(),
                "nodeName": "test-node",
                "restartPolicy": "Always",
            },
            "status": {
                "phase": "Running",
                "hostIP": "127.0.0.1",
                "podIP": "10.244.3.41",
                "containerStatuses": statuses,
                "qosClass": "BestEffort",
            },
        }));
    }

    /// Lists `pod` as a pod of StatefulSet model-shard with `SHARD_LABELS`, container `shard`.
    fn list_shard(&self, pod: &Pod) {
        self.list(
            pod,
            SHARD_LABELS,
            Some(("StatefulSet", "model-shard")),
            &["shard"],
        );
    }

    /// `containers.kubelet` for this kubelet, with the token read from `token_file`.
    fn config(&self, token_file: &Path) -> String {
        format!(
            "  kubelet:\n    url: {}\n    token_file: {}\n    ca_file: {}\n    refresh: 1h\n",
            self.url,
            token_file.display(),
            self.ca.display()
        )
    }

    /// The Authorization headers of the requests so far.
    fn tokens_seen(&self) -> Vec<String> {
        self.requests
            .try_iter()
            .map(|r| r.header("authorization").unwrap_or("").to_string())
            .collect()
    }
}

/// Replaces the token file the way the kubelet rotates a projected token: a new file renamed
/// over the old one.
fn write_token(path: &Path, token: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, format!("{token}\n")).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The stand-in kubelet accepting the token `accepted`, and a token file holding `sent`.
fn kubelet_and_token(cfgdir: &Path, accepted: &str, sent: &str) -> (Kubelet, PathBuf) {
    let token = cfgdir.join("token");
    write_token(&token, sent);
    (Kubelet::start(accepted), token)
}

/// The agent watching `models`, its `containers:` section `containers` (lines indented by two),
/// `app` the pod label kept, in business hours all day.
fn agent_with(models: &Path, cfgdir: &Path, containers: &str) -> Agent {
    let cfg = cfgdir.join("llmwatch.yaml");
    std::fs::write(
        &cfg,
        format!("containers:\n  pod_labels: [app]\n{containers}{ALWAYS_BUSINESS_HOURS}"),
    )
    .unwrap();
    Agent::watching(&[models], &["--config", cfg.to_str().unwrap()])
}

/// The tools, containerd and a watched model; `None` (the test said why) without the tools.
fn pods_setup() -> Option<(Containerd, TempDir, TempDir)> {
    let containerd = Containerd::start_if_installed()?;
    debian_file("/usr/bin/openssl", "openssl")?;
    let models = TempDir::new("pods-models");
    write_safetensors(&models.path().join("model.safetensors"), 256 * 1024);
    Some((containerd, models, TempDir::new("pods-cfg")))
}

/// `cat`s the model in a new container of `pod`, and the alert that raises.
fn read_in(agent: &mut Agent, pod: &Pod, container: &str, models: &Path) -> Value {
    pod.run(
        container,
        models,
        &[
            "/bin/sh",
            "-c",
            "/bin/cat /models/model.safetensors; /bin/sleep 1",
        ],
    );
    agent
        .wait_for(secs(20), |v| {
            v["rule"] == "weight.unexpected_reader" && v["process"]["kubernetes"]["pod"] == pod.name
        })
        .unwrap_or_else(|| panic!("no alert naming pod {}: {:#?}", pod.name, agent.seen))
}

const ALWAYS_BUSINESS_HOURS: &str = "business_hours: {timezone: UTC, days: [mon, tue, wed, thu, fri, sat, sun], start: '00:00', end: '24:00'}\n";

/// Labels of a StatefulSet's pod that also carries a `job-name` label (a templating tool's
/// copy): inference from labels calls it a Job.
const SHARD_LABELS: &[&str] = &[
    "app=model-shard",
    "controller-revision-hash=model-shard-5c7d9f8b6",
    "statefulset.kubernetes.io/pod-name=model-shard-2",
    "job-name=warmup",
];

/// With the kubelet's pod list, the alert of a container that reads a watched file names the
/// owner from ownerReferences (a StatefulSet inference would call a Job; a bare pod labelled
/// like a Deployment's has none), the runtime still names the pod; the token file is read
/// again, so a rotated token is used for the next fetch.
#[test]
fn the_kubelet_names_the_owner_and_a_rotated_token_is_used() {
    let Some((containerd, models, cfgdir)) = pods_setup() else {
        return;
    };
    let (kubelet, token) = kubelet_and_token(cfgdir.path(), "token-1", "token-1");
    let shard = Pod::create(&containerd, "ml-serving", "model-shard-2", SHARD_LABELS);
    kubelet.list_shard(&shard);
    let mut agent = agent_with(
        models.path(),
        cfgdir.path(),
        &format!(
            "{}  lookup_timeout: 6s\n{}",
            containerd.config(),
            kubelet.config(&token)
        ),
    );
    let degraded = agent.ready["degraded"].to_string();
    assert!(!degraded.contains("kubelet"), "{degraded}");

    let hit = read_in(&mut agent, &shard, "shard", models.path());
    let k = &hit["process"]["kubernetes"];
    assert_eq!(
        k["workload"],
        json!({"kind": "StatefulSet", "name": "model-shard", "from": "kubelet"}),
        "{k}"
    );
    assert_eq!(k["source"], "containerd+kubelet", "{k}");
    assert_eq!(k["namespace"], "ml-serving", "{k}");
    assert_eq!(k["container"], "shard", "{k}");
    assert_eq!(k["labels"], json!({"app": "model-shard"}), "{k}");
    let seen = kubelet.tokens_seen();
    assert!(
        !seen.is_empty() && seen.iter().all(|t| t == "Bearer token-1"),
        "{seen:?}"
    );

    // The token rotates; a pod created since is a miss, which fetches the list again (the
    // periodic refresh is an hour away) with the new token.
    *kubelet.accepted.lock().unwrap() = "token-2".into();
    write_token(&token, "token-2");
    let impostor_labels = ["app=vllm", "pod-template-hash=7d4b9c8f6"];
    let impostor = Pod::create(
        &containerd,
        "ml-serving",
        "vllm-7d4b9c8f6-x2k9q",
        &impostor_labels,
    );
    kubelet.list(&impostor, &impostor_labels, None, &["shell"]);
    let hit = read_in(&mut agent, &impostor, "shell", models.path());
    let k = &hit["process"]["kubernetes"];
    assert_eq!(k["source"], "containerd+kubelet", "the kubelet answered: {k}");
    assert!(
        k.get("workload").is_none(),
        "a bare pod has no owner, whatever its labels claim (inference says Deployment vllm): {k}"
    );
    let seen = kubelet.tokens_seen();
    assert_eq!(seen, vec!["Bearer token-2"], "one fetch, with the new token");
}

/// A token the kubelet refuses is said in `agent_ready.degraded` and counted; owners are then
/// inferred, and the alert says they were.
#[test]
fn a_refused_token_is_reported_and_owners_are_inferred() {
    let Some((containerd, models, cfgdir)) = pods_setup() else {
        return;
    };
    let (kubelet, token) = kubelet_and_token(cfgdir.path(), "the-right-token", "a-wrong-token");
    let shard = Pod::create(&containerd, "ml-research", "model-shard-2", SHARD_LABELS);
    kubelet.list_shard(&shard);
    let mut agent = agent_with(
        models.path(),
        cfgdir.path(),
        &format!("{}{}", containerd.config(), kubelet.config(&token)),
    );
    let degraded: Vec<String> = agent.ready["degraded"]
        .as_array()
        .expect("agent_ready.degraded")
        .iter()
        .filter_map(|d| d.as_str().map(str::to_owned))
        .filter(|d| d.contains("kubelet"))
        .collect();
    assert_eq!(degraded.len(), 1, "{:#?}", agent.ready["degraded"]);
    let line = &degraded[0];
    assert!(
        line.contains(&kubelet.url) && line.contains("HTTP 401") && line.contains("refused the token"),
        "{line}"
    );
    assert!(line.contains("inferred from pod labels"), "{line}");
    assert!(
        kubelet.tokens_seen().iter().all(|t| t == "Bearer a-wrong-token"),
        "the token file's token was sent"
    );

    let hit = read_in(&mut agent, &shard, "shard", models.path());
    let k = &hit["process"]["kubernetes"];
    assert_eq!(k["source"], "containerd", "{k}");
    assert_eq!(k["workload"]["kind"], "Job", "inferred, and wrongly: {k}");
    assert!(
        k["workload"]["from"].as_str().unwrap().starts_with("label "),
        "the alert says it was inferred: {k}"
    );
    let addr = agent.ready["metrics_addr"].as_str().expect("metrics served");
    let (code, metrics) = http_get(addr, "/metrics");
    assert_eq!(code, 200);
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics:\n{metrics}"))
    };
    assert!(value("llmwatch_kubelet_fetch_failures_total") >= 1.0);
    assert_eq!(value("llmwatch_capability{capability=\"kubelet_pods\"}"), 0.0);
}

/// A kubelet whose certificate does not chain to `ca_file` gets no request, so no token: the
/// TLS handshake fails first, and the start-up report says so.
#[test]
fn a_kubelet_certificate_from_another_ca_gets_no_token() {
    let Some((containerd, models, cfgdir)) = pods_setup() else {
        return;
    };
    let (kubelet, token) = kubelet_and_token(cfgdir.path(), "token-1", "token-1");
    let other = TempDir::new("other-ca");
    let (other_ca, _, _) = test_certificates(other.path());
    let config = kubelet
        .config(&token)
        .replace(kubelet.ca.to_str().unwrap(), other_ca.to_str().unwrap());
    let agent = agent_with(
        models.path(),
        cfgdir.path(),
        &format!("{}{config}", containerd.config()),
    );
    let degraded = agent.ready["degraded"].to_string();
    assert!(
        degraded.contains("kubelet pod list at") && degraded.contains("certificate"),
        "{degraded}"
    );
    assert!(
        kubelet.tokens_seen().is_empty(),
        "a request reached a kubelet the agent could not verify"
    );
}

/// Without a container runtime the kubelet's list names the pod, by the container id of the
/// reading process's cgroup.
#[test]
fn without_a_runtime_the_kubelet_names_the_pod() {
    let Some((containerd, models, cfgdir)) = pods_setup() else {
        return;
    };
    let (kubelet, token) = kubelet_and_token(cfgdir.path(), "token-1", "token-1");
    let labels = [
        "app=trainer",
        "batch.kubernetes.io/job-name=finetune",
        "job-name=finetune",
    ];
    let trainer = Pod::create(&containerd, "training", "finetune-qx7vd", &labels);
    kubelet.list(&trainer, &labels, Some(("Job", "finetune")), &["train"]);
    let mut agent = agent_with(
        models.path(),
        cfgdir.path(),
        &format!("  runtime: off\n  lookup_timeout: 6s\n{}", kubelet.config(&token)),
    );
    let hit = read_in(&mut agent, &trainer, "train", models.path());
    let k = &hit["process"]["kubernetes"];
    assert_eq!(k["source"], "kubelet", "{k}");
    assert_eq!(
        (&k["namespace"], &k["container"], &k["pod_uid"]),
        (&json!("training"), &json!("train"), &json!(trainer.uid)),
        "{k}"
    );
    assert_eq!(
        k["workload"],
        json!({"kind": "Job", "name": "finetune", "from": "kubelet"}),
        "{k}"
    );
    assert_eq!(k["labels"], json!({"app": "trainer"}), "{k}");
}
