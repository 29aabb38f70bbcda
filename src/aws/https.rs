//! The network under every call to AWS: the HTTP client handed to the AWS SDK ([`SdkClient`])
//! and one HTTPS GET for the calls the SDK does not make (the IoT credentials exchange, which
//! needs a client certificate, and `doctor`'s reachability and clock probes). Both open their
//! connections here: names resolved by [`crate::aws::dns`] (bounded by the caller's deadline),
//! `HTTPS_PROXY`/`NO_PROXY` honoured through hyper-util's CONNECT tunnel, rustls with ring,
//! hyper's HTTP/1.1, and every byte counted by [`crate::aws::traffic`]. One connection per
//! request: calls are minutes to hours apart, so a pool would only hold sockets open; the TLS
//! session cache in the caller's `rustls::ClientConfig` is what makes the next handshake short.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use rustls::pki_types::ServerName;
use rustls::HandshakeKind::Resumed;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::aws::traffic::{self, Endpoint};

/// What came back.
#[derive(Debug)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// The `Date` header, if any.
    pub date: Option<String>,
    /// Every header.
    pub headers: hyper::HeaderMap,
    /// The body, at most the caller's limit.
    pub body: Bytes,
}

/// Why the request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpsError {
    /// DNS, connect, proxy, reset or an HTTP-level failure: worth retrying.
    Unreachable(String),
    /// The TLS handshake was refused (an alert from the peer, or its certificate was not
    /// trusted): retrying cannot help.
    Handshake(String),
    /// The request could not be built (bad host name).
    Invalid(String),
    /// This side's client key did not sign the handshake (a TPM's refusal, in words):
    /// retrying cannot help.
    Signer(String),
}

impl std::fmt::Display for HttpsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpsError::Unreachable(d)
            | HttpsError::Handshake(d)
            | HttpsError::Invalid(d)
            | HttpsError::Signer(d) => f.write_str(d),
        }
    }
}

impl std::error::Error for HttpsError {}

/// What to say when a request to `host` ran out of time: the DNS lookup that is still
/// unanswered, if that is what was waiting, else `None` (the endpoint was silent).
pub fn timed_out(host: &str) -> Option<String> {
    crate::aws::dns::unanswered(host).map(|e| e.to_string())
}

/// The proxy in use for `https://host:port`, if any, with its user info removed (for display).
pub fn proxy_for(host: &str, port: u16) -> Option<String> {
    let uri: hyper::Uri = format!("https://{host}:{port}/").parse().ok()?;
    let matcher = hyper_util::client::proxy::matcher::Matcher::from_env();
    let intercept = matcher.intercept(&uri)?;
    let p = intercept.uri();
    Some(format!(
        "{}://{}:{}",
        p.scheme_str().unwrap_or("http"),
        p.host().unwrap_or(""),
        p.port_u16().unwrap_or(80)
    ))
}

