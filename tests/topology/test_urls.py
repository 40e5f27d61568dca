"""One libpq URL, unchanged, as broker_url, result_backend and the CLI's --url (issue 10 §1).

The URL lists a dead host before the live one (libpq must move on), carries
libpq keywords as query parameters and a password (trust authentication
ignores it; banners and logs must not show it).
"""

from __future__ import annotations

import os
import uuid
from urllib.parse import quote, urlencode

import kombu
import psycopg
import pytest
from celery import Celery
from click.testing import CliRunner
from psycopg.conninfo import conninfo_to_dict

import celery_durable  # noqa: F401  (registers postgresql:// with Kombu)
from celery_durable.cli import durable
from celery_durable.db import migrate
from tests.support.pgcluster import free_port

SECRET = "pw-s3cret-9271"


def libpq_url(pg_url: str, kombu_spelling: bool = False, **extra: str) -> str:
    """``pg_url`` behind a dead first host, with libpq keywords (or Kombu's ``ssl_*`` spelling)."""
    params = conninfo_to_dict(pg_url)
    host = quote(params.get("host") or "localhost", safe="")
    query = {"target_session_attrs": "read-write", "connect_timeout": "5", "keepalives": "1",
             "keepalives_idle": "30", "options": "-c statement_timeout=60s", **extra,
             "ssl_mode" if kombu_spelling else "sslmode": "prefer"}
    return (f"postgresql://{params.get('user') or 'postgres'}:{SECRET}@127.0.0.1:{free_port()},"
            f"{host}:{params.get('port') or 5432}/{params['dbname']}?{urlencode(query, quote_via=quote)}")


