//! Streaming: with `Accept: application/x-ndjson` output arrives as the job writes it.

use std::time::{Duration, Instant};

use nox_e2e::{Nox, read_ndjson};
use serde_json::json;

#[test]
fn ndjson_output_arrives_in_pieces_while_the_job_runs() {
    let nox = Nox::shared();
    let code =
        "import time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('second', flush=True)\n";
    let start = Instant::now();
    let response = nox.client().send(
        "POST",
        "/run_py",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/x-ndjson"),
        ],
        Some(json!({ "code": code }).to_string().into_bytes()),
    );
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/x-ndjson"),
        "content-type {content_type}"
    );
    let events = read_ndjson(response, start);
    let kinds: Vec<&str> = events
        .iter()
        .map(|(_, event)| event["type"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(kinds.first(), Some(&"started"), "{events:?}");
    assert_eq!(kinds.last(), Some(&"finished"), "{events:?}");
    let at = |needle: &str| {
        events
            .iter()
            .find(|(_, event)| {
                event["type"] == "stdout"
                    && event["data"].as_str().is_some_and(|d| d.contains(needle))
            })
            .map(|(at, _)| *at)
            .unwrap_or_else(|| panic!("no stdout event with {needle}: {events:?}"))
    };
    let first = at("first");
    let second = at("second");
    let (finished_at, finished) = events.last().expect("events");
    assert!(
        second.saturating_sub(first) >= Duration::from_millis(1000),
        "the first line arrived at {first:?}, the second at {second:?}: not streamed"
    );
    assert!(*finished_at >= second, "{events:?}");
    assert_eq!(finished["returncode"], 0, "{finished}");
    assert_eq!(finished["timed_out"], false, "{finished}");
}

#[test]
fn ndjson_carries_stderr_and_the_shell_endpoint_streams_too() {
    let nox = Nox::shared();
    let response = nox.client().send(
        "POST",
        "/run_sh",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/x-ndjson"),
        ],
        Some(
            json!({ "cmd": "echo out; echo err >&2; exit 4" })
                .to_string()
                .into_bytes(),
        ),
    );
    let events = read_ndjson(response, Instant::now());
    let joined = |kind: &str| -> String {
        events
            .iter()
            .filter(|(_, event)| event["type"] == kind)
            .filter_map(|(_, event)| event["data"].as_str())
            .collect()
    };
    assert_eq!(joined("stdout"), "out\n", "{events:?}");
    assert_eq!(joined("stderr"), "err\n", "{events:?}");
    let (_, finished) = events.last().expect("events");
    assert_eq!(finished["type"], "finished", "{events:?}");
    assert_eq!(finished["returncode"], 4, "{finished}");
}

#[test]
fn without_the_ndjson_accept_header_the_reply_is_one_json_object() {
    let reply = Nox::shared()
        .client()
        .post_json("/run_sh", &json!({ "cmd": "echo whole" }));
    assert!(
        reply.content_type.starts_with("application/json"),
        "content-type {}",
        reply.content_type
    );
    assert_eq!(reply.expect_json(200)["stdout"], "whole\n");
}