/// Whether `host` is on this machine or its link (loopback, `localhost`, IPv4 169.254/16,
/// IPv6 link-local, and the IPv6 instance-metadata address `fd00:ec2::254`): the local
/// credential endpoints live there, and no proxy may see their requests.
fn never_proxied(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback() || ip.is_link_local(),
        Ok(std::net::IpAddr::V6(ip)) => {
            ip.is_loopback()
                || (ip.segments()[0] & 0xffc0) == 0xfe80
                || ip == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
                || ip
                    .to_ipv4_mapped()
                    .is_some_and(|v4| v4.is_loopback() || v4.is_link_local())
        }
        Err(_) => {
            let name = bare.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Why no connection was opened; the DNS failure stays the source, for the caller's message.
#[derive(Debug)]
enum ConnectError {
    Invalid(String),
    Dns(crate::aws::dns::DnsError),
    Proxy(Box<dyn std::error::Error + Send + Sync>),
    Tcp(std::io::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Invalid(d) => f.write_str(d),
            ConnectError::Dns(e) => e.fmt(f),
            ConnectError::Proxy(e) => write!(f, "through proxy: {e}"),
            ConnectError::Tcp(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnectError::Dns(e) => Some(e),
            ConnectError::Proxy(e) => Some(e.as_ref()),
            ConnectError::Tcp(e) => Some(e),
            ConnectError::Invalid(_) => None,
        }
    }
}

impl From<ConnectError> for HttpsError {
    fn from(e: ConnectError) -> HttpsError {
        match e {
            ConnectError::Invalid(d) => HttpsError::Invalid(d),
            other => HttpsError::Unreachable(other.to_string()),
        }
    }
}

/// A TCP connection to `host:port` (through the proxy's CONNECT tunnel when one applies),
/// counted as traffic to `endpoint`.
async fn connect(
    host: &str,
    port: u16,
    endpoint: Endpoint,
) -> Result<traffic::Counted<Box<dyn Io>>, ConnectError> {
    let io = open(host, port).await?;
    Ok(traffic::Counted::new(io, endpoint))
}

async fn open(host: &str, port: u16) -> Result<Box<dyn Io>, ConnectError> {
    let uri: hyper::Uri = format!("https://{host}:{port}/")
        .parse()
        .map_err(|e| ConnectError::Invalid(format!("{host}:{port}: {e}")))?;
    let matcher = hyper_util::client::proxy::matcher::Matcher::from_env();
    match matcher.intercept(&uri) {
        Some(intercept) => tunnel(uri, &intercept).await,
        None => tcp(host, port).await,
    }
}

/// Through the proxy's CONNECT tunnel to `uri`'s host and port.
async fn tunnel(
    uri: hyper::Uri,
    intercept: &hyper_util::client::proxy::matcher::Intercept,
) -> Result<Box<dyn Io>, ConnectError> {
    use tower_service::Service;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new_with_resolver(
        crate::aws::dns::Resolver,
    );
    http.enforce_http(false);
    let mut tunnel =
        hyper_util::client::legacy::connect::proxy::Tunnel::new(intercept.uri().clone(), http);
    if let Some(auth) = intercept.basic_auth() {
        tunnel = tunnel.with_auth(auth.clone());
    }
    let io = tunnel
        .call(uri)
        .await
        .map_err(|e| ConnectError::Proxy(e.into()))?;
    Ok(Box::new(hyper_util::rt::TokioIo::new(io)))
}

/// A direct TCP connection to `host:port`, the name resolved by the deadline-bounded resolver
/// (never tokio's blocking pool).
async fn tcp(host: &str, port: u16) -> Result<Box<dyn Io>, ConnectError> {
    let addrs: Vec<std::net::SocketAddr> = crate::aws::dns::resolve(host)
        .await
        .map_err(ConnectError::Dns)?
        .into_iter()
        .map(|ip| std::net::SocketAddr::new(ip, port))
        .collect();
    let tcp = tokio::net::TcpStream::connect(&addrs[..])
        .await
        .map_err(ConnectError::Tcp)?;
    let _ = tcp.set_nodelay(true);
    Ok(Box::new(tcp))
}

/// `GET https://host:port/path` with `headers`, trusting and authenticating as `tls` says,
/// counted as traffic to `endpoint`; reads at most `limit` body bytes.
///
/// # Errors
/// [`HttpsError`]; a refused handshake is told apart from a network failure.
pub async fn get(
    tls: Arc<rustls::ClientConfig>,
    endpoint: Endpoint,
    host: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    limit: usize,
) -> Result<Response, HttpsError> {
    request(
        tls,
        endpoint,
        hyper::Method::GET,
        host,
        port,
        path,
        headers,
        Bytes::new(),
        limit,
    )
    .await
}

/// [`get`] with another method (`HEAD`: no body is read) and a request `body` (empty: none
/// sent).
///
/// # Errors
/// As [`get`].
#[allow(clippy::too_many_arguments)]
pub async fn request(
    tls: Arc<rustls::ClientConfig>,
    endpoint: Endpoint,
    method: hyper::Method,
    host: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
    limit: usize,
) -> Result<Response, HttpsError> {
    let server_name =
        ServerName::try_from(host.to_owned()).map_err(|e| HttpsError::Invalid(e.to_string()))?;
    traffic::request(endpoint);
    let io = connect(host, port, endpoint).await?;
    let tls = tokio_rustls::TlsConnector::from(tls)
        .connect(server_name, io)
        .await
        .map_err(|e| classify(&e))?;
    traffic::handshake(endpoint, tls.get_ref().1.handshake_kind() == Some(Resumed));
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| classify(&e))?;
    drive(conn);
    let authority = if port == 443 {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    };
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority)
        .header(
            hyper::header::USER_AGENT,
            concat!("ecr-edge/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(body))
        .map_err(|e| HttpsError::Invalid(e.to_string()))?;
    // With TLS 1.3 a refused client certificate shows up here, on the first read.
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| classify(&e))?;
    learn_time(&response);
    let status = response.status().as_u16();
    let date = response
        .headers()
        .get(hyper::header::DATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| HttpsError::Unreachable(format!("reading body: {e}")))?
        .to_bytes();
    Ok(Response {
        status,
        date,
        headers: parts.headers,
        body,
    })
}

/// AWS's time from the `Date` of a response whose server certificate verified (src/clock.rs).
fn learn_time<B>(response: &hyper::Response<B>) {
    let received = crate::clock::system_ms();
    if let Some(date) = response
        .headers()
        .get(hyper::header::DATE)
        .and_then(|d| d.to_str().ok())
    {
        crate::clock::observe_date(date, received);
    }
}

/// A TLS alert or certificate error anywhere in the chain is [`HttpsError::Handshake`]; a
/// client key's own error (`rustls::Error::Other`, what a remote signer returns) is
/// [`HttpsError::Signer`]; anything else [`HttpsError::Unreachable`].
fn classify(err: &(dyn std::error::Error + 'static)) -> HttpsError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(
            t @ (rustls::Error::AlertReceived(_)
            | rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented),
        ) = tls
        {
            return HttpsError::Handshake(t.to_string());
        }
        if let Some(rustls::Error::Other(signer)) = tls {
            return HttpsError::Signer(signer.0.to_string());
        }
        cur = e.source();
    }
    HttpsError::Unreachable(err.to_string())
}

