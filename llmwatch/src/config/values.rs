//! Readers for the value types of the file (sizes, durations, fractions, times, days, egress
//! entries). Each returns a message that names the bad value, for `Problem::message`.
use std::{net::IpAddr, str::FromStr, time::Duration};

use chrono::{NaiveTime, Weekday};
use ipnet::IpNet;

use super::{EgressEntry, EgressTarget, Severity};

/// Sizes: a byte count, or a number with a unit: k/M/G/T/P (powers of 1000), Ki/Mi/Gi/Ti/Pi
/// (powers of 1024), each with an optional `B`; `1.5GB` is allowed.
pub(crate) fn size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!("{s:?} is negative; a size is a number of bytes"));
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(t.len());
    let (num, unit) = (t[..split].replace('_', ""), t[split..].trim());
    let bad = || format!("{s:?} is not a size (write bytes, or e.g. 512MiB, 10GiB, 1.5GB)");
    if num.is_empty() {
        return Err(bad());
    }
    let lower = unit.to_ascii_lowercase();
    let (prefix, rest) = match lower.chars().next() {
        Some(c @ ('k' | 'm' | 'g' | 't' | 'p')) => (Some(c), &lower[1..]),
        _ => (None, lower.as_str()),
    };
    let (binary, rest) = match rest.strip_prefix('i') {
        Some(r) if prefix.is_some() => (true, r),
        _ => (false, rest),
    };
    if !matches!(rest, "" | "b") {
        return Err(bad());
    }
    let exp = match prefix {
        None => 0,
        Some('k') => 1,
        Some('m') => 2,
        Some('g') => 3,
        Some('t') => 4,
        _ => 5,
    };
    let base: u64 = if binary { 1024 } else { 1000 };
    let mult = base.pow(exp);
    let too_big = || format!("{s:?} is too large");
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult).ok_or_else(too_big);
    }
    let f: f64 = num.parse().map_err(|_| bad())?;
    let v = (f * mult as f64).round();
    if !v.is_finite() || v >= u64::MAX as f64 {
        return Err(too_big());
    }
    Ok(v as u64)
}

/// Durations: integer seconds, or units joined without or with spaces: `90s`, `15m`, `1h30m`,
/// `500ms`, `2d`, `1w`, `1.5h`.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!("{s:?} is negative"));
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let bad = || format!("{s:?} is not a duration (write e.g. 90s, 15m, 1h30m, or seconds)");
    let mut total = 0f64;
    let mut rest = t;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num: f64 = rest[..n_end].parse().map_err(|_| bad())?;
        rest = rest[n_end..].trim_start();
        let u_end = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = match &rest[..u_end] {
            "ms" | "msec" => 0.001,
            "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
            "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86400.0,
            "w" | "week" | "weeks" => 604800.0,
            _ => return Err(bad()),
        };
        rest = rest[u_end..].trim_start();
        total += num * unit;
    }
    Duration::try_from_secs_f64(total).map_err(|_| format!("{s:?} is too long"))
}

/// A fraction of a file: 0 < x <= 1; `50%` is read as 0.5.
pub(crate) fn fraction(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| format!("{s:?} is not a number"))?;
    if !(v > 0.0 && v <= 1.0) {
        return Err(format!(
            "{s:?} is out of range: a fraction must be above 0 and at most 1 (e.g. 0.5)"
        ));
    }
    Ok(v)
}

pub(crate) fn boolean(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" => Ok(true),
        "false" | "no" | "off" => Ok(false),
        _ => Err(format!("{s:?} is not true or false")),
    }
}

/// An unsigned integer in `min..=max`.
pub(crate) fn integer(s: &str, min: u64, max: u64) -> Result<u64, String> {
    let t = s.trim().replace('_', "");
    match t.parse::<i128>() {
        Ok(v) if v >= min as i128 && v <= max as i128 => Ok(v as u64),
        Ok(_) => Err(format!("{s} is out of range ({min}..={max})")),
        Err(_) => Err(format!("{s:?} is not a whole number")),
    }
}

pub(crate) fn port(s: &str) -> Result<u16, String> {
    integer(s, 1, 65535)
        .map(|p| p as u16)
        .map_err(|_| format!("{s:?} is not a port (1..=65535)"))
}

pub(crate) fn severity(s: &str) -> Result<Severity, String> {
    Severity::from_str(s)
}

