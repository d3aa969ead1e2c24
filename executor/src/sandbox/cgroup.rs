//! A pids cgroup per job, where the executor can make one: each job's processes and threads
//! are counted on their own, so one job's fork bomb stops at its own `limits.processes` and
//! cannot take the processes another job (even of the same workspace, which shares its uid
//! and so its RLIMIT_NPROC) needs. Leftovers that escaped the job's process group are
//! killed through the cgroup when the job ends.
//!
//! Where: cgroup v2 when the executor's own cgroup is delegated to it (`Delegate=yes`) and
//! offers the pids controller — the executor then moves itself to a `supervisor` leaf, as
//! v2's "no internal processes" rule requires, and keeps jobs in `jobs-<pid>/job-<n>` —
//! else the v1 pids hierarchy (hybrid hosts) in `<own cgroup>/nox-jobs-<pid>/job-<n>`.
//! Where neither is writable, [`Cgroups::probe`] says why and jobs keep RLIMIT_NPROC only,
//! which then counts per workspace uid (see `crate::owners`).
//!
//! A job's first process joins its cgroup itself, before it can fork: it writes `0` to a
//! file of the cgroup that the executor opened (the kernel checks the opener's credentials,
//! so the zygote's child can do it too). On v1 that file is `tasks`, which moves the
//! writing thread alone (the whole process: it has one thread then), not `cgroup.procs`.
//! Moving a whole process takes the kernel's global `cgroup_threadgroup_rwsem` for
//! writing, which every fork and exit takes for reading; the first writer after a grace
//! period without one waits a whole RCU grace period first, holding the cgroup mutex that
//! every other join waits for. Moving the calling thread alone skips that lock (in
//! `cgroup_procs_write_start`: a thread moving itself cannot exit or exec meanwhile). Measured
//! here: a join after 50 ms without one took 5-9 ms through `cgroup.procs`, 35-76 µs
//! through `tasks`; and `/run_sh true` at c=32, joining through `cgroup.procs`, stalled ~5
//! times a second for 12-25 ms, both CPUs idle, the joins in `synchronize_rcu`, the jobs'
//! forks and exits in `percpu_rwsem_wait`. v2 has no such file outside threaded subtrees
//! (its `cgroup.threads` moves threads only within one), so there a job joins through
//! `cgroup.procs` and may pay this.
//!
//! Making and removing a cgroup is the dearest step of starting a job here (the kernel
//! allocates and frees every controller's state: more than the seccomp filter), so a job's
//! cgroup, once its last process is gone, is kept for a later job instead of removed:
//! [`POOL`] of them wait empty, the file that joins them open. Empty means no process at all,
//! and only a process inside a cgroup or the executor can add one (the directories are
//! root's), so a job never meets anything of an earlier one there.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

const ROOT: &str = "/sys/fs/cgroup";

/// Empty job cgroups kept for the next jobs; past this many, an emptied one is removed.
const POOL: usize = 64;

/// How long the cleanup thread tries to empty a job's cgroup before it gives up on it.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(5);

/// Which cgroup hierarchy job cgroups live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// Where job cgroups are made.
#[derive(Debug, Clone)]
pub struct Cgroups {
    version: Version,
    /// The parent of every job cgroup of this executor.
    parent: PathBuf,
    cleanup: mpsc::Sender<Made>,
    /// Empty job cgroups, ready for a job.
    ready: Arc<Mutex<Vec<Made>>>,
}

/// A job cgroup that exists.
#[derive(Debug)]
struct Made {
    path: PathBuf,
    /// The file a job's first process joins it through (`tasks` on v1, `cgroup.procs` on
    /// v2: see the module docs), open for writing.
    join: OwnedFd,
    /// Its `pids.current`, open for reading: whether it is empty, at a job's end.
    current: OwnedFd,
    /// What its `pids.max` says.
    max_processes: u64,
}

/// One job's cgroup. Dropped empty, it goes straight back to the pool; else it is emptied
/// (anything left is killed) on a thread of its own, then kept for another job or removed.
#[derive(Debug)]
pub struct JobCgroup {
    /// Always `Some` until dropped.
    made: Option<Made>,
    cleanup: mpsc::Sender<Made>,
    ready: Arc<Mutex<Vec<Made>>>,
}

