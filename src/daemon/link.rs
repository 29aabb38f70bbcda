//! Refresh on link-up: the daemon listens to the kernel's routing netlink (`NETLINK_ROUTE`,
//! the multicast groups for links, addresses and routes). While a registry waits out a
//! backoff, an event that says the uplink may be back (a link up and running, a new address,
//! a new default route) starts its attempt within 2 s instead of at the end of the backoff.
//!
//! - Spread: the attempt starts after a pause drawn uniformly from 0.2–1.8 s, so a fleet whose
//!   links return together (a cell tower, a site switch) does not call AWS in lock step.
//! - Storms: events that arrive during the pause are absorbed into it, and an entry already
//!   due or refreshing is left alone ([`super::state::Entry::link_up`]), so a storm starts at
//!   most one attempt per registry.
//! - Healthy registries are never touched: only entries with failures since their last
//!   success move. `[daemon] link_events = false` turns it off (read at each event, so a
//!   reload applies).
//!
//! The message layout (`struct nlmsghdr`, `ifinfomsg`, `ifaddrmsg`, `rtmsg`: the kernel's
//! stable ABI, docs/reference.md section 9) is read by [`says_link_may_be_back`], a pure,
//! panic-free function fuzzed like the other parsers of outside input. Only the fixed headers
//! are read, never attributes: a crate that models every attribute would add size for nothing
//! the daemon uses.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::schedule::{Jitter, SystemJitter};
use super::state::Shared;

/// The message types that can announce a returning uplink.
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
/// `ifinfomsg.ifi_flags` bits.
const IFF_UP: u32 = 0x1;
const IFF_LOOPBACK: u32 = 0x8;
const IFF_RUNNING: u32 = 0x40;
/// `ifaddrmsg.ifa_scope` of a host-only address (127.0.0.1, ::1).
const RT_SCOPE_HOST: u8 = 254;
/// `rtmsg.rtm_table` of the main routing table.
const RT_TABLE_MAIN: u8 = 254;
/// Multicast groups: RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR,
/// RTMGRP_IPV6_ROUTE.
const GROUPS: u32 = 0x1 | 0x10 | 0x40 | 0x100 | 0x400;
/// `struct nlmsghdr`: length, type, flags, sequence, port.
const HEADER: usize = 16;

/// The pause between an event and the attempts it starts: uniform in this range.
pub(super) const PAUSE: (Duration, Duration) =
    (Duration::from_millis(200), Duration::from_millis(1800));

/// Whether a datagram from the routing netlink holds a message that says the uplink may be
/// back: a non-loopback link up and running, a new address that is not host-only, or a new
/// default route in the main table. Anything short, truncated or unknown says no.
pub fn says_link_may_be_back(datagram: &[u8]) -> bool {
    let mut rest = datagram;
    while let Some(header) = rest.get(..HEADER) {
        let len = u32_at(header, 0).map_or(0, |l| l as usize);
        let kind = u16_at(header, 4).unwrap_or(0);
        let Some(body) = (len >= HEADER).then(|| rest.get(HEADER..len)).flatten() else {
            return false;
        };
        let says = match kind {
            RTM_NEWLINK => u32_at(body, 8).is_some_and(|flags| {
                flags & (IFF_UP | IFF_RUNNING) == IFF_UP | IFF_RUNNING && flags & IFF_LOOPBACK == 0
            }),
            RTM_NEWADDR => body.get(3).is_some_and(|&scope| scope != RT_SCOPE_HOST),
            RTM_NEWROUTE => body.get(1) == Some(&0) && body.get(4) == Some(&RT_TABLE_MAIN),
            _ => false,
        };
        if says {
            return true;
        }
        // Messages are aligned to 4 bytes.
        rest = rest.get(len.saturating_add(3) & !3..).unwrap_or_default();
    }
    false
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let bytes = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    let bytes = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_ne_bytes(bytes.try_into().ok()?))
}

/// A routing-netlink socket subscribed to [`GROUPS`], whose reads give up after half a second
/// so the thread reading it notices shutdown.
fn open() -> nix::Result<OwnedFd> {
    use nix::sys::socket::{
        bind, setsockopt, socket, sockopt, AddressFamily, NetlinkAddr, SockFlag, SockProtocol,
        SockType,
    };
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, GROUPS))?;
    setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(0, 500_000),
    )?;
    Ok(fd)
}

/// Reads datagrams on a thread of its own (tokio registers only sockets it made itself without
/// `unsafe`) until shutdown, notifying `events` for each that says the link
/// may be back. A lost datagram (`ENOBUFS`: the kernel dropped events while nobody read)
/// counts as one: something happened.
fn read_events(socket: &OwnedFd, shared: &Shared, events: &Notify) {
    use nix::errno::Errno;
    let mut buf = vec![0u8; 16 * 1024];
    while !shared.is_stopping() {
        match nix::sys::socket::recv(
            socket.as_raw_fd(),
            &mut buf,
            nix::sys::socket::MsgFlags::empty(),
        ) {
            Ok(n) => {
                if buf.get(..n).is_some_and(says_link_may_be_back) {
                    events.notify_one();
                }
            }
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(Errno::ENOBUFS) => events.notify_one(),
            Err(e) => {
                tracing::warn!("link events: {}; no longer watched", e.desc());
                return;
            }
        }
    }
}

