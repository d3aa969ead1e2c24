//! Limits configured on the executor and the frontend: output caps, the timeout ceiling a
//! request cannot raise, request-size limits. One instance with small ceilings.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nox_e2e::Nox;
use serde_json::json;

const OUTPUT_KB: usize = 64;
const TIMEOUT_S: u64 = 3;
const MAX_JSON_BODY: usize = 64 * 1024;
const MAX_UPLOAD: usize = 128 * 1024;

/// One instance for this module: output capped at 64 KiB, timeout ceiling 3 s (set with the
/// seed's `NOX_TIMEOUT`), small request bodies.
fn small() -> &'static Nox {
    static SMALL: OnceLock<Nox> = OnceLock::new();
    SMALL.get_or_init(|| {
        Nox::builder()
            .executor_env("NOX_EXECUTOR__LIMITS__OUTPUT_KB", &OUTPUT_KB.to_string())
            .executor_env("NOX_TIMEOUT", &TIMEOUT_S.to_string())
            .frontend_toml(&format!("max_json_body_bytes = {MAX_JSON_BODY}"))
            .frontend_toml(&format!("max_upload_bytes = {MAX_UPLOAD}"))
            .start()
    })
}

#[test]
fn stdout_past_the_cap_is_truncated_flagged_and_the_job_is_stopped() {
    let started = Instant::now();
    let reply = small().run_sh("yes | head -c 10000000");
    let stdout = reply["stdout"].as_str().unwrap_or_default();
    assert!(
        stdout.len() <= OUTPUT_KB * 1024,
        "{} bytes of stdout came back",
        stdout.len()
    );
    assert!(
        stdout.len() >= OUTPUT_KB * 1024 / 2,
        "only {} bytes of stdout came back",
        stdout.len()
    );
    assert!(
        stdout.starts_with("y\ny\n"),
        "{}",
        &stdout[..stdout.len().min(64)]
    );
    assert_eq!(reply["stdout_truncated"], true, "stdout_truncated");
    assert_eq!(reply["stderr_truncated"], false, "stderr_truncated");
    assert_eq!(
        reply["limit_hit"], "output",
        "limit_hit: returncode {} signal {}",
        reply["returncode"], reply["signal"]
    );
    assert_eq!(reply["timed_out"], false);
    assert!(
        started.elapsed() < Duration::from_secs(TIMEOUT_S),
        "the job ran on after the cap: {:?}",
        started.elapsed()
    );
}

#[test]
fn stderr_past_the_cap_is_truncated_and_flagged() {
    let reply = small().run_py("import sys\nwhile True:\n    sys.stderr.write('e' * 4096)\n");
    let stderr = reply["stderr"].as_str().unwrap_or_default();
    assert!(
        stderr.len() <= OUTPUT_KB * 1024,
        "{} bytes of stderr came back",
        stderr.len()
    );
    assert_eq!(reply["stderr_truncated"], true, "stderr_truncated");
    assert_eq!(reply["limit_hit"], "output", "limit_hit");
    assert_eq!(
        reply["timed_out"], false,
        "the job was stopped by the cap, not the timeout"
    );
}

#[test]
fn a_request_can_lower_the_output_cap() {
    let reply = small().client().run(
        "/run_sh",
        &json!({ "cmd": "yes | head -c 1000000", "limits": { "output_kb": 4 } }),
    );
    let stdout = reply["stdout"].as_str().unwrap_or_default();
    assert!(
        stdout.len() <= 4096,
        "{} bytes of stdout came back",
        stdout.len()
    );
    assert_eq!(reply["stdout_truncated"], true);
}

#[test]
fn output_just_under_the_cap_is_not_truncated() {
    let reply = small().run_sh(&format!(
        "head -c {} /dev/zero | tr '\\0' x",
        OUTPUT_KB * 1024 - 1
    ));
    assert_eq!(
        reply["stdout"].as_str().map(str::len),
        Some(OUTPUT_KB * 1024 - 1)
    );
    assert_eq!(reply["stdout_truncated"], false);
    assert!(reply["limit_hit"].is_null(), "{}", reply["limit_hit"]);
}

