//! `GET /health` (no authentication): the frontend's version and what the executor says
//! about itself — readiness, load, limits, and which sandbox layers are in force.
//!
//! A status the executor gave is reused for [`FRESH`]: a monitor or balancer polling
//! `/health` thousands of times a second costs the executor one status call per period.
//! A failure is never reused: every `/health` asks again until the executor answers.

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

/// How long an executor status is reused by `/health`.
pub const FRESH: Duration = Duration::from_millis(20);

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
    if let Some(status) = state.health.get() {
        return body::json(StatusCode::OK, &HealthReply::from(&status));
    }
    match executor_status(state, HEALTH_TIMEOUT).await {
        Ok(status) => {
            let reply = body::json(StatusCode::OK, &HealthReply::from(&status));
            state.health.put(status);
            reply
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn status(jobs_running: u32) -> ExecutorStatus {
        ExecutorStatus {
            software: "nox-executor test".into(),
            uptime_ms: 1,
            ready: true,
            layers: Vec::new(),
            jobs_running,
            jobs_queued: 0,
            max_concurrent_jobs: 4,
            max_queued_jobs: 64,
            ceilings: nox_protocol::Limits::default(),
        }
    }

    #[test]
    fn a_status_is_reused_only_while_fresh_and_the_newest_wins() {
        let recent = crate::recent::Recent::new(FRESH);
        assert_eq!(recent.get(), None);
        recent.put(status(1));
        recent.put(status(2));
        assert_eq!(recent.get().map(|s| s.jobs_running), Some(2));
        std::thread::sleep(FRESH + Duration::from_millis(5));
        assert_eq!(
            recent.get(),
            None,
            "a status older than {FRESH:?} was reused"
        );
    }
}
