//! `POST /run_py` and `POST /run_sh`: validate, ask the executor to run the job, and either
//! collect its output into one JSON reply or stream it as NDJSON or server-sent events.
//!
//! User code failing is an outcome (200 with its exit status); only a request the frontend or
//! the executor refuses is an error. If the client goes away before the job finished, the
//! executor is told to cancel it (`Cancel`, then the connection is closed).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use nox_protocol::{
    JobOutcome, JobSpec, JobStarted, LimitHit, LimitRequest, MAX_JOB_INPUT_LEN, Program, RelPath,
    Reply, Request, Stream,
};
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::api_error::ApiError;
use crate::api_types::{
    JobEvent, JobSummary, LimitsBody, RunPython, RunReply, RunShell, returncode,
};
use crate::body::{self, Body};
use crate::busy::{Asking, BusyHint};
use crate::executor::{Connection, ExecutorError};
use crate::telemetry;

/// Which of the two run endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Python,
    Shell,
}

impl Language {
    /// The label in logs and metrics (`nox_protocol::Program::language`).
    pub fn label(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Shell => "shell",
        }
    }
}

/// How the client wants the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    Json,
    Ndjson,
    EventStream,
}

/// The first streaming type named in `Accept`, else one JSON reply.
pub fn output_mode(headers: &HeaderMap) -> OutputMode {
    for value in headers.get_all(ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let media = item.split(';').next().unwrap_or("").trim();
            if media.eq_ignore_ascii_case("application/x-ndjson") {
                return OutputMode::Ndjson;
            }
            if media.eq_ignore_ascii_case("text/event-stream") {
                return OutputMode::EventStream;
            }
        }
    }
    OutputMode::Json
}

/// Handle one run request for `workspace`.
pub async fn run(
    state: Arc<AppState>,
    request: http::Request<Incoming>,
    workspace: &str,
    language: Language,
    job_id: &str,
) -> Result<Response<Body>, ApiError> {
    let mode = output_mode(request.headers());
    let limit = state.config.max_json_body_bytes;
    let spec = match language {
        Language::Python => {
            let body: RunPython =
                read_json(request, limit, state.config.body_read_timeout_s).await?;
            let filename =
                RelPath::parse(&body.filename).map_err(|e| ApiError::invalid_path(&e))?;
            let limits = limit_request(body.timeout_s, body.limits.as_ref())?;
            JobSpec {
                job_id: job_id.to_owned(),
                workspace: workspace.to_owned(),
                program: Program::Python {
                    code: body.code,
                    filename: filename.as_str().to_owned(),
                },
                stdin: body.stdin.unwrap_or_default().into_bytes(),
                limits,
            }
        }
        Language::Shell => {
            let body: RunShell =
                read_json(request, limit, state.config.body_read_timeout_s).await?;
            if let Some(word) = state.denylist.forbidden_word(&body.cmd) {
                state.metrics.job_refused(language.label());
                return Err(ApiError::forbidden_command(word));
            }
            let limits = limit_request(body.timeout_s, body.limits.as_ref())?;
            JobSpec {
                job_id: job_id.to_owned(),
                workspace: workspace.to_owned(),
                program: Program::Shell { command: body.cmd },
                stdin: body.stdin.unwrap_or_default().into_bytes(),
                limits,
            }
        }
    };
    let code_len = match &spec.program {
        Program::Python { code, .. } => code.len(),
        Program::Shell { command } => command.len(),
    };
    if code_len.saturating_add(spec.stdin.len()) > MAX_JOB_INPUT_LEN {
        return Err(ApiError::payload_too_large(format!(
            "code and stdin together are larger than {MAX_JOB_INPUT_LEN} bytes"
        )));
    }
    if let Some(wire) = state.busy.refusal() {
        state.metrics.job_refused(language.label());
        tracing::debug!(job_id, error = %wire, "job refused: the executor's queue was full just now");
        return Err(ApiError::wire(&wire));
    }
    if tracing::enabled!(tracing::Level::INFO) {
        let (job_id, workspace) = (job_id.to_owned(), workspace.to_owned());
        let (language, stream) = (spec.program.language(), mode != OutputMode::Json);
        // Once the job is on its way to the executor (see `write_soon`).
        telemetry::write_soon(move || {
            tracing::info!(job_id, workspace, language, stream, "job requested");
        });
    }

    let asking = Asking::new(&state.busy);
    let called = state.executor.call(Request::Run(spec)).await;
    asking.answered();
    let (connection, first) = match called {
        Ok(called) => called,
        Err(error) => {
            state.metrics.job_refused(language.label());
            return Err(error.into());
        }
    };
    let started = match first {
        Reply::Started(started) if started.job_id == job_id => started,
        Reply::Started(_) => {
            return Err(ApiError::bad_gateway(
                "the executor started a different job",
            ));
        }
        Reply::Error(wire) => {
            state.executor.release(connection);
            state.metrics.job_refused(language.label());
            tracing::info!(job_id, error = %wire, "job refused");
            if wire.kind == nox_protocol::ErrorKind::Busy {
                state.busy.put(wire.clone());
            }
            return Err(ApiError::wire(&wire));
        }
        other => return Err(ExecutorError::unexpected("Started", other).into()),
    };
    state
        .metrics
        .job_started(language.label(), started.queued_ms);
    let job = RunningJob {
        connection: Some(connection),
        job_id: job_id.to_owned(),
        language,
        queued_ms: started.queued_ms,
        busy: Arc::clone(&state.busy),
    };
    match mode {
        OutputMode::Json => collect(&state, job, &started).await,
        OutputMode::Ndjson | OutputMode::EventStream => Ok(stream(state, job, mode)),
    }
}

