//! The control plane in deterministic simulation (`flotilla_actors::sim`):
//! a fixed set of seeds on every run, each under faults, each checked by
//! every invariant; the same seed must give the same trace. A seed that
//! once found a bug stays in `SEEDS`. `FLOTILLA_SIM_SEEDS=N` sweeps N more.

use std::time::Duration;

use flotilla_actors::sim::{self, FaultProfile, SimConfig, SimReport};

/// Seeds run on every test run.
const SEEDS: &[u64] = &[1, 2, 3, 4, 5, 6, 7, 8];

fn config(seed: u64, faults: FaultProfile) -> SimConfig {
    SimConfig { seed, servers: 3, nodes: 12, pods: 120, duration: Duration::from_secs(150), faults, print_trace: false }
}

fn explain(r: &SimReport) -> String {
    match &r.violation {
        None => String::new(),
        Some(v) => format!(
            "seed {} broke \"{}\" at step {} ({:?}): {}\nrerun: flotilla sim --seed {} --nodes 12 --pods 120 --duration 150s --trace\n{}",
            r.seed,
            v.invariant,
            v.step,
            v.at,
            v.detail,
            r.seed,
            v.tail.join("\n")
        ),
    }
}

#[test]
fn every_seed_of_the_set_keeps_every_invariant_under_faults() {
    for &seed in SEEDS {
        let r = sim::run(config(seed, FaultProfile::Default));
        assert!(r.violation.is_none(), "{}", explain(&r));
        assert!(r.faults.values().sum::<u64>() > 0, "seed {seed} injected no fault: {:?}", r.faults);
        assert!(r.pods_running >= 100, "seed {seed}: only {} pods running at the end", r.pods_running);
    }
}

#[test]
fn heavy_faults_are_survived_too() {
    for seed in [11, 12] {
        let r = sim::run(config(seed, FaultProfile::Heavy));
        assert!(r.violation.is_none(), "{}", explain(&r));
        assert!(r.faults.values().sum::<u64>() >= 10, "seed {seed}: {:?}", r.faults);
    }
}

/// Seeds that found bugs at twenty nodes under heavy faults: a rolling
/// update past maxSurge was seed 1 at fifty nodes; a workload's Service
/// deleted while its Deployment stayed was seeds 101, 120 and 132.
#[test]
fn bigger_clusters_under_heavy_faults() {
    for seed in [101, 120, 132] {
        let r = sim::run(SimConfig { nodes: 20, pods: 300, duration: Duration::from_secs(240), ..config(seed, FaultProfile::Heavy) });
        assert!(r.violation.is_none(), "{}", explain(&r));
        assert!(r.pods_running >= 280, "seed {seed}: only {} pods running at the end", r.pods_running);
    }
}

#[test]
fn one_seed_is_one_trace_and_another_seed_another() {
    let a = sim::run(config(21, FaultProfile::Default));
    let b = sim::run(config(21, FaultProfile::Default));
    let c = sim::run(config(22, FaultProfile::Default));
    assert_eq!((a.digest, a.trace_lines), (b.digest, b.trace_lines), "the same seed must replay byte for byte");
    assert_ne!(a.digest, c.digest);
}

#[test]
fn a_quiet_run_converges_with_no_node_ever_judged_lost() {
    let r = sim::run(config(31, FaultProfile::None));
    assert!(r.violation.is_none(), "{}", explain(&r));
    assert_eq!(r.nodes_marked_not_ready, 0, "no fault, so no node may be judged lost");
    assert_eq!(r.pods_evicted, 0);
}

#[test]
fn a_longer_sweep_when_asked() {
    let Some(n) = std::env::var("FLOTILLA_SIM_SEEDS").ok().and_then(|v| v.parse::<u64>().ok()) else {
        eprintln!("skipping the seed sweep: set FLOTILLA_SIM_SEEDS=N to run N more seeds");
        return;
    };
    for seed in 1000..1000 + n {
        let r = sim::run(SimConfig { duration: Duration::from_secs(300), nodes: 30, pods: 600, ..config(seed, FaultProfile::Default) });
        assert!(r.violation.is_none(), "{}", explain(&r));
    }
}
