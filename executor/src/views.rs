//! Views: a root of its own for each workspace with jobs running, so that no two tenants'
//! jobs ever hold the same inode of a system file.
//!
//! Locks (`flock`, POSIX and OFD record locks) and notifications belong to an inode, and
//! every job reads the same `/etc`, `/usr`, `/dev`: a lock one tenant's job takes on
//! `/etc/hostname` (read-only to it, but a lock needs only a read descriptor) is seen by
//! another tenant's job, a covert channel no permission, Landlock rule or seccomp filter
//! closes without refusing locks outright (which breaks sqlite). A file read through an
//! overlayfs mount is an inode of that overlay, though: a lock taken through one overlay
//! of `/etc` is not seen through another, nor through `/etc` itself (checked on this
//! kernel, and under systemd 252). So each view is a small tmpfs with:
//!
//! - the system directories as read-only overlays of the host's (their only layers the
//!   host's directory and an empty one), symbolic links like `/bin` → `usr/bin` as links;
//! - `/sys` as an overlay too, falling back to a read-only bind where sysfs cannot be a
//!   lower layer;
//! - a `/dev` of its own (a tmpfs with `null`, `zero`, `full`, `random`, `urandom` and the
//!   `fd`/`stdin`/`stdout`/`stderr` links: what systemd's `PrivateDevices=` leaves a job),
//!   and in it a `/dev/shm` tmpfs (POSIX semaphores and shared memory);
//! - a `/tmp` tmpfs of its own, for programs that write there whatever `TMPDIR` says (the
//!   seed's jobs could) — unless something the view binds lies beneath `/tmp` (a state
//!   directory there, in development): Landlock's rule for `/tmp` would reach it too, so
//!   the view then has none; it and `/dev/shm` are emptied whenever the view goes to
//!   another workspace ([`OWN_TMPFS`]);
//! - a `/proc` of its own, `hidepid=invisible`, with `/proc/locks` covered;
//! - the state directory and the workspace root bound in read-write (Landlock still lets
//!   each job reach only its own workspace and scratch directory), and any extra readable
//!   path read-only;
//! - an `/etc/passwd` and `/etc/group` of its own: copies of the host's, kept beside the
//!   views and bound read-only over the host's, to which the executor adds the account of
//!   the workspace the view is lent to (its name, uid, gid and home), so that `whoami`,
//!   `id -un` and `pwd.getpwuid` name a job's user. They name one workspace at a time:
//!   another tenant's name is never listed.
//!
//! Each view also has a network namespace of its own, kept in a file beside it (`<n>.net`):
//! every job of a workspace sees only its workspace's Unix sockets in `/proc/net/unix` (a
//! shared network namespace lists every tenant's socket names and paths). The network
//! namespaces are owned by one user namespace (the file `user`), which maps every uid and
//! gid to itself and is owned by root, so the executor's child enters it without
//! `CAP_SYS_ADMIN` (the owner of a user namespace has every capability in it), then its
//! view's network namespace; the job then changes to its workspace's uid there and keeps
//! no capability. Entering a user namespace is the dear part (~35 µs here, against ~7 for
//! a network namespace): one for all views lets a spare enter it before it has a job.
//! Jobs have no network either way (seccomp refuses every socket but `AF_UNIX`).
//!
//! Views are made ahead of time, as many as jobs may run at once: by the executor itself
//! in the namespace it makes outside systemd (see `namespaces`), and under systemd by
//! `nox-executor views` in a oneshot unit ordered before the executor's (which may not
//! mount). A job enters its workspace's view before it changes uid (`fchdir` to the view's
//! root, `chroot(".")`; the executor needs `CAP_SYS_CHROOT`, the job keeps no
//! capability), with its working directory and its Landlock rules opened through the
//! view. [`Views`] hands them out: every running job of a workspace shares that
//! workspace's view, and a view goes to another workspace only once all of them have
//! ended (their process groups killed), the least recently released first.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::CloneFlags;
use nix::sys::stat::{Mode, SFlag, makedev, mknod};

use crate::ExecutorConfig;

/// System directories in a view, read-only (those that exist; a symbolic link, like
/// `/bin` → `usr/bin`, is made again as the same link).
pub const SYSTEM: [&str; 9] = [
    "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/usr", "/etc", "/opt",
];

/// Options of a view's `/proc`: a process is listed only to those who may ptrace it, as
/// systemd's `ProtectProc=invisible`.
pub const PROC_OPTIONS: &str = "hidepid=invisible";

/// Files of the kernel's a view covers with an empty, unreadable one (as systemd's
/// `InaccessiblePaths=`): `/proc/locks` lists every lock on the host with its holder's pid
/// and inode.
pub const HIDDEN: [&str; 1] = ["/proc/locks"];

/// The device nodes of a view's `/dev`: name, major, minor.
const DEVICES: [(&str, u64, u64); 5] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
];

/// A tmpfs a view has of its own, that its jobs may write (Landlock lets jobs in a view
/// read and write beneath it, execute only where `exec`): emptied whenever the view goes
/// to another workspace, so never a channel between tenants.
#[derive(Debug, Clone, Copy)]
pub struct OwnTmpfs {
    /// As a job names it.
    pub path: &'static str,
    /// The tmpfs's `size=` (memory, shared by the jobs of the workspace holding the view).
    size: &'static str,
    /// Whether programs may run from it.
    pub exec: bool,
}

