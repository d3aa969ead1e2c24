//! Containment: a job that tries to exhaust processes, memory, disk, output or CPU, or to
//! outlive its timeout, stays inside its limits, ends, leaves nothing behind — and the
//! service keeps serving other jobs while it tries.

use std::fs;
use std::time::{Duration, Instant};

use nox_e2e::{Nox, is_root, unique};
use serde_json::{Value, json};

use super::common::{self, assert_gone, assert_serving, marker, py, sh, stderr, stdout};

/// Runs `bomb` (a `/run_sh` or `/run_py` body) in a thread; once it has had a second to
/// spread, runs three ordinary jobs (shell, Python, shell), each of which starts one process
/// of its own, and that must each finish correctly. Returns the bomb's reply and the
/// ordinary jobs' failures.
fn with_concurrent_jobs(nox: &Nox, endpoint: &str, bomb: &Value) -> (Value, Vec<String>) {
    std::thread::scope(|scope| {
        let client = nox.client().clone();
        let handle = scope.spawn(move || client.run(endpoint, bomb));
        std::thread::sleep(Duration::from_millis(1500));
        let mut failures = Vec::new();
        for n in 0..3 {
            let word = format!("concurrent-{n}-{}", nox_e2e::random_hex(3));
            let (endpoint, body) = if n == 1 {
                let code = format!(
                    "import subprocess\nsubprocess.run(['/bin/echo', '{word}'], check=True)"
                );
                ("/run_py", json!({ "code": code, "timeout_s": 20 }))
            } else {
                (
                    "/run_sh",
                    json!({ "cmd": format!("echo {word} | cat"), "timeout_s": 20 }),
                )
            };
            let reply = nox.client().post_json(endpoint, &body);
            let ok = reply.status == 200
                && reply.json()["stdout"] == format!("{word}\n")
                && reply.json()["returncode"] == 0;
            if !ok {
                failures.push(format!(
                    "{endpoint} during the bomb: HTTP {} {}",
                    reply.status,
                    reply.text()
                ));
            }
        }
        let reply = handle.join().expect("the bomb's request thread");
        (reply, failures)
    })
}

#[test]
fn a_shell_fork_bomb_is_contained_and_concurrent_jobs_finish_correctly() {
    let _exclusive = common::exclusive();
    let nox = Nox::shared();
    let marker = marker();
    // dash (/bin/sh) refuses `:` as a function name; the classic needs bash. The leader then
    // spins in a builtin loop (no fork needed), so the bomb lives until the timeout instead
    // of being killed with its group when the leader exits.
    let bomb = json!({ "cmd": format!("exec bash -c ': {marker}; :(){{ :|:& }};:; while :; do :; done'"), "timeout_s": 5 });
    let started = Instant::now();
    let (reply, failures) = with_concurrent_jobs(nox, "/run_sh", &bomb);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the bomb ran {:?}",
        started.elapsed()
    );
    assert_eq!(reply["timed_out"], true, "{reply}");
    assert_gone(&marker, &reply);
    assert!(
        failures.is_empty(),
        "other jobs failed while a fork bomb ran (the sandbox uid's process limit is shared by every job):\n{}",
        failures.join("\n")
    );
    assert_serving(nox);
}

#[test]
fn a_python_fork_loop_is_contained_and_concurrent_jobs_finish_correctly() {
    let _exclusive = common::exclusive();
    let nox = Nox::shared();
    let marker = marker();
    let code = "import os, time\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        time.sleep(0.01)\n";
    let bomb = json!({ "code": code, "filename": format!("fork-{marker}.py"), "timeout_s": 5 });
    let (reply, failures) = with_concurrent_jobs(nox, "/run_py", &bomb);
    assert_eq!(reply["timed_out"], true, "{reply}");
    assert_gone(&marker, &reply);
    assert!(
        failures.is_empty(),
        "other jobs failed while a fork loop ran (the sandbox uid's process limit is shared by every job):\n{}",
        failures.join("\n")
    );
    assert_serving(nox);
}

#[test]
fn a_fork_bomb_under_a_lowered_process_limit_stops_at_that_limit() {
    let _exclusive = common::exclusive();
    let nox = Nox::shared();
    let code = r#"
import os, time
children = 0
while True:
    try:
        pid = os.fork()
    except OSError as e:
        print("refused after", children, "errno", e.errno, flush=True)
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    children += 1
"#;
    let reply = nox.client().run(
        "/run_py",
        &json!({ "code": code, "timeout_s": 10, "limits": { "processes": 8 } }),
    );
    let out = stdout(&reply);
    let count: u64 = out
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX);
    if is_root() {
        assert!(
            count < 8,
            "a job asked for 8 processes forked {count}: {reply}"
        );
    }
    assert!(
        out.ends_with("errno 11\n"),
        "fork must fail with EAGAIN: {reply}"
    );
    assert_eq!(reply["timed_out"], false, "{reply}");
    assert_serving(nox);
}

