//! `GET /openapi.json` (no authentication: it is public documentation): the OpenAPI 3.1
//! description of the API, generated at compile time by `utoipa` from the types in
//! `api_types`, which the handlers serialize and parse, so the schemas cannot drift from the
//! wire. The operations below are declarations only (utoipa needs a function to hang each
//! on); `routes` dispatches the real requests, and a test checks that both list the same
//! routes and methods.
//!
//! Error responses are added by [`ErrorResponses`] from one table, [`errors_of`]: every
//! 4xx/5xx a route can answer, each with the uniform error body.

#![allow(
    dead_code,
    reason = "the operation functions only carry the #[utoipa::path] declarations"
)]

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, ObjectBuilder, Ref, RefOr, Required, Response, ResponseBuilder, Schema, Type,
};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::api_types::{
    DeletedReply, ErrorBody, FileListing, HealthReply, HealthUnavailable, JobEvent, RunPython,
    RunReply, RunShell, SavedReply, ServicesReply, SystemStatus,
};

/// The name of the Bearer security scheme.
pub const SECURITY_SCHEME: &str = "bearer";

/// A path `nox_protocol::RelPath::parse` accepts, as an ECMA-262 pattern (without
/// look-around, so test generators can use it): components of allowed characters (no `/`,
/// backslash or control character) separated by `/`; empty and `.` components are skipped,
/// `..` is refused, at least one real component, no leading `/`; at most 255 characters a
/// component (the server counts 255 bytes, and 1024 bytes in all: `maxLength`).
macro_rules! path_pattern {
    () => {
        concat!(
            r"^(?:\.(?:/\.?)*/)?",
            r"(?:[^./\\\u0000-\u001f\u007f-\u009f][^/\\\u0000-\u001f\u007f-\u009f]{0,254}",
            r"|\.[^./\\\u0000-\u001f\u007f-\u009f][^/\\\u0000-\u001f\u007f-\u009f]{0,253}",
            r"|\.\.[^/\\\u0000-\u001f\u007f-\u009f]{1,253})",
            r"(?:/(?:[^./\\\u0000-\u001f\u007f-\u009f][^/\\\u0000-\u001f\u007f-\u009f]{0,254}",
            r"|\.[^./\\\u0000-\u001f\u007f-\u009f][^/\\\u0000-\u001f\u007f-\u009f]{0,253}",
            r"|\.\.[^/\\\u0000-\u001f\u007f-\u009f]{1,253}|\.)?)*$",
        )
    };
}
pub const PATH_PATTERN: &str = path_pattern!();

/// A listing prefix: a path as above, or one with no real component (the whole workspace).
pub const PREFIX_PATTERN: &str = concat!(r"^(?:\.(?:/\.?)*)?$|", path_pattern!());

/// Longest path, in bytes (`nox_protocol::path::MAX_PATH_LEN`).
const MAX_PATH_LEN: usize = nox_protocol::path::MAX_PATH_LEN;

/// The multipart form of `POST /put`.
#[derive(Debug, ToSchema)]
pub struct PutForm {
    /// The file's bytes. Other fields are ignored.
    #[schema(value_type = String, format = Binary, content_media_type = "application/octet-stream")]
    pub f: Vec<u8>,
}

/// Check the frontend: its version and what the executor says about itself.
///
/// `ready` is false, and `status` is `"degraded"`, when a sandbox layer configured as
/// required is not active (jobs are then refused with 503 `sandbox_unavailable`).
#[utoipa::path(get, path = "/health", tag = "service", security(()),
    responses(
        (status = 200, description = "The executor answers.", body = HealthReply),
        (status = 502, description = "The executor speaks another protocol version.", body = HealthUnavailable),
        (status = 503, description = "The executor cannot be reached.", body = HealthUnavailable),
    ))]
fn health() {}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "service", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document.", content_type = "application/json",
        body = inline(Object))))]
fn openapi_json() {}

/// Prometheus metrics (text exposition format 0.0.4).
///
/// Needs the token unless `frontend.metrics_public` is set.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "The metrics.", content_type = "text/plain; version=0.0.4; charset=utf-8",
        body = String)))]
fn metrics() {}

/// The host at a glance: CPU, memory, the state directory's disk, uptime and load.
#[utoipa::path(get, path = "/system", tag = "operations",
    responses((status = 200, description = "The host's state; values it cannot read are null.", body = SystemStatus)))]
fn system() {}

/// The state of the configured systemd units (`frontend.services`).
#[utoipa::path(get, path = "/services", tag = "operations",
    responses((status = 200, description = "One entry per configured unit, in order.", body = ServicesReply)))]
