//! `GET /health` (no authentication): the frontend's version and what the executor says
//! about itself — readiness, load, limits, and which sandbox layers are in force.

use std::time::Duration;

use http::{Response, StatusCode};
use nox_protocol::{ExecutorStatus, Reply, Request};

use crate::AppState;
use crate::api_error::ApiError;
use crate::api_types::{ExecutorUnreachable, HealthReply, HealthUnavailable};
use crate::body::{self, Body};
use crate::executor::ExecutorError;

/// The whole health check answers within this, even if the executor hangs.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

/// Ask the executor for its status, within `within`.
pub async fn executor_status(
    state: &AppState,
    within: Duration,
) -> Result<ExecutorStatus, ExecutorError> {
    let asked = state
        .executor
        .call_once(Request::Status, "Status", |reply| {
            matches!(reply, Reply::Status(_))
        });
    match tokio::time::timeout(within, asked).await {
        Ok(Ok(Reply::Status(status))) => Ok(status),
        Ok(Ok(other)) => Err(ExecutorError::unexpected("Status", other)),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(ExecutorError::ReplyTimeout),
    }
}

pub async fn health(state: &AppState) -> Response<Body> {
    match executor_status(state, HEALTH_TIMEOUT).await {
        Ok(status) => body::json(StatusCode::OK, &HealthReply::from(&status)),
        Err(error) => {
            tracing::warn!(error = %nox_protocol::error_chain(&error), "health: executor unavailable");
            let error = ApiError::from(error);
            let body = HealthUnavailable {
                error: error.body(),
                status: "unavailable".to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                executor: ExecutorUnreachable { reachable: false },
            };
            error.into_response_with(&body)
        }
    }
}
