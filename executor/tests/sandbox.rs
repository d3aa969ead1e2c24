//! The job runner and sandbox, driven directly (no sockets): each test runs real jobs and
//! asserts what the kernel answered inside them.

// An integration-test crate: every function here is test code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use nox_executor::ExecutorConfig;
use nox_executor::job::JobRunner;
use nox_executor::sandbox::JobIdentity;
use nox_executor::workspace::Workspaces;
use nox_protocol::{
    ExitStatus, JobOutcome, JobSpec, LimitHit, LimitRequest, Program, Reply, Stream,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

struct Fixture {
    runner: Arc<JobRunner>,
    root: PathBuf,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let runner = Arc::new(build_runner(&root, |config| {
            config.limits.output_kb = 64;
            config.limits.timeout_s = 10.0;
            std::fs::create_dir_all(&config.state_dir).unwrap();
            std::fs::set_permissions(&config.state_dir, std::fs::Permissions::from_mode(0o711))
                .unwrap();
        }));
        Fixture {
            runner,
            root,
            _dir: dir,
        }
    })
}

struct Ran {
    stdout: String,
    stderr: String,
    outcome: JobOutcome,
}

fn job(id: &str, program: Program, limits: LimitRequest) -> JobSpec {
    JobSpec {
        job_id: id.into(),
        workspace: "default".into(),
        program,
        stdin: Vec::new(),
        limits,
    }
}

fn sh(command: &str) -> Program {
    Program::Shell {
        command: command.into(),
    }
}

fn py(code: &str) -> Program {
    Program::Python {
        code: code.into(),
        filename: "run.py".into(),
    }
}

fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn run(spec: JobSpec) -> Ran {
    run_on(Arc::clone(&fixture().runner), spec).await
}

/// Runs `spec` on `runner` and collects its output and outcome.
async fn run_on(runner: Arc<JobRunner>, spec: JobSpec) -> Ran {
    let (tx, mut rx) = mpsc::channel(64);
    let task = tokio::spawn(async move { runner.run(spec, tx, CancellationToken::new()).await });
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let mut outcome = None;
    while let Some(reply) = rx.recv().await {
        match reply {
            Reply::Started(_) => {}
            Reply::Output(chunk) => match chunk.stream {
                Stream::Stdout => stdout.extend(chunk.data),
                Stream::Stderr => stderr.extend(chunk.data),
            },
            Reply::Finished(done) => outcome = Some(done),
            Reply::Error(error) => panic!("job refused: {error}"),
            other => panic!("unexpected reply {other:?}"),
        }
    }
    task.await.unwrap();
    Ran {
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        outcome: outcome.expect("no Finished reply"),
    }
}

async fn shell(command: &str) -> Ran {
    run(job(&unique("sh"), sh(command), LimitRequest::default())).await
}

#[tokio::test]
async fn a_shell_job_runs_in_its_workspace_with_a_clean_environment() {
    let ran = shell("echo hello; pwd; env | sort").await;
    assert_eq!(ran.outcome.status, ExitStatus::Exited(0), "{}", ran.stderr);
    let mut lines = ran.stdout.lines();
    assert_eq!(lines.next(), Some("hello"));
    assert!(lines.next().unwrap().ends_with("/workspaces/default"));
    let env: Vec<&str> = lines.map(|line| line.split('=').next().unwrap()).collect();
    for name in &env {
        assert!(
            [
                "HOME",
                "LANG",
                "LOGNAME",
                "NOX_JOB_ID",
                "PATH",
                "PWD",
                "TMPDIR",
                "SHLVL",
                "USER",
                "_"
            ]
            .contains(name),
            "unexpected variable {name}"
        );
    }
}

#[tokio::test]
async fn a_job_has_no_capabilities_no_new_privs_and_a_seccomp_filter() {
    let ran =
        shell("grep -E '^(Cap(Inh|Prm|Eff|Amb)|NoNewPrivs|Seccomp):' /proc/self/status; id -u")
            .await;
    let status = ran.stdout;
    for cap in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert!(
            status.contains(&format!("{cap}:\t0000000000000000")),
            "{status}"
        );
    }
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("Seccomp:\t2"), "{status}");
    if nix::unistd::geteuid().is_root() {
        assert_ne!(status.lines().last(), Some("0"), "job ran as root");
    }
}

#[tokio::test]
async fn network_sockets_ptrace_setsid_and_namespaces_are_refused() {
    let code = r#"
import ctypes, os, socket
libc = ctypes.CDLL(None, use_errno=True)
def errno_of(rc):
    return ctypes.get_errno() if rc == -1 else 0
for family in (socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK, socket.AF_PACKET):
    try:
        socket.socket(family, socket.SOCK_RAW if family == socket.AF_PACKET else socket.SOCK_STREAM if family != socket.AF_NETLINK else socket.SOCK_RAW)
        print("socket", family, "allowed")
    except PermissionError:
        print("socket", family, "EPERM")
print("unix", socket.socket(socket.AF_UNIX).family == socket.AF_UNIX)
print("ptrace", errno_of(libc.ptrace(16, os.getppid(), 0, 0)))
print("setsid", errno_of(libc.setsid()))
print("unshare", errno_of(libc.unshare(0x40000000)))
print("keyctl", errno_of(libc.syscall(250, 0, 0, 0, 0, 0)))
print("io_uring", errno_of(libc.syscall(425, 8, 0)))
print("clone3", errno_of(libc.syscall(435, 0, 0)))
"#;
    let ran = run(job(&unique("py"), py(code), LimitRequest::default())).await;
    assert_eq!(ran.outcome.status, ExitStatus::Exited(0), "{}", ran.stderr);
    let out = ran.stdout;
    assert_eq!(out.matches("EPERM").count(), 4, "{out}");
    assert!(!out.contains("allowed"), "{out}");
    assert!(out.contains("unix True"), "{out}");
    for line in [
        "ptrace 1",
        "setsid 1",
        "unshare 1",
        "keyctl 1",
        "io_uring 1",
        "clone3 38",
    ] {
        assert!(out.contains(line), "missing {line:?} in {out}");
    }
}

