use std::{net::IpAddr, path::PathBuf, time::Duration};

use chrono::{NaiveTime, TimeZone, Utc, Weekday};

use super::*;

const EXAMPLE: &str = include_str!("../../../deploy/llmwatch.example.yaml");

pub(super) fn problems(text: &str) -> Vec<Problem> {
    match parse(text) {
        Ok(_) => panic!("expected problems in:\n{text}"),
        Err(e) => e.problems().to_vec(),
    }
}

/// The problem at `path`, which must be the only one there.
pub(super) fn at<'a>(ps: &'a [Problem], path: &str) -> &'a Problem {
    let found: Vec<&Problem> = ps.iter().filter(|p| p.path == path).collect();
    assert_eq!(found.len(), 1, "one problem at {path} in {ps:#?}");
    found[0]
}

fn argv(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

fn facts<'a>(comm: &'a str, exe: Option<&'a str>, argv: &'a [String]) -> ProcessFacts<'a> {
    ProcessFacts {
        exe,
        comm,
        argv,
        container_id: None,
        cgroup: None,
        uid: 1000,
        user: Some("vllm"),
        namespace: None,
        pod_labels: &NO_LABELS,
    }
}

static NO_LABELS: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();

#[test]
fn example_file_parses() {
    let c = parse(EXAMPLE).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.host, "gpu-node-17");
    assert_eq!(
        c.model_dirs,
        [
            PathBuf::from("/models"),
            "/var/lib/models".into(),
            "/data/llm".into()
        ]
    );
    assert_eq!(c.manifest, Some(PathBuf::from("/etc/llmwatch/weights.sha256")));
    assert_eq!(c.servers.len(), 3);
    assert_eq!(
        c.servers[0].users,
        [UserRef::Name("vllm".into()), UserRef::Uid(1000)]
    );
    assert_eq!(c.servers[1].startup_window, Duration::from_secs(900));
    assert_eq!(c.egress.entries.len(), 6);
    assert_eq!(c.business_hours.tz, chrono_tz::Europe::Berlin);
    assert_eq!(c.business_hours.end, NaiveTime::from_hms_opt(20, 0, 0));
    assert_eq!(c.business_hours.maintenance.len(), 2);
    // "2026-12-24 09:00" in Berlin (CET, UTC+1).
    assert_eq!(
        c.business_hours.maintenance[1].start,
        Utc.with_ymd_and_hms(2026, 12, 24, 8, 0, 0).unwrap()
    );
    assert_eq!(c.extra_gpu_majors, [511]);
    assert_eq!(c.exfil_tools.len(), 13);
    assert_eq!(c.read_report_bytes, 1 << 20);
    assert_eq!(c.flush_interval, Duration::from_secs(5));
    assert_eq!(c.rules.tamper.common.severity, Severity::Critical);
    assert_eq!(c.rules.off_hours.common.suppress, Duration::from_secs(1800));
    assert_eq!(c.rules.exfiltration.window, Duration::from_secs(3600));
    assert_eq!(c.rules.inference_exec.allow.len(), 3);
    assert_eq!(c.rules.event_loss.common.suppress, Duration::from_secs(300));
}

#[test]
fn empty_file_gives_defaults() {
    let d = Config::default();
    for text in ["", "# only a comment\n", "---\n", "models:\nrules:\n"] {
        let c = parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(c, d, "{text:?}");
    }
    assert_eq!(d.inference_ports, DEFAULT_INFERENCE_PORTS);
    assert_eq!(d.read_report_bytes, 1 << 20);
    assert_eq!(
        d.egress.entries,
        [EgressEntry {
            target: EgressTarget::Any,
            port: Some(53)
        }]
    );
    assert!(!d.host.is_empty());
    assert_eq!(d.rules.bulk_read.min_bytes, 10 << 30);
    assert_eq!(d.rules.bulk_read.common.severity, Severity::High);
    assert_eq!(d.rules.unexpected_reader.common.severity, Severity::Medium);
    assert_eq!(d.rules.exfiltration.common.severity, Severity::Critical);
    for &id in crate::rules::ALL {
        let c = d.rules.common(id);
        assert!(c.enabled, "{id}");
        assert_eq!(c.suppress, Duration::from_secs(600), "{id}");
        assert_eq!(crate::rules::RuleId::parse(id.as_str()), Some(id));
    }
    assert_eq!(crate::rules::ALL.len(), 17);
    assert_eq!(crate::rules::RuleId::parse("weight.nope"), None);
}

