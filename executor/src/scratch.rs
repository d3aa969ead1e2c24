//! Each job's scratch directory (`TMPDIR`): `<state>/jobs/tmp-<n>`, mode 0700, owned by
//! the job's uid, empty when the job starts, emptied when it ends, and never another
//! running job's.
//!
//! Making a directory is dear on some filesystems: ext4 without a journal (this project's
//! machines) skips every inode freed in the last minute when it allocates one, so under a
//! steady stream of jobs each `mkdir` scans tens of thousands of them. So a job's directory,
//! emptied, is kept where it is and given to a later job of the **same workspace** (and uid
//! and gid), whose jobs share that workspace anyway: nothing one workspace's job leaves on
//! its directory (extended attributes, an ACL) ever reaches another workspace's job, which
//! gets a new directory. Kept directories are not renamed: a rename (and, before it, one
//! into a job-named place) cost two directory updates per job (`/run_sh true` c=1 p50
//! -39 µs without them). One `stat` when a kept directory is taken checks that it is
//! still there, still the job's and 0700: one removed or changed from outside is made
//! anew, and the job runs. When the job ends, one more `stat` tells whether anything was
//! created or removed in it ([`Untouched`]); only then is it listed (and emptied).

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// Emptied directories kept, over all uids; past this many, one is removed instead.
const KEPT: usize = 64;

/// Prefix of a scratch directory's name.
const PREFIX: &str = "tmp-";

/// How long a kept directory must have been left alone (its status change time this far in
/// the past when it is taken) for [`Untouched`] to tell whether a job changed it: far more
/// than the clock tick the kernel stamps changes with.
const SETTLED: Duration = Duration::from_millis(50);

/// Prefix of the directories kept by executors before 2026-12 (removed at start).
const OLD_KEPT_PREFIX: &str = ".kept-";

/// An emptied directory, kept.
#[derive(Debug)]
struct Kept {
    workspace: String,
    path: PathBuf,
}

/// The scratch directories under one root.
#[derive(Debug)]
pub struct Scratches {
    root: PathBuf,
    /// Each kept, empty directory and whose workspace it was.
    kept: Mutex<Vec<Kept>>,
    next: AtomicU64,
}

/// A job's scratch directory, chosen by [`Scratches::take`]: a kept one, or a new name.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
    /// Whether `path` is a kept directory (else nothing is there yet).
    kept: bool,
}

impl Scratch {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A kept directory as it was when a job took it, empty: if it is still the same directory
/// with the same status change time when the job ends, nothing was created, removed or
/// renamed in it meanwhile (each of those sets the time to the current one, which is later
/// by more than a tick, see [`SETTLED`]; nor can a job set it back, as it can the
/// modification time), so it is still empty and is kept without being listed: one `stat`
/// where listing took five calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Untouched {
    dev: u64,
    ino: u64,
    ctime: i64,
    ctime_nsec: i64,
}

impl Untouched {
    fn of(metadata: &std::fs::Metadata) -> Untouched {
        Untouched {
            dev: metadata.dev(),
            ino: metadata.ino(),
            ctime: metadata.ctime(),
            ctime_nsec: metadata.ctime_nsec(),
        }
    }

    /// `Some` for a directory last changed at least [`SETTLED`] ago.
    fn settled(metadata: &std::fs::Metadata) -> Option<Untouched> {
        let changed = SystemTime::UNIX_EPOCH.checked_add(Duration::new(
            u64::try_from(metadata.ctime()).ok()?,
            u32::try_from(metadata.ctime_nsec()).ok()?,
        ))?;
        let age = SystemTime::now().duration_since(changed).ok()?;
        (age >= SETTLED).then(|| Untouched::of(metadata))
    }
}