#[tokio::test]
async fn writes_outside_the_workspace_are_refused_and_inside_it_work() {
    let root = fixture().root.display().to_string();
    let ran = shell(&format!(
        "for p in /tmp/x {root}/escape /etc/x {root}/state/x {root}/workspaces/other; do \
           (echo x > $p) 2>/dev/null && echo \"wrote $p\"; done; \
         echo ok > inside.txt && cat inside.txt; echo tmp > $TMPDIR/t && cat $TMPDIR/t; \
         cat /etc/hostname > /dev/null && echo read-etc; echo devnull > /dev/null && echo dev-ok"
    ))
    .await;
    assert!(!ran.stdout.contains("wrote"), "{}", ran.stdout);
    assert!(
        ran.stdout.contains("ok\ntmp\nread-etc\ndev-ok"),
        "{}\n{}",
        ran.stdout,
        ran.stderr
    );
}

#[tokio::test]
async fn a_shell_job_holds_no_descriptor_but_stdio_though_its_ruleset_is_kept() {
    // Rulesets are kept for later jobs (any holder of one could add rules to it), so no
    // job may hold one: twice, so the second most likely runs with the first one's. `ls`
    // takes the shell's place with what it holds, and opens 3 itself to list them.
    for _ in 0..2 {
        let ran = shell("exec ls /proc/self/fd").await;
        assert_eq!(ran.stdout, "0\n1\n2\n3\n", "{}", ran.stderr);
    }
}

#[tokio::test]
async fn jobs_and_spares_have_every_signal_at_its_default_though_the_executor_does_not() {
    // Rust ignores SIGPIPE; this process ignores SIGUSR2 too before the runner's sandbox
    // (which notes the signals a child must reset) is built.
    // SAFETY: SIG_IGN for SIGUSR2 in this test process; no handler is involved.
    unsafe { libc::signal(libc::SIGUSR2, libc::SIG_IGN) };
    let dir = tempfile::tempdir().unwrap();
    let runner = own_runner(&dir).await;
    let defaults = "SigIgn:\t0000000000000000\nSigCgt:\t0000000000000000\n";
    // The waiting spare, not exec'd yet, has reset them already.
    let spare = waiting_spare(&runner).await;
    wait_until_waiting(spare).await;
    let status = std::fs::read_to_string(format!("/proc/{spare}/status")).unwrap();
    let signals: String = status
        .lines()
        .filter(|line| line.starts_with("SigIgn:") || line.starts_with("SigCgt:"))
        .map(|line| format!("{line}\n"))
        .collect();
    assert_eq!(signals, defaults, "the spare {spare}");
    // Jobs at once: one on the spare, the others forked.
    // `cat` reads its own status (grep would show the handler it installs).
    let check = "sleep 0.2; cat /proc/self/status | grep -E '^Sig(Ign|Cgt)'";
    let jobs = (0..3).map(|_| {
        run_on(
            Arc::clone(&runner),
            job(&unique("signals"), sh(check), LimitRequest::default()),
        )
    });
    for ran in futures_join(jobs).await {
        assert_eq!(ran.stdout, defaults, "{}", ran.stderr);
    }
}

/// Every future of `futures`, run at once.
async fn futures_join<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for handle in handles {
        outputs.push(handle.await.unwrap());
    }
    outputs
}

#[tokio::test]
async fn started_comes_first_and_soon_even_from_a_silent_job() {
    // `Started` may wait a moment for what follows it (one write for a short job), but
    // never for the end of a job that prints nothing for a while.
    let (tx, mut rx) = mpsc::channel(64);
    let runner = Arc::clone(&fixture().runner);
    let spec = job(&unique("silent"), sh("sleep 1"), LimitRequest::default());
    let begun = std::time::Instant::now();
    let task = tokio::spawn(async move { runner.run(spec, tx, CancellationToken::new()).await });
    let first = rx.recv().await.expect("a reply");
    let waited = begun.elapsed();
    assert!(matches!(first, Reply::Started(_)), "{first:?}");
    assert!(
        waited < std::time::Duration::from_millis(500),
        "Started came after {waited:?}, with the job's end"
    );
    let mut last = None;
    while let Some(reply) = rx.recv().await {
        last = Some(reply);
    }
    assert!(matches!(last, Some(Reply::Finished(_))), "{last:?}");
    task.await.unwrap();
}

#[tokio::test]
async fn the_timeout_kills_the_job_and_every_process_it_forked() {
    let marker = format!("{}.{}", 300 + std::process::id() % 100, std::process::id());
    let spec = job(
        &unique("timeout"),
        sh(&format!(
            "sleep {marker} & (sleep {marker} &) ; sleep {marker}"
        )),
        LimitRequest {
            timeout_ms: Some(500),
            ..LimitRequest::default()
        },
    );
    let ran = run(spec).await;
    assert!(ran.outcome.timed_out);
    assert_eq!(ran.outcome.limit_hit, Some(LimitHit::Timeout));
    assert_eq!(ran.outcome.status, ExitStatus::Signaled(9));
    assert!(ran.outcome.duration_ms < 3_000);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(&marker))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test]
