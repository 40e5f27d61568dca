"""Settings from the option dicts: values coerced, wrong keys named with what to use instead (no database needed).

A key that means nothing where it is set does nothing at all: the worker runs with the default, and
only this warning says so. A value read wrongly changes what the worker does (a durability setting
switched off).
"""

from __future__ import annotations

import logging

import pytest

from celery_durable import config
from celery_durable.config import BACKEND_OPTIONS, BROKER_OPTIONS, Settings, check_options


@pytest.fixture(autouse=True)
def fresh_warnings():
    """Each key is warned about once per process: let every test see its own warnings."""
    saved = set(config._warned)
    config._warned.clear()
    yield
    config._warned.clear()
    config._warned.update(saved)


def warned(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "celery_durable.config"]


def test_a_misspelt_setting_is_named_with_the_closest_one(caplog):
    with caplog.at_level(logging.WARNING, logger="celery_durable.config"):
        settings = Settings.from_options({"lease_second": 5, "polling_intervall": 1}, BROKER_OPTIONS)
    assert settings.lease_seconds == Settings().lease_seconds  # not applied: the warning is all there is
    assert warned(caplog) == [
        "celery_durable ignores these broker_transport_options: 'lease_second' (did you mean 'lease_seconds'?); "
        "'polling_intervall' (did you mean 'polling_interval'?)"
    ]


def test_another_brokers_option_is_named_with_what_does_its_job_here(caplog):
    """Moving from Redis or SQS: `visibility_timeout` has no effect; `lease_seconds` plays its part."""
    lines = check_options({"visibility_timeout": 3600, "max_connections": 20, "fanout_prefix": True}, BROKER_OPTIONS)
    assert lines == [
        "'visibility_timeout' (here: lease_seconds (renewed while a worker holds the message))",
        "'max_connections' (here: pool_max_size)",
        "'fanout_prefix' (here: nothing (fanout is routed in the database))",
    ]


def test_a_setting_in_the_wrong_dict_is_named_with_the_dict_it_belongs_in():
    """`max_result_bytes` set on the broker does not limit results: the backend reads it from its own dict."""
    assert check_options({"max_result_bytes": 10, "lease_seconds": 5}, BACKEND_OPTIONS) == [
        "'lease_seconds' belongs in broker_transport_options"]
    assert check_options({"max_result_bytes": 10, "lease_seconds": 5}, BROKER_OPTIONS) == [
        "'max_result_bytes' belongs in result_backend_transport_options"]


def test_keys_read_elsewhere_are_not_warned_about():
    """Kombu's own (retries, body_encoding), ours outside Settings (connect_options), and shared settings."""
    broker = {"schema": "s", "pool_max_size": 3, "connect_options": {"sslmode": "require"}, "max_retries": 3,
              "interval_start": 0, "body_encoding": "base64", "deadletter_queue": "dl", 7: "not a name"}
    assert check_options(broker, BROKER_OPTIONS) == []
    assert check_options({"schema": "s", "workflow_retention": 60, "synchronous_commit": False}, BACKEND_OPTIONS) == []
    assert check_options({"connect_options": {}}, BACKEND_OPTIONS)[0].startswith("'connect_options'")  # broker only


def test_each_key_is_warned_about_once_per_process(caplog):
    """Every connection builds Settings: the log must not repeat the same line for each."""
    with caplog.at_level(logging.WARNING, logger="celery_durable.config"):
        for _ in range(3):
            Settings.from_options({"lease_second": 5}, BROKER_OPTIONS)
        Settings.from_options({"lease_second": 5}, BACKEND_OPTIONS)  # another dict: said again, for it
    assert len(warned(caplog)) == 2


def test_without_a_component_nothing_is_checked(caplog):
    with caplog.at_level(logging.WARNING, logger="celery_durable.config"):
        assert Settings.from_options({"lease_second": 5}) == Settings()
    assert warned(caplog) == []


def test_values_from_text_are_coerced_to_the_settings_types():
    """Options often come from environment variables or a URL: text becomes the number or flag it says."""
    settings = Settings.from_options({
        "claim_batch": "7", "lease_seconds": "2.5", "polling_interval": 1, "auto_migrate": "false",
        "synchronous_commit": "yes", "prepared_statements": "auto", "listen_url": "postgresql://x/y",
        "max_deliveries": None,
    })
    assert (settings.claim_batch, settings.lease_seconds, settings.polling_interval) == (7, 2.5, 1.0)
    assert isinstance(settings.polling_interval, float) and isinstance(settings.claim_batch, int)
    assert settings.auto_migrate is False and settings.synchronous_commit is True
    assert settings.prepared_statements is None and settings.listen_url == "postgresql://x/y"
    assert settings.max_deliveries == Settings().max_deliveries  # None: the default
    assert Settings.from_options({"prepared_statements": "FALSE"}).prepared_statements is False
    assert Settings.from_options({"prepared_statements": True}).prepared_statements is True


@pytest.mark.parametrize("text, expected", [
    ("on", True), ("On", True), ("true", True), ("1", True), ("yes", True),
    ("off", False), ("false", False), ("0", False), ("no", False),
])
def test_flags_read_as_postgresql_spells_them(text, expected):
    """`synchronous_commit: "on"` (PostgreSQL's own spelling) must keep commits waiting for the WAL flush."""
    assert Settings.from_options({"synchronous_commit": text}).synchronous_commit is expected
    assert Settings.from_options({"prepared_statements": text}).prepared_statements is expected


@pytest.mark.parametrize("options, named", [
    ({"synchronous_commit": "ture"}, "synchronous_commit"),
    ({"auto_migrate": "sometimes"}, "auto_migrate"),
    ({"claim_batch": "many"}, "claim_batch"),
    ({"lease_seconds": "30s"}, "lease_seconds"),
    ({"claim_batch": [1]}, "claim_batch"),
])
def test_a_value_of_the_wrong_type_is_an_error_naming_the_option(options, named):
    """Not a silent False (a durability switch turned off by a typo), nor an error that does not say where."""
    with pytest.raises(ValueError, match=named):
        Settings.from_options(options)


@pytest.mark.parametrize("options, message", [
    ({"schema": "Shop-Tasks"}, "schema must be a lower-case identifier"),
    ({"schema": "x" * 64}, "schema must be a lower-case identifier"),
    ({"lease_seconds": 0}, "lease_seconds must be positive"),
    ({"beat_lease_seconds": -1}, "beat_lease_seconds must be positive"),
    ({"beat_catch_up": "sometimes"}, "beat_catch_up must be once, skip or all"),
])
def test_values_that_cannot_work_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_options(options)
