//! A fake AWS IoT credentials provider over real mutual TLS, and device identities to use it.
//!
//! Like the real endpoint it requires a client certificate chaining to the device CA (the
//! handshake fails without one), serves `GET /role-aliases/<alias>/credentials`, checks the
//! `x-amzn-iot-thingname` header, and answers in the provider's JSON. The credentials it hands
//! out are the ones the fake ECR verifies signatures with, so an end-to-end `get` proves the ECR
//! call was signed with the exchanged key and session token.

use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{hang, read_head, Faults, TestCa, ACCESS_KEY_ID, SECRET_ACCESS_KEY, SESSION_TOKEN};

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
}

struct State {
    faults: Faults<IotMode>,
    calls: Vec<IotCall>,
    handshake_failures: u32,
}

/// The fake provider, listening on `localhost:<port>`.
pub struct FakeIot {
    /// `localhost:<port>`, for `[iot] endpoint`.
    pub endpoint: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
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
        let mut roots = rustls::RootCertStore::empty();
        roots.add(device_ca.der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let (chain, key) = server_ca.issue(name);
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
                .unwrap(),
        );
        let listener = TcpListener::bind(addr).unwrap();
        let endpoint = format!("{name}:{}", listener.local_addr().unwrap().port());
        let state = Arc::new(Mutex::new(State {
            faults: Faults::new(IotMode::Ok),
            calls: Vec::new(),
            handshake_failures: 0,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let (st, sp, config) = (st.clone(), sp.clone(), config.clone());
                thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                    let mut tls = rustls::ServerConnection::new(config).unwrap();
                    while tls.is_handshaking() {
                        if tls.complete_io(&mut conn).is_err() {
                            st.lock().unwrap().handshake_failures += 1;
                            return;
                        }
                    }
                    let sni = tls.server_name().map(str::to_owned);
                    let mut stream = rustls::Stream::new(&mut tls, &mut conn);
                    let Ok((line, headers)) = read_head(&mut BufReader::new(&mut stream)) else {
                        st.lock().unwrap().handshake_failures += 1;
                        return;
                    };
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                    let thing = headers
                        .iter()
                        .find(|(k, _)| k == "x-amzn-iot-thingname")
                        .map(|(_, v)| v.clone());
                    let mode = {
                        let mut s = st.lock().unwrap();
                        s.calls.push(IotCall {
                            sni,
                            path: path.clone(),
                            thing: thing.clone(),
                        });
                        s.faults.take(IotMode::Ok)
                    };
                    let (status, body) = match mode {
                        IotMode::Reset => return,
                        IotMode::Hang => return hang(&sp),
                        IotMode::Status(code, msg) => (code, format!(r#"{{"message":"{msg}"}}"#)),
                        IotMode::Ok
                            if path != format!("/role-aliases/{ROLE_ALIAS}/credentials") =>
                        {
                            (404, r#"{"message":"Role alias does not exist"}"#.into())
                        }
                        IotMode::Ok if thing.as_deref() != Some(THING_NAME) => {
                            (403, r#"{"message":"Invalid thing name passed"}"#.into())
                        }
                        IotMode::Ok => (200, success_body()),
                    };
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes());
                    let _ = stream.flush();
                    stream.conn.send_close_notify();
                    let _ = stream.flush();
                });
            }
        });
        FakeIot {
            endpoint,
            state,
            stop,
        }
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

fn success_body() -> String {
    let expiration = aws_smithy_types::DateTime::from_secs(ecr_edge_now() + 3600)
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
    }
    let cert = ca.sign(&params, &key_pair);
    std::fs::write(&cert_path, pem("CERTIFICATE", &cert)).unwrap();
    (cert_path, key_path)
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

    /// A server certificate chain and key for `name`.
    pub fn issue(&self, name: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        let cert = self.sign(&params, &key);
        (
            vec![CertificateDer::from(cert)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}