async fn background_processes_die_with_the_job() {
    let marker = format!("{}.{}", 400 + std::process::id() % 100, std::process::id());
    let ran = shell(&format!("sleep {marker} & echo started")).await;
    assert_eq!(ran.stdout, "started\n");
    assert!(ran.outcome.duration_ms < 3_000);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let found = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .any(|cmdline| String::from_utf8_lossy(&cmdline).contains(&marker));
    assert!(!found);
}

#[tokio::test]
async fn output_of_a_job_that_ends_at_once_arrives_whole_on_both_streams() {
    // Written by shell builtins, so the job ends before its output pipes are watched:
    // they are read after its exit.
    let ran = shell("printf '%50000s' out; printf '%40000s' err >&2").await;
    assert_eq!(ran.outcome.status, ExitStatus::Exited(0), "{}", ran.stderr);
    assert_eq!(ran.stdout.len(), 50_000);
    assert!(ran.stdout.ends_with(" out"));
    assert_eq!(ran.stderr.len(), 40_000);
    assert!(ran.stderr.ends_with(" err"));
    assert_eq!(ran.outcome.stdout_bytes, 50_000);
    assert_eq!(ran.outcome.stderr_bytes, 40_000);
}

#[tokio::test]
async fn output_of_a_job_that_runs_on_arrives_whole_on_both_streams() {
    // Output from before and after the moment its pipes are watched.
    let ran =
        shell("printf '%30000s' a; printf '%20000s' e >&2; sleep 0.02; printf '%30000s' b").await;
    assert_eq!(ran.outcome.status, ExitStatus::Exited(0), "{}", ran.stderr);
    assert_eq!(ran.stdout.len(), 60_000);
    assert!(ran.stdout.ends_with(" b"));
    assert_eq!(ran.stdout.matches(" a").count(), 1);
    assert_eq!(ran.stderr.len(), 20_000);
}

#[tokio::test]
async fn output_past_the_cap_is_truncated_flagged_and_stops_the_job() {
    let ran = shell("yes nox").await;
    assert!(ran.outcome.stdout_truncated);
    assert_eq!(ran.outcome.limit_hit, Some(LimitHit::Output));
    assert_eq!(ran.stdout.len(), 64 * 1024);
    assert_eq!(ran.outcome.stdout_bytes, 64 * 1024);
}

#[tokio::test]
async fn a_traceback_shows_the_jobs_own_code_even_when_its_file_was_rewritten() {
    // Two jobs saving the same file name each run their own code; their tracebacks must
    // quote their own code too, not what the file holds by the time they fail.
    let code =
        "open(__file__, 'w').write('# another job wrote this\\n')\nraise ValueError('mine')\n";
    let program = Program::Python {
        code: code.into(),
        filename: "rewritten.py".into(),
    };
    let ran = run(job(&unique("py"), program, LimitRequest::default())).await;
    assert_quotes_own_code(&ran, "rewritten.py", "mine");
}

/// `ran` failed at line 2 of `file` with `raise ValueError('<message>')`, and its traceback
/// quotes that line from the job's own code.
fn assert_quotes_own_code(ran: &Ran, file: &str, message: &str) {
    assert_eq!(ran.outcome.status, ExitStatus::Exited(1));
    let quoted = format!("{file}\", line 2, in <module>\n    raise ValueError('{message}')");
    assert!(ran.stderr.contains(&quoted), "{}", ran.stderr);
}

#[tokio::test]
async fn python_runs_the_code_under_its_file_name_and_reports_tracebacks_cleanly() {
    // A file name of its own: Python's traceback printer reads the source line back from
    // the file, and other tests here write `run.py` in the same workspace concurrently.
    let code = "import sys\nprint(sys.argv[0], __file__.endswith('/default/tb_run.py'), __name__)\nraise ValueError('boom')\n";
    let program = Program::Python {
        code: code.into(),
        filename: "tb_run.py".into(),
    };
    let ran = run(job(&unique("py"), program, LimitRequest::default())).await;
    assert_eq!(ran.outcome.status, ExitStatus::Exited(1));
    assert_eq!(ran.stdout, "tb_run.py True __main__\n");
    assert!(
        ran.stderr
            .starts_with("Traceback (most recent call last):\n  File \""),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr
            .contains("tb_run.py\", line 3, in <module>\n    raise ValueError('boom')"),
        "{}",
        ran.stderr
    );
    assert!(!ran.stderr.contains("_nox_main"), "{}", ran.stderr);
    assert!(ran.stderr.ends_with("ValueError: boom\n"));
}

#[tokio::test]
async fn concurrent_python_jobs_with_the_same_file_name_each_run_their_own_code() {
    let mut tasks = Vec::new();
    for n in 0..16 {
        let spec = job(
            &unique("conc"),
            py(&format!("import time\ntime.sleep(0.05)\nprint({n})")),
            LimitRequest::default(),
        );
        tasks.push(tokio::spawn(async move { (n, run(spec).await) }));
    }
    for task in tasks {
        let (n, ran) = task.await.unwrap();
        assert_eq!(ran.stdout, format!("{n}\n"), "{}", ran.stderr);
    }
}

#[tokio::test]
async fn stdin_reaches_the_job() {
    let mut spec = job(&unique("stdin"), sh("tr a-z A-Z"), LimitRequest::default());
    spec.stdin = b"hello nox\n".to_vec();
    assert_eq!(run(spec).await.stdout, "HELLO NOX\n");
}

#[tokio::test]
async fn the_status_reports_every_layer() {
    let status = fixture().runner.status();
    assert!(status.ready, "{status:?}");
    let active: Vec<&str> = status
        .layers
        .iter()
        .filter(|layer| layer.active)
        .map(|layer| layer.layer.name())
        .collect();
    for name in [
        "seccomp",
        "landlock",
        "no_new_privs",
        "rlimits",
        "process_group",
    ] {
        assert!(active.contains(&name), "{name} not active: {status:?}");
    }
}

