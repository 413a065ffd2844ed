//! The agent's outgoing HTTP(S): one way to build a reqwest client and to say why a request
//! failed, shared by the webhook sink and the kubelet's pod list (`state::pods::kubelet`).
//!
//! Every client follows no redirects (a receiver or kubelet that redirects is misconfigured,
//! and following one would send a signed alert or a bearer token somewhere else), has the
//! agent's user agent and its timeouts set. TLS is rustls with the system's roots unless the
//! caller adds its own (the kubelet's CA).
use std::time::Duration;

/// `llmwatch/<version>`.
pub const USER_AGENT: &str = concat!("llmwatch/", env!("CARGO_PKG_VERSION"));

/// How a client reaches its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Through `HTTP(S)_PROXY` when the environment sets one.
    ProxyAllowed,
    /// Never through a proxy: this host's loopback, or the node's own kubelet.
    Direct,
}

/// A client builder with the settings every outgoing request of the agent has; the caller adds
/// TLS settings and builds it.
pub fn builder(timeout: Duration, route: Route) -> reqwest::ClientBuilder {
    let mut b = reqwest::Client::builder();
    if route == Route::Direct {
        b = b.no_proxy();
    }
    b.timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(USER_AGENT)
}

/// Whether `url` names this host's loopback (a receiver there is never reached through a proxy).
pub fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// How much of a refusing server's body is logged.
const EXCERPT_CHARS: usize = 200;

/// The start of a response body, one line, for logs.
pub async fn excerpt(mut resp: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < 4 * EXCERPT_CHARS {
        match resp.chunk().await {
            Ok(Some(c)) => buf.extend_from_slice(&c),
            _ => break,
        }
    }
    let s = String::from_utf8_lossy(&buf);
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(EXCERPT_CHARS)
        .collect();
    s.trim().to_string()
}

/// A reqwest error as text, with its causes (a TLS error says which certificate check failed)
/// but without the URL, whose path or query may carry a credential.
pub fn describe(e: reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let e = e.without_url();
    let mut out = what.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        let t = s.to_string();
        if !out.ends_with(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        src = s.source();
    }
    out
}
