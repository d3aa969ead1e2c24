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
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd,
    Ruleset, RulesetAttr, RulesetCreatedAttr, Scope, path_beneath_rules,
};

use super::SandboxError;

/// System directories every job may read and execute from (those that exist).
const SYSTEM_READ_PATHS: [&str; 12] = [
    "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/usr", "/etc", "/opt", "/proc",
    "/sys", "/dev",
];

/// Device files a job may also write (`> /dev/null` is everywhere in shell scripts).
const WRITABLE_DEVICES: [&str; 3] = ["/dev/null", "/dev/zero", "/dev/full"];

/// What every job's ruleset has in common. The system paths are opened once, here, and
/// held for the executor's lifetime: only a job's own directories are opened per job.
#[derive(Debug)]
pub struct LandlockPolicy {
    abi: ABI,
    abi_version: i32,
    /// Read-only system paths and writable devices, with the rights each one gets.
    fixed: Vec<(PathFd, BitFlags<AccessFs>)>,
}

impl LandlockPolicy {
    /// `None` when the kernel has no Landlock (or it is disabled at boot).
    pub fn probe(extra_read_paths: &[PathBuf]) -> Option<LandlockPolicy> {
        let abi_version = super::landlock_abi_version();
        if abi_version < 1 {
            return None;
        }
        let abi = ABI::from(abi_version);
        let read_paths = SYSTEM_READ_PATHS
            .iter()
            .map(PathBuf::from)
            .chain(extra_read_paths.iter().cloned());
        // A file gets only the rights that apply to files (as `path_beneath_rules` does).
        let readable = read_paths.filter_map(|path| {
            let access = if path.is_file() {
                AccessFs::from_read(abi) & AccessFs::from_file(abi)
            } else {
                AccessFs::from_read(abi)
            };
            Some((PathFd::new(&path).ok()?, access))
        });
        let devices = WRITABLE_DEVICES.iter().filter_map(|device| {
            let access = AccessFs::ReadFile | AccessFs::WriteFile;
            Some((PathFd::new(device).ok()?, access))
        });
        Some(LandlockPolicy {
            abi,
            abi_version,
            fixed: readable.chain(devices).collect(),
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
            let fixed = self
                .fixed
                .iter()
                .map(|(fd, access)| Ok::<_, landlock::RulesetError>(PathBeneath::new(fd, *access)));
            let created = ruleset
                .create()?
                .no_new_privs(false)
                .add_rules(fixed)?
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
