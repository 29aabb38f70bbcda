//! `-----BEGIN TSS2 PRIVATE KEY-----` files: a key wrapped by a TPM (its private part encrypted
//! to a parent key inside the TPM), as the tpm2-openssl provider, openssl_tpm2_engine and GnuTLS
//! write them. The file is useless without that TPM. Parsing is pure and never panics.
//!
//! ```text
//! TPMKey ::= SEQUENCE {
//!     type       OBJECT IDENTIFIER,              -- 2.23.133.10.1.3: a loadable key
//!     emptyAuth  [0] EXPLICIT BOOLEAN OPTIONAL,  -- TRUE: the key has no password
//!     policy     [1] EXPLICIT ... OPTIONAL,
//!     secret     [2] EXPLICIT ... OPTIONAL,
//!     parent     INTEGER,                        -- 0x40000001 (the owner hierarchy's storage
//!                                                -- primary) or a persistent handle
//!     pubkey     OCTET STRING,                   -- TPM2B_PUBLIC
//!     privkey    OCTET STRING,                   -- TPM2B_PRIVATE
//!     ... }
//! ```

/// The PEM label of a TPM-wrapped key.
pub const LABEL: &str = "TSS2 PRIVATE KEY";

/// A TPM-wrapped key, as its file holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// The parent: 0x40000001 (the owner storage primary, made again from its template) or a
    /// persistent handle.
    pub parent: u32,
    /// The TPMT_PUBLIC (the contents of the TPM2B_PUBLIC).
    pub public: Vec<u8>,
    /// The contents of the TPM2B_PRIVATE.
    pub private: Vec<u8>,
}

/// Why a TSS2 key file cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tss2Error {
    /// Not base64, not DER, or not the TPMKey structure.
    Malformed,
    /// An importable or sealed object, not a key to load.
    NotLoadable,
    /// The key has a password (or a policy), and ecr-edge runs unattended.
    Password,
}

impl std::fmt::Display for Tss2Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tss2Error::Malformed => "the TSS2 PRIVATE KEY block is not a TPM key structure",
            Tss2Error::NotLoadable => {
                "the TSS2 PRIVATE KEY holds an importable key or sealed data, not a loadable key"
            }
            Tss2Error::Password => {
                "the TPM key has a password or policy (emptyAuth is not TRUE), and ecr-edge \
                 runs unattended; make it without one (openssl genpkey -provider tpm2 without \
                 -pkeyopt user-auth)"
            }
        })
    }
}

/// The object identifier of a loadable key (2.23.133.10.1.3), DER contents.
const LOADABLE: &[u8] = &[0x67, 0x81, 0x05, 0x0a, 0x01, 0x03];
/// Importable keys (.4) and sealed data (.5) share the prefix.
const TSS2_PREFIX: &[u8] = &[0x67, 0x81, 0x05, 0x0a, 0x01];

/// The DER of the `TSS2 PRIVATE KEY` block in PEM `text`; `None` when there is none.
pub fn pem_der(text: &[u8]) -> Option<Result<Vec<u8>, Tss2Error>> {
    let text = std::str::from_utf8(text).ok()?;
    let begin = format!("-----BEGIN {LABEL}-----");
    let end = format!("-----END {LABEL}-----");
    let start = text.find(&begin)? + begin.len();
    let Some(len) = text[start..].find(&end) else {
        return Some(Err(Tss2Error::Malformed));
    };
    let b64: String = text[start..start + len]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    Some(aws_smithy_types::base64::decode(b64).map_err(|_| Tss2Error::Malformed))
}

/// Reads the TPMKey structure.
///
/// # Errors
/// [`Tss2Error`] naming why the key cannot be loaded.
pub fn parse(der: &[u8]) -> Result<WrappedKey, Tss2Error> {
    let mut outer = Der(der);
    let mut key = Der(outer.next(0x30).ok_or(Tss2Error::Malformed)?);
    if !outer.0.is_empty() {
        return Err(Tss2Error::Malformed);
    }
    let oid = key.next(0x06).ok_or(Tss2Error::Malformed)?;
    if oid != LOADABLE {
        return Err(if oid.starts_with(TSS2_PREFIX) {
            Tss2Error::NotLoadable
        } else {
            Tss2Error::Malformed
        });
    }
    let mut empty_auth = false;
    if key.peek() == Some(0xA0) {
        let mut inner = Der(key.next(0xA0).ok_or(Tss2Error::Malformed)?);
        empty_auth = inner.next(0x01).ok_or(Tss2Error::Malformed)? != [0];
    }
    if key.peek() == Some(0xA1) || key.peek() == Some(0xA2) || !empty_auth {
        return Err(Tss2Error::Password);
    }
    let parent = key.next(0x02).ok_or(Tss2Error::Malformed)?;
    let parent = match parent {
        [0, rest @ ..] if rest.len() == 4 => rest,
        p if p.len() <= 4 => p,
        _ => return Err(Tss2Error::Malformed),
    };
    let parent = parent.iter().fold(0u32, |n, &b| (n << 8) | u32::from(b));
    let public = sized(key.next(0x04).ok_or(Tss2Error::Malformed)?)?;
    let private = sized(key.next(0x04).ok_or(Tss2Error::Malformed)?)?;
    Ok(WrappedKey {
        parent,
        public,
        private,
    })
}

