//! Per-rule settings: each rule has `enabled`, `severity` and `suppress`, some have thresholds.
use std::time::Duration;

use super::{Pattern, Severity};

pub const UNEXPECTED_READER: &str = "weight.unexpected_reader";
pub const BULK_READ: &str = "weight.bulk_read";
pub const EXFILTRATION: &str = "weight.exfiltration";
pub const OFF_HOURS_ACCESS: &str = "weight.off_hours_access";
pub const TAMPER: &str = "weight.tamper";
pub const INFERENCE_EGRESS: &str = "inference.egress";
pub const INFERENCE_EXEC: &str = "inference.exec";
pub const EXFIL_TOOL: &str = "exfil.tool";
pub const GPU_UNEXPECTED_USER: &str = "gpu.unexpected_user";
pub const GPU_SPAWN_STORM: &str = "gpu.spawn_storm";
pub const API_CLIENT_FLOOD: &str = "api.client_flood";
pub const MEMORY_SCRAPE: &str = "host.memory_scrape";
pub const EVENT_LOSS: &str = "agent.event_loss";
pub const BPF_LOAD: &str = "host.bpf_load";
pub const AGENT_TAMPER: &str = "agent.tamper";
pub const AGENT_GAP: &str = "agent.gap";

pub const RULE_IDS: &[&str] = &[
    UNEXPECTED_READER,
    BULK_READ,
    EXFILTRATION,
    OFF_HOURS_ACCESS,
    TAMPER,
    INFERENCE_EGRESS,
    INFERENCE_EXEC,
    EXFIL_TOOL,
    GPU_UNEXPECTED_USER,
    GPU_SPAWN_STORM,
    API_CLIENT_FLOOD,
    MEMORY_SCRAPE,
    EVENT_LOSS,
    BPF_LOAD,
    AGENT_TAMPER,
    AGENT_GAP,
];

/// Keys every rule has.
pub const COMMON_KEYS: &[&str] = &["enabled", "severity", "suppress"];

/// Threshold keys of a rule, beyond `COMMON_KEYS`.
pub fn rule_keys(rule_id: &str) -> &'static [&'static str] {
    match rule_id {
        UNEXPECTED_READER => &["high_fraction"],
        BULK_READ => &["min_fraction", "min_bytes", "window"],
        EXFILTRATION => &["min_read_bytes", "min_read_fraction", "send_fraction", "window"],
        OFF_HOURS_ACCESS => &["min_bytes", "min_fraction"],
        INFERENCE_EXEC => &["allow"],
        GPU_SPAWN_STORM => &["max_spawns", "per", "max_concurrent"],
        API_CLIENT_FLOOD => &["max_connections", "max_bytes", "per"],
        _ => &[],
    }
}

const GIB: u64 = 1 << 30;
const MINUTE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq)]
pub struct RuleCommon {
    pub enabled: bool,
    pub severity: Severity,
    /// The same rule and key within this long after an alert updates its counts instead of
    /// alerting again; zero alerts every time.
    pub suppress: Duration,
}

impl RuleCommon {
    pub fn new(severity: Severity) -> Self {
        RuleCommon {
            enabled: true,
            severity,
            suppress: 10 * MINUTE,
        }
    }
}

/// A rule with only the common settings.
#[derive(Debug, Clone, PartialEq)]
pub struct BasicRule {
    pub common: RuleCommon,
}

/// `weight.unexpected_reader`: a process that is no inference server reads a weight file.
#[derive(Debug, Clone, PartialEq)]
pub struct UnexpectedReader {
    pub common: RuleCommon,
    /// Severity becomes high once this fraction of the file is read.
    pub high_fraction: f64,
}

/// `weight.bulk_read`: a process tree reads a lot of weight data.
#[derive(Debug, Clone, PartialEq)]
pub struct BulkRead {
    pub common: RuleCommon,
    /// Fraction of one file that counts as bulk.
    pub min_fraction: f64,
    /// Bytes across files that count as bulk.
    pub min_bytes: u64,
    pub window: Duration,
}

/// `weight.exfiltration`: a process tree reads weights and sends a comparable amount out.
#[derive(Debug, Clone, PartialEq)]
pub struct Exfiltration {
    pub common: RuleCommon,
    /// Either read threshold suffices.
    pub min_read_bytes: u64,
    pub min_read_fraction: f64,
    /// Sent bytes, as a fraction of bytes read, that make it exfiltration.
    pub send_fraction: f64,
    pub window: Duration,
}

/// `weight.off_hours_access`: weights read outside business hours.
#[derive(Debug, Clone, PartialEq)]
pub struct OffHours {
    pub common: RuleCommon,
    pub min_bytes: u64,
    pub min_fraction: f64,
}

/// `inference.exec`: an inference server runs another program.
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceExec {
    pub common: RuleCommon,
    /// Globs on the executable path that servers may run.
    pub allow: Vec<Pattern>,
}

/// `gpu.spawn_storm`: GPU-using processes started too fast or too many at once.
#[derive(Debug, Clone, PartialEq)]
pub struct SpawnStorm {
    pub common: RuleCommon,
    pub max_spawns: u32,
    pub per: Duration,
    pub max_concurrent: u32,
}