/// Whether a `Content-Type` value is JSON: `application/json` or `application/*+json`,
/// parameters allowed (what the seed's framework accepted).
pub fn is_json_media_type(value: &str) -> bool {
    let media = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json"
        || media
            .strip_prefix("application/")
            .is_some_and(|subtype| subtype.ends_with("+json"))
}

/// Read a JSON body of at most `limit` bytes. `Content-Type` must be JSON or absent (seed
/// clients did not always send one).
async fn read_json<T: DeserializeOwned>(
    request: http::Request<Incoming>,
    limit: u64,
    timeout_s: u64,
) -> Result<T, ApiError> {
    if let Some(value) = request.headers().get(CONTENT_TYPE)
        && !is_json_media_type(value.to_str().unwrap_or(""))
    {
        return Err(ApiError::unsupported_media_type("application/json"));
    }
    let too_large =
        || ApiError::payload_too_large(format!("the JSON body is larger than {limit} bytes"));
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let deadline = std::time::Duration::from_secs(timeout_s);
    let collected =
        tokio::time::timeout(deadline, Limited::new(request.into_body(), limit).collect())
            .await
            .map_err(|_| ApiError::body_timeout(timeout_s))?;
    let bytes = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(_) => return Err(ApiError::bad_request("could not read the request body")),
    };
    // Objects only: serde would also fill a struct from a JSON array, field by field.
    // (Checked on the bytes: going through `serde_json::Value` would hide duplicate keys.)
    if bytes.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the JSON body must be an object",
        ));
    }
    serde_json::from_slice(&bytes).map_err(|error| ApiError::invalid_json(&error))
}

/// The client's limits as the protocol carries them. Values are rounded up; negative or
/// non-finite values are refused (the executor clamps everything else).
fn limit_request(
    timeout_s: Option<f64>,
    limits: Option<&LimitsBody>,
) -> Result<LimitRequest, ApiError> {
    const MIB: f64 = 1024.0 * 1024.0;
    let empty = LimitsBody::default();
    let limits = limits.unwrap_or(&empty);
    Ok(LimitRequest {
        timeout_ms: scaled("timeout_s", timeout_s, 1000.0)?,
        cpu_seconds: scaled("limits.cpu_s", limits.cpu_s, 1.0)?,
        memory_bytes: scaled("limits.memory_mb", limits.memory_mb, MIB)?,
        max_processes: scaled("limits.processes", limits.processes, 1.0)?,
        max_file_bytes: scaled("limits.file_size_mb", limits.file_size_mb, MIB)?,
        max_open_files: scaled("limits.open_files", limits.open_files, 1.0)?,
        max_output_bytes: scaled("limits.output_kb", limits.output_kb, 1024.0)?,
    })
}

fn scaled(key: &str, value: Option<f64>, scale: f64) -> Result<Option<u64>, ApiError> {
    match value {
        None => Ok(None),
        // `as` saturates: an absurdly large request becomes u64::MAX and is clamped later.
        Some(value) if value.is_finite() && value >= 0.0 => Ok(Some((value * scale).ceil() as u64)),
        Some(_) => Err(ApiError::bad_request(format!(
            "`{key}` must be a non-negative finite number"
        ))),
    }
}

