"""Harness for benchmarking an HTTP server started as a subprocess, loaded from ANOTHER process.

``start_server`` launches a server command in its own process group, waits for its readiness URL to answer 200 and
stops the whole group afterwards; ``measure`` runs ``python -m recsys.loadgen`` in a separate process against a URL,
so the server and the load generator never share an interpreter (or a GIL); ``flatten`` turns the per-concurrency
summaries into the flat dotted metrics of ``recsys.bench``. ``floor_command`` serves ``serving.trivial`` — the
framework floor to compare a real service against.

    with start_server(floor_command(port), port) as server:
        metrics = flatten("floor", measure(server.url("/v1/recommend"), bodies, (1, 10), 5.0, 1.0))
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STOP_GRACE_S = 10.0
POLL_INTERVAL_S = 0.1
LOG_TAIL_LINES = 40
LOADGEN_STARTUP_SLACK_S = 60.0  # interpreter + aiohttp import + teardown, on a busy machine
LOADGEN_REQUEST_TIMEOUT_S = 5.0


class ServerStartError(RuntimeError):
    """The server process exited or did not become ready; the message holds the command, cause and log tail."""


class LoadgenError(RuntimeError):
    """The load-generator subprocess failed; the message holds its exit code and stderr tail."""


@dataclass
class ServerProcess:
    """A running server started by ``start_server``: its command, port, process and log file."""

    cmd: list[str]
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """Absolute URL of ``path`` (which must start with ``/``) on this server."""
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/', got {path!r}")
        return self.base_url + path

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server's stdout/stderr log."""
        return _log_tail(self.log_path, lines)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<could not read {path}: {exc}>"


