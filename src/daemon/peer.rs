//! Who may ask the daemon: the peer's user and groups from the kernel (`SO_PEERCRED`, and the
//! peer's supplementary groups from `/proc`), checked against the allowed lists. The socket's
//! mode (0660) is the first gate; this is the second, and the one that logs who was refused.

use std::os::fd::AsFd;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

/// Who may ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Allowed user IDs.
    pub uids: Vec<u32>,
    /// Allowed group IDs (primary or supplementary).
    pub gids: Vec<u32>,
}

/// A connected peer, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Process ID at connect time.
    pub pid: i32,
    /// Effective user ID.
    pub uid: u32,
    /// Effective group ID.
    pub gid: u32,
}

/// The peer of a connected Unix socket.
///
/// # Errors
/// The `getsockopt` failure.
pub fn peer_of(socket: &impl AsFd) -> nix::Result<Peer> {
    let c = getsockopt(socket, PeerCredentials)?;
    Ok(Peer {
        pid: c.pid(),
        uid: c.uid(),
        gid: c.gid(),
    })
}

impl Policy {
    /// Whether `peer` may ask: its uid is listed, or its primary group, or one of its
    /// supplementary groups (read from `/proc/<pid>/status` when that process still has the
    /// peer's uid).
    pub fn allows(&self, peer: &Peer) -> bool {
        if self.uids.contains(&peer.uid) || self.gids.contains(&peer.gid) {
            return true;
        }
        if self.gids.is_empty() {
            return false;
        }
        std::fs::read_to_string(format!("/proc/{}/status", peer.pid))
            .ok()
            .and_then(|status| supplementary_groups(&status, peer.uid))
            .is_some_and(|groups| groups.iter().any(|g| self.gids.contains(g)))
    }
}

/// The `Groups:` of a `/proc/<pid>/status` text whose effective uid (`Uid:` second field) is
/// `uid`; `None` otherwise (the pid was reused by another user's process).
pub fn supplementary_groups(status: &str, uid: u32) -> Option<Vec<u32>> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|rest| rest.split_whitespace().collect::<Vec<_>>())
    };
    let uids = field("Uid:")?;
    if uids.get(1)?.parse::<u32>().ok()? != uid {
        return None;
    }
    Some(
        field("Groups:")?
            .iter()
            .filter_map(|g| g.parse().ok())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tdocker\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\nGroups:\t4 27 998 \n";

    #[test]
    fn supplementary_groups_of_the_right_user_only() {
        assert_eq!(supplementary_groups(STATUS, 1000), Some(vec![4, 27, 998]));
        assert_eq!(supplementary_groups(STATUS, 1001), None);
        assert_eq!(supplementary_groups("Uid:\tx\n", 0), None);
        assert_eq!(supplementary_groups("", 0), None);
    }

    #[test]
    fn policy() {
        let p = Policy {
            uids: vec![0],
            gids: vec![998],
        };
        let peer = |uid, gid| Peer { pid: 0, uid, gid };
        assert!(p.allows(&peer(0, 5)));
        assert!(p.allows(&peer(1000, 998)));
        // pid 0 has no /proc entry: no supplementary groups to check.
        assert!(!p.allows(&peer(1000, 1000)));
        let me = Peer {
            pid: std::process::id() as i32,
            uid: nix::unistd::geteuid().as_raw(),
            gid: u32::MAX,
        };
        let own_groups = supplementary_groups(
            &std::fs::read_to_string("/proc/self/status").unwrap(),
            me.uid,
        )
        .unwrap();
        if let Some(g) = own_groups.first() {
            let by_group = Policy {
                uids: vec![],
                gids: vec![*g],
            };
            assert!(by_group.allows(&me));
        }
    }
}
