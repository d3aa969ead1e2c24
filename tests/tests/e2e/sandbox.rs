//! The sandbox, as the kernel reports it from inside a job: no capabilities, no_new_privs,
//! seccomp, Landlock, the sandbox uid, a clean environment, no inherited descriptors.

use std::fs;

use nox_e2e::{Nox, processes_with, skip_unless_root, unique};
use serde_json::Value;

fn stdout(reply: &Value) -> &str {
    reply["stdout"].as_str().unwrap_or_default()
}

#[test]
fn a_job_has_no_capabilities_no_new_privs_and_a_seccomp_filter() {
    let reply = Nox::shared().run_sh("cat /proc/self/status");
    assert_eq!(reply["returncode"], 0, "{reply}");
    let status = stdout(&reply);
    for line in [
        "CapInh:\t0000000000000000",
        "CapPrm:\t0000000000000000",
        "CapEff:\t0000000000000000",
        "CapAmb:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
    ] {
        assert!(
            status.lines().any(|l| l == line),
            "missing `{line}` in the job's /proc/self/status:\n{status}"
        );
    }
}

#[test]
fn a_job_run_by_root_runs_as_its_workspaces_own_uid() {
    if skip_unless_root("a_job_run_by_root_runs_as_its_workspaces_own_uid") {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let nox = Nox::shared();
    let sandbox_user = nix::unistd::User::from_name("nox-sandbox")
        .expect("read the user database")
        .expect("user nox-sandbox exists (test.sh creates it)");
    let reply = nox.run_sh("id -u; id -g; id -G");
    let out = stdout(&reply);
    let ids: Vec<&str> = out.lines().collect();
    let [uid, gid, groups] = ids[..] else {
        panic!("unexpected output: {reply}");
    };
    let uid: u32 = uid.parse().expect("a numeric uid");
    // The default range: executor.tenant_uid_first = 2000000000, 65536 of them.
    assert!(
        (2_000_000_000..2_000_065_536).contains(&uid),
        "the job's uid {uid} is not a workspace uid: {reply}"
    );
    assert_ne!(uid, sandbox_user.uid.as_raw(), "{reply}");
    assert_eq!(gid, uid.to_string(), "{reply}");
    assert_eq!(
        groups,
        uid.to_string(),
        "the job keeps other groups: {reply}"
    );
    let workspace = std::fs::metadata(nox.workspace("default")).expect("the workspace");
    assert_eq!(
        (workspace.uid(), workspace.gid(), workspace.mode() & 0o7777),
        (uid, uid, 0o700),
        "the workspace is not private to its uid"
    );
    let python = nox.run_py("import os; print(os.getuid(), os.getgid(), os.getgroups())");
    assert_eq!(
        stdout(&python),
        format!("{uid} {uid} [{uid}]\n"),
        "a warm Python job of the same workspace runs as another user: {python}"
    );
}

#[test]
fn the_executor_holds_no_system_directory_for_every_child_it_clones_to_copy() {
    // Another process's descriptors are root's to read.
    if skip_unless_root("the_executor_holds_no_system_directory_for_every_child_it_clones_to_copy")
    {
        return;
    }
    let nox = Nox::shared();
    // Its ruleset has been built, through its view when it has one.
    let reply = nox.run_sh("true");
    assert_eq!(reply["returncode"], 0, "{reply}");
    let pid = nox.executor_pid().expect("the executor runs");
    // As the executor's own root has them, or a view (`<views>/<n>/usr`); `/bin` and the
    // other links of a merged /usr read as what they lead to.
    let system = [
        "/usr",
        "/usr/bin",
        "/usr/sbin",
        "/usr/lib",
        "/usr/lib64",
        "/usr/lib32",
        "/etc",
        "/opt",
        "/proc",
        "/sys",
        "/dev",
        "/bin",
        "/sbin",
        "/lib",
        "/lib64",
    ];
    let is_system = |target: &str| {
        system.iter().any(|path| {
            target == *path
                || target.strip_suffix(path).is_some_and(|view| {
                    view.rsplit('/')
                        .next()
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                })
        })
    };
    // Other tests' jobs run meanwhile, and a ruleset being built holds them for its build:
    // one look without any is the answer (before, every look had 13 per view and 13 more).
    let mut held = Vec::new();
    for _ in 0..20 {
        held = fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("the executor's descriptors")
            .filter_map(|entry| fs::read_link(entry.ok()?.path()).ok())
            .map(|target| target.to_string_lossy().into_owned())
            .filter(|target| is_system(target))
            .collect();
        if held.is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("the executor holds system directories: {held:?}");
}

#[test]
fn a_job_cannot_signal_the_executor() {
    if skip_unless_root("a_job_cannot_signal_the_executor") {
        return;
    }
    let nox = Nox::shared();
    let pid = nox.executor_pid().expect("the executor runs");
    // `kill` is on the frontend's denylist: ask from Python.
    let reply = nox.run_py(&format!(
        "import os\ntry:\n    os.kill({pid}, 0)\n    print('REACHED')\nexcept PermissionError:\n    print('EPERM')\n"
    ));
    assert_eq!(stdout(&reply), "EPERM\n", "{reply}");
}

#[test]
fn network_sockets_are_refused_inside_a_job() {
    let code = r#"
import socket
for name, family, kind in [
    ("inet", socket.AF_INET, socket.SOCK_STREAM),
    ("inet-udp", socket.AF_INET, socket.SOCK_DGRAM),
    ("inet6", socket.AF_INET6, socket.SOCK_STREAM),
    ("netlink", socket.AF_NETLINK, socket.SOCK_RAW),
    ("packet", getattr(socket, "AF_PACKET", 17), socket.SOCK_RAW),
]:
    try:
        socket.socket(family, kind).close()
        print(name, "ALLOWED")
    except PermissionError as e:
        print(name, "EPERM" if e.errno == 1 else e.errno)
    except OSError as e:
        print(name, "errno", e.errno)
try:
    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()
    print("unix ALLOWED")
except OSError as e:
    print("unix errno", e.errno)
"#;
    let reply = Nox::shared().run_py(code);
    let expected =
        "inet EPERM\ninet-udp EPERM\ninet6 EPERM\nnetlink EPERM\npacket EPERM\nunix ALLOWED\n";
    assert_eq!(stdout(&reply), expected, "{reply}");
}

#[test]
fn socket_socket_raises_permission_error() {
    let reply = Nox::shared().run_py("import socket\nsocket.socket()\n");
    assert_ne!(reply["returncode"], 0, "{reply}");
    assert!(
        reply["stderr"]
            .as_str()
            .is_some_and(|e| e.contains("PermissionError")),
        "{reply}"
    );
}

#[test]
fn ptrace_setsid_and_setpgid_are_refused() {
    let code = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
print("ptrace", libc.ptrace(0, 0, 0, 0), ctypes.get_errno())
# A group leader may never call setsid; try both in a child that is not one.
for name, call in [("setsid", os.setsid), ("setpgid", lambda: os.setpgid(0, 0))]:
    pid = os.fork()
    if pid == 0:
        try:
            call()
            os._exit(0)
        except OSError as e:
            os._exit(e.errno)
    _, status = os.waitpid(pid, 0)
    print(name, os.waitstatus_to_exitcode(status))
"#;
    let reply = Nox::shared().run_py(code);
    assert_eq!(
        stdout(&reply),
        "ptrace -1 1\nsetsid 1\nsetpgid 1\n",
        "{reply}"
    );
}

#[test]
fn a_job_cannot_write_outside_its_workspace() {
    let nox = Nox::shared();
    let name = unique("escape");
    // A view's /dev/shm and /tmp are its own (`jobs_have_a_dev_shm_of_their_view_s_own`,
    // `jobs_have_a_tmp_of_their_view_s_own`); without views they are the host's, shared by
    // everyone.
    let views = nox.layer_active("views");
    let (tmp, shm) = if views {
        ("/var/tmp", "/var/tmp")
    } else {
        ("/tmp", "/dev/shm")
    };
    let targets = [
        format!("{tmp}/{name}"),
        format!("/var/tmp/{name}"),
        format!("{shm}/{name}"),
        format!("/etc/{name}"),
        format!("/var/lib/{name}"),
        nox.dir().join(&name).display().to_string(),
        nox.workspace_root().join(&name).display().to_string(),
        nox.state_dir().join(&name).display().to_string(),
        format!("../{name}"),
    ];
    let script: String = targets
        .iter()
        .map(|target| format!("(echo x > '{target}') 2>/dev/null && echo 'WROTE {target}'\n"))
        .collect();
    let reply = nox.run_sh(&format!("{script}echo ok > inside.txt && echo inside-ok"));
    let mut wrong: Vec<String> = stdout(&reply)
        .lines()
        .filter(|l| l.starts_with("WROTE"))
        .map(str::to_owned)
        .collect();
    for target in &targets {
        let path = if target.starts_with('/') {
            std::path::PathBuf::from(target)
        } else {
            nox.workspace("default").join(target)
        };
        if path.exists() {
            wrong.push(format!("{} exists", path.display()));
            let _ = fs::remove_file(&path);
        }
    }
    assert!(
        wrong.is_empty(),
        "the job wrote outside its workspace:\n{}",
        wrong.join("\n")
    );
    assert!(
        stdout(&reply).ends_with("inside-ok\n"),
        "the job can still write its workspace: {reply}"
    );
}

#[test]
fn a_job_cannot_read_the_state_directory_root_or_home() {
    let nox = Nox::shared();
    let probe = unique("state-probe");
    fs::write(nox.state_dir().join(&probe), "state secret").expect("write a file in the state dir");
    let reply = nox.run_sh(&format!(
        "cat '{state}/{probe}' 2>/dev/null && echo READ-STATE; ls '{state}' >/dev/null 2>&1 && echo LISTED-STATE; ls /root >/dev/null 2>&1 && echo LISTED-ROOT; echo end",
        state = nox.state_dir().display()
    ));
    let _ = fs::remove_file(nox.state_dir().join(&probe));
    assert_eq!(stdout(&reply), "end\n", "{reply}");
}

#[test]
fn a_job_can_read_the_system_but_not_change_it() {
    let reply = Nox::shared().run_sh("head -c 5 /etc/passwd; echo; /usr/bin/python3 -c 'print(1)'; touch /usr/bin/x 2>/dev/null && echo TOUCHED; echo end");
    assert_eq!(stdout(&reply), "root:\n1\nend\n", "{reply}");
}

#[test]
fn the_environment_is_cleared_and_tmpdir_is_private_and_writable() {
    let nox = Nox::shared();
    let reply = nox.run_sh("env; echo ---; echo scratch > \"$TMPDIR/x\" && cat \"$TMPDIR/x\"");
    let out = stdout(&reply);
    let (env, rest) = out.split_once("---\n").unwrap_or((out, ""));
    let names: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    for leaked in [
        "NOX_API_TOKEN",
        "NOX_SANDBOX",
        "NOX_EXECUTOR__STATE_DIR",
        "NOX_LOG",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
    ] {
        assert!(
            !names.contains(&leaked),
            "{leaked} leaked into the job's environment:\n{env}"
        );
    }
    assert!(
        !env.contains(nox.token()),
        "the API token is visible to the job:\n{env}"
    );
    assert!(names.contains(&"TMPDIR"), "TMPDIR is set:\n{env}");
    assert!(names.contains(&"PATH"), "PATH is set:\n{env}");
    // The workspace's uid has no passwd entry; USER and LOGNAME name the workspace.
    for name in ["USER=default", "LOGNAME=default"] {
        assert!(env.lines().any(|line| line == name), "{name}:\n{env}");
    }
    assert_eq!(rest, "scratch\n", "TMPDIR is writable: {reply}");
    let tmpdir = env
        .lines()
        .find_map(|l| l.strip_prefix("TMPDIR="))
        .unwrap_or_default();
    assert!(
        tmpdir != "/tmp" && tmpdir != "/var/tmp",
        "TMPDIR={tmpdir} is a shared directory"
    );
    // Jobs running at once never share one; a later job's starts empty, whoever had it.
    let both = "echo \"$TMPDIR\"; ls -A \"$TMPDIR\"; touch \"$TMPDIR/left\"; sleep 0.5";
    let [first, second] = std::thread::scope(|scope| {
        [
            scope.spawn(|| nox.run_sh(both)),
            scope.spawn(|| nox.run_sh(both)),
        ]
        .map(|job| job.join().expect("a job's request"))
    });
    assert_eq!(
        stdout(&first).lines().count(),
        1,
        "not empty at start: {first}"
    );
    assert_eq!(
        stdout(&second).lines().count(),
        1,
        "not empty at start: {second}"
    );
    assert_ne!(
        stdout(&first),
        stdout(&second),
        "two jobs running at once share a TMPDIR"
    );
}

#[test]
fn a_kept_tmpdir_that_a_job_wrote_in_after_a_quiet_spell_comes_back_empty() {
    // A kept TMPDIR left alone for a while is checked at its job's end by its change time
    // alone (see the executor's `scratch::Untouched`): a job that writes in it, and sets
    // its modification time back, must still leave the next job an empty one.
    let nox = Nox::start_default();
    let tmpdir = |reply: &Value| stdout(reply).lines().next().unwrap_or_default().to_owned();
    let first = nox.run_sh("echo \"$TMPDIR\"");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let marked = nox.run_sh(
        "echo \"$TMPDIR\"; touch \"$TMPDIR/left\"; mkdir \"$TMPDIR/sub\"; touch \"$TMPDIR/sub/deep\"; touch -m -r /etc/hostname \"$TMPDIR\"",
    );
    assert_eq!(marked["returncode"], 0, "{marked}");
    // Its cleanup runs after the reply.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let next = nox.run_sh("echo \"$TMPDIR\"; ls -A \"$TMPDIR\"");
    assert_eq!(tmpdir(&first), tmpdir(&marked), "the TMPDIR was not reused");
    assert_eq!(tmpdir(&next), tmpdir(&marked), "the TMPDIR was not reused");
    assert_eq!(stdout(&next).lines().count(), 1, "not empty: {next}");
}

#[test]
fn jobs_have_a_dev_shm_of_their_view_s_own_for_multiprocessing() {
    let nox = Nox::shared();
    let views = nox.layer_active("views");
    if !views {
        nox_e2e::skip(
            "jobs_have_a_dev_shm_of_their_view_s_own_for_multiprocessing",
            "no views here (they need root and namespaces)",
        );
        return;
    }
    let name = unique("shm");
    let code = format!(
        "import multiprocessing as mp, concurrent.futures as cf\nwith mp.Pool(2) as pool: print(pool.map(abs, [-1, -2]))\nq = mp.Queue(); q.put(7); print(q.get())\nwith cf.ProcessPoolExecutor(2) as ex: print(list(ex.map(abs, [-3])))\nopen('/dev/shm/{name}', 'w').write('x')\n"
    );
    let reply = nox.run_py(&code);
    assert_eq!(stdout(&reply), "[1, 2]\n7\n[3]\n", "{reply}");
    assert!(
        !std::path::Path::new(&format!("/dev/shm/{name}")).exists(),
        "the job wrote the host's /dev/shm"
    );
    let mount = nox.run_sh("grep ' /dev/shm ' /proc/self/mounts");
    assert!(
        stdout(&mount).contains("tmpfs /dev/shm tmpfs rw,nosuid,nodev,noexec"),
        "{mount}"
    );
}

#[test]
fn jobs_have_a_tmp_of_their_view_s_own() {
    let nox = Nox::shared();
    if !nox.layer_active("views") {
        nox_e2e::skip(
            "jobs_have_a_tmp_of_their_view_s_own",
            "no views here (they need root and namespaces): /tmp is out of reach",
        );
        return;
    }
    let name = unique("tmp");
    // A program that writes /tmp whatever TMPDIR says, and runs what it put there.
    let write = format!(
        "echo kept > /tmp/{name} && printf '#!/bin/sh\\necho ran\\n' > /tmp/{name}.sh && chmod +x /tmp/{name}.sh && /tmp/{name}.sh && grep ' /tmp ' /proc/self/mounts"
    );
    let reply = nox.run_sh(&write);
    let out = stdout(&reply);
    assert!(
        out.starts_with("ran\ntmpfs /tmp tmpfs rw,nosuid,nodev,"),
        "{reply}"
    );
    assert!(!out.contains("noexec"), "{reply}");
    assert!(
        !std::path::Path::new(&format!("/tmp/{name}")).exists(),
        "the job wrote the host's /tmp"
    );
    // The workspace's next job finds it (the view stays with the workspace); Python's
    // tempfile still uses the job's own TMPDIR.
    let code = format!(
        "import tempfile\nprint(open('/tmp/{name}').read(), end='')\nprint(tempfile.gettempdir() != '/tmp')\n"
    );
    let again = nox.run_py(&code);
    assert_eq!(stdout(&again), "kept\nTrue\n", "{again}");
}

#[test]
fn a_job_inherits_no_descriptor_but_stdin_stdout_and_stderr() {
    let code = r#"
import os
fds = []
for fd in range(3, 1024):
    try:
        os.fstat(fd)
        fds.append((fd, os.readlink(f"/proc/self/fd/{fd}")))
    except OSError:
        pass
print(fds)
"#;
    let reply = Nox::shared().run_py(code);
    assert_eq!(
        stdout(&reply),
        "[]\n",
        "descriptors beyond 0-2 are open in the job: {reply}"
    );
}

#[test]
fn rlimits_are_applied_to_the_job() {
    let nox = Nox::shared();
    let reply = nox.client().run(
        "/run_sh",
        &serde_json::json!({ "cmd": "cat /proc/self/limits", "limits": { "cpu_s": 5, "open_files": 64, "file_size_mb": 1, "processes": 48, "memory_mb": 256 } }),
    );
    let limits = stdout(&reply);
    assert_eq!(reply["returncode"], 0, "{reply}");
    let health = nox.client().health().expect_json(200);
    let per_job_cgroup = health["executor"]["layers"]["rlimits"]["detail"]
        .as_str()
        .is_some_and(|detail| detail.contains("pids cgroup ("));
    if per_job_cgroup {
        let job = nox.run_sh("cat /proc/self/cgroup");
        let cgroup = stdout(&job);
        let pids = cgroup
            .lines()
            .find(|line| line.contains(":pids:") || line.starts_with("0::"))
            .unwrap_or_default();
        assert!(
            pids.rsplit('/')
                .next()
                .is_some_and(|leaf| leaf.starts_with("job-")),
            "/health reports a pids cgroup per job, but the job is not in one:\n{cgroup}"
        );
    }
    // `Max cpu time   5   5   seconds`: the name, then the soft and hard values.
    let soft_and_hard = |name: &str| -> Option<(String, String)> {
        let rest = limits.lines().find_map(|line| line.strip_prefix(name))?;
        let mut words = rest.split_whitespace();
        Some((words.next()?.to_owned(), words.next()?.to_owned()))
    };
    for (name, value) in [
        ("Max cpu time", "5"),
        ("Max open files", "64"),
        ("Max file size", "1048576"),
        ("Max processes", "48"),
        ("Max core file size", "0"),
        ("Max address space", "268435456"),
    ] {
        let (soft, hard) = soft_and_hard(name).unwrap_or_default();
        if name == "Max processes" && (!nox_e2e::is_root() || per_job_cgroup) {
            // Jobs sharing the invoking user's uid get that user's existing processes on
            // top; with a pids cgroup per job, RLIMIT_NPROC is only a backstop for the
            // workspace's uid, and the cgroup holds the job to its 48 (the adversarial
            // fork-bomb cases show it).
            assert!(soft.parse::<u64>().is_ok_and(|n| n >= 48), "{limits}");
            continue;
        }
        assert_eq!(
            soft, value,
            "{name} in the job's /proc/self/limits:\n{limits}"
        );
        // The hard CPU limit may sit a second above the soft one (SIGXCPU, then SIGKILL).
        let hard_ok =
            hard == value || (name == "Max cpu time" && hard.parse::<u64>().is_ok_and(|h| h <= 6));
        assert!(
            hard_ok,
            "{name} hard limit {hard} in the job's /proc/self/limits:\n{limits}"
        );
    }
}

/// The directory of the pids cgroup a job reported from `/proc/self/cgroup`.
fn pids_cgroup_dir(proc_self_cgroup: &str) -> Option<std::path::PathBuf> {
    proc_self_cgroup.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let root = if controllers.split(',').any(|name| name == "pids") {
            "/sys/fs/cgroup/pids"
        } else if controllers.is_empty() {
            "/sys/fs/cgroup"
        } else {
            return None;
        };
        let dir = std::path::Path::new(root).join(path.trim_start_matches('/'));
        dir.join("pids.max").exists().then_some(dir)
    })
}

