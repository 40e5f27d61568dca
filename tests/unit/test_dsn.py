"""URL handling: libpq keywords, Kombu's ssl_* spellings, host lists, masking (no database needed)."""

from __future__ import annotations

import ssl

import kombu
import pytest
from psycopg.conninfo import conninfo_to_dict

import celery_durable  # noqa: F401
from celery_durable.db import dsn

URL = "postgresql://app:s%40cret@h1:5432,h2:5433/shop?target_session_attrs=read-write&sslmode=verify-full"


def test_libpq_keywords_and_host_lists_pass_through():
    params = conninfo_to_dict(dsn.from_url(URL + "&application_name=a%20b&options=-c%20x%3Dy"))
    assert params == {"host": "h1,h2", "port": "5432,5433", "user": "app", "password": "s@cret", "dbname": "shop",
                      "target_session_attrs": "read-write", "sslmode": "verify-full",
                      "application_name": "a b", "options": "-c x=y"}


def test_kombu_ssl_spellings_become_libpq_keywords():
    conninfo = dsn.from_url("postgres://u@h/db?ssl_mode=verify-ca&ssl_rootcert=/ca.pem&ssl_cert=/c.pem&ssl_key=/k.pem")
    assert conninfo == dsn.from_url("postgresql://u@h/db?sslmode=verify-ca&sslrootcert=/ca.pem&sslcert=/c.pem&sslkey=/k.pem")
    assert "sslmode=verify-full" in dsn.from_url("postgresql://u@h/db?ssl_cert_reqs=CERT_REQUIRED")


def test_broker_use_ssl_and_connect_options_reach_libpq():
    client = kombu.Connection(URL, ssl={"ssl_cert_reqs": ssl.CERT_REQUIRED, "ca_certs": "/ca.pem"})
    params = conninfo_to_dict(dsn.from_kombu(client, {"keepalives_idle": 30}))
    assert params["sslrootcert"] == "/ca.pem" and params["sslmode"] == "verify-full"
    assert params["keepalives_idle"] == "30" and params["host"] == "h1,h2"


def test_fields_after_a_kombu_switch_still_work():
    client = kombu.Connection("postgresql://a@127.0.0.1:1/x;postgresql://u:pw@%2Ftmp%2Fsock:5433/db")
    client.switch(client.alt[1])
    assert conninfo_to_dict(dsn.from_kombu(client)) == {"host": "/tmp/sock", "port": "5433", "user": "u",
                                                        "password": "pw", "dbname": "db"}


def test_masked_for_banners_and_described_for_errors():
    assert dsn.mask_url(URL) == ("postgresql://app:**@h1:5432,h2:5433/shop"
                                 "?sslmode=verify-full&target_session_attrs=read-write")
    assert dsn.mask_url("postgresql://u:pw@h/db?password=pw2&bogus") == "postgresql://u:**@h/db?password=**&bogus"
    assert dsn.describe(dsn.from_url(URL)) == "app@h1:5432,h2:5433/shop"
    assert dsn.from_url(dsn.to_url(dsn.from_url(URL))) == dsn.from_url(URL)


def test_unknown_parameter_is_a_value_error_without_the_password():
    with pytest.raises(ValueError, match="no_such") as error:
        dsn.from_url("postgresql://u:topsecret@h/db?no_such=1")
    assert "topsecret" not in str(error.value)


def test_password_kept_apart_from_the_url_kombu_shows():
    client = kombu.Connection("postgresql://app:p%40ss@h1:5432,h2/shop?sslmode=require")
    assert client.transport.conninfo == dsn.from_url("postgresql://app:p%40ss@h1:5432,h2/shop?sslmode=require")
    assert client.hostname == "postgresql://app@h1:5432,h2/shop?sslmode=require" and client.password == "p@ss"
    assert client.as_uri() == "postgresql://app:**@h1:5432,h2/shop?sslmode=require"
    assert client.as_uri(include_password=True) == "postgresql://app:p%40ss@h1:5432,h2/shop?sslmode=require"


@pytest.mark.parametrize("url", [
    "postgresql://app:tOp9/S3cret@h/db",       # '/' in the password: libpq takes 'app' for the host
    "postgresql://app:tOp9@S3cret@h/db",       # '@': libpq and Kombu would split at different '@'
    "postgresql://app:tOp9%S3cret@h/db",       # '%' not followed by two hex digits
    "postgresql://app:tOp9?S3cret@h/db",       # '?': the rest of the password reads as the query
    "postgresql://h/db?password=tOp9%S3cret",  # libpq's error would quote it
])
def test_an_ambiguous_url_is_refused_without_showing_any_of_it(url):
    with pytest.raises(dsn.AmbiguousURL, match="ambiguous") as error:
        dsn.from_url(url)
    assert "tOp9" not in str(error.value) and "S3cret" not in str(error.value)
    assert dsn.mask_url(url) == "postgresql://**"


@pytest.mark.parametrize("url", [
    "postgresql://app:a%2Fb%40c%25d%3Fe@h1:5432,h2/db?sslrootcert=/etc/ca.pem&application_name=me@host",
    "postgresql://app:pw@[::1]:5432/db",
    "postgresql://postgres@%2Ftmp%2Fsock/db?options=-c%20x%3Dy",
    "postgresql:///db?host=/tmp&user=someone@corp",
])
def test_unambiguous_urls_stay_accepted(url):
    dsn.check_url(url)
    assert dsn.from_url(url)
