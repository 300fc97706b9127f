//! Which fields of the endpoint configuration are paths, so that [`super::EndpointConfig::load`]
//! resolves every one of them against the config file's directory.
//!
//! Every section of the configuration implements [`ConfigPaths`] through [`paths_in!`], which
//! destructures the struct with no `..`: a field added to a section and not listed there is a
//! compile error ("pattern does not mention field"). Listing it is the whole change: a
//! `PathBuf` (bare, in an `Option` or a `Vec`) is resolved, a value type visits nothing, and a
//! new nested section type fails to compile until it gets its own `paths_in!` line. A path
//! kept in a `String` is invisible to this, so path fields are `PathBuf`s.

use std::path::PathBuf;

use super::{
    AuthenticationConfig, AwsApiSettings, AwsAuthentication, Ec2Authentication, Ec2CertificateFile,
    Ec2SignatureForm, EndpointConfig, FileStoreSettings, JwtAuthentication, LocalRepository,
    LogFormat, LoggingConfig, MeshSettings, RegistrationConfig, ServerLimits, StoreConfig,
    TemplatesConfig, TlsFiles, TokenIssuerConfig,
};
use crate::api::duration::Duration;
use crate::api::registration::AddressType;
use crate::identity::aws::ecs::EcsConfig;
use crate::identity::aws::replay::IpCidr;
use crate::identity::azure::AzureConfig;
use crate::identity::gcp::GcpConfig;
use crate::identity::jwt::{IssuerConfig, JsonPathField, TokenFields};
use crate::store::file::IstioTokenSource;
use crate::store::kube::KubeStoreSettings;

/// Something in the configuration that may hold paths relative to the config file.
pub trait ConfigPaths {
    /// Calls `f` on every path this value holds.
    fn visit_paths(&mut self, f: &mut dyn FnMut(&mut PathBuf));
}

impl ConfigPaths for PathBuf {
    fn visit_paths(&mut self, f: &mut dyn FnMut(&mut PathBuf)) {
        f(self)
    }
}

impl<T: ConfigPaths> ConfigPaths for Option<T> {
    fn visit_paths(&mut self, f: &mut dyn FnMut(&mut PathBuf)) {
        if let Some(v) = self {
            v.visit_paths(f)
        }
    }
}

impl<T: ConfigPaths> ConfigPaths for Vec<T> {
    fn visit_paths(&mut self, f: &mut dyn FnMut(&mut PathBuf)) {
        for v in self {
            v.visit_paths(f)
        }
    }
}

/// Value types: they hold no path.
macro_rules! no_paths {
    ($($ty:ty),* $(,)?) => {$(
        impl ConfigPaths for $ty {
            fn visit_paths(&mut self, _: &mut dyn FnMut(&mut PathBuf)) {}
        }
    )*};
}

no_paths!(
    String,
    bool,
    u64,
    usize,
    Duration,
    AddressType,
    IpCidr,
    Ec2SignatureForm,
    LogFormat,
);

/// `paths_in!(Section { every, field })`: visits every field of `Section`. The pattern has no
/// `..`, so the compiler refuses a section whose new field is not listed.
macro_rules! paths_in {
    ($($ty:ident { $($field:ident),* $(,)? })*) => {$(
        impl ConfigPaths for $ty {
            fn visit_paths(&mut self, f: &mut dyn FnMut(&mut PathBuf)) {
                let $ty { $($field),* } = self;
                $( ConfigPaths::visit_paths($field, f); )*
            }
        }
    )*};
}

