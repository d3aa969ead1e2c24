#!/usr/bin/env bash
# Boot test: nox's real systemd units under a real systemd (Debian 12: 252), as root.
#
#   tests/boot/run.sh [--no-build] [--no-deb] [--keep-logs]
#
# Boots a systemd-nspawn container whose root is an overlay of this machine's own `/`
# (upper and work dirs on a fresh tmpfs: nothing is written to the host, and systemd never
# runs against the host's root, whose boot-time tmpfiles cleanup would empty the real /tmp).
# Inside it: packaging/install.sh --no-build, then checks, one PASS/FAIL line each:
#   socket activation, the seed's checklist directly and through a real nginx and Caddy
#   (configs from packaging/), streamed NDJSON arriving in pieces, two clean journald
#   streams joined by NOX_JOB_ID, restarts without refused/reset connections, the sandbox
#   seen from a job, nox-doctor, install.sh idempotence, `systemd-analyze verify` and the
#   exposure scores (gates: frontend <= 1.0, executor <= 2.6), the .deb (install, purge).
# Exits non-zero on any FAIL. Everything it starts (container, mounts, processes) is torn
# down on exit, also on failure or Ctrl-C. Takes a few minutes (plus a release build).
set -uo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build=1 deb=1 keep_logs=0
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    --no-deb) deb=0 ;;
    --keep-logs) keep_logs=1 ;;
    -h|--help) sed -n '2,17s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

if [ "$(id -u)" -ne 0 ]; then
  echo "SKIP boot test: needs root (systemd-nspawn, mounts)"
  exit 0
fi

T0=$(date +%s)
pass=0 fail=0
PASS() { printf '\033[32mPASS\033[0m  %s\n' "$*"; pass=$((pass + 1)); }
FAIL() { printf '\033[31mFAIL\033[0m  %s\n' "$*"; fail=$((fail + 1)); }
INFO() { printf '      %s\n' "$*"; }
STEP() { alive; printf '\n\033[1m== %s\033[0m  (%ss)\n' "$*" "$(( $(date +%s) - T0 ))"; }
# Stop at once when interrupted or when the container went away (nothing left to check).
alive() {
  [ "${interrupted:-0}" -eq 0 ] || exit 130
  if [ -n "${NSPAWN_PID:-}" ] && [ -n "${CT_PID:-}" ] && ! kill -0 "$NSPAWN_PID" 2>/dev/null; then
    DIE "the container is gone (systemd-nspawn exited)"
  fi
}
DIE() { printf '\033[31mABORT\033[0m %s\n' "$*"; exit 1; }
# check NAME COMMAND...: PASS when the command succeeds; its output is shown indented.
check() {
  local name="$1" out rc
  shift
  alive
  out=$("$@" 2>&1); rc=$?
  alive
  if [ $rc -eq 0 ]; then PASS "$name"; else FAIL "$name (exit $rc)"; fi
  [ -n "$out" ] && printf '%s\n' "$out" | head -n 25 | sed 's/^/      /'
  return $rc
}