/// A view's own `/dev/shm` (POSIX semaphores and shared memory: Python's multiprocessing
/// locks, queues and pools; `noexec`, as usual) and `/tmp`.
pub const OWN_TMPFS: [OwnTmpfs; 2] = [
    OwnTmpfs {
        path: "/dev/shm",
        size: "64m",
        exec: false,
    },
    OwnTmpfs {
        path: "/tmp",
        size: "128m",
        exec: true,
    },
];

/// The account files a view has of its own: the path a job reads, and the kind of the copy
/// beside the views (`.accounts/<n>.passwd`, `.accounts/<n>.group`) bound over it (see
/// [`View::name_account`]).
const ACCOUNTS: [(&str, &str); 2] = [("/etc/passwd", "passwd"), ("/etc/group", "group")];

/// Where the views' account copies are, beside the views: a small tmpfs of its own, which
/// stays writable when the views' parent is not (the executor's own root outside systemd).
const ACCOUNT_DIR: &str = ".accounts";

/// The login shell in a workspace's account.
const ACCOUNT_SHELL: &str = "/bin/sh";

/// The links of a view's `/dev`.
const DEVICE_LINKS: [(&str, &str); 4] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// The file that says a directory is a finished view (made last, before the view's root
/// becomes read-only).
const MARK: &str = ".nox-view";

/// The empty directory every overlay has as its second lower layer, beside the views.
const EMPTY: &str = ".empty";

/// The user namespace that owns every view's network namespace, in `dir`.
const USER_NAMESPACE: &str = "user";

/// Every uid and gid to itself: a job's uid is the same number inside as outside.
const IDENTITY_MAP: &str = "0 0 4294967295";

/// `statfs` type of the namespace file system (`NSFS_MAGIC`).
const NSFS_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0x6e73_6673);

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("could not {step}")]
    Step {
        step: String,
        #[source]
        source: io::Error,
    },
}

/// What every view holds besides the system: real, absolute paths.
#[derive(Debug, Clone, Copy)]
struct Contents<'a> {
    /// Bound read-write (the state directory, the workspace root).
    writable: &'a [PathBuf],
    /// Bound read-only when not under a system directory already (a Python outside `/usr`).
    readable: &'a [PathBuf],
}

/// The paths jobs read outside the system directories: the extra readable ones, and the
/// directories of the interpreter and the shell.
pub fn readable_paths(config: &ExecutorConfig) -> Vec<PathBuf> {
    let mut readable = config.extra_read_paths.clone();
    for program in [&config.python, &config.shell] {
        if let Some(parent) = program.parent() {
            readable.push(parent.to_path_buf());
        }
    }
    readable
}

/// Make the views `config` asks for in `dir` — its `views_dir` (`nox-executor views`, as
/// root, before the executor starts: nox-views.service), or where that will be once the
/// executor has pivoted into its own root — from this process's view of the host. The
/// state directory and the workspace root are made first if missing (`0711`, as the
/// executor's unit makes its state directory).
pub fn build_configured(config: &ExecutorConfig, dir: &Path) -> Result<(), ViewError> {
    let writable = [config.state_dir.clone(), config.workspace_root.clone()];
    for dir in &writable {
        if !dir.exists() {
            make_dir(dir, 0o711)?;
        }
    }
    let readable = readable_paths(config);
    let contents = Contents {
        writable: &writable,
        readable: &readable,
    };
    build_all(dir, config.view_count(), contents)
}

/// Make `count` views `dir/0` … `dir/<count - 1>` (replacing any made before) from the
/// host's directories as this process sees them. Needs `CAP_SYS_ADMIN` and `CAP_MKNOD`.
fn build_all(dir: &Path, count: usize, contents: Contents<'_>) -> Result<(), ViewError> {
    make_dir(dir, 0o755)?;
    let empty = dir.join(EMPTY);
    make_dir(&empty, 0o555)?;
    account_dir(dir)?;
    for index in 0..count {
        let root = dir.join(index.to_string());
        // A view made before (the unit restarted): its mounts go, lazily, with it.
        if root.join(MARK).exists() {
            umount2(&root, MntFlags::MNT_DETACH)
                .map_err(step(format!("unmount the old {}", root.display())))?;
        }
        make_dir(&root, 0o755)?;
        let accounts: Vec<(PathBuf, &Path)> = ACCOUNTS
            .iter()
            .map(|(path, kind)| (account_file(dir, index, kind), Path::new(*path)))
            .collect();
        build_one(&root, &empty, contents, &accounts)?;
    }
    make_namespaces(dir, count)
}

/// View `index`'s own account file of `kind` (see [`ACCOUNTS`]).
fn account_file(dir: &Path, index: usize, kind: &str) -> PathBuf {
    dir.join(ACCOUNT_DIR).join(format!("{index}.{kind}"))
}

