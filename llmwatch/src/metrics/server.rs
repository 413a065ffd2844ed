//! The HTTP endpoint: `GET /metrics`, `/healthz`, `/readyz`, served by hyper (HTTP/1.1).
//!
//! Each connection is served by its own task and answered once (`Connection: close`). hyper
//! parses the request (a head too large is 431, garbage 400) and drops a client that has not
//! sent its head within the read timeout; a whole connection is given the read and write
//! timeouts together, so slow or garbage clients cost one small task each for a few seconds
//! and never hold up a scrape. At most `max_connections` are served at once.
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use http_body_util::Full;
use hyper::{Method, Request, StatusCode, body::Bytes, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinHandle};

use super::{CONTENT_TYPE, Metrics};

/// What `/healthz` and `/readyz` report.
#[derive(Debug)]
pub struct Health {
    /// Probes attached and the watched set loaded: `/readyz` answers 200.
    pub ready: AtomicBool,
    /// The agent's main loop is running: `/healthz` answers 200.
    pub live: AtomicBool,
}

impl Health {
    /// Live, not yet ready.
    pub fn new() -> Self {
        Health {
            ready: AtomicBool::new(false),
            live: AtomicBool::new(true),
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Relaxed)
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

/// Limits on what one client may cost.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    /// Largest request head (request line and headers) read; hyper's buffer, at least 8 KiB.
    pub max_request: usize,
    /// Time allowed to send the request head.
    pub read_timeout: Duration,
    /// Time allowed to take the response.
    pub write_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request: 8 * 1024,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            max_connections: 256,
        }
    }
}

/// Serves `GET /metrics` (text format 0.0.4), `/healthz` (200 `ok` while live, else 503) and
/// `/readyz` (200 when ready, else 503); 404 for other paths, 405 for methods other than GET
/// (and HEAD). Binds before returning, so a bind error (address in use, no permission) is the
/// caller's to report; then serves on a tokio task until the handle is aborted.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    serve_with(addr, metrics, health, Limits::default()).await
}

pub(super) async fn serve_with(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    limits: Limits,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(accept_loop(listener, metrics, health, limits));
    Ok((bound, task))
}

async fn accept_loop(listener: TcpListener, metrics: Arc<Metrics>, health: Arc<Health>, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let (metrics, health) = (metrics.clone(), health.clone());
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, &metrics, &health, limits).await {
                        log::debug!("metrics endpoint: {peer}: {e}");
                    }
                    drop(slot);
                });
            }
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                log::warn!("metrics endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
    limits: Limits,
) -> Result<(), String> {
    let service = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| {
        // Origin form (`/metrics`) or absolute form (`http://host/metrics`); a bare name
        // (`GET metrics`) is hyper's authority form, which only CONNECT may use.
        let response = match req.uri().path_and_query() {
            None => Response::text(400, "bad request: the target must be a path"),
            Some(_) => respond(req.method(), req.uri().path(), metrics, health),
        };
        async move { Ok::<_, Infallible>(response.into_hyper()) }
    });
    let serve = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout)
        .max_buf_size(limits.max_request.max(8192))
        .keep_alive(false)
        .title_case_headers(true)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(limits.read_timeout + limits.write_timeout, serve).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("client did not take the response in time".into()),
    }
}

#[derive(Debug)]
pub(super) struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    fn text(status: u16, body: &str) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
        }
    }

    /// With its headers; hyper leaves the body out for HEAD and keeps Content-Length.
    fn into_hyper(self) -> hyper::Response<Full<Bytes>> {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = hyper::Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, self.content_type)
            .header(header::CONTENT_LENGTH, self.body.len())
            .header(header::CACHE_CONTROL, "no-store");
        if status == StatusCode::METHOD_NOT_ALLOWED {
            r = r.header(header::ALLOW, "GET, HEAD");
        }
        r.body(Full::new(Bytes::from(self.body)))
            .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())))
    }
}

/// The response to a request for `path` (the query already left out by the URI parser).
pub(super) fn respond(method: &Method, path: &str, metrics: &Metrics, health: &Health) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return Response::text(405, "method not allowed");
    }
    match path {
        "/metrics" => Response {
            status: 200,
            content_type: CONTENT_TYPE,
            body: metrics.render().into_bytes(),
        },
        "/healthz" if health.is_live() => Response::text(200, "ok"),
        "/healthz" => Response::text(503, "not live"),
        "/readyz" if health.is_ready() => Response::text(200, "ready"),
        "/readyz" => Response::text(503, "not ready"),
        _ => Response::text(404, "not found: try /metrics, /healthz or /readyz"),
    }
}
