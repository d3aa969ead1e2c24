//! Secrets: what a job must never read — `/etc/shadow`, nox's configuration, token files and
//! logs, the daemons' environment, memory and root, other jobs' environment and command
//! lines — and the API token, compared against the harness's own, found nowhere a job can
//! look.

use std::fs;

use nox_e2e::{Nox, unique};
use serde_json::json;

use super::common::{self, assert_serving, marker, py, stdout, tenants};

/// A Python job that tries to read each of `paths` and prints `READ <path> <first bytes>` for
/// each it could read, then `end`.
fn try_reading(paths: &[String]) -> String {
    format!(
        r#"
for path in {paths:?}:
    try:
        with open(path, "rb") as f:
            data = f.read(4096)
        print("READ", path, data[:60])
    except OSError:
        pass
print("end")
"#
    )
}

#[test]
fn a_job_cannot_read_etc_shadow_or_gshadow() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let paths = [
        "/etc/shadow",
        "/etc/gshadow",
        "/etc/shadow-",
        "/etc/sudoers",
    ]
    .map(str::to_owned);
    let reply = py(nox, &try_reading(&paths), 10.0);
    assert_eq!(stdout(&reply), "end\n", "{reply}");
    assert_serving(nox);
}

#[test]
fn a_job_cannot_read_the_nox_configuration_token_files_or_logs() {
    let _jobs = common::jobs();
    let nox = tenants();
    let mut paths: Vec<String> = ["nox.toml", "tokens", "executor.log", "frontend.log"]
        .iter()
        .map(|name| nox.dir().join(name).display().to_string())
        .collect();
    assert!(
        nox.dir().join("tokens").exists(),
        "the tenants instance has a token file"
    );
    // Whatever a real installation put in /etc/nox.
    if let Ok(entries) = fs::read_dir("/etc/nox") {
        paths.extend(
            entries
                .flatten()
                .map(|entry| entry.path().display().to_string()),
        );
    }
    paths.push("/etc/nox/nox.toml".into());
    paths.push("/etc/nox/tokens".into());
    let reply = nox.client_for("beta").run(
        "/run_py",
        &json!({ "code": try_reading(&paths), "timeout_s": 10 }),
    );
    assert_eq!(stdout(&reply), "end\n", "{reply}");
    assert_serving(nox);
}

#[test]
fn a_job_cannot_read_the_frontend_environment_memory_or_command_line_files() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let pid = nox.frontend_pid().expect("the frontend runs");
    let paths: Vec<String> = [
        "environ",
        "mem",
        "maps",
        "auxv",
        "stack",
        "syscall",
        "fd/0",
        "fdinfo/0",
        "root/etc/hostname",
        "cwd/nox.toml",
    ]
    .iter()
    .map(|name| format!("/proc/{pid}/{name}"))
    .collect();
    let reply = py(nox, &try_reading(&paths), 10.0);
    assert_eq!(stdout(&reply), "end\n", "{reply}");
    assert_serving(nox);
}

#[test]
fn a_job_cannot_read_the_executor_or_init_environment_memory_or_root() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let executor = nox.executor_pid().expect("the executor runs");
    let mut paths = Vec::new();
    for pid in [executor, 1] {
        for name in [
            "environ",
            "mem",
            "maps",
            "stack",
            "root/etc/shadow",
            "root/etc/hostname",
            "cwd/x",
        ] {
            paths.push(format!("/proc/{pid}/{name}"));
        }
    }
    let reply = py(nox, &try_reading(&paths), 10.0);
    assert_eq!(stdout(&reply), "end\n", "{reply}");
    let listing = py(
        nox,
        &format!(
            "import os\nfor path in ['/proc/1/root', '/proc/{executor}/root', '/proc/{executor}/fd', '/proc/1/cwd']:\n    try:\n        print('LISTED', path, os.listdir(path)[:3])\n    except OSError:\n        pass\nprint('end')"
        ),
        10.0,
    );
    assert_eq!(stdout(&listing), "end\n", "{listing}");
    assert_serving(nox);
}

#[test]
fn the_api_token_is_found_nowhere_a_job_can_look() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    // Everything in /proc a job can read about any process, its own environment, and the
    // readable files of the instance's directory and /etc/nox: printed whole, then searched
    // here for the harness's token.
    let code = format!(
        r#"
import os, sys
out = sys.stdout.buffer
def dump(path):
    try:
        with open(path, "rb") as f:
            out.write(f.read(1 << 20))
    except OSError:
        pass
for pid in os.listdir("/proc"):
    if pid.isdigit():
        for name in ("environ", "cmdline", "status", "sched", "comm", "mountinfo"):
            dump(f"/proc/{{pid}}/{{name}}")
out.write(repr(dict(os.environ)).encode())
for top in ({dir:?}, "/etc/nox"):
    for root, dirs, files in os.walk(top):
        for name in files:
            dump(os.path.join(root, name))
out.flush()
"#,
        dir = nox.dir().display().to_string()
    );
    let reply = nox.client().run(
        "/run_py",
        &json!({ "code": code, "timeout_s": 20, "limits": { "output_kb": 1024 } }),
    );
    let everything = format!("{}{}", stdout(&reply), reply["stderr"]);
    assert!(
        !everything.contains(nox.token()),
        "the API token is readable from a job"
    );
    assert!(
        stdout(&reply).len() > 1000,
        "the job read almost nothing: {reply}"
    );
    assert_serving(nox);
}