/// A fresh tmpfs for the account copies (one made before goes, lazily, with its views).
/// Not capped: only the executor writes there (jobs see the copies read-only and never
/// the directory), two copies of the host's files per view, whatever their size.
fn account_dir(dir: &Path) -> Result<(), ViewError> {
    let accounts = dir.join(ACCOUNT_DIR);
    let _ = umount2(&accounts, MntFlags::MNT_DETACH);
    make_dir(&accounts, 0o755)?;
    mount(
        Some("tmpfs"),
        &accounts,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0755"),
    )
    .map_err(step(format!("mount a tmpfs on {}", accounts.display())))?;
    mount(
        None::<&str>,
        &accounts,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(step(format!("make {} private", accounts.display())))
}

/// The file holding view `index`'s network namespace.
fn network_file(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("{index}.net"))
}

/// The user namespace (owned by root, every id mapped to itself) and, owned by it, a
/// network namespace per view, each kept in its file: made by children that unshare them
/// and wait on their stdin while we map ids and bind their namespaces to the files.
fn make_namespaces(dir: &Path, count: usize) -> Result<(), ViewError> {
    let user_file = dir.join(USER_NAMESPACE);
    keep_namespace(CloneFlags::CLONE_NEWUSER, None, "user", &user_file)?;
    let user = nix::fcntl::open(
        &user_file,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(step(format!("open {}", user_file.display())))?;
    for index in 0..count {
        let file = network_file(dir, index);
        keep_namespace(CloneFlags::CLONE_NEWNET, Some(user.as_fd()), "net", &file)?;
    }
    Ok(())
}

/// A new namespace `flags` (of kind `kind`, as `/proc/<pid>/ns` names it), made by a child
/// in `user` (when given), bound to `file`. A new user namespace gets the identity maps.
fn keep_namespace(
    flags: CloneFlags,
    user: Option<BorrowedFd<'_>>,
    kind: &str,
    file: &Path,
) -> Result<(), ViewError> {
    let mut command = std::process::Command::new("/bin/sh");
    command
        .args(["-c", "read _"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    let mut child =
        crate::sandbox::spawn_unshared(&mut command, user.map(|fd| fd.as_raw_fd()), flags)
            .map_err(step(format!("start a process in a new {kind} namespace")))?;
    let made = (|| {
        let proc = PathBuf::from(format!("/proc/{}", child.id()));
        if flags.contains(CloneFlags::CLONE_NEWUSER) {
            for map in ["uid_map", "gid_map"] {
                std::fs::write(proc.join(map), IDENTITY_MAP)
                    .map_err(step(format!("write the views' {map}")))?;
            }
        }
        // One made before (the unit restarted) goes first.
        let _ = umount2(file, MntFlags::MNT_DETACH);
        std::fs::File::create(file).map_err(step(format!("create {}", file.display())))?;
        mount(
            Some(&proc.join("ns").join(kind)),
            file,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(step(format!(
            "keep a {kind} namespace in {}",
            file.display()
        )))
    })();
    // EOF on its stdin ends it; the namespace lives on in the file.
    drop(child.stdin.take());
    let _ = child.wait();
    made
}

/// Unmount the views in `dir` (lazily: a job still in one keeps it until it ends) and
/// remove them, their namespace files and `dir` itself: what stopping nox-views.service
/// does.
pub fn remove_all(dir: &Path) -> Result<usize, ViewError> {
    let mut removed = 0;
    loop {
        let root = dir.join(removed.to_string());
        if !root.join(MARK).exists() {
            break;
        }
        umount2(&root, MntFlags::MNT_DETACH)
            .map_err(step(format!("unmount {}", root.display())))?;
        std::fs::remove_dir(&root).map_err(step(format!("remove {}", root.display())))?;
        let file = network_file(dir, removed);
        let _ = umount2(&file, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&file);
        removed += 1;
    }
    let user = dir.join(USER_NAMESPACE);
    let _ = umount2(&user, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(&user);
    let accounts = dir.join(ACCOUNT_DIR);
    let _ = umount2(&accounts, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir(&accounts);
    // Nothing is left then: the directory goes too (unless something else is in it).
    let _ = std::fs::remove_dir(dir.join(EMPTY));
    let _ = std::fs::remove_dir(dir);
    Ok(removed)
}

/// One view at `root` (an empty directory), with `accounts`: (its own copy beside the
/// views, the host's file it stands for).
fn build_one(
    root: &Path,
    empty: &Path,
    contents: Contents<'_>,
    accounts: &[(PathBuf, &Path)],
) -> Result<(), ViewError> {
    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=64k"),
    )
    .map_err(step(format!("mount a tmpfs on {}", root.display())))?;
    // Under a shared parent (the host's `/`) the tmpfs is shared too: mounts made in it
    // would reach the host's other copies of it. Private (see `bind`).
    mount(
        None::<&str>,
        root,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(step(format!("make {} private", root.display())))?;
    let mut covered = place_system(root, |source| overlay(root, source, empty))?;
    let sys = Path::new("/sys");
    if overlay(root, sys, empty).is_err() {
        bind(root, sys, true, true)?;
    }
    covered.push(sys.to_path_buf());
    devices(root)?;
    proc(root)?;
    // The readable paths as bound (those that exist), resolved once.
    let readable: Vec<PathBuf> = contents
        .readable
        .iter()
        .filter_map(|path| path.canonicalize().ok())
        .collect();
    // Only where nothing is bound beneath: Landlock lets jobs write everything beneath an
    // own tmpfs, which would include a state directory bound there (development).
    for own in OWN_TMPFS
        .iter()
        .filter(|own| !own.path.starts_with("/dev/"))
    {
        if contents
            .writable
            .iter()
            .chain(&readable)
            .any(|path| path.starts_with(own.path))
        {
            tracing::info!(
                path = own.path,
                "a view has no tmpfs of its own there: the state directory or a readable path is beneath it"
            );
            continue;
        }
        own_tmpfs(root, own)?;
    }
    for real in readable {
        if !covered.iter().any(|done| real.starts_with(done)) {
            bind(root, &real, true, true)?;
            covered.push(real);
        }
    }
    // Parents first, so that a directory inside another is bound onto the first's.
    let mut own: Vec<&PathBuf> = contents.writable.iter().collect();
    own.sort();
    own.dedup();
    for path in own {
        bind(root, path, false, false)?;
    }
    for (copy, host) in accounts {
        own_account_file(root, copy, host)?;
    }
    std::fs::File::create(root.join(MARK)).map_err(step("mark the view finished"))?;
    mount(
        None::<&str>,
        root,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(step(format!("make {} read-only", root.display())))
}

/// Each of [`SYSTEM`] that exists, under `root`: a symbolic link made again as the same
/// link, a directory handed to `place` (to mount it there). Returns the directories.
pub fn place_system(
    root: &Path,
    mut place: impl FnMut(&Path) -> Result<(), ViewError>,
) -> Result<Vec<PathBuf>, ViewError> {
    let mut placed = Vec::new();
    for system in SYSTEM {
        let source = Path::new(system);
        let Ok(meta) = source.symlink_metadata() else {
            continue;
        };
        if meta.is_symlink() {
            let link = std::fs::read_link(source).map_err(step(format!("read {system}")))?;
            std::os::unix::fs::symlink(&link, inside(root, source))
                .map_err(step(format!("link {system} in {}", root.display())))?;
        } else {
            place(source)?;
            placed.push(source.to_path_buf());
        }
    }
    Ok(placed)
}

/// `own` mounted in the view at `root`: mode 1777, `nosuid`, `nodev`, `noexec` unless it
/// allows programs.
fn own_tmpfs(root: &Path, own: &OwnTmpfs) -> Result<(), ViewError> {
    let path = inside(root, Path::new(own.path));
    make_dir(&path, 0o1777)?;
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if !own.exec {
        flags |= MsFlags::MS_NOEXEC;
    }
    mount(
        Some("tmpfs"),
        &path,
        Some("tmpfs"),
        flags,
        Some(format!("mode=1777,size={}", own.size).as_str()),
    )
    .map_err(step(format!("mount {} in the view", own.path)))
}

/// The view's own `host` account file (`/etc/passwd`, `/etc/group`): `copy`, made from the
/// host's, bound read-only over it in the view. Nothing when the host has no such file.
fn own_account_file(root: &Path, copy: &Path, host: &Path) -> Result<(), ViewError> {
    if !host.is_file() {
        return Ok(());
    }
    std::fs::copy(host, copy).map_err(step(format!(
        "copy {} to {}",
        host.display(),
        copy.display()
    )))?;
    mount_bind(
        copy,
        &inside(root, host),
        true,
        false,
        &host.display().to_string(),
    )
}

/// `source` at the same path under `root` as a read-only overlay: the host's directory
/// and `empty` its only layers, so its inodes are the overlay's own.
fn overlay(root: &Path, source: &Path, empty: &Path) -> Result<(), ViewError> {
    let target = inside(root, source);
    std::fs::create_dir_all(&target)
        .map_err(step(format!("create {} in the view", source.display())))?;
    let options = format!("lowerdir={}:{}", source.display(), empty.display());
    mount(
        Some("overlay"),
        &target,
        Some("overlay"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID,
        Some(options.as_str()),
    )
    .map_err(step(format!("overlay {} in the view", source.display())))
}

/// The view's `/dev`: a tmpfs of its own with the usual character devices and links,
/// read-only once made (a device node is written through all the same).
fn devices(root: &Path) -> Result<(), ViewError> {
    let dev = root.join("dev");
    make_dir(&dev, 0o755)?;
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=16k"),
    )
    .map_err(step("mount /dev in the view"))?;
    for (name, major, minor) in DEVICES {
        let node = dev.join(name);
        mknod(
            &node,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .map_err(step(format!("make /dev/{name} in the view")))?;
        // mknod's mode is masked by the umask.
        std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o666))
            .map_err(step(format!("make /dev/{name} writable")))?;
    }
    for (name, target) in DEVICE_LINKS {
        std::os::unix::fs::symlink(target, dev.join(name))
            .map_err(step(format!("link /dev/{name} in the view")))?;
    }
    // Before /dev is read-only: its mount point is in it.
    for own in OWN_TMPFS.iter().filter(|own| own.path.starts_with("/dev/")) {
        own_tmpfs(root, own)?;
    }
    mount(
        None::<&str>,
        &dev,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(step("make /dev read-only in the view"))
}

/// The view's `/proc`: a new instance that lists only a job's own processes, with
/// [`HIDDEN`] covered by an empty file nobody may read.
pub fn proc(root: &Path) -> Result<(), ViewError> {
    let proc = root.join("proc");
    make_dir(&proc, 0o555)?;
    mount(
        Some("proc"),
        &proc,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(PROC_OPTIONS),
    )
    .map_err(step("mount /proc in the view"))?;
    let inaccessible = root.join(".inaccessible");
    std::fs::File::create(&inaccessible)
        .and_then(|file| file.set_permissions(std::fs::Permissions::from_mode(0o000)))
        .map_err(step("create an inaccessible file"))?;
    for hidden in HIDDEN {
        let target = inside(root, Path::new(hidden));
        if target.exists() {
            mount(
                Some(&inaccessible),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(step(format!("hide {hidden} in the view")))?;
        }
    }
    Ok(())
}

/// Where `path` goes under `root`.
pub fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Bind `source` (a directory, a file or a socket) at the same path under `root`: with the
/// mounts beneath it (`mounts`) or only its own file system; read-only and without setuid
/// (`read_only`), else as it is.
pub fn bind(root: &Path, source: &Path, read_only: bool, mounts: bool) -> Result<(), ViewError> {
    let target = inside(root, source);
    let described = || source.display().to_string();
    let created = if source.is_dir() {
        std::fs::create_dir_all(&target)
    } else {
        target
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::File::create(&target).map(drop))
    };
    created.map_err(step(format!("create {} in the view", described())))?;
    mount_bind(source, &target, read_only, mounts, &described())
}

/// Bind `source` on `target` (which exists) as [`bind`] does; `described` names it in errors.
fn mount_bind(
    source: &Path,
    target: &Path,
    read_only: bool,
    mounts: bool,
    described: &str,
) -> Result<(), ViewError> {
    let mut flags = MsFlags::MS_BIND;
    if mounts {
        flags |= MsFlags::MS_REC;
    }
    mount(Some(source), target, None::<&str>, flags, None::<&str>)
        .map_err(step(format!("bind {described} into the view")))?;
    // A bind of a shared mount (the host's `/` under systemd) joins its peer group, and a
    // bind made beneath it later (the workspace root under the state directory) would
    // propagate back onto the host's own tree: `/var/lib/nox/workspaces` mounted on
    // itself, which `rm -rf /var/lib/nox` then cannot remove (EBUSY, met in the boot
    // test's purge). Private, nothing made in a view leaves it.
    let private = if mounts {
        MsFlags::MS_PRIVATE | MsFlags::MS_REC
    } else {
        MsFlags::MS_PRIVATE
    };
    mount(None::<&str>, target, None::<&str>, private, None::<&str>)
        .map_err(step(format!("make {described} private in the view")))?;
    if read_only {
        // A bind mount takes new flags only on a remount.
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID,
            None::<&str>,
        )
        .map_err(step(format!("make {described} read-only in the view")))?;
    }
    Ok(())
}

/// `path` as a directory with `mode` (made if missing; the mode set whatever the umask).
fn make_dir(path: &Path, mode: u32) -> Result<(), ViewError> {
    std::fs::create_dir_all(path)
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)))
        .map_err(step(format!("create {}", path.display())))
}

/// The error of a failed `what` (an `io::Error` or a `nix` errno).
pub fn step<E: Into<io::Error>>(what: impl Into<String>) -> impl FnOnce(E) -> ViewError {
    move |source| ViewError::Step {
        step: what.into(),
        source: source.into(),
    }
}

/// One finished view, its root and namespaces held open.
#[derive(Debug)]
pub struct View {
    index: usize,
    path: PathBuf,
    /// `O_PATH` directory, numbered above what a child places (see `spawn::raise_fd`):
    /// a job's child `fchdir`s to it and `chroot`s.
    root: OwnedFd,
    /// The views' user namespace and its own network namespace, which a job's child
    /// enters first (`setns`); `None` when they were not made.
    namespaces: Option<(Arc<OwnedFd>, OwnedFd)>,
    /// Its own account files beside the views, in the order of [`ACCOUNTS`]; empty when
    /// it has none (made by an older nox).
    accounts: Vec<PathBuf>,
    /// The workspace whose account they name, once written.
    named: Mutex<Option<String>>,
    /// Those of [`OWN_TMPFS`] it has: mounts of their own.
    own_tmpfs: Vec<OwnTmpfs>,
}

/// A workspace's account, as its jobs read it in a view's `/etc/passwd` and `/etc/group`.
#[derive(Debug, Clone, Copy)]
pub struct Account<'a> {
    pub name: &'a str,
    pub uid: u32,
    pub gid: u32,
    pub home: &'a Path,
}

impl Account<'_> {
    /// Its id and line in the account file of `kind`.
    fn entry(&self, kind: &str) -> (u32, String) {
        let name = self.name;
        if kind == "group" {
            return (self.gid, format!("{name}:x:{}:\n", self.gid));
        }
        let home = self.home.display();
        let line = format!(
            "{name}:x:{}:{}:nox workspace:{home}:{ACCOUNT_SHELL}\n",
            self.uid, self.gid
        );
        (self.uid, line)
    }
}

/// `host`, an account file (`name:x:id:…` lines), with `line` added, unless an entry of
/// `name` or of `id` is there already: the host's own entries always win.
fn with_entry(host: &str, name: &str, id: u32, line: &str) -> String {
    let id = id.to_string();
    let taken = host.lines().any(|entry| {
        let mut fields = entry.split(':');
        let first = fields.next();
        let third = fields.nth(1);
        first == Some(name) || third == Some(id.as_str())
    });
    let mut content = host.to_owned();
    if !taken {
        if !content.is_empty() && !content.ends_with('\n') {
            content.push('\n');
        }
        content.push_str(line);
    }
    content
}

/// Whether the directory `path` is a mount of its own, not of the file system of `root`.
fn is_mount_on(path: &Path, root: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (path.symlink_metadata(), root.metadata()) {
        (Ok(dir), Ok(root)) => dir.is_dir() && dir.dev() != root.dev(),
        _ => false,
    }
}

/// Whether `a` and `b` are the same file (a bind mount of it included).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (a.metadata(), b.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// What a job's child enters: a view's root and namespaces.
#[derive(Debug, Clone, Copy)]
pub struct ViewFds<'a> {
    pub root: BorrowedFd<'a>,
    /// User namespace, then network namespace.
    pub namespaces: Option<(BorrowedFd<'a>, BorrowedFd<'a>)>,
}

