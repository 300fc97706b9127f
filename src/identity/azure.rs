//! Azure: IMDS attested data with an endpoint-issued nonce.
//!
//! Agent: `GET <imds>/metadata/attested/document?api-version=2020-09-01&nonce=<nonce>` with
//! `Metadata: true` (the nonce comes from the endpoint, `POST /v1/nonce`), plus the unsigned
//! `/metadata/instance/compute` for the resource group and VM name.
//! Endpoint: the PKCS#7 signature by the certificate the SignerInfo names (never simply the
//! first certificate in the bag: SPIRE's 2026 advisory), that certificate's SAN
//! (`metadata.azure.com` or a subdomain by default) and its chain to the configured roots,
//! then the nonce and the `vmId`.

use serde::{Deserialize, Serialize};

use crate::api::identity::AzureIdentity;
use crate::api::policy::AzureIdentityMatcher;
use crate::identity::aws::listed;
use crate::policy::Mismatch;

/// The identity part of a WAR name: `azure-<subscription>-<resource-group>-vm-<vm-id>`.
pub fn name_part(id: &AzureIdentity) -> String {
    let vm = id.compute.as_ref().map_or("", |c| c.instance_id.as_str());
    format!("azure-{}-{}-vm-{}", id.subscription, id.resource_group, vm)
}

/// Whether an Azure identity satisfies a policy's `azure` matcher; `Err` says why not.
///
/// `subscriptions` is required (an empty list matches nothing; the subscription is signed
/// by Azure). `resourceGroups`, `locations` and `compute.names` narrow; they come from the
/// VM's unsigned instance metadata (checked against the signed vmId and subscription), so
/// they separate VMs an operator controls, not VMs that lie (see docs/identity.md).
/// Resource group names compare case-insensitively, as Azure treats them.
pub fn matches(m: &AzureIdentityMatcher, id: &AzureIdentity) -> Result<(), Mismatch> {
    if m.subscriptions.is_empty() {
        return Err(Mismatch("the azure matcher lists no subscriptions".into()));
    }
    listed("subscription", &m.subscriptions, &id.subscription)?;
    if !m.resource_groups.is_empty()
        && !m
            .resource_groups
            .iter()
            .any(|g| g == "*" || g.eq_ignore_ascii_case(&id.resource_group))
    {
        return Err(Mismatch(format!(
            "resource group {:?} is not one of {:?}",
            id.resource_group, m.resource_groups
        )));
    }
    listed("location", &m.locations, &id.location)?;
    if let Some(c) = &m.compute {
        let Some(compute) = &id.compute else {
            return Err(Mismatch("the matcher is for VMs, this is not one".into()));
        };
        listed("VM name", &c.names, &compute.name)?;
    }
    Ok(())
}

/// The unsigned compute metadata the agent sends beside the attested document
/// (`Credential::Azure.instanceMetadata`). Unknown fields are refused, as in the rest of the
/// credential; the agent reads IMDS's much larger document with [`ComputeMetadata::from_imds`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ComputeMetadata {
    #[serde(default)]
    pub vm_id: String,
    #[serde(default)]
    pub subscription_id: String,
    #[serde(default)]
    pub resource_group_name: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub location: String,
}

impl ComputeMetadata {
    /// The fields we use from IMDS's `/metadata/instance/compute`, which has many more.
    pub fn from_imds(json: &str) -> Result<ComputeMetadata, serde_json::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Imds {
            #[serde(default)]
            vm_id: String,
            #[serde(default)]
            subscription_id: String,
            #[serde(default)]
            resource_group_name: String,
            #[serde(default)]
            name: String,
            #[serde(default)]
            location: String,
        }
        let i: Imds = serde_json::from_str(json)?;
        Ok(ComputeMetadata {
            vm_id: i.vm_id,
            subscription_id: i.subscription_id,
            resource_group_name: i.resource_group_name,
            name: i.name,
            location: i.location,
        })
    }
}

/// The signed content of an attested document.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttestedContent {
    #[serde(default)]
    pub nonce: String,
    pub vm_id: String,
    pub subscription_id: String,
}

/// The api-version the agent asks IMDS for.
pub const API_VERSION: &str = "2020-09-01";

pub use verify::*;

mod verify {
    use std::path::PathBuf;
    use std::time::SystemTime;

    use serde::{Deserialize, Serialize};
    use x509_cert::Certificate;

    use super::*;
    use crate::api::identity::AzureComputeIdentity;
    use crate::clock::unix;
    use crate::identity::VerifyError;
    use crate::identity::cms::{self, CmsError, SignedMessage};

    const MAX_CHAIN: usize = 5;