#[test]
fn a_job_cannot_read_the_environment_or_memory_of_another_tenants_job() {
    let _jobs = common::jobs();
    let nox = tenants();
    let marker = marker();
    let code = format!(
        r#"
import os
me = os.getpid()
found = []
for pid in os.listdir("/proc"):
    if not pid.isdigit() or int(pid) == me:
        continue
    try:
        cmdline = open(f"/proc/{{pid}}/cmdline", "rb").read()
    except OSError:
        continue
    if b"{marker}" not in cmdline:
        continue
    found.append(pid)
    for name in ("environ", "mem", "maps", "stack"):
        try:
            open(f"/proc/{{pid}}/{{name}}", "rb").read(64)
            print("READ", name)
        except OSError:
            pass
print("victims", len(found))
"#
    );
    let victim = json!({ "cmd": format!("sleep {marker}"), "timeout_s": 3 });
    let (_, reply) = common::while_alpha_runs(nox, "/run_sh", &victim, &code);
    // /proc lists beta no process of alpha's (side_channels), so there is not even a victim
    // to find; were one listed, nothing more than its command line could be read.
    assert!(
        !stdout(&reply).contains("READ"),
        "a job read another tenant's job's process: {reply}"
    );
    assert_serving(nox);
}

#[test]
fn a_job_cannot_read_the_command_line_of_another_tenants_job() {
    let _jobs = common::jobs();
    let nox = tenants();
    let secret = unique("ALPHA-CMD-SECRET");
    let cmd = format!("SECRET={secret}; sleep 3 # {secret}");
    let code = format!(
        "import os\nfor pid in os.listdir('/proc'):\n    try:\n        if b'{secret}' in open(f'/proc/{{pid}}/cmdline', 'rb').read():\n            print('SEEN', pid)\n    except OSError:\n        pass\nprint('end')"
    );
    let victim = json!({ "cmd": cmd, "timeout_s": 4 });
    let (_, reply) = common::while_alpha_runs(nox, "/run_sh", &victim, &code);
    assert_eq!(
        stdout(&reply),
        "end\n",
        "beta's job read alpha's command (it is in /proc/<pid>/cmdline of `/bin/sh -c`): {reply}"
    );
    assert_serving(nox);
}

#[test]
fn a_job_cannot_learn_whether_a_file_exists_in_another_workspace() {
    let _jobs = common::jobs();
    let nox = tenants();
    let name = unique("alpha-private");
    nox.client_for("alpha")
        .put(&format!("{name}.txt"), &[b'x'; 4321])
        .expect_json(200);
    let code = format!(
        "import os\nfor path in ['{dir}/{name}.txt', '../alpha/{name}.txt']:\n    try:\n        print('STAT', path, os.stat(path).st_size)\n    except OSError as e:\n        pass\n    print('exists' if os.path.exists(path) else 'unknown')\n",
        dir = nox.workspace("alpha").display()
    );
    let reply = nox
        .client_for("beta")
        .run("/run_py", &json!({ "code": code, "timeout_s": 10 }));
    assert_eq!(
        stdout(&reply),
        "unknown\nunknown\n",
        "beta's job can probe alpha's file names and sizes: {reply}"
    );
    assert_serving(nox);
}

#[test]
fn the_python_zygote_keeps_no_trace_of_a_job_it_forked() {
    // Every Python job's process is forked from the zygote, so whatever the zygote holds,
    // every later job of every tenant holds too. Alpha's job details (its file name, its
    // workspace) must never enter the zygote's memory. Reading another process's memory
    // needs root (a job cannot: Landlock and ptrace rules), so the harness looks.
    if nox_e2e::skip_unless_root("the_python_zygote_keeps_no_trace_of_a_job_it_forked") {
        return;
    }
    let _jobs = common::jobs();
    let nox = tenants();
    let filename = format!("{}.py", unique("alpha-tracer"));
    let reply = nox.client_for("alpha").run(
        "/run_py",
        &json!({ "code": "print(1)", "filename": filename, "timeout_s": 10 }),
    );
    assert_eq!(stdout(&reply), "1\n", "{reply}");
    let executor = nox.executor_pid().expect("executor pid");
    let zygotes: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            let parent = after_name
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<i32>().ok());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            parent == Some(executor) && String::from_utf8_lossy(&cmdline).contains("Python zygote")
        })
        .collect();
    assert_eq!(zygotes.len(), 1, "expected one zygote under the executor");
    let needle = filename.as_bytes();
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", zygotes[0])).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{}/mem", zygotes[0])).unwrap();
    let mut found = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (start, end) = (
            u64::from_str_radix(start, 16).unwrap(),
            u64::from_str_radix(end, 16).unwrap(),
        );
        if !perms.starts_with('r') || end - start > (256 << 20) {
            continue;
        }
        use std::io::{Read, Seek, SeekFrom};
        let mut chunk = vec![0u8; usize::try_from(end - start).unwrap()];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut chunk).is_err() {
            continue;
        }
        if chunk.windows(needle.len()).any(|window| window == needle) {
            found.push(line.to_owned());
        }
    }
    assert!(
        found.is_empty(),
        "the zygote holds alpha's job details in {found:?}"
    );
    assert_serving(nox);
}

#[test]
fn the_kernel_log_syscall_is_refused() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    // SYSLOG_ACTION_READ_ALL (3) and SIZE_BUFFER (10): refused by seccomp whatever
    // kernel.dmesg_restrict says (/dev/kmsg, by contrast, is the unit's PrivateDevices=).
    let code = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nbuffer = ctypes.create_string_buffer(4096)\nfor action in (3, 10):\n    print('syslog', libc.klogctl(action, buffer, 4096), ctypes.get_errno())\n";
    let reply = py(nox, code, 10.0);
    assert_eq!(stdout(&reply), "syslog -1 1\nsyslog -1 1\n", "{reply}");
    assert_serving(nox);
}
