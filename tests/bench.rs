//! `make bench`: enipeer against keepalived in the same lab, in one sitting.
//!
//! The primary-host failure (everything on the master frozen, its primary link cut, the fault at
//! a random point of the heartbeat cycle, the client probing the EIP every 10 ms) runs N times
//! for each agent and setting — enipeer at its defaults (200 ms / 1 s) and fast (50 ms /
//! 250 ms), keepalived 2.2 with advert_int 1 s and 0.1 s driving the AWS CLI recipe
//! (tests/support/keepalived.rs) — in both cloud profiles (instant, aws-like; one lab each,
//! `ENIPEER_LAB_DELAYS` overrides the aws-like delays as in tests/support/lab.rs). Then it
//! prints a table (median, min, max of outage, detection, decision to serving, stale rules left
//! on the old master once it is back, EC2 calls), the idle cost of both agents on both nodes
//! (RSS, PSS, CPU over 60 s), and writes the chart `docs/bench.svg` (`BENCH_CHART` elsewhere)
//! and the table as `docs/bench.md`.
//!
//! N is 10 for instant and 5 for aws-like; `BENCH_QUICK=1` runs 2 each and idles 10 s
//! (`BENCH_IDLE_SECS` sets the idle window, 1 to 600 s). A benchmark, not a test: `#[ignore]`d,
//! run by `make bench` (root), not by CI.

#[path = "support/keepalived.rs"]
mod keepalived;
mod support;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use keepalived::Keepalived;
use support::lab::{AgentOptions, Lab, Probe, Profile};
use support::Side::{self, A, B};

#[path = "bench/chart.rs"]
mod chart;

/// One agent at one setting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Agent {
    /// enipeer with these heartbeat interval / dead interval.
    Enipeer(&'static str, &'static str),
    /// keepalived with this advert_int, in seconds.
    Keepalived(f64),
}

impl Agent {
    const ALL: [Agent; 4] = [
        Agent::Enipeer("200ms", "1s"),
        Agent::Enipeer("50ms", "250ms"),
        Agent::Keepalived(1.0),
        Agent::Keepalived(0.1),
    ];

    pub fn label(self) -> String {
        match self {
            Agent::Enipeer(i, d) => format!("enipeer {i}/{d}"),
            Agent::Keepalived(a) => format!("keepalived advert {a} s"),
        }
    }

    pub fn is_enipeer(self) -> bool {
        matches!(self, Agent::Enipeer(..))
    }

    fn options(self) -> AgentOptions {
        match self {
            Agent::Enipeer(interval, dead_interval) => AgentOptions {
                interval,
                dead_interval,
                ..AgentOptions::default()
            },
            Agent::Keepalived(_) => AgentOptions::default(),
        }
    }

    /// Heartbeats per second between the two nodes while idle: both enipeer nodes send one per
    /// interval; only keepalived's master advertises.
    fn pair_heartbeats_per_s(self) -> f64 {
        match self {
            Agent::Enipeer(i, _) => {
                2.0 / humantime::parse_duration(i)
                    .unwrap_or(Duration::from_millis(200))
                    .as_secs_f64()
            }
            Agent::Keepalived(a) => 1.0 / a,
        }
    }

    /// One heartbeat cycle's worth of time in which the fault may land: enipeer's dead interval
    /// (as `measure` in tests/e2e.rs), keepalived's advertisement interval.
    fn cycle(self) -> Duration {
        match self {
            Agent::Enipeer(_, d) => humantime::parse_duration(d).unwrap_or(Duration::from_secs(1)),
            Agent::Keepalived(a) => Duration::from_secs_f64(a),
        }
    }
}

/// One primary-host failure as the client saw it.
#[derive(Debug, Clone)]
pub struct Run {
    pub profile: Profile,
    pub agent: Agent,
    /// Fault to the first answer from node-b through the EIP.
    pub outage: Duration,
    /// Fault to node-b's takeover decision (enipeer's timeline; notify_master's start).
    pub detection: Duration,
    /// Policy rules for the ENI's addresses still on node-a 3 s after it came back.
    pub stale_rules: usize,
    /// EC2 API calls the cloud front saw from the fault until node-b served.
    pub calls: usize,
}

