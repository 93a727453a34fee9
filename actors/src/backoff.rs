//! The one capped exponential back-off: doubling from `first` to `max`.
//! Watchers wait by it between failed tries, supervisors before restarting
//! a failed child. (Containers' restart back-off, which also resets after a
//! long run, is `agent::pod_state::BackoffPolicy`.)

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { first: Duration::from_millis(100), max: Duration::from_secs(5) }
    }
}

impl Backoff {
    /// The wait before try number `attempt` after the first failure
    /// (0-based: `first`, then twice that, and so on up to `max`).
    pub fn delay(&self, attempt: u32) -> Duration {
        self.first.saturating_mul(1u32 << attempt.min(16)).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_and_caps() {
        let b = Backoff { first: Duration::from_millis(100), max: Duration::from_secs(5) };
        let delays: Vec<u64> = (0..8).map(|a| b.delay(a).as_millis() as u64).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(b.delay(40), Duration::from_secs(5));
    }
}
