//! Wall-clock time for events and rules, injectable so time-dependent behaviour (business
//! hours, windows) is testable: `--clock-start` runs the agent as if it started at that instant.
use chrono::{DateTime, Utc};

pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The host's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The host's clock shifted so that it read `start` when the agent started; time still flows.
pub struct ShiftedClock {
    offset: chrono::TimeDelta,
}

impl ShiftedClock {
    pub fn starting_at(start: DateTime<Utc>) -> Self {
        ShiftedClock {
            offset: start - Utc::now(),
        }
    }
}

impl Clock for ShiftedClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.offset
    }
}

/// A clock that only moves when told: replay and unit tests.
#[derive(Default)]
pub struct ManualClock {
    now: std::sync::Mutex<DateTime<Utc>>,
}

impl ManualClock {
    pub fn at(t: DateTime<Utc>) -> Self {
        ManualClock {
            now: std::sync::Mutex::new(t),
        }
    }
    pub fn set(&self, t: DateTime<Utc>) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = t;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// CLOCK_BOOTTIME now, in the kernel's `bpf_ktime_get_boot_ns` units.
pub fn boot_ns_now() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wall time of a kernel timestamp: `now` minus how long ago it was in boot time.
pub fn boot_to_wall(clock: &dyn Clock, ts_ns: u64) -> DateTime<Utc> {
    BootAnchor::now(clock).wall(ts_ns)
}

/// One reading of both clocks, to map kernel (boot-time) stamps to wall time. Taken once per
/// batch of events rather than per event: two clock reads each showed in the W4 profile.
#[derive(Clone, Copy, Debug)]
pub struct BootAnchor {
    boot_ns: u64,
    wall: DateTime<Utc>,
}

impl BootAnchor {
    pub fn now(clock: &dyn Clock) -> Self {
        BootAnchor {
            boot_ns: boot_ns_now(),
            wall: clock.now(),
        }
    }

    pub fn wall(&self, ts_ns: u64) -> DateTime<Utc> {
        let d = (ts_ns as i128 - self.boot_ns as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64;
        self.wall + chrono::TimeDelta::nanoseconds(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_timestamps_map_to_wall_time() {
        let clock = ManualClock::at("2026-11-22T03:00:00Z".parse().unwrap());
        let t = boot_to_wall(&clock, boot_ns_now() - 2_000_000_000);
        let delta = clock.now() - t;
        assert!(
            delta >= chrono::TimeDelta::seconds(2) && delta < chrono::TimeDelta::seconds(3),
            "{delta}"
        );
    }

    #[test]
    fn shifted_clock_starts_where_told() {
        let start: DateTime<Utc> = "2020-01-01T00:00:00Z".parse().unwrap();
        let c = ShiftedClock::starting_at(start);
        assert!((c.now() - start).num_seconds().abs() < 2);
    }
}
