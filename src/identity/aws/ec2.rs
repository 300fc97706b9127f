//! AWS EC2: verify an instance identity document into an [`AwsIdentity`].
//!
//! Only bytes whose signature verified are parsed into the identity: for the PKCS#7 forms
//! that is the content embedded in the PKCS#7, and a separately sent document must equal it
//! byte for byte (SPIRE's 2026 identity-substitution bug was trusting the separate copy).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

use serde::Deserialize;
use x509_cert::Certificate;

use super::partition_of;
use crate::api::identity::{AwsIdentity, Ec2Identity};
use crate::clock::unix;
use crate::identity::VerifyError;
use crate::identity::cms::{self, CmsError, HashAlg, SignedMessage};

/// Identity documents are under 1 KiB and signatures under 4 KiB; anything far larger is
/// not from IMDS.
const MAX_INPUT: usize = 64 * 1024;

/// The fields of the instance identity document this project uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceIdentityDocument {
    pub account_id: String,
    pub availability_zone: String,
    pub instance_id: String,
    pub region: String,
    #[serde(default)]
    pub private_ip: Option<String>,
    pub pending_time: String,
    #[serde(default)]
    pub image_id: Option<String>,
    #[serde(default)]
    pub instance_type: Option<String>,
}

/// Which signature vouched for the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureForm {
    /// `rsa2048`: PKCS#7, RSA-2048 + SHA-256 (the default and preferred form).
    Rsa2048,
    /// `pkcs7`: PKCS#7, DSA + SHA-1 (legacy, off unless configured).
    Pkcs7Dsa,
    /// `signature`: raw RSA-1024 PKCS#1 v1.5 over SHA-256 of the document (legacy, off
    /// unless configured).
    Signature,
}

/// The certificates and forms an endpoint accepts.
#[derive(Debug, Clone, Default)]
pub struct Ec2Trust {
    pub rsa2048: BTreeMap<String, Vec<Certificate>>,
    pub pkcs7_dsa: BTreeMap<String, Vec<Certificate>>,
    pub signature: BTreeMap<String, Vec<Certificate>>,
    pub allow_pkcs7_dsa: bool,
    pub allow_signature: bool,
}

impl Ec2Trust {
    /// The built-in `rsa2048` certificates only; legacy forms off.
    pub fn builtin() -> Ec2Trust {
        Ec2Trust {
            rsa2048: super::certs::builtin_rsa2048(),
            ..Default::default()
        }
    }

    /// Add operator-supplied certificates (kept beside the built-in ones, so a rotated
    /// certificate can be added before AWS switches to it).
    pub fn add(&mut self, form: SignatureForm, region: &str, certs: Vec<Certificate>) {
        let map = match form {
            SignatureForm::Rsa2048 => &mut self.rsa2048,
            SignatureForm::Pkcs7Dsa => &mut self.pkcs7_dsa,
            SignatureForm::Signature => &mut self.signature,
        };
        map.entry(region.to_string()).or_default().extend(certs);
    }
}

/// A verified document: the identity plus what the replay checks need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedEc2 {
    pub identity: AwsIdentity,
    pub document: InstanceIdentityDocument,
    pub private_ip: Option<IpAddr>,
    /// `pendingTime` (launch or last start), unix seconds.
    pub pending_time: i64,
    pub form: SignatureForm,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ec2Error {
    #[error("malformed EC2 identity credential: {0}")]
    Malformed(String),
    #[error(
        "no pinned AWS certificate for region {0:?}: the region is unknown to this endpoint (add its certificate in the endpoint configuration if AWS has opened it)"
    )]
    UnknownRegion(String),
    #[error(
        "the signature is not from the pinned AWS certificate for region {region}: signed by {signer}"
    )]
    WrongCertificate { region: String, signer: String },
    #[error("the document inside the PKCS#7 was altered: its digest does not match the signed one")]
    DocumentTampered,
    #[error("the signature over the identity document does not verify: {0}")]
    BadSignature(String),
    #[error(
        "the document sent beside the PKCS#7 differs from the document inside it; only the signed document is trusted"
    )]
    DocumentMismatch,
    #[error(
        "the {0} signature form is disabled on this endpoint (only rsa2048 is accepted by default)"
    )]
    FormDisabled(&'static str),
    #[error("no signature: send the rsa2048 PKCS#7 from IMDS")]
    NoSignature,
    #[error("the pinned AWS certificate for region {0} is not valid at the verification time")]
    CertificateNotValid(String),
}