/// A job whose `Finished` has not been read yet. Dropped before that (the client went away),
/// it tells the executor to cancel the job.
#[derive(Debug)]
struct RunningJob {
    connection: Option<Connection>,
    job_id: String,
    language: Language,
    queued_ms: u64,
    /// Cleared when the job ends: its place in the executor is free.
    busy: Arc<BusyHint>,
}

impl RunningJob {
    /// The next frame of the job. After a broken or confused exchange the connection is
    /// dropped without a `Cancel` (the executor sees it close and kills the job).
    async fn next(&mut self) -> Result<Reply, ExecutorError> {
        let Some(connection) = self.connection.as_mut() else {
            return Err(ExecutorError::Closed);
        };
        match connection.recv().await {
            Ok(reply @ (Reply::Output(_) | Reply::Finished(_))) => Ok(reply),
            Ok(Reply::Error(wire)) => {
                // The request ended with an error; the connection itself is fine.
                self.connection = None;
                Err(ExecutorError::Refused(wire))
            }
            Ok(other) => {
                self.connection = None;
                Err(ExecutorError::unexpected("Output or Finished", other))
            }
            Err(error) => {
                self.connection = None;
                Err(error)
            }
        }
    }

    /// The job finished: count it, and its connection can serve the next request.
    fn finish(mut self, state: &AppState, outcome: &JobOutcome) {
        state.metrics.job_finished(self.language.label(), outcome);
        log_finished(outcome);
        if let Some(connection) = self.connection.take() {
            state.executor.release(connection);
        }
    }
}

impl Drop for RunningJob {
    fn drop(&mut self) {
        self.busy.clear();
        let Some(mut connection) = self.connection.take() else {
            return;
        };
        tracing::info!(job_id = %self.job_id, "client went away; cancelling the job");
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let cancel = connection.send(Request::Cancel);
                let _ = tokio::time::timeout(Duration::from_secs(1), cancel).await;
            });
        }
    }
}

/// Collect the whole output into one JSON reply.
async fn collect(
    state: &AppState,
    mut job: RunningJob,
    started: &JobStarted,
) -> Result<Response<Body>, ApiError> {
    // The executor caps output; this only guards against an executor that does not.
    let cap = usize::try_from(started.limits.max_output_bytes).unwrap_or(usize::MAX);
    let mut stdout = Capped::new(cap);
    let mut stderr = Capped::new(cap);
    let outcome = loop {
        match job.next().await {
            Ok(Reply::Output(chunk)) => match chunk.stream {
                Stream::Stdout => stdout.push(&chunk.data),
                Stream::Stderr => stderr.push(&chunk.data),
            },
            Ok(Reply::Finished(outcome)) => break outcome,
            Ok(_) => return Err(ApiError::bad_gateway("unexpected reply from the executor")),
            Err(error) => {
                tracing::warn!(job_id = %job.job_id, error = %nox_protocol::error_chain(&error), "job failed");
                return Err(error.into());
            }
        }
    };
    let queued_ms = job.queued_ms;
    job.finish(state, &outcome);
    let mut summary = JobSummary::new(&outcome, queued_ms);
    summary.stdout_truncated |= stdout.truncated;
    summary.stderr_truncated |= stderr.truncated;
    let reply = RunReply {
        stdout: String::from_utf8_lossy(&stdout.bytes).into_owned(),
        stderr: String::from_utf8_lossy(&stderr.bytes).into_owned(),
        summary,
    };
    Ok(body::json(StatusCode::OK, &reply))
}

/// Bytes up to a cap, remembering whether more came.
struct Capped {
    bytes: Vec<u8>,
    cap: usize,
    truncated: bool,
}

impl Capped {
    fn new(cap: usize) -> Self {
        Capped {
            bytes: Vec::new(),
            cap,
            truncated: false,
        }
    }

    fn push(&mut self, data: &[u8]) {
        let room = self.cap.saturating_sub(self.bytes.len());
        if data.len() > room {
            self.truncated = true;
        }
        self.bytes.extend_from_slice(&data[..data.len().min(room)]);
    }
}

fn log_finished(outcome: &JobOutcome) {
    if !tracing::enabled!(tracing::Level::INFO) {
        return;
    }
    let job_id = outcome.job_id.clone();
    let (returncode, timed_out) = (returncode(outcome.status), outcome.timed_out);
    let (limit_hit, duration_ms) = (outcome.limit_hit.map(limit_name), outcome.duration_ms);
    // After the reply is on its way (see `write_soon`).
    telemetry::write_soon(move || {
        tracing::info!(
            job_id = %job_id,
            returncode,
            timed_out,
            limit_hit,
            duration_ms,
            "job finished"
        );
    });
}

