//! `nox-frontend dev`: the one command that runs nox for development, without systemd.
//!
//! It keeps its state in `$XDG_STATE_HOME/nox` (or `~/.local/state/nox`, mode 0700; as root
//! without `XDG_STATE_HOME`, `/var/lib/nox-dev`, which the sandbox user can traverse): a
//! generated token (`dev-token`, 0600, reused across runs), the executor socket and the
//! workspaces. It binds the executor socket itself and hands it to `nox-executor` (found next
//! to this binary) the way systemd would — as fd 3 with `LISTEN_PID`/`LISTEN_FDS`/
//! `LISTEN_FDNAMES=jobs` — through `/bin/sh`, whose `exec` keeps the pid `LISTEN_PID` names.
//! The socket reaches the shell as its standard input and the shell moves it to fd 3: no
//! descriptor number above 9 (which dash cannot redirect) and no unsafe code are involved.
//! If the executor exits it is restarted after a second on the same socket: connections made
//! meanwhile wait in the socket's backlog, and their requests get 503 `executor_unavailable`
//! once `executor_connect_timeout_ms` has passed (as under systemd, `RestartSec=1s`).
//! `/etc/nox/nox.toml` is not read; `NOX_*` variables still apply (`NOX_PORT`,
//! `NOX_BIND_ADDR`, `NOX_LOG`, ...).

use std::ffi::OsString;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nox_protocol::config::{ConfigError, ConfigFile, load};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::config::FrontendConfig;
use crate::{FrontendError, random};

