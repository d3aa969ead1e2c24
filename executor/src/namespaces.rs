//! Outside systemd, the executor makes for itself what its unit gives it under systemd: a
//! network namespace with nothing but loopback (`PrivateNetwork=yes`), and a mount
//! namespace whose root holds only what the executor and its jobs use — the system
//! directories read-only, `/proc` (a new instance listing only a job's own processes, as
//! `ProtectProc=invisible` does), `/sys`, `/dev`, and read-write the state directory and
//! the workspace root. Every job inherits both.
//!
//! This closes what Landlock cannot on this kernel: `connect()` to a pathname Unix socket
//! is not an access right Landlock governs (ABI 7), so a job could talk to any host
//! service whose socket it can name and whose mode lets it in (D-Bus's system bus,
//! journald's `/dev/log`, a world-writable socket of any daemon). In this view such a
//! socket is not there to name. It is done once, at start, before any thread exists (a
//! mount namespace is per `fs_struct`, which threads share), so it costs a job nothing.
//!
//! `[executor] namespaces`: `auto` (the default) does it when the executor is root and
//! not started by systemd (no `INVOCATION_ID`, no `JOURNAL_STREAM`), where the unit does
//! the same and logs go to the journal through `/run`; `always` requires it (the executor
//! does not start without it); `never` leaves the executor in the host's namespaces. With
//! `auto`, a failure up to the pivot (no `CAP_SYS_ADMIN` in a container, say) is logged and
//! the executor goes on as before; a failure after it stops the executor in any mode, the
//! host's root being perhaps still reachable.

use std::io;
use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use serde::{Deserialize, Serialize};

use crate::ExecutorConfig;
use crate::views::{self, ViewError, bind, inside};

/// Whether the executor makes its own namespaces (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Namespaces {
    /// When root and not started by systemd.
    #[default]
    Auto,
    /// Required: the executor does not start without them.
    Always,
    /// Never.
    Never,
}

/// Kernel and device file systems in the view, as they are (cgroups live under `/sys`).
/// `/proc` is a new instance instead, as the unit's `ProtectProc=invisible` makes it: the
/// host's shows every process of every uid, other tenants' jobs with their command lines.
const KERNEL: [&str; 2] = ["/sys", "/dev"];

/// The directory the new root is built in, under the state directory.
const BUILD_DIR: &str = ".view";

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("could not {step}")]
    Step {
        step: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Mount(#[from] ViewError),
    #[error("{0} must be an absolute path without symbolic links to be kept in the view")]
    Path(PathBuf),
    /// In the view, but with the host's root still reachable or the view writable: never
    /// run jobs like that, whatever `namespaces` says.
    #[error("entered the view but could not {step}")]
    Unfinished {
        step: String,
        #[source]
        source: io::Error,
    },
}

/// What [`enter`] did.
#[derive(Debug)]
pub enum Entered {
    /// The executor is in its own namespaces; these paths are in the view read-write.
    Yes { writable: Vec<PathBuf> },
    /// Not done, and why (`auto` outside its conditions, or `never`).
    No(&'static str),
    /// `auto` tried and failed before anything was left half done: the executor goes on in
    /// the host's namespaces.
    Failed(NamespaceError),
}

/// Enter the executor's own namespaces as `config.namespaces` says. Call it before any
/// thread exists. `socket`: the path of a socket the executor bound itself, whose
/// directory stays in the view.
pub fn enter(config: &ExecutorConfig, socket: Option<&Path>) -> Result<Entered, NamespaceError> {
    match make(config, socket) {
        Err(error)
            if config.namespaces == Namespaces::Auto
                && !matches!(error, NamespaceError::Unfinished { .. }) =>
        {
            Ok(Entered::Failed(error))
        }
        made => made,
    }
}

fn make(config: &ExecutorConfig, socket: Option<&Path>) -> Result<Entered, NamespaceError> {
    match config.namespaces {
        Namespaces::Never => return Ok(Entered::No("namespaces = \"never\"")),
        Namespaces::Always => {}
        Namespaces::Auto => {
            if !nix::unistd::geteuid().is_root() {
                return Ok(Entered::No("not root"));
            }
            if std::env::var_os("INVOCATION_ID").is_some()
                || std::env::var_os("JOURNAL_STREAM").is_some()
            {
                return Ok(Entered::No(
                    "started by systemd: the unit's namespaces apply",
                ));
            }
        }
    }
    let mut writable = vec![plain(&config.state_dir)?, plain(&config.workspace_root)?];
    if let Some(parent) = socket.and_then(Path::parent) {
        writable.push(plain(parent)?);
    }
    let readable = views::readable_paths(config);
    for dir in &writable {
        std::fs::create_dir_all(dir).map_err(step(format!("create {}", dir.display())))?;
    }
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWNET)
        .map_err(step("unshare the mount and network namespaces"))?;
    build_view(config, &writable, &readable, &systemd_sockets())?;
    Ok(Entered::Yes { writable })
}

/// The sockets the executor talks to systemd through, when it has them (`always` under
/// systemd): kept in the view one by one, so that readiness and the journal still work.
fn systemd_sockets() -> Vec<PathBuf> {
    let mut sockets = Vec::new();
    if let Some(notify) = std::env::var_os("NOTIFY_SOCKET").map(PathBuf::from)
        && notify.is_absolute()
    {
        sockets.push(notify);
    }
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        sockets.push(PathBuf::from("/run/systemd/journal/socket"));
    }
    sockets.retain(|socket| socket.exists());
    sockets
}