/// The contents of a TPM2B that fills `bytes` exactly.
fn sized(bytes: &[u8]) -> Result<Vec<u8>, Tss2Error> {
    let mut r = super::wire::Reader::new(bytes);
    match r.sized() {
        Some(inner) if r.rest().is_empty() => Ok(inner.to_vec()),
        _ => Err(Tss2Error::Malformed),
    }
}

/// A DER cursor: definite lengths up to 4 bytes, nothing more is needed here.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    fn peek(&self) -> Option<u8> {
        self.0.first().copied()
    }

    /// The contents of the next element, which must have `tag`.
    fn next(&mut self, tag: u8) -> Option<&'a [u8]> {
        let (&t, rest) = self.0.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        if t != tag {
            return None;
        }
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let (len, after) = rest.split_at(n);
            rest = after;
            len.iter().fold(0usize, |l, &b| (l << 8) | usize::from(b))
        };
        if len > rest.len() {
            return None;
        }
        let (contents, after) = rest.split_at(len);
        self.0 = after;
        Some(contents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key written by `openssl genpkey -provider tpm2 -algorithm EC -pkeyopt group:P-256`
    /// (Debian's tpm2-openssl 1.1.1, against swtpm).
    const OPENSSL_TPM2: &str = "-----BEGIN TSS2 PRIVATE KEY-----
MIHwBgZngQUKAQOgAwEBAQIEQAAAAQRYAFYAIwALAAYAcgAAABAAEAADABAAIPwd
QVHTUOtJEe7JmiUGMKGDVTZMOzcWIR1xufLcikUoACAb6GaXLoEGsiIaVk5dcAX9
qiSRNMpNWQPDlJJ3nRL1iASBgAB+ACDSfjQUEKAswq5a2LlWS6DntyfoQRTq0O/M
wB7SI99SBgAQF+50KWQmLyihsu6SKJKkWnxV2/dbb1fp3GrAngM2mbUojv3JAbOr
1vCAfAdSnBDAOCQunV525LK6/rff7KNUEDYHx1OT4bXCOTIcHy8dtE2sdB+nKhbl
CnB5
-----END TSS2 PRIVATE KEY-----
";

    #[test]
    fn keys_written_by_tpm2_openssl_are_read() {
        let der = pem_der(OPENSSL_TPM2.as_bytes()).unwrap().unwrap();
        let key = parse(&der).unwrap();
        assert_eq!(key.parent, 0x4000_0001);
        assert_eq!(key.public.len(), 0x56);
        assert_eq!(key.private.len(), 0x7e);
        for cut in 0..der.len() {
            assert!(parse(&der[..cut]).is_err(), "{cut}");
        }
        assert!(pem_der(b"-----BEGIN PRIVATE KEY-----\n").is_none());
    }

    #[test]
    fn every_one_byte_change_is_read_or_refused_without_a_panic() {
        let der = pem_der(OPENSSL_TPM2.as_bytes()).unwrap().unwrap();
        for i in 0..der.len() {
            for value in [0x00, 0x01, 0x7f, 0x80, 0x81, 0x84, 0xff] {
                let mut changed = der.clone();
                changed[i] = value;
                let _ = parse(&changed);
            }
        }
    }

    #[test]
    fn passwords_and_other_objects_are_refused() {
        let der = pem_der(OPENSSL_TPM2.as_bytes()).unwrap().unwrap();
        // emptyAuth FALSE.
        let mut no_empty_auth = der.clone();
        no_empty_auth[15] = 0;
        assert_eq!(parse(&no_empty_auth), Err(Tss2Error::Password));
        // An importable key (2.23.133.10.1.4).
        let mut importable = der.clone();
        importable[10] = 4;
        assert_eq!(parse(&importable), Err(Tss2Error::NotLoadable));
    }
}
