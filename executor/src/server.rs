//! The accept loop and the conversation on each connection (see `nox_protocol` for the
//! frames).
//!
//! What holds here:
//! - A peer the policy refuses ([`crate::peer`]) is logged and dropped before one byte is
//!   read from it.
//! - The first frame is a hello of our protocol version, or the peer gets
//!   `Error(ProtocolMismatch)` and the connection closes.
//! - A malformed, oversized or unexpected frame closes that connection and nothing else;
//!   a failed request (bad path, missing file) is answered by `Error` and the connection
//!   goes on.
//! - A job is cancelled (killed by the runner) when its connection ends, fails, or sends
//!   `Cancel`; a cancelled conversation has no well-defined end, so that connection closes
//!   once the job has stopped.
//! - File operations are blocking syscalls and run on the blocking pool.
//! - On shutdown: stop accepting, close idle connections, let running jobs finish.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use nox_protocol::{
    CodecError, ErrorKind, ExecutorCodec, FileMeta, FileRef, Hello, JobSpec, ListRequest,
    MAX_CHUNK_LEN, PROTOCOL_VERSION, PathError, PutStart, RelPath, Reply, Request, Saved,
    WireError,
};
use thiserror::Error;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ExecutorConfig;
use crate::error::ExecutorError;
use crate::job::JobRunner;
use crate::peer::{PeerCredentials, PeerPolicy};
use crate::workspace::{Upload, WorkspaceError, Workspaces};
use nox_protocol::error_chain;

/// Pause after a failed `accept` (EMFILE and the like) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Replies a running job may have queued before the connection sends them.
const JOB_REPLY_QUEUE: usize = 32;

