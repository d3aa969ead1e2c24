//! Side channels between jobs (and from a job to the daemons): keyrings, io_uring, shared
//! memory, message queues, file locks, abstract Unix sockets, signals. Two jobs of two
//! tenants run at once; whatever one leaves, the other must not see, and neither may
//! signal anything outside itself. (isolate fixed `/dev/shm` and keyrings in 2026; the
//! research notes found no suite that tests this class.)

use std::path::Path;
use std::time::Duration;

use nox_e2e::{Client, Nox, random_hex, skip, unique};
use serde_json::{Value, json};

use super::common::{self, PY_SYSCALL, assert_serving, marker, py, stdout, tenants};

/// Runs `first` (alpha) and, 800 ms later, `second` (beta) at once, both Python; both
/// replies.
fn alpha_then_beta(nox: &Nox, first: &str, second: &str) -> (Value, Value) {
    let body = json!({ "code": first, "timeout_s": 10 });
    common::while_alpha_runs(nox, "/run_py", &body, second)
}

/// Alpha's request (`endpoint`, `body`), and 800 ms into it beta's Python `second` and
/// alpha's own at the same time: the control, a job of the same workspace, which must see
/// what beta must not (so the probe could have).
fn alpha_then_beta_and_alpha(
    nox: &Nox,
    endpoint: &str,
    body: &Value,
    second: &str,
) -> (Value, Value, Value) {
    let alpha_again = nox.client_for("alpha");
    std::thread::scope(|scope| {
        let own = scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(800));
            alpha_again.run("/run_py", &json!({ "code": second, "timeout_s": 10 }))
        });
        let (alpha, beta) = common::while_alpha_runs(nox, endpoint, body, second);
        (alpha, beta, own.join().expect("alpha's second job"))
    })
}

/// A SysV IPC key no other case uses.
fn ipc_key() -> i32 {
    let hex = random_hex(3);
    0x4e00_0000 | i32::from_str_radix(&hex, 16).unwrap_or(1)
}

/// Removes SysV objects with `key` (as the test's user: root can remove anyone's).
fn remove_ipc(key: i32) -> Vec<&'static str> {
    let mut found = Vec::new();
    // SAFETY: plain System V IPC calls with integer arguments; IPC_RMID takes no buffer for
    // shm and msg (a null pointer is allowed) and no fourth argument for sem.
    unsafe {
        let shm = libc::shmget(key, 0, 0);
        if shm >= 0 {
            found.push("shm");
            libc::shmctl(shm, libc::IPC_RMID, std::ptr::null_mut());
        }
        let msg = libc::msgget(key, 0);
        if msg >= 0 {
            found.push("msg");
            libc::msgctl(msg, libc::IPC_RMID, std::ptr::null_mut());
        }
        let sem = libc::semget(key, 0, 0);
        if sem >= 0 {
            found.push("sem");
            libc::semctl(sem, 0, libc::IPC_RMID);
        }
    }
    found
}

#[test]
fn kernel_keyrings_are_refused() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let code = format!(
        r#"{PY_SYSCALL}
KEY_SPEC_USER_KEYRING = -4 & 0xffffffffffffffff
print("add_key", *call(248, b"user", b"nox-probe", b"secret", 6, KEY_SPEC_USER_KEYRING))
print("keyctl", *call(250, 0, KEY_SPEC_USER_KEYRING, 0))
print("request_key", *call(249, b"user", b"nox-probe", 0, 0))
"#
    );
    let reply = py(nox, &code, 10.0);
    assert_eq!(
        stdout(&reply),
        "add_key -1 1\nkeyctl -1 1\nrequest_key -1 1\n",
        "{reply}"
    );
    assert_serving(nox);
}

#[test]
fn io_uring_setup_enter_and_register_are_all_refused() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let code = format!(
        r#"{PY_SYSCALL}
params = ctypes.create_string_buffer(120)
print("setup", *call(425, 8, params))
print("enter", *call(426, 0, 1, 0, 0, 0, 0))
print("register", *call(427, 0, 0, 0, 0))
"#
    );
    let reply = py(nox, &code, 10.0);
    assert_eq!(
        stdout(&reply),
        "setup -1 1\nenter -1 1\nregister -1 1\n",
        "{reply}"
    );
    assert_serving(nox);
}