fn limit_name(limit: LimitHit) -> &'static str {
    match limit {
        LimitHit::Timeout => "timeout",
        LimitHit::Output => "output",
        LimitHit::Cpu => "cpu",
        LimitHit::FileSize => "file_size",
        LimitHit::Disk => "disk",
    }
}

/// Stream the job's frames to the client as they arrive.
fn stream(state: Arc<AppState>, job: RunningJob, mode: OutputMode) -> Response<Body> {
    let first = event(
        mode,
        &JobEvent::Started {
            job_id: job.job_id.clone(),
        },
    );
    let events = JobEvents {
        state,
        job,
        mode,
        pending: VecDeque::from([first]),
        stdout: Utf8Carry::default(),
        stderr: Utf8Carry::default(),
        done: false,
        started_at: Instant::now(),
    };
    let pieces = futures_util::stream::unfold(events, |mut events| async move {
        loop {
            if let Some(piece) = events.pending.pop_front() {
                return Some((Ok(piece), events));
            }
            if events.done {
                return None;
            }
            events.step().await;
        }
    });
    let content_type = match mode {
        OutputMode::EventStream => "text/event-stream",
        _ => "application/x-ndjson",
    };
    let mut response = Response::new(body::streamed(pieces));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The state of one streamed job.
struct JobEvents {
    state: Arc<AppState>,
    job: RunningJob,
    mode: OutputMode,
    pending: VecDeque<Bytes>,
    stdout: Utf8Carry,
    stderr: Utf8Carry,
    done: bool,
    started_at: Instant,
}

impl JobEvents {
    /// Read one frame and queue the events it makes.
    async fn step(&mut self) {
        match self.job.next().await {
            Ok(Reply::Output(chunk)) => {
                let (name, carry) = match chunk.stream {
                    Stream::Stdout => ("stdout", &mut self.stdout),
                    Stream::Stderr => ("stderr", &mut self.stderr),
                };
                let text = carry.push(&chunk.data);
                if !text.is_empty() {
                    self.pending
                        .push_back(event(self.mode, &output_event(name, text)));
                }
            }
            Ok(Reply::Finished(outcome)) => {
                for (name, carry) in [("stdout", &mut self.stdout), ("stderr", &mut self.stderr)] {
                    let text = carry.finish();
                    if !text.is_empty() {
                        self.pending
                            .push_back(event(self.mode, &output_event(name, text)));
                    }
                }
                let finished = JobEvent::Finished(JobSummary::new(&outcome, self.job.queued_ms));
                self.pending.push_back(event(self.mode, &finished));
                let language = self.job.language;
                let job = std::mem::replace(
                    &mut self.job,
                    RunningJob {
                        connection: None,
                        job_id: String::new(),
                        language,
                        queued_ms: 0,
                        busy: Arc::clone(&self.state.busy),
                    },
                );
                job.finish(&self.state, &outcome);
                self.done = true;
            }
            Ok(_) => self.fail(&ApiError::bad_gateway("unexpected reply from the executor")),
            Err(error) => {
                tracing::warn!(
                    job_id = %self.job.job_id,
                    error = %nox_protocol::error_chain(&error),
                    streamed_ms = self.started_at.elapsed().as_millis() as u64,
                    "streamed job failed"
                );
                self.fail(&ApiError::from(error));
            }
        }
    }

    fn fail(&mut self, error: &ApiError) {
        let value = JobEvent::Error {
            error: error.code().to_owned(),
            message: error.message().to_owned(),
        };
        self.pending.push_back(event(self.mode, &value));
        self.done = true;
    }
}

fn output_event(name: &str, data: String) -> JobEvent {
    if name == "stderr" {
        JobEvent::Stderr { data }
    } else {
        JobEvent::Stdout { data }
    }
}

/// The SSE event name of `event` (its `type`).
fn event_name(event: &JobEvent) -> &'static str {
    match event {
        JobEvent::Started { .. } => "started",
        JobEvent::Stdout { .. } => "stdout",
        JobEvent::Stderr { .. } => "stderr",
        JobEvent::Finished(_) => "finished",
        JobEvent::Error { .. } => "error",
    }
}

/// One event: an NDJSON line, or a server-sent event.
fn event(mode: OutputMode, value: &JobEvent) -> Bytes {
    let json = serde_json::to_string(value).unwrap_or_default();
    let name = event_name(value);
    match mode {
        OutputMode::EventStream => Bytes::from(format!("event: {name}\ndata: {json}\n\n")),
        _ => Bytes::from(format!("{json}\n")),
    }
}