paths_in! {
    EndpointConfig {
        api_version, kind, listen, instance_name, plane_uid, tls, token_issuer, registration,
        authentication, store, mesh, istio_token, templates, server, logging, local_repository,
    }
    LocalRepository { directory }
    TlsFiles { cert_file, key_file }
    TokenIssuerConfig { expiration, signing_key_file }
    RegistrationConfig {
        grace_period, propagation_delay, keep_alive_interval, keep_alive_timeout,
        allow_loopback_addresses,
    }
    AuthenticationConfig { jwt, aws, gcp, azure, one_session_per_host }
    JwtAuthentication { issuers }
    IssuerConfig { issuer, short_name, jwks, jwks_file, jwks_uri, ca_file, token_fields }
    TokenFields { attributes }
    JsonPathField { json_path }
    AwsAuthentication { ec2, ecs, api }
    Ec2Authentication {
        certificates, allow_signature, allow_pkcs7_dsa, connected_over, trusted_proxies,
        max_age_since_pending,
    }
    Ec2CertificateFile { region, form, file }
    EcsConfig { allowed_sts }
    AwsApiSettings { endpoint, credentials_file, profile, require_running }
    GcpConfig { jwks, jwks_file, jwks_uri }
    AzureConfig { root_certificates, intermediate_certificates, allowed_metadata_domains }
    StoreConfig { file, kube }
    FileStoreSettings { config_dir, state_dir, max_manifest_bytes, max_manifest_documents }
    KubeStoreSettings {
        kubeconfig, context, namespace, state_secret, field_manager, istio_token_expiration,
    }
    MeshSettings { cluster_id, istio_namespace, revision, istiod_gateway }
    IstioTokenSource { file, command, expiration }
    TemplatesConfig { dir }
    ServerLimits { max_body_bytes, request_timeout, handshake_timeout, max_connections }
    LoggingConfig { format, level }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Every path field of the configuration, each set to a relative `rel/...` path. A new
    /// path field belongs here too; the test below then proves it is resolved.
    const EVERY_PATH: &str = r#"
kind: EndpointConfiguration
tls: {certFile: rel/cert.pem, keyFile: rel/key.pem}
tokenIssuer: {signingKeyFile: rel/signing.pem}
store:
  file: {configDir: rel/config, stateDir: rel/state}
  kube: {kubeconfig: rel/kubeconfig}
istioToken: {file: rel/istio-token}
templates: {dir: rel/templates}
localRepository: {directory: rel/repository}
authentication:
  jwt:
    issuers:
    - {issuer: "https://a.example", shortName: a, jwksFile: rel/a-jwks.json, caFile: rel/a-ca.pem}
    - {issuer: "https://b.example", shortName: b, jwksFile: rel/b-jwks.json, caFile: rel/b-ca.pem}
  aws:
    ec2:
      certificates:
      - {region: eu-west-1, file: rel/ec2-1.pem}
      - {region: us-east-1, form: pkcs7, file: rel/ec2-2.pem}
    api: {credentialsFile: rel/aws-credentials}
  gcp: {jwksFile: rel/gcp-jwks.json}
  azure:
    rootCertificates: [rel/azure-root-1.pem, rel/azure-root-2.pem]
    intermediateCertificates: [rel/azure-intermediate.pem]
"#;

    /// Every string in the serialized configuration: a path that escaped resolution stays
    /// relative there, whichever field holds it.
    fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
            serde_json::Value::Object(m) => m.values().for_each(|v| strings(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_relative_path_ends_up_absolute_under_the_config_dir() {
        let mut cfg: EndpointConfig =
            crate::yaml::from_str(Path::new("endpoint.yaml"), EVERY_PATH).unwrap();
        cfg.resolve_paths(Path::new("/etc/onboarding"));
        let mut all = Vec::new();
        strings(&serde_json::to_value(&cfg).unwrap(), &mut all);
        let unresolved: Vec<&String> = all.iter().filter(|s| s.starts_with("rel/")).collect();
        assert!(unresolved.is_empty(), "not resolved: {unresolved:?}");
        let resolved = all
            .iter()
            .filter(|s| s.starts_with("/etc/onboarding/rel/"))
            .count();
        assert_eq!(resolved, EVERY_PATH.matches("rel/").count());
    }

    #[test]
    fn absolute_paths_and_non_path_strings_are_left_alone() {
        let text = EVERY_PATH.replace("rel/", "/abs/");
        let mut cfg: EndpointConfig = crate::yaml::from_str(Path::new("e.yaml"), &text).unwrap();
        let before = cfg.clone();
        cfg.resolve_paths(Path::new("/etc/onboarding"));
        assert_eq!(cfg, before);
        // Strings that are not paths are never joined, relative as they may look.
        assert_eq!(cfg.authentication.jwt.issuers[0].short_name, "a");
        assert_eq!(cfg.mesh.istio_namespace, "istio-system");
    }

    #[test]
    fn the_visitor_reaches_every_path_field() {
        let mut cfg: EndpointConfig =
            crate::yaml::from_str(Path::new("endpoint.yaml"), EVERY_PATH).unwrap();
        let mut seen = Vec::new();
        cfg.visit_paths(&mut |p| seen.push(p.clone()));
        assert_eq!(seen.len(), EVERY_PATH.matches("rel/").count(), "{seen:?}");
    }
}