#[test]
fn dev_shm_and_posix_shared_memory_are_never_shared_between_jobs() {
    let _jobs = common::jobs();
    let nox = tenants();
    let name = unique("nox-shm");
    let first = format!(
        r#"
import time
from multiprocessing import shared_memory
for what, attempt in [
    ("file", lambda: open("/dev/shm/{name}", "w").write("alpha's secret")),
    ("shm_open", lambda: shared_memory.SharedMemory(name="{name}-posix", create=True, size=4096)),
]:
    try:
        attempt()
        print(what, "CREATED")
    except OSError as e:
        print(what, "errno", e.errno)
time.sleep(2)
"#
    );
    let second = format!(
        r#"
import os
from multiprocessing import shared_memory
print("file", os.path.exists("/dev/shm/{name}"))
try:
    shared_memory.SharedMemory(name="{name}-posix")
    print("posix OPENED")
except OSError:
    print("posix absent")
"#
    );
    let (alpha, beta) = alpha_then_beta(nox, &first, &second);
    let leftover = [format!("/dev/shm/{name}"), format!("/dev/shm/{name}-posix")]
        .into_iter()
        .filter(|path| std::path::Path::new(path).exists())
        .collect::<Vec<_>>();
    for path in &leftover {
        let _ = std::fs::remove_file(path);
    }
    // Made in the /dev/shm of alpha's view (its own), EACCES (Landlock) without views.
    assert!(
        [
            "file CREATED\nshm_open CREATED\n",
            "file errno 13\nshm_open errno 13\n"
        ]
        .contains(&stdout(&alpha)),
        "{alpha}"
    );
    assert_eq!(stdout(&beta), "file False\nposix absent\n", "{beta}");
    assert!(
        leftover.is_empty(),
        "left in the host's /dev/shm: {leftover:?}"
    );
    assert_serving(nox);
}

/// A nox with one job slot, so one view, and two tokens, alpha's and beta's: the view
/// goes from one workspace to the other. `None` (the test skipped) without views.
fn one_view_two_tenants(test: &str) -> Option<Nox> {
    let alpha_token = format!("alpha-{}", random_hex(16));
    let beta_token = format!("beta-{}", random_hex(16));
    let nox = Nox::builder()
        .executor_toml("max_concurrent_jobs = 1")
        .tokens(&[("alpha", &alpha_token), ("beta", &beta_token)])
        .start();
    if !nox.layer_active("views") {
        skip(test, "no views here (they need root and namespaces)");
        return None;
    }
    Some(nox)
}

#[test]
fn a_views_dev_shm_and_tmp_are_emptied_before_another_workspace_gets_the_view() {
    // alpha, alpha again, then beta, on the one view.
    let Some(nox) = one_view_two_tenants(
        "a_views_dev_shm_and_tmp_are_emptied_before_another_workspace_gets_the_view",
    ) else {
        return;
    };
    let secret = unique("ALPHA-SHM");
    let leave = format!(
        "from multiprocessing import shared_memory\nopen('/dev/shm/left', 'w').write('{secret}')\nm = shared_memory.SharedMemory(name='kept', create=True, size=4096)\nm.buf[:4] = b'ALFA'\nm.close()\nimport os\nos.makedirs('/tmp/sub/deeper')\nopen('/tmp/sub/deeper/left', 'w').write('{secret}')\nos.symlink('/etc/hostname', '/tmp/link')\nprint(sorted(os.listdir('/dev/shm')), sorted(os.listdir('/tmp')))\n"
    );
    let look = "import os\nprint(sorted(os.listdir('/dev/shm')), sorted(os.listdir('/tmp')))\n";
    let alpha = nox.client_for("alpha");
    let beta = nox.client_for("beta");
    let left = alpha.run("/run_py", &json!({ "code": leave }));
    assert_eq!(
        stdout(&left),
        "['kept', 'left'] ['link', 'sub']\n",
        "{left}"
    );
    // The same workspace again: its view, as it left it.
    let again = alpha.run("/run_py", &json!({ "code": look }));
    assert_eq!(
        stdout(&again),
        "['kept', 'left'] ['link', 'sub']\n",
        "{again}"
    );
    // Another workspace: the same view, emptied.
    let seen = beta.run("/run_py", &json!({ "code": look }));
    assert_eq!(
        stdout(&seen),
        "[] []\n",
        "beta sees alpha's /dev/shm or /tmp: {seen}"
    );
    assert!(!stdout(&seen).contains(&secret));
    assert_serving(&nox);
}

#[test]
fn a_state_directory_beneath_tmp_leaves_views_without_a_tmp_of_their_own() {
    // Jobs may write everything beneath a view's own /tmp: were the state directory bound
    // beneath it, that would reach the state directory too.
    if !Nox::shared().layer_active("views") {
        skip(
            "a_state_directory_beneath_tmp_leaves_views_without_a_tmp_of_their_own",
            "no views here (they need root and namespaces)",
        );
        return;
    }
    let nox = Nox::builder().parent(Path::new("/tmp")).start();
    assert!(
        nox.layer_active("views"),
        "views where the shared instance has them, but not with the state beneath /tmp"
    );
    let probe = unique("state-probe");
    std::fs::write(nox.state_dir().join(&probe), "state secret").expect("write in the state dir");
    let reply = nox.run_sh(&format!(
        "grep -c ' /tmp ' /proc/self/mounts; cat '{state}/{probe}' 2>/dev/null && echo READ-STATE; ls '{state}' > /dev/null 2>&1 && echo LISTED-STATE; echo x > '{state}/{probe}-new' 2>/dev/null && echo WROTE-STATE; echo x > /tmp/{probe} 2>/dev/null && echo WROTE-TMP; echo end",
        state = nox.state_dir().display()
    ));
    let _ = std::fs::remove_file(nox.state_dir().join(&probe));
    assert_eq!(stdout(&reply), "0\nend\n", "{reply}");
    assert!(!nox.state_dir().join(format!("{probe}-new")).exists());
    assert_serving(&nox);
}