#[test]
fn a_jobs_pids_cgroup_is_kept_for_later_jobs_empty_and_with_their_own_limit() {
    let test = "a_jobs_pids_cgroup_is_kept_for_later_jobs_empty_and_with_their_own_limit";
    if skip_unless_root(test) {
        return;
    }
    // An instance of its own: nothing else takes its kept cgroups meanwhile.
    let nox = Nox::builder().start();
    let health = nox.client().health().expect_json(200);
    let detail = health["executor"]["layers"]["rlimits"]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if !detail.contains("pids cgroup (") {
        nox_e2e::skip(test, &format!("no pids cgroup per job here: {detail}"));
        return;
    }
    let mut seen = std::collections::BTreeSet::new();
    for (round, processes) in [48u64, 30, 30, 48, 20, 48, 30, 20].into_iter().enumerate() {
        // The job leaves a process behind in its group; it is killed with the job. The job
        // cannot read its cgroup (the parent is 0700 to root): the test finds it from the
        // job's processes, marked, and reads the limit while the job runs (once it is
        // over, the cgroup may be another job's or spare's already).
        let marker = format!("{}{round}", nox_e2e::marker());
        let (reply, dir, max) = std::thread::scope(|scope| {
            let job = scope.spawn(|| {
                nox.client().run(
                    "/run_sh",
                    &serde_json::json!({
                        "cmd": format!("sleep {marker} & cat /proc/self/cgroup; sleep {marker}"),
                        "limits": { "processes": processes },
                        "timeout_s": 1
                    }),
                )
            });
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let mut found = None;
            while found.is_none() && std::time::Instant::now() < deadline {
                found = processes_with(&marker).into_iter().find_map(|(pid, _)| {
                    let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
                    let dir = pids_cgroup_dir(&cgroup)?;
                    let max = fs::read_to_string(dir.join("pids.max")).ok()?;
                    Some((dir, max))
                });
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let (dir, max) = found.unwrap_or_else(|| panic!("round {round}: no job process"));
            (job.join().expect("the job's request"), dir, max)
        });
        assert_eq!(reply["timed_out"], true, "{reply}");
        assert_eq!(
            pids_cgroup_dir(stdout(&reply)).as_ref(),
            Some(&dir),
            "round {round}: {reply}"
        );
        // Its own limit, whichever job had the cgroup before.
        assert_eq!(
            max.trim(),
            processes.to_string(),
            "round {round}: {} {reply}",
            dir.display()
        );
        // Emptied once the job is over (the cleanup thread kills what is left), and only
        // then handed to another job.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let members = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            if members.trim().is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: {} still holds {members}",
                dir.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        seen.insert(dir);
        // Time for the cleanup thread, which saw it empty too, to put it back.
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Jobs one after another reuse the emptied cgroups instead of making one each.
    assert!(
        seen.len() <= 2,
        "{} cgroups for 8 jobs in a row: {seen:?}",
        seen.len()
    );
}

/// What a job finds of the host, and of the network, when the executor runs in the
/// namespaces it makes itself outside systemd (`namespaces = "auto"`, as root) and when it
/// does not (`"never"`): the instance's own files beside the state directory (its config,
/// its logs), the host's `/run` and `/home`, and any interface but loopback.
fn what_a_job_sees_of_the_host(nox: &Nox) -> (String, bool) {
    let dir = nox.dir().display().to_string();
    let reply = nox.run_sh(&format!(
        "for p in {dir}/nox.toml {dir}/executor.log /run /home; do test -e $p && echo $p; done; \
         tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | grep -vx lo || true"
    ));
    assert_eq!(reply["returncode"], 0, "{reply}");
    let health = nox.client().health().expect_json(200);
    let isolated = health["executor"]["layers"]["network_isolation"]["active"] == true;
    (stdout(&reply).to_owned(), isolated)
}

#[test]
fn outside_systemd_the_executor_shows_jobs_only_the_system_the_state_and_loopback() {
    let test = "outside_systemd_the_executor_shows_jobs_only_the_system_the_state_and_loopback";
    if skip_unless_root(test) {
        return;
    }
    let nox = Nox::shared();
    assert!(
        nox.dir().join("executor.log").exists(),
        "the harness keeps the executor's log in {}",
        nox.dir().display()
    );
    let (seen, isolated) = what_a_job_sees_of_the_host(nox);
    assert_eq!(seen, "", "a job saw these of the host");
    assert!(isolated, "network_isolation is not active");

    // Without them, the same job sees all of it: the check above can fail.
    let host = Nox::builder()
        .executor_toml("namespaces = \"never\"")
        .start();
    let (seen, isolated) = what_a_job_sees_of_the_host(&host);
    let dir = host.dir().display().to_string();
    assert!(
        seen.contains(&format!("{dir}/executor.log")) && seen.contains("/run"),
        "{seen}"
    );
    assert!(
        !isolated,
        "network_isolation active in the host's namespace"
    );
}

#[test]
fn extra_read_paths_are_readable_by_jobs_and_not_writable_files_and_directories_alike() {
    use std::os::unix::fs::PermissionsExt;
    // Outside the instance's directory, so that only the configuration puts them in reach
    // (Landlock, and with the executor's own namespaces, its view).
    let extra = tempfile::tempdir().expect("a directory for extra read paths");
    fs::set_permissions(extra.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let dir = extra.path().join("shared-dir");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("inside.txt"), "from a directory\n").unwrap();
    let file = extra.path().join("shared-file.txt");
    fs::write(&file, "from a file\n").unwrap();
    for path in [&dir, &file] {
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::set_permissions(dir.join("inside.txt"), fs::Permissions::from_mode(0o644)).unwrap();
    let nox = Nox::builder()
        .executor_toml(&format!(
            "extra_read_paths = [{:?}, {:?}]",
            dir.display().to_string(),
            file.display().to_string()
        ))
        .start();
    let reply = nox.run_sh(&format!(
        "cat {dir}/inside.txt {file}; echo x > {dir}/new.txt || echo refused; echo x >> {file} || echo refused",
        dir = dir.display(),
        file = file.display(),
    ));
    assert_eq!(
        stdout(&reply),
        "from a directory\nfrom a file\nrefused\nrefused\n",
        "{reply}"
    );
    assert_eq!(fs::read_to_string(&file).unwrap(), "from a file\n");
    assert!(!dir.join("new.txt").exists());
}

/// The `Cpus_allowed_list` line of a `/proc/.../status` text.
fn cpus_allowed(status: &str) -> String {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .map(|list| list.trim().to_owned())
        .unwrap_or_else(|| panic!("no Cpus_allowed_list in:\n{status}"))
}

#[test]
fn runtime_workers_keep_a_cpu_each_and_nothing_they_start_inherits_it() {
    // An instance of its own: its Python zygote starts during this test.
    let nox = Nox::start_default();
    let executor = nox.executor_pid().expect("the executor runs");
    // The main thread waits for the runtime and is never pinned: all the executor's CPUs.
    let all = cpus_allowed(&fs::read_to_string(format!("/proc/{executor}/status")).unwrap());
    // Python jobs at once: blocking threads started by (pinned) workers prepare them, and
    // one of them starts the zygote.
    std::thread::scope(|scope| {
        let jobs: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| nox.run_py("print(open('/proc/self/status').read())")))
            .collect();
        for job in jobs {
            let reply = job.join().unwrap();
            assert_eq!(reply["returncode"], 0, "{reply}");
            assert_eq!(cpus_allowed(stdout(&reply)), all, "a Python job");
        }
    });
    for (what, reply) in [
        (
            "a program run directly",
            nox.run_sh("cat /proc/self/status"),
        ),
        ("a shell", nox.run_sh("cat /proc/self/status | cat")),
        (
            "a Python job",
            nox.run_py("print(open('/proc/self/status').read())"),
        ),
    ] {
        assert_eq!(reply["returncode"], 0, "{reply}");
        assert_eq!(cpus_allowed(stdout(&reply)), all, "{what}");
    }
    // A blocking thread the last job's cleanup may have started is past its first step.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let mut pinned = Vec::new();
    for task in fs::read_dir(format!("/proc/{executor}/task")).unwrap() {
        let task = task.unwrap().path();
        let comm = fs::read_to_string(task.join("comm")).unwrap_or_default();
        let Ok(status) = fs::read_to_string(task.join("status")) else {
            continue; // ended meanwhile
        };
        let cpus = cpus_allowed(&status);
        match comm.trim() {
            "nox-executor" if cpus != all => pinned.push(cpus),
            // One spawner per CPU, pinned by design (see `sandbox::spawner`).
            "nox-spawner" | "nox-executor" => {}
            other => assert_eq!(cpus, all, "thread {other}"),
        }
    }
    let workers = std::thread::available_parallelism().unwrap().get();
    let cpus = all.split(',').map(|range| match range.split_once('-') {
        Some((first, last)) => last.parse::<usize>().unwrap() - first.parse::<usize>().unwrap() + 1,
        None => 1,
    });
    let expected = workers.min(cpus.sum());
    if expected > 1 {
        // The workers, and no other thread of the runtime (a blocking one started by a
        // worker takes back every CPU), each on a CPU of its own.
        pinned.sort();
        let workers = pinned.len();
        pinned.dedup();
        assert_eq!((workers, pinned.len()), (expected, expected), "{pinned:?}");
        assert!(
            pinned.iter().all(|cpu| cpu.parse::<usize>().is_ok()),
            "{pinned:?}"
        );
    }
}
