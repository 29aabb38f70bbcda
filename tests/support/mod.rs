//! Shared test fixtures: a test CA, a fake ECR behind a real HTTPS proxy, and a command builder
//! that runs the real binary with a sealed environment.
//!
//! The fake is reached the way a device behind a corporate proxy reaches AWS: the helper gets
//! `HTTPS_PROXY=http://127.0.0.1:<port>` and sends `CONNECT api.ecr.<region>.amazonaws.com:443`.
//! The fake records that host (so tests see which endpoint the helper chose for each registry
//! form), answers the tunnel with TLS under a certificate for that very name from the test CA
//! (trusted through `SSL_CERT_FILE`), and then checks what ECR checks: the SigV4 signature over
//! the signed headers and body, the access key, the session token, the clock, the target.
//! Nothing leaves loopback.

#![allow(dead_code)]

pub mod iot;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ring::hmac;

/// Credentials the fake accepts.
pub const ACCESS_KEY_ID: &str = "ASIATESTKEYID0000001";
/// The secret the fake verifies signatures with. Tests assert it never appears in output.
pub const SECRET_ACCESS_KEY: &str = "tEsTsEcReT/0123456789abcdefghijklmnopqrstu";
/// The session token the fake requires.
pub const SESSION_TOKEN: &str = "FwoGZXIvYXdzEXAMPLESESSIONTOKEN/xyz==";

/// Credentials the fake STS hands out for `AssumeRole`; the fake ECR accepts them too.
pub const ROLE_ACCESS_KEY_ID: &str = "ASIAASSUMEDROLE00001";
/// Secret of the assumed-role credentials.
pub const ROLE_SECRET_ACCESS_KEY: &str = "r0leSeCrEt/abcdefghijklmnopqrstuvwxyz0123";
/// Session token of the assumed-role credentials.
pub const ROLE_SESSION_TOKEN: &str = "FwoGZXIvYXdzROLESESSIONTOKEN/abc==";

/// A throwaway certificate authority.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
    /// One server configuration per host name, kept like a real endpoint keeps its own: its
    /// session cache lets a client resume a TLS session on its next connection.
    servers: Mutex<HashMap<String, Arc<rustls::ServerConfig>>>,
    /// Whether new server configurations offer session resumption (tickets and a session
    /// cache), as AWS endpoints can; off, for a before/after comparison.
    resumption: AtomicBool,
}

/// What a fake endpoint moved on the wire, counted under TLS (handshakes included), as the
/// client's own counters should see it.
#[derive(Debug, Default)]
pub struct Wire {
    /// Bytes the fake read from clients.
    pub from_clients: AtomicU64,
    /// Bytes the fake wrote to clients.
    pub to_clients: AtomicU64,
    /// Connections (TLS handshakes started).
    pub connections: AtomicU64,
}

impl Wire {
    /// (read from clients, written to clients, connections).
    pub fn totals(&self) -> (u64, u64, u64) {
        (
            self.from_clients.load(Ordering::SeqCst),
            self.to_clients.load(Ordering::SeqCst),
            self.connections.load(Ordering::SeqCst),
        )
    }
}

/// A server's side of a connection, its bytes counted in a [`Wire`].
pub struct Metered<S> {
    inner: S,
    wire: Arc<Wire>,
}

impl<S> Metered<S> {
    /// Counts `inner` (one more connection) in `wire`.
    pub fn new(inner: S, wire: Arc<Wire>) -> Metered<S> {
        wire.connections.fetch_add(1, Ordering::SeqCst);
        Metered { inner, wire }
    }
}

impl<S: Read> Read for Metered<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.wire.from_clients.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }
}

impl<S: Write> Write for Metered<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.wire.to_clients.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl TestCa {
    /// Makes a new CA.
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ecr-edge test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).unwrap();
        let pem = issuer.pem();
        TestCa {
            issuer,
            pem,
            servers: Mutex::new(HashMap::new()),
            resumption: AtomicBool::new(true),
        }
    }

    /// A certificate for `name` signed by this CA and its private key, both PEM (for servers
    /// that read files, such as the registry).
    pub fn issue_pem(&self, name: &str) -> (String, String) {
        self.issue_pem_for(&[name])
    }

    /// [`TestCa::issue_pem`] for a certificate valid for every one of `names`.
    pub fn issue_pem_for(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let der = self.sign(&params, &key);
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            aws_smithy_types::base64::encode(&der)
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect::<Vec<_>>()
                .join("\n")
        );
        (pem, key.serialize_pem())
    }

    /// Whether the endpoints this CA serves offer session resumption from now on (new
    /// configurations; existing sessions are forgotten).
    pub fn set_resumption(&self, on: bool) {
        self.resumption.store(on, Ordering::SeqCst);
        self.servers.lock().unwrap().clear();
    }

    /// A TLS server configuration presenting a certificate for `name` signed by this CA.
    /// The same configuration (certificate and session cache) every time for one `name`.
    pub fn server_config(&self, name: &str) -> Arc<rustls::ServerConfig> {
        let mut servers = self.servers.lock().unwrap();
        if let Some(config) = servers.get(name) {
            return config.clone();
        }
        let (chain, key) = self.issue(name);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        if !self.resumption.load(Ordering::SeqCst) {
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        }
        let config = Arc::new(config);
        servers.insert(name.to_owned(), config.clone());
        config
    }
}