#[test]
fn a_views_passwd_names_only_the_workspace_it_is_lent_to() {
    // alpha, beta, then alpha again, on the one view.
    let Some(nox) = one_view_two_tenants("a_views_passwd_names_only_the_workspace_it_is_lent_to")
    else {
        return;
    };
    let look = "import os\nnames = lambda f: [l.split(':')[0] for l in open(f)]\nprint(sorted({'alpha', 'beta'} & (set(names('/etc/passwd')) | set(names('/etc/group')))), os.getuid())\nfor f in ('/etc/passwd', '/etc/group'):\n    try:\n        open(f, 'a').write('mallory:x:0:0::/:/bin/sh\\n')\n        print('wrote', f)\n    except OSError as e:\n        print('refused', f, e.errno)\n";
    let mut uids = Vec::new();
    for workspace in ["alpha", "beta", "alpha"] {
        let reply = nox
            .client_for(workspace)
            .run("/run_py", &json!({ "code": look }));
        let out = stdout(&reply);
        let mut lines = out.lines();
        let first = lines.next().unwrap_or_default();
        assert!(
            first.starts_with(&format!("['{workspace}'] ")),
            "{workspace}'s job reads other names in its view's account files: {reply}"
        );
        uids.push(first.split(' ').next_back().unwrap_or_default().to_owned());
        for line in lines {
            assert!(
                line.starts_with("refused "),
                "{workspace}: {line} ({reply})"
            );
        }
    }
    assert_ne!(uids[0], uids[1], "alpha and beta run as one uid");
    for host in ["/etc/passwd", "/etc/group"] {
        let content = std::fs::read_to_string(host).expect("read the host's file");
        assert!(
            !content.contains("mallory"),
            "a job wrote the host's {host}"
        );
    }
    assert_serving(&nox);
}

#[test]
fn a_posix_message_queue_is_not_a_channel_between_jobs() {
    let _jobs = common::jobs();
    let nox = tenants();
    let name = format!("/{}", unique("nox-mq"));
    let never = format!("/{}", unique("nox-mq-never"));
    let prelude = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n";
    let first = format!(
        "{prelude}import time\nq = libc.mq_open({name:?}.encode(), os.O_CREAT | os.O_RDWR, 0o666, None)\nprint('mq_open', q >= 0, ctypes.get_errno())\nif q >= 0:\n    libc.mq_send(q, b'alpha-secret', 12, 0)\ntime.sleep(2)\n"
    );
    // Whether the queue exists is itself one bit: the errno of opening it must be the
    // errno of opening a name nobody ever created.
    let second = format!(
        "{prelude}for name in ({name:?}, {never:?}):\n    q = libc.mq_open(name.encode(), os.O_RDONLY)\n    buffer = ctypes.create_string_buffer(8192)\n    print('received', libc.mq_receive(q, buffer, 8192, None), buffer.value) if q >= 0 else print('errno', ctypes.get_errno())\n"
    );
    let (alpha, beta) = alpha_then_beta(nox, &first, &second);
    let c_name = std::ffi::CString::new(name).expect("no NUL");
    // SAFETY: `c_name` is a valid NUL-terminated string.
    let existed = unsafe { libc::mq_unlink(c_name.as_ptr()) } == 0;
    assert!(
        !stdout(&beta).contains("alpha-secret"),
        "beta received alpha's message: {alpha} / {beta}"
    );
    let lines: Vec<&str> = stdout(&beta).lines().collect();
    assert_eq!(
        lines.first(),
        lines.get(1),
        "beta can tell whether alpha's queue exists: {alpha} / {beta}"
    );
    assert!(
        !existed,
        "a message queue created by a job outlived it (Landlock refused the open after the kernel had created the queue): {alpha}"
    );
    assert_serving(nox);
}

