//! Serving connections: one accept helper for both listeners (the Unix socket and the local
//! credentials endpoint), and the Unix socket's request handler.
//!
//! [`serve`] accepts until shutdown, one task per connection in a `JoinSet`, at most `cap` at
//! once. When every slot is taken and a new client connects, the oldest connection that has
//! not yet sent its request is closed to make room (an idle client cannot starve the others:
//! thousands of silent connections cost at most `cap` descriptors, and a real request is still
//! answered at once); when all of them are busy, the new client waits for the first to finish.
//! At shutdown it keeps accepting for the drain only to refuse in words, lets the
//! connections under way finish (each handler also watches shutdown, so a client waiting for
//! a refresh is told the daemon is stopping), and returns once they have, or after
//! [`super::DRAIN`].

use std::collections::VecDeque;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::peer;
use super::state::{Entry, Shared};
use super::{DaemonError, DRAIN, MAX_ON_DEMAND};
use crate::agent::{self, Reply, Request};
use crate::aws::credentials::Source;
use crate::registry::Registry;

/// How long a client may take to send its request line.
const REQUEST_READ: Duration = Duration::from_secs(5);

/// What a client is told when it arrives, or is still waiting, as the daemon stops.
pub(super) const STOPPING: &str = "the daemon is stopping; ask again once it has restarted";

