#!/usr/bin/env bash
# Install nox from a source checkout onto this machine (Debian 12 / systemd >= 249), as root.
#
#   sudo packaging/install.sh            build the release binaries, install, start, smoke-test
#   sudo packaging/install.sh --no-build use target/release/ as it is (built beforehand)
#
# Idempotent: every step says what it did, and a second run says "unchanged" everywhere.
# Upgrading is running it again from a newer checkout: changed binaries or units restart
# the services that are running. What it installs:
#
#   /usr/bin/nox-frontend, /usr/libexec/nox/nox-executor, /usr/sbin/nox-doctor
#   /usr/local/lib/systemd/system/nox-{executor,frontend}.{socket,service}, nox-views.service
#   /usr/local/lib/sysusers.d/nox.conf       (group nox, users nox-frontend, nox-sandbox)
#   /etc/nox/nox.toml                        (commented defaults; only if absent)
#   /etc/nox/api-token                       (random token, root 0600; only if absent)
#   /usr/share/doc/nox/                      (DEPLOY.md, proxy and firewall examples)
#
# then enables and starts the two sockets (the services start on the first request).
# packaging/uninstall.sh removes it again.
set -euo pipefail

usage() {
  sed -n '2,19s/^# \{0,1\}//p' "$0"
  cat <<'EOF'
Options:
  --no-build      do not run cargo; install the binaries found in the target directory
  --bin-dir DIR   take the binaries from DIR (default: $CARGO_TARGET_DIR or target, /release)
  --no-start      install and enable, but do not start the sockets (nor smoke-test)
  --no-smoke      skip the smoke test
EOF
}

src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build=1 start=1 smoke=1
bin_dir="${CARGO_TARGET_DIR:-$src/target}/release"
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build=0 ;;
    --bin-dir) bin_dir="${2:?--bin-dir needs a directory}"; shift ;;
    --no-start) start=0; smoke=0 ;;
    --no-smoke) smoke=0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

UNIT_DIR=/usr/local/lib/systemd/system
SYSUSERS_DIR=/usr/local/lib/sysusers.d
DOC_DIR=/usr/share/doc/nox
UNITS=(nox-views.service nox-executor.socket nox-executor.service nox-frontend.socket nox-frontend.service)

# --- output -----------------------------------------------------------------------------
failures=0
report() { printf '  %-44s %s\n' "$1" "$2"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }
check() { # check NAME CMD...: prints PASS/FAIL
  local name="$1"; shift
  local out
  if out=$("$@" 2>&1); then
    report "$name" "PASS${out:+ ($out)}"
  else
    report "$name" "FAIL${out:+: $out}"
    failures=$((failures + 1))
  fi
}

[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0 $*)"
command -v systemctl >/dev/null || die "systemctl not found: nox needs systemd"
[ -f "$src/systemd/nox-executor.service" ] || die "$src is not a nox checkout (no systemd/)"

# What changed: running services are restarted at the end, sockets only if their unit changed.
units_changed=0 frontend_changed=0 executor_changed=0
declare -A unit_changed=()

# install_file SRC DST MODE OWNER:GROUP -> echoes installed|updated|unchanged
install_file() {
  local src_file="$1" dst="$2" mode="$3" owner="${4:-root:root}"
  if [ -f "$dst" ] && cmp -s "$src_file" "$dst"; then
    if [ "$(stat -c '%a %U:%G' "$dst")" = "${mode#0} $owner" ]; then
      echo unchanged; return
    fi
    chmod "$mode" "$dst"; chown "$owner" "$dst"; echo "fixed mode/owner"; return
  fi
  local what=installed
  [ -e "$dst" ] && what=updated
  install -D -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$src_file" "$dst.nox-new"
  mv -f "$dst.nox-new" "$dst"
  echo "$what"
}

echo "==> nox install from $src"

# --- 1. binaries ------------------------------------------------------------------------
if [ "$build" -eq 1 ]; then
  command -v cargo >/dev/null || die "cargo not found: install Rust (rustup), or build first and pass --no-build"
  echo "  building release binaries (a few minutes the first time)..."
  (cd "$src" && cargo build --release --locked --bin nox-frontend --bin nox-executor --bin noxctl) \
    || die "cargo build failed"
  report "build" "done"
else
  report "build" "skipped (--no-build)"
fi
for b in nox-frontend nox-executor noxctl; do
  [ -x "$bin_dir/$b" ] || die "$bin_dir/$b not found: build it (cargo build --release --locked --bin $b) or pass --bin-dir"
