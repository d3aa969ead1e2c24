#!/usr/bin/env bash
# nox: every check in one command. Idempotent; on a fresh Debian 12 machine run it as root
# and it installs what is missing first. CI runs exactly this (`.ci/run`).
#
#   1. system packages the tests use (systemd-socket-activate, python3, curl, git, a C linker,
#      nginx)
#   2. the users the executor expects: group `nox`, user `nox-sandbox`
#   3. cargo fmt --check, clippy -D warnings, build, test (unit, end-to-end, adversarial,
#      clients), then the boot test of the systemd units in a container
#   4. cargo deny (advisories from shared/advisory-db.bundle, licenses, bans, sources)
#
# As root nothing is skipped; as an ordinary user steps 1-2 are skipped (with a note) and
# the few end-to-end tests that need root say SKIP.
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
note() { printf '    %s\n' "$*"; }
fail() { printf '\n\033[1;31mFAILED: %s\033[0m\n' "$*" >&2; exit 1; }
trap 'fail "step \"${current_step:-setup}\" (line $LINENO, exit $?)"' ERR
run_step() { current_step="$1"; step "$1"; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# --- 1. system packages -------------------------------------------------------------------
run_step "system packages"
missing=()
command -v systemd-socket-activate >/dev/null 2>&1 || missing+=(systemd)
[ -x /usr/bin/python3 ] || missing+=(python3)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v git >/dev/null 2>&1 || missing+=(git)
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
# nginx: the scale-out end-to-end test runs its own (as an ordinary user, without it: SKIP)
[ -x /usr/sbin/nginx ] || ! is_root || missing+=(nginx)
if [ ${#missing[@]} -eq 0 ]; then
  note "all present"
elif is_root && command -v apt-get >/dev/null 2>&1; then
  note "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Installing nginx must not start it on this host: the tests start their own.
  no_start=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; no_start=1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
  [ "$no_start" -eq 0 ] || rm -f /usr/sbin/policy-rc.d
else
  fail "missing packages: ${missing[*]} (run as root on Debian, or install them)"
fi
if ! command -v cargo >/dev/null 2>&1 && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || fail "cargo not found: install Rust with rustup (rust-toolchain.toml pins the version)"

# --- 2. users -----------------------------------------------------------------------------
run_step "users and groups"
if is_root; then
  getent group nox >/dev/null || groupadd --system nox
  getent passwd nox-sandbox >/dev/null \
    || useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin nox-sandbox
  note "group nox: $(getent group nox)"
  note "user nox-sandbox: $(getent passwd nox-sandbox)"
else
  note "not root: skipped (jobs run as $(id -un); tests that need root will say SKIP)"
fi

# --- 3. Rust ------------------------------------------------------------------------------
run_step "cargo fmt --all --check"
cargo fmt --all --check

run_step "cargo clippy --workspace --all-targets --locked -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

run_step "cargo build --workspace --bins --locked"
cargo build --workspace --bins --locked

run_step "python tools for the API tests (openapi-spec-validator, schemathesis, prometheus parser)"
clients/tools/pytools.sh

run_step "cargo test --workspace --locked"
cargo test --workspace --locked

# The production units under a real systemd 252 (systemd-nspawn on a throwaway overlay of /),
# through real nginx and Caddy. Needs root; says SKIP otherwise. Builds release binaries.
run_step "boot test: tests/boot/run.sh"
tests/boot/run.sh

# --- 4. supply chain ----------------------------------------------------------------------
run_step "cargo deny (advisories, licenses, bans, sources)"
if ! command -v cargo-deny >/dev/null 2>&1; then
  note "installing cargo-deny from crates.io"
  cargo install --locked cargo-deny
fi
# The advisory database cannot be fetched from here (only the package registries are
# reachable): it comes from a git bundle kept beside the repository, and cargo-deny runs
# offline. The directory name is cargo-deny's hash of the database URL; ask cargo-deny for
# it, and fall back to the value for https://github.com/rustsec/advisory-db.
bundle="../shared/advisory-db.bundle"
[ -f "$bundle" ] || fail "$bundle not found: clone nox beside shared/ (the advisory database snapshot)"
bundle="$(cd "$(dirname "$bundle")" && pwd)/$(basename "$bundle")"
db_root="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
db_dir=$(cargo deny --log-level debug --offline check advisories 2>&1 \
  | sed -n "s/.*Opening advisory database at '\([^']*\)'.*/\1/p" | head -n 1 || true)
[ -n "$db_dir" ] || db_dir="$db_root/advisory-db-3157b0e258782691"
mkdir -p "$(dirname "$db_dir")"
if [ -d "$db_dir/.git" ]; then
  # Refresh from the bundle; fetching also renews FETCH_HEAD, which cargo-deny reads as the
  # database's age.
  git -C "$db_dir" fetch --quiet "$bundle" main
  git -C "$db_dir" reset --quiet --hard FETCH_HEAD
else
  rm -rf "$db_dir"
  git clone --quiet --branch main "$bundle" "$db_dir"
  git -C "$db_dir" fetch --quiet "$bundle" main
fi
note "advisory database: $db_dir at $(git -C "$db_dir" log -1 --format='%h (%cs)')"
# cargo-deny reads `cargo metadata`, which offline needs every package in Cargo.lock — for
# every target, Windows ones too — in the local registry cache; a fresh machine has only
# what the Linux build pulled. Fetch the rest from crates.io first.
cargo fetch --locked
cargo deny --offline --locked check --hide-inclusion-graph

current_step=""
step "all checks passed"