#[test]
fn sysv_shared_memory_is_not_shared_between_two_tenants_jobs() {
    let _jobs = common::jobs();
    let nox = tenants();
    let key = ipc_key();
    let prelude = "import ctypes, time\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.shmat.restype = ctypes.c_void_p\n";
    let first = format!(
        "{prelude}shm = libc.shmget({key}, 4096, 0o1000 | 0o600)\nprint('shmget', shm >= 0)\nif shm >= 0:\n    address = libc.shmat(shm, None, 0)\n    ctypes.memmove(address, b'alpha-secret', 12)\ntime.sleep(2)\n"
    );
    let second = format!(
        "{prelude}shm = libc.shmget({key}, 0, 0)\nif shm < 0:\n    print('absent', ctypes.get_errno())\nelse:\n    address = libc.shmat(shm, None, 0)\n    print('read', ctypes.string_at(address, 12) if address not in (None, 2**64 - 1) else ctypes.get_errno())\n"
    );
    let (alpha, beta) = alpha_then_beta(nox, &first, &second);
    let left = remove_ipc(key);
    assert!(
        !stdout(&beta).contains("alpha-secret"),
        "beta's job read alpha's System V shared memory: {alpha} / {beta}"
    );
    assert!(
        stdout(&beta).starts_with("absent"),
        "beta found alpha's segment: {beta}"
    );
    assert!(
        left.is_empty(),
        "System V objects outlived the job: {left:?}"
    );
    assert_serving(nox);
}

#[test]
fn sysv_message_queues_and_semaphores_do_not_outlive_the_job_that_made_them() {
    let _jobs = common::jobs();
    let nox = tenants();
    let key = ipc_key();
    let code = format!(
        r#"
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
class Message(ctypes.Structure):
    _fields_ = [("mtype", ctypes.c_long), ("mtext", ctypes.c_char * 64)]
queue = libc.msgget({key}, 0o1000 | 0o666)
sent = libc.msgsnd(queue, ctypes.byref(Message(1, b"left-by-alpha")), 13, 0) if queue >= 0 else -1
semaphores = libc.semget({key}, 1, 0o1000 | 0o666)
print("msgget", queue >= 0, "msgsnd", sent, "semget", semaphores >= 0)
"#
    );
    let alpha = nox
        .client_for("alpha")
        .run("/run_py", &json!({ "code": code, "timeout_s": 10 }));
    let later = format!(
        r#"
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
class Message(ctypes.Structure):
    _fields_ = [("mtype", ctypes.c_long), ("mtext", ctypes.c_char * 64)]
queue = libc.msgget({key}, 0)
message = Message()
got = libc.msgrcv(queue, ctypes.byref(message), 64, 0, 0o4000) if queue >= 0 else -1
print("received", message.mtext if got > 0 else None)
"#
    );
    let beta = nox
        .client_for("beta")
        .run("/run_py", &json!({ "code": later, "timeout_s": 10 }));
    let left = remove_ipc(key);
    assert_eq!(
        stdout(&beta),
        "received None\n",
        "a later job of another tenant read what a finished job left: {alpha} / {beta}"
    );
    assert!(
        left.is_empty(),
        "System V objects outlived the job that made them: {left:?} ({alpha})"
    );
    assert_serving(nox);
}

/// Files every job may open for reading, one in each kind of place a workspace's view
/// serves: an overlaid system directory, its own `/dev`, `/sys`, its own `/proc`.
const SHARED_FILES: &str =
    "['/etc/hostname', '/usr/bin/env', '/dev/null', '/sys/kernel/uevent_seqnum', '/proc/version']";

#[test]
fn an_flock_on_a_shared_system_file_is_not_visible_to_another_tenants_job() {
    let _jobs = common::jobs();
    let nox = tenants();
    let first = format!(
        "import fcntl, time\nheld = []\nfor path in {SHARED_FILES}:\n    f = open(path, 'rb')\n    fcntl.flock(f, fcntl.LOCK_EX)\n    held.append(f)\nprint('locked', len(held))\ntime.sleep(3)\n"
    );
    let second = format!(
        "import fcntl\nfor path in {SHARED_FILES}:\n    f = open(path, 'rb')\n    try:\n        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n        print('free', path)\n    except OSError as e:\n        print('SEES THE LOCK', path, e.errno)\n"
    );
    let body = json!({ "code": first, "timeout_s": 10 });
    let (alpha, beta, control) = alpha_then_beta_and_alpha(nox, "/run_py", &body, &second);
    assert_eq!(stdout(&alpha), "locked 5\n", "{alpha}");
    let seen: Vec<&str> = stdout(&beta)
        .lines()
        .filter(|line| !line.starts_with("free"))
        .collect();
    assert!(
        seen.is_empty() && stdout(&beta).lines().count() == 5,
        "an flock on a file both tenants' jobs can read is a channel between them: {beta}"
    );
    // The control: a job of the same workspace, in the same view, sees them.
    assert_eq!(
        stdout(&control).matches("SEES THE LOCK").count(),
        5,
        "{control}"
    );
    assert_serving(nox);
}

