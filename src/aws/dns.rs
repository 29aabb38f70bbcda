//! Name resolution for every connection ecr-edge makes (ECR, STS, the IoT credentials
//! provider, proxies, `doctor`'s probes), bounded by the caller's deadline.
//!
//! The system resolver (`getaddrinfo`) blocks and cannot be cancelled, and when a DNS server
//! never answers (an uplink whose DNS is down, a captive network) it waits 5 s per try. On
//! tokio's blocking pool such a lookup outlived every deadline, because a runtime waits for its
//! blocking threads when it shuts down: `ECR_EDGE_TIMEOUT=3` took 7.5 s (musl) or 12.4 s
//! (glibc), and the message blamed the endpoint. Here each lookup runs on a detached thread that
//! nobody waits for; a caller waits for its answer only as long as the caller's own deadline
//! allows. Lookups of one name share one thread, and at most [`MAX_UNANSWERED`] names may be
//! waiting at once, so a long DNS outage cannot pile up threads in the daemon. A lookup still
//! unanswered when a call gives up is how that call knows to blame DNS ([`unanswered`]).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Most names whose lookups may be unanswered at once. A daemon refreshes a handful of
/// registries (one API name per region), the IoT endpoint and STS; more than this many silent
/// lookups means the resolver is not answering at all, and starting more threads cannot help.
pub const MAX_UNANSWERED: usize = 8;

/// Stack for a lookup thread: getaddrinfo needs little, even with glibc's NSS modules.
const LOOKUP_STACK: usize = 256 * 1024;

/// Why a name has no addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// The resolver answered: no such name, or no address for it.
    Failed {
        /// The name looked up.
        name: String,
        /// What the resolver said.
        detail: String,
    },
    /// The resolver has not answered (yet); the caller's deadline ended the wait.
    Unanswered {
        /// The name looked up.
        name: String,
        /// How long the lookup has been waiting.
        waited: Duration,
    },
    /// [`MAX_UNANSWERED`] other lookups are still waiting for the resolver; this one was not
    /// started.
    ResolverStuck {
        /// The name that was not looked up.
        name: String,
    },
    /// No thread could be started for the lookup.
    NoThread {
        /// The name that was not looked up.
        name: String,
        /// What the system said.
        detail: String,
    },
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsError::Failed { name, detail } => write!(
                f,
                "cannot resolve {name}: {detail} (asked {}); check the name and the \
                 network's DNS",
                servers()
            ),
            DnsError::Unanswered { name, waited } => write!(
                f,
                "cannot resolve {name}: no answer from {} within {}s; the DNS server is \
                 not answering (check the uplink's DNS, or add the name to /etc/hosts)",
                servers(),
                crate::clock::Seconds::<1>(*waited)
            ),
            DnsError::ResolverStuck { name } => write!(
                f,
                "cannot resolve {name}: {MAX_UNANSWERED} earlier lookups are still waiting \
                 for {}; the DNS server is not answering",
                servers()
            ),
            DnsError::NoThread { name, detail } => {
                write!(
                    f,
                    "cannot resolve {name}: no thread for the lookup: {detail}"
                )
            }
        }
    }
}

impl std::error::Error for DnsError {}

/// The DNS servers the system resolver asks, for messages: the `nameserver` lines of
/// `/etc/resolv.conf`.
fn servers() -> String {
    const RESOLV_CONF: &str = "/etc/resolv.conf";
    let text = crate::store::files::read_limited(std::path::Path::new(RESOLV_CONF), 64 * 1024)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let servers: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    match servers.as_slice() {
        [] => format!("the system resolver (no nameserver in {RESOLV_CONF})"),
        [one] => format!("the DNS server {one} ({RESOLV_CONF})"),
        many => format!("the DNS servers {} ({RESOLV_CONF})", many.join(", ")),
    }
}

/// One lookup in flight, shared by every caller asking for the same name.
struct Lookup {
    started: Instant,
    answer: OnceLock<Result<Vec<IpAddr>, String>>,
    done: tokio::sync::Notify,
}

/// The lookups not answered yet, by name.
fn in_flight() -> &'static Mutex<HashMap<String, Arc<Lookup>>> {
    static IN_FLIGHT: OnceLock<Mutex<HashMap<String, Arc<Lookup>>>> = OnceLock::new();
    IN_FLIGHT.get_or_init(Mutex::default)
}

