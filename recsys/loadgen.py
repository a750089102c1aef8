"""A closed-loop HTTP load generator: ``concurrency`` workers POST JSON bodies back to back for a fixed time.

All workers share ONE ``aiohttp.ClientSession`` whose connector holds at most ``concurrency`` keep-alive
connections, so each worker effectively owns one connection. Latency is wall-clock time (``time.perf_counter``)
from issuing a request to having read its whole response body.

Timeline of one run::

    start ── warm-up (warmup_s) ── measurement window (duration_s) ── deadline ── drain (≤ timeout_s)

Only requests that *finish* inside the measurement window are recorded; those finishing during the warm-up or
after the deadline are discarded, so ``qps`` is ``successful requests / duration_s`` over a window of known length.
No request is issued after the deadline, and in-flight requests are awaited for at most ``timeout_s`` (then
cancelled), so a run takes at most ``warmup_s + duration_s + timeout_s`` plus connection teardown.

CLI (one run per concurrency level, in turn; prints and optionally writes ``{"c<N>": summary, ...}``)::

    python -m recsys.loadgen --url http://127.0.0.1:8000/v1/recommend --bodies bodies.jsonl \\
        --concurrency 1,10,50 --duration 5 --warmup 1 --out result.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass
class LoadResult:
    """What one closed-loop run measured inside its measurement window.

    ``n_requests`` counts every request that finished in the window (successes and errors); ``n_errors`` those with
    a non-2xx status or an exception; ``status_counts`` maps the HTTP status (``"200"``, ``"422"``) or the exception
    class name (``"ClientConnectorError"``, ``"TimeoutError"``) to its count; ``latencies_ms`` holds the latencies of
    the successful requests only.
    """

    concurrency: int
    duration_s: float
    n_requests: int
    n_errors: int
    status_counts: dict[str, int] = field(default_factory=dict)
    latencies_ms: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float64))

    @property
    def n_ok(self) -> int:
        """Successful (2xx) requests in the window."""
        return self.n_requests - self.n_errors

    @property
    def qps(self) -> float:
        """Successful requests per second of the measurement window."""
        return self.n_ok / self.duration_s if self.duration_s > 0 else math.nan

    def summary(self) -> dict[str, float]:
        """``p50_ms``, ``p99_ms``, ``p999_ms``, ``mean_ms`` (of successful requests; NaN when there are none),
        ``qps``, ``errors`` and ``n`` (all requests finished in the window)."""
        lat = self.latencies_ms
        if lat.size:
            p50, p99, p999 = (float(v) for v in np.percentile(lat, [50.0, 99.0, 99.9]))
            mean = float(lat.mean())
        else:
            p50 = p99 = p999 = mean = math.nan
        return {
            "p50_ms": p50,
            "p99_ms": p99,
            "p999_ms": p999,
            "mean_ms": mean,
            "qps": float(self.qps),
            "errors": float(self.n_errors),
            "n": float(self.n_requests),
        }


@dataclass
class _Recorder:
    """Collects the outcomes of requests finishing inside ``[record_from, record_until)`` (perf_counter seconds)."""

    record_from: float
    record_until: float
    latencies_ms: list[float] = field(default_factory=list)
    status_counts: dict[str, int] = field(default_factory=dict)
    n_requests: int = 0
    n_errors: int = 0

    def record(self, finished: float, started: float, outcome: str, ok: bool) -> None:
        if not self.record_from <= finished < self.record_until:
            return
        self.n_requests += 1
        self.status_counts[outcome] = self.status_counts.get(outcome, 0) + 1
        if ok:
            self.latencies_ms.append((finished - started) * 1000.0)
        else:
            self.n_errors += 1


def _validate(url: str, bodies: Sequence[dict], concurrency: int, duration_s: float, warmup_s: float,
              timeout_s: float) -> None:
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"url must be an http:// or https:// URL, got {url!r}")
    if len(bodies) == 0:
        raise ValueError("bodies must hold at least one JSON object, got an empty sequence")
    for i, body in enumerate(bodies):
        if not isinstance(body, dict):
            raise ValueError(f"bodies[{i}] must be a dict (a JSON object), got {type(body).__name__}")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be a positive int, got {concurrency!r}")
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration_s must be a positive number of seconds, got {duration_s!r}")
    if not (math.isfinite(warmup_s) and warmup_s >= 0):
        raise ValueError(f"warmup_s must be a non-negative number of seconds, got {warmup_s!r}")
    if not (math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")


async def _worker(session: aiohttp.ClientSession, url: str, payloads: Sequence[bytes], offset: int, deadline: float,
                  timeout: aiohttp.ClientTimeout, recorder: _Recorder) -> None:
    """POST ``payloads`` (cycling from ``offset``) back to back until ``deadline``."""
    i = offset
    while time.perf_counter() < deadline:
        payload = payloads[i % len(payloads)]
        i += 1
        started = time.perf_counter()
        try:
            async with session.post(url, data=payload, headers=JSON_HEADERS, timeout=timeout) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            recorder.record(time.perf_counter(), started, type(exc).__name__, ok=False)
            continue
        recorder.record(time.perf_counter(), started, str(status), ok=200 <= status < 300)


async def run_load(url: str, bodies: Sequence[dict], concurrency: int, duration_s: float, warmup_s: float = 1.0,
                   timeout_s: float = 5.0) -> LoadResult:
    """Closed-loop load: ``concurrency`` workers POST ``bodies`` to ``url`` for ``warmup_s + duration_s`` seconds.

    Worker ``k`` starts at body ``k * len(bodies) // concurrency`` and cycles through ``bodies``. Each request has a
    total timeout of ``timeout_s``. Only requests finishing in the ``duration_s`` window after the warm-up are
    recorded (see the module docstring).
    """
    _validate(url, bodies, concurrency, duration_s, warmup_s, timeout_s)
    payloads = [json.dumps(body, separators=(",", ":")).encode() for body in bodies]
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        record_from = start + warmup_s
        deadline = record_from + duration_s
        recorder = _Recorder(record_from=record_from, record_until=deadline)
        tasks = [
            asyncio.create_task(_worker(session, url, payloads, k * len(payloads) // concurrency, deadline, timeout,
                                        recorder))
            for k in range(concurrency)
        ]
        done, pending = await asyncio.wait(tasks, timeout=max(deadline - time.perf_counter(), 0.0) + timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            task.result()  # a bug in a worker (not a request failure) surfaces here
    return LoadResult(
        concurrency=concurrency,
        duration_s=duration_s,
        n_requests=recorder.n_requests,
        n_errors=recorder.n_errors,
        status_counts=dict(sorted(recorder.status_counts.items())),
        latencies_ms=np.asarray(recorder.latencies_ms, dtype=np.float64),
    )


def run_load_sync(url: str, bodies: Sequence[dict], concurrency: int, duration_s: float, warmup_s: float = 1.0,
                  timeout_s: float = 5.0) -> LoadResult:
    """``run_load`` on a fresh event loop (``asyncio.run``); not callable from inside a running loop."""
    return asyncio.run(run_load(url, bodies, concurrency, duration_s, warmup_s=warmup_s, timeout_s=timeout_s))


# ----------------------------------------------------------------------------------------------------------------- CLI


def read_bodies(path: str | Path) -> list[dict]:
    """JSON objects of a JSONL file, one per non-blank line; errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read bodies file {path}: {exc}") from None
    bodies: list[dict] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            body = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(body, dict):
            raise ValueError(f"{path}:{lineno}: each line must be a JSON object, got {type(body).__name__}")
        bodies.append(body)
    if not bodies:
        raise ValueError(f"bodies file {path} holds no JSON objects")
    return bodies


