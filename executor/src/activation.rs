//! The listening socket: adopted from systemd (`FileDescriptorName=jobs`), or bound by the
//! executor itself outside systemd (development, tests).
//!
//! Called from `main` before the tokio runtime exists (it reads the environment and may
//! change the umask, both process-wide). A socket the executor binds itself gets what the
//! `.socket` unit would give it: mode 0660, group `socket_group` when running as root.

use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::sys::socket::{SockType, SockaddrLike, SockaddrStorage, getsockname, getsockopt, sockopt};
use nix::sys::stat::Mode;
use thiserror::Error;

use crate::config::ExecutorConfig;

/// The name the `.socket` unit gives the executor's socket (`FileDescriptorName=jobs`).
pub const SOCKET_NAME: &str = "jobs";

/// The listening socket could not be adopted or bound.
#[derive(Debug, Error)]
pub enum ActivationError {
    #[error("could not read the sockets passed by systemd (LISTEN_FDS)")]
    ListenFds(#[source] io::Error),
    #[error("systemd passed sockets named {names:?} but none named `{SOCKET_NAME}`")]
    NoJobsSocket { names: Vec<String> },
    #[error("the inherited socket `{SOCKET_NAME}` was already adopted")]
    AlreadyAdopted,
    #[error("could not inspect inherited descriptor {fd}")]
    Inspect {
        fd: RawFd,
        #[source]
        source: Errno,
    },
    #[error("inherited descriptor {fd} is not a listening Unix stream socket")]
    NotAListener { fd: RawFd },
    #[error("could not create the socket directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} exists and is not a socket")]
    NotASocket { path: PathBuf },
    #[error("another process is already serving on {path}")]
    InUse { path: PathBuf },
    #[error("could not remove the stale socket {path}")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not bind {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not set the mode of {path}")]
    Chmod {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not give {path} to group `{group}`")]
    Chown {
        path: PathBuf,
        group: String,
        #[source]
        source: io::Error,
    },
    #[error("could not make the listening socket non-blocking")]
    NonBlocking(#[source] io::Error),
}

/// Where the listener came from, for the startup log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerOrigin {
    /// Passed by systemd (socket activation) as this descriptor.
    Inherited { fd: RawFd },
    /// Bound by the executor at this path.
    Bound { path: PathBuf },
}

/// The listener to serve: the inherited `jobs` socket, or `config.socket` bound here.
/// Always non-blocking, ready for `tokio::net::UnixListener::from_std`.
pub fn take_listener(config: &ExecutorConfig) -> Result<UnixListener, ActivationError> {
    take_listener_with_origin(config).map(|(listener, _)| listener)
}

/// [`take_listener`], also saying where the listener came from.
pub fn take_listener_with_origin(
    config: &ExecutorConfig,
) -> Result<(UnixListener, ListenerOrigin), ActivationError> {
    let passed: Vec<(RawFd, String)> = sd_notify::listen_fds_with_names()
        .map_err(ActivationError::ListenFds)?
        .collect();
    let (listener, origin) = if passed.is_empty() {
        let listener = bind(config)?;
        let origin = ListenerOrigin::Bound {
            path: config.socket.clone(),
        };
        (listener, origin)
    } else {
        let Some(&(fd, _)) = passed.iter().find(|(_, name)| name == SOCKET_NAME) else {
            // Binding a path of our own here would compete with the socket systemd holds.
            return Err(ActivationError::NoJobsSocket {
                names: passed.into_iter().map(|(_, name)| name).collect(),
            });
        };
        (adopt(fd)?, ListenerOrigin::Inherited { fd })
    };
    listener
        .set_nonblocking(true)
        .map_err(ActivationError::NonBlocking)?;
    Ok((listener, origin))
}

/// Take ownership of inherited descriptor `fd`, after checking it is what we expect.
fn adopt(fd: RawFd) -> Result<UnixListener, ActivationError> {
    static ADOPTED: AtomicBool = AtomicBool::new(false);
    if ADOPTED.swap(true, Ordering::SeqCst) {
        return Err(ActivationError::AlreadyAdopted);
    }
    let owned = own_inherited(fd);
    let inspect = |source: Errno| ActivationError::Inspect { fd, source };
    let stream = getsockopt(&owned.as_fd(), sockopt::SockType).map_err(inspect)?;
    let listening = getsockopt(&owned.as_fd(), sockopt::AcceptConn).map_err(inspect)?;
    let address: SockaddrStorage =
        getsockname(std::os::fd::AsRawFd::as_raw_fd(&owned)).map_err(inspect)?;
    let unix = address.family() == Some(nix::sys::socket::AddressFamily::Unix);
    if stream != SockType::Stream || !listening || !unix {
        return Err(ActivationError::NotAListener { fd });
    }
    Ok(UnixListener::from(owned))
}

/// Ownership of an inherited descriptor, taken once.
#[allow(unsafe_code)]
fn own_inherited(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` comes from `sd_notify::listen_fds_with_names`, which checked that
    // LISTEN_PID is our pid, so it is one of the descriptors systemd passed to this process
    // (open, starting at 3). Nothing else in the process owns it, and `adopt`'s ADOPTED
    // flag makes this the only place that takes ownership of it, exactly once.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Bind `config.socket` ourselves: parent directory, stale socket, mode 0660, group.
fn bind(config: &ExecutorConfig) -> Result<UnixListener, ActivationError> {
    let path = config.socket.as_path();
    let owned = || path.to_path_buf();
    if let Some(parent) = path.parent().filter(|parent| !parent.exists()) {
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o755)
            .create(parent)
            .map_err(|source| ActivationError::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
    }
    remove_stale(path)?;
    // Created 0660 from the start (sockets are created 0777 & ~umask): there is no moment
    // when others could connect. The umask is process-wide; no other thread exists yet.
    let previous = nix::sys::stat::umask(Mode::from_bits_truncate(0o117));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(previous);
    let listener = bound.map_err(|source| ActivationError::Bind {
        path: owned(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(|source| {
        ActivationError::Chmod {
            path: owned(),
            source,
        }
    })?;
    if nix::unistd::geteuid().is_root() {
        give_to_group(path, &config.socket_group)?;
    }
    Ok(listener)
}

/// Remove a socket file left by a previous run; refuse anything else, or a live socket.
fn remove_stale(path: &Path) -> Result<(), ActivationError> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ActivationError::RemoveStale {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if !metadata.file_type().is_socket() {
        return Err(ActivationError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    if UnixStream::connect(path).is_ok() {
        return Err(ActivationError::InUse {
            path: path.to_path_buf(),
        });
    }
    std::fs::remove_file(path).map_err(|source| ActivationError::RemoveStale {
        path: path.to_path_buf(),
        source,
    })
}

/// `chown root:<group>` when the group exists; without it the socket stays root-only.
fn give_to_group(path: &Path, group: &str) -> Result<(), ActivationError> {
    let chown_failed = |source: io::Error| ActivationError::Chown {
        path: path.to_path_buf(),
        group: group.to_owned(),
        source,
    };
    let gid = match nix::unistd::Group::from_name(group) {
        Ok(Some(found)) => found.gid.as_raw(),
        Ok(None) => {
            tracing::warn!(
                socket = %path.display(),
                group,
                "socket group does not exist; the socket stays root:root 0660"
            );
            return Ok(());
        }
        Err(errno) => return Err(chown_failed(errno.into())),
    };
    // lchown: never follow a symlink put in the socket's place.
    std::os::unix::fs::lchown(path, Some(0), Some(gid)).map_err(chown_failed)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn config_at(path: PathBuf) -> ExecutorConfig {
        ExecutorConfig {
            socket: path,
            socket_group: "no-such-group-nox-test".into(),
            ..ExecutorConfig::default()
        }
    }

    #[test]
    fn a_bound_socket_is_0660_non_blocking_and_its_directory_is_created() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("run/nox/executor.sock");
        let listener = bind(&config_at(path.clone())).unwrap();
        let metadata = std::fs::symlink_metadata(&path).unwrap();
        assert!(metadata.file_type().is_socket());
        assert_eq!(metadata.mode() & 0o777, 0o660);
        listener.set_nonblocking(true).unwrap();
        assert!(matches!(listener.accept(), Err(e) if e.kind() == io::ErrorKind::WouldBlock));
    }

    #[test]
    fn a_stale_socket_is_replaced_but_a_live_one_or_a_file_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.sock");
        drop(UnixListener::bind(&path).unwrap());
        let live = bind(&config_at(path.clone())).unwrap();
        assert!(matches!(
            bind(&config_at(path)),
            Err(ActivationError::InUse { .. })
        ));
        drop(live);

        let file = tmp.path().join("file");
        std::fs::write(&file, b"precious").unwrap();
        assert!(matches!(
            bind(&config_at(file.clone())),
            Err(ActivationError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read(&file).unwrap(), b"precious");
    }
}
