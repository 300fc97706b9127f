//! PKCS#7 / CMS `SignedData` verification for cloud identity documents (AWS `rsa2048` and
//! `pkcs7`, Azure attested data), and the X.509 signature checks they need.
//!
//! Cloud providers emit BER (AWS: indefinite lengths and a constructed OCTET STRING around
//! the document), which the DER-only `cms` 0.2 decoder refuses, so [`ber_to_der`]
//! re-encodes first. The signature over signed attributes is checked against the attribute
//! bytes *as received* (re-tagged as a SET), never against a re-encoding: `der` sorts a
//! SET OF when it decodes one, and a re-encoded set would not be what was signed.

use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerIdentifier, SignerInfo};
use der::asn1::{ObjectIdentifier, OctetString};
use der::{Decode, Encode};
use sha2::Digest;
use x509_cert::Certificate;

const OID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const OID_CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
const OID_MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
pub const OID_SIGNING_TIME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.5");

const OID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const OID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const OID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const OID_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");

const OID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_SHA1_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.5");
const OID_SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const OID_SHA384_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const OID_SHA512_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
const OID_DSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10040.4.1");
const OID_DSA_WITH_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10040.4.3");

/// Nesting deeper than this is not a signed document but an attack on the parser's stack.
const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmsError {
    #[error("not a well-formed PKCS#7 SignedData: {0}")]
    Malformed(String),
    #[error("the PKCS#7 is signed by {found}, not by the certificate expected ({expected})")]
    SignerMismatch { expected: String, found: String },
    #[error("the signed messageDigest does not match the content (the document was altered)")]
    DigestMismatch,
    #[error("signature does not verify: {0}")]
    BadSignature(String),
    #[error("unsupported algorithm {0}")]
    UnsupportedAlgorithm(String),
}

fn malformed(e: impl std::fmt::Display) -> CmsError {
    CmsError::Malformed(e.to_string())
}

// ---------------------------------------------------------------------------------------
// BER -> DER

/// Re-encode BER as DER as far as CMS needs: indefinite lengths become definite and
/// constructed OCTET STRINGs are flattened into one primitive OCTET STRING.
pub fn ber_to_der(input: &[u8]) -> Result<Vec<u8>, CmsError> {
    let mut pos = 0;
    let mut out = Vec::with_capacity(input.len());
    convert_element(input, &mut pos, &mut out, 0)?;
    if pos != input.len() {
        return Err(malformed(format!(
            "{} trailing bytes after the outer element",
            input.len() - pos
        )));
    }
    Ok(out)
}

struct Header {
    tag: Vec<u8>,
    constructed: bool,
    /// None = indefinite.
    len: Option<usize>,
}

fn read_header(input: &[u8], pos: &mut usize) -> Result<Header, CmsError> {
    let start = *pos;
    let first = *input.get(*pos).ok_or_else(|| malformed("truncated tag"))?;
    *pos += 1;
    if first & 0x1f == 0x1f {
        loop {
            let b = *input.get(*pos).ok_or_else(|| malformed("truncated tag"))?;
            *pos += 1;
            if b & 0x80 == 0 {
                break;
            }
            if *pos - start > 6 {
                return Err(malformed("tag number too large"));
            }
        }
    }
    let tag = input[start..*pos].to_vec();
    let l = *input
        .get(*pos)
        .ok_or_else(|| malformed("truncated length"))?;
    *pos += 1;
    let len = if l < 0x80 {
        Some(l as usize)
    } else if l == 0x80 {
        None
    } else {
        let n = (l & 0x7f) as usize;
        if n > 4 {
            return Err(malformed("length too large"));
        }
        let mut v = 0usize;
        for _ in 0..n {
            let b = *input
                .get(*pos)
                .ok_or_else(|| malformed("truncated length"))?;
            *pos += 1;
            v = (v << 8) | b as usize;
        }
        Some(v)
    };
    Ok(Header {
        tag,
        constructed: first & 0x20 != 0,
        len,
    })
}