#[test]
fn a_job_asking_for_fewer_processes_than_other_jobs_hold_still_starts() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    // RLIMIT_NPROC counts every process of the sandbox uid; a low limit a client may ask
    // for must still let the job's own first process start. (A Python job first, so that
    // the warm interpreter — one more process of that uid — exists, whatever else runs.)
    nox.run_py("pass");
    for processes in [1, 2] {
        let reply = nox.client().post_json(
            "/run_sh",
            &json!({ "cmd": "echo started", "timeout_s": 10, "limits": { "processes": processes } }),
        );
        assert_eq!(
            reply.status,
            200,
            "limits.processes = {processes}: HTTP {} {}",
            reply.status,
            reply.text()
        );
        assert_eq!(reply.json()["stdout"], "started\n", "{}", reply.text());
    }
    assert_serving(nox);
}

#[test]
fn a_memory_bomb_that_touches_its_pages_fails_inside_the_job() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let code = "chunks = []\nwhile True:\n    chunks.append(b'x' * (16 << 20))\n";
    let reply = nox.client().run(
        "/run_py",
        &json!({ "code": code, "timeout_s": 20, "limits": { "memory_mb": 256 } }),
    );
    assert_eq!(reply["timed_out"], false, "{reply}");
    assert_ne!(reply["returncode"], 0, "{reply}");
    assert!(stderr(&reply).contains("MemoryError"), "{reply}");
    assert!(
        reply["usage"]["max_rss_kib"]
            .as_u64()
            .is_some_and(|kib| kib <= 256 * 1024),
        "resident memory above the address-space limit: {reply}"
    );
    assert_serving(nox);
}

#[test]
fn a_single_huge_allocation_is_refused_by_the_address_space_limit() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let code = "import mmap\ntry:\n    mmap.mmap(-1, 8 << 30)\n    print('MAPPED 8 GiB')\nexcept OSError as e:\n    print('errno', e.errno)\n";
    let reply = nox.client().run(
        "/run_py",
        &json!({ "code": code, "timeout_s": 10, "limits": { "memory_mb": 512 } }),
    );
    assert_eq!(stdout(&reply), "errno 12\n", "{reply}");
    assert_serving(nox);
}

#[test]
fn a_disk_fill_past_the_file_size_limit_ends_the_job_with_sigxfsz() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let name = unique("fill");
    // Python ignores SIGXFSZ at start; a hostile job restores the default, as C code has it.
    let code = format!(
        "import signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_DFL)\nwith open('{name}', 'wb') as f:\n    for _ in range(64):\n        f.write(b'x' * 65536)\nprint('WROTE 4 MiB')\n"
    );
    let reply = nox.client().run(
        "/run_py",
        &json!({ "code": code, "timeout_s": 10, "limits": { "file_size_mb": 1 } }),
    );
    let on_disk = fs::metadata(nox.workspace("default").join(&name)).map(|meta| meta.len());
    let _ = fs::remove_file(nox.workspace("default").join(&name));
    assert_eq!(reply["limit_hit"], "file_size", "{reply}");
    assert_eq!(reply["returncode"], -libc::SIGXFSZ, "{reply}");
    assert_eq!(stdout(&reply), "", "{reply}");
    assert!(
        on_disk.as_ref().is_ok_and(|len| *len <= 1 << 20),
        "the file on disk: {on_disk:?}"
    );
    assert_serving(nox);
}

#[test]
fn a_python_disk_fill_gets_efbig_and_the_file_stops_at_the_limit() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let name = unique("fill");
    let code = format!(
        "import os\nfd = os.open('{name}', os.O_WRONLY | os.O_CREAT)\ntry:\n    while True:\n        os.write(fd, b'x' * 65536)\nexcept OSError as e:\n    print('errno', e.errno, os.fstat(fd).st_size)\n"
    );
    let reply = nox.client().run(
        "/run_py",
        &json!({ "code": code, "timeout_s": 10, "limits": { "file_size_mb": 1 } }),
    );
    let _ = fs::remove_file(nox.workspace("default").join(&name));
    assert_eq!(stdout(&reply), "errno 27 1048576\n", "{reply}");
    assert_serving(nox);
}

