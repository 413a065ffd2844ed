//! Asking the container runtime who a container is: gRPC over the runtime's Unix socket.
//!
//! Two APIs, one trait ([`PodSource`]): containerd's own (its Containers service: a
//! container's labels, and the pod's sandbox found by label) and the Kubernetes CRI (CRI-O:
//! `ListContainers` by id, then `PodSandboxStatus` of its sandbox). The messages are declared
//! here with prost's derive, only the fields read: the maintained client crates
//! (`containerd-client`, `k8s-cri`) generate all of their APIs from .proto files at build time,
//! which needs protoc on every build machine, for three calls. Unknown fields are skipped by
//! the protobuf decoder, so newer runtimes' additions do no harm.
use std::{collections::BTreeMap, future::Future, path::PathBuf, pin::Pin, time::Duration};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use super::{LABEL_POD_UID, RuntimePod};
use crate::config::{ContainersConfig, DEFAULT_RUNTIME_SOCKETS, RuntimeApi};

/// Why a runtime could not answer.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{call}: {status}")]
    Call {
        call: &'static str,
        #[source]
        status: tonic::Status,
    },
    #[error("bad containerd namespace name {0:?}")]
    Namespace(String),
}

pub type Lookup = Pin<Box<dyn Future<Output = Result<Option<RuntimePod>, SourceError>> + Send>>;

/// A source that can name the pod of a container id (`pod_uid`: the one the container's cgroup
/// path names, if any). `Ok(None)`: the source does not know the container, or it is not a
/// Kubernetes one.
pub trait PodSource: Send + Sync {
    fn lookup(&self, container_id: String, pod_uid: Option<String>) -> Lookup;
    /// Which API and where: for the start-up report.
    fn describe(&self) -> String;
}

/// The source the configuration asks for; `None` when pod names are off or no runtime
/// socket exists (then events carry the cgroup's pod UID only). Connecting is lazy: a runtime
/// that is down at start-up is tried again on each lookup.
pub fn from_config(c: &ContainersConfig) -> Option<Box<dyn PodSource>> {
    if c.runtime == RuntimeApi::Off {
        return None;
    }
    let socket = match &c.runtime_socket {
        Some(s) => s.clone(),
        None => DEFAULT_RUNTIME_SOCKETS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())?,
    };
    let api = match c.runtime {
        RuntimeApi::Auto if socket.to_string_lossy().contains("crio") => RuntimeApi::Cri,
        RuntimeApi::Auto => RuntimeApi::Containerd,
        other => other,
    };
    let channel = channel(socket.clone(), c.lookup_timeout);
    Some(match api {
        RuntimeApi::Cri => Box::new(Cri { channel, socket }),
        _ => Box::new(Containerd { channel, socket }),
    })
}

fn channel(socket: PathBuf, timeout: Duration) -> Channel {
    // The URI is not used: every connection goes to the socket.
    Endpoint::from_static("http://runtime.invalid")
        .timeout(timeout)
        .connect_timeout(timeout)
        .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
            let socket = socket.clone();
            async move { tokio::net::UnixStream::connect(socket).await.map(TokioIo::new) }
        }))
}

async fn unary<Req, Resp>(
    channel: &Channel,
    call: &'static str,
    namespace: Option<&str>,
    req: Req,
) -> Result<Resp, SourceError>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let err = |status| SourceError::Call { call, status };
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| err(tonic::Status::unavailable(e.to_string())))?;
    let mut request = tonic::Request::new(req);
    if let Some(ns) = namespace {
        let v = ns.parse().map_err(|_| SourceError::Namespace(ns.into()))?;
        request.metadata_mut().insert("containerd-namespace", v);
    }
    let path = http::uri::PathAndQuery::from_static(call);
    grpc.unary(request, path, tonic_prost::ProstCodec::<Req, Resp>::default())
        .await
        .map(tonic::Response::into_inner)
        .map_err(err)
}

/// containerd's API, in each of its namespaces (the kubelet's containers are in `k8s.io`).
pub struct Containerd {
    channel: Channel,
    socket: PathBuf,
}

