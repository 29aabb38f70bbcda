//! Reading a device certificate: the fields the IoT identity checks and `doctor` need, from
//! DER, with webpki's panic-free `untrusted` cursor.
//!
//! webpki (and so rustls's own key check) accepts only X.509 v3 certificates, but AWS IoT also
//! registers v1 certificates, which is what `openssl x509 -req` makes without an extensions
//! file, as the AWS IoT guide shows. So the identity is read here, whatever its version: the
//! public key is compared byte for byte with the private key's, and the dates, names and key
//! type are shown to people. Nothing here decides trust; the endpoint does that.

use std::fmt;

use untrusted::{Input, Reader};

/// What ecr-edge reads from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate<'a> {
    /// 1 or 3 (X.509 v1 has no version field).
    pub version: u8,
    /// The signed part, as it was signed (DER, with its header).
    pub tbs: &'a [u8],
    /// The issuer's distinguished name, as people write it (`CN=…, O=…`).
    pub issuer: String,
    /// The subject's distinguished name.
    pub subject: String,
    /// notBefore, seconds since the epoch.
    pub not_before: i64,
    /// notAfter, seconds since the epoch.
    pub not_after: i64,
    /// The SubjectPublicKeyInfo, DER with its header (what a private key's public half is
    /// compared with).
    pub spki: &'a [u8],
    /// The signature algorithm's object identifier (DER contents).
    pub signature_algorithm: &'a [u8],
    /// The signature (BIT STRING contents without the unused-bits byte).
    pub signature: &'a [u8],
    /// Whether basicConstraints says this is a CA certificate.
    pub is_ca: bool,
}

/// Parses a DER certificate; `None` for anything that is not one.
pub fn parse(der: &[u8]) -> Option<Certificate<'_>> {
    Input::from(der)
        .read_all((), |r| {
            let cert = element(r, 0x30)?;
            cert.read_all((), |r| {
                let (tbs, fields) = r.read_partial(|r| element(r, 0x30))?;
                let alg = element(r, 0x30)?;
                let signature_algorithm = alg.read_all((), |r| {
                    let oid = element(r, 0x06)?;
                    let _ = r.read_bytes_to_end();
                    Ok(oid)
                })?;
                let bits = element(r, 0x03)?;
                let signature = bits.read_all((), |r| {
                    r.read_byte().map_err(|_| ())?;
                    Ok(r.read_bytes_to_end())
                })?;
                let mut c = fields.read_all((), tbs_fields)?;
                c.tbs = tbs.as_slice_less_safe();
                c.signature_algorithm = signature_algorithm.as_slice_less_safe();
                c.signature = signature.as_slice_less_safe();
                Ok(c)
            })
        })
        .ok()
}

fn tbs_fields<'a>(r: &mut Reader<'a>) -> Result<Certificate<'a>, ()> {
    let version = if r.peek(0xa0) {
        let v = element(r, 0xa0)?;
        let n = v.read_all((), |r| element(r, 0x02))?;
        match n.as_slice_less_safe() {
            [0] => 1,
            [1] => 2,
            [2] => 3,
            _ => return Err(()),
        }
    } else {
        1
    };
    element(r, 0x02)?; // serialNumber
    element(r, 0x30)?; // signature AlgorithmIdentifier
    let issuer = name(element(r, 0x30)?)?;
    let (not_before, not_after) = element(r, 0x30)?.read_all((), |r| Ok((time(r)?, time(r)?)))?;
    let subject = name(element(r, 0x30)?)?;
    let (spki, _) = r.read_partial(|r| element(r, 0x30))?;
    let mut is_ca = false;
    while !r.at_end() {
        let tag = r.read_byte().map_err(|_| ())?;
        let contents = contents(r)?;
        if tag == 0xa3 {
            is_ca = contents.read_all((), extensions_say_ca)?;
        }
    }
    Ok(Certificate {
        version,
        tbs: &[],
        issuer,
        subject,
        not_before,
        not_after,
        spki: spki.as_slice_less_safe(),
        signature_algorithm: &[],
        signature: &[],
        is_ca,
    })
}

/// basicConstraints (2.5.29.19) with cA TRUE among the extensions.
fn extensions_say_ca(r: &mut Reader<'_>) -> Result<bool, ()> {
    const BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
    let list = element(r, 0x30)?;
    list.read_all((), |r| {
        let mut ca = false;
        while !r.at_end() {
            let ext = element(r, 0x30)?;
            ext.read_all((), |r| {
                let oid = element(r, 0x06)?;
                if r.peek(0x01) {
                    element(r, 0x01)?; // critical
                }
                let value = element(r, 0x04)?;
                if oid.as_slice_less_safe() == BASIC_CONSTRAINTS {
                    ca = value.read_all((), |r| {
                        let seq = element(r, 0x30)?;
                        seq.read_all((), |r| {
                            let flag =
                                r.peek(0x01) && element(r, 0x01)?.as_slice_less_safe() == [0xff];
                            let _ = r.read_bytes_to_end();
                            Ok(flag)
                        })
                    })?;
                }
                Ok(())
            })?;
        }
        Ok(ca)
    })
}