    /// A fresh nonce for `POST /v1/nonce`: 32 hex characters (alphanumeric, as IMDS wants),
    /// 122 random bits.
    pub fn new_nonce() -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }

    /// `authentication.azure` in the endpoint's config.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct AzureConfig {
        /// PEM roots the signer must chain to (e.g. DigiCert Global Root G2 and Microsoft
        /// TLS RSA Root G2 for Azure public cloud).
        pub root_certificates: Vec<PathBuf>,
        /// PEM intermediates (Azure's PKCS#7 carries only the leaf; Azure publishes its
        /// issuing CAs on its "Azure CA details" page).
        #[serde(default)]
        pub intermediate_certificates: Vec<PathBuf>,
        /// Domains the signer's SAN may be (or be a subdomain of); default
        /// `metadata.azure.com`.
        #[serde(default)]
        pub allowed_metadata_domains: Vec<String>,
    }

    /// Parsed trust for attested documents.
    #[derive(Debug, Clone)]
    pub struct AzureTrust {
        pub roots: Vec<Certificate>,
        pub intermediates: Vec<Certificate>,
        pub allowed_domains: Vec<String>,
    }

    /// `authentication.azure` cannot be used; the message names the file.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum AzureTrustError {
        #[error("{}: {detail}", path.display())]
        File { path: PathBuf, detail: String },
        #[error("azure: rootCertificates is empty")]
        NoRoots,
    }

    impl AzureTrust {
        pub fn from_config(cfg: &AzureConfig) -> Result<AzureTrust, AzureTrustError> {
            let load = |paths: &[PathBuf]| -> Result<Vec<Certificate>, AzureTrustError> {
                let mut out = Vec::new();
                for p in paths {
                    let file_error = |detail: String| AzureTrustError::File {
                        path: p.clone(),
                        detail,
                    };
                    let pem = std::fs::read(p).map_err(|e| file_error(e.to_string()))?;
                    out.extend(
                        cms::certificates_from_pem(&pem).map_err(|e| file_error(e.to_string()))?,
                    );
                }
                Ok(out)
            };
            let roots = load(&cfg.root_certificates)?;
            if roots.is_empty() {
                return Err(AzureTrustError::NoRoots);
            }
            Ok(AzureTrust {
                roots,
                intermediates: load(&cfg.intermediate_certificates)?,
                allowed_domains: if cfg.allowed_metadata_domains.is_empty() {
                    vec!["metadata.azure.com".into()]
                } else {
                    cfg.allowed_metadata_domains.clone()
                },
            })
        }
    }

    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum AzureError {
        #[error("malformed Azure attested document: {0}")]
        Malformed(String),
        #[error("the attested document does not carry the certificate its signer names")]
        SignerCertificateMissing,
        #[error("the attested document's signature does not verify: {0}")]
        BadSignature(String),
        #[error("the signer certificate's names {names:?} are not under {allowed:?}")]
        WrongSignerName {
            names: Vec<String>,
            allowed: Vec<String>,
        },
        #[error("the signer certificate does not chain to a configured Azure root: {0}")]
        UntrustedChain(String),
        #[error("the attested document carries nonce {found:?}, not the one this endpoint issued")]
        WrongNonce { found: String },
        #[error("the instance metadata ({0}) does not match the signed attested document")]
        MetadataMismatch(&'static str),
    }

    impl From<AzureError> for VerifyError {
        fn from(e: AzureError) -> VerifyError {
            let msg = e.to_string();
            match e {
                AzureError::Malformed(_) => VerifyError::Malformed(msg),
                AzureError::SignerCertificateMissing | AzureError::BadSignature(_) => {
                    VerifyError::InvalidSignature(msg)
                }
                AzureError::WrongSignerName { .. } | AzureError::UntrustedChain(_) => {
                    VerifyError::UnknownIssuer(msg)
                }
                AzureError::WrongNonce { .. } => VerifyError::Nonce(msg),
                AzureError::MetadataMismatch(_) => VerifyError::Invalid(msg),
            }
        }
    }

    /// A verified attested document.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct VerifiedAzure {
        pub identity: AzureIdentity,
        pub content: AttestedContent,
    }

    fn name_allowed(name: &str, allowed: &[String]) -> bool {
        let name = name.trim_start_matches("*.").to_ascii_lowercase();
        allowed.iter().any(|d| {
            let d = d.to_ascii_lowercase();
            name == d || name.ends_with(&format!(".{d}"))
        })
    }

    /// Verify the attested document's PKCS#7 (`signature` as IMDS returns it) against the
    /// nonce this endpoint issued; the unsigned `metadata` adds the resource group, name and
    /// location when its vmId and subscription equal the signed ones.
    pub fn verify(
        signature_b64: &str,
        expected_nonce: &str,
        metadata: Option<&ComputeMetadata>,
        trust: &AzureTrust,
        now: SystemTime,
    ) -> Result<VerifiedAzure, AzureError> {
        if signature_b64.len() > 64 * 1024 {
            return Err(AzureError::Malformed("attested document too large".into()));
        }
        let der = cms::decode_base64_body(signature_b64)
            .map_err(|e| AzureError::Malformed(e.to_string()))?;
        let msg = SignedMessage::parse(&der).map_err(|e| AzureError::Malformed(e.to_string()))?;
        // The certificate that actually signed, resolved from the SignerInfo.
        let signer = msg
            .find_signer(&msg.certificates)
            .ok_or(AzureError::SignerCertificateMissing)?
            .clone();
        msg.verify(&signer).map_err(|e| match e {
            CmsError::Malformed(m) => AzureError::Malformed(m),
            other => AzureError::BadSignature(other.to_string()),
        })?;
        let names = cms::dns_names(&signer);
        if !names
            .iter()
            .any(|n| name_allowed(n, &trust.allowed_domains))
        {
            return Err(AzureError::WrongSignerName {
                names,
                allowed: trust.allowed_domains.clone(),
            });
        }
        verify_chain(&signer, &msg.certificates, trust, unix(now))?;
        let content: AttestedContent = serde_json::from_slice(&msg.content)
            .map_err(|e| AzureError::Malformed(format!("attested content: {e}")))?;
        if expected_nonce.is_empty() || content.nonce != expected_nonce {
            return Err(AzureError::WrongNonce {
                found: content.nonce.clone(),
            });
        }
        if content.vm_id.is_empty() || content.subscription_id.is_empty() {
            return Err(AzureError::Malformed(
                "attested content lacks vmId or subscriptionId".into(),
            ));
        }
        let meta = metadata.cloned().unwrap_or_default();
        if metadata.is_some() {
            if !meta.vm_id.eq_ignore_ascii_case(&content.vm_id) {
                return Err(AzureError::MetadataMismatch("vmId"));
            }
            if !meta
                .subscription_id
                .eq_ignore_ascii_case(&content.subscription_id)
            {
                return Err(AzureError::MetadataMismatch("subscriptionId"));
            }
        }
        Ok(VerifiedAzure {
            identity: AzureIdentity {
                subscription: content.subscription_id.clone(),
                resource_group: meta.resource_group_name,
                location: meta.location,
                compute: Some(AzureComputeIdentity {
                    instance_id: content.vm_id.clone(),
                    name: meta.name,
                }),
            },
            content,
        })
    }

    fn verify_chain(
        leaf: &Certificate,
        carried: &[Certificate],
        trust: &AzureTrust,
        now: i64,
    ) -> Result<(), AzureError> {
        let pool: Vec<&Certificate> = carried.iter().chain(trust.intermediates.iter()).collect();
        let mut current = leaf.clone();
        for _ in 0..MAX_CHAIN {
            if !cms::valid_at(&current, now) {
                return Err(AzureError::UntrustedChain(format!(
                    "{} is not valid now",
                    current.tbs_certificate.subject
                )));
            }
            if let Some(root) = trust
                .roots
                .iter()
                .find(|r| cms::verify_issued_by(&current, r).is_ok())
            {
                if !cms::valid_at(root, now) {
                    return Err(AzureError::UntrustedChain(format!(
                        "root {} is not valid now",
                        root.tbs_certificate.subject
                    )));
                }
                return Ok(());
            }
            let next = pool
                .iter()
                .find(|c| {
                    **c != &current
                        && c.tbs_certificate.subject == current.tbs_certificate.issuer
                        && cms::verify_issued_by(&current, c).is_ok()
                })
                .ok_or_else(|| {
                    AzureError::UntrustedChain(format!(
                        "no configured root or intermediate issued {}",
                        current.tbs_certificate.subject
                    ))
                })?;
            current = (*next).clone();
        }
        Err(AzureError::UntrustedChain("chain too long".into()))
    }
}

