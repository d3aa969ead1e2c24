//! The end-to-end harness: starts the real `nox-executor` and `nox-frontend` binaries the way
//! production starts them without systemd — each under `systemd-socket-activate`, the executor
//! on a Unix socket, the frontend on 127.0.0.1 — and drives them over HTTP.
//!
//! Most tests share one instance ([`Nox::shared`]); a test that kills, restarts or
//! reconfigures the daemons starts its own ([`Nox::builder`]). Every daemon this harness
//! starts is stopped by its pid: on drop, and for the shared instance when the test process
//! exits. Nothing is ever killed by name.
//!
//! The binaries are not built here: `cargo build --workspace --bins` first (`./test.sh` does).

// A harness for tests: a setup step that fails must fail the test, loudly, with its reason.
#![allow(
    clippy::expect_used,
    reason = "test harness: failing setup panics the test"
)]

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, Once, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tempfile::TempDir;
use ureq::Agent;
use ureq::http::{Method, Request};

/// How long the daemons get to answer `/health` after they are started.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one HTTP exchange may take at most (the longest job in the suite is far shorter).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// The directory holding `nox-executor` and `nox-frontend`: `target/<profile>/`, found from
/// this test binary's own path (`target/<profile>/deps/<test>`), or `NOX_E2E_BIN_DIR`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NOX_E2E_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test binary knows its own path");
    let deps = exe.parent().expect("the test binary lives in a directory");
    let profile = if deps.file_name().is_some_and(|name| name == "deps") {
        deps.parent().expect("deps/ has a parent")
    } else {
        deps
    };
    profile.to_path_buf()
}

/// The path of one of the daemons' binaries; panics with the fix when it is missing.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} not found: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// True when the suite runs as root (jobs then run as the sandbox user).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// True when a test that needs root must be skipped. It says so loudly; under CI (where
/// nothing may be skipped) a missing root is a failure instead.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs root, and CI must not skip it: run the suite as root"
    );
    // Straight to the process's stderr: the test harness captures `eprintln!`, and a skip
    // must be seen even when the test passes.
    let _ = writeln!(
        std::io::stderr(),
        "SKIP {test}: not root (jobs run as the invoking user without root)"
    );
    true
}

/// Says `SKIP <test>: <reason>` out loud (a case that cannot run on this machine); under CI,
/// where nothing may be skipped, fails instead.
pub fn skip(test: &str, reason: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} cannot run here ({reason}), and CI must not skip it"
    );
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {reason}");
}

/// A random lowercase hex string of `bytes` random bytes.
pub fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    File::open("/dev/urandom")
        .and_then(|mut urandom| urandom.read_exact(&mut buffer))
        .expect("/dev/urandom is readable");
    buffer.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A number no other process on the machine carries on its command line (`300.<six
/// random digits>`): a `sleep` argument a test finds again in `/proc/*/cmdline`.
pub fn marker() -> String {
    let digits: String = random_hex(6)
        .bytes()
        .map(|byte| char::from(b'0' + byte % 10))
        .collect();
    format!("300.{digits}")
}

/// A unique name for things a test creates (files, markers), so tests sharing one
/// instance never collide.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", random_hex(6))
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener
        .local_addr()
        .expect("a bound socket has an address")
        .port()
}

/// Pids of every process but this test process, with their `/proc` directory.
fn other_processes() -> Vec<(i32, PathBuf)> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
            (u32::try_from(pid).ok() != Some(me)).then(|| (pid, entry.path()))
        })
        .collect()
}

/// Pids of processes whose command line contains `marker`, except this test process.
pub fn processes_with(marker: &str) -> Vec<(i32, String)> {
    other_processes()
        .into_iter()
        .filter_map(|(pid, dir)| {
            let raw = fs::read(dir.join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            cmdline
                .contains(marker)
                .then(|| (pid, cmdline.trim_end().to_owned()))
        })
        .collect()
}

/// The parent of `pid` (`PPid` in its status), `None` once it is gone.
pub fn parent_of(pid: i32) -> Option<i32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

/// Pids of the children of `parent`.
pub fn children_of(parent: i32) -> Vec<i32> {
    other_processes()
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| parent_of(*pid) == Some(parent))
        .collect()
}

