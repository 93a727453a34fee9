//! The pod state machine as plain functions: what the pod does when a
//! container exits ([`after_exit`]: restart after a backoff, stay
//! terminated, or finish stopping the pod), and what the pod's phase and
//! conditions are, given its containers' states. The pod actor does the
//! I/O these decide.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `spec.restartPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn parse(s: Option<&str>) -> RestartPolicy {
        match s {
            Some("OnFailure") => RestartPolicy::OnFailure,
            Some("Never") => RestartPolicy::Never,
            _ => RestartPolicy::Always,
        }
    }

    /// Whether a container that exited with `exit_code` is started again.
    pub fn restarts(self, exit_code: i64) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Never => false,
        }
    }
}

/// Crash-loop backoff, as the kubelet does it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub max: Duration,
    /// A container that ran this long resets its backoff.
    pub reset_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy { initial: Duration::from_secs(1), max: Duration::from_secs(60), reset_after: Duration::from_secs(60) }
    }
}

impl BackoffPolicy {
    /// The wait before the next start, given the previous wait (None for the
    /// first crash) and how long the container ran this time.
    pub fn next_delay(&self, previous: Option<Duration>, ran_for: Duration) -> Duration {
        match previous {
            Some(prev) if ran_for < self.reset_after => (prev * 2).min(self.max),
            _ => self.initial,
        }
    }
}

/// Why the pod is stopping its containers, if it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopping {
    No,
    /// Deleted gracefully: once every container is down, the agent
    /// removes the pod from the store.
    Terminating,
    /// The pod is gone from the store (or its node's agent was told to
    /// drop it): once every container is down, its containers are
    /// removed and the pod actor stops.
    Killed,
}

/// What the pod does after one of its containers exited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterExit {
    /// Start it again after `delay`, waiting in CrashLoopBackOff.
    Restart { delay: Duration },
    /// Leave it terminated: its restart policy says so.
    StayTerminated,
    /// The pod is stopping and other containers are still up.
    AwaitOthers,
    /// The pod was terminating and this was its last container: remove
    /// the pod from the store.
    Finalize,
    /// The pod was killed and this was its last container: remove the
    /// containers and stop.
    CleanUpAndStop,
}

/// The decision when a container exits with `exit_code` after running for
/// `ran_for`, its previous backoff having been `last_delay`.
/// `all_stopped` says whether every container of the pod is now down.
pub fn after_exit(
    policy: RestartPolicy,
    backoff: &BackoffPolicy,
    last_delay: Option<Duration>,
    ran_for: Duration,
    exit_code: i64,
    stopping: Stopping,
    all_stopped: bool,
) -> AfterExit {
    match stopping {
        Stopping::Terminating if all_stopped => AfterExit::Finalize,
        Stopping::Killed if all_stopped => AfterExit::CleanUpAndStop,
        Stopping::Terminating | Stopping::Killed => AfterExit::AwaitOthers,
        Stopping::No if policy.restarts(exit_code) => AfterExit::Restart { delay: backoff.next_delay(last_delay, ran_for) },
        Stopping::No => AfterExit::StayTerminated,
    }
}

/// One container's state as the pod status reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Waiting { reason: String, message: String },
    Running { started_at: String },
    Terminated { exit_code: i64, reason: String, message: String, started_at: String, finished_at: String },
}

impl ContainerState {
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            ContainerState::Waiting { reason, message } => json!({"waiting": {"reason": reason, "message": message}}),
            ContainerState::Running { started_at } => json!({"running": {"startedAt": started_at}}),
            ContainerState::Terminated { exit_code, reason, message, started_at, finished_at } => {
                let mut t = json!({"exitCode": exit_code, "reason": reason, "message": message});
                // A container that exited before its start was recorded has
                // no start time; an empty timestamp is not a valid one.
                for (key, value) in [("startedAt", started_at), ("finishedAt", finished_at)] {
                    if !value.is_empty() {
                        t[key] = json!(value);
                    }
                }
                json!({"terminated": t})
            }
        }
    }
}

/// What the agent knows of one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerView {
    pub name: String,
    pub state: ContainerState,
    /// Whether it ever started (a container waiting for its first start
    /// keeps the pod Pending).
    pub ever_started: bool,
    pub ready: bool,
}

/// `status.phase`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }
}

/// The pod's phase from its containers, with Kubernetes' rules: Pending
/// until every container has started once; Succeeded or Failed once all
/// have terminated for good; Running otherwise.
pub fn pod_phase(policy: RestartPolicy, containers: &[ContainerView]) -> Phase {
    if containers.is_empty() || containers.iter().any(|c| !c.ever_started) {
        return Phase::Pending;
    }
    let terminated: Vec<i64> = containers
        .iter()
        .filter_map(|c| match c.state {
            ContainerState::Terminated { exit_code, .. } => Some(exit_code),
            _ => None,
        })
        .collect();
    if terminated.len() < containers.len() {
        return Phase::Running;
    }
    // Every container has stopped: final unless the policy restarts one.
    if terminated.iter().any(|code| policy.restarts(*code)) {
        return Phase::Running;
    }
    if terminated.iter().all(|code| *code == 0) {
        Phase::Succeeded
    } else {
        Phase::Failed
    }
}

