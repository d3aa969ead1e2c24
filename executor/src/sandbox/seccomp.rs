//! The job seccomp filter: what a job may not ask the kernel for.
//!
//! The filter is a deny list over the native architecture, built with `seccompiler` and
//! compiled once at start; each job loads the prebuilt program between fork and exec.
//! It is one layer of several: Landlock decides what files a job reaches, the sandbox uid
//! and `no_new_privs` what it may become, the unit's `SystemCallArchitectures=native` and
//! `PrivateNetwork=` what the whole executor can do. This layer removes the kernel surfaces
//! a job has no use for and that sandbox escapes and cross-job channels are made of.
//!
//! The program is laid out for the kernel's cost, paid by every job: attaching a filter
//! makes the kernel run it once per system call number (to cache the ones always allowed),
//! and a deny list compiled as one chain of comparisons walks the whole chain for every
//! allowed call — some 450 numbers × 450 instructions per job. So the program is:
//! - a header: a foreign architecture (i386 `int 0x80`) kills the process, and so does any
//!   x32 system call (number with bit 30 set): on x86_64 the x32 ABI is a second table of
//!   the same calls that a number-based deny list would not see;
//! - a binary search over ranges of system call numbers, whose leaves answer at once: allow,
//!   `EPERM` for the calls denied outright, `ENOSYS` for `clone3` (so libc falls back to
//!   `clone`, whose flags a filter can read: clone3 passes them in memory, out of a filter's
//!   reach) — a dozen instructions on any path;
//! - for the few calls decided by their arguments (socket families, ioctl requests, fcntl's
//!   `F_NOTIFY`, clone flags, personality), a jump into the program `seccompiler` compiles
//!   from those rules.
//!
//! Everything denied answers `EPERM`, so a job sees an ordinary error it can report. The
//! tests run the program in a BPF interpreter against the plain `seccompiler` compilation of
//! the same rules, for every number and a grid of arguments.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

use super::SandboxError;

