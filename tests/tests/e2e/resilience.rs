//! Failures around the daemons: the executor dying and coming back, and garbage sent
//! straight to the executor's socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nox_e2e::{Nox, children_of, parent_of, processes_with};
use nox_protocol::codec::{decode_payload, encode_payload};
use nox_protocol::{ErrorKind, Hello, Reply, Request};
use serde_json::json;

#[test]
fn a_dead_executor_gives_a_quick_503_and_a_restarted_one_serves_again() {
    let nox = Nox::start_default();
    assert_eq!(nox.run_sh("echo before")["stdout"], "before\n");

    nox.kill_executor();
    let started = Instant::now();
    // `/health` may repeat, for 20 ms, what the executor said last (the instance's own
    // start polled it just now): past that it must ask again and see the executor gone.
    std::thread::sleep(Duration::from_millis(30));
    let health = nox.client().health();
    let body = health.expect_error(503, "executor_unavailable");
    assert_eq!(body["status"], "unavailable", "{body}");
    let reply = nox
        .client()
        .post_json("/run_sh", &json!({ "cmd": "echo while-dead" }));
    reply.expect_error(503, "executor_unavailable");
    let reply = nox.request("GET", "/files", &[], None);
    reply.expect_error(503, "executor_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "503s took {:?}",
        started.elapsed()
    );

    nox.restart_executor();
    let body = nox.client().health().expect_json(200);
    assert_eq!(body["executor"]["reachable"], true, "{body}");
    assert_eq!(nox.run_sh("echo after")["stdout"], "after\n");
}

/// Writes `bytes` on a fresh connection to the executor's socket, then reads until the
/// executor closes it (or `within` passes). Returns what came back and whether it closed.
fn send_raw(nox: &Nox, bytes: &[u8], within: Duration) -> (Vec<u8>, bool) {
    let mut stream =
        UnixStream::connect(nox.executor_socket()).expect("connect to the executor socket");
    stream.set_read_timeout(Some(within)).expect("read timeout");
    // The executor may close before reading everything; a failed write is fine.
    let _ = stream.write_all(bytes);
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return (received, true),
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {
                return (received, true);
            }
            Err(_) => return (received, false),
        }
        if Instant::now() >= deadline {
            return (received, false);
        }
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut bytes = u32::try_from(payload.len())
        .expect("small")
        .to_be_bytes()
        .to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

fn hello(version: u32) -> Vec<u8> {
    frame(
        &encode_payload(&Request::Hello(Hello {
            version,
            software: "nox-e2e".into(),
        }))
        .expect("encode"),
    )
}

/// The replies in `bytes`, decoded frame by frame.
fn replies(mut bytes: &[u8]) -> Vec<Reply> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let length = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let Some(payload) = bytes.get(4..4 + length) else {
            break;
        };
        out.push(decode_payload(payload).expect("the executor sends well-formed frames"));
        bytes = &bytes[4 + length..];
    }
    out
}

