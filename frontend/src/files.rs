//! Workspace files: `POST /put` (multipart, the seed's upload), `GET /files` (list) and
//! `GET`/`PUT`/`DELETE /files/{path}`.
//!
//! Uploads and downloads are streamed in frames of at most `MAX_CHUNK_LEN`; nothing holds a
//! whole file in memory. An upload that fails half-way (too large, client gone, malformed)
//! drops its executor connection, which makes the executor discard the partial file. The
//! executor opens every path beneath the workspace and is the authority on paths; the checks
//! here only refuse obviously bad ones early.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use nox_protocol::{FileRef, ListRequest, MAX_CHUNK_LEN, PutStart, RelPath, Reply, Request, Saved};

use crate::AppState;
use crate::api_error::ApiError;
use crate::api_types::{DeletedReply, EntryType, FileEntryBody, FileListing, SavedReply};
use crate::body::{self, Body};
use crate::executor::{Connection, ExecutorError};
use crate::uri::{self, UriError};

/// Room for the multipart framing and small extra fields around the file itself.
const MULTIPART_OVERHEAD: u64 = 1024 * 1024;

fn path_error(error: &UriError) -> ApiError {
    match error {
        UriError::Path(error) => ApiError::invalid_path(error),
        other => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            format!("invalid path: {other}"),
        ),
    }
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
}

fn too_large(limit: u64) -> ApiError {
    ApiError::payload_too_large(format!("the upload is larger than {limit} bytes"))
}

fn saved_response(saved: &Saved) -> Response<Body> {
    body::json(
        StatusCode::OK,
        &SavedReply {
            saved: saved.path.clone(),
            bytes: saved.bytes,
        },
    )
}

/// `POST /put?path=REL`, multipart/form-data with the file in field `f`; other fields are
/// ignored.
pub async fn put_multipart(
    state: Arc<AppState>,
    request: http::Request<Incoming>,
    workspace: &str,
) -> Result<Response<Body>, ApiError> {
    let raw = uri::query_param(request.uri().query(), "path")
        .map_err(|error| path_error(&error))?
        .ok_or_else(|| ApiError::bad_request("missing query parameter `path`"))?;
    let path = RelPath::parse(&raw).map_err(|error| ApiError::invalid_path(&error))?;
    let boundary = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| multer::parse_boundary(value).ok())
        .ok_or_else(|| ApiError::unsupported_media_type("multipart/form-data with a boundary"))?;
    let limit = state.config.max_upload_bytes;
    let whole_limit = limit.saturating_add(MULTIPART_OVERHEAD);
    if declared_length(request.headers()).is_some_and(|length| length > whole_limit) {
        return Err(too_large(limit));
    }
    let constraints =
        multer::Constraints::new().size_limit(multer::SizeLimit::new().whole_stream(whole_limit));
    let mut multipart = multer::Multipart::with_constraints(
        paced(
            request.into_body().into_data_stream(),
            state.config.body_read_timeout_s,
        ),
        boundary,
        constraints,
    );
    loop {
        let field = multipart
            .next_field()
            .await
            .map_err(|error| multipart_error(&error, limit))?;
        match field {
            None => return Err(ApiError::bad_request("missing file field `f`")),
            Some(field) if field.name() == Some("f") => {
                let chunks =
                    field.map(|chunk| chunk.map_err(|error| multipart_error(&error, limit)));
                // The rest of the form is read (and skipped) before the upload is committed:
                // a body that turns out malformed after `f` saves nothing.
                let rest = futures_util::stream::once(async move {
                    loop {
                        match multipart.next_field().await {
                            Ok(Some(_)) => {}
                            Ok(None) => return None,
                            Err(error) => return Some(Err(multipart_error(&error, limit))),
                        }
                    }
                })
                .filter_map(std::future::ready);
                let saved = upload(&state, workspace, &path, chunks.chain(rest)).await?;
                return Ok(saved_response(&saved));
            }
            Some(_) => {} // dropped unread: the parser skips it
        }
    }
}

fn multipart_error(error: &multer::Error, limit: u64) -> ApiError {
    match error {
        multer::Error::StreamSizeExceeded { .. } | multer::Error::FieldSizeExceeded { .. } => {
            too_large(limit)
        }
        multer::Error::StreamReadFailed(_) => {
            ApiError::bad_request("could not read the request body")
        }
        other => ApiError::bad_request(format!("malformed multipart body: {other}")),
    }
}