#[test]
fn a_shell_disk_fill_is_reported_as_the_file_size_limit() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let name = unique("fill");
    let reply = nox.client().run(
        "/run_sh",
        &json!({ "cmd": format!("exec head -c 5000000 /dev/zero > {name}"), "timeout_s": 10, "limits": { "file_size_mb": 1 } }),
    );
    let _ = fs::remove_file(nox.workspace("default").join(&name));
    assert_eq!(reply["limit_hit"], "file_size", "{reply}");
    assert_serving(nox);
}

#[test]
fn truncate_and_fallocate_cannot_grow_a_file_past_the_file_size_limit() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let name = unique("sparse");
    let code = format!(
        r#"
import os, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
open('{name}', 'wb').close()
for what, grow in [("truncate", lambda: os.truncate('{name}', 8 << 20)),
                   ("fallocate", lambda: os.posix_fallocate(os.open('{name}', os.O_WRONLY), 0, 8 << 20))]:
    try:
        grow()
        print(what, "GREW", os.stat('{name}').st_size)
    except OSError as e:
        print(what, "errno", e.errno)
"#
    );
    let reply = nox.client().run(
        "/run_py",
        &json!({ "code": code, "timeout_s": 10, "limits": { "file_size_mb": 1 } }),
    );
    let _ = fs::remove_file(nox.workspace("default").join(&name));
    assert_eq!(
        stdout(&reply),
        "truncate errno 27\nfallocate errno 27\n",
        "{reply}"
    );
    assert_serving(nox);
}

#[test]
fn a_binary_output_flood_on_stdout_is_capped_and_the_reply_is_valid_json() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let started = Instant::now();
    let reply = nox.client().run(
        "/run_sh",
        &json!({ "cmd": "head -c 50000000 /dev/urandom", "timeout_s": 20, "limits": { "output_kb": 64 } }),
    );
    assert!(
        stdout(&reply).chars().count() <= 64 * 1024,
        "{} characters of stdout came back",
        stdout(&reply).chars().count()
    );
    assert_eq!(reply["stdout_truncated"], true, "{}", reply["limit_hit"]);
    assert_eq!(reply["limit_hit"], "output", "{}", reply["returncode"]);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_serving(nox);
}

#[test]
fn an_output_flood_on_both_streams_from_many_processes_is_capped_and_every_writer_dies() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let marker = marker();
    let cmd =
        format!("for i in 1 2 3 4; do yes {marker} & yes {marker} >&2 & done; sleep {marker}");
    let started = Instant::now();
    let reply = nox.client().run(
        "/run_sh",
        &json!({ "cmd": cmd, "timeout_s": 20, "limits": { "output_kb": 64 } }),
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the flood was only stopped by the timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(reply["limit_hit"], "output", "{}", reply["returncode"]);
    assert!(stdout(&reply).len() <= 64 * 1024);
    assert!(stderr(&reply).len() <= 64 * 1024);
    assert_gone(&marker, &json!({ "limit_hit": reply["limit_hit"] }));
    assert_serving(nox);
}

#[test]
fn an_infinite_loop_is_killed_at_the_timeout() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let started = Instant::now();
    let reply = py(nox, "while True:\n    pass\n", 1.0);
    let elapsed = started.elapsed();
    assert_eq!(reply["timed_out"], true, "{reply}");
    assert_eq!(reply["limit_hit"], "timeout", "{reply}");
    assert_eq!(reply["returncode"], -9, "{reply}");
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    assert_serving(nox);
}

#[test]
fn a_loop_that_ignores_every_catchable_signal_is_still_killed_at_the_timeout() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let code = r#"
import signal
for number in range(1, 65):
    try:
        signal.signal(number, signal.SIG_IGN)
    except (OSError, ValueError):
        pass
print("ignoring", flush=True)
while True:
    pass
"#;
    let reply = py(nox, code, 1.0);
    assert_eq!(stdout(&reply), "ignoring\n", "{reply}");
    assert_eq!(reply["timed_out"], true, "{reply}");
    assert_eq!(reply["returncode"], -9, "{reply}");
    assert_serving(nox);
}

