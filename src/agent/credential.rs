//! Where the host's platform credential comes from. Each source turns the plane UID (the
//! audience) into a [`Credential`]: a JWT file or plugin (`host.custom`), or a cloud
//! platform's metadata service (`host.aws`, `host.gcp`, `host.azure`, `host.auto`) through
//! the agent half of its `identity` module.

use std::path::PathBuf;
use std::time::Duration;

use crate::api::agent_config::{CredentialSource, HostEnvironment, Plugin};
use crate::api::protocol::Credential;
use crate::identity::detect::{self, MetadataAddresses, Platform};
use crate::identity::{aws, azure, gcp, plugin};

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read the JWT file {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the JWT file {} is empty or not a JWT (expected header.payload.signature)", path.display())]
    NotAJwt { path: PathBuf },
    #[error("credential plugin {name:?}: {message}")]
    Plugin { name: String, message: String },
    #[error(
        "no credential source configured: set host.custom.credential in the agent configuration (a JWT file or a credential plugin)"
    )]
    NoneConfigured,
    #[error(
        "no credential source configured, and host: auto found no cloud metadata service (AWS EC2 or ECS, GCP, Azure) answering within {0:?}: set host.custom.credential in the agent configuration (a JWT file or a credential plugin), or host.aws, host.gcp or host.azure"
    )]
    NothingDetected(Duration),
    #[error("{platform}: {message}")]
    Cloud {
        platform: &'static str,
        message: String,
    },
}

/// One way to obtain the host's credential.
pub trait CredentialProvider: Send + Sync {
    /// For logs ("jwt file /run/jwt"); never the secret.
    fn describe(&self) -> String;
    /// A credential addressed to `audience` (the plane UID).
    fn credential(&self, audience: &str) -> Result<Credential, CredentialError>;

    /// The same, for sources whose credential carries a nonce from the endpoint (Azure):
    /// `nonce` asks the endpoint for one. Other sources ignore it.
    fn credential_with_nonce(
        &self,
        audience: &str,
        _nonce: &dyn Fn() -> Result<String, String>,
    ) -> Result<Credential, CredentialError> {
        self.credential(audience)
    }
}

/// A JWT read from a file on every use, so that whatever keeps the file fresh (a sidecar of
/// the identity provider, a cron job) is picked up without restarting the agent.
pub struct JwtFile {
    pub path: PathBuf,
}

impl CredentialProvider for JwtFile {
    fn describe(&self) -> String {
        format!("jwt file {}", self.path.display())
    }

    fn credential(&self, _audience: &str) -> Result<Credential, CredentialError> {
        let text =
            std::fs::read_to_string(&self.path).map_err(|source| CredentialError::ReadFile {
                path: self.path.clone(),
                source,
            })?;
        let token = text.trim();
        if !looks_like_jwt(token) {
            return Err(CredentialError::NotAJwt {
                path: self.path.clone(),
            });
        }
        Ok(Credential::Jwt {
            token: token.to_string(),
        })
    }
}

/// A credential plugin executable (reference/tsb.md §1.3), run on every use with the
/// audience on stdin; `src/identity/plugin.rs` speaks the protocol.
pub struct PluginSource {
    call: plugin::PluginCall,
}

impl PluginSource {
    pub fn new(p: &Plugin, timeout: Duration) -> PluginSource {
        PluginSource {
            call: plugin::PluginCall::get_credential(p, timeout),
        }
    }
}

impl CredentialProvider for PluginSource {
    fn describe(&self) -> String {
        format!(
            "plugin {:?} ({})",
            self.call.name,
            self.call.program.display()
        )
    }

    fn credential(&self, audience: &str) -> Result<Credential, CredentialError> {
        plugin::get_credential(&self.call, audience)
            .map(|c| c.credential)
            .map_err(|e| CredentialError::Plugin {
                name: self.call.name.clone(),
                message: e.to_string(),
            })
    }
}

/// Three non-empty base64url segments (JWS compact serialisation).
pub fn looks_like_jwt(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts.iter().take(2).all(|p| !p.is_empty())
        && parts.iter().all(|p| {
            p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
        })
}

/// The providers for the configured sources, in order.
pub fn providers(
    sources: &[CredentialSource],
    plugin_timeout: Duration,
) -> Result<Vec<Box<dyn CredentialProvider>>, CredentialError> {
    if sources.is_empty() {
        return Err(CredentialError::NoneConfigured);
    }
    let mut out: Vec<Box<dyn CredentialProvider>> = Vec::new();
    for s in sources {
        if let Some(file) = &s.file {
            out.push(Box::new(JwtFile {
                path: PathBuf::from(file),
            }));
        } else if let Some(p) = &s.plugin {
            out.push(Box::new(PluginSource::new(p, plugin_timeout)));
        }
    }
    Ok(out)
}