impl JobCgroup {
    /// The file that joins the job's cgroup, open for writing: the job's first process
    /// writes `0` to it while it has one thread.
    pub fn join_fd(&self) -> RawFd {
        self.made.as_ref().map_or(-1, |made| made.join.as_raw_fd())
    }

    /// Hold at most `max_processes` from now on: a spare's cgroup, given its job.
    pub fn limit(&mut self, max_processes: u64) -> io::Result<()> {
        match &mut self.made {
            Some(made) => made.limit(max_processes),
            None => Ok(()),
        }
    }
}

impl Made {
    fn limit(&mut self, max_processes: u64) -> io::Result<()> {
        if self.max_processes != max_processes {
            std::fs::write(self.path.join("pids.max"), max_processes.to_string())?;
            self.max_processes = max_processes;
        }
        Ok(())
    }
}

impl Drop for JobCgroup {
    fn drop(&mut self) {
        let Some(made) = self.made.take() else {
            return;
        };
        // Most jobs leave nothing behind (their group was killed when the leader exited):
        // one read of its process count then saves waking the cleanup thread.
        let left = if is_empty(&made.current) {
            keep(&self.ready, made)
        } else {
            Some(made)
        };
        let Some(made) = left else {
            return;
        };
        let _ = self.cleanup.send(made);
    }
}