fn services() {}

/// Restart the frontend.
///
/// The reply is sent first; then the frontend stops accepting, lets requests in flight
/// finish and exits with status 0, and systemd (`Restart=always`) starts it again on the
/// same listening socket. In `nox-frontend dev` the server restarts in-process.
#[utoipa::path(post, path = "/actions/restart", tag = "operations",
    responses((status = 202, description = "The restart is under way.", body = crate::api_types::RestartReply)))]
fn restart() {}

/// Run Python code.
///
/// The code is saved as `filename` in the workspace and run by `/usr/bin/python3` with the
/// workspace as working directory. With `Accept: application/x-ndjson` (or
/// `text/event-stream`) the reply streams one event per line as the job runs.
#[utoipa::path(post, path = "/run_py", tag = "jobs",
    request_body(content = RunPython, content_type = "application/json"),
    responses((status = 200, description = "The job ran (whatever its exit status).", content(
        (RunReply = "application/json"),
        (JobEvent = "application/x-ndjson"),
        (JobEvent = "text/event-stream"),
    ))))]
fn run_py() {}

/// Run a shell command line with `/bin/sh -c`.
///
/// A command whose first word is on `forbidden_commands` is refused with 400
/// `forbidden_command` (a courtesy, not a security boundary). Streaming as for `/run_py`.
#[utoipa::path(post, path = "/run_sh", tag = "jobs",
    request_body(content = RunShell, content_type = "application/json"),
    responses((status = 200, description = "The job ran (whatever its exit status).", content(
        (RunReply = "application/json"),
        (JobEvent = "application/x-ndjson"),
        (JobEvent = "text/event-stream"),
    ))))]
fn run_sh() {}

/// Upload a file (the seed's multipart upload, file field `f`).
#[utoipa::path(post, path = "/put", tag = "files",
    params(("path" = String, Query, description = "Relative path in the workspace; intermediate directories are created.",
        example = "dir/hello.py")),
    request_body(content = PutForm, content_type = "multipart/form-data"),
    responses((status = 200, description = "Saved.", body = SavedReply)))]
fn put() {}

/// List the workspace's files under a prefix, recursively.
#[utoipa::path(get, path = "/files", tag = "files",
    params(("prefix" = Option<String>, Query, description = "A relative directory; the whole workspace when absent.")),
    responses((status = 200, description = "The entries.", body = FileListing)))]
fn list_files() {}

/// Download a file.
#[utoipa::path(get, path = "/files/{path}", tag = "files",
    params(("path" = String, Path, description = "Relative path in the workspace (percent-encode `/` as `%2F` or send it as is).")),
    responses((status = 200, description = "The file's bytes.", content_type = "application/octet-stream",
        body = inline(BinaryBody))))]
fn get_file() {}

/// Upload a file: the raw request body is the file, whatever its content type.
#[utoipa::path(put, path = "/files/{path}", tag = "files",
    params(("path" = String, Path, description = "Relative path in the workspace.")),
    request_body(content = inline(BinaryBody), content_type = "application/octet-stream"),
    responses((status = 200, description = "Saved.", body = SavedReply)))]
fn put_file() {}

/// Delete a file or an empty directory.
#[utoipa::path(delete, path = "/files/{path}", tag = "files",
    params(("path" = String, Path, description = "Relative path in the workspace.")),
    responses((status = 200, description = "Deleted.", body = DeletedReply)))]
fn delete_file() {}

/// Raw bytes.
#[derive(Debug, ToSchema)]
#[schema(value_type = String, format = Binary, content_media_type = "application/octet-stream")]
pub struct BinaryBody(Vec<u8>);

/// A free-form JSON object.
#[derive(Debug, ToSchema)]
#[schema(value_type = Object)]
pub struct Object(serde_json::Value);

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "nox",
        description = "Runs untrusted Python and shell jobs in a sandbox, over HTTP. Every route \
                       but `/health` and `/openapi.json` needs `Authorization: Bearer <token>`; \
                       each token has its own workspace. Every 4xx/5xx has the body \
                       `{\"error\", \"message\", \"detail\"}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(health, openapi_json, metrics, system, services, restart, run_py, run_sh, put,
          list_files, get_file, put_file, delete_file),
    components(schemas(ErrorBody, JobEvent)),
    security(("bearer" = [])),
    modifiers(&ErrorResponses),
    tags(
        (name = "jobs", description = "Run code."),
        (name = "files", description = "The token's workspace."),
        (name = "service", description = "Health and this document."),
        (name = "operations", description = "For operators: metrics, host status, restart."),
    )
)]
struct ApiDoc;

