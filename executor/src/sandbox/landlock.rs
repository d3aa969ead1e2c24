//! Landlock: a job reads the system directories, reads and writes its workspace and its
//! scratch directory, and reaches nothing else by path. Where the kernel has them (ABI 4,
//! 6) it also may not bind or connect TCP, connect to abstract Unix sockets made outside
//! its domain, or signal processes outside it — so no job can signal the executor or
//! another job, whatever their uids.
//!
//! The ruleset is built in the executor (it opens paths and allocates) and handed to the
//! child as a descriptor; the child only calls `landlock_restrict_self`.
//!
//! A ruleset names directories by inode, not by path, and a job's directories are mostly
//! ones an earlier job had: its workspace, and a scratch directory kept from an earlier
//! job of the same workspace (see `scratch`). So rulesets are kept, by the identity
//! (device, inode) of the directories they let a job write, and a job whose directories
//! were seen before reuses one: two `stat`s instead of ~70 system calls. A
//! kept ruleset holds its directories' inodes, so their numbers cannot be reused while
//! it is kept. INVARIANT: a kept ruleset's descriptor never reaches a job's code — any
//! holder could add rules to it, for every later job. It is close-on-exec in the executor
//! and its children, and the Python zygote closes it right after `landlock_restrict_self`.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, Ruleset,
    RulesetAttr, RulesetCreatedAttr, Scope,
};
use nix::sys::stat::FileStat;

use super::SandboxError;
use crate::views::View;

/// System directories every job may read and execute from (those that exist).
const SYSTEM_READ_PATHS: [&str; 12] = [
    "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/usr", "/etc", "/opt", "/proc",
    "/sys", "/dev",
];

/// Device files a job may also write (`> /dev/null` is everywhere in shell scripts).
const WRITABLE_DEVICES: [&str; 3] = ["/dev/null", "/dev/zero", "/dev/full"];

/// Rulesets kept: more than the scratch directories kept (64) plus the jobs running at
/// once, so steady work reuses them.
const KEPT_RULESETS: usize = 128;

/// The identity of a ruleset's writable directories, in order: `(device, inode)` each.
type Writable = Vec<(u64, u64)>;

/// What a kept ruleset is found by: the view it was made for (its system paths) and its
/// writable directories.
type Key = (Option<usize>, Writable);

/// Opened paths with the rights a rule gives beneath each.
type Rules = Vec<(OwnedFd, BitFlags<AccessFs>)>;

/// What every job's ruleset has in common: the system paths, opened only while a ruleset
/// is built (rulesets are kept, so rarely), never held. Every descriptor the executor
/// holds is copied into each child it clones and closed again at the child's exec: held,
/// these (13 per view and 13 more here) were most of its table, ~10 µs of every
/// forked job's start (`dup_fd`, `do_close_on_exec`).
#[derive(Debug)]
pub struct LandlockPolicy {
    abi: ABI,
    abi_version: i32,
    /// Read-only system paths and the extra readable ones, as jobs name them.
    read_paths: Vec<PathBuf>,
    /// Rulesets built, the most recently used first.
    kept: Mutex<VecDeque<(Key, Arc<OwnedFd>)>>,
}

impl LandlockPolicy {
    /// `None` when the kernel has no Landlock (or it is disabled at boot).
    pub fn probe(extra_read_paths: &[PathBuf]) -> Option<LandlockPolicy> {
        let abi_version = super::landlock_abi_version();
        if abi_version < 1 {
            return None;
        }
        let abi = ABI::from(abi_version);
        let read_paths: Vec<PathBuf> = SYSTEM_READ_PATHS
            .iter()
            .map(PathBuf::from)
            .chain(extra_read_paths.iter().cloned())
            .collect();
        Some(LandlockPolicy {
            abi,
            abi_version,
            read_paths,
            kept: Mutex::new(VecDeque::with_capacity(KEPT_RULESETS)),
        })
    }

    /// The kernel's Landlock ABI version.
    pub fn abi_version(&self) -> i32 {
        self.abi_version
    }