/// The HTTP client handed to the AWS SDK: every connection opened by [`connect`] (DNS bounded,
/// proxy honoured, bytes counted), TLS with the caller's `rustls::ClientConfig`, whose session
/// cache lets the next handshake with the same endpoint resume.
#[derive(Clone, Debug)]
pub struct SdkClient {
    tls: Arc<rustls::ClientConfig>,
}

impl SdkClient {
    /// A client trusting and authenticating as `tls` says.
    pub fn new(tls: Arc<rustls::ClientConfig>) -> SdkClient {
        SdkClient { tls }
    }
}

impl aws_smithy_runtime_api::client::http::HttpClient for SdkClient {
    fn http_connector(
        &self,
        settings: &aws_smithy_runtime_api::client::http::HttpConnectorSettings,
        _components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
    ) -> aws_smithy_runtime_api::client::http::SharedHttpConnector {
        aws_smithy_runtime_api::client::http::SharedHttpConnector::new(SdkConnector {
            tls: self.tls.clone(),
            connect_timeout: settings.connect_timeout(),
            read_timeout: settings.read_timeout(),
        })
    }
}

/// [`SdkClient`] with the SDK's timeouts for one operation: `connect_timeout` bounds name
/// resolution, TCP, the proxy and the TLS handshake; `read_timeout` the wait for the response.
#[derive(Clone, Debug)]
struct SdkConnector {
    tls: Arc<rustls::ClientConfig>,
    connect_timeout: Option<std::time::Duration>,
    read_timeout: Option<std::time::Duration>,
}