impl Scratches {
    /// Scratch directories under `root` (`<state>/jobs`): made traversable by jobs and
    /// listable only by the executor; what an earlier executor left there is removed.
    pub fn new(root: PathBuf) -> io::Result<Scratches> {
        std::fs::create_dir_all(&root)?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711))?;
        for entry in std::fs::read_dir(&root)?.filter_map(Result::ok) {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(PREFIX) || name.starts_with(OLD_KEPT_PREFIX) {
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

    /// A directory for a job of `workspace`: the one its last job left, if kept, else a
    /// new name. Does not block; [`Scratches::make`] makes it ready.
    pub fn take(&self, workspace: &str) -> Scratch {
        let kept = {
            let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
            kept.iter()
                .rposition(|kept| kept.workspace == workspace)
                .map(|at| kept.swap_remove(at))
        };
        match kept {
            Some(kept) => Scratch {
                path: kept.path,
                kept: true,
            },
            None => Scratch {
                path: self.new_name(),
                kept: false,
            },
        }
    }

    fn new_name(&self) -> PathBuf {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.root.join(format!("{PREFIX}{n}"))
    }

    /// Make `scratch` the empty 0700 directory of a job running as `owner` (`None`: as
    /// the executor itself): a kept directory is that already (it was emptied when kept)
    /// if it is still there, still the owner's and 0700; otherwise it is made anew, over
    /// whatever is in its place. [`Untouched`] for a kept one left alone a while, for
    /// [`Scratches::release_if_empty`].
    pub fn make(
        &self,
        scratch: &Scratch,
        owner: Option<(u32, u32)>,
    ) -> io::Result<Option<Untouched>> {
        let ids = owner.unwrap_or_else(|| {
            (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            )
        });
        match std::fs::symlink_metadata(&scratch.path) {
            Ok(found) if scratch.kept && found.is_dir() && (found.uid(), found.gid()) == ids => {
                if found.mode() & 0o7777 != 0o700 {
                    std::fs::set_permissions(&scratch.path, PermissionsExt::from_mode(0o700))?;
                    return Ok(None);
                }
                return Ok(Untouched::settled(&found));
            }
            // Another owner's now (the workspace changed hands), not a directory, or, at a
            // new name (never a running job's: names are this executor's own), left there
            // from outside.
            Ok(found) if found.is_dir() => std::fs::remove_dir_all(&scratch.path)?,
            Ok(_) => std::fs::remove_file(&scratch.path)?,
            // Nothing there, or a kept one removed from outside: made below.
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&scratch.path)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&scratch.path, Some(uid), Some(gid))?;
        }
        Ok(None)
    }

    /// The job of `workspace` whose directory is `path` is over: empty the directory and
    /// keep it for a later job of the same workspace, or remove it. Blocking.
    pub fn release(&self, path: &Path, workspace: &str) {
        let emptied = self.emptied(path).is_some();
        self.keep_or_remove(path, workspace, emptied);
    }

    /// [`Scratches::release`] if the job left its directory empty, as most jobs do: then it
    /// costs one `stat` if the directory is [`Untouched`] since [`Scratches::make`], a
    /// listing (a few system calls) otherwise, and is done at once (true). False, and
    /// nothing done, if the job left something there. (What is at `path` when it is taken
    /// again, a directory or not, is checked then, in [`Scratches::make`].)
    pub fn release_if_empty(
        &self,
        path: &Path,
        workspace: &str,
        untouched: Option<Untouched>,
    ) -> bool {
        let unchanged = untouched.is_some_and(|taken| {
            std::fs::symlink_metadata(path).is_ok_and(|now| Untouched::of(&now) == taken)
        });
        let empty =
            unchanged || std::fs::read_dir(path).is_ok_and(|mut entries| entries.next().is_none());
        if empty {
            self.keep_or_remove(path, workspace, true);
        }
        empty
    }

    /// Keep the emptied directory at `path` for a later job of `workspace` (its owner and
    /// mode are checked when it is taken), or remove it (also when it could not be
    /// emptied).
    fn keep_or_remove(&self, path: &Path, workspace: &str, emptied: bool) {
        if emptied {
            let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
            if kept.len() < KEPT {
                kept.push(Kept {
                    workspace: workspace.to_owned(),
                    path: path.to_owned(),
                });
                return;
            }
        }
        if let Err(error) = std::fs::remove_dir_all(path)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(%error, path = %path.display(), "could not remove a job's scratch directory");
        }
    }

    /// Remove everything in the directory at `path` (never following a symbolic link);
    /// `Some` when it is a directory and now empty.
    fn emptied(&self, path: &Path) -> Option<()> {
        if !std::fs::symlink_metadata(path).ok()?.is_dir() {
            return None;
        }
        remove_contents(path).ok()
    }
}

