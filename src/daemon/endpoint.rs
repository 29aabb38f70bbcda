//! The local credentials endpoint (`[daemon] credentials_endpoint`, off by default): the
//! device's IoT-exchanged role credentials for other AWS SDK programs on the device, in the
//! container-credentials format, so they share the device identity without Greengrass:
//!
//! ```sh
//! AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:9911/credentials
//! AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=/run/ecr-edge/credentials-token
//! ```
//!
//! Loopback only (the configuration refuses anything else); every request must carry the
//! random token the daemon writes 0600 at start-up, compared in constant time. The credentials
//! are refreshed on a timer 5 minutes (minus up to a minute of jitter) before they expire, with
//! the same backoff as tokens when the exchange fails.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::server::Slot;
use super::state::Shared;
use crate::daemon::schedule::{self, Backoff, SystemJitter};

/// Role credentials and when they stop being usable, on the monotonic clock.
#[derive(Clone)]
pub(super) struct HeldCredentials {
    pub(super) creds: aws_credential_types::Credentials,
    pub(super) expires: Instant,
}

/// Writes a fresh random token to `path` (0600, atomically) and returns it.
pub(super) fn write_token(path: &Path) -> Result<String, String> {
    use ring::rand::SecureRandom;
    let mut raw = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| "no randomness for the credentials token".to_owned())?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    crate::store::files::write_atomic(path, token.as_bytes(), 0o600).map_err(|e| e.to_string())?;
    Ok(token)
}

/// Keeps the credentials fresh: fetch, then sleep until 5 minutes before they expire; back off
/// on failure. Returns at shutdown.
pub(super) async fn refresh_loop(shared: Arc<Shared>) {
    let mut backoff = Backoff::new(shared.lock().settings.backoff_cap);
    let mut jitter = SystemJitter;
    let mut stopped = std::pin::pin!(shared.stopped());
    loop {
        let client = shared.lock().client.clone();
        let fetched = tokio::select! {
            f = client.credentials() => f,
            _ = &mut stopped => return,
        };
        let fetched = fetched.and_then(|creds| {
            // Credentials that arrive already expired (a wrong clock, a stale cache upstream)
            // are a failure, never held or served.
            match schedule::credentials_life(creds.expiry(), std::time::SystemTime::now()) {
                Some(life) => Ok((creds, life)),
                None => Err(crate::aws::ecr::FetchError::BadResponse {
                    detail: "the role credentials had already expired (check the system clock)"
                        .into(),
                }),
            }
        });
        let delay = match fetched {
            Ok((creds, life)) => {
                let now = Instant::now();
                let delay =
                    schedule::credentials_delay(life, &mut jitter).max(Duration::from_secs(1));
                tracing::info!(
                    valid_for_s = life.as_secs(),
                    next_refresh_in_s = delay.as_secs(),
                    "role credentials refreshed"
                );
                shared.lock().credentials = Some(HeldCredentials {
                    creds,
                    expires: now + life,
                });
                backoff.reset();
                delay
            }
            Err(e) => {
                let delay = backoff.next(e.failure(), &mut jitter);
                tracing::warn!(
                    retry_in_s = %crate::clock::Seconds::<1>(delay),
                    "role credentials refresh failed: {e}"
                );
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut stopped => return,
        }
    }
}

/// Serves `listener` until shutdown, at most [`super::MAX_CONNECTIONS`] connections at once
/// (the oldest idle one closed to make room: [`super::server::serve`]), each request
/// authorised by `token`. At shutdown a request under way is answered and the connection
/// closed; a client arriving during the drain gets a 503 in words.
pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>, token: Arc<str>) {
    let for_handlers = shared.clone();
    let handle = move |stream: TcpStream, slot: Arc<Slot>| {
        let (shared, token) = (for_handlers.clone(), token.clone());
        async move {
            let stopped = shared.stopped();
            // Silent until the first byte (and closed to make room if a new client needs the
            // slot); from then on, a request is under way.
            if !slot.request_arrives(&stream).await {
                return;
            }
            let service = hyper::service::service_fn(move |req| {
                let reply = answer(&req, &shared, &token);
                async move { Ok::<_, Infallible>(reply) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(io, service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = tokio::time::timeout(Duration::from_secs(30), conn.as_mut()) => return,
                _ = stopped => {}
            }
            // Shutdown: the request under way is answered, no other is read.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(super::DRAIN, conn).await;
        }
    };
    super::server::serve(listener, super::MAX_CONNECTIONS, shared, handle, refuse).await;
}

/// Answers a client that arrives while the daemon stops: 503, in words, then close.
async fn refuse(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Read what the client sent first, so closing does not reset the connection under it.
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await;
    let body =
        serde_json::json!({"code": "Unavailable", "message": super::server::STOPPING}).to_string();
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn answer<B>(req: &Request<B>, shared: &Shared, token: &str) -> Response<Full<Bytes>> {
    let json = |status: StatusCode, body: serde_json::Value| {
        let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        r
    };
    if req.method() != hyper::Method::GET || req.uri().path() != "/credentials" {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"code": "NotFound", "message": "GET /credentials"}),
        );
    }
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !constant_time_eq(given, token.as_bytes()) {
        tracing::warn!("credentials endpoint: request without the right authorization token");
        return json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"code": "Unauthorized", "message": "wrong or missing Authorization token"}),
        );
    }
    // Both clocks must agree there is a minute left: the monotonic one (a wall clock set
    // back cannot prolong them) and the wall clock (what the client will compare with).
    let held = shared.lock().credentials.clone().filter(|h| {
        h.expires.saturating_duration_since(Instant::now()) > Duration::from_secs(60)
            && schedule::credentials_life(h.creds.expiry(), std::time::SystemTime::now())
                .is_some_and(|life| life > Duration::from_secs(60))
    });
    match held {
        Some(h) => json(
            StatusCode::OK,
            serde_json::json!({
                "AccessKeyId": h.creds.access_key_id(),
                "SecretAccessKey": h.creds.secret_access_key(),
                "Token": h.creds.session_token(),
                "Expiration": crate::aws::ecr::expiration_rfc3339(&h.creds),
            }),
        ),
        None => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"code": "Unavailable", "message": "no valid role credentials yet; see ecr-edge status"}),
        ),
    }
}

/// Equality in time independent of where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }

    #[test]
    fn token_file_is_private_and_random() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let a = write_token(&path).unwrap();
        let b = write_token(&path).unwrap();
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), b);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
