//! Refresh on link-up (src/daemon/link.rs) with a real kernel link: the test re-executes itself
//! in its own network and mount namespace (root), makes a veth pair into a second namespace
//! where the way to the fake ECR listens, and takes that link down and up. Two daemons share
//! the link: one as installed, one with `[daemon] link_events = false`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::daemon::{status_json, Daemon};
use crate::support::{self, text, Sandbox};

const REG: &str = "123456789012.dkr.ecr.us-west-2.amazonaws.com";
const PEER_NS: &str = "ecr-edge-uplink";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", text(&out.stderr));
}

/// A TCP relay listening on `addr` inside the network namespace at `ns`, to `to` in this one:
/// the far end of the uplink.
fn relay_in(ns: &Path, addr: SocketAddr, to: SocketAddr) {
    use nix::sched::{setns, CloneFlags};
    let here = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
    let there = std::fs::File::open(ns).unwrap();
    let (ready, bound) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // A socket stays in the namespace it was made in; the thread goes back for the rest.
        setns(&there, CloneFlags::CLONE_NEWNET).unwrap();
        let listener = TcpListener::bind(addr).unwrap();
        setns(&here, CloneFlags::CLONE_NEWNET).unwrap();
        ready.send(()).unwrap();
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(far) = TcpStream::connect(to) else {
                    return;
                };
                let (mut a, mut b) = (conn.try_clone().unwrap(), far.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut a, &mut b);
                    let _ = b.shutdown(std::net::Shutdown::Write);
                });
                let (mut far, mut conn) = (far, conn);
                let _ = std::io::copy(&mut far, &mut conn);
                let _ = conn.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    bound.recv().unwrap();
}

/// The registry's entry in the daemon's status.
fn entry(sb: &Sandbox) -> serde_json::Value {
    status_json(sb)["registries"][0].clone()
}

fn refresh(sb: &Sandbox) {
    let mut c = support::command(&support::binary());
    c.arg("refresh")
        .env_clear()
        .envs(sb.vars.iter().map(|(k, v)| (k, v)));
    let _ = c.output().unwrap();
}

/// With the link down, forced attempts fail as unreachable until the backoff is long; the link
/// comes back: the daemon that listens retries within 2 s (plus its process's start of work),
/// the one with `link_events = false` waits out its backoff.
#[test]
#[ignore = "needs root (own network and mount namespace, a veth pair); scripts/test runs it as root"]
fn a_link_coming_back_ends_the_backoff_within_two_seconds() {
    if !support::inside_namespace("link::a_link_coming_back_ends_the_backoff_within_two_seconds") {
        return;
    }
    ip(&["link", "set", "lo", "up"]);
    let out = Command::new("mount")
        .args(["--make-rprivate", "/"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The peer namespace's name lives on a tmpfs of this mount namespace: nothing is left
    // behind on the machine.
    std::fs::create_dir_all("/run/netns").unwrap();
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "lab-netns", "/run/netns"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    ip(&["netns", "add", PEER_NS]);
    ip(&[
        "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1", "netns", PEER_NS,
    ]);
    ip(&["addr", "add", "10.77.0.1/24", "dev", "uplink0"]);
    ip(&["link", "set", "uplink0", "up"]);
    ip(&[
        "-n",
        PEER_NS,
        "addr",
        "add",
        "10.77.0.2/24",
        "dev",
        "uplink1",
    ]);
    ip(&["-n", PEER_NS, "link", "set", "uplink1", "up"]);
    let ns = Path::new("/run/netns").join(PEER_NS);

    let mut daemons = Vec::new();
    for (port, listens) in [(3128u16, true), (3129, false)] {
        let mut sb = Sandbox::new();
        let fake: SocketAddr = sb
            .fake
            .proxy_url
            .trim_start_matches("http://")
            .parse()
            .unwrap();
        let far = SocketAddr::from(([10, 77, 0, 2], port));
        relay_in(&ns, far, fake);
        sb.set("HTTPS_PROXY", Some(&format!("http://{far}")));
        let d = Daemon::start(
            &mut sb,
            &format!("[daemon]\nregistries = [\"{REG}\"]\nlink_events = {listens}\n"),
        );
        d.wait_notify("READY=1", Duration::from_secs(20));
        assert!(entry(&sb)["expires_at"].is_i64(), "{}", d.log());
        daemons.push((sb, d, listens));
    }

    // The link goes down: each forced attempt fails as unreachable and the backoff grows.
    ip(&["link", "set", "uplink0", "down"]);
    for (sb, d, _) in &daemons {
        let mut waits = 0;
        for _ in 0..40 {
            refresh(sb);
            let e = entry(sb);
            let now = ecr_edge::internal::token::now();
            waits = e["next_attempt"].as_i64().unwrap_or(now) - now;
            if waits >= 30 {
                break;
            }
        }
        assert!(waits >= 30, "no long backoff: {}\n{}", entry(sb), d.log());
        assert_eq!(
            entry(sb)["refreshes"]["unreachable"]
                .as_u64()
                .map(|n| n > 0),
            Some(true)
        );
    }
    let calls: Vec<usize> = daemons
        .iter()
        .map(|(sb, _, _)| sb.fake.calls().len())
        .collect();

    let up = Instant::now();
    ip(&["link", "set", "uplink0", "up"]);
    let mut took = [None, None];
    while up.elapsed() < Duration::from_secs(8) {
        for (i, (sb, _, _)) in daemons.iter().enumerate() {
            if took[i].is_none() && sb.fake.calls().len() > calls[i] && entry(sb)["failures"] == 0 {
                took[i] = Some(up.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (listening, deaf) = (&daemons[0], &daemons[1]);
    let took_listening = took[0].unwrap_or_else(|| {
        panic!(
            "no refresh within 8 s of the link coming up: {}\n{}",
            entry(&listening.0),
            listening.1.log()
        )
    });
    // The attempt starts within 1.8 s (the pause); the rest is the attempt itself, a new TLS
    // connection through the relay (slower under an emulator). Either way long before the
    // backoff (30 s or more) would have ended.
    assert!(
        took_listening < Duration::from_secs(6),
        "{took_listening:?}"
    );
    assert!(
        listening
            .1
            .log()
            .contains("the link is back: retrying now instead of at the end of the backoff"),
        "{}",
        listening.1.log()
    );
    // Bringing a link up is a storm (link, address and route messages): one attempt came of it.
    assert_eq!(
        listening.0.fake.calls().len(),
        calls[0] + 1,
        "{:?}",
        listening.0.fake.calls()
    );
    assert_eq!(took[1], None, "link_events = false: the backoff holds");
    let e = entry(&deaf.0);
    let waits = e["next_attempt"].as_i64().unwrap() - ecr_edge::internal::token::now();
    assert!(waits > 10, "{e}");
    println!(
        "link up -> token: {:.0} ms with the link listener; without it the daemon still waits \
         {waits} s (its backoff)",
        took_listening.as_secs_f64() * 1000.0
    );
}
