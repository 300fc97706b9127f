//! `onboarding-endpoint identity verify`: verify one platform credential offline and print
//! the identity it yields, or exactly why it is refused. Operators use it to answer "why
//! won't my VM join?"; tests use it with a fixed clock (`--at`).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use workload_onboarding::api::identity::WorkloadIdentity;
use workload_onboarding::identity::VerifyContext;
use workload_onboarding::identity::aws::ec2::{self, Ec2Trust, SignatureForm};
use workload_onboarding::identity::cms;
use workload_onboarding::identity::gcp::{GoogleKeys, verify_token};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifyPlatform {
    Aws,
    Gcp,
}

#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// The platform the credential comes from.
    #[arg(long, value_enum)]
    pub platform: VerifyPlatform,
    /// AWS: the instance identity document (IMDS `.../instance-identity/document`).
    #[arg(long)]
    pub document: Option<PathBuf>,
    /// AWS: the `rsa2048` PKCS#7 (IMDS `.../instance-identity/rsa2048`).
    #[arg(long)]
    pub rsa2048: Option<PathBuf>,
    /// AWS: the legacy raw `signature` (RSA-1024); needs --certificate.
    #[arg(long)]
    pub signature: Option<PathBuf>,
    /// AWS: the legacy DSA `pkcs7`; needs --certificate.
    #[arg(long)]
    pub pkcs7: Option<PathBuf>,
    /// AWS: a PEM certificate to trust for the document's region (for the form given), in
    /// addition to the built-in rsa2048 certificates.
    #[arg(long)]
    pub certificate: Vec<PathBuf>,
    /// GCP: the identity token.
    #[arg(long)]
    pub token: Option<PathBuf>,
    /// GCP: Google's JWKS (a saved copy of the JWKS URI's answer).
    #[arg(long)]
    pub jwks: Option<PathBuf>,
    /// GCP: the audience the token must carry (the onboarding plane's UID).
    #[arg(long)]
    pub audience: Option<String>,
    /// Verify as of this time (RFC 3339) instead of now.
    #[arg(long)]
    pub at: Option<String>,
}

fn read(p: &Path) -> Result<String, String> {
    std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
}

fn need<'a, T>(v: &'a Option<T>, flag: &str, platform: &str) -> Result<&'a T, String> {
    v.as_ref()
        .ok_or_else(|| format!("--platform {platform} needs {flag}"))
}

/// Verify as the endpoint would; `Err` is the reason, ready to print.
pub fn verify(args: &VerifyArgs) -> Result<WorkloadIdentity, String> {
    let now = match &args.at {
        Some(at) => {
            let t = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                .map_err(|e| format!("--at {at:?} is not RFC 3339: {e}"))?;
            SystemTime::UNIX_EPOCH + Duration::from_secs(t.unix_timestamp().max(0) as u64)
        }
        None => SystemTime::now(),
    };
    match args.platform {
        VerifyPlatform::Aws => {
            let document = match &args.document {
                Some(p) => read(p)?,
                None => String::new(),
            };
            let rsa2048 = args.rsa2048.as_deref().map(read).transpose()?;
            let signature = args.signature.as_deref().map(read).transpose()?;
            let pkcs7 = args.pkcs7.as_deref().map(read).transpose()?;
            let mut trust = Ec2Trust::builtin();
            if !args.certificate.is_empty() {
                let form = if rsa2048.is_some() {
                    SignatureForm::Rsa2048
                } else if pkcs7.is_some() {
                    SignatureForm::Pkcs7Dsa
                } else {
                    SignatureForm::Signature
                };
                let region = region_hint(&document, rsa2048.as_deref().or(pkcs7.as_deref()))?;
                for c in &args.certificate {
                    let certs = cms::certificates_from_pem(read(c)?.as_bytes())
                        .map_err(|e| format!("{}: {e}", c.display()))?;
                    trust.add(form, &region, certs);
                }
                trust.allow_signature = true;
                trust.allow_pkcs7_dsa = true;
            }
            let v = ec2::verify(
                &document,
                rsa2048.as_deref(),
                pkcs7.as_deref(),
                signature.as_deref(),
                &trust,
                now,
            )
            .map_err(|e| e.to_string())?;
            Ok(WorkloadIdentity::Aws(v.identity))
        }
        VerifyPlatform::Gcp => {
            let token = read(need(&args.token, "--token", "gcp")?)?;
            let keys = GoogleKeys::from_jwks_json(&read(need(&args.jwks, "--jwks", "gcp")?)?)
                .map_err(|e| e.to_string())?;
            let audience = need(&args.audience, "--audience", "gcp")?;
            let ctx = VerifyContext {
                audience: audience.clone(),
                now,
                peer_ip: None,
            };
            let v = verify_token(token.trim(), &keys, &ctx).map_err(|e| e.to_string())?;
            Ok(WorkloadIdentity::Gcp(v.identity))
        }
    }
}

