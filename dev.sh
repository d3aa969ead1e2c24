#!/usr/bin/env bash
# Run nox locally: builds both daemons, then starts the frontend in dev mode, which binds
# 127.0.0.1:8080 (NOX_BIND_ADDR / NOX_PORT change it), starts the executor on a Unix socket
# through the same LISTEN_FDS protocol systemd uses, uses an embedded default configuration
# and a workspace under your state directory, and prints a token with a ready curl line.
# Stop it with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --locked --bin nox-frontend --bin nox-executor
exec target/release/nox-frontend dev "$@"
