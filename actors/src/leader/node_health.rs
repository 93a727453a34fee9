//! The node failure detector, as a decider without I/O: `step(input, now)`
//! returns the writes to make (mark a node NotReady or Ready, evict its
//! pods, record an Event); the NodeLifecycle actor performs them and feeds
//! the results back. Tested on the exact commands it returns.
//!
//! A node's heartbeats going quiet is evidence against the node only when
//! the path they travel is working. Three things tell a slow path from a
//! dead node:
//! - the leader's own stalls: when this decider's ticks come late, the
//!   time the leader was not running is not counted as silence;
//! - the node's own rhythm: a node whose beats have been arriving every
//!   600 ms gets five of those intervals, not the fixed grace;
//! - the others: a node is judged only against how quiet the rest are
//!   right now (three times the median silence), and when most nodes are
//!   silent together nothing is judged at all, because the fault is more
//!   likely on this side (an overloaded or cut-off leader).
//!
//! Silence beyond the threshold makes a node Suspect; it is Lost only
//! after a further clean tick (one that came on time, with no mass
//! silence, and with nine in ten of the unsuspected nodes heard within two
//! periods) still finds it silent. No threshold exceeds `grace_max`, and a
//! suspect silent for longer than that is judged even on a poor path, so a
//! dead node is always caught.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::clock::Mono;

/// A node's beat interval may stretch this many times before it counts.
pub const BEATS_MISSED_MAX: u32 = 5;
/// A node must be this many times quieter than the median node.
pub const MEDIAN_SILENCE_FACTOR: u32 = 3;
/// A tick this many periods after the last one means the leader stalled.
const STALL_PERIODS: u32 = 2;
/// A node that beat within this many periods counts as heard just now.
const FRESH_PERIODS: u32 = 2;
/// The path is working when at least this share (per mille) of the nodes
/// not under suspicion were heard just now.
const PATH_HEALTHY_PER_MILLE: usize = 900;
/// ... unless fewer than this many are unheard.
const PATH_POOR_NODES_MIN: usize = 2;

/// The detector's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthSettings {
    /// Silence that makes a healthy-path node suspect.
    pub grace: Duration,
    /// No node is given longer than this, whatever the path looks like.
    pub grace_max: Duration,
    /// How often the decider is ticked.
    pub period: Duration,
    /// A new leader waits this long for agents to find it.
    pub takeover_grace: Duration,
    /// Clean ticks a suspect must stay silent through before it is lost.
    pub confirm_ticks: u32,
    /// The least time between two writes about one node.
    pub action_retry: Duration,
}

/// What the decider knows of a node at a tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeObservation {
    pub name: String,
    /// The stored Ready condition is True.
    pub stored_ready: bool,
    /// Pods bound to the node, per the cache.
    pub pods_bound: usize,
    /// When its last heartbeat arrived, and its recent beat interval.
    pub beat: Option<(Mono, Option<Duration>)>,
}

pub enum NodeInput {
    /// The periodic look at every node.
    Tick(Vec<NodeObservation>),
    /// The writes last asked for about this node are done (or failed; the
    /// next due tick asks again for whatever is still not so).
    Done { node: String },
}

/// A write the executor makes. Commands for one node in one step run in
/// order, and the next are asked for only after `Done`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeCommand {
    MarkNotReady {
        node: String,
        message: String,
    },
    MarkReady {
        node: String,
        message: String,
    },
    /// Delete every pod bound to the node now.
    Evict {
        node: String,
    },
    Event {
        node: String,
        warning: bool,
        reason: &'static str,
        message: String,
    },
    /// Most nodes went silent at once (`Some`) or answer again (`None`):
    /// judgement is paused meanwhile. Only logged.
    MassSilence(Option<(usize, usize)>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Live,
    Suspect { since: Mono, clean_ticks: u32 },
    Lost { since: Mono },
}

#[derive(Clone, Debug)]
struct Track {
    first_seen: Mono,
    beat: Option<Mono>,
    interval: Option<Duration>,
    /// The leader's stall total when `beat` (or `first_seen`) was taken.
    stall_ref: Duration,
    phase: Phase,
    busy: bool,
    last_action: Option<Mono>,
}