/// `PUT /files/{path}`: the raw body is the file, whatever its content type.
pub async fn put_raw(
    state: Arc<AppState>,
    request: http::Request<Incoming>,
    workspace: &str,
    path: &RelPath,
) -> Result<Response<Body>, ApiError> {
    let limit = state.config.max_upload_bytes;
    if declared_length(request.headers()).is_some_and(|length| length > limit) {
        return Err(too_large(limit));
    }
    let timeout_s = state.config.body_read_timeout_s;
    let chunks = paced(request.into_body().into_data_stream(), timeout_s).map(move |chunk| {
        chunk.map_err(|error| {
            if error.kind() == std::io::ErrorKind::TimedOut {
                ApiError::body_timeout(timeout_s)
            } else {
                ApiError::bad_request("could not read the request body")
            }
        })
    });
    let saved = upload(&state, workspace, path, chunks).await?;
    Ok(saved_response(&saved))
}

/// Forward `chunks` to the executor as one upload. Any error before `Saved` drops the
/// connection, so the executor discards what it received.
async fn upload<S>(
    state: &AppState,
    workspace: &str,
    path: &RelPath,
    chunks: S,
) -> Result<Saved, ApiError>
where
    S: Stream<Item = Result<Bytes, ApiError>>,
{
    let limit = state.config.max_upload_bytes;
    let start = Request::PutStart(PutStart {
        workspace: workspace.to_owned(),
        path: path.as_str().to_owned(),
    });
    let mut connection = state.executor.open(start).await?;
    let mut chunks = std::pin::pin!(chunks);
    let mut total: u64 = 0;
    loop {
        let next = tokio::select! {
            biased;
            // The executor answers before `PutEnd` only to refuse (bad path, disk full).
            early = connection.recv() => {
                return Err(match early {
                    Ok(reply) => ExecutorError::unexpected("nothing before PutEnd", reply).into(),
                    Err(error) => error.into(),
                });
            }
            next = chunks.next() => next,
        };
        let Some(chunk) = next else { break };
        let chunk = chunk?;
        total = total.saturating_add(chunk.len() as u64);
        if total > limit {
            return Err(too_large(limit));
        }
        for piece in chunk.chunks(MAX_CHUNK_LEN) {
            connection.send(Request::PutChunk(piece.to_vec())).await?;
        }
    }
    connection.send(Request::PutEnd).await?;
    match connection.recv().await? {
        Reply::Saved(saved) => {
            state.executor.release(connection);
            Ok(saved)
        }
        Reply::Error(wire) => {
            state.executor.release(connection);
            Err(ApiError::wire(&wire))
        }
        other => Err(ExecutorError::unexpected("Saved", other).into()),
    }
}

/// `GET /files?prefix=DIR`.
pub async fn list(
    state: Arc<AppState>,
    request: &http::Request<Incoming>,
    workspace: &str,
) -> Result<Response<Body>, ApiError> {
    let prefix = uri::query_param(request.uri().query(), "prefix")
        .map_err(|error| path_error(&error))?
        .unwrap_or_default();
    let prefix = RelPath::parse_prefix(&prefix).map_err(|error| ApiError::invalid_path(&error))?;
    let reply = state
        .executor
        .call_once(
            Request::List(ListRequest {
                workspace: workspace.to_owned(),
                prefix: prefix.map(|p| p.as_str().to_owned()).unwrap_or_default(),
            }),
            "Listing",
            |reply| matches!(reply, Reply::Listing(_)),
        )
        .await?;
    let Reply::Listing(listing) = reply else {
        return Err(ApiError::bad_gateway("unexpected reply from the executor"));
    };
    let files = listing
        .entries
        .into_iter()
        .map(|entry| FileEntryBody {
            path: entry.path,
            kind: EntryType::from(entry.kind),
            size: entry.size,
            modified_ms: entry.modified_ms,
        })
        .collect();
    Ok(body::json(
        StatusCode::OK,
        &FileListing {
            files,
            truncated: listing.truncated,
        },
    ))
}

/// `DELETE /files/{path}`.
pub async fn delete(
    state: Arc<AppState>,
    workspace: &str,
    path: &RelPath,
) -> Result<Response<Body>, ApiError> {
    let reply = state
        .executor
        .call_once(
            Request::Delete(FileRef {
                workspace: workspace.to_owned(),
                path: path.as_str().to_owned(),
            }),
            "Deleted",
            |reply| matches!(reply, Reply::Deleted(_)),
        )
        .await?;
    let Reply::Deleted(deleted) = reply else {
        return Err(ApiError::bad_gateway("unexpected reply from the executor"));
    };
    Ok(body::json(
        StatusCode::OK,
        &DeletedReply {
            deleted: deleted.path,
        },
    ))
}

