//! Graceful shutdown, in a process of its own (one job runner per process).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::time::Duration;

use common::{Client, PATIENCE, test_config};
use nox_protocol::{ExitStatus, JobSpec, LimitRequest, Program, Reply, Request, Stream};
use tokio::net::UnixStream;
use tokio::sync::oneshot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_connections_lets_running_jobs_finish_and_returns() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let socket = config.socket.clone();
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(nox_executor::run(listener, config, async move {
        let _ = stopped.await;
    }));

    let mut idle = Client::hello(&socket, "default").await;
    let mut busy = Client::hello(&socket, "default").await;
    busy.send(Request::Run(JobSpec {
        job_id: "shutdown-test".into(),
        workspace: "default".into(),
        program: Program::Shell {
            command: "echo begun; sleep 1; echo done".into(),
        },
        stdin: Vec::new(),
        limits: LimitRequest::default(),
    }))
    .await;
    loop {
        match busy.recv().await.expect("closed during a job") {
            Reply::Output(_) => break,
            Reply::Started(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    stop.send(()).unwrap();
    idle.assert_closed().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        UnixStream::connect(&socket).await.is_err(),
        "still accepting"
    );

    // The running job ends on its own and its connection gets the whole story.
    let mut stdout = b"begun\n".to_vec();
    let outcome = loop {
        match busy.recv().await.expect("closed during a job") {
            Reply::Output(chunk) if chunk.stream == Stream::Stdout => {
                stdout.extend_from_slice(&chunk.data);
            }
            Reply::Finished(outcome) => break outcome,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(outcome.status, ExitStatus::Exited(0));
    assert_eq!(stdout, b"begun\ndone\n");
    busy.assert_closed().await;

    let result = tokio::time::timeout(PATIENCE, server)
        .await
        .unwrap()
        .unwrap();
    result.unwrap();
}