impl From<Ec2Error> for VerifyError {
    fn from(e: Ec2Error) -> VerifyError {
        let msg = e.to_string();
        match e {
            Ec2Error::Malformed(_) | Ec2Error::NoSignature => VerifyError::Malformed(msg),
            Ec2Error::UnknownRegion(_) => VerifyError::UnknownIssuer(msg),
            Ec2Error::WrongCertificate { .. }
            | Ec2Error::DocumentTampered
            | Ec2Error::BadSignature(_) => VerifyError::InvalidSignature(msg),
            Ec2Error::DocumentMismatch => VerifyError::Invalid(msg),
            Ec2Error::FormDisabled(_) => VerifyError::Unsupported(msg),
            Ec2Error::CertificateNotValid(_) => VerifyError::Expired(msg),
        }
    }
}

/// Verify the credential the agent sent. `document` is the separately sent document (may be
/// empty when only a PKCS#7 is sent); the signature forms are tried strongest first and
/// only those `trust` enables.
pub fn verify(
    document: &str,
    rsa2048: Option<&str>,
    pkcs7: Option<&str>,
    signature: Option<&str>,
    trust: &Ec2Trust,
    now: SystemTime,
) -> Result<VerifiedEc2, Ec2Error> {
    let sizes = [
        document.len(),
        rsa2048.map_or(0, str::len),
        pkcs7.map_or(0, str::len),
        signature.map_or(0, str::len),
    ];
    if sizes.iter().any(|s| *s > MAX_INPUT) {
        return Err(Ec2Error::Malformed("credential field too large".into()));
    }
    let now = unix(now);
    if let Some(p7) = rsa2048.filter(|s| !s.trim().is_empty()) {
        return verify_pkcs7(document, p7, &trust.rsa2048, SignatureForm::Rsa2048, now);
    }
    if let Some(p7) = pkcs7.filter(|s| !s.trim().is_empty()) {
        if !trust.allow_pkcs7_dsa {
            return Err(Ec2Error::FormDisabled("pkcs7 (DSA)"));
        }
        return verify_pkcs7(document, p7, &trust.pkcs7_dsa, SignatureForm::Pkcs7Dsa, now);
    }
    if let Some(sig) = signature.filter(|s| !s.trim().is_empty()) {
        if !trust.allow_signature {
            return Err(Ec2Error::FormDisabled("signature (RSA-1024)"));
        }
        return verify_raw_signature(document, sig, &trust.signature, now);
    }
    Err(Ec2Error::NoSignature)
}

fn parse_document(bytes: &[u8]) -> Result<InstanceIdentityDocument, Ec2Error> {
    serde_json::from_slice(bytes)
        .map_err(|e| Ec2Error::Malformed(format!("identity document is not the IMDS JSON: {e}")))
}

fn region_certs<'a>(
    certs: &'a BTreeMap<String, Vec<Certificate>>,
    region: &str,
) -> Result<&'a [Certificate], Ec2Error> {
    certs
        .get(region)
        .filter(|c| !c.is_empty())
        .map(Vec::as_slice)
        .ok_or_else(|| Ec2Error::UnknownRegion(region.to_string()))
}

