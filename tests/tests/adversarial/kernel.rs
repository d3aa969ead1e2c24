//! The kernel's attack surface: setuid binaries (no_new_privs), foreign-architecture and x32
//! system calls, personality flags, and the calls exploits are made of — userfaultfd, bpf,
//! perf_event_open, mounts, namespaces, chroot, ptrace, process_vm_*. Each is asked for with
//! a raw system call (x86_64 numbers) and must answer `EPERM` (or kill the process, where the
//! filter says so). Where the kernel alone would have said something else, the errno proves
//! it was the filter.

use std::process::Command;

use nox_e2e::Nox;

use super::common::{self, PY_SYSCALL, assert_serving, py, stdout};

/// Runs `body` (Python using `call`/`in_child`) in a job; its stdout.
fn syscalls(nox: &Nox, body: &str) -> String {
    let reply = py(nox, &format!("{PY_SYSCALL}\n{body}"), 15.0);
    assert_eq!(reply["stderr"], "", "{reply}");
    stdout(&reply).to_owned()
}

fn only_x86_64(test: &str) -> bool {
    if std::env::consts::ARCH == "x86_64" {
        return true;
    }
    nox_e2e::skip(test, "the system call numbers in this case are x86_64's");
    false
}

#[test]
fn setuid_root_binaries_run_without_gaining_privileges() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    // Each candidate is left waiting on a pipe that never delivers (a password prompt, a
    // read), and its credentials are read from /proc while it waits.
    let code = r#"
