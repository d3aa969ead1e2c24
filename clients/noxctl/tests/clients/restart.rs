//! `POST /actions/restart`: under a supervisor the frontend exits 0 (systemd restarts it on
//! the socket it keeps); in `nox-frontend dev` it restarts in-process on the same listener.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use nox_e2e::{binary, free_port, random_hex};
use ureq::Agent;

fn agent() -> Agent {
    Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// Status of `method url` with the token, or `None` when nothing answers.
fn status(method: &str, url: &str, token: &str) -> Option<u16> {
    let agent = agent();
    let auth = format!("Bearer {token}");
    let result = match method {
        "POST" => agent.post(url).header("Authorization", &auth).send_empty(),
        _ => agent.get(url).header("Authorization", &auth).call(),
    };
    result.ok().map(|response| response.status().as_u16())
}

fn wait_for(what: &str, within: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ready() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops a child by its pid: SIGTERM, then SIGKILL after 10 s.
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn under_a_supervisor_the_frontend_answers_202_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nox.toml");
    fs::write(&config, "[frontend]\nshutdown_grace_s = 5\n").unwrap();
    let port = free_port();
    let token = format!("tok-{}", random_hex(16));
    let child = Command::new(binary("nox-frontend"))
        .arg("--config")
        .arg(&config)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("NOX_API_TOKEN", &token)
        .env("NOX_BIND_ADDR", "127.0.0.1")
        .env("NOX_PORT", port.to_string())
        .env("NOX_EXECUTOR_SOCKET", dir.path().join("absent.sock"))
        .env("NOX_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut frontend = Stopped(child);
    let base = format!("http://127.0.0.1:{port}");
    wait_for("the frontend answers", Duration::from_secs(10), || {
        status("GET", &format!("{base}/openapi.json"), &token) == Some(200)
    });
    assert_eq!(
        status("POST", &format!("{base}/actions/restart"), "wrong"),
        Some(401)
    );
    assert_eq!(
        status("POST", &format!("{base}/actions/restart"), &token),
        Some(202)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = frontend.0.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "the frontend did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        exit.success(),
        "exit status {exit}: systemd restarts only on 0 with Restart=always too, but 0 says it was asked"
    );
}

#[test]
fn in_dev_mode_the_server_restarts_in_process_and_answers_again() {
    let state = tempfile::tempdir().unwrap();
    // As root, jobs run as the sandbox user, who must be able to pass through.
    fs::set_permissions(state.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_port();
    let log = state.path().join("dev.log");
    let child = Command::new(binary("nox-frontend"))
        .arg("dev")
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("XDG_STATE_HOME", state.path())
        .env("HOME", state.path())
        .env("NOX_BIND_ADDR", "127.0.0.1")
        .env("NOX_PORT", port.to_string())
        .env("NOX_LOG", "info")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log).unwrap())
        .stderr(fs::File::create(state.path().join("dev.err")).unwrap())
        .spawn()
        .unwrap();
    let dev = Stopped(child);
    let base = format!("http://127.0.0.1:{port}");
    let token_file = state.path().join("nox/dev-token");
    wait_for("the dev token", Duration::from_secs(10), || {
        token_file.is_file()
    });
    let token = fs::read_to_string(&token_file).unwrap().trim().to_owned();
    wait_for("dev answers /health", Duration::from_secs(15), || {
        status("GET", &format!("{base}/health"), &token) == Some(200)
    });

    assert_eq!(
        status("POST", &format!("{base}/actions/restart"), &token),
        Some(202)
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status("GET", &format!("{base}/health"), &token), Some(200));
    assert_eq!(status("GET", &format!("{base}/files"), &token), Some(200));
    let reply = agent()
        .post(format!("{base}/run_sh"))
        .header("Authorization", &format!("Bearer {token}"))
        .header("Content-Type", "application/json")
        .send(r#"{"cmd": "echo after restart"}"#)
        .unwrap();
    let body = reply.into_body().read_to_string().unwrap();
    assert!(body.contains("after restart"), "{body}");
    let stderr = fs::read_to_string(state.path().join("dev.err")).unwrap_or_default();
    assert!(stderr.contains("restarting in process"), "{stderr}");
    drop(dev);
}
