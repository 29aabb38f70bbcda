//! A TPM 2.0, spoken to directly: the command protocol over the kernel's resource manager
//! (`/dev/tpmrm0`) or a software TPM's TCP port (swtpm), with no C library and no `dlopen`
//! (docs/reference.md section 7 has the byte layouts this code relies on).
//!
//! Only what a device key needs: read a persistent key's public half ([`Tpm::read_public`]) and
//! sign a digest with it ([`Tpm::sign`]). Responses are parsed by a bounds-checked reader
//! ([`wire`]); a TPM's error codes are named in words ([`TpmError`]).

pub mod tss2;
mod wire;

use std::fmt;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wire::{Reader, Writer};

/// The kernel's TPM resource manager: each open file is its own context, objects are flushed
/// when it closes.
pub const DEFAULT_DEVICE: &str = "/dev/tpmrm0";

/// Largest response read. The largest answer used here (a public area) is under 1 KiB; the
/// kernel's buffer is 4 KiB.
const MAX_RESPONSE: usize = 4096;

/// How many times a command is sent to a TPM that says it is busy (the pauses between double
/// from 5 ms: at most 0.3 s in all).
const BUSY_TRIES: u32 = 7;

/// How long a software TPM may take to accept a connection or answer one command.
const SWTPM_TIMEOUT: Duration = Duration::from_secs(5);

/// Persistent object handles (`tpm2_evictcontrol`): 0x81000000 to 0x81FFFFFF.
pub const PERSISTENT_FIRST: u32 = 0x8100_0000;
/// The last persistent handle.
pub const PERSISTENT_LAST: u32 = 0x81FF_FFFF;

/// Signatures a TPM made for this process: each is a TLS handshake with the IoT endpoint that
/// could not resume an earlier session (or a certificate request).
static SIGNATURES: AtomicU64 = AtomicU64::new(0);

/// How many signatures a TPM has made for this process.
pub fn signatures() -> u64 {
    SIGNATURES.load(Ordering::Relaxed)
}

/// Which TPM, in the form tpm2-tss names TCTIs: `device:/dev/tpmrm0` (the default) or
/// `swtpm:host=127.0.0.1,port=2321`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum TpmName {
    /// A character device (`/dev/tpmrm0`, the kernel's resource manager).
    Device(PathBuf),
    /// A software TPM's command port (swtpm `--server type=tcp`), the simulator protocol.
    Swtpm(SocketAddr),
}

impl Default for TpmName {
    fn default() -> TpmName {
        TpmName::Device(PathBuf::from(DEFAULT_DEVICE))
    }
}

impl TryFrom<String> for TpmName {
    type Error = String;

    fn try_from(text: String) -> Result<TpmName, String> {
        TpmName::parse(&text)
    }
}

impl TpmName {
    /// Reads the tpm2-tss form. A software TPM's host must be an IP address or `localhost`:
    /// no name is looked up.
    ///
    /// # Errors
    /// Words naming the accepted forms.
    pub fn parse(text: &str) -> Result<TpmName, String> {
        let bad = || {
            format!(
                "{text:?} names no TPM: write device:/dev/tpmrm0 or \
                 swtpm:host=127.0.0.1,port=2321"
            )
        };
        if let Some(path) = text.strip_prefix("device:") {
            let path = if path.is_empty() {
                DEFAULT_DEVICE
            } else {
                path
            };
            if !path.starts_with('/') {
                return Err(bad());
            }
            return Ok(TpmName::Device(PathBuf::from(path)));
        }
        let Some(options) = text.strip_prefix("swtpm:") else {
            return Err(bad());
        };
        let (mut host, mut port) = (IpAddr::V4(Ipv4Addr::LOCALHOST), 2321u16);
        for option in options.split(',').filter(|o| !o.is_empty()) {
            match option.split_once('=') {
                Some(("host", "localhost")) => host = IpAddr::V4(Ipv4Addr::LOCALHOST),
                Some(("host", h)) => host = h.parse().map_err(|_| bad())?,
                Some(("port", p)) => port = p.parse().ok().filter(|&p| p != 0).ok_or_else(bad)?,
                _ => return Err(bad()),
            }
        }
        Ok(TpmName::Swtpm(SocketAddr::new(host, port)))
    }
}

impl fmt::Display for TpmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TpmName::Device(p) => write!(f, "device:{}", p.display()),
            TpmName::Swtpm(a) => write!(f, "swtpm:host={},port={}", a.ip(), a.port()),
        }
    }
}

