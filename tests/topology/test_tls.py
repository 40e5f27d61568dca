"""A server that accepts only TLS, with certificates the test makes with openssl (issue 10 §3).

TCP lines of pg_hba.conf are all ``hostssl``; the application's user must
also present a client certificate signed by the test's CA. One libpq URL
(``sslmode=verify-full``, ``sslrootcert``, ``sslcert``, ``sslkey``) serves the
worker's broker and backend, the client and the CLI.
"""

from __future__ import annotations

import kombu
import pytest
from celery import chord
from click.testing import CliRunner

import celery_durable  # noqa: F401
from celery_durable import durable_chain
from celery_durable.cli import durable
from celery_durable.db import migrate
from tests.apps.topology_app import create_tables, make_app
from tests.support.pgcluster import ServerTls
from tests.support.tls import make_certificates

pytestmark = [pytest.mark.slow, pytest.mark.own_servers]

SCHEMA = "topo"
USER = "app"


@pytest.fixture
def tls_server(pg_cluster, tmp_path):
    certs = make_certificates(tmp_path / "certs", client_user=USER)
    cluster = pg_cluster(
        tls=ServerTls(certs.server_cert, certs.server_key, ca=certs.ca),
        hba=[f"hostssl all {USER} 127.0.0.1/32 trust clientcert=verify-full",
             "hostssl all all 127.0.0.1/32 trust"],
    )
    cluster.execute(f"CREATE ROLE {USER} LOGIN")
    with cluster.connect() as conn:  # the owner migrates (over the socket); the application role has DML
        migrate.ensure_schema(conn, SCHEMA)
        create_tables(conn, SCHEMA)
        conn.execute(migrate.grants(SCHEMA, USER))
    return cluster, certs


def _cli(url: str, *args: str):
    return CliRunner().invoke(durable, ["--url", url, "--schema", SCHEMA, *args])


def test_verify_full_with_a_client_certificate_runs_tasks_chord_and_chain(tls_server, workers):
    cluster, certs = tls_server
    url = cluster.url(user=USER, sslmode="verify-full", sslrootcert=str(certs.ca),
                      sslcert=str(certs.client_cert), sslkey=str(certs.client_key))
    env = {"CELERY_DURABLE_URL": url, "CELERY_DURABLE_SCHEMA": SCHEMA, "CELERY_DURABLE_LISTEN_URL": ""}
    workers("tests.apps.topology_app", env=env)
    app = make_app(env)
    assert app.signature("topo.add", (2, 3)).delay().get(timeout=30) == 5
    assert chord([app.signature("topo.add", (i, i)) for i in range(4)])(app.signature("topo.tsum")).get(timeout=30) == 12
    wf = durable_chain(app.signature("topo.charge", (7,)), app.signature("topo.reserve"),
                       app.signature("topo.notify"), app=app).apply_async()
    assert wf.get(timeout=60) == "order 7: 70"

    result = _cli(url, "queues")
    assert result.exit_code == 0 and "celery" in result.output, result.output
    encrypted = cluster.execute("SELECT count(*) FILTER (WHERE NOT s.ssl), count(*) FROM pg_stat_activity a "
                                "JOIN pg_stat_ssl s USING (pid) WHERE a.usename = %s", (USER,))[0]
    assert encrypted[0] == 0 and encrypted[1] > 0  # every session of the app is encrypted


def test_wrong_ca_says_certificate_verification_failed(tls_server):
    cluster, certs = tls_server
    url = cluster.url(sslmode="verify-full", sslrootcert=str(certs.wrong_ca))
    result = _cli(url, "queues")
    assert result.exit_code == 1 and "certificate verify failed" in result.output, result.output
    assert f"postgres@127.0.0.1:{cluster.port}/postgres" in result.output  # which server refused
    with pytest.raises(Exception, match="certificate verify failed"):
        kombu.Connection(url, transport_options={"schema": SCHEMA, "connect_timeout": 3}).connect()


def test_a_client_certificate_is_required_where_the_server_asks_for_one(tls_server):
    cluster, certs = tls_server
    without = cluster.url(user=USER, sslmode="verify-full", sslrootcert=str(certs.ca))
    result = _cli(without, "queues")
    assert result.exit_code == 1 and "requires a valid client certificate" in result.output, result.output
    plain = cluster.url(sslmode="disable")
    result = _cli(plain, "queues")
    assert result.exit_code == 1 and "no encryption" in result.output, result.output  # hostssl only
