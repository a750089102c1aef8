"""The service on a real Redis that dies mid-load: no 5xx, fallbacks counted, recovery when it is back.

The test owns its redis-server (a private port) so that stopping it disturbs no other test.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from recsys.store.redis_store import RedisStore
from recsys.stream.embedded import replay_into_store
from serving.app import create_app
from tests.serving.conftest import SERVE_TIME
from tests.serving.test_app import reload_under_load, wait_ready

pytestmark = [pytest.mark.redis, pytest.mark.usefixtures("torch_one_thread")]
NAMESPACE = "srv:"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    def __init__(self, port: int, workdir: Path) -> None:
        self.port, self.workdir = port, workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (`make redis` installs Debian's redis-server)")
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"private redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def fill(self, data_dir: Path) -> None:
        store = RedisStore(self.url, namespace=NAMESPACE)
        try:
            replay_into_store(data_dir, store, until=SERVE_TIME)
        finally:
            store.close()


@pytest.fixture
def private_redis(tmp_path: Path, tiny_dir: Path) -> Iterator[PrivateRedis]:
    r = PrivateRedis(_free_port(), tmp_path)
    r.start()
    r.fill(tiny_dir)
    yield r
    r.stop()


def _fallback_count(client: TestClient) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('recsys_fallbacks_total{reason="store_unavailable"}'):
            return float(line.split()[-1])
    return 0.0


def test_redis_stopped_mid_load_degrades_without_5xx(private_redis: PrivateRedis, serve_config, tiny_dir) -> None:
    cfg = serve_config.model_copy(update={
        "store": "redis", "redis_url": private_redis.url, "redis_namespace": NAMESPACE, "warm_data": None,
        "warm_until": None, "decision_log": None, "store_timeout_ms": 100.0, "store_cooldown_s": 0.2})
    with TestClient(create_app(cfg)) as client:
        assert wait_ready(client)["_status"] == 200
        healthy = client.post("/v1/recommend", json={"user_id": 7, "time_ms": SERVE_TIME}).json()
        assert not healthy["fallback"] and healthy["items"]
        before = _fallback_count(client)

        responses: list[tuple[int, dict]] = []
        stop = threading.Event()

        def load() -> None:
            i = 0
            while not stop.is_set():
                r = client.post("/v1/recommend", json={"user_id": 1 + i % 40, "time_ms": SERVE_TIME})
                responses.append((r.status_code, r.json() if r.status_code == 200 else {}))
                i += 1

        workers = [threading.Thread(target=load) for _ in range(3)]
        for w in workers:
            w.start()
        try:
            time.sleep(0.5)
            private_redis.stop()  # Redis dies under load
            time.sleep(1.5)
            assert client.get("/readyz").status_code == 503  # not ready without its store ...
            assert client.get("/healthz").status_code == 200  # ... but alive
        finally:
            stop.set()
            for w in workers:
                w.join()
        statuses = {s for s, _ in responses}
        assert statuses == {200}, statuses
        degraded = [body for _, body in responses if body["fallback"]]
        assert degraded, "no request was served by the fallback while Redis was down"
        # the fallback serves the rooms live at the last sync, by popularity, and never inserts
        assert all(b["items"] and not b["allocation"]["insert"] for b in degraded)
        assert all(b["allocation"]["propensity"] == 1.0 for b in degraded)
        assert _fallback_count(client) >= before + len(degraded)
        assert 'recsys_store_up 0.0' in client.get("/metrics").text

        # Redis is back (and refilled by the stream): the service recovers by itself
        private_redis.start()
        private_redis.fill(tiny_dir)
        deadline = time.monotonic() + 10
        while True:
            body = client.post("/v1/recommend", json={"user_id": 7, "time_ms": SERVE_TIME}).json()
            if not body["fallback"] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert not body["fallback"] and body["items"]
        assert wait_ready(client)["_status"] == 200

        # a hot reload under load on the Redis-backed service: no request fails
        statuses = reload_under_load(client, users=40)
        assert statuses and set(statuses) == {200}
