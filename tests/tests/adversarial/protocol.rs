//! The executor's socket, spoken to directly — by a process that is not allowed (a uid of its
//! own, refused by the socket's mode and then by `SO_PEERCRED`), and by an allowed peer that
//! misbehaves the way a compromised frontend could: garbage, oversized and lying length
//! fields, a wrong hello, requests out of order, thousands of tiny frames, traversal the
//! frontend would have refused. The executor drops what it must, answers what it can, and
//! serves on.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use nox_e2e::{Nox, is_root, skip_unless_root, unique};
use nox_protocol::codec::encode_payload;
use nox_protocol::{
    ErrorKind, FileRef, Hello, JobSpec, LimitRequest, ListRequest, Program, PutStart, Reply,
    Request,
};
use serde_json::json;

use super::common::{self, Wire, assert_gone, assert_serving, frame, marker};

/// An instance whose socket is mode 0666, so that only `SO_PEERCRED` stands between a
/// stranger and the executor.
fn open_socket() -> &'static Nox {
    static OPEN: OnceLock<Nox> = OnceLock::new();
    OPEN.get_or_init(|| {
        let nox = Nox::start_default();
        std::fs::set_permissions(
            nox.executor_socket(),
            std::fs::Permissions::from_mode(0o666),
        )
        .expect("chmod the executor socket");
        nox
    })
}