impl Cgroups {
    /// Find a pids hierarchy this executor may make cgroups in; `Err` says why not.
    pub fn probe() -> Result<Cgroups, String> {
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|error| format!("cannot read /proc/self/cgroup: {error}"))?;
        let v2 = Self::probe_v2(&own);
        let (version, parent) = match v2 {
            Ok(parent) => (Version::V2, parent),
            Err(v2_reason) => match Self::probe_v1(&own) {
                Ok(parent) => (Version::V1, parent),
                Err(v1_reason) => return Err(format!("{v2_reason}; {v1_reason}")),
            },
        };
        let (cleanup, requests) = mpsc::channel::<Made>();
        let ready = Arc::new(Mutex::new(Vec::new()));
        let pool = Arc::clone(&ready);
        std::thread::Builder::new()
            .name("nox-cgroup-cleanup".into())
            .spawn(move || {
                for made in requests {
                    let left = if empty(&made.path) {
                        keep(&pool, made)
                    } else {
                        Some(made)
                    };
                    let Some(made) = left else {
                        continue;
                    };
                    let path = made.path.clone();
                    drop(made);
                    discard(&path);
                }
            })
            .map_err(|error| format!("cannot start the cgroup cleanup thread: {error}"))?;
        Ok(Cgroups {
            version,
            parent,
            cleanup,
            ready,
        })
    }

    /// v2: our cgroup, delegated and offering `pids`. Moves the executor to `supervisor`.
    fn probe_v2(own: &str) -> Result<PathBuf, String> {
        let relative = own
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .ok_or("cgroup v2: not in a v2 hierarchy")?;
        let dir = Path::new(ROOT).join(relative.trim_start_matches('/'));
        let offered = std::fs::read_to_string(dir.join("cgroup.controllers"))
            .map_err(|_| "cgroup v2: no unified hierarchy at /sys/fs/cgroup".to_owned())?;
        if !offered.split_whitespace().any(|name| name == "pids") {
            return Err(format!(
                "cgroup v2: the pids controller is not offered to {} (Delegate=yes?)",
                dir.display()
            ));
        }
        let failed = |what: &str, error: io::Error| {
            format!(
                "cgroup v2: cannot {what} in {} ({error}; Delegate=yes and ProtectControlGroups=no?)",
                dir.display()
            )
        };
        let supervisor = dir.join("supervisor");
        make_dir(&supervisor).map_err(|error| failed("create supervisor/", error))?;
        std::fs::write(supervisor.join("cgroup.procs"), b"0")
            .map_err(|error| failed("move the executor to supervisor/", error))?;
        std::fs::write(dir.join("cgroup.subtree_control"), b"+pids")
            .map_err(|error| failed("enable pids", error))?;
        let parent = dir.join(format!("jobs-{}", std::process::id()));
        make_private_dir(&parent).map_err(|error| failed("create jobs/", error))?;
        std::fs::write(parent.join("cgroup.subtree_control"), b"+pids")
            .map_err(|error| failed("enable pids for jobs", error))?;
        sweep(&dir, "jobs-");
        Ok(parent)
    }

    /// v1: the pids hierarchy, our cgroup in it, writable.
    fn probe_v1(own: &str) -> Result<PathBuf, String> {
        let relative = own
            .lines()
            .find_map(|line| {
                let mut fields = line.splitn(3, ':');
                let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
                controllers
                    .split(',')
                    .any(|name| name == "pids")
                    .then_some(path)
            })
            .ok_or("cgroup v1: no pids hierarchy")?;
        let dir = Path::new(ROOT)
            .join("pids")
            .join(relative.trim_start_matches('/'));
        if !dir.join("cgroup.procs").exists() {
            return Err(format!("cgroup v1: {} is not mounted", dir.display()));
        }
        let parent = dir.join(format!("nox-jobs-{}", std::process::id()));
        make_private_dir(&parent).map_err(|error| {
            format!(
                "cgroup v1: cannot create {} ({error}; ProtectControlGroups=no?)",
                parent.display()
            )
        })?;
        sweep(&dir, "nox-jobs-");
        Ok(parent)
    }

    /// An empty cgroup for one job, holding at most `max_processes` tasks: one kept from an
    /// earlier job, or a new one.
    pub fn create(&self, max_processes: u64) -> io::Result<JobCgroup> {
        let kept = self
            .ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let made = match kept {
            Some(mut made) => {
                // Dropped on failure: the cleanup thread never sees it, and the directory
                // stays until this executor's parent is swept.
                made.limit(max_processes)?;
                made
            }
            None => self.make(max_processes)?,
        };
        Ok(JobCgroup {
            made: Some(made),
            cleanup: self.cleanup.clone(),
            ready: Arc::clone(&self.ready),
        })
    }

    fn make(&self, max_processes: u64) -> io::Result<Made> {
        // One counter for the process: every Sandbox of a process shares the parent.
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = self.parent.join(format!("job-{n}"));
        std::fs::create_dir(&path)?;
        let made = JobCgroupGuard(&path);
        std::fs::write(path.join("pids.max"), max_processes.to_string())?;
        let join = match self.version {
            Version::V1 => "tasks",
            Version::V2 => "cgroup.procs",
        };
        let join = std::fs::OpenOptions::new()
            .write(true)
            .open(path.join(join))?;
        let join = super::spawn::raise_fd(OwnedFd::from(join))?;
        let current = OwnedFd::from(std::fs::File::open(path.join("pids.current"))?);
        std::mem::forget(made);
        Ok(Made {
            path,
            join,
            current,
            max_processes,
        })
    }

    /// Which hierarchy job cgroups are made in.
    pub fn version(&self) -> Version {
        self.version
    }

    /// For the layer report.
    pub fn describe(&self) -> String {
        let version = match self.version {
            Version::V1 => "v1",
            Version::V2 => "v2",
        };
        format!(
            "a pids cgroup ({version}) per job under {}",
            self.parent.display()
        )
    }
}

/// Removes a half-made job cgroup.
struct JobCgroupGuard<'a>(&'a Path);

impl Drop for JobCgroupGuard<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(self.0);
    }
}

