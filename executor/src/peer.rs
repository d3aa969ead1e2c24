//! Who may talk to the executor. The socket file's mode (`root:nox 0660`) is the first
//! gate; this is the second, checked on every connection before a single frame is read:
//! the kernel's record of the peer (`SO_PEERCRED`, `SO_PEERGROUPS`, both taken at
//! `connect` time, so the peer cannot change them afterwards) against the configuration.
//!
//! The decision, [`PeerPolicy::allows`], is a pure function; gathering the credentials is
//! the only effect, and the one raw syscall (`SO_PEERGROUPS`, which nix lacks) lives here.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use thiserror::Error;

use crate::config::ExecutorConfig;

/// The peer's credentials could not be read.
#[derive(Debug, Error)]
pub enum PeerError {
    #[error("could not read the peer's credentials (SO_PEERCRED)")]
    Credentials(#[source] io::Error),
    #[error("could not read the peer's supplementary groups (SO_PEERGROUPS)")]
    Groups(#[source] io::Error),
}

/// What the kernel says about the process at the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCredentials {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    /// Supplementary groups at connect time (empty on kernels before 4.13).
    pub groups: Vec<u32>,
}

/// Which peers are allowed: root, ourselves, the configured uids, and members (primary or
/// supplementary) of the configured groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPolicy {
    own_uid: u32,
    uids: Vec<u32>,
    gids: Vec<u32>,
}

impl PeerPolicy {
    pub fn new(own_uid: u32, uids: Vec<u32>, gids: Vec<u32>) -> PeerPolicy {
        PeerPolicy {
            own_uid,
            uids,
            gids,
        }
    }

    /// The policy of `config`, group names resolved now, once. Unknown groups are skipped
    /// with a warning: a group that does not exist has no members to let in.
    pub fn from_config(config: &ExecutorConfig) -> PeerPolicy {
        let gids = resolve_groups(
            &config.allowed_groups,
            |name| match nix::unistd::Group::from_name(name) {
                Ok(group) => group.map(|group| group.gid.as_raw()),
                Err(errno) => {
                    tracing::warn!(group = name, error = %errno, "could not look up an allowed group");
                    None
                }
            },
        );
        PeerPolicy::new(
            nix::unistd::geteuid().as_raw(),
            config.allowed_uids.clone(),
            gids,
        )
    }

    /// The decision, on credentials alone.
    pub fn allows(&self, peer: &PeerCredentials) -> bool {
        peer.uid == 0
            || peer.uid == self.own_uid
            || self.uids.contains(&peer.uid)
            || self.gids.contains(&peer.gid)
            || peer.groups.iter().any(|gid| self.gids.contains(gid))
    }
}

/// Group names or numbers to gids; names `lookup` does not know are skipped with a warning.
pub fn resolve_groups(names: &[String], lookup: impl Fn(&str) -> Option<u32>) -> Vec<u32> {
    let mut gids = Vec::new();
    for name in names {
        let gid = name.parse::<u32>().ok().or_else(|| lookup(name));
        match gid {
            Some(gid) if !gids.contains(&gid) => gids.push(gid),
            Some(_) => {}
            None => {
                tracing::warn!(
                    group = name.as_str(),
                    "allowed group does not exist; skipped"
                );
            }
        }
    }
    gids
}

/// Read the credentials of the peer of `stream`.
pub fn peer_credentials(stream: &tokio::net::UnixStream) -> Result<PeerCredentials, PeerError> {
    let cred = stream.peer_cred().map_err(PeerError::Credentials)?;
    let groups = match peer_groups(stream.as_fd()) {
        Ok(groups) => groups,
        // Kernels before 4.13 do not know SO_PEERGROUPS: primary gid only.
        Err(error) if error.raw_os_error() == Some(libc::ENOPROTOOPT) => Vec::new(),
        Err(error) => return Err(PeerError::Groups(error)),
    };
    Ok(PeerCredentials {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid(),
        groups,
    })
}

/// `getsockopt(SOL_SOCKET, SO_PEERGROUPS)`: the peer's supplementary groups.
#[allow(unsafe_code)]
fn peer_groups(socket: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    // Two rounds at most: the kernel answers ERANGE with the size it needs.
    for _ in 0..2 {
        let capacity = groups.len() * std::mem::size_of::<libc::gid_t>();
        let mut len = libc::socklen_t::try_from(capacity).map_err(io::Error::other)?;
        // SAFETY: `socket` is a live descriptor borrowed for the call; `groups` is an
        // initialised buffer of exactly `len` bytes that outlives the call, and the kernel
        // writes at most `len` bytes to it and the actual length back to `len`.
        let result = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast::<libc::c_void>(),
                &mut len,
            )
        };
        let needed = len as usize / std::mem::size_of::<libc::gid_t>();
        if result == 0 {
            groups.truncate(needed.min(groups.len()));
            return Ok(groups);
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::ERANGE) || needed <= groups.len() {
            return Err(error);
        }
        groups.resize(needed, 0);
    }
    Err(io::Error::from_raw_os_error(libc::ERANGE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> PeerCredentials {
        PeerCredentials {
            uid,
            gid,
            pid: Some(1234),
            groups: groups.to_vec(),
        }
    }

    fn policy() -> PeerPolicy {
        // We run as 900; uid 1001 is allowed by name, group 500 (`nox`) by membership.
        PeerPolicy::new(900, vec![1001], vec![500])
    }

    #[test]
    fn root_ourselves_and_listed_uids_are_allowed() {
        assert!(policy().allows(&peer(0, 0, &[])));
        assert!(policy().allows(&peer(900, 900, &[])));
        assert!(policy().allows(&peer(1001, 1001, &[])));
    }

    #[test]
    fn members_of_an_allowed_group_are_allowed_by_primary_or_supplementary_gid() {
        assert!(policy().allows(&peer(2000, 500, &[])));
        assert!(policy().allows(&peer(2000, 2000, &[7, 500])));
    }

    #[test]
    fn everyone_else_is_refused() {
        assert!(!policy().allows(&peer(2000, 2000, &[])));
        assert!(!policy().allows(&peer(2000, 2000, &[7, 8])));
        assert!(!PeerPolicy::new(900, vec![], vec![]).allows(&peer(65534, 65534, &[500])));
    }

    #[test]
    fn groups_resolve_by_number_or_name_and_unknown_names_are_skipped() {
        let lookup = |name: &str| (name == "nox").then_some(500);
        let names = ["nox", "12", "no-such-group", "500"].map(String::from);
        assert_eq!(resolve_groups(&names, lookup), vec![500, 12]);
    }

    #[tokio::test]
    async fn the_kernel_reports_our_own_credentials_for_a_socket_pair() {
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        let credentials = peer_credentials(&a).unwrap();
        assert_eq!(credentials.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(credentials.gid, nix::unistd::getegid().as_raw());
        assert_eq!(credentials.pid, Some(std::process::id() as i32));
        let mut ours: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .iter()
            .map(|gid| gid.as_raw())
            .collect();
        let mut theirs = credentials.groups;
        ours.sort_unstable();
        theirs.sort_unstable();
        assert_eq!(theirs, ours);
    }
}
