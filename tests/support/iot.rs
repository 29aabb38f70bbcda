//! A fake AWS IoT credentials provider over real mutual TLS, and device identities to use it.
//!
//! Like the real endpoint it requires a client certificate that chains to a registered CA, or
//! is itself registered (AWS IoT's registration without a CA), and accepts what AWS IoT accepts:
//! X.509 v1 and v3 certificates, RSA and ECDSA (webpki, and so rustls's own verifier, would
//! refuse v1). The handshake fails without one. It serves `GET /role-aliases/<alias>/credentials`, checks the
//! `x-amzn-iot-thingname` header, and answers in the provider's JSON. The credentials it hands
//! out are the ones the fake ECR verifies signatures with, so an end-to-end `get` proves the ECR
//! call was signed with the exchanged key and session token.
//!
//! The same listener plays the IoT data endpoint's Device Shadow REST API (docs/reference.md
//! section 11): `POST /things/<thing>/shadow?name=<name>` with a JSON body, the client
//! certificate checked the same way, the ALPN protocol `x-amzn-http-ca` offered; each update
//! is recorded ([`FakeIot::shadow_updates`]) and answered with the service's document.

use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{
    hang, read_head, Faults, Metered, TestCa, Wire, ACCESS_KEY_ID, SECRET_ACCESS_KEY, SESSION_TOKEN,
};

/// The role alias the fake serves.
pub const ROLE_ALIAS: &str = "edge-role-alias";
/// The thing name the fake expects.
pub const THING_NAME: &str = "edge-thing-0001";