/// Output bytes decoded as UTF-8 across chunk boundaries: an incomplete sequence at the end
/// of a chunk waits for the next one; invalid bytes become U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Carry {
    pending: Vec<u8>,
}

impl Utf8Carry {
    /// The text complete so far.
    pub fn push(&mut self, data: &[u8]) -> String {
        self.pending.extend_from_slice(data);
        let cut = incomplete_tail_start(&self.pending);
        let rest = self.pending.split_off(cut);
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending = rest;
        text
    }

    /// Whatever is left, at the end of the stream.
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

/// Where a UTF-8 sequence that the end of `bytes` cut short begins (`bytes.len()` if none).
fn incomplete_tail_start(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let index = bytes.len() - back;
        let byte = bytes[index];
        if byte & 0xC0 == 0x80 {
            continue; // continuation byte: look further back for the lead byte
        }
        let needed = match byte {
            0xF0..=0xF7 => 4,
            0xE0..=0xEF => 3,
            0xC0..=0xDF => 2,
            _ => 1,
        };
        return if needed > back { index } else { bytes.len() };
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_picks_the_first_streaming_type() {
        let mut headers = HeaderMap::new();
        assert_eq!(output_mode(&headers), OutputMode::Json);
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        assert_eq!(output_mode(&headers), OutputMode::Json);
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("text/html, Application/X-NDJSON;q=0.9"),
        );
        assert_eq!(output_mode(&headers), OutputMode::Ndjson);
        headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        assert_eq!(output_mode(&headers), OutputMode::EventStream);
    }

    #[test]
    fn json_media_types_may_carry_parameters_and_suffixes() {
        assert!(is_json_media_type("application/json"));
        assert!(is_json_media_type("Application/JSON; charset=utf-8"));
        assert!(is_json_media_type("application/vnd.api+json"));
        assert!(!is_json_media_type("application/x-www-form-urlencoded"));
        assert!(!is_json_media_type("text/json"));
        assert!(!is_json_media_type("text/plain"));
        assert!(!is_json_media_type(""));
    }

    #[test]
    fn limits_are_converted_to_protocol_units_and_rounded_up() {
        let limits = LimitsBody {
            cpu_s: Some(1.5),
            memory_mb: Some(256.0),
            output_kb: Some(1.0),
            ..LimitsBody::default()
        };
        let got = limit_request(Some(2.5), Some(&limits)).unwrap();
        assert_eq!(got.timeout_ms, Some(2500));
        assert_eq!(got.cpu_seconds, Some(2));
        assert_eq!(got.memory_bytes, Some(256 * 1024 * 1024));
        assert_eq!(got.max_output_bytes, Some(1024));
        assert_eq!(got.max_processes, None);
        assert_eq!(
            limit_request(Some(1e300), None).unwrap().timeout_ms,
            Some(u64::MAX)
        );
    }

    #[test]
    fn negative_and_non_finite_limits_are_refused() {
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            let error = limit_request(Some(bad), None).unwrap_err();
            assert_eq!(error.status(), 400);
            let limits = LimitsBody {
                memory_mb: Some(bad),
                ..LimitsBody::default()
            };
            assert!(limit_request(None, Some(&limits)).is_err());
        }
    }

    #[test]
    fn utf8_split_across_chunks_is_joined() {
        let text = "é€😀";
        let bytes = text.as_bytes();
        for split in 0..=bytes.len() {
            let mut carry = Utf8Carry::default();
            let mut out = carry.push(&bytes[..split]);
            out.push_str(&carry.push(&bytes[split..]));
            out.push_str(&carry.finish());
            assert_eq!(out, text, "split at {split}");
        }
        let mut carry = Utf8Carry::default();
        assert_eq!(carry.push(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(carry.push(b"\xe2\x82"), "");
        assert_eq!(carry.finish(), "\u{fffd}");
    }

    #[test]
    fn events_are_ndjson_lines_or_server_sent_events() {
        let value = output_event("stdout", "a\nb".to_owned());
        assert_eq!(
            event(OutputMode::Ndjson, &value),
            Bytes::from("{\"type\":\"stdout\",\"data\":\"a\\nb\"}\n")
        );
        assert_eq!(
            event(OutputMode::EventStream, &value),
            Bytes::from("event: stdout\ndata: {\"type\":\"stdout\",\"data\":\"a\\nb\"}\n\n")
        );
    }
}