done
r=$(install_file "$bin_dir/nox-frontend" /usr/bin/nox-frontend 0755)
report /usr/bin/nox-frontend "$r"; [ "$r" = unchanged ] || frontend_changed=1
r=$(install_file "$bin_dir/nox-executor" /usr/libexec/nox/nox-executor 0755)
report /usr/libexec/nox/nox-executor "$r"; [ "$r" = unchanged ] || executor_changed=1
report /usr/sbin/nox-doctor "$(install_file "$src/packaging/nox-doctor" /usr/sbin/nox-doctor 0755)"
report /usr/bin/noxctl "$(install_file "$bin_dir/noxctl" /usr/bin/noxctl 0755)"
# noxctl's man page and completions, generated from its CLI definition.
gen=$(mktemp -d)
"$bin_dir/noxctl" man > "$gen/noxctl.1"
"$bin_dir/noxctl" completions bash > "$gen/noxctl.bash"
"$bin_dir/noxctl" completions zsh > "$gen/_noxctl"
"$bin_dir/noxctl" completions fish > "$gen/noxctl.fish"
report /usr/local/share/man/man1/noxctl.1 "$(install_file "$gen/noxctl.1" /usr/local/share/man/man1/noxctl.1 0644)"
report /usr/share/bash-completion/completions/noxctl "$(install_file "$gen/noxctl.bash" /usr/share/bash-completion/completions/noxctl 0644)"
report /usr/share/zsh/vendor-completions/_noxctl "$(install_file "$gen/_noxctl" /usr/share/zsh/vendor-completions/_noxctl 0644)"
report /usr/share/fish/vendor_completions.d/noxctl.fish "$(install_file "$gen/noxctl.fish" /usr/share/fish/vendor_completions.d/noxctl.fish 0644)"
rm -rf "$gen"

# --- 2. units and users ---------------------------------------------------------------
for u in "${UNITS[@]}"; do
  r=$(install_file "$src/systemd/$u" "$UNIT_DIR/$u" 0644)
  report "$UNIT_DIR/$u" "$r"; [ "$r" = unchanged ] || { units_changed=1; unit_changed[$u]=1; }
done
report "$SYSUSERS_DIR/nox.conf" "$(install_file "$src/systemd/nox.sysusers" "$SYSUSERS_DIR/nox.conf" 0644)"
users_ok() { getent group nox >/dev/null && getent passwd nox-sandbox >/dev/null && getent passwd nox-frontend >/dev/null; }
if users_ok; then
  report "users (nox, nox-frontend, nox-sandbox)" unchanged
else
  systemd-sysusers nox.conf
  users_ok || die "systemd-sysusers did not create group nox / users nox-frontend, nox-sandbox"
  report "users (nox, nox-frontend, nox-sandbox)" "created"
fi

# --- 3. configuration and token ---------------------------------------------------------
if [ -d /etc/nox ]; then report /etc/nox unchanged
else install -d -m 0755 -o root -g root /etc/nox; report /etc/nox created; fi
if [ -e /etc/nox/nox.toml ]; then
  report /etc/nox/nox.toml "unchanged (exists; defaults in $DOC_DIR/nox.toml.example)"
else
  install -m 0640 -o root -g nox "$src/packaging/nox.toml" /etc/nox/nox.toml
  report /etc/nox/nox.toml "installed (commented defaults)"
fi
if [ -e /etc/nox/api-token ]; then
  report /etc/nox/api-token "unchanged (exists)"
else
  (umask 077; od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > /etc/nox/api-token.nox-new; echo >> /etc/nox/api-token.nox-new)
  chown root:root /etc/nox/api-token.nox-new; chmod 0600 /etc/nox/api-token.nox-new
  mv /etc/nox/api-token.nox-new /etc/nox/api-token
  report /etc/nox/api-token "created (64 hex characters, root 0600)"
fi

