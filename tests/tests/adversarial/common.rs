//! What every adversarial case shares: the instances, the "still serving" check, markers
//! for processes, a raw client for the executor's socket, and the lock that keeps the
//! exhaustion cases apart from everything else.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use nox_e2e::{Nox, random_hex, wait_until_gone};
use nox_protocol::codec::{decode_payload, encode_payload};
use nox_protocol::{Hello, Reply, Request};
use serde_json::{Value, json};

/// Every job of every instance runs as the same sandbox uid, and RLIMIT_NPROC counts that
/// uid's processes: a fork bomb in one case would make unrelated cases fail. Cases that
/// exhaust a per-uid resource take this lock exclusively; every other case that runs a job
/// takes it shared.
static UID_RESOURCES: RwLock<()> = RwLock::new(());

/// Held by a case that runs jobs (any number of such cases run at once).
pub fn jobs() -> RwLockReadGuard<'static, ()> {
    UID_RESOURCES
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Held by a case that exhausts the sandbox uid's processes (it runs alone).
pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    UID_RESOURCES
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Two tokens, two workspaces: `alpha` and `beta` (the cross-tenant cases).
pub fn tenants() -> &'static Nox {
    static TENANTS: OnceLock<Nox> = OnceLock::new();
    TENANTS.get_or_init(|| {
        let alpha = format!("alpha-{}", random_hex(16));
        let beta = format!("beta-{}", random_hex(16));
        Nox::builder()
            .tokens(&[("alpha", &alpha), ("beta", &beta)])
            .start()
    })
}

/// The job's stdout.
pub fn stdout(reply: &Value) -> &str {
    reply["stdout"].as_str().unwrap_or_default()
}

/// The job's stderr.
pub fn stderr(reply: &Value) -> &str {
    reply["stderr"].as_str().unwrap_or_default()
}

/// Runs Python with a wall-clock timeout (seconds); the 200 reply's JSON.
pub fn py(nox: &Nox, code: &str, timeout_s: f64) -> Value {
    nox.client()
        .run("/run_py", &json!({ "code": code, "timeout_s": timeout_s }))
}

/// Runs a shell command with a wall-clock timeout (seconds); the 200 reply's JSON.
pub fn sh(nox: &Nox, cmd: &str, timeout_s: f64) -> Value {
    nox.client()
        .run("/run_sh", &json!({ "cmd": cmd, "timeout_s": timeout_s }))
}

/// The instance still does its job: `/health` answers 200 with a reachable, ready executor,
/// both daemons run, and a fresh job prints what it is asked to.
pub fn assert_serving(nox: &Nox) {
    assert!(
        nox.frontend_pid().is_some(),
        "nox-frontend is gone\n{}",
        nox.logs()
    );
    assert!(
        nox.executor_pid().is_some(),
        "nox-executor is gone\n{}",
        nox.logs()
    );
    let health = nox.client().health();
    let body = health.expect_json(200);
    assert_eq!(body["executor"]["reachable"], true, "{body}");
    assert_eq!(body["executor"]["ready"], true, "{body}");
    let word = format!("alive-{}", random_hex(4));
    let reply = nox.client().post_json(
        "/run_sh",
        &json!({ "cmd": format!("echo {word}"), "timeout_s": 10 }),
    );
    let reply = reply.expect_json(200);
    assert_eq!(
        stdout(&reply),
        format!("{word}\n"),
        "a fresh job no longer runs normally: {reply}\n{}",
        nox.logs()
    );
}

pub use nox_e2e::marker;

/// Alpha's request (`endpoint`, `body`) and, 800 ms into it, beta's Python `code` (10 s
/// timeout); both replies. The cross-tenant cases: what alpha's job leaves or runs, beta's
/// job must not see.
pub fn while_alpha_runs(nox: &Nox, endpoint: &str, body: &Value, code: &str) -> (Value, Value) {
    let alpha = nox.client_for("alpha");
    let beta = nox.client_for("beta");
    std::thread::scope(|scope| {
        let handle = scope.spawn(move || alpha.run(endpoint, body));
        std::thread::sleep(Duration::from_millis(800));
        let looked = beta.run("/run_py", &json!({ "code": code, "timeout_s": 10 }));
        (handle.join().expect("alpha's request"), looked)
    })
}

