use super::*;

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn kubelet_labels() -> BTreeMap<String, String> {
    labels(&[
        (LABEL_POD_NAME, "vllm-7d4b9c8f6-x2k9q"),
        (LABEL_POD_NAMESPACE, "ml-serving"),
        (LABEL_POD_UID, "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"),
        (LABEL_CONTAINER_NAME, "server"),
    ])
}

#[test]
fn kubelet_labels_name_the_pod_and_container() {
    let p = RuntimePod::from_container_labels(&kubelet_labels(), "containerd").unwrap();
    assert_eq!(
        (p.namespace.as_str(), p.pod.as_str(), p.container.as_str()),
        ("ml-serving", "vllm-7d4b9c8f6-x2k9q", "server")
    );
    assert_eq!(p.pod_uid, "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b");
    // A container the kubelet did not make (ctr, nerdctl, docker) names no pod.
    assert!(RuntimePod::from_container_labels(&labels(&[("app", "x")]), "containerd").is_none());
    let mut no_ns = kubelet_labels();
    no_ns.remove(LABEL_POD_NAMESPACE);
    assert!(RuntimePod::from_container_labels(&no_ns, "containerd").is_none());
}

#[test]
fn only_allowlisted_pod_labels_travel() {
    let mut p = RuntimePod::from_container_labels(&kubelet_labels(), "containerd").unwrap();
    let mut sandbox = kubelet_labels();
    sandbox.extend(labels(&[
        ("app", "vllm"),
        ("team", "inference"),
        ("io.cri-containerd.kind", "sandbox"),
        ("pod-template-hash", "7d4b9c8f6"),
    ]));
    p.set_pod_labels(&sandbox);
    assert!(
        !p.labels.contains_key(LABEL_POD_NAME),
        "the kubelet's own labels are not pod labels"
    );
    assert!(!p.labels.contains_key("io.cri-containerd.kind"));
    let keep: BTreeSet<String> = ["app".to_string()].into();
    let id = p.identity(&keep);
    assert_eq!(id.labels, labels(&[("app", "vllm")]));
    // The workload is inferred from all labels, not only the kept ones.
    let w = id.workload.unwrap();
    assert_eq!((w.kind.as_str(), w.name.as_str()), ("Deployment", "vllm"));
    assert!(w.from.contains("pod-template-hash"), "{}", w.from);
}

#[test]
fn workloads_inferred_from_controller_labels() {
    let kind = |pod: &str, kv: &[(&str, &str)]| infer_workload(pod, &labels(kv)).map(|w| (w.kind, w.name));
    let own = |k: &str, n: &str| Some((k.to_string(), n.to_string()));
    assert_eq!(
        kind(
            "db-2",
            &[
                ("controller-revision-hash", "db-5c"),
                ("statefulset.kubernetes.io/pod-name", "db-2")
            ]
        ),
        own("StatefulSet", "db")
    );
    assert_eq!(
        kind(
            "agent-x7k2p",
            &[
                ("controller-revision-hash", "6d"),
                ("pod-template-generation", "3")
            ]
        ),
        own("DaemonSet", "agent")
    );
    assert_eq!(
        kind(
            "train-abcde",
            &[("batch.kubernetes.io/job-name", "train"), ("job-name", "train")]
        ),
        own("Job", "train")
    );
    // A hash label that the name does not carry says nothing.
    assert_eq!(kind("other-name", &[("pod-template-hash", "7d4b9c8f6")]), None);
    // A bare pod: no owner known.
    assert_eq!(kind("debug", &[("app", "x")]), None);
    // A pod named like a StatefulSet's but without the controller's labels.
    assert_eq!(kind("db-2", &[]), None);
}

fn event(pid: u32) -> Event {
    Event {
        ts_ns: pid as u64,
        task: crate::events::Task {
            pid,
            tid: pid,
            uid: 0,
            gid: 0,
            comm: "cat".into(),
            cgroup_id: 1,
        },
        kind: crate::events::EventKind::ProcExit { exit_code: 0 },
    }
}

#[test]
fn events_wait_for_the_answer_and_come_back_in_order() {
    let mut d = PodDirectory::new(BTreeSet::new(), Duration::from_secs(30), Duration::from_secs(2));
    assert!(matches!(d.admit("c1", event(1)), Admit::Ask));
    assert!(matches!(d.admit("c1", event(2)), Admit::Held));
    assert!(d.holding());
    assert!(d.get("c1").is_none());
    let p = RuntimePod::from_container_labels(&kubelet_labels(), "containerd").unwrap();
    let back = d.resolve("c1", Ok(Some(p)));
    assert_eq!(back.iter().map(|e| e.task.pid).collect::<Vec<_>>(), vec![1, 2]);
    assert!(!d.holding());
    assert_eq!(d.get("c1").unwrap().pod, "vllm-7d4b9c8f6-x2k9q");
    assert!(matches!(d.admit("c1", event(3)), Admit::Now(_)));
    // An error is an unnamed container, asked again only after `refresh`.
    assert!(matches!(d.admit("c2", event(4)), Admit::Ask));
    assert_eq!(d.resolve("c2", Err("down".into())).len(), 1);
    assert_eq!(d.failed, 1);
    assert!(matches!(d.admit("c2", event(5)), Admit::Now(_)));
}

#[test]
fn a_silent_runtime_releases_events_after_the_timeout() {
    let mut d = PodDirectory::new(BTreeSet::new(), Duration::from_secs(30), Duration::ZERO);
    assert!(matches!(d.admit("c1", event(1)), Admit::Ask));
    let expired = d.expire();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].1.len(), 1);
    assert!(!d.holding());
    // A late answer still names the container for what comes next.
    let p = RuntimePod::from_container_labels(&kubelet_labels(), "containerd").unwrap();
    assert!(d.resolve("c1", Ok(Some(p))).is_empty());
    assert!(d.get("c1").is_some());
}

#[test]
fn a_full_queue_judges_without_names_rather_than_grow() {
    let mut d = PodDirectory::new(BTreeSet::new(), Duration::from_secs(30), Duration::from_secs(2));
    assert!(matches!(d.admit("c1", event(0)), Admit::Ask));
    for i in 1..MAX_HELD_PER_CONTAINER as u32 {
        assert!(matches!(d.admit("c1", event(i)), Admit::Held));
    }
    let Admit::Overflow(all) = d.admit("c1", event(99_999)) else {
        panic!("not flushed")
    };
    assert_eq!(all.len(), MAX_HELD_PER_CONTAINER + 1);
    assert_eq!(all.last().unwrap().task.pid, 99_999, "in order: held ones first");
    assert_eq!(d.overflowed, all.len() as u64);
    assert!(!d.holding());
}