#[cfg(feature = "agent")]
pub use collect::*;

#[cfg(feature = "agent")]
mod collect {
    use std::time::Duration;

    use super::{API_VERSION, ComputeMetadata};

    pub const DEFAULT_IMDS: &str = "http://169.254.169.254";

    #[derive(Debug, thiserror::Error)]
    #[error("Azure IMDS at {base}: {detail}")]
    pub struct AzureCollectError {
        pub base: String,
        pub detail: String,
    }

    fn get(
        base: &str,
        path: &str,
        query: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<String, AzureCollectError> {
        let err = |detail: String| AzureCollectError {
            base: base.to_string(),
            detail,
        };
        let agent = crate::http_client::HttpClient::new(timeout).build();
        let mut req = agent
            .get(format!("{}{path}", base.trim_end_matches('/')))
            .header("Metadata", "true")
            .query("api-version", API_VERSION);
        for (k, v) in query {
            req = req.query(*k, *v);
        }
        let mut resp = req.call().map_err(|e| err(e.to_string()))?;
        if resp.status() != 200 {
            return Err(err(format!("GET {path}: HTTP {}", resp.status())));
        }
        resp.body_mut()
            .with_config()
            .limit(256 * 1024)
            .read_to_string()
            .map_err(|e| err(e.to_string()))
    }

    /// The attested document's `signature` (base64 PKCS#7) for `nonce`.
    pub fn fetch_attested_document(
        base: &str,
        nonce: &str,
        timeout: Duration,
    ) -> Result<String, AzureCollectError> {
        let body = get(
            base,
            "/metadata/attested/document",
            &[("nonce", nonce)],
            timeout,
        )?;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| AzureCollectError {
            base: base.to_string(),
            detail: format!("attested document is not JSON: {e}"),
        })?;
        v.get("signature")
            .and_then(|s| s.as_str())
            .map(str::to_string)
            .ok_or_else(|| AzureCollectError {
                base: base.to_string(),
                detail: "attested document has no signature".into(),
            })
    }