/// Why a TPM command did not give an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TpmError {
    /// The TPM device does not exist.
    NoDevice(PathBuf),
    /// The TPM device exists but may not be opened by this user.
    DevicePermission(PathBuf),
    /// The TPM could not be reached or stopped answering.
    Io {
        /// Which TPM.
        tpm: String,
        /// What the system said.
        detail: String,
    },
    /// A wrapped key's parent handle holds nothing.
    NoParent(u32),
    /// A key was to be made at a handle that holds one already.
    Occupied(u32),
    /// The TPM's answer is not a well-formed response.
    Malformed(&'static str),
    /// The TPM answered with an error code.
    Code {
        /// The command, in words.
        command: &'static str,
        /// The response code.
        code: u32,
    },
}

/// TPM response codes this code names (TPM 2.0 Library Part 2, table 16), after the handle,
/// parameter and session number bits of a format-one code are cleared.
mod rc {
    pub const INITIALIZE: u32 = 0x100;
    pub const FAILURE: u32 = 0x101;
    pub const ATTRIBUTES: u32 = 0x082;
    pub const HASH: u32 = 0x083;
    pub const VALUE: u32 = 0x084;
    pub const HANDLE: u32 = 0x08B;
    pub const AUTH_FAIL: u32 = 0x08E;
    pub const SCHEME: u32 = 0x092;
    pub const KEY: u32 = 0x09C;
    pub const INTEGRITY: u32 = 0x09F;
    pub const BAD_AUTH: u32 = 0x0A2;
    pub const YIELDED: u32 = 0x908;
    pub const TESTING: u32 = 0x90A;
    pub const LOCKOUT: u32 = 0x921;
    pub const RETRY: u32 = 0x922;
}

impl TpmError {
    /// The response code with a format-one code's position bits cleared.
    pub fn code(&self) -> Option<u32> {
        match self {
            TpmError::Code { code, .. } if code & 0x80 != 0 => Some(code & 0xBF),
            TpmError::Code { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the TPM said the handle holds nothing.
    pub fn is_empty_handle(&self) -> bool {
        self.code() == Some(rc::HANDLE)
    }
}

impl fmt::Display for TpmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TpmError::NoDevice(p) => write!(
                f,
                "there is no TPM device {} (no TPM, or its driver is not loaded: on a \
                 Raspberry Pi with an SPI TPM add dtoverlay=tpm-slb9670 to config.txt; \
                 elsewhere check that the kernel has tpm_tis or tpm_crb)",
                p.display()
            ),
            TpmError::DevicePermission(p) => write!(
                f,
                "may not open the TPM device {}: add the service user to the tss group \
                 (the packaged unit does: SupplementaryGroups=tss)",
                p.display()
            ),
            TpmError::Io { tpm, detail } => write!(f, "the TPM {tpm} did not answer: {detail}"),
            TpmError::Malformed(what) => write!(f, "the TPM's answer is malformed: {what}"),
            TpmError::NoParent(h) => write!(
                f,
                "the wrapped key's parent {h:#010x} is not in the TPM (the key file names a \
                 persistent parent that was removed, or belongs to another TPM)"
            ),
            TpmError::Occupied(h) => write!(
                f,
                "the TPM handle {h:#010x} holds a key already, and ecr-edge never replaces one; \
                 name another with --handle, or remove that key first (tpm2_evictcontrol -C o \
                 -c {h:#010x}) if nothing uses it"
            ),
            TpmError::Code { command, code } => {
                let words = match self.code().unwrap_or(*code) {
                    rc::HANDLE => {
                        "the handle holds no object (make the key persistent with \
                                   `ecr-edge iot keygen --tpm` or tpm2_evictcontrol)"
                    }
                    rc::LOCKOUT => {
                        "the TPM is in dictionary-attack lockout; it refuses keys \
                                    with a password until the lockout time passes or the \
                                    lockout is reset (tpm2_dictionarylockout --clear-lockout)"
                    }
                    rc::AUTH_FAIL | rc::BAD_AUTH => {
                        "the key has a password; ecr-edge uses keys without one"
                    }
                    rc::KEY | rc::ATTRIBUTES => {
                        "the key cannot sign (a restricted or \
                                                 decrypt-only key)"
                    }
                    rc::SCHEME | rc::HASH | rc::VALUE => {
                        "the key refuses this signature scheme (it is bound to another one)"
                    }
                    rc::INTEGRITY => {
                        "the wrapped key was not made under this TPM's parent key \
                                      (it belongs to another TPM, or to another parent)"
                    }
                    rc::INITIALIZE => "the TPM has not been started (TPM2_Startup)",
                    rc::FAILURE => "the TPM is in failure mode",
                    rc::RETRY => "the TPM is busy; try again",
                    _ => "an error code this program does not name",
                };
                write!(
                    f,
                    "the TPM refused {command} with code {code:#05x}: {words}"
                )
            }
        }
    }
}

impl std::error::Error for TpmError {}

