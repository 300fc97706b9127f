//! Each cloud platform's agent half collects a credential from the metadata simulator over
//! real HTTP on loopback, and the endpoint half verifies it against the trust material the
//! simulator wrote (as an operator would configure it).
#![cfg(all(feature = "endpoint", feature = "agent"))]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use workload_onboarding::api::identity::WorkloadIdentity;
use workload_onboarding::identity::aws::ec2::{self, Ec2Error, Ec2Trust, SignatureForm};
use workload_onboarding::identity::aws::{imds, replay};
use workload_onboarding::identity::azure::{self, AzureConfig, AzureError, AzureTrust};
use workload_onboarding::identity::detect::{MetadataAddresses, Platform, detect_platform};
use workload_onboarding::identity::gcp::{self, GcpConfig, GcpVerifier};
// The simulator is a test and demo tool, not library code: its binary owns it and the tests
// compile the same source.
#[allow(dead_code)]
#[path = "../src/bin/cloud-metadata-simulator/simulator.rs"]
mod simulator;

use simulator::{SimulatedHost, Simulator, SimulatorKeys, SimulatorServer};
use workload_onboarding::identity::{VerifyContext, VerifyError, cms};

const T: Duration = Duration::from_secs(5);

fn start() -> (SimulatorServer, tempfile::TempDir) {
    let keys =
        SimulatorKeys::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/cloud-sim"))
            .unwrap();
    let sim = Arc::new(Simulator::new(keys, SimulatedHost::default()));
    let trust = tempfile::tempdir().unwrap();
    sim.write_trust(trust.path()).unwrap();
    (SimulatorServer::start(sim, 0).unwrap(), trust)
}

fn ctx(audience: &str, now: SystemTime) -> VerifyContext {
    VerifyContext {
        audience: audience.into(),
        now,
        peer_ip: None,
    }
}