#[test]
fn cpu_time_exhaustion_under_a_low_cpu_limit_is_reported_as_limit_hit_cpu() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let started = Instant::now();
    let reply = nox.client().run(
        "/run_py",
        &json!({ "code": "while True:\n    pass\n", "timeout_s": 15, "limits": { "cpu_s": 1 } }),
    );
    assert_eq!(reply["limit_hit"], "cpu", "{reply}");
    assert_eq!(reply["timed_out"], false, "{reply}");
    assert_eq!(reply["returncode"], -libc::SIGXCPU, "{reply}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_serving(nox);
}

#[test]
fn a_job_that_ignores_sigxcpu_is_killed_at_the_hard_cpu_limit() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let code =
        "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass\n";
    let reply = nox.client().run(
        "/run_py",
        &json!({ "code": code, "timeout_s": 15, "limits": { "cpu_s": 1 } }),
    );
    assert_eq!(reply["returncode"], -9, "{reply}");
    assert_eq!(reply["timed_out"], false, "{reply}");
    assert_eq!(reply["limit_hit"], "cpu", "{reply}");
    assert_serving(nox);
}

#[test]
fn cpu_burned_by_many_processes_is_bounded_by_the_wall_clock_timeout() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let marker = marker();
    let code = "import os\nfor _ in range(3):\n    if os.fork() == 0:\n        break\nwhile True:\n    pass\n";
    let started = Instant::now();
    let reply = nox.client().run(
        "/run_py",
        &json!({ "code": code, "filename": format!("burn-{marker}.py"), "timeout_s": 2 }),
    );
    assert_eq!(reply["timed_out"], true, "{reply}");
    assert!(started.elapsed() < Duration::from_secs(6));
    assert_gone(&marker, &reply);
    assert_serving(nox);
}

#[test]
fn a_double_fork_daemon_does_not_outlive_a_job_that_exits_at_once() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let marker = marker();
    let code = format!(
        "import os\nif os.fork() == 0:\n    if os.fork() == 0:\n        os.execv('/bin/sleep', ['sleep', '{marker}'])\n    os._exit(0)\nprint('parent leaves')\n"
    );
    let started = Instant::now();
    let reply = py(nox, &code, 20.0);
    assert_eq!(stdout(&reply), "parent leaves\n", "{reply}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the job waited for its grandchild"
    );
    assert_gone(&marker, &reply);
    assert_serving(nox);
}

#[test]
fn libc_daemon_cannot_detach_a_process_from_the_job() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let marker = marker();
    let report = unique("daemon-report");
    let code = format!(
        r#"
import ctypes, os, time
if os.fork() == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    result = libc.daemon(1, 1)
    with open('{report}', 'w') as f:
        f.write(f"daemon {{result}} errno {{ctypes.get_errno()}} sid {{os.getsid(0)}} pgid {{os.getpgid(0)}}")
    os.execv('/bin/sleep', ['sleep', '{marker}'])
time.sleep(0.7)
print(open('{report}').read().startswith('daemon -1 errno 1'), os.getpgid(0))
"#
    );
    let reply = py(nox, &code, 20.0);
    let _ = fs::remove_file(nox.workspace("default").join(&report));
    assert!(
        stdout(&reply).starts_with("True "),
        "daemon() must fail at setsid: {reply}"
    );
    assert_gone(&marker, &reply);
    assert_serving(nox);
}

#[test]
fn nohup_and_ignored_hangups_do_not_keep_a_process_after_the_job() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let marker = marker();
    let cmd = format!(
        "nohup sh -c 'trap \"\" HUP TERM INT QUIT; sleep {marker}' >/dev/null 2>&1 </dev/null & echo started"
    );
    let reply = sh(nox, &cmd, 20.0);
    assert_eq!(stdout(&reply), "started\n", "{reply}");
    assert_gone(&marker, &reply);
    assert_serving(nox);
}

#[test]
fn the_setsid_command_cannot_detach_a_process_from_the_job() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let marker = marker();
    let reply = sh(
        nox,
        // `setsid -f` forks and returns at once; the refused child reports, then the job
        // ends (the short sleep lets its message out before the group is killed).
        &format!("setsid -f sleep {marker}; s=$?; sleep 0.3; echo status $s"),
        20.0,
    );
    assert!(
        stderr(&reply).contains("not permitted"),
        "setsid must be refused: {reply}"
    );
    assert_gone(&marker, &reply);
    assert_serving(nox);
}