#[test]
fn an_fcntl_record_lock_on_a_shared_system_file_is_not_visible_to_another_tenants_job() {
    let _jobs = common::jobs();
    let nox = tenants();
    let first = "import fcntl, struct, time\nf = open('/etc/hostname', 'rb')\nfcntl.fcntl(f, fcntl.F_SETLK, struct.pack('hhxxxxqqixxxx', fcntl.F_RDLCK, 0, 0, 0, 0))\nprint('locked')\ntime.sleep(2.5)\n";
    let second = "import fcntl, struct\nf = open('/etc/hostname', 'rb')\nprobe = struct.pack('hhxxxxqqixxxx', fcntl.F_WRLCK, 0, 0, 0, 0)\nkind, _, _, _, pid = struct.unpack('hhxxxxqqixxxx', fcntl.fcntl(f, fcntl.F_GETLK, probe))\nprint('free' if kind == fcntl.F_UNLCK else f'SEES A LOCK OF PID {pid}')\n";
    let (alpha, beta) = alpha_then_beta(nox, first, second);
    assert_eq!(stdout(&alpha), "locked\n", "{alpha}");
    assert_eq!(
        stdout(&beta),
        "free\n",
        "a record lock on a file both jobs can read is a channel between tenants: {beta}"
    );
    assert_serving(nox);
}

#[test]
fn inotify_cannot_watch_another_tenants_job_open_a_shared_file() {
    // IN_ACCESS | IN_OPEN | IN_CLOSE_NOWRITE on a file every job can read: if the watch
    // could be made, a read by the other tenant's job would be a bit.
    let first = format!(
        r#"{PY_SYSCALL}
import select
print("inotify_init", *call(253))
fd, errno = call(294, os.O_NONBLOCK)
print("inotify_init1", fd, errno)
print("inotify_add_watch", *call(254, 0, b"/etc/hostname", 0x31))
if fd >= 0:
    call(254, fd, b"/etc/hostname", 0x31)
    seen, _, _ = select.select([fd], [], [], 2.5)
    print("SAW THE OTHER JOB" if seen else "nothing seen")
"#
    );
    watch_while_beta_reads_etc_hostname(
        &first,
        "inotify_init -1 1\ninotify_init1 -1 1\ninotify_add_watch -1 1\n",
        "inotify on a file both jobs can read",
    );
}

/// Alpha runs `watch` while beta reads `/etc/hostname`: alpha prints `refused`, no more.
fn watch_while_beta_reads_etc_hostname(watch: &str, refused: &str, channel: &str) {
    let _jobs = common::jobs();
    let nox = tenants();
    let read = "open('/etc/hostname', 'rb').read()\nprint('read')\n";
    let (alpha, beta) = alpha_then_beta(nox, watch, read);
    assert_eq!(stdout(&beta), "read\n", "{beta}");
    assert_eq!(
        stdout(&alpha),
        refused,
        "{channel} is a channel between tenants: {alpha}"
    );
    assert_serving(nox);
}

#[test]
fn dnotify_cannot_watch_another_tenants_job_read_in_a_shared_directory() {
    let watch = "import fcntl, os, signal, time\nseen = []\nsignal.signal(signal.SIGIO, lambda *_: seen.append(1))\nd = os.open('/etc', os.O_RDONLY)\ntry:\n    fcntl.fcntl(d, fcntl.F_NOTIFY, fcntl.DN_ACCESS | fcntl.DN_MULTISHOT)\nexcept OSError as e:\n    print('F_NOTIFY', e.errno)\nelse:\n    time.sleep(2.5)\n    print('SAW THE OTHER JOB' if seen else 'nothing seen')\n";
    watch_while_beta_reads_etc_hostname(
        watch,
        "F_NOTIFY 1\n",
        "dnotify on a directory both jobs can read",
    );
}

#[test]
fn proc_locks_does_not_show_another_tenants_locks() {
    let _jobs = common::jobs();
    let nox = tenants();
    // Alpha locks a file of its own workspace (as sqlite does); beta reads the kernel's
    // list of every lock. Were alpha's there, locking and unlocking would be a bit.
    let first = "import fcntl, os, time\nf = open('locked.db', 'wb')\nfcntl.lockf(f, fcntl.LOCK_EX)\nfcntl.flock(f, fcntl.LOCK_EX)\nprint(os.fstat(f.fileno()).st_ino)\ntime.sleep(2.5)\n";
    let second = "try:\n    print(open('/proc/locks').read(), end='')\nexcept OSError as e:\n    print('errno', e.errno)\n";
    let (alpha, beta) = alpha_then_beta(nox, first, second);
    let inode = stdout(&alpha).trim();
    assert!(inode.parse::<u64>().is_ok(), "{alpha}");
    let listed = stdout(&beta);
    assert!(
        !listed.contains(&format!(":{inode} ")),
        "another tenant's lock (inode {inode}) is listed in /proc/locks: {listed}"
    );
    assert_serving(nox);
}

