//! Terminal injection: `TIOCSTI` (bubblewrap CVE-2017-5226), `TIOCSTI` with high bits set in
//! the request (CVE-2019-10063: a filter comparing all 64 bits misses it, the kernel
//! truncates to 32), `TIOCLINUX`. A job's descriptors are pipes, not terminals, so the
//! kernel alone would answer `ENOTTY` (25); the seccomp filter answers `EPERM` (1) before
//! the kernel looks — which is what these cases check.

use nox_e2e::Nox;

use super::common::{self, PY_SYSCALL, assert_serving, py, stdout};

const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541C;

/// `ioctl(fd, request, &byte)` through the raw system call (no libc prototype in between),
/// for fds 0, 1 and 2; prints the errno of each.
fn ioctl_job(request: u64) -> String {
    format!(
        "{PY_SYSCALL}\nbyte = ctypes.c_char(b'x')\nprint(*[call(16, fd, {request}, ctypes.byref(byte))[1] for fd in (0, 1, 2)])\n"
    )
}

#[test]
fn tiocsti_is_refused_on_every_standard_descriptor() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let reply = py(nox, &ioctl_job(TIOCSTI), 10.0);
    assert_eq!(stdout(&reply), "1 1 1\n", "{reply}");
    assert_serving(nox);
}

#[test]
fn tiocsti_with_high_bits_set_in_the_request_is_refused() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let mut out = String::new();
    for high in [
        1u64 << 32,
        0xffff_ffff_0000_0000,
        0x8000_0000_0000_0000,
        0x0000_0001_0000_0000 | (1 << 40),
    ] {
        let reply = py(nox, &ioctl_job(TIOCSTI | high), 10.0);
        out.push_str(&format!("{high:#x}: {}", stdout(&reply)));
    }
    assert_eq!(
        out,
        "0x100000000: 1 1 1\n0xffffffff00000000: 1 1 1\n0x8000000000000000: 1 1 1\n0x10100000000: 1 1 1\n"
    );
    assert_serving(nox);
}

#[test]
fn tioclinux_is_refused_also_with_high_bits() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let plain = py(nox, &ioctl_job(TIOCLINUX), 10.0);
    let high = py(nox, &ioctl_job(TIOCLINUX | (1 << 32)), 10.0);
    assert_eq!(stdout(&plain), "1 1 1\n", "{plain}");
    assert_eq!(stdout(&high), "1 1 1\n", "{high}");
    assert_serving(nox);
}

#[test]
fn other_terminal_ioctls_are_not_mistaken_for_tiocsti() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    // TCGETS (0x5401) on a pipe: the kernel's own ENOTTY, proving the filter is specific.
    let reply = py(nox, &ioctl_job(0x5401), 10.0);
    assert_eq!(stdout(&reply), "25 25 25\n", "{reply}");
    assert_serving(nox);
}

#[test]
fn a_job_cannot_open_a_terminal_to_inject_into() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let code = r#"
import os
for path in ("/dev/tty", "/dev/console", "/dev/tty0", "/dev/tty1", "/dev/ptmx", "/dev/pts/ptmx"):
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        print("OPENED", path)
        os.close(fd)
    except OSError:
        pass
print("end")
"#;
    let reply = py(nox, code, 10.0);
    assert_eq!(stdout(&reply), "end\n", "{reply}");
    assert_serving(nox);
}