/// The addresses of `name` (an IP literal is its own answer).
///
/// Waits until the resolver answers; bound it with the caller's deadline (dropping the future
/// leaves the lookup to finish on its own thread, and later calls for the name share it).
///
/// # Errors
/// [`DnsError::Failed`] when the resolver says the name has no address,
/// [`DnsError::ResolverStuck`] or [`DnsError::NoThread`] when no lookup could be started.
pub async fn resolve(name: &str) -> Result<Vec<IpAddr>, DnsError> {
    if let Ok(ip) = name.trim_start_matches('[').trim_end_matches(']').parse() {
        return Ok(vec![ip]);
    }
    let lookup = start(name)?;
    loop {
        // Registered before the check, so an answer that lands in between still wakes us.
        let notified = lookup.done.notified();
        if let Some(answer) = lookup.answer.get() {
            return answer.clone().map_err(|detail| DnsError::Failed {
                name: name.to_owned(),
                detail,
            });
        }
        notified.await;
    }
}

/// How long the lookup of `name` has been waiting for the resolver, if it is still waiting: a
/// call that timed out uses this to say that DNS, not the endpoint, was silent.
pub fn unanswered(name: &str) -> Option<DnsError> {
    let table = in_flight().lock().unwrap_or_else(|p| p.into_inner());
    table.get(name).map(|l| DnsError::Unanswered {
        name: name.to_owned(),
        waited: l.started.elapsed(),
    })
}

/// The lookup of `name` in flight, joined or started.
fn start(name: &str) -> Result<Arc<Lookup>, DnsError> {
    let mut table = in_flight().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(lookup) = table.get(name) {
        return Ok(lookup.clone());
    }
    if table.len() >= MAX_UNANSWERED {
        return Err(DnsError::ResolverStuck {
            name: name.to_owned(),
        });
    }
    let lookup = Arc::new(Lookup {
        started: Instant::now(),
        answer: OnceLock::new(),
        done: tokio::sync::Notify::new(),
    });
    let (owned, shared) = (name.to_owned(), lookup.clone());
    std::thread::Builder::new()
        .name("dns".into())
        .stack_size(LOOKUP_STACK)
        .spawn(move || {
            let answer = (owned.as_str(), 0u16)
                .to_socket_addrs()
                .map(|addrs| addrs.map(|a| a.ip()).collect::<Vec<_>>())
                .map_err(|e| e.to_string())
                .and_then(|ips| match ips.is_empty() {
                    true => Err("no address for the name".to_owned()),
                    false => Ok(ips),
                });
            // Forgotten and answered under one lock: whoever sees the answer no longer finds
            // the lookup listed as unanswered.
            let mut table = in_flight().lock().unwrap_or_else(|p| p.into_inner());
            if table.get(&owned).is_some_and(|l| Arc::ptr_eq(l, &shared)) {
                table.remove(&owned);
            }
            let _ = shared.answer.set(answer);
            drop(table);
            shared.done.notify_waiters();
        })
        .map_err(|e| DnsError::NoThread {
            name: name.to_owned(),
            detail: e.to_string(),
        })?;
    table.insert(name.to_owned(), lookup.clone());
    Ok(lookup)
}

/// [`resolve`] for the AWS SDK's HTTP client and for hyper-util's connector (proxy tunnels).
#[derive(Debug, Clone, Copy, Default)]
pub struct Resolver;

impl aws_smithy_runtime_api::client::dns::ResolveDns for Resolver {
    fn resolve_dns<'a>(
        &'a self,
        name: &'a str,
    ) -> aws_smithy_runtime_api::client::dns::DnsFuture<'a> {
        aws_smithy_runtime_api::client::dns::DnsFuture::new(async move {
            resolve(name)
                .await
                .map_err(aws_smithy_runtime_api::client::dns::ResolveDnsError::new)
        })
    }
}

impl tower_service::Service<hyper_util::client::legacy::connect::dns::Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = DnsError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, DnsError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), DnsError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        Box::pin(async move {
            let ips = resolve(name.as_str()).await?;
            Ok(ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 0))
                .collect::<Vec<_>>()
                .into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn literals_and_local_names_resolve() {
        let rt = runtime();
        assert_eq!(
            rt.block_on(resolve("127.0.0.1")).unwrap(),
            vec![IpAddr::from([127, 0, 0, 1])]
        );
        assert_eq!(
            rt.block_on(resolve("[::1]")).unwrap(),
            vec![IpAddr::from(std::net::Ipv6Addr::LOCALHOST)]
        );
        let local = rt.block_on(resolve("localhost")).unwrap();
        assert!(local.iter().all(IpAddr::is_loopback), "{local:?}");
        assert!(
            unanswered("localhost").is_none(),
            "answered lookups are forgotten"
        );
    }
}