/// How long the executor may take to stop before it is killed.
const EXECUTOR_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why development mode could not run.
#[derive(Debug, Error)]
pub enum DevError {
    #[error("neither XDG_STATE_HOME nor HOME is set to an absolute path")]
    NoStateHome,
    #[error("cannot prepare the state directory {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read or create the development token {path}")]
    Token {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot find the path of this program")]
    CurrentExe(#[source] io::Error),
    #[error("nox-executor not found at {path}: build it with cargo build --release")]
    ExecutorMissing { path: PathBuf },
    #[error("another nox dev seems to be running: {path} accepts connections")]
    AlreadyRunning { path: PathBuf },
    #[error("cannot bind the executor socket {path}")]
    ExecutorSocket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid configuration")]
    Config(#[source] ConfigError),
    #[error("cannot listen on {address}")]
    Bind {
        address: String,
        #[source]
        source: io::Error,
    },
    #[error("the frontend failed")]
    Frontend(#[source] FrontendError),
}

/// The development state directory when run as root without `XDG_STATE_HOME`.
const ROOT_STATE_DIR: &str = "/var/lib/nox-dev";

/// `$XDG_STATE_HOME/nox`, else `$HOME/.local/state/nox` (relative values are ignored, as
/// the XDG specification asks).
pub fn state_dir_from(xdg_state_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let absolute =
        |value: Option<OsString>| value.map(PathBuf::from).filter(|path| path.is_absolute());
    absolute(xdg_state_home)
        .map(|base| base.join("nox"))
        .or_else(|| absolute(home).map(|home| home.join(".local/state/nox")))
}

/// Create the state directory: 0700, or 0711 as root, where the executor runs jobs as the
/// sandbox user, who must be able to pass through to the workspaces (not list them).
fn prepare_state_dir(path: &Path, as_root: bool) -> Result<(), DevError> {
    let failed = |source| DevError::StateDir {
        path: path.to_owned(),
        source,
    };
    let mode = if as_root { 0o711 } else { 0o700 };
    std::fs::create_dir_all(path).map_err(failed)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(failed)?;
    std::fs::create_dir_all(path.join("workspaces")).map_err(failed)
}

/// The token in `path`, or a new one (32 random bytes, hex) written there with mode 0600.
pub fn load_or_create_token(path: &Path) -> Result<String, DevError> {
    let failed = |source| DevError::Token {
        path: path.to_owned(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
        Ok(_) => std::fs::remove_file(path).map_err(failed)?,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(failed(error)),
    }
    let token = random::hex(&random::random_bytes::<32>().map_err(failed)?);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(failed)?;
    writeln!(file, "{token}").map_err(failed)?;
    Ok(token)
}

/// Bind the executor's socket (0660), replacing a stale one.
fn bind_executor_socket(path: &Path) -> Result<UnixListener, DevError> {
    let failed = |source| DevError::ExecutorSocket {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(DevError::AlreadyRunning {
                    path: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(failed)?;
        }
        Ok(_) => {
            return Err(failed(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            )));
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(failed(error)),
    }
    let listener = UnixListener::bind(path).map_err(failed)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(failed)?;
    Ok(listener)
}

/// The `/bin/sh -c` script that moves the socket from its standard input to fd 3 and execs
/// the executor (`$0`) with the socket-activation variables; `exec` keeps the shell's pid,
/// `$$`, so `LISTEN_PID` names the executor.
pub const LAUNCH_SCRIPT: &str =
    "export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=jobs; exec \"$0\" \"$@\" 3<&0 0</dev/null";

/// `/bin/sh` running [`LAUNCH_SCRIPT`] for `program`, with `socket` as its standard input.
fn launch_command(program: &Path, socket: &UnixListener) -> io::Result<tokio::process::Command> {
    let socket = OwnedFd::from(socket.try_clone()?);
    let mut command = tokio::process::Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(LAUNCH_SCRIPT)
        .arg(program)
        .stdin(Stdio::from(socket));
    Ok(command)
}

/// What the executor is started with.
#[derive(Debug)]
struct ExecutorLaunch {
    program: PathBuf,
    socket: UnixListener,
    state_dir: PathBuf,
    socket_path: PathBuf,
}

impl ExecutorLaunch {
    fn spawn(&self) -> io::Result<tokio::process::Child> {
        launch_command(&self.program, &self.socket)?
            .env("NOX_SANDBOX", self.state_dir.join("workspaces"))
            .env("NOX_EXECUTOR__STATE_DIR", &self.state_dir)
            .env("NOX_EXECUTOR__SOCKET", &self.socket_path)
            // The executor never sees tokens, and its socket comes from LISTEN_FDS.
            .env_remove("NOX_API_TOKEN")
            .env_remove("NOX_EXECUTOR_SOCKET")
            .env_remove("CREDENTIALS_DIRECTORY")
            .kill_on_drop(true)
            .spawn()
    }
}

/// Keep the executor running until `stop`, then stop it.
async fn supervise(launch: ExecutorLaunch, stop: CancellationToken) {
    let launch = std::sync::Arc::new(launch);
    loop {
        // From a blocking thread, which has every CPU: a runtime worker is kept on one
        // (see `crate::cpus`), and the executor would inherit it.
        let spawned = {
            let launch = std::sync::Arc::clone(&launch);
            tokio::task::spawn_blocking(move || launch.spawn())
                .await
                .unwrap_or_else(|error| Err(io::Error::other(error)))
        };
        match spawned {
            Ok(mut child) => {
                tracing::info!(pid = child.id(), "nox-executor started");
                tokio::select! {
                    status = child.wait() => match status {
                        Ok(status) => tracing::warn!(%status, "nox-executor exited; restarting it in 1 s"),
                        Err(error) => tracing::warn!(%error, "cannot wait for nox-executor; restarting it in 1 s"),
                    },
                    () = stop.cancelled() => {
                        terminate(&mut child).await;
                        return;
                    }
                }
            }
            Err(error) => tracing::error!(%error, "cannot start nox-executor; retrying in 1 s"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// SIGTERM, then SIGKILL if it has not exited in time.
async fn terminate(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    match tokio::time::timeout(EXECUTOR_STOP_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) => tracing::info!(%status, "nox-executor stopped"),
        _ => {
            tracing::warn!("nox-executor did not stop in time; killing it");
            let _ = child.kill().await;
        }
    }
}

/// The frontend's settings in development mode: built-in defaults and `NOX_*` variables
/// (no configuration file).
pub fn load_config() -> Result<FrontendConfig, DevError> {
    load("frontend", &ConfigFile::None, FrontendConfig::default()).map_err(DevError::Config)
}

/// Run nox for development until Ctrl-C or SIGTERM: `config` (development mode reads it
/// from the environment only, see [`load_config`]) with the development token.
pub async fn run(mut config: FrontendConfig) -> Result<(), DevError> {
    let as_root = nix::unistd::geteuid().is_root();
    // As root the jobs run as the sandbox user, who cannot pass through /root (0700):
    // keep the state where that user can reach it, unless told otherwise.
    let state_dir = match std::env::var_os("XDG_STATE_HOME") {
        None if as_root => PathBuf::from(ROOT_STATE_DIR),
        xdg => state_dir_from(xdg, std::env::var_os("HOME")).ok_or(DevError::NoStateHome)?,
    };
    let program = std::env::current_exe()
        .map_err(DevError::CurrentExe)?
        .with_file_name("nox-executor");
    if !program.is_file() {
        return Err(DevError::ExecutorMissing { path: program });
    }
    prepare_state_dir(&state_dir, as_root)?;
    if as_root {
        tracing::warn!(
            state_dir = %state_dir.display(),
            "running as root: jobs run as the sandbox user, which must be able to reach the \
             state directory (every parent searchable); set XDG_STATE_HOME if it cannot"
        );
    }
    let token = load_or_create_token(&state_dir.join("dev-token"))?;
    let socket_path = state_dir.join("executor.sock");

    config.api_token = Some(token.clone());
    config.token_files.clear();
    config.read_credentials_directory = false;
    config.executor_socket = socket_path.clone();
    config.state_dir = state_dir.clone();
    config.validate().map_err(DevError::Config)?;

    let address = format!("{}:{}", config.bind_addr, config.port);
    let listener = tokio::net::TcpListener::bind((config.bind_addr.as_str(), config.port))
        .await
        .map_err(|source| DevError::Bind {
            address: address.clone(),
            source,
        })?;
    let executor_socket = bind_executor_socket(&socket_path)?;
    let launch = ExecutorLaunch {
        program,
        socket: executor_socket,
        state_dir: state_dir.clone(),
        socket_path: socket_path.clone(),
    };
    let stop = CancellationToken::new();
    let supervisor = tokio::spawn(supervise(launch, stop.clone()));

    let url = match listener.local_addr() {
        Ok(local) if local.ip().is_unspecified() => format!("http://127.0.0.1:{}", local.port()),
        Ok(local) => format!("http://{local}"),
        Err(_) => format!("http://{address}"),
    };
    // Watched before the banner invites anyone to stop it.
    let signalled = crate::shutdown_signal();
    print_banner(&url, &token, &state_dir.join("workspaces").join("default"));

    // No supervisor restarts this process: `POST /actions/restart` restarts in-process.
    let served = crate::run_with(listener, config, signalled, crate::RestartMode::InProcess).await;
    stop.cancel();
    let _ = supervisor.await;
    let _ = std::fs::remove_file(&socket_path);
    served.map_err(DevError::Frontend)
}

/// The banner on standard output. A stdout that is closed or gone (`./dev.sh | head`) is
/// no reason to stop: write errors are ignored (`println!` would panic, and so abort).
fn print_banner(url: &str, token: &str, workspace: &Path) {
    let mut out = io::stdout().lock();
    let _ = writeln!(
        out,
        "\nnox is running (development mode)\n\n\
         \x20 URL:        {url}\n\
         \x20 token:      {token}\n\
         \x20 workspace:  {workspace}\n\n\
         Try it:\n\n\
         \x20 TOKEN={token}\n\
         \x20 curl -s -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' \
         -d '{{\"cmd\":\"echo hello from nox\"}}' {url}/run_sh\n\n\
         Stop with Ctrl-C.\n",
        workspace = workspace.display()
    );
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_dir_follows_xdg_then_home() {
        assert_eq!(
            state_dir_from(Some("/x/state".into()), Some("/home/u".into())),
            Some(PathBuf::from("/x/state/nox"))
        );
        assert_eq!(
            state_dir_from(Some("relative".into()), Some("/home/u".into())),
            Some(PathBuf::from("/home/u/.local/state/nox"))
        );
        assert_eq!(state_dir_from(None, None), None);
    }

    #[test]
    fn the_token_is_created_once_with_mode_0600_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev-token");
        let token = load_or_create_token(&path).unwrap();
        assert_eq!(token.len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create_token(&path).unwrap(), token);
    }

    #[tokio::test]
    async fn the_launched_program_sees_the_socket_at_fd_3_and_its_own_pid() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let listener = bind_executor_socket(&socket).unwrap();
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        // A stand-in executor: prints its variables and whether fd 3 is a socket.
        let script = r#"echo "$LISTEN_PID $$ $LISTEN_FDS $LISTEN_FDNAMES"; test -S /proc/self/fd/3 && echo socket"#;
        let output = launch_command(Path::new("/bin/sh"), &listener)
            .unwrap()
            .arg("-c")
            .arg(script)
            .output()
            .await
            .unwrap();
        let text = String::from_utf8(output.stdout).unwrap();
        let mut lines = text.lines();
        let fields: Vec<&str> = lines.next().unwrap().split(' ').collect();
        assert_eq!(
            fields[0], fields[1],
            "LISTEN_PID must be the executor's pid: {text}"
        );
        assert_eq!(&fields[2..], ["1", "jobs"]);
        assert_eq!(lines.next(), Some("socket"), "{text}");
        // A second bind while the first is alive is refused.
        assert!(matches!(
            bind_executor_socket(&socket),
            Err(DevError::AlreadyRunning { .. })
        ));
        drop(listener);
        assert!(
            bind_executor_socket(&socket).is_ok(),
            "a stale socket is replaced"
        );
    }
}