/// Waits up to `within` for no process to carry `marker`; returns those still there.
pub fn wait_until_gone(marker: &str, within: Duration) -> Vec<(i32, String)> {
    let deadline = Instant::now() + within;
    loop {
        let left = processes_with(marker);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An HTTP reply, whole.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the status and body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "HTTP {} body is not JSON ({error}): {}",
                self.status,
                self.text()
            )
        })
    }

    /// Checks the status, then returns the JSON body.
    pub fn expect_json(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "expected HTTP {status}, got {}: {}",
            self.status,
            self.text()
        );
        self.json()
    }

    /// Checks that this is the uniform error reply `{"error", "message", "detail"}` with
    /// this status and code, and returns it.
    pub fn expect_error(&self, status: u16, code: &str) -> Value {
        let body = self.expect_json(status);
        assert_error_shape(&body);
        assert_eq!(body["error"], code, "error code for HTTP {status}: {body}");
        body
    }
}

/// Every 4xx/5xx body: `{"error": code, "message": text, "detail": text}`.
pub fn assert_error_shape(body: &Value) {
    assert!(
        body["error"].as_str().is_some_and(|code| !code.is_empty()),
        "error replies carry a non-empty string `error`: {body}"
    );
    assert!(
        body["message"].as_str().is_some(),
        "error replies carry a string `message`: {body}"
    );
    assert!(
        body.get("detail").is_some(),
        "error replies carry `detail`: {body}"
    );
}

/// An HTTP client bound to one instance and one token.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    port: u16,
    token: Option<String>,
    agent: Agent,
}