/// `HH:MM` (or `HH:MM:SS`); `24:00` only where `allow_24` (an end time: up to midnight).
/// Returns None for 24:00.
pub(crate) fn time_of_day(s: &str, allow_24: bool) -> Result<Option<NaiveTime>, String> {
    let bad = || {
        format!(
            "{s:?} is not a time of day (write HH:MM, 00:00 to 23:59{})",
            if allow_24 { " or 24:00" } else { "" }
        )
    };
    let parts: Vec<&str> = s.trim().split(':').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty() || p.len() > 2) {
        return Err(bad());
    }
    let num = |p: &str| p.parse::<u32>().map_err(|_| bad());
    let (h, m) = (num(parts[0])?, num(parts[1])?);
    let sec = if parts.len() == 3 { num(parts[2])? } else { 0 };
    if allow_24 && h == 24 && m == 0 && sec == 0 {
        return Ok(None);
    }
    NaiveTime::from_hms_opt(h, m, sec).map(Some).ok_or_else(bad)
}

pub(crate) fn weekday(s: &str) -> Result<Weekday, String> {
    let l = s.trim().to_ascii_lowercase();
    let days = [
        ("mon", "monday", Weekday::Mon),
        ("tue", "tuesday", Weekday::Tue),
        ("wed", "wednesday", Weekday::Wed),
        ("thu", "thursday", Weekday::Thu),
        ("fri", "friday", Weekday::Fri),
        ("sat", "saturday", Weekday::Sat),
        ("sun", "sunday", Weekday::Sun),
    ];
    days.iter()
        .find(|(short, long, _)| l == *short || l == *long)
        .map(|d| d.2)
        .ok_or_else(|| format!("{s:?} is not a day (mon, tue, wed, thu, fri, sat, sun)"))
}

/// One `egress.allow` entry: `CIDR`, `IP`, `host`, each optionally with `:port` (`[v6]:port`
/// for IPv6), or `:port` alone for any destination on that port; `*` is any destination.
pub(crate) fn egress_entry(s: &str) -> Result<EgressEntry, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty entry".into());
    }
    // A bare IPv6 address or network: its colons are not a port separator.
    if !t.starts_with('[') && t.matches(':').count() > 1 {
        return Ok(EgressEntry {
            target: EgressTarget::Net(net(t, s)?),
            port: None,
        });
    }
    let (target, port) = if let Some(rest) = t.strip_prefix('[') {
        let (inner, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: missing ']' after an IPv6 address"))?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| format!("{s:?}: expected ':port' after ']'"))?,
            ),
        };
        (EgressTarget::Net(net(inner, s)?), port)
    } else {
        let (host, port) = match t.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (t, None),
        };
        (target(host, s)?, port)
    };
    let port = match port {
        None => None,
        Some(p) => Some(port_in(p, s)?),
    };
    if matches!(target, EgressTarget::Any) && port.is_none() && t != "*" {
        return Err(format!("{s:?}: ':' needs a port after it"));
    }
    Ok(EgressEntry { target, port })
}

fn port_in(p: &str, whole: &str) -> Result<u16, String> {
    port(p).map_err(|_| format!("{whole:?}: {p:?} is not a port (1..=65535)"))
}

fn target(host: &str, whole: &str) -> Result<EgressTarget, String> {
    if host.is_empty() || host == "*" {
        return Ok(EgressTarget::Any);
    }
    // Anything shaped like an address (digits, dots, a slash) must be a valid one: a typo in a
    // CIDR must not turn into a host name that never resolves.
    if host.contains('/') || host.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Ok(EgressTarget::Net(net(host, whole)?));
    }
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !l.starts_with('-')
    };
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.len() > 253 || !name.split('.').all(valid_label) {
        return Err(match host == whole {
            true => format!("{host:?} is not a host name, IP address or CIDR"),
            false => format!("{whole:?}: {host:?} is not a host name, IP address or CIDR"),
        });
    }
    Ok(EgressTarget::Host(name.to_ascii_lowercase()))
}

