//! moto's server (a real local implementation of the AWS APIs, from PyPI:
//! `pip install 'moto[server]'`) for integration tests, set up with boto3 (installed with
//! moto), the AWS SDK for Python.
//!
//! Without moto, [`start_moto`] says so and returns None (the test passes as skipped),
//! unless CI=true: then missing moto is a failure.

#![allow(dead_code)]

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Moto {
    child: Child,
    pub url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_command() -> Option<Command> {
    let ok = |c: &mut Command| {
        c.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if ok(Command::new("moto_server").arg("--help")) {
        return Some(Command::new("moto_server"));
    }
    if ok(Command::new("python3").args(["-c", "import moto.server"])) {
        let mut c = Command::new("python3");
        c.args(["-m", "moto.server"]);
        return Some(c);
    }
    None
}

pub fn start_moto() -> Option<Moto> {
    let Some(mut cmd) = moto_command() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("moto is not installed (CI=true): pip install 'moto[server]'");
        }
        eprintln!("SKIPPED: moto is not installed; pip install 'moto[server]' to run this test");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // moto dies with the test process, even when that is SIGKILLed.
    // SAFETY: prctl is async-signal-safe and touches nothing of the parent's.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto");
    let moto = Moto {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "moto did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(moto)
}

/// Run a boto3 script against moto (`c('ec2')` makes a client); returns its stdout, trimmed.
pub fn boto3(moto: &Moto, script: &str) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import boto3, json, sys\nE = {:?}\ndef c(s): return boto3.client(s, endpoint_url=E, region_name='us-east-1')\n{script}",
            moto.url
        ))
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_PROFILE")
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "boto3 script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