impl View {
    /// Its number in the pool.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Where it is, as the executor sees it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its root and namespaces, for the job's child.
    pub fn fds(&self) -> ViewFds<'_> {
        ViewFds {
            root: self.root.as_fd(),
            namespaces: self
                .namespaces
                .as_ref()
                .map(|(user, net)| (user.as_fd(), net.as_fd())),
        }
    }

    /// Whether it has namespaces of its own.
    pub fn has_namespaces(&self) -> bool {
        self.namespaces.is_some()
    }

    /// Remove everything in the view's own tmpfs mounts.
    fn empty_own_tmpfs(&self) -> io::Result<()> {
        for own in &self.own_tmpfs {
            crate::scratch::remove_contents(&inside(&self.path, Path::new(own.path)))?;
        }
        Ok(())
    }

    /// Its own tmpfs mounts, of [`OWN_TMPFS`] (a view made by an older nox, or one with
    /// something bound beneath `/tmp`, has fewer).
    pub fn own_tmpfs(&self) -> impl Iterator<Item = &OwnTmpfs> {
        self.own_tmpfs.iter()
    }

    /// Name `account` in the view's own `/etc/passwd` and `/etc/group`: the host's entries
    /// and one line each for it (see [`with_entry`]), unless they name it already. The
    /// copies are rewritten in place, the view binding them; no job of another workspace
    /// runs in the view meanwhile (see [`Views::lease`]), and until both are written they
    /// are taken to name nobody, so a job whose naming failed is refused rather than shown
    /// another tenant's name. Nothing to do for a view without its own copies.
    pub fn name_account(&self, account: &Account<'_>) -> io::Result<()> {
        if self.accounts.is_empty() {
            return Ok(());
        }
        let mut named = self.named.lock().unwrap_or_else(PoisonError::into_inner);
        if named.as_deref() == Some(account.name) {
            return Ok(());
        }
        *named = None;
        for ((host, kind), copy) in ACCOUNTS.iter().zip(&self.accounts) {
            let (id, line) = account.entry(kind);
            let content = with_entry(&std::fs::read_to_string(host)?, account.name, id, &line);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(copy)?;
            std::io::Write::write_all(&mut file, content.as_bytes())?;
        }
        *named = Some(account.name.to_owned());
        Ok(())
    }

    /// `path`, absolute as a job names it, opened inside the view: resolved as if the
    /// view were the root (symbolic links and `..` included), close-on-exec.
    pub fn open(&self, path: &Path, flags: OFlag) -> io::Result<OwnedFd> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        Ok(openat2(self.root.as_fd(), path, how)?)
    }
}

