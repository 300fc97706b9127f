//! Onboarding throughput and latency of the real endpoint binary over TLS on loopback.
//!
//! `cargo bench --bench onboarding` prints, for sequential and concurrent agents, the
//! latency of each API call next to a baseline measured in the same run: `GET /healthz` over
//! the same kept-alive connection (TLS + HTTP cost with no work behind it). Ratios are what to
//! compare between runs; these machines are shared and absolute numbers drift.
//!
//! Env: `BENCH_AGENTS` (default 300), `BENCH_THREADS` (default 4).

#[path = "../tests/support/endpoint.rs"]
mod endpoint;

use std::time::{Duration, Instant};

use endpoint::*;

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Sample {
    health: Vec<Duration>,
    authorize: Vec<Duration>,
    register: Vec<Duration>,
    keepalive: Vec<Duration>,
}

fn run_agent(ep: &Endpoint, agent: &ureq::Agent, sub: &str, s: &mut Sample) {
    let t = Instant::now();
    let mut r = agent.get(format!("{}/healthz", ep.url)).call().unwrap();
    let _ = r.body_mut().read_to_string();
    s.health.push(t.elapsed());

    let jwt = vm_jwt(sub, &ep.plane_uid);
    let t = Instant::now();
    let mut r = agent
        .post(format!("{}/v1/authorize", ep.url))
        .send_json(
            serde_json::json!({"workloadGroup": {"namespace": NS, "name": "ratings"},
                                      "credential": {"type": "jwt", "token": jwt}}),
        )
        .unwrap();
    let a: serde_json::Value = r.body_mut().read_json().unwrap();
    s.authorize.push(t.elapsed());
    let token = a["token"].as_str().expect("authorized").to_string();

    let t = Instant::now();
    let mut r = agent
        .post(format!("{}/v1/register", ep.url))
        .header("authorization", &format!("Bearer {token}"))
        .send_json(registration_body())
        .unwrap();
    let reg: serde_json::Value = r.body_mut().read_json().unwrap();
    assert!(reg["bootstrap"]["files"].is_array(), "{reg}");
    s.register.push(t.elapsed());

    let t = Instant::now();
    let mut r = agent
        .post(format!("{}/v1/keepalive", ep.url))
        .header("authorization", &format!("Bearer {token}"))
        .send_empty()
        .unwrap();
    let _ = r.body_mut().read_to_string();
    s.keepalive.push(t.elapsed());
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this as a smoke test.
    let benching = std::env::args().any(|a| a == "--bench");
    let agents: usize = std::env::var("BENCH_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benching { 300 } else { 8 });
    let threads: usize = std::env::var("BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let ep = Endpoint::start(Options::default());
    // Every subject may onboard in this run.
    std::fs::write(
        ep.path("config/policy.yaml"),
        POLICY.replace(
            "        subjects: [vm-0001, vm-0002, vm-0003, vm-0004, vm-0005, vm-0006, vm-0007, vm-0008]\n",
            "",
        ),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(800));

    // Warm-up (JIT-free, but page cache, allocator and TLS session state).
    let warm = ep.client();
    let mut s = Sample {
        health: vec![],
        authorize: vec![],
        register: vec![],
        keepalive: vec![],
    };
    for i in 0..if benching { 20 } else { 2 } {
        run_agent(&ep, &warm, &format!("warm-{i}"), &mut s);
    }

    println!("onboarding bench: {agents} agents, real endpoint binary, TLS on loopback");
    for (label, n_threads) in [("sequential", 1usize), ("concurrent", threads)] {
        let started = Instant::now();
        let per = agents / n_threads;
        let results: Vec<Sample> = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..n_threads)
                .map(|t| {
                    let ep = &ep;
                    sc.spawn(move || {
                        let agent = ep.client();
                        let mut s = Sample {
                            health: vec![],
                            authorize: vec![],
                            register: vec![],
                            keepalive: vec![],
                        };
                        for i in 0..per {
                            run_agent(ep, &agent, &format!("{label}-{t}-{i}"), &mut s);
                        }
                        s
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let wall = started.elapsed();
        let mut all = Sample {
            health: vec![],
            authorize: vec![],
            register: vec![],
            keepalive: vec![],
        };
        for r in results {
            all.health.extend(r.health);
            all.authorize.extend(r.authorize);
            all.register.extend(r.register);
            all.keepalive.extend(r.keepalive);
        }
        let base = percentile(&mut all.health, 0.5);
        println!(
            "{label} ({n_threads} thread(s)): {} onboardings in {:.2}s = {:.0} onboardings/s",
            per * n_threads,
            wall.as_secs_f64(),
            (per * n_threads) as f64 / wall.as_secs_f64()
        );
        println!(
            "  {:<10} {:>9} {:>9} {:>12}",
            "call", "p50 ms", "p99 ms", "p50/healthz"
        );
        for (name, v) in [
            ("healthz", &mut all.health),
            ("authorize", &mut all.authorize),
            ("register", &mut all.register),
            ("keepalive", &mut all.keepalive),
        ] {
            let p50 = percentile(v, 0.5);
            let p99 = percentile(v, 0.99);
            println!(
                "  {:<10} {:>9.3} {:>9.3} {:>11.1}x",
                name,
                ms(p50),
                ms(p99),
                p50.as_secs_f64() / base.as_secs_f64()
            );
        }
    }
    let rss = std::fs::read_to_string(format!("/proc/{}/status", ep.pid()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .map(|l| l.to_string())
        })
        .unwrap_or_default();
    println!(
        "endpoint peak RSS: {}",
        rss.trim_start_matches("VmHWM:").trim()
    );
}