@pytest.mark.parametrize("kombu_spelling", [False, True], ids=["sslmode", "ssl_mode"])
def test_one_libpq_url_as_broker_backend_and_cli(pg_url, schema, kombu_spelling):
    url = libpq_url(pg_url, kombu_spelling, application_name="urls")  # one pool for both runs
    options = {"schema": schema, "polling_interval": 0.5}

    with kombu.Connection(url, transport_options=options) as conn:
        queue = conn.SimpleQueue(f"q_{uuid.uuid4().hex[:8]}")
        queue.put({"hello": "world"})
        message = queue.get(timeout=10)
        assert message.payload == {"hello": "world"}
        message.ack()
        queue.close()
        assert SECRET not in conn.as_uri() and "**" in conn.as_uri()
        shown = {k: v for k, v in conn.info().items() if k != "password"}  # as `celery inspect stats` shows it
        assert SECRET not in repr(shown)
        with conn.clone() as clone:  # the password travels apart from the URL, and still works
            clone.connect()

    app = Celery("urls", broker=url, backend=url, set_as_current=False)
    app.conf.result_backend_transport_options = options
    task_id = str(uuid.uuid4())
    app.backend.store_result(task_id, {"sum": 3}, "SUCCESS")
    assert app.backend.get_task_meta(task_id)["result"] == {"sum": 3}
    for shown in (app.backend.as_uri(), app.connection_for_write().as_uri()):
        assert SECRET not in shown and "**" in shown and "target_session_attrs=read-write" in shown

    result = CliRunner().invoke(durable, ["--url", url, "--schema", schema, "queues"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert message.delivery_info["routing_key"] in result.output and SECRET not in result.output


def test_bad_url_parameter_is_a_clear_error_without_the_password(pg_url, schema):
    url = libpq_url(pg_url) + "&no_such_keyword=1"
    with pytest.raises(ValueError) as error:
        kombu.Connection(url).transport
    assert "no_such_keyword" in str(error.value) and SECRET not in str(error.value)
    result = CliRunner().invoke(durable, ["--url", url, "--schema", schema, "queues"])
    assert result.exit_code == 1 and "no_such_keyword" in result.output and SECRET not in result.output


@pytest.mark.slow
def test_worker_runs_on_a_multi_host_url_and_masks_its_password(pg_url, schema, workers):
    url = libpq_url(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        migrate.ensure_schema(conn, schema)
    worker = workers("tests.apps.basic", env={"CELERY_DURABLE_URL": url})
    from tests.apps import basic

    app = Celery("basic", set_as_current=False)
    app.conf.update(basic.config({**os.environ, "CELERY_DURABLE_URL": url, "CELERY_DURABLE_SCHEMA": schema}))
    assert app.send_task("tests.apps.basic.add", (2, 3)).get(timeout=30) == 5
    stats = app.control.inspect(timeout=10).stats()
    assert stats and SECRET not in repr(stats), stats  # the broker's URL in `celery inspect stats`
    log = worker.log()
    assert SECRET not in log
    assert "transport:   postgresql://postgres:**@127.0.0.1:" in log
    assert "results:     postgresql://postgres:**@127.0.0.1:" in log


# -- A password with an unencoded '/', '@' or '%' (issue 18 §4 "Passwords in logs") ----------------
# Each splits differently in libpq, Kombu and urllib: the password showed in the worker banner or in
# ImproperlyConfigured, and broker and backend reached different hosts. Such a URL is refused, with an
# error that names the problem and never shows the password.

PIECES = ("tOp9", "S3cret")  # the password's two halves: neither may show anywhere
AMBIGUOUS = {"slash": "/", "at": "@", "percent": "%"}


def _url(pg_url: str, password: str) -> str:
    params = conninfo_to_dict(pg_url)
    host = quote(params.get("host") or "localhost", safe="")
    return f"postgresql://{params.get('user') or 'postgres'}:{password}@{host}:{params.get('port') or 5432}/{params['dbname']}"


def _ambiguous(pg_url: str, kind: str) -> str:
    return _url(pg_url, f"{PIECES[0]}{AMBIGUOUS[kind]}{PIECES[1]}")


def _shows_password(text: str) -> bool:
    return any(piece in text for piece in PIECES)


@pytest.mark.parametrize("kind", AMBIGUOUS)
def test_backend_transport_and_cli_refuse_an_ambiguous_url_without_showing_it(pg_url, schema, kind):
    from celery.exceptions import ImproperlyConfigured

    url = _ambiguous(pg_url, kind)
    with pytest.raises(ImproperlyConfigured) as error:
        Celery("ambiguous", broker=url, backend=url, set_as_current=False).backend
    assert "ambiguous" in str(error.value) and not _shows_password(str(error.value)), str(error.value)
    with pytest.raises(ValueError) as error:
        kombu.Connection(url).transport
    assert "ambiguous" in str(error.value) and not _shows_password(str(error.value)), str(error.value)
    result = CliRunner().invoke(durable, ["--url", url, "--schema", schema, "queues"])
    assert result.exit_code == 1 and "ambiguous" in result.output and not _shows_password(result.output), \
        result.output


@pytest.mark.slow
@pytest.mark.parametrize("kind", AMBIGUOUS)
def test_a_worker_refuses_an_ambiguous_url_without_showing_it(pg_url, schema, workers, kind):
    from tests.apps.transport_app import wait_for

    worker = workers("tests.apps.basic", env={"CELERY_DURABLE_URL": _ambiguous(pg_url, kind)}, wait=False)
    wait_for(lambda: worker.proc.poll() is not None or "ambiguous" in worker.log() or " ready." in worker.log(),
             60, "the worker to start or give up")
    log = worker.log()
    assert not _shows_password(log), log[-3000:]
    assert "ambiguous" in log, log[-3000:]


@pytest.mark.slow
def test_guard_a_percent_encoded_password_with_those_characters_works(pg_url, schema, workers):
    """Guard (worked before too): written as %2F, %40 and %25, the same characters are fine."""
    from tests.apps import basic

    url = _url(pg_url, quote(f"{PIECES[0]}/@%?#:{PIECES[1]}", safe=""))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        migrate.ensure_schema(conn, schema)
    worker = workers("tests.apps.basic", env={"CELERY_DURABLE_URL": url})
    app = Celery("encoded", set_as_current=False)
    app.conf.update(basic.config({**os.environ, "CELERY_DURABLE_URL": url, "CELERY_DURABLE_SCHEMA": schema}))
    assert app.send_task("tests.apps.basic.add", (2, 3)).get(timeout=30) == 5
    assert app.backend.as_uri().startswith(f"postgresql://{conninfo_to_dict(pg_url).get('user') or 'postgres'}:**@")
    log = worker.log()
    assert not _shows_password(log) and "results:     postgresql://" in log
    app.close()