import os, subprocess, time
seen = []
for argv in (["/usr/bin/passwd"], ["/usr/bin/su", "root"], ["/usr/bin/chsh"], ["/usr/bin/newgrp", "root"],
             ["/usr/bin/gpasswd", "root"], ["/usr/bin/chfn"], ["/usr/bin/mount", "-a"], ["/bin/su", "-"]):
    if not os.path.exists(argv[0]) or not os.stat(argv[0]).st_mode & 0o4000:
        continue
    read_end, write_end = os.pipe()
    child = subprocess.Popen(argv, stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(20):
        time.sleep(0.05)
        try:
            status = open(f"/proc/{child.pid}/status").read()
        except OSError:
            break
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("Name", "").strip() not in ("python3", ""):
            seen.append((argv[0], fields["Uid"].split(), fields["CapEff"].strip(), fields["NoNewPrivs"].strip()))
            break
    child.kill()
    child.wait()
    os.close(read_end)
    os.close(write_end)
for binary, uids, caps, nnp in seen:
    print(binary, "euid", uids[1], "caps", caps, "nnp", nnp)
print("observed", len(seen))
"#;
    let reply = py(nox, code, 20.0);
    let out = stdout(&reply);
    let observed: usize = out
        .lines()
        .last()
        .and_then(|line| line.strip_prefix("observed "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        observed > 0,
        "no setuid binary could be observed while it ran: {reply}"
    );
    for line in out.lines().filter(|line| line.contains(" euid ")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_ne!(words[2], "0", "a setuid binary ran as root: {line}");
        assert_eq!(
            words[4], "0000000000000000",
            "a setuid binary has capabilities: {line}"
        );
        assert_eq!(words[6], "1", "no_new_privs was lost across exec: {line}");
    }
    assert_serving(nox);
}

/// `mov eax, 20 (getpid on i386); int 0x80; ret`, run from an RWX page by a forked child.
const INT80: &str = r#"
import ctypes, mmap, os, sys
page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(b"\xb8\x14\x00\x00\x00\xcd\x80\xc3")
function = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
sys.stdout.flush()
pid = os.fork()
if pid == 0:
    result = function()
    print("int80 returned", "a pid" if result > 0 else result, flush=True)
    os._exit(0)
_, status = os.waitpid(pid, 0)
print("signal" if os.WIFSIGNALED(status) else "exit", os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
"#;

#[test]
fn an_i386_int_0x80_system_call_kills_the_process() {
    if !only_x86_64("an_i386_int_0x80_system_call_kills_the_process") {
        return;
    }
    // Control, outside the sandbox: does this kernel run i386 system calls at all?
    let control = Command::new("python3").arg("-c").arg(INT80).output();
    let control = control
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    if !control.starts_with("int80 returned a pid") {
        nox_e2e::skip(
            "an_i386_int_0x80_system_call_kills_the_process",
            &format!(
                "this kernel does not run i386 system calls outside the sandbox either ({control:?}; ia32_emulation off?)"
            ),
        );
        return;
    }
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let reply = py(nox, INT80, 10.0);
    assert_eq!(
        stdout(&reply),
        "signal 31\n",
        "the i386 call was not killed with SIGSYS: {reply}"
    );
    assert_serving(nox);
}

#[test]
fn an_x32_system_call_number_kills_the_process() {
    if !only_x86_64("an_x32_system_call_number_kills_the_process") {
        return;
    }
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let out = syscalls(
        nox,
        "print(*in_child(lambda: call(39 | 0x40000000)[0]))\nprint(*in_child(lambda: call(1 | 0x40000000, 1, b'x', 1)[0]))\n",
    );
    assert_eq!(out, "signal 31\nsignal 31\n");
    assert_serving(nox);
}

#[test]
fn personality_flags_that_weaken_the_process_are_refused_and_the_query_is_allowed() {
    if !only_x86_64(
        "personality_flags_that_weaken_the_process_are_refused_and_the_query_is_allowed",
    ) {
        return;
    }
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let out = syscalls(
        nox,
        r#"
for name, value in [("READ_IMPLIES_EXEC", 0x0400000), ("ADDR_NO_RANDOMIZE", 0x0040000),
                    ("PER_LINUX32", 0x0008), ("MMAP_PAGE_ZERO", 0x0100000), ("ADDR_LIMIT_3GB", 0x8000000)]:
    print(name, *call(135, value))
print("query", *call(135, 0xffffffff))
print("PER_LINUX", *call(135, 0))
"#,
    );
    assert_eq!(
        out,
        "READ_IMPLIES_EXEC -1 1\nADDR_NO_RANDOMIZE -1 1\nPER_LINUX32 -1 1\nMMAP_PAGE_ZERO -1 1\nADDR_LIMIT_3GB -1 1\nquery 0 0\nPER_LINUX 0 0\n"
    );
    assert_serving(nox);
}

#[test]
fn userfaultfd_is_refused_by_syscall_and_by_device() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let out = syscalls(
        nox,
        "print('userfaultfd', *call(323, os.O_CLOEXEC))\nprint('user-mode-only', *call(323, os.O_CLOEXEC | 1))\ntry:\n    os.open('/dev/userfaultfd', os.O_RDWR)\n    print('DEVICE OPENED')\nexcept OSError:\n    pass\n",
    );
    assert_eq!(out, "userfaultfd -1 1\nuser-mode-only -1 1\n");
    assert_serving(nox);
}

#[test]
fn bpf_is_refused_for_maps_and_programs() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let out = syscalls(
        nox,
        "attr = ctypes.create_string_buffer(128)\nfor command in (0, 5, 18):\n    print('bpf', command, *call(321, command, attr, 128))\n",
    );
    assert_eq!(out, "bpf 0 -1 1\nbpf 5 -1 1\nbpf 18 -1 1\n");
    assert_serving(nox);
}

#[test]
fn perf_event_open_is_refused_even_for_the_jobs_own_user_space() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    // A software cpu-clock counter on itself, user space only: allowed by the kernel at
    // perf_event_paranoid 2, refused by the filter.
    let out = syscalls(
        nox,
        r#"
import struct
attr = ctypes.create_string_buffer(struct.pack("IIQ", 1, 128, 0) + bytes(24) + struct.pack("Q", 0b1100000) + bytes(80), 128)
print("perf_event_open", *call(298, attr, 0, 0xffffffff, 0xffffffff, 0))
"#,
    );
    assert_eq!(out, "perf_event_open -1 1\n");
    assert_serving(nox);
}

#[test]
fn mount_and_the_new_mount_api_are_refused() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let out = syscalls(
        nox,
        r#"
for name, nr, args in [
    ("mount", 165, (b"none", b".", b"tmpfs", 0, 0)),
    ("umount2", 166, (b"/proc", 0)),
    ("open_tree", 428, (0xffffff9c, b"/", 1)),
    ("move_mount", 429, (0xffffff9c, b"/", 0xffffff9c, b".", 0)),
    ("fsopen", 430, (b"tmpfs", 0)),
    ("fsconfig", 431, (0, 0, 0, 0, 0)),
    ("fsmount", 432, (0, 0, 0)),
    ("fspick", 433, (0xffffff9c, b"/", 0)),
    ("mount_setattr", 442, (0xffffff9c, b"/", 0, 0, 0)),
]:
    print(name, *call(nr, *args))
"#,
    );
    let expected: String = [
        "mount",
        "umount2",
        "open_tree",
        "move_mount",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "mount_setattr",
    ]
    .iter()
    .map(|name| format!("{name} -1 1\n"))
    .collect();
    assert_eq!(out, expected);
    assert_serving(nox);
}

