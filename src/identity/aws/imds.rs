//! The agent's IMDSv2 client: PUT a session token, then GET the identity document and its
//! `rsa2048` PKCS#7 with it. IMDSv1 (token-less GETs) is never used: the Go SDK's silent
//! fallback to v1 is what makes SSRF on a VM dangerous.

use std::time::Duration;

/// The instance metadata service.
pub const DEFAULT_IMDS: &str = "http://169.254.169.254";
/// Session token lifetime asked for; the agent uses it at once.
pub const TOKEN_TTL_SECONDS: u32 = 60;

#[derive(Debug, thiserror::Error)]
#[error("AWS instance metadata at {base}: {detail}")]
pub struct ImdsError {
    pub base: String,
    pub detail: String,
}

/// What the agent sends as `Credential::AwsEc2`. `Debug` hides the signature: with it the
/// document is a credential.
#[derive(Clone, PartialEq, Eq)]
pub struct Ec2Credential {
    pub document: String,
    pub rsa2048: String,
}

impl std::fmt::Debug for Ec2Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ec2Credential")
            .field("document", &self.document)
            .field("rsa2048", &crate::secret::REDACTED)
            .finish()
    }
}

fn agent(timeout: Duration) -> ureq::Agent {
    crate::http_client::HttpClient::new(timeout).build()
}

/// An IMDSv2 session token.
pub fn session_token(base: &str, timeout: Duration) -> Result<String, ImdsError> {
    let err = |detail: String| ImdsError {
        base: base.to_string(),
        detail,
    };
    let mut resp = agent(timeout)
        .put(format!("{}/latest/api/token", base.trim_end_matches('/')))
        .header(
            "X-aws-ec2-metadata-token-ttl-seconds",
            TOKEN_TTL_SECONDS.to_string(),
        )
        .send_empty()
        .map_err(|e| err(format!("PUT /latest/api/token: {e}")))?;
    if resp.status() != 200 {
        return Err(err(format!(
            "PUT /latest/api/token: HTTP {} (in a container, the instance's HttpPutResponseHopLimit must be 2 or more)",
            resp.status()
        )));
    }
    resp.body_mut()
        .with_config()
        .limit(4096)
        .read_to_string()
        .map(|t| t.trim().to_string())
        .map_err(|e| err(e.to_string()))
}

fn get(base: &str, path: &str, token: &str, timeout: Duration) -> Result<String, ImdsError> {
    let err = |detail: String| ImdsError {
        base: base.to_string(),
        detail,
    };
    let mut resp = agent(timeout)
        .get(format!("{}{path}", base.trim_end_matches('/')))
        .header("X-aws-ec2-metadata-token", token)
        .call()
        .map_err(|e| err(format!("GET {path}: {e}")))?;
    if resp.status() != 200 {
        return Err(err(format!("GET {path}: HTTP {}", resp.status())));
    }
    resp.body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .map_err(|e| err(e.to_string()))
}

/// The identity document (exact bytes) and its `rsa2048` PKCS#7.
pub fn fetch_identity(base: &str, timeout: Duration) -> Result<Ec2Credential, ImdsError> {
    let token = session_token(base, timeout)?;
    Ok(Ec2Credential {
        document: get(
            base,
            "/latest/dynamic/instance-identity/document",
            &token,
            timeout,
        )?,
        rsa2048: get(
            base,
            "/latest/dynamic/instance-identity/rsa2048",
            &token,
            timeout,
        )?,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_hides_the_signature() {
        let c = super::Ec2Credential {
            document: "{\"instanceId\":\"i-1\"}".into(),
            rsa2048: "MIAGCSqGSIb3DQEHAqCAMIACAQExDzANBglghkgBZQMEAgEFADCABgkq".into(),
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("MIAGCSqGSIb3"), "{shown}");
        assert!(shown.contains("i-1"), "{shown}");
    }
}