// Classic BPF opcodes (linux/bpf_common.h).
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS (0x20)
const BPF_JMP_JA: u16 = 0x05; // BPF_JMP | BPF_JA (0)
const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JMP_JGE_K: u16 = 0x05 | 0x30; // BPF_JMP | BPF_JGE | BPF_K
const BPF_JMP_JSET_K: u16 = 0x05 | 0x40; // BPF_JMP | BPF_JSET | BPF_K
const BPF_RET_K: u16 = 0x06;
/// `offsetof(struct seccomp_data, nr)`.
const SECCOMP_DATA_NR: u32 = 0;
/// `offsetof(struct seccomp_data, arch)`.
const SECCOMP_DATA_ARCH: u32 = 4;
/// `AUDIT_ARCH_*` of this machine (linux/audit.h), as `seccompiler` checks it too.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;
#[cfg(target_arch = "riscv64")]
const AUDIT_ARCH: u32 = 0xc000_00f3;
/// The longest program the kernel loads (linux/bpf_common.h).
const BPF_MAXINSNS: usize = 4096;
/// Bit 30 marks the x32 ABI (`__X32_SYSCALL_BIT`).
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Namespace flags `clone` must not carry (each is its own rule: seccompiler has no
/// "masked not equal", and any one of them set is enough to deny).
const CLONE_NAMESPACE_FLAGS: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

/// System calls denied outright, each with the reason.
fn denied_syscalls() -> Vec<(i64, &'static str)> {
    vec![
        (libc::SYS_ptrace, "tracing other processes"),
        (
            libc::SYS_process_vm_readv,
            "reading another process's memory",
        ),
        (
            libc::SYS_process_vm_writev,
            "writing another process's memory",
        ),
        (
            libc::SYS_process_madvise,
            "acting on another process's memory",
        ),
        (
            libc::SYS_pidfd_getfd,
            "stealing another process's descriptors",
        ),
        (libc::SYS_kcmp, "probing other processes' kernel objects"),
        (libc::SYS_keyctl, "kernel keyrings: a cross-job channel"),
        (libc::SYS_add_key, "kernel keyrings: a cross-job channel"),
        (
            libc::SYS_request_key,
            "kernel keyrings: a cross-job channel",
        ),
        (
            libc::SYS_io_uring_setup,
            "io_uring: a second syscall path seccomp cannot see",
        ),
        (libc::SYS_io_uring_enter, "io_uring"),
        (libc::SYS_io_uring_register, "io_uring"),
        (libc::SYS_bpf, "loading kernel programs"),
        (
            libc::SYS_perf_event_open,
            "performance counters: side channels, kernel bugs",
        ),
        (
            libc::SYS_userfaultfd,
            "stalling the kernel at will: exploit primitive",
        ),
        (libc::SYS_mount, "mounting"),
        (libc::SYS_umount2, "unmounting"),
        (libc::SYS_pivot_root, "changing the root"),
        // Not `chroot`: a spare loads this filter before it is handed its job, and then
        // enters the job's view with `chroot` (see `crate::views`). A job cannot: it has
        // no CAP_SYS_CHROOT and may not make a user namespace to get one.
        (libc::SYS_move_mount, "new mount API"),
        (libc::SYS_open_tree, "new mount API"),
        (libc::SYS_fsopen, "new mount API"),
        (libc::SYS_fsmount, "new mount API"),
        (libc::SYS_fsconfig, "new mount API"),
        (libc::SYS_fspick, "new mount API"),
        (libc::SYS_mount_setattr, "new mount API"),
        (libc::SYS_unshare, "creating namespaces"),
        (
            libc::SYS_setsid,
            "leaving the job's process group (outliving the timeout)",
        ),
        (
            libc::SYS_setpgid,
            "leaving the job's process group (outliving the timeout)",
        ),
        (libc::SYS_kexec_load, "replacing the kernel"),
        (libc::SYS_kexec_file_load, "replacing the kernel"),
        (libc::SYS_init_module, "loading kernel modules"),
        (libc::SYS_finit_module, "loading kernel modules"),
        (libc::SYS_delete_module, "unloading kernel modules"),
        (libc::SYS_reboot, "rebooting"),
        (libc::SYS_swapon, "swap control"),
        (libc::SYS_swapoff, "swap control"),
        (libc::SYS_acct, "process accounting"),
        (libc::SYS_quotactl, "quota control"),
        (libc::SYS_quotactl_fd, "quota control"),
        (
            libc::SYS_open_by_handle_at,
            "opening files by handle, bypassing paths",
        ),
        (libc::SYS_name_to_handle_at, "file handles"),
        (libc::SYS_fanotify_init, "watching the filesystem"),
        // A watch on a file every job can read (`/etc/hostname`) sees another tenant's job
        // open or read it: a channel between tenants. (fanotify above, dnotify below.)
        (
            libc::SYS_inotify_init,
            "watching files: a cross-job channel",
        ),
        (
            libc::SYS_inotify_init1,
            "watching files: a cross-job channel",
        ),
        (libc::SYS_inotify_add_watch, "watching files"),
        (libc::SYS_lookup_dcookie, "kernel profiling"),
        (libc::SYS_syslog, "the kernel log"),
        (libc::SYS_vhangup, "terminal control"),
        (libc::SYS_iopl, "raw port I/O"),
        (libc::SYS_ioperm, "raw port I/O"),
        (
            libc::SYS_modify_ldt,
            "segment descriptors: old exploit surface",
        ),
        (libc::SYS_uselib, "obsolete loader"),
        (libc::SYS_settimeofday, "setting the clock"),
        (libc::SYS_clock_settime, "setting the clock"),
        (libc::SYS_clock_adjtime, "adjusting the clock"),
        (libc::SYS_sethostname, "renaming the host"),
        // System V IPC and POSIX message queues live outside any workspace, are shared by
        // every job of the host's IPC namespace and outlive the job: cross-job channels.
        (
            libc::SYS_shmget,
            "System V shared memory: a cross-job channel",
        ),
        (libc::SYS_shmat, "System V shared memory"),
        (libc::SYS_shmctl, "System V shared memory"),
        (libc::SYS_shmdt, "System V shared memory"),
        (
            libc::SYS_msgget,
            "System V message queues: a cross-job channel",
        ),
        (libc::SYS_msgsnd, "System V message queues"),
        (libc::SYS_msgrcv, "System V message queues"),
        (libc::SYS_msgctl, "System V message queues"),
        (libc::SYS_semget, "System V semaphores: a cross-job channel"),
        (libc::SYS_semop, "System V semaphores"),
        (libc::SYS_semtimedop, "System V semaphores"),
        (libc::SYS_semctl, "System V semaphores"),
        (
            libc::SYS_mq_open,
            "POSIX message queues: a cross-job channel",
        ),
        (libc::SYS_mq_unlink, "POSIX message queues"),
        (libc::SYS_mq_timedsend, "POSIX message queues"),
        (libc::SYS_mq_timedreceive, "POSIX message queues"),
        (libc::SYS_mq_notify, "POSIX message queues"),
        (libc::SYS_mq_getsetattr, "POSIX message queues"),
        (libc::SYS_setdomainname, "renaming the host"),
    ]
}

fn condition(
    index: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value)
}