#[test]
fn unshare_of_any_namespace_is_refused() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let out = syscalls(
        nox,
        r#"
for name, flag in [("user", 0x10000000), ("mount", 0x20000), ("net", 0x40000000), ("pid", 0x20000000),
                   ("ipc", 0x08000000), ("uts", 0x04000000), ("cgroup", 0x02000000), ("time", 0x80)]:
    print(name, *in_child(lambda: call(272, flag)[1]))
"#,
    );
    let expected: String = [
        "user", "mount", "net", "pid", "ipc", "uts", "cgroup", "time",
    ]
    .iter()
    .map(|name| format!("{name} exit 1\n"))
    .collect();
    assert_eq!(out, expected);
    assert_serving(nox);
}

#[test]
fn clone_with_a_namespace_flag_is_refused_and_clone3_is_not_available() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let out = syscalls(
        nox,
        r#"
import signal
def raw_clone(flags):
    result, errno = call(56, flags | signal.SIGCHLD, 0, 0, 0, 0)
    if result == 0:
        os._exit(0)
    if result > 0:
        os.waitpid(result, 0)
        return "CLONED"
    return errno
for name, flag in [("newns", 0x20000), ("newuser", 0x10000000), ("newpid", 0x20000000), ("newnet", 0x40000000),
                   ("newipc", 0x08000000), ("newuts", 0x04000000), ("newcgroup", 0x02000000)]:
    print(name, raw_clone(flag))
args = ctypes.create_string_buffer(88)
print("clone3", *call(435, args, 88))
print("plain fork", *in_child(lambda: 0))
"#,
    );
    assert_eq!(
        out,
        "newns 1\nnewuser 1\nnewpid 1\nnewnet 1\nnewipc 1\nnewuts 1\nnewcgroup 1\nclone3 -1 38\nplain fork exit 0\n"
    );
    assert_serving(nox);
}

#[test]
fn setns_into_a_namespace_is_refused() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let out = syscalls(
        nox,
        r#"
for kind in ("user", "mnt", "net", "pid", "ipc", "uts"):
    fd = os.open(f"/proc/self/ns/{kind}", os.O_RDONLY)
    print(kind, *call(308, fd, 0))
    os.close(fd)
try:
    os.open("/proc/1/ns/mnt", os.O_RDONLY)
    print("OPENED init's mount namespace")
except OSError:
    pass
"#,
    );
    let expected: String = ["user", "mnt", "net", "pid", "ipc", "uts"]
        .iter()
        .map(|kind| format!("{kind} -1 1\n"))
        .collect();
    assert_eq!(out, expected);
    assert_serving(nox);
}

#[test]
fn chroot_and_pivot_root_are_refused() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let out = syscalls(
        nox,
        "print('chroot', *call(161, b'.'))\nprint('pivot_root', *call(155, b'.', b'.'))\n",
    );
    assert_eq!(out, "chroot -1 1\npivot_root -1 1\n");
    assert_serving(nox);
}

#[test]
fn ptrace_of_the_parent_of_an_own_child_or_of_itself_is_refused() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let out = syscalls(
        nox,
        r#"
import signal, time
child = os.fork()
if child == 0:
    time.sleep(5)
    os._exit(0)
print("attach parent", *call(101, 16, os.getppid(), 0, 0))
print("attach child", *call(101, 16, child, 0, 0))
print("seize child", *call(101, 0x4206, child, 0, 0))
print("traceme", *in_child(lambda: call(101, 0, 0, 0, 0)[1]))
os.kill(child, signal.SIGKILL)
os.waitpid(child, 0)
"#,
    );
    assert_eq!(
        out,
        "attach parent -1 1\nattach child -1 1\nseize child -1 1\ntraceme exit 1\n"
    );
    assert_serving(nox);
}