# jtest JSON CONDITION SHOW: parse JSON as r, print eval(SHOW), succeed when eval(CONDITION).
jtest() {
  python3 -c '
import json, sys
try:
    r = json.loads(sys.argv[1])
except ValueError:
    print("not JSON:", sys.argv[1][:300]); sys.exit(1)
print(eval(sys.argv[3]))
sys.exit(0 if eval(sys.argv[2]) else 1)' "$@"
}
# http_get_code: split a curl "-w '\n%{http_code}'" answer into CODE and BODY.
split_reply() { CODE=${1##*$'\n'}; BODY=${1%$'\n'*}; }

# --- teardown, whatever happens -----------------------------------------------------------
interrupted=0 WORK="" ROOT="" NSPAWN_PID="" CT_PID="" BG_PIDS=() POLICY_CREATED=0 LOGS="" CG_DIRS=()
exec 3>&1 4>&2     # the real stdout/stderr: a trap may fire inside a redirected function call
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  exec 1>&3 2>&4
  for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
    echo "-- powering the container off"
    if [ -n "$CT_PID" ] && kill -0 "$CT_PID" 2>/dev/null; then
      # systemctl needs the container's bus; SIGRTMIN+4 to its init works without it.
      timeout 10 nsenter -t "$CT_PID" -a -r -w /bin/systemctl poweroff --no-block >/dev/null 2>&1 \
        || kill -s SIGRTMIN+4 "$CT_PID" 2>/dev/null
    fi
    for _ in $(seq 1 60); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$NSPAWN_PID" 2>/dev/null; then
      echo "-- container still up after 30 s: terminating systemd-nspawn"
      kill -TERM "$NSPAWN_PID" 2>/dev/null; sleep 3
      kill -KILL "$NSPAWN_PID" 2>/dev/null
      [ -n "$CT_PID" ] && kill -KILL "$CT_PID" 2>/dev/null
    fi
    wait "$NSPAWN_PID" 2>/dev/null
  fi
  # The container's cgroups (ours, see "own cgroup" below): leaves first.
  for d in "${CG_DIRS[@]}"; do
    [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  if [ -n "$LOGS" ] && [ -n "$WORK" ] && [ -f "$WORK/console.log" ]; then
    cp "$WORK/console.log" "$LOGS/" 2>/dev/null
  fi
  if [ -n "$ROOT" ] && mountpoint -q "$ROOT"; then
    umount "$ROOT" 2>/dev/null || umount -l "$ROOT"
  fi
  if [ -n "$WORK" ] && mountpoint -q "$WORK"; then
    umount "$WORK" 2>/dev/null || umount -l "$WORK"
  fi
  [ -n "$WORK" ] && rmdir "$WORK" 2>/dev/null
  [ "$POLICY_CREATED" -eq 1 ] && rm -f /usr/sbin/policy-rc.d
  if [ -n "$LOGS" ]; then
    if [ "$keep_logs" -eq 1 ] || [ "$rc" -ne 0 ]; then echo "-- logs kept in $LOGS"
    else rm -rf "$LOGS"; fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'interrupted=1; echo "-- interrupted" >&3; exit 130' INT TERM

LOGS=$(mktemp -d /tmp/nox-boot-logs.XXXXXX)

# --- 1. host packages ---------------------------------------------------------------------
STEP "host packages"
missing=()
for p in systemd-container caddy nginx curl python3 iproute2 openssl binutils; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  INFO "installing ${missing[*]}"
  # Installing nginx/caddy on the host must not start them there.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; POLICY_CREATED=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  timeout 300 apt-get update -qq >/dev/null || DIE "apt-get update failed"
  timeout 600 apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$LOGS/apt.log" 2>&1 \
    || { tail -n 20 "$LOGS/apt.log"; DIE "apt-get install failed"; }
  if [ "$POLICY_CREATED" -eq 1 ]; then rm -f /usr/sbin/policy-rc.d; POLICY_CREATED=0; fi
else
  INFO "present: systemd-container caddy nginx curl python3 iproute2 openssl binutils"
fi
INFO "$(systemd-nspawn --version | head -n1), caddy $(caddy version | cut -d' ' -f1), $(nginx -v 2>&1 | cut -d' ' -f3)"

# --- 2. binaries ----------------------------------------------------------------------------
STEP "release binaries"
TARGET="${CARGO_TARGET_DIR:-$SRC/target}/release"
if [ "$build" -eq 1 ]; then
  (cd "$SRC" && timeout 1800 cargo build --release --locked --bin nox-frontend --bin nox-executor --bin noxctl) \
    >"$LOGS/build.log" 2>&1 || { tail -n 30 "$LOGS/build.log"; DIE "cargo build --release failed"; }
fi
for b in nox-frontend nox-executor noxctl; do
  [ -x "$TARGET/$b" ] || DIE "$TARGET/$b missing (run without --no-build)"
done
INFO "$(ls -l --time-style=+%H:%M "$TARGET/nox-frontend" "$TARGET/nox-executor" | awk '{print $6, $7}' | paste -sd' ')"

# --- 3. the container -----------------------------------------------------------------------
STEP "boot a container: overlay of / on a tmpfs, systemd-nspawn -b"
T_BOOT=$(date +%s)
WORK=$(mktemp -d /tmp/nox-boot.XXXXXX)
mount -t tmpfs -o size=3G,mode=0700 nox-boot "$WORK" || DIE "cannot mount a tmpfs on $WORK"
mkdir -p "$WORK/upper" "$WORK/work" "$WORK/root"
ROOT="$WORK/root"
mount -t overlay nox-boot-root -o "lowerdir=/,upperdir=$WORK/upper,workdir=$WORK/work" "$ROOT" \
  || DIE "cannot mount the overlay of / on $ROOT"

# What the container starts with: this machine minus its services and without any nox
# installed, and without the nox users, so install.sh does everything a fresh host needs.
for unit in caddy.service nginx.service postgresql.service e2scrub_reap.service \
            apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer man-db.timer \
            e2scrub_all.timer fstrim.timer getty@tty1.service console-getty.service \
            systemd-timesyncd.service; do
  ln -sf /dev/null "$ROOT/etc/systemd/system/$unit"
done
rm -f "$ROOT/usr/sbin/policy-rc.d"       # deb-systemd-invoke may start units inside
rm -rf "$ROOT/etc/nox" "$ROOT/var/lib/nox" "$ROOT/var/lib/private/nox" "$ROOT/usr/libexec/nox" \
       "$ROOT/usr/bin/nox-frontend" "$ROOT/usr/sbin/nox-doctor" "$ROOT/usr/share/doc/nox" \
       "$ROOT"/usr/local/lib/systemd/system/nox-* "$ROOT"/etc/systemd/system/nox-* \
       "$ROOT/usr/local/lib/sysusers.d/nox.conf" "$ROOT/usr/lib/sysusers.d/nox.conf"
for f in passwd group shadow gshadow; do
  [ -f "$ROOT/etc/$f" ] && sed -i -E '/^(nox|nox-sandbox|nox-frontend):/d' "$ROOT/etc/$f"
done
# A journald that rate-limits hard (20 messages per 30 s and unit, scaled up by at most ~5×
# with free disk space): the units must keep every job's records anyway (section 7; with
# the units' LogRateLimit lines taken out, 9 and 46 of 300 jobs kept their records).
mkdir -p "$ROOT/etc/systemd/journald.conf.d"
printf '[Journal]\nRateLimitIntervalSec=30s\nRateLimitBurst=20\n' \
  > "$ROOT/etc/systemd/journald.conf.d/nox-boot-test.conf"
# The binaries as they are now (the target dir may be rebuilt while the test runs).
install -D -m 0755 "$TARGET/nox-frontend" "$ROOT/opt/nox-bin/nox-frontend"
install -D -m 0755 "$TARGET/nox-executor" "$ROOT/opt/nox-bin/nox-executor"
install -D -m 0755 "$TARGET/noxctl" "$ROOT/opt/nox-bin/noxctl"
mkdir -p "$ROOT/nox-src" "$ROOT/nox-deb"

# --system-call-filter: nspawn's own seccomp allow list (252) lacks the Landlock calls, so
# without it every process in the container gets EPERM from landlock_create_ruleset and the
# executor reports "landlock: not available in this kernel" (a container artefact: on a real
# host systemd is PID 1 and the unit's SystemCallFilter= is all there is).
# Own cgroup: with --keep-unit nspawn puts the container's cgroups (payload/, supervisor/)
# under its own cgroup. Started from the root cgroup of a host without systemd, two
# containers would share /payload: each one's systemd then sees the other's processes (as
# pid 0) in its units' cgroups and fails to kill them ("Failed to kill control group ...:
# Input/output error"). A cgroup of its own per run keeps runs apart and the host's root
# cgroup untouched. On a host run by systemd, a transient scope does the same.
launch=()
if [ -d /run/systemd/system ]; then
  launch=(systemd-run --scope --quiet --unit="nox-boot-$$" --)
else
  cg_name="nox-boot-$$"
  if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then cg_roots=(/sys/fs/cgroup)
  else cg_roots=(); for r in /sys/fs/cgroup/unified /sys/fs/cgroup/systemd; do [ -d "$r" ] && cg_roots+=("$r"); done; fi
  for r in "${cg_roots[@]}"; do mkdir "$r/$cg_name" && CG_DIRS+=("$r/$cg_name") || DIE "cannot create cgroup $r/$cg_name"; done
fi
(
  for d in "${CG_DIRS[@]}"; do echo "$BASHPID" > "$d/cgroup.procs" || exit 1; done
  exec "${launch[@]}" \
systemd-nspawn -D "$ROOT" --register=no --keep-unit --private-network -b \
  --system-call-filter="landlock_create_ruleset landlock_add_rule landlock_restrict_self" \
  --machine=nox-boot --bind-ro="$SRC:/nox-src" --bind-ro="$LOGS:/nox-deb" \
  </dev/null >"$WORK/console.log" 2>&1
) &
NSPAWN_PID=$!

# The container's init: the descendant of systemd-nspawn that is pid 1 in its namespace.
find_init() {
  local p
  for p in $(pgrep -P "$NSPAWN_PID") $(for c in $(pgrep -P "$NSPAWN_PID"); do pgrep -P "$c"; done); do
    if awk '/^NSpid:/ { exit !($NF == 1 && NF > 2) }' "/proc/$p/status" 2>/dev/null; then
      echo "$p"; return 0
    fi
  done
  return 1
}
for _ in $(seq 1 100); do
  CT_PID=$(find_init) && break
  kill -0 "$NSPAWN_PID" 2>/dev/null || { cat "$WORK/console.log"; DIE "systemd-nspawn exited"; }
  sleep 0.2
done
[ -n "$CT_PID" ] || { tail -n 30 "$WORK/console.log"; DIE "container init not found"; }

# Run a command inside the container (root, all namespaces, a clean environment).
CT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ct() { nsenter -t "$CT_PID" -a -r -w env -i PATH="$CT_PATH" HOME=/root LANG=C.UTF-8 TERM=dumb "$@"; }
# ct_t SECONDS COMMAND...: the same, with a time limit.
ct_t() { local s="$1"; shift; timeout -k 5 "$s" nsenter -t "$CT_PID" -a -r -w env -i PATH="$CT_PATH" HOME=/root LANG=C.UTF-8 TERM=dumb "$@"; }

# systemctl needs the container's manager socket: wait for it, then for the boot to end.
for _ in $(seq 1 150); do
  ct test -S /run/systemd/private 2>/dev/null && break
  kill -0 "$NSPAWN_PID" 2>/dev/null || { cat "$WORK/console.log"; DIE "systemd-nspawn exited"; }
  sleep 0.2
done
state=$(ct_t 90 systemctl is-system-running --wait 2>&1)
case "$state" in
  running|degraded) PASS "container booted: systemd $(ct systemctl --version | awk 'NR==1{print $2}'), state $state, booted in $(( $(date +%s) - T_BOOT ))s" ;;
  *) tail -n 30 "$WORK/console.log"; DIE "container did not finish booting: '$state'" ;;
esac
[ "$state" = degraded ] && INFO "failed units: $(ct systemctl --failed --plain --no-legend | awk '{print $1}' | paste -sd' ')"

# --- 4. install ---------------------------------------------------------------------------------
STEP "packaging/install.sh --no-build (no smoke test yet)"
ct_t 120 /nox-src/packaging/install.sh --no-build --bin-dir /opt/nox-bin --no-smoke >"$LOGS/install-1.log" 2>&1
rc=$?
sed 's/^/      /' "$LOGS/install-1.log"
[ $rc -eq 0 ] && PASS "install.sh exited 0" || DIE "install.sh failed (exit $rc)"

TOKEN=$(ct awk '!/^[[:space:]]*(#|$)/ { print ($2 != "" ? $2 : $1); exit }' /etc/nox/api-token)
[ ${#TOKEN} -ge 32 ] || DIE "no token in /etc/nox/api-token"
AUTH="Authorization: Bearer $TOKEN"

# --- 5. socket activation -----------------------------------------------------------------------
STEP "socket activation"
active() { ct systemctl is-active "$1" 2>/dev/null; }
expect_states() { # expect_states UNIT=STATE...
  local bad=0 kv u want got
  for kv in "$@"; do
    u=${kv%%=*}; want=${kv#*=}; got=$(active "$u")
    echo "$u: $got"
    [ "$got" = "$want" ] || bad=1
  done
  return $bad
}
check "after install: sockets active, both services inactive" expect_states \
  nox-executor.socket=active nox-frontend.socket=active nox-executor.service=inactive nox-frontend.service=inactive
check "executor socket is root:nox 0660 in a 0755 /run/nox" \
  bash -c "got=\$(nsenter -t $CT_PID -a stat -c '%U:%G %a' /run/nox/executor.sock /run/nox | paste -sd' '); echo \"\$got\"; [ \"\$got\" = 'root:nox 660 root:root 755' ]"

# A request the frontend answers alone (401): starts the frontend, not the executor.
code=$(ct_t 20 curl -s -o /dev/null -w '%{http_code}' -X POST -d '{"cmd":"true"}' http://127.0.0.1:8080/run_sh)
INFO "POST /run_sh without a token: HTTP $code"
check "first request starts nox-frontend by its socket; the executor stays idle" expect_states \
  nox-frontend.service=active nox-executor.service=inactive
check "first job (run_sh echo first-job) is answered" jtest \
  "$(ct_t 30 curl -sS -H "$AUTH" -H 'Content-Type: application/json' -d '{"cmd":"echo first-job"}' http://127.0.0.1:8080/run_sh)" \
  "r.get('stdout', '').strip() == 'first-job'" "r"
check "... and nox-executor was started by its socket" bash -c "
  echo 'TriggeredBy: '\$(nsenter -t $CT_PID -a systemctl show -P TriggeredBy nox-executor.service)
  nsenter -t $CT_PID -a systemctl is-active nox-executor.service"
check "the executor adopted the socket from systemd (journal: socket_activated=true)" \
  bash -c "nsenter -t $CT_PID -a journalctl -q -u nox-executor -o verbose --no-pager | grep -m1 -E 'NOX_SOCKET_ACTIVATED=true' "

# --- 6. the seed's checklist, direct and through nginx and Caddy ------------------------------------
STEP "nginx and Caddy in front (packaging/nginx/nox.conf, packaging/Caddyfile)"
# nginx: the site as shipped, minus the redirect server and TLS (plain HTTP on loopback).
ct mkdir -p /run/nox-test
sed -e '/# BEGIN plain-http-redirect/,/# END plain-http-redirect/d' \
    -e '/# BEGIN tls/,/# END tls/c\    listen 127.0.0.1:8082;' \
    "$SRC/packaging/nginx/nox.conf" | ct tee /run/nox-test/nginx-site.conf >/dev/null
ct tee /run/nox-test/nginx.conf >/dev/null <<'EOF'
user www-data;
worker_processes 2;
pid /run/nox-test/nginx.pid;
error_log stderr warn;
events { worker_connections 256; }
http {
    include /etc/nginx/mime.types;
    access_log off;
    include /run/nox-test/nginx-site.conf;
}
EOF
# The full site (TLS included) must be valid too: check it with a throwaway certificate.
ct_t 20 sh -c 'cd /run/nox-test && openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=nox.example.org -keyout key.pem -out cert.pem >/dev/null 2>&1 &&
  sed -e "s#/etc/letsencrypt/live/nox.example.org/fullchain.pem#/run/nox-test/cert.pem#; s#/etc/letsencrypt/live/nox.example.org/privkey.pem#/run/nox-test/key.pem#" /nox-src/packaging/nginx/nox.conf > tls-site.conf &&
  printf "pid /run/nox-test/t.pid; error_log stderr; events {} http { include /etc/nginx/mime.types; include /run/nox-test/tls-site.conf; }\n" > tls.conf'
check "nginx -t accepts packaging/nginx/nox.conf as shipped (TLS, with a test certificate)" ct_t 20 nginx -t -q -c /run/nox-test/tls.conf
check "caddy validate accepts packaging/Caddyfile as shipped" ct_t 30 sh -c 'caddy validate --adapter caddyfile --config /nox-src/packaging/Caddyfile 2>&1 | tail -n1 | grep "Valid configuration"'
ct_t 20 systemd-run --quiet --unit=nox-test-nginx -p Type=simple nginx -g 'daemon off;' -c /run/nox-test/nginx.conf
ct_t 20 systemd-run --quiet --unit=nox-test-caddy -p Type=simple -E HOME=/run/nox-test -E XDG_DATA_HOME=/run/nox-test -E XDG_CONFIG_HOME=/run/nox-test \
  -E NOX_SITE=http://127.0.0.1:8081 caddy run --adapter caddyfile --config /nox-src/packaging/Caddyfile
wait_port() { local _; for _ in $(seq 1 50); do ct ss -Hltn "sport = :$1" | grep -q . && return 0; sleep 0.2; done; return 1; }
check "nginx listening on 127.0.0.1:8082" wait_port 8082 || ct journalctl -u nox-test-nginx --no-pager | tail -n 10
check "Caddy listening on 127.0.0.1:8081" wait_port 8081 || ct journalctl -u nox-test-caddy --no-pager | tail -n 10

JOB_ID=""
# The seed's checks (health, put, run_py, run_sh, auth) against one base URL.
seed_checklist() {
  local base="$1" name="$2"
  split_reply "$(ct_t 15 curl -sS -w '\n%{http_code}' "$base/health")"
  check "$name: GET /health -> 200, status ok" jtest "$BODY" "'$CODE' == '200' and r['status'] == 'ok'" \
    "f\"HTTP $CODE, status {r.get('status')}, executor reachable {r.get('executor', {}).get('reachable')}\""
  split_reply "$(ct_t 15 curl -sS -w '\n%{http_code}' -H 'Content-Type: application/json' -d '{"cmd":"echo x"}' "$base/run_sh")"
  check "$name: POST /run_sh without a token -> 401 (JSON error)" jtest "$BODY" "'$CODE' == '401'" "f\"HTTP $CODE {r}\""
  ct sh -c "printf 'hello from %s\n' '$name' > /run/nox-test/upload.txt"
  split_reply "$(ct_t 15 curl -sS -w '\n%{http_code}' -H "$AUTH" -F 'f=@/run/nox-test/upload.txt' "$base/put?path=checks/$name.txt")"
  check "$name: POST /put?path=checks/$name.txt (multipart f)" jtest "$BODY" \
    "'$CODE' == '200' and r.get('saved') == 'checks/$name.txt' and r.get('bytes', 0) > 0" "f\"HTTP $CODE {r}\""
  split_reply "$(ct_t 30 curl -sS -w '\n%{http_code}' -H "$AUTH" -H 'Content-Type: application/json' \
    -d "{\"code\": \"import sys\\nprint(open('checks/$name.txt').read().strip(), sys.version_info[0])\"}" "$base/run_py")"
  check "$name: POST /run_py reads the uploaded file" jtest "$BODY" \
    "r.get('returncode') == 0 and 'hello from $name 3' in r.get('stdout', '')" "f\"HTTP $CODE stdout={r.get('stdout')!r} returncode={r.get('returncode')}\""
  split_reply "$(ct_t 30 curl -sS -w '\n%{http_code}' -H "$AUTH" -H 'Content-Type: application/json' -d "{\"cmd\": \"cat checks/$name.txt; id -u\"}" "$base/run_sh")"
  check "$name: POST /run_sh" jtest "$BODY" \
    "r.get('returncode') == 0 and 'hello from $name' in r.get('stdout', '')" "f\"HTTP $CODE stdout={r.get('stdout')!r} returncode={r.get('returncode')} job_id={r.get('job_id')}\""
  [ -z "$JOB_ID" ] && JOB_ID=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("job_id",""))' "$BODY" 2>/dev/null)
  # Streamed output: a job printing, sleeping 1 s, printing. The two lines must arrive
  # about a second apart (no buffering anywhere on the way).
  ct_t 30 bash -c "curl -sS -N --no-buffer -H '$AUTH' -H 'Accept: application/x-ndjson' -H 'Content-Type: application/json' \
      -d '{\"code\": \"import time\\nprint(\\\"tick-one\\\", flush=True)\\ntime.sleep(1)\\nprint(\\\"tick-two\\\", flush=True)\"}' '$base/run_py' \
      | while IFS= read -r line; do printf '%s %s\n' \"\$(date +%s.%N)\" \"\$line\"; done" >"$LOGS/stream-$name.log" 2>&1
  check "$name: streamed NDJSON arrives in pieces (tick-one, 1 s, tick-two)" python3 - "$LOGS/stream-$name.log" <<'EOF'
import json, sys
times = {}
lines = open(sys.argv[1]).read().splitlines()
for line in lines:
    stamp, _, rest = line.partition(" ")
    try:
        json.loads(rest)
    except ValueError:
        sys.exit(f"not an NDJSON line: {line!r}")
    for word in ("tick-one", "tick-two"):
        if word in rest and word not in times:
            times[word] = float(stamp)
if len(times) != 2:
    sys.exit("missing output in stream:\n" + "\n".join(lines))
gap = times["tick-two"] - times["tick-one"]
print(f"{len(lines)} NDJSON lines; tick-two arrived {gap:.2f} s after tick-one")
sys.exit(0 if gap >= 0.7 else 1)
EOF
}
STEP "seed checklist: direct (127.0.0.1:8080)"
seed_checklist http://127.0.0.1:8080 direct
STEP "seed checklist: through nginx (127.0.0.1:8082)"
seed_checklist http://127.0.0.1:8082 nginx
STEP "seed checklist: through Caddy (127.0.0.1:8081)"
seed_checklist http://127.0.0.1:8081 caddy

# --- 7. journald ----------------------------------------------------------------------------------
STEP "journald: two streams, one job id across both"
ct journalctl --sync 2>/dev/null
check "journalctl -u nox-frontend / -u nox-executor: own records only" ct_t 20 python3 - <<'EOF'
import json, subprocess, sys
bad = 0
for unit, own, other in (("nox-frontend", "nox-frontend", "nox-executor"),
                         ("nox-executor", "nox-executor", "nox-frontend")):
    out = subprocess.run(["journalctl", "-q", "-u", unit, "-o", "json", "--no-pager"],
                         capture_output=True, text=True, check=True).stdout
    ids = {}
    for line in out.splitlines():
        rec = json.loads(line)
        ident = rec.get("SYSLOG_IDENTIFIER", "?")
        ids[ident] = ids.get(ident, 0) + 1
    print(f"-u {unit}: " + ", ".join(f"{k}={v}" for k, v in sorted(ids.items())))
    if not ids.get(own) or ids.get(other):
        bad = 1
sys.exit(bad)
EOF
if [ -n "$JOB_ID" ]; then
  check "journalctl NOX_JOB_ID=$JOB_ID finds records of both daemons" ct_t 20 bash -c "
    out=\$(journalctl -q NOX_JOB_ID=$JOB_ID -o json --no-pager | python3 -c 'import json,sys; print(\" \".join(sorted({json.loads(l).get(\"_SYSTEMD_UNIT\",\"?\") for l in sys.stdin})))')
    echo \"units: \$out\"
    [[ \$out == *nox-executor.service* && \$out == *nox-frontend.service* ]]"
  INFO "e.g.: $(ct journalctl -q NOX_JOB_ID="$JOB_ID" -o short --no-pager | head -n 4 | cut -c1-150 | paste -sd'|' | sed 's/|/\n      /g')"
else
  FAIL "no job_id in the run_sh reply"
fi

check "300 jobs in a burst: each leaves its records in both streams, none dropped" ct_t 120 python3 - "$TOKEN" <<'EOF'
import http.client, json, subprocess, sys, threading
token, ids, lock = sys.argv[1], [], threading.Lock()
def client():
    c = http.client.HTTPConnection("127.0.0.1", 8080, timeout=30)
    for _ in range(75):
        c.request("POST", "/run_sh", '{"cmd":"true"}',
                  {"Authorization": "Bearer " + token, "Content-Type": "application/json"})
        r = json.loads(c.getresponse().read())
        with lock:
            ids.append(r["job_id"])
threads = [threading.Thread(target=client) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
subprocess.run(["journalctl", "--sync"], check=False)
bad = 0
for unit in ("nox-frontend", "nox-executor"):
    out = subprocess.run(["journalctl", "-q", "-u", unit, "-o", "json", "--no-pager", "--since", "-10min"],
                         capture_output=True, text=True, check=True).stdout
    seen = {json.loads(l).get("NOX_JOB_ID") for l in out.splitlines()}
    kept = sum(1 for i in ids if i in seen)
    print(f"{unit}: records of {kept} of {len(ids)} jobs")
    bad |= kept != len(ids)
sys.exit(bad)
EOF


# --- 8. restarts under load ---------------------------------------------------------------------
STEP "restarts under load: clients keep calling /health and /run_sh"
ct tee /run/nox-test/load.sh >/dev/null <<EOF
#!/bin/bash
# Until /run/nox-test/stop exists: one line per request: kind curl_exit http_code body.
kind=\$1
while [ ! -e /run/nox-test/stop ]; do
  if [ "\$kind" = health ]; then
    body=\$(curl -sS --max-time 20 -w '\n%{http_code}' http://127.0.0.1:8080/health 2>&1); rc=\$?
  else
    body=\$(curl -sS --max-time 20 -w '\n%{http_code}' -H 'Authorization: Bearer $TOKEN' -H 'Content-Type: application/json' -d '{"cmd":"echo load"}' http://127.0.0.1:8080/run_sh 2>&1); rc=\$?
  fi
  code=\${body##*\$'\n'}; body=\${body%\$'\n'*}
  printf '%s %s %s %s\n' "\$kind" "\$rc" "\$code" "\$(printf '%s' "\$body" | tr '\n' ' ')"
done
EOF
ct chmod +x /run/nox-test/load.sh
ct rm -f /run/nox-test/stop
ct_t 120 /run/nox-test/load.sh health >"$LOGS/load-health.log" 2>&1 & BG_PIDS+=($!)
ct_t 120 /run/nox-test/load.sh run >"$LOGS/load-run.log" 2>&1 & BG_PIDS+=($!)
sleep 2
pids_before="$(ct systemctl show -P MainPID nox-executor.service) $(ct systemctl show -P MainPID nox-frontend.service)"
# A job in flight when the executor restarts: it may fail, but with a JSON error.
inflight() { ct_t 60 curl -sS -w '\n%{http_code}' -H "$AUTH" -H 'Content-Type: application/json' -d '{"cmd":"sleep 2; echo survived"}' http://127.0.0.1:8080/run_sh; }
inflight >"$LOGS/inflight-executor.log" 2>&1 & BG_PIDS+=($!)
sleep 0.7
t=$(date +%s.%N); ct_t 60 systemctl restart nox-executor.service; INFO "systemctl restart nox-executor: $(python3 -c "import time; print(f'{time.time()-$t:.2f} s')")"
sleep 2
# A job in flight when the frontend restarts: the old frontend finishes it (graceful stop).
inflight >"$LOGS/inflight-frontend.log" 2>&1 & BG_PIDS+=($!)
sleep 0.7
t=$(date +%s.%N); ct_t 60 systemctl restart nox-frontend.service; INFO "systemctl restart nox-frontend: $(python3 -c "import time; print(f'{time.time()-$t:.2f} s')")"
sleep 2
pids_after="$(ct systemctl show -P MainPID nox-executor.service) $(ct systemctl show -P MainPID nox-frontend.service)"
ct touch /run/nox-test/stop
wait "${BG_PIDS[@]}" 2>/dev/null; BG_PIDS=()
check "no connection refused or reset during both restarts" python3 - "$LOGS/load-health.log" "$LOGS/load-run.log" <<'EOF'
import json, sys
total = ok = 0
transport, non_json, errors = [], [], []
for path in sys.argv[1:]:
    for line in open(path):
        parts = line.rstrip("\n").split(" ", 3)
        if len(parts) < 3:
            continue
        kind, rc, code = parts[:3]
        body = parts[3] if len(parts) > 3 else ""
        total += 1
        if rc != "0":
            transport.append(line.strip())
        elif code == "200":
            ok += 1
        else:
            try:
                err = json.loads(body)
                errors.append(f"{kind} {code} {err.get('error')}: {err.get('message', '')[:100]}")
            except ValueError:
                non_json.append(line.strip())
print(f"{total} requests: {ok} OK, {len(errors)} JSON errors, {len(transport)} transport errors, {len(non_json)} non-JSON errors")
for e in errors[:5]:
    print("  JSON error:", e)
for e in (transport + non_json)[:5]:
    print("  BAD:", e)
if any("(52)" in t for t in transport):
    print("  (empty reply at a frontend restart: the race the next check reproduces)")
# Only jobs in flight when the executor restarts may fail (with a JSON error): at most a few.
sys.exit(0 if total >= 20 and not transport and not non_json and len(errors) <= 3 else 1)
EOF
# The race behind an "Empty reply from server" in the loop above, made deterministic: a
# connection the old frontend has accepted, whose request arrives after SIGTERM.
ct tee /run/nox-test/idle-probe.py >/dev/null <<'EOF'
import socket, subprocess, time
s = socket.create_connection(("127.0.0.1", 8080), timeout=20)
time.sleep(0.3)                        # accepted by the running frontend, no request yet
p = subprocess.Popen(["systemctl", "restart", "nox-frontend.service"])
time.sleep(0.2)                        # SIGTERM delivered, graceful shutdown under way
try:
    s.sendall(b"GET /health HTTP/1.1\r\nHost: nox\r\nConnection: close\r\n\r\n")
    reply = s.recv(64)
    print("reply:", reply.split(b"\r\n")[0].decode() if reply else "none (connection closed without a response)")
    ok = reply.startswith(b"HTTP/1.1 ")
except OSError as error:
    print("error:", error)
    ok = False
p.wait()
raise SystemExit(0 if ok else 1)
EOF
check "a connection accepted just before a frontend restart still gets its answer" ct_t 60 python3 /run/nox-test/idle-probe.py \
  || INFO "(nox-frontend closes accepted connections that have not sent their request yet when SIGTERM arrives: hyper's HTTP/1 graceful_shutdown, hyperium/hyper#2730, #3808)"
check "both services active again, with new processes (MainPID $pids_before -> $pids_after)" bash -c "
  set -- $pids_before $pids_after; [ \$1 != \$3 ] && [ \$2 != \$4 ] && [ \$3 != 0 ] && [ \$4 != 0 ]"
split_reply "$(cat "$LOGS/inflight-executor.log")"
check "job in flight during the executor restart: a JSON reply (HTTP $CODE)" jtest "$BODY" "isinstance(r, dict) and ('error' in r or 'returncode' in r)" "r"
split_reply "$(cat "$LOGS/inflight-frontend.log")"
check "job in flight during the frontend restart: finished by the old frontend (HTTP $CODE)" jtest "$BODY" \
  "'$CODE' == '200' and r.get('stdout', '').strip() == 'survived'" "r"

# The frontend's own restart: it exits with status 0, Restart=always starts it again on the
# socket systemd keeps. Repeated quickly it must never hit the start limit.
code=$(ct_t 20 curl -s -o /dev/null -w '%{http_code}' -X POST -H "$AUTH" http://127.0.0.1:8080/actions/restart)
if [ "$code" = 404 ]; then
  INFO "POST /actions/restart: not in this build"
else
  restarts_ok() {
    local before after _
    before=$(ct systemctl show -P NRestarts nox-frontend.service)
    for _ in 1 2 3 4 5 6 7; do
      ct_t 20 curl -s -o /dev/null -X POST -H "$AUTH" http://127.0.0.1:8080/actions/restart
      sleep 0.3
    done
    # The service comes back and answers (requests meanwhile wait in the socket).
    ct_t 30 curl -sS -o /dev/null -w 'health after the restarts: HTTP %{http_code}\n' http://127.0.0.1:8080/health
    after=$(ct systemctl show -P NRestarts nox-frontend.service)
    echo "NRestarts $before -> $after, state $(active nox-frontend.service), socket $(active nox-frontend.socket)"
    [ "$(active nox-frontend.service)" = active ] && [ "$(active nox-frontend.socket)" = active ] && [ "$after" -gt "$before" ]
  }
  check "POST /actions/restart (HTTP $code), then 7 more in a row: the frontend comes back every time" restarts_ok
fi

# --- 9. the sandbox seen from a job ----------------------------------------------------------------
STEP "the sandbox, seen from a job in the installed service"
run_sh() { ct_t 30 curl -sS -H "$AUTH" -H 'Content-Type: application/json' -d "$(python3 -c 'import json,sys; print(json.dumps({"cmd": sys.argv[1]}))' "$1")" http://127.0.0.1:8080/run_sh; }
run_py() { ct_t 30 curl -sS -H "$AUTH" -H 'Content-Type: application/json' -d "$(python3 -c 'import json,sys; print(json.dumps({"code": sys.argv[1]}))' "$1")" http://127.0.0.1:8080/run_py; }
check "noxctl (installed, token from /etc/nox/api-token): runsh streams the output and returns the job's exit code" \
  ct_t 30 bash -c 'out=$(noxctl runsh "echo via-noxctl; exit 3"); rc=$?; echo "output [$out] exit $rc"; [ "$out" = via-noxctl ] && [ "$rc" = 3 ]'
check "noxctl's man page and bash/zsh/fish completions are installed" \
  ct_t 10 bash -c 'ls /usr/local/share/man/man1/noxctl.1 /usr/share/bash-completion/completions/noxctl /usr/share/zsh/vendor-completions/_noxctl /usr/share/fish/vendor_completions.d/noxctl.fish'
check "a job runs as its workspace's own uid (2000000000 + n, gid the same, 0700 workspace)" jtest \
  "$(run_sh 'id -u; id -g; id -G; stat -c %u:%a .')" \
  "(lambda o: 2000000000 <= int(o[0]) < 2000065536 and o[1] == o[2] == o[0] and o[3] == o[0] + ':700')(r['stdout'].split())" \
  "r.get('stdout', r).strip()"
check "a Python job of the same workspace (forked by the zygote) runs as the same uid with no capabilities" jtest \
  "$(run_py "import os; print(os.getuid(), [l.split()[1] for l in open('/proc/self/status') if l.startswith(('CapPrm','CapEff','CapAmb'))])")" \
  "(lambda o: 2000000000 <= int(o.split()[0]) < 2000065536 and o.count('0000000000000000') == 3)(r['stdout'])" \
  "r.get('stdout', r).strip()"
HEALTH_NOW=$(ct_t 15 curl -sS http://127.0.0.1:8080/health)
if jtest "$HEALTH_NOW" "'pids cgroup (' in r['executor']['layers']['rlimits']['detail']" "''" >/dev/null 2>&1; then
  check "the job's processes are counted in a pids cgroup of its own (/health, /proc/self/cgroup)" jtest \
    "$(run_sh 'cat /proc/self/cgroup')" "any(l.split(':')[1] in ('pids', '') and l.rsplit('/', 1)[-1].startswith('job-') for l in r['stdout'].splitlines())" \
    "r.get('stdout', r).strip()"
else
  # systemd-nspawn on a cgroup-v1 hybrid host mounts the v1 controllers read-only in the
  # container: the executor cannot make job cgroups there and says so (the e2e and
  # adversarial suites check them outside systemd).
  check "/health says how processes are limited when no pids cgroup can be made" jtest "$HEALTH_NOW" \
    "'RLIMIT_NPROC of the workspace' in r['executor']['layers']['rlimits']['detail']" \
    "r['executor']['layers']['rlimits']['detail']"
fi
check "a job sees none of the host's /run (no D-Bus or other service sockets)" jtest \
  "$(run_sh 'ls -A /run; ls -A /run/systemd; test -e /run/dbus/system_bus_socket && echo DBUS')" \
  "'DBUS' not in r['stdout'] and 'dbus' not in r['stdout'].split()" "r.get('stdout', r).strip()"
check "a job sees only its own processes in /proc (not the daemons, not init) and no /proc/locks" jtest \
  "$(run_sh 'for p in /proc/[0-9]*; do cat $p/comm; done 2>/dev/null | sort -u | tr "\n" " "; echo; cat /proc/locks > /dev/null 2>&1; echo "locks=$?"')" \
  "'nox-' not in r['stdout'] and 'systemd' not in r['stdout'] and 'sh' in r['stdout'] and 'locks=1' in r['stdout']" "r['stdout'].strip()"
# A lock the container's own shell holds on /etc/hostname: a job in a view of its own (an
# overlay of /etc, nox-views.service) does not see it; without views it shares the inode.
# The control: a lock of the job's own, seen by the job (so the probe could have seen one).
ct setsid -f flock /etc/hostname sleep 20 </dev/null >/dev/null 2>&1
sleep 0.3
check "nox-views.service made the views; a job's /etc is its view's: a lock outside is not seen, its own is" jtest \
  "$(run_sh 'flock -n /etc/hostname true; echo "outside=$?"; flock /etc/hostname sleep 3 & sleep 0.5; flock -n /etc/hostname true; echo "own=$?"; wait')" \
  "'outside=0' in r['stdout'] and 'own=1' in r['stdout']" "r.get('stdout', r)"
check "Python's multiprocessing (Pool, Queue) works in a job: its view's own /dev/shm, writable under the unit" jtest \
  "$(run_py "import multiprocessing as mp, os
with mp.Pool(2) as p: print(p.map(abs, [-1, -2]))
q = mp.Queue(); q.put(7); print(q.get(), os.path.ismount('/dev/shm'))")" \
  "r['stdout'] == '[1, 2]\\n7 True\\n'" "r.get('stdout', r) or r.get('stderr', r)"
check "a job writes /tmp: its view's own tmpfs" jtest \
  "$(run_sh 'echo kept > /tmp/nox-boot-probe && grep -c " /tmp tmpfs " /proc/self/mounts')" \
  "r['stdout'] == '1\\n'" "r.get('stdout', r) or r.get('stderr', r)"
check "the job's /tmp file is on neither the container's /tmp nor the host's" bash -c \
  "! test -e /tmp/nox-boot-probe && ! nsenter -t $CT_PID -a test -e /tmp/nox-boot-probe"
check "the workspace's next job reads what the last one left in /tmp" jtest \
  "$(run_sh 'cat /tmp/nox-boot-probe')" "r['stdout'] == 'kept\\n'" "r.get('stdout', r) or r.get('stderr', r)"
check "a job's user has a name: whoami and id -gn name its workspace (its view's own /etc/passwd and /etc/group, written by the executor under the unit)" jtest \
  "$(run_sh 'echo "$USER $(whoami) $(id -gn) $(id -u)"')" \
  "len(set(r['stdout'].split()[:3])) == 1 and r['stdout'].split()[0] != r['stdout'].split()[3]" "r.get('stdout', r) or r.get('stderr', r)"
EXEC_NET=$(ct sh -c 'readlink /proc/$(systemctl show -P MainPID nox-executor.service)/ns/net')
check "a job runs in its view's own network namespace, not the executor's ($EXEC_NET)" jtest \
  "$(run_sh 'readlink /proc/self/ns/net')" \
  "r['stdout'].strip().startswith('net:[') and r['stdout'].strip() != '$EXEC_NET' and '$EXEC_NET'.startswith('net:[')" "r.get('stdout', r)"
check "nox-views.service: active, views in /var/lib/nox-views, no view's mount propagated onto the host's tree" bash -c "
  nsenter -t $CT_PID -a sh -c 'systemctl is-active nox-views.service && ls /var/lib/nox-views && test -e /var/lib/nox-views/0/.nox-view && ! mountpoint /var/lib/nox/workspaces && ! mountpoint /var/lib/nox'"
check "a job has no network (connect to 1.1.1.1:53 fails)" jtest "$(run_py "import socket; socket.create_connection(('1.1.1.1', 53), 1)")" \
  "r['returncode'] != 0" "f\"returncode {r['returncode']}: {r['stderr'].strip().splitlines()[-1:]}\""
check "/health: network_isolation active, every layer active" jtest "$(ct_t 15 curl -sS http://127.0.0.1:8080/health)" \
  "all(l['active'] for l in r['executor']['layers'].values())" \
  "'\\n'.join(f\"{n}: {'active' if l['active'] else 'INACTIVE'} ({l['detail']})\" for n, l in r['executor']['layers'].items())"
check "a job sees a read-only system (writes to /usr, /etc fail)" jtest \
  "$(run_sh 'touch /usr/nox-probe 2>&1; echo "usr=$?"; touch /etc/nox-probe 2>&1; echo "etc=$?"; touch /var/tmp/nox-probe 2>&1; echo "vartmp=$?"')" \
  "'usr=0' not in r['stdout'] and 'etc=0' not in r['stdout'] and 'usr=' in r['stdout']" "r['stdout'].strip()"
split_reply "$(ct_t 20 curl -sS -w '\n%{http_code}' -H "$AUTH" http://127.0.0.1:8080/services)"
if [ "$CODE" = 404 ]; then
  INFO "GET /services: not in this build"
else
  check "GET /services asks systemd over D-Bus from inside the unit (source systemctl, both active)" jtest "$BODY" \
    "r.get('source') == 'systemctl' and all(x['state'] == 'active' for x in r['services'])" "r"
fi
INFO "job's view of /home, /proc, /dev: $(run_sh 'ls -A /home | wc -l; ls /proc | grep -c "^[0-9]"; ls /dev | paste -sd" "' | python3 -c 'import json,sys; print(json.load(sys.stdin)["stdout"].replace("\n", " | "))')"

# --- 10. nox-doctor and idempotence ---------------------------------------------------------------
STEP "nox-doctor, and install.sh run again"
ct_t 60 nox-doctor >"$LOGS/doctor.log" 2>&1; rc=$?
check "nox-doctor: no FAIL" bash -c "grep -E '^(FAIL|WARN)|fix:' '$LOGS/doctor.log'; tail -n1 '$LOGS/doctor.log'; [ $rc -eq 0 ]"
ct_t 120 /nox-src/packaging/install.sh --no-build --bin-dir /opt/nox-bin >"$LOGS/install-2.log" 2>&1; rc=$?
check "install.sh again: exit 0, every step unchanged, smoke test passes" bash -c "
  grep -E 'PASS|FAIL' '$LOGS/install-2.log'
  changed=\$(grep '^  ' '$LOGS/install-2.log' | grep -v PASS | grep -vE 'unchanged|skipped')
  [ -z \"\$changed\" ] || echo \"changed: \$changed\"
  [ $rc -eq 0 ] && [ -z \"\$changed\" ] && ! grep -q FAIL '$LOGS/install-2.log'"

# --- 11. systemd-analyze ---------------------------------------------------------------------------------
STEP "systemd-analyze verify and security (on the running units)"
check "systemd-analyze verify: clean" ct_t 60 bash -c '
  out=$(systemd-analyze verify /usr/local/lib/systemd/system/nox-views.service /usr/local/lib/systemd/system/nox-executor.socket /usr/local/lib/systemd/system/nox-executor.service \
        /usr/local/lib/systemd/system/nox-frontend.socket /usr/local/lib/systemd/system/nox-frontend.service 2>&1)
  [ -z "$out" ] || { echo "$out"; exit 1; }'
ct_t 60 systemd-analyze security --no-pager nox-frontend.service >"$LOGS/security-frontend.txt" 2>&1
ct_t 60 systemd-analyze security --no-pager nox-executor.service >"$LOGS/security-executor.txt" 2>&1
score() { sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p' "$1" | tail -n1; }
sf=$(score "$LOGS/security-frontend.txt"); se=$(score "$LOGS/security-executor.txt")
check "exposure nox-frontend.service = ${sf:-?} (gate <= 1.0)" bash -c "grep 'Overall' '$LOGS/security-frontend.txt'; python3 -c 'import sys; sys.exit(not float(\"${sf:-99}\") <= 1.0)'"
# 2.0 before the views: CAP_SYS_CHROOT and chroot(2), to enter them, cost 0.2, and
# RestrictNamespaces=user net (setns into a view's user and network namespace) 0.4.
check "exposure nox-executor.service = ${se:-?} (gate <= 2.6)" bash -c "grep 'Overall' '$LOGS/security-executor.txt'; python3 -c 'import sys; sys.exit(not float(\"${se:-99}\") <= 2.6)'"
echo "nox-frontend.service ${sf:-?}  nox-executor.service ${se:-?}" > "$LOGS/exposure.txt"

# --- 12. uninstall, and the Debian package ---------------------------------------------------------------
STEP "uninstall.sh, then the .deb"
ct_t 60 /nox-src/packaging/uninstall.sh >"$LOGS/uninstall.log" 2>&1; rc=$?
check "uninstall.sh: units gone, sockets closed, views removed, /etc/nox and /var/lib/nox kept" bash -c "
  [ $rc -eq 0 ] || { tail -n 20 '$LOGS/uninstall.log'; exit 1; }
  nsenter -t $CT_PID -a sh -c '! test -e /run/nox/executor.sock && ! test -e /usr/bin/nox-frontend && test -f /etc/nox/api-token && test -d /var/lib/nox && ! test -e /var/lib/nox-views && ! systemctl cat nox-frontend.socket >/dev/null 2>&1' \
  && ! nsenter -t $CT_PID -a ss -Hltn 'sport = :8080' | grep -q ."
if [ "$deb" -eq 1 ]; then
  if "$SRC/packaging/deb/build.sh" --no-build --bin-dir "$ROOT/opt/nox-bin" --out "$LOGS" >"$LOGS/deb-build.log" 2>&1; then
    debfile=$(ls "$LOGS"/nox_*.deb | head -n1)
    PASS "packaging/deb/build.sh built $(basename "$debfile")"
    ct_t 60 /nox-src/packaging/uninstall.sh --purge >/dev/null 2>&1
    ct_t 120 dpkg -i "/nox-deb/$(basename "$debfile")" >"$LOGS/deb-install.log" 2>&1; rc=$?
    check "dpkg -i nox_*.deb: exit 0" bash -c "cat '$LOGS/deb-install.log'; [ $rc -eq 0 ]"
    check "after dpkg -i: sockets active, services idle" expect_states \
      nox-executor.socket=active nox-frontend.socket=active nox-executor.service=inactive nox-frontend.service=inactive
    DTOKEN=$(ct awk '!/^[[:space:]]*(#|$)/ { print ($2 != "" ? $2 : $1); exit }' /etc/nox/api-token)
    check "package install answers /run_sh with its own token" jtest \
      "$(ct_t 30 curl -sS -H "Authorization: Bearer $DTOKEN" -H 'Content-Type: application/json' -d '{"cmd":"echo from-deb; id -u"}' http://127.0.0.1:8080/run_sh)" \
      "r['stdout'].split()[0] == 'from-deb' and 2000000000 <= int(r['stdout'].split()[1]) < 2000065536" "r.get('stdout', r)"
    check "package install: jobs run in views (nox-views.service from the package)" jtest \
      "$(ct_t 15 curl -sS http://127.0.0.1:8080/health)" \
      "r['executor']['layers']['views']['active']" "r['executor']['layers']['views']"
    ct_t 60 nox-doctor >"$LOGS/doctor-deb.log" 2>&1; rc=$?
    check "nox-doctor after the package install: no FAIL" bash -c "grep -E '^(FAIL|WARN)|fix:' '$LOGS/doctor-deb.log'; tail -n1 '$LOGS/doctor-deb.log'; [ $rc -eq 0 ]"
    ct_t 120 dpkg --purge nox >"$LOGS/deb-purge.log" 2>&1; rc=$?
    check "dpkg --purge nox: units, sockets, state and config gone" bash -c "[ $rc -eq 0 ] || { tail -n 20 '$LOGS/deb-purge.log'; exit 1; }
      nsenter -t $CT_PID -a sh -c '! test -e /run/nox/executor.sock && ! test -e /var/lib/nox && ! test -e /etc/nox && ! test -e /lib/systemd/system/nox-frontend.socket'"
  else
    tail -n 20 "$LOGS/deb-build.log"
    FAIL "packaging/deb/build.sh"
  fi
fi

# --- end ---------------------------------------------------------------------------------------
STEP "summary"
ct journalctl -q -b --no-pager -o short-precise > "$LOGS/journal.txt" 2>/dev/null
n=$(grep -c 'Failed to kill control group' "$LOGS/journal.txt")
[ "$n" -eq 0 ] || INFO "warning: systemd could not kill a unit's cgroup $n time(s) (see journal.txt)"
INFO "exposure: $(cat "$LOGS/exposure.txt" 2>/dev/null)"
if [ "$fail" -gt 0 ]; then
  echo "-- executor journal (last 20 lines):"
  ct journalctl -q -u nox-executor -n 20 --no-pager -o short 2>/dev/null | cut -c1-220 | sed 's/^/      /'
  echo "-- frontend journal (last 20 lines):"
  ct journalctl -q -u nox-frontend -n 20 --no-pager -o short 2>/dev/null | cut -c1-220 | sed 's/^/      /'
  printf '\033[31mboot test: %d passed, %d FAILED (%ss)\033[0m\n' "$pass" "$fail" "$(( $(date +%s) - T0 ))"
  exit 1
fi
printf '\033[32mboot test: all %d checks passed (%ss)\033[0m\n' "$pass" "$(( $(date +%s) - T0 ))"
exit 0
