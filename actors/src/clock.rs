//! Time as a seam. Deciders take `now` as an argument; the actors around
//! them ask a [`Clock`] for it, so that the same code runs on the machine's
//! clocks (`SystemClock`) and on a simulated one (`ManualClock`) that only
//! moves when the simulation moves it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A point on a monotonic clock: time since that clock's origin.
pub type Mono = Duration;

/// Where deciders get the time from.
pub trait Clock: Send + Sync + 'static {
    /// Monotonic time: never goes back, unaffected by wall-clock steps.
    fn mono(&self) -> Mono;
    /// Wall time in milliseconds since the Unix epoch (what objects record).
    fn wall_unix_ms(&self) -> u64;
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

/// The machine's clocks. All `SystemClock`s share one origin, so their
/// monotonic readings compare across the process.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

impl Clock for SystemClock {
    fn mono(&self) -> Mono {
        origin().elapsed()
    }
    fn wall_unix_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }
}

/// The default clock for production wiring.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock that moves only when told to: the simulation's and the tests'.
/// The wall clock is the monotonic one plus a fixed start, which a test may
/// skew to model clock drift.
#[derive(Debug)]
pub struct ManualClock {
    mono_nanos: AtomicU64,
    wall_start_ms: AtomicU64,
}

impl ManualClock {
    pub fn new(wall_start_ms: u64) -> Arc<ManualClock> {
        Arc::new(ManualClock { mono_nanos: AtomicU64::new(0), wall_start_ms: AtomicU64::new(wall_start_ms) })
    }
    /// Moves time forward (never back).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.mono_nanos.fetch_add(by, Ordering::AcqRel);
    }
    /// Sets the monotonic time, if it is later than now.
    pub fn advance_to(&self, to: Mono) {
        let to = u64::try_from(to.as_nanos()).unwrap_or(u64::MAX);
        self.mono_nanos.fetch_max(to, Ordering::AcqRel);
    }
    /// Shifts the wall clock by `ms` (a drifting or stepped clock).
    pub fn skew_wall_ms(&self, ms: i64) {
        let now = self.wall_start_ms.load(Ordering::Acquire);
        self.wall_start_ms.store(now.saturating_add_signed(ms), Ordering::Release);
    }
}

impl Clock for ManualClock {
    fn mono(&self) -> Mono {
        Duration::from_nanos(self.mono_nanos.load(Ordering::Acquire))
    }
    fn wall_unix_ms(&self) -> u64 {
        self.wall_start_ms.load(Ordering::Acquire).saturating_add(self.mono().as_millis() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_forward_and_when_told() {
        let c = ManualClock::new(1_000_000);
        assert_eq!(c.mono(), Duration::ZERO);
        c.advance(Duration::from_millis(250));
        c.advance_to(Duration::from_millis(100));
        assert_eq!(c.mono(), Duration::from_millis(250));
        assert_eq!(c.wall_unix_ms(), 1_000_250);
        c.skew_wall_ms(-500);
        assert_eq!(c.wall_unix_ms(), 999_750);
        assert_eq!(c.mono(), Duration::from_millis(250), "a wall step leaves monotonic time alone");
    }

    #[test]
    fn system_clocks_share_one_origin() {
        let (a, b) = (SystemClock, SystemClock);
        let first = a.mono();
        assert!(b.mono() >= first);
    }
}
