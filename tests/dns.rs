//! A DNS server that does not answer: every deadline still bounds the whole call, the message
//! says DNS (which name, which server), and the daemon does not pile up stuck lookups.
//!
//! Each test re-executes itself in its own network and mount namespace (root) with a private
//! `/etc/hosts` that lacks the AWS names and a private `/etc/resolv.conf` naming a "DNS
//! server" on 127.0.0.1:53 that reads every query and never replies. Runs natively and under
//! qemu-user (the static musl binaries are the ones devices run).

use std::net::UdpSocket;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::daemon::Daemon;
use crate::support::{self, text, Sandbox};

const REG: &str = "123456789012.dkr.ecr.us-west-2.amazonaws.com";
const API: &str = "api.ecr.us-west-2.amazonaws.com";

/// A DNS server that swallows queries; counts them.
struct SilentDns {
    queries: Arc<AtomicUsize>,
}

impl SilentDns {
    fn start() -> SilentDns {
        let socket = UdpSocket::bind("127.0.0.1:53").expect("port 53 in the test's namespace");
        let queries = Arc::new(AtomicUsize::new(0));
        let seen = queries.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while socket.recv_from(&mut buf).is_ok() {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        });
        SilentDns { queries }
    }

    fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

/// The sandbox inside its namespace: only localhost in `/etc/hosts`, the silent server in
/// `/etc/resolv.conf`, and no proxy, so the helper must resolve the real API name.
fn world() -> (Sandbox, SilentDns) {
    world_with_hosts("127.0.0.1 localhost\n")
}

/// [`world`] with `hosts` as the namespace's `/etc/hosts`.
fn world_with_hosts(hosts: &str) -> (Sandbox, SilentDns) {
    let mut sb = Sandbox::new();
    support::private_files(
        sb.dir.path(),
        &[
            ("/etc/hosts", hosts),
            ("/etc/resolv.conf", "nameserver 127.0.0.1\n"),
        ],
    );
    sb.set("HTTPS_PROXY", None);
    (sb, SilentDns::start())
}

/// `ECR_EDGE_TIMEOUT=3 get` ends within the deadline (it took 7.5 s with the static musl
/// build, 12.4 s with glibc) and names the name and the server that did not answer.
#[test]
#[ignore = "needs root (own network and mount namespace); scripts/test runs it as root"]
fn a_silent_dns_server_is_bounded_by_the_deadline_and_named() {
    if !support::inside_namespace("dns::a_silent_dns_server_is_bounded_by_the_deadline_and_named") {
        return;
    }
    let (mut sb, dns) = world();
    sb.set("ECR_EDGE_TIMEOUT", Some("3"));
    let start = Instant::now();
    let out = sb.helper("get", REG.as_bytes());
    let took = start.elapsed();
    let said = text(&out.stdout);
    assert!(!out.status.success(), "{said}");
    // The deadline bounds the call; the slack covers process start-up (under an emulator too).
    assert!(
        took < Duration::from_millis(4500),
        "took {took:?} with a 3 s deadline: {said}"
    );
    assert!(
        said.starts_with(&format!(
            "ecr-edge: {REG}: cannot resolve {API}: no answer from the DNS server 127.0.0.1 \
             (/etc/resolv.conf) within "
        )),
        "{said}"
    );
    assert!(said.contains("the DNS server is not answering"), "{said}");
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(dns.queries() > 0, "the resolver was never asked");
    assert!(sb.fake.calls().is_empty());
}