/// A signing key's public half as the TPM reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// An EC key on NIST P-256: the point's coordinates, 32 bytes each.
    EcP256 {
        /// x.
        x: [u8; 32],
        /// y.
        y: [u8; 32],
    },
    /// An RSA key: the modulus (big-endian) and exponent.
    Rsa {
        /// n.
        modulus: Vec<u8>,
        /// e.
        exponent: u32,
    },
    /// Another algorithm or curve, in words.
    Other(String),
}

/// The SubjectPublicKeyInfo of a P-256 key up to its point's coordinates: SEQUENCE {
/// SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING 04 || x || y }.
pub const P256_SPKI_PREFIX: [u8; 27] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
];

/// A key object's public area: its key and whether it may sign for anyone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Public {
    /// The key.
    pub key: PublicKey,
    /// objectAttributes.sign.
    pub sign: bool,
    /// objectAttributes.restricted (signs only what the TPM itself made).
    pub restricted: bool,
}

impl PublicKey {
    /// SubjectPublicKeyInfo DER, as a certificate carries it (`None` for other algorithms).
    pub fn spki(&self) -> Option<Vec<u8>> {
        match self {
            PublicKey::EcP256 { x, y } => {
                let mut der = P256_SPKI_PREFIX.to_vec();
                der.extend_from_slice(x);
                der.extend_from_slice(y);
                Some(der)
            }
            PublicKey::Rsa { modulus, exponent } => {
                let e = if *exponent == 0 { 65_537 } else { *exponent };
                let key = wire::der_sequence(&[
                    wire::der_uint(modulus),
                    wire::der_uint(&e.to_be_bytes()),
                ]);
                // rsaEncryption, NULL
                const ALG: [u8; 15] = [
                    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
                    0x05, 0x00,
                ];
                let mut bits = vec![0u8];
                bits.extend_from_slice(&key);
                Some(wire::der_sequence(&[
                    ALG.to_vec(),
                    wire::der_tlv(0x03, &bits),
                ]))
            }
            PublicKey::Other(_) => None,
        }
    }

    /// In words, as `doctor` shows it (`EC P-256`, `RSA 2048`).
    pub fn kind(&self) -> String {
        match self {
            PublicKey::EcP256 { .. } => "EC P-256".into(),
            PublicKey::Rsa { modulus, .. } => {
                let lead = modulus.iter().take_while(|&&b| b == 0).count();
                format!("RSA {}", (modulus.len() - lead) * 8)
            }
            PublicKey::Other(words) => words.clone(),
        }
    }
}

/// TPM algorithm identifiers (Part 2, table 9).
mod alg {
    pub const RSA: u16 = 0x0001;
    pub const SHA256: u16 = 0x000B;
    pub const NULL: u16 = 0x0010;
    pub const RSASSA: u16 = 0x0014;
    pub const RSAPSS: u16 = 0x0016;
    pub const ECDSA: u16 = 0x0018;
    pub const ECC: u16 = 0x0023;
    pub const NIST_P256: u16 = 0x0003;
    pub const AES: u16 = 0x0006;
    pub const CFB: u16 = 0x0043;
}

/// Structure tags and handles (Part 2, tables 19 and 28).
const ST_NO_SESSIONS: u16 = 0x8001;
const ST_SESSIONS: u16 = 0x8002;
const ST_HASHCHECK: u16 = 0x8024;
const RH_NULL: u32 = 0x4000_0007;
const RS_PW: u32 = 0x4000_0009;
/// The owner hierarchy (`TPM_RH_OWNER`): a wrapped key with this parent is under the owner
/// storage primary, made again from its template.
pub const RH_OWNER: u32 = 0x4000_0001;
const CC_EVICT_CONTROL: u32 = 0x0000_0120;
const CC_CREATE_PRIMARY: u32 = 0x0000_0131;
const CC_CREATE: u32 = 0x0000_0153;
const CC_LOAD: u32 = 0x0000_0157;
const CC_SIGN: u32 = 0x0000_015D;
const CC_FLUSH_CONTEXT: u32 = 0x0000_0165;
const CC_READ_PUBLIC: u32 = 0x0000_0173;

/// objectAttributes bits (Part 2, table 31).
mod attr {
    pub const FIXED_TPM: u32 = 1 << 1;
    pub const FIXED_PARENT: u32 = 1 << 4;
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    pub const NO_DA: u32 = 1 << 10;
    pub const RESTRICTED: u32 = 1 << 16;
    pub const DECRYPT: u32 = 1 << 17;
    pub const SIGN: u32 = 1 << 18;
}