impl Run {
    pub fn takeover(&self) -> Duration {
        self.outage.saturating_sub(self.detection)
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// A pseudo-random fraction in [0, 1), different each call (see `jitter` in tests/e2e.rs).
fn jitter() -> f64 {
    let n = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let x = u64::from(n)
        .wrapping_mul(6364136223846793005)
        .rotate_left(17);
    (x % 10_000) as f64 / 10_000.0
}

/// Starts `agent` on both nodes (node-a master, node-b backup) after a reset.
fn start(lab: &mut Lab, agent: Agent) -> Option<Keepalived> {
    lab.reset();
    match agent {
        Agent::Enipeer(..) => {
            lab.start_pair(&agent.options());
            None
        }
        Agent::Keepalived(a) => {
            let mut ka = Keepalived::new(lab, secs(a));
            ka.start_pair(lab);
            Some(ka)
        }
    }
}

/// The primary-host failure once, with `agent` running; node-a is thawed afterwards.
fn failover(lab: &mut Lab, agent: Agent) -> Run {
    let ka = start(lab, agent);
    let probe = Probe::start(secs(60.0));
    std::thread::sleep(secs(0.3) + agent.cycle().mul_f64(jitter()));
    lab.front.clear_calls();
    let fault_wall = SystemTime::now();
    let fault_at = Instant::now();
    lab.freeze(A);
    let deadline = Instant::now() + secs(40.0);
    while Instant::now() < deadline && !lab.serving(B) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let calls = lab.front.calls().len();
    std::thread::sleep(secs(0.3));
    let samples = probe.finish();
    let from = fault_at.saturating_duration_since(samples.start);
    let outage = samples.first_from(B.name(), from).unwrap_or_else(|| {
        panic!("{}: the client never reached node-b", agent.label());
    });
    let fault_ms = enipeer::timeline::unix_ms(fault_wall);
    let (decided, story) = match &ka {
        None => {
            let f = lab.role(B).and_then(|r| r.last_failover);
            let f = f.expect("node-b reports its failover timeline");
            (f.started_unix_ms, f.render())
        }
        Some(ka) => (
            ka.decided_unix_ms(B).expect("node-b's notify_master ran"),
            ka.render_steps(B),
        ),
    };
    let detection = Duration::from_millis(decided.saturating_sub(fault_ms));
    lab.thaw(A);
    let stale_rules = stale_rules(lab);
    drop(ka);
    let run = Run {
        profile: lab.profile,
        agent,
        outage,
        detection,
        stale_rules,
        calls,
    };
    println!(
        "  {}: outage {:.0} ms = detection {:.0} + takeover {:.0}; {} EC2 calls; {} stale rules\n{}",
        agent.label(),
        ms(run.outage),
        ms(run.detection),
        ms(run.takeover()),
        calls,
        stale_rules,
        indent(&story)
    );
    run
}

/// The ENI's policy rules left on node-a up to 3 s after it came back (0 as soon as none).
fn stale_rules(lab: &Lab) -> usize {
    let deadline = Instant::now() + secs(3.0);
    loop {
        let n = lab.eni_rules(A).len();
        if n == 0 || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

/// What /proc says about one process: resident set, proportional set (kB), CPU ticks so far.
#[derive(Debug, Default, Clone, Copy)]
struct ProcStat {
    rss_kb: u64,
    pss_kb: u64,
    /// CPU time, user and system: the sum of the threads' run time the scheduler keeps
    /// (`/proc/PID/task/*/schedstat`, ns), not the 10 ms ticks of `/proc/PID/stat`, which over a
    /// minute cannot tell keepalived's few milliseconds from nothing.
    cpu_ns: u64,
}

/// The run time of `pid`'s threads, in ns.
fn cpu_ns(pid: i32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn kb_field(text: &str, key: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l[key.len()..].split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn proc_stat(pid: i32) -> ProcStat {
    let read = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default();
    ProcStat {
        rss_kb: kb_field(&read("status"), "VmRSS:"),
        pss_kb: kb_field(&read("smaps_rollup"), "Pss:"),
        cpu_ns: cpu_ns(pid),
    }
}

/// Idle cost of one agent on one node over the window: summed over its processes.
#[derive(Debug, Clone)]
pub struct Idle {
    pub agent: Agent,
    pub side: Side,
    pub processes: usize,
    pub rss_kb: u64,
    pub pss_kb: u64,
    pub cpu_ns: u64,
    pub window: Duration,
}

/// Both nodes of `agent` idling (node-a master, node-b backup) for `window`.
fn idle(lab: &mut Lab, agent: Agent, window: Duration) -> Vec<Idle> {
    let ka = start(lab, agent);
    let pids = |side: Side| -> Vec<i32> {
        match &ka {
            None => lab.agent_pid(side).into_iter().collect(),
            Some(k) => k.pids(side),
        }
    };
    let pids: Vec<Vec<i32>> = Side::BOTH.iter().map(|s| pids(*s)).collect();
    let before: Vec<u64> = pids
        .iter()
        .map(|p| p.iter().map(|p| proc_stat(*p).cpu_ns).sum())
        .collect();
    std::thread::sleep(window);
    let out = Side::BOTH
        .iter()
        .enumerate()
        .map(|(i, side)| {
            let now: Vec<ProcStat> = pids[i].iter().map(|p| proc_stat(*p)).collect();
            let ns: u64 = now.iter().map(|s| s.cpu_ns).sum();
            Idle {
                agent,
                side: *side,
                processes: now.len(),
                rss_kb: now.iter().map(|s| s.rss_kb).sum(),
                pss_kb: now.iter().map(|s| s.pss_kb).sum(),
                cpu_ns: ns.saturating_sub(before[i]),
                window,
            }
        })
        .collect();
    drop(ka);
    out
}

fn quick() -> bool {
    std::env::var_os("BENCH_QUICK").is_some_and(|v| !v.is_empty() && v != "0")
}

fn runs(profile: Profile) -> usize {
    match (quick(), profile) {
        (true, _) => 2,
        (false, Profile::Instant) => 10,
        (false, Profile::AwsLike) => 5,
    }
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            let s = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            s.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_default()
}

/// Date, machine and versions: the heading of the figures.
fn environment() -> String {
    let aws = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/aws");
    format!(
        "{} UTC; {} CPUs, Linux {}; enipeer {}, {}, moto {}, {}",
        command_line("date", &["-u", "+%Y-%m-%d %H:%M"]),
        command_line("nproc", &[]),
        command_line("uname", &["-r"]),
        env!("CARGO_PKG_VERSION"),
        keepalived::version(),
        support::MOTO_VERSION.trim(),
        command_line(aws.to_str().unwrap_or("aws"), &["--version"])
            .split_whitespace()
            .next()
            .unwrap_or("")
    )
}

#[test]
#[ignore = "benchmark: make bench"]
fn bench() {
    if let Err(e) = Lab::preflight() {
        eprintln!("SKIPPED: {e}");
        return;
    }
    assert!(
        keepalived::binary().is_some(),
        "keepalived is missing: `make bench` installs it (tests/lab-deps.sh)"
    );
    let began = Instant::now();
    let env = environment();
    println!("{env}");
    let window = std::env::var("BENCH_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| (1.0..=600.0).contains(s))
        .map(secs)
        .unwrap_or(secs(if quick() { 10.0 } else { 60.0 }));
    let (mut all, mut idle_cost) = (Vec::new(), Vec::new());
    for profile in [Profile::Instant, Profile::AwsLike] {
        let mut lab = Lab::up(profile, support::lab::agent_bin());
        if profile == Profile::Instant {
            for agent in [Agent::ALL[0], Agent::ALL[2]] {
                println!("idle: {} for {:?}", agent.label(), window);
                idle_cost.extend(idle(&mut lab, agent, window));
            }
        }
        for agent in Agent::ALL {
            for run in 0..runs(profile) {
                println!("{} {}, run {}", profile.name(), agent.label(), run + 1);
                all.push(failover(&mut lab, agent));
            }
        }
        drop(lab);
    }
    let table = report(&env, &all, &idle_cost, began.elapsed());
    println!("\n{table}");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let svg = std::env::var_os("BENCH_CHART")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("docs/bench.svg"));
    chart::draw(&svg, &all, &env).expect("chart");
    let md = svg.with_extension("md");
    std::fs::write(&md, &table).expect("table");
    println!("chart: {}\ntable: {}", svg.display(), md.display());
}

/// "median (min–max)" in seconds.
fn spread(mut v: Vec<f64>, unit: &str) -> String {
    v.sort_by(f64::total_cmp);
    match (v.first(), v.last()) {
        (Some(lo), Some(hi)) => format!("{:.2} ({lo:.2}–{hi:.2}){unit}", v[v.len() / 2]),
        _ => "–".into(),
    }
}

fn report(env: &str, runs: &[Run], idle: &[Idle], took: Duration) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "Measured {env}; the bench took {:.0} s.\n",
        took.as_secs_f64()
    );
    let _ = writeln!(
        t,
        "| cloud | agent, setting | n | outage s | detection s | decision → serving s | \
         stale rules on old master | EC2 calls |\n|---|---|---|---|---|---|---|---|"
    );
    for profile in [Profile::Instant, Profile::AwsLike] {
        for agent in Agent::ALL {
            let r: Vec<&Run> = runs
                .iter()
                .filter(|r| r.profile == profile && r.agent == agent)
                .collect();
            let col = |f: &dyn Fn(&Run) -> f64, unit: &str| {
                spread(r.iter().map(|x| f(x)).collect(), unit)
            };
            let count = |f: &dyn Fn(&Run) -> usize| {
                let mut v: Vec<usize> = r.iter().map(|x| f(x)).collect();
                v.sort();
                match (v.first(), v.last()) {
                    (Some(lo), Some(hi)) => format!("{} ({lo}–{hi})", v[v.len() / 2]),
                    _ => "–".into(),
                }
            };
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                profile.name(),
                agent.label(),
                r.len(),
                col(&|x| x.outage.as_secs_f64(), ""),
                col(&|x| x.detection.as_secs_f64(), ""),
                col(&|x| x.takeover().as_secs_f64(), ""),
                count(&|x| x.stale_rules),
                count(&|x| x.calls),
            );
        }
    }
    let _ = writeln!(
        t,
        "\nIdle cost (node-a master, node-b backup; all of the agent's processes):\n\n\
         | agent | node | processes | RSS | PSS | CPU over {:.0} s |\n|---|---|---|---|---|---|",
        idle.first().map(|i| i.window.as_secs_f64()).unwrap_or(0.0)
    );
    for i in idle {
        let ms = i.cpu_ns as f64 / 1e6;
        let _ = writeln!(
            t,
            "| {} | {} | {} | {:.1} MiB | {:.1} MiB | {:.1} ms ({:.3} %) |",
            i.agent.label(),
            i.side.name(),
            i.processes,
            i.rss_kb as f64 / 1024.0,
            i.pss_kb as f64 / 1024.0,
            ms,
            ms / 10.0 / i.window.as_secs_f64()
        );
    }
    let _ = writeln!(t);
    for first in idle.iter().filter(|i| i.side == A) {
        let agent = first.agent;
        let ns: u64 = idle
            .iter()
            .filter(|i| i.agent == agent)
            .map(|i| i.cpu_ns)
            .sum();
        let beats = agent.pair_heartbeats_per_s() * first.window.as_secs_f64();
        let _ = writeln!(
            t,
            "- {}: {:.0} µs of CPU per heartbeat, both nodes together ({:.0} heartbeats per second between them)",
            agent.label(),
            ns as f64 / 1e3 / beats.max(1.0),
            agent.pair_heartbeats_per_s()
        );
    }
    t
}