/// The views, and which workspace holds which.
#[derive(Debug)]
pub struct Views {
    dir: PathBuf,
    views: Vec<View>,
    state: Mutex<Assignment>,
}

#[derive(Debug, Default)]
struct Assignment {
    /// Workspace → (view, running jobs).
    held: HashMap<String, (usize, usize)>,
    /// Views no running job holds, the least recently released first.
    free: VecDeque<usize>,
    /// The workspace each view was last held by.
    last: Vec<Option<String>>,
}

impl Views {
    /// The finished views `dir/0`, `dir/1`, … (up to the first missing one); `None` when
    /// there is none.
    pub fn open(dir: &Path) -> io::Result<Option<Arc<Views>>> {
        let user = open_namespace(&dir.join(USER_NAMESPACE))?.map(Arc::new);
        let mut views = Vec::new();
        loop {
            let path = dir.join(views.len().to_string());
            if !path.join(MARK).exists() {
                break;
            }
            let root = nix::fcntl::open(
                &path,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
                Mode::empty(),
            )?;
            let root = crate::sandbox::spawn::raise_fd(root)?;
            let net = match &user {
                Some(_) => open_namespace(&network_file(dir, views.len()))?,
                None => None,
            };
            let namespaces = user.clone().zip(net);
            let accounts: Vec<PathBuf> = ACCOUNTS
                .iter()
                .map(|(_, kind)| account_file(dir, views.len(), kind))
                .collect();
            let bound = ACCOUNTS
                .iter()
                .zip(&accounts)
                .all(|((host, _), copy)| same_file(copy, &inside(&path, Path::new(host))));
            let own_tmpfs = OWN_TMPFS
                .into_iter()
                .filter(|own| is_mount_on(&inside(&path, Path::new(own.path)), &path))
                .collect();
            views.push(View {
                index: views.len(),
                path,
                root,
                namespaces,
                accounts: if bound { accounts } else { Vec::new() },
                named: Mutex::new(None),
                own_tmpfs,
            });
        }
        if views.is_empty() {
            return Ok(None);
        }
        let state = Assignment {
            held: HashMap::new(),
            free: (0..views.len()).collect(),
            last: vec![None; views.len()],
        };
        Ok(Some(Arc::new(Views {
            dir: dir.to_path_buf(),
            views,
            state: Mutex::new(state),
        })))
    }