/// A distinguished name as `CN=…, O=…` (the attributes people recognise; others by OID).
fn name(input: Input<'_>) -> Result<String, ()> {
    input.read_all((), |r| {
        let mut parts = Vec::new();
        while !r.at_end() {
            let set = element(r, 0x31)?;
            set.read_all((), |r| {
                while !r.at_end() {
                    let attr = element(r, 0x30)?;
                    attr.read_all((), |r| {
                        let oid = element(r, 0x06)?;
                        let tag = r.read_byte().map_err(|_| ())?;
                        let value = contents(r)?;
                        let text = match tag {
                            // UTF8String, PrintableString, IA5String, T61String
                            0x0c | 0x13 | 0x16 | 0x14 => {
                                String::from_utf8_lossy(value.as_slice_less_safe()).into_owned()
                            }
                            _ => "#".to_owned(),
                        };
                        parts.push(format!("{}={}", attribute(oid.as_slice_less_safe()), text));
                        Ok(())
                    })?;
                }
                Ok(())
            })?;
        }
        Ok(parts.join(", "))
    })
}

fn attribute(oid: &[u8]) -> String {
    match oid {
        [0x55, 0x04, 0x03] => "CN".into(),
        [0x55, 0x04, 0x06] => "C".into(),
        [0x55, 0x04, 0x07] => "L".into(),
        [0x55, 0x04, 0x08] => "ST".into(),
        [0x55, 0x04, 0x0a] => "O".into(),
        [0x55, 0x04, 0x0b] => "OU".into(),
        [0x55, 0x04, 0x05] => "serialNumber".into(),
        other => other
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(""),
    }
}

/// The kind and size of a public key, from its SubjectPublicKeyInfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA with this many modulus bits.
    Rsa(usize),
    /// ECDSA on this curve.
    Ec(Curve),
    /// Ed25519.
    Ed25519,
    /// Anything else.
    Other,
}

/// An elliptic curve by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// NIST P-256 (prime256v1).
    P256,
    /// NIST P-384 (secp384r1).
    P384,
    /// NIST P-521 (secp521r1).
    P521,
    /// Another curve.
    Other,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::Rsa(bits) => write!(f, "RSA {bits}"),
            KeyKind::Ec(Curve::P256) => f.write_str("EC P-256"),
            KeyKind::Ec(Curve::P384) => f.write_str("EC P-384"),
            KeyKind::Ec(Curve::P521) => f.write_str("EC P-521"),
            KeyKind::Ec(Curve::Other) => f.write_str("EC (another curve)"),
            KeyKind::Ed25519 => f.write_str("Ed25519"),
            KeyKind::Other => f.write_str("an unknown key type"),
        }
    }
}

/// The parts of a SubjectPublicKeyInfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpkiParts<'a> {
    /// The algorithm's object identifier (DER contents).
    pub algorithm: &'a [u8],
    /// The parameters' object identifier, if they are one (an EC curve).
    pub curve: Option<&'a [u8]>,
    /// The key bits (BIT STRING contents after the unused-bits byte).
    pub key: &'a [u8],
}

/// The parts of a SubjectPublicKeyInfo (DER with its header).
pub fn spki_parts(spki: &[u8]) -> Option<SpkiParts<'_>> {
    Input::from(spki)
        .read_all((), |r| {
            element(r, 0x30)?.read_all((), |r| {
                let (alg, params) = element(r, 0x30)?.read_all((), |r| {
                    let oid = element(r, 0x06)?;
                    let params = if r.peek(0x06) {
                        Some(element(r, 0x06)?)
                    } else {
                        None
                    };
                    let _ = r.read_bytes_to_end();
                    Ok((oid, params))
                })?;
                let bits = element(r, 0x03)?.read_all((), |r| {
                    r.read_byte().map_err(|_| ())?;
                    Ok(r.read_bytes_to_end())
                })?;
                Ok(SpkiParts {
                    algorithm: alg.as_slice_less_safe(),
                    curve: params.map(|p| p.as_slice_less_safe()),
                    key: bits.as_slice_less_safe(),
                })
            })
        })
        .ok()
}