/// Tries each provider in turn; the first credential wins. The error lists every failure.
pub fn obtain(
    providers: &[Box<dyn CredentialProvider>],
    audience: &str,
) -> Result<(Credential, String), CredentialError> {
    obtain_with_nonce(providers, audience, &|| {
        Err("this caller cannot fetch a nonce from the endpoint".to_string())
    })
}

/// [`obtain`], with a way to get a nonce from the endpoint for sources that need one.
pub fn obtain_with_nonce(
    providers: &[Box<dyn CredentialProvider>],
    audience: &str,
    nonce: &dyn Fn() -> Result<String, String>,
) -> Result<(Credential, String), CredentialError> {
    let mut failures = Vec::new();
    for p in providers {
        match p.credential_with_nonce(audience, nonce) {
            Ok(c) => return Ok((c, p.describe())),
            Err(e) => failures.push(e),
        }
    }
    match failures.len() {
        0 => Err(CredentialError::NoneConfigured),
        1 => Err(failures.remove(0)),
        _ => Err(CredentialError::Plugin {
            name: "all sources".into(),
            message: failures
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        }),
    }
}

/// Where the cloud metadata services are. The defaults are the real link-local addresses;
/// the `ONBOARDING_AGENT_*` variables move them (tests and demos point them at
/// `cloud-metadata-simulator`), and ECS's own variables are read as the ECS agent sets them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEndpoints {
    /// `ONBOARDING_AGENT_AWS_IMDS`, default `http://169.254.169.254`.
    pub aws_imds: String,
    /// `ONBOARDING_AGENT_GCP_METADATA`, default `http://169.254.169.254`
    /// (metadata.google.internal).
    pub gcp_metadata: String,
    /// `ONBOARDING_AGENT_AZURE_IMDS`, default `http://169.254.169.254`.
    pub azure_imds: String,
    /// Base of `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`: `ONBOARDING_AGENT_ECS_CREDENTIALS_HOST`,
    /// default `http://169.254.170.2`.
    pub ecs_credentials_host: String,
    pub ecs_relative_uri: Option<String>,
    pub ecs_full_uri: Option<String>,
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN` (with `_FULL_URI`).
    pub ecs_authorization: Option<String>,
    /// `ECS_CONTAINER_METADATA_URI_V4`.
    pub ecs_metadata_uri: Option<String>,
    /// The STS address the ECS proof is signed for: `ONBOARDING_AGENT_AWS_STS_URL`, default
    /// `https://sts.amazonaws.com/` (the endpoint's default allowed STS).
    pub sts_url: String,
    /// `ONBOARDING_AGENT_AWS_STS_REGION`, default the region in a regional STS address, else
    /// `us-east-1`.
    pub sts_region: String,
    /// Per metadata request (the probes of `host: auto` use their own, shorter timeout).
    pub timeout: Duration,
}

const LINK_LOCAL: &str = "http://169.254.169.254";

