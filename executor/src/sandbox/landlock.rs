//! Landlock: a job reads the system directories, reads and writes its workspace and its
//! scratch directory, and reaches nothing else by path. Where the kernel has them (ABI 4,
//! 6) it also may not bind or connect TCP, connect to abstract Unix sockets made outside
//! its domain, or signal processes outside it — so no job can signal the executor or
//! another job, whatever their uids.
//!
//! The ruleset is built in the executor (it opens paths and allocates) and handed to the
//! child as a descriptor; the child only calls `landlock_restrict_self`.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, Scope, path_beneath_rules,
};

use super::SandboxError;

/// System directories every job may read and execute from (those that exist).
const SYSTEM_READ_PATHS: [&str; 12] = [
    "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/usr", "/etc", "/opt", "/proc",
    "/sys", "/dev",
];

/// Device files a job may also write (`> /dev/null` is everywhere in shell scripts).
const WRITABLE_DEVICES: [&str; 3] = ["/dev/null", "/dev/zero", "/dev/full"];

/// What every job's ruleset has in common.
#[derive(Debug, Clone)]
pub struct LandlockPolicy {
    abi: ABI,
    abi_version: i32,
    read_paths: Vec<PathBuf>,
}

impl LandlockPolicy {
    /// `None` when the kernel has no Landlock (or it is disabled at boot).
    pub fn probe(extra_read_paths: &[PathBuf]) -> Option<LandlockPolicy> {
        let abi_version = super::landlock_abi_version();
        if abi_version < 1 {
            return None;
        }
        let read_paths = SYSTEM_READ_PATHS
            .iter()
            .map(PathBuf::from)
            .chain(extra_read_paths.iter().cloned())
            .filter(|path| path.exists())
            .collect();
        Some(LandlockPolicy {
            abi: ABI::from(abi_version),
            abi_version,
            read_paths,
        })
    }

    /// The kernel's Landlock ABI version.
    pub fn abi_version(&self) -> i32 {
        self.abi_version
    }

    /// A ruleset for one job: `writable` are its workspace and scratch directory.
    pub fn ruleset(&self, writable: &[&Path]) -> Result<OwnedFd, SandboxError> {
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
            let file_rw = AccessFs::ReadFile | AccessFs::WriteFile;
            let devices = WRITABLE_DEVICES
                .iter()
                .filter_map(|device| PathFd::new(device).ok())
                .map(|fd| Ok::<_, landlock::RulesetError>(PathBeneath::new(fd, file_rw)));
            let created = ruleset
                .create()?
                .no_new_privs(false)
                .add_rules(path_beneath_rules(
                    &self.read_paths,
                    AccessFs::from_read(abi),
                ))?
                .add_rules(devices)?
                .add_rules(path_beneath_rules(writable, AccessFs::from_all(abi)))?;
            Ok(created.into())
        };
        match build() {
            Ok(Some(fd)) => Ok(fd),
            Ok(None) => Err(SandboxError::LandlockUnavailable),
            Err(source) => Err(SandboxError::Landlock(source)),
        }
    }
}