/// The pod is Ready when every container is running and ready.
pub fn pod_ready(containers: &[ContainerView]) -> bool {
    !containers.is_empty() && containers.iter().all(|c| c.ready && matches!(c.state, ContainerState::Running { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_restarts_with_a_growing_backoff_or_ends_the_pod() {
        let b = BackoffPolicy::default();
        let s = Duration::from_secs;
        let exit = |policy, last, ran, code, stopping, all| after_exit(policy, &b, last, s(ran), code, stopping, all);
        assert_eq!(exit(RestartPolicy::Always, None, 1, 0, Stopping::No, true), AfterExit::Restart { delay: s(1) });
        assert_eq!(exit(RestartPolicy::Always, Some(s(8)), 1, 1, Stopping::No, true), AfterExit::Restart { delay: s(16) });
        assert_eq!(exit(RestartPolicy::Always, Some(s(60)), 1, 1, Stopping::No, true), AfterExit::Restart { delay: s(60) });
        // A container that ran long enough starts over at the first delay.
        assert_eq!(exit(RestartPolicy::Always, Some(s(32)), 61, 1, Stopping::No, true), AfterExit::Restart { delay: s(1) });
        assert_eq!(exit(RestartPolicy::OnFailure, None, 1, 0, Stopping::No, true), AfterExit::StayTerminated);
        assert_eq!(exit(RestartPolicy::OnFailure, None, 1, 2, Stopping::No, false), AfterExit::Restart { delay: s(1) });
        assert_eq!(exit(RestartPolicy::Never, None, 1, 2, Stopping::No, true), AfterExit::StayTerminated);
        // A stopping pod never restarts; its last exit ends it.
        assert_eq!(exit(RestartPolicy::Always, None, 1, 137, Stopping::Terminating, false), AfterExit::AwaitOthers);
        assert_eq!(exit(RestartPolicy::Always, None, 1, 137, Stopping::Terminating, true), AfterExit::Finalize);
        assert_eq!(exit(RestartPolicy::Always, None, 1, 137, Stopping::Killed, false), AfterExit::AwaitOthers);
        assert_eq!(exit(RestartPolicy::Always, None, 1, 137, Stopping::Killed, true), AfterExit::CleanUpAndStop);
    }

    fn view(state: ContainerState, ever_started: bool, ready: bool) -> ContainerView {
        ContainerView { name: "c".into(), state, ever_started, ready }
    }
    fn running() -> ContainerState {
        ContainerState::Running { started_at: "t".into() }
    }
    fn exited(code: i64) -> ContainerState {
        ContainerState::Terminated {
            exit_code: code,
            reason: if code == 0 { "Completed".into() } else { "Error".into() },
            message: String::new(),
            started_at: "t".into(),
            finished_at: "t".into(),
        }
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets_after_a_long_run() {
        let b = BackoffPolicy::default();
        let short = Duration::from_secs(1);
        let mut delays = Vec::new();
        let mut prev = None;
        for _ in 0..9 {
            let d = b.next_delay(prev, short);
            delays.push(d.as_secs());
            prev = Some(d);
        }
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.next_delay(Some(Duration::from_secs(60)), Duration::from_secs(61)), Duration::from_secs(1));
    }

    #[test]
    fn restart_policies() {
        assert!(RestartPolicy::Always.restarts(0));
        assert!(RestartPolicy::OnFailure.restarts(3));
        assert!(!RestartPolicy::OnFailure.restarts(0));
        assert!(!RestartPolicy::Never.restarts(1));
        assert_eq!(RestartPolicy::parse(Some("Never")), RestartPolicy::Never);
        assert_eq!(RestartPolicy::parse(None), RestartPolicy::Always);
    }

    #[test]
    fn phases_follow_kubernetes() {
        let waiting = ContainerState::Waiting { reason: "ContainerCreating".into(), message: String::new() };
        assert_eq!(pod_phase(RestartPolicy::Always, &[view(waiting.clone(), false, false)]), Phase::Pending);
        assert_eq!(pod_phase(RestartPolicy::Always, &[view(running(), true, true)]), Phase::Running);
        // Crash-looping under Always stays Running.
        assert_eq!(pod_phase(RestartPolicy::Always, &[view(exited(1), true, false)]), Phase::Running);
        assert_eq!(pod_phase(RestartPolicy::Never, &[view(exited(0), true, false)]), Phase::Succeeded);
        assert_eq!(pod_phase(RestartPolicy::Never, &[view(exited(0), true, false), view(exited(2), true, false)]), Phase::Failed);
        assert_eq!(pod_phase(RestartPolicy::OnFailure, &[view(exited(0), true, false)]), Phase::Succeeded);
        assert_eq!(pod_phase(RestartPolicy::OnFailure, &[view(exited(1), true, false)]), Phase::Running);
        assert!(pod_ready(&[view(running(), true, true)]));
        assert!(!pod_ready(&[view(running(), true, true), view(running(), true, false)]));
    }
}