    /// Where they are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.views.len()
    }

    /// Never: [`Views::open`] gives `None` instead.
    pub fn is_empty(&self) -> bool {
        self.views.is_empty()
    }

    /// Every view, in order.
    pub fn all(&self) -> &[View] {
        &self.views
    }

    /// The user namespace every view's network namespace belongs to, when they have them:
    /// a spare enters it while it waits.
    pub fn user_namespace(&self) -> Option<BorrowedFd<'_>> {
        let (user, _) = self.views.first()?.namespaces.as_ref()?;
        Some(user.as_fd())
    }

    /// The view `workspace`'s job runs in: the one its running jobs hold, else a free one
    /// (the one it held last if free, else the least recently released). `None` when every
    /// view is held by other workspaces.
    pub fn lease(self: &Arc<Self>, workspace: &str) -> Option<ViewLease> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let index = if let Some((index, running)) = state.held.get_mut(workspace) {
            *running += 1;
            *index
        } else {
            let at = state
                .free
                .iter()
                .position(|&free| state.last[free].as_deref() == Some(workspace))
                .unwrap_or(0);
            let index = state.free.remove(at)?;
            if state.last[index].as_deref() != Some(workspace)
                && let Err(error) = self.views[index].empty_own_tmpfs()
            {
                // Never handed to another workspace with what the last one left there:
                // the job is refused (`NoView`), the view stays free for a later try.
                tracing::error!(
                    view = index,
                    error = %error,
                    "could not empty a view's /dev/shm or /tmp; the job is refused"
                );
                state.free.push_back(index);
                return None;
            }
            state.held.insert(workspace.to_owned(), (index, 1));
            state.last[index] = Some(workspace.to_owned());
            index
        };
        Some(ViewLease {
            views: Arc::clone(self),
            index,
            workspace: workspace.to_owned(),
        })
    }

    fn release(&self, workspace: &str) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((index, running)) = state.held.get_mut(workspace) {
            *running -= 1;
            if *running == 0 {
                let index = *index;
                state.held.remove(workspace);
                state.free.push_back(index);
            }
        }
    }
}