#[test]
fn a_job_cannot_see_another_tenants_processes_in_proc() {
    let _jobs = common::jobs();
    let nox = tenants();
    let mark = marker();
    // Beta looks for alpha's process by its command line (world-readable in a /proc without
    // hidepid): what runs, its arguments, its pid, when it starts and stops.
    let look = format!(
        "import os\nseen = []\nfor pid in filter(str.isdigit, os.listdir('/proc')):\n    try:\n        if b'{mark}' in open(f'/proc/{{pid}}/cmdline', 'rb').read():\n            seen.append(pid)\n    except OSError:\n        pass\nprint('SEES', seen) if seen else print('nothing')\n"
    );
    let sleeper = json!({
        "cmd": format!("python3 -c 'import time; time.sleep(2.5)' {mark}; echo {mark}"),
        "timeout_s": 10
    });
    let (alpha, beta) = common::while_alpha_runs(nox, "/run_sh", &sleeper, &look);
    assert_eq!(stdout(&alpha), format!("{mark}\n"), "{alpha}");
    assert_eq!(
        stdout(&beta),
        "nothing\n",
        "another tenant's job is visible in /proc: {beta}"
    );
    assert_serving(nox);
}

#[test]
fn a_job_cannot_list_or_read_the_cgroups_of_other_jobs() {
    let _jobs = common::jobs();
    let nox = tenants();
    // Alpha holds three processes; beta walks from its own pids cgroup to its siblings,
    // where every other job's cgroup is, with `pids.current` (how many processes it runs,
    // a bit at will) and `cgroup.procs` (their pids): by listing, then by guessing names.
    let first = "import subprocess, time\nkids = [subprocess.Popen(['sleep', '2.5']) for _ in range(3)]\ntime.sleep(2.5)\nprint('done')\n";
    let second = "import os\nown = [l.strip().split(':', 2)[2] for l in open('/proc/self/cgroup') if l.split(':')[1] in ('pids', '')]\nif not own or 'job-' not in own[0]:\n    print('NO JOB CGROUP', own)\nelse:\n    base = '/sys/fs/cgroup/pids' if os.path.isdir('/sys/fs/cgroup/pids') else '/sys/fs/cgroup'\n    parent = base + os.path.dirname(own[0])\n    try:\n        names = [n for n in os.listdir(parent) if n.startswith('job-')]\n        print('LISTS', len(names), 'job cgroups', [open(f'{parent}/{n}/pids.current').read().strip() for n in names])\n    except OSError as e:\n        print('errno', e.errno)\n    read = 0\n    for n in range(1, 400):\n        try:\n            open(f'{parent}/job-{n}/pids.current').read()\n            read += 1\n        except OSError:\n            pass\n    print('guessed and read', read)\n";
    let (alpha, beta) = alpha_then_beta(nox, first, second);
    assert_eq!(stdout(&alpha), "done\n", "{alpha}");
    // ENOENT in a workspace's view (its /sys has no cgroup mounts), EACCES without one.
    assert!(
        [
            "errno 2\nguessed and read 0\n",
            "errno 13\nguessed and read 0\n"
        ]
        .contains(&stdout(&beta)),
        "a job reaches other jobs' cgroups: {beta}"
    );
    assert_serving(nox);
}

#[test]
fn another_tenants_unix_sockets_are_not_listed_in_proc_net_unix() {
    let _jobs = common::jobs();
    let nox = tenants();
    let name = unique("nox-listed");
    // Landlock's scope keeps beta from connecting; the kernel's list of the namespace's
    // Unix sockets would still show the name, and binding or not would be a bit. Alpha's
    // listener is a shell job (the spare or fork path), the others Python jobs (the
    // zygote's): the control sees it only if both paths enter the same view.
    let first = format!(
        "python3 -c \"import socket, time; s = socket.socket(socket.AF_UNIX); s.bind('\\0{name}'); print('bound'); time.sleep(2.5)\""
    );
    let second = format!(
        "try:\n    listed = open('/proc/self/net/unix').read()\n    print('SEES IT' if '{name}' in listed else 'not listed')\nexcept OSError as e:\n    print('errno', e.errno)\n"
    );
    let shell = json!({ "cmd": first, "timeout_s": 10 });
    let (alpha, beta, control) = alpha_then_beta_and_alpha(nox, "/run_sh", &shell, &second);
    assert_eq!(stdout(&alpha), "bound\n", "{alpha}");
    assert_eq!(
        stdout(&beta),
        "not listed\n",
        "another tenant's abstract socket is listed in /proc/self/net/unix: {beta}"
    );
    // The control: a job of the same workspace (its view's network namespace) lists it.
    assert_eq!(stdout(&control), "SEES IT\n", "{control}");
    assert_serving(nox);
}

