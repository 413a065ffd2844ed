//! `weight.tamper`: a protected file was changed (written, truncated, renamed over, deleted,
//! opened for writing), a watched link now points elsewhere, or a file no longer matches the
//! manifest. A model swapped under a server's feet is OWASP LLM05.
use super::{
    Ctx, Rule, RuleId,
    flows::Flows,
    sink::{AlertSink, AlertSpec, agent_process},
};
use crate::{
    alerts::{AlertFile, AlertProcess, Window},
    config::{Severity, rules::basic_settings},
    enrich::FileView,
    events::{EventKind, TamperOp},
};

pub const ID: RuleId = RuleId::new("weight.tamper");

basic_settings!(Severity::High);

#[derive(Default)]
pub(crate) struct State;

impl Rule for State {
    fn on_event(&mut self, ctx: &Ctx<'_>, _flows: &Flows, sink: &mut AlertSink<'_>) {
        let Some(w) = &ctx.ev.weight else { return };
        let what = match &ctx.ev.event.kind {
            // O_WRONLY | O_RDWR | O_TRUNC on a protected file is a change, whoever does it.
            EventKind::FileOpen { flags, .. }
                if flags & (libc::O_WRONLY | libc::O_RDWR | libc::O_TRUNC) as u32 != 0 =>
            {
                "opened for writing"
            }
            EventKind::FileTamper { op, .. } => match op {
                TamperOp::Write => "written to",
                TamperOp::Truncate => "truncated",
                TamperOp::RenameFrom => "renamed away",
                TamperOp::RenameTo => "replaced by a rename over it",
                TamperOp::Unlink => "deleted",
                TamperOp::OpenTruncate => "opened with O_TRUNC",
                TamperOp::OpenWrite => "opened for writing",
                TamperOp::Unknown => "changed",
            },
            _ => return,
        };
        let p = &ctx.ev.process;
        sink.emit(AlertSpec {
            rule: ID,
            severity: None,
            summary: format!("{} (pid {}): protected file {} {what}", p.comm, p.pid, w.path.display()),
            time: ctx.t,
            process: AlertProcess::of(ctx.ev),
            files: vec![AlertFile::of(w, 0)],
            network: vec![],
            window: Window::at(ctx.t),
            key: format!("{}:{}:{}:{what}", p.pid, w.dev, w.ino),
        });
    }
}

/// A watched link (a Hugging Face snapshot name) now resolves to another file.
pub(super) fn link_repointed(sink: &mut AlertSink<'_>, link: &std::path::Path, now: &FileView, t: chrono::DateTime<chrono::Utc>) {
    let summary = format!(
        "{} now points to a different file ({}); the model behind that name was swapped",
        link.display(),
        now.path.display()
    );
    let key = format!("link:{}:{}:{}", link.display(), now.dev, now.ino);
    by_agent(sink, now, None, summary, key, t);
}

/// A file's SHA-256 differs from the manifest.
pub(super) fn manifest_mismatch(
    sink: &mut AlertSink<'_>,
    file: &FileView,
    expected: &str,
    actual: &str,
    t: chrono::DateTime<chrono::Utc>,
) {
    let summary = format!(
        "{} does not match the manifest: sha256 {actual}, expected {expected}",
        file.path.display()
    );
    let key = format!("manifest:{}:{actual}", file.path.display());
    by_agent(sink, file, Some(Severity::Critical), summary, key, t);
}

/// Found by the agent's own checks: no process to blame, the agent reports.
fn by_agent(
    sink: &mut AlertSink<'_>,
    file: &FileView,
    severity: Option<Severity>,
    summary: String,
    key: String,
    t: chrono::DateTime<chrono::Utc>,
) {
    sink.emit(AlertSpec {
        rule: ID,
        severity,
        summary,
        time: t,
        process: agent_process(),
        files: vec![AlertFile::of(file, 0)],
        network: vec![],
        window: Window::at(t),
        key,
    });
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::events::{EventKind, FileKey, TamperOp};

    fn open(flags: i32) -> EventKind {
        EventKind::FileOpen {
            file: FileKey { dev: 8, ino: 4 },
            fd: 3,
            flags: flags as u32,
            size: MIB,
            syscall: "openat".into(),
            origin: "opened".into(),
        }
    }

    #[test]
    fn change_ops_and_write_opens_but_not_read_opens() {
        let mut r = Run::new(cfg(""), MONDAY_10);
        let w = weight(4, MIB);
        let p = proc_(401, "python3", "/usr/bin/python3", "python3 poison.py", &[(400, "bash")]);
        r.feed(
            0,
            &p,
            EventKind::FileTamper {
                file: None,
                op: TamperOp::RenameTo,
                fd: -1,
                dirfd: -100,
                path: Some("/models/m4.safetensors".into()),
                bytes: 0,
                syscall: "rename".into(),
            },
            Some(&w),
        );
        r.feed(1, &p, open(libc::O_WRONLY), Some(&w));
        let t = r.of(super::ID);
        assert_eq!(t.len(), 2, "{:#?}", r.alerts);
        assert!(t[0].summary.contains("replaced by a rename"), "{}", t[0].summary);
        let mut r = Run::new(cfg(""), MONDAY_10);
        r.feed(0, &p, open(libc::O_RDONLY), Some(&w));
        assert!(r.of(super::ID).is_empty());
    }

    #[test]
    fn a_manifest_mismatch_is_critical_and_names_the_agent() {
        let mut r = Run::new(cfg(""), MONDAY_10);
        let w = weight(4, MIB);
        let t = r.t0;
        r.engine.on_manifest_mismatch(&w, "aa", "bb", t, &mut r.alerts);
        let a = r.of(super::ID);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].severity, crate::config::Severity::Critical);
        assert_eq!(a[0].process.pid, std::process::id());
    }
}