/// The calls denied only with some arguments: syscall number → rules (any rule matching
/// denies the call).
fn argument_rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, SandboxError> {
    let build = || -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        // Sockets of any family but AF_UNIX: TCP, UDP, raw, netlink, packet, vsock, ...
        // (arg 0 is the domain; Dword compares the low 32 bits, all the kernel reads).
        for number in [libc::SYS_socket, libc::SYS_socketpair] {
            let not_unix = condition(0, SeccompCmpOp::Ne, libc::AF_UNIX as u64)?;
            rules.insert(number, vec![SeccompRule::new(vec![not_unix])?]);
        }
        // ioctl(fd, TIOCSTI): pushing input into a terminal (CVE-2017-5226 class). The
        // kernel truncates `cmd` to 32 bits, and so does a Dword comparison, so setting high
        // bits does not slip past (CVE-2019-10063).
        let mut ioctl_rules = Vec::new();
        for request in [libc::TIOCSTI, libc::TIOCLINUX] {
            let is_request = condition(1, SeccompCmpOp::Eq, request)?;
            ioctl_rules.push(SeccompRule::new(vec![is_request])?);
        }
        rules.insert(libc::SYS_ioctl, ioctl_rules);
        // fcntl(fd, F_NOTIFY): dnotify, a watch on a directory that sees the reads of other
        // tenants' jobs in it (`/etc`). `cmd` is an unsigned int: a Dword comparison.
        let is_notify = condition(1, SeccompCmpOp::Eq, libc::F_NOTIFY as u64)?;
        rules.insert(libc::SYS_fcntl, vec![SeccompRule::new(vec![is_notify])?]);
        // clone with any namespace flag (arg 0 is the flags on x86_64 and aarch64).
        let mut clone_rules = Vec::new();
        for flag in CLONE_NAMESPACE_FLAGS {
            let has_flag = condition(0, SeccompCmpOp::MaskedEq(flag), flag)?;
            clone_rules.push(SeccompRule::new(vec![has_flag])?);
        }
        rules.insert(libc::SYS_clone, clone_rules);
        // setns: only into a user or a network namespace, which a job's process (a spare
        // loads this filter before it knows its job) does to enter its workspace's view
        // (see `crate::views`). A job cannot: it has no capability in its own user
        // namespace, and none in another's (neither root nor the owner). `nstype` is an
        // int: a Dword comparison; 0 ("any type") is denied.
        let other_namespace = vec![
            condition(1, SeccompCmpOp::Ne, libc::CLONE_NEWUSER as u64)?,
            condition(1, SeccompCmpOp::Ne, libc::CLONE_NEWNET as u64)?,
        ];
        rules.insert(libc::SYS_setns, vec![SeccompRule::new(other_namespace)?]);
        // personality: only PER_LINUX and the query value 0xffffffff are allowed
        // (READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE and friends weaken the process).
        let other_persona = vec![
            condition(0, SeccompCmpOp::Ne, 0)?,
            condition(0, SeccompCmpOp::Ne, 0xffff_ffff)?,
        ];
        rules.insert(
            libc::SYS_personality,
            vec![SeccompRule::new(other_persona)?],
        );
        Ok(rules)
    };
    build().map_err(SandboxError::SeccompRules)
}

fn target_arch() -> Result<TargetArch, SandboxError> {
    std::env::consts::ARCH
        .try_into()
        .map_err(|_| SandboxError::SeccompArch(std::env::consts::ARCH))
}

fn statement(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

fn errno(value: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | (value.unsigned_abs() & libc::SECCOMP_RET_DATA)
}

/// What the filter answers for a system call number, before looking at any argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Allow,
    /// `EPERM`.
    Deny,
    /// `ENOSYS` (`clone3`).
    NoSys,
    /// Decided by the argument rules.
    Arguments,
}

