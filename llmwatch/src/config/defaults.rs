//! Built-in defaults that are lists or come from the host.
use std::time::Duration;

use super::{ExfilTool, Pattern, ServerIdentity};

/// Start-up window of the built-in servers: loading tens of GB of weights takes minutes.
pub const DEFAULT_STARTUP_WINDOW: Duration = Duration::from_secs(600);

/// Built-in inference servers. Each is recognised by the way it is started, as tightly as the
/// common launch forms allow: a loose `*vllm*` on the command line would also exempt
/// `cp /models/vllm/… /tmp`. Names are easy to fake all the same, so production files should pin
/// servers further with `users`, `containers` or `cgroups`.
const SERVERS: &[(&str, &[&str], &[&str])] = &[
    // (name, comm globs, argv globs); a script's comm is the script's file name.
    ("vllm", &[], &["*vllm.entrypoints*", "*vllm serve*"]),
    (
        "tgi",
        &["text-generation-launcher", "text-generation-server"],
        &[],
    ),
    ("triton", &["tritonserver"], &[]),
    (
        "ollama",
        &[],
        &["*ollama serve*", "*ollama runner*", "*ollama_llama_server*"],
    ),
    ("llama.cpp", &["llama-server"], &[]),
    ("sglang", &[], &["*sglang.launch_server*", "*sglang serve*"]),
    (
        "torchserve",
        &[],
        &["*org.pytorch.serve.ModelServer*", "*model_service_worker*"],
    ),
    ("lmdeploy", &[], &["*lmdeploy serve*", "*lmdeploy.serve*"]),
    ("tensorrt-llm", &[], &["*trtllm-serve*", "*-m tensorrt_llm*"]),
];

pub fn servers() -> Vec<ServerIdentity> {
    let pats = |v: &[&str]| {
        v.iter()
            .map(|p| Pattern::new(p).expect("built-in glob"))
            .collect()
    };
    SERVERS
        .iter()
        .map(|(name, comm, argv)| ServerIdentity {
            name: name.to_string(),
            exe: Vec::new(),
            comm: pats(comm),
            argv: pats(argv),
            containers: Vec::new(),
            cgroups: Vec::new(),
            users: Vec::new(),
            namespaces: Vec::new(),
            pod_labels: Vec::new(),
            startup_window: DEFAULT_STARTUP_WINDOW,
        })
        .collect()
}

/// Programs that may open GPUs: the servers above (Python ones run as `python*`), NVIDIA's
/// management tools and daemons.
const GPU_ALLOW: &[&str] = &[
    "python*",
    "vllm",
    "lmdeploy",
    "text-generation*",
    "tritonserver",
    "ollama*",
    "llama-server",
    "trtllm-serve",
    "nvidia-smi",
    "nvidia-persistenced",
    "nvidia-cuda-mps*",
    "dcgm*",
    "nv-hostengine",
];

pub fn gpu_allow() -> Vec<Pattern> {
    GPU_ALLOW
        .iter()
        .map(|p| Pattern::new(p).expect("built-in glob"))
        .collect()
}

/// Upload, sync and peer-to-peer tools. `nc`, `curl` and the like are left out: they have too
/// many honest uses, and `weight.exfiltration` catches them by correlating reads and sends.
const EXFIL_TOOLS: &[&str] = &[
    "huggingface-cli upload",
    "huggingface-cli upload-large-folder",
    "hf upload",
    "hf upload-large-folder",
    "git-lfs",
    "rclone",
    "aws s3",
    "s3cmd",
    "gsutil",
    "gcloud storage",
    "az storage",
    "azcopy",
    "scp",
    "sftp",
    "rsync",
    "transmission-cli",
    "aria2c",
    "qbittorrent-nox",
    "rtorrent",
    "croc",
    "magic-wormhole",
    "wormhole",
];

pub fn exfil_tools() -> Vec<ExfilTool> {
    EXFIL_TOOLS
        .iter()
        .map(|t| ExfilTool::parse(t).expect("built-in tool"))
        .collect()
}

/// This host's name (the UTS namespace's, as `hostname` prints it).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it on
    // success (and the last byte stays 0 if the name was cut).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match String::from_utf8_lossy(&buf[..end]).trim() {
        name if rc == 0 && !name.is_empty() => name.to_string(),
        _ => "localhost".into(),
    }
}

/// The host's time zone: `$TZ` (how a container is usually told; iana-time-zone reads only
/// the host's files), else what iana-time-zone finds (`/etc/localtime`'s link target,
/// `/etc/timezone`), else UTC. Values that are not IANA names (POSIX rules like `CET-1CEST`)
/// are skipped.
pub fn local_timezone() -> chrono_tz::Tz {
    local_timezone_from(std::env::var("TZ").ok(), iana_time_zone::get_timezone().ok())
}

pub(crate) fn local_timezone_from(env: Option<String>, host: Option<String>) -> chrono_tz::Tz {
    // `:Europe/Paris` (glibc's form of TZ naming a file under zoneinfo).
    let name = |s: &str| s.trim().trim_start_matches(':').parse::<chrono_tz::Tz>().ok();
    env.as_deref()
        .and_then(name)
        .or_else(|| host.as_deref().and_then(name))
        .unwrap_or(chrono_tz::UTC)
}