/// Which errors an operation can answer, by status: every route can answer 431 (headers too
/// large); authenticated ones 401; those with input 400; those that ask the executor 500,
/// 502 and 503 and every status an executor error maps to (`api_error::wire_status`).
pub fn errors_of(path: &str, method: &str) -> &'static [u16] {
    const EXECUTOR: &[u16] = &[400, 401, 404, 409, 413, 431, 500, 502, 503, 507];
    const EXECUTOR_WITH_BODY: &[u16] = &[400, 401, 404, 409, 413, 415, 431, 500, 502, 503, 507];
    match (path, method) {
        ("/health", _) | ("/openapi.json", _) => &[431],
        ("/metrics", _) | ("/system", _) | ("/services", _) | ("/actions/restart", _) => {
            &[401, 431]
        }
        ("/run_py", _) | ("/run_sh", _) | ("/put", _) => EXECUTOR_WITH_BODY,
        _ => EXECUTOR,
    }
}

/// The reusable response of each error status.
fn error_response(status: u16) -> Option<(&'static str, &'static str)> {
    Some(match status {
        400 => (
            "BadRequest",
            "The request is malformed: `bad_request`, `invalid_json`, `invalid_path` or \
             `forbidden_command`.",
        ),
        401 => (
            "Unauthorized",
            "`unauthorized`: missing or invalid bearer token (with `WWW-Authenticate: Bearer`).",
        ),
        404 => ("NotFound", "`not_found`: no such file or directory."),
        409 => (
            "Conflict",
            "`conflict`: the path exists with the wrong type, or a directory is not empty.",
        ),
        413 => (
            "PayloadTooLarge",
            "`payload_too_large`: the body, the upload or the job input is over a limit.",
        ),
        415 => (
            "UnsupportedMediaType",
            "`unsupported_media_type`: the body must be JSON (or multipart for `/put`).",
        ),
        431 => (
            "HeadersTooLarge",
            "`headers_too_large`: the request headers are over `max_header_bytes`.",
        ),
        500 => (
            "Internal",
            "`internal`: a bug or an operating-system failure.",
        ),
        502 => (
            "BadGateway",
            "`bad_gateway`: the executor misbehaved or speaks another protocol version.",
        ),
        503 => (
            "Unavailable",
            "`busy` (the job queue is full; see `Retry-After`), `executor_unavailable` or \
             `sandbox_unavailable`.",
        ),
        507 => (
            "InsufficientStorage",
            "`quota_exceeded`: the workspace is over its disk quota (`executor.workspace_quota_mb`); \
             delete files first.",
        ),
        _ => return None,
    })
}

/// Adds the Bearer scheme, the error responses of [`errors_of`], and the 405 answer every
/// path gives to other methods.
struct ErrorResponses;

impl Modify for ErrorResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.security_schemes.insert(
            SECURITY_SCHEME.to_owned(),
            RefOr::T(SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token from `frontend.api_token`, `token_files` or the \
                         `api-token` credential.",
                    ))
                    .build(),
            )),
        );
        if let Some(RefOr::T(Schema::Object(run_python))) = components.schemas.get_mut("RunPython")
            && let Some(RefOr::T(Schema::Object(filename))) =
                run_python.properties.get_mut("filename")
        {
            filename.pattern = Some(PATH_PATTERN.to_owned());
            filename.max_length = Some(MAX_PATH_LEN);
        }
        // Other form fields are ignored, but their names travel in part headers, where
        // control characters are malformed.
        if let Some(RefOr::T(Schema::Object(form))) = components.schemas.get_mut("PutForm") {
            form.property_names = Some(Box::new(Schema::Object(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(r"^[^\u0000-\u001f\u007f]*$"))
                    .build(),
            )));
        }
        // The executor refuses a command line with a NUL byte (`sh -c` could not take it).
        if let Some(RefOr::T(Schema::Object(run_shell))) = components.schemas.get_mut("RunShell")
            && let Some(RefOr::T(Schema::Object(cmd))) = run_shell.properties.get_mut("cmd")
        {
            cmd.pattern = Some(r"^[^\u0000]*$".to_owned());
        }
        let mut used = std::collections::BTreeSet::new();
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                ("get", item.get.as_mut()),
                ("put", item.put.as_mut()),
                ("post", item.post.as_mut()),
                ("delete", item.delete.as_mut()),
            ];
            for (method, operation) in operations {
                let Some(operation) = operation else { continue };
                if method == "put"
                    && let Some(RefOr::T(body)) = operation.request_body.as_mut()
                {
                    body.required = Some(Required::False); // an empty body is an empty file
                }
                for parameter in operation.parameters.iter_mut().flatten() {
                    let RefOr::T(parameter) = parameter else {
                        continue;
                    };
                    let pattern = match parameter.name.as_str() {
                        "path" => PATH_PATTERN,
                        "prefix" => PREFIX_PATTERN,
                        _ => continue,
                    };
                    parameter.schema = Some(RefOr::T(Schema::Object(
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .pattern(Some(pattern))
                            .max_length(Some(MAX_PATH_LEN))
                            .build(),
                    )));
                }
                for &status in errors_of(path, method) {
                    let key = status.to_string();
                    if operation.responses.responses.contains_key(&key) {
                        continue; // declared with its own body (`/health`)
                    }
                    if let Some((name, _)) = error_response(status) {
                        operation
                            .responses
                            .responses
                            .insert(key, RefOr::Ref(Ref::from_response_name(name)));
                        used.insert(status);
                    }
                }
            }
        }
        for status in used {
            if let Some((name, description)) = error_response(status) {
                components.responses.insert(
                    name.to_owned(),
                    RefOr::T(error_body_response(status, description)),
                );
            }
        }
    }
}

