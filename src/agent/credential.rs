//! Where the host's platform credential comes from. Each source turns the plane UID (the
//! audience) into a [`Credential`]; cloud platforms plug in here through the same trait.

use std::path::PathBuf;
use std::time::Duration;

use crate::api::agent_config::{CredentialSource, Plugin};
use crate::api::protocol::Credential;
use crate::identity::plugin;

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
}

/// One way to obtain the host's credential.
pub trait CredentialProvider: Send + Sync {
    /// For logs ("jwt file /run/jwt"); never the secret.
    fn describe(&self) -> String;
    /// A credential addressed to `audience` (the plane UID).
    fn credential(&self, audience: &str) -> Result<Credential, CredentialError>;
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
    let mut failures = Vec::new();
    for p in providers {
        match p.credential(audience) {
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
    fn jwt_shape() {
        assert!(looks_like_jwt(JWT));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c d"));
        assert!(!looks_like_jwt(".b.c"));
    }
}