/// A client run as uid/gid 65534 (`--groups` adds supplementary groups) that connects,
/// sends a hello, and prints `connect errno N`, `closed without an answer` or `answered`.
fn stranger(nox: &Nox, groups: Option<u32>) -> String {
    let hello = frame(
        &encode_payload(&Request::Hello(Hello {
            version: nox_protocol::PROTOCOL_VERSION,
            software: "a stranger".into(),
        }))
        .expect("encode"),
    );
    let hex: String = hello.iter().map(|byte| format!("{byte:02x}")).collect();
    let code = format!(
        r#"
import socket
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
try:
    s.connect({path:?})
except OSError as e:
    print("connect errno", e.errno)
else:
    try:
        s.sendall(bytes.fromhex({hex:?}))
        print("answered" if s.recv(4096) else "closed without an answer")
    except OSError as e:
        print("closed without an answer", e.errno)
"#,
        path = nox.executor_socket().display().to_string()
    );
    let mut command = Command::new("setpriv");
    command.args(["--reuid=65534", "--regid=65534"]);
    match groups {
        Some(gid) => command.arg(format!("--groups={gid}")),
        None => command.arg("--clear-groups"),
    };
    let output = command
        .args(["/usr/bin/python3", "-c", &code])
        .output()
        .expect("run setpriv (util-linux)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn a_process_of_another_uid_is_refused_by_the_socket_as_installed() {
    if skip_unless_root("a_process_of_another_uid_is_refused_by_the_socket_as_installed") {
        return;
    }
    let nox = Nox::shared();
    let out = stranger(nox, None);
    assert!(
        out.starts_with("connect errno") || out.starts_with("closed without an answer"),
        "uid 65534 talked to the executor: {out}"
    );
    assert_serving(nox);
}

#[test]
fn a_process_of_another_uid_that_gets_through_the_file_mode_is_dropped_by_so_peercred() {
    if skip_unless_root(
        "a_process_of_another_uid_that_gets_through_the_file_mode_is_dropped_by_so_peercred",
    ) {
        return;
    }
    let nox = open_socket();
    let out = stranger(nox, None);
    assert!(
        out.starts_with("closed without an answer"),
        "uid 65534 was answered through a 0666 socket: {out}"
    );
    assert_serving(nox);
}

#[test]
fn a_member_of_an_allowed_group_is_greeted_which_shows_the_refusals_are_the_peer_check() {
    if skip_unless_root(
        "a_member_of_an_allowed_group_is_greeted_which_shows_the_refusals_are_the_peer_check",
    ) {
        return;
    }
    let Some(group) = nix::unistd::Group::from_name("nox").ok().flatten() else {
        nox_e2e::skip(
            "a_member_of_an_allowed_group_is_greeted_which_shows_the_refusals_are_the_peer_check",
            "group `nox` does not exist (test.sh creates it)",
        );
        return;
    };
    let nox = open_socket();
    let out = stranger(nox, Some(group.gid.as_raw()));
    assert_eq!(out.trim(), "answered", "a member of group nox was refused");
    assert_serving(nox);
}

/// Sends `bytes` on a fresh connection and asserts the executor closes it (and lives).
fn assert_dropped(nox: &Nox, what: &str, bytes: &[u8]) {
    let executor = nox.executor_pid();
    let mut wire = Wire::connect(nox);
    wire.send_raw(bytes);
    let (_, closed) = wire.drain(Duration::from_secs(5));
    assert!(closed, "{what}: the connection stayed open");
    assert_eq!(
        nox.executor_pid(),
        executor,
        "{what}: the executor died\n{}",
        nox.logs()
    );
}

fn hello_bytes(version: u32) -> Vec<u8> {
    frame(
        &encode_payload(&Request::Hello(Hello {
            version,
            software: "nox-adversarial".into(),
        }))
        .expect("encode"),
    )
}

#[test]
fn a_nine_byte_frame_claiming_a_terabyte_vector_is_dropped_before_and_after_the_hello() {
    let nox = Nox::shared();
    let mut payload = vec![4, 0, 0, 0];
    payload.extend_from_slice(&(1u64 << 40).to_le_bytes()[..5]);
    assert_eq!(payload.len(), 9);
    assert_dropped(nox, "before the hello", &frame(&payload));
    let after = [hello_bytes(nox_protocol::PROTOCOL_VERSION), frame(&payload)].concat();
    assert_dropped(nox, "after the hello", &after);
    // The same lie in a Run's job id, and in a stdin vector.
    let mut run = vec![1, 0, 0, 0];
    run.extend_from_slice(&u64::MAX.to_le_bytes());
    assert_dropped(
        nox,
        "a Run with a 2^64-byte job id",
        &[hello_bytes(nox_protocol::PROTOCOL_VERSION), frame(&run)].concat(),
    );
    assert_serving(nox);
}

#[test]
fn hellos_with_version_zero_or_max_get_a_protocol_error_and_the_connection_closes() {
    let nox = Nox::shared();
    for version in [0, u32::MAX, nox_protocol::PROTOCOL_VERSION + 1] {
        let mut wire = Wire::connect(nox);
        wire.send_raw(&hello_bytes(version));
        let reply = wire.recv();
        assert!(
            matches!(&reply, Some(Reply::Error(error)) if error.kind == ErrorKind::ProtocolMismatch),
            "version {version}: {reply:?}"
        );
        let (_, closed) = wire.drain(Duration::from_secs(5));
        assert!(closed, "version {version}: the connection stayed open");
    }
    assert_serving(nox);
}

fn run_spec(workspace: &str, job_id: &str, program: Program) -> Request {
    Request::Run(JobSpec {
        job_id: job_id.into(),
        workspace: workspace.into(),
        program,
        stdin: Vec::new(),
        limits: LimitRequest {
            timeout_ms: Some(10_000),
            ..LimitRequest::default()
        },
    })
}

fn shell(command: &str) -> Program {
    Program::Shell {
        command: command.into(),
    }
}

#[test]
fn a_run_before_the_hello_is_refused_and_nothing_runs() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let name = unique("tripwire");
    let mut wire = Wire::connect(nox);
    wire.send(&run_spec(
        "default",
        &unique("job"),
        shell(&format!("touch {name}")),
    ));
    let reply = wire.recv();
    assert!(
        matches!(&reply, Some(Reply::Error(error)) if error.kind == ErrorKind::ProtocolMismatch),
        "{reply:?}"
    );
    let (_, closed) = wire.drain(Duration::from_secs(5));
    assert!(closed);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !nox.workspace("default").join(&name).exists(),
        "the job ran"
    );
    assert_serving(nox);
}

