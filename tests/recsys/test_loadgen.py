"""``recsys.loadgen``: summaries, input checks, the CLI, and closed-loop runs against a real uvicorn subprocess."""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipelines.bench_serve_harness import ServerProcess, floor_command, free_port, start_server
from recsys.loadgen import LoadResult, main, read_bodies, run_load_sync

BODIES = [{"user_id": i, "k": 10} for i in range(7)]


@pytest.fixture(scope="module")
def floor_server() -> Iterator[ServerProcess]:
    """The trivial FastAPI app under uvicorn, in its own process, for this module."""
    port = free_port()
    with start_server(floor_command(port), port, ready_timeout_s=60) as server:
        yield server


# ------------------------------------------------------------------------------------------------------- LoadResult


def test_summary_percentiles_mean_and_qps() -> None:
    lat = np.arange(1, 1001, dtype=np.float64)  # 1..1000 ms
    result = LoadResult(concurrency=4, duration_s=2.0, n_requests=1003, n_errors=3,
                        status_counts={"200": 1000, "500": 3}, latencies_ms=lat)
    s = result.summary()
    assert set(s) == {"p50_ms", "p99_ms", "p999_ms", "mean_ms", "qps", "errors", "n"}
    assert s["p50_ms"] == pytest.approx(np.percentile(lat, 50))
    assert s["p50_ms"] <= s["p99_ms"] <= s["p999_ms"] <= 1000.0
    assert s["mean_ms"] == pytest.approx(500.5)
    assert s["qps"] == pytest.approx(500.0)  # successful requests only, over the measured window
    assert s["errors"] == 3 and s["n"] == 1003


def test_summary_without_successes_has_nan_latencies_and_zero_qps() -> None:
    s = LoadResult(concurrency=1, duration_s=1.0, n_requests=5, n_errors=5, status_counts={"404": 5}).summary()
    assert all(math.isnan(s[k]) for k in ("p50_ms", "p99_ms", "p999_ms", "mean_ms"))
    assert s["qps"] == 0.0 and s["errors"] == 5


# ----------------------------------------------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"concurrency": 0}, "concurrency must be a positive int, got 0"),
        ({"concurrency": 2.0}, "concurrency must be a positive int"),
        ({"bodies": []}, "bodies must hold at least one"),
        ({"bodies": [{"user_id": 1}, [1, 2]]}, r"bodies\[1\] must be a dict"),
        ({"url": "127.0.0.1:80/x"}, "url must be an http"),
        ({"duration_s": 0.0}, "duration_s must be a positive"),
        ({"warmup_s": -1.0}, "warmup_s must be a non-negative"),
        ({"timeout_s": math.inf}, "timeout_s must be a positive"),
    ],
)
def test_run_load_rejects_bad_input_naming_it(kwargs: dict, message: str) -> None:
    args = {"url": "http://127.0.0.1:9/v1/recommend", "bodies": BODIES, "concurrency": 1, "duration_s": 1.0,
            "warmup_s": 0.0, "timeout_s": 1.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        run_load_sync(**args)


def test_read_bodies_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bodies.jsonl"
    path.write_text('{"user_id": 1}\n\n{"user_id": 2}\n[3]\n')
    with pytest.raises(ValueError, match=r"bodies\.jsonl:4: each line must be a JSON object"):
        read_bodies(path)
    path.write_text('{"user_id": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"bodies\.jsonl:2: not valid JSON"):
        read_bodies(path)
    path.write_text('{"user_id": 1}\n\n{"user_id": 2}\n')
    assert read_bodies(path) == [{"user_id": 1}, {"user_id": 2}]


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--concurrency", "1,0", "0 is not positive"),
        ("--concurrency", "1,x", "'x' is not an int"),
        ("--duration", "0", "expected a number of seconds > 0"),
        ("--warmup", "-1", "expected a number of seconds >= 0"),
        ("--url", "localhost:80", "--url must be an http"),
    ],
)
def test_cli_rejects_bad_flags_with_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str,
                                                  value: str, message: str) -> None:
    bodies = tmp_path / "bodies.jsonl"
    bodies.write_text('{"user_id": 1}\n')
    argv = {"--url": "http://127.0.0.1:9/x", "--bodies": str(bodies), "--concurrency": "1", "--duration": "1",
            "--warmup": "0"}
    argv[flag] = value
    with pytest.raises(SystemExit) as exc:
        main([part for pair in argv.items() for part in pair])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ against a server


def test_run_load_measures_the_floor_app(floor_server: ServerProcess) -> None:
    result = run_load_sync(floor_server.url("/v1/recommend"), BODIES, concurrency=3, duration_s=0.6, warmup_s=0.2)
    s = result.summary()
    assert result.concurrency == 3 and result.duration_s == 0.6
    assert result.n_errors == 0 and result.status_counts == {"200": result.n_requests}
    assert result.latencies_ms.shape == (result.n_requests,) and result.n_requests > 0
    assert s["qps"] == pytest.approx(result.n_requests / 0.6)
    assert 0 < s["p50_ms"] <= s["p99_ms"] <= s["p999_ms"]


@pytest.mark.parametrize(("path", "body", "status"), [
    ("/v1/recommend", {"items": 3}, "422"),  # no user_id
    ("/no/such/route", {"user_id": 1}, "404"),
])
def test_run_load_counts_non_2xx_as_errors_by_status(floor_server: ServerProcess, path: str, body: dict,
                                                     status: str) -> None:
    result = run_load_sync(floor_server.url(path), [body], concurrency=2, duration_s=0.4, warmup_s=0.1)
    assert result.n_requests > 0 and result.n_errors == result.n_requests
    assert result.status_counts == {status: result.n_requests}
    assert result.latencies_ms.size == 0 and result.summary()["qps"] == 0.0


def test_run_load_counts_refused_connections_as_errors() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1/recommend"  # nothing listens there
    result = run_load_sync(url, BODIES, concurrency=2, duration_s=0.3, warmup_s=0.0, timeout_s=1.0)
    assert result.n_requests > 0 and result.n_errors == result.n_requests
    assert list(result.status_counts) == ["ClientConnectorError"]


def test_run_load_is_bounded_in_time_when_the_server_never_answers() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # accepts TCP (backlog), never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/recommend"
        t0 = time.perf_counter()
        result = run_load_sync(url, BODIES, concurrency=2, duration_s=0.3, warmup_s=0.0, timeout_s=0.5)
        elapsed = time.perf_counter() - t0
    assert elapsed < 0.3 + 0.5 + 1.0
    assert result.n_requests == 0  # every request timed out after the deadline: outside the window


def test_cli_writes_one_summary_per_level(floor_server: ServerProcess, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    bodies = tmp_path / "bodies.jsonl"
    bodies.write_text("".join(json.dumps(b) + "\n" for b in BODIES))
    out = tmp_path / "sub" / "result.json"
    assert main(["--url", floor_server.url("/v1/recommend"), "--bodies", str(bodies), "--concurrency", "1,2",
                 "--duration", "0.3", "--warmup", "0.1", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written == json.loads(capsys.readouterr().out)
    assert list(written) == ["c1", "c2"]
    for summary in written.values():
        assert summary["qps"] > 0 and summary["errors"] == 0
        assert summary["status_counts"] == {"200": summary["n"]}