/// The owner hierarchy's storage key, made again from this template whenever it is needed (the
/// same seed and template give the same key): EC P-256 with AES-128-CFB, as the TCG provisioning
/// guidance's SRK and tpm2-tools' `tpm2_createprimary -C o -G ecc` make it.
fn storage_primary_template() -> Vec<u8> {
    ecc_p256_template(
        attr::RESTRICTED | attr::DECRYPT,
        Some((alg::AES, 128, alg::CFB)),
    )
}

/// A device key: EC P-256, signs anything (unrestricted), with no scheme of its own (chosen per
/// signature).
fn signing_key_template() -> Vec<u8> {
    ecc_p256_template(attr::SIGN, None)
}

/// A TPMT_PUBLIC for an EC P-256 key that never leaves this TPM (fixedTPM, fixedParent), made
/// inside it (sensitiveDataOrigin), used without a password and outside dictionary-attack
/// counting (it has no password to guess), with the `extra` attributes and symmetric
/// algorithm (algorithm, key bits, mode).
fn ecc_p256_template(extra: u32, symmetric: Option<(u16, u16, u16)>) -> Vec<u8> {
    let mut w = Writer::default();
    w.u16(alg::ECC);
    w.u16(alg::SHA256);
    w.u32(
        attr::FIXED_TPM
            | attr::FIXED_PARENT
            | attr::SENSITIVE_DATA_ORIGIN
            | attr::USER_WITH_AUTH
            | attr::NO_DA
            | extra,
    );
    w.u16(0); // no policy
    match symmetric {
        Some((algorithm, bits, mode)) => {
            w.u16(algorithm);
            w.u16(bits);
            w.u16(mode);
        }
        None => w.u16(alg::NULL),
    }
    w.u16(alg::NULL); // scheme
    w.u16(alg::NIST_P256);
    w.u16(alg::NULL); // kdf
    w.u16(0); // unique.x
    w.u16(0); // unique.y
    w.finish_plain()
}

/// How the TPM signs a SHA-256 digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// ECDSA (an EC key).
    Ecdsa,
    /// RSASSA-PSS with MGF1 and a salt as long as the digest (an RSA key, TLS 1.3). TPMs made to
    /// the TPM 2.0 library specification's revision 1.38 or later (swtpm included) use that salt
    /// length; older ones use the largest, which TLS 1.3 peers refuse.
    RsaPss,
    /// RSASSA-PKCS1-v1_5 (an RSA key: certificate requests, TLS 1.2).
    RsaPkcs1,
}

impl Scheme {
    fn algorithm(self) -> u16 {
        match self {
            Scheme::Ecdsa => alg::ECDSA,
            Scheme::RsaPss => alg::RSAPSS,
            Scheme::RsaPkcs1 => alg::RSASSA,
        }
    }
}

/// Where a key is in a TPM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyIn {
    /// At a persistent handle.
    Persistent(u32),
    /// Wrapped by a parent, held in a file ([`tss2`]): loaded for each use.
    Wrapped(tss2::WrappedKey),
}

/// One TPM, named; every command opens it, sends, reads the answer, and closes it.
#[derive(Debug, Clone)]
pub struct Tpm {
    name: TpmName,
}

impl Tpm {
    /// The TPM called `name`.
    pub fn new(name: TpmName) -> Tpm {
        Tpm { name }
    }

    /// The public area of the key at `handle`.
    ///
    /// # Errors
    /// [`TpmError`]: the TPM is not there, or the handle holds nothing.
    pub fn read_public(&self, handle: u32) -> Result<Public, TpmError> {
        let mut cmd = Writer::command(ST_NO_SESSIONS, CC_READ_PUBLIC);
        cmd.u32(handle);
        let answer = self.run("TPM2_ReadPublic", cmd.finish())?;
        let mut r = Reader::new(&answer);
        let area = r.sized().ok_or(TpmError::Malformed("no public area"))?;
        parse_public(area).ok_or(TpmError::Malformed(
            "a public area this program cannot read",
        ))
    }

    /// The public area of `key`. A wrapped key is loaded (under its parent) to prove that
    /// this TPM can use it.
    ///
    /// # Errors
    /// [`TpmError`]: the TPM is not there, the handle or parent holds nothing, or the TPM
    /// refuses the wrapped key.
    pub fn public_of(&self, key: &KeyIn) -> Result<Public, TpmError> {
        match key {
            KeyIn::Persistent(handle) => self.read_public(*handle),
            KeyIn::Wrapped(wrapped) => {
                self.open()?.with_key(key, |_, _| Ok(()))?;
                parse_public(&wrapped.public).ok_or(TpmError::Malformed(
                    "the key file's public area cannot be read",
                ))
            }
        }
    }

