//! One uid per workspace: who owns each workspace's files and whom its jobs run as.
//!
//! When the executor is root, every workspace (every token) gets its own uid, and the gid of
//! the same number, from a configured range (`executor.tenant_uid_first`, `_count`; no
//! passwd entries are needed). The workspace directory is 0700 and owned by that uid, so the
//! kernel's ordinary permission checks separate tenants where Landlock has no rule: another
//! tenant's job cannot stat, chmod, utime or set attributes on anything in it, cannot signal
//! or ptrace its processes, and its processes do not count against this tenant's
//! RLIMIT_NPROC.
//!
//! The assignment is stored nowhere but in the workspace directory's owner: at start the
//! executor reads it back from every workspace ([`Owners::adopt`]); a workspace owned by a
//! uid outside the range (made by an older nox, when every job shared one sandbox user) is
//! given a uid of its own and its tree is handed over ([`give_tree`]). A new workspace's uid
//! is drawn by hashing its name into the range and probing for a free one, under a lock, so
//! two workspaces never share a uid.

use std::collections::{HashMap, HashSet};
use std::hash::Hasher;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstatat};
use nix::unistd::{Gid, Uid, fchownat};

/// `first .. first + count`, the uids workspaces are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    pub first: u32,
    pub count: u32,
}

impl UidRange {
    pub fn contains(&self, uid: u32) -> bool {
        uid.checked_sub(self.first)
            .is_some_and(|offset| offset < self.count)
    }
}

/// The uid of every known workspace.
#[derive(Debug)]
pub struct Owners {
    range: UidRange,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    by_name: HashMap<String, u32>,
    taken: HashSet<u32>,
}

impl Owners {
    pub fn new(range: UidRange) -> Owners {
        Owners {
            range,
            table: Mutex::new(Table::default()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The uid assigned to `workspace`, if any.
    pub fn get(&self, workspace: &str) -> Option<u32> {
        self.table().by_name.get(workspace).copied()
    }

    /// Record that `workspace` is owned by `uid`, found on disk. False when `uid` is outside
    /// the range or already another workspace's: the caller then assigns a new one.
    pub fn adopt(&self, workspace: &str, uid: u32) -> bool {
        let mut table = self.table();
        if let Some(&known) = table.by_name.get(workspace) {
            return known == uid;
        }
        if !self.range.contains(uid) || table.taken.contains(&uid) {
            return false;
        }
        table.taken.insert(uid);
        table.by_name.insert(workspace.to_owned(), uid);
        true
    }

    /// The uid of `workspace`: the one it has, or a free one drawn now. `None` when every
    /// uid of the range is taken.
    pub fn assign(&self, workspace: &str) -> Option<u32> {
        let mut table = self.table();
        if let Some(&uid) = table.by_name.get(workspace) {
            return Some(uid);
        }
        let mut hasher = std::hash::DefaultHasher::new();
        hasher.write(workspace.as_bytes());
        let count = u64::from(self.range.count.max(1));
        let start = hasher.finish() % count;
        let uid = (0..count)
            .filter_map(|step| u32::try_from((start + step) % count).ok())
            .map(|offset| self.range.first + offset)
            .find(|uid| !table.taken.contains(uid))?;
        table.taken.insert(uid);
        table.by_name.insert(workspace.to_owned(), uid);
        Some(uid)
    }
}

/// Give `dir` and everything beneath it to `uid`:`uid`, never following a symlink (links
/// themselves are re-owned). Directories are opened `O_NOFOLLOW` one level at a time; what
/// vanishes meanwhile is skipped. Depth is bounded to stop a pathological tree.
pub fn give_tree(dir: &OwnedFd, uid: u32) -> Result<(), Errno> {
    const MAX_DEPTH: usize = 256;
    let (user, group) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(uid)));
    nix::unistd::fchown(dir, user, group)?;
    let mut pending: Vec<(OwnedFd, usize)> = vec![(dir.try_clone().map_err(errno_of)?, 0)];
    while let Some((fd, depth)) = pending.pop() {
        let Ok(mut listing) = Dir::from_fd(fd) else {
            continue;
        };
        let names: Vec<std::ffi::CString> = listing
            .iter()
            .filter_map(Result::ok)
            .map(|entry| entry.file_name().to_owned())
            .filter(|name| name.as_bytes() != b"." && name.as_bytes() != b"..")
            .collect();
        let parent = listing.as_fd();
        for name in names {
            match fchownat(
                parent,
                name.as_c_str(),
                user,
                group,
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(errno) => return Err(errno),
            }
            let is_dir =
                fstatat(parent, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW).is_ok_and(|stat| {
                    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
                });
            if is_dir && depth < MAX_DEPTH {
                let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                if let Ok(child) = openat(parent, name.as_c_str(), flags, Mode::empty()) {
                    pending.push((child, depth + 1));
                }
            }
        }
    }
    Ok(())
}

fn errno_of(error: std::io::Error) -> Errno {
    Errno::from_raw(error.raw_os_error().unwrap_or(libc::EIO))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANGE: UidRange = UidRange {
        first: 2_000_000_000,
        count: 4,
    };

    #[test]
    fn every_workspace_gets_its_own_uid_and_keeps_it() {
        let owners = Owners::new(RANGE);
        let uids: Vec<u32> = ["a", "b", "c", "d"]
            .iter()
            .map(|name| owners.assign(name).unwrap())
            .collect();
        let distinct: HashSet<u32> = uids.iter().copied().collect();
        assert_eq!(distinct.len(), 4, "{uids:?}");
        assert!(uids.iter().all(|uid| RANGE.contains(*uid)), "{uids:?}");
        assert_eq!(owners.assign("b"), Some(uids[1]));
        assert_eq!(owners.get("c"), Some(uids[2]));
        assert_eq!(owners.assign("e"), None, "the range is full");
    }

    #[test]
    fn a_uid_found_on_disk_is_adopted_once_and_only_from_the_range() {
        let owners = Owners::new(RANGE);
        assert!(owners.adopt("a", RANGE.first + 2));
        assert!(owners.adopt("a", RANGE.first + 2), "idempotent");
        assert!(!owners.adopt("b", RANGE.first + 2), "taken by a");
        assert!(!owners.adopt("c", 998), "outside the range");
        assert!(!owners.adopt("d", RANGE.first + RANGE.count));
        let b = owners.assign("b").unwrap();
        assert_ne!(b, RANGE.first + 2);
    }
}