fn net(s: &str, whole: &str) -> Result<IpNet, String> {
    if s.contains('/') {
        return IpNet::from_str(s).map_err(|_| {
            let why = match s.split_once('/') {
                Some((a, len)) => match (IpAddr::from_str(a), len.parse::<u8>()) {
                    (Err(_), _) => format!("{a:?} is not an IP address"),
                    (Ok(IpAddr::V4(_)), Ok(l)) if l > 32 => format!("prefix /{l} is longer than 32"),
                    (Ok(IpAddr::V6(_)), Ok(l)) if l > 128 => format!("prefix /{l} is longer than 128"),
                    _ => format!("{len:?} is not a prefix length"),
                },
                None => String::new(),
            };
            format!("{whole:?} is not a valid CIDR: {why}")
        });
    }
    IpAddr::from_str(s)
        .map(IpNet::from)
        .map_err(|_| match s == whole {
            true => format!("{s:?} is not an IP address"),
            false => format!("{whole:?}: {s:?} is not an IP address"),
        })
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`, what a dual-stack socket reports) compared as IPv4.
pub(crate) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Edit distance, for "did you mean" suggestions.
pub(crate) fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest candidate, if close enough to be a plausible typo.
pub(crate) fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lw = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (distance(&lw, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= (c.chars().count() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size("1048576"), Ok(1 << 20));
        assert_eq!(size("512MiB"), Ok(512 << 20));
        assert_eq!(size("10GiB"), Ok(10 << 30));
        assert_eq!(size("10 GiB"), Ok(10 << 30));
        assert_eq!(size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(size("2k"), Ok(2000));
        assert_eq!(size("2Ki"), Ok(2048));
        assert_eq!(size("1T"), Ok(1_000_000_000_000));
        assert_eq!(size("100B"), Ok(100));
        assert!(size("-5").unwrap_err().contains("negative"));
        assert!(size("5 parsecs").is_err());
        assert!(size("GiB").is_err());
        assert!(size("99999999999PiB").unwrap_err().contains("too large"));
    }

    #[test]
    fn durations() {
        assert_eq!(duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(duration("600"), Ok(Duration::from_secs(600)));
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(duration("-1m").is_err());
        assert!(duration("10 parsecs").is_err());
        assert!(duration("m").is_err());
        assert!(duration("").is_err());
    }

    #[test]
    fn fractions_times_days() {
        assert_eq!(fraction("0.5"), Ok(0.5));
        assert_eq!(fraction("1"), Ok(1.0));
        assert_eq!(fraction("25%"), Ok(0.25));
        assert!(fraction("1.5").unwrap_err().contains("1.5"));
        assert!(fraction("0").is_err());
        assert!(fraction("NaN").is_err());
        assert_eq!(time_of_day("08:00", false), Ok(NaiveTime::from_hms_opt(8, 0, 0)));
        assert_eq!(time_of_day("24:00", true), Ok(None));
        assert!(time_of_day("24:00", false).is_err());
        assert!(time_of_day("25:00", true).unwrap_err().contains("25:00"));
        assert!(time_of_day("8", false).is_err());
        assert_eq!(weekday("Monday"), Ok(Weekday::Mon));
        assert_eq!(weekday("SUN"), Ok(Weekday::Sun));
        assert!(weekday("funday").is_err());
    }

    #[test]
    fn egress_entries() {
        let e = |s| egress_entry(s).unwrap();
        let net = |s: &str| EgressTarget::Net(s.parse().unwrap());
        assert_eq!(
            e("10.0.0.0/8"),
            EgressEntry {
                target: net("10.0.0.0/8"),
                port: None
            }
        );
        assert_eq!(
            e("192.168.1.5"),
            EgressEntry {
                target: net("192.168.1.5/32"),
                port: None
            }
        );
        assert_eq!(
            e("fd00::/8"),
            EgressEntry {
                target: net("fd00::/8"),
                port: None
            }
        );
        assert_eq!(
            e("::1"),
            EgressEntry {
                target: net("::1/128"),
                port: None
            }
        );
        assert_eq!(
            e(":53"),
            EgressEntry {
                target: EgressTarget::Any,
                port: Some(53)
            }
        );
        assert_eq!(
            e("*:53"),
            EgressEntry {
                target: EgressTarget::Any,
                port: Some(53)
            }
        );
        assert_eq!(
            e("[::1]:8080"),
            EgressEntry {
                target: net("::1/128"),
                port: Some(8080)
            }
        );
        assert_eq!(
            e("10.1.0.0/16:443"),
            EgressEntry {
                target: net("10.1.0.0/16"),
                port: Some(443)
            }
        );
        assert_eq!(
            e("HuggingFace.co:443"),
            EgressEntry {
                target: EgressTarget::Host("huggingface.co".into()),
                port: Some(443)
            }
        );
        assert!(egress_entry("10.0.0.0/33").unwrap_err().contains("/33"));
        assert!(egress_entry("10.0.0.300").is_err());
        assert!(egress_entry("host:70000").unwrap_err().contains("70000"));
        assert!(egress_entry(":").is_err());
        assert!(egress_entry("bad host").is_err());
        assert!(egress_entry("[::1").is_err());
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            closest("inference_port", ["inference_ports", "host"]),
            Some("inference_ports")
        );
        assert_eq!(closest("zzz", ["inference_ports", "host"]), None);
    }
}