/// The region named by the document (or the PKCS#7's embedded one), to file extra
/// certificates under.
fn region_hint(document: &str, pkcs7: Option<&str>) -> Result<String, String> {
    let bytes = if document.is_empty() {
        let p7 = pkcs7.ok_or("--document or a PKCS#7 is needed")?;
        let der = cms::decode_base64_body(p7).map_err(|e| e.to_string())?;
        cms::SignedMessage::parse(&der)
            .map_err(|e| e.to_string())?
            .content
    } else {
        document.as_bytes().to_vec()
    };
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("document is not JSON: {e}"))?;
    v.get("region")
        .and_then(|r| r.as_str())
        .map(str::to_string)
        .ok_or_else(|| "the document has no region".to_string())
}

/// Run the command: print the identity as YAML on stdout, or return the reason (the caller
/// prints it and exits non-zero).
pub fn run(args: &VerifyArgs) -> anyhow::Result<()> {
    match verify(args) {
        Ok(id) => {
            print!("{}", workload_onboarding::yaml::to_string(&id)?);
            Ok(())
        }
        Err(why) => Err(anyhow::anyhow!("credential refused: {why}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vec_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/aws-iid")
    }

    fn args(platform: VerifyPlatform) -> VerifyArgs {
        VerifyArgs {
            platform,
            document: None,
            rsa2048: None,
            signature: None,
            pkcs7: None,
            certificate: vec![],
            token: None,
            jwks: None,
            audience: None,
            at: None,
        }
    }

    #[test]
    fn aws_vector_verifies_offline() {
        let d = vec_dir().join("rsa2048-us-west-2-2021");
        let a = VerifyArgs {
            document: Some(d.join("document.json")),
            rsa2048: Some(d.join("rsa2048.b64")),
            at: Some("2021-09-03T21:30:00Z".into()),
            ..args(VerifyPlatform::Aws)
        };
        let id = verify(&a).unwrap();
        let yaml = workload_onboarding::yaml::to_string(&id).unwrap();
        assert!(yaml.contains("us-west-2a"), "{yaml}");
        assert!(yaml.contains("instanceId"), "{yaml}");
    }

    #[test]
    fn aws_legacy_signature_with_operator_certificate() {
        let d = vec_dir().join("ap-southeast-2-2026");
        let a = VerifyArgs {
            document: Some(d.join("document.json")),
            signature: Some(d.join("signature.b64")),
            certificate: vec![d.join("certificate-rsa-ap-southeast-2.pem")],
            at: Some("2026-02-16T01:00:00Z".into()),
            ..args(VerifyPlatform::Aws)
        };
        verify(&a).unwrap();
        let bad = VerifyArgs {
            signature: Some(d.join("negative-tampered-signature.b64")),
            ..a
        };
        assert!(verify(&bad).unwrap_err().contains("does not verify"));
    }

    #[test]
    fn reasons_are_explicit() {
        let a = VerifyArgs {
            at: Some("yesterday".into()),
            ..args(VerifyPlatform::Aws)
        };
        assert!(verify(&a).unwrap_err().contains("RFC 3339"));
        assert!(
            verify(&args(VerifyPlatform::Gcp))
                .unwrap_err()
                .contains("--token")
        );
        let d = vec_dir().join("rsa2048-us-west-2-2021");
        let mismatch = VerifyArgs {
            document: Some(vec_dir().join("ap-southeast-2-2026/document.json")),
            rsa2048: Some(d.join("rsa2048.b64")),
            ..args(VerifyPlatform::Aws)
        };
        assert!(verify(&mismatch).unwrap_err().contains("differs"));
    }
}
