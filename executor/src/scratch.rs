//! Each job's scratch directory (`TMPDIR`): `<state>/jobs/<job id>`, mode 0700, owned by
//! the job's uid, empty when the job starts, emptied when it ends.
//!
//! Making a directory is dear on some filesystems: ext4 without a journal (this project's
//! machines) skips every inode freed in the last minute when it allocates one, so under a
//! steady stream of jobs each `mkdir` scans tens of thousands of them. So a job's directory,
//! emptied, is kept (renamed to `.kept-<n>`) and renamed into place for a later job of the
//! **same workspace** (and uid and gid), whose jobs share that workspace anyway: nothing one
//! workspace's job leaves on its directory (extended attributes, an ACL, a mode) ever
//! reaches another workspace's job, which gets a new directory.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};

/// Emptied directories kept, over all uids; past this many, one is removed instead.
const KEPT: usize = 64;

/// Prefix of a kept directory's name (a job id never starts with a dot).
const KEPT_PREFIX: &str = ".kept-";

/// An emptied directory, kept.
#[derive(Debug)]
struct Kept {
    workspace: String,
    /// Its owner.
    ids: (u32, u32),
    path: PathBuf,
}

/// The scratch directories under one root.
#[derive(Debug)]
pub struct Scratches {
    root: PathBuf,
    /// Each kept, empty directory and whose it was.
    kept: Mutex<Vec<Kept>>,
    next: AtomicU64,
}

