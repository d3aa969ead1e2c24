"""nox_client against a running nox, given by NOX_URL and NOX_API_TOKEN.

`cargo test -p noxctl --test python_client` starts one (the e2e harness) and runs this file;
by hand: NOX_URL=... NOX_API_TOKEN=... python3 -m unittest discover -s clients/python/tests
"""

import io
import os
import sys
import time
import unittest
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from nox_client import (  # noqa: E402
    AuthError,
    BadRequest,
    NotFoundError,
    NoxClient,
    NoxError,
    PayloadTooLarge,
    RunResult,
)

URL = os.environ.get("NOX_URL")
TOKEN = os.environ.get("NOX_API_TOKEN")


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@unittest.skipUnless(URL and TOKEN, "NOX_URL and NOX_API_TOKEN name no running nox")
class ClientAgainstTheService(unittest.TestCase):
    def setUp(self):
        self.nox = NoxClient(URL, TOKEN)

    def test_health_says_ok_and_lists_the_layers(self):
        health = self.nox.health()
        self.assertEqual(health["status"], "ok")
        self.assertIn("seccomp", health["executor"]["layers"])

    def test_run_py_returns_output_and_exit_status(self):
        result = self.nox.run_py("import sys\nprint(6 * 7)\nprint('warn', file=sys.stderr)\nsys.exit(3)")
        self.assertIsInstance(result, RunResult)
        self.assertEqual((result.stdout, result.stderr, result.returncode), ("42\n", "warn\n", 3))
        self.assertFalse(result.ok)
        self.assertTrue(result.job_id)

    def test_run_sh_forwards_stdin(self):
        result = self.nox.run_sh("tr a-z A-Z", stdin="shout\n")
        self.assertTrue(result.ok)
        self.assertEqual(result.stdout, "SHOUT\n")

    def test_a_timeout_is_an_outcome_not_an_error(self):
        result = self.nox.run_sh("sleep 5", timeout=0.5)
        self.assertTrue(result.timed_out)
        self.assertEqual(result.limit_hit, "timeout")
        self.assertFalse(result.ok)

    def test_streamed_events_arrive_while_the_job_runs(self):
        code = "import time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('second', flush=True)"
        start = time.monotonic()
        arrivals = []
        for event in self.nox.stream_py(code):
            arrivals.append((time.monotonic() - start, event))
        types = [event["type"] for _, event in arrivals]
        self.assertEqual(types[0], "started")
        self.assertEqual(types[-1], "finished")
        first = next(at for at, event in arrivals if event.get("data", "").startswith("first"))
        finished = arrivals[-1][0]
        self.assertGreater(finished - first, 1.0, "'first' came before the job slept")
        self.assertEqual(arrivals[-1][1]["returncode"], 0)

    def test_stream_sh_splits_stdout_and_stderr(self):
        events = list(self.nox.stream_sh("echo out; echo err >&2; exit 4"))
        out = "".join(e["data"] for e in events if e["type"] == "stdout")
        err = "".join(e["data"] for e in events if e["type"] == "stderr")
        self.assertEqual((out, err), ("out\n", "err\n"))
        self.assertEqual(events[-1]["returncode"], 4)

    def test_files_go_up_come_back_are_listed_and_deleted(self):
        folder = unique("py")
        self.assertEqual(self.nox.put(f"{folder}/a.bin", b"\x00\x01binary")["bytes"], 8)
        self.nox.put(f"{folder}/b.txt", "text é")
        self.nox.put(f"{folder}/c.dat", io.BytesIO(b"from a file object"))
        self.assertEqual(self.nox.get(f"{folder}/a.bin"), b"\x00\x01binary")
        self.assertEqual(self.nox.get(f"{folder}/b.txt").decode(), "text é")
        paths = sorted(entry["path"] for entry in self.nox.list(folder) if entry["type"] == "file")
        self.assertEqual(paths, [f"{folder}/a.bin", f"{folder}/b.txt", f"{folder}/c.dat"])
        for name in ("a.bin", "b.txt", "c.dat"):
            self.assertEqual(self.nox.delete(f"{folder}/{name}"), {"deleted": f"{folder}/{name}"})
        with self.assertRaises(NotFoundError) as caught:
            self.nox.get(f"{folder}/a.bin")
        self.assertEqual((caught.exception.status, caught.exception.error), (404, "not_found"))

    def test_a_job_sees_uploaded_files(self):
        name = unique("script") + ".py"
        self.nox.put(name, "print('uploaded ran')\n")
        self.assertEqual(self.nox.run_sh(f"python3 {name}").stdout, "uploaded ran\n")
        self.nox.delete(name)

    def test_a_wrong_token_raises_auth_error(self):
        with self.assertRaises(AuthError) as caught:
            NoxClient(URL, "wrong-token").list()
        self.assertEqual(caught.exception.error, "unauthorized")
        self.assertEqual(caught.exception.status, 401)

    def test_bad_input_raises_bad_request_with_its_code(self):
        with self.assertRaises(BadRequest) as caught:
            self.nox.get("../etc/passwd")
        self.assertEqual(caught.exception.error, "invalid_path")
        with self.assertRaises(BadRequest) as caught:
            self.nox.run_sh("reboot")
        self.assertEqual(caught.exception.error, "forbidden_command")
        self.assertIn("reboot", caught.exception.message)

    def test_oversized_code_raises_payload_too_large(self):
        with self.assertRaises(PayloadTooLarge) as caught:
            self.nox.run_py("#" * (3 * 1024 * 1024 + 10))
        self.assertEqual(caught.exception.error, "payload_too_large")

    def test_an_unreachable_server_raises_nox_error(self):
        with self.assertRaises(NoxError) as caught:
            NoxClient("http://127.0.0.1:9", TOKEN, timeout=5).health()
        self.assertIsNone(caught.exception.status)
        self.assertEqual(caught.exception.error, "connection_failed")


if __name__ == "__main__":
    unittest.main()