#[test]
fn process_vm_readv_writev_and_pidfd_getfd_on_an_own_child_are_refused() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let out = syscalls(
        nox,
        r#"
import signal, time
child = os.fork()
if child == 0:
    time.sleep(5)
    os._exit(0)
class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]
buffer = ctypes.create_string_buffer(16)
local = IoVec(ctypes.cast(buffer, ctypes.c_void_p), 16)
remote = IoVec(ctypes.cast(buffer, ctypes.c_void_p), 16)
print("process_vm_readv", *call(310, child, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0))
print("process_vm_writev", *call(311, child, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0))
pidfd, errno = call(434, child, 0)
print("pidfd_open", pidfd >= 0)
print("pidfd_getfd", *call(438, pidfd, 0, 0))
print("kcmp", *call(312, os.getpid(), child, 0, 0, 0))
os.kill(child, signal.SIGKILL)
os.waitpid(child, 0)
"#,
    );
    assert_eq!(
        out,
        "process_vm_readv -1 1\nprocess_vm_writev -1 1\npidfd_open True\npidfd_getfd -1 1\nkcmp -1 1\n"
    );
    assert_serving(nox);
}

#[test]
fn module_loading_kexec_reboot_and_raw_io_are_refused() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    // reboot with a wrong magic number: even root would get EINVAL from the kernel.
    let out = syscalls(
        nox,
        r#"
image = ctypes.create_string_buffer(64)
for name, nr, args in [
    ("init_module", 175, (image, 64, b"")),
    ("finit_module", 313, (0, b"", 0)),
    ("delete_module", 176, (b"nox_probe", 0)),
    ("kexec_load", 246, (0, 0, 0, 0)),
    ("kexec_file_load", 320, (0, 0, 0, b"", 0)),
    ("reboot", 169, (0, 0, 0, 0)),
    ("iopl", 172, (3,)),
    ("ioperm", 173, (0x80, 1, 1)),
    ("modify_ldt", 154, (0, image, 16)),
    ("swapon", 167, (b"/dev/null", 0)),
    ("acct", 163, (0,)),
    ("settimeofday", 164, (0, 0)),
    ("sethostname", 170, (b"x", 1)),
]:
    print(name, *call(nr, *args))
"#,
    );
    let expected: String = [
        "init_module",
        "finit_module",
        "delete_module",
        "kexec_load",
        "kexec_file_load",
        "reboot",
        "iopl",
        "ioperm",
        "modify_ldt",
        "swapon",
        "acct",
        "settimeofday",
        "sethostname",
    ]
    .iter()
    .map(|name| format!("{name} -1 1\n"))
    .collect();
    assert_eq!(out, expected);
    assert_serving(nox);
}

#[test]
fn open_by_handle_at_and_name_to_handle_at_are_refused() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let out = syscalls(
        nox,
        r#"
handle = ctypes.create_string_buffer(128)
ctypes.memmove(handle, (120).to_bytes(4, "little"), 4)
mount_id = ctypes.c_int()
print("name_to_handle_at", *call(303, 0xffffff9c, b"/etc/passwd", handle, ctypes.byref(mount_id), 0))
print("open_by_handle_at", *call(304, 0xffffff9c, handle, 0))
"#,
    );
    assert_eq!(out, "name_to_handle_at -1 1\nopen_by_handle_at -1 1\n");
    assert_serving(nox);
}

#[test]
fn a_job_cannot_raise_capabilities_or_drop_its_filter_and_python_jobs_carry_every_layer() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let out = syscalls(
        nox,
        r#"
print("ambient raise", *call(157, 47, 2, 13, 0, 0))
print("clear no_new_privs", *call(157, 38, 0, 0, 0, 0))
print("disable seccomp", *call(157, 22, 0, 0, 0, 0))
print("strict mode", *call(317, 0, 0, 0))
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
for field in ("CapEff", "CapPrm", "CapAmb", "NoNewPrivs", "Seccomp"):
    print(field, status[field].strip())
try:
    os.listdir("/")
    print("LISTED /")
except OSError as e:
    print("landlock", e.errno)
"#,
    );
    assert_eq!(
        out,
        "ambient raise -1 1\nclear no_new_privs -1 22\ndisable seccomp -1 22\nstrict mode -1 22\nCapEff 0000000000000000\nCapPrm 0000000000000000\nCapAmb 0000000000000000\nNoNewPrivs 1\nSeccomp 2\nlandlock 13\n"
    );
    assert_serving(nox);
}
