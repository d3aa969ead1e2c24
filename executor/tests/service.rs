//! The executor as a service: `nox_executor::run` on a temp socket, driven with the
//! frontend's codec, the way nox-frontend talks to it.

// An integration test crate: helpers unwrap like the tests (a failed step is a failed
// test), and the tests need no #[cfg(test)] module around them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Client, PATIENCE, error_kind, test_config};
use nox_protocol::{
    EntryKind, ErrorKind, ExitStatus, FileRef, Hello, JobSpec, LimitRequest, ListRequest,
    MAX_CHUNK_LEN, PROTOCOL_VERSION, Program, Reply, Request, Saved, Stream,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// One executor for the whole file, on its own runtime thread. One per process: the job
/// runner's reaper waits for every child of the process, so two runners (or a test that
/// waits for a child of its own) would take each other's exits.
struct Server {
    socket: PathBuf,
    workspaces: PathBuf,
    _dir: tempfile::TempDir,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let config = test_config(dir.path());
        let socket = config.socket.clone();
        let workspaces = config.workspace_root.clone();
        let (ready, started) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::UnixListener::bind(&config.socket).unwrap();
                ready.send(()).unwrap();
                nox_executor::run(listener, config, std::future::pending())
                    .await
                    .unwrap();
            });
        });
        started.recv().unwrap();
        Server {
            socket,
            workspaces,
            _dir: dir,
        }
    })
}

/// A client past the hello, in its own workspace (tests run in parallel).
async fn connected(workspace: &str) -> Client {
    Client::hello(&server().socket, workspace).await
}

fn shell(client: &Client, id: &str, command: &str) -> Request {
    Request::Run(JobSpec {
        job_id: id.into(),
        workspace: client.workspace.clone(),
        program: Program::Shell {
            command: command.into(),
        },
        stdin: Vec::new(),
        limits: LimitRequest::default(),
    })
}

#[tokio::test]
async fn files_go_in_come_out_are_listed_and_deleted() {
    let mut client = connected("files").await;
    let big: Vec<u8> = (0..MAX_CHUNK_LEN * 2 + 17)
        .map(|i| (i % 251) as u8)
        .collect();
    assert_eq!(
        client.put("data/big.bin", &big).await,
        Reply::Saved(Saved {
            path: "data/big.bin".into(),
            bytes: big.len() as u64
        })
    );
    assert_eq!(client.get("data/big.bin").await.unwrap(), big);
    let saved = client.put("./data//small.txt", b"hi").await;
    assert!(
        matches!(&saved, Reply::Saved(Saved { path, bytes: 2 }) if path == "data/small.txt"),
        "{saved:?}"
    );

    let request = Request::List(ListRequest {
        workspace: client.workspace.clone(),
        prefix: String::new(),
    });
    let Reply::Listing(listing) = client.call(request).await else {
        panic!("expected a listing");
    };
    let entries: Vec<(&str, EntryKind)> = listing
        .entries
        .iter()
        .map(|entry| (entry.path.as_str(), entry.kind))
        .collect();
    assert_eq!(
        entries,
        [
            ("data", EntryKind::Dir),
            ("data/big.bin", EntryKind::File),
            ("data/small.txt", EntryKind::File)
        ]
    );

    let deleted = client
        .call(Request::Delete(client.file("data/small.txt")))
        .await;
    assert_eq!(deleted, Reply::Deleted(client.file("data/small.txt")));
    let gone = client.get("data/small.txt").await.unwrap_err();
    assert_eq!(error_kind(&gone), ErrorKind::NotFound);
    let not_empty = client.call(Request::Delete(client.file("data"))).await;
    assert_eq!(error_kind(&not_empty), ErrorKind::Conflict);
}

