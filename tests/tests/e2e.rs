//! End-to-end tests of the real daemons. One test binary; the harness is `nox_e2e`.
//!
//! Most tests share one running instance (`Nox::shared()`); those that kill, restart or
//! reconfigure a daemon start their own. Tests that need root say `SKIP` out loud when the
//! suite is not root, and fail instead under CI.

#[cfg(test)]
mod e2e {
    mod api;
    mod auth;
    mod config;
    mod dev;
    mod isolation;
    mod jobs;
    mod limits;
    mod paths;
    mod resilience;
    mod sandbox;
    mod scaleout;
    mod seed;
    mod streaming;
}