#[test]
fn a_request_cannot_raise_the_timeout_above_the_ceiling() {
    let started = Instant::now();
    let reply = small().client().run(
        "/run_sh",
        &json!({ "cmd": "sleep 10; echo finished", "timeout_s": 100 }),
    );
    assert_eq!(reply["timed_out"], true, "{reply}");
    assert_eq!(reply["stdout"], "", "{reply}");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(TIMEOUT_S + 3),
        "took {elapsed:?}"
    );
    assert!(
        elapsed >= Duration::from_secs(TIMEOUT_S) - Duration::from_millis(200),
        "took {elapsed:?}"
    );
}

#[test]
fn a_file_bigger_than_the_file_size_limit_cannot_be_written() {
    let reply = small().client().run(
        "/run_sh",
        &json!({ "cmd": "head -c 3000000 /dev/zero > big.bin; echo status $?; stat -c %s big.bin; rm -f big.bin", "limits": { "file_size_mb": 1 } }),
    );
    let stdout = reply["stdout"].as_str().unwrap_or_default();
    assert!(!stdout.contains("status 0"), "the write succeeded: {reply}");
    assert!(
        stdout.contains("1048576"),
        "the file stopped at the limit: {reply}"
    );
}

#[test]
fn a_json_body_over_the_limit_is_refused_with_413() {
    let cmd = format!("echo {}", "x".repeat(MAX_JSON_BODY * 2));
    let body = json!({ "cmd": cmd }).to_string();
    let reply = small().client().raw_expect_continue(
        "POST",
        "/run_sh",
        &["Content-Type: application/json"],
        body.as_bytes(),
    );
    reply.expect_error(413, "payload_too_large");
}

#[test]
fn an_upload_over_the_limit_is_refused_with_413_and_not_saved() {
    let nox = small();
    let big = vec![b'z'; MAX_UPLOAD * 2];
    let (content_type, multipart) = nox_e2e::multipart("f", "big.bin", &big);
    let reply = nox.client().raw_expect_continue(
        "POST",
        "/put?path=too-big.bin",
        &[&format!("Content-Type: {content_type}")],
        &multipart,
    );
    reply.expect_error(413, "payload_too_large");
    let reply = nox
        .client()
        .raw_expect_continue("PUT", "/files/too-big-2.bin", &[], &big);
    reply.expect_error(413, "payload_too_large");
    assert!(!nox.workspace("default").join("too-big.bin").exists());
    assert!(!nox.workspace("default").join("too-big-2.bin").exists());
}

#[test]
fn a_full_queue_answers_503_busy_at_once_and_a_freed_place_is_used_at_once() {
    // One job at a time, no queue: while one runs, every other is refused.
    let nox = Nox::builder()
        .executor_env("NOX_EXECUTOR__MAX_CONCURRENT_JOBS", "1")
        .executor_env("NOX_EXECUTOR__MAX_QUEUED_JOBS", "0")
        .start();
    std::thread::scope(|scope| {
        let long = scope.spawn(|| nox.run_sh("sleep 1.5; echo long"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while nox.client().health().expect_json(200)["executor"]["jobs_running"] != 1 {
            assert!(Instant::now() < deadline, "the long job never ran");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The first refusal comes from the executor, the next ones (within 2 ms of a
        // refusal) from the frontend itself: the same answer either way.
        for attempt in 0..20 {
            let started = Instant::now();
            let reply = nox
                .client()
                .post_json("/run_sh", &json!({ "cmd": "echo refused" }));
            let body = reply.expect_error(503, "busy");
            assert!(
                started.elapsed() < Duration::from_millis(500),
                "attempt {attempt}: the refusal took {:?}: {body}",
                started.elapsed()
            );
        }
        let response = nox.client().send(
            "POST",
            "/run_py",
            &[("Content-Type", "application/json")],
            Some(
                json!({ "code": "print('refused')" })
                    .to_string()
                    .into_bytes(),
            ),
        );
        assert_eq!(response.status().as_u16(), 503);
        assert_eq!(
            response
                .headers()
                .get("retry-after")
                .and_then(|value| value.to_str().ok()),
            Some("1")
        );
        assert_eq!(long.join().expect("the long job")["stdout"], "long\n");
    });
    // The place is free again: a job asked for a few milliseconds later runs.
    std::thread::sleep(Duration::from_millis(10));
    assert_eq!(nox.run_sh("echo again")["stdout"], "again\n");
}