/// `api.client_flood`: one client opens too many connections or pulls too many bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientFlood {
    pub common: RuleCommon,
    pub max_connections: u32,
    pub max_bytes: u64,
    pub per: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub unexpected_reader: UnexpectedReader,
    pub bulk_read: BulkRead,
    pub exfiltration: Exfiltration,
    pub off_hours: OffHours,
    pub tamper: BasicRule,
    pub inference_egress: BasicRule,
    pub inference_exec: InferenceExec,
    pub exfil_tool: BasicRule,
    pub gpu_unexpected_user: BasicRule,
    pub gpu_spawn_storm: SpawnStorm,
    pub api_client_flood: ClientFlood,
    pub memory_scrape: BasicRule,
    pub event_loss: BasicRule,
    pub bpf_load: BasicRule,
    pub agent_tamper: BasicRule,
    pub agent_gap: BasicRule,
}

impl Default for Rules {
    fn default() -> Self {
        use Severity::*;
        let basic = |s| BasicRule {
            common: RuleCommon::new(s),
        };
        Rules {
            unexpected_reader: UnexpectedReader {
                common: RuleCommon::new(Medium),
                high_fraction: 0.5,
            },
            bulk_read: BulkRead {
                common: RuleCommon::new(High),
                min_fraction: 0.5,
                min_bytes: 10 * GIB,
                window: 15 * MINUTE,
            },
            exfiltration: Exfiltration {
                common: RuleCommon::new(Critical),
                min_read_bytes: GIB,
                min_read_fraction: 0.5,
                send_fraction: 0.1,
                window: 60 * MINUTE,
            },
            off_hours: OffHours {
                common: RuleCommon::new(High),
                min_bytes: GIB,
                min_fraction: 0.5,
            },
            tamper: basic(High),
            inference_egress: basic(High),
            inference_exec: InferenceExec {
                common: RuleCommon::new(High),
                allow: Vec::new(),
            },
            exfil_tool: basic(Medium),
            gpu_unexpected_user: basic(Medium),
            gpu_spawn_storm: SpawnStorm {
                common: RuleCommon::new(High),
                max_spawns: 20,
                per: MINUTE,
                max_concurrent: 64,
            },
            api_client_flood: ClientFlood {
                common: RuleCommon::new(Medium),
                max_connections: 100,
                max_bytes: GIB,
                per: MINUTE,
            },
            memory_scrape: basic(Critical),
            event_loss: basic(High),
            bpf_load: basic(Info),
            agent_tamper: basic(Critical),
            agent_gap: basic(High),
        }
    }
}

impl Rules {
    pub fn common(&self, rule_id: &str) -> Option<&RuleCommon> {
        Some(match rule_id {
            UNEXPECTED_READER => &self.unexpected_reader.common,
            BULK_READ => &self.bulk_read.common,
            EXFILTRATION => &self.exfiltration.common,
            OFF_HOURS_ACCESS => &self.off_hours.common,
            TAMPER => &self.tamper.common,
            INFERENCE_EGRESS => &self.inference_egress.common,
            INFERENCE_EXEC => &self.inference_exec.common,
            EXFIL_TOOL => &self.exfil_tool.common,
            GPU_UNEXPECTED_USER => &self.gpu_unexpected_user.common,
            GPU_SPAWN_STORM => &self.gpu_spawn_storm.common,
            API_CLIENT_FLOOD => &self.api_client_flood.common,
            MEMORY_SCRAPE => &self.memory_scrape.common,
            EVENT_LOSS => &self.event_loss.common,
            BPF_LOAD => &self.bpf_load.common,
            AGENT_TAMPER => &self.agent_tamper.common,
            AGENT_GAP => &self.agent_gap.common,
            _ => return None,
        })
    }

    pub fn common_mut(&mut self, rule_id: &str) -> Option<&mut RuleCommon> {
        Some(match rule_id {
            UNEXPECTED_READER => &mut self.unexpected_reader.common,
            BULK_READ => &mut self.bulk_read.common,
            EXFILTRATION => &mut self.exfiltration.common,
            OFF_HOURS_ACCESS => &mut self.off_hours.common,
            TAMPER => &mut self.tamper.common,
            INFERENCE_EGRESS => &mut self.inference_egress.common,
            INFERENCE_EXEC => &mut self.inference_exec.common,
            EXFIL_TOOL => &mut self.exfil_tool.common,
            GPU_UNEXPECTED_USER => &mut self.gpu_unexpected_user.common,
            GPU_SPAWN_STORM => &mut self.gpu_spawn_storm.common,
            API_CLIENT_FLOOD => &mut self.api_client_flood.common,
            MEMORY_SCRAPE => &mut self.memory_scrape.common,
            EVENT_LOSS => &mut self.event_loss.common,
            BPF_LOAD => &mut self.bpf_load.common,
            AGENT_TAMPER => &mut self.agent_tamper.common,
            AGENT_GAP => &mut self.agent_gap.common,
            _ => return None,
        })
    }
}