#[test]
fn a_job_cannot_open_or_lock_a_file_in_another_workspace() {
    let _jobs = common::jobs();
    let nox = tenants();
    nox.client_for("alpha")
        .put("lock-target.txt", b"alpha")
        .expect_json(200);
    let code = format!(
        "import fcntl\nfor mode in ('rb', 'ab'):\n    try:\n        f = open({path:?}, mode)\n        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n        print('LOCKED', mode)\n    except OSError as e:\n        print('errno', e.errno)\n",
        path = nox
            .workspace("alpha")
            .join("lock-target.txt")
            .display()
            .to_string()
    );
    let reply = nox
        .client_for("beta")
        .run("/run_py", &json!({ "code": code, "timeout_s": 10 }));
    assert_eq!(stdout(&reply), "errno 13\nerrno 13\n", "{reply}");
    assert_serving(nox);
}

/// Alpha listens on an abstract socket; `connector` (beta, or alpha again) connects.
fn abstract_socket_between(nox: &Nox, connector: Client) -> (Value, Value) {
    let name = unique("nox-abstract");
    let listen = format!(
        "import socket\ns = socket.socket(socket.AF_UNIX)\ns.bind('\\0{name}')\ns.listen(1)\ns.settimeout(2.5)\ntry:\n    s.accept()\n    print('ACCEPTED')\nexcept OSError:\n    print('nobody came')\n"
    );
    let connect = format!(
        "import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect('\\0{name}')\n    print('CONNECTED')\nexcept OSError as e:\n    print('errno', e.errno)\n"
    );
    let alpha = nox.client_for("alpha");
    std::thread::scope(|scope| {
        let handle =
            scope.spawn(move || alpha.run("/run_py", &json!({ "code": listen, "timeout_s": 10 })));
        std::thread::sleep(Duration::from_millis(800));
        let reply = connector.run("/run_py", &json!({ "code": connect, "timeout_s": 10 }));
        (handle.join().expect("the listener's request"), reply)
    })
}

#[test]
fn an_abstract_unix_socket_of_one_tenants_job_cannot_be_reached_by_another() {
    let _jobs = common::jobs();
    let nox = tenants();
    let (listener, connector) = abstract_socket_between(nox, nox.client_for("beta"));
    assert_eq!(stdout(&listener), "nobody came\n", "{listener}");
    // ECONNREFUSED: the name is not in beta's view's network namespace; EPERM: Landlock's
    // scope (without views, one namespace for all).
    assert!(
        ["errno 111\n", "errno 1\n"].contains(&stdout(&connector)),
        "{connector}"
    );
    assert_serving(nox);
}

#[test]
fn an_abstract_unix_socket_of_one_job_cannot_be_reached_by_another_job_of_the_same_token() {
    let _jobs = common::jobs();
    let nox = tenants();
    let (listener, connector) = abstract_socket_between(nox, nox.client_for("alpha"));
    assert_eq!(stdout(&listener), "nobody came\n", "{listener}");
    assert_eq!(stdout(&connector), "errno 1\n", "{connector}");
    assert_serving(nox);
}

#[test]
fn a_job_cannot_signal_another_concurrent_job_by_pid_pidfd_or_kill_minus_one() {
    let _jobs = common::jobs();
    let nox = tenants();
    let marker = marker();
    let victim = format!("import time\ntime.sleep(2.5)\nprint('survived {marker}')\n");
    let attacker = format!(
        r#"{PY_SYSCALL}
import signal
# Every process of the sandbox uid but this one: the other tenant's job among them.
victims = []
for p in os.listdir("/proc"):
    if not p.isdigit() or int(p) == os.getpid():
        continue
    try:
        status = open(f"/proc/{{p}}/status").read()
        if f"Uid:\t{{os.getuid()}}\t" in status:
            victims.append(int(p))
    except OSError:
        pass
hits = []
for pid in victims:
    try:
        os.kill(pid, signal.SIGKILL)
        hits.append(("kill", pid))
    except OSError:
        pass
    fd, errno = call(434, pid, 0)
    if fd >= 0:
        result, errno = call(424, fd, signal.SIGKILL, 0, 0)
        if result == 0:
            hits.append(("pidfd", pid))
try:
    os.kill(-1, signal.SIGKILL)
except OSError:
    pass
print("hits", hits)
"#
    );
    let (alpha, beta) = alpha_then_beta(nox, &victim, &attacker);
    assert_eq!(
        stdout(&alpha),
        format!("survived {marker}\n"),
        "alpha's job was killed: {alpha} / {beta}"
    );
    assert_eq!(alpha["returncode"], 0, "{alpha}");
    assert!(
        !stdout(&beta).contains("('kill'") && !stdout(&beta).contains("('pidfd'"),
        "{beta}"
    );
    assert_serving(nox);
}