/// The verdicts over all numbers as ranges: `(first number, verdict)`, sorted, each range
/// running up to the next one's first number and the last one to `u32::MAX`.
fn verdict_ranges(
    denied: &[i64],
    with_arguments: &[i64],
) -> Result<Vec<(u32, Verdict)>, SandboxError> {
    let number = |value: i64| u32::try_from(value).map_err(|_| SandboxError::SeccompNumber(value));
    let mut special = BTreeMap::new();
    for &value in denied {
        special.insert(number(value)?, Verdict::Deny);
    }
    for &value in with_arguments {
        special.insert(number(value)?, Verdict::Arguments);
    }
    special.insert(number(libc::SYS_clone3)?, Verdict::NoSys);
    let last = special.keys().next_back().copied().unwrap_or(0);
    let mut ranges: Vec<(u32, Verdict)> = Vec::new();
    for nr in 0..=last.saturating_add(1) {
        let verdict = special.get(&nr).copied().unwrap_or(Verdict::Allow);
        if ranges
            .last()
            .is_none_or(|(_, previous)| *previous != verdict)
        {
            ranges.push((nr, verdict));
        }
    }
    Ok(ranges)
}

/// A piece of program, with the places that jump to the argument rules (their offset is
/// known only once everything before the rules is laid out).
#[derive(Default)]
struct Code {
    program: Vec<sock_filter>,
    to_arguments: Vec<usize>,
}

impl Code {
    fn append(&mut self, other: Code) {
        let base = self.program.len();
        self.to_arguments
            .extend(other.to_arguments.into_iter().map(|at| base + at));
        self.program.extend(other.program);
    }
}

/// A binary search over `ranges` (not empty) with the number in the accumulator: every
/// node one `JGE`, every leaf its answer.
fn search(ranges: &[(u32, Verdict)]) -> Code {
    let mut code = Code::default();
    let [first, rest @ ..] = ranges else {
        return code;
    };
    if rest.is_empty() {
        match first.1 {
            Verdict::Allow => code
                .program
                .push(statement(BPF_RET_K, libc::SECCOMP_RET_ALLOW)),
            Verdict::Deny => code.program.push(statement(BPF_RET_K, errno(libc::EPERM))),
            Verdict::NoSys => code.program.push(statement(BPF_RET_K, errno(libc::ENOSYS))),
            Verdict::Arguments => {
                code.to_arguments.push(0);
                code.program.push(statement(BPF_JMP_JA, 0));
            }
        }
        return code;
    }
    let middle = ranges.len() / 2;
    let below = search(&ranges[..middle]);
    let above = search(&ranges[middle..]);
    let split = ranges[middle].0;
    // Conditional jumps reach 255 instructions ahead; past that, through a `JA`.
    match u8::try_from(below.program.len()) {
        Ok(skip) => code.program.push(jump(BPF_JMP_JGE_K, split, skip, 0)),
        Err(_) => {
            code.program.push(jump(BPF_JMP_JGE_K, split, 0, 1));
            let skip = u32::try_from(below.program.len()).unwrap_or(u32::MAX);
            code.program.push(statement(BPF_JMP_JA, skip));
        }
    }
    code.append(below);
    code.append(above);
    code
}