/// The namespace kept in `file`, when it holds one (not an empty file a failed or
/// removed view left).
fn open_namespace(file: &Path) -> io::Result<Option<OwnedFd>> {
    let Ok(fd) = nix::fcntl::open(
        file,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    ) else {
        return Ok(None);
    };
    if nix::sys::statfs::fstatfs(&fd)?.filesystem_type() != NSFS_MAGIC {
        return Ok(None);
    }
    Ok(Some(crate::sandbox::spawn::raise_fd(fd)?))
}

/// One job's hold on its workspace's view; released when dropped (once the job has ended).
#[derive(Debug)]
pub struct ViewLease {
    views: Arc<Views>,
    index: usize,
    workspace: String,
}

impl ViewLease {
    /// The view.
    pub fn view(&self) -> &View {
        &self.views.views[self.index]
    }
}

impl Drop for ViewLease {
    fn drop(&mut self) {
        self.views.release(&self.workspace);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `count` directories that look like finished views (no mounts: the pool only opens
    /// them).
    fn pool(count: usize) -> (tempfile::TempDir, Arc<Views>) {
        let dir = tempfile::tempdir().unwrap();
        for index in 0..count {
            let root = dir.path().join(index.to_string());
            std::fs::create_dir(&root).unwrap();
            std::fs::File::create(root.join(MARK)).unwrap();
        }
        let views = Views::open(dir.path()).unwrap().unwrap();
        (dir, views)
    }

    #[test]
    fn no_finished_view_is_no_pool() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("0")).unwrap();
        assert!(Views::open(dir.path()).unwrap().is_none());
    }

    #[test]
    fn the_jobs_of_one_workspace_share_its_view_and_other_workspaces_get_others() {
        let (_dir, views) = pool(3);
        let a1 = views.lease("alpha").unwrap();
        let a2 = views.lease("alpha").unwrap();
        let b = views.lease("beta").unwrap();
        let c = views.lease("gamma").unwrap();
        assert_eq!(a1.view().index(), a2.view().index());
        let held = [a1.view().index(), b.view().index(), c.view().index()];
        assert_eq!(
            held.iter().collect::<std::collections::BTreeSet<_>>().len(),
            3
        );
        // Every view is held: a fourth workspace waits, alpha's next job does not.
        assert!(views.lease("delta").is_none());
        assert!(views.lease("alpha").is_some());
    }

