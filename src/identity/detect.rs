//! `host: auto`: which cloud is this machine on? Each platform's metadata service is probed
//! with a short connect and overall timeout, all at once, so a non-cloud host gives up
//! within about one timeout instead of hanging.

use std::time::Duration;

/// The probe timeout per request (connect and total). Metadata services answer in
/// milliseconds; a host where nothing listens at 169.254.169.254 fails fast or times out.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    AwsEc2,
    AwsEcs,
    Gcp,
    Azure,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::AwsEc2 => "aws-ec2",
            Platform::AwsEcs => "aws-ecs",
            Platform::Gcp => "gcp",
            Platform::Azure => "azure",
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where each metadata service is (configurable for tests; the defaults are the real
/// link-local addresses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataAddresses {
    pub aws_imds: String,
    pub gcp_metadata: String,
    pub azure_imds: String,
    /// ECS is recognised from the environment the ECS agent sets
    /// (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` / `_FULL_URI`), not probed.
    pub ecs_credentials_env: bool,
    pub timeout: Duration,
}

impl Default for MetadataAddresses {
    fn default() -> Self {
        MetadataAddresses {
            aws_imds: "http://169.254.169.254".into(),
            gcp_metadata: "http://169.254.169.254".into(),
            azure_imds: "http://169.254.169.254".into(),
            ecs_credentials_env: std::env::var_os("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
                .is_some()
                || std::env::var_os("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some(),
            timeout: PROBE_TIMEOUT,
        }
    }
}

fn agent(timeout: Duration) -> ureq::Agent {
    crate::http_client::HttpClient::new(timeout)
        .connect_timeout(timeout)
        .build()
}

fn probe(p: Platform, a: &MetadataAddresses) -> bool {
    let ag = agent(a.timeout);
    let base = |s: &str| s.trim_end_matches('/').to_string();
    match p {
        // IMDSv2 answers the token PUT with 200.
        Platform::AwsEc2 => ag
            .put(format!("{}/latest/api/token", base(&a.aws_imds)))
            .header("X-aws-ec2-metadata-token-ttl-seconds", "10")
            .send_empty()
            .is_ok_and(|r| r.status() == 200),
        // GCE answers with the Metadata-Flavor: Google response header.
        Platform::Gcp => ag
            .get(format!("{}/computeMetadata/v1/", base(&a.gcp_metadata)))
            .header("Metadata-Flavor", "Google")
            .call()
            .is_ok_and(|r| {
                r.headers()
                    .get("metadata-flavor")
                    .is_some_and(|v| v.as_bytes() == b"Google")
            }),
        Platform::Azure => ag
            .get(format!("{}/metadata/instance/compute", base(&a.azure_imds)))
            .header("Metadata", "true")
            .query("api-version", crate::identity::azure::API_VERSION)
            .call()
            .is_ok_and(|r| r.status() == 200),
        Platform::AwsEcs => a.ecs_credentials_env,
    }
}

/// The platform this host is on, or None (then `host: auto` falls back to the configured
/// custom credential, or fails with a clear message). Probes run in parallel.
pub fn detect_platform(a: &MetadataAddresses) -> Option<Platform> {
    if a.ecs_credentials_env {
        tracing::info!(platform = %Platform::AwsEcs, "host: auto detected the platform (from AWS_CONTAINER_CREDENTIALS_*)");
        return Some(Platform::AwsEcs);
    }
    let order = [Platform::AwsEc2, Platform::Gcp, Platform::Azure];
    let found: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = order
            .iter()
            .map(|p| s.spawn(move || probe(*p, a)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(false))
            .collect()
    });
    let platform = order.iter().zip(found).find(|(_, f)| *f).map(|(p, _)| *p);
    match platform {
        Some(p) => tracing::info!(platform = %p, "host: auto detected the platform"),
        None => tracing::info!("host: auto found no cloud metadata service"),
    }
    platform
}
