//! One HTTPS GET over rustls, for the calls the AWS SDK does not make for us: the IoT
//! credentials exchange (it needs a client certificate) and `doctor`'s reachability and clock
//! probes. hyper speaks HTTP/1.1; `HTTPS_PROXY`/`NO_PROXY` are honoured through hyper-util's
//! CONNECT tunnel, as the SDK's client does. Names are resolved by [`crate::aws::dns`]. The caller
//! bounds the time ([`timed_out`] says whether DNS was the silent part); the body is bounded
//! here.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};

/// What came back.
#[derive(Debug)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// The `Date` header, if any.
    pub date: Option<String>,
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
}

impl std::fmt::Display for HttpsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpsError::Unreachable(d) | HttpsError::Handshake(d) | HttpsError::Invalid(d) => {
                f.write_str(d)
            }
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

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn connect(host: &str, port: u16) -> Result<Box<dyn Io>, HttpsError> {
    let uri: hyper::Uri = format!("https://{host}:{port}/")
        .parse()
        .map_err(|e| HttpsError::Invalid(format!("{host}:{port}: {e}")))?;
    let matcher = hyper_util::client::proxy::matcher::Matcher::from_env();
    match matcher.intercept(&uri) {
        Some(intercept) => {
            use tower_service::Service;
            let mut http = hyper_util::client::legacy::connect::HttpConnector::new_with_resolver(
                crate::aws::dns::Resolver,
            );
            http.enforce_http(false);
            let mut tunnel = hyper_util::client::legacy::connect::proxy::Tunnel::new(
                intercept.uri().clone(),
                http,
            );
            if let Some(auth) = intercept.basic_auth() {
                tunnel = tunnel.with_auth(auth.clone());
            }
            let io = tunnel
                .call(uri)
                .await
                .map_err(|e| HttpsError::Unreachable(format!("through proxy: {e}")))?;
            Ok(Box::new(hyper_util::rt::TokioIo::new(io)))
        }
        None => {
            // Resolved by the deadline-bounded resolver, never tokio's blocking pool.
            let addrs: Vec<std::net::SocketAddr> = crate::aws::dns::resolve(host)
                .await
                .map_err(|e| HttpsError::Unreachable(e.to_string()))?
                .into_iter()
                .map(|ip| std::net::SocketAddr::new(ip, port))
                .collect();
            let tcp = tokio::net::TcpStream::connect(&addrs[..])
                .await
                .map_err(|e| HttpsError::Unreachable(e.to_string()))?;
            Ok(Box::new(tcp))
        }
    }
}

/// `GET https://host:port/path` with `headers`, trusting and authenticating as `tls` says;
/// reads at most `limit` body bytes.
///
/// # Errors
/// [`HttpsError`]; a refused handshake is told apart from a network failure.
pub async fn get(
    tls: Arc<rustls::ClientConfig>,
    host: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    limit: usize,
) -> Result<Response, HttpsError> {
    let server_name =
        ServerName::try_from(host.to_owned()).map_err(|e| HttpsError::Invalid(e.to_string()))?;
    let io = connect(host, port).await?;
    let tls = tokio_rustls::TlsConnector::from(tls)
        .connect(server_name, io)
        .await
        .map_err(|e| classify(&e))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| classify(&e))?;
    let driver = tokio::spawn(conn);
    let authority = if port == 443 {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    };
    let mut request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(
            hyper::header::USER_AGENT,
            concat!("ecr-edge/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| HttpsError::Invalid(e.to_string()))?;
    // With TLS 1.3 a refused client certificate shows up here, on the first read.
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| classify(&e))?;
    let status = response.status().as_u16();
    let date = response
        .headers()
        .get(hyper::header::DATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|e| HttpsError::Unreachable(format!("reading body: {e}")))?
        .to_bytes();
    driver.abort();
    Ok(Response { status, date, body })
}

/// A TLS alert or certificate error anywhere in the chain is [`HttpsError::Handshake`];
/// anything else [`HttpsError::Unreachable`].
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
        cur = e.source();
    }
    HttpsError::Unreachable(err.to_string())
}
