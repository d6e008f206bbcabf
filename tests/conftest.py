"""Shared fixtures: users with tokens, a fake model server, a real daphne process."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from tests.support.daphne import DaphneServer, database_url
from tests.support.openai_server import FakeOpenAIServer, Scenario

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_configure(config: Any) -> None:
    # In-process tests import config.asgi; only the served daphnes need the voice warm.
    from django.conf import settings

    settings.VOICE_PRELOAD = False
    settings.STT_PRELOAD = False


def pytest_sessionstart(session: Any) -> None:
    """The pages name their JS and CSS by content hash (config/static.py): collect them
    once per session, as ``make run`` and the Dockerfile do. Before collection, not in a
    fixture: modules that import config.asgi run its start-up checks as they are
    collected, and a fresh clone has no manifest yet (parley.E001)."""
    import django
    from django.core.management import call_command

    django.setup()
    call_command("collectstatic", "--noinput", verbosity=0)


@pytest.fixture(scope="session", autouse=True)
def _close_worker_thread_connections(django_db_setup: Any) -> Iterator[None]:
    """Close the connections that async tests opened in asgiref's worker thread.

    ``sync_to_async`` runs ORM calls in one long-lived thread; its connection would keep
    the test database busy and make its removal fail at the end of the session.
    """
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=30)


# How many times a flush that lost a deadlock is tried again (see below).
FLUSH_TRIES = 5


@pytest.fixture(scope="session", autouse=True)
def _flush_survives_a_deadlock() -> Iterator[None]:
    """Try a transactional test's flush again when PostgreSQL picks it as a deadlock's
    victim.

    The flush (``TRUNCATE`` of every table, in one transaction) runs while the session's
    daphne may still be finishing what the test left running: a reply ending, an event
    stored. ``TRUNCATE`` takes its table locks one by one, so it can deadlock with a
    transaction of the daphne's holding a row in one table and waiting on another; the loser
    is rolled back whole. When it was the flush, the next test found the last one's rows
    ("duplicate key ... (username)=(ann)": a browser test had just sent a message, and its
    reply was being stored as the flush began). Tried again, the flush finds the daphne's
    transaction over. Other errors are raised at once.
    """
    from django.db.backends.base.operations import BaseDatabaseOperations
    from django.db.utils import OperationalError
    from psycopg.errors import DeadlockDetected

    original = BaseDatabaseOperations.execute_sql_flush

    def execute_sql_flush(self: BaseDatabaseOperations, sql_list: Iterable[str]) -> None:
        for attempt in range(FLUSH_TRIES):
            try:
                return original(self, sql_list)
            except OperationalError as exc:
                lost = isinstance(exc.__cause__, DeadlockDetected)
                if not lost or attempt == FLUSH_TRIES - 1:
                    raise

    BaseDatabaseOperations.execute_sql_flush = execute_sql_flush  # type: ignore[method-assign]
    yield
    BaseDatabaseOperations.execute_sql_flush = original  # type: ignore[method-assign]


@pytest.fixture(scope="session", autouse=True)
def _fresh_redis_state(django_db_setup: Any) -> None:
    """Forget Parley's Redis keys from earlier sessions: their rooms and messages had the
    same ids in a database that no longer exists."""
    if not os.environ.get("REDIS_URL"):
        return
    import redis

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    keys = list(client.scan_iter("parley:*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="session")
def fake_llm_server() -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer(api_key="test-key").start()
    yield server
    server.stop()


@pytest.fixture
def llm(fake_llm_server: FakeOpenAIServer) -> Iterator[FakeOpenAIServer]:
    """The fake model server, reset for this test (default: a short normal reply)."""
    fake_llm_server.script()
    fake_llm_server.set_default(Scenario.normal())
    yield fake_llm_server
    fake_llm_server.set_default(Scenario.normal())


def daphne_env(fake: FakeOpenAIServer, **extra: str) -> dict[str, str]:
    env = {
        "DATABASE_URL": database_url(),
        "LLM_BACKEND": "openai",
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_API_KEY": "test-key",
        "LLM_MODEL": "fake-model",
        # Tests send quickly from few users; production keeps the default limits.
        "PARLEY_SEND_BURST": "1000",
        "PARLEY_ACTION_BURST": "1000",
        # The fake's "hang" scenario goes silent: fail it in 2 s, not the default minute.
        "LLM_READ_TIMEOUT": "2",
    }
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def daphne(
    django_db_setup: Any, django_db_blocker: Any, fake_llm_server: FakeOpenAIServer
) -> Iterator[DaphneServer]:
    """One daphne process for the session, on the test database."""
    with django_db_blocker.unblock():
        env = daphne_env(fake_llm_server)
    server = DaphneServer(env).start()
    yield server
    server.stop()


@pytest.fixture
def sole_deployment(daphne: DaphneServer) -> Iterator[None]:
    """Stop the session's daphne while a test runs processes on another Redis (or none)
    against the same database: its orphan sweep would find their leases missing from its
    own Redis and interrupt their replies, as it must for processes of its deployment."""
    daphne.stop()
    yield
    daphne.start()


@pytest.fixture
def make_user(transactional_db: Any) -> Any:
    """``make_user("alice")`` → (user, bearer token)."""
    from django.contrib.auth import get_user_model

    from accounts.services import api_token_create

    def make(username: str, *, staff: bool = False, password: str = "pw-for-tests-123") -> Any:
        user = get_user_model().objects.create_user(
            username=username, password=password, is_staff=staff
        )
        _, raw = api_token_create(user=user)
        return user, raw

    return make


@pytest.fixture
def make_room(transactional_db: Any) -> Any:
    from chat.services import room_create

    def make(owner: Any, name: str = "Test room", **kw: Any) -> Any:
        return room_create(owner=owner, name=name, **kw)

    return make


@pytest.fixture
def redis_url() -> str:
    """The machine's Redis, for tests of several processes (CI sets REDIS_URL)."""
    url = os.environ.get("REDIS_URL")
    if not url:
        if IN_CI:
            pytest.fail("REDIS_URL is not set in CI: the multi-process suite needs Redis")
        pytest.skip("REDIS_URL is not set: multi-process tests need Redis (CI sets it)")
    return url


@pytest.fixture
def daphne_factory(
    django_db_setup: Any, django_db_blocker: Any, fake_llm_server: FakeOpenAIServer
) -> Iterator[Any]:
    """Start extra daphne processes with their own settings; all stopped after the test."""
    servers: list[DaphneServer] = []

    def start(**env: str) -> DaphneServer:
        # Extra servers rarely speak: skip warming the voice unless a test asks for it.
        env.setdefault("VOICE_PRELOAD", "0")
        env.setdefault("STT_PRELOAD", "0")
        with django_db_blocker.unblock():
            full = daphne_env(fake_llm_server, **env)
        server = DaphneServer(full).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
