"""Turn Celery/Kombu URLs and connection fields into psycopg conninfo strings.

The same URL may reach us three ways: as Celery's ``result_backend`` string,
as a Kombu ``Connection`` already split into fields, or as a SQLAlchemy URL
(``postgresql+psycopg://``). All end as one canonical conninfo so broker and
backend on the same database share one pool.
"""

from __future__ import annotations

import ssl as _ssl
from typing import Any, Mapping
from urllib.parse import unquote

from psycopg.conninfo import conninfo_to_dict, make_conninfo

SCHEMES = ("postgresql", "postgres")
DEFAULT_PORT = "5432"

#: Kombu turns ``?ssl_<x>=…`` URL parameters into ``Connection.ssl``; these map to libpq keywords.
_SSL_KEYS = {
    "ssl_mode": "sslmode",
    "ssl_rootcert": "sslrootcert",
    "ssl_cert": "sslcert",
    "ssl_key": "sslkey",
    "ssl_password": "sslpassword",
    "ssl_crl": "sslcrl",
    "sslmode": "sslmode",
    "sslrootcert": "sslrootcert",
    "sslcert": "sslcert",
    "sslkey": "sslkey",
    "ca_certs": "sslrootcert",
    "ssl_ca_certs": "sslrootcert",
    "certfile": "sslcert",
    "ssl_certfile": "sslcert",
    "keyfile": "sslkey",
    "ssl_keyfile": "sslkey",
}
_CERT_REQS = {_ssl.CERT_REQUIRED: "verify-full", _ssl.CERT_OPTIONAL: "verify-ca", _ssl.CERT_NONE: "require"}


def from_url(url: str) -> str:
    """Conninfo for a ``postgresql://``/``postgres://``/``postgresql+driver://`` URL; query parameters pass to libpq."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("not a URL: expected postgresql://user@host:port/database")
    base = scheme.split("+", 1)[0].lower()
    if base not in SCHEMES:
        raise ValueError(f"unsupported URL scheme {scheme!r}: expected postgresql:// or postgres://")
    params = conninfo_to_dict(f"postgresql://{rest}")
    return canonical(params)


def from_kombu(client: Any, extra: Mapping[str, Any] | None = None) -> str:
    """Conninfo from a ``kombu.Connection``'s parsed fields and SSL/transport options."""
    params: dict[str, Any] = {}
    host = client.hostname
    if host:
        params["host"] = unquote(host)
    if client.port:
        params["port"] = client.port
    if client.userid:
        params["user"] = client.userid
    password = client.password
    if callable(password):
        password = password()
    if password:
        params["password"] = password
    if client.virtual_host and client.virtual_host != "/":
        params["dbname"] = client.virtual_host.lstrip("/")
    ssl = client.ssl
    if isinstance(ssl, Mapping):
        for key, value in ssl.items():
            if key in ("ssl_cert_reqs", "cert_reqs"):
                params.setdefault("sslmode", _CERT_REQS.get(value, "require"))
            elif key in _SSL_KEYS:
                params[_SSL_KEYS[key]] = value
    elif ssl:
        params["sslmode"] = "require"
    for key, value in (extra or {}).items():
        params[key] = value
    return canonical(params)


def canonical(params: Mapping[str, Any]) -> str:
    """A stable conninfo (sorted keywords) so equal targets share a pool."""
    clean = {k: str(v) for k, v in sorted(params.items()) if v not in (None, "")}
    if clean.get("port") == DEFAULT_PORT:
        del clean["port"]  # Kombu fills in the default port; a URL usually omits it: same target
    return make_conninfo(**clean)


def relaxed(conninfo: str) -> str:
    """The same target with ``synchronous_commit=off``: for writes a database crash may undo harmlessly.

    Leases (claims, renewals, requeues) qualify: an undone claim only means
    the message is delivered again, which a lease expiry would do anyway.
    """
    params = conninfo_to_dict(conninfo)
    params["options"] = f"{params.get('options', '')} -c synchronous_commit=off".strip()
    return make_conninfo(**params)


def describe(conninfo: str) -> str:
    """``user@host:port/dbname`` for messages and logs; never the password."""
    params = conninfo_to_dict(conninfo)
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    user = params.get("user") or "(default user)"
    dbname = params.get("dbname") or "(default database)"
    return f"{user}@{host}:{port}/{dbname}"