/// A resolver with no server at all answers at once: the message says the name could not be
/// resolved, not that the endpoint is down.
#[test]
#[ignore = "needs root (own network and mount namespace); scripts/test runs it as root"]
fn a_name_the_resolver_refuses_is_said_plainly() {
    if !support::inside_namespace("dns::a_name_the_resolver_refuses_is_said_plainly") {
        return;
    }
    let mut sb = Sandbox::new();
    // A server address nothing listens on: the resolver gets "connection refused" at once.
    support::private_files(
        sb.dir.path(),
        &[
            ("/etc/hosts", "127.0.0.1 localhost\n"),
            (
                "/etc/resolv.conf",
                "nameserver 127.0.0.9\noptions attempts:1 timeout:1\n",
            ),
        ],
    );
    sb.set("HTTPS_PROXY", None);
    sb.set("ECR_EDGE_TIMEOUT", Some("20"));
    let out = sb.helper("get", REG.as_bytes());
    let said = text(&out.stdout);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.starts_with(&format!("ecr-edge: {REG}: cannot resolve {API}")),
        "{said}"
    );
    assert!(
        said.contains("127.0.0.9"),
        "names the server it asked: {said}"
    );
    crate::helper::assert_no_debug_dump(&said);
}

/// Through a long DNS outage the daemon keeps at most one lookup per name waiting: its thread
/// count stays flat however many refresh attempts fail.
#[test]
#[ignore = "needs root (own network and mount namespace); scripts/test runs it as root"]
fn the_daemon_does_not_pile_up_stuck_lookups() {
    if !support::inside_namespace("dns::the_daemon_does_not_pile_up_stuck_lookups") {
        return;
    }
    let (mut sb, dns) = world();
    sb.set("ECR_EDGE_TIMEOUT", Some("1"));
    let other = "210987654321.dkr.ecr.eu-central-1.amazonaws.com";
    let d = Daemon::start(
        &mut sb,
        &format!("[daemon]\nregistries = [\"{REG}\", \"{other}\"]\nbackoff_max = 1\n"),
    );
    let threads = || {
        std::fs::read_dir(format!("/proc/{}/task", d.pid()))
            .map(|r| r.count())
            .unwrap_or(0)
    };
    let start = Instant::now();
    let mut most = 0;
    while start.elapsed() < Duration::from_secs(12) {
        most = most.max(threads());
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = d.log();
    let failures = log.matches("refresh failed").count();
    eprintln!(
        "daemon threads: at most {most} over {failures} failed refreshes ({} DNS queries)",
        dns.queries()
    );
    assert!(
        failures >= 6,
        "expected repeated failures, saw {failures}:\n{log}"
    );
    assert!(
        log.contains(&format!("cannot resolve {API}")),
        "failures blame DNS:\n{log}"
    );
    // The process (and under an emulator, the emulator's own threads) plus one lookup
    // thread per name; before, every attempt left another blocked thread behind.
    let base = if std::env::var_os("ECR_EDGE_TEST_RUNNER").is_some_and(|r| !r.is_empty()) {
        4
    } else {
        2
    };
    assert!(
        most <= base + 2,
        "{most} threads after {failures} failed refreshes ({} queries)",
        dns.queries()
    );
}

/// Without a proxy the daemon resolves the API name itself and connects to its port 443, as a
/// device does (the other black-box tests reach the fake through `HTTPS_PROXY`). The name comes
/// from the namespace's `/etc/hosts`: the DNS server, which never answers, is not asked. The
/// daemon's token reaches the helper over the socket.
#[test]
#[ignore = "needs root (own network and mount namespace); scripts/test runs it as root"]
fn the_daemon_resolves_the_api_name_itself_without_a_proxy() {
    if !support::inside_namespace("dns::the_daemon_resolves_the_api_name_itself_without_a_proxy") {
        return;
    }
    let (mut sb, dns) = world_with_hosts(&format!("127.0.0.1 localhost\n127.0.0.1 {API}\n"));
    sb.fake.listen_direct("127.0.0.1:443", API, sb.ca.clone());
    let d = Daemon::start(&mut sb, &format!("[daemon]\nregistries = [\"{REG}\"]\n"));
    d.wait_notify("READY=1", Duration::from_secs(20));
    let out = sb.helper("get", REG.as_bytes());
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}\n{}", d.log());
    assert!(said.contains("\"Secret\""), "{said}");
    assert_eq!(
        crate::daemon::ecr_calls(&sb),
        1,
        "the daemon fetched once and served the helper"
    );
    assert_eq!(dns.queries(), 0, "the name came from /etc/hosts");
}