/// How long a connection may outlive its response (the body still being read, then the
/// close), at most: a peer that stops sending never holds a task for longer.
const DRIVER_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// How long a closed connection waits for the peer's close_notify and FIN: they cross the
/// uplink whether or not anyone reads them, so they are read (and counted) when they come.
pub(crate) const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs `conn` (hyper's side of one connection) until its response is done, then closes it
/// the TLS way: our close_notify, then the peer's read until it closes too, within
/// [`CLOSE_WAIT`].
fn drive<T, B>(conn: hyper::client::conn::http1::Connection<hyper_util::rt::TokioIo<T>, B>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::spawn(async move {
        let _ = tokio::time::timeout(DRIVER_LIMIT, async {
            let Ok(parts) = conn.without_shutdown().await else {
                return;
            };
            let mut io = parts.io.into_inner();
            let _ = io.shutdown().await;
            let mut sink = [0u8; 512];
            while let Ok(Ok(1..)) = tokio::time::timeout(CLOSE_WAIT, io.read(&mut sink)).await {}
        })
        .await;
    });
}

impl aws_smithy_runtime_api::client::http::HttpConnector for SdkConnector {
    fn call(
        &self,
        request: aws_smithy_runtime_api::client::orchestrator::HttpRequest,
    ) -> aws_smithy_runtime_api::client::http::HttpConnectorFuture {
        let this = self.clone();
        aws_smithy_runtime_api::client::http::HttpConnectorFuture::new(async move {
            this.send(request).await
        })
    }
}

impl SdkConnector {
    async fn send(
        &self,
        request: aws_smithy_runtime_api::client::orchestrator::HttpRequest,
    ) -> Result<
        aws_smithy_runtime_api::client::orchestrator::HttpResponse,
        aws_smithy_runtime_api::client::result::ConnectorError,
    > {
        use aws_smithy_runtime_api::client::result::ConnectorError;
        use aws_smithy_types::body::SdkBody;
        let mut request: hyper::Request<SdkBody> = request
            .try_into_http1x()
            .map_err(|e| ConnectorError::user(e.into()))?;
        let uri = request.uri().clone();
        let host = uri
            .host()
            .ok_or_else(|| ConnectorError::user(format!("no host in {uri}").into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let secure = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(ConnectorError::user(
                    format!("not an http(s) URL: {uri}").into(),
                ))
            }
        };
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let endpoint = Endpoint::of(
            &host,
            request
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        );
        traffic::request(endpoint);
        // Origin form, with the Host header the URL implies (SigV4 signed it).
        if !request.headers().contains_key(hyper::header::HOST) {
            if let Some(authority) = uri.authority() {
                let value = hyper::header::HeaderValue::from_str(authority.as_str())
                    .map_err(|e| ConnectorError::user(e.into()))?;
                request.headers_mut().insert(hyper::header::HOST, value);
            }
        }
        // Plain HTTP through a proxy (HTTP_PROXY) is sent to the proxy in absolute form;
        // everything else goes in origin form over a direct connection or a CONNECT tunnel.
        // The credential endpoints on this host or link (container credentials, instance
        // metadata) are never proxied, whatever NO_PROXY says: their requests carry tokens.
        let http_proxy = if secure || never_proxied(&host) {
            None
        } else {
            hyper_util::client::proxy::matcher::Matcher::from_env().intercept(&uri)
        };
        match &http_proxy {
            Some(proxy) => {
                if let Some(auth) = proxy.basic_auth() {
                    request
                        .headers_mut()
                        .insert(hyper::header::PROXY_AUTHORIZATION, auth.clone());
                }
            }
            None => {
                let path = uri
                    .path_and_query()
                    .map_or("/", hyper::http::uri::PathAndQuery::as_str);
                *request.uri_mut() = path
                    .parse()
                    .map_err(|e: hyper::http::uri::InvalidUri| ConnectorError::user(e.into()))?;
            }
        }

        let connecting = async {
            if !secure {
                let (to, to_port) = match &http_proxy {
                    Some(proxy) => (
                        proxy.uri().host().unwrap_or_default().to_owned(),
                        proxy.uri().port_u16().unwrap_or(80),
                    ),
                    None => (host.clone(), port),
                };
                let io = tcp(&to, to_port)
                    .await
                    .map_err(|e| ConnectorError::io(e.into()))?;
                return Ok::<Box<dyn Io>, ConnectorError>(Box::new(traffic::Counted::new(
                    io, endpoint,
                )));
            }
            let io = connect(&host, port, endpoint)
                .await
                .map_err(|e| ConnectorError::io(e.into()))?;
            let name =
                ServerName::try_from(host.clone()).map_err(|e| ConnectorError::user(e.into()))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, io)
                .await
                .map_err(|e| match classify(&e) {
                    // A refused handshake is not retried: the next one would be refused too.
                    HttpsError::Handshake(_) | HttpsError::Signer(_) => {
                        ConnectorError::other(e.into(), None)
                    }
                    _ => ConnectorError::io(e.into()),
                })?;
            traffic::handshake(endpoint, tls.get_ref().1.handshake_kind() == Some(Resumed));
            Ok(Box::new(tls))
        };
        let io = within(self.connect_timeout, connecting, "connecting").await??;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                .await
                .map_err(|e| ConnectorError::io(e.into()))?;
        drive(conn);
        let response = within(
            self.read_timeout,
            sender.send_request(request),
            "waiting for the response",
        )
        .await?
        .map_err(|e| {
            if e.is_user() {
                ConnectorError::user(e.into())
            } else {
                ConnectorError::io(e.into())
            }
        })?;
        if secure {
            learn_time(&response);
        }
        aws_smithy_runtime_api::client::orchestrator::HttpResponse::try_from(
            response.map(SdkBody::from_body_1_x),
        )
        .map_err(|e| ConnectorError::other(e.into(), None))
    }
}

/// `work`, bounded by `limit` when there is one; running out is the SDK's timeout error.
async fn within<T>(
    limit: Option<std::time::Duration>,
    work: impl std::future::Future<Output = T>,
    what: &'static str,
) -> Result<T, aws_smithy_runtime_api::client::result::ConnectorError> {
    match limit {
        None => Ok(work.await),
        Some(limit) => tokio::time::timeout(limit, work).await.map_err(|_| {
            aws_smithy_runtime_api::client::result::ConnectorError::timeout(
                format!("no progress {what} within {limit:?}").into(),
            )
        }),
    }
}

#[cfg(test)]
mod proxy_tests {
    use super::never_proxied;

    #[test]
    fn local_credential_endpoints_are_never_proxied() {
        for host in [
            "127.0.0.1",
            "127.3.4.5",
            "169.254.169.254",
            "169.254.170.2",
            "[::1]",
            "::1",
            "[fd00:ec2::254]",
            "fe80::1",
            "localhost",
            "LOCALHOST.",
            "metadata.localhost",
            "::ffff:127.0.0.1",
        ] {
            assert!(never_proxied(host), "{host}");
        }
        for host in [
            "10.0.0.1",
            "169.255.0.1",
            "api.ecr.us-east-1.amazonaws.com",
            "localhost.example.com",
            "2001:db8::1",
        ] {
            assert!(!never_proxied(host), "{host}");
        }
    }
}
