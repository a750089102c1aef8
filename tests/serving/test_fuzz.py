"""A bounded fuzzing run of the service over its own OpenAPI schema (schemathesis): no request may get a 5xx.

The app runs for real (lifespan included: store warmed, models loaded, live set synced) under uvicorn on a free
loopback port in a background thread; schemathesis loads the schema from ``/openapi.json`` and sends every generated
case over HTTP. Each operation is fuzzed with schema-valid data (positive mode) and, where the operation takes any
input, with schema-violating data (negative mode); ``POST /admin/reload`` additionally with the valid bearer token
(positive data may then trigger real reloads, about 0.05 s each here, so it gets few examples). Generation is
deterministic (``derandomize=True``, no example database) and bounded, and every case is collected rather than
raised, so one run reports every 5xx it met.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core import NOT_SET
from schemathesis.errors import FailureGroup

from serving.app import create_app

pytestmark = pytest.mark.usefixtures("torch_one_thread")

ADMIN_HEADERS = {"authorization": "Bearer s3cret"}  # the token of ``serve_config``

#: (method, path, generation mode, fixed headers, examples): every operation of the schema, bounded
PLAN: list[tuple[str, str, GenerationMode, dict[str, str] | None, int]] = [
    ("POST", "/v1/recommend", GenerationMode.POSITIVE, None, 40),
    ("POST", "/v1/recommend", GenerationMode.NEGATIVE, None, 40),
    ("GET", "/healthz", GenerationMode.POSITIVE, None, 10),
    ("GET", "/readyz", GenerationMode.POSITIVE, None, 10),
    ("GET", "/metrics", GenerationMode.POSITIVE, None, 10),
    ("POST", "/admin/reload", GenerationMode.POSITIVE, None, 10),  # generated (wrong or absent) token: 401
    ("POST", "/admin/reload", GenerationMode.NEGATIVE, None, 10),
    ("POST", "/admin/reload", GenerationMode.POSITIVE, ADMIN_HEADERS, 10),  # valid token: 400 or a real reload
    ("POST", "/admin/reload", GenerationMode.NEGATIVE, ADMIN_HEADERS, 10),
]


@dataclass(frozen=True)
class Sent:
    method: str
    path: str
    mode: str
    token: bool
    headers: dict
    body: object
    status: int
    text: str
    check_failure: str | None

    def describe(self) -> str:
        if self.body is NOT_SET:
            body = "<no body>"
        elif isinstance(self.body, bytes):
            body = repr(self.body)
        else:
            try:
                body = json.dumps(self.body, ensure_ascii=True)
            except (TypeError, ValueError):
                body = repr(self.body)
        return (f"{self.method} {self.path} [{self.mode}{', valid token' if self.token else ''}] "
                f"headers={self.headers} body={body[:300]} -> {self.status}: {self.text[:500]}"
                + (f"\n    schemathesis: {self.check_failure[:500]}" if self.check_failure else ""))


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture(scope="module")
def base_url(serve_config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service under uvicorn on a free loopback port, ready (models loaded, live set synced)."""
    # a fuzzed reload reference that looks like a URI goes to MLflow: keep its tracking store out of the repository
    tracking = tmp_path_factory.mktemp("fuzz-mlflow") / "mlruns.db"
    cfg = serve_config.model_copy(update={"tracking_uri": f"sqlite:///{tracking}"})
    sock = _free_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="fuzz-uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60.0
        status = None
        while time.monotonic() < deadline and thread.is_alive():
            if server.started:
                try:
                    status = httpx.get(f"{url}/readyz", timeout=5.0).status_code
                except httpx.TransportError:
                    status = None
                if status == 200:
                    break
            time.sleep(0.05)
        assert status == 200, f"the service did not become ready (thread alive: {thread.is_alive()}, /readyz: {status})"
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def _fuzz(schema, method: str, path: str, mode: GenerationMode, headers: dict[str, str] | None, n: int,
          base_url: str) -> list[Sent]:
    """Send up to ``n`` generated cases of one operation; every response is recorded, none is raised."""
    op = schema[path][method]
    sent: list[Sent] = []

    @settings(max_examples=n, deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
                                     HealthCheck.large_base_example], print_blob=False)
    @given(case=op.as_strategy(generation_mode=mode, headers=headers))
    def run(case) -> None:
        response = case.call(base_url=base_url, timeout=60)
        failure = None
        try:
            case.validate_response(response, checks=[not_a_server_error])
        except FailureGroup as exc:  # collected, reported with the others (a BaseExceptionGroup, not an Exception)
            failure = "; ".join(f"{type(f).__name__}: {f.title if hasattr(f, 'title') else f}" for f in exc.exceptions)
        sent.append(Sent(method=method, path=path, mode=mode.value, token=headers is not None,
                         headers={k: v for k, v in (case.headers or {}).items()},
                         body=case.body if not isinstance(case.body, bytes) else case.body[:300],
                         status=response.status_code, text=response.text, check_failure=failure))

    run()
    return sent