impl CloudEndpoints {
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> CloudEndpoints {
        let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let sts_url = get("ONBOARDING_AGENT_AWS_STS_URL")
            .unwrap_or_else(|| "https://sts.amazonaws.com/".to_string());
        let sts_region = get("ONBOARDING_AGENT_AWS_STS_REGION").unwrap_or_else(|| {
            sts_url
                .split("://")
                .nth(1)
                .and_then(|h| h.strip_prefix("sts."))
                .and_then(|h| h.split_once('.'))
                .map(|(r, _)| r.to_string())
                .filter(|r| r != "amazonaws")
                .unwrap_or_else(|| "us-east-1".to_string())
        });
        CloudEndpoints {
            aws_imds: get("ONBOARDING_AGENT_AWS_IMDS").unwrap_or_else(|| LINK_LOCAL.into()),
            gcp_metadata: get("ONBOARDING_AGENT_GCP_METADATA").unwrap_or_else(|| LINK_LOCAL.into()),
            azure_imds: get("ONBOARDING_AGENT_AZURE_IMDS").unwrap_or_else(|| LINK_LOCAL.into()),
            ecs_credentials_host: get("ONBOARDING_AGENT_ECS_CREDENTIALS_HOST")
                .unwrap_or_else(|| "http://169.254.170.2".into()),
            ecs_relative_uri: get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
            ecs_full_uri: get("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
            ecs_authorization: get("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
            ecs_metadata_uri: get("ECS_CONTAINER_METADATA_URI_V4"),
            sts_url,
            sts_region,
            timeout: Duration::from_secs(5),
        }
    }

    /// What `host: auto` probes.
    pub fn probe_addresses(&self) -> MetadataAddresses {
        MetadataAddresses {
            aws_imds: self.aws_imds.clone(),
            gcp_metadata: self.gcp_metadata.clone(),
            azure_imds: self.azure_imds.clone(),
            ecs_credentials_env: self.ecs_relative_uri.is_some() || self.ecs_full_uri.is_some(),
            timeout: detect::PROBE_TIMEOUT,
        }
    }
}

fn cloud_err(platform: &'static str, e: impl std::fmt::Display) -> CredentialError {
    CredentialError::Cloud {
        platform,
        message: e.to_string(),
    }
}

/// AWS EC2: the identity document and its `rsa2048` PKCS#7 over IMDSv2.
pub struct Ec2Imds {
    pub base: String,
    pub timeout: Duration,
}

impl CredentialProvider for Ec2Imds {
    fn describe(&self) -> String {
        format!("AWS EC2 instance metadata at {}", self.base)
    }

    fn credential(&self, _audience: &str) -> Result<Credential, CredentialError> {
        // The document has no audience: the endpoint binds it to the connection instead.
        let c = aws::imds::fetch_identity(&self.base, self.timeout)
            .map_err(|e| cloud_err("aws-ec2", e))?;
        Ok(Credential::AwsEc2 {
            document: c.document,
            rsa2048: Some(c.rsa2048),
            signature: None,
            pkcs7: None,
        })
    }
}

/// AWS ECS: the task role signs STS GetCallerIdentity, bound to the plane UID.
pub struct EcsTask {
    pub endpoints: CloudEndpoints,
}

impl CredentialProvider for EcsTask {
    fn describe(&self) -> String {
        format!(
            "AWS ECS task role (STS request signed for {})",
            self.endpoints.sts_url
        )
    }

    fn credential(&self, audience: &str) -> Result<Credential, CredentialError> {
        let e = &self.endpoints;
        let creds = aws::ecs::fetch_task_credentials(
            &e.ecs_credentials_host,
            e.ecs_relative_uri.as_deref(),
            e.ecs_full_uri.as_deref(),
            e.ecs_authorization.as_deref(),
            e.timeout,
        )
        .map_err(|err| cloud_err("aws-ecs", err))?;
        let task_metadata = match &e.ecs_metadata_uri {
            Some(uri) => Some(
                aws::ecs::fetch_task_metadata(uri, e.timeout)
                    .map_err(|err| cloud_err("aws-ecs", err))?,
            ),
            None => {
                return Err(cloud_err(
                    "aws-ecs",
                    "ECS_CONTAINER_METADATA_URI_V4 is not set: the task metadata (task ARN, cluster) is needed",
                ));
            }
        };
        let now = crate::clock::unix(std::time::SystemTime::now());
        let signed =
            aws::ecs::sign_get_caller_identity(&creds, &e.sts_url, &e.sts_region, audience, now)
                .map_err(|err| cloud_err("aws-ecs", err))?;
        Ok(Credential::AwsEcs {
            signed_request: signed,
            task_metadata,
        })
    }
}

/// GCP: a GCE identity token for the plane UID (`format=full`).
pub struct GceMetadata {
    pub base: String,
    pub timeout: Duration,
}

impl CredentialProvider for GceMetadata {
    fn describe(&self) -> String {
        format!("GCE metadata server at {}", self.base)
    }

    fn credential(&self, audience: &str) -> Result<Credential, CredentialError> {
        let token = gcp::fetch_identity_token(&self.base, audience, self.timeout)
            .map_err(|e| cloud_err("gcp", e))?;
        Ok(Credential::Gcp { token })
    }
}

/// Azure: attested data signed over a nonce the endpoint issued, and the VM's compute
/// metadata.
pub struct AzureImds {
    pub base: String,
    pub timeout: Duration,
}

impl CredentialProvider for AzureImds {
    fn describe(&self) -> String {
        format!("Azure instance metadata at {}", self.base)
    }

    fn credential(&self, audience: &str) -> Result<Credential, CredentialError> {
        self.credential_with_nonce(audience, &|| {
            Err("no way to ask the endpoint for a nonce".to_string())
        })
    }

    fn credential_with_nonce(
        &self,
        _audience: &str,
        nonce: &dyn Fn() -> Result<String, String>,
    ) -> Result<Credential, CredentialError> {
        let nonce = nonce().map_err(|e| cloud_err("azure", format!("nonce: {e}")))?;
        let signature = azure::fetch_attested_document(&self.base, &nonce, self.timeout)
            .map_err(|e| cloud_err("azure", e))?;
        let compute = azure::fetch_compute_metadata(&self.base, self.timeout)
            .map_err(|e| cloud_err("azure", e))?;
        Ok(Credential::Azure {
            signature,
            nonce,
            instance_metadata: Some(
                serde_json::to_value(&compute).map_err(|e| cloud_err("azure", e))?,
            ),
        })
    }
}

fn cloud_provider(p: Platform, e: &CloudEndpoints) -> Box<dyn CredentialProvider> {
    match p {
        Platform::AwsEc2 => Box::new(Ec2Imds {
            base: e.aws_imds.clone(),
            timeout: e.timeout,
        }),
        Platform::AwsEcs => Box::new(EcsTask {
            endpoints: e.clone(),
        }),
        Platform::Gcp => Box::new(GceMetadata {
            base: e.gcp_metadata.clone(),
            timeout: e.timeout,
        }),
        Platform::Azure => Box::new(AzureImds {
            base: e.azure_imds.clone(),
            timeout: e.timeout,
        }),
    }
}

/// The credential sources for the agent configuration's `host`: `custom` lists them; a
/// cloud platform names one; `auto` (or no `host` and no `custom`) detects the platform
/// once, now.
pub fn for_host(
    host: Option<&HostEnvironment>,
    plugin_timeout: Duration,
    endpoints: &CloudEndpoints,
) -> Result<Vec<Box<dyn CredentialProvider>>, CredentialError> {
    let fixed = host.and_then(|h| {
        if let Some(c) = &h.custom {
            return Some(Err(c.credential.as_slice()));
        }
        if let Some(a) = &h.aws {
            return Some(Ok(if a.ecs.is_some() {
                Platform::AwsEcs
            } else {
                Platform::AwsEc2
            }));
        }
        if h.gcp.is_some() {
            return Some(Ok(Platform::Gcp));
        }
        if h.azure.is_some() {
            return Some(Ok(Platform::Azure));
        }
        None
    });
    match fixed {
        Some(Err(sources)) => providers(sources, plugin_timeout),
        Some(Ok(platform)) => Ok(vec![cloud_provider(platform, endpoints)]),
        None => {
            let probe = endpoints.probe_addresses();
            match detect::detect_platform(&probe) {
                Some(p) => Ok(vec![cloud_provider(p, endpoints)]),
                None => Err(CredentialError::NothingDetected(probe.timeout)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ2bSJ9.c2ln";

    #[test]
    fn jwt_file_is_read_fresh_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt");
        let provider = JwtFile { path: path.clone() };
        assert!(matches!(
            provider.credential("uid"),
            Err(CredentialError::ReadFile { .. })
        ));
        std::fs::write(&path, format!("{JWT}\n")).unwrap();
        assert_eq!(
            provider.credential("uid").unwrap(),
            Credential::Jwt { token: JWT.into() }
        );
        std::fs::write(&path, "not a token").unwrap();
        let e = provider.credential("uid").unwrap_err().to_string();
        assert!(e.contains("not a JWT") && !e.contains("not a token"), "{e}");
    }

    #[test]
    fn obtain_tries_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, JWT).unwrap();
        let sources = vec![
            CredentialSource {
                file: Some(dir.path().join("missing").display().to_string()),
                plugin: None,
            },
            CredentialSource {
                file: Some(good.display().to_string()),
                plugin: None,
            },
        ];
        let ps = providers(&sources, Duration::from_secs(5)).unwrap();
        let (c, from) = obtain(&ps, "uid").unwrap();
        assert_eq!(c.kind(), "jwt");
        assert!(from.ends_with("good"), "{from}");
        assert!(matches!(
            providers(&[], Duration::from_secs(5)),
            Err(CredentialError::NoneConfigured)
        ));
    }

    #[test]
    fn plugin_gets_the_audience_and_its_errors_are_named() {
        use crate::api::agent_config::EnvVar;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("onboarding-agent-test-plugin");
        // A real executable speaking the protocol: echoes the audience back inside a JWT-
        // shaped token, fails with a google.rpc.Status when asked to.
        std::fs::write(
            &script,
            r#"#!/bin/sh
read -r req
aud=$(printf '%s' "$req" | sed 's/.*"audience":"\([^"]*\)".*/\1/')
if [ "$MODE" = fail ]; then
  echo '{"code":7,"message":"client not allowed"}'; echo "idp said no" >&2; exit 1
fi
printf '{"credential":{"@type":"type.googleapis.com/workload_onboarding.credential.v1.JwtCredential","token":"h.%s.s"},"expiresAt":"2030-01-01T00:00:00Z"}' "$aud"
"#,
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plugin = |mode: &str| CredentialSource {
            plugin: Some(Plugin {
                name: "test".into(),
                path: Some(script.display().to_string()),
                env: vec![EnvVar {
                    name: "MODE".into(),
                    value: mode.into(),
                }],
                args: vec![],
            }),
            file: None,
        };
        let ps = providers(&[plugin("ok")], Duration::from_secs(10)).unwrap();
        let (c, from) = obtain(&ps, "plane-123").unwrap();
        assert_eq!(
            c,
            Credential::Jwt {
                token: "h.plane-123.s".into()
            }
        );
        assert!(from.starts_with("plugin \"test\""), "{from}");

        let ps = providers(&[plugin("fail")], Duration::from_secs(10)).unwrap();
        let e = obtain(&ps, "plane-123").unwrap_err().to_string();
        assert!(
            e.contains("client not allowed") && e.contains("idp said no"),
            "{e}"
        );
    }

    #[test]
    fn cloud_endpoints_default_to_link_local_and_follow_the_environment() {
        let d = CloudEndpoints::from_env(&|_| None);
        assert_eq!(d.aws_imds, "http://169.254.169.254");
        assert_eq!(d.ecs_credentials_host, "http://169.254.170.2");
        assert_eq!(
            (d.sts_url.as_str(), d.sts_region.as_str()),
            ("https://sts.amazonaws.com/", "us-east-1")
        );
        assert!(!d.probe_addresses().ecs_credentials_env);
        let env = |k: &str| match k {
            "ONBOARDING_AGENT_AWS_IMDS" => Some("http://127.0.0.1:8169".to_string()),
            "ONBOARDING_AGENT_AWS_STS_URL" => Some("https://sts.eu-west-1.amazonaws.com/".into()),
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI" => Some("/v2/credentials/x".into()),
            "ONBOARDING_AGENT_GCP_METADATA" => Some("  ".into()),
            _ => None,
        };
        let e = CloudEndpoints::from_env(&env);
        assert_eq!(e.aws_imds, "http://127.0.0.1:8169");
        assert_eq!(
            e.sts_region, "eu-west-1",
            "region of a regional STS address"
        );
        assert_eq!(e.gcp_metadata, "http://169.254.169.254", "blank = unset");
        assert!(e.probe_addresses().ecs_credentials_env);
    }

    #[test]
    fn host_names_its_source() {
        use crate::api::agent_config::{AwsHost, AzureHost, CustomHost, GcpHost};
        let e = CloudEndpoints::from_env(&|k| {
            (k == "ONBOARDING_AGENT_AZURE_IMDS").then(|| "http://127.0.0.1:9".to_string())
        });
        let t = Duration::from_secs(1);
        let describe = |h: HostEnvironment| for_host(Some(&h), t, &e).unwrap()[0].describe();
        assert!(
            describe(HostEnvironment {
                aws: Some(AwsHost::default()),
                ..Default::default()
            })
            .contains("EC2")
        );
        assert!(
            describe(HostEnvironment {
                aws: Some(AwsHost {
                    ecs: Some(serde_json::json!({})),
                    ec2: None
                }),
                ..Default::default()
            })
            .contains("ECS")
        );
        assert!(
            describe(HostEnvironment {
                gcp: Some(GcpHost::default()),
                ..Default::default()
            })
            .contains("GCE")
        );
        assert!(
            describe(HostEnvironment {
                azure: Some(AzureHost::default()),
                ..Default::default()
            })
            .contains("127.0.0.1:9")
        );
        let custom = HostEnvironment {
            custom: Some(CustomHost {
                credential: vec![],
                hostinfo: None,
            }),
            ..Default::default()
        };
        assert!(matches!(
            for_host(Some(&custom), t, &e),
            Err(CredentialError::NoneConfigured)
        ));
        // Azure without a way to get a nonce says so instead of asking IMDS for nothing.
        let az = AzureImds {
            base: "http://127.0.0.1:9".into(),
            timeout: t,
        };
        let err = az.credential("uid").unwrap_err().to_string();
        assert!(err.contains("nonce"), "{err}");
    }

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt(JWT));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c d"));
        assert!(!looks_like_jwt(".b.c"));
    }
}
