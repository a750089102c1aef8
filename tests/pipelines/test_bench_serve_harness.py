"""``pipelines.bench_serve_harness``: a real uvicorn subprocess measured by a load generator in another process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.bench_serve_harness import (
    ServerProcess,
    ServerStartError,
    flatten,
    floor_command,
    free_port,
    measure,
    start_server,
    stop_process_group,
)

SUMMARY_KEYS = {"p50_ms", "p99_ms", "p999_ms", "mean_ms", "qps", "errors", "n"}


@pytest.fixture(scope="module")
def floor_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The trivial FastAPI app under uvicorn on a free port, for this module; its log kept under tmp."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("floor") / "server.log"
    with start_server(floor_command(port), port, ready_timeout_s=60, log_path=log_path) as server:
        yield server
    assert server.proc.poll() is not None, "the server must be stopped when the with block ends"


def test_floor_command_serves_serving_trivial_with_uvicorn() -> None:
    assert floor_command(8123) == [sys.executable, "-m", "uvicorn", "serving.trivial:app", "--host", "127.0.0.1",
                                   "--port", "8123", "--log-level", "warning", "--no-access-log"]


def test_measure_the_floor_from_a_separate_process(floor_server: ServerProcess) -> None:
    bodies = [{"user_id": i, "k": 10, "context": {"hour": i % 24}} for i in range(20)]
    results = measure(floor_server.url("/v1/recommend"), bodies, (1, 4), duration_s=1.0, warmup_s=0.2)
    assert list(results) == ["c1", "c4"]
    for summary in results.values():
        assert SUMMARY_KEYS <= set(summary)
        assert summary["qps"] > 0 and summary["errors"] == 0 and summary["n"] > 0
        assert 0 < summary["p50_ms"] <= summary["p99_ms"] <= summary["p999_ms"]
        assert summary["status_counts"] == {"200": summary["n"]}
    metrics = flatten("floor", results)
    assert {f"floor.c{c}.{k}" for c in (1, 4) for k in SUMMARY_KEYS} == set(metrics)
    assert all(isinstance(v, float) for v in metrics.values())


def test_measure_counts_errors_by_status(floor_server: ServerProcess) -> None:
    results = measure(floor_server.url("/v1/recommend"), [{"items": []}], (2,), duration_s=0.3, warmup_s=0.1)
    summary = results["c2"]
    assert summary["n"] > 0 and summary["errors"] == summary["n"] and summary["qps"] == 0.0
    assert summary["status_counts"] == {"422": summary["n"]}  # a body without user_id is rejected


def test_server_that_exits_at_once_raises_with_exit_code_and_log(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "import sys; print('boom from the server'); sys.exit(3)"]
    with pytest.raises(ServerStartError, match="exited with code 3") as exc:
        with start_server(cmd, free_port(), ready_timeout_s=30, log_path=tmp_path / "server.log"):
            pytest.fail("the with block must not run")
    assert "boom from the server" in str(exc.value)


def test_server_that_never_gets_ready_times_out(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "import time; print('sleeping', flush=True); time.sleep(60)"]
    with pytest.raises(ServerStartError, match=r"did not answer 200 on http://127\.0\.0\.1:\d+/readyz within 0\.5s"):
        with start_server(cmd, free_port(), ready_timeout_s=0.5, log_path=tmp_path / "server.log"):
            pytest.fail("the with block must not run")


def test_stop_kills_a_group_that_ignores_sigterm() -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); " \
           "time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        stop_process_group(proc, grace_s=0.3)
        assert proc.returncode == -9  # SIGKILL after the grace period
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"cmd": []}, "cmd must be a non-empty list of strings"),
    ({"port": 0}, "port must be an int in 1..65535, got 0"),
    ({"ready_path": "readyz"}, "ready_path must start with '/'"),
    ({"ready_timeout_s": 0}, "ready_timeout_s must be a positive"),
])
def test_start_server_rejects_bad_input_naming_it(kwargs: dict, message: str) -> None:
    args = {"cmd": [sys.executable, "-c", "pass"], "port": 8000, **kwargs}
    with pytest.raises(ValueError, match=message):
        with start_server(**args):
            pass


def test_measure_rejects_bad_input_naming_it() -> None:
    with pytest.raises(ValueError, match=r"concurrencies must be a non-empty sequence of positive ints, got \(1, 0\)"):
        measure("http://127.0.0.1:9/x", [{"user_id": 1}], (1, 0), 1.0, 0.0)
    with pytest.raises(ValueError, match="bodies must hold at least one"):
        measure("http://127.0.0.1:9/x", [], (1,), 1.0, 0.0)


def test_flatten_keys_and_errors() -> None:
    results = {"c50": {"p99_ms": 3.5, "qps": 1000, "errors": 0, "status_counts": {"200": 5}}}
    assert flatten("", results) == {"c50.p99_ms": 3.5, "c50.qps": 1000.0, "c50.errors": 0.0}
    assert flatten("floor", results)["floor.c50.qps"] == 1000.0
    with pytest.raises(ValueError, match=r"results\['c1'\]\['qps'\] must be a number, got 'fast'"):
        flatten("x", {"c1": {"qps": "fast"}})
