"""Options we do not read are named in a warning, once, with what to use instead."""

from __future__ import annotations

import logging

import pytest
from celery import Celery
from kombu import Connection

import celery_durable  # noqa: F401  (registers postgresql://)
from celery_durable import config


@pytest.fixture(autouse=True)
def fresh_process():
    """Each key is named once per process: forget what earlier tests in this process were told."""
    config._warned.clear()


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "celery_durable.config"]


def test_unknown_broker_options_are_named_once_with_their_equivalent(pg_url, schema, caplog):
    options = {"schema": schema, "visibility_timeout": 3600, "lease_secnds": 5, "recovery_after": 10,
               "max_retries": 3, "connect_options": {"application_name": "x"}}
    with caplog.at_level(logging.WARNING, logger="celery_durable.config"):
        Connection(pg_url, transport_options=options).transport  # noqa: B018  (builds the transport)
        Connection(pg_url, transport_options=dict(options)).transport  # noqa: B018
    said = _warnings(caplog)
    assert len(said) == 1, said
    assert "broker_transport_options" in said[0]
    assert "'visibility_timeout' (here: lease_seconds" in said[0]
    assert "'lease_secnds' (did you mean 'lease_seconds'?)" in said[0]
    assert "'recovery_after' belongs in result_backend_transport_options" in said[0]
    # Kombu's own retry option and our connect_options are read, by Kombu and by us.
    assert "max_retries" not in said[0] and "connect_options" not in said[0]


def test_unknown_backend_options_are_named(pg_url, schema, caplog):
    app = Celery("opts", set_as_current=False)
    app.conf.update(result_backend=pg_url, result_backend_transport_options={
        "schema": schema, "global_keyprefix": "app:", "claim_batch": 10, "recovery_afer": 5})
    try:
        with caplog.at_level(logging.WARNING, logger="celery_durable.config"):
            app.backend  # noqa: B018
        said = _warnings(caplog)
        assert len(said) == 1, said
        assert "result_backend_transport_options" in said[0]
        assert "'global_keyprefix' (here: schema)" in said[0]
        assert "'claim_batch' belongs in broker_transport_options" in said[0]
        assert "'recovery_afer' (did you mean 'recovery_after'?)" in said[0]
    finally:
        app.close()
