//! The Python client's unittest suite and its demo, against the shared instance.

use std::process::Command;

use nox_e2e::Nox;

use super::common::{repo, text};

fn python(nox: &Nox) -> Command {
    let mut command = Command::new("python3");
    command
        .current_dir(repo().join("clients/python"))
        .env("NOX_URL", nox.url())
        .env("NOX_API_TOKEN", nox.token())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    command
}

#[test]
fn the_python_client_suite_passes_against_the_service() {
    let output = python(Nox::shared())
        .args(["-m", "unittest", "discover", "-s", "tests", "-v"])
        .output()
        .expect("run python3");
    let report = text(&output.stderr);
    assert!(output.status.success(), "python unittest failed:\n{report}");
    assert!(report.contains("Ran "), "{report}");
    assert!(
        !report.contains("skipped"),
        "nothing may be skipped:\n{report}"
    );
}

#[test]
fn the_demo_runs_the_whole_tour() {
    let output = python(Nox::shared())
        .arg("examples/demo.py")
        .output()
        .expect("run python3");
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        text(&output.stderr)
    );
    for step in [
        "health",
        "upload",
        "run uploaded",
        "run_py",
        "run_sh",
        "stream",
        "list",
        "download",
        "delete",
    ] {
        assert!(
            stdout.contains(&format!("[{step}]")),
            "{step} missing:\n{stdout}"
        );
    }
    assert!(stdout.contains("hello, nox"), "{stdout}");
    assert!(stdout.contains("same as uploaded: True"), "{stdout}");
}
