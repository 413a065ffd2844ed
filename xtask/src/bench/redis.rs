//! W6: a real application beside each setup — redis-benchmark's throughput against Debian's
//! redis-server on loopback, Falco's published method (it reports -13% with its probes idle).
//! Every request is a small TCP send and receive on both ends, so this is the send path and
//! the syscall-wide hooks under a real server, not a micro-benchmark. Rounds alternate the
//! order of the setups; the median of each setup's rounds counts (at least 7 rounds).
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::json;

use super::{Setup, start};

/// Debian's redis-server and redis-tools (redis-benchmark), installed when missing.
fn ensure_redis() -> anyhow::Result<()> {
    let have = |cmd: &str| {
        Command::new(cmd)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if have("redis-server") && have("redis-benchmark") {
        return Ok(());
    }
    eprintln!("bench: installing Debian's redis-server and redis-tools (the W6 application)");
    let _ = Command::new("apt-get").args(["update", "-qq"]).status();
    let status = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "redis-server",
            "redis-tools",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get (as root)")?;
    if !status.success() {
        bail!("apt-get install redis-server redis-tools failed: {status}");
    }
    Ok(())
}

/// A redis-server of our own on a loopback port, without persistence; killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_server() -> anyhow::Result<Server> {
    let port = free_port()?;
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting redis-server")?;
    let server = Server { child, port };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("redis-server did not listen on 127.0.0.1:{port} within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(server)
}

/// Requests per second of one redis-benchmark run (the mean of its SET and GET rates).
fn benchmark(port: u16, requests: u64) -> anyhow::Result<f64> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args([
            "-n",
            &requests.to_string(),
            "-c",
            "50",
            "-t",
            "set,get",
            "-q",
            "--csv",
        ])
        .output()
        .context("running redis-benchmark")?;
    if !out.status.success() {
        bail!(
            "redis-benchmark failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let rates = parse_csv(&text);
    if rates.len() != 2 {
        bail!("redis-benchmark printed no SET and GET rates: {text:?}");
    }
    Ok(rates.iter().sum::<f64>() / rates.len() as f64)
}

/// The rates of the SET and GET lines of `redis-benchmark --csv` (`"SET","98039.22",...`;
/// newer versions add latency columns after the rate, older ones have only the rate).
fn parse_csv(text: &str) -> Vec<f64> {
    text.lines()
        .filter_map(|l| {
            let mut fields = l.split(',').map(|f| f.trim().trim_matches('"'));
            let test = fields.next()?;
            matches!(test, "SET" | "GET").then_some(())?;
            fields.next()?.parse().ok()
        })
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Every setup's median throughput over `rounds` alternating rounds, and the losses.
pub fn run(
    agent: &Path,
    models: &Path,
    setups: &[Setup],
    rounds: usize,
    quick: bool,
) -> anyhow::Result<serde_json::Value> {
    ensure_redis()?;
    let server = start_server()?;
    let requests = if quick { 20_000 } else { 100_000 };
    // A warm-up, so the first setup measured does not pay for a cold server.
    benchmark(server.port, requests / 4)?;
    let mut rates: Vec<(Setup, Vec<f64>)> = setups.iter().map(|s| (*s, Vec::new())).collect();
    for round in 0..rounds {
        let mut order = setups.to_vec();
        if round % 2 == 1 {
            order.reverse();
        }
        for setup in order {
            eprintln!("bench: redis round {}/{rounds}: {}", round + 1, setup.name());
            let mut running = start(setup, agent, models)?;
            std::thread::sleep(Duration::from_millis(300));
            let rps = benchmark(server.port, requests)?;
            running.stop();
            rates.iter_mut().find(|(s, _)| *s == setup).unwrap().1.push(rps);
        }
    }
    let medians: Vec<(Setup, f64)> = rates.iter_mut().map(|(s, v)| (*s, median(v))).collect();
    let of = |s: Setup| medians.iter().find(|(x, _)| *x == s).map(|(_, v)| *v);
    let none = of(Setup::None).context("no baseline")?;
    let loss = |s: Setup| of(s).map(|v| 1.0 - v / none);
    let (ours, floor) = (loss(Setup::Llmwatch), loss(Setup::Floor));
    Ok(json!({
        "rounds": rounds,
        "requests_per_run": requests,
        "median_rps": medians.iter().map(|(s, v)| json!({"setup": s.name(), "rps": v})).collect::<Vec<_>>(),
        "loss_floor": floor,
        "loss_llmwatch": ours,
        "loss_bpftrace": loss(Setup::Bpftrace),
        // Target: llmwatch's loss within 1.1x of the floor's (what any syscall-wide hook costs).
        "llmwatch_loss_vs_floor_loss": match (ours, floor) {
            (Some(o), Some(f)) if f > 0.0 => Some(o / f),
            _ => None,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rates_of_old_and_new_redis_benchmark() {
        let old = "\"SET\",\"98039.22\"\n\"GET\",\"101010.10\"\n";
        assert_eq!(parse_csv(old), [98039.22, 101010.10]);
        let new = "\"test\",\"rps\",\"avg_latency_ms\"\n\"SET\",\"84033.61\",\"0.323\"\n\"GET\",\"90090.09\",\"0.291\"\n";
        assert_eq!(parse_csv(new), [84033.61, 90090.09]);
        assert!(parse_csv("garbage\n\"LPUSH\",\"1\"\n").is_empty());
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