fn make_dir(path: &Path) -> io::Result<()> {
    match std::fs::create_dir(path) {
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// The parent of the job cgroups: `0700`, whatever the umask (the unit's is `0077`, a
/// shell's `0022`). Jobs run as other uids, so none can list the others' cgroups or read
/// their `pids.current` and `cgroup.procs` — how many processes a job runs, at will, and
/// their pids. A job joins its own through a descriptor the executor opened.
fn make_private_dir(path: &Path) -> io::Result<()> {
    make_dir(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

/// Remove what executors that are gone left in `dir` (`<prefix><pid>` of a dead pid).
fn sweep(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix(prefix))
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let alive = pid == i32::try_from(std::process::id()).unwrap_or(0)
            || unsafe { libc::kill(pid, 0) } == 0
            || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
        if alive {
            continue;
        }
        let parent = entry.path();
        if let Ok(jobs) = std::fs::read_dir(&parent) {
            for job in jobs.filter_map(Result::ok).map(|job| job.path()) {
                if job.join("cgroup.procs").exists() {
                    empty(&job);
                    discard(&job);
                }
            }
        }
        let _ = std::fs::remove_dir(&parent);
    }
}

/// Put the empty cgroup `made` in `pool` for a later job; back if the pool is full.
fn keep(pool: &Mutex<Vec<Made>>, made: Made) -> Option<Made> {
    let mut pool = pool.lock().unwrap_or_else(PoisonError::into_inner);
    if pool.len() < POOL {
        pool.push(made);
        return None;
    }
    Some(made)
}

/// Whether the cgroup whose `pids.current` is open as `current` has no process, not even
/// one exited and not yet reaped (false if that cannot be read).
///
/// One read, from the start, on a descriptor kept open: the kernel formats the count
/// afresh for every read at offset 0 (opening the file by its path for each job cost as
/// much as the read). Not the member list: v1 serves `tasks` and `cgroup.procs` from a
/// list it keeps for a second after the last read, so a kept descriptor can read a stale
/// one.
fn is_empty(current: &OwnedFd) -> bool {
    let mut count = [0u8; 24];
    nix::sys::uio::pread(current, &mut count, 0).is_ok_and(|n| count[..n].trim_ascii() == b"0")
}

/// Kill whatever is left in the job cgroup at `path` until nothing is; false when that did
/// not happen within [`EMPTY_TIMEOUT`] (or the cgroup cannot be read).
fn empty(path: &Path) -> bool {
    let deadline = Instant::now() + EMPTY_TIMEOUT;
    loop {
        match std::fs::read_to_string(path.join("cgroup.procs")) {
            Ok(members) if members.trim().is_empty() => return true,
            Ok(_) if Instant::now() < deadline => {}
            Ok(_) | Err(_) => return false,
        }
        kill_members(path);
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Remove the job cgroup at `path`, which [`empty`] has emptied (or given up on: then this
/// says so, since a task stuck in the kernel cannot be removed by anyone).
fn discard(path: &Path) {
    match std::fs::remove_dir(path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "could not remove a job's cgroup");
        }
    }
}

/// SIGKILL every process in the cgroup at `path`. Each pid is pinned with a pidfd first and
/// checked to still be in this cgroup, so a pid reused meanwhile is never signalled.
fn kill_members(path: &Path) {
    let Ok(members) = std::fs::read_to_string(path.join("cgroup.procs")) else {
        return;
    };
    // `/<parent>/<job>`: how /proc/<pid>/cgroup ends for a member.
    let mut components = path.components().rev();
    let (Some(job), Some(parent)) = (components.next(), components.next()) else {
        return;
    };
    let suffix = format!(
        "/{}/{}",
        parent.as_os_str().to_string_lossy(),
        job.as_os_str().to_string_lossy()
    );
    for pid in members.lines().filter_map(|line| line.parse::<i32>().ok()) {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let Ok(raw) = RawFd::try_from(raw) else {
            continue;
        };
        if raw < 0 {
            continue;
        }
        // SAFETY: pidfd_open returned a new descriptor that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };
        let still_ours = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|cgroups| cgroups.lines().any(|line| line.ends_with(&suffix)));
        if still_ours {
            // SAFETY: pidfd_send_signal on a descriptor we own, no siginfo.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_cgroup_reads_as_empty_only_while_no_process_is_in_it() {
        let cgroups = match Cgroups::probe() {
            Ok(cgroups) => cgroups,
            Err(why) => {
                eprintln!("SKIP: no job cgroups here: {why}");
                return;
            }
        };
        let job = cgroups.create(8).unwrap();
        let made = job.made.as_ref().unwrap();
        assert!(is_empty(&made.current), "a new cgroup reads as occupied");
        let members = match cgroups.version() {
            Version::V1 => "tasks",
            Version::V2 => "cgroup.procs",
        };
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::fs::write(made.path.join(members), sleeper.id().to_string()).unwrap();
        // Each read counts afresh, from the start: not a stale count, not the EOF where
        // the read before ended.
        for _ in 0..2 {
            assert!(
                !is_empty(&made.current),
                "a cgroup with a process reads as empty"
            );
        }
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        for _ in 0..2 {
            assert!(
                is_empty(&made.current),
                "an emptied cgroup reads as occupied"
            );
        }
    }
}
