//! noxctl against the shared instance.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nox_e2e::{Nox, unique};

use super::common::{noxctl, run, text};

#[test]
fn health_prints_the_json_and_exits_zero_when_ready() {
    let output = run(Nox::shared(), &["health"]);
    assert!(output.status.success(), "{output:?}");
    let body: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(body["status"], "ok");
}

#[test]
fn status_shows_the_layers_as_a_table() {
    let output = run(Nox::shared(), &["status"]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("LAYER"), "{stdout}");
    assert!(
        stdout.lines().any(|line| line.starts_with("seccomp ")),
        "{stdout}"
    );
}

#[test]
fn runpy_splits_the_streams_and_exits_with_the_job_status() {
    let code = "import sys\nprint('to out')\nprint('to err', file=sys.stderr)\nsys.exit(7)";
    let output = run(Nox::shared(), &["runpy", code]);
    assert_eq!(output.status.code(), Some(7), "{output:?}");
    assert_eq!(text(&output.stdout), "to out\n");
    assert_eq!(text(&output.stderr), "to err\n");
}

#[test]
fn a_timeout_exits_124_and_a_signal_128_plus_its_number() {
    let nox = Nox::shared();
    let output = run(nox, &["runsh", "--timeout", "0.5", "sleep", "5"]);
    assert_eq!(output.status.code(), Some(124), "{output:?}");
    let output = run(
        nox,
        &[
            "runpy",
            "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)",
        ],
    );
    assert_eq!(output.status.code(), Some(128 + 15), "{output:?}");
}

#[test]
fn output_is_streamed_while_the_job_runs() {
    let mut child = noxctl(Nox::shared())
        .args([
            "runpy",
            "import time\nprint('first', flush=True)\ntime.sleep(2)\nprint('second', flush=True)",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "first");
    let first_at = start.elapsed();
    assert_eq!(lines.next().unwrap().unwrap(), "second");
    let second_at = start.elapsed();
    assert!(child.wait().unwrap().success());
    assert!(
        second_at.saturating_sub(first_at) >= Duration::from_millis(1500),
        "first at {first_at:?}, second at {second_at:?}: not streamed"
    );
}

#[test]
fn stdin_is_forwarded_from_a_file_a_flag_or_noxctl_own_stdin() {
    let nox = Nox::shared();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("input.txt");
    std::fs::write(&file, "from a file\n").unwrap();
    let output = run(
        nox,
        &["runsh", "--stdin-file", file.to_str().unwrap(), "cat"],
    );
    assert_eq!(text(&output.stdout), "from a file\n", "{output:?}");
    let output = run(nox, &["runsh", "--stdin", "from a flag", "cat"]);
    assert_eq!(text(&output.stdout), "from a flag", "{output:?}");
    let mut child = noxctl(nox)
        .args([
            "runpy",
            "import sys; print(sys.stdin.read().upper())",
            "--stdin-file",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"piped").unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(text(&output.stdout), "PIPED\n", "{output:?}");
}

#[test]
fn runpy_runs_a_local_file_and_code_from_stdin() {
    let nox = Nox::shared();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.py");
    std::fs::write(&script, "print('from the file')\n").unwrap();
    let output = run(nox, &["runpy", script.to_str().unwrap()]);
    assert_eq!(text(&output.stdout), "from the file\n", "{output:?}");
    let mut child = noxctl(nox)
        .args(["runpy", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"print(2 + 2)\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(text(&output.stdout), "4\n", "{output:?}");
}

#[test]
fn json_prints_the_final_object_and_keeps_the_exit_status() {
    let output = run(Nox::shared(), &["--json", "runsh", "echo hi; exit 3"]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let reply: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(reply["stdout"], "hi\n");
    assert_eq!(reply["returncode"], 3);
}

#[test]
fn files_go_up_come_back_are_listed_and_removed() {
    let nox = Nox::shared();
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("data.bin");
    // Over 1 MiB: the progress bar's threshold (not drawn: stderr is not a terminal).
    let bytes: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&local, &bytes).unwrap();
    let folder = unique("cli");
    let output = run(
        nox,
        &["put", local.to_str().unwrap(), &format!("{folder}/")],
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        text(&output.stdout),
        format!("saved {folder}/data.bin ({} bytes)\n", bytes.len())
    );
    assert!(output.stderr.is_empty(), "no bar into a pipe: {output:?}");

    let back = dir.path().join("back.bin");
    let output = run(
        nox,
        &["get", &format!("{folder}/data.bin"), back.to_str().unwrap()],
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(std::fs::read(&back).unwrap(), bytes);
    let output = run(nox, &["get", &format!("{folder}/data.bin")]);
    assert_eq!(output.stdout, bytes);

    let output = run(nox, &["ls", &folder]);
    let listing = text(&output.stdout);
    assert!(listing.contains(&format!("{folder}/data.bin")), "{listing}");
    assert!(listing.starts_with("file "), "{listing}");

    let output = run(nox, &["rm", &format!("{folder}/data.bin")]);
    assert_eq!(text(&output.stdout), format!("deleted {folder}/data.bin\n"));
    let output = run(nox, &["get", &format!("{folder}/data.bin")]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("HTTP 404 not_found"),
        "{output:?}"
    );
}

#[test]
fn a_wrong_token_is_one_line_with_the_hint() {
    let output = noxctl(Nox::shared())
        .env("NOX_API_TOKEN", "wrong-token")
        .args(["ls"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("HTTP 401 unauthorized"), "{stderr}");
    assert!(
        stderr.contains("check the token: --token, NOX_API_TOKEN"),
        "{stderr}"
    );
    // A run command's own failure is 125, apart from any job exit status.
    let output = noxctl(Nox::shared())
        .env("NOX_API_TOKEN", "wrong-token")
        .args(["runsh", "true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(125));
}

#[test]
fn a_refused_connection_says_to_start_nox() {
    let port = nox_e2e::free_port();
    let output = noxctl(Nox::shared())
        .args(["--url", &format!("http://127.0.0.1:{port}"), "health"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("is nox running? ./dev.sh"), "{stderr}");
}

#[test]
fn the_user_config_file_supplies_url_and_token() {
    let nox = Nox::shared();
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join(".config/nox");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("noxctl.toml"),
        format!("url = \"{}\"\ntoken = \"{}\"\n", nox.url(), nox.token()),
    )
    .unwrap();
    let output = noxctl(nox)
        .env_remove("NOX_URL")
        .env_remove("NOX_API_TOKEN")
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", home.path())
        .args(["runsh", "echo configured"])
        .output()
        .unwrap();
    assert_eq!(text(&output.stdout), "configured\n", "{output:?}");
    // The environment wins over the file.
    let output = noxctl(nox)
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", home.path())
        .env("NOX_API_TOKEN", "wrong-token")
        .args(["ls"])
        .output()
        .unwrap();
    assert!(text(&output.stderr).contains("401"), "{output:?}");
}

#[test]
fn completions_and_the_man_page_come_from_the_cli_definition() {
    let nox = Nox::shared();
    for shell in ["bash", "zsh", "fish"] {
        let output = run(nox, &["completions", shell]);
        assert!(output.status.success(), "{shell}: {output:?}");
        assert!(text(&output.stdout).contains("runpy"), "{shell}");
    }
    let output = run(nox, &["man"]);
    let page = text(&output.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH noxctl"),
        "{page}"
    );
    assert!(page.contains("runsh"), "{page}");
}