def test_fuzzing_every_operation_never_gets_a_server_error(base_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
    assert operations == {(m, p) for m, p, *_ in PLAN}, "the plan must cover every operation of the schema"

    sent: list[Sent] = []
    t0 = time.monotonic()
    for method, path, mode, headers, n in PLAN:
        sent += _fuzz(schema, method, path, mode, headers, n, base_url)
    elapsed = time.monotonic() - t0

    counts = Counter((s.method, s.path, s.mode, s.token, s.status) for s in sent)
    summary = "\n".join(f"  {m} {p} [{mode}{', token' if tok else ''}] {st}: {c}"
                        for (m, p, mode, tok, st), c in sorted(counts.items()))
    print(f"\n{len(sent)} cases in {elapsed:.1f}s\n{summary}")

    errors = [s for s in sent if s.status >= 500 or s.check_failure]
    assert not errors, f"{len(errors)} of {len(sent)} cases got a server error:\n" + "\n".join(
        s.describe() for s in errors)

    def statuses(path: str, mode: str, token: bool | None = None) -> list[int]:
        return [s.status for s in sent if s.path == path and s.mode == mode and (token is None or s.token == token)]

    # not vacuous: cases were generated and sent for every operation
    pos, neg = statuses("/v1/recommend", "positive"), statuses("/v1/recommend", "negative")
    assert len(pos) >= 30 and len(neg) >= 30, (len(pos), len(neg))
    assert all(statuses(p, "positive") for _, p, *_ in PLAN), summary
    # every schema-valid body is served; invalid ones are rejected as the client's error (some schema-invalid
    # bodies are still accepted by pydantic's lax mode, e.g. a numeric string for an integer)
    assert all(200 <= s < 300 for s in pos), summary
    assert sum(400 <= s < 500 for s in neg) >= 20, summary
    # the reload endpoint was reached both without the token (401) and with it (past the token check)
    assert 401 in statuses("/admin/reload", "positive", token=False), summary
    assert any(s != 401 for s in statuses("/admin/reload", "positive", token=True)), summary


def test_reload_with_a_reference_the_filesystem_refuses_is_a_client_error(base_url: str) -> None:
    """A path component longer than NAME_MAX makes ``Path.is_file`` raise ``OSError`` (ENAMETOOLONG), not answer
    False: the reload must fail as a 400 with the serving models unchanged, not as a 500."""
    for body in ({"retriever": "r" * 300}, {"ranker": "x/" * 3000}):
        r = httpx.post(f"{base_url}/admin/reload", json=body, headers=ADMIN_HEADERS, timeout=60.0)
        assert r.status_code == 400, r.text
        assert "unchanged" in r.json()["detail"]
    assert httpx.get(f"{base_url}/readyz", timeout=10.0).status_code == 200
