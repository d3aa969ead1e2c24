//! `GET /health` (no authentication): the frontend's version and what the executor says
//! about itself — readiness, load, limits, and which sandbox layers are in force.

use std::time::Duration;

use http::{Response, StatusCode};
use nox_protocol::{ExecutorStatus, Reply, Request};
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::api_error::ApiError;
use crate::body::{self, Body};
use crate::executor::ExecutorError;

/// The whole health check answers within this, even if the executor hangs.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn health(state: &AppState) -> Response<Body> {
    let asked = state
        .executor
        .call_once(Request::Status, "Status", |reply| {
            matches!(reply, Reply::Status(_))
        });
    let result = match tokio::time::timeout(HEALTH_TIMEOUT, asked).await {
        Ok(Ok(Reply::Status(status))) => Ok(status),
        Ok(Ok(other)) => Err(ExecutorError::unexpected("Status", other)),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(ExecutorError::ReplyTimeout),
    };
    match result {
        Ok(status) => body::json(StatusCode::OK, &healthy(&status)),
        Err(error) => {
            tracing::warn!(error = %crate::api_error::error_chain(&error), "health: executor unavailable");
            let error = ApiError::from(error);
            let mut body = error.body();
            body.insert("status".into(), json!("unavailable"));
            body.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
            body.insert("executor".into(), json!({"reachable": false}));
            error.into_response_with(body)
        }
    }
}

/// The 200 body: `"ok"`, or `"degraded"` when a required layer is not active.
pub fn healthy(status: &ExecutorStatus) -> Value {
    let layers: Map<String, Value> = status
        .layers
        .iter()
        .map(|layer| {
            (
                layer.layer.name().to_owned(),
                json!({"active": layer.active, "required": layer.required, "detail": layer.detail}),
            )
        })
        .collect();
    let limits = &status.ceilings;
    json!({
        "status": if status.ready { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "executor": {
            "reachable": true,
            "ready": status.ready,
            "software": status.software,
            "uptime_ms": status.uptime_ms,
            "jobs_running": status.jobs_running,
            "jobs_queued": status.jobs_queued,
            "max_concurrent_jobs": status.max_concurrent_jobs,
            "max_queued_jobs": status.max_queued_jobs,
            "limits": {
                "timeout_ms": limits.timeout_ms,
                "cpu_seconds": limits.cpu_seconds,
                "memory_bytes": limits.memory_bytes,
                "max_processes": limits.max_processes,
                "max_file_bytes": limits.max_file_bytes,
                "max_open_files": limits.max_open_files,
                "max_output_bytes": limits.max_output_bytes,
            },
            "layers": layers,
        },
    })
}