/// Per-node verdicts across ticks.
pub struct NodeHealth {
    settings: HealthSettings,
    nodes: BTreeMap<String, Track>,
    last_tick: Option<Mono>,
    /// Total time the leader was seen not running its ticks.
    stalled: Duration,
    mass: Option<(usize, usize)>,
    /// The last tick at which the heartbeat path looked poor.
    path_poor_at: Option<Mono>,
}

impl NodeHealth {
    pub fn new(settings: HealthSettings) -> Self {
        NodeHealth { settings, nodes: BTreeMap::new(), last_tick: None, stalled: Duration::ZERO, mass: None, path_poor_at: None }
    }

    /// How long the leader has been seen stalled in all.
    pub fn stalled(&self) -> Duration {
        self.stalled
    }

    /// Whether the node is now judged lost.
    pub fn is_lost(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(|t| matches!(t.phase, Phase::Lost { .. }))
    }

    pub fn step(&mut self, input: NodeInput, now: Mono) -> Vec<NodeCommand> {
        match input {
            NodeInput::Done { node } => {
                if let Some(t) = self.nodes.get_mut(&node) {
                    t.busy = false;
                }
                Vec::new()
            }
            NodeInput::Tick(observations) => self.tick(observations, now),
        }
    }

    /// Silence of a node, not counting the leader's own stalls since its
    /// reference point (its last beat this term, or its takeover grace).
    fn silence(&self, t: &Track, now: Mono) -> Duration {
        let reference = match t.beat {
            Some(b) if b >= t.first_seen => b,
            _ => t.first_seen + self.settings.takeover_grace,
        };
        now.saturating_sub(reference).saturating_sub(self.stalled.saturating_sub(t.stall_ref))
    }

    fn threshold(&self, t: &Track, median_silence: Duration) -> Duration {
        let s = &self.settings;
        let rhythm = t.interval.map_or(Duration::ZERO, |i| i.saturating_mul(BEATS_MISSED_MAX));
        let crowd = median_silence.saturating_mul(MEDIAN_SILENCE_FACTOR);
        s.grace.max(rhythm).max(crowd).min(s.grace_max.max(s.grace))
    }

