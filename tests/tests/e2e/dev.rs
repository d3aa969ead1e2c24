//! Development mode, `nox-frontend dev`: what the README's first command (`./dev.sh`) runs.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use nox_e2e::{Client, binary, children_of, free_port};

/// A running `nox-frontend dev`: stopped (SIGTERM, then SIGKILL) when dropped, its log
/// printed if the test failed.
struct Dev {
    child: Child,
    log: PathBuf,
}

impl Dev {
    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    /// SIGTERM; the exit status within `within`, `None` if it has not exited by then.
    fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.child.try_wait().unwrap() {
            return Some(status);
        }
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if self.terminate(Duration::from_secs(15)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "nox-frontend dev's log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// `nox-frontend dev` with its state under `state_home`, on `port`; with its banner's URL
/// and token once printed.
fn start_dev(state_home: &Path, port: u16) -> (Dev, String, String) {
    let log = state_home.join(format!("dev-{port}.log"));
    let child = Command::new(binary("nox-frontend"))
        .arg("dev")
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", state_home)
        .env("XDG_STATE_HOME", state_home)
        .env("NOX_PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut dev = Dev { child, log };
    let stdout = dev.child.stdout.take().unwrap();
    let (lines, banner) = mpsc::channel();
    // Read to the end, whoever still listens: closing the pipe early would make the
    // frontend's next write to stdout fail.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let (mut url, mut token) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    while token.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = banner
            .recv_timeout(left)
            .expect("nox-frontend dev prints its banner");
        let line = line.trim();
        if let Some(value) = line.strip_prefix("URL:") {
            url = Some(value.trim().to_owned());
        }
        if let Some(value) = line.strip_prefix("token:") {
            token = Some(value.trim().to_owned());
        }
    }
    let url = url.expect("the banner has a URL");
    (dev, url, token.unwrap_or_default())
}

/// The `nox-executor` child of `frontend`, waiting up to `within` for one to run.
fn executor_of(frontend: i32, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        let found = children_of(frontend).into_iter().find(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe.file_name().is_some_and(|name| name == "nox-executor"))
        });
        if found.is_some() || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `Cpus_allowed_list` of a process (`self` or a pid).
fn cpus_allowed(pid: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn development_mode_runs_both_daemons_with_a_printed_token_restarts_a_dead_executor_and_stops_cleanly()
 {
    let state_home = tempfile::tempdir().unwrap();
    // As root, jobs run as the workspace's own uid, which must pass through to it.
    std::fs::set_permissions(state_home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_port();
    let (mut frontend, url, token) = start_dev(state_home.path(), port);
    let frontend_pid = frontend.pid();
    assert_eq!(url, format!("http://127.0.0.1:{port}"));
    let state = state_home.path().join("nox");
    assert_eq!(
        std::fs::read_to_string(state.join("dev-token"))
            .unwrap()
            .trim(),
        token,
        "the printed token is the one kept for the next run"
    );

    // The banner's curl line, and a Python job, with the printed token; none without it.
    let client = Client::at(port, Some(&token));
    let health = client.health().expect_json(200);
    assert_eq!(health["executor"]["reachable"], true, "{health}");
    assert_eq!(
        client.run_sh("echo hello from nox")["stdout"],
        "hello from nox\n"
    );
    assert_eq!(client.run_py("print(6 * 7)")["stdout"], "42\n");
    Client::at(port, None)
        .post_json("/run_sh", &serde_json::json!({"cmd": "true"}))
        .expect_error(401, "unauthorized");
    assert!(
        state.join("workspaces/default").is_dir(),
        "the workspace the banner names"
    );

    // The executor was started with every CPU the frontend may use (not the one CPU of
    // the runtime worker that started it).
    let executor = executor_of(frontend_pid, Duration::from_secs(5)).expect("an executor runs");
    assert_eq!(cpus_allowed(&executor.to_string()), cpus_allowed("self"));

    // Killed, it is started again on the same socket: meanwhile a job gets the uniform 503
    // (after `executor_connect_timeout_ms`), then runs again.
    kill(Pid::from_raw(executor), Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let job = serde_json::json!({"cmd": "echo again"});
    loop {
        let reply = client.post_json("/run_sh", &job);
        if reply.status == 200 {
            assert_eq!(reply.json()["stdout"], "again\n");
            break;
        }
        reply.expect_error(503, "executor_unavailable");
        assert!(Instant::now() < deadline, "the executor was not restarted");
        std::thread::sleep(Duration::from_millis(100));
    }
    let replacement = executor_of(frontend_pid, Duration::from_secs(5)).expect("restarted");
    assert_ne!(replacement, executor);

    // SIGTERM stops both and removes the socket; a second run keeps the token.
    let status = frontend.terminate(Duration::from_secs(15));
    assert!(status.is_some_and(|status| status.success()), "{status:?}");
    assert!(
        !Path::new(&format!("/proc/{replacement}")).exists(),
        "the executor outlived the frontend"
    );
    assert!(!state.join("executor.sock").exists());

    // Stopped as soon as it says it runs: the signal is watched by then, and the executor
    // goes with it.
    let (mut again, _, second_token) = start_dev(state_home.path(), free_port());
    assert_eq!(second_token, token);
    let executor = executor_of(again.pid(), Duration::from_secs(5));
    let status = again.terminate(Duration::from_secs(15));
    assert!(status.is_some_and(|status| status.success()), "{status:?}");
    if let Some(executor) = executor {
        assert!(
            !Path::new(&format!("/proc/{executor}")).exists(),
            "the executor outlived the frontend"
        );
    }
}
