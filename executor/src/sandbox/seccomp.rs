//! The job seccomp filter: what a job may not ask the kernel for.
//!
//! The filter is a deny list over the native architecture, built with `seccompiler` and
//! compiled once at start; each job loads the prebuilt program between fork and exec.
//! It is one layer of several: Landlock decides what files a job reaches, the sandbox uid
//! and `no_new_privs` what it may become, the unit's `SystemCallArchitectures=native` and
//! `PrivateNetwork=` what the whole executor can do. This layer removes the kernel surfaces
//! a job has no use for and that sandbox escapes and cross-job channels are made of.
//!
//! Two things are decided before `seccompiler`'s program runs, by a short hand-written
//! prefix (BPF jumps are relative and forward-only, so prepending cannot break them):
//! - any x32 system call (number with bit 30 set) kills the process: on x86_64 the x32 ABI
//!   is a second table of the same calls that a number-based deny list would not see;
//! - `clone3` answers `ENOSYS`, so libc falls back to `clone`, whose flags a filter can
//!   read (clone3 passes them in memory, out of a filter's reach).
//!
//! Everything else denied answers `EPERM`, so a job sees an ordinary error it can report.
//! A foreign architecture (i386 `int 0x80`) kills the process (seccompiler's prologue).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

use super::SandboxError;

// Classic BPF opcodes (linux/bpf_common.h), for the prefix.
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS (0x20)
const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JMP_JSET_K: u16 = 0x05 | 0x40; // BPF_JMP | BPF_JSET | BPF_K
const BPF_RET_K: u16 = 0x06;
/// `offsetof(struct seccomp_data, nr)`.
const SECCOMP_DATA_NR: u32 = 0;
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
        (libc::SYS_chroot, "changing the root"),
        (libc::SYS_move_mount, "new mount API"),
        (libc::SYS_open_tree, "new mount API"),
        (libc::SYS_fsopen, "new mount API"),
        (libc::SYS_fsmount, "new mount API"),
        (libc::SYS_fsconfig, "new mount API"),
        (libc::SYS_fspick, "new mount API"),
        (libc::SYS_mount_setattr, "new mount API"),
        (libc::SYS_unshare, "creating namespaces"),
        (libc::SYS_setns, "entering namespaces"),
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

/// The deny rules as data: syscall number → rules (any rule matching denies the call;
/// an empty list denies it unconditionally).
pub fn job_rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, SandboxError> {
    let build = || -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for (number, _why) in denied_syscalls() {
            rules.insert(number, Vec::new());
        }
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
        // clone with any namespace flag (arg 0 is the flags on x86_64 and aarch64).
        let mut clone_rules = Vec::new();
        for flag in CLONE_NAMESPACE_FLAGS {
            let has_flag = condition(0, SeccompCmpOp::MaskedEq(flag), flag)?;
            clone_rules.push(SeccompRule::new(vec![has_flag])?);
        }
        rules.insert(libc::SYS_clone, clone_rules);
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

/// The hand-written prefix described in the module docs.
fn prefix() -> Vec<sock_filter> {
    let stmt = |code, k| sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code, k, jt, jf| sock_filter { code, jt, jf, k };
    #[allow(clippy::cast_sign_loss)]
    let clone3 = libc::SYS_clone3 as u32;
    #[allow(clippy::cast_sign_loss)]
    let enosys = libc::ENOSYS as u32;
    vec![
        stmt(BPF_LD_W_ABS, SECCOMP_DATA_NR),
        jump(BPF_JMP_JSET_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        jump(BPF_JMP_JEQ_K, clone3, 0, 1),
        stmt(
            BPF_RET_K,
            libc::SECCOMP_RET_ERRNO | (enosys & libc::SECCOMP_RET_DATA),
        ),
    ]
}

/// Compile the job filter for this machine's architecture.
pub fn job_filter() -> Result<BpfProgram, SandboxError> {
    let filter = SeccompFilter::new(
        job_rules()?,
        SeccompAction::Allow,                             // not listed: allowed
        SeccompAction::Errno(libc::EPERM.unsigned_abs()), // listed and matched: EPERM
        target_arch()?,
    )
    .map_err(SandboxError::SeccompRules)?;
    let body: BpfProgram = filter.try_into().map_err(SandboxError::SeccompCompile)?;
    let mut program = prefix();
    program.extend(body);
    if program.len() > usize::from(u16::MAX) {
        return Err(SandboxError::SeccompTooLong(program.len()));
    }
    Ok(program)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            libc::SYS_setns,
            libc::SYS_setsid,
            libc::SYS_setpgid,
            libc::SYS_shmget,
            libc::SYS_msgget,
            libc::SYS_semget,
            libc::SYS_mq_open,
        ] {
            assert_eq!(
                rules.get(&number).map(Vec::len),
                Some(0),
                "syscall {number}"
            );
        }
    }

    #[test]
    fn sockets_clone_ioctl_and_personality_are_denied_only_with_their_arguments() {
        let rules = job_rules().unwrap();
        assert_eq!(rules[&libc::SYS_socket].len(), 1);
        assert_eq!(rules[&libc::SYS_socketpair].len(), 1);
        assert_eq!(rules[&libc::SYS_clone].len(), CLONE_NAMESPACE_FLAGS.len());
        assert_eq!(rules[&libc::SYS_ioctl].len(), 2);
        assert_eq!(rules[&libc::SYS_personality].len(), 1);
        assert!(!rules.contains_key(&libc::SYS_execve));
        assert!(
            !rules.contains_key(&libc::SYS_clone3),
            "clone3 is handled by the prefix"
        );
    }

    #[test]
    fn the_program_compiles_for_this_machine_and_starts_with_the_prefix() {
        let program = job_filter().unwrap();
        assert_eq!(program[..5], prefix()[..]);
        assert!(program.len() > 100);
    }
}