    fn tick(&mut self, observations: Vec<NodeObservation>, now: Mono) -> Vec<NodeCommand> {
        let s = self.settings;
        let mut clean = true;
        if let Some(last) = self.last_tick {
            let gap = now.saturating_sub(last);
            if gap > s.period.saturating_mul(STALL_PERIODS) {
                self.stalled += gap - s.period;
                clean = false;
            }
        }
        self.last_tick = Some(now);

        let mut facts: BTreeMap<String, (bool, usize)> = BTreeMap::new();
        for obs in observations {
            let stalled = self.stalled;
            let t = self.nodes.entry(obs.name.clone()).or_insert_with(|| Track {
                first_seen: now,
                beat: None,
                interval: None,
                stall_ref: stalled,
                // A node already NotReady starts out lost: it is Ready
                // again only when it beats, and its leftovers go.
                phase: if obs.stored_ready { Phase::Live } else { Phase::Lost { since: now } },
                busy: false,
                last_action: None,
            });
            if let Some((at, interval)) = obs.beat {
                if t.beat.is_none_or(|old| at > old) {
                    t.beat = Some(at);
                    t.interval = interval;
                    t.stall_ref = stalled;
                }
            }
            facts.insert(obs.name, (obs.stored_ready, obs.pods_bound));
        }
        self.nodes.retain(|name, _| facts.contains_key(name));

        // Nodes already judged lost do not count: a chain of single
        // deaths is judged one by one; only a wave at once pauses. With
        // fewer than three others there is no crowd to compare with.
        let candidates: Vec<&Track> = self.nodes.values().filter(|t| !matches!(t.phase, Phase::Lost { .. })).collect();
        let mut silences: Vec<Duration> = candidates.iter().map(|t| self.silence(t, now)).collect();
        let median = if silences.len() < 3 {
            Duration::ZERO
        } else {
            let mid = (silences.len() - 1) / 2;
            *silences.select_nth_unstable(mid).1
        };
        let silent = candidates.iter().filter(|t| self.silence(t, now) > self.threshold(t, Duration::ZERO)).count();
        let total = candidates.len();
        let mass = (total >= 3 && silent * 2 > total).then_some((silent, total));
        let mut out = Vec::new();
        if mass.is_some() != self.mass.is_some() {
            out.push(NodeCommand::MassSilence(mass));
        }
        self.mass = mass;
        // The path itself: when one node in ten of those not suspected has
        // gone unheard for two periods, beats are being held up somewhere
        // (a busy process, a blocked thread) and silence proves little.
        let fresh_limit = s.period.saturating_mul(FRESH_PERIODS);
        let (mut unsuspected, mut fresh) = (0usize, 0usize);
        for t in &candidates {
            if matches!(t.phase, Phase::Live) {
                unsuspected += 1;
                fresh += usize::from(self.silence(t, now) <= fresh_limit);
            }
        }
        // One node going quiet is that node's business (it may be dying);
        // the path is in doubt only when several are.
        let unheard = unsuspected - fresh;
        if unheard >= PATH_POOR_NODES_MIN && fresh * 1000 < unsuspected * PATH_HEALTHY_PER_MILLE {
            self.path_poor_at = Some(now);
        }
        // Beats held up come through in bursts: the path must have been
        // working for a whole grace period, not just this tick.
        let path_ok = self.path_poor_at.is_none_or(|at| now.saturating_sub(at) > s.grace);
        let judging = clean && mass.is_none();

        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for name in names {
            let (stored_ready, pods_bound) = facts[&name];
            let (silence, threshold) = {
                let t = &self.nodes[&name];
                (self.silence(t, now), self.threshold(t, median))
            };
            let t = self.nodes.get_mut(&name).expect("tracked");
            let due = !t.busy && t.last_action.is_none_or(|a| now.saturating_sub(a) >= s.action_retry);
            let mut cmds = Vec::new();
            match t.phase {
                Phase::Live => {
                    if silence > threshold {
                        t.phase = Phase::Suspect { since: now, clean_ticks: 0 };
                    } else if !stored_ready && due && t.beat.is_some_and(|b| b >= t.first_seen) {
                        // Stored NotReady but beating: an earlier leader's
                        // verdict, or a write of ours the agent overtook.
                        cmds.push(NodeCommand::MarkReady { node: name.clone(), message: "flotilla agent is posting heartbeats".into() });
                    }
                }
                Phase::Suspect { since, clean_ticks } => {
                    if silence <= threshold {
                        t.phase = Phase::Live;
                    } else if judging && !t.busy && (path_ok || silence > s.grace_max) {
                        let clean_ticks = clean_ticks + 1;
                        t.phase = Phase::Suspect { since, clean_ticks };
                        if clean_ticks >= s.confirm_ticks {
                            t.phase = Phase::Lost { since: now };
                            let message = format!("no heartbeat for {} ms (grace {} ms)", silence.as_millis(), threshold.as_millis());
                            cmds.push(NodeCommand::MarkNotReady { node: name.clone(), message: message.clone() });
                            cmds.push(NodeCommand::Event { node: name.clone(), warning: true, reason: "NodeNotReady", message });
                            if pods_bound > 0 {
                                cmds.push(NodeCommand::Evict { node: name.clone() });
                            }
                        }
                    }
                }
                Phase::Lost { since } => {
                    let back = t.beat.is_some_and(|b| b > since) && silence <= s.grace;
                    if back && !t.busy {
                        t.phase = Phase::Live;
                        let message = "flotilla agent is posting heartbeats again".to_string();
                        cmds.push(NodeCommand::MarkReady { node: name.clone(), message });
                        cmds.push(NodeCommand::Event {
                            node: name.clone(),
                            warning: false,
                            reason: "NodeReady",
                            message: "heartbeats resumed".into(),
                        });
                    } else if !back && due && mass.is_none() && silence > s.grace {
                        // (A node stored NotReady when this leader started
                        // is first given the takeover grace to beat.)
                        if stored_ready {
                            cmds.push(NodeCommand::MarkNotReady {
                                node: name.clone(),
                                message: format!("no heartbeat for {} ms", silence.as_millis()),
                            });
                        }
                        if pods_bound > 0 {
                            cmds.push(NodeCommand::Evict { node: name.clone() });
                        }
                    }
                }
            }
            if !cmds.is_empty() {
                t.busy = true;
                t.last_action = Some(now);
                out.extend(cmds);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> HealthSettings {
        HealthSettings {
            grace: ms(1000),
            grace_max: ms(5000),
            period: ms(200),
            takeover_grace: ms(3000),
            confirm_ticks: 1,
            action_retry: ms(1000),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A small cluster (nodes a, b, c unless told otherwise, 10 pods
    /// each), its beats, the stored Ready conditions (writes land unless
    /// `writes_fail`), and every command with its time.
    struct Run {
        health: NodeHealth,
        beats: BTreeMap<String, (Mono, Option<Duration>)>,
        stored: BTreeMap<String, bool>,
        writes_fail: bool,
        log: Vec<(u64, NodeCommand)>,
    }

    impl Run {
        fn new() -> Run {
            Run::with_nodes(&["a", "b", "c"])
        }
        fn with_nodes(nodes: &[&str]) -> Run {
            let stored = nodes.iter().map(|n| (n.to_string(), true)).collect();
            Run { health: NodeHealth::new(settings()), beats: BTreeMap::new(), stored, writes_fail: false, log: Vec::new() }
        }
        fn beat(&mut self, node: &str, at: u64) {
            let at = ms(at);
            let interval = self.beats.get(node).map(|(last, _)| at - *last);
            self.beats.insert(node.into(), (at, interval));
        }
        fn tick(&mut self, now: u64) -> Vec<NodeCommand> {
            let obs = self
                .stored
                .iter()
                .map(|(n, r)| NodeObservation { name: n.clone(), stored_ready: *r, pods_bound: 10, beat: self.beats.get(n).copied() })
                .collect();
            let cmds = self.health.step(NodeInput::Tick(obs), ms(now));
            for c in &cmds {
                self.log.push((now, c.clone()));
                let (node, ready) = match c {
                    NodeCommand::MarkNotReady { node, .. } => (node, Some(false)),
                    NodeCommand::MarkReady { node, .. } => (node, Some(true)),
                    NodeCommand::Evict { node } => (node, None),
                    _ => continue,
                };
                if let (Some(ready), false) = (ready, self.writes_fail) {
                    self.stored.insert(node.clone(), ready);
                }
                self.health.step(NodeInput::Done { node: node.clone() }, ms(now));
            }
            cmds
        }
        /// Ticks every 200 ms from `from` to `to`, each node beating just
        /// before a tick when `beating(node, now)` says so.
        fn go(&mut self, from: u64, to: u64, beating: impl Fn(&str, u64) -> bool) {
            for now in (from..=to).step_by(200) {
                let nodes: Vec<String> = self.stored.keys().cloned().collect();
                for n in nodes.iter().filter(|n| beating(n, now)) {
                    self.beat(n, now);
                }
                self.tick(now);
            }
        }
        /// When each write of this kind was asked for, and about whom.
        fn writes(&self, kind: fn(&NodeCommand) -> Option<&String>) -> Vec<(u64, String)> {
            self.log.iter().filter_map(|(t, c)| kind(c).map(|n| (*t, n.clone()))).collect()
        }
    }

    fn not_ready(c: &NodeCommand) -> Option<&String> {
        if let NodeCommand::MarkNotReady { node, .. } = c {
            Some(node)
        } else {
            None
        }
    }
    fn ready(c: &NodeCommand) -> Option<&String> {
        if let NodeCommand::MarkReady { node, .. } = c {
            Some(node)
        } else {
            None
        }
    }
    fn evict(c: &NodeCommand) -> Option<&String> {
        if let NodeCommand::Evict { node } = c {
            Some(node)
        } else {
            None
        }
    }
    fn at(t: u64, node: &str) -> (u64, String) {
        (t, node.to_string())
    }

    #[test]
    fn beating_nodes_get_no_writes() {
        let mut run = Run::new();
        run.go(0, 20_000, |_, _| true);
        assert_eq!(run.log, vec![]);
    }

    #[test]
    fn a_dead_node_is_suspected_after_grace_and_lost_one_clean_tick_later() {
        let mut run = Run::new();
        run.go(0, 6_000, |n, now| n != "c" || now <= 4_000);
        // c's last beat was at 4,000: silent 1,200 ms at 5,200 (suspect),
        // lost at the clean tick after, 5,400.
        let message = "no heartbeat for 1400 ms (grace 1000 ms)".to_string();
        assert_eq!(
            run.log,
            vec![
                (5_400, NodeCommand::MarkNotReady { node: "c".into(), message: message.clone() }),
                (5_400, NodeCommand::Event { node: "c".into(), warning: true, reason: "NodeNotReady", message }),
                (5_400, NodeCommand::Evict { node: "c".into() }),
            ]
        );
        assert!(run.health.is_lost("c"));
    }

    #[test]
    fn a_leader_stall_is_not_counted_as_silence() {
        let mut run = Run::new();
        run.go(0, 2_000, |_, _| true);
        // The leader does not run for 3 s: no ticks, and no beats recorded.
        // Then beats are recorded again before and after the next ticks.
        assert_eq!(run.tick(5_000), vec![], "the tick after a stall judges no one");
        run.go(5_200, 8_000, |_, _| true);
        assert_eq!(run.log, vec![]);
        assert_eq!(run.health.stalled(), ms(2_800));
    }

    #[test]
    fn a_stall_does_not_hide_a_node_that_died_before_it() {
        let mut run = Run::new();
        run.go(0, 2_000, |n, now| n != "c" || now <= 1_000);
        // c silent since 1,000; a stall of 2 s; c stays silent.
        run.tick(4_200);
        run.go(4_400, 6_000, |n, _| n != "c");
        // At 2,000 c was silent 1,000 ms; after the stall (2,000 of the
        // 2,200 ms not counted) it is suspect at 4,200 (1,200 ms) and lost
        // at 4,400, the first clean tick.
        assert_eq!(run.writes(not_ready), vec![at(4_400, "c")]);
    }

    #[test]
    fn a_node_that_beats_slowly_is_judged_on_its_own_rhythm() {
        let mut run = Run::new();
        // c's beats come every 800 ms (a congested link), then once after
        // 2.4 s: every gap is under five of its own intervals.
        run.go(0, 20_000, |n, now| n != "c" || now % 800 == 0);
        run.go(20_200, 22_200, |n, _| n != "c");
        run.go(22_400, 24_000, |_, _| true);
        assert_eq!(run.log, vec![]);
    }

    #[test]
    fn when_every_node_is_late_nobody_is_judged() {
        let nodes: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
        let mut run = Run::with_nodes(&nodes.iter().map(String::as_str).collect::<Vec<_>>());
        run.go(0, 4_000, |_, _| true);
        // The path slows for everyone: beats land every 1.4 s, staggered.
        run.go(4_200, 12_000, |n, now| {
            let i: u64 = n[1..].parse().unwrap();
            (now / 200 + i).is_multiple_of(7)
        });
        let judged: Vec<&(u64, NodeCommand)> = run.log.iter().filter(|(_, c)| !matches!(c, NodeCommand::MassSilence(_))).collect();
        assert_eq!(judged, Vec::<&(u64, NodeCommand)>::new());
    }

    #[test]
    fn most_nodes_silent_at_once_pauses_judgement_and_says_so() {
        let mut run = Run::new();
        run.go(0, 2_000, |_, _| true);
        run.go(2_200, 4_000, |n, _| n == "a");
        assert_eq!(run.log, vec![(3_200, NodeCommand::MassSilence(Some((2, 3))))]);
        run.go(4_200, 4_400, |_, _| true);
        assert_eq!(run.log.last(), Some(&(4_200, NodeCommand::MassSilence(None))));
        assert!(!run.health.is_lost("b"));
    }

    #[test]
    fn a_lost_node_that_beats_again_is_ready_with_an_event() {
        let mut run = Run::new();
        run.go(0, 3_000, |n, now| n != "c" || now <= 1_000);
        assert!(run.health.is_lost("c"));
        run.log.clear();
        run.go(3_200, 3_200, |_, _| true);
        assert_eq!(
            run.log,
            vec![
                (3_200, NodeCommand::MarkReady { node: "c".into(), message: "flotilla agent is posting heartbeats again".into() }),
                (3_200, NodeCommand::Event { node: "c".into(), warning: false, reason: "NodeReady", message: "heartbeats resumed".into() }),
            ]
        );
    }

    #[test]
    fn a_lost_node_keeps_being_evicted_while_pods_are_bound_but_not_faster_than_the_retry() {
        let mut run = Run::new();
        run.go(0, 4_000, |n, now| n != "c" || now <= 1_000);
        assert_eq!(run.writes(evict), vec![at(2_400, "c"), at(3_400, "c")]);
        assert_eq!(run.writes(not_ready), vec![at(2_400, "c")], "marked once: the store says NotReady after");
    }

    #[test]
    fn a_new_leader_waits_the_takeover_grace_and_revives_stale_verdicts() {
        let mut run = Run::new();
        // Beats from before this leader's first tick do not count; b is
        // stored NotReady by an earlier leader but beats.
        run.beat("a", 0);
        run.beat("c", 0);
        run.stored.insert("b".into(), false);
        run.go(100, 4_500, |n, now| n == "b" || (n == "a" && now <= 300));
        // b: lost from the start (stored NotReady), back at the first tick
        // where it beat after that, and nothing of it evicted. a: beat at
        // 300, suspect at 1,500 and lost at 1,700. c: never beat this
        // term, so it has the takeover grace: suspect at 4,300 (100 +
        // 3,000 + 1,200), lost at 4,500.
        assert_eq!(run.writes(ready), vec![at(300, "b")]);
        assert_eq!(run.writes(not_ready), vec![at(1_700, "a"), at(4_500, "c")]);
        assert!(!run.writes(evict).iter().any(|(_, n)| n == "b"));
    }

    #[test]
    fn a_write_that_fails_for_a_beating_node_is_asked_again_and_never_makes_it_lost() {
        let mut run = Run::new();
        // b is stored NotReady but beats; every write fails, so the store
        // keeps saying NotReady: asked again every retry, never lost, and
        // nothing of it evicted.
        run.stored.insert("b".into(), false);
        run.writes_fail = true;
        run.go(0, 3_000, |_, _| true);
        assert_eq!(run.writes(ready), vec![at(200, "b"), at(1_200, "b"), at(2_200, "b")]);
        assert_eq!(run.writes(evict), vec![]);
        assert!(!run.health.is_lost("b"));
    }

    #[test]
    fn while_beats_are_held_up_for_many_nodes_a_late_one_is_not_judged_until_grace_max() {
        let nodes: Vec<String> = (0..20).map(|i| format!("n{i:02}")).collect();
        let mut run = Run::with_nodes(&nodes.iter().map(String::as_str).collect::<Vec<_>>());
        run.go(0, 4_000, |_, _| true);
        // A blocked thread holds up the beats of a quarter of the nodes
        // for a while (n00 longest); the others beat on time.
        run.go(4_200, 6_600, |n, now| match n {
            "n00" => false,
            "n01" | "n02" | "n03" | "n04" => now % 1_200 == 0,
            _ => true,
        });
        assert_eq!(run.writes(not_ready), vec![], "no judgement while the path holds beats up");
        // The path recovers but n00 stays silent: it is judged once the path
        // has worked for a whole grace period.
        run.go(6_800, 8_400, |n, _| n != "n00");
        assert_eq!(run.writes(not_ready), vec![at(7_800, "n00")]);
    }
}
