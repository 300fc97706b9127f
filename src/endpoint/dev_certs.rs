//! `serve --dev`: a self-signed development CA and server certificate in the state
//! directory, for a local trial without a certificate of one's own. Never for production:
//! the endpoint says so in its log, and only when asked with `--dev`.

use std::path::{Path, PathBuf};

use super::config::TlsFiles;

/// The directory under the state directory that holds the development CA and certificate.
pub const DEV_TLS_DIR: &str = "dev-tls";

#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
}

/// Which certificate the server presents.
#[derive(Debug, Clone, PartialEq)]
pub enum CertSource {
    /// `tls.certFile` and `tls.keyFile` of the configuration (they win over `--dev`).
    Configured(TlsFiles),
    /// The development certificate in `dir`, for `names`.
    Dev { dir: PathBuf, names: Vec<String> },
    /// Neither: a configuration error.
    Missing,
}

/// Decides where the server's certificate comes from.
pub fn cert_source(
    configured: Option<&TlsFiles>,
    dev: bool,
    state_dir: &Path,
    hostname: &str,
) -> CertSource {
    match (configured, dev) {
        (Some(t), _) => CertSource::Configured(t.clone()),
        (None, true) => CertSource::Dev {
            dir: state_dir.join(DEV_TLS_DIR),
            names: dev_names(hostname),
        },
        (None, false) => CertSource::Missing,
    }
}

/// The names a development certificate is valid for: loopback in every spelling an agent on
/// this host may dial, and the host's name.
pub fn dev_names(hostname: &str) -> Vec<String> {
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"]
        .into_iter()
        .map(String::from)
        .collect();
    if !hostname.is_empty() && !names.iter().any(|n| n == hostname) {
        names.push(hostname.to_string());
    }
    names
}

/// A development CA and a server certificate for `names`, written to `dir` (`ca.pem`,
/// `tls.crt`, `tls.key` 0600). Reused when already there, so agents keep trusting it.
pub fn dev_certificate(
    dir: &Path,
    names: &[String],
) -> Result<(PathBuf, PathBuf, PathBuf), DevCertError> {
    let ca_path = dir.join("ca.pem");
    let crt_path = dir.join("tls.crt");
    let key_path = dir.join("tls.key");
    if ca_path.exists() && crt_path.exists() && key_path.exists() {
        return Ok((ca_path, crt_path, key_path));
    }
    let err = |e: rcgen::Error| DevCertError::Config(format!("generating dev certificate: {e}"));
    let ca_key = rcgen::KeyPair::generate().map_err(err)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "onboarding-endpoint dev CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(err)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "onboarding-endpoint");
    let cert = params.signed_by(&key, &issuer).map_err(err)?;
    let write = |p: &Path, s: &str, mode| {
        crate::atomic::write_file(p, s.as_bytes(), mode).map_err(|e| DevCertError::Write {
            path: p.to_path_buf(),
            source: e.source,
        })
    };
    write(&ca_path, &ca_cert.pem(), 0o644)?;
    write(&crt_path, &cert.pem(), 0o644)?;
    write(&key_path, &key.serialize_pem(), 0o600)?;
    Ok((ca_path, crt_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn configured_files_win_over_dev() {
        let files = TlsFiles {
            cert_file: "/etc/e/tls.crt".into(),
            key_file: "/etc/e/tls.key".into(),
        };
        let state = Path::new("/var/lib/e");
        for dev in [false, true] {
            assert_eq!(
                cert_source(Some(&files), dev, state, "h"),
                CertSource::Configured(files.clone())
            );
        }
        assert_eq!(cert_source(None, false, state, "h"), CertSource::Missing);
        assert_eq!(
            cert_source(None, true, state, "vm-1"),
            CertSource::Dev {
                dir: state.join(DEV_TLS_DIR),
                names: vec![
                    "localhost".into(),
                    "127.0.0.1".into(),
                    "::1".into(),
                    "vm-1".into()
                ],
            }
        );
    }

    #[test]
    fn dev_names_do_not_repeat_the_host() {
        assert_eq!(dev_names("localhost"), ["localhost", "127.0.0.1", "::1"]);
        assert_eq!(dev_names(""), ["localhost", "127.0.0.1", "::1"]);
    }

    #[test]
    fn the_dev_certificate_is_made_once_with_a_private_key_and_serves() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join(DEV_TLS_DIR);
        let (ca, crt, key) = dev_certificate(&d, &dev_names("vm-1")).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&crt), 0o644);
        assert_eq!(mode(&ca), 0o644);
        // The certificate and key fit together.
        let certs = super::super::tls::load_certs(&crt).unwrap();
        super::super::tls::server_config(certs, super::super::tls::load_key(&key).unwrap())
            .unwrap();
        // Reused, not regenerated: agents keep trusting the CA.
        let before = std::fs::read(&ca).unwrap();
        let again = dev_certificate(&d, &dev_names("vm-1")).unwrap();
        assert_eq!(again, (ca.clone(), crt, key));
        assert_eq!(std::fs::read(&ca).unwrap(), before);
    }
}
