//! AWS's public certificates for instance identity documents, pinned per region.
//!
//! `certs/rsa2048.pem` holds the `rsa2048` (RSA-2048/SHA-256 PKCS#7) certificate of every
//! region AWS publishes one for: the commercial partition, aws-cn (cn-north-1,
//! cn-northwest-1), aws-us-gov (us-gov-east-1, us-gov-west-1) and the European Sovereign
//! Cloud (eusc-de-east-1). Provenance and how to refresh: `certs/README.md`.
//!
//! The legacy forms (`signature`: RSA-1024, rotated in 2024 and expiring 2029..2031;
//! `pkcs7`: DSA/SHA-1) have no built-in certificates: an operator who enables them lists
//! the certificates in the endpoint configuration.

use std::collections::BTreeMap;

use x509_cert::Certificate;

use crate::identity::cms::{self, CmsError};

/// The embedded bundle: `region: <name>` lines, each followed by one PEM certificate.
pub const RSA2048_BUNDLE: &str = include_str!("certs/rsa2048.pem");

/// Parse a bundle of `region: <name>` + PEM blocks.
pub fn parse_region_bundle(text: &str) -> Result<BTreeMap<String, Vec<Certificate>>, CmsError> {
    let mut out: BTreeMap<String, Vec<Certificate>> = BTreeMap::new();
    let mut region: Option<String> = None;
    let mut pem = String::new();
    for line in text.lines() {
        if let Some(r) = line.strip_prefix("region:") {
            region = Some(r.trim().to_string());
            continue;
        }
        if line.starts_with("-----BEGIN") {
            pem.clear();
        }
        pem.push_str(line);
        pem.push('\n');
        if line.starts_with("-----END") {
            let r = region
                .take()
                .ok_or_else(|| CmsError::Malformed("certificate without a region line".into()))?;
            out.entry(r)
                .or_default()
                .extend(cms::certificates_from_pem(pem.as_bytes())?);
        }
    }
    Ok(out)
}

/// The built-in `rsa2048` certificates by region.
pub fn builtin_rsa2048() -> BTreeMap<String, Vec<Certificate>> {
    // The bundle is part of the binary and covered by a unit test; a parse failure here is
    // a build defect, not bad input.
    parse_region_bundle(RSA2048_BUNDLE).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_published_region_has_a_certificate() {
        let certs = parse_region_bundle(RSA2048_BUNDLE).unwrap();
        assert_eq!(certs.len(), 39);
        for r in [
            "us-east-1",
            "us-west-2",
            "eu-west-1",
            "ap-southeast-2",
            "cn-north-1",
            "cn-northwest-1",
            "us-gov-east-1",
            "us-gov-west-1",
            "eusc-de-east-1",
            "mx-central-1",
        ] {
            assert_eq!(certs[r].len(), 1, "{r}");
        }
    }

    #[test]
    fn every_builtin_certificate_is_self_signed_and_intact() {
        for (region, certs) in builtin_rsa2048() {
            for c in certs {
                cms::verify_issued_by(&c, &c).unwrap_or_else(|e| panic!("{region}: {e}"));
            }
        }
    }
}
