//! The OpenAPI document: valid OpenAPI 3.1 (openapi-spec-validator), and true to the live
//! service (schemathesis, every check, against an instance of its own).

use std::process::Command;

use nox_e2e::Nox;

use super::common::{pytools, repo, text};

#[test]
fn the_document_is_public_and_valid_openapi_3_1() {
    let nox = Nox::shared();
    let reply = nox
        .client()
        .with_token(None)
        .request("GET", "/openapi.json", &[], None);
    let doc = reply.expect_json(200);
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(reply.content_type, "application/json");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, &reply.body).unwrap();
    let output = Command::new(pytools().join("openapi-spec-validator"))
        .arg(&file)
        .output()
        .expect("run openapi-spec-validator");
    assert!(
        output.status.success(),
        "openapi-spec-validator: {}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
}

#[test]
fn schemathesis_finds_nothing_against_the_live_service() {
    // An instance of its own: generated jobs, files and errors stay out of other tests'
    // way, and a short timeout bounds every generated job.
    let nox = Nox::builder().executor_toml("limits.timeout_s = 5").start();
    let work = tempfile::tempdir().unwrap();
    // `timeout`: a bound on the whole run (schemathesis' own --max-time would instead keep
    // fuzzing until the budget is spent).
    let output = Command::new("timeout")
        .arg("600")
        .arg(pytools().join("schemathesis"))
        .current_dir(work.path())
        .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
        .env("PYTHONPATH", repo().join("clients/tools"))
        .env("NO_COLOR", "1")
        .args([
            "run",
            &format!("{}/openapi.json", nox.url()),
            "--header",
            &format!("Authorization: Bearer {}", nox.token()),
            "--checks",
            "all",
            "--max-examples",
            "20",
            // Restarting would end this frontend (no supervisor here); restart.rs tests it.
            "--exclude-path",
            "/actions/restart",
            "--workers",
            "1",
            "--request-timeout",
            "30",
        ])
        .output()
        .expect("run schemathesis");
    let report = text(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{report}\n{}\n{}",
        text(&output.stderr),
        nox.logs()
    );
    assert!(
        report.contains("Tested: 11"),
        "every operation but the restart is tested:\n{report}"
    );
}
