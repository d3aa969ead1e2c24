//! Streaming: with `Accept: application/x-ndjson` or `text/event-stream` output arrives as
//! the job writes it.

use std::time::Duration;

use nox_e2e::{Nox, stdout_arrival};
use serde_json::{Value, json};

/// `started` first, `finished` last, and the stdout lines `first` and `second` (printed
/// 1.5 s apart) at least a second apart; the `finished` event.
fn assert_streamed(events: &[(Duration, Value)]) -> &Value {
    let kinds: Vec<&str> = events
        .iter()
        .map(|(_, event)| event["type"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(kinds.first(), Some(&"started"), "{events:?}");
    assert_eq!(kinds.last(), Some(&"finished"), "{events:?}");
    let first = stdout_arrival(events, "first");
    let second = stdout_arrival(events, "second");
    assert!(
        second.saturating_sub(first) >= Duration::from_millis(1000),
        "the first line arrived at {first:?}, the second at {second:?}: not streamed"
    );
    let (finished_at, finished) = events.last().expect("events");
    assert!(*finished_at >= second, "{events:?}");
    finished
}

#[test]
fn ndjson_output_arrives_in_pieces_while_the_job_runs() {
    let nox = Nox::shared();
    let code =
        "import time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('second', flush=True)\n";
    let events = nox
        .client()
        .stream_ndjson("/run_py", &json!({ "code": code }));
    let finished = assert_streamed(&events);
    assert_eq!(finished["returncode"], 0, "{finished}");
    assert_eq!(finished["timed_out"], false, "{finished}");
}

#[test]
fn ndjson_carries_stderr_and_the_shell_endpoint_streams_too() {
    let nox = Nox::shared();
    let events = nox.client().stream_ndjson(
        "/run_sh",
        &json!({ "cmd": "echo out; echo err >&2; exit 4" }),
    );
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
fn server_sent_events_carry_each_line_as_the_job_prints_it() {
    let nox = Nox::shared();
    let code = "import sys, time\nprint('first', flush=True)\nprint('warn', file=sys.stderr, flush=True)\ntime.sleep(1.5)\nprint('second', flush=True)\nsys.exit(3)\n";
    let events = nox.client().stream_sse("/run_py", &json!({ "code": code }));
    let finished = assert_streamed(&events);
    let warned = events
        .iter()
        .any(|(_, event)| event["type"] == "stderr" && event["data"] == "warn\n");
    assert!(warned, "{events:?}");
    assert_eq!(finished["returncode"], 3, "{finished}");
    assert_eq!(finished["timed_out"], false, "{finished}");
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
