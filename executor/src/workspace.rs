//! The file authority: every file operation the frontend asks for happens here, beneath one
//! workspace directory, and nowhere else.
//!
//! What this module enforces (DESIGN.md §6), whatever a job planted in its workspace:
//!
//! - Every path is resolved relative to a descriptor of the workspace directory with
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`. A path is
//!   never joined into a string and opened: a symlink anywhere on the way (to `/etc`, as an
//!   intermediate component, as the final name) makes the kernel refuse the open, so there
//!   is no window between a check and its use.
//! - Missing parent directories are created one component at a time (`mkdirat`, then the
//!   same resolving open), so a directory swapped for a symlink in between is refused too.
//! - Writes go to a fresh temp file (`O_CREAT | O_EXCL | O_NOFOLLOW`) in the target
//!   directory and are `renameat`-ed onto the final name: an existing file is replaced
//!   atomically, and a symlink at the final name is replaced, never followed.
//! - Reads open regular files only (opened `O_NONBLOCK`, so a FIFO cannot hang a thread),
//!   and, as defence in depth, refuse files with more than one hard link.
//! - Listings never follow symlinks: they are reported as `Symlink`.
//!
//! It trusts the workspace root (created and owned by root) and nothing below it. Every
//! call is a blocking syscall: async callers use `spawn_blocking`.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{
    AtFlags, OFlag, OpenHow, RenameFlags, ResolveFlag, openat, openat2, renameat, renameat2,
};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};
use nox_protocol::{EntryKind, ErrorKind, FileEntry, Listing, MAX_LISTING_ENTRIES, RelPath};
use thiserror::Error;

use crate::error::ExecutorError;
use crate::owners::{self, Owners, UidRange};

/// Prefix of the temp files uploads are written to; hidden from listings.
const TEMP_PREFIX: &str = ".nox-upload-";

/// Why a file operation failed. Messages name paths relative to the workspace only: they
/// travel to the frontend, and the layout of the state directory is none of its business.
#[derive(Debug, Error)]
pub enum WorkspaceError {
    #[error("invalid workspace name {name:?}")]
    InvalidName { name: String },
    #[error("could not create workspace `{workspace}`")]
    CreateWorkspace {
        workspace: String,
        #[source]
        source: io::Error,
    },
    #[error("could not open workspace `{workspace}`")]
    OpenWorkspace {
        workspace: String,
        #[source]
        source: io::Error,
    },
    #[error("could not open directory `{path}`")]
    OpenDir {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("could not create directory `{path}`")]
    CreateDir {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "the workspace is over its disk quota: {} MiB used of {} MiB; delete files first",
        used.div_ceil(1 << 20),
        quota >> 20
    )]
    OverQuota { used: u64, quota: u64 },
    #[error("every uid of executor.tenant_uid_first/_count is taken: no uid for a new workspace")]
    NoFreeUid,
    #[error("could not give `{path}` to the workspace's uid")]
    Chown {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("could not create a temporary file for `{path}`")]
    CreateTemp {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("could not write `{path}`")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("could not move the upload into place at `{path}`")]
    Replace {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("could not open `{path}`")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("`{path}` is not a regular file")]
    NotRegular { path: String },
    #[error("`{path}` has several hard links and is not served")]
    HardLinked { path: String },
    #[error("could not read `{path}`")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("could not list `{path}`")]
    List {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("could not delete `{path}`")]
    Delete {
        path: String,
        #[source]
        source: io::Error,
    },
}

impl WorkspaceError {
    /// The wire kind the frontend maps to an HTTP status.
    pub fn kind(&self) -> ErrorKind {
        match self {
            WorkspaceError::InvalidName { .. } => ErrorKind::BadRequest,
            WorkspaceError::NotRegular { .. } => ErrorKind::Conflict,
            WorkspaceError::HardLinked { .. } => ErrorKind::InvalidPath,
            WorkspaceError::Chown { .. } => ErrorKind::Internal,
            WorkspaceError::NoFreeUid => ErrorKind::SandboxUnavailable,
            WorkspaceError::OverQuota { .. } => ErrorKind::QuotaExceeded,
            WorkspaceError::CreateWorkspace { source, .. }
            | WorkspaceError::OpenWorkspace { source, .. }
            | WorkspaceError::OpenDir { source, .. }
            | WorkspaceError::CreateDir { source, .. }
            | WorkspaceError::CreateTemp { source, .. }
            | WorkspaceError::Write { source, .. }
            | WorkspaceError::Replace { source, .. }
            | WorkspaceError::Open { source, .. }
            | WorkspaceError::Read { source, .. }
            | WorkspaceError::List { source, .. }
            | WorkspaceError::Delete { source, .. } => kind_of(source),
        }
    }
}

/// The errno of a failed file operation, as the client should understand it.
fn kind_of(error: &io::Error) -> ErrorKind {
    let Some(code) = error.raw_os_error() else {
        return ErrorKind::Internal;
    };
    match Errno::from_raw(code) {
        Errno::ENOENT => ErrorKind::NotFound,
        // ELOOP: a symlink on the way (RESOLVE_NO_SYMLINKS, O_NOFOLLOW); EXDEV: the path
        // would leave the workspace (RESOLVE_BENEATH).
        Errno::ELOOP | Errno::EXDEV | Errno::ENAMETOOLONG => ErrorKind::InvalidPath,
        // ENXIO: a socket (or a FIFO without a writer) planted by a job is not a file.
        Errno::EISDIR | Errno::ENOTDIR | Errno::ENOTEMPTY | Errno::EEXIST | Errno::ENXIO => {
            ErrorKind::Conflict
        }
        Errno::EFBIG | Errno::ENOSPC | Errno::EDQUOT => ErrorKind::TooLarge,
        _ => ErrorKind::Internal,
    }
}

/// All workspaces, under one root directory.
#[derive(Debug)]
pub struct Workspaces {
    root: PathBuf,
    /// Held open for the executor's lifetime: every workspace is opened beneath it.
    root_fd: OwnedFd,
    /// The uid of each workspace, when the executor is root; `None` keeps our own.
    owners: Option<Owners>,
    /// Disk quota per workspace, bytes.
    quota: Option<u64>,
    /// Disk used by each workspace, as last measured (after each job) and kept up to date
    /// by uploads and deletes in between.
    usage: Ledger,
}

/// Bytes used per workspace.
type Ledger = Arc<Mutex<HashMap<String, u64>>>;

/// Most entries a usage walk visits; a workspace with more is over any quota.
const MAX_USAGE_ENTRIES: usize = 1_000_000;

/// `(uid, gid)` owning a workspace's files and running its jobs; `None` when that is the
/// executor's own user.
pub type Owner = Option<(u32, u32)>;

impl Workspaces {
    /// Open `root`, creating it (mode 0711) when missing, and check that the kernel can
    /// resolve paths beneath it safely (`openat2`, Linux 5.6+): without that, fail now.
    /// With `uids` (as root) every workspace gets its own uid from that range; workspaces
    /// already on disk keep theirs, or are given one (see [`crate::owners`]).
    pub fn new(root: PathBuf, uids: Option<UidRange>) -> Result<Workspaces, ExecutorError> {
        let failed = |source: io::Error| ExecutorError::WorkspaceRoot {
            path: root.clone(),
            source,
        };
        if !root.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(&root)
                .map_err(failed)?;
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711))
                .map_err(failed)?;
        }
        let root_fd = nix::fcntl::open(
            root.as_path(),
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| failed(errno.into()))?;
        open_beneath(&root_fd, ".", OFlag::O_DIRECTORY).map_err(|errno| failed(errno.into()))?;
        let workspaces = Workspaces {
            root: root.clone(),
            root_fd,
            owners: uids.map(Owners::new),
            quota: None,
            usage: Ledger::default(),
        };
        workspaces
            .adopt_existing()
            .map_err(|source| ExecutorError::WorkspaceRoot {
                path: workspaces.root.clone(),
                source,
            })?;
        Ok(workspaces)
    }

    /// Give every workspace a disk quota of `bytes`: a workspace over it refuses new jobs
    /// and uploads (`QuotaExceeded`), an upload stops where it would cross it, and the job
    /// runner stops a job that grows its workspace past it.
    #[must_use]
    pub fn with_quota(mut self, bytes: Option<u64>) -> Workspaces {
        self.quota = bytes;
        self
    }

    /// The disk quota per workspace, bytes.
    pub fn quota(&self) -> Option<u64> {
        self.quota
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.usage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Measure the disk `workspace` uses now (allocated blocks of everything in it; past
    /// [`MAX_USAGE_ENTRIES`] entries, `u64::MAX`) and remember it.
    pub fn measure(&self, workspace: &str) -> Result<u64, WorkspaceError> {
        let base = self.open_workspace(workspace)?;
        let first =
            open_beneath(&base, ".", OFlag::O_DIRECTORY).map_err(|errno| WorkspaceError::List {
                path: ".".to_owned(),
                source: errno.into(),
            })?;
        let mut used: u64 = 0;
        let capped = walk(&base, "", first, MAX_USAGE_ENTRIES, |_, stat| {
            used = used.saturating_add(allocated(stat));
        });
        let used = if capped { u64::MAX } else { used };
        self.ledger().insert(workspace.to_owned(), used);
        Ok(used)
    }

    /// What `workspace` used when last measured, kept up to date by uploads and deletes
    /// since; `None` before its first measurement.
    pub fn known_use(&self, workspace: &str) -> Option<u64> {
        self.ledger().get(workspace).copied()
    }

    /// Whether [`Workspaces::check_quota`] answers without measuring the workspace (no
    /// quota, or its use already known).
    pub fn quota_known(&self, workspace: &str) -> bool {
        self.quota.is_none() || self.known_use(workspace).is_some()
    }

    /// Room left under the quota (`u64::MAX` without one); `QuotaExceeded` when none.
    pub fn check_quota(&self, workspace: &str) -> Result<u64, WorkspaceError> {
        let Some(quota) = self.quota else {
            return Ok(u64::MAX);
        };
        let used = match self.known_use(workspace) {
            Some(used) => used,
            None => self.measure(workspace)?,
        };
        if used >= quota {
            return Err(WorkspaceError::OverQuota { used, quota });
        }
        Ok(quota - used)
    }

    /// Learn the uid of every workspace on disk; give one of its own to each that has none.
    fn adopt_existing(&self) -> io::Result<()> {
        if self.owners.is_none() {
            return Ok(());
        }
        let fd = open_beneath(&self.root_fd, ".", OFlag::O_DIRECTORY)?;
        let mut dir = Dir::from_fd(fd)?;
        let names = read_names(&mut dir, usize::MAX);
        for name in names {
            let Some(name) = name.to_str().ok().filter(|name| {
                nox_protocol::validate_workspace_name(name) && !name.starts_with('.')
            }) else {
                continue;
            };
            if let Ok(fd) = open_beneath(&self.root_fd, name, OFlag::O_DIRECTORY) {
                self.owner_of(name, &fd).map_err(io::Error::other)?;
            }
        }
        Ok(())
    }

    /// The owner of the open workspace `fd`: known, adopted from disk, or newly assigned
    /// (the tree is then handed over to it).
    fn owner_of(&self, workspace: &str, fd: &OwnedFd) -> Result<Owner, WorkspaceError> {
        let Some(owners) = &self.owners else {
            return Ok(None);
        };
        if let Some(uid) = owners.get(workspace) {
            return Ok(Some((uid, uid)));
        }
        let chown_failed = |errno: Errno| WorkspaceError::Chown {
            path: ".".to_owned(),
            source: errno.into(),
        };
        let found = fstat(fd).map_err(chown_failed)?.st_uid;
        if owners.adopt(workspace, found) {
            return Ok(Some((found, found)));
        }
        let uid = owners.assign(workspace).ok_or(WorkspaceError::NoFreeUid)?;
        owners::give_tree(fd, uid).map_err(chown_failed)?;
        tracing::info!(
            workspace,
            from = found,
            to = uid,
            "workspace given a uid of its own"
        );
        Ok(Some((uid, uid)))
    }

    /// Create workspace `name` when missing (mode 0700, owned by its own uid); its path and
    /// owner.
    pub fn ensure(&self, workspace: &str) -> Result<(PathBuf, Owner), WorkspaceError> {
        let (_, owner) = self.open_workspace_owned(workspace)?;
        Ok((self.root.join(workspace), owner))
    }

    /// Write `contents` to `path`, atomically replacing whatever was there.
    pub fn write_file(
        &self,
        workspace: &str,
        path: &RelPath,
        contents: &[u8],
    ) -> Result<u64, WorkspaceError> {
        let mut upload = self.begin_upload(workspace, path)?;
        upload.write(contents)?;
        upload.commit()
    }

    /// Start writing `path`: parents are created, the data goes to a temp file beside it.
    pub fn begin_upload(&self, workspace: &str, path: &RelPath) -> Result<Upload, WorkspaceError> {
        let room = self.check_quota(workspace)?;
        let (base, owner) = self.open_workspace_owned(workspace)?;
        let (parent, name) = path.split_last();
        let dir = match parent {
            Some(parent) => self.create_dirs(&base, parent, owner)?,
            None => base,
        };
        let (temp_name, fd) = self.create_temp(&dir, path, owner)?;
        Ok(Upload {
            dir,
            temp_name,
            final_name: name.to_owned(),
            path: path.as_str().to_owned(),
            file: Some(File::from(fd)),
            written: 0,
            budget: self.quota.map(|quota| Budget {
                room,
                quota,
                ledger: Arc::clone(&self.usage),
                workspace: workspace.to_owned(),
            }),
        })
    }

    /// Open a regular file for reading; returns it and its size.
    pub fn open_read(
        &self,
        workspace: &str,
        path: &RelPath,
    ) -> Result<(File, u64), WorkspaceError> {
        let base = self.open_workspace(workspace)?;
        let shown = || path.as_str().to_owned();
        // O_NONBLOCK: opening a FIFO planted by a job must not block; it is refused below.
        let fd = open_beneath(&base, path.as_str(), OFlag::O_RDONLY | OFlag::O_NONBLOCK).map_err(
            |errno| WorkspaceError::Open {
                path: shown(),
                source: errno.into(),
            },
        )?;
        let stat = fstat(&fd).map_err(|errno| WorkspaceError::Open {
            path: shown(),
            source: errno.into(),
        })?;
        if kind_of_mode(&stat) != EntryKind::File {
            return Err(WorkspaceError::NotRegular { path: shown() });
        }
        if stat.st_nlink > 1 {
            return Err(WorkspaceError::HardLinked { path: shown() });
        }
        Ok((File::from(fd), u64::try_from(stat.st_size).unwrap_or(0)))
    }

    /// Everything beneath `prefix` (the whole workspace when `None`), recursively, sorted by
    /// path, at most [`MAX_LISTING_ENTRIES`] entries. Symlinks are reported, not followed.
    pub fn list(
        &self,
        workspace: &str,
        prefix: Option<&RelPath>,
    ) -> Result<Listing, WorkspaceError> {
        let base = self.open_workspace(workspace)?;
        let start = prefix.map_or("", RelPath::as_str);
        // The starting directory must open; directories found on the way may vanish or be
        // swapped while we walk, and are then skipped.
        let first = open_beneath(
            &base,
            if start.is_empty() { "." } else { start },
            OFlag::O_DIRECTORY,
        )
        .map_err(|errno| WorkspaceError::List {
            path: start.to_owned(),
            source: errno.into(),
        })?;
        let mut entries = Vec::new();
        let truncated = walk(&base, start, first, MAX_LISTING_ENTRIES, |path, stat| {
            let kind = kind_of_mode(stat);
            entries.push(FileEntry {
                path: path.to_owned(),
                kind,
                size: match kind {
                    EntryKind::Dir => 0,
                    _ => u64::try_from(stat.st_size).unwrap_or(0),
                },
                modified_ms: modified_ms(stat),
            });
        });
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Listing { entries, truncated })
    }

    /// Delete a file, a symlink (the link itself) or an empty directory.
    pub fn delete(&self, workspace: &str, path: &RelPath) -> Result<(), WorkspaceError> {
        let base = self.open_workspace(workspace)?;
        let failed = |errno: Errno| WorkspaceError::Delete {
            path: path.as_str().to_owned(),
            source: errno.into(),
        };
        let (parent, name) = path.split_last();
        let parent_fd;
        let dir = match parent {
            Some(parent) => {
                parent_fd = open_beneath(&base, parent, OFlag::O_DIRECTORY).map_err(failed)?;
                parent_fd.as_fd()
            }
            None => base.as_fd(),
        };
        let freed = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_or(0, |stat| {
            if stat.st_nlink <= 1 {
                allocated(&stat)
            } else {
                0
            }
        });
        // unlinkat never follows the final component; a directory answers EISDIR.
        match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
            Err(Errno::EISDIR) => unlinkat(dir, name, UnlinkatFlags::RemoveDir).map_err(failed),
            other => other.map_err(failed),
        }?;
        if let Some(used) = self.ledger().get_mut(workspace) {
            *used = used.saturating_sub(freed);
        }
        Ok(())
    }

    /// Open one workspace directory, creating it when missing.
    fn open_workspace(&self, workspace: &str) -> Result<OwnedFd, WorkspaceError> {
        self.open_workspace_owned(workspace).map(|(fd, _)| fd)
    }

    /// Open (creating when missing) one workspace directory; with its owner.
    fn open_workspace_owned(&self, workspace: &str) -> Result<(OwnedFd, Owner), WorkspaceError> {
        if !nox_protocol::validate_workspace_name(workspace) {
            return Err(WorkspaceError::InvalidName {
                name: workspace.to_owned(),
            });
        }
        let name = || workspace.to_owned();
        match open_beneath(&self.root_fd, workspace, OFlag::O_DIRECTORY) {
            Ok(fd) => {
                let owner = self.owner_of(workspace, &fd)?;
                return Ok((fd, owner));
            }
            Err(Errno::ENOENT) => {}
            Err(errno) => {
                return Err(WorkspaceError::OpenWorkspace {
                    workspace: name(),
                    source: errno.into(),
                });
            }
        }
        let created = match mkdirat(&self.root_fd, workspace, Mode::from_bits_truncate(0o700)) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(errno) => {
                return Err(WorkspaceError::CreateWorkspace {
                    workspace: name(),
                    source: errno.into(),
                });
            }
        };
        let fd = open_beneath(&self.root_fd, workspace, OFlag::O_DIRECTORY).map_err(|errno| {
            WorkspaceError::OpenWorkspace {
                workspace: name(),
                source: errno.into(),
            }
        })?;
        let owner = match &self.owners {
            Some(owners) => {
                let uid = owners.assign(workspace).ok_or(WorkspaceError::NoFreeUid)?;
                Some((uid, uid))
            }
            None => None,
        };
        if created {
            fchmod(&fd, Mode::from_bits_truncate(0o700)).map_err(|errno| {
                WorkspaceError::CreateWorkspace {
                    workspace: name(),
                    source: errno.into(),
                }
            })?;
            give_to(&fd, owner, workspace)?;
        }
        Ok((fd, owner))
    }

    /// Open directory `relative` beneath `base`, creating each missing component.
    fn create_dirs(
        &self,
        base: &OwnedFd,
        relative: &str,
        owner: Owner,
    ) -> Result<OwnedFd, WorkspaceError> {
        let mut walked = String::new();
        let mut current: Option<OwnedFd> = None;
        for component in relative.split('/') {
            if !walked.is_empty() {
                walked.push('/');
            }
            walked.push_str(component);
            let dir = current.as_ref().unwrap_or(base);
            let open_failed = |errno: Errno| WorkspaceError::OpenDir {
                path: walked.clone(),
                source: errno.into(),
            };
            let next = match open_beneath(dir, component, OFlag::O_DIRECTORY) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    let created = match mkdirat(dir, component, Mode::from_bits_truncate(0o755)) {
                        Ok(()) => true,
                        // Someone (a running job) created it first: just open it.
                        Err(Errno::EEXIST) => false,
                        Err(errno) => {
                            return Err(WorkspaceError::CreateDir {
                                path: walked.clone(),
                                source: errno.into(),
                            });
                        }
                    };
                    // Reopened with the same resolve flags: if it was swapped for a
                    // symlink in between, this fails.
                    let fd =
                        open_beneath(dir, component, OFlag::O_DIRECTORY).map_err(open_failed)?;
                    if created {
                        give_to(&fd, owner, &walked)?;
                    }
                    fd
                }
                Err(errno) => return Err(open_failed(errno)),
            };
            current = Some(next);
        }
        // `relative` comes from a RelPath and has at least one component.
        current.ok_or_else(|| WorkspaceError::OpenDir {
            path: relative.to_owned(),
            source: Errno::EINVAL.into(),
        })
    }

    /// A new temp file in `dir`, opened for writing and owned by `owner`.
    fn create_temp(
        &self,
        dir: &OwnedFd,
        path: &RelPath,
        owner: Owner,
    ) -> Result<(String, OwnedFd), WorkspaceError> {
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut attempts = 0;
        loop {
            let name = temp_name();
            match openat(dir, name.as_str(), flags, Mode::from_bits_truncate(0o644)) {
                Ok(fd) => {
                    if let Err(error) = give_to(&fd, owner, path.as_str()) {
                        let _ = unlinkat(dir, name.as_str(), UnlinkatFlags::NoRemoveDir);
                        return Err(error);
                    }
                    return Ok((name, fd));
                }
                // A name taken (by chance, or planted by a job): draw another.
                Err(Errno::EEXIST) if attempts < 16 => attempts += 1,
                Err(errno) => {
                    return Err(WorkspaceError::CreateTemp {
                        path: path.as_str().to_owned(),
                        source: errno.into(),
                    });
                }
            }
        }
    }
}

/// Give what `fd` is to `owner` (nothing to do when that is ourselves).
fn give_to(fd: &OwnedFd, owner: Owner, shown: &str) -> Result<(), WorkspaceError> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(|errno| {
        WorkspaceError::Chown {
            path: shown.to_owned(),
            source: errno.into(),
        }
    })
}

/// An upload in progress: data goes to a temp file, [`Upload::commit`] renames it into
/// place. Dropped without a commit, the temp file is removed.
#[derive(Debug)]
pub struct Upload {
    dir: OwnedFd,
    temp_name: String,
    final_name: String,
    /// The relative path, for messages.
    path: String,
    /// `None` once committed.
    file: Option<File>,
    written: u64,
    /// Under a quota: what may still be written, and the ledger to update at commit.
    budget: Option<Budget>,
}

/// An upload's share of its workspace's quota.
#[derive(Debug)]
struct Budget {
    room: u64,
    quota: u64,
    ledger: Ledger,
    workspace: String,
}

impl Upload {
    /// Append `data`.
    pub fn write(&mut self, data: &[u8]) -> Result<(), WorkspaceError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        if let Some(budget) = &self.budget
            && self.written.saturating_add(data.len() as u64) > budget.room
        {
            return Err(WorkspaceError::OverQuota {
                used: budget.quota - budget.room + self.written + data.len() as u64,
                quota: budget.quota,
            });
        }
        file.write_all(data)
            .map_err(|source| WorkspaceError::Write {
                path: self.path.clone(),
                source,
            })?;
        self.written = self.written.saturating_add(data.len() as u64);
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Move the file into place (replacing a file or symlink of that name); returns its size.
    pub fn commit(mut self) -> Result<u64, WorkspaceError> {
        // Closed first, so a write-back error (a full disk) is not lost silently.
        let added = self
            .file
            .take()
            .and_then(|file| fstat(&file).ok())
            .map_or(self.written, |stat| allocated(&stat));
        let existing = fstatat(
            &self.dir,
            self.final_name.as_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .ok();
        let replaced = existing.as_ref().map_or(0, |stat| {
            if stat.st_nlink <= 1 {
                allocated(stat)
            } else {
                0
            }
        });
        let failed = |errno: Errno| {
            // `temp_name` is still set: Drop removes the temp file.
            WorkspaceError::Replace {
                path: self.path.clone(),
                source: errno.into(),
            }
        };
        let over_file = existing
            .as_ref()
            .is_some_and(|stat| kind_of_mode(stat) != EntryKind::Dir);
        if over_file {
            self.exchange_into_place().map_err(failed)?;
        } else {
            renameat(
                &self.dir,
                self.temp_name.as_str(),
                &self.dir,
                self.final_name.as_str(),
            )
            .map_err(failed)?;
        }
        self.temp_name.clear();
        if let Some(budget) = &self.budget {
            let mut ledger = budget
                .ledger
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(used) = ledger.get_mut(&budget.workspace) {
                *used = used.saturating_add(added).saturating_sub(replaced);
            }
        }
        Ok(self.written)
    }
}

impl Upload {
    /// Replace an existing file (or symlink) at the final name: swap the two names
    /// atomically (`RENAME_EXCHANGE`), then remove the old one, now under the temp name.
    /// A plain rename over an existing file makes ext4 write the new file's data out first
    /// (`auto_da_alloc`), which cost more than everything else an upload does; the swap
    /// gives the same guarantee (the name always holds the old or the new file, whole)
    /// without it. If a job put a directory there meanwhile, it is swapped back.
    fn exchange_into_place(&self) -> Result<(), Errno> {
        let names = (self.temp_name.as_str(), self.final_name.as_str());
        renameat2(
            &self.dir,
            names.0,
            &self.dir,
            names.1,
            RenameFlags::RENAME_EXCHANGE,
        )?;
        match unlinkat(&self.dir, names.0, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(errno) => {
                // Not a file any more (a directory, swapped in by a job): put it back;
                // our file is then under the temp name again, and Drop removes it.
                renameat2(
                    &self.dir,
                    names.0,
                    &self.dir,
                    names.1,
                    RenameFlags::RENAME_EXCHANGE,
                )?;
                Err(errno)
            }
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.temp_name.is_empty() {
            let _ = unlinkat(
                &self.dir,
                self.temp_name.as_str(),
                UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

/// `openat2` beneath `dir`: no symlinks at all, no escaping `dir`, close-on-exec.
/// (No `O_NOFOLLOW`: `RESOLVE_NO_SYMLINKS` covers the final component too, and answers
/// ELOOP where `O_NOFOLLOW | O_DIRECTORY` would answer ENOTDIR, a misleading kind.)
fn open_beneath(dir: impl AsFd, path: &str, flags: OFlag) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    // EAGAIN: a concurrent rename elsewhere made the kernel refuse to vouch for the
    // resolution (RESOLVE_BENEATH); it is safe to retry.
    let mut attempts = 0;
    loop {
        match openat2(dir.as_fd(), path, how) {
            Err(Errno::EAGAIN) if attempts < 8 => attempts += 1,
            other => return other,
        }
    }
}

/// Up to `limit` names of `dir`, without `.`, `..` and upload temp files.
/// Visit everything beneath `start` (opened as `first`) in `base`, breadth first, at most
/// `limit` entries; true when it stopped at the limit. Symlinks are visited, never followed.
/// Each directory is reopened beneath `base` by its full relative path, so a deep tree costs
/// no more than two descriptors at a time; directories that vanish or are swapped for
/// something else on the way are skipped.
fn walk(
    base: &OwnedFd,
    start: &str,
    first: OwnedFd,
    limit: usize,
    mut visit: impl FnMut(&str, &FileStat),
) -> bool {
    let mut seen = 0;
    let mut pending = std::collections::VecDeque::from([(start.to_owned(), Some(first))]);
    while let Some((dir_path, fd)) = pending.pop_front() {
        let fd = match fd {
            Some(fd) => fd,
            None => match open_beneath(base, dir_path.as_str(), OFlag::O_DIRECTORY) {
                Ok(fd) => fd,
                Err(_) => continue,
            },
        };
        let Ok(mut dir) = Dir::from_fd(fd) else {
            continue;
        };
        for name in read_names(&mut dir, limit - seen + 1) {
            if seen == limit {
                return true;
            }
            let Ok(stat) = fstatat(dir.as_fd(), name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            else {
                continue;
            };
            let name = name.to_string_lossy();
            let path = if dir_path.is_empty() {
                name.into_owned()
            } else {
                format!("{dir_path}/{name}")
            };
            if kind_of_mode(&stat) == EntryKind::Dir {
                pending.push_back((path.clone(), None));
            }
            visit(&path, &stat);
            seen += 1;
        }
    }
    false
}

fn read_names(dir: &mut Dir, limit: usize) -> Vec<CString> {
    let mut names = Vec::new();
    for entry in dir.iter() {
        let Ok(entry) = entry else {
            break;
        };
        let name: &CStr = entry.file_name();
        let bytes = name.to_bytes();
        if bytes == b"." || bytes == b".." || bytes.starts_with(TEMP_PREFIX.as_bytes()) {
            continue;
        }
        names.push(name.to_owned());
        if names.len() >= limit {
            break;
        }
    }
    names
}

/// Bytes of disk a file takes (allocated blocks, so a sparse file counts what it uses).
fn allocated(stat: &FileStat) -> u64 {
    u64::try_from(stat.st_blocks)
        .unwrap_or(0)
        .saturating_mul(512)
}

fn kind_of_mode(stat: &FileStat) -> EntryKind {
    match SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => EntryKind::File,
        SFlag::S_IFDIR => EntryKind::Dir,
        SFlag::S_IFLNK => EntryKind::Symlink,
        _ => EntryKind::Other,
    }
}

fn modified_ms(stat: &FileStat) -> u64 {
    let seconds = u64::try_from(stat.st_mtime).unwrap_or(0);
    let millis = u64::try_from(stat.st_mtime_nsec / 1_000_000).unwrap_or(0);
    seconds.saturating_mul(1000).saturating_add(millis)
}

/// A temp file name that is hard to guess (RandomState is seeded randomly per process) and
/// never repeats within the process; `O_EXCL` makes a collision harmless anyway.
fn temp_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    format!("{TEMP_PREFIX}{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, symlink};
    use std::path::Path;

    use super::*;

    fn setup() -> (tempfile::TempDir, Workspaces) {
        let dir = tempfile::tempdir().unwrap();
        let workspaces = Workspaces::new(dir.path().join("ws"), None).unwrap();
        (dir, workspaces)
    }

    fn rel(path: &str) -> RelPath {
        RelPath::parse(path).unwrap()
    }

    fn read(workspaces: &Workspaces, path: &str) -> Result<Vec<u8>, WorkspaceError> {
        let (mut file, size) = workspaces.open_read("w", &rel(path))?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).unwrap();
        assert_eq!(data.len() as u64, size);
        Ok(data)
    }

    fn temp_files(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(TEMP_PREFIX))
            .collect()
    }

    #[test]
    fn a_file_written_with_parents_reads_back_and_is_listed() {
        let (_tmp, ws) = setup();
        assert_eq!(ws.write_file("w", &rel("a/b/c.txt"), b"hello").unwrap(), 5);
        assert_eq!(read(&ws, "a/b/c.txt").unwrap(), b"hello");
        let listing = ws.list("w", None).unwrap();
        let paths: Vec<(&str, EntryKind)> = listing
            .entries
            .iter()
            .map(|entry| (entry.path.as_str(), entry.kind))
            .collect();
        assert_eq!(
            paths,
            [
                ("a", EntryKind::Dir),
                ("a/b", EntryKind::Dir),
                ("a/b/c.txt", EntryKind::File)
            ]
        );
        assert!(!listing.truncated);
        assert_eq!(listing.entries[2].size, 5);
        let under = ws.list("w", Some(&rel("a/b"))).unwrap();
        assert_eq!(under.entries.len(), 1);
        assert_eq!(under.entries[0].path, "a/b/c.txt");
    }

    #[test]
    fn the_workspace_is_created_private_and_bad_names_are_refused() {
        let (tmp, ws) = setup();
        let path = ws.ensure("team-1").unwrap().0;
        assert_eq!(path, tmp.path().join("ws/team-1"));
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        for bad in ["", "..", "a/b", "-x", "/etc"] {
            let error = ws.ensure(bad).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::BadRequest, "{bad}");
        }
    }

    #[test]
    fn a_write_replaces_an_existing_file_atomically_and_leaves_no_temp_file() {
        let (tmp, ws) = setup();
        ws.write_file("w", &rel("f"), b"old contents").unwrap();
        let before = std::fs::metadata(tmp.path().join("ws/w/f")).unwrap().ino();
        ws.write_file("w", &rel("f"), b"new").unwrap();
        assert_eq!(read(&ws, "f").unwrap(), b"new");
        let after = std::fs::metadata(tmp.path().join("ws/w/f")).unwrap().ino();
        assert_ne!(before, after, "replaced by rename, not rewritten in place");
        assert!(temp_files(&tmp.path().join("ws/w")).is_empty());
    }

    #[test]
    fn an_aborted_upload_leaves_no_temp_file_and_no_target() {
        let (tmp, ws) = setup();
        let mut upload = ws.begin_upload("w", &rel("d/up.bin")).unwrap();
        upload.write(b"partial").unwrap();
        assert_eq!(temp_files(&tmp.path().join("ws/w/d")).len(), 1);
        drop(upload);
        assert!(temp_files(&tmp.path().join("ws/w/d")).is_empty());
        assert_eq!(
            read(&ws, "d/up.bin").unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }

    #[test]
    fn an_upload_in_progress_is_hidden_from_listings() {
        let (_tmp, ws) = setup();
        let upload = ws.begin_upload("w", &rel("x")).unwrap();
        assert!(ws.list("w", None).unwrap().entries.is_empty());
        assert_eq!(upload.commit().unwrap(), 0);
        assert_eq!(ws.list("w", None).unwrap().entries.len(), 1);
    }

    /// A workspace with a symlink to `/etc` planted at `link`, as a job could.
    fn planted(link_to: &str) -> (tempfile::TempDir, Workspaces, PathBuf) {
        let (tmp, ws) = setup();
        let base = ws.ensure("w").unwrap().0;
        symlink(link_to, base.join("link")).unwrap();
        (tmp, ws, base)
    }

    #[test]
    fn a_symlink_as_an_intermediate_component_is_refused_by_every_operation() {
        let (_tmp, ws, _base) = planted("/etc");
        let through = rel("link/passwd");
        assert_eq!(
            ws.open_read("w", &through).unwrap_err().kind(),
            ErrorKind::InvalidPath
        );
        assert_eq!(
            ws.write_file("w", &rel("link/nox-pwned"), b"x")
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidPath
        );
        assert!(!Path::new("/etc/nox-pwned").exists());
        assert_eq!(
            ws.delete("w", &through).unwrap_err().kind(),
            ErrorKind::InvalidPath
        );
        assert_eq!(
            ws.list("w", Some(&rel("link"))).unwrap_err().kind(),
            ErrorKind::InvalidPath
        );
        assert_eq!(
            ws.list("w", Some(&through)).unwrap_err().kind(),
            ErrorKind::InvalidPath
        );
        assert!(Path::new("/etc/passwd").exists());
    }

    #[test]
    fn a_symlink_as_the_final_name_is_never_followed() {
        let (tmp, ws, base) = planted("/etc/passwd");
        // Reading it is refused.
        assert_eq!(
            ws.open_read("w", &rel("link")).unwrap_err().kind(),
            ErrorKind::InvalidPath
        );
        // Writing replaces the link itself; the target is untouched.
        let outside = tmp.path().join("outside.txt");
        std::fs::write(&outside, b"keep").unwrap();
        symlink(&outside, base.join("out")).unwrap();
        ws.write_file("w", &rel("out"), b"replaced").unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        assert!(
            !std::fs::symlink_metadata(base.join("out"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(read(&ws, "out").unwrap(), b"replaced");
        // Deleting removes the link, not its target.
        ws.delete("w", &rel("link")).unwrap();
        assert!(std::fs::symlink_metadata(base.join("link")).is_err());
        assert!(Path::new("/etc/passwd").exists());
    }

    #[test]
    fn a_relative_symlink_climbing_out_is_refused() {
        let (_tmp, ws, base) = planted("../../..");
        std::fs::create_dir(base.join("d")).unwrap();
        symlink("../../../../etc", base.join("d/up")).unwrap();
        for path in ["link/etc/passwd", "d/up/passwd"] {
            assert_eq!(
                ws.open_read("w", &rel(path)).unwrap_err().kind(),
                ErrorKind::InvalidPath,
                "{path}"
            );
        }
    }

    #[test]
    fn listing_reports_a_symlinked_directory_without_following_it() {
        let (_tmp, ws, _base) = planted("/etc");
        let listing = ws.list("w", None).unwrap();
        assert_eq!(listing.entries.len(), 1);
        assert_eq!(listing.entries[0].path, "link");
        assert_eq!(listing.entries[0].kind, EntryKind::Symlink);
    }

    #[test]
    fn a_hard_linked_file_is_not_served() {
        let (_tmp, ws) = setup();
        let base = ws.ensure("w").unwrap().0;
        std::fs::write(base.join("orig"), b"secret").unwrap();
        std::fs::hard_link(base.join("orig"), base.join("alias")).unwrap();
        assert_eq!(
            ws.open_read("w", &rel("alias")).unwrap_err().kind(),
            ErrorKind::InvalidPath
        );
    }

    #[test]
    fn directories_and_fifos_are_not_read_and_a_fifo_does_not_block() {
        let (_tmp, ws) = setup();
        let base = ws.ensure("w").unwrap().0;
        std::fs::create_dir(base.join("dir")).unwrap();
        nix::unistd::mkfifo(&base.join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        assert_eq!(
            ws.open_read("w", &rel("dir")).unwrap_err().kind(),
            ErrorKind::Conflict
        );
        assert_eq!(
            ws.open_read("w", &rel("fifo")).unwrap_err().kind(),
            ErrorKind::Conflict
        );
        assert_eq!(
            ws.open_read("w", &rel("none")).unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }

    #[test]
    fn delete_removes_files_and_empty_directories_only() {
        let (_tmp, ws) = setup();
        ws.write_file("w", &rel("d/f"), b"x").unwrap();
        assert_eq!(
            ws.delete("w", &rel("d")).unwrap_err().kind(),
            ErrorKind::Conflict
        );
        ws.delete("w", &rel("d/f")).unwrap();
        ws.delete("w", &rel("d")).unwrap();
        assert_eq!(
            ws.delete("w", &rel("d")).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert!(ws.list("w", None).unwrap().entries.is_empty());
    }

    #[test]
    fn writing_over_a_directory_or_through_a_file_is_a_conflict() {
        let (_tmp, ws) = setup();
        ws.write_file("w", &rel("d/f"), b"x").unwrap();
        assert_eq!(
            ws.write_file("w", &rel("d"), b"x").unwrap_err().kind(),
            ErrorKind::Conflict
        );
        assert_eq!(
            ws.write_file("w", &rel("d/f/g"), b"x").unwrap_err().kind(),
            ErrorKind::Conflict
        );
    }

    #[test]
    fn a_listing_is_capped_and_says_so() {
        let (_tmp, ws) = setup();
        let base = ws.ensure("w").unwrap().0;
        for i in 0..MAX_LISTING_ENTRIES + 5 {
            File::create(base.join(format!("f{i}"))).unwrap();
        }
        let listing = ws.list("w", None).unwrap();
        assert_eq!(listing.entries.len(), MAX_LISTING_ENTRIES);
        assert!(listing.truncated);
        assert!(
            listing
                .entries
                .windows(2)
                .all(|pair| pair[0].path < pair[1].path)
        );
    }

    #[test]
    fn files_and_directories_are_given_to_their_workspaces_own_uid() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: chown to another user needs root");
            return;
        }
        let range = UidRange {
            first: 2_000_000_000,
            count: 8,
        };
        let tmp = tempfile::tempdir().unwrap();
        let ws = Workspaces::new(tmp.path().join("ws"), Some(range)).unwrap();
        ws.write_file("w", &rel("d/f"), b"x").unwrap();
        let (_, owner) = ws.ensure("w").unwrap();
        let (uid, gid) = owner.unwrap();
        assert!(range.contains(uid) && uid == gid, "{owner:?}");
        for path in ["ws/w", "ws/w/d", "ws/w/d/f"] {
            let meta = std::fs::metadata(tmp.path().join(path)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{path}");
        }
        let (_, other) = ws.ensure("v").unwrap();
        assert_ne!(other, owner, "two workspaces share a uid");
        let root_mode = std::fs::metadata(tmp.path().join("ws")).unwrap().mode() & 0o7777;
        assert_eq!(root_mode, 0o711);
        let ws_mode = std::fs::metadata(tmp.path().join("ws/w")).unwrap().mode() & 0o7777;
        assert_eq!(ws_mode, 0o700);
    }

    #[test]
    fn uploads_stop_at_the_quota_and_deletes_and_replacements_are_accounted() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspaces::new(dir.path().join("ws"), None)
            .unwrap()
            .with_quota(Some(1 << 20));
        let mut upload = ws.begin_upload("w", &rel("big")).unwrap();
        let error = upload.write(&vec![0u8; (1 << 20) + 1]).unwrap_err();
        assert!(matches!(error, WorkspaceError::OverQuota { .. }), "{error}");
        assert_eq!(error.kind(), ErrorKind::QuotaExceeded);
        drop(upload);
        assert_eq!(temp_files(&dir.path().join("ws/w")), Vec::<String>::new());
        // A replaced file is not counted twice.
        for _ in 0..8 {
            ws.write_file("w", &rel("a"), &[1u8; 300 << 10]).unwrap();
        }
        let used = ws.measure("w").unwrap();
        assert!((300 << 10..400 << 10).contains(&used), "{used}");
        ws.write_file("w", &rel("b"), &[1u8; 600 << 10]).unwrap();
        let refused = ws
            .write_file("w", &rel("c"), &[1u8; 200 << 10])
            .unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::QuotaExceeded);
        // Over the quota by what a job wrote: refused until something is deleted.
        std::fs::write(dir.path().join("ws/w/job-wrote"), vec![1u8; 200 << 10]).unwrap();
        ws.measure("w").unwrap();
        assert!(ws.check_quota("w").is_err());
        ws.delete("w", &rel("b")).unwrap();
        assert!(ws.check_quota("w").is_ok());
    }

    #[test]
    fn a_restart_keeps_each_workspaces_uid_and_moves_a_shared_one_to_its_own() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: chown to another user needs root");
            return;
        }
        let range = UidRange {
            first: 2_000_000_000,
            count: 8,
        };
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("ws");
        let before = Workspaces::new(root.clone(), Some(range)).unwrap();
        before.write_file("kept", &rel("f"), b"x").unwrap();
        let (_, kept) = before.ensure("kept").unwrap();
        drop(before);
        // A workspace from a release where every job ran as one sandbox user.
        let legacy = root.join("legacy");
        std::fs::create_dir_all(legacy.join("d")).unwrap();
        std::fs::write(legacy.join("d/f"), b"y").unwrap();
        symlink("/etc/passwd", legacy.join("link")).unwrap();
        for path in [&legacy, &legacy.join("d"), &legacy.join("d/f")] {
            std::os::unix::fs::chown(path, Some(65534), Some(65534)).unwrap();
        }
        let after = Workspaces::new(root.clone(), Some(range)).unwrap();
        assert_eq!(after.ensure("kept").unwrap().1, kept);
        let (uid, _) = after.ensure("legacy").unwrap().1.unwrap();
        assert!(range.contains(uid) && Some((uid, uid)) != kept);
        for path in ["legacy", "legacy/d", "legacy/d/f", "legacy/link"] {
            let meta = std::fs::symlink_metadata(root.join(path)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (uid, uid), "{path}");
        }
        let passwd = std::fs::metadata("/etc/passwd").unwrap();
        assert_eq!(passwd.uid(), 0, "a symlink was followed");
    }
}
