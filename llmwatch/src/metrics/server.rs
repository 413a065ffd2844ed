//! A minimal HTTP/1.1 endpoint: `GET /metrics`, `/healthz`, `/readyz`.
//!
//! Each connection is served by its own task and answered once (`Connection: close`). The
//! request head is read with a deadline and a size cap, so slow or garbage clients cost one
//! small task each for a few seconds and never hold up a scrape.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinHandle,
};

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
    /// Largest request head (request line and headers) read.
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

/// How reading a request head ended.
enum Head {
    Complete(Vec<u8>),
    TooLarge,
    /// The client closed the connection before the end of the head.
    Closed,
}

async fn read_head(stream: &mut TcpStream, max: usize) -> std::io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let room = (max - buf.len()).min(chunk.len());
        let n = stream.read(&mut chunk[..room]).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf[from..]) {
            buf.truncate(from + end);
            return Ok(Head::Complete(buf));
        }
        if buf.len() >= max {
            return Ok(Head::TooLarge);
        }
    }
}

/// Where the blank line that ends a request head ends (CRLF CRLF, or bare LF LF).
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn connection(
    mut stream: TcpStream,
    metrics: &Metrics,
    health: &Health,
    limits: Limits,
) -> std::io::Result<()> {
    let head = tokio::time::timeout(limits.read_timeout, read_head(&mut stream, limits.max_request)).await;
    let (response, unread_input) = match head {
        Err(_) => (Response::text(408, "request timeout"), true),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(Head::Closed)) => return Ok(()),
        Ok(Ok(Head::TooLarge)) => (Response::text(431, "request head too large"), true),
        Ok(Ok(Head::Complete(head))) => (respond(&head, metrics, health), false),
    };
    let bytes = response.to_bytes();
    let send = async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await?;
        if unread_input {
            drain(&mut stream).await;
        }
        Ok(())
    };
    tokio::time::timeout(limits.write_timeout, send)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "client did not take the response"))?
}

/// Takes (and discards) some of what a client is still sending after its answer: closing a
/// socket with unread input resets the connection, and the client may lose the answer.
async fn drain(stream: &mut TcpStream) {
    let mut sink = [0u8; 4096];
    let mut left = 64 * 1024usize;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

#[derive(Debug)]
pub(super) struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// HEAD: headers as for GET, no body.
    pub head_only: bool,
}

impl Response {
    fn text(status: u16, body: &str) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
            head_only: false,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            505 => "HTTP Version Not Supported",
            _ => "",
        };
        let allow = if self.status == 405 {
            "Allow: GET, HEAD\r\n"
        } else {
            ""
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if !self.head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// The response to one request head.
pub(super) fn respond(head: &[u8], metrics: &Metrics, health: &Health) -> Response {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else {
        return Response::text(400, "bad request");
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Response::text(400, "bad request");
    };
    if method.is_empty() || !target.starts_with('/') || !version.starts_with("HTTP/") {
        return Response::text(400, "bad request");
    }
    if !version.starts_with("HTTP/1.") {
        return Response::text(505, "HTTP/1.x only");
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return Response::text(405, "method not allowed");
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    let mut response = match path {
        "/metrics" => Response {
            status: 200,
            content_type: CONTENT_TYPE,
            body: metrics.render().into_bytes(),
            head_only: false,
        },
        "/healthz" if health.is_live() => Response::text(200, "ok"),
        "/healthz" => Response::text(503, "not live"),
        "/readyz" if health.is_ready() => Response::text(200, "ready"),
        "/readyz" => Response::text(503, "not ready"),
        _ => Response::text(404, "not found: try /metrics, /healthz or /readyz"),
    };
    response.head_only = head_only;
    response
}