def _answers_200(url: str, timeout_s: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we may not signal still exists
        return True
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def stop_process_group(proc: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the process group led by ``proc``; SIGKILL it if the leader or any member outlives ``grace_s``."""
    pgid = proc.pid  # start_new_session=True: the leader's pid is the group id
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is None or _group_alive(pgid):
        _signal_group(pgid, signal.SIGKILL)
        proc.wait(timeout=grace_s)


def _wait_ready(server: ServerProcess, ready_url: str, ready_timeout_s: float) -> None:
    deadline = time.monotonic() + ready_timeout_s
    while True:
        code = server.proc.poll()
        if code is not None:
            raise ServerStartError(f"server {server.cmd} exited with code {code} before {ready_url} answered 200. "
                                   f"Log tail ({server.log_path}):\n{server.log_tail()}")
        if _answers_200(ready_url, timeout_s=min(2.0, max(deadline - time.monotonic(), 0.1))):
            return
        if time.monotonic() >= deadline:
            raise ServerStartError(f"server {server.cmd} did not answer 200 on {ready_url} within "
                                   f"{ready_timeout_s:g}s. Log tail ({server.log_path}):\n{server.log_tail()}")
        time.sleep(POLL_INTERVAL_S)


@contextmanager
def start_server(cmd: list[str], port: int, ready_path: str = "/readyz", ready_timeout_s: float = 120,
                 env: dict[str, str] | None = None, log_path: Path | None = None,
                 cwd: Path | None = None) -> Iterator[ServerProcess]:
    """Run ``cmd`` (which must serve on 127.0.0.1:``port``) until the ``with`` block ends.

    The process gets its own process group; stdout and stderr go to ``log_path`` (a temporary file, deleted on exit,
    when ``None``). ``env`` entries are added to (and override) this process's environment. Ready means
    ``GET http://127.0.0.1:{port}{ready_path}`` answered 200; ``ServerStartError`` (with the log tail) is raised if the
    process exits or ``ready_timeout_s`` passes first. On exit the whole group gets SIGTERM, then SIGKILL after 10 s.
    """
    if not cmd or not all(isinstance(part, str) for part in cmd):
        raise ValueError(f"cmd must be a non-empty list of strings, got {cmd!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"port must be an int in 1..65535, got {port!r}")
    if not ready_path.startswith("/"):
        raise ValueError(f"ready_path must start with '/', got {ready_path!r}")
    if not (math.isfinite(ready_timeout_s) and ready_timeout_s > 0):
        raise ValueError(f"ready_timeout_s must be a positive number of seconds, got {ready_timeout_s!r}")

    own_log = log_path is None
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="server-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    else:
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with log_path.open("wb") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)
        server = ServerProcess(cmd=list(cmd), port=port, proc=proc, log_path=log_path)
        try:
            _wait_ready(server, server.url(ready_path), ready_timeout_s)
            yield server
        finally:
            stop_process_group(proc)
    finally:
        if own_log:
            log_path.unlink(missing_ok=True)


def floor_command(port: int) -> list[str]:
    """Command serving the framework floor (``serving.trivial``) with uvicorn on 127.0.0.1:``port``."""
    return [sys.executable, "-m", "uvicorn", "serving.trivial:app", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "--no-access-log"]


def measure(url: str, bodies: list[dict], concurrencies: Sequence[int], duration_s: float,
            warmup_s: float) -> dict[str, dict]:
    """``{"c<N>": summary}`` of closed-loop load on ``url`` at each concurrency, from a SEPARATE process.

    Runs ``python -m recsys.loadgen`` (same interpreter) with the bodies in a temporary JSONL file and reads its
    ``--out`` file; each summary also holds that level's ``status_counts``. Raises ``LoadgenError`` if the
    subprocess fails or overruns its time bound.
    """
    if not bodies:
        raise ValueError("bodies must hold at least one JSON object, got an empty list")
    levels = list(concurrencies)
    if not levels or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in levels):
        raise ValueError(f"concurrencies must be a non-empty sequence of positive ints, got {concurrencies!r}")
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration_s must be a positive number of seconds, got {duration_s!r}")
    if not (math.isfinite(warmup_s) and warmup_s >= 0):
        raise ValueError(f"warmup_s must be a non-negative number of seconds, got {warmup_s!r}")

    with tempfile.TemporaryDirectory(prefix="loadgen-") as tmp:
        bodies_path = Path(tmp) / "bodies.jsonl"
        out_path = Path(tmp) / "result.json"
        bodies_path.write_text("".join(json.dumps(body, separators=(",", ":")) + "\n" for body in bodies))
        cmd = [sys.executable, "-m", "recsys.loadgen", "--url", url, "--bodies", str(bodies_path),
               "--concurrency", ",".join(str(c) for c in levels), "--duration", repr(float(duration_s)),
               "--warmup", repr(float(warmup_s)), "--timeout", repr(LOADGEN_REQUEST_TIMEOUT_S),
               "--out", str(out_path)]
        bound_s = len(levels) * (warmup_s + duration_s + LOADGEN_REQUEST_TIMEOUT_S) + LOADGEN_STARTUP_SLACK_S
        try:
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=bound_s)
        except subprocess.TimeoutExpired:
            raise LoadgenError(f"load generator did not finish within {bound_s:g}s: {cmd}") from None
        if done.returncode != 0:
            tail = "\n".join(done.stderr.splitlines()[-LOG_TAIL_LINES:])
            raise LoadgenError(f"load generator exited with code {done.returncode}: {cmd}\nstderr tail:\n{tail}")
        try:
            results = json.loads(out_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise LoadgenError(f"load generator wrote no readable result to {out_path}: {exc}") from None
    return results


def flatten(prefix: str, results: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Flat dotted metrics of ``measure``'s result: ``c50.p99_ms`` (empty prefix) or ``floor.c50.qps``.

    Numeric summary fields become floats; the ``status_counts`` breakdown is left out (``errors`` counts them).
    """
    head = f"{prefix}." if prefix else ""
    out: dict[str, float] = {}
    for level, summary in results.items():
        if not isinstance(summary, Mapping):
            raise ValueError(f"results[{level!r}] must be a summary mapping, got {type(summary).__name__}")
        for key, value in summary.items():
            if key == "status_counts":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"results[{level!r}][{key!r}] must be a number, got {value!r}")
            out[f"{head}{level}.{key}"] = float(value)
    return out