/// What kind of key `spki` (DER with its header) holds.
pub fn key_kind(spki: &[u8]) -> KeyKind {
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    const EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
    const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    const P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];
    let Some(parts) = spki_parts(spki) else {
        return KeyKind::Other;
    };
    match parts.algorithm {
        RSA => KeyKind::Rsa(rsa_bits(parts.key).unwrap_or(0)),
        EC => KeyKind::Ec(match parts.curve {
            Some(P256) => Curve::P256,
            Some(P384) => Curve::P384,
            Some(P521) => Curve::P521,
            _ => Curve::Other,
        }),
        ED25519 => KeyKind::Ed25519,
        _ => KeyKind::Other,
    }
}

/// The modulus length of an RSA public key (`RSAPublicKey` DER).
fn rsa_bits(key: &[u8]) -> Result<usize, ()> {
    Input::from(key).read_all((), |r| {
        element(r, 0x30)?.read_all((), |r| {
            let n = element(r, 0x02)?.as_slice_less_safe();
            let _ = r.read_bytes_to_end();
            let n = match n {
                [0, rest @ ..] => rest,
                n => n,
            };
            let lead = n.first().map_or(0, |b| 8 - b.leading_zeros() as usize);
            Ok(n.len().saturating_sub(1) * 8 + lead)
        })
    })
}

/// SHA-256 of `der`, as lower-case hex: for a certificate, the certificate ID the AWS IoT
/// console shows; for a public key, what `openssl pkey -pubout -outform DER | sha256sum`
/// prints.
pub fn sha256_hex(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One DER element with the given tag; returns its contents.
fn element<'a>(r: &mut Reader<'a>, tag: u8) -> Result<Input<'a>, ()> {
    if r.read_byte().map_err(|_| ())? != tag {
        return Err(());
    }
    contents(r)
}

/// The length and contents of the element whose tag was just read. Certificates are far below
/// 16 MiB, so longer lengths are refused.
fn contents<'a>(r: &mut Reader<'a>) -> Result<Input<'a>, ()> {
    let first = r.read_byte().map_err(|_| ())?;
    let len = match first {
        n if n < 0x80 => usize::from(n),
        0x81 => usize::from(r.read_byte().map_err(|_| ())?),
        0x82 | 0x83 => {
            let mut len = 0usize;
            for _ in 0..(first - 0x80) {
                len = (len << 8) | usize::from(r.read_byte().map_err(|_| ())?);
            }
            len
        }
        _ => return Err(()),
    };
    r.read_bytes(len).map_err(|_| ())
}

/// A UTCTime or GeneralizedTime as epoch seconds.
fn time(r: &mut Reader<'_>) -> Result<i64, ()> {
    let tag = r.read_byte().map_err(|_| ())?;
    let value = contents(r)?;
    let s = std::str::from_utf8(value.as_slice_less_safe()).map_err(|_| ())?;
    let s = s.strip_suffix('Z').ok_or(())?;
    let full = match (tag, s.len()) {
        // UTCTime YYMMDDHHMMSS: 50-99 are 1950-1999.
        (0x17, 12) => {
            let yy: i64 = s.get(..2).ok_or(())?.parse().map_err(|_| ())?;
            format!("{}{}", if yy >= 50 { "19" } else { "20" }, s)
        }
        (0x18, 14) => s.to_owned(),
        _ => return Err(()),
    };
    if !full.bytes().all(|b| b.is_ascii_digit()) {
        return Err(());
    }
    let n = |i: usize| full.get(i..i + 2).ok_or(());
    let stamp = format!(
        "{}-{}-{}T{}:{}:{}Z",
        full.get(..4).ok_or(())?,
        n(4)?,
        n(6)?,
        n(8)?,
        n(10)?,
        n(12)?
    );
    aws_smithy_types::DateTime::from_str(&stamp, aws_smithy_types::date_time::Format::DateTime)
        .map(|t| t.secs())
        .map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_none() {
        for junk in [
            &b""[..],
            b"\x30",
            b"\x30\x84\xff\xff\xff\xff",
            b"\x30\x03\x30\x01\x00",
            &[0x30; 100],
        ] {
            assert_eq!(parse(junk), None);
        }
        assert_eq!(key_kind(b"\x30\x00"), KeyKind::Other);
    }

    #[test]
    fn reads_an_rcgen_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["device".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "AWS IoT Certificate");
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2049, 12, 31);
        let cert = params.self_signed(&key).unwrap();
        let c = parse(cert.der()).unwrap();
        assert_eq!(c.version, 3);
        assert_eq!(c.subject, "CN=AWS IoT Certificate");
        assert_eq!(c.not_before, 1_704_067_200);
        assert_eq!(c.not_after, 2_524_521_600);
        assert_eq!(spki_parts(c.spki).unwrap().key, key.public_key_raw());
        assert_eq!(key_kind(c.spki), KeyKind::Ec(Curve::P256));
        assert!(!c.is_ca);
    }
}