#[test]
fn aws_ec2_imdsv2_document_verifies_against_the_simulator_certificate() {
    let (server, trust_dir) = start();
    let cred = imds::fetch_identity(&server.base_url(), T).unwrap();
    assert!(
        cred.document.ends_with("\"\n}"),
        "IMDS formatting, no trailing newline"
    );

    // Built-in AWS certificates do not trust the simulator.
    let err = ec2::verify(
        &cred.document,
        Some(&cred.rsa2048),
        None,
        None,
        &Ec2Trust::builtin(),
        SystemTime::now(),
    )
    .unwrap_err();
    assert!(matches!(err, Ec2Error::WrongCertificate { .. }), "{err}");

    let mut trust = Ec2Trust::builtin();
    let pem = std::fs::read(trust_dir.path().join("aws-rsa2048-us-east-2.pem")).unwrap();
    trust.rsa2048.insert(
        "us-east-2".into(),
        cms::certificates_from_pem(&pem).unwrap(),
    );
    let v = ec2::verify(
        &cred.document,
        Some(&cred.rsa2048),
        None,
        None,
        &trust,
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(v.form, SignatureForm::Rsa2048);
    assert_eq!(v.identity.account, "123456789012");
    assert_eq!(v.identity.zone, "us-east-2b");
    // The replay checks on what the verifier returned.
    let ip = v.private_ip.unwrap();
    use workload_onboarding::api::registration::AddressType;
    replay::check_source_address(
        Some(ip),
        "127.0.0.1".parse().unwrap(),
        None,
        AddressType::Vpc,
        &[],
    )
    .unwrap();
    let replayed = replay::check_source_address(
        Some(ip),
        "10.1.2.3".parse().unwrap(),
        None,
        AddressType::Vpc,
        &[],
    )
    .unwrap_err();
    assert!(matches!(
        replayed,
        replay::ReplayError::WrongSourceAddress { .. }
    ));
    replay::check_max_age(
        v.pending_time,
        SystemTime::now(),
        Some(Duration::from_secs(300)),
    )
    .unwrap();
    let mut sessions = replay::SessionRegistry::new();
    let key = replay::instance_key(&v.identity);
    sessions
        .begin(&key, "first", SystemTime::now(), Duration::from_secs(60))
        .unwrap();
    assert!(matches!(
        sessions.begin(&key, "second", SystemTime::now(), Duration::from_secs(60)),
        Err(replay::ReplayError::SessionConflict { .. })
    ));
    assert_eq!(
        workload_onboarding::identity::aws::cloud_name_part(&WorkloadIdentity::Aws(v.identity))
            .unwrap(),
        "aws-aws-123456789012-us-east-2b-ec2-i-0123456789abcdef0"
    );
}

#[test]
fn imds_get_without_session_token_is_refused_by_the_simulator() {
    let (server, _t) = start();
    let resp = ureq::get(format!(
        "{}/latest/dynamic/instance-identity/document",
        server.base_url()
    ))
    .config()
    .http_status_as_error(false)
    .build()
    .call()
    .unwrap();
    assert_eq!(resp.status(), 401);
}

#[test]
fn gcp_token_verifies_and_audience_and_expiry_are_enforced() {
    let (server, trust_dir) = start();
    let plane = "plane-uid-1234";
    let token = gcp::fetch_identity_token(&server.base_url(), plane, T).unwrap();
    let verifier = GcpVerifier::new(&GcpConfig {
        jwks_file: Some(trust_dir.path().join("gcp-jwks.json")),
        ..Default::default()
    })
    .unwrap();
    let v = verifier
        .verify(&token, &ctx(plane, SystemTime::now()))
        .unwrap();
    assert_eq!(v.identity.project_id, "gcp-example");
    assert_eq!(v.identity.project_number, "234567890121");
    assert_eq!(v.identity.region, "us-central1");
    assert_eq!(
        gcp::name_part(&v.identity),
        "gcp-gcp-example-us-central1-a-gce-693197132356332126"
    );

    let wrong = verifier
        .verify(&token, &ctx("another-plane", SystemTime::now()))
        .unwrap_err();
    assert!(
        matches!(wrong, VerifyError::WrongAudience { .. }),
        "{wrong}"
    );
    let later = SystemTime::now() + Duration::from_secs(3600 + 120);
    let expired = verifier.verify(&token, &ctx(plane, later)).unwrap_err();
    assert!(matches!(expired, VerifyError::Expired(_)), "{expired}");

    // A token signed by another key (the AWS test key under the same kid) is forged.
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    parts[2] = parts[2].chars().rev().collect();
    let forged = verifier
        .verify(&parts.join("."), &ctx(plane, SystemTime::now()))
        .unwrap_err();
    assert!(
        matches!(
            forged,
            VerifyError::InvalidSignature(_) | VerifyError::Malformed(_)
        ),
        "{forged}"
    );
}

#[test]
fn gcp_unknown_kid_refreshes_the_jwks_file() {
    let (server, trust_dir) = start();
    let jwks_path = trust_dir.path().join("jwks-rotating.json");
    std::fs::write(&jwks_path, r#"{"keys":[{"kty":"RSA","kid":"old","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}]}"#).unwrap();
    let verifier = GcpVerifier::new(&GcpConfig {
        jwks_file: Some(jwks_path.clone()),
        ..Default::default()
    })
    .unwrap()
    .with_min_refresh(Duration::ZERO);
    let token = gcp::fetch_identity_token(&server.base_url(), "p", T).unwrap();
    let err = verifier
        .verify(&token, &ctx("p", SystemTime::now()))
        .unwrap_err();
    assert!(matches!(err, VerifyError::InvalidSignature(_)), "{err}");
    // Google rotates: the file now has the new key; the unknown kid triggers a reload.
    std::fs::copy(trust_dir.path().join("gcp-jwks.json"), &jwks_path).unwrap();
    verifier
        .verify(&token, &ctx("p", SystemTime::now()))
        .unwrap();
}

#[test]
fn azure_attested_document_verifies_with_the_endpoint_nonce() {
    let (server, trust_dir) = start();
    let trust = AzureTrust::from_config(&AzureConfig {
        root_certificates: vec![trust_dir.path().join("azure-root.pem")],
        ..Default::default()
    })
    .unwrap();
    let nonce = "a1b2c3d4e5f6a7b8c9d0";
    let sig = azure::fetch_attested_document(&server.base_url(), nonce, T).unwrap();
    let meta = azure::fetch_compute_metadata(&server.base_url(), T).unwrap();
    let v = azure::verify(&sig, nonce, Some(&meta), &trust, SystemTime::now()).unwrap();
    assert_eq!(
        v.identity.subscription,
        "11111111-2222-3333-4444-555555555555"
    );
    assert_eq!(v.identity.resource_group, "azure-example");
    assert_eq!(
        azure::name_part(&v.identity),
        "azure-11111111-2222-3333-4444-555555555555-azure-example-vm-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    );

    let err = azure::verify(
        &sig,
        "another-nonce",
        Some(&meta),
        &trust,
        SystemTime::now(),
    )
    .unwrap_err();
    assert!(matches!(err, AzureError::WrongNonce { .. }), "{err}");

    let mut lying = meta.clone();
    lying.vm_id = "ffffffff-0000-0000-0000-000000000000".into();
    let err = azure::verify(&sig, nonce, Some(&lying), &trust, SystemTime::now()).unwrap_err();
    assert_eq!(err, AzureError::MetadataMismatch("vmId"));

    // Another root: the chain is refused.
    let other_root = AzureTrust {
        roots: cms::certificates_from_pem(
            &std::fs::read(trust_dir.path().join("aws-rsa2048-us-east-2.pem")).unwrap(),
        )
        .unwrap(),
        ..trust.clone()
    };
    let err = azure::verify(&sig, nonce, Some(&meta), &other_root, SystemTime::now()).unwrap_err();
    assert!(matches!(err, AzureError::UntrustedChain(_)), "{err}");

    // A signer outside the allowed metadata domains.
    let strict = AzureTrust {
        allowed_domains: vec!["metadata.azure.us".into()],
        ..trust
    };
    let err = azure::verify(&sig, nonce, Some(&meta), &strict, SystemTime::now()).unwrap_err();
    assert!(matches!(err, AzureError::WrongSignerName { .. }), "{err}");
}

#[test]
fn detect_finds_the_simulated_platform_and_gives_up_fast_elsewhere() {
    let (server, _t) = start();
    // A closed port on loopback: nothing listens there.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let base = server.base_url();
    let only = |aws: &str, gcp: &str, azure: &str| MetadataAddresses {
        aws_imds: aws.into(),
        gcp_metadata: gcp.into(),
        azure_imds: azure.into(),
        ecs_credentials_env: false,
        timeout: Duration::from_millis(300),
    };
    assert_eq!(
        detect_platform(&only(&base, &closed, &closed)),
        Some(Platform::AwsEc2)
    );
    assert_eq!(
        detect_platform(&only(&closed, &base, &closed)),
        Some(Platform::Gcp)
    );
    assert_eq!(
        detect_platform(&only(&closed, &closed, &base)),
        Some(Platform::Azure)
    );
    let started = std::time::Instant::now();
    assert_eq!(detect_platform(&only(&closed, &closed, &closed)), None);
    // A listener that accepts but never answers (a firewall that swallows packets looks
    // the same to the client) must not hang the agent either.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    assert_eq!(
        detect_platform(&only(&silent_url, &silent_url, &silent_url)),
        None
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}
