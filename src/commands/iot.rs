//! `ecr-edge iot keygen` and `ecr-edge iot csr`: the device key is made where it will live (in
//! the TPM, or in a new file only its owner can read), and the certificate signing request is
//! signed there, so the private key is never copied anywhere. AWS IoT's
//! `create-certificate-from-csr` (or the fleet's own CA) turns the request into the device
//! certificate.

use std::io::Write;
use std::path::PathBuf;

use rustls::SignatureScheme;

use crate::config::KeyRef;
use crate::exit::Exit;
use crate::tpm::{Tpm, TpmName};

/// `iot keygen`: where to make the key.
#[derive(Debug)]
pub enum KeygenOptions {
    /// In this TPM, kept at the persistent `handle`.
    Tpm {
        /// Which TPM.
        tpm: TpmName,
        /// The persistent handle.
        handle: u32,
    },
    /// In a new PEM file (PKCS#8, EC P-256), mode 0600.
    File(PathBuf),
}

/// Makes the device key; prints where it is, its public key's SHA-256 and the next step.
pub fn keygen(options: &KeygenOptions, out: &mut dyn Write, err: &mut dyn Write) -> Exit {
    let (place, spki) = match options {
        KeygenOptions::Tpm { tpm, handle } => {
            match Tpm::new(tpm.clone()).create_persistent_key(*handle) {
                Ok(public) => match public.key.spki() {
                    Some(spki) => (format!("handle:{handle:#010x}"), spki),
                    None => return fail(err, "the TPM made a key this program cannot read"),
                },
                Err(e) => return fail(err, &format!("no key was made: {e}")),
            }
        }
        KeygenOptions::File(path) => match file_key(path) {
            Ok(spki) => (path.display().to_string(), spki),
            Err(words) => return fail(err, &words),
        },
    };
    let tpm = match options {
        KeygenOptions::Tpm { tpm, .. } if *tpm != TpmName::default() => format!(" --tpm {tpm}"),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "made an EC P-256 device key: {place}\npublic key SHA-256 {}\nnext: ecr-edge iot csr \
         --key {place}{tpm} --subject CN=<thing name> > device.csr",
        crate::aws::cert::sha256_hex(&spki)
    );
    Exit::Success
}

/// A new EC P-256 key in a new file, mode 0600; its public key (SubjectPublicKeyInfo DER).
fn file_key(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(format!(
            "{} exists, and ecr-edge never replaces a key; name a new file",
            path.display()
        ));
    }
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| "the system's random number generator failed".to_owned())?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| "the new key could not be read back".to_owned())?;
    let pem = crate::token::Secret::new(pem_block("PRIVATE KEY", pkcs8.as_ref()));
    crate::store::files::write_atomic(path, pem.expose().as_bytes(), 0o600)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    // SubjectPublicKeyInfo of a P-256 point: the fixed prefix, then the point.
    let mut spki = crate::tpm::P256_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(pair.public_key().as_ref().get(1..).unwrap_or_default());
    Ok(spki)
}

/// `iot csr`: which key signs, and what the request asks for.
#[derive(Debug)]
pub struct CsrOptions {
    /// The key (a file, `handle:…` or `credential:…`, as `[iot] key`).
    pub key: KeyRef,
    /// The TPM of a `handle:` key.
    pub tpm: Option<TpmName>,
    /// The subject, `CN=…[,O=…]…`.
    pub subject: String,
}