/// A listener [`serve`] accepts from.
pub(super) trait Listener: Send {
    /// One accepted connection.
    type Stream: Send + 'static;
    /// The next connection.
    fn accept_one(&self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Listener for UnixListener {
    type Stream = UnixStream;
    async fn accept_one(&self) -> std::io::Result<UnixStream> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Listener for TcpListener {
    type Stream = TcpStream;
    async fn accept_one(&self) -> std::io::Result<TcpStream> {
        self.accept().await.map(|(s, _)| s)
    }
}

/// One connection's place: whether it is still waiting for its request (then it may be closed
/// to make room for a new client). The permit it holds against the cap is kept by its task and
/// released, with the connection, when its handler ends.
pub(super) struct Slot {
    state: std::sync::Mutex<SlotState>,
    /// Tells an idle connection to close.
    evict: Notify,
    /// Tells the accept loop that the connection it asked to close had its request after all.
    declined: Notify,
}

#[derive(Clone, Copy, PartialEq)]
enum SlotState {
    /// Connected, not a byte received yet.
    Idle,
    /// Asked to close to make room.
    Evicting,
    /// The request is under way: never closed to make room.
    Busy,
}

impl Slot {
    fn new() -> Arc<Slot> {
        Arc::new(Slot {
            state: std::sync::Mutex::new(SlotState::Idle),
            evict: Notify::new(),
            declined: Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks a connection still idle to close; false when it has its request under way.
    fn evict(&self) -> bool {
        let mut state = self.state();
        if *state != SlotState::Idle {
            return false;
        }
        *state = SlotState::Evicting;
        self.evict.notify_one();
        true
    }

    /// Waits for the client's first byte (`first_byte`, at most [`REQUEST_READ`]): true when it
    /// has come and the connection now counts as busy; false when the client was silent or went
    /// away, or the connection gave way to a newer client before its request came. The handler
    /// closes on false. (A request that arrived just as the connection was asked to give way
    /// is still served: closing with the bytes unread would reset the client.)
    pub(super) async fn request_arrives(&self, stream: &impl Peek) -> bool {
        tokio::select! {
            biased;
            r = tokio::time::timeout(REQUEST_READ, first_byte(stream)) => if !matches!(r, Ok(Ok(true))) {
                return false;
            },
            _ = self.evict.notified() => if !matches!(stream.peek(), Ok(n) if n > 0) {
                return false;
            },
        }
        let mut state = self.state();
        if *state == SlotState::Evicting {
            self.declined.notify_one();
        }
        *state = SlotState::Busy;
        true
    }
}

/// Asks the oldest connection that has not sent a byte to close, and returns it; none when
/// every connection has its request under way. (Busy connections never become idle again, so
/// they leave the queue as it is searched.)
fn evict_oldest_idle(slots: &mut VecDeque<Weak<Slot>>) -> Option<Arc<Slot>> {
    while let Some(weak) = slots.pop_front() {
        if let Some(slot) = weak.upgrade().filter(|slot| slot.evict()) {
            return Some(slot);
        }
    }
    None
}

/// A connected stream whose first byte can be waited for without reading it.
pub(super) trait Peek: AsRawFd {
    /// Completes when the stream may be readable (possibly a false alarm).
    fn readable(&self) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Runs a non-blocking read attempt, clearing the readiness when it would block.
    fn try_read_io<R>(&self, f: impl FnOnce() -> std::io::Result<R>) -> std::io::Result<R>;

    /// How many bytes a non-blocking look finds (up to one; 0 when the client has closed),
    /// leaving them unread; `WouldBlock` when there are none yet.
    fn peek(&self) -> std::io::Result<usize> {
        use nix::sys::socket::{recv, MsgFlags};
        let mut byte = [0u8; 1];
        recv(
            self.as_raw_fd(),
            &mut byte,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        )
        .map_err(std::io::Error::from)
    }
}

impl Peek for TcpStream {
    fn readable(&self) -> impl Future<Output = std::io::Result<()>> + Send {
        TcpStream::readable(self)
    }
    fn try_read_io<R>(&self, f: impl FnOnce() -> std::io::Result<R>) -> std::io::Result<R> {
        self.try_io(Interest::READABLE, f)
    }
}

impl Peek for UnixStream {
    fn readable(&self) -> impl Future<Output = std::io::Result<()>> + Send {
        UnixStream::readable(self)
    }
    fn try_read_io<R>(&self, f: impl FnOnce() -> std::io::Result<R>) -> std::io::Result<R> {
        self.try_io(Interest::READABLE, f)
    }
}

/// Completes when the client's first byte has arrived (true, the byte left unread) or the
/// client has closed (false). Readiness alone is not enough: a fresh connection can be
/// reported readable with nothing to read, and an idle client must stay idle.
async fn first_byte(stream: &impl Peek) -> std::io::Result<bool> {
    loop {
        stream.readable().await?;
        match stream.try_read_io(|| stream.peek()) {
            Ok(n) => return Ok(n > 0),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Accepts from `listener` until shutdown, then drains (see the module doc). `handle` serves
/// one connection; `refuse` answers one that arrives during the drain.
pub(super) async fn serve<L, H, HF, R, RF>(
    listener: L,
    cap: usize,
    shared: Arc<Shared>,
    handle: H,
    refuse: R,
) where
    L: Listener,
    H: Fn(L::Stream, Arc<Slot>) -> HF,
    HF: Future<Output = ()> + Send + 'static,
    R: Fn(L::Stream) -> RF,
    RF: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(cap));
    let mut conns = JoinSet::new();
    let mut slots: VecDeque<Weak<Slot>> = VecDeque::new();
    let mut stopped = std::pin::pin!(shared.stopped());
    loop {
        while conns.try_join_next().is_some() {}
        let accepted = tokio::select! {
            r = listener.accept_one() => r,
            _ = &mut stopped => break,
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off briefly rather than spin.
                tracing::warn!("accept failed: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    _ = &mut stopped => break,
                }
            }
        };
        // A free slot; else the slot of the oldest silent connection, once it has closed;
        // else the first slot to come free. The new client waits here, so descriptors stay
        // within the cap (plus this one) however many idle clients pile up.
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => loop {
                let evicting = evict_oldest_idle(&mut slots);
                let declined = async {
                    match &evicting {
                        Some(slot) => slot.declined.notified().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    p = permits.clone().acquire_owned() => break p.ok(),
                    _ = declined => continue,
                    _ = &mut stopped => break None,
                }
            },
        };
        let Some(permit) = permit else {
            conns.spawn(refuse(stream));
            break;
        };
        let slot = Slot::new();
        slots.retain(|s| s.strong_count() > 0);
        slots.push_back(Arc::downgrade(&slot));
        let served = handle(stream, slot);
        conns.spawn(async move {
            served.await;
            drop(permit);
        });
    }
    // The drain: refuse newcomers in words, let the connections under way finish (a client
    // waiting for a refresh is answered by the end of the drain, so a little longer here).
    let until = Instant::now() + DRAIN + Duration::from_millis(500);
    loop {
        tokio::select! {
            biased;
            r = listener.accept_one() => {
                if let Ok(stream) = r {
                    let refused = refuse(stream);
                    conns.spawn(async move {
                        let _ = tokio::time::timeout(Duration::from_millis(500), refused).await;
                    });
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = tokio::time::sleep(Duration::from_millis(20)), if conns.is_empty() => break,
            _ = tokio::time::sleep_until(until) => {
                tracing::warn!(
                    connections = conns.len(),
                    "connections still open after {}s; closing them",
                    DRAIN.as_secs()
                );
                break;
            }
        }
    }
}

/// Binds the socket: refuses a path that is something other than a stale socket, refuses to
/// start beside a running daemon, creates the directory if missing, and makes the socket 0660.
pub(super) fn bind(path: &Path) -> Result<UnixListener, DaemonError> {
    let fail = |detail: String| DaemonError::Socket {
        path: path.to_owned(),
        detail,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) => {
            use std::os::unix::fs::FileTypeExt;
            if !m.file_type().is_socket() {
                return Err(fail(
                    "exists and is not a socket; refusing to replace it".into(),
                ));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(fail("another daemon is answering on it".into()));
            }
            std::fs::remove_file(path)
                .map_err(|e| fail(format!("cannot remove stale socket: {e}")))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e.to_string())),
    }
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|e| fail(format!("cannot create its directory: {e}")))?;
        }
    }
    // The socket is created with the umask applied; keep it from ever being wider than 0660.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o117));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(|e| fail(e.to_string()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| fail(e.to_string()))?;
    Ok(listener)
}

/// Removes the socket at `path` (only a socket).
pub(super) fn remove_socket(path: &Path) {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

/// Tells a client that arrives during the drain that the daemon is stopping.
pub(super) async fn refuse(stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    // Read the request first: closing a Unix socket with unread data resets it, and the
    // client would see the reset instead of the words.
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(agent::MAX_LINE));
    let _ = tokio::time::timeout(Duration::from_millis(200), reader.read_line(&mut line)).await;
    let _ = send(
        &mut write,
        &Reply::Refused {
            reason: STOPPING.into(),
        },
    )
    .await;
}

/// One client of the Unix socket: peer check, one request, its reply (after a `wait` line if
/// the daemon has to fetch first).
pub(super) async fn connection(stream: UnixStream, shared: Arc<Shared>, slot: Arc<Slot>) {
    let peer = match peer::peer_of(&stream) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("cannot identify socket peer: {e}");
            return;
        }
    };
    let allowed = shared.lock().settings.policy.allows(&peer);
    if !allowed {
        tracing::warn!(
            uid = peer.uid,
            gid = peer.gid,
            pid = peer.pid,
            "refused a client not in allowed_uids/allowed_gids"
        );
        shared.lock().requests.peers_refused += 1;
        shared.metrics_due.notify_one();
        let reply = Reply::Refused {
            reason: format!("uid {} is not allowed to use this daemon", peer.uid),
        };
        let (_, mut write) = stream.into_split();
        let _ = send(&mut write, &reply).await;
        return;
    }
    // Silent until the first byte arrives (and closed to make room if a new client needs the
    // slot); from then on, the client has its request under way.
    if !slot.request_arrives(&stream).await {
        return;
    }
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(agent::MAX_LINE));
    let read = tokio::time::timeout(REQUEST_READ, reader.read_line(&mut line)).await;
    if !matches!(read, Ok(Ok(n)) if n > 0) {
        return;
    }
    let reply = match serde_json::from_str::<Request>(&line) {
        Err(e) => Reply::Error {
            message: format!("bad request: {}", crate::input::describe_json_error(&e)),
        },
        Ok(Request::Status) => Reply::Status(Box::new(shared.report())),
        Ok(Request::Refresh { registries }) => refresh(&shared, registries, &mut write).await,
        Ok(Request::Get { registry, identity }) => {
            let reply = get(&shared, &registry, &identity, &mut write).await;
            {
                let mut st = shared.lock();
                match &reply {
                    Reply::Token { .. } => st.requests.served += 1,
                    Reply::Refused { .. } => st.requests.declined += 1,
                    _ => st.requests.errors += 1,
                }
            }
            shared.metrics_due.notify_one();
            reply
        }
    };
    let _ = send(&mut write, &reply).await;
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await
}

