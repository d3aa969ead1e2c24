#!/usr/bin/env bash
# nox's benchmark, one command: builds the release binaries, then measures the spawn floor
# and nox in the same run, and judges the issue's requirements (overload, idle connections,
# a 200 MiB upload, streaming latency, through nginx and Caddy too when they are installed;
# see bench/src/main.rs). Argument: seconds per cell (default 3). Writes
# bench/results/latest.md and latest.svg. Run it as root on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v systemd-socket-activate >/dev/null || { echo "needs systemd-socket-activate (apt-get install systemd)"; exit 1; }
cargo build --release --locked --bin nox-frontend --bin nox-executor --bin nox-bench
exec target/release/nox-bench "${1:-3}"
