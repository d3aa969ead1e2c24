# nox Python zygote: a warm interpreter that forks one fresh process per job.
#
# Started by the executor as the sandbox user, with no capabilities but CAP_SETUID, CAP_SETGID
# and CAP_KILL (ambient, when the executor is root), no_new_privs, a clean environment and
# its own process group; it never runs job code itself. It listens on
# descriptor 3 (a SOCK_SEQPACKET socket to the executor) and holds the job seccomp program
# on descriptor 4. For each "run" message (only an id, with descriptors attached: stdio, the
# workspace, the code, the job's details, its Landlock ruleset, its workspace's view, its pids
# cgroup) it forks; the child puts itself in its own process group, takes the job's stdio,
# lowers its rlimits, enters the view (fchdir + chroot), takes its workspace's uid and gid, drops every capability, enters the workspace, closes every other descriptor (the control socket first of all),
# restricts itself with the job's Landlock ruleset and loads the seccomp program, reports
# "ok" on a pipe, and only then runs the code, in a fresh __main__, exactly as the cold
# path's bootstrap does. Jobs share nothing with each other but the zygote's read-only
# (copy-on-write) memory. The zygote waits for its children with WNOWAIT, kills each one's
# process group while the leader is still a zombie, then reaps and reports the exit.
#
# A fork and the first writes of a new process cost more than a millisecond here (the
# interpreter's pages are copied on write as the child touches them), so the zygote keeps
# one spare child forked ahead: it waits, in a process group of its own, knowing nothing
# of any job, until the zygote hands it a job's descriptors; then it goes on exactly as a
# child forked for that job would, and the zygote forks the next spare. A spare serves one
# job at most, and dies with the zygote (PR_SET_PDEATHSIG). It loads the job's seccomp
# filter while it waits, after its setpgid (which the filter denies).
#
# Joining a pids cgroup can wait a whole RCU grace period (10-20 ms) when no process has
# changed cgroups for a moment, so the spare joins one before its job exists: the executor
# reserves a cgroup ("reserve", the file that joins it attached) and the spare joins it while it
# waits. A job whose "run" says it may take the reservation (its process limit is the one the
# reserved cgroup holds) then runs in it, and its own cgroup becomes the next reservation:
# "reserved" says so at once, before any later job is handed on, so that the executor swaps
# the two in the same order; "lost" says that the reservation is gone (a spare died in it).
import ctypes, json, os, resource, select, signal, socket, sys
# Everything a job's process needs is imported here, once, and inherited by every fork.
# Not threading: its after-fork hook alone copies ~110 pages in every child; a job that
# uses threads imports it itself.
import atexit, builtins, gc, io, linecache, traceback, types

PR_SET_PDEATHSIG = 1
SYS_LANDLOCK_RESTRICT_SELF = int(sys.argv[1])
SYS_SECCOMP = int(sys.argv[2])
SYS_CAPSET = int(sys.argv[3])
SYS_SETNS = int(sys.argv[4])
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
SECCOMP_SET_MODE_FILTER = 1
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
CONTROL = socket.socket(fileno=3)
with open(4, "rb") as program_file:
    PROGRAM = program_file.read()
LIBC = ctypes.CDLL(None, use_errno=True)
# Looked up, and the capset arguments built, here once: in a job's process each first use
# would allocate (and copy pages) anew.
PRCTL, SYSCALL = LIBC.prctl, LIBC.syscall
CAP_HEADER = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
CAP_DATA = (ctypes.c_uint32 * 6)()


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