#[test]
fn posix_spawn_into_a_new_session_or_group_is_refused() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let marker = marker();
    let code = format!(
        r#"
import os
for what, extra in [("setsid", {{"setsid": True}}), ("setpgroup", {{"setpgroup": 0}})]:
    try:
        pid = os.posix_spawn("/bin/sleep", ["sleep", "{marker}"], {{}}, **extra)
        print(what, "SPAWNED", pid)
    except OSError as e:
        print(what, "errno", e.errno)
"#
    );
    let reply = py(nox, &code, 10.0);
    assert_eq!(
        stdout(&reply),
        "setsid errno 1\nsetpgroup errno 1\n",
        "{reply}"
    );
    assert_gone(&marker, &reply);
    assert_serving(nox);
}

#[test]
fn a_stopped_background_process_is_killed_with_the_job() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let marker = marker();
    let cmd = format!("sh -c 'kill -STOP $$; sleep {marker}' & sleep 0.3; echo done");
    let reply = sh(nox, &cmd, 20.0);
    assert_eq!(stdout(&reply), "done\n", "{reply}");
    assert_gone(&marker, &reply);
    assert_serving(nox);
}

/// Every way to create something at `dir/<name>`; prints `LEAK <what>` for each that worked.
fn create_everything(dir: &str, name: &str) -> String {
    format!(
        r#"
import os, socket
target = os.path.join({dir:?}, {name:?})
open("inside-{name}", "w").write("x")
attempts = [
    ("open", lambda: os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))),
    ("mkdir", lambda: os.mkdir(target)),
    ("mkfifo", lambda: os.mkfifo(target)),
    ("symlink", lambda: os.symlink("/etc/passwd", target)),
    ("link", lambda: os.link("inside-{name}", target)),
    ("rename", lambda: os.rename("inside-{name}", target)),
    ("bind", lambda: socket.socket(socket.AF_UNIX).bind(target)),
]
for what, attempt in attempts:
    try:
        attempt()
        print("LEAK", what, target)
    except OSError:
        pass
os.unlink("inside-{name}")
"#
    )
}

#[test]
fn nothing_can_be_created_outside_the_workspace_by_any_syscall() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let name = unique("outside");
    // A view's /dev/shm and /tmp are its own (see side_channels): written there, nothing
    // reaches the host's (checked below). Without views they are the host's, out of reach.
    let views = nox.layer_active("views");
    let own = if views {
        &["/tmp", "/dev/shm", "/proc/self/root/tmp"][..]
    } else {
        &[][..]
    };
    let dirs = [
        "/tmp".to_owned(),
        "/var/tmp".to_owned(),
        "/dev/shm".to_owned(),
        "/run".to_owned(),
        "/run/lock".to_owned(),
        "/etc".to_owned(),
        "/usr/local/bin".to_owned(),
        "/root".to_owned(),
        "/proc/self/cwd/..".to_owned(),
        "/proc/self/root/tmp".to_owned(),
        nox.dir().display().to_string(),
        nox.workspace_root().display().to_string(),
        nox.state_dir().display().to_string(),
        nox.state_dir().join("jobs").display().to_string(),
    ];
    let mut leaks = Vec::new();
    for dir in &dirs {
        let reply = py(nox, &create_everything(dir, &name), 20.0);
        let created = stdout(&reply)
            .lines()
            .filter(|line| line.starts_with("LEAK"))
            .map(str::to_owned)
            .collect::<Vec<_>>();
        if own.contains(&dir.as_str()) {
            assert!(!created.is_empty(), "{dir} is the view's own, yet: {reply}");
        } else {
            leaks.extend(created);
        }
        assert!(stderr(&reply).is_empty(), "{dir}: {reply}");
    }
    for dir in dirs.iter().filter(|dir| !dir.starts_with("/proc")) {
        let path = std::path::Path::new(dir).join(&name);
        if fs::symlink_metadata(&path).is_ok() {
            leaks.push(format!("{} exists", path.display()));
            let _ = fs::remove_dir(&path).or_else(|_| fs::remove_file(&path));
        }
    }
    assert!(
        leaks.is_empty(),
        "created outside the workspace:\n{}",
        leaks.join("\n")
    );
    assert_serving(nox);
}

#[test]
fn existing_system_files_cannot_be_written_truncated_renamed_removed_or_retimed() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let before = fs::metadata("/etc/hostname").and_then(|meta| meta.modified());
    let content = fs::read("/etc/hostname").unwrap_or_default();
    let code = r#"