    #[test]
    fn a_view_goes_to_another_workspace_only_when_all_of_its_jobs_have_ended() {
        let (_dir, views) = pool(1);
        let first = views.lease("alpha").unwrap();
        let second = views.lease("alpha").unwrap();
        drop(first);
        assert!(views.lease("beta").is_none(), "alpha still runs a job");
        drop(second);
        assert_eq!(views.lease("beta").unwrap().view().index(), 0);
    }

    #[test]
    fn an_account_is_added_unless_its_name_or_id_is_taken() {
        let host =
            "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin";
        let line = "alpha:x:2000:2000:nox workspace:/w/alpha:/bin/sh\n";
        assert_eq!(
            with_entry(host, "alpha", 2000, line),
            format!("{host}\n{line}")
        );
        assert_eq!(with_entry("", "alpha", 2000, line), line);
        assert_eq!(with_entry(host, "nobody", 2000, line), host, "a host name");
        assert_eq!(with_entry(host, "alpha", 65534, line), host, "a host id");
        // The id is the third field: a gid (fourth) of that number is no conflict.
        let other = "x:x:7:2000::/:/bin/sh\n";
        assert!(with_entry(other, "alpha", 2000, line).ends_with(line));
    }

    /// One finished view (no mounts) with account copies beside it, which its `/etc`
    /// shows when `bound` (a hard link stands for the bind mount: the same file under both
    /// names), else other files of the same names.
    fn view_with_account_copies(bound: bool) -> (tempfile::TempDir, Arc<Views>) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("0");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::File::create(root.join(MARK)).unwrap();
        std::fs::create_dir(dir.path().join(ACCOUNT_DIR)).unwrap();
        for (host, kind) in ACCOUNTS {
            let copy = account_file(dir.path(), 0, kind);
            std::fs::write(&copy, "").unwrap();
            let shown = inside(&root, Path::new(host));
            if bound {
                std::fs::hard_link(&copy, shown).unwrap();
            } else {
                std::fs::write(shown, "").unwrap();
            }
        }
        let views = Views::open(dir.path()).unwrap().unwrap();
        (dir, views)
    }

    /// Workspace `name`'s account, uid and gid `id`, at home in `home`.
    fn account(name: &'static str, id: u32, home: &'static str) -> Account<'static> {
        Account {
            name,
            uid: id,
            gid: id,
            home: Path::new(home),
        }
    }

    #[test]
    fn a_view_names_the_account_of_the_workspace_it_is_lent_to_and_no_other() {
        let (dir, views) = view_with_account_copies(true);
        let view = &views.all()[0];
        let root = dir.path().join("0");
        let read = |host: &str| std::fs::read_to_string(inside(&root, Path::new(host))).unwrap();
        view.name_account(&account("alpha", 2_000_000_001, "/w/alpha"))
            .unwrap();
        let host_passwd = std::fs::read_to_string("/etc/passwd").unwrap();
        let passwd = read("/etc/passwd");
        assert!(passwd.starts_with(&host_passwd), "{passwd}");
        assert!(
            passwd.ends_with("alpha:x:2000000001:2000000001:nox workspace:/w/alpha:/bin/sh\n"),
            "{passwd}"
        );
        assert!(read("/etc/group").ends_with("alpha:x:2000000001:\n"));
        view.name_account(&account("beta", 2_000_000_002, "/w/beta"))
            .unwrap();
        for host in ["/etc/passwd", "/etc/group"] {
            let content = read(host);
            assert!(content.contains("\nbeta:x:2000000002:"), "{content}");
            assert!(!content.contains("alpha"), "{content}");
        }
    }

    #[test]
    fn a_view_whose_etc_is_not_its_own_copy_names_nobody() {
        // Copies beside the view, but its /etc holds other files (a view made before it
        // had copies, or one whose binding failed).
        let (dir, views) = view_with_account_copies(false);
        views.all()[0]
            .name_account(&account("alpha", 2_000_000_001, "/w/alpha"))
            .unwrap();
        for (_, kind) in ACCOUNTS {
            let copy = std::fs::read_to_string(account_file(dir.path(), 0, kind)).unwrap();
            assert_eq!(copy, "", "written though the view does not show it");
        }
    }

    #[test]
    fn a_workspace_gets_its_last_view_back_else_the_least_recently_released() {
        let (_dir, views) = pool(3);
        let (a, b, c) = (
            views.lease("alpha").unwrap(),
            views.lease("beta").unwrap(),
            views.lease("gamma").unwrap(),
        );
        let (alpha, beta) = (a.view().index(), b.view().index());
        drop(b);
        drop(a);
        drop(c);
        // Free now, oldest first: beta's, alpha's, gamma's.
        assert_eq!(views.lease("alpha").unwrap().view().index(), alpha);
        let delta = views.lease("delta").unwrap();
        assert_eq!(delta.view().index(), beta);
    }
}