/// Remove everything in the directory at `path` (never following a symbolic link in it):
/// a scratch directory here, a view's own `/dev/shm` and `/tmp` in `views`.
pub fn remove_contents(path: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    fn made(scratches: &Scratches, workspace: &str) -> PathBuf {
        let scratch = scratches.take(workspace);
        scratches.make(&scratch, None).unwrap();
        scratch.path().to_owned()
    }

    #[test]
    fn a_released_directory_comes_back_empty_and_0700_for_the_same_workspace() {
        let root = tempfile::tempdir().unwrap();
        let scratches = Scratches::new(root.path().join("jobs")).unwrap();
        let first = made(&scratches, "w");
        let inode = std::fs::metadata(&first).unwrap().ino();
        std::fs::create_dir_all(first.join("a/b")).unwrap();
        std::fs::write(first.join("a/b/f"), b"left behind").unwrap();
        std::os::unix::fs::symlink("/etc", first.join("link")).unwrap();
        std::fs::set_permissions(&first, std::fs::Permissions::from_mode(0o777)).unwrap();
        scratches.release(&first, "w");

        let second = made(&scratches, "w");
        let metadata = std::fs::metadata(&second).unwrap();
        assert_eq!(metadata.ino(), inode, "the kept directory was not reused");
        assert_eq!(metadata.permissions().mode() & 0o7777, 0o700);
        assert_eq!(metadata.uid(), uid());
        assert_eq!(std::fs::read_dir(&second).unwrap().count(), 0);
        // The symbolic link was removed, not followed.
        assert!(Path::new("/etc/passwd").exists());
    }

    #[test]
    fn an_empty_directory_is_kept_and_its_mode_mended_when_taken_and_a_full_one_is_not() {
        let root = tempfile::tempdir().unwrap();
        let scratches = Scratches::new(root.path().join("jobs")).unwrap();
        let first = made(&scratches, "w");
        std::fs::set_permissions(&first, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(scratches.release_if_empty(&first, "w", None));
        let again = made(&scratches, "w");
        assert_eq!(again, first);
        assert_eq!(
            std::fs::metadata(&again).unwrap().permissions().mode() & 0o7777,
            0o700
        );
        std::fs::write(again.join("f"), b"x").unwrap();
        assert!(!scratches.release_if_empty(&again, "w", None), "not empty");
        assert!(again.join("f").exists(), "nothing done");
    }

    #[test]
    fn a_kept_directory_left_alone_is_kept_again_unlisted_and_one_a_job_changed_is_listed() {
        let root = tempfile::tempdir().unwrap();
        let scratches = Scratches::new(root.path().join("jobs")).unwrap();
        let first = made(&scratches, "w");
        assert!(scratches.release_if_empty(&first, "w", None));
        // Just made: changed too recently for its change time to tell anything.
        let scratch = scratches.take("w");
        assert_eq!(scratches.make(&scratch, None).unwrap(), None);
        assert!(scratches.release_if_empty(&first, "w", None));
        let settled = || {
            std::thread::sleep(SETTLED + Duration::from_millis(10));
            let scratch = scratches.take("w");
            assert_eq!(scratch.path(), first);
            scratches
                .make(&scratch, None)
                .unwrap()
                .expect("left alone long enough")
        };

        // Left alone by its job: kept, on the change time alone.
        let untouched = settled();
        assert!(scratches.release_if_empty(&first, "w", Some(untouched)));
        // A file left there: its listing says so, and nothing is done.
        let untouched = settled();
        std::fs::write(first.join("f"), b"x").unwrap();
        assert!(!scratches.release_if_empty(&first, "w", Some(untouched)));
        scratches.release(&first, "w");
        // ... even with the directory's modification time set back by the job.
        let untouched = settled();
        let modified = std::fs::metadata(&first).unwrap().modified().unwrap();
        std::fs::write(first.join("g"), b"x").unwrap();
        std::fs::File::open(&first)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        assert_eq!(
            std::fs::metadata(&first).unwrap().modified().unwrap(),
            modified
        );
        assert!(!scratches.release_if_empty(&first, "w", Some(untouched)));
        scratches.release(&first, "w");
        // A file made and removed again: changed, listed, empty, kept.
        let untouched = settled();
        std::fs::write(first.join("h"), b"x").unwrap();
        std::fs::remove_file(first.join("h")).unwrap();
        assert!(scratches.release_if_empty(&first, "w", Some(untouched)));
        // Replaced from outside by another empty directory: not the one taken, listed.
        let untouched = settled();
        std::fs::remove_dir(&first).unwrap();
        std::fs::create_dir(&first).unwrap();
        std::fs::write(first.join("i"), b"x").unwrap();
        assert!(!scratches.release_if_empty(&first, "w", Some(untouched)));
    }

    #[test]
    fn a_kept_directory_removed_or_replaced_from_outside_is_made_anew() {
        let root = tempfile::tempdir().unwrap();
        let scratches = Scratches::new(root.path().join("jobs")).unwrap();
        let first = made(&scratches, "w");
        scratches.release(&first, "w");
        std::fs::remove_dir(&first).unwrap();
        assert_eq!(made(&scratches, "w"), first);
        assert!(first.is_dir());
        scratches.release(&first, "w");
        std::fs::remove_dir(&first).unwrap();
        std::fs::write(&first, b"not a directory").unwrap();
        assert_eq!(made(&scratches, "w"), first);
        assert!(first.is_dir());
        assert_eq!(std::fs::read_dir(&first).unwrap().count(), 0);
        // Replaced by a symbolic link to an empty directory before its release: kept (the
        // release reads through it), then found not a directory when taken, and made anew;
        // the link's target is left alone.
        let elsewhere = root.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::remove_dir(&first).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &first).unwrap();
        assert!(scratches.release_if_empty(&first, "w", None));
        assert_eq!(made(&scratches, "w"), first);
        assert!(!std::fs::symlink_metadata(&first).unwrap().is_symlink());
        assert!(elsewhere.is_dir());
        // Something planted at the next new name does not stop a job either.
        let fresh = scratches.take("fresh");
        std::fs::create_dir_all(fresh.path().join("planted")).unwrap();
        scratches.make(&fresh, None).unwrap();
        assert_eq!(std::fs::read_dir(fresh.path()).unwrap().count(), 0);
    }

    #[test]
    fn jobs_running_at_once_get_directories_of_their_own() {
        let root = tempfile::tempdir().unwrap();
        let scratches = Scratches::new(root.path().join("jobs")).unwrap();
        let first = made(&scratches, "w");
        scratches.release(&first, "w");
        let (a, b) = (made(&scratches, "w"), made(&scratches, "w"));
        assert_ne!(a, b);
        assert!(a == first || b == first, "the kept one is used");
    }

    #[test]
    fn a_directory_kept_for_one_workspace_or_owner_is_not_given_to_another() {
        let root = tempfile::tempdir().unwrap();
        let scratches = Scratches::new(root.path().join("jobs")).unwrap();
        let first = made(&scratches, "w");
        std::fs::write(first.join("left"), b"x").unwrap();
        scratches.release(&first, "w");
        // Another workspace: a new directory.
        let second = made(&scratches, "other");
        assert_ne!(second, first);
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped the owner half: giving a directory to another uid needs root");
            return;
        }
        // The workspace's owner changed: its kept directory is made anew, the new owner's.
        std::fs::write(first.join("left"), b"x").unwrap();
        let scratch = scratches.take("w");
        assert_eq!(scratch.path(), first);
        let other = (uid().wrapping_add(1), 12345);
        scratches.make(&scratch, Some(other)).unwrap();
        let metadata = std::fs::metadata(&first).unwrap();
        assert_eq!((metadata.uid(), metadata.gid()), other);
        assert_eq!(std::fs::read_dir(&first).unwrap().count(), 0);
    }

    #[test]
    fn what_an_earlier_executor_left_is_removed_at_start() {
        let root = tempfile::tempdir().unwrap();
        let jobs = root.path().join("jobs");
        std::fs::create_dir_all(jobs.join(".kept-7/inner")).unwrap();
        std::fs::create_dir_all(jobs.join("tmp-1/inner")).unwrap();
        let scratches = Scratches::new(jobs.clone()).unwrap();
        assert!(!jobs.join(".kept-7").exists());
        assert!(!jobs.join("tmp-1").exists());
        assert_eq!(
            std::fs::metadata(scratches.root())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o711
        );
        // The first new directory takes the name freed.
        assert_eq!(made(&scratches, "w"), jobs.join("tmp-1"));
    }
}
