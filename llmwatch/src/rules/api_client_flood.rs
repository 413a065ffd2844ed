//! `api.client_flood`: one client opened too many connections to the inference ports, or was
//! served too many bytes, within `per` (LLM04 resource exhaustion, LLM10 extraction by query).
use foldhash::HashMap;
use std::{collections::VecDeque, net::IpAddr};

use chrono::{DateTime, TimeDelta, Utc};

use super::{
    Ctx, Rule, RuleId,
    flows::{Flows, human, humantime_short},
    sink::{AlertSink, AlertSpec},
};
use crate::{
    alerts::{AlertNetwork, Window},
    config::{RuleCommon, RuleSettings, Severity, rules::MINUTE, rules::RuleKeys},
    events::EventKind,
};

pub const ID: RuleId = RuleId::new("api.client_flood");

const GIB: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub common: RuleCommon,
    pub max_connections: u32,
    pub max_bytes: u64,
    pub per: std::time::Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            common: RuleCommon::new(Severity::Medium),
            max_connections: 100,
            max_bytes: GIB,
            per: MINUTE,
        }
    }
}

impl RuleSettings for Settings {
    const KEYS: &'static [&'static str] = &["max_connections", "max_bytes", "per"];
    fn common(&self) -> &RuleCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut RuleCommon {
        &mut self.common
    }
    fn apply(&mut self, keys: &mut RuleKeys<'_, '_>) {
        keys.count("max_connections", &mut self.max_connections);
        keys.positive_size("max_bytes", &mut self.max_bytes);
        keys.duration("per", &mut self.per);
    }
}

#[derive(Default)]
pub(crate) struct State {
    /// Connections accepted from, and bytes served to, each client: (time, connections, bytes).
    clients: HashMap<IpAddr, VecDeque<(DateTime<Utc>, u64, u64)>>,
}

impl Rule for State {
    fn on_event(&mut self, ctx: &Ctx<'_>, _flows: &Flows, sink: &mut AlertSink<'_>) {
        let (client, conns, bytes) = match &ctx.ev.event.kind {
            EventKind::NetAccept { client, .. } => (*client, 1, 0),
            EventKind::NetSend { dest, bytes, .. } if ctx.server.is_some() => (*dest, 0, *bytes),
            _ => return,
        };
        let s = &sink.cfg().rules.api_client_flood;
        let (max_conns, max_bytes, per) = (s.max_connections as u64, s.max_bytes, super::delta(s.per));
        let q = self.clients.entry(client).or_default();
        q.push_back((ctx.t, conns, bytes));
        while q.front().is_some_and(|(t, _, _)| ctx.t - *t > per) {
            q.pop_front();
        }
        let (c, b) = q.iter().fold((0u64, 0u64), |(c, b), (_, dc, db)| (c + dc, b + db));
        if c <= max_conns && b <= max_bytes {
            return;
        }
        let start = q.front().map(|(t, _, _)| *t).unwrap_or(ctx.t);
        let mut spec = AlertSpec::about(
            ctx,
            ID,
            client.to_string(),
            format!(
                "client {client} opened {c} connections and was served {} in {} (limits {max_conns} connections, {})",
                human(b),
                humantime_short(ctx.t - start),
                human(max_bytes)
            ),
        );
        spec.network = vec![AlertNetwork {
            dest: client,
            port: 0,
            bytes_sent: b,
        }];
        spec.window = Window { start, end: ctx.t };
        sink.emit(spec);
    }

    fn expire(&mut self, now: DateTime<Utc>, keep: TimeDelta) {
        self.clients
            .retain(|_, q| q.back().is_some_and(|(t, _, _)| now - *t < keep));
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::super::testing::*;

    #[test]
    fn by_connections_per_client() {
        let mut r = Run::new(cfg("rules: {api.client_flood: {max_connections: 10, per: 1m}}"), MONDAY_10);
        let s = vllm();
        r.exec(0, &s);
        for i in 0..10 {
            r.accept(i, &s, "198.51.100.20");
            r.accept(i, &s, "198.51.100.21");
        }
        assert!(r.of(super::ID).is_empty());
        r.accept(11, &s, "198.51.100.20");
        let f = r.of(super::ID);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].network[0].dest, "198.51.100.20".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn by_bytes_served() {
        let mut r = Run::new(cfg("rules: {api.client_flood: {max_bytes: 10MiB}}"), MONDAY_10);
        let s = vllm();
        r.exec(0, &s);
        r.accept(1, &s, "198.51.100.20");
        r.send(2, &s, "198.51.100.20", 5000, 11 * MIB);
        assert_eq!(r.of(super::ID).len(), 1, "{:#?}", r.alerts);
    }
}