#[tokio::test]
async fn traversal_and_planted_symlinks_are_refused_and_the_connection_goes_on() {
    let mut client = connected("traversal").await;
    assert!(matches!(client.put("x", b"x").await, Reply::Saved(_)));
    let base = server().workspaces.join("traversal");
    symlink("/etc", base.join("etc")).unwrap();
    symlink("/etc/passwd", base.join("passwd")).unwrap();

    for path in [
        "../../../../etc/passwd",
        "/etc/passwd",
        "etc/passwd",
        "passwd",
    ] {
        let reply = client.get(path).await.unwrap_err();
        assert_eq!(error_kind(&reply), ErrorKind::InvalidPath, "{path}");
    }
    let refused = client.put("etc/nox-pwned", b"x").await;
    assert_eq!(error_kind(&refused), ErrorKind::InvalidPath);
    assert!(!Path::new("/etc/nox-pwned").exists());
    let refused = client.put("../escape", &[7; 10]).await;
    assert_eq!(error_kind(&refused), ErrorKind::InvalidPath);
    let bad_workspace = client
        .call(Request::Get(FileRef {
            workspace: "../other".into(),
            path: "x".into(),
        }))
        .await;
    assert_eq!(error_kind(&bad_workspace), ErrorKind::BadRequest);
    // Still in step after the refused requests.
    assert_eq!(client.get("x").await.unwrap(), b"x");
}

#[tokio::test]
async fn a_garbage_frame_closes_only_its_own_connection() {
    let mut steady = connected("garbage").await;

    // Bincode garbage in a well-formed frame, after a good hello: closed, no reply.
    let garbage = connected("garbage").await;
    let mut raw = garbage.framed.into_inner();
    raw.write_all(&[0, 0, 0, 3, 0xff, 0xfe, 0xfd])
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, raw.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty(), "no reply to garbage");

    // A length prefix far beyond the maximum, as the very first bytes: closed.
    let mut oversized = UnixStream::connect(&server().socket).await.unwrap();
    oversized.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, oversized.read_to_end(&mut rest))
        .await
        .unwrap();

    // The first connection and a new one are served as before.
    assert!(matches!(
        steady.put("still.txt", b"ok").await,
        Reply::Saved(_)
    ));
    let mut fresh = connected("garbage").await;
    assert_eq!(fresh.get("still.txt").await.unwrap(), b"ok");
}

#[tokio::test]
async fn a_wrong_version_or_a_missing_hello_is_a_protocol_mismatch() {
    let mut client = Client::connect(&server().socket, "mismatch").await;
    let reply = client
        .call(Request::Hello(Hello {
            version: PROTOCOL_VERSION + 1,
            software: "future".into(),
        }))
        .await;
    assert_eq!(error_kind(&reply), ErrorKind::ProtocolMismatch);
    client.assert_closed().await;

    let mut client = Client::connect(&server().socket, "mismatch").await;
    let reply = client.call(Request::Get(client.file("x"))).await;
    assert_eq!(error_kind(&reply), ErrorKind::ProtocolMismatch);
    client.assert_closed().await;
}

