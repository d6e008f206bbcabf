"""A real Redis Cluster for the cluster mode's tests (``REDIS_URL=redis+cluster://...``).

One cluster of 3 masters and 3 replicas per session (``redis_cluster``), torn down after;
tests that kill or reshard a master take a fresh one of their own (``own_cluster``), so the
others always see a whole cluster. ``redis_url`` is the cluster's URL here, so the
multi-process tests of tests/chat run unchanged against it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.conftest import IN_CI
from tests.support.redis_cluster import RedisCluster


def _start() -> RedisCluster:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        if IN_CI:
            pytest.fail("redis-server is not installed in CI: the cluster tests need it")
        pytest.skip("redis-server is not installed: the cluster tests need it (CI has it)")
    return RedisCluster().start()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    cluster = _start()
    yield cluster
    cluster.stop()


@pytest.fixture
def own_cluster() -> Iterator[RedisCluster]:
    """A cluster of this test's own, for one that kills or reshards a master."""
    cluster = _start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_url(redis_cluster: RedisCluster) -> str:
    return redis_cluster.url
