//! A frontend-like client of the executor, and a test configuration.

// Shared by several test crates, each using a part of it; helpers unwrap like tests do.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use nox_executor::ExecutorConfig;
use nox_protocol::{
    ErrorKind, FileMeta, FileRef, FrontendCodec, Hello, MAX_CHUNK_LEN, PROTOCOL_VERSION, PutStart,
    Reply, Request,
};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

/// How long any single reply may take before the test fails instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A configuration under `dir`, reachable by the sandbox user when we are root.
pub fn test_config(dir: &Path) -> ExecutorConfig {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = dir.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o711)).unwrap();
    ExecutorConfig {
        socket: dir.join("executor.sock"),
        state_dir: state.clone(),
        workspace_root: state.join("workspaces"),
        max_concurrent_jobs: 4,
        ..ExecutorConfig::default()
    }
}

/// One connection, speaking for one workspace.
pub struct Client {
    pub framed: Framed<UnixStream, FrontendCodec>,
    pub workspace: String,
}

impl Client {
    /// Connected, no hello yet.
    pub async fn connect(socket: &Path, workspace: &str) -> Client {
        let stream = UnixStream::connect(socket).await.unwrap();
        Client {
            framed: Framed::new(stream, FrontendCodec::new()),
            workspace: workspace.to_owned(),
        }
    }

    /// Connected and past the hello.
    pub async fn hello(socket: &Path, workspace: &str) -> Client {
        let mut client = Client::connect(socket, workspace).await;
        match client.call(Request::Hello(Hello::new("nox-test"))).await {
            Reply::Hello(hello) => assert_eq!(hello.version, PROTOCOL_VERSION),
            other => panic!("expected a hello, got {other:?}"),
        }
        client
    }

    pub async fn send(&mut self, request: Request) {
        self.framed.send(request).await.unwrap();
    }

    /// The next reply, or `None` when the executor closed the connection.
    pub async fn recv(&mut self) -> Option<Reply> {
        match tokio::time::timeout(PATIENCE, self.framed.next()).await {
            Ok(Some(Ok(reply))) => Some(reply),
            Ok(Some(Err(_)) | None) => None,
            Err(_) => panic!("no reply within {PATIENCE:?}"),
        }
    }

    pub async fn call(&mut self, request: Request) -> Reply {
        self.send(request).await;
        self.recv()
            .await
            .expect("connection closed instead of a reply")
    }

    pub async fn assert_closed(&mut self) {
        if let Some(reply) = self.recv().await {
            panic!("expected the connection to close, got {reply:?}");
        }
    }

    pub fn file(&self, path: &str) -> FileRef {
        FileRef {
            workspace: self.workspace.clone(),
            path: path.into(),
        }
    }

    pub fn put_start(&self, path: &str) -> Request {
        Request::PutStart(PutStart {
            workspace: self.workspace.clone(),
            path: path.into(),
        })
    }

    pub async fn put(&mut self, path: &str, data: &[u8]) -> Reply {
        self.send(self.put_start(path)).await;
        for chunk in data.chunks(MAX_CHUNK_LEN) {
            self.send(Request::PutChunk(chunk.to_vec())).await;
        }
        self.call(Request::PutEnd).await
    }

    /// `Ok(bytes)`, or the error reply.
    pub async fn get(&mut self, path: &str) -> Result<Vec<u8>, Reply> {
        let size = match self.call(Request::Get(self.file(path))).await {
            Reply::FileStart(FileMeta { size, .. }) => size,
            other => return Err(other),
        };
        let mut data = Vec::new();
        loop {
            match self.recv().await.expect("closed during a download") {
                Reply::FileChunk(chunk) => {
                    assert!(chunk.len() <= MAX_CHUNK_LEN);
                    data.extend_from_slice(&chunk);
                }
                Reply::FileEnd => break,
                other => return Err(other),
            }
        }
        assert_eq!(data.len() as u64, size);
        Ok(data)
    }
}

pub fn error_kind(reply: &Reply) -> ErrorKind {
    match reply {
        Reply::Error(error) => error.kind,
        other => panic!("expected an error, got {other:?}"),
    }
}