/// Waits up to 3 s for every process carrying `marker` to be gone; kills any left (so a
/// failure does not leave strays behind) and fails naming them.
pub fn assert_gone(marker: &str, context: &Value) {
    let left = wait_until_gone(marker, Duration::from_secs(3));
    for (pid, _) in &left {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(
        left.is_empty(),
        "processes outlived their job: {left:?}\njob reply: {context}"
    );
}

/// A prelude for Python jobs that make raw system calls: `call(nr, *args)` returns
/// `(result, errno)`; `in_child(f)` runs `f` in a forked child and returns how it ended
/// (`("exit", code)` or `("signal", number)`).
pub const PY_SYSCALL: &str = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(nr, *args):
    ctypes.set_errno(0)
    converted = [a if not isinstance(a, int) else ctypes.c_ulong(a & 0xffffffffffffffff) for a in args]
    result = libc.syscall(ctypes.c_long(nr), *converted)
    return result, ctypes.get_errno()
def in_child(f):
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        try:
            code = f()
        except BaseException:
            code = 99
        os._exit(code if isinstance(code, int) else 0)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return ("signal", os.WTERMSIG(status))
    return ("exit", os.WEXITSTATUS(status))
"#;

/// A raw connection to an executor's socket.
#[derive(Debug)]
pub struct Wire {
    pub stream: UnixStream,
}

impl Wire {
    /// Connects (panics if the socket refuses).
    pub fn connect(nox: &Nox) -> Wire {
        let stream =
            UnixStream::connect(nox.executor_socket()).expect("connect to the executor socket");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        Wire { stream }
    }

    /// Connects and completes the hello exchange.
    pub fn greeted(nox: &Nox) -> Wire {
        let mut wire = Wire::connect(nox);
        wire.send(&Request::Hello(Hello {
            version: nox_protocol::PROTOCOL_VERSION,
            software: "nox-adversarial".into(),
        }));
        match wire.recv() {
            Some(Reply::Hello(_)) => wire,
            other => panic!("the executor did not greet back: {other:?}"),
        }
    }

    /// Writes one framed request.
    pub fn send(&mut self, request: &Request) {
        let bytes = frame(&encode_payload(request).expect("encode a request"));
        self.stream.write_all(&bytes).expect("write a frame");
    }

    /// Writes raw bytes; a failure (the executor closed first) is ignored.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// The next reply, or `None` at EOF, on a reset, or after the read timeout.
    pub fn recv(&mut self) -> Option<Reply> {
        let mut prefix = [0u8; 4];
        self.stream.read_exact(&mut prefix).ok()?;
        let length = u32::from_be_bytes(prefix) as usize;
        assert!(
            length <= nox_protocol::MAX_FRAME_LEN,
            "the executor sent a {length}-byte frame"
        );
        let mut payload = vec![0u8; length];
        self.stream.read_exact(&mut payload).ok()?;
        Some(decode_payload(&payload).expect("the executor sends well-formed frames"))
    }

    /// Reads until the executor closes the connection (or `within` passes): every byte
    /// received, and whether it closed.
    pub fn drain(&mut self, within: Duration) -> (Vec<u8>, bool) {
        self.stream
            .set_read_timeout(Some(within))
            .expect("read timeout");
        let deadline = Instant::now() + within;
        let mut received = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            match self.stream.read(&mut buffer) {
                Ok(0) => return (received, true),
                Ok(n) => received.extend_from_slice(&buffer[..n]),
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {
                    return (received, true);
                }
                Err(_) => return (received, false),
            }
            if Instant::now() >= deadline {
                return (received, false);
            }
        }
    }
}

/// A length-prefixed frame around `payload`.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut bytes = u32::try_from(payload.len())
        .expect("a test frame fits in u32")
        .to_be_bytes()
        .to_vec();
    bytes.extend_from_slice(payload);
    bytes
}