/// How the fake answers.
#[derive(Debug, Clone, PartialEq)]
pub enum IotMode {
    /// Hand out credentials.
    Ok,
    /// Answer with this status and message.
    Status(u16, &'static str),
    /// Close the connection after the request.
    Reset,
    /// Never answer.
    Hang,
}

/// One request that reached HTTP (a rejected handshake never does).
#[derive(Debug, Clone)]
pub struct IotCall {
    /// SNI the client sent.
    pub sni: Option<String>,
    /// Request path.
    pub path: String,
    /// `x-amzn-iot-thingname`.
    pub thing: Option<String>,
    /// The client certificate presented (DER).
    pub client_cert: Option<Vec<u8>>,
}

/// One shadow update the fake accepted or refused.
#[derive(Debug, Clone)]
pub struct ShadowUpdate {
    /// Request path and query.
    pub path: String,
    /// The JSON body.
    pub body: Vec<u8>,
    /// The ALPN protocol agreed, if any.
    pub alpn: Option<Vec<u8>>,
    /// The client certificate presented (DER).
    pub client_cert: Option<Vec<u8>>,
    /// The status answered.
    pub status: u16,
}

struct State {
    faults: Faults<IotMode>,
    calls: Vec<IotCall>,
    shadow_mode: IotMode,
    shadow: Vec<ShadowUpdate>,
    handshake_failures: u32,
    /// Seconds of life of the credentials handed out.
    life: i64,
}

/// The fake provider, listening on `localhost:<port>`.
pub struct FakeIot {
    /// `localhost:<port>`, for `[iot] endpoint`.
    pub endpoint: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    registry: Arc<Registered>,
    /// What the exchanges moved on the wire.
    pub wire: Arc<Wire>,
}

/// What the account has registered: CA certificates, and device certificates registered
/// without a CA.
#[derive(Debug)]
struct Registered {
    cas: Mutex<Vec<Vec<u8>>>,
    devices: Mutex<Vec<Vec<u8>>>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl Registered {
    /// Whether `cert` is registered, or chains (through `intermediates`) to a registered CA,
    /// every signature verified.
    fn accepts(&self, cert: &[u8], intermediates: &[&[u8]]) -> bool {
        if self.devices.lock().unwrap().iter().any(|d| d == cert) {
            return true;
        }
        let cas = self.cas.lock().unwrap().clone();
        let mut current = cert.to_vec();
        for _ in 0..4 {
            let Some(c) = ecr_edge::internal::cert::parse(&current) else {
                return false;
            };
            let issued_by = |issuer: &[u8]| {
                ecr_edge::internal::cert::parse(issuer)
                    .is_some_and(|i| i.subject == c.issuer && signed_by(&c, i.spki))
            };
            if cas.iter().any(|ca| issued_by(ca)) {
                return true;
            }
            match intermediates.iter().find(|i| issued_by(i)) {
                Some(next) => current = next.to_vec(),
                None => return false,
            }
        }
        false
    }
}

/// Whether `cert`'s signature verifies with the issuer's public key `issuer_spki`.
fn signed_by(cert: &ecr_edge::internal::cert::Certificate<'_>, issuer_spki: &[u8]) -> bool {
    use ring::signature as sig;
    const SHA256_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
    const SHA384_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
    const SHA512_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
    const ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    const ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
    const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let Some(parts) = ecr_edge::internal::cert::spki_parts(issuer_spki) else {
        return false;
    };
    let p256 = parts.curve == Some(P256);
    let alg: &dyn sig::VerificationAlgorithm = match cert.signature_algorithm {
        SHA256_RSA => &sig::RSA_PKCS1_2048_8192_SHA256,
        SHA384_RSA => &sig::RSA_PKCS1_2048_8192_SHA384,
        SHA512_RSA => &sig::RSA_PKCS1_2048_8192_SHA512,
        ECDSA_SHA256 if p256 => &sig::ECDSA_P256_SHA256_ASN1,
        ECDSA_SHA256 => &sig::ECDSA_P384_SHA256_ASN1,
        ECDSA_SHA384 if p256 => &sig::ECDSA_P256_SHA384_ASN1,
        ECDSA_SHA384 => &sig::ECDSA_P384_SHA384_ASN1,
        _ => return false,
    };
    sig::UnparsedPublicKey::new(alg, parts.key)
        .verify(cert.tbs, cert.signature)
        .is_ok()
}

impl rustls::server::danger::ClientCertVerifier for Registered {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let intermediates: Vec<&[u8]> = intermediates.iter().map(|c| c.as_ref()).collect();
        if self.accepts(end_entity, &intermediates) {
            Ok(rustls::server::danger::ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(
            "this fake speaks TLS 1.3 only".into(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        // The proof of possession, checked against the certificate's key whatever its version.
        let spki = ecr_edge::internal::cert::parse(cert)
            .map(|c| c.spki.to_vec())
            .ok_or(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding,
            ))?;
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &rustls::pki_types::SubjectPublicKeyInfoDer::from(spki.as_slice()),
            dss,
            &self.algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A device key kind.
#[derive(Debug, Clone, Copy)]
pub enum KeyKind {
    /// P-256 in PKCS#8.
    EcPkcs8,
    /// P-256 in SEC1 (`BEGIN EC PRIVATE KEY`).
    EcSec1,
    /// RSA 2048 in PKCS#1 (`BEGIN RSA PRIVATE KEY`).
    RsaPkcs1,
}

/// Certificate validity of a device certificate.
#[derive(Debug, Clone, Copy)]
pub enum Validity {
    /// Valid now.
    Current,
    /// Expired in 2021.
    Expired,
    /// Valid from 2099.
    Future,
    /// Valid from 2000 until this time (seconds since the epoch).
    Until(i64),
}

impl FakeIot {
    /// Starts the fake: server certificate for `localhost` from `server_ca`, client
    /// certificates must chain to `device_ca`.
    pub fn start(server_ca: &TestCa, device_ca: &TestCa) -> FakeIot {
        FakeIot::start_named(server_ca, device_ca, "localhost", "127.0.0.1:0")
    }

    /// [`FakeIot::start`] presenting a certificate for `name`, listening on `addr`; the
    /// endpoint is `name:port`.
    pub fn start_named(server_ca: &TestCa, device_ca: &TestCa, name: &str, addr: &str) -> FakeIot {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let registry = Arc::new(Registered {
            cas: Mutex::new(vec![device_ca.der().to_vec()]),
            devices: Mutex::new(Vec::new()),
            algorithms: provider.signature_verification_algorithms,
        });
        let (chain, key) = server_ca.issue(name);
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(registry.clone())
            .with_single_cert(chain, key)
            .unwrap();
        // AWS IoT's port 443 protocol for HTTPS with a client certificate; a client that offers
        // no ALPN (the credentials exchange) is served without.
        config.alpn_protocols = vec![b"x-amzn-http-ca".to_vec()];
        let config = Arc::new(config);
        let listener = TcpListener::bind(addr).unwrap();
        let endpoint = format!("{name}:{}", listener.local_addr().unwrap().port());
        let state = Arc::new(Mutex::new(State {
            faults: Faults::new(IotMode::Ok),
            calls: Vec::new(),
            shadow_mode: IotMode::Ok,
            shadow: Vec::new(),
            handshake_failures: 0,
            life: 3600,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let wire = Arc::new(Wire::default());
        let (st, sp, w) = (state.clone(), stop.clone(), wire.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (st, sp, config, wire) = (st.clone(), sp.clone(), config.clone(), w.clone());
                thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                    let mut conn = Metered::new(conn, wire);
                    let mut tls = rustls::ServerConnection::new(config).unwrap();
                    while tls.is_handshaking() {
                        if tls.complete_io(&mut conn).is_err() {
                            st.lock().unwrap().handshake_failures += 1;
                            return;
                        }
                    }
                    let sni = tls.server_name().map(str::to_owned);
                    let client_cert = tls
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| c.to_vec());
                    let alpn = tls.alpn_protocol().map(<[u8]>::to_vec);
                    let mut stream = rustls::Stream::new(&mut tls, &mut conn);
                    let mut reader = BufReader::new(&mut stream);
                    let Ok((line, headers)) = read_head(&mut reader) else {
                        st.lock().unwrap().handshake_failures += 1;
                        return;
                    };
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                    let (status, body) = if line.starts_with("POST /things/") {
                        let length = headers
                            .iter()
                            .find(|(k, _)| k == "content-length")
                            .and_then(|(_, v)| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        let mut body = vec![0; length.min(1 << 20)];
                        if std::io::Read::read_exact(&mut reader, &mut body).is_err() {
                            return;
                        }
                        shadow_answer(&st, &path, &body, alpn, client_cert)
                    } else {
                        let thing = headers
                            .iter()
                            .find(|(k, _)| k == "x-amzn-iot-thingname")
                            .map(|(_, v)| v.clone());
                        let (mode, life) = {
                            let mut s = st.lock().unwrap();
                            s.calls.push(IotCall {
                                sni,
                                path: path.clone(),
                                thing: thing.clone(),
                                client_cert,
                            });
                            (s.faults.take(IotMode::Ok), s.life)
                        };
                        match mode {
                            IotMode::Reset => return,
                            IotMode::Hang => return hang(&sp),
                            IotMode::Status(code, msg) => {
                                (code, format!(r#"{{"message":"{msg}"}}"#))
                            }
                            IotMode::Ok
                                if path != format!("/role-aliases/{ROLE_ALIAS}/credentials") =>
                            {
                                (404, r#"{"message":"Role alias does not exist"}"#.into())
                            }
                            IotMode::Ok if thing.as_deref() != Some(THING_NAME) => {
                                (403, r#"{"message":"Invalid thing name passed"}"#.into())
                            }
                            IotMode::Ok => (200, success_body(life)),
                        }
                    };
                    drop(reader);
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes());
                    let _ = stream.flush();
                    stream.conn.send_close_notify();
                    let _ = stream.flush();
                    let _ = std::io::copy(&mut conn, &mut std::io::sink());
                });
            }
        });
        FakeIot {
            endpoint,
            state,
            stop,
            registry,
            wire,
        }
    }

    /// Registers a CA certificate (PEM or DER): device certificates it signed are accepted.
    pub fn register_ca(&self, cert: &[u8]) {
        self.registry.cas.lock().unwrap().push(der_of(cert));
    }

    /// Registers a device certificate without a CA (PEM or DER).
    pub fn register_device(&self, cert: &[u8]) {
        self.registry.devices.lock().unwrap().push(der_of(cert));
    }

    /// Hands out credentials that expire `secs` seconds after each exchange.
    pub fn set_credentials_life(&self, secs: i64) {
        self.state.lock().unwrap().life = secs;
    }

    /// Answers every request with `mode`.
    pub fn set_mode(&self, mode: IotMode) {
        self.state.lock().unwrap().faults.always(mode);
    }

    /// Answers the next `n` requests with `mode`, then normally.
    pub fn fail_next(&self, n: u32, mode: IotMode) {
        self.state.lock().unwrap().faults.next_n(n, mode);
    }

    /// Requests that reached HTTP.
    pub fn calls(&self) -> Vec<IotCall> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Answers shadow updates with `mode` (`Ok`: accepted).
    pub fn set_shadow_mode(&self, mode: IotMode) {
        self.state.lock().unwrap().shadow_mode = mode;
    }

    /// The shadow updates that reached HTTP.
    pub fn shadow_updates(&self) -> Vec<ShadowUpdate> {
        self.state.lock().unwrap().shadow.clone()
    }

    /// Connections whose TLS handshake (client certificate) failed.
    pub fn handshake_failures(&self) -> u32 {
        self.state.lock().unwrap().handshake_failures
    }
}

impl Drop for FakeIot {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The Device Shadow service's answer to an update of `path` with `body`: the thing must be
/// [`THING_NAME`] (the policy a real account would have allows only its own shadow), the body
/// a `{"state":{"reported":{…}}}` document; the answer echoes it with a version.
fn shadow_answer(
    st: &Mutex<State>,
    path: &str,
    body: &[u8],
    alpn: Option<Vec<u8>>,
    client_cert: Option<Vec<u8>>,
) -> (u16, String) {
    let mut s = st.lock().unwrap();
    let thing = path
        .strip_prefix("/things/")
        .and_then(|p| p.split_once("/shadow"))
        .map(|(t, _)| t.to_owned());
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let reported = parsed
        .as_ref()
        .and_then(|v| v.get("state"))
        .and_then(|v| v.get("reported"))
        .cloned();
    let (status, answer) = match (&s.shadow_mode, thing.as_deref(), reported) {
        (IotMode::Status(code, msg), _, _) => {
            (*code, format!(r#"{{"code":{code},"message":"{msg}"}}"#))
        }
        (_, Some(t), _) if t != THING_NAME => {
            (403, r#"{"code":403,"message":"Forbidden"}"#.to_owned())
        }
        (_, _, None) => (
            400,
            r#"{"code":400,"message":"Missing required node: state"}"#.to_owned(),
        ),
        (_, _, Some(reported)) => {
            let version = s.shadow.iter().filter(|u| u.status == 200).count() + 1;
            (
                200,
                serde_json::json!({
                    "state": {"reported": reported},
                    "metadata": {},
                    "version": version,
                    "timestamp": ecr_edge_now(),
                })
                .to_string(),
            )
        }
    };
    s.shadow.push(ShadowUpdate {
        path: path.to_owned(),
        body: body.to_vec(),
        alpn,
        client_cert,
        status,
    });
    (status, answer)
}

fn success_body(life: i64) -> String {
    let expiration = aws_smithy_types::DateTime::from_secs(ecr_edge_now() + life)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap();
    format!(
        r#"{{"credentials":{{"accessKeyId":"{ACCESS_KEY_ID}","secretAccessKey":"{SECRET_ACCESS_KEY}","sessionToken":"{SESSION_TOKEN}","expiration":"{expiration}"}}}}"#
    )
}

fn ecr_edge_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes a device certificate (signed by `ca`) and key into `dir`; returns (cert, key) paths.
/// The key file is mode 0600.
pub fn device_identity(
    dir: &Path,
    ca: &TestCa,
    kind: KeyKind,
    validity: Validity,
) -> (PathBuf, PathBuf) {
    let cert_path = dir.join("device.pem.crt");
    let key_path = dir.join("private.pem.key");
    let pkcs8_path = dir.join("key.pkcs8.pem");
    let key_pair = match kind {
        KeyKind::EcPkcs8 | KeyKind::EcSec1 => {
            let k = rcgen::KeyPair::generate().unwrap();
            std::fs::write(&pkcs8_path, k.serialize_pem()).unwrap();
            k
        }
        KeyKind::RsaPkcs1 => {
            openssl(&[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                pkcs8_path.to_str().unwrap(),
            ]);
            rcgen::KeyPair::from_pem(&std::fs::read_to_string(&pkcs8_path).unwrap()).unwrap()
        }
    };
    match kind {
        KeyKind::EcPkcs8 => std::fs::copy(&pkcs8_path, &key_path).map(|_| ()).unwrap(),
        KeyKind::EcSec1 => openssl(&[
            "ec",
            "-in",
            pkcs8_path.to_str().unwrap(),
            "-out",
            key_path.to_str().unwrap(),
        ]),
        KeyKind::RsaPkcs1 => openssl(&[
            "rsa",
            "-in",
            pkcs8_path.to_str().unwrap(),
            "-traditional",
            "-out",
            key_path.to_str().unwrap(),
        ]),
    }
    std::fs::remove_file(&pkcs8_path).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "AWS IoT Certificate");
    match validity {
        Validity::Current => {}
        Validity::Expired => {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        Validity::Future => {
            params.not_before = rcgen::date_time_ymd(2099, 1, 1);
            params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        }
        Validity::Until(secs) => {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = time::OffsetDateTime::from_unix_timestamp(secs).unwrap();
        }
    }
    let cert = ca.sign(&params, &key_pair);
    std::fs::write(&cert_path, pem("CERTIFICATE", &cert)).unwrap();
    (cert_path, key_path)
}

/// The first certificate of a PEM text, or `bytes` themselves when they are DER already.
pub fn der_of(bytes: &[u8]) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    match CertificateDer::pem_slice_iter(bytes).next() {
        Some(Ok(c)) => c.to_vec(),
        _ => bytes.to_vec(),
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = aws_smithy_types::base64::encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl TestCa {
    /// The CA certificate, DER.
    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// Signs a certificate with `params` for `key`; returns DER.
    pub fn sign(&self, params: &rcgen::CertificateParams, key: &rcgen::KeyPair) -> Vec<u8> {
        params.signed_by(key, &self.issuer).unwrap().der().to_vec()
    }

    /// Signs a certificate with `params` for a public key whose private half rcgen never
    /// sees (a TPM's); returns DER.
    pub fn sign_public(
        &self,
        params: &rcgen::CertificateParams,
        key: &impl rcgen::PublicKeyData,
    ) -> Vec<u8> {
        params.signed_by(key, &self.issuer).unwrap().der().to_vec()
    }

    /// A server certificate chain and key for `name`.
    pub fn issue(&self, name: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        if let Some((from, until)) = *self.server_validity.lock().unwrap() {
            params.not_before = time::OffsetDateTime::from_unix_timestamp(from).unwrap();
            params.not_after = time::OffsetDateTime::from_unix_timestamp(until).unwrap();
        }
        let cert = self.sign(&params, &key);
        (
            vec![CertificateDer::from(cert)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}

/// A device identity in `sb`: the fake IoT provider (its server certificate from `sb`'s CA, the
/// device's from a CA of its own), an EC key and certificate in `sb`'s folder, the AWS keys
/// taken out of the environment, and the `[iot]` section naming them all.
pub fn device(sb: &mut super::Sandbox) -> (FakeIot, String) {
    device_at(sb, None)
}

/// [`device`], with the fake provider answering as `name` on `addr` when given (`(name,
/// addr)`, for clients that reach it through a name mapped in their own `/etc/hosts`).
pub fn device_at(sb: &mut super::Sandbox, at: Option<(&str, &str)>) -> (FakeIot, String) {
    let device_ca = TestCa::new();
    let iot = match at {
        Some((name, addr)) => FakeIot::start_named(&sb.ca, &device_ca, name, addr),
        None => FakeIot::start(&sb.ca, &device_ca),
    };
    let (cert, key) = device_identity(
        sb.dir.path(),
        &device_ca,
        KeyKind::EcPkcs8,
        Validity::Current,
    );
    sb.without_aws_keys();
    let config = format!(
        "[iot]\nendpoint = \"{}\"\nrole_alias = \"{ROLE_ALIAS}\"\nthing_name = \"{THING_NAME}\"\n\
         cert = \"{}\"\nkey = \"{}\"\n\n",
        iot.endpoint,
        cert.display(),
        key.display()
    );
    (iot, config)
}