fn error_body_response(status: u16, description: &str) -> Response {
    let content = ContentBuilder::new()
        .schema(Some(RefOr::<Schema>::Ref(Ref::from_schema_name(
            "ErrorBody",
        ))))
        .build();
    let mut response = ResponseBuilder::new()
        .description(description)
        .content("application/json", content);
    let string = || ObjectBuilder::new().schema_type(Type::String).build();
    let header = match status {
        401 => Some(("WWW-Authenticate", "Always `Bearer`.")),
        503 => Some((
            "Retry-After",
            "Seconds to wait before retrying (`busy`, `executor_unavailable`).",
        )),
        _ => None,
    };
    if let Some((name, description)) = header {
        response = response.header(
            name,
            HeaderBuilder::new()
                .schema(Some(string()))
                .description(Some(description))
                .build(),
        );
    }
    response.build()
}

/// The document as JSON, built once at start.
pub fn document() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::routes::Route;

    fn doc() -> Value {
        serde_json::from_str(&document()).unwrap()
    }

    #[test]
    fn the_document_is_openapi_3_1_with_the_bearer_scheme() {
        let doc = doc();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert_eq!(doc["security"][0]["bearer"], serde_json::json!([]));
        assert_eq!(
            doc["paths"]["/health"]["get"]["security"],
            serde_json::json!([{}])
        );
    }

    #[test]
    fn every_route_and_method_is_documented_and_nothing_else() {
        let doc = doc();
        let paths = doc["paths"].as_object().unwrap();
        let documented: std::collections::BTreeSet<(String, String)> = paths
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .filter(|key| ["get", "put", "post", "delete"].contains(&key.as_str()))
                    .map(move |method| (path.clone(), method.to_ascii_uppercase()))
            })
            .collect();
        let mut routed = std::collections::BTreeSet::new();
        for path in paths.keys() {
            let concrete = path.replace("{path}", "x");
            let route = Route::of(&concrete).unwrap_or_else(|| panic!("{path} is not routed"));
            for method in route.allow().split(", ") {
                routed.insert((path.clone(), method.to_owned()));
            }
        }
        assert_eq!(documented, routed);
        for route in Route::EVERY_PATH {
            let documented_path = route.replace("x", "{path}");
            assert!(
                paths.contains_key(route) || paths.contains_key(&documented_path),
                "{route} is routed but not documented"
            );
        }
    }

    #[test]
    fn every_error_response_uses_the_uniform_error_body() {
        let doc = doc();
        let responses = doc["components"]["responses"].as_object().unwrap();
        for (name, response) in responses {
            assert_eq!(
                response["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody",
                "{name}"
            );
        }
        let run = &doc["paths"]["/run_sh"]["post"]["responses"];
        for status in ["400", "401", "413", "415", "431", "500", "502", "503"] {
            assert!(run[status]["$ref"].is_string(), "/run_sh lacks {status}");
        }
        assert!(doc["paths"]["/metrics"]["get"]["responses"]["401"].is_object());
        assert!(doc["paths"]["/openapi.json"]["get"]["responses"]["401"].is_null());
    }
}