#[test]
fn a_frame_of_exactly_the_maximum_length_of_garbage_is_dropped() {
    let nox = Nox::shared();
    let garbage = vec![0xA5u8; nox_protocol::MAX_FRAME_LEN];
    let bytes = [hello_bytes(nox_protocol::PROTOCOL_VERSION), frame(&garbage)].concat();
    assert_dropped(nox, "4 MiB of garbage", &bytes);
    assert_serving(nox);
}

#[test]
fn five_thousand_tiny_frames_on_one_connection_are_all_answered_in_order() {
    let nox = Nox::shared();
    let mut wire = Wire::greeted(nox);
    let status = frame(&encode_payload(&Request::Status).expect("encode"));
    let count = 5000;
    let mut writer = wire.stream.try_clone().expect("clone the stream");
    let sender = std::thread::spawn(move || {
        let batch: Vec<u8> = status.repeat(count);
        writer.write_all(&batch).expect("write the frames");
    });
    let mut answered = 0;
    while answered < count {
        match wire.recv() {
            Some(Reply::Status(_)) => answered += 1,
            other => panic!("frame {answered}: {other:?}"),
        }
    }
    sender.join().expect("the writer");
    assert_serving(nox);
}

#[test]
fn a_thousand_connections_that_send_one_byte_and_leave_do_not_hurt_the_executor() {
    let nox = Nox::shared();
    let executor = nox.executor_pid();
    for n in 0..1000u32 {
        if let Ok(mut stream) = UnixStream::connect(nox.executor_socket()) {
            let _ = stream.write_all(&[u8::try_from(n % 256).unwrap_or(0)]);
        }
    }
    assert_eq!(
        nox.executor_pid(),
        executor,
        "the executor died\n{}",
        nox.logs()
    );
    assert_serving(nox);
}

#[test]
fn sixty_four_stalled_connections_do_not_block_anyone_else() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let stalled: Vec<UnixStream> = (0..64)
        .map(|n| {
            let mut stream = UnixStream::connect(nox.executor_socket()).expect("connect");
            let half = if n % 2 == 0 {
                vec![0u8, 0]
            } else {
                hello_bytes(nox_protocol::PROTOCOL_VERSION)[..10].to_vec()
            };
            stream.write_all(&half).expect("write half a frame");
            stream
        })
        .collect();
    assert_serving(nox);
    drop(stalled);
}

#[test]
fn a_run_with_an_invalid_workspace_job_id_or_filename_is_refused_and_the_connection_goes_on() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let name = unique("tripwire");
    let touch = shell(&format!("touch {name}"));
    let python = |filename: &str| Program::Python {
        code: format!("open('{name}', 'w')"),
        filename: filename.into(),
    };
    let long = "a".repeat(65);
    let cases = [
        (
            "workspace ../state",
            run_spec("../state", "job1", touch.clone()),
        ),
        ("workspace empty", run_spec("", "job2", touch.clone())),
        ("workspace a/b", run_spec("a/b", "job3", touch.clone())),
        ("workspace -rf", run_spec("-rf", "job4", touch.clone())),
        (
            "job id ../../etc",
            run_spec("default", "../../etc", touch.clone()),
        ),
        ("job id empty", run_spec("default", "", touch.clone())),
        ("job id too long", run_spec("default", &long, touch.clone())),
        ("job id with a space", run_spec("default", "a b", touch)),
        (
            "filename ../x.py",
            run_spec("default", "job5", python("../x.py")),
        ),
        (
            "filename /tmp/x.py",
            run_spec("default", "job6", python("/tmp/x.py")),
        ),
        ("filename empty", run_spec("default", "job7", python(""))),
        (
            "command with NUL",
            run_spec("default", "job8", shell("touch a\0b")),
        ),
    ];
    let mut wire = Wire::greeted(nox);
    let mut wrong = Vec::new();
    for (what, request) in cases {
        wire.send(&request);
        match wire.recv() {
            Some(Reply::Error(error))
                if matches!(error.kind, ErrorKind::BadRequest | ErrorKind::InvalidPath) => {}
            other => wrong.push(format!("{what}: {other:?}")),
        }
    }
    wire.send(&Request::Status);
    assert!(
        matches!(wire.recv(), Some(Reply::Status(_))),
        "the connection did not go on"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !nox.workspace("default").join(&name).exists(),
        "a refused job ran"
    );
    assert!(!nox.workspace_root().join("x.py").exists());
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_serving(nox);
}