#[tokio::test]
async fn a_required_layer_that_is_not_active_refuses_every_job() {
    // Network isolation comes from the systemd unit; outside it this layer is inactive,
    // which is exactly what a fail-closed configuration must catch.
    let dir = tempfile::tempdir().unwrap();
    let runner = runner_in(&dir, |config| {
        config.required_layers = vec!["seccomp".into(), "network_isolation".into()];
    })
    .await;
    let status = runner.status();
    let network = status
        .layers
        .iter()
        .find(|layer| layer.layer == nox_protocol::Layer::NetworkIsolation)
        .unwrap();
    if network.active {
        eprintln!("SKIP fail-closed check: this executor really has no network");
        return;
    }
    assert!(!status.ready);
    let (tx, mut rx) = mpsc::channel(8);
    runner
        .run(
            job(
                "refused",
                sh("echo should-not-run"),
                LimitRequest::default(),
            ),
            tx,
            CancellationToken::new(),
        )
        .await;
    match rx.recv().await {
        Some(Reply::Error(error)) => {
            assert_eq!(error.kind, nox_protocol::ErrorKind::SandboxUnavailable);
            assert!(error.message().contains("network_isolation"), "{error}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn python(code: &str) -> Ran {
    run(job(&unique("py"), py(code), LimitRequest::default())).await
}

#[tokio::test]
async fn warm_python_jobs_share_no_state_with_each_other() {
    let first = python(
        "import json, os, sys\njson.nox_marker = 1\nos.environ['NOX_LEAK'] = '1'\nsys.nox_leak = 1\nprint('set')",
    )
    .await;
    assert_eq!(first.stdout, "set\n", "{}", first.stderr);
    let second = python(
        "import json, os, sys\nprint(hasattr(json, 'nox_marker'), 'NOX_LEAK' in os.environ, hasattr(sys, 'nox_leak'), '__nox' in globals())",
    )
    .await;
    assert_eq!(
        second.stdout, "False False False False\n",
        "{}",
        second.stderr
    );
}

#[tokio::test]
async fn a_warm_python_job_has_every_layer_and_no_inherited_descriptor() {
    let code = r#"
import os
status = open('/proc/self/status').read()
for key in ('CapEff', 'CapPrm', 'CapAmb', 'NoNewPrivs', 'Seccomp', 'Seccomp_filters'):
    print([line for line in status.splitlines() if line.startswith(key + ':')][0])
print(sorted(int(fd) for fd in os.listdir('/proc/self/fd')))
print(os.getpgid(0) == os.getpid())
try:
    open('/etc/nox-escape', 'w')
    print('wrote /etc')
except OSError:
    print('etc refused')
"#;
    let ran = python(code).await;
    let out = ran.stdout;
    for expected in [
        "CapEff:\t0000000000000000",
        "CapPrm:\t0000000000000000",
        "CapAmb:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
        // One filter: a spare that loaded it ahead does not load it again.
        "Seccomp_filters:\t1",
        "[0, 1, 2, 3]", // 3 is the directory listdir opened
        "True",
        "etc refused",
    ] {
        assert!(
            out.contains(expected),
            "missing {expected:?} in {out}\n{}",
            ran.stderr
        );
    }
}

#[tokio::test]
async fn a_warm_python_job_cannot_signal_the_zygote_and_the_next_job_still_runs() {
    let ran = python(
        "import os, signal\ntry:\n    os.kill(os.getppid(), signal.SIGKILL)\n    print('killed')\nexcept PermissionError:\n    print('refused')",
    )
    .await;
    assert_eq!(ran.stdout, "refused\n", "{}", ran.stderr);
    assert_eq!(python("print('still here')").await.stdout, "still here\n");
}

#[tokio::test]
async fn a_warm_python_job_is_killed_at_its_timeout() {
    let spec = job(
        &unique("pytimeout"),
        py("import time\nprint('sleeping', flush=True)\ntime.sleep(60)"),
        LimitRequest {
            timeout_ms: Some(400),
            ..LimitRequest::default()
        },
    );
    let ran = run(spec).await;
    assert!(ran.outcome.timed_out);
    assert_eq!(ran.outcome.status, ExitStatus::Signaled(9));
    assert_eq!(ran.stdout, "sleeping\n");
    assert!(ran.outcome.duration_ms < 3_000);
}

#[tokio::test]
async fn exit_codes_and_system_exit_behave_as_in_a_fresh_interpreter() {
    let ran = python("import sys\nprint('bye')\nsys.exit(7)").await;
    assert_eq!(
        (ran.stdout.as_str(), ran.outcome.status),
        ("bye\n", ExitStatus::Exited(7))
    );
    let ran = python("import sys\nsys.exit('fatal')").await;
    assert_eq!(
        (ran.stderr.as_str(), ran.outcome.status),
        ("fatal\n", ExitStatus::Exited(1))
    );
    let ran = python("import atexit\natexit.register(lambda: print('atexit ran'))").await;
    assert_eq!(ran.stdout, "atexit ran\n");
}

#[tokio::test]
async fn the_cold_python_path_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let runner = runner_in(&dir, |config| {
        config.python_mode = nox_executor::config::PythonMode::Cold;
    })
    .await;
    let ran = run_on(
        Arc::clone(&runner),
        job(
            "cold",
            py("import sys\nprint(sys.flags.isolated)"),
            LimitRequest::default(),
        ),
    )
    .await;
    assert_eq!(ran.outcome.status, ExitStatus::Exited(0));
    assert_eq!(ran.stdout, "1\n");

    // Its tracebacks quote the job's own code too, whatever the file holds by then.
    let code = "open(__file__, 'w').write('# rewritten\\n')\nraise ValueError('cold')\n";
    let ran = run_on(runner, job("cold-tb", py(code), LimitRequest::default())).await;
    assert_quotes_own_code(&ran, "run.py", "cold");
}

#[tokio::test]
async fn running_jobs_never_changes_the_ids_of_the_executors_own_threads() {
    // Jobs start with clone(CLONE_VM): a libc set*id wrapper in the child would change the
    // ids of every thread of the executor. This test process hosts the runner.
    let before = std::fs::read_to_string("/proc/self/status").unwrap();
    let ids = |status: &str| -> Vec<String> {
        status
            .lines()
            .filter(|line| {
                line.starts_with("Uid:") || line.starts_with("Gid:") || line.starts_with("Groups:")
            })
            .map(str::to_owned)
            .collect()
    };
    for _ in 0..5 {
        shell("true").await;
    }
    python("print(1)").await;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let status =
            std::fs::read_to_string(task.unwrap().path().join("status")).unwrap_or_default();
        if !status.is_empty() {
            assert_eq!(ids(&status), ids(&before), "a thread's ids changed");
        }
    }
}

#[tokio::test]
async fn a_warm_python_job_that_starts_threads_waits_for_them_as_python_does() {
    // The zygote does not import threading (its after-fork hook is dear): a job that does
    // still has its non-daemon threads joined before the process ends.
    let ran = python(
        "import threading, time\ndef late():\n    time.sleep(0.2)\n    print('thread done', threading.current_thread().name)\nthreading.Thread(target=late, name='worker').start()\nprint('main done', threading.main_thread() is threading.current_thread())",
    )
    .await;
    assert_eq!(
        ran.stdout, "main done True\nthread done worker\n",
        "{}",
        ran.stderr
    );
    assert_eq!(ran.outcome.status, ExitStatus::Exited(0));
}

/// A runner with its state and workspaces in `dir`, on the defaults changed by `configure`
/// (and room for 8 jobs at once). Blocking: it runs a probe job.
fn build_runner(dir: &std::path::Path, configure: impl FnOnce(&mut ExecutorConfig)) -> JobRunner {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut config = ExecutorConfig {
        state_dir: dir.join("state"),
        workspace_root: dir.join("workspaces"),
        max_concurrent_jobs: 8,
        ..ExecutorConfig::default()
    };
    configure(&mut config);
    let identity = JobIdentity::resolve(&config).unwrap();
    let workspaces = Arc::new(
        Workspaces::new(
            config.workspace_root.clone(),
            identity.switches().then(|| config.tenant_uids()),
        )
        .unwrap(),
    );
    JobRunner::new(&config, identity, workspaces).unwrap()
}

/// A runner of its own in `dir` (see [`build_runner`]): so that no other test takes its
/// spare, or for a setting of its own.
async fn runner_in(
    dir: &tempfile::TempDir,
    configure: impl FnOnce(&mut ExecutorConfig) + Send + 'static,
) -> Arc<JobRunner> {
    let path = dir.path().to_path_buf();
    let runner = tokio::task::spawn_blocking(move || build_runner(&path, configure))
        .await
        .unwrap();
    Arc::new(runner)
}

async fn own_runner(dir: &tempfile::TempDir) -> Arc<JobRunner> {
    runner_in(dir, |_| {}).await
}

/// The spare waiting in `runner`, once there is one.
async fn waiting_spare(runner: &JobRunner) -> i32 {
    for _ in 0..500 {
        if let Some(pid) = runner.spare_pid() {
            return pid;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("no spare process within 5 s");
}

fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .map(|value| value.trim().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_step_that_fails_in_the_child_is_reported_with_its_name_and_errno() {
    // The probe job runs the configured shell through every layer (through a spawner
    // thread, when there are spawners): a shell that does not exist fails its exec, which
    // only the child can see, and the child reports it before it exits.
    let dir = tempfile::tempdir().unwrap();
    let runner = runner_in(&dir, |config| {
        config.shell = PathBuf::from("/nonexistent/nox-test-shell");
    })
    .await;
    let status = runner.status();
    assert!(!status.ready, "{status:?}");
    let seccomp = status
        .layers
        .iter()
        .find(|layer| layer.layer.name() == "seccomp")
        .unwrap();
    assert!(
        seccomp.detail.contains(
            "probe job failed: setting up the job failed at step `exec`: No such file or directory"
        ),
        "{seccomp:?}"
    );
}

#[tokio::test]
async fn a_shell_job_starts_on_a_spare_that_waited_in_its_cgroup_holding_nothing_of_ours() {
    let dir = tempfile::tempdir().unwrap();
    let runner = own_runner(&dir).await;
    let spare = waiting_spare(&runner).await;
    wait_until_joined(spare).await;
    wait_until_waiting(spare).await;
    assert_holds_nothing_of_ours(spare);
    // The leader of its own process group, though the filter it inherited denies setpgid
    // (the executor made it the leader).
    assert_eq!(process_group_of(spare), spare);
    let limits = LimitRequest {
        max_processes: Some(9),
        ..LimitRequest::default()
    };
    let ran = run_on(
        Arc::clone(&runner),
        job(
            "on-spare",
            sh(concat!(
                "echo $$; grep -E '^Sig(Blk|Ign)' /proc/self/status; ls /proc/self/fd; ",
                "v1=$(sed -n 's/^[0-9]*:pids://p' /proc/self/cgroup); ",
                "if [ -n \"$v1\" ]; then echo /sys/fs/cgroup/pids$v1; ",
                "else echo /sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup); fi; ",
                "grep -E '^Seccomp_filters' /proc/self/status; ",
                "grep -E '^Cpus_allowed_list' /proc/self/status",
            )),
            limits,
        ),
    )
    .await;
    assert_eq!(ran.outcome.status, ExitStatus::Exited(0), "{}", ran.stderr);
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines[0], spare.to_string(), "{}", ran.stdout);
    // No signal blocked, no standard one ignored (SIGPIPE above all); stdio and `ls`'s own
    // directory only.
    let mask =
        |line: &str| u64::from_str_radix(line.rsplit(['\t', ' ']).next().unwrap(), 16).unwrap();
    assert_eq!(mask(lines[1]), 0, "{}", ran.stdout);
    assert_eq!(mask(lines[2]) & 0x7fff_ffff, 0, "{}", ran.stdout);
    assert_eq!(lines[3..7], ["0", "1", "2", "3"], "{}", ran.stdout);
    // Its cgroup holds the job's own limit (read here: the cgroups' parent is 0700, out of
    // the job's reach; the emptied cgroup keeps it until another job or spare takes it).
    let max = std::fs::read_to_string(std::path::Path::new(lines[7]).join("pids.max")).unwrap();
    assert_eq!(max.trim(), "9", "{}", ran.stdout);
    // The filter the spare has (inherited from a spawner thread), once: not a second copy
    // on top.
    assert_eq!(lines[8], "Seccomp_filters:\t1", "{}", ran.stdout);
    // Pinned to the executor's CPU to be woken there, it took back every CPU it had.
    let ours = std::fs::read_to_string("/proc/self/status").unwrap();
    let cpus = |status: &str| {
        status
            .lines()
            .find(|line| line.starts_with("Cpus_allowed_list"))
            .map(str::to_owned)
    };
    assert_eq!(cpus(lines[9]), cpus(&ours), "{}", ran.stdout);
}

/// Once a spare waits for its job (blocked receiving it), it has the job's seccomp filter,
/// inherited from a spawner thread: a job handed to it does not pay for a load.
async fn wait_until_waiting(spare: i32) {
    for _ in 0..500 {
        // The system call it is blocked in, first (as root, or as its owner).
        let call = std::fs::read_to_string(format!("/proc/{spare}/syscall")).unwrap();
        if call.split(' ').next() == Some(&libc::SYS_recvmsg.to_string()) {
            return wait_until_filtered(spare).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the spare {spare} does not wait for a job after 5 s");
}

/// A process with the job's seccomp filter (with `no_new_privs`), once it has it.
async fn wait_until_filtered(spare: i32) {
    for _ in 0..500 {
        let status = std::fs::read_to_string(format!("/proc/{spare}/status")).unwrap();
        if status_field(&status, "Seccomp:") == "2" {
            assert_eq!(status_field(&status, "NoNewPrivs:"), "1", "{status}");
            assert_eq!(status_field(&status, "Seccomp_filters:"), "1", "{status}");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the spare {spare} has no seccomp filter after 5 s");
}

/// Cloned, a spare closes what it does not need, then joins its cgroup (at once, or after
/// the kernel's grace period): once it is in one, it waits for its job.
async fn wait_until_joined(spare: i32) {
    for _ in 0..500 {
        if pids_cgroup_of(spare).contains("/job-") {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the spare {spare} is in no job cgroup after 5 s");
}

/// While a spare waits it holds its socket (on 0..16 and its own number) and nothing else:
/// no pipe of a job that was starting when it was cloned, no connection of ours; and every
/// signal is blocked.
fn assert_holds_nothing_of_ours(spare: i32) {
    let mut targets = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{spare}/fd")).unwrap() {
        targets.insert(std::fs::read_link(entry.unwrap().path()).unwrap());
    }
    assert_eq!(targets.len(), 1, "the spare holds {targets:?}");
    assert!(
        targets
            .iter()
            .all(|t| t.to_string_lossy().starts_with("socket:")),
        "{targets:?}"
    );
    let status = std::fs::read_to_string(format!("/proc/{spare}/status")).unwrap();
    let blocked = u64::from_str_radix(&status_field(&status, "SigBlk:"), 16).unwrap();
    // Every standard signal but SIGKILL and SIGSTOP, which cannot be blocked.
    let standard = (1..=31)
        .filter(|signal| ![9, 19].contains(signal))
        .fold(0u64, |mask, signal| mask | 1 << (signal - 1));
    assert_eq!(
        blocked & standard,
        standard,
        "waits with signals blocked: {blocked:x}"
    );
}

#[tokio::test]
async fn a_spare_cloned_while_we_hold_descriptors_keeps_none_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let runner = own_runner(&dir).await;
    let first = waiting_spare(&runner).await;
    // Descriptors the next spare is cloned with: low, and far above its socket.
    let (read, write) = nix::unistd::pipe().unwrap();
    let high = nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(900)).unwrap();
    run_on(
        Arc::clone(&runner),
        job("take-it", sh("true"), LimitRequest::default()),
    )
    .await;
    let next = waiting_spare(&runner).await;
    assert_ne!(next, first);
    wait_until_joined(next).await;
    // Joined, it closes the file that joins its cgroup: once it waits for its job it holds
    // only what it keeps meanwhile (seen joined but not yet waiting, on a busy machine, it
    // still held that descriptor).
    wait_until_waiting(next).await;
    assert_holds_nothing_of_ours(next);
    nix::unistd::close(high).unwrap();
    drop((read, write));
}

/// A runner of its own whose waiting spare (the pid returned) was killed: its next job
/// forks.
async fn runner_whose_spare_died(dir: &tempfile::TempDir) -> (Arc<JobRunner>, i32) {
    let runner = own_runner(dir).await;
    let spare = waiting_spare(&runner).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(spare),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    (runner, spare)
}

#[tokio::test]
async fn a_spare_that_died_is_replaced_by_a_fork_and_the_job_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (runner, spare) = runner_whose_spare_died(&dir).await;
    let ran = run_on(
        Arc::clone(&runner),
        job("after-kill", sh("echo $$"), LimitRequest::default()),
    )
    .await;
    assert_eq!(ran.outcome.status, ExitStatus::Exited(0), "{}", ran.stderr);
    assert_ne!(ran.stdout.trim(), spare.to_string());
    // And a new spare takes the next job.
    let next = waiting_spare(&runner).await;
    assert_ne!(next, spare);
    let ran = run_on(runner, job("next", sh("echo $$"), LimitRequest::default())).await;
    assert_eq!(ran.stdout.trim(), next.to_string());
}

#[tokio::test]
async fn a_forked_job_inherits_the_filter_of_a_spawner_thread_and_still_leads_its_own_group() {
    let dir = tempfile::tempdir().unwrap();
    // Without its spare, the next job forks.
    let (runner, spare) = runner_whose_spare_died(&dir).await;
    let woken = spawner_wakeups();
    let script = "echo $$ $(cut -d' ' -f5 /proc/$$/stat)\n\
                  grep -E '^(Seccomp|Cpus_allowed_list):' /proc/$$/status\n\
                  python3 -c 'import os\ntry: os.setpgid(0, 0)\nexcept OSError as e: print(\"setpgid\", e.errno)'";
    let ran = run_on(runner, job("forked", sh(script), LimitRequest::default())).await;
    assert_eq!(ran.outcome.status, ExitStatus::Exited(0), "{}", ran.stderr);
    let mut lines = ran.stdout.lines();
    let ids: Vec<&str> = lines.next().unwrap().split(' ').collect();
    assert_ne!(ids[0], spare.to_string(), "the job ran on its spare");
    assert_eq!(
        ids[0], ids[1],
        "the job leads its own process group: {}",
        ran.stdout
    );
    let status = lines.collect::<Vec<_>>().join("\n");
    assert_eq!(status_field(&status, "Seccomp:"), "2", "{status}");
    let ours = std::fs::read_to_string("/proc/self/status").unwrap();
    assert_eq!(
        status_field(&status, "Cpus_allowed_list:"),
        status_field(&ours, "Cpus_allowed_list:"),
        "the job runs on every CPU the executor may use, not its spawner's alone"
    );
    assert!(status.ends_with("setpgid 1"), "{status}");
    // The filter is on the spawner threads alone, never on the executor's other threads.
    let mut spawners = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = task.unwrap().path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        if status.is_empty() {
            continue;
        }
        let expected = if comm.trim() == "nox-spawner" {
            spawners += 1;
            "2"
        } else {
            "0"
        };
        assert_eq!(status_field(&status, "Seccomp:"), expected, "thread {comm}");
    }
    assert!(spawners > 0, "no spawner thread");
    assert!(
        spawner_wakeups() > woken,
        "no spawner thread cloned the job"
    );
}

/// How often this process's spawner threads have slept and woken: each clone they make
/// wakes one (their thread list is the process's, shared by every runner of these tests).
fn spawner_wakeups() -> u64 {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|task| task.unwrap().path())
        .filter(|path| {
            std::fs::read_to_string(path.join("comm"))
                .is_ok_and(|comm| comm.trim() == "nox-spawner")
        })
        .map(|path| {
            let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
            status_field(&status, "voluntary_ctxt_switches:")
                .parse::<u64>()
                .unwrap_or(0)
        })
        .sum()
}

/// The process group of `pid`, from /proc.
fn process_group_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name in parentheses: state, ppid, pgrp.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(2).unwrap().parse().unwrap()
}

/// Children of `pid`, from /proc.
fn children_of(pid: i32) -> Vec<i32> {
    let mut children = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let list =
            std::fs::read_to_string(task.unwrap().path().join("children")).unwrap_or_default();
        children.extend(list.split_whitespace().map(|c| c.parse::<i32>().unwrap()));
    }
    children
}

/// The pids cgroup `pid` is in ("/…/job-N"), from /proc.
fn pids_cgroup_of(pid: i32) -> String {
    pids_cgroup_in(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default())
}

/// The pids cgroup a `/proc/<pid>/cgroup` listing names (v1's, else v2's).
fn pids_cgroup_in(cgroups: &str) -> String {
    cgroups
        .lines()
        .find_map(|line| line.split_once(":pids:").map(|(_, path)| path.to_owned()))
        .or_else(|| {
            cgroups
                .lines()
                .find_map(|line| line.strip_prefix("0::").map(str::to_owned))
        })
        .unwrap_or_default()
}

#[test]
fn a_v1_job_cgroup_is_joined_through_tasks_and_the_joining_process_takes_its_children_along() {
    use nox_executor::sandbox::cgroup::{Cgroups, Version};
    let cgroups = match Cgroups::probe() {
        Ok(cgroups) => cgroups,
        Err(why) => {
            eprintln!("SKIP: no job cgroups here: {why}");
            return;
        }
    };
    let cgroup = cgroups.create(8).unwrap();
    let fd = cgroup.join_fd();
    let file = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
    // v1: the thread that writes moves alone (its whole process, having one thread), without
    // the kernel's global lock that moving a process through `cgroup.procs` takes.
    let expected = match cgroups.version() {
        Version::V1 => "tasks",
        Version::V2 => "cgroup.procs",
    };
    assert_eq!(
        file.file_name().unwrap(),
        expected,
        "{}",
        cgroups.describe()
    );
    // A shell that writes 0 there is in the job cgroup, and so is the child it forks next;
    // this test's process is not. Its output is read to the end and its exit status not
    // relied on: the job runners of the other tests in this process reap every child, so
    // waiting for it may find it gone (ECHILD). If the join failed, `&&` stops the shell
    // before it prints anything.
    let own = pids_cgroup_of(i32::try_from(std::process::id()).unwrap());
    let mut shell = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "echo 0 > /proc/{}/fd/{fd} && cat /proc/$$/cgroup && echo -- && cat /proc/self/cgroup",
            std::process::id()
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut shell.stdout.take().unwrap(), &mut out).unwrap();
    let _ = shell.wait();
    let joined: Vec<String> = out.split("--\n").map(pids_cgroup_in).collect();
    assert_eq!(joined.len(), 2, "{out}");
    assert!(joined.iter().all(|path| path.contains("/job-")), "{out}");
    assert_eq!(joined[0], joined[1], "{out}");
    assert_eq!(
        pids_cgroup_of(i32::try_from(std::process::id()).unwrap()),
        own
    );
    assert!(!own.contains("/job-"), "{own}");
}