fn write_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// Converts one element at `pos`; returns its DER bytes appended to `out`.
fn convert_element(
    input: &[u8],
    pos: &mut usize,
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<(), CmsError> {
    if depth > MAX_DEPTH {
        return Err(malformed("nesting too deep"));
    }
    let h = read_header(input, pos)?;
    if !h.constructed {
        let len = h
            .len
            .ok_or_else(|| malformed("indefinite length on a primitive"))?;
        let end = pos
            .checked_add(len)
            .filter(|e| *e <= input.len())
            .ok_or_else(|| malformed("element runs past the end"))?;
        out.extend_from_slice(&h.tag);
        write_len(out, len);
        out.extend_from_slice(&input[*pos..end]);
        *pos = end;
        return Ok(());
    }
    // Constructed: convert the children, then emit with a definite length.
    let mut body = Vec::new();
    let is_octet_string = h.tag == [0x24];
    match h.len {
        Some(len) => {
            let end = pos
                .checked_add(len)
                .filter(|e| *e <= input.len())
                .ok_or_else(|| malformed("element runs past the end"))?;
            while *pos < end {
                child(input, pos, &mut body, depth, is_octet_string)?;
            }
            if *pos != end {
                return Err(malformed("child element overruns its parent"));
            }
        }
        None => loop {
            if input.get(*pos..*pos + 2) == Some(&[0, 0]) {
                *pos += 2;
                break;
            }
            if *pos >= input.len() {
                return Err(malformed("missing end-of-contents"));
            }
            child(input, pos, &mut body, depth, is_octet_string)?;
        },
    }
    if is_octet_string {
        out.push(0x04);
    } else {
        out.extend_from_slice(&h.tag);
    }
    write_len(out, body.len());
    out.extend_from_slice(&body);
    Ok(())
}

/// A child of a constructed element; children of a constructed OCTET STRING contribute only
/// their content octets (the segments are concatenated).
fn child(
    input: &[u8],
    pos: &mut usize,
    body: &mut Vec<u8>,
    depth: usize,
    flatten: bool,
) -> Result<(), CmsError> {
    if !flatten {
        return convert_element(input, pos, body, depth + 1);
    }
    let mut segment = Vec::new();
    convert_element(input, pos, &mut segment, depth + 1)?;
    let mut p = 0;
    let h = read_header(&segment, &mut p)?;
    if h.tag != [0x04] {
        return Err(malformed(
            "constructed OCTET STRING holds a non-OCTET STRING",
        ));
    }
    body.extend_from_slice(&segment[p..]);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// SignedData

/// A parsed `SignedData` with exactly one signer.
#[derive(Debug, Clone)]
pub struct SignedMessage {
    /// The encapsulated content (the signed document bytes).
    pub content: Vec<u8>,
    pub signer: SignerInfo,
    /// The signed attributes exactly as encoded, re-tagged as SET (0x31): what the
    /// signature covers.
    signed_attrs_der: Option<Vec<u8>>,
    /// Certificates carried in the message (Azure carries its signer; AWS carries none).
    pub certificates: Vec<Certificate>,
}

/// Parse base64 (with or without PEM armour, whitespace ignored) into DER bytes.
pub fn decode_base64_body(text: &str) -> Result<Vec<u8>, CmsError> {
    use base64::Engine;
    let body: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("-----"))
        .flat_map(|l| l.chars())
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .map_err(|e| CmsError::Malformed(format!("bad base64: {e}")))
}

impl SignedMessage {
    pub fn parse(ber: &[u8]) -> Result<SignedMessage, CmsError> {
        let der = ber_to_der(ber)?;
        let ci = ContentInfo::from_der(&der).map_err(malformed)?;
        if ci.content_type != OID_SIGNED_DATA {
            return Err(malformed(format!(
                "content type {} is not signedData",
                ci.content_type
            )));
        }
        let sd: SignedData = ci.content.decode_as().map_err(malformed)?;
        let econtent = sd
            .encap_content_info
            .econtent
            .as_ref()
            .ok_or_else(|| malformed("the content is detached (not embedded)"))?;
        let content = OctetString::from_der(&econtent.to_der().map_err(malformed)?)
            .map_err(malformed)?
            .into_bytes();
        let mut signers = sd.signer_infos.0.iter();
        let signer = match (signers.next(), signers.next()) {
            (Some(s), None) => s.clone(),
            (None, _) => return Err(malformed("no signer")),
            (Some(_), Some(_)) => return Err(malformed("more than one signer")),
        };
        let certificates = sd
            .certificates
            .as_ref()
            .map(|set| {
                set.0
                    .iter()
                    .filter_map(|c| match c {
                        cms::cert::CertificateChoices::Certificate(c) => Some(c.clone()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let signed_attrs_der = raw_signed_attrs(&der)?;
        if signed_attrs_der.is_some() != signer.signed_attrs.is_some() {
            return Err(malformed("signed attributes could not be located"));
        }
        // The eContentType must be what the signed contentType attribute says.
        if let Some(attrs) = &signer.signed_attrs {
            let ct = attrs
                .iter()
                .find(|a| a.oid == OID_CONTENT_TYPE)
                .and_then(|a| a.values.iter().next())
                .ok_or_else(|| malformed("signed attributes lack contentType"))?
                .decode_as::<ObjectIdentifier>()
                .map_err(malformed)?;
            if ct != sd.encap_content_info.econtent_type {
                return Err(malformed(
                    "signed contentType differs from the content's type",
                ));
            }
        }
        Ok(SignedMessage {
            content,
            signer,
            signed_attrs_der,
            certificates,
        })
    }

    /// The certificate in `candidates` the SignerInfo names (issuer + serial, or subject key
    /// identifier).
    pub fn find_signer<'a>(&self, candidates: &'a [Certificate]) -> Option<&'a Certificate> {
        candidates
            .iter()
            .find(|c| signer_matches(&self.signer.sid, c))
    }

    pub fn signer_description(&self) -> String {
        match &self.signer.sid {
            SignerIdentifier::IssuerAndSerialNumber(is) => {
                format!("issuer {} serial {}", is.issuer, is.serial_number)
            }
            SignerIdentifier::SubjectKeyIdentifier(ski) => {
                format!("subject key id {}", hex(ski.0.as_bytes()))
            }
        }
    }

    /// The signed `signingTime`, when present (unix seconds).
    pub fn signing_time(&self) -> Option<i64> {
        let attrs = self.signer.signed_attrs.as_ref()?;
        let any = attrs
            .iter()
            .find(|a| a.oid == OID_SIGNING_TIME)?
            .values
            .iter()
            .next()?;
        let t = x509_cert::time::Time::from_der(&any.to_der().ok()?).ok()?;
        Some(t.to_unix_duration().as_secs() as i64)
    }

    /// Check that `cert` is the signer and that its key signed this message.
    pub fn verify(&self, cert: &Certificate) -> Result<(), CmsError> {
        if !signer_matches(&self.signer.sid, cert) {
            return Err(CmsError::SignerMismatch {
                expected: format!(
                    "issuer {} serial {}",
                    cert.tbs_certificate.issuer, cert.tbs_certificate.serial_number
                ),
                found: self.signer_description(),
            });
        }
        let hash = HashAlg::from_digest_oid(&self.signer.digest_alg.oid)?;
        let signed: Vec<u8> = match (&self.signer.signed_attrs, &self.signed_attrs_der) {
            (Some(attrs), Some(raw)) => {
                let md = attrs
                    .iter()
                    .find(|a| a.oid == OID_MESSAGE_DIGEST)
                    .and_then(|a| a.values.iter().next())
                    .ok_or_else(|| malformed("signed attributes lack messageDigest"))?
                    .decode_as::<OctetString>()
                    .map_err(malformed)?;
                if md.as_bytes() != hash.digest(&self.content).as_slice() {
                    return Err(CmsError::DigestMismatch);
                }
                raw.clone()
            }
            _ => self.content.clone(),
        };
        let spki = cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(malformed)?;
        verify_signature(
            &spki,
            &self.signer.signature_algorithm.oid,
            hash,
            &signed,
            self.signer.signature.as_bytes(),
        )
    }
}

fn signer_matches(sid: &SignerIdentifier, cert: &Certificate) -> bool {
    match sid {
        SignerIdentifier::IssuerAndSerialNumber(is) => {
            is.issuer == cert.tbs_certificate.issuer
                && is.serial_number == cert.tbs_certificate.serial_number
        }
        SignerIdentifier::SubjectKeyIdentifier(ski) => cert
            .tbs_certificate
            .get::<x509_cert::ext::pkix::SubjectKeyIdentifier>()
            .ok()
            .flatten()
            .is_some_and(|(_, own)| own.0 == ski.0),
    }
}

/// Walk the DER to the first SignerInfo's `[0] IMPLICIT signedAttrs` and return its bytes
/// with the tag changed to SET OF (RFC 5652 §5.4).
fn raw_signed_attrs(der: &[u8]) -> Result<Option<Vec<u8>>, CmsError> {
    // ContentInfo SEQ > [0] > SignedData SEQ
    let ci = tlv(der, 0)?;
    let content_type = tlv(der, ci.content)?;
    let explicit = tlv(der, content_type.end)?;
    let sd = tlv(der, explicit.content)?;
    let mut p = sd.content;
    let mut signer_infos = None;
    while p < sd.end {
        let el = tlv(der, p)?;
        signer_infos = Some(el.clone());
        p = el.end;
    }
    let set = signer_infos.ok_or_else(|| malformed("no signerInfos"))?;
    if der[set.start] != 0x31 {
        return Err(malformed("signerInfos is not a SET"));
    }
    let si = tlv(der, set.content)?;
    let mut p = si.content;
    // version, sid, digestAlgorithm
    for _ in 0..3 {
        p = tlv(der, p)?.end;
    }
    if p < si.end && der[p] == 0xa0 {
        let attrs = tlv(der, p)?;
        let mut raw = der[attrs.start..attrs.end].to_vec();
        raw[0] = 0x31;
        return Ok(Some(raw));
    }
    Ok(None)
}

#[derive(Clone)]
struct Tlv {
    start: usize,
    content: usize,
    end: usize,
}

fn tlv(der: &[u8], at: usize) -> Result<Tlv, CmsError> {
    let mut p = at;
    let h = read_header(der, &mut p)?;
    let len = h
        .len
        .ok_or_else(|| malformed("indefinite length after conversion"))?;
    let end = p
        .checked_add(len)
        .filter(|e| *e <= der.len())
        .ok_or_else(|| malformed("element runs past the end"))?;
    Ok(Tlv {
        start: at,
        content: p,
        end,
    })
}

// ---------------------------------------------------------------------------------------
// Signatures

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlg {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlg {
    pub fn from_digest_oid(oid: &ObjectIdentifier) -> Result<HashAlg, CmsError> {
        match *oid {
            OID_SHA1 => Ok(HashAlg::Sha1),
            OID_SHA256 => Ok(HashAlg::Sha256),
            OID_SHA384 => Ok(HashAlg::Sha384),
            OID_SHA512 => Ok(HashAlg::Sha512),
            other => Err(CmsError::UnsupportedAlgorithm(format!("digest {other}"))),
        }
    }

    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            HashAlg::Sha1 => sha1::Sha1::digest(data).to_vec(),
            HashAlg::Sha256 => sha2::Sha256::digest(data).to_vec(),
            HashAlg::Sha384 => sha2::Sha384::digest(data).to_vec(),
            HashAlg::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }
}

/// Verify `sig` over `msg` with the key in `spki_der`. `sig_alg` is a SignerInfo's or a
/// certificate's signature algorithm; for a bare `rsaEncryption`/`id-dsa` the hash comes
/// from `hash`.
pub fn verify_signature(
    spki_der: &[u8],
    sig_alg: &ObjectIdentifier,
    hash: HashAlg,
    msg: &[u8],
    sig: &[u8],
) -> Result<(), CmsError> {
    let rsa_hash = match *sig_alg {
        OID_RSA_ENCRYPTION => Some(hash),
        OID_SHA1_WITH_RSA => Some(HashAlg::Sha1),
        OID_SHA256_WITH_RSA => Some(HashAlg::Sha256),
        OID_SHA384_WITH_RSA => Some(HashAlg::Sha384),
        OID_SHA512_WITH_RSA => Some(HashAlg::Sha512),
        _ => None,
    };
    if let Some(h) = rsa_hash {
        return verify_rsa_pkcs1(spki_der, h, msg, sig);
    }
    if *sig_alg == OID_DSA || *sig_alg == OID_DSA_WITH_SHA1 {
        if *sig_alg == OID_DSA_WITH_SHA1 && hash != HashAlg::Sha1 {
            return Err(CmsError::UnsupportedAlgorithm(
                "dsaWithSHA1 with a non-SHA-1 digest".into(),
            ));
        }
        return verify_dsa_sha1(spki_der, msg, sig);
    }
    Err(CmsError::UnsupportedAlgorithm(format!(
        "signature {sig_alg}"
    )))
}

/// RSA PKCS#1 v1.5 over `hash(msg)`.
pub fn verify_rsa_pkcs1(
    spki_der: &[u8],
    hash: HashAlg,
    msg: &[u8],
    sig: &[u8],
) -> Result<(), CmsError> {
    use rsa::pkcs8::DecodePublicKey;
    use rsa::{Pkcs1v15Sign, RsaPublicKey};
    let key = RsaPublicKey::from_public_key_der(spki_der)
        .map_err(|e| CmsError::BadSignature(format!("not an RSA public key: {e}")))?;
    let digest = hash.digest(msg);
    let scheme = match hash {
        HashAlg::Sha1 => Pkcs1v15Sign::new::<sha1::Sha1>(),
        HashAlg::Sha256 => Pkcs1v15Sign::new::<sha2::Sha256>(),
        HashAlg::Sha384 => Pkcs1v15Sign::new::<sha2::Sha384>(),
        HashAlg::Sha512 => Pkcs1v15Sign::new::<sha2::Sha512>(),
    };
    key.verify(scheme, &digest, sig)
        .map_err(|e| CmsError::BadSignature(format!("RSA: {e}")))
}

fn verify_dsa_sha1(spki_der: &[u8], msg: &[u8], sig: &[u8]) -> Result<(), CmsError> {
    use dsa::signature::DigestVerifier;
    use spki::DecodePublicKey;
    let key = dsa::VerifyingKey::from_public_key_der(spki_der)
        .map_err(|e| CmsError::BadSignature(format!("not a DSA public key: {e}")))?;
    let sig = dsa::Signature::from_der(sig)
        .map_err(|e| CmsError::BadSignature(format!("DSA signature: {e}")))?;
    key.verify_digest(sha1::Sha1::new_with_prefix(msg), &sig)
        .map_err(|e| CmsError::BadSignature(format!("DSA: {e}")))
}

// ---------------------------------------------------------------------------------------
// Certificates

/// Parse one or more PEM certificates.
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<Certificate>, CmsError> {
    let certs = Certificate::load_pem_chain(pem).map_err(malformed)?;
    if certs.is_empty() {
        return Err(malformed("no certificate in PEM"));
    }
    Ok(certs)
}

/// Whether `cert` is valid at `now_unix`, give or take [`super::CLOCK_LEEWAY_SECS`]: the
/// same clock skew the JWT checks tolerate, so a host whose clock is a few seconds off is
/// not refused here while it would be accepted there.
pub fn valid_at(cert: &Certificate, now_unix: i64) -> bool {
    let v = &cert.tbs_certificate.validity;
    let nb = v.not_before.to_unix_duration().as_secs() as i64;
    let na = v.not_after.to_unix_duration().as_secs() as i64;
    validity_covers(nb, na, now_unix)
}

/// The pure check behind [`valid_at`]: `[not_before, not_after]` widened by the leeway on
/// both sides contains `now`.
pub fn validity_covers(not_before: i64, not_after: i64, now: i64) -> bool {
    let leeway = super::CLOCK_LEEWAY_SECS;
    not_before.saturating_sub(leeway) <= now && now <= not_after.saturating_add(leeway)
}

/// Check that `issuer`'s key signed `cert`.
pub fn verify_issued_by(cert: &Certificate, issuer: &Certificate) -> Result<(), CmsError> {
    if cert.tbs_certificate.issuer != issuer.tbs_certificate.subject {
        return Err(CmsError::BadSignature(format!(
            "certificate issuer {} is not {}",
            cert.tbs_certificate.issuer, issuer.tbs_certificate.subject
        )));
    }
    let tbs = cert.tbs_certificate.to_der().map_err(malformed)?;
    let spki = issuer
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(malformed)?;
    let sig = cert
        .signature
        .as_bytes()
        .ok_or_else(|| malformed("certificate signature has unused bits"))?;
    verify_signature(
        &spki,
        &cert.signature_algorithm.oid,
        HashAlg::Sha256,
        &tbs,
        sig,
    )
}

/// DNS names in the certificate's subjectAltName.
pub fn dns_names(cert: &Certificate) -> Vec<String> {
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;
    match cert.tbs_certificate.get::<SubjectAltName>() {
        Ok(Some((_, san))) => san
            .0
            .iter()
            .filter_map(|n| match n {
                GeneralName::DnsName(d) => Some(d.as_str().to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------
// Signing (the cloud metadata simulator and tests: the shape AWS and Azure produce)

/// Build a DER `SignedData` over `content` with signed attributes (contentType,
/// signingTime, messageDigest), RSA PKCS#1 v1.5 with SHA-256, content embedded; the
/// signer's certificate is included when `include_cert` (Azure does, AWS does not).
pub fn build_signed_data(
    content: &[u8],
    signer: &Certificate,
    key: &rsa::RsaPrivateKey,
    include_cert: bool,
    signing_time_unix: u64,
) -> Result<Vec<u8>, CmsError> {
    use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
    use cms::content_info::CmsVersion;
    use cms::signed_data::{CertificateSet, EncapsulatedContentInfo, SignerInfos};
    use der::Tag;
    use der::asn1::{Any, SetOfVec, UtcTime};
    use spki::AlgorithmIdentifierOwned;
    use x509_cert::attr::Attribute;

    const OID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
    let e = |e: der::Error| CmsError::Malformed(e.to_string());
    let attr = |oid, value: Any| -> Result<Attribute, CmsError> {
        Ok(Attribute {
            oid,
            values: SetOfVec::try_from(vec![value]).map_err(e)?,
        })
    };
    let signing_time =
        UtcTime::from_unix_duration(std::time::Duration::from_secs(signing_time_unix))
            .map_err(e)?;
    let digest = sha2::Sha256::digest(content);
    let attrs = SetOfVec::try_from(vec![
        attr(OID_CONTENT_TYPE, Any::encode_from(&OID_DATA).map_err(e)?)?,
        attr(
            OID_SIGNING_TIME,
            Any::encode_from(&signing_time).map_err(e)?,
        )?,
        attr(
            OID_MESSAGE_DIGEST,
            Any::encode_from(&OctetString::new(digest.to_vec()).map_err(e)?).map_err(e)?,
        )?,
    ])
    .map_err(e)?;
    let to_sign = attrs.to_der().map_err(e)?;
    let signature = key
        .sign(
            rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
            &sha2::Sha256::digest(&to_sign),
        )
        .map_err(|err| CmsError::BadSignature(err.to_string()))?;
    let sha256 = AlgorithmIdentifierOwned {
        oid: OID_SHA256,
        parameters: None,
    };
    let signer_info = SignerInfo {
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: signer.tbs_certificate.issuer.clone(),
            serial_number: signer.tbs_certificate.serial_number.clone(),
        }),
        digest_alg: sha256.clone(),
        signed_attrs: Some(attrs),
        signature_algorithm: AlgorithmIdentifierOwned {
            oid: OID_RSA_ENCRYPTION,
            parameters: Some(Any::null()),
        },
        signature: OctetString::new(signature).map_err(e)?,
        unsigned_attrs: None,
    };
    let certificates = if include_cert {
        Some(CertificateSet(
            SetOfVec::try_from(vec![CertificateChoices::Certificate(signer.clone())]).map_err(e)?,
        ))
    } else {
        None
    };
    let sd = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::try_from(vec![sha256]).map_err(e)?,
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: OID_DATA,
            econtent: Some(Any::new(Tag::OctetString, content.to_vec()).map_err(e)?),
        },
        certificates,
        crls: None,
        signer_infos: SignerInfos(SetOfVec::try_from(vec![signer_info]).map_err(e)?),
    };
    ContentInfo {
        content_type: OID_SIGNED_DATA,
        content: Any::encode_from(&sd).map_err(e)?,
    }
    .to_der()
    .map_err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indefinite_lengths_and_segmented_octet_strings_become_der() {
        // SEQUENCE (indefinite) { [0] (indefinite) { OCTET STRING (constructed, indefinite)
        //   { "ab", "c" } } }
        let ber = [
            0x30, 0x80, 0xa0, 0x80, 0x24, 0x80, 0x04, 0x02, b'a', b'b', 0x04, 0x01, b'c', 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        let der = ber_to_der(&ber).unwrap();
        assert_eq!(
            der,
            vec![0x30, 0x07, 0xa0, 0x05, 0x04, 0x03, b'a', b'b', b'c']
        );
    }

    #[test]
    fn der_input_is_unchanged() {
        let der = [0x30, 0x06, 0x02, 0x01, 0x05, 0x04, 0x01, 0xff];
        assert_eq!(ber_to_der(&der).unwrap(), der.to_vec());
    }

    #[test]
    fn hostile_inputs_are_refused_not_panicking() {
        assert!(ber_to_der(&[0x30, 0x80]).is_err()); // no end-of-contents
        assert!(ber_to_der(&[0x30, 0x05, 0x04]).is_err()); // overrun
        assert!(ber_to_der(&[0x04, 0x80]).is_err()); // indefinite primitive
        let deep: Vec<u8> = std::iter::repeat_n([0x30u8, 0x80], 100).flatten().collect();
        assert!(ber_to_der(&deep).is_err());
        assert!(ber_to_der(&[0x24, 0x03, 0x02, 0x01, 0x00]).is_err()); // non-octet segment
    }

    #[test]
    fn long_lengths_are_written_minimally() {
        let mut out = Vec::new();
        write_len(&mut out, 300);
        assert_eq!(out, vec![0x82, 0x01, 0x2c]);
    }

    #[test]
    fn certificate_validity_allows_the_clock_leeway_jwts_get() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["signer.example".into()]).unwrap();
        let not_before = 1_700_000_000i64;
        let not_after = not_before + 86_400;
        params.not_before = time::OffsetDateTime::from_unix_timestamp(not_before).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        let cert = Certificate::from_der(&der).unwrap();
        let leeway = super::super::CLOCK_LEEWAY_SECS;
        assert_eq!(
            leeway,
            crate::identity::jwt::LEEWAY_SECONDS,
            "one leeway for all"
        );
        // A host clock a little behind the signer's, or a document signed just before expiry.
        assert!(valid_at(&cert, not_before - 30));
        assert!(valid_at(&cert, not_before - leeway));
        assert!(valid_at(&cert, not_after + leeway));
        assert!(valid_at(&cert, not_before + 100));
        // Beyond the leeway the certificate is not valid.
        assert!(!valid_at(&cert, not_before - leeway - 1));
        assert!(!valid_at(&cert, not_after + leeway + 1));
        assert!(
            validity_covers(i64::MIN, i64::MAX, 0),
            "no overflow at the edges"
        );
    }
}