#[tokio::test]
async fn stray_or_oversized_frames_close_the_connection_and_leave_no_temp_file() {
    for stray in [Request::PutEnd, Request::PutChunk(vec![1]), Request::Cancel] {
        let mut client = connected("stray").await;
        client.send(stray).await;
        client.assert_closed().await;
    }

    let mut client = connected("stray").await;
    client.send(client.put_start("up.bin")).await;
    client.send(Request::PutChunk(vec![1; 10])).await;
    client
        .send(Request::PutChunk(vec![0; MAX_CHUNK_LEN + 1]))
        .await;
    client.assert_closed().await;

    // An upload interrupted by another request is abandoned too.
    let mut client = connected("stray").await;
    client.send(client.put_start("up2.bin")).await;
    client.send(Request::Status).await;
    client.assert_closed().await;

    // An upload whose peer goes away is abandoned.
    let mut client = connected("stray").await;
    client.send(client.put_start("up3.bin")).await;
    client.send(Request::PutChunk(vec![1; 10])).await;
    drop(client);

    // Temp files are removed on the blocking pool; give it a moment.
    let base = server().workspaces.join("stray");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Uploads are gathered in memory first: an abandoned small one may never even
        // have created the workspace.
        let left: Vec<_> = match std::fs::read_dir(&base) {
            Ok(entries) => entries.map(|entry| entry.unwrap().file_name()).collect(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => panic!("{error}"),
        };
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: {left:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_refused_upload_still_reads_its_chunks_and_answers_once() {
    let mut client = connected("refused").await;
    client.send(client.put_start("a/../../b")).await;
    for _ in 0..3 {
        client.send(Request::PutChunk(vec![9; 1000])).await;
    }
    let reply = client.call(Request::PutEnd).await;
    assert_eq!(error_kind(&reply), ErrorKind::InvalidPath);
    assert!(matches!(client.put("ok", b"ok").await, Reply::Saved(_)));
}

#[tokio::test]
async fn a_peer_the_policy_refuses_is_closed_before_anything_is_read() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: connecting as another uid needs root");
        return;
    }
    // Let anyone reach the socket file: the peer check is what must refuse.
    std::fs::set_permissions(&server().socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    // nobody (65534) is neither root, nor us, nor in an allowed group: it connects, sends
    // a hello, and must see the connection closed with no reply. Its answer comes by stdout,
    // not its exit status: the runner's reaper may reap it first.
    let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
try:
    s.sendall(bytes([0,0,0,17, 0,0,0,0, 1,0,0,0, 1,0,0,0,0,0,0,0]) + b"x")
except BrokenPipeError:
    pass
s.settimeout(10)
try:
    print(len(s.recv(100)))
except ConnectionResetError:
    print(0)
"#;
    let socket = server().socket.clone();
    let stdout = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(script)
            .arg(socket)
            .uid(65534)
            .gid(65534)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = String::new();
        let read = child
            .stdout
            .take()
            .map(|mut out| out.read_to_string(&mut stdout));
        // ECHILD when the reaper was first; either way the child is gone.
        let _ = child.wait();
        read.unwrap().unwrap();
        stdout
    })
    .await
    .unwrap();
    assert_eq!(stdout.trim(), "0", "bytes the refused peer received");
    // We, as root, are still served.
    let mut client = connected("refusal").await;
    assert!(matches!(client.put("ok", b"ok").await, Reply::Saved(_)));
}

#[tokio::test]
async fn a_job_streams_its_output_and_the_connection_goes_on() {
    let mut client = connected("job").await;
    match client.call(Request::Status).await {
        Reply::Status(status) => assert_eq!(status.max_concurrent_jobs, 4),
        other => panic!("expected a status, got {other:?}"),
    }
    client
        .send(shell(
            &client,
            "service-test-1",
            "echo hello; echo oops >&2; exit 3",
        ))
        .await;
    let mut stdout = Vec::new();
    let outcome = loop {
        match client.recv().await.expect("closed during a job") {
            Reply::Started(_) => {}
            Reply::Output(chunk) if chunk.stream == Stream::Stdout => {
                stdout.extend_from_slice(&chunk.data);
            }
            Reply::Output(_) => {}
            Reply::Finished(outcome) => break outcome,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(stdout, b"hello\n");
    assert_eq!(outcome.status, ExitStatus::Exited(3));
    assert!(matches!(client.put("after", b"x").await, Reply::Saved(_)));
}

#[tokio::test]
async fn cancel_kills_the_job_and_closes_the_connection() {
    let mut client = connected("cancel").await;
    client
        .send(shell(&client, "service-test-2", "echo started; sleep 60"))
        .await;
    // Wait for the job to exist before cancelling it.
    loop {
        match client.recv().await.expect("closed during a job") {
            Reply::Output(_) => break,
            Reply::Started(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let began = Instant::now();
    client.send(Request::Cancel).await;
    while client.recv().await.is_some() {}
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "{:?}",
        began.elapsed()
    );
}

#[tokio::test]
async fn a_frame_sent_while_a_job_runs_cancels_it_and_closes_the_connection() {
    let mut client = connected("violation").await;
    client
        .send(shell(&client, "service-test-3", "sleep 60"))
        .await;
    client.send(Request::Status).await;
    let began = Instant::now();
    while client.recv().await.is_some() {}
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "{:?}",
        began.elapsed()
    );
}
