//! Jobs: nothing a job starts outlives it, concurrent jobs keep their own code and output,
//! and the command denylist.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use nox_e2e::{Nox, marker, processes_with, random_hex, wait_until_gone};
use serde_json::{Value, json};

fn assert_no_process_left(marker: &str, reply: &Value) {
    let left = wait_until_gone(marker, Duration::from_secs(3));
    let pids: Vec<i32> = left.iter().map(|(pid, _)| *pid).collect();
    for (pid, _) in &left {
        // Clean up after a failure so the machine is not left with stray sleepers.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(
        pids.is_empty(),
        "processes outlived their job: {left:?}\njob reply: {reply}"
    );
}

#[test]
fn a_grandchild_sleeping_past_the_timeout_is_killed_with_the_job() {
    let nox = Nox::shared();
    let marker = marker();
    let reply = nox.client().run(
        "/run_sh",
        &json!({ "cmd": format!("sh -c 'sleep {marker} & sleep {marker}'"), "timeout_s": 1 }),
    );
    assert_eq!(reply["timed_out"], true, "{reply}");
    assert_no_process_left(&marker, &reply);
}

#[test]
fn a_background_process_left_by_a_job_that_exits_is_killed_at_exit() {
    let nox = Nox::shared();
    let marker = marker();
    let started = Instant::now();
    let reply = nox.client().run(
        "/run_sh",
        &json!({ "cmd": format!("sleep {marker} >/dev/null 2>&1 </dev/null & echo started"), "timeout_s": 20 }),
    );
    assert_eq!(reply["stdout"], "started\n", "{reply}");
    assert_eq!(reply["timed_out"], false, "{reply}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the job waited for its background child: {reply}"
    );
    assert_no_process_left(&marker, &reply);
}

#[test]
fn a_background_process_holding_stdout_does_not_outlive_the_job() {
    let nox = Nox::shared();
    let marker = marker();
    let reply = nox.client().run(
        "/run_sh",
        &json!({ "cmd": format!("sleep {marker} & echo started"), "timeout_s": 3 }),
    );
    assert!(
        reply["stdout"]
            .as_str()
            .is_some_and(|out| out.starts_with("started\n")),
        "{reply}"
    );
    assert_no_process_left(&marker, &reply);
}

#[test]
fn a_double_fork_that_tries_setsid_does_not_escape_the_timeout() {
    let nox = Nox::shared();
    let marker = marker();
    let code = format!(
        r#"
import os, time
pid = os.fork()
if pid == 0:
    try:
        os.setsid()
        print("setsid succeeded", flush=True)
    except OSError as e:
        print("setsid errno", e.errno, flush=True)
    if os.fork() == 0:
        os.execv("/bin/sleep", ["sleep", "{marker}"])
    os._exit(0)
os.waitpid(pid, 0)
time.sleep(300)
"#
    );
    let reply = nox
        .client()
        .run("/run_py", &json!({ "code": code, "timeout_s": 1.5 }));
    assert_eq!(reply["timed_out"], true, "{reply}");
    assert_eq!(reply["stdout"], "setsid errno 1\n", "{reply}");
    assert_no_process_left(&marker, &reply);
}