mod containerd_api {
    use std::collections::HashMap;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Container {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(map = "string, string", tag = "2")]
        pub labels: HashMap<String, String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GetContainerRequest {
        #[prost(string, tag = "1")]
        pub id: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GetContainerResponse {
        #[prost(message, optional, tag = "1")]
        pub container: Option<Container>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListContainersRequest {
        #[prost(string, repeated, tag = "1")]
        pub filters: Vec<String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListContainersResponse {
        #[prost(message, repeated, tag = "1")]
        pub containers: Vec<Container>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Namespace {
        #[prost(string, tag = "1")]
        pub name: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListNamespacesRequest {
        #[prost(string, tag = "1")]
        pub filter: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListNamespacesResponse {
        #[prost(message, repeated, tag = "1")]
        pub namespaces: Vec<Namespace>,
    }
}

const CONTAINERD_GET: &str = "/containerd.services.containers.v1.Containers/Get";
const CONTAINERD_LIST: &str = "/containerd.services.containers.v1.Containers/List";
const CONTAINERD_NAMESPACES: &str = "/containerd.services.namespaces.v1.Namespaces/List";

fn sorted(m: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

/// containerd's filter syntax quotes a value with Go's strconv rules; ours are label values.
fn quoted(s: &str) -> String {
    format!("{:?}", s)
}

impl Containerd {
    async fn lookup_in(channel: Channel, id: String) -> Result<Option<RuntimePod>, SourceError> {
        use containerd_api::*;
        let namespaces: ListNamespacesResponse = unary(
            &channel,
            CONTAINERD_NAMESPACES,
            None,
            ListNamespacesRequest::default(),
        )
        .await?;
        // The kubelet's namespace first: that is where pods are.
        let mut names: Vec<String> = namespaces.namespaces.into_iter().map(|n| n.name).collect();
        names.sort_by_key(|n| n != "k8s.io");
        for ns in names {
            let got: Result<GetContainerResponse, _> = unary(
                &channel,
                CONTAINERD_GET,
                Some(&ns),
                GetContainerRequest { id: id.clone() },
            )
            .await;
            let container = match got {
                Ok(r) => r.container,
                Err(SourceError::Call { status, .. }) if status.code() == tonic::Code::NotFound => continue,
                Err(e) => return Err(e),
            };
            let Some(container) = container else { continue };
            let labels = sorted(container.labels);
            let Some(mut pod) = RuntimePod::from_container_labels(&labels, "containerd") else {
                return Ok(None);
            };
            // The pod's labels are on its sandbox: containerd's CRI plugin gives the sandbox
            // the pod's labels and marks it `io.cri-containerd.kind=sandbox`.
            if labels.get("io.cri-containerd.kind").map(String::as_str) == Some("sandbox") {
                pod.set_pod_labels(&labels);
            } else if !pod.pod_uid.is_empty() {
                let filter = format!(
                    "labels.\"io.cri-containerd.kind\"=={},labels.\"{LABEL_POD_UID}\"=={}",
                    quoted("sandbox"),
                    quoted(&pod.pod_uid)
                );
                let list: ListContainersResponse = unary(
                    &channel,
                    CONTAINERD_LIST,
                    Some(&ns),
                    ListContainersRequest {
                        filters: vec![filter],
                    },
                )
                .await?;
                if let Some(sandbox) = list.containers.into_iter().next() {
                    pod.set_pod_labels(&sorted(sandbox.labels));
                }
            }
            return Ok(Some(pod));
        }
        Ok(None)
    }
}

impl PodSource for Containerd {
    fn lookup(&self, container_id: String, _pod_uid: Option<String>) -> Lookup {
        Box::pin(Self::lookup_in(self.channel.clone(), container_id))
    }
    fn describe(&self) -> String {
        format!("containerd API at {}", self.socket.display())
    }
}

/// The Kubernetes CRI (`runtime.v1`), as CRI-O serves it.
pub struct Cri {
    channel: Channel,
    socket: PathBuf,
}

mod cri_api {
    use std::collections::HashMap;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ContainerFilter {
        #[prost(string, tag = "1")]
        pub id: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListContainersRequest {
        #[prost(message, optional, tag = "1")]
        pub filter: Option<ContainerFilter>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ContainerMetadata {
        #[prost(string, tag = "1")]
        pub name: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Container {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(string, tag = "2")]
        pub pod_sandbox_id: String,
        #[prost(message, optional, tag = "3")]
        pub metadata: Option<ContainerMetadata>,
        #[prost(map = "string, string", tag = "8")]
        pub labels: HashMap<String, String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListContainersResponse {
        #[prost(message, repeated, tag = "1")]
        pub containers: Vec<Container>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxStatusRequest {
        #[prost(string, tag = "1")]
        pub pod_sandbox_id: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxMetadata {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub uid: String,
        #[prost(string, tag = "3")]
        pub namespace: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxStatus {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(message, optional, tag = "2")]
        pub metadata: Option<PodSandboxMetadata>,
        #[prost(map = "string, string", tag = "7")]
        pub labels: HashMap<String, String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxStatusResponse {
        #[prost(message, optional, tag = "1")]
        pub status: Option<PodSandboxStatus>,
    }
}

const CRI_LIST_CONTAINERS: &str = "/runtime.v1.RuntimeService/ListContainers";
const CRI_SANDBOX_STATUS: &str = "/runtime.v1.RuntimeService/PodSandboxStatus";

impl Cri {
    async fn lookup_in(channel: Channel, id: String) -> Result<Option<RuntimePod>, SourceError> {
        use cri_api::*;
        let list: ListContainersResponse = unary(
            &channel,
            CRI_LIST_CONTAINERS,
            None,
            ListContainersRequest {
                filter: Some(ContainerFilter { id: id.clone() }),
            },
        )
        .await?;
        let Some(c) = list.containers.into_iter().find(|c| c.id == id) else {
            return Ok(None);
        };
        let labels = sorted(c.labels);
        let Some(mut pod) = RuntimePod::from_container_labels(&labels, "cri") else {
            return Ok(None);
        };
        if let Some(m) = c.metadata.filter(|m| !m.name.is_empty()) {
            pod.container = m.name;
        }
        let status: PodSandboxStatusResponse = unary(
            &channel,
            CRI_SANDBOX_STATUS,
            None,
            PodSandboxStatusRequest {
                pod_sandbox_id: c.pod_sandbox_id,
            },
        )
        .await?;
        if let Some(s) = status.status {
            pod.set_pod_labels(&sorted(s.labels));
        }
        Ok(Some(pod))
    }
}

impl PodSource for Cri {
    fn lookup(&self, container_id: String, _pod_uid: Option<String>) -> Lookup {
        Box::pin(Self::lookup_in(self.channel.clone(), container_id))
    }
    fn describe(&self) -> String {
        format!("CRI at {}", self.socket.display())
    }
}
