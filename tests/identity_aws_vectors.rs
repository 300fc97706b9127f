//! Genuine AWS-signed instance identity documents (testdata/aws-iid, see its SOURCE) through
//! the endpoint's EC2 verifier, with a fixed clock.
#![cfg(feature = "endpoint")]

use std::path::Path;
use std::time::{Duration, SystemTime};

use workload_onboarding::identity::VerifyError;
use workload_onboarding::identity::aws::certs;
use workload_onboarding::identity::aws::ec2::{self, Ec2Error, Ec2Trust, SignatureForm};
use workload_onboarding::identity::cms;

fn read(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/aws-iid")
        .join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn cert(rel: &str) -> Vec<x509_cert::Certificate> {
    cms::certificates_from_pem(read(rel).as_bytes()).unwrap()
}

fn at(rfc3339: &str) -> SystemTime {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap();
    SystemTime::UNIX_EPOCH + Duration::from_secs(t.unix_timestamp() as u64)
}

#[test]
fn rsa2048_us_west_2_2021_verifies_against_the_builtin_certificate() {
    let doc = read("rsa2048-us-west-2-2021/document.json");
    let p7 = read("rsa2048-us-west-2-2021/rsa2048.b64");
    let v = ec2::verify(
        &doc,
        Some(&p7),
        None,
        None,
        &Ec2Trust::builtin(),
        at("2021-09-03T21:30:00Z"),
    )
    .unwrap();
    assert_eq!(v.form, SignatureForm::Rsa2048);
    assert_eq!(v.identity.region, "us-west-2");
    assert_eq!(v.identity.partition, "aws");
    assert_eq!(v.identity.zone, v.document.availability_zone);
    assert_eq!(
        v.identity.ec2.as_ref().unwrap().instance_id,
        v.document.instance_id
    );
    assert!(v.private_ip.is_some());
    // The identity comes from the signed bytes even when no separate document is sent.
    let alone = ec2::verify(
        "",
        Some(&p7),
        None,
        None,
        &Ec2Trust::builtin(),
        at("2021-09-03T21:30:00Z"),
    )
    .unwrap();
    assert_eq!(alone.identity, v.identity);
}

#[test]
fn rsa2048_ap_southeast_2_2026_verifies_and_vector_certificate_equals_builtin() {
    let doc = read("ap-southeast-2-2026/document.json");
    let p7 = read("ap-southeast-2-2026/rsa2048.b64");
    let v = ec2::verify(
        &doc,
        Some(&p7),
        None,
        None,
        &Ec2Trust::builtin(),
        at("2026-02-16T01:00:00Z"),
    )
    .unwrap();
    assert_eq!(v.identity.region, "ap-southeast-2");
    let builtin = &certs::builtin_rsa2048()["ap-southeast-2"];
    assert_eq!(
        builtin,
        &cert("ap-southeast-2-2026/certificate-rsa2048-ap-southeast-2.pem")
    );
    let builtin = &certs::builtin_rsa2048()["us-west-2"];
    assert_eq!(
        builtin,
        &cert("rsa2048-us-west-2-2021/certificate-rsa2048-us-west-2.pem")
    );
}

fn legacy_trust() -> Ec2Trust {
    let mut t = Ec2Trust::builtin();
    t.allow_signature = true;
    t.allow_pkcs7_dsa = true;
    t.add(
        SignatureForm::Signature,
        "ap-southeast-2",
        cert("ap-southeast-2-2026/certificate-rsa-ap-southeast-2.pem"),
    );
    t.add(
        SignatureForm::Pkcs7Dsa,
        "us-east-1",
        cert("dsa-pkcs7-us-east-1-2016/certificate-dsa.pem"),
    );
    t
}

#[test]
fn raw_signature_vectors_verify_when_enabled() {
    for (dir, when) in [
        ("ap-southeast-2-2025", "2025-06-01T00:00:00Z"),
        ("ap-southeast-2-2026", "2026-02-16T01:00:00Z"),
    ] {
        let doc = read(&format!("{dir}/document.json"));
        let sig = read(&format!("{dir}/signature.b64"));
        let v = ec2::verify(&doc, None, None, Some(&sig), &legacy_trust(), at(when))
            .unwrap_or_else(|e| panic!("{dir}: {e}"));
        assert_eq!(v.form, SignatureForm::Signature);
        assert_eq!(v.identity.region, "ap-southeast-2");
    }
}

#[test]
fn dsa_pkcs7_vector_verifies_when_enabled() {
    let doc = read("dsa-pkcs7-us-east-1-2016/document.json");
    let p7 = read("dsa-pkcs7-us-east-1-2016/pkcs7.b64");
    let v = ec2::verify(
        &doc,
        None,
        Some(&p7),
        None,
        &legacy_trust(),
        at("2016-04-08T03:05:00Z"),
    )
    .unwrap();
    assert_eq!(v.form, SignatureForm::Pkcs7Dsa);
    assert_eq!(v.identity.region, "us-east-1");
}

#[test]
fn legacy_forms_are_refused_by_default() {
    let doc = read("ap-southeast-2-2026/document.json");
    let sig = read("ap-southeast-2-2026/signature.b64");
    let err = ec2::verify(
        &doc,
        None,
        None,
        Some(&sig),
        &Ec2Trust::builtin(),
        SystemTime::now(),
    )
    .unwrap_err();
    assert!(matches!(err, Ec2Error::FormDisabled(_)), "{err}");
    let p7 = read("dsa-pkcs7-us-east-1-2016/pkcs7.b64");
    let err = ec2::verify(
        "",
        None,
        Some(&p7),
        None,
        &Ec2Trust::builtin(),
        SystemTime::now(),
    )
    .unwrap_err();
    assert!(matches!(err, Ec2Error::FormDisabled(_)), "{err}");
    assert_eq!(
        VerifyError::from(err).code().as_str(),
        "unsupported_platform"
    );
}

#[test]
fn tampered_raw_signature_is_refused() {
    let doc = read("ap-southeast-2-2026/document.json");
    let sig = read("ap-southeast-2-2026/negative-tampered-signature.b64");
    let err = ec2::verify(
        &doc,
        None,
        None,
        Some(&sig),
        &legacy_trust(),
        at("2026-02-16T01:00:00Z"),
    )
    .unwrap_err();
    assert!(matches!(err, Ec2Error::BadSignature(_)), "{err}");
    assert_eq!(VerifyError::from(err).code().as_str(), "invalid_signature");
}

#[test]
fn wrong_region_certificate_is_refused() {
    let doc = read("rsa2048-us-west-2-2021/document.json");
    let p7 = read("rsa2048-us-west-2-2021/rsa2048.b64");
    let mut trust = Ec2Trust::builtin();
    trust.rsa2048.insert(
        "us-west-2".into(),
        cert("ap-southeast-2-2026/certificate-rsa2048-ap-southeast-2.pem"),
    );
    let err = ec2::verify(
        &doc,
        Some(&p7),
        None,
        None,
        &trust,
        at("2021-09-03T21:30:00Z"),
    )
    .unwrap_err();
    assert!(
        matches!(&err, Ec2Error::WrongCertificate { region, .. } if region == "us-west-2"),
        "{err}"
    );
}

#[test]
fn unknown_region_is_refused() {
    let doc = read("rsa2048-us-west-2-2021/document.json");
    let p7 = read("rsa2048-us-west-2-2021/rsa2048.b64");
    let mut trust = Ec2Trust::builtin();
    trust.rsa2048.remove("us-west-2");
    let err = ec2::verify(
        &doc,
        Some(&p7),
        None,
        None,
        &trust,
        at("2021-09-03T21:30:00Z"),
    )
    .unwrap_err();
    assert_eq!(err, Ec2Error::UnknownRegion("us-west-2".into()));
    assert_eq!(VerifyError::from(err).code().as_str(), "unknown_issuer");
}

/// Re-encode the PKCS#7 with one byte of the embedded document changed (the region stays
/// intact so the same certificate is chosen).
fn tamper_embedded_document(p7_b64: &str, doc: &str) -> String {
    use base64::Engine;
    let mut der = cms::decode_base64_body(p7_b64).unwrap();
    let needle = doc.as_bytes();
    // The document may be split into segments in BER; find the instanceId value and flip it.
    let id_pos = doc.find("\"instanceId\"").unwrap();
    let probe = &needle[id_pos..id_pos + 24];
    let at = der
        .windows(probe.len())
        .position(|w| w == probe)
        .expect("document bytes inside the PKCS#7");
    let i = at + probe.len() - 1;
    der[i] = if der[i] == b'0' { b'1' } else { b'0' };
    base64::engine::general_purpose::STANDARD.encode(der)
}

#[test]
fn tampered_document_inside_the_pkcs7_is_refused() {
    let doc = read("rsa2048-us-west-2-2021/document.json");
    let p7 = tamper_embedded_document(&read("rsa2048-us-west-2-2021/rsa2048.b64"), &doc);
    let err = ec2::verify(
        "",
        Some(&p7),
        None,
        None,
        &Ec2Trust::builtin(),
        at("2021-09-03T21:30:00Z"),
    )
    .unwrap_err();
    assert_eq!(err, Ec2Error::DocumentTampered);
}

#[test]
fn document_outside_the_pkcs7_is_not_trusted() {
    // A genuine PKCS#7 for one instance, sent with another instance's document: the
    // identity-substitution attack (SPIRE 1.14.6).
    let p7 = read("rsa2048-us-west-2-2021/rsa2048.b64");
    let other = read("rsa2048-us-west-2-2021/document.json").replace("\"i-", "\"i-f");
    let err = ec2::verify(
        &other,
        Some(&p7),
        None,
        None,
        &Ec2Trust::builtin(),
        at("2021-09-03T21:30:00Z"),
    )
    .unwrap_err();
    assert_eq!(err, Ec2Error::DocumentMismatch);
    assert_eq!(VerifyError::from(err).code().as_str(), "invalid_credential");
    // Even a byte-for-byte equal document with a trailing newline is refused: only the
    // exact signed bytes are trusted.
    let nl = format!("{}\n", read("rsa2048-us-west-2-2021/document.json"));
    assert_eq!(
        ec2::verify(
            &nl,
            Some(&p7),
            None,
            None,
            &Ec2Trust::builtin(),
            at("2021-09-03T21:30:00Z")
        )
        .unwrap_err(),
        Ec2Error::DocumentMismatch
    );
}

#[test]
fn garbage_is_malformed() {
    let err = ec2::verify(
        "{}",
        Some("bm90IGEgcGtjczc="),
        None,
        None,
        &Ec2Trust::builtin(),
        SystemTime::now(),
    )
    .unwrap_err();
    assert!(matches!(err, Ec2Error::Malformed(_)), "{err}");
    let err = ec2::verify(
        "{}",
        None,
        None,
        None,
        &Ec2Trust::builtin(),
        SystemTime::now(),
    )
    .unwrap_err();
    assert_eq!(err, Ec2Error::NoSignature);
}
