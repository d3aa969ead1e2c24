#!/usr/bin/env python3
"""A tour of nox with nox_client: health, upload a script, run it, run_py, run_sh, stream,
list, download, delete. The server comes from NOX_URL (default http://127.0.0.1:8080) and
NOX_API_TOKEN (`./dev.sh` prints one).

    NOX_URL=http://127.0.0.1:8080 NOX_API_TOKEN=... python3 clients/python/examples/demo.py
"""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from nox_client import NoxClient, NoxError  # noqa: E402

SCRIPT = """\
import sys
name = sys.stdin.read().strip() or "world"
print(f"hello, {name}")
"""


def main() -> int:
    nox = NoxClient.from_env()
    summary = []

    def step(name, detail):
        summary.append((name, detail))
        print(f"[{name}] {detail}", flush=True)

    try:
        health = nox.health()
        executor = health["executor"]
        active = sum(1 for layer in executor["layers"].values() if layer["active"])
        step("health", f"{health['status']}, {executor['software']}, {active} layers active")

        saved = nox.put("demo/hello.py", SCRIPT)
        step("upload", f"{saved['saved']} ({saved['bytes']} bytes)")

        ran = nox.run_sh("python3 demo/hello.py", stdin="nox\n")
        step("run uploaded", f"exit {ran.returncode}: {ran.stdout.strip()}")

        py = nox.run_py("import platform\nprint(platform.python_version())")
        step("run_py", f"exit {py.returncode}: python {py.stdout.strip()} in {py.duration_ms} ms")

        sh = nox.run_sh("echo $((6 * 7)); ls demo")
        step("run_sh", f"exit {sh.returncode}: {' '.join(sh.stdout.split())}")

        start = time.monotonic()
        lines = []
        for event in nox.stream_sh("for i in 1 2 3; do echo tick $i; sleep 0.3; done"):
            if event["type"] == "stdout":
                lines.append(f"{event['data'].strip()}@{time.monotonic() - start:.1f}s")
        step("stream", ", ".join(lines))

        files = nox.list("demo")
        step("list", ", ".join(f"{entry['path']} ({entry['size']} B)" for entry in files))

        data = nox.get("demo/hello.py")
        step("download", f"{len(data)} bytes, same as uploaded: {data.decode() == SCRIPT}")

        nox.delete("demo/hello.py")
        nox.delete("demo")
        step("delete", "demo/hello.py and demo/ removed")
    except NoxError as error:
        print(f"demo failed: {error}", file=sys.stderr)
        return 1

    print("\nsummary:")
    for name, detail in summary:
        print(f"  {name:<13} {detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
