"""Kombu's own integration base classes, run unchanged against the postgresql:// transport.

The classes ship in the kombu sdist (t/integration/common.py), not in the
wheel: ``.ci/run`` fetches them during set-up (see tests/support/kombu_sdist.py);
a run without them fetches them once, and fails when they cannot be had.
"""

from __future__ import annotations

import importlib.util

import kombu
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import celery_durable  # noqa: F401
from celery_durable.db import dsn
from tests.support import kombu_sdist


def _load_common():
    try:
        path = kombu_sdist.fetch()
    except Exception as exc:  # a failure, not a skip: these tests are part of the suite
        pytest.fail(f"kombu's integration tests are missing ({exc}); fetch them with "
                    f"`python -m tests.support.kombu_sdist` (cache: {kombu_sdist.cache_dir()})", pytrace=False)
    spec = importlib.util.spec_from_file_location("kombu_integration_common", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = _load_common()


@pytest.fixture
def connection(pg_url, schema):
    conn = kombu.Connection(pg_url, transport_options={"schema": schema, "polling_interval": 0.5})
    yield conn
    conn.release()


@pytest.fixture
def invalid_connection():
    return kombu.Connection("postgresql://postgres@127.0.0.1:59999/nowhere",
                            transport_options={"connect_timeout": 1})


@pytest.fixture
def failover_connection(pg_url, schema):
    dead = "postgresql://postgres@127.0.0.1:59998/nowhere"
    live = _live_tcp_url(pg_url)
    # Kombu keeps our URLs whole (can_parse_url: libpq keywords, host lists), so Connection.port,
    # which the failover test compares, is only set when given; switch() fills it for the alternate.
    conn = kombu.Connection(f"{dead};{live}", port=59998,
                            transport_options={"schema": schema, "connect_timeout": 1})
    yield conn
    conn.release()


def _live_tcp_url(pg_url: str) -> str:
    """The failover tests compare ports, so the live URL needs an explicit one."""
    params = conninfo_to_dict(dsn.from_url(pg_url))
    return dsn.to_url(make_conninfo(**{**params, "port": params.get("port") or dsn.DEFAULT_PORT}))


class TestBasicFunctionality(common.BasicFunctionality):
    pass


class TestExchangeTypes(common.BaseExchangeTypes):
    pass


class TestPriority(common.BasePriority):
    pass


class TestMessage(common.BaseMessage):
    pass


class TestTimeToLive(common.BaseTimeToLive):
    pass


class TestEventLoop(common.BaseEventLoop):
    pass


class TestFailover(common.BaseFailover):
    pass