def _concurrency_list(text: str) -> list[int]:
    """argparse type: ``"1,10,50"`` -> ``[1, 10, 50]``."""
    levels = []
    for part in text.split(","):
        part = part.strip()
        try:
            level = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"concurrency must be a comma-separated list of positive ints, got {text!r} ({part!r} is not an int)"
            ) from None
        if level < 1:
            raise argparse.ArgumentTypeError(
                f"concurrency must be a comma-separated list of positive ints, got {text!r} ({level} is not positive)"
            )
        levels.append(level)
    return levels


def _seconds(minimum: float, inclusive: bool) -> Callable[[str], float]:
    """argparse type: a finite number of seconds ``>= minimum`` (``inclusive``) or ``> minimum``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
        ok = math.isfinite(value) and (value >= minimum if inclusive else value > minimum)
        if not ok:
            raise argparse.ArgumentTypeError(f"expected a number of seconds {'>=' if inclusive else '>'} {minimum}, "
                                             f"got {text!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    parser = argparse.ArgumentParser(prog="python -m recsys.loadgen", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="URL to POST the JSON bodies to")
    parser.add_argument("--bodies", required=True, type=Path, help="JSONL file, one JSON object per line")
    parser.add_argument("--concurrency", required=True, type=_concurrency_list,
                        help="comma-separated positive ints, one run per level, e.g. 1,10,50")
    parser.add_argument("--duration", type=_seconds(0.0, inclusive=False), default=5.0,
                        help="measured seconds per level (default 5)")
    parser.add_argument("--warmup", type=_seconds(0.0, inclusive=True), default=1.0,
                        help="unrecorded warm-up seconds per level (default 1)")
    parser.add_argument("--timeout", type=_seconds(0.0, inclusive=False), default=5.0,
                        help="per-request timeout and drain bound in seconds (default 5)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON result here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run each ``--concurrency`` level in turn; print (and with ``--out`` write) ``{"c<N>": summary}``, where each
    summary also carries the level's ``status_counts``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://", "https://")):
        parser.error(f"--url must be an http:// or https:// URL, got {args.url!r}")
    try:
        bodies = read_bodies(args.bodies)
    except ValueError as exc:
        parser.error(f"--bodies: {exc}")
    results: dict[str, Any] = {}
    for level in args.concurrency:
        result = run_load_sync(args.url, bodies, level, args.duration, warmup_s=args.warmup, timeout_s=args.timeout)
        results[f"c{level}"] = {**result.summary(), "status_counts": result.status_counts}
    text = json.dumps(results, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