#[tokio::test]
async fn a_warm_python_job_runs_in_the_cgroup_its_spare_joined_before_the_job_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    let runner = own_runner(&dir).await;
    let code = "import os\nprint(os.getpid())\nprint(open('/proc/self/cgroup').read())";
    // The first job starts the zygote and gives it a cgroup to reserve.
    let first = run_on(
        Arc::clone(&runner),
        job("zygote-up", py(code), LimitRequest::default()),
    )
    .await;
    assert_eq!(
        first.outcome.status,
        ExitStatus::Exited(0),
        "{}",
        first.stderr
    );
    let zygote = children_of(std::process::id().cast_signed())
        .into_iter()
        .find(|child| {
            // Ours, not another runner's of this test process: it runs in our directory.
            std::fs::read_to_string(format!("/proc/{child}/cmdline"))
                .unwrap_or_default()
                .contains("nox Python zygote")
                && std::fs::read_link(format!("/proc/{child}/cwd"))
                    .is_ok_and(|cwd| cwd.starts_with(dir.path()))
        })
        .expect("the zygote is our child");
    for round in 0..3 {
        // The spare the zygote forks when idle joins the reservation while it waits.
        let mut waiting = None;
        for _ in 0..500 {
            if let Some(spare) = children_of(zygote)
                .into_iter()
                .find(|spare| pids_cgroup_of(*spare).contains("/job-"))
            {
                waiting = Some(spare);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let spare = waiting.expect("a spare of the zygote waits in a job cgroup");
        // ... under the job's seccomp filter, loaded before its job exists.
        wait_until_filtered(spare).await;
        let reserved = pids_cgroup_of(spare);
        let ran = run_on(
            Arc::clone(&runner),
            job(
                &format!("reserved-{round}"),
                py(code),
                LimitRequest::default(),
            ),
        )
        .await;
        assert_eq!(ran.outcome.status, ExitStatus::Exited(0), "{}", ran.stderr);
        let mut lines = ran.stdout.lines();
        assert_eq!(
            lines.next().unwrap(),
            spare.to_string(),
            "the spare took the job"
        );
        assert!(
            ran.stdout.contains(&reserved),
            "runs in {reserved}: {}",
            ran.stdout
        );
    }
    // A job with a limit of its own does not take the reservation: its cgroup holds its limit.
    let limited = LimitRequest {
        max_processes: Some(7),
        ..LimitRequest::default()
    };
    let ran = run_on(
        Arc::clone(&runner),
        job("own-limit", py("import re\nv1 = re.search(r':pids:(.*)', open('/proc/self/cgroup').read())\nprint('/sys/fs/cgroup/pids' + v1.group(1))"), limited),
    )
    .await;
    // Read here: the job cannot (the cgroups' parent is 0700).
    let max = std::fs::read_to_string(std::path::Path::new(ran.stdout.trim()).join("pids.max"))
        .unwrap_or_else(|error| panic!("{error}: {} {}", ran.stdout, ran.stderr));
    assert_eq!(max.trim(), "7", "{}", ran.stderr);
}

#[tokio::test]
async fn concurrent_warm_python_jobs_around_reservations_each_keep_a_cgroup_of_their_own() {
    // Jobs handed on in one order report their start in another; the cgroup each is in
    // must follow the hand-offs, or one job's end would empty a cgroup another runs in.
    let dir = tempfile::tempdir().unwrap();
    let runner = own_runner(&dir).await;
    for round in 0..4 {
        // Idle: the zygote's spare joins the reservation.
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
        let mut tasks = Vec::new();
        for n in 0..8 {
            let code = format!(
                "import time\ntime.sleep({})\nprint({n}, open('/proc/self/cgroup').read().replace(chr(10), ' '))",
                0.02 * f64::from(8 - n)
            );
            let spec = job(&unique("around"), py(&code), LimitRequest::default());
            let runner = Arc::clone(&runner);
            tasks.push(tokio::spawn(async move { (n, run_on(runner, spec).await) }));
        }
        let mut cgroups = std::collections::BTreeSet::new();
        for task in tasks {
            let (n, ran) = task.await.unwrap();
            assert_eq!(
                ran.outcome.status,
                ExitStatus::Exited(0),
                "round {round} job {n}: {}",
                ran.stderr
            );
            let (printed, cgroup) = ran.stdout.split_once(' ').unwrap();
            assert_eq!(printed, n.to_string());
            assert!(cgroups.insert(cgroup.to_owned()), "two jobs in {cgroup}");
        }
    }
}