impl Scratches {
    /// Scratch directories under `root` (`<state>/jobs`): made traversable by jobs and
    /// listable only by the executor; what an earlier executor kept there is removed.
    pub fn new(root: PathBuf) -> io::Result<Scratches> {
        std::fs::create_dir_all(&root)?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711))?;
        for entry in std::fs::read_dir(&root)?.filter_map(Result::ok) {
            if entry.file_name().to_string_lossy().starts_with(KEPT_PREFIX) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(Scratches {
            root,
            kept: Mutex::new(Vec::new()),
            next: AtomicU64::new(1),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the job `job_id` gets its directory.
    pub fn path_for(&self, job_id: &str) -> PathBuf {
        self.root.join(job_id)
    }

    /// Make `path` (from [`Scratches::path_for`]) the empty 0700 directory of a job of
    /// `workspace` running as `owner` (`None`: as the executor itself).
    pub fn make(&self, path: &Path, workspace: &str, owner: Option<(u32, u32)>) -> io::Result<()> {
        let ids = owner.unwrap_or_else(|| {
            (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            )
        });
        let kept = {
            let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
            kept.iter()
                .rposition(|kept| kept.ids == ids && kept.workspace == workspace)
                .map(|at| kept.swap_remove(at).path)
        };
        if let Some(kept) = kept {
            // Never over something already there (as a new directory would not be).
            let renamed = renameat2(
                AT_FDCWD,
                &kept,
                AT_FDCWD,
                path,
                RenameFlags::RENAME_NOREPLACE,
            );
            match renamed {
                // Its owner is the job's already; the job may have changed its mode.
                Ok(()) => match std::fs::set_permissions(path, PermissionsExt::from_mode(0o700)) {
                    Ok(()) => return Ok(()),
                    Err(_) => {
                        let _ = std::fs::remove_dir_all(path);
                    }
                },
                Err(_) => {
                    let _ = std::fs::remove_dir_all(&kept);
                }
            }
        }
        std::fs::DirBuilder::new().mode(0o700).create(path)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        }
        Ok(())
    }

    /// The job of `workspace` whose directory is `path` is over: empty the directory and
    /// keep it for a later job of the same workspace, or remove it. Blocking.
    pub fn release(&self, path: &Path, workspace: &str) {
        let emptied = self.emptied(path);
        self.keep_or_remove(path, workspace, emptied);
    }

    /// [`Scratches::release`] if the job left its directory empty, as most jobs do: then it
    /// costs a few system calls and is done at once (true). False, and nothing done, if
    /// the job left something there.
    pub fn release_if_empty(&self, path: &Path, workspace: &str) -> bool {
        let Ok(metadata) = std::fs::symlink_metadata(path) else {
            return false;
        };
        let empty = metadata.is_dir()
            && std::fs::read_dir(path).is_ok_and(|mut entries| entries.next().is_none());
        if empty {
            self.keep_or_remove(path, workspace, Some((metadata.uid(), metadata.gid())));
        }
        empty
    }

    /// Keep the emptied directory at `path` (owned by `ids`) for a later job of
    /// `workspace`, or remove it (also when it could not be emptied: `ids` is `None`).
    fn keep_or_remove(&self, path: &Path, workspace: &str, emptied: Option<(u32, u32)>) {
        if let Some(ids) = emptied {
            let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
            if kept.len() < KEPT {
                let name = format!("{KEPT_PREFIX}{}", self.next.fetch_add(1, Ordering::Relaxed));
                let to = self.root.join(name);
                if std::fs::rename(path, &to).is_ok() {
                    kept.push(Kept {
                        workspace: workspace.to_owned(),
                        ids,
                        path: to,
                    });
                    return;
                }
            }
        }
        if let Err(error) = std::fs::remove_dir_all(path)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(%error, path = %path.display(), "could not remove a job's scratch directory");
        }
    }

    /// Remove everything in the directory at `path` (never following a symbolic link);
    /// its owner's uid and gid when it is a directory and now empty.
    fn emptied(&self, path: &Path) -> Option<(u32, u32)> {
        let metadata = std::fs::symlink_metadata(path).ok()?;
        if !metadata.is_dir() {
            return None;
        }
        for entry in std::fs::read_dir(path).ok()? {
            let entry = entry.ok()?;
            let removed = match entry.file_type().ok()? {
                kind if kind.is_dir() => std::fs::remove_dir_all(entry.path()),
                _ => std::fs::remove_file(entry.path()),
            };
            removed.ok()?;
        }
        Some((metadata.uid(), metadata.gid()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    #[test]
    fn a_released_directory_comes_back_empty_and_0700_for_the_same_uid() {
        let root = tempfile::tempdir().unwrap();
        let scratches = Scratches::new(root.path().join("jobs")).unwrap();
        let first = scratches.path_for("job-1");
        scratches.make(&first, "w", None).unwrap();
        let inode = std::fs::metadata(&first).unwrap().ino();
        std::fs::create_dir_all(first.join("a/b")).unwrap();
        std::fs::write(first.join("a/b/f"), b"left behind").unwrap();
        std::os::unix::fs::symlink("/etc", first.join("link")).unwrap();
        std::fs::set_permissions(&first, std::fs::Permissions::from_mode(0o777)).unwrap();
        scratches.release(&first, "w");
        assert!(!first.exists());

        let second = scratches.path_for("job-2");
        scratches.make(&second, "w", None).unwrap();
        let metadata = std::fs::metadata(&second).unwrap();
        assert_eq!(metadata.ino(), inode, "the kept directory was not reused");
        assert_eq!(metadata.permissions().mode() & 0o7777, 0o700);
        assert_eq!(metadata.uid(), uid());
        assert_eq!(std::fs::read_dir(&second).unwrap().count(), 0);
        // The symbolic link was removed, not followed.
        assert!(Path::new("/etc/passwd").exists());
    }

    #[test]
    fn a_directory_kept_for_one_workspace_or_uid_is_not_given_to_another() {
        let root = tempfile::tempdir().unwrap();
        let scratches = Scratches::new(root.path().join("jobs")).unwrap();
        let first = scratches.path_for("job-1");
        scratches.make(&first, "w", None).unwrap();
        let inode = std::fs::metadata(&first).unwrap().ino();
        scratches.release(&first, "w");
        // Another workspace, same uid: a new directory.
        let second = scratches.path_for("job-2");
        scratches.make(&second, "other", None).unwrap();
        assert_ne!(std::fs::metadata(&second).unwrap().ino(), inode);
        // Pretend the kept one belongs to another uid: a new directory again.
        scratches.kept.lock().unwrap()[0].ids.0 = uid().wrapping_add(1);
        let third = scratches.path_for("job-3");
        scratches.make(&third, "w", None).unwrap();
        assert_ne!(std::fs::metadata(&third).unwrap().ino(), inode);
    }

    #[test]
    fn a_kept_directory_never_replaces_one_already_at_the_jobs_path() {
        let root = tempfile::tempdir().unwrap();
        let scratches = Scratches::new(root.path().join("jobs")).unwrap();
        let first = scratches.path_for("job-1");
        scratches.make(&first, "w", None).unwrap();
        scratches.release(&first, "w");
        // Something is at the next job's path already (an id used twice): refused, as a
        // new directory would be, and left alone.
        let taken = scratches.path_for("job-2");
        std::fs::create_dir(&taken).unwrap();
        std::fs::write(taken.join("mine"), b"x").unwrap();
        let error = scratches.make(&taken, "w", None).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
        assert!(taken.join("mine").exists());
    }

    #[test]
    fn what_an_earlier_executor_kept_is_removed_at_start() {
        let root = tempfile::tempdir().unwrap();
        let jobs = root.path().join("jobs");
        std::fs::create_dir_all(jobs.join(".kept-7/inner")).unwrap();
        let scratches = Scratches::new(jobs.clone()).unwrap();
        assert!(!jobs.join(".kept-7").exists());
        assert_eq!(
            std::fs::metadata(scratches.root())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o711
        );
    }
}
