//! `containers.kubelet`: the kubelet's pod list as a source of owners (see
//! `state::pods::kubelet`). Absent or `false`: not asked; `true` or a mapping: asked.
use super::{Checker, Node, Value, absolute_path, join, positive_duration, values};
use crate::config::KubeletConfig;

pub(super) const KEYS: &[&str] = &["url", "token_file", "ca_file", "insecure_skip_verify", "refresh"];

impl Checker {
    pub(super) fn kubelet(&mut self, node: &Node, slot: &mut Option<KubeletConfig>) {
        let p = "containers.kubelet";
        if let Value::Scalar { text, .. } = &node.value {
            match values::boolean(text) {
                Ok(on) => *slot = on.then(KubeletConfig::default),
                Err(_) => self.bad(
                    p,
                    node,
                    format!(
                        "expected the kubelet's settings (url:, token_file:, ...) or true/false, got {text:?}"
                    ),
                ),
            }
            return;
        }
        let f = self.fields(p, node, KEYS, p);
        let mut k = KubeletConfig::default();
        self.set(&f, p, "url", "an https:// URL", kubelet_url, &mut k.url);
        self.set(&f, p, "token_file", "a file", absolute_path, &mut k.token_file);
        self.set(&f, p, "ca_file", "a file", absolute_path, &mut k.ca_file);
        self.set(
            &f,
            p,
            "insecure_skip_verify",
            "true or false",
            values::boolean,
            &mut k.insecure_skip_verify,
        );
        self.set(&f, p, "refresh", "a duration", positive_duration, &mut k.refresh);
        if k.insecure_skip_verify
            && let Some(n) = f.get("ca_file")
        {
            self.warn(
                &join(p, "ca_file"),
                n,
                "insecure_skip_verify is true, so ca_file is not used: any certificate is accepted",
            );
        }
        *slot = Some(k);
    }
}

/// The URL as written (`${NAME}` kept for the agent to expand at start). Checked with every
/// `${NAME}` read as "1", which is both a valid host and a valid port, so what is judged is the
/// rest of the URL whatever the environment of `config validate` holds.
fn kubelet_url(s: &str) -> Result<String, String> {
    let k = KubeletConfig {
        url: s.to_string(),
        ..KubeletConfig::default()
    };
    k.pods_url(|_| Some("1".into()))?;
    Ok(s.to_string())
}