#[test]
fn every_mistake_is_reported_with_path_and_line() {
    let text = "\
host: node-1
models:
  extra_dir: [/data]
inference_ports: [8000, 70000]
servers:
  - name: bad
    exe: [\"[\"]
egress:
  allow: [\":53\", \"10.0.0.0/33\"]
business_hours:
  timezone: Mars/Base
  start: \"25:00\"
  maintenance:
    - {start: 2026-12-02T02:00:00Z, end: 2026-12-01T22:00:00Z}
rules:
  weight.bulk_read:
    min_bytes: -5
    min_fraction: 1.5
  weight.bulk_reed: {enabled: false}
  exfil.tool: {severity: severe}
";
    let ps = problems(text);
    let check = |path: &str, line: usize, needle: &str| {
        let p = at(&ps, path);
        assert_eq!(p.line, Some(line), "{p:?}");
        assert!(p.message.contains(needle), "{p:?} should mention {needle:?}");
    };
    check("models.extra_dir", 3, "did you mean \"extra_dirs\"");
    check("inference_ports[1]", 4, "70000");
    check("servers[0].exe[0]", 7, "\"[\"");
    check("egress.allow[1]", 9, "10.0.0.0/33");
    check("business_hours.timezone", 11, "Mars/Base");
    check("business_hours.start", 12, "25:00");
    check("business_hours.maintenance[0].end", 14, "not after start");
    check("rules.weight.bulk_read.min_bytes", 17, "-5");
    check("rules.weight.bulk_read.min_fraction", 18, "1.5");
    check("rules.weight.bulk_reed", 19, "did you mean \"weight.bulk_read\"");
    check("rules.exfil.tool.severity", 20, "severe");
    assert_eq!(ps.len(), 11, "{ps:#?}");
    // The error text lists them all, one per line.
    let msg = parse(text).unwrap_err().to_string();
    assert_eq!(msg.lines().count(), 12, "{msg}");
    assert!(
        msg.contains("rules.weight.bulk_read.min_fraction (line 18): "),
        "{msg}"
    );
}

#[test]
fn wrong_types_and_misplaced_keys() {
    let ps = problems(
        "\
inference_ports: 8000
extra_dirs: [/x]
models: [/models]
gpu: {extra_majors: [abc]}
servers:
  - {name: x, users: [root], exe: []}
  - {name: y, comm: [z]}
  - {name: y, comm: [z]}
kernel: {read_report_bytes: 0, flush_interval: soon}
rules:
  gpu.spawn_storm: {max_spawns: 0, per: 0s}
  weight.tamper: maybe
  inference.exec: {alow: []}
exfil_tools: [\"a b c\"]
host: [a]
",
    );
    assert!(at(&ps, "inference_ports").message.contains("expected a list"));
    assert!(at(&ps, "extra_dirs").message.contains("models.extra_dirs"));
    assert!(at(&ps, "models").message.contains("expected a mapping"));
    assert!(at(&ps, "gpu.extra_majors[0]").message.contains("abc"));
    assert!(
        at(&ps, "servers[0]")
            .message
            .contains("at least one of exe, comm or argv")
    );
    assert!(at(&ps, "servers[2].name").message.contains("\"y\""));
    assert!(
        at(&ps, "kernel.read_report_bytes")
            .message
            .contains("more than 0")
    );
    assert!(at(&ps, "kernel.flush_interval").message.contains("soon"));
    assert!(at(&ps, "rules.gpu.spawn_storm.max_spawns").message.contains('0'));
    assert!(at(&ps, "rules.gpu.spawn_storm.per").message.contains("0s"));
    assert!(at(&ps, "rules.weight.tamper").message.contains("maybe"));
    assert!(
        at(&ps, "rules.inference.exec.alow")
            .message
            .contains("did you mean \"allow\"")
    );
    assert!(at(&ps, "exfil_tools[0]").message.contains("a b c"));
    assert!(at(&ps, "host").message.contains("got a list"));
    assert_eq!(ps.len(), 14, "{ps:#?}");
    // Sorted by line.
    assert!(ps.windows(2).all(|w| w[0].line <= w[1].line));
}

#[test]
fn duplicate_keys_are_reported() {
    let ps = problems("host: a\nhost: b\n");
    let p = at(&ps, "host");
    assert_eq!(p.line, Some(2));
    assert!(p.message.contains("line 1"), "{p:?}");
}

#[test]
fn yaml_syntax_error_reports_its_line() {
    let ps = problems("host: a\nmodels:\n  dirs: [/models\ninference_ports: [1]\n");
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert!(ps[0].path.is_empty());
    assert!(matches!(ps[0].line, Some(3..=4)), "{ps:?}");
    let ps = problems("host: a\n  bad: indent\n");
    assert_eq!(ps[0].line, Some(2), "{ps:?}");
    let ps = problems("- just\n- a list\n");
    assert!(ps[0].message.contains("mapping"), "{ps:?}");
}

#[test]
fn load_reads_files_and_names_them() {
    let dir = std::env::temp_dir().join(format!("llmwatch-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.yaml");
    std::fs::write(&good, "host: h\n").unwrap();
    assert_eq!(load(&good).unwrap().host, "h");
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "hots: h\n").unwrap();
    let e = load(&bad).unwrap_err();
    assert!(matches!(&e, ConfigError::Invalid { file: Some(f), .. } if f == &bad));
    assert!(e.to_string().contains("bad.yaml"), "{e}");
    assert!(matches!(
        load(&dir.join("missing.yaml")),
        Err(ConfigError::Io { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn server_identity_ands_lists_and_ors_entries() {
    let p = |s: &str| Pattern::new(s).unwrap();
    let id = ServerIdentity {
        name: "x".into(),
        exe: vec![p("*/python3*"), p("*/pypy*")],
        comm: vec![],
        argv: vec![p("*serve*")],
        containers: vec![],
        cgroups: vec![],
        users: vec![UserRef::Name("svc".into()), UserRef::Uid(1000)],
        namespaces: vec![],
        pod_labels: vec![],
        startup_window: Duration::ZERO,
    };
    let a = argv("python3 -m serve");
    assert!(id.matches(&facts("python3", Some("/usr/bin/python3.11"), &a)));
    assert!(
        id.matches(&facts("pypy", Some("/opt/pypy3"), &a)),
        "second exe entry"
    );
    assert!(!id.matches(&facts("python3", None, &a)), "exe unknown");
    let other = argv("python3 -m train");
    assert!(
        !id.matches(&facts("python3", Some("/usr/bin/python3"), &other)),
        "argv must match too"
    );
    let mut f = facts("python3", Some("/usr/bin/python3"), &a);
    f.uid = 0;
    f.user = Some("root");
    assert!(!id.matches(&f), "users must match too");
    f.user = Some("svc");
    assert!(id.matches(&f), "by name");

    let mut c = id.clone();
    c.containers = vec![p("*")];
    assert!(
        !c.matches(&facts("python3", Some("/usr/bin/python3"), &a)),
        "not in a container"
    );
    let mut f = facts("python3", Some("/usr/bin/python3"), &a);
    f.container_id = Some("abc123");
    assert!(c.matches(&f));

    let empty = ServerIdentity {
        exe: vec![],
        argv: vec![],
        ..id
    };
    assert!(
        !empty.matches(&facts("python3", Some("/usr/bin/python3"), &a)),
        "no exe/comm/argv"
    );
}

#[test]
fn default_servers_match_known_launches_only() {
    let c = Config::default();
    let name = |comm: &str, exe: &str, line: &str| {
        let a = argv(line);
        c.server_for(&facts(comm, Some(exe), &a)).map(|s| s.name.clone())
    };
    let vllm = "python3 -m vllm.entrypoints.openai.api_server --model x";
    assert_eq!(
        name("python3", "/usr/bin/python3.12", vllm).as_deref(),
        Some("vllm")
    );
    assert_eq!(
        name(
            "vllm",
            "/usr/bin/python3.12",
            "/usr/bin/python3 /usr/local/bin/vllm serve m"
        )
        .as_deref(),
        Some("vllm")
    );
    assert_eq!(
        name("ollama", "/usr/local/bin/ollama", "ollama serve").as_deref(),
        Some("ollama")
    );
    assert_eq!(
        name(
            "text-generation",
            "/usr/local/bin/text-generation-launcher",
            "text-generation-launcher --model-id m"
        )
        .as_deref(),
        Some("tgi")
    );
    assert_eq!(
        name(
            "tritonserver",
            "/opt/tritonserver/bin/tritonserver",
            "tritonserver --model-repository=/m"
        )
        .as_deref(),
        Some("triton")
    );
    assert_eq!(
        name(
            "llama-server",
            "/usr/local/bin/llama-server",
            "llama-server -m /models/x.gguf"
        )
        .as_deref(),
        Some("llama.cpp")
    );
    assert_eq!(
        name(
            "python3",
            "/usr/bin/python3",
            "python3 -m sglang.launch_server --model-path m"
        )
        .as_deref(),
        Some("sglang")
    );
    assert_eq!(name("cat", "/usr/bin/cat", "cat model.bin"), None);
    assert_eq!(name("cp", "/usr/bin/cp", "cp -r /models/vllm /tmp/x"), None);
    assert_eq!(name("ollama", "/usr/local/bin/ollama", "ollama list"), None);
}

#[test]
fn gpu_allow_matches_comm_exe_or_file_name() {
    let c = Config::default();
    assert!(c.gpu_allowed("python3", Some("/usr/bin/python3.11")));
    assert!(
        c.gpu_allowed("pt_main_thread", Some("/usr/bin/python3.11")),
        "exe file name"
    );
    assert!(c.gpu_allowed("nvidia-smi", None));
    assert!(!c.gpu_allowed("xmrig", Some("/tmp/xmrig")));
    let c = parse("gpu: {allow: [\"*/tritonserver\"]}").unwrap();
    assert!(c.gpu_allowed("tritonserver", Some("/opt/tritonserver/bin/tritonserver")));
    assert!(!c.gpu_allowed("python3", Some("/usr/bin/python3")));
}

#[test]
fn comm_patterns_match_truncated_names() {
    let p = Pattern::new("text-generation-launcher").unwrap();
    assert!(p.matches_comm("text-generation"));
    assert!(!p.matches_comm("text-generatio"));
    assert!(
        !Pattern::new("text-generation-*")
            .unwrap()
            .matches_comm("text-generatio")
    );
    assert!(Pattern::new("vllm*").unwrap().matches_comm("vllm"));
}

#[test]
fn egress_allow_cidrs_ports_and_hosts() {
    let c = parse(
        "egress:\n  allow: [\"10.0.0.0/8\", \"fd00::/8\", \":53\", \"localhost:8080\", \"[::1]:9090\", \"192.168.1.5\"]\n",
    )
    .unwrap();
    let mut e = c.egress;
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(e.allows(ip("10.1.2.3"), 443));
    assert!(
        e.allows(ip("::ffff:10.1.2.3"), 443),
        "v4-mapped v6 compares as v4"
    );
    assert!(!e.allows(ip("11.1.2.3"), 443));
    assert!(e.allows(ip("fd12::1"), 1));
    assert!(!e.allows(ip("fe80::1"), 1));
    assert!(e.allows(ip("8.8.8.8"), 53), "port-only entry");
    assert!(!e.allows(ip("8.8.8.8"), 54));
    assert!(e.allows(ip("::1"), 9090));
    assert!(!e.allows(ip("::1"), 9091));
    assert!(e.allows(ip("192.168.1.5"), 22));
    assert!(!e.allows(ip("192.168.1.6"), 22));
    // Host entries allow nothing until resolved.
    assert!(!e.allows(ip("127.0.0.1"), 8080));
    assert_eq!(e.hosts().collect::<Vec<_>>(), ["localhost"]);
    e.resolve();
    assert!(e.allows(ip("127.0.0.1"), 8080), "{:?}", e.resolved);
    assert!(!e.allows(ip("127.0.0.1"), 8081));
    assert_eq!(
        e.allowed_by(ip("127.0.0.1"), 8080).unwrap().to_string(),
        "localhost:8080"
    );
    assert_eq!(e.allowed_by(ip("::1"), 9090).unwrap().to_string(), "[::1]:9090");
    assert_eq!(e.allowed_by(ip("10.9.9.9"), 1).unwrap().to_string(), "10.0.0.0/8");
    // Default: DNS only, loopback is outside.
    let d = EgressAllow::default_allow();
    assert!(!d.allows(ip("127.0.0.1"), 8080));
    assert!(!d.allows(ip("10.0.0.1"), 443));
    assert!(d.allows(ip("1.1.1.1"), 53));
}

#[test]
fn business_hours_follow_the_zone_across_dst() {
    let c = parse(
        "business_hours: {timezone: Europe/Berlin, days: [Mon, tuesday], start: \"08:00\", end: \"20:00\"}",
    )
    .unwrap();
    let bh = &c.business_hours;
    assert_eq!(bh.days, [Weekday::Mon, Weekday::Tue]);
    let utc = |y, mo, d, h, mi| Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap();
    // Monday 2026-03-23, CET (UTC+1): 08:00 local is 07:00 UTC.
    assert!(!bh.is_business_time(utc(2026, 3, 23, 6, 59)));
    assert!(bh.is_business_time(utc(2026, 3, 23, 7, 0)));
    assert!(bh.is_business_time(utc(2026, 3, 23, 18, 59)));
    assert!(!bh.is_business_time(utc(2026, 3, 23, 19, 0)));
    // Monday 2026-03-30, after the switch to CEST (UTC+2): 08:00 local is 06:00 UTC.
    assert!(bh.is_business_time(utc(2026, 3, 30, 6, 0)));
    assert!(!bh.is_business_time(utc(2026, 3, 30, 5, 59)));
    assert!(!bh.is_business_time(utc(2026, 3, 30, 18, 0)));
    // Wednesday: not a business day.
    assert!(!bh.is_business_time(utc(2026, 4, 1, 10, 0)));
}

#[test]
fn business_hours_until_midnight_overnight_and_maintenance() {
    let c = parse(
        "business_hours:
  timezone: UTC
  days: [fri]
  start: \"18:00\"
  end: \"24:00\"
  maintenance:
    - {start: 2026-12-02T22:00:00Z, end: 2026-12-03T02:00:00Z, reason: model rollout}
",
    )
    .unwrap();
    let bh = &c.business_hours;
    assert_eq!(bh.end, None);
    let utc = |y, mo, d, h, mi| Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap();
    // Friday 2026-12-04.
    assert!(bh.is_business_time(utc(2026, 12, 4, 23, 59)));
    assert!(!bh.is_business_time(utc(2026, 12, 5, 0, 0)));
    assert!(!bh.is_business_time(utc(2026, 12, 4, 17, 59)));
    // Wednesday night: maintenance.
    let t = utc(2026, 12, 2, 23, 0);
    assert!(bh.is_business_time(t));
    assert!(!bh.in_hours(t));
    assert_eq!(bh.in_maintenance(t).unwrap().reason, "model rollout");
    assert!(
        bh.in_maintenance(utc(2026, 12, 3, 2, 0)).is_none(),
        "end is exclusive"
    );

    let night =
        parse("business_hours: {timezone: UTC, days: [mon], start: \"22:00\", end: \"06:00\"}").unwrap();
    let bh = &night.business_hours;
    // Monday 2026-03-23 22:00 to Tuesday 06:00.
    assert!(bh.is_business_time(utc(2026, 3, 23, 23, 0)));
    assert!(bh.is_business_time(utc(2026, 3, 24, 5, 59)));
    assert!(!bh.is_business_time(utc(2026, 3, 24, 6, 0)));
    assert!(
        !bh.is_business_time(utc(2026, 3, 23, 5, 0)),
        "Sunday night is not Monday's shift"
    );

    let ps = problems("business_hours: {start: \"08:00\", end: \"08:00\", days: [someday]}");
    assert!(at(&ps, "business_hours.end").message.contains("same time"));
    assert!(at(&ps, "business_hours.days[0]").message.contains("someday"));
    let ps = problems("business_hours: {timezone: Europe/Berln}");
    assert!(
        at(&ps, "business_hours.timezone")
            .message
            .contains("Europe/Berlin")
    );
}

#[test]
fn exfil_tools_match_program_and_subcommand() {
    let aws = ExfilTool::parse("aws s3").unwrap();
    assert!(aws.matches("aws", &argv("aws s3 cp /models/x s3://b/")));
    assert!(aws.matches("aws", &argv("aws --profile prod s3 cp x y")));
    assert!(!aws.matches("aws", &argv("aws ec2 describe-instances")));
    assert!(!aws.matches("aws", &argv("aws ec2 describe-instances --filter s3")));
    let rclone = ExfilTool::parse("rclone").unwrap();
    assert!(rclone.matches("/usr/bin/rclone", &argv("rclone copy /models remote:")));
    assert!(rclone.matches("/usr/bin/rclone", &[]));
    assert!(!rclone.matches("/usr/bin/rsync", &argv("rsync a b")));
    // A Python console script: argv[0] is the interpreter.
    let hf = ExfilTool::parse("huggingface-cli upload").unwrap();
    assert!(hf.matches(
        "python3.11",
        &argv("/usr/bin/python3 /usr/local/bin/huggingface-cli upload me/m .")
    ));
    assert!(!hf.matches(
        "python3.11",
        &argv("/usr/bin/python3 /usr/local/bin/huggingface-cli download me/m")
    ));
    // comm is cut to 15 characters.
    let t = ExfilTool::parse("transmission-cli").unwrap();
    assert!(t.matches("transmission-cl", &[]));
    let c = Config::default();
    assert_eq!(
        c.exfil_tool_for("gsutil", &argv("gsutil cp a gs://b"))
            .unwrap()
            .to_string(),
        "gsutil"
    );
    assert!(
        c.exfil_tool_for("curl", &argv("curl -T x http://y")).is_none(),
        "curl is left to correlation"
    );
    assert!(c.exfil_tool_for("nc", &argv("nc host 1")).is_none());
}

#[test]
fn rule_shorthand_and_overrides() {
    let c = parse("rules:\n  exfil.tool: false\n  weight.bulk_read: {severity: Critical, suppress: 0, min_bytes: 512MiB}\n")
        .unwrap();
    assert!(!c.rules.exfil_tool.common.enabled);
    assert_eq!(c.rules.bulk_read.common.severity, Severity::Critical);
    assert_eq!(c.rules.bulk_read.common.suppress, Duration::ZERO);
    assert_eq!(c.rules.bulk_read.min_bytes, 512 << 20);
    assert_eq!(
        serde_json::to_string(&Severity::Critical).unwrap(),
        "\"critical\""
    );
    let c = parse("inference_ports: [8000, 9000, 8000]\nmodels: {dirs: [/a], extra_dirs: [/a, /b]}").unwrap();
    assert_eq!(c.inference_ports, [8000, 9000]);
    assert_eq!(c.model_dirs, [PathBuf::from("/a"), "/b".into()]);
}

#[test]
fn local_timezone_sources_in_order() {
    use super::defaults::local_timezone_from as tz;
    let s = |v: &str| Some(v.to_string());
    assert_eq!(tz(s(":Europe/Paris"), s("UTC")), chrono_tz::Europe::Paris);
    assert_eq!(tz(s("CET-1CEST"), s("Asia/Tokyo")), chrono_tz::Asia::Tokyo);
    assert_eq!(tz(None, s("America/New_York")), chrono_tz::America::New_York);
    assert_eq!(tz(None, s("not/a-zone")), chrono_tz::UTC);
    assert_eq!(tz(None, None), chrono_tz::UTC);
}

/// Every key the parser accepts has a row (or mention) in docs/configuration.md: a key users
/// cannot find is a key they cannot use.
#[test]
fn every_accepted_key_is_documented() {
    let doc = include_str!("../../../docs/configuration.md");
    let mut missing = Vec::new();
    for (section, keys) in super::validate::SECTIONS {
        for key in *keys {
            // `host`, `models.dirs`; in a section's own table `days`; nested `maintenance[].end`.
            let last = section.rsplit('.').next().unwrap_or(section);
            let documented = if section.is_empty() {
                doc.contains(&format!("`{key}"))
            } else {
                [
                    format!("`{section}.{key}`"),
                    format!("`{last}.{key}`"),
                    format!("`{key}`"),
                ]
                .iter()
                .any(|c| doc.contains(c.as_str()))
            };
            if !documented {
                missing.push(format!("{section}.{key}"));
            }
        }
    }
    assert!(missing.is_empty(), "not in docs/configuration.md: {missing:?}");
}

#[test]
fn spool_keys_parse_and_bad_sizes_name_the_key() {
    let c =
        parse("spool:\n  dir: /var/spool/llmwatch\n  max_bytes: 16MiB\n  memory_max_bytes: 2MiB\n").unwrap();
    assert_eq!(c.spool.dir, PathBuf::from("/var/spool/llmwatch"));
    assert_eq!((c.spool.max_bytes, c.spool.memory_max_bytes), (16 << 20, 2 << 20));
    assert_eq!(Config::default().spool.memory_max_bytes, 8 << 20);
    let ps = problems("spool:\n  memory_max_bytes: 0\n");
    let p = at(&ps, "spool.memory_max_bytes");
    assert_eq!(p.line, Some(2), "{p:?}");
}

#[test]
fn weak_identities_and_port_only_egress_are_warned_about_not_refused() {
    let c = parse(
        "servers:\n\
         \x20 - {name: by-name, argv: ['*vllm serve*']}\n\
         \x20 - {name: interpreter, exe: ['/usr/bin/python3*'], argv: ['*sglang*']}\n\
         \x20 - {name: pinned, argv: ['*lmdeploy*'], users: [vllm]}\n\
         \x20 - {name: binary, exe: [/opt/triton/bin/tritonserver]}\n\
         readers:\n\
         \x20 - {name: sum, comm: [sha256sum]}\n\
         egress:\n\
         \x20 allow: [':53', '*', '10.0.0.0/8', 'huggingface.co:443']\n",
    )
    .unwrap();
    let at: Vec<&str> = c.warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        at,
        [
            "servers[0]",
            "servers[1]",
            "readers[0]",
            "egress.allow[0]",
            "egress.allow[1]"
        ],
        "{:#?}",
        c.warnings
    );
    assert!(
        c.warnings[0].message.contains("name or command line only"),
        "{}",
        c.warnings[0]
    );
    assert!(
        c.warnings[1].message.contains("\"/usr/bin/python3*\""),
        "{}",
        c.warnings[1]
    );
    assert!(
        c.warnings[3].message.contains("not transfers"),
        "{}",
        c.warnings[3]
    );
    assert_eq!(c.warnings[3].line, Some(9));
    let strong: Vec<bool> = c.servers.iter().map(|s| s.strong()).collect();
    assert_eq!(strong, [false, false, true, true]);
    // Transfers are exempt only where an entry names the destination.
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(c.egress.allows(ip("203.0.113.9"), 53));
    assert!(!c.egress.exempts_transfer(ip("203.0.113.9"), 53));
    assert!(!c.egress.exempts_transfer(ip("203.0.113.9"), 4444));
    assert!(c.egress.exempts_transfer(ip("10.1.2.3"), 4444));
    // The defaults warn about nothing: they are not in a file.
    assert!(Config::default().warnings.is_empty());
}

#[test]
fn trusted_readers_with_files_and_a_schedule() {
    let c = parse(
        "readers:\n\
         \x20 - name: nightly\n\
         \x20   exe: [/usr/bin/sha256sum]\n\
         \x20   users: [0]\n\
         \x20   files: ['/models/**']\n\
         \x20   schedule: {timezone: UTC, days: [sun], start: '02:00', end: '04:00'}\n",
    )
    .unwrap();
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    let r = &c.readers[0];
    let root = ProcessFacts {
        uid: 0,
        user: Some("root"),
        ..facts("sha256sum", Some("/usr/bin/sha256sum"), &[])
    };
    let sunday_3 = Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap();
    let sunday_5 = Utc.with_ymd_and_hms(2026, 11, 22, 5, 0, 0).unwrap();
    assert!(r.trusts(&root, "/models/a/b.safetensors", sunday_3));
    assert!(
        !r.trusts(&root, "/models/a/b.safetensors", sunday_5),
        "outside its schedule"
    );
    assert!(!r.trusts(&root, "/srv/other.gguf", sunday_3), "not its files");
    let user = facts("sha256sum", Some("/usr/bin/sha256sum"), &[]);
    assert!(
        !r.trusts(&user, "/models/a/b.safetensors", sunday_3),
        "another user"
    );

    let ps = problems(
        "readers:\n\
         \x20 - {name: a, users: [0]}\n\
         \x20 - {name: b, exe: [/x], schedule: {start: '02:00', end: '02:00', maintenance: []}}\n\
         \x20 - {name: c, exe: [/x]}\n\
         \x20 - {name: c, exe: [/y]}\n",
    );
    assert!(
        at(&ps, "readers[0]")
            .message
            .contains("needs at least one of exe, comm or argv")
    );
    assert!(at(&ps, "readers[1].schedule.end").message.contains("same time"));
    assert!(
        at(&ps, "readers[1].schedule.maintenance")
            .message
            .contains("unknown key")
    );
    assert!(at(&ps, "readers[3].name").message.contains("already named"));
}

#[test]
fn containers_section_parses_and_names_bad_values() {
    let c = parse(
        "containers:\n  runtime: containerd\n  runtime_socket: /run/k3s/containerd/containerd.sock\n  \
         pod_labels: [app, team.example.com/owner]\n  lookup_timeout: 500ms\n",
    )
    .unwrap();
    assert_eq!(c.containers.runtime, RuntimeApi::Containerd);
    assert_eq!(
        c.containers.runtime_socket.as_deref(),
        Some(std::path::Path::new("/run/k3s/containerd/containerd.sock"))
    );
    assert_eq!(c.containers.pod_labels, vec!["app", "team.example.com/owner"]);
    assert_eq!(c.containers.lookup_timeout, Duration::from_millis(500));
    let ps = problems(
        "containers:\n  runtime: docker\n  runtime_socket: run/containerd.sock\n  \
         pod_labels: [\"-app\", \"Team.Example/x\"]\n  kubelet: {url: x}\n",
    );
    assert!(
        at(&ps, "containers.runtime").message.contains("\"docker\""),
        "{ps:#?}"
    );
    assert!(
        at(&ps, "containers.runtime_socket")
            .message
            .contains("run/containerd.sock"),
        "{ps:#?}"
    );
    let labels: Vec<&Problem> = ps
        .iter()
        .filter(|p| p.path.starts_with("containers.pod_labels"))
        .collect();
    assert_eq!(labels.len(), 2, "{ps:#?}");
    assert!(
        labels.iter().any(|p| p.message.contains("\"-app\"")),
        "{labels:#?}"
    );
    assert!(
        labels.iter().any(|p| p.message.contains("Team.Example/x")),
        "{labels:#?}"
    );
    let url = &at(&ps, "containers.kubelet.url").message;
    assert!(url.contains("\"x\"") && url.contains("not a URL"), "{url}");
}

#[test]
fn the_kubelet_is_off_unless_asked_for_and_its_keys_name_bad_values() {
    assert_eq!(Config::default().containers.kubelet, None);
    assert_eq!(
        parse("containers:\n  kubelet: false\n")
            .unwrap()
            .containers
            .kubelet,
        None
    );
    assert_eq!(
        parse("containers:\n  kubelet: true\n")
            .unwrap()
            .containers
            .kubelet,
        Some(KubeletConfig::default())
    );
    let k = KubeletConfig::default();
    assert_eq!(k.url, "https://${NODE_IP}:10250");
    assert_eq!(
        k.token_file,
        PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
    );
    assert_eq!(
        k.ca_file,
        PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
    );
    assert!(!k.insecure_skip_verify);
    let c = parse(
        "containers:\n  kubelet:\n    url: https://${NODE_NAME}:10250\n    \
         token_file: /var/run/secrets/llmwatch/token\n    ca_file: /etc/kubelet-ca.crt\n    \
         refresh: 5m\n",
    )
    .unwrap();
    let k = c.containers.kubelet.unwrap();
    assert_eq!(
        k.url, "https://${NODE_NAME}:10250",
        "expanded at start, not at load"
    );
    assert_eq!(k.token_file, PathBuf::from("/var/run/secrets/llmwatch/token"));
    assert_eq!(k.ca_file, PathBuf::from("/etc/kubelet-ca.crt"));
    assert_eq!(k.refresh, Duration::from_secs(300));
    let ps = problems(
        "containers:\n  kubelet:\n    url: http://10.0.0.1:10255\n    token_file: token\n    \
         insecure_skip_verify: maybe\n    refresh: 0s\n    port: 10250\n",
    );
    assert!(
        m_of(&ps, "containers.kubelet.url").contains("http://10.0.0.1:10255"),
        "{ps:#?}"
    );
    assert!(
        m_of(&ps, "containers.kubelet.token_file").contains("\"token\""),
        "{ps:#?}"
    );
    assert!(
        m_of(&ps, "containers.kubelet.insecure_skip_verify").contains("maybe"),
        "{ps:#?}"
    );
    assert!(m_of(&ps, "containers.kubelet.refresh").contains("0s"), "{ps:#?}");
    assert!(
        m_of(&ps, "containers.kubelet.port").contains("unknown key"),
        "{ps:#?}"
    );
    let ps = problems("containers:\n  kubelet: sometimes\n");
    assert!(m_of(&ps, "containers.kubelet").contains("sometimes"), "{ps:#?}");
    // A CA that would not be used is said, not refused.
    let c = parse("containers:\n  kubelet: {insecure_skip_verify: true, ca_file: /etc/kubelet-ca.crt}\n")
        .unwrap();
    assert!(c.containers.kubelet.unwrap().insecure_skip_verify);
    assert!(
        c.warnings
            .iter()
            .any(|w| w.path == "containers.kubelet.ca_file" && w.message.contains("not used")),
        "{:#?}",
        c.warnings
    );
}

fn m_of(ps: &[Problem], path: &str) -> String {
    at(ps, path).message.clone()
}

#[test]
fn selectors_by_namespace_and_pod_labels() {
    let c = parse(
        "servers:\n  - name: vllm\n    comm: [python3]\n    namespaces: [ml-*]\n    \
         pod_labels: {app: vllm, tier: \"serv*\"}\ncontainers:\n  pod_labels: [team]\n",
    )
    .unwrap();
    let s = c.servers.iter().find(|s| s.name == "vllm").unwrap();
    assert!(
        s.strong(),
        "a pod selector pins the server to what the runtime says"
    );
    let labels: std::collections::BTreeMap<String, String> = [("app", "vllm"), ("tier", "serving")]
        .map(|(k, v)| (k.into(), v.into()))
        .into();
    let inside = ProcessFacts {
        namespace: Some("ml-serving"),
        pod_labels: &labels,
        ..facts("python3", None, &[])
    };
    assert!(s.matches(&inside));
    // Outside any pod (whatever it says about itself), in another namespace, or missing a label.
    assert!(!s.matches(&facts("python3", None, &[])));
    assert!(!s.matches(&ProcessFacts {
        namespace: Some("default"),
        ..inside
    }));
    let fewer: std::collections::BTreeMap<String, String> = [("app".to_string(), "vllm".to_string())].into();
    assert!(!s.matches(&ProcessFacts {
        pod_labels: &fewer,
        ..inside
    }));
    // Selector keys are kept on events besides the allowlist.
    let keys = c.pod_label_keys();
    for k in ["app", "tier", "team"] {
        assert!(keys.contains(k), "{k} in {keys:?}");
    }
    let ps = problems(
        "servers:\n  - name: a\n    comm: [x]\n    pod_labels: [app]\n  - name: b\n    comm: [x]\n    \
         pod_labels: {\"bad key!\": x}\n  - name: c\n    namespaces: [ml]\n",
    );
    assert!(
        at(&ps, "servers[0].pod_labels").message.contains("mapping"),
        "{ps:#?}"
    );
    assert!(ps.iter().any(|p| p.message.contains("\"bad key!\"")), "{ps:#?}");
    assert!(at(&ps, "servers[2]").message.contains("namespaces"), "{ps:#?}");
}