/// `GET /files/{path}`: the file's bytes, `Content-Length` from the executor's `FileStart`.
pub async fn download(
    state: Arc<AppState>,
    workspace: &str,
    path: &RelPath,
) -> Result<Response<Body>, ApiError> {
    let request = Request::Get(FileRef {
        workspace: workspace.to_owned(),
        path: path.as_str().to_owned(),
    });
    let (mut connection, first) = state.executor.call(request).await?;
    let meta = match first {
        Reply::FileStart(meta) => meta,
        Reply::Error(wire) => {
            state.executor.release(connection);
            return Err(ApiError::wire(&wire));
        }
        other => return Err(ExecutorError::unexpected("FileStart", other).into()),
    };
    let body = if meta.size == 0 {
        expect_file_end(&mut connection).await?;
        state.executor.release(connection);
        body::full(Bytes::new())
    } else {
        let download = Download {
            state: Arc::clone(&state),
            connection: Some(connection),
            expected: meta.size,
            received: 0,
        };
        body::streamed(futures_util::stream::unfold(
            download,
            |mut download| async move { download.next_piece().await.map(|piece| (piece, download)) },
        ))
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(meta.size));
    Ok(response)
}

async fn expect_file_end(connection: &mut Connection) -> Result<(), ExecutorError> {
    match connection.recv().await? {
        Reply::FileEnd => Ok(()),
        other => Err(ExecutorError::unexpected("FileEnd", other)),
    }
}

/// A download in progress.
struct Download {
    state: Arc<AppState>,
    connection: Option<Connection>,
    expected: u64,
    received: u64,
}

impl Download {
    /// The next piece of the file; an error aborts the HTTP response (its length is already
    /// promised). The last piece is handed out only after `FileEnd`, so the connection is
    /// pooled even if the client stops reading exactly at the end.
    async fn next_piece(&mut self) -> Option<Result<Bytes, io::Error>> {
        let connection = self.connection.as_mut()?;
        let result = match connection.recv().await {
            Ok(Reply::FileChunk(data)) => {
                self.received = self.received.saturating_add(data.len() as u64);
                if self.received > self.expected {
                    Err(ExecutorError::Unexpected {
                        expected: "no more than the announced size",
                        got: "FileChunk",
                    })
                } else if self.received == self.expected {
                    expect_file_end(connection).await.map(|()| data)
                } else {
                    Ok(data)
                }
            }
            Ok(Reply::FileEnd) => Err(ExecutorError::Unexpected {
                expected: "the announced size",
                got: "FileEnd",
            }),
            Ok(other) => Err(ExecutorError::unexpected("FileChunk", other)),
            Err(error) => Err(error),
        };
        match result {
            Ok(data) => {
                if self.received == self.expected
                    && let Some(connection) = self.connection.take()
                {
                    self.state.executor.release(connection);
                }
                Some(Ok(Bytes::from(data)))
            }
            Err(error) => {
                self.connection = None;
                tracing::warn!(error = %nox_protocol::error_chain(&error), "download failed");
                Some(Err(io::Error::other(error)))
            }
        }
    }
}

/// The body's data, failing with `TimedOut` when no data arrives for `timeout_s` seconds:
/// an upload may be large, but it may not stall and hold an executor connection forever.
fn paced<S, T, E>(
    stream: S,
    timeout_s: u64,
) -> impl futures_util::Stream<Item = Result<T, std::io::Error>>
where
    S: futures_util::Stream<Item = Result<T, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let idle = std::time::Duration::from_secs(timeout_s);
    futures_util::stream::unfold(
        (Box::pin(stream), false),
        move |(mut stream, done)| async move {
            if done {
                return None;
            }
            match tokio::time::timeout(idle, stream.next()).await {
                Ok(Some(Ok(item))) => Some((Ok(item), (stream, false))),
                Ok(Some(Err(error))) => Some((Err(std::io::Error::other(error)), (stream, true))),
                Ok(None) => None,
                Err(_) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no request body data for {timeout_s} s"),
                    )),
                    (stream, true),
                )),
            }
        },
    )
}
