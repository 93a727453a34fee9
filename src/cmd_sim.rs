//! `flotilla sim`: runs the control plane in deterministic simulation
//! from a seed (see `flotilla_actors::sim`) and reports the run: the trace
//! digest (equal for equal seeds), what faults it injected, and the first
//! invariant it broke, if any, with the seed and the trace leading to it.

use std::time::{Duration, Instant};

use clap::Args;
use flotilla_actors::sim::{self, FaultProfile, SimConfig, SimReport};
use serde_json::json;

/// Nodes a simulation may have at most (memory and time stay bounded).
const SIM_NODES_MAX: usize = 10_000;
/// Pods a simulation may start with at most.
const SIM_PODS_MAX: usize = 200_000;
/// Longest simulated duration.
const SIM_DURATION_MAX: Duration = Duration::from_secs(24 * 3600);

#[derive(Args, Debug)]
pub struct SimArgs {
    /// The seed: the same seed runs the same simulation.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Runs this many seeds, from --seed on, and reports each.
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    /// Server members (leadership moves among them).
    #[arg(long, default_value_t = 3)]
    pub servers: usize,
    /// Node agents.
    #[arg(long, default_value_t = 50)]
    pub nodes: usize,
    /// Replicas over all Deployments at the start.
    #[arg(long, default_value_t = 1000)]
    pub pods: usize,
    /// Simulated time, e.g. 90s, 10m, 1h (at least 70s: a quiet minute ends every run).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub duration: Duration,
    /// none, default or heavy.
    #[arg(long, default_value = "default")]
    pub faults: FaultProfile,
    /// Print every line of the trace.
    #[arg(long)]
    pub trace: bool,
    /// One JSON object per seed instead of text.
    #[arg(long)]
    pub json: bool,
}

/// "90s", "10m", "2h" or a number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (digits, unit) = s.trim().split_at(s.trim().find(|c: char| !c.is_ascii_digit()).unwrap_or(s.trim().len()));
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a duration; write it as 90s, 10m or 1h"))?;
    let secs = match unit {
        "" | "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        _ => None,
    }
    .ok_or_else(|| format!("{s:?} is not a duration; write it as 90s, 10m or 1h"))?;
    Ok(Duration::from_secs(secs))
}

fn check(args: &SimArgs) -> Result<(), String> {
    if args.nodes == 0 || args.nodes > SIM_NODES_MAX {
        return Err(format!("--nodes must be between 1 and {SIM_NODES_MAX}"));
    }
    if args.pods > SIM_PODS_MAX || args.pods > args.nodes * 50 {
        return Err(format!(
            "--pods must be at most {SIM_PODS_MAX} and at most 50 per node (the simulated nodes hold 110 pods; faults need room)"
        ));
    }
    if args.servers == 0 || args.servers > 7 {
        return Err("--servers must be between 1 and 7".into());
    }
    if args.duration > SIM_DURATION_MAX {
        return Err("--duration must be at most 24h".into());
    }
    if args.seeds == 0 || args.seeds > 100_000 {
        return Err("--seeds must be between 1 and 100000".into());
    }
    Ok(())
}

fn print(report: &SimReport, wall: Duration, as_json: bool) {
    let speedup = report.simulated.as_secs_f64() / wall.as_secs_f64().max(1e-9);
    if as_json {
        let v = report.violation.as_ref().map(
            |v| json!({"invariant": v.invariant, "detail": v.detail, "step": v.step, "at_ms": v.at.as_millis() as u64, "trace": v.tail}),
        );
        let out = json!({
            "seed": report.seed, "steps": report.steps, "simulated_s": report.simulated.as_secs_f64(),
            "wall_s": wall.as_secs_f64(), "speedup": speedup, "digest": format!("{:016x}", report.digest),
            "trace_lines": report.trace_lines, "faults": report.faults, "terms": report.terms,
            "nodes_marked_not_ready": report.nodes_marked_not_ready, "pods_evicted": report.pods_evicted,
            "pods_running": report.pods_running, "store_writes_failed": report.store_writes_failed,
            "controller_restarts": report.controller_restarts,
            "converged_after_s": report.converged_after.map(|d| d.as_secs_f64()), "violation": v,
        });
        println!("{out}");
        return;
    }
    let faults: Vec<String> = report.faults.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!(
        "seed {}: {} in {:.0} simulated s ({} steps) in {:.2} s: {:.0}x real time; trace {:016x} ({} lines)",
        report.seed,
        if report.violation.is_some() { "VIOLATION" } else { "ok" },
        report.simulated.as_secs_f64(),
        report.steps,
        wall.as_secs_f64(),
        speedup,
        report.digest,
        report.trace_lines
    );
    println!(
        "  faults: {}; terms {}; nodes marked NotReady {}; pods evicted {}; store writes failed {}; controller restarts {}; pods running at the end {}",
        if faults.is_empty() { "none".into() } else { faults.join(", ") },
        report.terms,
        report.nodes_marked_not_ready,
        report.pods_evicted,
        report.store_writes_failed,
        report.controller_restarts,
        report.pods_running
    );
    if let Some(c) = report.converged_after {
        println!("  converged {:.1} s after the last fault and workload change", c.as_secs_f64());
    }
    if let Some(v) = &report.violation {
        println!("  invariant broken at step {} ({:.3} s): {}", v.step, v.at.as_secs_f64(), v.invariant);
        println!("  {}", v.detail);
        println!("  rerun with: flotilla sim --seed {} --trace", report.seed);
        println!("  the trace before it:");
        for line in &v.tail {
            println!("    {line}");
        }
    }
}

pub fn run(args: SimArgs) -> Result<i32, String> {
    check(&args)?;
    let mut failed = 0;
    for seed in args.seed..args.seed.saturating_add(args.seeds) {
        let config = SimConfig {
            seed,
            servers: args.servers,
            nodes: args.nodes,
            pods: args.pods,
            duration: args.duration,
            faults: args.faults,
            print_trace: args.trace,
        };
        let started = Instant::now();
        let report = sim::run(config);
        print(&report, started.elapsed(), args.json);
        failed += usize::from(report.violation.is_some());
    }
    Ok(if failed > 0 { 1 } else { 0 })
}