#[test]
fn file_requests_with_traversal_the_frontend_would_refuse_are_refused_by_the_executor() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let link = unique("proto-link");
    let reply = nox.run_sh(&format!("ln -s /etc {link} && echo planted"));
    assert_eq!(reply["stdout"], "planted\n", "{reply}");
    let mut wire = Wire::greeted(nox);
    let mut wrong = Vec::new();
    let escape = unique("proto-escape");
    for path in [
        "../../../../etc/passwd".to_owned(),
        "/etc/passwd".to_owned(),
        format!("{link}/passwd"),
        "a/../../x".to_owned(),
        "a\0b".to_owned(),
        ".".to_owned(),
        String::new(),
    ] {
        let file = FileRef {
            workspace: "default".into(),
            path: path.clone(),
        };
        wire.send(&Request::Get(file.clone()));
        match wire.recv() {
            Some(Reply::Error(_)) => {}
            other => wrong.push(format!("Get {path:?}: {other:?}")),
        }
        wire.send(&Request::Delete(file));
        match wire.recv() {
            Some(Reply::Error(_)) => {}
            other => wrong.push(format!("Delete {path:?}: {other:?}")),
        }
        wire.send(&Request::List(ListRequest {
            workspace: "default".into(),
            prefix: path.clone(),
        }));
        match wire.recv() {
            Some(Reply::Error(_)) => {}
            Some(Reply::Listing(listing)) if path.is_empty() || path == "." => {
                if listing
                    .entries
                    .iter()
                    .any(|entry| entry.path.contains("passwd"))
                {
                    wrong.push(format!("List {path:?} followed a link"));
                }
            }
            other => wrong.push(format!("List {path:?}: {other:?}")),
        }
        if path == "." {
            continue; // `./name` is a plain name in the workspace
        }
        // An upload is answered once, after PutEnd.
        wire.send(&Request::PutStart(PutStart {
            workspace: "default".into(),
            path: format!("{path}/{escape}"),
        }));
        wire.send(&Request::PutChunk(b"PLANTED".to_vec()));
        wire.send(&Request::PutEnd);
        match wire.recv() {
            Some(Reply::Error(_)) => {}
            other => wrong.push(format!("Put {path:?}/{escape}: {other:?}")),
        }
    }
    assert!(!std::path::Path::new("/etc").join(&escape).exists());
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_serving(nox);
}

fn temp_files(nox: &Nox) -> Vec<String> {
    std::fs::read_dir(nox.workspace("default"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".nox-upload-"))
        .collect()
}

#[test]
fn an_oversized_chunk_or_an_unexpected_frame_mid_upload_drops_the_connection_and_the_partial_file()
{
    let nox = Nox::shared();
    for (what, interruption) in [
        (
            "an oversized chunk",
            Request::PutChunk(vec![b'x'; nox_protocol::MAX_CHUNK_LEN + 1]),
        ),
        ("a hello", Request::Hello(Hello::new("again"))),
        ("a status", Request::Status),
        ("a run", run_spec("default", "jobx", shell("true"))),
    ] {
        let name = unique("partial");
        let mut wire = Wire::greeted(nox);
        wire.send(&Request::PutStart(PutStart {
            workspace: "default".into(),
            path: name.clone(),
        }));
        wire.send(&Request::PutChunk(b"half".to_vec()));
        wire.send(&interruption);
        let (_, closed) = wire.drain(Duration::from_secs(5));
        assert!(closed, "{what}: the connection stayed open");
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !nox.workspace("default").join(&name).exists(),
            "{what}: the partial upload was kept"
        );
    }
    assert_eq!(
        temp_files(nox),
        Vec::<String>::new(),
        "temp files left behind"
    );
    assert_serving(nox);
}