    /// A signature of a SHA-256 `digest` by `key`, which has no password, in the form TLS
    /// carries it (ECDSA: DER; RSA: the modulus-length integer).
    ///
    /// # Errors
    /// [`TpmError`]: the TPM is not there, the key refuses, or the answer is malformed.
    pub fn sign(
        &self,
        key: &KeyIn,
        scheme: Scheme,
        digest: &[u8; 32],
    ) -> Result<Vec<u8>, TpmError> {
        self.open()?
            .with_key(key, |link, handle| link.sign(handle, scheme, digest))
    }

    /// Sends one command on a connection of its own.
    fn run(&self, command: &'static str, cmd: Vec<u8>) -> Result<Vec<u8>, TpmError> {
        self.open()?.run(command, &cmd)
    }

    /// A connection for several commands: transient objects live as long as it does on the
    /// kernel's resource manager (a software TPM keeps them until flushed: callers flush).
    fn open(&self) -> Result<Link, TpmError> {
        let io = |e: std::io::Error| TpmError::Io {
            tpm: self.name.to_string(),
            detail: io_words(&e),
        };
        let stream = match &self.name {
            TpmName::Device(path) => Stream::Device(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(|e| match e.kind() {
                        std::io::ErrorKind::NotFound => TpmError::NoDevice(path.clone()),
                        std::io::ErrorKind::PermissionDenied => {
                            TpmError::DevicePermission(path.clone())
                        }
                        _ => io(e),
                    })?,
            ),
            TpmName::Swtpm(addr) => {
                let s = TcpStream::connect_timeout(addr, SWTPM_TIMEOUT).map_err(io)?;
                s.set_read_timeout(Some(SWTPM_TIMEOUT)).map_err(io)?;
                s.set_write_timeout(Some(SWTPM_TIMEOUT)).map_err(io)?;
                Stream::Swtpm(s)
            }
        };
        Ok(Link {
            name: self.name.to_string(),
            stream,
        })
    }

    /// Makes a new EC P-256 signing key under the owner hierarchy's storage key and makes it
    /// persistent at `handle`; returns its public area. A handle that holds a key already is
    /// refused: a device key is never replaced behind its owner's back.
    ///
    /// # Errors
    /// [`TpmError`]; [`TpmError::Occupied`] when `handle` holds a key.
    pub fn create_persistent_key(&self, handle: u32) -> Result<Public, TpmError> {
        match self.read_public(handle) {
            Ok(_) => return Err(TpmError::Occupied(handle)),
            Err(e) if e.is_empty_handle() => {}
            Err(e) => return Err(e),
        }
        let mut link = self.open()?;
        let parent = link.create_primary(&storage_primary_template())?;
        let made = link.create_and_persist(parent, handle);
        link.flush(parent);
        // A software TPM serves one connection at a time: close this one first.
        drop(link);
        made?;
        self.read_public(handle)
    }
}

/// One open connection to a TPM.
struct Link {
    name: String,
    stream: Stream,
}

enum Stream {
    Device(std::fs::File),
    Swtpm(TcpStream),
}

/// Commands are written into a buffer whose size field is filled in last.
impl Writer {
    fn password_session(&mut self) {
        // One password session with the empty password.
        self.u32(9);
        self.u32(RS_PW);
        self.u16(0); // nonce
        self.u8(0); // session attributes
        self.u16(0); // password
    }

    fn no_pcrs(&mut self) {
        self.u32(0);
    }

    fn empty_sensitive(&mut self) {
        // TPM2B_SENSITIVE_CREATE: no user auth, no data.
        self.u16(4);
        self.u16(0);
        self.u16(0);
    }
}

impl Link {
    /// Sends one command; the response after its header (for a command with sessions: the
    /// handles, the parameter size, the parameters and the session area), or the TPM's error
    /// code.
    ///
    /// A TPM that says it could not start the command now (`TPM_RC_RETRY`, `_YIELDED`,
    /// `_TESTING`) is asked again, as tpm2-tss does, up to [`BUSY_TRIES`] times.
    fn run(&mut self, command: &'static str, cmd: &[u8]) -> Result<Vec<u8>, TpmError> {
        let mut pause = Duration::from_millis(5);
        for _ in 1..BUSY_TRIES {
            match self.run_once(command, cmd) {
                Err(TpmError::Code {
                    code: rc::RETRY | rc::YIELDED | rc::TESTING,
                    ..
                }) => {
                    std::thread::sleep(pause);
                    pause *= 2;
                }
                other => return other,
            }
        }
        self.run_once(command, cmd)
    }

    fn run_once(&mut self, command: &'static str, cmd: &[u8]) -> Result<Vec<u8>, TpmError> {
        let answer = self.transact(cmd)?;
        let mut r = Reader::new(&answer);
        let (Some(_tag), Some(size), Some(code)) = (r.u16(), r.u32(), r.u32()) else {
            return Err(TpmError::Malformed("shorter than a response header"));
        };
        if size as usize != answer.len() {
            return Err(TpmError::Malformed(
                "its size field does not match its length",
            ));
        }
        if code != 0 {
            return Err(TpmError::Code { command, code });
        }
        Ok(r.rest().to_vec())
    }