#[test]
fn thirty_two_concurrent_jobs_with_the_default_filename_each_get_their_own_output() {
    let nox = Nox::shared();
    let salt = random_hex(4);
    let results: Vec<(usize, Result<Value, String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..32)
            .map(|n| {
                let client = nox.client().clone();
                let expected = format!("{salt}-{n}");
                scope.spawn(move || {
                    let reply = client.post_json(
                        "/run_py",
                        &json!({ "code": format!("import time\ntime.sleep(0.05)\nprint('{expected}')\n") }),
                    );
                    let result = if reply.status == 200 { Ok(reply.json()) } else { Err(format!("HTTP {} {}", reply.status, reply.text())) };
                    (n, result)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("a request thread"))
            .collect()
    });
    let mut wrong = Vec::new();
    let mut job_ids = HashSet::new();
    for (n, result) in results {
        match result {
            Ok(reply) => {
                if reply["stdout"] != format!("{salt}-{n}\n") || reply["returncode"] != 0 {
                    wrong.push(format!("job {n}: {reply}"));
                }
                job_ids.insert(reply["job_id"].to_string());
            }
            Err(error) => wrong.push(format!("job {n}: {error}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "concurrent jobs got the wrong output:\n{}",
        wrong.join("\n")
    );
    assert_eq!(job_ids.len(), 32, "job ids are unique");
}

#[test]
fn denylisted_commands_are_refused_before_they_run() {
    let nox = Nox::shared();
    for cmd in [
        "shutdown -h now",
        "reboot",
        "/sbin/reboot",
        "mkfs.ext4 /dev/null",
    ] {
        let reply = nox.client().post_json("/run_sh", &json!({ "cmd": cmd }));
        reply.expect_error(400, "forbidden_command");
    }
}

#[test]
fn rm_is_not_on_the_denylist() {
    let reply = Nox::shared().run_sh("touch rm-me.txt && rm -f rm-me.txt && echo removed");
    assert_eq!(reply["stdout"], "removed\n", "{reply}");
}

#[test]
fn a_marker_process_scan_finds_a_live_process() {
    // Guards the scan itself: a scan that never finds anything would pass every test above.
    let marker = marker();
    let mut child = std::process::Command::new("sleep")
        .arg(&marker)
        .spawn()
        .expect("spawn sleep");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut found = processes_with(&marker);
    while found.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        found = processes_with(&marker);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(found.len(), 1, "{found:?}");
}

/// The job's outcome as the client sees it.
fn outcome(reply: &Value) -> (Value, Value, Value, Value) {
    (
        reply["returncode"].clone(),
        reply["signal"].clone(),
        reply["stdout"].clone(),
        reply["stderr"].clone(),
    )
}

#[test]
fn a_plain_command_is_its_own_process_with_the_environment_the_shell_would_give() {
    let nox = Nox::shared();
    let executor = nox.executor_pid().expect("the executor runs");
    // `cat` of its own stat: field 4 is the parent. Under a shell it would be the shell.
    let reply = nox.run_sh("cat /proc/self/stat");
    assert_eq!(reply["returncode"], 0, "{reply}");
    let stat = reply["stdout"].as_str().unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or_default();
    let parent: i32 = after_name
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .unwrap_or_else(|| panic!("no parent in {stat:?}"));
    assert_eq!(
        parent, executor,
        "a plain command ran under a shell: {stat}"
    );
    // The same variables as a command that goes through the shell (a pipe), NOX_COMMAND
    // not among them and PWD the workspace; only the job id and scratch directory differ.
    let variables = |reply: &Value| -> Vec<String> {
        let mut lines: Vec<String> = reply["stdout"]
            .as_str()
            .unwrap_or_default()
            .lines()
            .filter(|line| !line.starts_with("NOX_JOB_ID=") && !line.starts_with("TMPDIR="))
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    };
    let direct = nox.run_sh("env");
    let shelled = nox.run_sh("env | cat");
    assert_eq!(
        variables(&direct),
        variables(&shelled),
        "{direct}\n{shelled}"
    );
    assert!(
        variables(&direct)
            .iter()
            .any(|line| line.starts_with("PWD=/")),
        "{direct}"
    );
    assert!(
        !direct["stdout"]
            .as_str()
            .unwrap_or_default()
            .contains("NOX_COMMAND")
    );
}

#[test]
fn what_cannot_be_exec_directly_runs_in_the_shell_with_the_shells_own_answer() {
    let nox = Nox::shared();
    nox.put(
        "nox-direct-script",
        b"echo from a script without a shebang line\n",
    )
    .expect_json(200);
    nox.put("nox-direct-data.txt", b"data\n").expect_json(200);
    let chmod = nox.run_sh("chmod 755 nox-direct-script");
    assert_eq!(chmod["returncode"], 0, "{chmod}");
    // Each plain command next to the same command quoted, which always takes the shell.
    for (plain, quoted, returncode) in [
        ("nox-no-such-program-x", "'nox-no-such-program-x'", 127),
        ("./nox-no-such-file", "'./nox-no-such-file'", 127),
        ("./nox-direct-data.txt", "'./nox-direct-data.txt'", 126),
        ("./nox-direct-script", "'./nox-direct-script'", 0),
        ("/usr", "'/usr'", 126),
    ] {
        let direct = nox.run_sh(plain);
        let shelled = nox.run_sh(quoted);
        assert_eq!(direct["returncode"], returncode, "{plain}: {direct}");
        assert_eq!(
            outcome(&direct),
            outcome(&shelled),
            "{plain}: {direct}\n{shelled}"
        );
    }
    let script = nox.run_sh("./nox-direct-script");
    assert_eq!(
        script["stdout"], "from a script without a shebang line\n",
        "{script}"
    );
}

#[test]
fn builtins_keep_the_shells_behaviour_and_a_plain_program_killed_by_a_signal_says_so() {
    let nox = Nox::shared();
    // dash's echo prints -e; /bin/echo would take it as an option.
    let echo = nox.run_sh("echo -e x");
    assert_eq!(echo["stdout"], "-e x\n", "{echo}");
    assert_eq!(nox.run_sh("true")["returncode"], 0);
    assert_eq!(nox.run_sh("false")["returncode"], 1);
    // A program that dies of SIGSEGV: the job ends with the signal, as `sh -c prog` and
    // subprocess report it; through the shell's evaluation it is exit code 139.
    nox.put(
        "nox-segv.py",
        b"import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n",
    )
    .expect_json(200);
    let direct = nox.run_sh("python3 nox-segv.py");
    assert_eq!(
        (direct["returncode"].clone(), direct["signal"].clone()),
        (json!(-11), json!(11)),
        "{direct}"
    );
    let shelled = nox.run_sh("python3 nox-segv.py; exit $?");
    assert_eq!(shelled["returncode"], 139, "{shelled}");
}
