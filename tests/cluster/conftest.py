"""A real Redis Cluster for the cluster mode's tests (``REDIS_URL=redis+cluster://...``).

One cluster of 3 masters and 3 replicas per session (``redis_cluster``), torn down after;
tests that kill or reshard a master take a fresh one of their own (``own_cluster``), so the
others always see a whole cluster. ``redis_url`` is the cluster's URL here, so the
multi-process tests of tests/chat run unchanged against it.

Daphnes on the cluster share the test database with the suite's session daphne, which is
on the machine's own Redis: its orphan sweep would find their leases missing from its Redis
and interrupt their live replies, as it must for processes of its own deployment. So every
test here that starts daphnes runs with the session daphne stopped (``sole_deployment``).
Alone these tests passed without it (no session daphne was running); in the full suite they
did not.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

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


@pytest.fixture(autouse=True)
def _cluster_is_the_sole_deployment(request: Any) -> None:
    if "daphne_factory" in request.fixturenames:
        request.getfixturevalue("sole_deployment")