/// Compile the job filter for this machine's architecture.
pub fn job_filter() -> Result<BpfProgram, SandboxError> {
    let arguments = argument_rules()?;
    let with_arguments: Vec<i64> = arguments.keys().copied().collect();
    let denied: Vec<i64> = denied_syscalls()
        .into_iter()
        .map(|(number, _why)| number)
        .collect();
    let ranges = verdict_ranges(&denied, &with_arguments)?;

    let mut code = Code {
        program: vec![
            statement(BPF_LD_W_ABS, SECCOMP_DATA_ARCH),
            jump(BPF_JMP_JEQ_K, AUDIT_ARCH, 1, 0),
            statement(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
            statement(BPF_LD_W_ABS, SECCOMP_DATA_NR),
            jump(BPF_JMP_JSET_K, X32_SYSCALL_BIT, 0, 1),
            statement(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        ],
        to_arguments: Vec::new(),
    };
    code.append(search(&ranges));

    // The argument rules, by seccompiler (its own architecture check and number load
    // included): a call it does not deny is allowed.
    let rules = SeccompFilter::new(
        arguments,
        SeccompAction::Allow,                             // not matched: allowed
        SeccompAction::Errno(libc::EPERM.unsigned_abs()), // matched: EPERM
        target_arch()?,
    )
    .map_err(SandboxError::SeccompRules)?;
    let rules: BpfProgram = rules.try_into().map_err(SandboxError::SeccompCompile)?;
    let start = code.program.len();
    for &at in &code.to_arguments {
        let offset =
            u32::try_from(start - (at + 1)).map_err(|_| SandboxError::SeccompTooLong(start))?;
        code.program[at].k = offset;
    }
    let mut program = code.program;
    program.extend(rules);
    if program.len() > BPF_MAXINSNS {
        return Err(SandboxError::SeccompTooLong(program.len()));
    }
    Ok(program)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every deny rule as data, the way a plain seccompiler filter takes them: syscall
    /// number → rules (any rule matching denies the call; an empty list denies it
    /// unconditionally).
    fn job_rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, SandboxError> {
        let mut rules = argument_rules()?;
        for (number, _why) in denied_syscalls() {
            rules.insert(number, Vec::new());
        }
        Ok(rules)
    }

    #[test]
    fn the_rule_table_denies_the_escape_and_side_channel_syscalls() {
        let rules = job_rules().unwrap();
        for number in [
            libc::SYS_ptrace,
            libc::SYS_process_vm_readv,
            libc::SYS_keyctl,
            libc::SYS_io_uring_setup,
            libc::SYS_bpf,
            libc::SYS_perf_event_open,
            libc::SYS_userfaultfd,
            libc::SYS_mount,
            libc::SYS_unshare,
            libc::SYS_setsid,
            libc::SYS_setpgid,
            libc::SYS_shmget,
            libc::SYS_msgget,
            libc::SYS_semget,
            libc::SYS_mq_open,
            libc::SYS_inotify_init,
            libc::SYS_inotify_init1,
            libc::SYS_inotify_add_watch,
        ] {
            assert_eq!(
                rules.get(&number).map(Vec::len),
                Some(0),
                "syscall {number}"
            );
        }
    }

    #[test]
    fn sockets_clone_ioctl_fcntl_and_personality_are_denied_only_with_their_arguments() {
        let rules = job_rules().unwrap();
        assert_eq!(rules[&libc::SYS_socket].len(), 1);
        assert_eq!(rules[&libc::SYS_socketpair].len(), 1);
        assert_eq!(rules[&libc::SYS_clone].len(), CLONE_NAMESPACE_FLAGS.len());
        assert_eq!(rules[&libc::SYS_ioctl].len(), 2);
        assert_eq!(rules[&libc::SYS_personality].len(), 1);
        assert_eq!(rules[&libc::SYS_fcntl].len(), 1);
        assert_eq!(rules[&libc::SYS_setns].len(), 1);
        assert!(!rules.contains_key(&libc::SYS_execve));
        assert!(
            !rules.contains_key(&libc::SYS_clone3),
            "clone3 is answered by the search, before any rule"
        );
    }

    /// `struct seccomp_data` as a filter sees it.
    struct Call {
        nr: u32,
        arch: u32,
        args: [u64; 6],
    }

    /// A classic BPF interpreter for what seccomp filters use; returns the filter's answer
    /// and how many instructions ran. Panics on anything else, or on a jump out of the
    /// program.
    fn run(program: &[sock_filter], call: &Call) -> (u32, usize) {
        let mut accumulator: u32 = 0;
        let mut pc = 0usize;
        let mut steps = 0;
        loop {
            let insn = &program[pc];
            steps += 1;
            pc += 1;
            let k = insn.k;
            let branch = |taken: bool| usize::from(if taken { insn.jt } else { insn.jf });
            match insn.code {
                BPF_LD_W_ABS => {
                    accumulator = match k {
                        0 => call.nr,
                        4 => call.arch,
                        16..=63 if k.is_multiple_of(4) => {
                            let arg = call.args[((k - 16) / 8) as usize];
                            if (k - 16).is_multiple_of(8) {
                                arg as u32
                            } else {
                                (arg >> 32) as u32
                            }
                        }
                        other => panic!("load from offset {other}"),
                    }
                }
                BPF_JMP_JA => pc += k as usize,
                BPF_JMP_JEQ_K => pc += branch(accumulator == k),
                0x25 => pc += branch(accumulator > k), // BPF_JMP | BPF_JGT | BPF_K
                BPF_JMP_JGE_K => pc += branch(accumulator >= k),
                BPF_JMP_JSET_K => pc += branch(accumulator & k != 0),
                0x54 => accumulator &= k, // BPF_ALU | BPF_AND | BPF_K
                BPF_RET_K => return (k, steps),
                other => panic!("opcode {other:#x} at {}", pc - 1),
            }
        }
    }

    /// The same rules compiled the plain way: the old prefix (x32 kill, clone3 ENOSYS),
    /// then `seccompiler`'s chain over every rule.
    fn reference_filter() -> BpfProgram {
        let filter = SeccompFilter::new(
            job_rules().unwrap(),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM.unsigned_abs()),
            target_arch().unwrap(),
        )
        .unwrap();
        let body: BpfProgram = filter.try_into().unwrap();
        let mut program = vec![
            statement(BPF_LD_W_ABS, SECCOMP_DATA_NR),
            jump(BPF_JMP_JSET_K, X32_SYSCALL_BIT, 0, 1),
            statement(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
            jump(BPF_JMP_JEQ_K, libc::SYS_clone3 as u32, 0, 1),
            statement(BPF_RET_K, errno(libc::ENOSYS)),
        ];
        program.extend(body);
        program
    }

    /// Argument values that matter to some rule, and some that do not.
    fn argument_grid() -> Vec<u64> {
        let mut values = vec![
            0,
            1,
            0xffff_ffff,
            u64::MAX,
            1 << 32,
            libc::AF_UNIX as u64,
            libc::AF_INET as u64,
            libc::AF_INET6 as u64,
            libc::AF_NETLINK as u64,
            libc::AF_PACKET as u64,
            libc::AF_VSOCK as u64,
            (1 << 32) | libc::AF_UNIX as u64,
            (1 << 32) | libc::AF_INET as u64,
            libc::TIOCSTI,
            libc::TIOCLINUX,
            (1 << 32) | libc::TIOCSTI,
            libc::TCGETS,
            libc::F_NOTIFY as u64,
            (1 << 32) | libc::F_NOTIFY as u64,
            libc::F_SETLK as u64,
            libc::SIGCHLD as u64,
            0x0040_0000, // READ_IMPLIES_EXEC
            0x0004_0000, // ADDR_NO_RANDOMIZE
        ];
        for flag in CLONE_NAMESPACE_FLAGS {
            values.push(flag | libc::SIGCHLD as u64);
        }
        values.push((libc::CLONE_VM | libc::CLONE_FS | libc::CLONE_THREAD) as u64);
        values
    }

    #[test]
    fn the_search_answers_every_call_as_the_plain_compilation_of_the_rules_does() {
        let program = job_filter().unwrap();
        let reference = reference_filter();
        let grid = argument_grid();
        let with_arguments: Vec<u32> = argument_rules()
            .unwrap()
            .keys()
            .map(|&nr| nr as u32)
            .collect();
        let mut numbers: Vec<u32> = (0..=600).collect();
        numbers.extend([1000, 4095, 0xffff, u32::MAX, 0x7fff_ffff]);
        numbers.extend((0..=600).map(|nr| nr | X32_SYSCALL_BIT));
        let mut checked = 0;
        for nr in numbers {
            let argument_sets: Vec<[u64; 6]> = if with_arguments.contains(&nr) {
                grid.iter()
                    .flat_map(|&a0| grid.iter().map(move |&a1| [a0, a1, 0, 0, 0, 0]))
                    .collect()
            } else {
                vec![[0; 6], [u64::MAX; 6]]
            };
            for args in argument_sets {
                let call = Call {
                    nr,
                    arch: AUDIT_ARCH,
                    args,
                };
                assert_eq!(
                    run(&program, &call).0,
                    run(&reference, &call).0,
                    "system call {nr:#x} with {args:x?}"
                );
                checked += 1;
            }
        }
        assert!(checked > 5000, "{checked} calls checked");
    }

    #[test]
    fn the_program_answers_the_denied_and_special_calls_as_documented() {
        let program = job_filter().unwrap();
        let answer = |nr: i64, arch: u32, args: [u64; 6]| {
            run(
                &program,
                &Call {
                    nr: nr as u32,
                    arch,
                    args,
                },
            )
            .0
        };
        let native = |nr: i64| answer(nr, AUDIT_ARCH, [0; 6]);
        let eperm = errno(libc::EPERM);
        for (nr, why) in denied_syscalls() {
            assert_eq!(native(nr), eperm, "{nr}: {why}");
        }
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_execve,
            libc::SYS_exit_group,
        ] {
            assert_eq!(native(nr), libc::SECCOMP_RET_ALLOW, "{nr}");
        }
        assert_eq!(native(libc::SYS_clone3), errno(libc::ENOSYS));
        // A foreign architecture (i386) and the x32 table: the process dies.
        assert_eq!(
            answer(libc::SYS_read, 0x4000_0003, [0; 6]),
            libc::SECCOMP_RET_KILL_PROCESS
        );
        assert_eq!(
            native(libc::SYS_read | i64::from(X32_SYSCALL_BIT)),
            libc::SECCOMP_RET_KILL_PROCESS
        );
        let inet = [libc::AF_INET as u64, 0, 0, 0, 0, 0];
        let unix = [libc::AF_UNIX as u64, 0, 0, 0, 0, 0];
        assert_eq!(answer(libc::SYS_socket, AUDIT_ARCH, inet), eperm);
        assert_eq!(
            answer(libc::SYS_socket, AUDIT_ARCH, unix),
            libc::SECCOMP_RET_ALLOW
        );
        let tiocsti = [0, libc::TIOCSTI, 0, 0, 0, 0];
        assert_eq!(answer(libc::SYS_ioctl, AUDIT_ARCH, tiocsti), eperm);
        let notify = [3, libc::F_NOTIFY as u64, 0, 0, 0, 0];
        assert_eq!(answer(libc::SYS_fcntl, AUDIT_ARCH, notify), eperm);
        let high_notify = [3, (1 << 32) | libc::F_NOTIFY as u64, 0, 0, 0, 0];
        assert_eq!(answer(libc::SYS_fcntl, AUDIT_ARCH, high_notify), eperm);
        let setfd = [3, libc::F_SETFD as u64, 1, 0, 0, 0];
        assert_eq!(
            answer(libc::SYS_fcntl, AUDIT_ARCH, setfd),
            libc::SECCOMP_RET_ALLOW
        );
        let newuser = [libc::CLONE_NEWUSER as u64, 0, 0, 0, 0, 0];
        assert_eq!(answer(libc::SYS_clone, AUDIT_ARCH, newuser), eperm);
        // setns: into a user or a network namespace only (a view's); "any type" (0), a
        // mount namespace, and both kinds at once are refused.
        let setns = |nstype: u64| answer(libc::SYS_setns, AUDIT_ARCH, [3, nstype, 0, 0, 0, 0]);
        let (user, net) = (libc::CLONE_NEWUSER as u64, libc::CLONE_NEWNET as u64);
        assert_eq!(setns(user), libc::SECCOMP_RET_ALLOW);
        assert_eq!(setns(net), libc::SECCOMP_RET_ALLOW);
        for refused in [
            0,
            libc::CLONE_NEWNS as u64,
            user | net,
            libc::CLONE_NEWPID as u64,
        ] {
            assert_eq!(setns(refused), eperm, "nstype {refused:#x}");
        }
    }

    #[test]
    fn an_allowed_call_runs_a_short_path_and_the_arguments_program_checks_the_same_arch() {
        let program = job_filter().unwrap();
        // The kernel runs the filter for every number when a job attaches it: a number
        // decided without arguments takes the header and one search path.
        let longest = (0..=600u32)
            .filter(|nr| !argument_rules().unwrap().contains_key(&i64::from(*nr)))
            .map(|nr| {
                run(
                    &program,
                    &Call {
                        nr,
                        arch: AUDIT_ARCH,
                        args: [0; 6],
                    },
                )
                .1
            })
            .max()
            .unwrap();
        assert!(longest <= 20, "{longest} instructions on the longest path");
        assert!(
            program.len() < reference_filter().len(),
            "{} instructions vs {}",
            program.len(),
            reference_filter().len()
        );
        // seccompiler's part starts with the same architecture check as the header.
        let arch_check = program
            .iter()
            .skip(6)
            .filter(|insn| insn.code == BPF_JMP_JEQ_K && insn.k == AUDIT_ARCH)
            .count();
        assert_eq!(arch_check, 1);
    }
}