#[test]
fn a_job_cannot_signal_the_frontend_the_executor_or_the_process_that_forked_it() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let frontend = nox.frontend_pid().expect("the frontend runs");
    let executor = nox.executor_pid().expect("the executor runs");
    let code = format!(
        "import os, signal\nfor name, pid in [('frontend', {frontend}), ('executor', {executor}), ('parent', os.getppid())]:\n    try:\n        os.kill(pid, 0)\n        print(name, 'REACHABLE')\n    except PermissionError:\n        print(name, 'EPERM')\n    except ProcessLookupError:\n        print(name, 'gone')\n"
    );
    let reply = py(nox, &code, 10.0);
    assert_eq!(
        stdout(&reply),
        "frontend EPERM\nexecutor EPERM\nparent EPERM\n",
        "{reply}"
    );
    let reply = common::sh(
        nox,
        "python3 -c 'import os; os.kill(os.getppid(), 0); print(\"REACHABLE\")' 2>/dev/null; echo end",
        10.0,
    );
    assert_eq!(
        stdout(&reply),
        "REACHABLE\nend\n",
        "a job's own processes can signal each other: {reply}"
    );
    assert_serving(nox);
}

#[test]
fn a_job_cannot_read_another_jobs_scratch_directory() {
    let _jobs = common::jobs();
    let nox = tenants();
    let secret = unique("ALPHA-TMP");
    let first = format!(
        "import os, time\nopen(os.path.join(os.environ['TMPDIR'], 'secret.txt'), 'w').write('{secret}')\ntime.sleep(2.5)\n"
    );
    let alpha = nox.client_for("alpha");
    let beta = nox.client_for("beta");
    let jobs = nox.state_dir().join("jobs");
    let (alpha_reply, beta_reply) = std::thread::scope(|scope| {
        let handle =
            scope.spawn(move || alpha.run("/run_py", &json!({ "code": first, "timeout_s": 10 })));
        // Find alpha's scratch directory from outside, then point beta's job straight at it.
        let mut target = None;
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(100));
            target = std::fs::read_dir(&jobs)
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| entry.path().join("secret.txt"))
                .find(|path| path.exists());
            if target.is_some() {
                break;
            }
        }
        let target = target
            .map(|path| path.display().to_string())
            .unwrap_or_default();
        let code = format!(
            "import os\ntry:\n    print('READ', open({target:?}).read())\nexcept OSError as e:\n    print('errno', e.errno)\ntry:\n    print('LISTED', os.listdir({jobs:?}))\nexcept OSError as e:\n    print('errno', e.errno)\n",
            jobs = jobs.display().to_string()
        );
        let reply = beta.run("/run_py", &json!({ "code": code, "timeout_s": 10 }));
        (handle.join().expect("alpha's request"), reply)
    });
    assert!(!stdout(&beta_reply).contains(&secret), "{beta_reply}");
    assert_eq!(
        stdout(&beta_reply),
        "errno 13\nerrno 13\n",
        "{beta_reply} / {alpha_reply}"
    );
    assert_serving(nox);
}

#[test]
fn a_scratch_directory_marked_by_one_workspaces_jobs_never_reaches_another_workspace() {
    // Scratch directories are kept and reused, but only within one workspace: what a job
    // leaves on its TMPDIR (files, a mode, an extended attribute) must not reach another's.
    let _jobs = common::jobs();
    let nox = tenants();
    let secret = unique("ALPHA-MARK");
    let mark = format!(
        "import os\nd = os.environ['TMPDIR']\nopen(os.path.join(d, 'left.txt'), 'w').write('{secret}')\nos.mkdir(os.path.join(d, 'sub'))\nos.chmod(d, 0o777)\ntry:\n    os.setxattr(d, 'user.nox-mark', b'{secret}')\n    print('marked')\nexcept OSError as e:\n    print('errno', e.errno)\n"
    );
    let look = "import os, stat\nd = os.environ['TMPDIR']\ntry:\n    x = os.getxattr(d, 'user.nox-mark').decode()\nexcept OSError as e:\n    x = 'errno %d' % e.errno\nprint(sorted(os.listdir(d)), oct(stat.S_IMODE(os.stat(d).st_mode)), x)\n";
    let alpha = nox.client_for("alpha");
    let beta = nox.client_for("beta");
    for _ in 0..4 {
        let reply = alpha.run("/run_py", &json!({ "code": mark }));
        assert_eq!(reply["returncode"], 0, "{reply}");
    }
    // Time for the released directories to be emptied and kept.
    std::thread::sleep(Duration::from_millis(300));
    for round in 0..4 {
        let reply = beta.run("/run_py", &json!({ "code": look }));
        let seen = stdout(&reply);
        assert!(!seen.contains(&secret), "round {round}: {reply}");
        assert!(
            seen.starts_with("[] 0o700 errno "),
            "round {round}: beta's TMPDIR is not new: {reply}"
        );
    }
    // alpha's own next jobs start with an empty 0700 directory too.
    let reply = alpha.run("/run_py", &json!({ "code": look }));
    assert!(
        stdout(&reply).starts_with("[] 0o700 "),
        "alpha's TMPDIR is not emptied: {reply}"
    );
    assert_serving(nox);
}
