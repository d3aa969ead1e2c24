//! Configuration errors stop a daemon at start, with a message naming the key.

use std::fs;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use nox_e2e::{free_port, socket_activate};

/// Runs `name` under systemd-socket-activate with `--config <toml>` and `env`, and waits
/// up to 10 s for it to exit. Panics if it is still running then (it is killed first).
fn run_with_config(name: &str, toml: &str, env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = dir.path().join("nox.toml");
    fs::write(&config, toml).expect("write nox.toml");
    let (listen, fdname) = if name == "nox-frontend" {
        (format!("127.0.0.1:{}", free_port()), "http")
    } else {
        (
            dir.path().join("executor.sock").display().to_string(),
            "jobs",
        )
    };
    let path = |name: &str| dir.path().join(name).display().to_string();
    let mut vars = vec![
        ("NOX_SANDBOX".to_owned(), path("workspaces")),
        ("NOX_EXECUTOR__STATE_DIR".to_owned(), path("state")),
        ("NOX_EXECUTOR_SOCKET".to_owned(), path("executor.sock")),
        (
            "NOX_API_TOKEN".to_owned(),
            "config-test-token-0123456789".to_owned(),
        ),
    ];
    vars.extend(
        env.iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned())),
    );
    let args = vec!["--config".to_owned(), config.display().to_string()];
    let mut child = socket_activate(name, &listen, fdname, &args, &vars)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run systemd-socket-activate");
    // systemd-socket-activate execs the daemon on the first connection, as systemd would.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut poked = false;
    while child.try_wait().expect("try_wait").is_none() {
        if !poked {
            poked = if name == "nox-frontend" {
                TcpStream::connect(&listen).is_ok()
            } else {
                UnixStream::connect(&listen).is_ok()
            };
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("collect output");
            panic!(
                "{name} kept running with a bad configuration:\n{toml}\nstderr: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("collect output")
}

fn assert_refused_naming(name: &str, toml: &str, env: &[(&str, &str)], key: &str) {
    let output = run_with_config(name, toml, env);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success(),
        "{name} exited 0 with a bad configuration ({toml:?} {env:?})"
    );
    assert!(
        stderr.contains(key) || stdout.contains(key),
        "{name}'s error does not name `{key}`:\nstderr: {stderr}\nstdout: {stdout}"
    );
}

#[test]
fn the_frontend_refuses_an_unknown_key_in_its_config_file_and_names_it() {
    assert_refused_naming(
        "nox-frontend",
        "[frontend]\nbind_adress = \"127.0.0.1\"\n",
        &[],
        "bind_adress",
    );
}

#[test]
fn the_frontend_refuses_an_unknown_section_and_names_it() {
    assert_refused_naming(
        "nox-frontend",
        "[frontend]\n[frontent]\nport = 1\n",
        &[],
        "frontent",
    );
}

#[test]
fn the_frontend_refuses_an_unknown_environment_key_and_names_it() {
    assert_refused_naming(
        "nox-frontend",
        "[frontend]\n",
        &[("NOX_FRONTEND__MAX_BODDY_BYTES", "1")],
        "max_boddy_bytes",
    );
}

#[test]
fn the_frontend_refuses_a_value_of_the_wrong_type_and_names_its_key() {
    assert_refused_naming(
        "nox-frontend",
        "[frontend]\nmax_connections = \"many\"\n",
        &[],
        "max_connections",
    );
}

#[test]
fn the_executor_refuses_an_unknown_key_in_its_config_file_and_names_it() {
    assert_refused_naming(
        "nox-executor",
        "[executor.limits]\noutput_kilobytes = 3\n",
        &[],
        "output_kilobytes",
    );
}

#[test]
fn the_executor_refuses_an_invalid_value_and_names_its_key() {
    assert_refused_naming(
        "nox-executor",
        "[executor.limits]\ntimeout_s = 0\n",
        &[],
        "timeout_s",
    );
    assert_refused_naming(
        "nox-executor",
        "[executor]\nrequired_layers = [\"seccmop\"]\n",
        &[],
        "seccmop",
    );
    assert_refused_naming(
        "nox-executor",
        "[executor]\nnamespaces = \"sometimes\"\n",
        &[],
        "sometimes",
    );
}

/// The `Cpus_allowed_list` of each thread of `pid` named `name`.
fn threads_named(pid: i32, name: &str) -> Vec<String> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .expect("list the frontend's threads")
        .filter_map(Result::ok)
        .filter(|task| {
            fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim() == name)
        })
        .filter_map(|task| fs::read_to_string(task.path().join("status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
                .map(|cpus| cpus.trim().to_owned())
        })
        .collect()
}

#[test]
fn the_frontend_serves_on_a_worker_per_cpu_each_kept_on_its_own_or_as_many_as_configured() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    let default = nox_e2e::Nox::start_default();
    let pid = default.frontend_pid().expect("the frontend runs");
    let mut workers = threads_named(pid, "tokio-rt-worker");
    assert_eq!(workers.len(), cpus, "{workers:?}");
    if cpus > 1 {
        // Each on one CPU (pinned at its first park: the instance has answered since).
        workers.sort();
        workers.dedup();
        assert_eq!(workers.len(), cpus, "{workers:?}");
        assert!(
            workers.iter().all(|cpu| cpu.parse::<usize>().is_ok()),
            "{workers:?}"
        );
    }
    let configured = nox_e2e::Nox::builder()
        .frontend_toml("worker_threads = 3")
        .start();
    let pid = configured.frontend_pid().expect("the frontend runs");
    assert_eq!(threads_named(pid, "tokio-rt-worker").len(), 3);
    assert_eq!(configured.run_sh("echo hi")["stdout"], "hi\n");
}