/// Prints a PEM certificate signing request signed by the key.
pub fn csr(options: &CsrOptions, out: &mut dyn Write, err: &mut dyn Write) -> Exit {
    let names = match subject(&options.subject) {
        Ok(n) => n,
        Err(words) => {
            let _ = writeln!(err, "ecr-edge: {words}");
            return Exit::Usage;
        }
    };
    let provider = rustls::crypto::ring::default_provider();
    let (key, spki) =
        match crate::aws::iot::device_key(&options.key, options.tpm.as_ref(), &provider) {
            Ok(k) => k,
            Err(e) => return fail(err, &e.to_string()),
        };
    let offered = [
        SignatureScheme::ECDSA_NISTP256_SHA256,
        SignatureScheme::ECDSA_NISTP384_SHA384,
        SignatureScheme::RSA_PKCS1_SHA256,
    ];
    let signer = key.choose_scheme(&offered);
    let raw = crate::aws::cert::spki_parts(&spki).map(|p| p.key.to_vec());
    let (Some(signer), Some(raw)) = (signer, raw) else {
        return fail(
            err,
            "the key signs with no scheme a certificate request can carry (EC P-256, P-384, RSA)",
        );
    };
    let algorithm = match signer.scheme() {
        SignatureScheme::ECDSA_NISTP256_SHA256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        SignatureScheme::ECDSA_NISTP384_SHA384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        _ => &rcgen::PKCS_RSA_SHA256,
    };
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    for (kind, value) in names {
        params.distinguished_name.push(kind, value);
    }
    let request = CsrKey {
        signer,
        raw,
        algorithm,
    };
    match params.serialize_request(&request).and_then(|r| r.pem()) {
        Ok(pem) => {
            let _ = out.write_all(pem.as_bytes());
            Exit::Success
        }
        Err(e) => fail(err, &format!("the request could not be signed: {e}")),
    }
}

/// The key as rcgen signs with it: a rustls signer (a file's key, or the TPM's).
struct CsrKey {
    signer: Box<dyn rustls::sign::Signer>,
    raw: Vec<u8>,
    algorithm: &'static rcgen::SignatureAlgorithm,
}

impl rcgen::PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.algorithm
    }
}

impl rcgen::SigningKey for CsrKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.signer
            .sign(msg)
            .map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

/// `CN=edge-thing-0001,O=Example` as name parts, in order.
fn subject(text: &str) -> Result<Vec<(rcgen::DnType, String)>, String> {
    let mut names = Vec::new();
    for part in text.split(',') {
        let Some((key, value)) = part.split_once('=') else {
            return Err(format!(
                "--subject is KEY=VALUE pairs separated by commas, such as CN=edge-thing-0001; \
                 {part:?} has no '='"
            ));
        };
        let value = value.trim();
        let kind = match key.trim().to_ascii_uppercase().as_str() {
            "CN" => rcgen::DnType::CommonName,
            "O" => rcgen::DnType::OrganizationName,
            "OU" => rcgen::DnType::OrganizationalUnitName,
            "C" => rcgen::DnType::CountryName,
            "ST" => rcgen::DnType::StateOrProvinceName,
            "L" => rcgen::DnType::LocalityName,
            _ => {
                return Err(format!(
                    "--subject: {:?} is not one of CN, O, OU, C, ST, L",
                    key.trim()
                ))
            }
        };
        if value.is_empty() || value.len() > 64 || value.chars().any(char::is_control) {
            return Err(format!(
                "--subject: the value of {} must be 1 to 64 printable characters",
                key.trim()
            ));
        }
        names.push((kind, value.to_owned()));
    }
    if !names.iter().any(|(k, _)| *k == rcgen::DnType::CommonName) {
        return Err("--subject needs a CN (the thing name, by AWS IoT convention)".into());
    }
    Ok(names)
}

fn pem_block(label: &str, der: &[u8]) -> String {
    let b64 = aws_smithy_types::base64::encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

fn fail(err: &mut dyn Write, words: &str) -> Exit {
    let _ = writeln!(err, "ecr-edge: {words}");
    Exit::Failure
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_read_or_refused_in_words() {
        let names = subject("CN=edge-thing-0001, O=Example Fleet").unwrap();
        assert_eq!(names.len(), 2);
        assert_eq!(names[1].1, "Example Fleet");
        for (bad, says) in [
            ("O=x", "needs a CN"),
            ("CN", "no '='"),
            ("CN=", "1 to 64"),
            ("EMAIL=a@b", "not one of"),
        ] {
            let e = subject(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