# --- 4. documentation -----------------------------------------------------------------------
for f in DEPLOY.md Caddyfile nginx/nox.conf nginx/nox-scaleout.conf ufw.sh nox.toml; do
  [ -f "$src/packaging/$f" ] || continue
  dst="$DOC_DIR/$(basename "$f")"
  case "$f" in nox.toml) dst="$DOC_DIR/nox.toml.example" ;; nginx/*) dst="$DOC_DIR/nginx-$(basename "$f")" ;; esac
  mode=0644; [ "$f" = ufw.sh ] && mode=0755
  report "$dst" "$(install_file "$src/packaging/$f" "$dst" "$mode")"
done

# --- 5. systemd -----------------------------------------------------------------------------
if [ ! -d /run/systemd/system ]; then
  report "systemd" "not running (chroot/container build?): enable/start skipped"
  exit 0
fi
if [ "$units_changed" -eq 1 ]; then
  systemctl daemon-reload; report "systemctl daemon-reload" "done"
else
  report "systemctl daemon-reload" "unchanged (units unchanged)"
fi
for s in nox-executor.socket nox-frontend.socket; do
  if [ "$(systemctl is-enabled "$s" 2>/dev/null)" = enabled ]; then
    report "enable $s" unchanged
  else
    systemctl enable --quiet "$s"; report "enable $s" enabled
  fi
done
if [ "$start" -eq 1 ]; then
  for d in executor frontend; do
    sock="nox-$d.socket" svc="nox-$d.service"
    if ! systemctl is-active --quiet "$sock"; then
      systemctl start "$sock"; report "start $sock" started
    elif [ -n "${unit_changed[$sock]:-}" ]; then
      # A changed socket (address, mode) takes effect only when the socket is re-created.
      systemctl stop "$svc" "$sock"; systemctl start "$sock"; report "start $sock" "restarted (unit changed)"
    else
      report "start $sock" "unchanged (active)"
    fi
    # A running service picks up a new binary or unit now; an idle one at its next start.
    bin_changed=$frontend_changed; [ "$d" = executor ] && bin_changed=$executor_changed
    if systemctl is-active --quiet "$svc" && { [ "$bin_changed" -eq 1 ] || [ -n "${unit_changed[$svc]:-}" ]; }; then
      systemctl restart "$svc"; report "restart $svc" "restarted (new binary or unit)"
    fi
  done
else
  report "start sockets" "skipped (--no-start)"
fi

# --- 6. smoke test ------------------------------------------------------------------------
[ "$smoke" -eq 1 ] || { echo "==> installed (smoke test skipped)"; exit 0; }
echo "==> smoke test"
listen=$(systemctl show -P Listen nox-frontend.socket | awk '{print $1; exit}')
case "$listen" in
  0.0.0.0:*) url="http://127.0.0.1:${listen##*:}" ;;
  \[::\]:*|::*) url="http://[::1]:${listen##*:}" ;;
  *:*) url="http://$listen" ;;
  *) url="http://127.0.0.1:8080" ;;
esac
token=$(awk '!/^[[:space:]]*(#|$)/ { print ($2 != "" ? $2 : $1); exit }' /etc/nox/api-token)

sock_ok() {
  systemctl is-active --quiet nox-executor.socket || { echo "nox-executor.socket not active"; return 1; }
  [ -S /run/nox/executor.sock ] || { echo "/run/nox/executor.sock missing"; return 1; }
  local got; got=$(stat -c '%U:%G %a' /run/nox/executor.sock)
  [ "$got" = "root:nox 660" ] || { echo "/run/nox/executor.sock is $got, want root:nox 660"; return 1; }
  echo "/run/nox/executor.sock root:nox 0660"
}
http_sock_ok() {
  systemctl is-active --quiet nox-frontend.socket || { echo "nox-frontend.socket not active"; return 1; }
  echo "$listen"
}
health_ok() {
  local code body
  body=$(curl -sS --max-time 20 -o - -w '\n%{http_code}' "$url/health") || { echo "$body"; return 1; }
  code=${body##*$'\n'}; body=${body%$'\n'*}
  [ "$code" = 200 ] || { echo "HTTP $code: $body"; return 1; }
  python3 -c 'import json,sys; h=json.load(sys.stdin); e=h.get("executor") or {}
ok = h.get("status") == "ok" and (not isinstance(e, dict) or e.get("reachable", True))
print("status", h.get("status"), "executor reachable" if ok else "executor NOT reachable"); sys.exit(0 if ok else 1)' <<<"$body"
}
run_ok() {
  local out
  out=$(curl -sS --max-time 30 -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d '{"cmd":"echo nox-smoke-$((6*7)); id -u"}' "$url/run_sh") || { echo "$out"; return 1; }
  python3 -c 'import json,sys; r=json.load(sys.stdin)
ok = r.get("returncode") == 0 and "nox-smoke-42" in r.get("stdout", "")
print(("returncode 0, ran as uid " + r["stdout"].split()[-1]) if ok else json.dumps(r)[:300]); sys.exit(0 if ok else 1)' <<<"$out"
}
check "executor socket listening" sock_ok
check "frontend socket listening" http_sock_ok
check "GET $url/health" health_ok
check "POST /run_sh with the token" run_ok
if [ "$failures" -gt 0 ]; then
  echo "==> installed, but $failures smoke check(s) FAILED: run nox-doctor" >&2
  exit 1
fi
echo "==> nox is installed and answering on $url (token: /etc/nox/api-token)"