import os
target = "/etc/hostname"
attempts = [
    ("append", lambda: open(target, "a").write("x")),
    ("truncate", lambda: os.truncate(target, 0)),
    ("rename", lambda: os.rename(target, target + ".moved")),
    ("unlink", lambda: os.unlink(target)),
    ("utime", lambda: os.utime(target, (0, 0))),
    ("utime-now", lambda: os.utime(target)),
    ("chmod", lambda: os.chmod(target, 0o777)),
    ("setxattr", lambda: os.setxattr(target, "user.nox", b"x")),
]
for what, attempt in attempts:
    try:
        attempt()
        print("CHANGED", what)
    except OSError:
        pass
print("end")
"#;
    let reply = py(nox, code, 10.0);
    assert_eq!(stdout(&reply), "end\n", "{reply}");
    assert_eq!(
        fs::metadata("/etc/hostname")
            .and_then(|meta| meta.modified())
            .ok(),
        before.ok(),
        "/etc/hostname was touched"
    );
    assert_eq!(fs::read("/etc/hostname").unwrap_or_default(), content);
    assert_serving(nox);
}

/// An instance whose workspaces have an 8 MiB disk quota, with two tenants.
fn quota_instance() -> &'static Nox {
    static QUOTA: std::sync::OnceLock<Nox> = std::sync::OnceLock::new();
    QUOTA.get_or_init(|| {
        Nox::builder()
            .tokens(&[
                ("filler", &format!("filler-{}", unique("t"))),
                ("bystander", &format!("bystander-{}", unique("t"))),
            ])
            .executor_env("NOX_EXECUTOR__WORKSPACE_QUOTA_MB", "8")
            .start()
    })
}

#[test]
fn a_disk_fill_with_many_small_files_is_stopped_at_the_workspace_quota() {
    let _jobs = common::jobs();
    let nox = quota_instance();
    let filler = nox.client_for("filler");
    // Files each far under the file-size limit: only a workspace quota stops this.
    let code = "import os, time\nfor i in range(10000):\n    with open(f'fill-{i}', 'wb') as f:\n        f.write(os.urandom(256 << 10))\n    time.sleep(0.005)\nprint('FILLED 2.5 GiB')\n";
    let reply = filler.run("/run_py", &json!({ "code": code, "timeout_s": 20 }));
    assert_eq!(reply["limit_hit"], "disk", "{reply}");
    assert!(!stdout(&reply).contains("FILLED"), "{reply}");
    let used: u64 = fs::read_dir(nox.workspace("filler"))
        .expect("the workspace")
        .filter_map(Result::ok)
        .filter_map(|entry| entry.metadata().ok())
        .map(|meta| meta.len())
        .sum();
    assert!(
        used < 64 << 20,
        "the job wrote {used} bytes past an 8 MiB quota"
    );

    // Over its quota, the workspace refuses jobs and uploads in the uniform shape...
    for reply in [
        filler.post_json("/run_sh", &json!({ "cmd": "echo more > more.txt" })),
        filler.put("more.bin", &[b'x'; 4096]),
    ] {
        let body = reply.expect_json(507);
        assert_eq!(body["error"], "quota_exceeded", "{body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("quota")),
            "{body}"
        );
    }
    // ...while another tenant is not affected...
    let other = nox.client_for("bystander");
    assert_eq!(stdout(&other.run_sh("echo fine")), "fine\n");
    other.put("small.txt", b"small").expect_json(200);
    // ...and deleting files (over HTTP) makes room again.
    for entry in fs::read_dir(nox.workspace("filler")).expect("the workspace") {
        let name = entry.expect("an entry").file_name();
        let name = name.to_string_lossy();
        let reply = filler.request("DELETE", &format!("/files/{name}"), &[], None);
        assert!(
            reply.status == 200 || reply.status == 204,
            "DELETE {name}: {}",
            reply.status
        );
    }
    assert_eq!(stdout(&filler.run_sh("echo room again")), "room again\n");
    assert_serving(nox);
}

#[test]
fn an_upload_that_would_cross_the_workspace_quota_is_refused_and_leaves_nothing() {
    let _jobs = common::jobs();
    let nox = quota_instance();
    let client = nox.client_for("bystander");
    let reply = client.put("too-big.bin", &vec![b'x'; 9 << 20]);
    let body = reply.expect_json(507);
    assert_eq!(body["error"], "quota_exceeded", "{body}");
    assert!(
        !nox.workspace("bystander").join("too-big.bin").exists(),
        "the refused upload was kept"
    );
    // Uploads that fit still work, and replacing a file does not count it twice.
    for _ in 0..4 {
        client
            .put("fits.bin", &vec![b'y'; 3 << 20])
            .expect_json(200);
    }
    assert_serving(nox);
}
