//! Pod identity from a real containerd (Debian's containerd and runc): containers started with
//! `ctr run --rootfs` on a busybox-static root (no image, no registry), labelled the way the
//! kubelet labels them, in a kubelet-style cgroup, with the models directory bind-mounted.
//! What a container reads names its namespace, pod and container; a host process claiming a pod
//! in its argv and environment names none and is not exempted by a server selecting that
//! pod's namespace. Root; containerd runs with its own temporary root, state and socket.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use llmwatch_e2e::{Agent, TempDir, Value, is_incident, secs, write_safetensors};

/// A Debian program the test needs: required in CI (`cargo xtask test` installs the package and
/// sets LLMWATCH_REQUIRE_PROMTOOL=1), else the test says it is skipped.
fn tool(path: &str, package: &str) -> Option<PathBuf> {
    let p = PathBuf::from(path);
    if p.exists() {
        return Some(p);
    }
    if std::env::var("LLMWATCH_REQUIRE_PROMTOOL").as_deref() == Ok("1") {
        panic!("{path} not installed: apt-get install {package} (cargo xtask test installs it)");
    }
    eprintln!("skipped: {path} not installed (apt-get install {package})");
    None
}

/// containerd on its own socket, root and state; stopped (and its containers with it) on drop.
struct Containerd {
    child: Child,
    socket: PathBuf,
    rootfs: PathBuf,
    _dir: TempDir,
}

impl Containerd {
    fn start(busybox: &Path) -> Containerd {
        let dir = TempDir::new("containerd");
        let d = dir.path().to_path_buf();
        let socket = d.join("containerd.sock");
        let config = d.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = {:?}\nstate = {:?}\n\
                 # Only containerd's own API: the CRI plugin would look for CNI and images.\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = {:?}\n[ttrpc]\n  address = {:?}\n",
                d.join("root"),
                d.join("state"),
                socket,
                d.join("containerd.sock.ttrpc"),
            ),
        )
        .unwrap();
        // The container's root: busybox-static and the links the commands need.
        let rootfs = d.join("rootfs");
        for sub in ["bin", "proc", "sys", "dev", "tmp", "etc", "models"] {
            std::fs::create_dir_all(rootfs.join(sub)).unwrap();
        }
        std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
        for cmd in ["sh", "cat", "sleep"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(cmd)).unwrap();
        }
        let log_path = d.join("containerd.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting containerd");
        let c = Containerd {
            child,
            socket,
            rootfs,
            _dir: dir,
        };
        let deadline = Instant::now() + secs(20);
        while c
            .ctr(&["version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            assert!(
                Instant::now() < deadline,
                "containerd did not answer on {}: {}",
                c.socket.display(),
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// `ctr` on our socket, in the kubelet's containerd namespace.
    fn ctr(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io"])
            .args(args);
        c
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // SIGTERM: containerd stops; the shims of exited containers go with their tasks.
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// A pod as the kubelet makes it: a sandbox container carrying the pod's labels, and its
/// containers carrying the kubelet's `io.kubernetes.*` labels, in
/// `/kubepods/besteffort/pod<uid>/<container id>` (kubelet's cgroupfs layout).
struct Pod<'a> {
    containerd: &'a Containerd,
    namespace: &'a str,
    name: &'a str,
    uid: String,
}

fn hex_id(seed: &str) -> String {
    // 64 hex characters, as runtimes' ids are (the cgroup parser counts nothing shorter).
    let mut out = String::new();
    let mut x: u64 = 0xcbf2_9ce4_8422_2325 ^ std::process::id() as u64;
    for b in seed.bytes().cycle().take(64) {
        x = (x ^ b as u64).wrapping_mul(0x100_0000_01b3);
        out.push(char::from_digit((x >> 60) as u32 & 0xf, 16).unwrap());
    }
    out
}

impl<'a> Pod<'a> {
    fn create(containerd: &'a Containerd, namespace: &'a str, name: &'a str, labels: &[&str]) -> Pod<'a> {
        let id = hex_id(name);
        let uid = format!(
            "{}-{}-4{}-8{}-{}",
            &id[..8],
            &id[8..12],
            &id[13..16],
            &id[17..20],
            &id[20..32]
        );
        let pod = Pod {
            containerd,
            namespace,
            name,
            uid,
        };
        let sandbox = format!("sandbox-{}", &id[..12]);
        let mut args = vec!["containers", "create", "--rootfs"];
        let kind = "io.cri-containerd.kind=sandbox".to_string();
        let base = pod.kubelet_labels(None);
        args.extend(["--label", kind.as_str()]);
        for l in base.iter().map(String::as_str).chain(labels.iter().copied()) {
            args.extend(["--label", l]);
        }
        let rootfs = containerd.rootfs.to_str().unwrap();
        args.extend([rootfs, sandbox.as_str(), "/bin/sleep", "1"]);
        let out = containerd.ctr(&args).output().unwrap();
        assert!(
            out.status.success(),
            "ctr containers create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pod
    }

    fn kubelet_labels(&self, container: Option<&str>) -> Vec<String> {
        let mut l = vec![
            format!("io.kubernetes.pod.name={}", self.name),
            format!("io.kubernetes.pod.namespace={}", self.namespace),
            format!("io.kubernetes.pod.uid={}", self.uid),
        ];
        if let Some(c) = container {
            l.push(format!("io.kubernetes.container.name={c}"));
            l.push("io.cri-containerd.kind=container".into());
        }
        l
    }

    /// Runs `command` in a new container of the pod (the models directory at /models) to its end.
    fn run(&self, container: &str, models: &Path, command: &[&str]) {
        let id = hex_id(&format!("{}/{container}", self.name));
        let cgroup = format!("/kubepods/besteffort/pod{}/{id}", self.uid);
        let mount = format!("type=bind,src={},dst=/models,options=rbind:ro", models.display());
        let labels = self.kubelet_labels(Some(container));
        let mut args = vec![
            "run",
            "--rm",
            "--rootfs",
            "--cgroup",
            cgroup.as_str(),
            "--mount",
            mount.as_str(),
        ];
        for l in &labels {
            args.extend(["--label", l.as_str()]);
        }
        args.extend([self.containerd.rootfs.to_str().unwrap(), id.as_str()]);
        args.extend(command);
        let out = self.containerd.ctr(&args).stdout(Stdio::null()).output().unwrap();
        assert!(
            out.status.success(),
            "ctr run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn what_a_container_reads_names_its_pod_and_a_host_process_cannot_claim_one() {
    llmwatch_e2e::require_root();
    let (Some(_), Some(_), Some(_), Some(busybox)) = (
        tool("/usr/bin/containerd", "containerd"),
        tool("/usr/bin/ctr", "containerd"),
        tool("/usr/sbin/runc", "runc"),
        tool("/bin/busybox", "busybox-static"),
    ) else {
        return;
    };
    let containerd = Containerd::start(&busybox);
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