/// Which answer a fake gives next: `mode` always, or `mode` for the next `remaining` requests
/// and normal answers after that.
pub struct Faults<M> {
    mode: M,
    remaining: Option<u32>,
}

impl<M: Clone> Faults<M> {
    fn new(mode: M) -> Faults<M> {
        Faults {
            mode,
            remaining: None,
        }
    }

    /// Answers every request with `mode`.
    fn always(&mut self, mode: M) {
        self.mode = mode;
        self.remaining = None;
    }

    /// Answers the next `n` requests with `mode`.
    fn next_n(&mut self, n: u32, mode: M) {
        self.mode = mode;
        self.remaining = Some(n);
    }

    /// The mode for this request; `normal` once the scheduled failures are used up.
    fn take(&mut self, normal: M) -> M {
        match self.remaining {
            Some(0) => normal,
            Some(n) => {
                self.remaining = Some(n - 1);
                self.mode.clone()
            }
            None => self.mode.clone(),
        }
    }
}

/// Holds a connection open without answering until `stop` is set (at most 60 s).
fn hang(stop: &AtomicBool) {
    for _ in 0..600 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// How the fake answers the next requests.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// Issue tokens.
    Ok,
    /// `500 ServerException`.
    ServerError,
    /// `400 ThrottlingException`.
    Throttle,
    /// Close the connection without answering.
    Reset,
    /// Never answer (until the fake is dropped).
    Hang,
    /// Answer after this delay.
    Slow(Duration),
    /// `400 AccessDeniedException`.
    AccessDenied,
    /// Issue a token that has already expired.
    IssueExpired,
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Call {
    /// The host named in the proxy CONNECT (the endpoint the client chose).
    pub connect_host: String,
    /// `X-Amz-Target`.
    pub target: String,
    /// Region in the signature's credential scope.
    pub region: String,
    /// Service in the signature's credential scope.
    pub service: String,
    /// The access key ID that signed the request.
    pub access_key: String,
    /// Whether the signature, key, token and clock checks all passed.
    pub authentic: bool,
    /// Whether the TLS handshake resumed an earlier session (no certificate chain sent).
    pub resumed: bool,
    /// For STS: the `Action` and `RoleArn` of the form body.
    pub sts: Option<(String, String)>,
    /// For STS: the `ExternalId` sent, if any.
    pub form_external_id: Option<String>,
    /// For STS: the `WebIdentityToken` sent, if any (never printed).
    form_web_identity_token: Option<String>,
}

/// A role of the fake's key table: assuming it (`AssumeRole` from a trusted key with the right
/// external ID, or `AssumeRoleWithWebIdentity` with its token) gives keys of its own, and ECR
/// answers a call signed with those keys with the role's own password.
#[derive(Debug, Clone)]
pub struct FakeRole {
    /// The role ARN.
    pub arn: String,
    /// The access key ID of its credentials.
    pub key_id: String,
    secret: String,
    session_token: String,
    /// The `sts:ExternalId` its trust policy requires.
    external_id: Option<String>,
    /// Access key IDs allowed to assume it (empty: any key the fake knows).
    trusted: Vec<String>,
    /// The service-account token `AssumeRoleWithWebIdentity` accepts.
    web_identity_token: Option<String>,
    /// The ECR password tokens obtained with its keys carry.
    pub password: String,
}

/// Long-term keys the fake knows (an AWS profile's), with their own ECR password.
#[derive(Debug, Clone)]
struct StaticKey {
    key_id: String,
    secret: String,
    password: String,
}

struct State {
    faults: Faults<Mode>,
    calls: Vec<Call>,
    /// CONNECT targets tunnelled through to another local fake.
    tunnels: Vec<String>,
    password: String,
    lifetime_secs: f64,
    secret: String,
    session_token: Option<String>,
    clock_offset_secs: i64,
    roles: Vec<FakeRole>,
    static_keys: Vec<StaticKey>,
    /// Per host: the bytes its connections moved.
    wires: HashMap<String, Arc<Wire>>,
}

impl State {
    fn wire(&mut self, host: &str) -> Arc<Wire> {
        self.wires.entry(host.to_owned()).or_default().clone()
    }
}

/// A fake ECR (private and public) reached through an HTTPS proxy on 127.0.0.1.
pub struct FakeEcr {
    /// The proxy's address, for `HTTPS_PROXY`.
    pub proxy_url: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl FakeEcr {
    /// Starts the fake with `ca` signing its per-host certificates.
    pub fn start(ca: Arc<TestCa>) -> FakeEcr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy_url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            faults: Faults::new(Mode::Ok),
            calls: Vec::new(),
            tunnels: Vec::new(),
            password: "fake-ecr-password-0001".into(),
            lifetime_secs: 43_200.0,
            secret: SECRET_ACCESS_KEY.into(),
            session_token: Some(SESSION_TOKEN.into()),
            clock_offset_secs: 0,
            roles: Vec::new(),
            static_keys: Vec::new(),
            wires: HashMap::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (st, sp, ca) = (st.clone(), sp.clone(), ca.clone());
                thread::spawn(move || {
                    let _ = handle(conn, &st, &sp, &ca);
                });
            }
        });
        FakeEcr {
            proxy_url,
            state,
            stop,
        }
    }

    /// Also answers TLS connections on `addr` directly, as the real endpoint `host` (for tests
    /// whose clients resolve AWS names to loopback instead of using the proxy); returns the
    /// port (`addr` may ask for any with port 0).
    pub fn listen_direct(&self, addr: &str, host: &str, ca: Arc<TestCa>) -> u16 {
        let listener = TcpListener::bind(addr).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (st, sp, host) = (self.state.clone(), self.stop.clone(), host.to_owned());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (st, sp, ca, host) = (st.clone(), sp.clone(), ca.clone(), host.clone());
                thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                    let _ = serve_tls(conn, &host, &st, &sp, &ca);
                });
            }
        });
        port
    }

    /// What the connections to `host` moved so far: (read from clients, written to clients,
    /// connections).
    pub fn wire(&self, host: &str) -> (u64, u64, u64) {
        self.state.lock().unwrap().wire(host).totals()
    }

    /// Every host's wire so far, as [`FakeEcr::wire`] gives them.
    pub fn wires(&self) -> Vec<(String, (u64, u64, u64))> {
        let s = self.state.lock().unwrap();
        s.wires
            .iter()
            .map(|(h, w)| (h.clone(), w.totals()))
            .collect()
    }

    /// Answers every request with `mode` from now on.
    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().faults.always(mode);
    }

    /// Answers the next `n` requests with `mode`, then issues tokens again.
    pub fn fail_next(&self, n: u32, mode: Mode) {
        self.state.lock().unwrap().faults.next_n(n, mode);
    }

    /// The password the next tokens carry.
    pub fn set_password(&self, pw: &str) {
        self.state.lock().unwrap().password = pw.into();
    }

    /// How long the next tokens are valid, in seconds.
    pub fn set_lifetime(&self, secs: f64) {
        self.state.lock().unwrap().lifetime_secs = secs;
    }

    /// The password tokens currently carry.
    pub fn password(&self) -> String {
        self.state.lock().unwrap().password.clone()
    }

    /// Shifts the fake's clock (to simulate a device whose clock is off).
    pub fn set_clock_offset(&self, secs: i64) {
        self.state.lock().unwrap().clock_offset_secs = secs;
    }

    /// CONNECT targets the proxy tunnelled to other local fakes.
    pub fn tunnels(&self) -> Vec<String> {
        self.state.lock().unwrap().tunnels.clone()
    }

    /// Adds a role to the key table: `AssumeRole` succeeds for callers signing with a key in
    /// `trusted` (empty: any known key) and, when `external_id` is set, only with that ID.
    pub fn add_role(&self, arn: &str, external_id: Option<&str>, trusted: &[&str]) -> FakeRole {
        self.push_role(arn, external_id, trusted, None)
    }

    /// Adds a role that `AssumeRoleWithWebIdentity` with `token` assumes.
    pub fn add_web_identity_role(&self, arn: &str, token: &str) -> FakeRole {
        self.push_role(arn, None, &["-"], Some(token))
    }

    fn push_role(
        &self,
        arn: &str,
        external_id: Option<&str>,
        trusted: &[&str],
        web_identity_token: Option<&str>,
    ) -> FakeRole {
        let mut s = self.state.lock().unwrap();
        let n = s.roles.len() + 1;
        let role = FakeRole {
            arn: arn.into(),
            key_id: format!("ASIAROLE{n:012}"),
            secret: format!("role-secret-{n}/abcdefghijklmnopqrstuvwxyz"),
            session_token: format!("FwoGZXIvROLE{n}SESSIONTOKEN=="),
            external_id: external_id.map(str::to_owned),
            trusted: trusted.iter().map(|t| t.to_string()).collect(),
            web_identity_token: web_identity_token.map(str::to_owned),
            password: format!("password-of-role-{n}"),
        };
        s.roles.push(role.clone());
        role
    }

    /// The environment of a process holding this role's session credentials
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), as another
    /// principal's shell would have them.
    pub fn session_env(role: &FakeRole) -> [(&'static str, String); 3] {
        [
            ("AWS_ACCESS_KEY_ID", role.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", role.secret.clone()),
            ("AWS_SESSION_TOKEN", role.session_token.clone()),
        ]
    }

    /// Adds long-term keys (for an AWS profile); returns the ECR password their tokens carry.
    pub fn add_static_key(&self, key_id: &str, secret: &str) -> String {
        let mut s = self.state.lock().unwrap();
        let password = format!("password-of-key-{key_id}");
        s.static_keys.push(StaticKey {
            key_id: key_id.into(),
            secret: secret.into(),
            password: password.clone(),
        });
        password
    }

    /// Every request received so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }
}

impl Drop for FakeEcr {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads an HTTP/1.1 head (request line and headers) from `r`.
fn read_head(r: &mut impl BufRead) -> std::io::Result<(String, Vec<(String, String)>)> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let request_line = line.trim_end().to_owned();
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            break;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    Ok((request_line, headers))
}

fn handle(
    conn: TcpStream,
    state: &Mutex<State>,
    stop: &AtomicBool,
    ca: &TestCa,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let (request_line, _) = read_head(&mut reader)?;
    let mut parts = request_line.split_whitespace();
    if parts.next() != Some("CONNECT") {
        let mut c = conn;
        c.write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")?;
        return Ok(());
    }
    let target = parts.next().unwrap_or("").to_owned();
    let host = target
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(&target)
        .to_owned();
    let mut raw = conn;
    if host == "localhost" {
        // Another fake on this machine (the IoT provider): tunnel to it like a real proxy.
        state.lock().unwrap().tunnels.push(target.clone());
        let upstream = TcpStream::connect(&target)?;
        raw.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
        return splice(raw, upstream);
    }
    raw.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
    serve_tls(raw, &host, state, stop, ca)
}

/// One TLS connection for `host`, answered as ECR would.
fn serve_tls(
    raw: TcpStream,
    host: &str,
    state: &Mutex<State>,
    stop: &AtomicBool,
    ca: &TestCa,
) -> std::io::Result<()> {
    let mut raw = Metered::new(raw, state.lock().unwrap().wire(host));
    let mut tls =
        rustls::ServerConnection::new(ca.server_config(host)).map_err(std::io::Error::other)?;
    let mut stream = rustls::Stream::new(&mut tls, &mut raw);
    let mut reader = BufReader::new(&mut stream);
    let (request_line, headers) = read_head(&mut reader)?;
    let resumed = reader.get_ref().conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let len: usize = header(&headers, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len.min(1 << 20)];
    reader.read_exact(&mut body)?;
    drop(reader);

    let (mode, response) = {
        let mut s = state.lock().unwrap();
        let mode = s.faults.take(Mode::Ok);
        let (mut call, denial) = verify(host, &request_line, &headers, &body, &s);
        call.resumed = resumed;
        s.calls.push(call.clone());
        let response = match denial {
            Some(resp) => resp,
            None => respond(&mode, &call, &s),
        };
        (mode, with_date(response, s.clock_offset_secs))
    };
    match mode {
        Mode::Reset => return Ok(()),
        Mode::Hang => {
            hang(stop);
            return Ok(());
        }
        Mode::Slow(d) => thread::sleep(d),
        _ => {}
    }
    stream.write_all(&response)?;
    stream.flush()?;
    stream.conn.send_close_notify();
    let _ = stream.flush();
    // Until the client closes too (its close_notify counted, as a real endpoint reads it).
    let _ = std::io::copy(&mut raw, &mut std::io::sink());
    Ok(())
}

/// Adds a `Date` header (the fake's clock, offset as set) after the status line.
fn with_date(response: Vec<u8>, offset: i64) -> Vec<u8> {
    let date = aws_smithy_types::DateTime::from_secs(now_secs() as i64 + offset)
        .fmt(aws_smithy_types::date_time::Format::HttpDate)
        .unwrap();
    let at = response.windows(2).position(|w| w == b"\r\n").unwrap_or(0) + 2;
    let mut out = response[..at].to_vec();
    out.extend_from_slice(format!("date: {date}\r\n").as_bytes());
    out.extend_from_slice(&response[at..]);
    out
}

/// Copies bytes both ways between `a` and `b` until either side closes.
fn splice(a: TcpStream, b: TcpStream) -> std::io::Result<()> {
    let (mut a2, mut b2) = (a.try_clone()?, b.try_clone()?);
    let up = thread::spawn(move || {
        let _ = std::io::copy(&mut a2, &mut b2);
        let _ = b2.shutdown(std::net::Shutdown::Write);
    });
    let (mut a, mut b) = (a, b);
    let _ = std::io::copy(&mut b, &mut a);
    let _ = a.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
    Ok(())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

/// Checks a request as ECR would: SigV4 over the signed headers and body with the known secret,
/// the access key, the session token, and the request time against the (possibly offset) clock.
/// Returns the call record and, when a check fails, the error response ECR would send.
fn verify(
    host: &str,
    request_line: &str,
    headers: &[(String, String)],
    body: &[u8],
    s: &State,
) -> (Call, Option<Vec<u8>>) {
    let form = form_params(body);
    let mut call = Call {
        connect_host: host.to_owned(),
        target: header(headers, "x-amz-target").unwrap_or("").to_owned(),
        region: String::new(),
        service: String::new(),
        access_key: String::new(),
        authentic: false,
        resumed: false,
        sts: form
            .get("Action")
            .map(|a| (a.clone(), form.get("RoleArn").cloned().unwrap_or_default())),
        form_external_id: form.get("ExternalId").cloned(),
        form_web_identity_token: form.get("WebIdentityToken").cloned(),
    };
    let deny = |status: u16, code: &str, msg: &str| Some(error_response(status, code, msg));
    if call
        .sts
        .as_ref()
        .is_some_and(|(a, _)| a == "AssumeRoleWithWebIdentity")
        && header(headers, "authorization").is_none()
    {
        // STS takes this one unsigned: the token is the proof.
        call.service = "sts".into();
        call.authentic = true;
        return (call, None);
    }
    let Some(auth) = header(headers, "authorization") else {
        return (
            call,
            deny(
                403,
                "MissingAuthenticationTokenException",
                "Missing Authentication Token",
            ),
        );
    };
    let Some(rest) = auth.strip_prefix("AWS4-HMAC-SHA256 ") else {
        return (
            call,
            deny(403, "IncompleteSignatureException", "bad algorithm"),
        );
    };
    let fields: HashMap<&str, &str> = rest
        .split(',')
        .filter_map(|kv| kv.trim().split_once('='))
        .collect();
    let (Some(credential), Some(signed_headers), Some(signature)) = (
        fields.get("Credential"),
        fields.get("SignedHeaders"),
        fields.get("Signature"),
    ) else {
        return (
            call,
            deny(403, "IncompleteSignatureException", "incomplete"),
        );
    };
    let scope: Vec<&str> = credential.split('/').collect();
    if scope.len() != 5 || scope[4] != "aws4_request" {
        return (call, deny(403, "IncompleteSignatureException", "bad scope"));
    }
    call.region = scope[2].to_owned();
    call.service = scope[3].to_owned();
    call.access_key = scope[0].to_owned();
    let (secret, session_token) = match scope[0] {
        ACCESS_KEY_ID => (s.secret.clone(), s.session_token.clone()),
        ROLE_ACCESS_KEY_ID => (
            ROLE_SECRET_ACCESS_KEY.to_owned(),
            Some(ROLE_SESSION_TOKEN.to_owned()),
        ),
        key => match (
            s.roles.iter().find(|r| r.key_id == key),
            s.static_keys.iter().find(|k| k.key_id == key),
        ) {
            (Some(role), _) => (role.secret.clone(), Some(role.session_token.clone())),
            (None, Some(k)) => (k.secret.clone(), None),
            (None, None) => return (call, invalid_token()),
        },
    };
    if let Some(token) = &session_token {
        if header(headers, "x-amz-security-token") != Some(token.as_str())
            || !signed_headers
                .split(';')
                .any(|h| h == "x-amz-security-token")
        {
            return (call, invalid_token());
        }
    }
    let amz_date = header(headers, "x-amz-date").unwrap_or("");
    // Canonical request, exactly as AWS builds it from the signed headers.
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let uri = parts.next().unwrap_or("/");
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let mut canonical_headers = String::new();
    for name in signed_headers.split(';') {
        let value = headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join(",");
        canonical_headers.push_str(&format!("{name}:{value}\n"));
    }
    let canonical = format!(
        "{method}\n{path}\n{query}\n{canonical_headers}\n{signed_headers}\n{}",
        sha256_hex(body)
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{}\n{}",
        scope[1..].join("/"),
        sha256_hex(canonical.as_bytes())
    );
    let mut key = hmac_sha256(format!("AWS4{secret}").as_bytes(), scope[1].as_bytes());
    for part in &scope[2..] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    if hex(&hmac_sha256(&key, string_to_sign.as_bytes())) != *signature {
        return (
            call,
            deny(
                403,
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided.",
            ),
        );
    }
    // SigV4 allows 15 minutes of skew either way.
    let server_now = now_secs() as i64 + s.clock_offset_secs;
    match parse_amz_date(amz_date) {
        Some(t) if (t - server_now).abs() <= 15 * 60 => {}
        _ => {
            return (call, deny(403, "InvalidSignatureException", &format!(
                "Signature expired: {amz_date} is now earlier than the allowed window (server time differs)"
            )))
        }
    }
    call.authentic = true;
    (call, None)
}

/// ECR's answer to an unknown access key or a wrong or missing session token.
fn invalid_token() -> Option<Vec<u8>> {
    Some(error_response(
        400,
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
    ))
}

/// `20260101T000000Z` -> seconds since the epoch.
fn parse_amz_date(s: &str) -> Option<i64> {
    if s.len() != 16 {
        return None;
    }
    let n = |a: usize, b: usize| s.get(a..b)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (
        n(0, 4)?,
        n(4, 6)?,
        n(6, 8)?,
        n(9, 11)?,
        n(11, 13)?,
        n(13, 15)?,
    );
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (mo + if mo > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + se)
}

fn error_response(status: u16, code: &str, message: &str) -> Vec<u8> {
    let body = format!(r#"{{"__type":"{code}","message":"{message}"}}"#);
    format!(
        "HTTP/1.1 {status} Error\r\ncontent-type: application/x-amz-json-1.1\r\nx-amzn-errortype: {code}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn respond(mode: &Mode, call: &Call, s: &State) -> Vec<u8> {
    match mode {
        Mode::ServerError => return error_response(500, "ServerException", "internal error"),
        Mode::Throttle => return error_response(400, "ThrottlingException", "Rate exceeded"),
        Mode::AccessDenied => {
            return error_response(
                400,
                "AccessDeniedException",
                "User: arn:aws:sts::123456789012:assumed-role/edge/device is not authorized to perform: ecr:GetAuthorizationToken on resource: * because no identity-based policy allows the ecr:GetAuthorizationToken action",
            )
        }
        _ => {}
    }
    if call.service == "sts" {
        return sts(call, s);
    }
    let now = now_secs();
    let expires = if *mode == Mode::IssueExpired {
        now - 60.0
    } else {
        now + s.lifetime_secs
    };
    // Each identity's tokens carry its own password, so a test sees whose token it was given.
    let password = match (
        s.roles.iter().find(|r| r.key_id == call.access_key),
        s.static_keys.iter().find(|k| k.key_id == call.access_key),
    ) {
        (Some(role), _) => role.password.clone(),
        (None, Some(k)) => k.password.clone(),
        (None, None) => s.password.clone(),
    };
    let token = aws_smithy_types::base64::encode(format!("AWS:{password}"));
    let body = if call.target == "SpencerFrontendService.GetAuthorizationToken" {
        format!(
            r#"{{"authorizationData":{{"authorizationToken":"{token}","expiresAt":{expires:.3}}}}}"#
        )
    } else if call.target == "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken" {
        format!(
            r#"{{"authorizationData":[{{"authorizationToken":"{token}","expiresAt":{expires:.3},"proxyEndpoint":"https://123456789012.dkr.ecr.{}.amazonaws.com"}}]}}"#,
            call.region
        )
    } else {
        return error_response(400, "UnknownOperationException", "unknown target");
    };
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The fields of an `application/x-www-form-urlencoded` body.
fn form_params(body: &[u8]) -> HashMap<String, String> {
    let decode = |s: &str| {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                    out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                    i += 2;
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// STS's answer to a call the signature check passed: `AssumeRole` of a role in the key table
/// (trust and external ID checked), `AssumeRoleWithWebIdentity` with the role's token, or for
/// any other role the shared assumed-role keys.
fn sts(call: &Call, s: &State) -> Vec<u8> {
    let (action, arn) = call.sts.clone().unwrap_or_default();
    let denied = |msg: String| sts_error(403, "AccessDenied", &msg);
    let role = s.roles.iter().find(|r| r.arn == arn);
    match (action.as_str(), role) {
        ("AssumeRole", Some(role)) => {
            let form_ext = call.form_external_id.clone();
            let trusted = role.web_identity_token.is_none()
                && (role.trusted.is_empty() || role.trusted.contains(&call.access_key));
            if !trusted || role.external_id != form_ext {
                return denied(format!(
                    "User: arn:aws:sts::123456789012:assumed-role/base/{} is not authorized to perform: sts:AssumeRole on resource: {arn}",
                    call.access_key
                ));
            }
            sts_credentials(
                "AssumeRole",
                &role.key_id,
                &role.secret,
                &role.session_token,
            )
        }
        ("AssumeRoleWithWebIdentity", Some(role)) => {
            if role.web_identity_token.is_none()
                || role.web_identity_token != call.form_web_identity_token
            {
                return sts_error(
                    400,
                    "InvalidIdentityToken",
                    "Couldn't retrieve verification key from your identity provider",
                );
            }
            sts_credentials(
                "AssumeRoleWithWebIdentity",
                &role.key_id,
                &role.secret,
                &role.session_token,
            )
        }
        ("AssumeRoleWithWebIdentity", None) => denied(format!(
            "Not authorized to perform sts:AssumeRoleWithWebIdentity on {arn}"
        )),
        // Any other role: the shared assumed-role keys.
        _ => sts_credentials(
            "AssumeRole",
            ROLE_ACCESS_KEY_ID,
            ROLE_SECRET_ACCESS_KEY,
            ROLE_SESSION_TOKEN,
        ),
    }
}

/// STS's XML error answer.
fn sts_error(status: u16, code: &str, message: &str) -> Vec<u8> {
    let body = format!(
        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type>\
         <Code>{code}</Code><Message>{message}</Message></Error><RequestId>r-1</RequestId></ErrorResponse>"
    );
    format!(
        "HTTP/1.1 {status} Error\r\ncontent-type: text/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A successful `AssumeRole`/`AssumeRoleWithWebIdentity` answer with these keys.
fn sts_credentials(action: &str, key_id: &str, secret: &str, token: &str) -> Vec<u8> {
    let expiration = aws_smithy_types::DateTime::from_secs(now_secs() as i64 + 3600)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap();
    let body = format!(
        "<{action}Response xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><{action}Result>\
         <AssumedRoleUser><AssumedRoleId>AROAEXAMPLE:ecr-edge</AssumedRoleId>\
         <Arn>arn:aws:sts::210987654321:assumed-role/x/ecr-edge</Arn></AssumedRoleUser>\
         <Credentials><AccessKeyId>{key_id}</AccessKeyId>\
         <SecretAccessKey>{secret}</SecretAccessKey>\
         <SessionToken>{token}</SessionToken><Expiration>{expiration}</Expiration>\
         </Credentials></{action}Result><ResponseMetadata><RequestId>r-2</RequestId>\
         </ResponseMetadata></{action}Response>"
    );
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A sealed environment for running the binary against a [`FakeEcr`]: its own HOME, cache,
/// CA bundle, proxy and credentials; nothing from the real user's environment.
pub struct Sandbox {
    /// Temp directory holding home, cache and CA bundle.
    pub dir: tempfile::TempDir,
    /// The CA whose certificates every fake server presents (trusted via `SSL_CERT_FILE`).
    pub ca: Arc<TestCa>,
    /// The fake ECR.
    pub fake: FakeEcr,
    /// Environment given to every command.
    pub vars: Vec<(String, String)>,
    /// Path of `docker-credential-ecr-edge` (a symlink to the binary).
    pub helper: PathBuf,
}

/// The binary under test: `ECR_EDGE_TEST_BIN` (e.g. a cross-built one) or this build's.
pub fn binary() -> PathBuf {
    std::env::var_os("ECR_EDGE_TEST_BIN")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_BIN_EXE_ecr-edge").map(PathBuf::from))
        .expect("set ECR_EDGE_TEST_BIN to the ecr-edge binary")
}

/// Runs the test named `test` (`module::function`) again inside a new network and mount
/// namespace (`unshare --net --mount`, as root) and returns `false` once it passed there;
/// inside that namespace, returns `true` so the test body runs.
pub fn inside_namespace(test: &str) -> bool {
    if std::env::var_os("ECR_EDGE_IN_NETNS").is_some() {
        return true;
    }
    let out = Command::new("unshare")
        .args(["--net", "--mount", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            test,
            "--exact",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ECR_EDGE_IN_NETNS", "1")
        .output()
        .expect("unshare (util-linux) runs this test in its own network namespace");
    let log = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{test} in its namespace:\n{log}");
    assert!(log.contains("1 passed"), "{test} did not run:\n{log}");
    false
}

/// Inside [`inside_namespace`]: loopback up, mounts private, and `contents` bind-mounted over
/// each system file named (`/etc/hosts`, `/etc/resolv.conf`, …) from copies in `dir`.
pub fn private_files(dir: &Path, files: &[(&str, &str)]) {
    let run = |cmd: &str, args: &[&str]| {
        let out = Command::new(cmd).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{cmd} {args:?}: {}",
            text(&out.stderr)
        );
    };
    run("ip", &["link", "set", "lo", "up"]);
    run("mount", &["--make-rprivate", "/"]);
    for (i, (target, contents)) in files.iter().enumerate() {
        let copy = dir.join(format!("private-file-{i}"));
        std::fs::write(&copy, contents).unwrap();
        run("mount", &["--bind", copy.to_str().unwrap(), target]);
    }
}

/// A command for `program`, through `ECR_EDGE_TEST_RUNNER` (e.g. `qemu-aarch64-static`) if set.
pub fn command(program: &Path) -> Command {
    match std::env::var_os("ECR_EDGE_TEST_RUNNER").filter(|r| !r.is_empty()) {
        Some(runner) => {
            let mut c = Command::new(runner);
            c.arg(program);
            c
        }
        None => Command::new(program),
    }
}

impl Sandbox {
    /// A sandbox with its own CA and fake.
    pub fn new() -> Sandbox {
        let ca = Arc::new(TestCa::new());
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca.pem).unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        for empty in ["aws-config", "aws-credentials"] {
            std::fs::write(dir.path().join(empty), b"").unwrap();
        }
        // ECR_EDGE_TEST_HELPER: an installed helper name (a package's own symlink); else a
        // link to the binary under test made here.
        let helper = match std::env::var_os("ECR_EDGE_TEST_HELPER").filter(|h| !h.is_empty()) {
            Some(installed) => PathBuf::from(installed),
            None => {
                let link = dir.path().join("docker-credential-ecr-edge");
                std::os::unix::fs::symlink(binary(), &link).unwrap();
                link
            }
        };
        let fake = FakeEcr::start(ca.clone());
        let p = |s: &Path| s.to_string_lossy().into_owned();
        let vars = vec![
            ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
            ("HOME".into(), p(&home)),
            ("ECR_EDGE_CACHE_DIR".into(), p(&dir.path().join("cache"))),
            // The daemon socket the helper asks first: this sandbox's own (no daemon unless a
            // test starts one), never a daemon running on the test machine.
            ("ECR_EDGE_SOCKET".into(), p(&dir.path().join("agent.sock"))),
            ("SSL_CERT_FILE".into(), p(&ca_file)),
            ("HTTPS_PROXY".into(), fake.proxy_url.clone()),
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_ACCESS_KEY.into()),
            ("AWS_SESSION_TOKEN".into(), SESSION_TOKEN.into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
            ("AWS_CONFIG_FILE".into(), p(&dir.path().join("aws-config"))),
            (
                "AWS_SHARED_CREDENTIALS_FILE".into(),
                p(&dir.path().join("aws-credentials")),
            ),
        ];
        let mut vars = vars;
        if std::env::var_os("ECR_EDGE_TEST_RUNNER").is_some_and(|r| !r.is_empty()) {
            // Emulated, a daemon busy in a TLS handshake can take longer than the default wait
            // for its first reply; the helper would then do the work itself.
            vars.push(("ECR_EDGE_DAEMON_WAIT".into(), "3".into()));
        }
        Sandbox {
            dir,
            ca,
            fake,
            vars,
            helper,
        }
    }

    /// Sets (or with `None`, removes) one variable for later commands.
    pub fn set(&mut self, name: &str, value: Option<&str>) {
        self.vars.retain(|(k, _)| k != name);
        if let Some(v) = value {
            self.vars.push((name.into(), v.into()));
        }
    }

    /// Takes the sandbox's AWS keys out of the environment, so another source must answer.
    pub fn without_aws_keys(&mut self) {
        for v in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
        ] {
            self.set(v, None);
        }
    }

    /// The cache directory the helper uses.
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// `docker-credential-ecr-edge <action>`, ready to spawn, stdin piped.
    pub fn helper_command(&self, action: &str) -> Command {
        self.command_for(&self.helper, action)
    }

    /// `<program> <action>` in this sandbox's environment (the binary under test or another
    /// helper to compare with), stdin, stdout and stderr piped.
    pub fn command_for(&self, program: &Path, action: &str) -> Command {
        let mut c = command(program);
        c.arg(action)
            .env_clear()
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Runs the helper with `input` on stdin.
    pub fn helper(&self, action: &str, input: &[u8]) -> Output {
        run_with_input(self.helper_command(action), input)
    }
}

/// Spawns `cmd`, writes `input`, waits.
pub fn run_with_input(mut cmd: Command, input: &[u8]) -> Output {
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // Write from a thread: a child that refuses early must not deadlock the test on a full pipe.
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    out
}

/// Text of a byte string, for messages.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A running `ecr-edge daemon` of a [`Sandbox`], ready (`READY=1`), stopped on drop (for the
/// benchmarks and the demo; the tests' own, with more to inspect, is tests/daemon.rs).
pub struct RunningDaemon(std::process::Child);

impl RunningDaemon {
    /// Writes `config` to the sandbox, starts `ecr-edge daemon` with it and waits for
    /// `READY=1`.
    pub fn start(sb: &mut Sandbox, config: &str) -> RunningDaemon {
        let path = sb.dir.path().join("daemon.toml");
        std::fs::write(&path, config).unwrap();
        sb.set("ECR_EDGE_CONFIG", Some(path.to_str().unwrap()));
        let notify_path = sb.dir.path().join("notify.sock");
        let _ = std::fs::remove_file(&notify_path);
        let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let child = command(&binary())
            .arg("daemon")
            .env_clear()
            .envs(sb.vars.iter().map(|(k, v)| (k, v)))
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 512];
        loop {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "daemon not ready"
            );
            if let Ok(n) = notify.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        RunningDaemon(child)
    }
}

impl Drop for RunningDaemon {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

/// The lines of the first fenced shell block in `file` (under the clone, e.g. `README.md`) that
/// contains `marker`, without the block's indentation: the commands a user copies, to run as
/// written.
pub fn doc_block(file: &str, marker: &str) -> String {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
    let mut lines = doc.lines();
    while let Some(fence) = lines.next() {
        let indent = fence.len() - fence.trim_start().len();
        if fence.trim_start() != "```sh" {
            continue;
        }
        let block: Vec<&str> = lines
            .by_ref()
            .take_while(|l| l.trim_start() != "```")
            .map(|l| l.get(indent..).unwrap_or(""))
            .collect();
        if block.iter().any(|l| l.contains(marker)) {
            return block.join("\n") + "\n";
        }
    }
    panic!("{file}: no ```sh block with {marker:?}");
}