FPROG = SockFprog(len(PROGRAM) // 8, PROGRAM)
FPROG_REF = ctypes.byref(FPROG)
CHILDREN = set()
# The spare child: (pid, the zygote's end of its socket pair, whether it joined the
# reserved cgroup), or None.
SPARE = None
# The file that joins the reserved cgroup while no spare has joined it, or None.
RESERVED = None
ZYGOTE_PID = os.getpid()
# Report pipes of children still setting up: read end -> [job id, pid, bytes so far].
REPORTS = {}


def drop_capabilities():
    """Empty every capability set: the zygote keeps CAP_SETUID, CAP_SETGID and CAP_KILL
    (to give each job its workspace's uid and to kill job groups) and with views
    CAP_SYS_CHROOT; a job keeps none."""
    if PRCTL(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_CAP_AMBIENT_CLEAR_ALL")
    if SYSCALL(SYS_CAPSET, CAP_HEADER, CAP_DATA) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def read_whole(fd):
    """All of a memfd's bytes, without building file objects."""
    return os.pread(fd, os.fstat(fd).st_size, 0)


def send(message):
    CONTROL.send(json.dumps(message).encode())


def run_job(fds, report, joined=False, spare=False):
    """In the forked child (`spare`: a spare, already a group leader under the seccomp
    filter; `joined`: in the reserved cgroup). Never returns."""
    step = "process group"
    try:
        if not spare:
            os.setpgid(0, 0)
        step = "standard descriptors"
        stdin, stdout, stderr, workdir, code_fd, spec_fd = fds[:6]
        # The job's details arrive here, read only by this process: the zygote never
        # parses them, so no later fork inherits them in its memory.
        spec = json.loads(read_whole(spec_fd))
        extra = dict(zip(spec["extra"], fds[6:]))
        landlock = extra.get("landlock", -1)
        if "cgroup" in extra and not joined:
            # Into the job's pids cgroup ("0": this process) before anything can fork.
            step = "join the job's pids cgroup"
            os.write(extra["cgroup"], b"0")
            step = "standard descriptors"
        os.dup2(stdin, 0)
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        source = read_whole(code_fd)
        step = "rlimits"
        for resource_id, soft, hard in spec["rlimits"]:
            resource.setrlimit(resource_id, (soft, hard))
        if "view" in extra:
            # The workspace's view: its user namespace (owned by root: root may enter it,
            # and has every capability in it; so this process becomes root first, with its
            # CAP_SETUID), the network namespace in it, then its root: every path resolves
            # in it from here on (the workspace descriptor was opened through it). The
            # workspace's uid below leaves root again, with no capability anywhere.
            step = "enter the workspace's view"
            if spec["user"] is None:
                raise OSError(1, "a job in a view must change uid")
            if "userns" in extra:
                os.setresuid(0, 0, 0)
                for fd, kind in ((extra["userns"], CLONE_NEWUSER), (extra["netns"], CLONE_NEWNET)):
                    if SYSCALL(SYS_SETNS, fd, kind) != 0:
                        raise OSError(ctypes.get_errno(), "setns")
            os.fchdir(extra["view"])
            os.chroot(".")
        # The workspace's own uid (and gid), before entering it: it is 0700 to that uid.
        if spec["user"] is not None:
            uid, gid = spec["user"]
            step = "supplementary groups"
            os.setgroups([gid])
            step = "setresgid"
            os.setresgid(gid, gid, gid)
            step = "setresuid"
            os.setresuid(uid, uid, uid)
        step = "drop capabilities"
        drop_capabilities()
        step = "enter the workspace"
        os.fchdir(workdir)
        step = "close inherited descriptors"
        keep = {report, landlock}
        for fd in range(3, max(keep) + 1):
            if fd not in keep:
                try:
                    os.close(fd)
                except OSError:
                    pass
        os.closerange(max(keep) + 1, 1 << 16)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if landlock >= 0:
            step = "landlock_restrict_self"
            if SYSCALL(SYS_LANDLOCK_RESTRICT_SELF, landlock, 0) != 0:
                raise OSError(ctypes.get_errno(), "landlock_restrict_self")
            os.close(landlock)
        step = "seccomp filter"
        if not spare and SYSCALL(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, 0, FPROG_REF) != 0:
            raise OSError(ctypes.get_errno(), "seccomp")
        os.write(report, b"ok")
        os.close(report)
    except BaseException as error:
        errno = getattr(error, "errno", 0) or 0
        try:
            os.write(report, ("E%s\0%d" % (step, errno)).encode())
        finally:
            os._exit(127)
    os._exit(execute(spec, source))


def execute(spec, source):
    os.environ.clear()
    os.environ.update(spec["env"])
    path, name = spec["display"], spec["filename"]
    status = 0
    try:
        lines = source.decode("utf-8", "replace").splitlines(True)
        linecache.cache[path] = (len(source), None, lines, path)
        code = compile(source, path, "exec", dont_inherit=True)
        sys.argv[:] = [name]
        sys.path.insert(0, os.path.dirname(path))
        main = types.ModuleType("__main__")
        main.__dict__.update(__file__=path, __cached__=None, __builtins__=builtins)
        sys.modules["__main__"] = main
        exec(code, main.__dict__)
    except SystemExit as exit:
        status = exit_status(exit)
    except BaseException as error:
        error = error.with_traceback(error.__traceback__.tb_next)
        if sys.excepthook is sys.__excepthook__:
            # Python's own hook reads source lines back from the file, which another job
            # may have rewritten since: print them from this job's source (linecache).
            traceback.print_exception(type(error), error, error.__traceback__)
        else:
            sys.excepthook(type(error), error, error.__traceback__)
        status = 1
    try:
        threading = sys.modules.get("threading")
        if threading is not None:
            threading._shutdown()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    return status


def exit_status(exit):
    if exit.code is None:
        return 0
    if isinstance(exit.code, int):
        return exit.code & 0xFF
    print(exit.code, file=sys.stderr)
    return 1


def join(joining):
    """Into the cgroup that `joining` joins ("0": this process, which has one thread: on
    cgroup v1 `joining` is its `tasks` file)."""
    os.write(joining, b"0")
    os.close(joining)


def fork_spare():
    """Fork the spare child, which joins the reserved cgroup if there is one and waits for
    a job's descriptors."""
    global SPARE, RESERVED
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    reserved, RESERVED = RESERVED, None
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            os.setpgid(0, 0)
            if PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != ZYGOTE_PID:
                os._exit(0)
            if reserved is not None:
                join(reserved)
            # The job's filter, now rather than on the job's time (the kernel's load of it
            # is ~0.1 ms here): the spare's setpgid, the one call the filter denies, is done.
            if SYSCALL(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, 0, FPROG_REF) != 0:
                os._exit(0)
            while True:
                data, fds, _, _ = socket.recv_fds(theirs, 16, 16)
                if data == b"join":
                    join(fds[0])
                    continue
                break
            theirs.close()
        except BaseException:
            os._exit(0)
        if not fds:
            os._exit(0)
        run_job(fds[1:], fds[0], joined=data == b"run-joined", spare=True)
    theirs.close()
    if reserved is not None:
        os.close(reserved)
    SPARE = (pid, ours, reserved is not None)


def reserve(joining):
    """Keep the cgroup that `joining` joins for the spare: joined at once by a
    spare that waits outside any, else by the next one forked."""
    global SPARE, RESERVED
    if SPARE is not None and not SPARE[2]:
        try:
            socket.send_fds(SPARE[1], [b"join"], [joining])
            SPARE = (SPARE[0], SPARE[1], True)
            os.close(joining)
            return
        except OSError:
            pass
    if RESERVED is not None:
        os.close(RESERVED)
    RESERVED = joining


def hand_to_spare(report_write, fds, may_take_reserved):
    """(The spare's pid, whether the job runs in the reserved cgroup) once the spare has the
    job's descriptors; None without a spare."""
    global SPARE
    if SPARE is None or (SPARE[2] and not may_take_reserved):
        # A spare in the reserved cgroup waits for a job that may run there.
        return None
    pid, ours, reserved = SPARE
    SPARE = None
    try:
        socket.send_fds(ours, [b"run-joined" if reserved else b"run"], [report_write, *fds])
    except OSError:
        if reserved:
            send({"op": "lost"})
        return None
    finally:
        ours.close()
    return pid, reserved


def start(message, fds):
    """Hand the job to the spare child, or fork its process; its report ("ok" or the failed
    step) is read when it arrives (main loop), so the zygote goes on while it sets up."""
    report_read, report_write = os.pipe()
    cgroup = message.get("cgroup")
    handed = hand_to_spare(report_write, fds, message.get("reserve", False) and cgroup is not None)
    if handed is None:
        pid = os.fork()
        if pid == 0:
            os.close(report_read)
            run_job(fds, report_write)
    else:
        pid, reserved = handed
        if reserved:
            # Told now, before any later job is handed on: the executor swaps the two
            # cgroups in this order. The job's own cgroup is the next reservation.
            send({"op": "reserved", "id": message["id"]})
            reserve(os.dup(fds[cgroup]))
    os.close(report_write)
    for fd in fds:
        os.close(fd)
    CHILDREN.add(pid)
    REPORTS[report_read] = [message["id"], pid, b""]


def read_report(fd, block=False):
    """Take what the child wrote on its report pipe; at end of file, tell the executor."""
    entry = REPORTS[fd]
    while True:
        chunk = os.read(fd, 512)
        if chunk:
            entry[2] += chunk
            if block:
                continue
            return
        break
    del REPORTS[fd]
    os.close(fd)
    job_id, pid, answer = entry
    if answer == b"ok":
        send({"op": "started", "id": job_id, "pid": pid})
    else:
        text = answer[1:].decode("utf-8", "replace") if answer[:1] == b"E" else "\0"
        step, _, errno = text.partition("\0")
        send({"op": "failed", "id": job_id, "pid": pid, "step": step or "exec",
              "errno": int(errno or 0)})


def reap():
    global SPARE
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None:
            return
        pid = info.si_pid
        # Its report first: the executor learns of a job's start before its exit. The
        # child is gone, so the pipe is at its end and this cannot block.
        for fd, entry in list(REPORTS.items()):
            if entry[1] == pid:
                read_report(fd, block=True)
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        _, status, usage = os.wait4(pid, 0)
        if pid not in CHILDREN:
            # A spare that never had a job: nothing to report, but the reservation it
            # joined is gone.
            if SPARE is not None and SPARE[0] == pid:
                if SPARE[2]:
                    send({"op": "lost"})
                SPARE[1].close()
                SPARE = None
            continue
        CHILDREN.discard(pid)
        send({"op": "exit", "pid": pid, "status": status,
              "user_ms": int(usage.ru_utime * 1000), "system_ms": int(usage.ru_stime * 1000),
              "max_rss_kib": usage.ru_maxrss})


# Compiled once before the first fork (never run): a bit of every kind of statement.
WARM_UP = """import os, sys
from os import path as p
def f(x, *a, k=1, **kw):
    global G
    return [i * 2 for i in range(x) if i % 2] + list(a) + [{i: j for i, j in kw.items()}]
class C(object):
    y: int = 0
    def m(self):
        return f"{self.y!r:>4} {p}"
async def g():
    async with x as y:
        await y
try:
    print(f(3), C().m(), {1: 2}, {3}, (4,), b"5", 6.0, None, True, -7 ** 2, sep=" ", end="")
except (ValueError, KeyError) as e:
    raise RuntimeError("x") from e
else:
    del f
finally:
    pass
with open(os.devnull) as h:
    while False:
        break
    for i in range(2):
        continue
    assert h, "y"
lambda: (yield)
z = 1 if sys else 2
z += 1
"""


def main():
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    # The compiler and the JSON decoder set up what they keep between calls on first use:
    # done here once, not in every job's process (compiling print(1) in a fresh fork
    # copied ~180 pages, ~15 after this). Bytes, as a job's source arrives.
    compile(WARM_UP.encode(), "<warm-up>", "exec", dont_inherit=True)
    json.loads('{"env": {"A": "b"}, "rlimits": [[1, 2, 3]], "user": null, "x": 1.5}')
    # Everything made so far goes to the permanent generation: the collector in a job's
    # process never walks (and so never copies) those pages.
    gc.collect()
    gc.freeze()
    send({"op": "ready", "pid": os.getpid()})
    while True:
        watched = [CONTROL, wake_read, *REPORTS]
        if SPARE is None and not select.select(watched, [], [], 0)[0]:
            # Nothing to do this instant: time to fork the next spare.
            fork_spare()
        ready, _, _ = select.select(watched, [], [])
        for fd in ready:
            if fd in REPORTS:
                read_report(fd)
        if wake_read in ready:
            os.read(wake_read, 4096)
            reap()
        if CONTROL in ready:
            data, fds, _, _ = socket.recv_fds(CONTROL, 1 << 16, 16)
            if not data:
                for pid in CHILDREN:
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except OSError:
                        pass
                os._exit(0)
            message = json.loads(data)
            if message["op"] == "run":
                start(message, fds)
            elif message["op"] == "reserve":
                reserve(fds[0])
            elif message["op"] == "kill":
                for fd in fds:
                    os.close(fd)
                if message["pid"] in CHILDREN:
                    try:
                        os.killpg(message["pid"], signal.SIGKILL)
                    except OSError:
                        pass
            reap()


main()