/// Watches link events until shutdown; each one (after [`PAUSE`]) lets registries in backoff
/// try at once. Without a routing netlink socket (a kernel or sandbox without it) the daemon
/// goes on with its backoffs, and says so once.
pub(super) async fn link_loop(shared: Arc<Shared>) {
    let socket = match open() {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(
                "link events not watched ({}): after a failure the daemon waits out its backoff",
                e.desc()
            );
            return;
        }
    };
    let events = Arc::new(Notify::new());
    // A thread of its own, not the runtime's blocking pool: a blocking task in flight would
    // also hold back a paused test clock. It says when it has ended.
    let (ended, reader) = tokio::sync::oneshot::channel::<()>();
    let spawned = {
        let (shared, events) = (shared.clone(), events.clone());
        std::thread::Builder::new()
            .name("ecr-edge-link".into())
            .spawn(move || {
                read_events(&socket, &shared, &events);
                let _ = ended.send(());
            })
    };
    if let Err(e) = spawned {
        tracing::info!(
            "link events not watched ({e}): after a failure the daemon waits out its backoff"
        );
        return;
    }
    let mut stopped = std::pin::pin!(shared.stopped());
    loop {
        tokio::select! {
            () = events.notified() => {}
            _ = &mut stopped => break,
        }
        // The rest of the storm is absorbed into the pause.
        let pause = SystemJitter.between(PAUSE.0, PAUSE.1);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = &mut stopped => break,
        }
        let moved = shared.lock().link_up(Instant::now());
        if moved > 0 {
            tracing::info!(
                registries = moved,
                "the link is back: retrying now instead of at the end of the backoff"
            );
            shared.wake.notify_one();
        }
    }
    // The reader sees the shutdown within half a second.
    let _ = reader.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(HEADER + body.len()).unwrap();
        let mut m = Vec::new();
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(body);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn link(flags: u32) -> Vec<u8> {
        // ifinfomsg: family, pad, type (u16), index (i32), flags, change.
        let mut body = vec![0u8; 8];
        body.extend_from_slice(&flags.to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes());
        message(RTM_NEWLINK, &body)
    }

    #[test]
    fn a_link_up_and_running_an_address_or_a_default_route_say_yes() {
        assert!(says_link_may_be_back(&link(IFF_UP | IFF_RUNNING)));
        assert!(!says_link_may_be_back(&link(IFF_UP)), "up, no carrier");
        assert!(!says_link_may_be_back(&link(0)), "down");
        assert!(!says_link_may_be_back(&link(
            IFF_UP | IFF_RUNNING | IFF_LOOPBACK
        )));
        // ifaddrmsg: family, prefix length, flags, scope, index.
        assert!(says_link_may_be_back(&message(
            RTM_NEWADDR,
            &[2, 24, 0, 0, 3, 0, 0, 0]
        )));
        assert!(!says_link_may_be_back(&message(
            RTM_NEWADDR,
            &[2, 8, 0, RT_SCOPE_HOST, 1, 0, 0, 0]
        )));
        // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
        let route = |dst_len: u8, table: u8| {
            message(
                RTM_NEWROUTE,
                &[2, dst_len, 0, 0, table, 3, 0, 1, 0, 0, 0, 0],
            )
        };
        assert!(says_link_may_be_back(&route(0, RT_TABLE_MAIN)));
        assert!(!says_link_may_be_back(&route(24, RT_TABLE_MAIN)));
        assert!(!says_link_may_be_back(&route(0, 255)), "the local table");
        // The second of two messages counts.
        let mut two = link(0);
        two.extend(link(IFF_UP | IFF_RUNNING));
        assert!(says_link_may_be_back(&two));
    }

    /// The kernel's own datagrams (fuzz/corpus/netlink_route, recorded on x86_64 while a veth
    /// pair was made, addressed, routed, brought up and down).
    #[test]
    #[cfg(target_endian = "little")]
    fn the_kernels_messages_are_read_as_recorded() {
        let corpus =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/netlink_route");
        for (name, says) in [
            ("lo-up", false),
            ("lo-address", false),
            ("veth-created-down", false),
            ("veth-up-no-carrier-yet", false),
            ("veth-up-running", true),
            ("veth-address", true),
            ("default-route", true),
            ("route-removed", false),
            ("veth-down", false),
        ] {
            let data = std::fs::read(corpus.join(name)).unwrap();
            assert_eq!(says_link_may_be_back(&data), says, "{name}");
        }
    }

    #[test]
    fn short_or_lying_lengths_say_no_without_panicking() {
        let up = link(IFF_UP | IFF_RUNNING);
        for cut in 0..up.len() {
            assert!(!says_link_may_be_back(&up[..cut]), "cut at {cut}");
        }
        for len in [0u32, 1, 15, 16, 17, 1000, u32::MAX] {
            let mut m = up.clone();
            m[..4].copy_from_slice(&len.to_ne_bytes());
            let _ = says_link_may_be_back(&m);
        }
        assert!(!says_link_may_be_back(&message(99, &[1; 16])));
    }
}