#[test]
fn absurd_limits_in_a_run_are_clamped_to_the_ceilings_and_floors() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    // Whatever else runs: the warm Python interpreter is one more process of the sandbox uid.
    nox.run_py("pass");
    let mut wire = Wire::greeted(nox);
    wire.send(&Request::Status);
    let Some(Reply::Status(status)) = wire.recv() else {
        panic!("no status");
    };
    let ceilings = status.ceilings;
    for (asked, check_floor) in [(u64::MAX, false), (0, true)] {
        wire.send(&Request::Run(JobSpec {
            job_id: unique("limits"),
            workspace: "default".into(),
            program: shell("true"),
            stdin: Vec::new(),
            limits: LimitRequest {
                timeout_ms: Some(asked),
                cpu_seconds: Some(asked),
                memory_bytes: Some(asked),
                max_processes: Some(asked),
                max_file_bytes: Some(asked),
                max_open_files: Some(asked),
                max_output_bytes: Some(asked),
            },
        }));
        let started = match wire.recv() {
            Some(Reply::Started(started)) => started,
            other => panic!("asked {asked}: {other:?}"),
        };
        let got = started.limits;
        for (name, value, ceiling) in [
            ("timeout", got.timeout_ms, ceilings.timeout_ms),
            ("cpu", got.cpu_seconds, ceilings.cpu_seconds),
            ("memory", got.memory_bytes, ceilings.memory_bytes),
            ("processes", got.max_processes, ceilings.max_processes),
            ("file size", got.max_file_bytes, ceilings.max_file_bytes),
            ("open files", got.max_open_files, ceilings.max_open_files),
            ("output", got.max_output_bytes, ceilings.max_output_bytes),
        ] {
            assert!(
                value <= ceiling,
                "{name}: {value} above the ceiling {ceiling}"
            );
        }
        if check_floor {
            assert!(
                got.timeout_ms >= 1 && got.memory_bytes >= 32 << 20 && got.max_open_files >= 16,
                "{got:?}"
            );
        }
        loop {
            match wire.recv() {
                Some(Reply::Output(_)) => {}
                Some(Reply::Finished(_)) => break,
                other => panic!("asked {asked}: {other:?}"),
            }
        }
    }
    assert_serving(nox);
}

#[test]
fn a_peer_that_disconnects_mid_job_leaves_no_process_behind() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let marker = marker();
    let mut wire = Wire::greeted(nox);
    wire.send(&run_spec(
        "default",
        &unique("gone"),
        shell(&format!("sleep {marker}")),
    ));
    assert!(
        matches!(wire.recv(), Some(Reply::Started(_))),
        "the job did not start"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !nox_e2e::processes_with(&marker).is_empty(),
        "the job is not running"
    );
    drop(wire);
    assert_gone(&marker, &json!({ "peer": "disconnected after Started" }));
    assert_serving(nox);
}

#[test]
fn a_job_input_over_the_maximum_is_refused() {
    let nox = Nox::shared();
    let mut wire = Wire::greeted(nox);
    wire.send(&run_spec(
        "default",
        &unique("big"),
        Program::Python {
            code: "#".repeat(nox_protocol::MAX_JOB_INPUT_LEN + 1),
            filename: "big.py".into(),
        },
    ));
    let reply = wire.recv();
    assert!(
        matches!(&reply, Some(Reply::Error(error)) if error.kind == ErrorKind::TooLarge),
        "{reply:?}"
    );
    if is_root() {
        assert!(!nox.workspace("default").join("big.py").exists());
    }
    assert_serving(nox);
}