    fn transact(&mut self, cmd: &[u8]) -> Result<Vec<u8>, TpmError> {
        let name = &self.name;
        let io = |e: std::io::Error| TpmError::Io {
            tpm: name.clone(),
            detail: io_words(&e),
        };
        match &mut self.stream {
            Stream::Device(dev) => {
                dev.write_all(cmd).map_err(io)?;
                // The driver hands over the whole response in one read.
                let mut buf = vec![0u8; MAX_RESPONSE];
                let n = dev.read(&mut buf).map_err(io)?;
                buf.truncate(n);
                Ok(buf)
            }
            Stream::Swtpm(s) => {
                // The simulator protocol: TPM_SEND_COMMAND (8), locality, length, command;
                // the answer is length, response, then a 4-byte acknowledgement.
                let mut frame = Vec::with_capacity(cmd.len() + 9);
                frame.extend_from_slice(&8u32.to_be_bytes());
                frame.push(0);
                frame.extend_from_slice(&u32::try_from(cmd.len()).unwrap_or(0).to_be_bytes());
                frame.extend_from_slice(cmd);
                s.write_all(&frame).map_err(io)?;
                let mut len = [0u8; 4];
                s.read_exact(&mut len).map_err(io)?;
                let len = u32::from_be_bytes(len) as usize;
                if len > MAX_RESPONSE {
                    return Err(TpmError::Malformed("longer than any answer asked for"));
                }
                let mut buf = vec![0u8; len];
                s.read_exact(&mut buf).map_err(io)?;
                let mut ack = [0u8; 4];
                s.read_exact(&mut ack).map_err(io)?;
                Ok(buf)
            }
        }
    }

    /// TPM2_CreatePrimary in the owner hierarchy: the transient handle of the key `template`
    /// describes.
    fn create_primary(&mut self, template: &[u8]) -> Result<u32, TpmError> {
        let mut cmd = Writer::command(ST_SESSIONS, CC_CREATE_PRIMARY);
        cmd.u32(RH_OWNER);
        cmd.password_session();
        cmd.empty_sensitive();
        cmd.sized(template);
        cmd.u16(0); // outsideInfo
        cmd.no_pcrs();
        let answer = self.run("TPM2_CreatePrimary", &cmd.finish())?;
        Reader::new(&answer)
            .u32()
            .ok_or(TpmError::Malformed("no object handle"))
    }

    /// TPM2_Create, TPM2_Load and TPM2_EvictControl: a new signing key under `parent`, made
    /// persistent at `handle`.
    fn create_and_persist(&mut self, parent: u32, handle: u32) -> Result<(), TpmError> {
        let mut cmd = Writer::command(ST_SESSIONS, CC_CREATE);
        cmd.u32(parent);
        cmd.password_session();
        cmd.empty_sensitive();
        cmd.sized(&signing_key_template());
        cmd.u16(0);
        cmd.no_pcrs();
        let answer = self.run("TPM2_Create", &cmd.finish())?;
        let mut r = Reader::new(&answer);
        let _params = r.u32();
        let (Some(private), Some(public)) = (r.sized(), r.sized()) else {
            return Err(TpmError::Malformed("no key in the answer to TPM2_Create"));
        };
        let key = self.load(parent, private, public)?;
        let mut cmd = Writer::command(ST_SESSIONS, CC_EVICT_CONTROL);
        cmd.u32(RH_OWNER);
        cmd.u32(key);
        cmd.password_session();
        cmd.u32(handle);
        let persisted = self.run("TPM2_EvictControl", &cmd.finish()).map(|_| ());
        self.flush(key);
        persisted
    }

    /// TPM2_Load: the transient handle of a key wrapped by `parent`.
    fn load(&mut self, parent: u32, private: &[u8], public: &[u8]) -> Result<u32, TpmError> {
        let mut cmd = Writer::command(ST_SESSIONS, CC_LOAD);
        cmd.u32(parent);
        cmd.password_session();
        cmd.sized(private);
        cmd.sized(public);
        let answer = self.run("TPM2_Load", &cmd.finish())?;
        Reader::new(&answer)
            .u32()
            .ok_or(TpmError::Malformed("no object handle"))
    }

