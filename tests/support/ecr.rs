//! The fake ECR (and STS) endpoint behind a real HTTPS proxy: SigV4 checked as AWS checks it,
//! faults on demand, every call recorded.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::hmac;

use super::*;

/// Which answer a fake gives next: `mode` always, or `mode` for the next `remaining` requests
/// and normal answers after that.
pub struct Faults<M> {
    pub(crate) mode: M,
    pub(crate) remaining: Option<u32>,
}

impl<M: Clone> Faults<M> {
    pub(crate) fn new(mode: M) -> Faults<M> {
        Faults {
            mode,
            remaining: None,
        }
    }

    /// Answers every request with `mode`.
    pub(crate) fn always(&mut self, mode: M) {
        self.mode = mode;
        self.remaining = None;
    }

    /// Answers the next `n` requests with `mode`.
    pub(crate) fn next_n(&mut self, n: u32, mode: M) {
        self.mode = mode;
        self.remaining = Some(n);
    }

    /// The mode for this request; `normal` once the scheduled failures are used up.
    pub(crate) fn take(&mut self, normal: M) -> M {
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
pub(crate) fn hang(stop: &AtomicBool) {
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
    pub(crate) form_web_identity_token: Option<String>,
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
    pub(crate) secret: String,
    pub(crate) session_token: String,
    /// The `sts:ExternalId` its trust policy requires.
    pub(crate) external_id: Option<String>,
    /// Access key IDs allowed to assume it (empty: any key the fake knows).
    pub(crate) trusted: Vec<String>,
    /// The service-account token `AssumeRoleWithWebIdentity` accepts.
    pub(crate) web_identity_token: Option<String>,
    /// The ECR password tokens obtained with its keys carry.
    pub password: String,
}

/// Long-term keys the fake knows (an AWS profile's), with their own ECR password.
#[derive(Debug, Clone)]
pub(crate) struct StaticKey {
    pub(crate) key_id: String,
    pub(crate) secret: String,
    pub(crate) password: String,
}

pub(crate) struct State {
    pub(crate) faults: Faults<Mode>,
    pub(crate) calls: Vec<Call>,
    /// CONNECT targets tunnelled through to another local fake.
    pub(crate) tunnels: Vec<String>,
    pub(crate) password: String,
    pub(crate) lifetime_secs: f64,
    pub(crate) secret: String,
    pub(crate) session_token: Option<String>,
    pub(crate) clock_offset_secs: i64,
    pub(crate) roles: Vec<FakeRole>,
    pub(crate) static_keys: Vec<StaticKey>,
    /// Per host: the bytes its connections moved.
    pub(crate) wires: HashMap<String, Arc<Wire>>,
    /// Registry API answers (`/v2/…` on a registry host): method, a part of the path, status,
    /// body. The first that matches answers; otherwise 404 `NAME_UNKNOWN`.
    pub(crate) registry: Vec<(String, String, u16, String)>,
    /// Registry API requests seen: method and path.
    pub(crate) registry_calls: Vec<(String, String)>,
}

impl State {
    pub(crate) fn wire(&mut self, host: &str) -> Arc<Wire> {
        self.wires.entry(host.to_owned()).or_default().clone()
    }
}

/// A fake ECR (private and public) reached through an HTTPS proxy on 127.0.0.1.
pub struct FakeEcr {
    /// The proxy's address, for `HTTPS_PROXY`.
    pub proxy_url: String,
    pub(crate) state: Arc<Mutex<State>>,
    pub(crate) stop: Arc<AtomicBool>,
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
            registry: Vec::new(),
            registry_calls: Vec::new(),
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

    /// Answers registry API requests (`/v2/…`) with `method` whose path contains `path_part`
    /// with `status` and `body` (an ECR-shaped error, a manifest), ahead of earlier answers.
    pub fn answer_registry(&self, method: &str, path_part: &str, status: u16, body: &str) {
        self.state
            .lock()
            .unwrap()
            .registry
            .insert(0, (method.into(), path_part.into(), status, body.into()));
    }

    /// The registry API requests seen: method and path.
    pub fn registry_calls(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().registry_calls.clone()
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

    /// A handle that sets how long the next tokens are valid, for a server thread of a test
    /// (the device lab's guest shortens them for a while).
    pub fn lifetime_handle(&self) -> impl Fn(f64) + Send + Sync + 'static {
        let state = self.state.clone();
        move |secs| state.lock().unwrap().lifetime_secs = secs
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

    pub(crate) fn push_role(
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
pub(crate) fn read_head(r: &mut impl BufRead) -> std::io::Result<(String, Vec<(String, String)>)> {
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

pub(crate) fn handle(
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
pub(crate) fn serve_tls(
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

    let mut words = request_line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if path.starts_with("/v2/") {
        // The registry API of a registry host, as ECR answers it (no SigV4: Basic auth).
        let response = {
            let mut s = state.lock().unwrap();
            s.registry_calls.push((method.to_owned(), path.to_owned()));
            let (status, body) = s
                .registry
                .iter()
                .find(|(m, part, _, _)| m == method && path.contains(part.as_str()))
                .map(|(_, _, status, body)| (*status, body.clone()))
                .unwrap_or((
                    404,
                    r#"{"errors":[{"code":"NAME_UNKNOWN","message":"The repository does not exist"}]}"#
                        .to_owned(),
                ));
            let shown = if method == "HEAD" { "" } else { body.as_str() };
            with_date(
                format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{shown}",
                    body.len()
                )
                .into_bytes(),
                s.clock_offset_secs,
            )
        };
        stream.write_all(&response)?;
        stream.flush()?;
        stream.conn.send_close_notify();
        let _ = stream.flush();
        let _ = std::io::copy(&mut raw, &mut std::io::sink());
        return Ok(());
    }
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
pub(crate) fn with_date(response: Vec<u8>, offset: i64) -> Vec<u8> {
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
pub(crate) fn splice(a: TcpStream, b: TcpStream) -> std::io::Result<()> {
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

pub(crate) fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

pub(crate) fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

pub(crate) fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

/// Checks a request as ECR would: SigV4 over the signed headers and body with the known secret,
/// the access key, the session token, and the request time against the (possibly offset) clock.
/// Returns the call record and, when a check fails, the error response ECR would send.
pub(crate) fn verify(
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
pub(crate) fn invalid_token() -> Option<Vec<u8>> {
    Some(error_response(
        400,
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
    ))
}

/// `20260101T000000Z` -> seconds since the epoch.
pub(crate) fn parse_amz_date(s: &str) -> Option<i64> {
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

pub(crate) fn error_response(status: u16, code: &str, message: &str) -> Vec<u8> {
    let body = format!(r#"{{"__type":"{code}","message":"{message}"}}"#);
    format!(
        "HTTP/1.1 {status} Error\r\ncontent-type: application/x-amz-json-1.1\r\nx-amzn-errortype: {code}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

pub(crate) fn respond(mode: &Mode, call: &Call, s: &State) -> Vec<u8> {
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
pub(crate) fn form_params(body: &[u8]) -> HashMap<String, String> {
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
pub(crate) fn sts(call: &Call, s: &State) -> Vec<u8> {
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
pub(crate) fn sts_error(status: u16, code: &str, message: &str) -> Vec<u8> {
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
pub(crate) fn sts_credentials(action: &str, key_id: &str, secret: &str, token: &str) -> Vec<u8> {
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
