//! Integration tests of the clients and the operator endpoints against the real daemons
//! (the `nox-e2e` harness): noxctl, the Python client, the OpenAPI document (validated and
//! fuzzed with schemathesis), `/metrics` (parsed by the Prometheus Python parser),
//! `/system`, `/services` and `/actions/restart`.
//!
//! Needs the daemons built (`cargo build --workspace --bins`) and, for the Python tools,
//! PyPI: `clients/tools/pytools.sh` makes a virtualenv under `target/pytools` once.

#[cfg(test)]
mod clients {
    mod api;
    mod cli;
    mod common;
    mod operator;
    mod python;
    mod restart;
}
