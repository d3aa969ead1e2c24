//! Routing, the checks every request goes through (header size, method, authentication), and
//! the one log line per request. Tokens and bodies are never logged.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, Method, Response};
use hyper::body::Incoming;

use crate::AppState;
use crate::api_error::ApiError;
use crate::body::Body;
use crate::jobs::Language;
use crate::{files, health, jobs, random, uri};

/// The endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    Health,
    Put,
    Run(Language),
    ListFiles,
    /// `/files/{path}`, still percent-encoded.
    File(&'a str),
}

impl Route<'_> {
    /// The route of a request path, if any.
    pub fn of(path: &str) -> Option<Route<'_>> {
        match path {
            "/health" => Some(Route::Health),
            "/put" => Some(Route::Put),
            "/run_py" => Some(Route::Run(Language::Python)),
            "/run_sh" => Some(Route::Run(Language::Shell)),
            "/files" => Some(Route::ListFiles),
            other => other.strip_prefix("/files/").map(Route::File),
        }
    }

    /// The methods the route answers, as an `Allow` value.
    pub fn allow(&self) -> &'static str {
        match self {
            Route::Health | Route::ListFiles => "GET",
            Route::Put | Route::Run(_) => "POST",
            Route::File(_) => "GET, PUT, DELETE",
        }
    }

    fn allows(&self, method: &Method) -> bool {
        match self {
            Route::Health | Route::ListFiles => method == Method::GET,
            Route::Put | Route::Run(_) => method == Method::POST,
            Route::File(_) => {
                method == Method::GET || method == Method::PUT || method == Method::DELETE
            }
        }
    }
}

/// Total size of the header fields, counted as they were sent (`name: value\r\n`).
pub fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// Longest request path written to the log.
const LOGGED_PATH_LEN: usize = 256;

/// The per-request log line; written on drop, so a request abandoned by its client is
/// logged too.
struct RequestLog {
    method: Method,
    path: String,
    started: Instant,
    job_id: Option<String>,
    status: Option<u16>,
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let duration_ms = self.started.elapsed().as_millis() as u64;
        match self.status {
            Some(status) => tracing::info!(
                method = %self.method,
                path = %self.path,
                status,
                duration_ms,
                job_id = self.job_id.as_deref(),
                "request"
            ),
            None => tracing::info!(
                method = %self.method,
                path = %self.path,
                duration_ms,
                job_id = self.job_id.as_deref(),
                "request abandoned by the client"
            ),
        }
    }
}

/// The service function.
pub async fn handle(
    state: Arc<AppState>,
    request: http::Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let mut path = request.uri().path().to_owned();
    if path.len() > LOGGED_PATH_LEN {
        let mut cut = LOGGED_PATH_LEN;
        while !path.is_char_boundary(cut) {
            cut -= 1;
        }
        path.truncate(cut);
        path.push('…');
    }
    let mut log = RequestLog {
        method: request.method().clone(),
        path,
        started: Instant::now(),
        job_id: None,
        status: None,
    };
    let response = match dispatch(state, request, &mut log.job_id).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    log.status = Some(response.status().as_u16());
    Ok(response)
}

async fn dispatch(
    state: Arc<AppState>,
    request: http::Request<Incoming>,
    job_id: &mut Option<String>,
) -> Result<Response<Body>, ApiError> {
    let limit = state.config.max_header_bytes;
    if header_bytes(request.headers()) > limit {
        return Err(ApiError::headers_too_large(limit));
    }
    let uri_path = request.uri().path().to_owned();
    let route = Route::of(&uri_path).ok_or_else(ApiError::route_not_found)?;
    if !route.allows(request.method()) {
        return Err(ApiError::method_not_allowed(route.allow()));
    }
    if route == Route::Health {
        return Ok(health::health(&state).await);
    }
    let workspace = state.tokens.authenticate(request.headers())?.to_owned();
    match route {
        Route::Health => Ok(health::health(&state).await),
        Route::Put => files::put_multipart(state, request, &workspace).await,
        Route::Run(language) => {
            let id = random::new_job_id();
            *job_id = Some(id.clone());
            jobs::run(state, request, &workspace, language, &id).await
        }
        Route::ListFiles => files::list(Arc::clone(&state), &request, &workspace).await,
        Route::File(encoded) => {
            let path = uri::file_path(encoded).map_err(|error| match error {
                uri::UriError::Path(error) => ApiError::invalid_path(&error),
                other => ApiError::new(
                    http::StatusCode::BAD_REQUEST,
                    "invalid_path",
                    format!("invalid path: {other}"),
                ),
            })?;
            match *request.method() {
                Method::GET => files::download(state, &workspace, &path).await,
                Method::PUT => files::put_raw(state, request, &workspace, &path).await,
                _ => files::delete(state, &workspace, &path).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn every_endpoint_has_its_route_and_methods() {
        assert_eq!(Route::of("/health"), Some(Route::Health));
        assert_eq!(Route::of("/run_py"), Some(Route::Run(Language::Python)));
        assert_eq!(Route::of("/run_sh"), Some(Route::Run(Language::Shell)));
        assert_eq!(Route::of("/put"), Some(Route::Put));
        assert_eq!(Route::of("/files"), Some(Route::ListFiles));
        assert_eq!(Route::of("/files/a%2Fb"), Some(Route::File("a%2Fb")));
        assert_eq!(Route::of("/files/"), Some(Route::File("")));
        assert_eq!(Route::of("/run_py/"), None);
        assert_eq!(Route::of("/"), None);
        assert!(Route::File("x").allows(&Method::DELETE));
        assert!(!Route::Health.allows(&Method::POST));
        assert_eq!(Route::Run(Language::Shell).allow(), "POST");
    }

    #[test]
    fn header_bytes_count_names_values_and_separators() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("12345"));
        assert_eq!(header_bytes(&headers), 3 + 5 + 4);
    }
}