/// Answers a `refresh`: an attempt starts now for each named registry (each the daemon holds
/// when none is named; one already running is waited for), and the answer, once each has
/// ended, says what it did and the runway after it.
async fn refresh(
    shared: &Shared,
    names: Vec<String>,
    write: &mut tokio::net::unix::OwnedWriteHalf,
) -> Reply {
    let deadline = Instant::now() + shared.deadline + Duration::from_secs(1);
    // Each registry with the attempt count that says its attempt has ended.
    let mut ends: Vec<(String, u64)> = Vec::new();
    {
        let mut st = shared.lock();
        if shared.is_stopping() {
            return Reply::Refused {
                reason: STOPPING.into(),
            };
        }
        let hosts: Vec<String> = if names.is_empty() {
            st.entries.keys().cloned().collect()
        } else {
            names
        };
        if hosts.is_empty() {
            return Reply::Error {
                message: "the daemon holds no registry yet: none is configured ([daemon] \
                          registries) and none was asked for"
                    .into(),
            };
        }
        let now = Instant::now();
        if let Some(unknown) = hosts.iter().find(|h| !st.entries.contains_key(*h)) {
            let held: Vec<&str> = st.entries.keys().map(String::as_str).collect();
            return Reply::Error {
                message: format!(
                    "the daemon holds no registry {unknown}; it holds {} (configured in \
                     [daemon] registries, or added when a client first asked)",
                    if held.is_empty() {
                        "none".to_owned()
                    } else {
                        held.join(", ")
                    }
                ),
            };
        }
        for host in hosts {
            if let Some(e) = st.entries.get_mut(&host) {
                e.refresh_now(now);
                ends.push((host, e.attempts + 1));
            }
        }
    }
    shared.wake.notify_one();
    if send(write, &Reply::Wait).await.is_err() {
        return Reply::Wait;
    }
    let mut drained = std::pin::pin!(shared.drained());
    let mut timed_out = false;
    loop {
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        {
            let st = shared.lock();
            let ended = |(host, end): &(String, u64)| {
                st.entries.get(host).is_none_or(|e| e.attempts >= *end)
            };
            if timed_out || ends.iter().all(ended) {
                let now = Instant::now();
                return Reply::Refreshed(
                    ends.iter()
                        .map(|(host, end)| {
                            let e = st.entries.get(host);
                            let error = match e {
                                None => Some("removed by a reload meanwhile".to_owned()),
                                Some(e) if e.attempts < *end => {
                                    Some("timed out waiting for the refresh".to_owned())
                                }
                                Some(e) => e.last_error.clone(),
                            };
                            agent::Refreshed {
                                registry: host.clone(),
                                error,
                                runway_seconds: e.map_or(0, |e| e.runway(now)),
                            }
                        })
                        .collect(),
                );
            }
        }
        tokio::select! {
            r = tokio::time::timeout_at(deadline, changed) => timed_out = r.is_err(),
            _ = &mut drained => return Reply::Refused { reason: STOPPING.into() },
        }
    }
}

