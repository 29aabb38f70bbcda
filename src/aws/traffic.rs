//! What the calls to AWS really move on the uplink: every byte written to or read from the
//! TCP connection (TLS handshakes, certificate chains, tickets, HTTP headers and bodies; a
//! proxy's CONNECT exchange too), counted per endpoint kind for this process. The daemon
//! exports the totals (metrics, `status --json`); a helper logs them at debug level.
//!
//! Counting happens in [`Counted`], the stream every upstream connection is wrapped in by
//! [`crate::aws::https`]; the totals are process-wide atomics, read with [`snapshot`].

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Which AWS service a connection talks to: the label of the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `api.ecr.<region>.amazonaws.com` (and its FIPS form).
    Ecr,
    /// `api.ecr-public.us-east-1.amazonaws.com`.
    EcrPublic,
    /// The IoT credentials provider (`….credentials.iot.<region>.amazonaws.com`).
    Iot,
    /// The IoT data endpoint (`…-ats.iot.<region>.amazonaws.com`): the shadow reports.
    IotData,
    /// `sts.<region>.amazonaws.com`: role hops and web identities.
    Sts,
    /// Anything else the SDK reaches (the instance metadata service, SSO, a custom endpoint
    /// whose service is not in its signature).
    Other,
}

impl Endpoint {
    /// Every kind, in the order reports list them.
    pub const ALL: [Endpoint; 6] = [
        Endpoint::Ecr,
        Endpoint::EcrPublic,
        Endpoint::Iot,
        Endpoint::IotData,
        Endpoint::Sts,
        Endpoint::Other,
    ];

    /// The label value (`endpoint="ecr_public"`).
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Ecr => "ecr",
            Endpoint::EcrPublic => "ecr_public",
            Endpoint::Iot => "iot",
            Endpoint::IotData => "iot_data",
            Endpoint::Sts => "sts",
            Endpoint::Other => "other",
        }
    }

    /// The kind of a request to `host`: by the AWS host name, else by the service in the
    /// request's SigV4 `authorization` scope (`Credential=AKID/date/region/ecr/aws4_request`),
    /// which a custom endpoint URL keeps.
    pub fn of(host: &str, authorization: Option<&str>) -> Endpoint {
        let host = host.to_ascii_lowercase();
        if host.contains(".credentials.iot.") {
            return Endpoint::Iot;
        }
        let mut labels = host.split('.');
        match (labels.next(), labels.next()) {
            (Some("api"), Some("ecr")) | (Some("ecr-fips"), _) => return Endpoint::Ecr,
            (Some("api"), Some("ecr-public")) => return Endpoint::EcrPublic,
            (Some("sts" | "sts-fips"), _) => return Endpoint::Sts,
            _ => {}
        }
        let service = authorization
            .and_then(|a| a.split_once("Credential="))
            .and_then(|(_, rest)| rest.split('/').nth(3));
        match service {
            Some("ecr") => Endpoint::Ecr,
            Some("ecr-public") => Endpoint::EcrPublic,
            Some("sts") => Endpoint::Sts,
            _ => Endpoint::Other,
        }
    }

    fn counters(self) -> &'static Counters {
        &COUNTERS[self as usize]
    }
}

struct Counters {
    requests: AtomicU64,
    connections: AtomicU64,
    resumed: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
}

static COUNTERS: [Counters; Endpoint::ALL.len()] = [const {
    Counters {
        requests: AtomicU64::new(0),
        connections: AtomicU64::new(0),
        resumed: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
    }
}; Endpoint::ALL.len()];

/// One endpoint kind's totals since the process started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// HTTP requests sent (retries count each).
    pub requests: u64,
    /// TCP connections opened.
    pub connections: u64,
    /// TLS handshakes that resumed an earlier session (no certificate chain sent).
    pub tls_resumed: u64,
    /// Bytes written to the connections.
    pub bytes_sent: u64,
    /// Bytes read from them.
    pub bytes_received: u64,
}

/// The totals of every endpoint kind.
pub fn snapshot() -> Vec<(Endpoint, Totals)> {
    Endpoint::ALL
        .iter()
        .map(|&e| {
            let c = e.counters();
            (
                e,
                Totals {
                    requests: c.requests.load(Ordering::Relaxed),
                    connections: c.connections.load(Ordering::Relaxed),
                    tls_resumed: c.resumed.load(Ordering::Relaxed),
                    bytes_sent: c.sent.load(Ordering::Relaxed),
                    bytes_received: c.received.load(Ordering::Relaxed),
                },
            )
        })
        .collect()
}

/// Logs this process's totals at debug level, one event per endpoint kind it reached (what a
/// helper's `get` cost on the uplink: `ECR_EDGE_LOG=debug`).
pub fn log_totals() {
    for (endpoint, t) in snapshot() {
        if t.connections > 0 {
            tracing::debug!(
                endpoint = endpoint.label(),
                requests = t.requests,
                connections = t.connections,
                tls_resumed = t.tls_resumed,
                bytes_sent = t.bytes_sent,
                bytes_received = t.bytes_received,
                "traffic to AWS in this process"
            );
        }
    }
}

/// Counts one request to `endpoint`.
pub fn request(endpoint: Endpoint) {
    endpoint.counters().requests.fetch_add(1, Ordering::Relaxed);
}

/// Counts one finished TLS handshake with `endpoint`, resumed or full.
pub fn handshake(endpoint: Endpoint, resumed: bool) {
    if resumed {
        endpoint.counters().resumed.fetch_add(1, Ordering::Relaxed);
    }
}

/// A connection to `endpoint` whose bytes are counted both ways.
pub struct Counted<T> {
    inner: T,
    endpoint: Endpoint,
}

impl<T> Counted<T> {
    /// Wraps a freshly opened connection (and counts it).
    pub fn new(inner: T, endpoint: Endpoint) -> Counted<T> {
        endpoint
            .counters()
            .connections
            .fetch_add(1, Ordering::Relaxed);
        Counted { inner, endpoint }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before) as u64;
        self.endpoint
            .counters()
            .received
            .fetch_add(n, Ordering::Relaxed);
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            self.endpoint
                .counters()
                .sent
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_by_host_and_by_signature() {
        let e = |h| Endpoint::of(h, None);
        assert_eq!(e("api.ecr.us-west-2.amazonaws.com"), Endpoint::Ecr);
        assert_eq!(e("ecr-fips.us-east-1.amazonaws.com"), Endpoint::Ecr);
        assert_eq!(e("api.ecr.cn-north-1.amazonaws.com.cn"), Endpoint::Ecr);
        assert_eq!(
            e("api.ecr-public.us-east-1.amazonaws.com"),
            Endpoint::EcrPublic
        );
        assert_eq!(e("sts.us-west-2.amazonaws.com"), Endpoint::Sts);
        assert_eq!(e("sts.amazonaws.com"), Endpoint::Sts);
        assert_eq!(
            e("c1a2b3.credentials.iot.us-west-2.amazonaws.com"),
            Endpoint::Iot
        );
        assert_eq!(e("169.254.169.254"), Endpoint::Other);
        let signed = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261130/us-west-2/ecr/aws4_request, SignedHeaders=host, Signature=0";
        assert_eq!(
            Endpoint::of("vpce-1.api.example.internal", Some(signed)),
            Endpoint::Ecr
        );
        assert_eq!(
            Endpoint::of("vpce-1.api.example.internal", Some("garbage")),
            Endpoint::Other
        );
    }
}