    /// A ruleset for one job in `view` (`None`: in the executor's own root): `writable`
    /// are its workspace and scratch directory. Kept for later jobs with the same view and
    /// directories; numbered above the descriptors a child places (see `spawn::raise_fd`).
    pub fn ruleset(
        &self,
        view: Option<&View>,
        writable: &[&Path],
    ) -> Result<Arc<OwnedFd>, SandboxError> {
        let index = view.map(View::index);
        // Found by the directories' identity, read without opening them: `stat` follows
        // the path as the `open` below does. Only a ruleset to be built opens them.
        let seen = writable
            .iter()
            .map(|path| {
                nix::sys::stat::stat(*path)
                    .map(|stat| (stat.st_dev, stat.st_ino))
                    .map_err(|errno| SandboxError::OpenDirectory {
                        path: path.to_path_buf(),
                        source: io::Error::from(errno),
                    })
            })
            .collect::<Result<Writable, _>>()?;
        let seen: Key = (index, seen);
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = kept.iter().position(|(key, _)| *key == seen)
            && let Some(entry) = kept.remove(at)
        {
            let ruleset = Arc::clone(&entry.1);
            kept.push_front(entry);
            return Ok(ruleset);
        }
        drop(kept);
        let fixed = self.fixed_rules(view);
        let opened = writable
            .iter()
            .map(|path| {
                open_path(path).map_err(|source| SandboxError::OpenDirectory {
                    path: path.to_path_buf(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Kept under what was opened: the rules are about those directories.
        let key: Key = (
            index,
            opened
                .iter()
                .map(|(_, stat)| (stat.st_dev, stat.st_ino))
                .collect(),
        );
        let ruleset = Arc::new(
            super::spawn::raise_fd(self.build(&fixed, &opened)?).map_err(SandboxError::Pipe)?,
        );
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        // Another job with the same directories may have built one meanwhile: keep one.
        if let Some((_, theirs)) = kept.iter().find(|(seen, _)| *seen == key) {
            return Ok(Arc::clone(theirs));
        }
        kept.truncate(KEPT_RULESETS - 1);
        kept.push_front((key, Arc::clone(&ruleset)));
        Ok(ruleset)
    }

    /// Read-only system paths and writable devices, with the rights each one gets: opened
    /// through `view` (a view's system directories are inodes of its own overlays, which
    /// the executor's own paths' rules would not cover), or in the executor's own root.
    fn fixed_rules(&self, view: Option<&View>) -> Rules {
        let mut rules = rules(self.abi, &self.read_paths, |path| match view {
            Some(view) => view.open(path, nix::fcntl::OFlag::O_PATH),
            None => Ok(open_path(path)?.0),
        });
        // A view's /dev/shm and /tmp are its own (see `views`); the host's are shared by
        // everyone.
        let Some(view) = view else {
            return rules;
        };
        let access = AccessFs::from_read(self.abi) | AccessFs::from_write(self.abi);
        for own in view.own_tmpfs() {
            let rights = if own.exec {
                access
            } else {
                access & !AccessFs::Execute
            };
            if let Ok(dir) = view.open(Path::new(own.path), nix::fcntl::OFlag::O_PATH) {
                rules.push((dir, rights));
            }
        }
        rules
    }

    /// Rulesets kept now.
    #[cfg(test)]
    fn kept_count(&self) -> usize {
        self.kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Build a ruleset: the `fixed` rules, and every right on each of `writable`.
    fn build(
        &self,
        fixed: &Rules,
        writable: &[(OwnedFd, FileStat)],
    ) -> Result<OwnedFd, SandboxError> {
        let abi = self.abi;
        let build = || -> Result<Option<OwnedFd>, landlock::RulesetError> {
            let mut ruleset = Ruleset::default()
                .set_compatibility(CompatLevel::BestEffort)
                .handle_access(AccessFs::from_all(abi))?;
            if self.abi_version >= 4 {
                ruleset = ruleset.handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)?;
            }
            if self.abi_version >= 6 {
                ruleset = ruleset.scope(Scope::AbstractUnixSocket | Scope::Signal)?;
            }
            let fixed = fixed.iter().map(|(fd, access)| {
                Ok::<_, landlock::RulesetError>(PathBeneath::new(fd.as_fd(), *access))
            });
            // Directories in practice.
            let own = writable.iter().map(|(fd, stat)| {
                let is_dir = stat.st_mode & libc::S_IFMT == libc::S_IFDIR;
                let access = for_kind(AccessFs::from_all(abi), abi, is_dir);
                Ok::<_, landlock::RulesetError>(PathBeneath::new(fd.as_fd(), access))
            });
            let created = ruleset
                .create()?
                .no_new_privs(false)
                .add_rules(fixed)?
                .add_rules(own)?;
            Ok(created.into())
        };
        match build() {
            Ok(Some(fd)) => Ok(fd),
            Ok(None) => Err(SandboxError::LandlockUnavailable),
            Err(source) => Err(SandboxError::Landlock(source)),
        }
    }
}

/// The fixed rules: each of `read_paths` readable, [`WRITABLE_DEVICES`] read-write, as
/// `open` opens them (those it can), for one ruleset's build.
fn rules(abi: ABI, read_paths: &[PathBuf], open: impl Fn(&Path) -> io::Result<OwnedFd>) -> Rules {
    let readable = read_paths.iter().filter_map(|path| {
        let fd = open(path).ok()?;
        let stat = nix::sys::stat::fstat(&fd).ok()?;
        let is_file = stat.st_mode & libc::S_IFMT == libc::S_IFREG;
        Some((fd, for_kind(AccessFs::from_read(abi), abi, !is_file)))
    });
    let devices = WRITABLE_DEVICES.iter().filter_map(|device| {
        let access = AccessFs::ReadFile | AccessFs::WriteFile;
        Some((open(Path::new(device)).ok()?, access))
    });
    readable.chain(devices).collect()
}

/// `access` as a rule on a directory, or only the part of it that applies to a file (as
/// `landlock::path_beneath_rules` does).
fn for_kind(access: BitFlags<AccessFs>, abi: ABI, is_dir: bool) -> BitFlags<AccessFs> {
    if is_dir {
        access
    } else {
        access & AccessFs::from_file(abi)
    }
}

/// `path` opened as `O_PATH` (following symbolic links, as `PathFd` does), with its
/// status.
fn open_path(path: &Path) -> io::Result<(OwnedFd, FileStat)> {
    let fd = nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let stat = nix::sys::stat::fstat(&fd)?;
    Ok((fd, stat))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;

    use super::*;

    /// Whether `/bin/sh` restricted by `ruleset` can create a file in `dir`.
    fn can_write(ruleset: &OwnedFd, dir: &Path) -> bool {
        let fd = ruleset.as_raw_fd();
        let mut command = std::process::Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(format!("echo x > '{}/probe'", dir.display()))
            .stderr(std::process::Stdio::null());
        // SAFETY: between fork and exec the child makes two async-signal-safe system calls.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::syscall(libc::SYS_landlock_restrict_self, fd, 0) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command.status().is_ok_and(|status| status.success())
    }

    #[test]
    fn a_kept_ruleset_serves_the_same_directories_and_never_a_new_one_at_the_same_path() {
        let Some(policy) = LandlockPolicy::probe(&[]) else {
            return; // no Landlock in this kernel: nothing is kept
        };
        let dir = tempfile::tempdir().unwrap();
        let (work, scratch) = (dir.path().join("work"), dir.path().join("scratch"));
        std::fs::create_dir(&work).unwrap();
        std::fs::create_dir(&scratch).unwrap();

        let first = policy.ruleset(None, &[&work, &scratch]).unwrap();
        let again = policy.ruleset(None, &[&work, &scratch]).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "the same directories reuse it");
        assert!(can_write(&again, &scratch));
        assert!(!can_write(&again, dir.path()), "only the two directories");

        // A new directory at the same path is another inode: a new ruleset, which lets the
        // job write it, while the kept one would not.
        std::fs::remove_dir_all(&scratch).unwrap();
        std::fs::create_dir(&scratch).unwrap();
        let renewed = policy.ruleset(None, &[&work, &scratch]).unwrap();
        assert!(!Arc::ptr_eq(&first, &renewed));
        assert!(can_write(&renewed, &scratch));
        assert!(
            !can_write(&first, &scratch),
            "the kept one names the old directory"
        );

        // A directory renamed (as kept scratch directories are) keeps its ruleset.
        let moved = dir.path().join("moved");
        std::fs::rename(&scratch, &moved).unwrap();
        let after_rename = policy.ruleset(None, &[&work, &moved]).unwrap();
        assert!(Arc::ptr_eq(&renewed, &after_rename));
        assert!(can_write(&after_rename, &moved));
        assert_eq!(policy.kept_count(), 2);
    }

    #[test]
    fn rulesets_kept_are_bounded_and_the_least_recently_used_goes_first() {
        let Some(policy) = LandlockPolicy::probe(&[]) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = (0..=KEPT_RULESETS)
            .map(|i| {
                let path = dir.path().join(i.to_string());
                std::fs::create_dir(&path).unwrap();
                path
            })
            .collect();
        let first = policy.ruleset(None, &[&dirs[0]]).unwrap();
        let second = policy.ruleset(None, &[&dirs[1]]).unwrap();
        for path in &dirs[2..KEPT_RULESETS] {
            policy.ruleset(None, &[path]).unwrap();
        }
        assert_eq!(policy.kept_count(), KEPT_RULESETS);
        // Using the first again makes the second the least recently used.
        assert!(Arc::ptr_eq(
            &first,
            &policy.ruleset(None, &[&dirs[0]]).unwrap()
        ));
        policy.ruleset(None, &[&dirs[KEPT_RULESETS]]).unwrap();
        assert_eq!(policy.kept_count(), KEPT_RULESETS);
        assert!(Arc::ptr_eq(
            &first,
            &policy.ruleset(None, &[&dirs[0]]).unwrap()
        ));
        assert!(!Arc::ptr_eq(
            &second,
            &policy.ruleset(None, &[&dirs[1]]).unwrap()
        ));
    }
}
