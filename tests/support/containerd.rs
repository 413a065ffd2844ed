//! A real containerd (Debian's containerd and runc) running containers the way the kubelet
//! does: `ctr run --rootfs` on a busybox-static root (no image, no registry), labelled with the
//! kubelet's `io.kubernetes.*` labels, in a kubelet-style cgroup, with the models directory
//! bind-mounted. Used by tests/pods.rs (pod identity) and tests/alertmanager.rs (a pod's
//! incident in Alertmanager).
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{TempDir, debian_file, require_root, secs};

/// containerd on its own socket, root and state; stopped (and its containers with it) on drop.
pub struct Containerd {
    child: Child,
    pub socket: PathBuf,
    rootfs: PathBuf,
    _dir: TempDir,
}

impl Containerd {
    /// Root, containerd, ctr, runc and busybox-static, then containerd started; `None` (the
    /// test said why) without the tools outside CI.
    pub fn start_if_installed() -> Option<Containerd> {
        require_root();
        let (Some(_), Some(_), Some(_), Some(busybox)) = (
            debian_file("/usr/bin/containerd", "containerd"),
            debian_file("/usr/bin/ctr", "containerd"),
            debian_file("/usr/sbin/runc", "runc"),
            debian_file("/bin/busybox", "busybox-static"),
        ) else {
            return None;
        };
        Some(Containerd::start(&busybox))
    }

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

    /// `containers.runtime` and `runtime_socket` for this containerd (indented by two).
    pub fn config(&self) -> String {
        format!(
            "  runtime: containerd\n  runtime_socket: {}\n",
            self.socket.display()
        )
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
pub struct Pod<'a> {
    containerd: &'a Containerd,
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: String,
}

fn hex_id(seed: &str) -> String {
    // 64 hex characters, as runtimes' ids are (the cgroup parser counts nothing shorter).
    // FNV-1a over the whole seed first, so ids of seeds with a common prefix differ from the
    // first character on.
    let mut x: u64 = 0xcbf2_9ce4_8422_2325 ^ std::process::id() as u64;
    for b in seed.bytes() {
        x = (x ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    let mut out = String::new();
    for i in 0..64u64 {
        x = (x ^ i).wrapping_mul(0x100_0000_01b3);
        out.push(char::from_digit((x >> 60) as u32 & 0xf, 16).unwrap());
    }
    out
}

impl<'a> Pod<'a> {
    pub fn create(containerd: &'a Containerd, namespace: &'a str, name: &'a str, labels: &[&str]) -> Pod<'a> {
        // Ids (and so cgroups, which are the host's) differ between pods of the same name in
        // two namespaces: the tests run side by side.
        let id = hex_id(&format!("{namespace}/{name}"));
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

    /// The id `run` gives the pod's container `container`.
    pub fn container_id(&self, container: &str) -> String {
        hex_id(&format!("{}/{}/{container}", self.namespace, self.name))
    }

    /// Runs `command` in a new container of the pod (the models directory at /models) to its end.
    pub fn run(&self, container: &str, models: &Path, command: &[&str]) {
        let out = self
            .ctr_run(container, models, command)
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctr run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts `command` in a new container of the pod (the models directory at /models) with
    /// its stdin a pipe from the test: a command that reads it (`read _`) lives until the test
    /// ends it.
    pub fn start(&self, container: &str, models: &Path, command: &[&str]) -> Attached {
        let child = self
            .ctr_run(container, models, command)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("starting ctr run");
        Attached { child }
    }

    /// `ctr run --rm` of `command` in a new container of the pod (the models directory at
    /// /models), attached: the container's stdin, stdout and stderr are the command's.
    fn ctr_run(&self, container: &str, models: &Path, command: &[&str]) -> Command {
        let id = self.container_id(container);
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
        self.containerd.ctr(&args)
    }
}

/// A container `ctr run --rm` runs attached, its stdin a pipe from the test. Ended on drop as
/// by [`Attached::end`] (a test that failed leaves no container, and no shim waiting for a
/// containerd that is gone), killed if it has not exited 10 s (scaled) after that.
pub struct Attached {
    child: Child,
}

impl Attached {
    /// Whether the container is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Writes a line to the container's stdin and closes it, then waits for `ctr run --rm` to
    /// have removed the container: its exit status (the container's).
    pub fn end(mut self) -> std::process::ExitStatus {
        self.close_and_wait()
    }

    fn close_and_wait(&mut self) -> std::process::ExitStatus {
        use std::io::Write as _;
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = stdin.write_all(b"\n");
        }
        let deadline = Instant::now() + secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                return self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.close_and_wait();
    }
}