    /// Runs `f` with the handle of `key`: a persistent key's own, or a wrapped key loaded under
    /// its parent (the owner storage primary made again from its template, or a persistent
    /// parent) and flushed afterwards.
    fn with_key<T>(
        &mut self,
        key: &KeyIn,
        f: impl FnOnce(&mut Link, u32) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        let wrapped = match key {
            KeyIn::Persistent(handle) => return f(self, *handle),
            KeyIn::Wrapped(w) => w,
        };
        let made_parent = wrapped.parent == RH_OWNER;
        let parent = if made_parent {
            self.create_primary(&storage_primary_template())?
        } else {
            wrapped.parent
        };
        let loaded = self
            .load(parent, &wrapped.private, &wrapped.public)
            .map_err(|e| match e.code() {
                Some(rc::HANDLE) if !made_parent => TpmError::NoParent(parent),
                _ => e,
            });
        let result = match loaded {
            Ok(handle) => {
                let r = f(self, handle);
                self.flush(handle);
                r
            }
            Err(e) => Err(e),
        };
        if made_parent {
            self.flush(parent);
        }
        result
    }

    /// TPM2_Sign of a SHA-256 digest made outside the TPM.
    fn sign(
        &mut self,
        handle: u32,
        scheme: Scheme,
        digest: &[u8; 32],
    ) -> Result<Vec<u8>, TpmError> {
        let mut cmd = Writer::command(ST_SESSIONS, CC_SIGN);
        cmd.u32(handle);
        cmd.password_session();
        cmd.sized(digest);
        cmd.u16(scheme.algorithm());
        cmd.u16(alg::SHA256);
        // A null ticket: the digest was not made by the TPM (allowed for unrestricted keys).
        cmd.u16(ST_HASHCHECK);
        cmd.u32(RH_NULL);
        cmd.u16(0);
        let answer = self.run("TPM2_Sign", &cmd.finish())?;
        SIGNATURES.fetch_add(1, Ordering::Relaxed);
        let mut r = Reader::new(&answer);
        let params = r.u32().and_then(|n| r.bytes(n as usize));
        parse_signature(params.ok_or(TpmError::Malformed("no parameters"))?, scheme)
    }

    /// TPM2_FlushContext, best effort: the resource manager flushes on close anyway, and a
    /// software TPM's slots are what is at stake.
    fn flush(&mut self, handle: u32) {
        let mut cmd = Writer::command(ST_NO_SESSIONS, CC_FLUSH_CONTEXT);
        cmd.u32(handle);
        let _ = self.run("TPM2_FlushContext", &cmd.finish());
    }
}

/// What an I/O error means here, in words (a read timeout is "no answer", not EAGAIN).
fn io_words(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => format!(
            "no answer within {} s (is another program holding the TPM's connection?)",
            SWTPM_TIMEOUT.as_secs()
        ),
        _ => e.to_string(),
    }
}

/// Reads a TPMT_PUBLIC (Part 2, table 191). `None` when it is cut short.
fn parse_public(area: &[u8]) -> Option<Public> {
    let mut r = Reader::new(area);
    let kind = r.u16()?;
    let _name_alg = r.u16()?;
    let attributes = r.u32()?;
    let _policy = r.sized()?;
    // TPMT_SYM_DEF_OBJECT: an algorithm, and key bits and mode unless it is NULL.
    let symmetric = r.u16()?;
    if symmetric != alg::NULL {
        r.u16()?;
        r.u16()?;
    }
    // The scheme: an algorithm and, unless NULL, its hash.
    if r.u16()? != alg::NULL {
        r.u16()?;
    }
    let key = match kind {
        alg::ECC => {
            let curve = r.u16()?;
            if r.u16()? != alg::NULL {
                r.u16()?;
            }
            let (x, y) = (r.sized()?, r.sized()?);
            match curve {
                alg::NIST_P256 => PublicKey::EcP256 {
                    x: left_pad(x)?,
                    y: left_pad(y)?,
                },
                other => PublicKey::Other(format!("an EC key on TPM curve {other:#06x}")),
            }
        }
        alg::RSA => {
            let _bits = r.u16()?;
            let exponent = r.u32()?;
            PublicKey::Rsa {
                modulus: r.sized()?.to_vec(),
                exponent,
            }
        }
        other => PublicKey::Other(format!("a key of TPM algorithm {other:#06x}")),
    };
    Some(Public {
        key,
        sign: attributes & (1 << 18) != 0,
        restricted: attributes & (1 << 16) != 0,
    })
}