    /// The VM's (unsigned) compute metadata.
    pub fn fetch_compute_metadata(
        base: &str,
        timeout: Duration,
    ) -> Result<ComputeMetadata, AzureCollectError> {
        let body = get(base, "/metadata/instance/compute", &[], timeout)?;
        ComputeMetadata::from_imds(&body).map_err(|e| AzureCollectError {
            base: base.to_string(),
            detail: format!("compute metadata: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::identity::AzureComputeIdentity;
    use crate::api::policy::AzureComputeMatcher;

    fn id() -> AzureIdentity {
        AzureIdentity {
            subscription: "11111111-2222-3333-4444-555555555555".into(),
            resource_group: "Azure-Example".into(),
            location: "westeurope".into(),
            compute: Some(AzureComputeIdentity {
                instance_id: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee".into(),
                name: "vm-1".into(),
            }),
        }
    }

    #[test]
    fn name_part_format() {
        assert_eq!(
            name_part(&id()),
            "azure-11111111-2222-3333-4444-555555555555-Azure-Example-vm-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
        );
    }

    #[test]
    fn matcher_fields() {
        let base = AzureIdentityMatcher {
            subscriptions: vec!["11111111-2222-3333-4444-555555555555".into()],
            ..Default::default()
        };
        assert!(matches(&base, &id()).is_ok());
        assert!(matches(&AzureIdentityMatcher::default(), &id()).is_err());
        let rg = AzureIdentityMatcher {
            resource_groups: vec!["azure-example".into()],
            ..base.clone()
        };
        assert!(matches(&rg, &id()).is_ok(), "resource groups ignore case");
        for (field, m) in [
            (
                "subscription",
                AzureIdentityMatcher {
                    subscriptions: vec!["other".into()],
                    ..Default::default()
                },
            ),
            (
                "resource group",
                AzureIdentityMatcher {
                    resource_groups: vec!["prod".into()],
                    ..base.clone()
                },
            ),
            (
                "location",
                AzureIdentityMatcher {
                    locations: vec!["eastus".into()],
                    ..base.clone()
                },
            ),
            (
                "VM name",
                AzureIdentityMatcher {
                    compute: Some(AzureComputeMatcher {
                        names: vec!["vm-2".into()],
                    }),
                    ..base.clone()
                },
            ),
        ] {
            let err = matches(&m, &id()).unwrap_err();
            assert!(err.contains(field), "{err}");
        }
    }

    #[test]
    fn instance_metadata_in_a_credential_is_strict_imds_is_not() {
        let sent = serde_json::json!({"vmId": "v", "subscriptionId": "s", "resourceGroupName": "g",
                                     "name": "n", "location": "l"});
        let m: ComputeMetadata = serde_json::from_value(sent.clone()).unwrap();
        assert_eq!(m.name, "n");
        let mut extra = sent;
        extra["nmae"] = "x".into();
        let e = serde_json::from_value::<ComputeMetadata>(extra).unwrap_err();
        assert!(e.to_string().contains("nmae"), "{e}");
        // IMDS itself sends dozens of fields the agent does not forward.
        let imds = r#"{"azEnvironment":"AzurePublicCloud","location":"westeurope","name":"vm1",
                       "osType":"Linux","resourceGroupName":"rg","subscriptionId":"s","tags":"",
                       "vmId":"v","vmSize":"Standard_B1s"}"#;
        let m = ComputeMetadata::from_imds(imds).unwrap();
        assert_eq!(
            (m.name.as_str(), m.resource_group_name.as_str()),
            ("vm1", "rg")
        );
    }
}