impl Client {
    fn new(port: u16, token: Option<String>) -> Client {
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(HTTP_TIMEOUT))
            .max_redirects(0)
            .build()
            .into();
        Client {
            base: format!("http://127.0.0.1:{port}"),
            port,
            token,
            agent,
        }
    }

    /// A client for whatever serves HTTP on `127.0.0.1:<port>` (e.g. a proxy in front of
    /// instances), with `token` in `Authorization: Bearer` when given.
    pub fn at(port: u16, token: Option<&str>) -> Client {
        Client::new(port, token.map(str::to_owned))
    }

    /// The same instance, another token (or none).
    pub fn with_token(&self, token: Option<&str>) -> Client {
        Client {
            token: token.map(str::to_owned),
            ..self.clone()
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// One request through ureq. `path_and_query` is sent as given (already encoded).
    /// The token, when this client has one, goes in `Authorization: Bearer`.
    pub fn request(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Reply {
        let response = self.send(method, path_and_query, headers, body);
        let status = response.status().as_u16();
        let content_type = content_type(&response);
        let body = response
            .into_body()
            .into_with_config()
            .limit(256 * 1024 * 1024)
            .read_to_vec()
            .unwrap_or_else(|error| panic!("{method} {path_and_query}: reading the body: {error}"));
        Reply {
            status,
            content_type,
            body,
        }
    }

    /// Like [`Client::request`], but returns the response with its body unread, to read a
    /// stream as it arrives.
    pub fn send(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> ureq::http::Response<ureq::Body> {
        let method = Method::from_bytes(method.as_bytes()).expect("a valid HTTP method");
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path_and_query}", self.base));
        if let Some(token) = &self.token {
            builder = builder.header("Authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let result = match body {
            Some(body) => self
                .agent
                .run(builder.body(body).expect("a well-formed request")),
            None => self
                .agent
                .run(builder.body(()).expect("a well-formed request")),
        };
        result.unwrap_or_else(|error| panic!("{method} {path_and_query}: {error}"))
    }

    /// POSTs the JSON `body` to `endpoint` asking for NDJSON; checks the 200 and the
    /// content type, and returns the events with when each arrived since the request.
    pub fn stream_ndjson(&self, endpoint: &str, body: &Value) -> Vec<(Duration, Value)> {
        let (response, start) = self.stream(endpoint, body, "application/x-ndjson");
        read_ndjson(response, start)
    }

    /// As [`Client::stream_ndjson`], asking for server-sent events: each event's name must
    /// be its data's `type`, and the reply must not be cached.
    pub fn stream_sse(&self, endpoint: &str, body: &Value) -> Vec<(Duration, Value)> {
        let (response, start) = self.stream(endpoint, body, "text/event-stream");
        let cache_control = header(&response, "cache-control");
        assert_eq!(
            cache_control, "no-cache",
            "cache-control of an event stream"
        );
        read_sse(response, start)
    }

    /// POST `body` with `Accept: accept`; the 200 reply of that content type.
    fn stream(
        &self,
        endpoint: &str,
        body: &Value,
        accept: &str,
    ) -> (ureq::http::Response<ureq::Body>, Instant) {
        let start = Instant::now();
        let response = self.send(
            "POST",
            endpoint,
            &[("Content-Type", "application/json"), ("Accept", accept)],
            Some(body.to_string().into_bytes()),
        );
        assert_eq!(response.status().as_u16(), 200, "POST {endpoint}");
        let content_type = content_type(&response);
        assert!(
            content_type.starts_with(accept),
            "content-type {content_type}, asked for {accept}"
        );
        (response, start)
    }

    /// The head of a raw request: request line, `Host`, `Connection: close`,
    /// `Content-Length`, `more` (whole lines with CRLF), the token unless `extra_headers`
    /// has an `Authorization` line, then `extra_headers`.
    fn raw_head(
        &self,
        method: &str,
        target: &str,
        extra_headers: &[&str],
        body_len: usize,
        more: &str,
    ) -> String {
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Length: {body_len}\r\n{more}",
            self.port
        );
        let has_auth = extra_headers
            .iter()
            .any(|line| line.to_ascii_lowercase().starts_with("authorization:"));
        if let (Some(token), false) = (&self.token, has_auth) {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        for line in extra_headers {
            head.push_str(line);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        head
    }

    fn raw_connect(&self) -> TcpStream {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        stream
            .set_read_timeout(Some(HTTP_TIMEOUT))
            .expect("timeout");
        stream
    }

    /// One request written byte for byte on a fresh TCP connection, for paths an HTTP
    /// library might normalise or refuse (`..`, `%00`, `//`). `extra_headers` are whole
    /// header lines without CRLF. The token is added unless `extra_headers` has an
    /// `Authorization` line.
    pub fn raw(&self, method: &str, target: &str, extra_headers: &[&str], body: &[u8]) -> Reply {
        let head = self.raw_head(method, target, extra_headers, body.len(), "");
        let mut stream = self.raw_connect();
        stream.write_all(head.as_bytes()).expect("write head");
        stream.write_all(body).expect("write body");
        let mut raw = Vec::new();
        if let Err(error) = stream.read_to_end(&mut raw) {
            assert!(
                !raw.is_empty(),
                "{method} {target}: no reply before the connection failed: {error}"
            );
        }
        parse_raw_reply(&raw).unwrap_or_else(|| {
            panic!(
                "{method} {target}: not an HTTP reply: {:?}",
                String::from_utf8_lossy(&raw)
            )
        })
    }

    /// Like [`Client::raw`], but with `Expect: 100-continue`: the body is only sent if the
    /// server asks for it. A server that refuses a too-large body from its `Content-Length`
    /// answers at once, and the reply cannot be lost to a reset connection, as it can when
    /// the client is still writing a body the server will not read.
    pub fn raw_expect_continue(
        &self,
        method: &str,
        target: &str,
        extra_headers: &[&str],
        body: &[u8],
    ) -> Reply {
        let head = self.raw_head(
            method,
            target,
            extra_headers,
            body.len(),
            "Expect: 100-continue\r\n",
        );
        let mut stream = self.raw_connect();
        stream.write_all(head.as_bytes()).expect("write head");
        let mut raw = Vec::new();
        let mut buffer = [0u8; 8192];
        // Read until one response head is complete.
        while !raw.windows(4).any(|window| window == b"\r\n\r\n") {
            match stream.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buffer[..n]),
            }
        }
        if raw.starts_with(b"HTTP/1.1 100") {
            let end = raw
                .windows(4)
                .position(|window| window == b"\r\n\r\n")
                .map_or(raw.len(), |at| at + 4);
            raw.drain(..end);
            // Asked for the body: send it; the server may still stop reading part-way.
            let _ = stream.write_all(body);
        }
        let _ = stream.read_to_end(&mut raw);
        parse_raw_reply(&raw).unwrap_or_else(|| {
            panic!(
                "{method} {target}: not an HTTP reply: {:?}",
                String::from_utf8_lossy(&raw)
            )
        })
    }

    /// `GET /health` (no token needed).
    pub fn health(&self) -> Reply {
        self.request("GET", "/health", &[], None)
    }

    /// `POST <endpoint>` with a JSON body; the whole reply.
    pub fn post_json(&self, endpoint: &str, body: &Value) -> Reply {
        self.request(
            "POST",
            endpoint,
            &[("Content-Type", "application/json")],
            Some(body.to_string().into_bytes()),
        )
    }

    /// Runs a job (`/run_sh` or `/run_py` with `body`) and returns the 200 reply's JSON.
    pub fn run(&self, endpoint: &str, body: &Value) -> Value {
        self.post_json(endpoint, body).expect_json(200)
    }

    /// `POST /run_sh {"cmd": cmd}`; the 200 reply's JSON.
    pub fn run_sh(&self, cmd: &str) -> Value {
        self.run("/run_sh", &json!({ "cmd": cmd }))
    }

    /// `POST /run_py {"code": code}`; the 200 reply's JSON.
    pub fn run_py(&self, code: &str) -> Value {
        self.run("/run_py", &json!({ "code": code }))
    }

    /// `POST /put?path=<path>` with `bytes` as the multipart field `f`. `path` is put in
    /// the query as given (encode it yourself if it needs it).
    pub fn put(&self, path: &str, bytes: &[u8]) -> Reply {
        let (content_type, body) = multipart("f", "upload.bin", bytes);
        self.request(
            "POST",
            &format!("/put?path={path}"),
            &[("Content-Type", &content_type)],
            Some(body),
        )
    }
}

fn content_type(response: &ureq::http::Response<ureq::Body>) -> String {
    header(response, "content-type")
}

/// A `multipart/form-data` body with one file field; returns (content type, body).
pub fn multipart(field: &str, filename: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = format!("nox-e2e-{}", random_hex(12));
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Parses a whole HTTP/1.1 reply (Content-Length, chunked, or read to close).
fn parse_raw_reply(raw: &[u8]) -> Option<Reply> {
    let split = raw.windows(4).position(|window| window == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let mut content_type = String::new();
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-type" => content_type = value.to_owned(),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "content-length" => length = value.parse::<usize>().ok(),
            _ => {}
        }
    }
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(length) = length {
        rest.get(..length)?.to_vec()
    } else {
        rest.to_vec()
    };
    Some(Reply {
        status,
        content_type,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let end = rest.windows(2).position(|window| window == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

// ---------------------------------------------------------------------------------------
// Daemons
// ---------------------------------------------------------------------------------------

/// Pids of every daemon started and not yet stopped, and temporary directories to remove,
/// for the exit handler: the shared instance lives in a `static` and is never dropped.
static LIVE: Mutex<Vec<i32>> = Mutex::new(Vec::new());
static LEFTOVER_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static EXIT_HOOK: Once = Once::new();

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

extern "C" fn stop_leftovers_at_exit() {
    for pid in lock(&LIVE).drain(..) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    for dir in lock(&LEFTOVER_DIRS).drain(..) {
        let _ = fs::remove_dir_all(dir);
    }
}

fn install_exit_hook() {
    EXIT_HOOK.call_once(|| {
        // SAFETY: `stop_leftovers_at_exit` is a plain `extern "C" fn()` with no arguments
        // that neither unwinds (it only ignores errors) nor depends on thread-local state;
        // registering it has no other precondition.
        let registered = unsafe { libc::atexit(stop_leftovers_at_exit) };
        assert_eq!(registered, 0, "atexit");
    });
}

/// One daemon process, started under `systemd-socket-activate`, which binds the socket and
/// execs the daemon in place on the first connection (as systemd would), so the
/// child's pid becomes the daemon's. Stopped by pid on drop: SIGTERM, then SIGKILL.
#[derive(Debug)]
pub struct Daemon {
    name: &'static str,
    child: Child,
}

impl Daemon {
    /// Starts `systemd-socket-activate -l <listen> --fdname=<fdname> <binary> <args..>`
    /// with exactly `env` (plus PATH), output appended to `log`.
    pub fn start(
        name: &'static str,
        listen: &str,
        fdname: &str,
        args: &[String],
        env: &[(String, String)],
        log: &Path,
    ) -> Daemon {
        install_exit_hook();
        let output = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the daemon log");
        let errors = output.try_clone().expect("clone the log handle");
        let mut command = socket_activate(name, listen, fdname, args, env);
        command.stdin(Stdio::null()).stdout(output).stderr(errors);
        let child = command.spawn().unwrap_or_else(|error| {
            panic!(
                "cannot run systemd-socket-activate ({error}): install Debian's `systemd` package"
            )
        });
        lock(&LIVE).push(pid_of(&child));
        Daemon { name, child }
    }

    /// The daemon's pid.
    pub fn pid(&self) -> i32 {
        pid_of(&self.child)
    }

    /// The exit status if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends `signal` and waits up to `grace` for the exit; SIGKILL after that.
    pub fn stop(&mut self, signal: Signal, grace: Duration) {
        if self.exited().is_none() {
            let _ = kill(Pid::from_raw(self.pid()), signal);
            let deadline = Instant::now() + grace;
            while self.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if self.exited().is_none() {
                eprintln!("{} did not exit after {signal:?}; killing it", self.name);
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        let pid = self.pid();
        lock(&LIVE).retain(|live| *live != pid);
    }
}

/// `systemd-socket-activate -l <listen> --fdname=<fdname> -E KEY.. <binary> <args..>`
/// with exactly `env` and a standard PATH. systemd-socket-activate gives the daemon a fresh
/// environment: each variable is passed by name with `-E`, so values (tokens) stay out of
/// the command line.
pub fn socket_activate(
    name: &str,
    listen: &str,
    fdname: &str,
    args: &[String],
    env: &[(String, String)],
) -> Command {
    let mut command = Command::new("systemd-socket-activate");
    command
        .arg("-l")
        .arg(listen)
        .arg(format!("--fdname={fdname}"));
    for (key, _) in env {
        command.arg("-E").arg(key);
    }
    command
        .arg(binary(name))
        .args(args)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .envs(env.iter().map(|(key, value)| (key, value)));
    command
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(Signal::SIGTERM, Duration::from_secs(5));
    }
}

fn pid_of(child: &Child) -> i32 {
    i32::try_from(child.id()).expect("pids fit in i32")
}

// ---------------------------------------------------------------------------------------
// An instance: both daemons in one temporary directory
// ---------------------------------------------------------------------------------------

/// How to start an instance.
#[derive(Debug, Clone, Default)]
pub struct NoxBuilder {
    /// Extra `[executor]` lines for the TOML file.
    executor_toml: Vec<String>,
    /// Extra `[frontend]` lines for the TOML file.
    frontend_toml: Vec<String>,
    executor_env: Vec<(String, String)>,
    frontend_env: Vec<(String, String)>,
    /// `(workspace, token)`; empty means one token for workspace "default" via
    /// `NOX_API_TOKEN`.
    tokens: Vec<(String, String)>,
    /// The frontend's port on 127.0.0.1; `None` picks a free one.
    port: Option<u16>,
    /// Where the instance's directory is made; `None`: `/var/tmp`.
    parent: Option<PathBuf>,
}

impl NoxBuilder {
    /// A line under `[executor]` in the instance's `nox.toml`, e.g. `limits.output_kb = 64`.
    pub fn executor_toml(mut self, line: &str) -> Self {
        self.executor_toml.push(line.to_owned());
        self
    }

    /// Make the instance's directory (state, workspaces) in `parent` instead of `/var/tmp`.
    pub fn parent(mut self, parent: &Path) -> Self {
        self.parent = Some(parent.to_owned());
        self
    }

    /// A line under `[frontend]` in the instance's `nox.toml`.
    pub fn frontend_toml(mut self, line: &str) -> Self {
        self.frontend_toml.push(line.to_owned());
        self
    }

    /// An environment variable for the executor, e.g. `NOX_EXECUTOR__LIMITS__OUTPUT_KB`.
    pub fn executor_env(mut self, key: &str, value: &str) -> Self {
        self.executor_env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// An environment variable for the frontend.
    pub fn frontend_env(mut self, key: &str, value: &str) -> Self {
        self.frontend_env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Configure these tokens through a token file (`WORKSPACE TOKEN` lines), each its own
    /// workspace, instead of the single `NOX_API_TOKEN`.
    pub fn tokens(mut self, tokens: &[(&str, &str)]) -> Self {
        self.tokens = tokens
            .iter()
            .map(|(workspace, token)| ((*workspace).to_owned(), (*token).to_owned()))
            .collect();
        self
    }

    /// Serve HTTP on `127.0.0.1:<port>` instead of a free port picked at start (for a test
    /// that must know the address before the instance starts, e.g. to configure a proxy).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Starts both daemons and waits for `/health` to answer with the executor reachable.
    pub fn start(self) -> Nox {
        Nox::start(self)
    }
}

/// A running pair of daemons in their own temporary directory (mode 0755, so the sandbox
/// user can reach its workspace):
///
/// ```text
/// <dir>/nox.toml         [frontend] and [executor], given to both with --config
/// <dir>/executor.sock    the executor's socket (systemd-socket-activate binds it)
/// <dir>/workspaces/      workspace root: <dir>/workspaces/<name> per token
/// <dir>/state/           the executor's state directory
/// <dir>/*.log            each daemon's stdout and stderr
/// ```
#[derive(Debug)]
pub struct Nox {
    // Fields drop in order: the daemons stop before the directory is removed.
    frontend: Mutex<Daemon>,
    executor: Mutex<Option<Daemon>>,
    executor_args: Vec<String>,
    executor_env: Vec<(String, String)>,
    client: Client,
    tokens: Vec<(String, String)>,
    dir: TempDir,
}

impl Nox {
    /// An instance with the defaults: one token, workspace "default".
    pub fn start_default() -> Nox {
        NoxBuilder::default().start()
    }

    /// Configure an instance of one's own.
    pub fn builder() -> NoxBuilder {
        NoxBuilder::default()
    }

    /// The instance most tests share, started on first use. A test that kills, restarts or
    /// reconfigures a daemon must start its own instead.
    pub fn shared() -> &'static Nox {
        static SHARED: OnceLock<Result<Nox, String>> = OnceLock::new();
        let started = SHARED.get_or_init(|| {
            std::panic::catch_unwind(Nox::start_default).map_err(|panic| {
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "unknown panic".to_owned())
            })
        });
        match started {
            Ok(nox) => nox,
            Err(message) => panic!("the shared instance did not start: {message}"),
        }
    }

    fn start(builder: NoxBuilder) -> Nox {
        // Not beneath /tmp unless asked: a view then has no /tmp of its own (see the
        // executor's `views`).
        let parent = builder
            .parent
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/tmp"));
        let dir = tempfile::Builder::new()
            .prefix("nox-e2e-")
            .tempdir_in(&parent)
            .expect("create a temporary directory");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod 0755");
        let path = dir.path();
        let workspaces = path.join("workspaces");
        let state = path.join("state");
        for sub in [&workspaces, &state] {
            fs::create_dir(sub).expect("create a directory");
            fs::set_permissions(sub, fs::Permissions::from_mode(0o755)).expect("chmod 0755");
        }
        let socket = path.join("executor.sock");
        let config = path.join("nox.toml");

        let mut tokens = builder.tokens.clone();
        let mut frontend_env = vec![
            env("NOX_EXECUTOR_SOCKET", &socket),
            ("NOX_LOG".to_owned(), "info".to_owned()),
        ];
        let mut frontend_toml = builder.frontend_toml.clone();
        if tokens.is_empty() {
            tokens.push(("default".to_owned(), format!("tok-{}", random_hex(16))));
            frontend_env.push(("NOX_API_TOKEN".to_owned(), tokens[0].1.clone()));
        } else {
            let file = path.join("tokens");
            let lines: String = tokens
                .iter()
                .map(|(workspace, token)| format!("{workspace} {token}\n"))
                .collect();
            fs::write(&file, lines).expect("write the token file");
            frontend_toml.push(format!("token_files = [{}]", toml_string(&file)));
        }
        frontend_env.extend(builder.frontend_env.iter().cloned());

        let mut text = String::from("# written by the nox-e2e harness\n[frontend]\n");
        for line in &frontend_toml {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str("\n[executor]\n");
        for line in &builder.executor_toml {
            text.push_str(line);
            text.push('\n');
        }
        fs::write(&config, text).expect("write nox.toml");

        let mut executor_env = vec![
            env("NOX_SANDBOX", &workspaces),
            env("NOX_EXECUTOR__STATE_DIR", &state),
            ("NOX_LOG".to_owned(), "info".to_owned()),
        ];
        executor_env.extend(builder.executor_env.iter().cloned());
        let config_args = vec!["--config".to_owned(), config.display().to_string()];

        let executor = Daemon::start(
            "nox-executor",
            &socket.display().to_string(),
            "jobs",
            &config_args,
            &executor_env,
            &path.join("executor.log"),
        );
        let port = builder.port.unwrap_or_else(free_port);
        let frontend = Daemon::start(
            "nox-frontend",
            &format!("127.0.0.1:{port}"),
            "http",
            &config_args,
            &frontend_env,
            &path.join("frontend.log"),
        );
        let client = Client::new(port, Some(tokens[0].1.clone()));
        // An instance kept in a `static` is never dropped: its directory is removed at exit.
        lock(&LEFTOVER_DIRS).push(path.to_path_buf());
        let nox = Nox {
            frontend: Mutex::new(frontend),
            executor: Mutex::new(Some(executor)),
            executor_args: config_args,
            executor_env,
            client,
            tokens,
            dir,
        };
        nox.wait_healthy(START_TIMEOUT);
        nox
    }

    /// Waits until `/health` answers 200 with the executor reachable; panics with both
    /// daemons' logs otherwise.
    pub fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let mut last = String::from("no answer yet");
        loop {
            if let Some(status) = lock(&self.frontend).exited() {
                panic!(
                    "nox-frontend exited ({status}) while starting\n{}",
                    self.logs()
                );
            }
            if let Some(reply) = self.try_health() {
                if reply.status == 200
                    && serde_json::from_slice::<Value>(&reply.body)
                        .is_ok_and(|body| body["executor"]["reachable"] == true)
                {
                    return;
                }
                last = format!("HTTP {}: {}", reply.status, reply.text());
            }
            if Instant::now() >= deadline {
                panic!(
                    "/health did not answer 200 with a reachable executor within {within:?} (last: {last})\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn try_health(&self) -> Option<Reply> {
        let mut stream = TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.client.port).into(),
            Duration::from_secs(1),
        )
        .ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let request = format!(
            "GET /health HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.client.port
        );
        stream.write_all(request.as_bytes()).ok()?;
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        parse_raw_reply(&raw)
    }

    /// The last lines of both daemons' logs, for failure messages.
    pub fn logs(&self) -> String {
        let tail = |name: &str| {
            let text = fs::read_to_string(self.dir().join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        format!(
            "--- executor.log (tail) ---\n{}\n--- frontend.log (tail) ---\n{}",
            tail("executor.log"),
            tail("frontend.log")
        )
    }

    /// The instance's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the executor says sandbox layer `layer` (as `/health` names it) is active.
    pub fn layer_active(&self, layer: &str) -> bool {
        self.client.health().expect_json(200)["executor"]["layers"][layer]["active"] == true
    }

    /// `<dir>/workspaces`.
    pub fn workspace_root(&self) -> PathBuf {
        self.dir().join("workspaces")
    }

    /// `<dir>/workspaces/<name>`.
    pub fn workspace(&self, name: &str) -> PathBuf {
        self.workspace_root().join(name)
    }

    /// `<dir>/state`.
    pub fn state_dir(&self) -> PathBuf {
        self.dir().join("state")
    }

    /// `<dir>/executor.sock`.
    pub fn executor_socket(&self) -> PathBuf {
        self.dir().join("executor.sock")
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        self.client.url()
    }

    /// The first token (workspace "default" unless configured otherwise).
    pub fn token(&self) -> &str {
        &self.tokens[0].1
    }

    /// A client with the first token.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A client with the token of `workspace`.
    pub fn client_for(&self, workspace: &str) -> Client {
        let token = self
            .tokens
            .iter()
            .find(|(name, _)| name == workspace)
            .map(|(_, token)| token.as_str())
            .unwrap_or_else(|| panic!("no token for workspace {workspace}"));
        self.client.with_token(Some(token))
    }

    /// See [`Client::request`].
    pub fn request(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Reply {
        self.client.request(method, path_and_query, headers, body)
    }

    /// See [`Client::run_sh`].
    pub fn run_sh(&self, cmd: &str) -> Value {
        self.client.run_sh(cmd)
    }

    /// See [`Client::run_py`].
    pub fn run_py(&self, code: &str) -> Value {
        self.client.run_py(code)
    }

    /// See [`Client::put`].
    pub fn put(&self, path: &str, bytes: &[u8]) -> Reply {
        self.client.put(path, bytes)
    }

    /// The executor's pid, while it runs.
    pub fn executor_pid(&self) -> Option<i32> {
        let mut executor = lock(&self.executor);
        let daemon = executor.as_mut()?;
        daemon.exited().is_none().then(|| daemon.pid())
    }

    /// The frontend's pid, while it runs.
    pub fn frontend_pid(&self) -> Option<i32> {
        let mut frontend = lock(&self.frontend);
        frontend.exited().is_none().then(|| frontend.pid())
    }

    /// Kills the executor with SIGKILL (a crash, not a shutdown) and waits for it.
    pub fn kill_executor(&self) {
        self.stop_executor(Signal::SIGKILL);
    }

    fn stop_executor(&self, signal: Signal) {
        if let Some(mut daemon) = lock(&self.executor).take() {
            daemon.stop(signal, Duration::from_secs(5));
        }
    }

    /// Starts the executor again on the same socket path and waits for `/health`.
    pub fn restart_executor(&self) {
        self.kill_executor();
        // systemd-socket-activate binds the path itself; a socket file left by the killed
        // executor would make that fail.
        let _ = fs::remove_file(self.executor_socket());
        let daemon = Daemon::start(
            "nox-executor",
            &self.executor_socket().display().to_string(),
            "jobs",
            &self.executor_args,
            &self.executor_env,
            &self.dir().join("executor.log"),
        );
        *lock(&self.executor) = Some(daemon);
        self.wait_healthy(START_TIMEOUT);
    }
}

impl Drop for Nox {
    fn drop(&mut self) {
        lock(&self.frontend).stop(Signal::SIGTERM, Duration::from_secs(5));
        self.stop_executor(Signal::SIGTERM);
        let dir = self.dir().to_path_buf();
        lock(&LEFTOVER_DIRS).retain(|leftover| *leftover != dir);
    }
}

fn env(key: &str, path: &Path) -> (String, String) {
    (key.to_owned(), path.display().to_string())
}

/// A TOML basic string.
fn toml_string(path: &Path) -> String {
    let text = path.display().to_string();
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Reads NDJSON lines from a streaming response as they arrive, with the time each line
/// arrived (measured from `start`).
pub fn read_ndjson(
    response: ureq::http::Response<ureq::Body>,
    start: Instant,
) -> Vec<(Duration, Value)> {
    let reader = BufReader::new(response.into_body().into_reader());
    let mut events = Vec::new();
    for line in reader.lines() {
        let line = line.expect("read a streamed line");
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(&line)
            .unwrap_or_else(|error| panic!("streamed line is not JSON ({error}): {line}"));
        events.push((start.elapsed(), value));
    }
    events
}

/// The value of `response`'s header `name`, empty when absent or not text.
fn header(response: &ureq::http::Response<ureq::Body>, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Server-sent events as they arrive: `event: <name>`, one `data: <json>` line, a blank
/// line. Panics on anything else, or when an event's name is not its data's `type`.
pub fn read_sse(
    response: ureq::http::Response<ureq::Body>,
    start: Instant,
) -> Vec<(Duration, Value)> {
    let reader = BufReader::new(response.into_body().into_reader());
    let mut events = Vec::new();
    let (mut name, mut data) = (None::<String>, None::<Value>);
    for line in reader.lines() {
        let line = line.expect("read a streamed line");
        if line.is_empty() {
            let (Some(name), Some(data)) = (name.take(), data.take()) else {
                panic!("an event without a name or data, after {events:?}");
            };
            assert_eq!(data["type"], name.as_str(), "event {name}: {data}");
            events.push((start.elapsed(), data));
        } else if let Some(value) = line.strip_prefix("event: ") {
            assert!(
                name.replace(value.to_owned()).is_none(),
                "two names: {line}"
            );
        } else if let Some(value) = line.strip_prefix("data: ") {
            let value: Value = serde_json::from_str(value)
                .unwrap_or_else(|error| panic!("event data is not JSON ({error}): {line}"));
            assert!(data.replace(value).is_none(), "two data lines: {line}");
        } else {
            panic!("not a line of a server-sent event: {line:?}");
        }
    }
    assert!(
        name.is_none() && data.is_none(),
        "the stream ended inside an event"
    );
    events
}

/// When the first `stdout` event whose data contains `needle` arrived.
pub fn stdout_arrival(events: &[(Duration, Value)], needle: &str) -> Duration {
    events
        .iter()
        .find(|(_, event)| {
            event["type"] == "stdout" && event["data"].as_str().is_some_and(|d| d.contains(needle))
        })
        .map(|(at, _)| *at)
        .unwrap_or_else(|| panic!("no stdout event with {needle}: {events:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_with_content_length_is_cut_at_its_length() {
        let raw = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}trailing";
        let reply = parse_raw_reply(raw).unwrap();
        assert_eq!((reply.status, reply.body.as_slice()), (400, &b"{}"[..]));
        assert_eq!(reply.content_type, "application/json");
    }

    #[test]
    fn a_chunked_reply_is_reassembled() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_raw_reply(raw).unwrap().body, b"abcde");
        assert!(
            parse_raw_reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab")
                .is_none()
        );
    }

    #[test]
    fn a_multipart_body_carries_the_field_and_the_bytes_between_boundaries() {
        let (content_type, body) = multipart("f", "x.bin", b"\x00data\r\n");
        let boundary = content_type
            .strip_prefix("multipart/form-data; boundary=")
            .unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with(&format!("--{boundary}\r\n")));
        assert!(text.contains("name=\"f\"; filename=\"x.bin\""));
        assert!(text.ends_with(&format!("\x00data\r\n\r\n--{boundary}--\r\n")));
    }

    #[test]
    fn the_binaries_are_looked_for_beside_the_deps_directory() {
        let dir = bin_dir();
        assert!(
            std::env::current_exe().unwrap().starts_with(&dir),
            "{}",
            dir.display()
        );
        assert_ne!(dir.file_name().and_then(|name| name.to_str()), Some("deps"));
    }
}