/// Reads a TPMT_SIGNATURE (Part 2, table 217) of the scheme asked for: ECDSA as DER
/// (`SEQUENCE { r, s }`), RSA as its bytes.
fn parse_signature(params: &[u8], scheme: Scheme) -> Result<Vec<u8>, TpmError> {
    let mut p = Reader::new(params);
    let (Some(algorithm), Some(alg::SHA256)) = (p.u16(), p.u16()) else {
        return Err(TpmError::Malformed("not a SHA-256 signature"));
    };
    if algorithm != scheme.algorithm() {
        return Err(TpmError::Malformed("a signature of another scheme"));
    }
    match scheme {
        Scheme::Ecdsa => {
            let (Some(r), Some(s)) = (p.sized(), p.sized()) else {
                return Err(TpmError::Malformed("a cut ECDSA signature"));
            };
            Ok(wire::der_sequence(&[wire::der_uint(r), wire::der_uint(s)]))
        }
        Scheme::RsaPss | Scheme::RsaPkcs1 => p
            .sized()
            .filter(|sig| !sig.is_empty())
            .map(<[u8]>::to_vec)
            .ok_or(TpmError::Malformed("a cut RSA signature")),
    }
}

/// A coordinate of at most 32 bytes, left-padded to 32.
fn left_pad(v: &[u8]) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    let start = 32usize.checked_sub(v.len())?;
    out[start..].copy_from_slice(v);
    Some(out)
}

/// Whether `handle` is a persistent object handle.
pub fn is_persistent(handle: u32) -> bool {
    (PERSISTENT_FIRST..=PERSISTENT_LAST).contains(&handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_the_tss_form() {
        assert_eq!(
            TpmName::parse("device:/dev/tpmrm0").unwrap(),
            TpmName::default()
        );
        assert_eq!(
            TpmName::parse("swtpm:host=127.0.0.1,port=2321").unwrap(),
            TpmName::Swtpm("127.0.0.1:2321".parse().unwrap())
        );
        assert_eq!(
            TpmName::parse("swtpm:port=2400").unwrap().to_string(),
            "swtpm:host=127.0.0.1,port=2400"
        );
        for bad in [
            "",
            "mssim:",
            "swtpm:host=tpm.example",
            "swtpm:port=0",
            "device:tpm0",
        ] {
            assert!(TpmName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn public_areas_are_read_and_cut_ones_refused() {
        // An unrestricted ECC P-256 signing key, scheme NULL, as tpm2_create -G ecc makes.
        let mut w = Writer::default();
        w.u16(alg::ECC);
        w.u16(alg::SHA256);
        w.u32(1 << 18 | 1 << 6 | 1 << 5 | 1 << 4 | 1 << 1);
        w.u16(0);
        w.u16(alg::NULL);
        w.u16(alg::NULL);
        w.u16(alg::NIST_P256);
        w.u16(alg::NULL);
        w.sized(&[1; 32]);
        w.sized(&[2; 31]);
        let area = w.finish_plain();
        let public = parse_public(&area).unwrap();
        assert!(public.sign && !public.restricted);
        let PublicKey::EcP256 { x, y } = &public.key else {
            panic!("{public:?}")
        };
        assert_eq!((x[0], y[0], y[1]), (1, 0, 2));
        let spki = public.key.spki().unwrap();
        assert_eq!(spki.len(), 91);
        for cut in 0..area.len() {
            assert!(parse_public(&area[..cut]).is_none(), "{cut}");
        }
    }

    #[test]
    fn signatures_are_read_and_cut_ones_refused() {
        let mut w = Writer::default();
        w.u16(alg::ECDSA);
        w.u16(alg::SHA256);
        w.sized(&[0x80; 32]);
        w.sized(&[1; 32]);
        let ecdsa = w.finish_plain();
        let der = parse_signature(&ecdsa, Scheme::Ecdsa).unwrap();
        // r gains a leading zero (its top bit is set): 2 + (2 + 33) + (2 + 32).
        assert_eq!((der[0], der.len()), (0x30, 71));
        assert!(parse_signature(&ecdsa, Scheme::RsaPss).is_err());
        let mut w = Writer::default();
        w.u16(alg::RSAPSS);
        w.u16(alg::SHA256);
        w.sized(&[7; 256]);
        let pss = w.finish_plain();
        assert_eq!(parse_signature(&pss, Scheme::RsaPss).unwrap(), vec![7; 256]);
        assert!(parse_signature(&pss, Scheme::RsaPkcs1).is_err());
        for (area, scheme) in [(&ecdsa, Scheme::Ecdsa), (&pss, Scheme::RsaPss)] {
            for cut in 0..area.len() {
                assert!(parse_signature(&area[..cut], scheme).is_err(), "{cut}");
            }
        }
    }

    #[test]
    fn error_codes_are_named() {
        let empty = TpmError::Code {
            command: "TPM2_ReadPublic",
            code: 0x18B,
        };
        assert!(empty.is_empty_handle());
        assert!(empty.to_string().contains("holds no object"), "{empty}");
        let lockout = TpmError::Code {
            command: "TPM2_Sign",
            code: 0x921,
        };
        assert!(lockout.to_string().contains("lockout"), "{lockout}");
    }
}
