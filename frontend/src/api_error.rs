//! The one error shape of the HTTP API, and the one place wire errors become HTTP statuses.
//!
//! Every 4xx/5xx the frontend produces has the body
//! `{"error": "<code>", "message": "<text>", "detail": "<text>"}` with
//! `Content-Type: application/json`; `detail` repeats `message` so scripts written for the
//! seed (FastAPI, which answers `{"detail": ...}`) keep working.

use http::header::{ALLOW, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use nox_protocol::{ErrorKind, PathError, WireError};
use serde::Serialize;

use crate::api_types::ErrorBody;
use crate::body::{Body, full};
use crate::executor::ExecutorError;

/// A failed request, as the client will see it.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// The status and error code for each kind of executor error.
pub fn wire_status(kind: ErrorKind) -> (StatusCode, &'static str) {
    match kind {
        ErrorKind::BadRequest => (StatusCode::BAD_REQUEST, "bad_request"),
        ErrorKind::InvalidPath => (StatusCode::BAD_REQUEST, "invalid_path"),
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        ErrorKind::Conflict => (StatusCode::CONFLICT, "conflict"),
        ErrorKind::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        ErrorKind::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
        ErrorKind::SandboxUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "sandbox_unavailable"),
        ErrorKind::ProtocolMismatch => (StatusCode::BAD_GATEWAY, "bad_gateway"),
        ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        ErrorKind::QuotaExceeded => (StatusCode::INSUFFICIENT_STORAGE, "quota_exceeded"),
    }
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    fn with_header(mut self, name: HeaderName, value: &'static str) -> Self {
        self.headers.push((name, HeaderValue::from_static(value)));
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn unauthorized() -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid bearer token",
        )
        .with_header(WWW_AUTHENTICATE, "Bearer")
    }

    pub fn route_not_found() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
    }

    pub fn method_not_allowed(allow: &'static str) -> Self {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("method not allowed; allowed: {allow}"),
        )
        .with_header(ALLOW, allow)
    }

    pub fn unsupported_media_type(expected: &str) -> Self {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("the request body must be {expected}"),
        )
    }

    pub fn invalid_json(error: &serde_json::Error) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("invalid JSON body: {error}"),
        )
    }

    /// The request body did not arrive in time (408).
    pub fn body_timeout(seconds: u64) -> Self {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the request body did not arrive within {seconds} s"),
        )
    }

    pub fn payload_too_large(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    pub fn headers_too_large(limit: usize) -> Self {
        ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request headers are larger than {limit} bytes"),
        )
    }

    pub fn forbidden_command(word: &str) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "forbidden_command",
            format!("Forbidden command: {word}"),
        )
    }

    pub fn executor_unavailable(message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "executor_unavailable",
            message,
        )
        .with_header(RETRY_AFTER, "1")
    }

    pub fn bad_gateway(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_GATEWAY, "bad_gateway", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn invalid_path(error: &PathError) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            format!("invalid path: {error}"),
        )
    }

    /// The executor refused the request.
    pub fn wire(error: &WireError) -> Self {
        let (status, code) = wire_status(error.kind);
        let api = ApiError::new(status, code, error.message());
        if error.kind == ErrorKind::Busy {
            api.with_header(RETRY_AFTER, "1")
        } else {
            api
        }
    }

    /// `{"error", "message", "detail"}`.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.code.to_owned(),
            message: self.message.clone(),
            detail: self.message.clone(),
        }
    }

    /// The response, with the error body and this error's headers.
    pub fn into_response(self) -> Response<Body> {
        let body = self.body();
        self.into_response_with(&body)
    }

    /// The response with `body` instead of the plain error body (`/health` adds fields).
    pub fn into_response_with<T: Serialize>(self, body: &T) -> Response<Body> {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        let mut response = Response::new(full(bytes));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        response
    }
}

impl From<WireError> for ApiError {
    fn from(error: WireError) -> Self {
        ApiError::wire(&error)
    }
}

impl From<ExecutorError> for ApiError {
    fn from(error: ExecutorError) -> Self {
        let message = nox_protocol::error_chain(&error);
        match error {
            ExecutorError::Refused(wire) => ApiError::wire(&wire),
            ExecutorError::Connect { .. }
            | ExecutorError::ConnectTimeout { .. }
            | ExecutorError::Handshake(_)
            | ExecutorError::HandshakeClosed
            | ExecutorError::ReplyTimeout => ApiError::executor_unavailable(message),
            ExecutorError::VersionMismatch { .. }
            | ExecutorError::Send(_)
            | ExecutorError::Receive(_)
            | ExecutorError::Closed
            | ExecutorError::Unexpected { .. } => ApiError::bad_gateway(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn every_wire_kind_has_its_status_and_code() {
        let table = [
            (ErrorKind::BadRequest, 400, "bad_request"),
            (ErrorKind::InvalidPath, 400, "invalid_path"),
            (ErrorKind::NotFound, 404, "not_found"),
            (ErrorKind::Conflict, 409, "conflict"),
            (ErrorKind::TooLarge, 413, "payload_too_large"),
            (ErrorKind::Busy, 503, "busy"),
            (ErrorKind::SandboxUnavailable, 503, "sandbox_unavailable"),
            (ErrorKind::ProtocolMismatch, 502, "bad_gateway"),
            (ErrorKind::Internal, 500, "internal"),
            (ErrorKind::QuotaExceeded, 507, "quota_exceeded"),
        ];
        for (kind, status, code) in table {
            assert_eq!(
                wire_status(kind),
                (StatusCode::from_u16(status).unwrap(), code)
            );
        }
    }

    #[test]
    fn busy_says_when_to_retry_and_the_message_chain_is_kept() {
        let error = WireError {
            kind: ErrorKind::Busy,
            chain: vec!["queue full".into(), "64 jobs waiting".into()],
        };
        let response = ApiError::from(error).into_response();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "1");
    }

    #[tokio::test]
    async fn the_error_body_has_error_message_and_detail() {
        let response = ApiError::forbidden_command("reboot").into_response();
        assert_eq!(response.status(), 400);
        assert_eq!(response.headers()["content-type"], "application/json");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            body,
            json!({
                "error": "forbidden_command",
                "message": "Forbidden command: reboot",
                "detail": "Forbidden command: reboot",
            })
        );
    }

    #[test]
    fn an_unreachable_executor_is_503_and_a_confused_one_502() {
        let unreachable = ExecutorError::ConnectTimeout {
            path: "/run/nox/executor.sock".into(),
        };
        let error = ApiError::from(unreachable);
        assert_eq!(
            (error.status(), error.code()),
            (StatusCode::SERVICE_UNAVAILABLE, "executor_unavailable")
        );
        let response = error.into_response();
        assert_eq!(response.headers()["retry-after"], "1");
        let error = ApiError::from(ExecutorError::Closed);
        assert_eq!(
            (error.status(), error.code()),
            (StatusCode::BAD_GATEWAY, "bad_gateway")
        );
        let error = ApiError::from(ExecutorError::VersionMismatch { theirs: 2, ours: 1 });
        assert_eq!(error.status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn method_not_allowed_lists_the_methods() {
        let response = ApiError::method_not_allowed("GET, PUT, DELETE").into_response();
        assert_eq!(response.status(), 405);
        assert_eq!(response.headers()["allow"], "GET, PUT, DELETE");
    }
}
