//! The seed's checklist: health, upload then run the uploaded script, run_py, run_sh — all
//! with the token — and the reply shape existing scripts rely on.

use nox_e2e::{Nox, unique};
use serde_json::json;

const LAYERS: [&str; 9] = [
    "process_group",
    "rlimits",
    "sandbox_user",
    "no_capabilities",
    "no_new_privs",
    "landlock",
    "seccomp",
    "clean_environment",
    "network_isolation",
];

#[test]
fn health_answers_ok_and_reports_the_executor_and_every_sandbox_layer() {
    let nox = Nox::shared();
    let reply = nox.client().with_token(None).health();
    let body = reply.expect_json(200);
    assert_eq!(body["status"], "ok", "{body}");
    assert!(body["version"].is_string(), "version: {body}");
    let executor = &body["executor"];
    assert_eq!(executor["reachable"], true, "{body}");
    assert!(executor["ready"].is_boolean(), "ready: {body}");
    for name in LAYERS {
        let layer = &executor["layers"][name];
        assert!(layer["active"].is_boolean(), "layer {name}: {body}");
        assert!(layer["required"].is_boolean(), "layer {name}: {body}");
        assert!(layer["detail"].is_string(), "layer {name}: {body}");
    }
    assert!(executor["limits"].is_object(), "limits: {body}");
    assert!(executor["jobs_running"].is_number(), "jobs_running: {body}");
}

#[test]
fn health_shows_the_kernel_layers_active_on_this_machine() {
    let body = Nox::shared().client().health().expect_json(200);
    let layers = &body["executor"]["layers"];
    for name in [
        "process_group",
        "rlimits",
        "no_capabilities",
        "no_new_privs",
        "landlock",
        "seccomp",
        "clean_environment",
    ] {
        assert_eq!(
            layers[name]["active"], true,
            "layer {name} should be active: {body}"
        );
    }
    assert_eq!(body["executor"]["ready"], true, "{body}");
    if nox_e2e::is_root() {
        assert_eq!(
            layers["sandbox_user"]["active"], true,
            "running as root: {body}"
        );
    }
}

#[test]
fn an_uploaded_script_can_be_run_by_a_later_job() {
    let nox = Nox::shared();
    let dir = unique("seed");
    let path = format!("{dir}/hello.py");
    let script = b"import sys\nprint('hello from an upload', sys.argv[1:])\n";
    let saved = nox.put(&path, script).expect_json(200);
    assert_eq!(saved, json!({ "saved": path, "bytes": script.len() }));

    let reply = nox.run_sh(&format!("python3 {path} a b"));
    assert_eq!(reply["returncode"], 0, "{reply}");
    assert_eq!(
        reply["stdout"], "hello from an upload ['a', 'b']\n",
        "{reply}"
    );

    let reply = nox.run_py(&format!("exec(open('{path}').read())"));
    assert_eq!(reply["returncode"], 0, "{reply}");
    assert!(
        reply["stdout"]
            .as_str()
            .is_some_and(|out| out.starts_with("hello from an upload")),
        "{reply}"
    );
}

#[test]
fn run_py_returns_the_seed_reply_shape_and_more() {
    let nox = Nox::shared();
    let reply =
        nox.run_py("import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)\n");
    assert_eq!(reply["returncode"], 3, "{reply}");
    assert_eq!(reply["stdout"], "out\n", "{reply}");
    assert_eq!(reply["stderr"], "err\n", "{reply}");
    assert_eq!(reply["timed_out"], false, "{reply}");
    assert!(reply["signal"].is_null(), "{reply}");
    assert!(reply["limit_hit"].is_null(), "{reply}");
    assert!(reply["duration_ms"].is_number(), "{reply}");
    assert_eq!(reply["stdout_truncated"], false, "{reply}");
    assert_eq!(reply["stderr_truncated"], false, "{reply}");
    assert!(
        reply["job_id"].as_str().is_some_and(|id| !id.is_empty()),
        "{reply}"
    );
    assert!(reply["usage"].is_object(), "{reply}");
}

#[test]
fn run_py_saves_the_code_under_the_requested_filename_in_the_workspace() {
    let nox = Nox::shared();
    let name = format!("{}.py", unique("named"));
    let reply = nox.client().run(
        "/run_py",
        &json!({ "code": "import os, sys\nprint(os.path.basename(sys.argv[0]))\nprint(os.getcwd())\n", "filename": name }),
    );
    assert_eq!(reply["returncode"], 0, "{reply}");
    let stdout = reply["stdout"].as_str().unwrap_or_default();
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some(name.as_str()), "{reply}");
    let cwd = nox.workspace("default");
    assert_eq!(
        lines.next(),
        Some(cwd.to_str().unwrap_or_default()),
        "the job's cwd is its workspace: {reply}"
    );
    assert!(cwd.join(&name).is_file(), "{name} is kept in the workspace");
}

#[test]
fn run_sh_runs_a_shell_command_line_and_reports_its_exit_code() {
    let nox = Nox::shared();
    let reply = nox.run_sh("echo one; echo two >&2; exit 7");
    assert_eq!(reply["returncode"], 7, "{reply}");
    assert_eq!(reply["stdout"], "one\n", "{reply}");
    assert_eq!(reply["stderr"], "two\n", "{reply}");

    let reply = nox.run_sh("pwd");
    assert_eq!(reply["returncode"], 0, "{reply}");
    assert!(
        reply["stdout"]
            .as_str()
            .is_some_and(|out| out.ends_with("/workspaces/default\n")),
        "{reply}"
    );
}

#[test]
fn stdin_is_delivered_to_the_job() {
    let nox = Nox::shared();
    let reply = nox.client().run(
        "/run_sh",
        &json!({ "cmd": "tr a-z A-Z", "stdin": "piped in\nsecond line\n" }),
    );
    assert_eq!(reply["stdout"], "PIPED IN\nSECOND LINE\n", "{reply}");
    let reply = nox.client().run(
        "/run_py",
        &json!({ "code": "import sys\nprint(sum(int(x) for x in sys.stdin.read().split()))\n", "stdin": "1 2 3 4" }),
    );
    assert_eq!(reply["stdout"], "10\n", "{reply}");
    // No stdin given: the job reads end-of-file at once instead of hanging.
    let reply = nox.client().run(
        "/run_sh",
        &json!({ "cmd": "cat; echo done", "timeout_s": 5 }),
    );
    assert_eq!(reply["stdout"], "done\n", "{reply}");
    assert_eq!(reply["timed_out"], false, "{reply}");
}

#[test]
fn timeout_s_lowers_the_timeout_and_the_job_is_killed() {
    let nox = Nox::shared();
    let started = std::time::Instant::now();
    let reply = nox.client().run(
        "/run_sh",
        &json!({ "cmd": "echo before; sleep 5; echo after", "timeout_s": 0.5 }),
    );
    let elapsed = started.elapsed();
    assert_eq!(reply["timed_out"], true, "{reply}");
    assert_eq!(reply["returncode"], -9, "{reply}");
    assert_eq!(reply["signal"], 9, "{reply}");
    assert_eq!(reply["limit_hit"], "timeout", "{reply}");
    assert_eq!(
        reply["stdout"], "before\n",
        "output before the timeout is kept: {reply}"
    );
    assert!(
        elapsed < std::time::Duration::from_secs(4),
        "took {elapsed:?}: {reply}"
    );
}
