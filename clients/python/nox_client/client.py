"""The nox HTTP API from Python, with the standard library only.

    from nox_client import NoxClient
    nox = NoxClient("http://127.0.0.1:8080", "TOKEN")
    result = nox.run_py("print(6 * 7)")
    assert result.stdout == "42\\n" and result.ok

Every 4xx/5xx reply becomes a `NoxError` (or one of its subclasses) carrying the reply's
`error` code and `message`. A job that fails (non-zero exit, signal, timeout) is not an
error: it is a `RunResult` with that outcome.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Dict, Iterator, List, Optional, Union


class NoxError(Exception):
    """A request nox refused or could not serve.

    `status` is the HTTP status (None when the server could not be reached), `error` the
    stable code of the uniform error body (`unauthorized`, `busy`, ...), `message` its text,
    `retry_after` the seconds a 503 asks to wait (or None).
    """

    def __init__(
        self,
        status: Optional[int],
        error: str,
        message: str,
        body: Optional[Dict[str, Any]] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(f"{status or '-'} {error}: {message}")
        self.status = status
        self.error = error
        self.message = message
        self.body = body or {}
        self.retry_after = retry_after


class BadRequest(NoxError):
    """400 (bad_request, invalid_json, invalid_path, forbidden_command), 415, 431."""


class AuthError(NoxError):
    """401: the token is missing or wrong."""


class NotFoundError(NoxError):
    """404: no such file (or endpoint)."""


class PayloadTooLarge(NoxError):
    """413: the upload, the code or the stdin is over a limit."""


class Busy(NoxError):
    """503 busy: the job queue is full; retry after `retry_after` seconds."""


class ExecutorUnavailable(NoxError):
    """503 executor_unavailable or sandbox_unavailable, or 502: jobs cannot run now."""


def _error_class(status: Optional[int], code: str) -> type:
    if status == 401:
        return AuthError
    if status == 404:
        return NotFoundError
    if status == 413:
        return PayloadTooLarge
    if status in (400, 415, 431):
        return BadRequest
    if status == 503 and code == "busy":
        return Busy
    if status in (502, 503):
        return ExecutorUnavailable
    return NoxError


@dataclass
class RunResult:
    """The outcome of `/run_py` or `/run_sh`."""

    returncode: int
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False
    signal: Optional[int] = None
    limit_hit: Optional[str] = None
    duration_ms: int = 0
    queued_ms: int = 0
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    job_id: str = ""
    usage: Dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """The job exited with status 0."""
        return self.returncode == 0 and not self.timed_out

    @classmethod
    def from_json(cls, body: Dict[str, Any]) -> "RunResult":
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in body.items() if key in known})


Body = Union[bytes, str, BinaryIO]


class NoxClient:
    """A client for one nox service and one token (one workspace)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080",
        token: Optional[str] = None,
        timeout: float = 300.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    @classmethod
    def from_env(cls) -> "NoxClient":
        """`NOX_URL` (default http://127.0.0.1:8080) and `NOX_API_TOKEN`."""
        return cls(
            os.environ.get("NOX_URL", "http://127.0.0.1:8080"),
            os.environ.get("NOX_API_TOKEN"),
        )

    def __repr__(self) -> str:
        return f"NoxClient({self.base_url!r})"

    # -- plumbing ---------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        body: Optional[Any] = None,
        headers: Optional[Dict[str, str]] = None,
        timeout: Optional[float] = None,
    ):
        request = urllib.request.Request(
            self.base_url + path, data=body, method=method, headers=dict(headers or {})
        )
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            return urllib.request.urlopen(request, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as reply:
            raise self._error(reply.code, reply.read(), reply.headers) from None
        except urllib.error.URLError as failure:
            raise NoxError(
                None, "connection_failed", f"cannot reach {self.base_url}: {failure.reason}"
            ) from None

    @staticmethod
    def _error(status: int, raw: bytes, headers: Any) -> NoxError:
        try:
            body = json.loads(raw.decode("utf-8", "replace"))
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        code = str(body.get("error") or "error")
        message = str(body.get("message") or body.get("detail") or raw[:200].decode("utf-8", "replace"))
        retry_after = None
        value = headers.get("Retry-After") if headers is not None else None
        if value:
            try:
                retry_after = float(value)
            except ValueError:
                pass
        return _error_class(status, code)(status, code, message, body, retry_after)

    def _json(self, method: str, path: str, payload: Optional[Dict[str, Any]] = None, **kwargs) -> Any:
        body = None
        headers = {"Accept": "application/json"}
        if payload is not None:
            body = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        with self._request(method, path, body, headers, **kwargs) as reply:
            return json.loads(reply.read().decode("utf-8"))

    @staticmethod
    def _file_path(path: str) -> str:
        return "/files/" + urllib.parse.quote(path.lstrip("/"), safe="/")

    @staticmethod
    def _job(fields: Dict[str, Any], stdin: Optional[str], timeout: Optional[float]) -> Dict[str, Any]:
        if stdin is not None:
            fields["stdin"] = stdin
        if timeout is not None:
            fields["timeout_s"] = timeout
        return fields

    def _http_timeout(self, timeout: Optional[float]) -> float:
        # The reply comes when the job ends: wait at least the job's own timeout.
        return max(self.timeout, (timeout or 0) + 30)

    # -- the API ----------------------------------------------------------------------------

    def health(self) -> Dict[str, Any]:
        """`GET /health`. Raises `ExecutorUnavailable` when the executor cannot be reached."""
        return self._json("GET", "/health")

    def put(self, path: str, data: Body) -> Dict[str, Any]:
        """Write `data` (bytes, str, or a binary file object) to `path` in the workspace.
        Returns `{"saved": path, "bytes": n}`."""
        headers = {"Content-Type": "application/octet-stream"}
        if isinstance(data, str):
            data = data.encode("utf-8")
        if not isinstance(data, (bytes, bytearray)):
            try:
                size = os.fstat(data.fileno()).st_size - data.tell()
                headers["Content-Length"] = str(size)
            except (AttributeError, OSError, ValueError):
                data = data.read()
        with self._request("PUT", self._file_path(path), data, headers) as reply:
            return json.loads(reply.read().decode("utf-8"))

    def get(self, path: str) -> bytes:
        """The bytes of `path` in the workspace."""
        with self._request("GET", self._file_path(path)) as reply:
            return reply.read()

    def list(self, prefix: str = "") -> List[Dict[str, Any]]:
        """Entries under `prefix` (recursively): `{"path", "type", "size", "modified_ms"}`."""
        query = "?" + urllib.parse.urlencode({"prefix": prefix}) if prefix else ""
        return self._json("GET", "/files" + query)["files"]

    def delete(self, path: str) -> Dict[str, Any]:
        """Delete a file or an empty directory. Returns `{"deleted": path}`."""
        return self._json("DELETE", self._file_path(path))

    def run_py(
        self,
        code: str,
        filename: str = "run.py",
        stdin: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> RunResult:
        """Run Python code (saved as `filename` in the workspace) and wait for the end."""
        payload = self._job({"code": code, "filename": filename}, stdin, timeout)
        return RunResult.from_json(
            self._json("POST", "/run_py", payload, timeout=self._http_timeout(timeout))
        )

    def run_sh(self, cmd: str, stdin: Optional[str] = None, timeout: Optional[float] = None) -> RunResult:
        """Run a shell command line (`sh -c`) and wait for the end."""
        payload = self._job({"cmd": cmd}, stdin, timeout)
        return RunResult.from_json(
            self._json("POST", "/run_sh", payload, timeout=self._http_timeout(timeout))
        )

    def stream_py(
        self,
        code: str,
        filename: str = "run.py",
        stdin: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> Iterator[Dict[str, Any]]:
        """Run Python code, yielding events as they arrive: `{"type": "started", "job_id"}`,
        `{"type": "stdout"|"stderr", "data"}`..., then `{"type": "finished", ...}`."""
        payload = self._job({"code": code, "filename": filename}, stdin, timeout)
        return self._stream("/run_py", payload, timeout)

    def stream_sh(
        self, cmd: str, stdin: Optional[str] = None, timeout: Optional[float] = None
    ) -> Iterator[Dict[str, Any]]:
        """Run a shell command line, yielding events as they arrive (see `stream_py`)."""
        return self._stream("/run_sh", self._job({"cmd": cmd}, stdin, timeout), timeout)

    def _stream(self, path: str, payload: Dict[str, Any], timeout: Optional[float]) -> Iterator[Dict[str, Any]]:
        headers = {"Accept": "application/x-ndjson", "Content-Type": "application/json"}
        body = json.dumps(payload).encode()
        with self._request("POST", path, body, headers, timeout=self._http_timeout(timeout)) as reply:
            for line in reply:
                if not line.strip():
                    continue
                event = json.loads(line.decode("utf-8"))
                if event.get("type") == "error":
                    raise NoxError(200, event.get("error", "error"), event.get("message", ""), event)
                yield event
                if event.get("type") == "finished":
                    return