#[test]
fn malformed_frames_on_the_executor_socket_drop_only_that_connection() {
    let nox = Nox::start_default();
    let executor = nox.executor_pid().expect("the executor runs");
    // A Hello whose string claims a 2^40-byte string: bincode without a limit would try to
    // allocate a terabyte.
    let mut huge_string = vec![0, 0, 0, 0, 1, 0, 0, 0];
    huge_string.extend_from_slice(&(1u64 << 40).to_le_bytes());
    let run_first = frame(&encode_payload(&Request::Status).expect("encode"));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a short garbage frame", b"\x00\x00\x00\x05garbage".to_vec()),
        (
            "a 4 GiB length prefix",
            b"\xff\xff\xff\xff\x00\x01\x02\x03".to_vec(),
        ),
        ("a length just over the maximum", {
            let mut bytes = u32::try_from(nox_protocol::MAX_FRAME_LEN + 1)
                .expect("fits")
                .to_be_bytes()
                .to_vec();
            bytes.extend_from_slice(&[0; 64]);
            bytes
        }),
        ("a frame claiming a huge string", frame(&huge_string)),
        ("an unknown variant", frame(&[99, 0, 0, 0])),
        ("a request before the hello", run_first),
        (
            "a hello then garbage",
            [hello(nox_protocol::PROTOCOL_VERSION), frame(b"\x07garbage")].concat(),
        ),
        ("plain text", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
    ];
    let mut wrong = Vec::new();
    for (what, bytes) in cases {
        let (_, closed) = send_raw(&nox, &bytes, Duration::from_secs(5));
        if !closed {
            wrong.push(format!("{what}: the connection stayed open"));
        }
        if nox.executor_pid() != Some(executor) {
            panic!("the executor died after {what}\n{}", nox.logs());
        }
    }
    // A connection that stalls half-way through a frame must not block anyone else.
    let mut stalled = UnixStream::connect(nox.executor_socket()).expect("connect");
    stalled
        .write_all(&[0, 0])
        .expect("write half a length prefix");

    let reply = nox.run_sh("echo still-serving");
    assert_eq!(reply["stdout"], "still-serving\n", "{reply}");
    nox.client().health().expect_json(200);
    drop(stalled);
    assert!(
        wrong.is_empty(),
        "malformed frames must end their connection:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn a_hello_with_another_protocol_version_gets_a_clear_error_and_the_connection_closes() {
    let nox = Nox::start_default();
    let (bytes, closed) = send_raw(
        &nox,
        &hello(nox_protocol::PROTOCOL_VERSION + 41),
        Duration::from_secs(5),
    );
    assert!(closed, "the connection stayed open");
    let got = replies(&bytes);
    assert!(
        matches!(got.first(), Some(Reply::Error(error)) if error.kind == ErrorKind::ProtocolMismatch),
        "expected Error(ProtocolMismatch), got {got:?}"
    );
    // And the right version is greeted back.
    let mut stream = UnixStream::connect(nox.executor_socket()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(&hello(nox_protocol::PROTOCOL_VERSION))
        .expect("write hello");
    let mut prefix = [0u8; 4];
    stream
        .read_exact(&mut prefix)
        .expect("the executor answers a hello");
    let mut payload = vec![0u8; u32::from_be_bytes(prefix) as usize];
    stream.read_exact(&mut payload).expect("the whole hello");
    let reply: Reply = decode_payload(&payload).expect("a reply");
    assert!(
        matches!(reply, Reply::Hello(ref hello) if hello.version == nox_protocol::PROTOCOL_VERSION),
        "{reply:?}"
    );
}

#[test]
fn the_python_zygotes_spare_child_serves_one_job_and_dies_with_the_zygote() {
    let nox = Nox::start_default();
    let Some(executor) = nox.executor_pid() else {
        panic!("no executor pid");
    };
    let first = nox.run_py("import os\nprint(os.getpid(), os.getpgid(0))");
    assert_eq!(first["returncode"], 0, "{first}");
    let zygote = processes_with("nox Python zygote")
        .into_iter()
        .map(|(pid, _)| pid)
        .find(|pid| parent_of(*pid) == Some(executor))
        .expect("the zygote runs after a Python job");
    // Once the zygote is idle, a spare child waits beside it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let spare = loop {
        let children = children_of(zygote);
        if let [spare] = children[..] {
            break spare;
        }
        assert!(
            Instant::now() < deadline,
            "children of the zygote: {children:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // The next job is that spare: its own process, its own group, the job's details.
    let second = nox.run_py("import os\nprint(os.getpid(), os.getpgid(0))");
    let ids: Vec<i32> = second["stdout"]
        .as_str()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    assert_eq!(ids, vec![spare, spare], "{second}");
    let first_pid = first["stdout"].as_str().unwrap_or_default();
    assert!(
        !first_pid.starts_with(&format!("{spare} ")),
        "{first} {second}"
    );
    // The zygote killed, its spare goes with it, and the next Python job starts a new one.
    let deadline = Instant::now() + Duration::from_secs(5);
    let spare = loop {
        if let Some(pid) = children_of(zygote).into_iter().find(|pid| *pid != spare) {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "no new spare after the second job"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(zygote),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the zygote");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{spare}/status")).exists()
        && std::fs::read_to_string(format!("/proc/{spare}/status"))
            .is_ok_and(|status| !status.contains("State:\tZ"))
    {
        assert!(
            Instant::now() < deadline,
            "the spare {spare} outlived its zygote"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let third = nox.run_py("print('after')");
    assert_eq!(third["stdout"], "after\n", "{third}");
}
