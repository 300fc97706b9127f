//! A cloud metadata simulator for tests and demos (127.0.0.1 only): AWS IMDSv2, GCE
//! identity tokens, Azure attested data, the ECS credentials endpoint, signed with test keys.
//!
//! cloud-metadata-simulator --keys testdata/cloud-sim --write-trust /tmp/sim-trust --port 8169

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use simulator::{SimulatedHost, Simulator, SimulatorKeys, SimulatorServer};

// Shared with the tests (tests/identity_simulator.rs and others compile the same file), which
// use parts this binary does not.
#[allow(dead_code)]
mod simulator;

#[derive(Parser)]
#[command(
    version,
    about = "Cloud metadata simulator (test keys, 127.0.0.1 only)"
)]
struct Args {
    /// Directory with aws-region-key.pem, gcp-key.pem, azure-root-key.pem,
    /// azure-leaf-key.pem (PKCS#8 RSA; testdata/cloud-sim has test ones).
    #[arg(long)]
    keys: PathBuf,
    /// Write the certificates/JWKS an endpoint must trust into this directory.
    #[arg(long)]
    write_trust: Option<PathBuf>,
    /// JSON file describing the simulated host (see SimulatedHost); defaults otherwise.
    #[arg(long)]
    host: Option<PathBuf>,
    /// Port on 127.0.0.1 (0 = any; the chosen address is printed).
    #[arg(long, default_value_t = 0)]
    port: u16,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let keys = SimulatorKeys::load(&args.keys).context("loading simulator keys")?;
    let host: SimulatedHost = match &args.host {
        Some(p) => serde_json::from_slice(
            &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("parsing {}", p.display()))?,
        None => SimulatedHost::default(),
    };
    let sim = Arc::new(Simulator::new(keys, host));
    if let Some(dir) = &args.write_trust {
        sim.write_trust(dir)
            .with_context(|| format!("writing trust to {}", dir.display()))?;
        eprintln!("trust material written to {}", dir.display());
    }
    let server = SimulatorServer::start(sim, args.port).context("starting the simulator")?;
    println!("{}", server.base_url());
    loop {
        std::thread::park();
    }
}