/// `path`, checked: absolute, and no component a symbolic link (the view is built from
/// the real paths; a configured path must still lead there inside it).
fn plain(path: &Path) -> Result<PathBuf, NamespaceError> {
    if !path.is_absolute()
        || path
            .components()
            .any(|part| matches!(part, Component::ParentDir | Component::CurDir))
    {
        return Err(NamespaceError::Path(path.to_path_buf()));
    }
    let mut walked = PathBuf::from("/");
    for part in path.components().skip(1) {
        walked.push(part);
        if walked
            .symlink_metadata()
            .is_ok_and(|meta| meta.is_symlink())
        {
            return Err(NamespaceError::Path(path.to_path_buf()));
        }
    }
    Ok(path.to_path_buf())
}

/// The error of a failed `what` (an `io::Error` or a `nix` errno).
fn step<E: Into<io::Error>>(what: impl Into<String>) -> impl FnOnce(E) -> NamespaceError {
    move |source| NamespaceError::Step {
        step: what.into(),
        source: source.into(),
    }
}

/// The same after the pivot: the view is half made.
fn unfinished<E: Into<io::Error>>(what: &str) -> impl FnOnce(E) -> NamespaceError {
    move |source| NamespaceError::Unfinished {
        step: what.to_owned(),
        source: source.into(),
    }
}

/// In the new mount namespace: a tmpfs root with the view's mounts, pivoted into.
fn build_view(
    config: &ExecutorConfig,
    writable: &[PathBuf],
    readable: &[PathBuf],
    sockets: &[PathBuf],
) -> Result<(), NamespaceError> {
    // Nothing done here reaches the host's mounts.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(step("make every mount private"))?;
    let root = config.state_dir.join(BUILD_DIR);
    std::fs::create_dir_all(&root).map_err(step(format!("create {}", root.display())))?;
    mount(
        Some("tmpfs"),
        &root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=1m"),
    )
    .map_err(step(format!("mount a tmpfs on {}", root.display())))?;

    let mut recursive = views::place_system(&root, |source| bind(&root, source, true, true))?;
    for kernel in KERNEL {
        bind(&root, Path::new(kernel), false, true)?;
        recursive.push(PathBuf::from(kernel));
    }
    views::proc(&root)?;
    recursive.push(PathBuf::from("/proc"));
    // Read-only extras outside what is there already (a Python outside /usr, say).
    for path in readable {
        let Ok(real) = path.canonicalize() else {
            continue;
        };
        if !recursive.iter().any(|covered| real.starts_with(covered)) {
            bind(&root, &real, true, true)?;
            recursive.push(real);
        }
    }
    // Parents first (paths order component by component), so that a directory inside
    // another is bound onto the first's.
    let mut own: Vec<&PathBuf> = writable.iter().collect();
    own.sort();
    own.dedup();
    for path in own {
        bind(&root, path, false, false)?;
    }
    for socket in sockets {
        bind(&root, socket, false, false)?;
    }
    // The workspaces' views, from the host's directories (still reachable here). Without
    // them jobs run in this root, and /health says the layer is inactive.
    if let Err(error) = views::build_configured(config, &inside(&root, &config.views_dir)) {
        tracing::warn!(
            error = nox_protocol::error_chain(&error),
            "could not make the workspaces' views: jobs share the system files"
        );
    }

    let old = root.join(".old");
    std::fs::create_dir(&old).map_err(step("create the old root's mount point"))?;
    nix::unistd::pivot_root(&root, &old).map_err(step("pivot into the view"))?;
    std::env::set_current_dir("/").map_err(unfinished("enter the view"))?;
    umount2("/.old", MntFlags::MNT_DETACH).map_err(unfinished("detach the old root"))?;
    std::fs::remove_dir("/.old").map_err(unfinished("remove the old root's mount point"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(unfinished("make the view's root read-only"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_path_is_absolute_without_dots_or_symbolic_links() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("state");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert_eq!(plain(&real).unwrap(), real);
        // Not there yet is fine (created before the view is built).
        assert!(plain(&real.join("workspaces")).is_ok());
        for refused in [
            link.join("workspaces"),
            link.clone(),
            PathBuf::from("state"),
            dir.path().join("state/../state"),
        ] {
            assert!(
                matches!(plain(&refused), Err(NamespaceError::Path(_))),
                "{}",
                refused.display()
            );
        }
    }

    #[test]
    fn auto_goes_on_after_a_failure_before_the_pivot_and_always_stops() {
        // A state directory through a symbolic link is refused before anything is
        // unshared, so this test process is left as it was.
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        let mut config = ExecutorConfig {
            state_dir: link.join("state"),
            workspace_root: link.join("state/workspaces"),
            namespaces: Namespaces::Always,
            ..ExecutorConfig::default()
        };
        assert!(matches!(enter(&config, None), Err(NamespaceError::Path(_))));
        config.namespaces = Namespaces::Auto;
        match enter(&config, None) {
            Ok(Entered::Failed(NamespaceError::Path(_))) => {}
            // Not root, or under systemd: auto does not even try.
            Ok(Entered::No(_))
                if !nix::unistd::geteuid().is_root()
                    || std::env::var_os("INVOCATION_ID").is_some()
                    || std::env::var_os("JOURNAL_STREAM").is_some() => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn never_leaves_the_executor_in_the_hosts_namespaces() {
        let config = ExecutorConfig {
            namespaces: Namespaces::Never,
            ..ExecutorConfig::default()
        };
        assert!(matches!(enter(&config, None), Ok(Entered::No(_))));
    }
}