/// Answers a `get`: the held token while usable; otherwise waits for the attempt in flight
/// (or due now), telling the client to wait; otherwise the last error. A client still waiting
/// when the drain ends is refused (its helper then fetches for itself).
async fn get(
    shared: &Shared,
    host: &str,
    identity: &str,
    write: &mut tokio::net::unix::OwnedWriteHalf,
) -> Reply {
    let Some(registry) = Registry::parse(host).filter(|r| r.host() == host) else {
        return Reply::Error {
            message: format!("{host:?} is not an Amazon ECR registry host"),
        };
    };
    let deadline = Instant::now() + shared.deadline + Duration::from_secs(1);
    let mut told_to_wait = false;
    let mut seen_attempts = None;
    let mut drained = std::pin::pin!(shared.drained());
    loop {
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        {
            let mut st = shared.lock();
            let expected = Source::for_registry(&st.settings.config, host).identity();
            if expected.as_str() != identity {
                return Reply::Refused {
                    reason: "the daemon serves another credential source".into(),
                };
            }
            let on_demand = st.entries.values().filter(|e| e.on_demand).count();
            let cap = st.settings.backoff_cap;
            let mode = st.settings.refresh;
            let now = Instant::now();
            if !st.entries.contains_key(host) {
                if shared.is_stopping() {
                    return Reply::Refused {
                        reason: STOPPING.into(),
                    };
                }
                if on_demand >= MAX_ON_DEMAND {
                    return Reply::Refused {
                        reason: format!(
                            "the daemon already holds {MAX_ON_DEMAND} on-demand registries"
                        ),
                    };
                }
                tracing::info!(registry = host, "added on demand");
                st.entries.insert(
                    host.to_owned(),
                    Entry::new(registry.clone(), expected, true, cap, mode, now),
                );
                shared.wake.notify_one();
            }
            let Some(e) = st.entries.get_mut(host) else {
                continue;
            };
            // This request starts the attempt the schedule says is due, on demand (a token
            // past its refresh point is still served below while the refresh runs).
            if e.requested(now) {
                shared.wake.notify_one();
            }
            if let Some(h) = e.usable(now) {
                return Reply::Token {
                    password: h.token.password.clone(),
                    expires_at: h.token.expires_at,
                };
            }
            // No new wait once the daemon stops (a client already waiting is answered by the
            // end of the drain).
            if !told_to_wait && shared.is_stopping() {
                return Reply::Refused {
                    reason: STOPPING.into(),
                };
            }
            let attempts = *seen_attempts.get_or_insert(e.attempts);
            let finished_one = e.attempts > attempts;
            if finished_one || !e.pending(now) {
                return Reply::Error {
                    message: e
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "no token yet".into()),
                };
            }
        }
        if !told_to_wait {
            told_to_wait = true;
            if send(write, &Reply::Wait).await.is_err() {
                return Reply::Wait;
            }
        }
        tokio::select! {
            r = tokio::time::timeout_at(deadline, changed) => if r.is_err() {
                return Reply::Error {
                    message: "timed out waiting for the refresh".into(),
                };
            },
            _ = &mut drained => return Reply::Refused { reason: STOPPING.into() },
        }
    }
}
