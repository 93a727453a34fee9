//! Requests in flight per client: each authenticated user may have at most
//! `REQUESTS_IN_FLIGHT_PER_USER_MAX` short requests being served at once;
//! one more is answered 429 with `Retry-After`, as Kubernetes' max-inflight
//! filter answers, so one busy or hostile client cannot take every handler
//! from the others. Long-running requests (watches, followed logs) are not
//! counted, as in Kubernetes: they are bounded by the connection limit and
//! the watch limits instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Short requests one user may have in flight.
pub const REQUESTS_IN_FLIGHT_PER_USER_MAX: usize = 128;
/// Users tracked at once; past this, idle users' counters are dropped
/// first, and a flood of distinct users shares one overflow counter.
pub const TRACKED_USERS_MAX: usize = 10_000;
/// What a client refused with 429 is told to wait, in seconds.
pub const RETRY_AFTER_SECONDS: u64 = 1;

/// The counters, one per user.
#[derive(Default)]
pub struct ClientLimits {
    users: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl ClientLimits {
    /// A permit for one more request of `user`, held while it is served;
    /// None when the user is at the limit.
    pub fn admit(&self, user: &str) -> Option<OwnedSemaphorePermit> {
        let semaphore = {
            let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
            if !users.contains_key(user) && users.len() >= TRACKED_USERS_MAX {
                // Idle counters hold nothing; drop them before refusing to track.
                users.retain(|_, s| s.available_permits() < REQUESTS_IN_FLIGHT_PER_USER_MAX);
            }
            let key = if users.len() >= TRACKED_USERS_MAX && !users.contains_key(user) { "" } else { user };
            users.entry(key.to_string()).or_insert_with(|| Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_PER_USER_MAX))).clone()
        };
        semaphore.try_acquire_owned().ok()
    }
}

/// Whether a request is long-running (not counted): a watch, a followed
/// log.
pub fn long_running(query: &str) -> bool {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .unwrap_or_default()
        .iter()
        .any(|(k, v)| matches!(k.as_str(), "watch" | "follow") && matches!(v.as_str(), "true" | "1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_has_its_own_limit_and_permits_come_back() {
        let limits = ClientLimits::default();
        let held: Vec<_> = (0..REQUESTS_IN_FLIGHT_PER_USER_MAX).map(|_| limits.admit("alice").expect("under the limit")).collect();
        assert!(limits.admit("alice").is_none(), "one over the limit is refused");
        assert!(limits.admit("bob").is_some(), "another user is not affected");
        drop(held);
        assert!(limits.admit("alice").is_some(), "finished requests free their places");
    }

    #[test]
    fn a_flood_of_users_stays_bounded() {
        let limits = ClientLimits::default();
        let _busy: Vec<_> = (0..TRACKED_USERS_MAX + 10).map(|i| limits.admit(&format!("u{i}")).expect("admitted")).collect();
        assert!(limits.users.lock().unwrap().len() <= TRACKED_USERS_MAX + 1);
    }

    #[test]
    fn watches_and_followed_logs_are_long_running() {
        assert!(long_running("watch=true&resourceVersion=5"));
        assert!(long_running("follow=1"));
        assert!(!long_running("limit=500"));
        assert!(!long_running("watch=false"));
    }
}
