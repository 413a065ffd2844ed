//! Secrets never leave the agent: command-line arguments that carry tokens or passwords are
//! redacted before an event or alert is built from them (`hf upload --token hf_...`,
//! `curl -u user:pass`, `https://user:pass@host`, `AWS_SECRET_ACCESS_KEY=...`).

pub const REDACTED: &str = "<redacted>";

/// Option and variable names whose value is a secret (matched case-insensitively, in part).
const SECRET_NAMES: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "pwd",
    "apikey",
    "api-key",
    "api_key",
    "auth",
    "credential",
    "private-key",
    "access-key",
    "access_key",
];

/// Prefixes of well-known token formats.
const TOKEN_PREFIXES: &[&str] = &[
    "hf_",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "github_pat_",
    "glpat-",
    "sk-",
    "xoxb-",
    "xoxp-",
    "AKIA",
    "ASIA",
    "AIza",
];

fn is_secret_name(name: &str) -> bool {
    let n = name.trim_start_matches('-').to_ascii_lowercase();
    !n.is_empty() && SECRET_NAMES.iter().any(|s| n.contains(s))
}

fn looks_like_token(s: &str) -> bool {
    TOKEN_PREFIXES.iter().any(|p| {
        s.strip_prefix(p).is_some_and(|rest| {
            rest.len() >= 12
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
    })
}

/// `scheme://user:pass@host` -> `scheme://user:<redacted>@host`.
fn redact_url_password(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let at = rest.find('@')?;
    let userinfo = &rest[..at];
    if rest[..at].contains('/') {
        return None;
    }
    let (user, _) = userinfo.split_once(':')?;
    Some(format!("{scheme}://{user}:{REDACTED}@{}", &rest[at + 1..]))
}

fn redact_one(arg: &str) -> Option<String> {
    if looks_like_token(arg) {
        return Some(REDACTED.into());
    }
    if let Some(u) = redact_url_password(arg) {
        return Some(u);
    }
    if let Some((name, value)) = arg.split_once('=') {
        if !value.is_empty() && is_secret_name(name) {
            return Some(format!("{name}={REDACTED}"));
        }
        if looks_like_token(value) {
            return Some(format!("{name}={REDACTED}"));
        }
    }
    if let Some(rest) = arg
        .strip_prefix("Bearer ")
        .or_else(|| arg.strip_prefix("Authorization: "))
        && !rest.is_empty()
    {
        return Some(format!("{}{REDACTED}", &arg[..arg.len() - rest.len()]));
    }
    None
}

/// Redacts secrets in an argument vector (in place of the value, keeping the option names so
/// the command stays readable).
pub fn argv(args: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut next_is_secret = false;
    for a in args {
        if next_is_secret && !a.starts_with('-') {
            out.push(REDACTED.to_string());
            next_is_secret = false;
            continue;
        }
        next_is_secret = false;
        if let Some(r) = redact_one(&a) {
            out.push(r);
            continue;
        }
        // `--token VALUE`, `-u user:pass` (curl)
        if a.starts_with('-') && !a.contains('=') && (is_secret_name(&a) || a == "-u" || a == "--user") {
            next_is_secret = true;
        }
        out.push(a);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(args: &[&str]) -> Vec<String> {
        argv(args.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn options_and_values_that_carry_secrets() {
        assert_eq!(
            r(&[
                "huggingface-cli",
                "upload",
                "org/m",
                ".",
                "--token",
                "hf_abcdefghijklmnopqrstuvwxyz"
            ]),
            ["huggingface-cli", "upload", "org/m", ".", "--token", REDACTED]
        );
        assert_eq!(r(&["tool", "--api-key=abc123"]), ["tool", "--api-key=<redacted>"]);
        assert_eq!(
            r(&["env", "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI"]),
            ["env", "AWS_SECRET_ACCESS_KEY=<redacted>"]
        );
        assert_eq!(
            r(&["curl", "-u", "admin:hunter2", "http://x"]),
            ["curl", "-u", REDACTED, "http://x"]
        );
        assert_eq!(
            r(&["git", "clone", "https://bob:s3cret@example.com/r.git"]),
            ["git", "clone", "https://bob:<redacted>@example.com/r.git"]
        );
        assert_eq!(r(&["x", "ghp_0123456789abcdefABCDEF"]), ["x", REDACTED]);
        assert_eq!(
            r(&["curl", "-H", "Authorization: Bearer abc.def"]),
            ["curl", "-H", "Authorization: <redacted>"]
        );
    }

    #[test]
    fn ordinary_arguments_are_kept() {
        let plain = [
            "python3",
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            "/models/llama",
            "--port=8000",
            "https://example.com/x",
        ];
        assert_eq!(r(&plain), plain);
        assert_eq!(r(&["cat", "/models/keys.txt"]), ["cat", "/models/keys.txt"]);
    }
}
