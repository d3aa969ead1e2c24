//! The client side of the executor socket: connect, say hello, keep idle connections for
//! the next request, and notice an executor that went away.
//!
//! A connection goes back to the pool only after a complete exchange (the final reply of its
//! request was read). One that is dropped half-way is closed, which tells the executor to
//! abandon what it was doing (discard an upload, kill a job). A pooled connection may have
//! been closed by an executor restart; the first send or read on it then fails before any
//! reply, and the request is retried once on a fresh connection.

use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use nox_protocol::{CodecError, FrontendCodec, Hello, PROTOCOL_VERSION, Reply, Request, WireError};
use thiserror::Error;
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

/// Idle connections kept for reuse.
pub const MAX_IDLE_CONNECTIONS: usize = 64;

/// What went wrong talking to the executor.
#[derive(Debug, Error)]
pub enum ExecutorError {
    #[error("cannot connect to the executor at {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the executor at {path} did not answer in time")]
    ConnectTimeout { path: PathBuf },
    #[error("the handshake with the executor failed")]
    Handshake(#[source] CodecError),
    #[error("the executor closed the connection during the handshake")]
    HandshakeClosed,
    #[error("the executor speaks protocol version {theirs}, this frontend speaks {ours}")]
    VersionMismatch { theirs: u32, ours: u32 },
    #[error("the executor did not answer in time")]
    ReplyTimeout,
    #[error("cannot send to the executor")]
    Send(#[source] CodecError),
    #[error("cannot read the executor's reply")]
    Receive(#[source] CodecError),
    #[error("the executor closed the connection")]
    Closed,
    #[error("unexpected reply from the executor: expected {expected}, got {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("the executor refused the request")]
    Refused(#[source] WireError),
}

impl ExecutorError {
    /// `got` instead of the `expected` reply; an error reply is a refusal, not a surprise.
    pub fn unexpected(expected: &'static str, got: Reply) -> Self {
        match got {
            Reply::Error(wire) => ExecutorError::Refused(wire),
            other => ExecutorError::Unexpected {
                expected,
                got: reply_name(&other),
            },
        }
    }

    /// Whether a pooled connection failing this way was simply stale.
    fn means_stale(&self) -> bool {
        matches!(
            self,
            ExecutorError::Send(_)
                | ExecutorError::Closed
                | ExecutorError::Receive(CodecError::Io(_))
        )
    }
}

/// A reply's variant name, for messages and logs.
pub fn reply_name(reply: &Reply) -> &'static str {
    match reply {
        Reply::Hello(_) => "Hello",
        Reply::Started(_) => "Started",
        Reply::Output(_) => "Output",
        Reply::Finished(_) => "Finished",
        Reply::Status(_) => "Status",
        Reply::Saved(_) => "Saved",
        Reply::FileStart(_) => "FileStart",
        Reply::FileChunk(_) => "FileChunk",
        Reply::FileEnd => "FileEnd",
        Reply::Listing(_) => "Listing",
        Reply::Deleted(_) => "Deleted",
        Reply::Error(_) => "Error",
    }
}

/// One connection that has completed the handshake.
#[derive(Debug)]
pub struct Connection {
    framed: Framed<UnixStream, FrontendCodec>,
    reused: bool,
}

impl Connection {
    /// Send one frame.
    pub async fn send(&mut self, request: Request) -> Result<(), ExecutorError> {
        self.framed.send(request).await.map_err(ExecutorError::Send)
    }

    /// Read the next frame.
    pub async fn recv(&mut self) -> Result<Reply, ExecutorError> {
        match self.framed.next().await {
            Some(Ok(reply)) => Ok(reply),
            Some(Err(error)) => Err(ExecutorError::Receive(error)),
            None => Err(ExecutorError::Closed),
        }
    }

    /// An idle connection is usable if the executor has neither closed it nor sent anything
    /// unasked.
    fn looks_idle(&self) -> bool {
        if !self.framed.read_buffer().is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(
            self.framed.get_ref().try_read(&mut probe),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock
        )
    }
}

/// Connections to one executor socket.
#[derive(Debug)]
pub struct ExecutorClient {
    socket: PathBuf,
    connect_timeout: Duration,
    idle: Mutex<Vec<Connection>>,
}

impl ExecutorClient {
    pub fn new(socket: PathBuf, connect_timeout: Duration) -> Self {
        ExecutorClient {
            socket,
            connect_timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// A new connection, handshake done.
    ///
    /// Connecting and the handshake together take at most the connect timeout: a socket
    /// that accepts but nobody answers (an executor that failed to start behind a listening
    /// socket) is as unavailable as a missing one, and the client hears so quickly.
    pub async fn connect(&self) -> Result<Connection, ExecutorError> {
        tokio::time::timeout(self.connect_timeout, self.connect_and_greet())
            .await
            .map_err(|_| ExecutorError::ConnectTimeout {
                path: self.socket.clone(),
            })?
    }

    async fn connect_and_greet(&self) -> Result<Connection, ExecutorError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ExecutorError::Connect {
                    path: self.socket.clone(),
                    source,
                })?;
        let mut framed = Framed::new(stream, FrontendCodec::new());
        let handshake = async {
            framed
                .send(Request::Hello(Hello::new("nox-frontend")))
                .await
                .map_err(ExecutorError::Handshake)?;
            match framed.next().await {
                Some(Ok(reply)) => Ok(reply),
                Some(Err(error)) => Err(ExecutorError::Handshake(error)),
                None => Err(ExecutorError::HandshakeClosed),
            }
        };
        let reply = handshake.await?;
        match reply {
            Reply::Hello(hello) if hello.version == PROTOCOL_VERSION => Ok(Connection {
                framed,
                reused: false,
            }),
            Reply::Hello(hello) => Err(ExecutorError::VersionMismatch {
                theirs: hello.version,
                ours: PROTOCOL_VERSION,
            }),
            other => Err(ExecutorError::unexpected("Hello", other)),
        }
    }

    /// An idle connection if a usable one is pooled, else a new one.
    async fn checkout(&self) -> Result<Connection, ExecutorError> {
        loop {
            let pooled = match self.idle.lock() {
                Ok(mut idle) => idle.pop(),
                Err(_) => None,
            };
            match pooled {
                Some(connection) if connection.looks_idle() => return Ok(connection),
                Some(_) => continue,
                None => return self.connect().await,
            }
        }
    }

    /// Return a connection whose last exchange is complete.
    pub fn release(&self, mut connection: Connection) {
        connection.reused = true;
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE_CONNECTIONS
        {
            idle.push(connection);
        }
    }

    /// Send the first frame of a request whose later frames the caller streams (an upload).
    /// A stale pooled connection is replaced once.
    pub async fn open(&self, first: Request) -> Result<Connection, ExecutorError> {
        let mut connection = self.checkout().await?;
        match connection.send(first.clone()).await {
            Ok(()) => Ok(connection),
            Err(error) if connection.reused && error.means_stale() => {
                let mut connection = self.connect().await?;
                connection.send(first).await?;
                Ok(connection)
            }
            Err(error) => Err(error),
        }
    }

    /// Send `request` and read its first reply. A stale pooled connection is replaced once;
    /// the request is sent again only if no reply at all came on the stale one.
    pub async fn call(&self, request: Request) -> Result<(Connection, Reply), ExecutorError> {
        let mut connection = self.checkout().await?;
        let attempt = exchange(&mut connection, request.clone()).await;
        match attempt {
            Ok(reply) => Ok((connection, reply)),
            Err(error) if connection.reused && error.means_stale() => {
                let mut connection = self.connect().await?;
                let reply = exchange(&mut connection, request).await?;
                Ok((connection, reply))
            }
            Err(error) => Err(error),
        }
    }

    /// A request answered by exactly one reply; the connection is pooled again unless the
    /// reply was unexpected. An error reply becomes [`ExecutorError::Refused`].
    pub async fn call_once(
        &self,
        request: Request,
        expected: &'static str,
        accept: impl FnOnce(&Reply) -> bool,
    ) -> Result<Reply, ExecutorError> {
        let (connection, reply) = self.call(request).await?;
        if accept(&reply) {
            self.release(connection);
            return Ok(reply);
        }
        if matches!(reply, Reply::Error(_)) {
            self.release(connection);
        }
        Err(ExecutorError::unexpected(expected, reply))
    }
}

async fn exchange(connection: &mut Connection, request: Request) -> Result<Reply, ExecutorError> {
    connection.send(request).await?;
    connection.recv().await
}