fn verify_pkcs7(
    document: &str,
    pkcs7_b64: &str,
    certs: &BTreeMap<String, Vec<Certificate>>,
    form: SignatureForm,
    now: i64,
) -> Result<VerifiedEc2, Ec2Error> {
    let ber = cms::decode_base64_body(pkcs7_b64).map_err(|e| Ec2Error::Malformed(e.to_string()))?;
    let msg = SignedMessage::parse(&ber).map_err(|e| Ec2Error::Malformed(e.to_string()))?;
    // The region picks the certificate; it is read before verification, but a wrong
    // region only selects a certificate that then fails to verify.
    let unverified = parse_document(&msg.content)?;
    let region = unverified.region.clone();
    let candidates = region_certs(certs, &region)?;
    let cert = msg
        .find_signer(candidates)
        .ok_or_else(|| Ec2Error::WrongCertificate {
            region: region.clone(),
            signer: msg.signer_description(),
        })?;
    if !cms::valid_at(cert, now) {
        return Err(Ec2Error::CertificateNotValid(region));
    }
    msg.verify(cert).map_err(|e| match e {
        CmsError::DigestMismatch => Ec2Error::DocumentTampered,
        CmsError::SignerMismatch { found, .. } => Ec2Error::WrongCertificate {
            region: region.clone(),
            signer: found,
        },
        CmsError::Malformed(m) => Ec2Error::Malformed(m),
        other => Ec2Error::BadSignature(other.to_string()),
    })?;
    if !document.is_empty() && document.as_bytes() != msg.content.as_slice() {
        return Err(Ec2Error::DocumentMismatch);
    }
    finish(unverified, form)
}

fn verify_raw_signature(
    document: &str,
    signature_b64: &str,
    certs: &BTreeMap<String, Vec<Certificate>>,
    now: i64,
) -> Result<VerifiedEc2, Ec2Error> {
    use base64::Engine;
    if document.is_empty() {
        return Err(Ec2Error::Malformed(
            "the signature form needs the document".into(),
        ));
    }
    let compact: String = signature_b64
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let sig = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| Ec2Error::Malformed(format!("signature is not base64: {e}")))?;
    let unverified = parse_document(document.as_bytes())?;
    let candidates = region_certs(certs, &unverified.region)?;
    let mut last = String::from("no certificate valid now");
    for cert in candidates.iter().filter(|c| cms::valid_at(c, now)) {
        let spki = der::Encode::to_der(&cert.tbs_certificate.subject_public_key_info)
            .map_err(|e| Ec2Error::Malformed(e.to_string()))?;
        match cms::verify_rsa_pkcs1(&spki, HashAlg::Sha256, document.as_bytes(), &sig) {
            Ok(()) => return finish(unverified, SignatureForm::Signature),
            Err(e) => last = e.to_string(),
        }
    }
    Err(Ec2Error::BadSignature(last))
}

fn finish(doc: InstanceIdentityDocument, form: SignatureForm) -> Result<VerifiedEc2, Ec2Error> {
    let pending = time::OffsetDateTime::parse(
        &doc.pending_time,
        &time::format_description::well_known::Rfc3339,
    )
    .map_err(|e| Ec2Error::Malformed(format!("pendingTime {:?}: {e}", doc.pending_time)))?;
    let private_ip = match &doc.private_ip {
        Some(ip) => Some(
            ip.parse::<IpAddr>()
                .map_err(|e| Ec2Error::Malformed(format!("privateIp {ip:?}: {e}")))?,
        ),
        None => None,
    };
    for (field, v) in [
        ("accountId", &doc.account_id),
        ("instanceId", &doc.instance_id),
        ("region", &doc.region),
    ] {
        if v.is_empty() {
            return Err(Ec2Error::Malformed(format!(
                "document has an empty {field}"
            )));
        }
    }
    Ok(VerifiedEc2 {
        identity: AwsIdentity {
            partition: partition_of(&doc.region).to_string(),
            account: doc.account_id.clone(),
            region: doc.region.clone(),
            zone: doc.availability_zone.clone(),
            ec2: Some(Ec2Identity {
                instance_id: doc.instance_id.clone(),
                iam_role: None,
            }),
            ecs: None,
        },
        private_ip,
        pending_time: pending.unix_timestamp(),
        document: doc,
        form,
    })
}