/// Why a connection was closed early. Logged once per connection; never sent.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error("could not read a frame")]
    Read(#[source] CodecError),
    #[error("could not send a reply")]
    Send(#[source] CodecError),
    #[error("the peer speaks protocol version {theirs}, this executor version {PROTOCOL_VERSION}")]
    VersionMismatch { theirs: u32 },
    #[error("unexpected {received} frame {context}")]
    UnexpectedFrame {
        received: &'static str,
        context: &'static str,
    },
    #[error("upload chunk of {len} bytes is larger than {MAX_CHUNK_LEN}")]
    ChunkTooLarge { len: usize },
    #[error("the peer closed the connection during an upload")]
    UploadAbandoned,
    #[error("a file operation task failed")]
    Blocking(#[source] tokio::task::JoinError),
}

/// One failed request, answered with `Error` on a connection that goes on.
#[derive(Debug, Error)]
enum RequestError {
    #[error("invalid path {path:?}")]
    InvalidPath {
        path: String,
        #[source]
        source: PathError,
    },
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error("`{path}` changed while it was being read")]
    FileShrank { path: String },
    #[error("the job ended without an outcome")]
    NoOutcome,
}

impl RequestError {
    fn to_wire(&self) -> WireError {
        let kind = match self {
            RequestError::InvalidPath { .. } => ErrorKind::InvalidPath,
            RequestError::Workspace(error) => error.kind(),
            RequestError::FileShrank { .. } => ErrorKind::Conflict,
            RequestError::NoOutcome => ErrorKind::Internal,
        };
        WireError::from_error(kind, self)
    }
}

/// What every connection shares.
#[derive(Debug)]
struct Shared {
    policy: PeerPolicy,
    runner: Arc<JobRunner>,
    workspaces: Arc<Workspaces>,
}

/// Accept connections on `listener` until `shutdown` completes; then stop accepting, close
/// idle connections, wait for running jobs to end, and return.
pub async fn serve(
    listener: tokio::net::UnixListener,
    config: &ExecutorConfig,
    runner: Arc<JobRunner>,
    workspaces: Arc<Workspaces>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ExecutorError> {
    let shared = Arc::new(Shared {
        policy: PeerPolicy::from_config(config),
        runner,
        workspaces,
    });
    let connections = TaskTracker::new();
    let closing = CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut next_id: u64 = 0;
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                next_id += 1;
                let task = connection(stream, next_id, Arc::clone(&shared), closing.clone());
                connections.spawn(task);
            }
            Err(error) => {
                // Out of descriptors or memory: keep serving the connections we have.
                tracing::warn!(%error, "could not accept a connection; retrying shortly");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
    drop(listener);
    tracing::info!(
        connections = connections.len(),
        "stopped accepting; waiting for running jobs to end"
    );
    closing.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// One connection, from the peer check to the close.
async fn connection(stream: UnixStream, id: u64, shared: Arc<Shared>, closing: CancellationToken) {
    let peer = match crate::peer::peer_credentials(&stream) {
        Ok(peer) => peer,
        Err(error) => {
            tracing::warn!(
                connection = id,
                error = error_chain(&error),
                "refused a connection"
            );
            return;
        }
    };
    if !shared.policy.allows(&peer) {
        tracing::warn!(
            connection = id,
            uid = peer.uid,
            gid = peer.gid,
            pid = peer.pid,
            "refused a connection: peer not allowed"
        );
        return;
    }
    tracing::debug!(
        connection = id,
        uid = peer.uid,
        pid = peer.pid,
        "connection accepted"
    );
    let mut conversation = Conversation {
        framed: Framed::new(stream, ExecutorCodec::new()),
        shared,
        closing,
    };
    match conversation.run().await {
        Ok(()) => tracing::debug!(connection = id, "connection closed"),
        Err(error) => log_failure(id, &peer, &error),
    }
}

fn log_failure(id: u64, peer: &PeerCredentials, error: &ServerError) {
    macro_rules! closed {
        ($level:ident, $message:literal) => {
            tracing::$level!(
                connection = id,
                uid = peer.uid,
                pid = peer.pid,
                error = error_chain(error),
                $message
            )
        };
    }
    // A frontend drops a job's connection when its client goes away mid-job: routine, not
    // a warning (an operator's warnings stay for what is wrong).
    if error.peer_went_away() {
        closed!(info, "the peer closed a connection mid-request");
    } else {
        closed!(warn, "closed a connection");
    }
}

impl ServerError {
    /// The peer closed or reset the connection: nothing it sent was wrong.
    fn peer_went_away(&self) -> bool {
        match self {
            ServerError::Read(CodecError::Io(error)) | ServerError::Send(CodecError::Io(error)) => {
                matches!(
                    error.kind(),
                    std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::UnexpectedEof
                )
            }
            ServerError::UploadAbandoned => true,
            _ => false,
        }
    }
}

/// How a job's part of the conversation ended.
#[derive(Debug)]
enum JobEnd {
    /// `Finished` or `Error` was forwarded: the connection goes on.
    Finished,
    /// The runner stopped without a final reply.
    RunnerGone,
    /// The peer sent `Cancel`.
    Cancelled,
    /// The peer closed the connection.
    PeerGone,
    /// A frame or the socket failed.
    Failed(ServerError),
}

struct Conversation {
    framed: Framed<UnixStream, ExecutorCodec>,
    shared: Arc<Shared>,
    closing: CancellationToken,
}

impl Conversation {
    async fn run(&mut self) -> Result<(), ServerError> {
        if !self.handshake().await? {
            return Ok(());
        }
        loop {
            // Idle between requests: this is where shutdown closes the connection.
            let frame = tokio::select! {
                biased;
                () = self.closing.cancelled() => return Ok(()),
                frame = self.framed.next() => frame,
            };
            let request = match frame {
                None => return Ok(()),
                Some(frame) => frame.map_err(ServerError::Read)?,
            };
            match request {
                Request::Run(spec) => {
                    if !self.run_job(spec).await? {
                        return Ok(());
                    }
                }
                Request::Status => {
                    let status = self.shared.runner.status();
                    self.send(Reply::Status(status)).await?;
                }
                Request::PutStart(start) => self.upload(start).await?,
                Request::Get(file) => self.download(file).await?,
                Request::List(request) => self.list(request).await?,
                Request::Delete(file) => self.delete(file).await?,
                other @ (Request::Hello(_)
                | Request::PutChunk(_)
                | Request::PutEnd
                | Request::Cancel) => {
                    return Err(unexpected(&other, "between requests"));
                }
            }
        }
    }

    /// The hello exchange. `Ok(false)`: the peer left (or we are shutting down) before it.
    async fn handshake(&mut self) -> Result<bool, ServerError> {
        let frame = tokio::select! {
            biased;
            () = self.closing.cancelled() => return Ok(false),
            frame = self.framed.next() => frame,
        };
        let mismatch =
            |message: String| Reply::Error(WireError::new(ErrorKind::ProtocolMismatch, message));
        match frame {
            None => Ok(false),
            Some(Ok(Request::Hello(hello))) if hello.version == PROTOCOL_VERSION => {
                self.send(Reply::Hello(Hello::new("nox-executor"))).await?;
                Ok(true)
            }
            Some(Ok(Request::Hello(hello))) => {
                let message = format!(
                    "protocol version {} is not supported; this executor speaks version {PROTOCOL_VERSION}",
                    hello.version
                );
                let _ = self.send(mismatch(message)).await;
                Err(ServerError::VersionMismatch {
                    theirs: hello.version,
                })
            }
            Some(Ok(other)) => {
                let _ = self
                    .send(mismatch("the first frame must be a hello".into()))
                    .await;
                Err(unexpected(&other, "before the hello"))
            }
            Some(Err(error)) => {
                let message = "the first frame is not a hello this executor understands";
                let _ = self.send(mismatch(message.into())).await;
                Err(ServerError::Read(error))
            }
        }
    }

    /// Run one job, forwarding its replies. `Ok(false)`: close the connection now.
    async fn run_job(&mut self, spec: JobSpec) -> Result<bool, ServerError> {
        let (replies, mut receiver) = mpsc::channel::<Reply>(JOB_REPLY_QUEUE);
        let cancel = CancellationToken::new();
        let job = {
            let runner = Arc::clone(&self.shared.runner);
            let cancel = cancel.clone();
            tokio::spawn(async move { runner.run(spec, replies, cancel).await })
        };
        let end = self.follow_job(&mut receiver).await;
        if !matches!(end, JobEnd::Finished | JobEnd::RunnerGone) {
            cancel.cancel();
        }
        drop(receiver);
        // Waited for in every case: a job never outlives its connection's task, so
        // shutdown waits for it, and a cancelled job is gone before the connection closes.
        let joined = job.await;
        if let Err(error) = &joined {
            tracing::error!(error = error_chain(error), "the job runner task failed");
        }
        match end {
            JobEnd::Finished => Ok(true),
            JobEnd::RunnerGone => {
                self.send(Reply::Error(RequestError::NoOutcome.to_wire()))
                    .await?;
                Ok(true)
            }
            JobEnd::Cancelled | JobEnd::PeerGone => Ok(false),
            JobEnd::Failed(error) => Err(error),
        }
    }

    async fn follow_job(&mut self, receiver: &mut mpsc::Receiver<Reply>) -> JobEnd {
        loop {
            tokio::select! {
                reply = receiver.recv() => {
                    let Some(mut reply) = reply else {
                        return JobEnd::RunnerGone;
                    };
                    // What is queued behind it goes out in the same write (a job's
                    // `Started` and `Finished`, most often): one wake-up of the frontend.
                    let last = loop {
                        let last = matches!(reply, Reply::Finished(_) | Reply::Error(_));
                        if let Err(error) = self.framed.feed(reply).await {
                            return JobEnd::Failed(ServerError::Send(error));
                        }
                        if last {
                            break true;
                        }
                        match receiver.try_recv() {
                            Ok(next) => reply = next,
                            Err(_) => break false,
                        }
                    };
                    if let Err(error) = self.framed.flush().await {
                        return JobEnd::Failed(ServerError::Send(error));
                    }
                    if last {
                        return JobEnd::Finished;
                    }
                }
                frame = self.framed.next() => match frame {
                    Some(Ok(Request::Cancel)) => return JobEnd::Cancelled,
                    None => return JobEnd::PeerGone,
                    Some(Err(error)) => return JobEnd::Failed(ServerError::Read(error)),
                    Some(Ok(other)) => {
                        return JobEnd::Failed(unexpected(&other, "while a job runs"));
                    }
                },
            }
        }
    }

    /// `PutStart`, then `PutChunk`*, then `PutEnd`, answered once, after `PutEnd`: a
    /// refused upload still reads its chunks, so the connection stays in step.
    ///
    /// Data is gathered in memory up to [`UPLOAD_FLUSH`] before it touches the disk, so a
    /// small upload costs one trip to a blocking thread (open, write, rename) and a large
    /// one a trip per [`UPLOAD_FLUSH`]; memory per upload stays bounded by it.
    async fn upload(&mut self, start: PutStart) -> Result<(), ServerError> {
        let workspaces = Arc::clone(&self.shared.workspaces);
        let mut state = match parse_path(&start.path) {
            Ok(path) => Ok(Pending {
                workspace: start.workspace,
                path,
                upload: None,
                buffer: Vec::new(),
            }),
            Err(error) => Err(error),
        };
        loop {
            let request = match self.framed.next().await {
                Some(Ok(request)) => request,
                Some(Err(error)) => {
                    discard(state);
                    return Err(ServerError::Read(error));
                }
                None => {
                    discard(state);
                    return Err(ServerError::UploadAbandoned);
                }
            };
            match request {
                Request::PutChunk(data) if data.len() > MAX_CHUNK_LEN => {
                    discard(state);
                    return Err(ServerError::ChunkTooLarge { len: data.len() });
                }
                Request::PutChunk(data) => {
                    if let Ok(pending) = &mut state {
                        pending.buffer.extend_from_slice(&data);
                        if pending.buffer.len() >= UPLOAD_FLUSH
                            && let Ok(mut pending) = state
                        {
                            let workspaces = Arc::clone(&workspaces);
                            state = blocking(move || {
                                pending.flush(&workspaces)?;
                                Ok(pending)
                            })
                            .await?;
                        }
                    }
                }
                Request::PutEnd => {
                    let saved = match state {
                        Ok(mut pending) => {
                            let workspaces = Arc::clone(&workspaces);
                            blocking(move || {
                                pending.flush(&workspaces)?;
                                let bytes = match pending.upload.take() {
                                    Some(upload) => upload.commit()?,
                                    None => 0,
                                };
                                Ok(Saved {
                                    path: pending.path.as_str().to_owned(),
                                    bytes,
                                })
                            })
                            .await?
                        }
                        Err(error) => Err(error),
                    };
                    return self.answer(saved, Reply::Saved).await;
                }
                other => {
                    discard(state);
                    return Err(unexpected(&other, "during an upload"));
                }
            }
        }
    }

    /// `FileStart`, `FileChunk`*, `FileEnd`; or `Error`, at the start or in the middle.
    async fn download(&mut self, file: FileRef) -> Result<(), ServerError> {
        let workspaces = Arc::clone(&self.shared.workspaces);
        let opened = blocking(move || {
            let path = parse_path(&file.path)?;
            let (handle, size) = workspaces.open_read(&file.workspace, &path)?;
            Ok::<_, RequestError>((handle, size, path))
        })
        .await?;
        let (mut handle, size, path) = match opened {
            Ok(opened) => opened,
            Err(error) => return self.send(Reply::Error(error.to_wire())).await,
        };
        let shown = path.as_str().to_owned();
        self.send(Reply::FileStart(FileMeta {
            path: shown.clone(),
            size,
        }))
        .await?;
        // Exactly `size` bytes: the frontend may have promised that length to its client.
        let mut remaining = size;
        while remaining > 0 {
            let want =
                usize::try_from(remaining).map_or(MAX_CHUNK_LEN, |left| left.min(MAX_CHUNK_LEN));
            let shown_here = shown.clone();
            let (back, chunk) = blocking(move || {
                let chunk = read_chunk(&mut handle, want).map_err(|source| {
                    RequestError::Workspace(WorkspaceError::Read {
                        path: shown_here,
                        source,
                    })
                });
                (handle, chunk)
            })
            .await?;
            handle = back;
            let data = match chunk {
                Ok(data) if data.is_empty() => Err(RequestError::FileShrank {
                    path: shown.clone(),
                }),
                other => other,
            };
            match data {
                Ok(data) => {
                    remaining = remaining.saturating_sub(data.len() as u64);
                    self.send(Reply::FileChunk(data)).await?;
                }
                Err(error) => return self.send(Reply::Error(error.to_wire())).await,
            }
        }
        self.send(Reply::FileEnd).await
    }

    async fn list(&mut self, request: ListRequest) -> Result<(), ServerError> {
        let workspaces = Arc::clone(&self.shared.workspaces);
        let listing = blocking(move || {
            let prefix = RelPath::parse_prefix(&request.prefix).map_err(|source| {
                RequestError::InvalidPath {
                    path: request.prefix.clone(),
                    source,
                }
            })?;
            Ok(workspaces.list(&request.workspace, prefix.as_ref())?)
        })
        .await?;
        self.answer(listing, Reply::Listing).await
    }

    async fn delete(&mut self, file: FileRef) -> Result<(), ServerError> {
        let workspaces = Arc::clone(&self.shared.workspaces);
        let deleted = blocking(move || {
            let path = parse_path(&file.path)?;
            workspaces.delete(&file.workspace, &path)?;
            Ok(FileRef {
                workspace: file.workspace,
                path: path.as_str().to_owned(),
            })
        })
        .await?;
        self.answer(deleted, Reply::Deleted).await
    }

    /// Send `reply(value)`, or the error.
    async fn answer<T>(
        &mut self,
        result: Result<T, RequestError>,
        reply: impl FnOnce(T) -> Reply,
    ) -> Result<(), ServerError> {
        let message = match result {
            Ok(value) => reply(value),
            Err(error) => Reply::Error(error.to_wire()),
        };
        self.send(message).await
    }

    async fn send(&mut self, reply: Reply) -> Result<(), ServerError> {
        self.framed.send(reply).await.map_err(ServerError::Send)
    }
}

fn parse_path(raw: &str) -> Result<RelPath, RequestError> {
    RelPath::parse(raw).map_err(|source| RequestError::InvalidPath {
        path: raw.to_owned(),
        source,
    })
}

/// Run blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ServerError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(ServerError::Blocking)
}

/// Gathered bytes beyond which an upload is written out.
const UPLOAD_FLUSH: usize = 1024 * 1024;

/// An upload being received: gathered in memory, written out in large pieces.
#[derive(Debug)]
struct Pending {
    workspace: String,
    path: RelPath,
    /// Opened at the first write-out.
    upload: Option<Upload>,
    buffer: Vec<u8>,
}

impl Pending {
    /// Write what was gathered, opening the upload first if needed. Blocking.
    fn flush(&mut self, workspaces: &Workspaces) -> Result<(), RequestError> {
        let upload = match &mut self.upload {
            Some(upload) => upload,
            None => self
                .upload
                .insert(workspaces.begin_upload(&self.workspace, &self.path)?),
        };
        upload.write(&self.buffer)?;
        self.buffer.clear();
        Ok(())
    }
}

/// Drop an unfinished upload (which unlinks its temp file) on the blocking pool.
fn discard<E: Send + 'static>(state: Result<Pending, E>) {
    if let Ok(Pending {
        upload: Some(upload),
        ..
    }) = state
    {
        drop(tokio::task::spawn_blocking(move || drop(upload)));
    }
}

/// Up to `want` bytes; fewer only at the end of the file.
fn read_chunk(file: &mut std::fs::File, want: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut data = Vec::with_capacity(want);
    file.by_ref().take(want as u64).read_to_end(&mut data)?;
    Ok(data)
}

fn unexpected(request: &Request, context: &'static str) -> ServerError {
    ServerError::UnexpectedFrame {
        received: request_name(request),
        context,
    }
}

fn request_name(request: &Request) -> &'static str {
    match request {
        Request::Hello(_) => "Hello",
        Request::Run(_) => "Run",
        Request::Status => "Status",
        Request::PutStart(_) => "PutStart",
        Request::PutChunk(_) => "PutChunk",
        Request::PutEnd => "PutEnd",
        Request::Get(_) => "Get",
        Request::List(_) => "List",
        Request::Delete(_) => "Delete",
        Request::Cancel => "Cancel",
    }
}

#[cfg(test)]
mod tests {
    use super::{CodecError, ServerError};
    use std::io::ErrorKind;

    #[test]
    fn a_peer_that_went_away_is_told_apart_from_a_connection_that_went_wrong() {
        let io = |kind: ErrorKind| CodecError::Io(std::io::Error::from(kind));
        assert!(ServerError::Send(io(ErrorKind::BrokenPipe)).peer_went_away());
        assert!(ServerError::Read(io(ErrorKind::ConnectionReset)).peer_went_away());
        assert!(ServerError::UploadAbandoned.peer_went_away());
        assert!(!ServerError::Read(CodecError::FrameTooLarge).peer_went_away());
        assert!(!ServerError::Read(io(ErrorKind::PermissionDenied)).peer_went_away());
        assert!(!ServerError::VersionMismatch { theirs: 0 }.peer_went_away());
        let unexpected = ServerError::UnexpectedFrame {
            received: "Hello",
            context: "while a job runs",
        };
        assert!(!unexpected.peer_went_away());
    }
}
