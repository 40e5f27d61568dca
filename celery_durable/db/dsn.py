"""Turn Celery/Kombu URLs and connection fields into psycopg conninfo strings, and back.

One libpq URL works unchanged as ``broker_url``, ``result_backend`` and the
CLI's ``--url``: every libpq keyword is a query parameter
(``?sslmode=verify-full&sslrootcert=/ca.pem&target_session_attrs=read-write``),
hosts may be a list (``h1:5432,h2:5432``, libpq tries them in order), and
Kombu's ``ssl_*`` spellings are accepted too. The URL may also reach us as a
Kombu ``Connection`` split into fields (after a failover ``switch()``) or as a
SQLAlchemy URL (``postgresql+psycopg://``). All end as one canonical conninfo,
so broker and backend on the same database share one pool.
"""

from __future__ import annotations

import re
import ssl as _ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote, urlencode

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

SCHEMES = ("postgresql", "postgres")
DEFAULT_PORT = "5432"
#: What replaces a password in URLs shown in banners and logs.
MASK = "**"

#: Kombu's ``ssl_*`` spellings (URL parameters, ``broker_use_ssl`` keys) and their libpq keywords.
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
#: ``ssl_cert_reqs`` as Kombu URLs spell it.
_CERT_REQS_NAMES = {"cert_required": _ssl.CERT_REQUIRED, "required": _ssl.CERT_REQUIRED,
                    "cert_optional": _ssl.CERT_OPTIONAL, "optional": _ssl.CERT_OPTIONAL,
                    "cert_none": _ssl.CERT_NONE, "none": _ssl.CERT_NONE}
_PASSWORD_IN_URL = re.compile(r"(://[^:@/?#]*:)[^@/?#]*@")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ENCODE = ("write '/' as %2F, '@' as %40, '%' as %25, '?' as %3F and '#' as %23 in the user name, "
           "password and database name")


class AmbiguousURL(ValueError):
    """A URL that parsers would split differently (an unencoded '/', '@' or '%'): refused, never shown."""


def check_url(url: str) -> None:
    """Raise AmbiguousURL for a URL libpq, Kombu and urllib could read differently; the message shows none of it.

    An unencoded '/' or '@' in a password moves the host (libpq ends the user
    part at the first '@' before a '/', urllib at the last '@' before it), so
    the same URL would reach different servers as broker and backend, and
    show a part of the password as a host, port or database name; a stray
    '%' makes libpq's own error quote the password.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return
    end = min([i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0], default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if authority.count("@") > 1:
        raise AmbiguousURL(f"ambiguous {scheme}:// URL: more than one '@' before the host (an '@' in the user "
                           f"name or password?), so libpq and Kombu would reach different hosts; {_ENCODE}")
    if "@" not in authority:
        at, equals = tail.find("@"), tail.find("=")
        if at >= 0 and (equals < 0 or at < equals):
            raise AmbiguousURL(f"ambiguous {scheme}:// URL: an '@' after the first '/', '?' or '#' (one of those "
                               f"in the user name or password, or an '@' in the database name); {_ENCODE}")
    bad = _BAD_PERCENT.search(rest)
    if bad is not None:
        where = "query" if "?" in rest[:bad.start()] else (
            "user name or password" if bad.start() < authority.find("@") else "host or database name")
        raise AmbiguousURL(f"ambiguous {scheme}:// URL: a '%' in its {where} is not followed by two hex digits; "
                           f"{_ENCODE}")


def from_url(url: str) -> str:
    """Conninfo for a ``postgresql://``/``postgres://``/``postgresql+driver://`` URL.

    Query parameters are libpq keywords (or Kombu's ``ssl_*`` spellings of
    them); raises ValueError for another scheme or a parameter libpq does not
    know. The message never contains the password.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("not a URL: expected postgresql://user@host:port/database")
    base = scheme.split("+", 1)[0].lower()
    if base not in SCHEMES:
        raise ValueError(f"unsupported URL scheme {scheme!r}: expected postgresql:// or postgres://")
    check_url(url)
    location, _, query = rest.partition("?")
    # Split by hand, not with parse_qsl: libpq decodes %XX only ("+" stays "+"), so its own
    # keywords pass through raw; only Kombu's spellings are decoded and renamed here.
    libpq, ssl_params = [], {}
    for part in filter(None, query.split("&")):
        key, _, value = part.partition("=")
        if unquote(key) in _SSL_KEYS or unquote(key) == "ssl_cert_reqs":
            ssl_params[unquote(key)] = unquote(value)
        else:
            libpq.append(part)
    try:
        parsed = conninfo_to_dict(f"postgresql://{location}" + (f"?{'&'.join(libpq)}" if libpq else ""))
    except psycopg.ProgrammingError as exc:
        # libpq quotes the token it could not read: never one that sets a password.
        why = re.sub(r'"[^"]*password[^"]*"', '"(not shown)"', str(exc).strip(), flags=re.IGNORECASE)
        raise ValueError(f"invalid PostgreSQL URL {mask_url(url)}: {why}") from None
    parsed.update(_ssl_params(ssl_params))
    return canonical(parsed)


def from_kombu(client: Any, extra: Mapping[str, Any] | None = None) -> str:
    """Conninfo from a ``kombu.Connection``: its URL (kept whole, see ``can_parse_url``) or parsed fields.

    ``broker_use_ssl`` (``client.ssl``) and the transport option
    ``connect_options`` (``extra``) add libpq keywords; fields Celery gives
    apart from the URL (``broker_user``, ``broker_password``, ``broker_port``)
    fill in what the URL leaves out.
    """
    host = client.hostname or ""
    params: dict[str, Any] = conninfo_to_dict(from_url(host)) if "://" in host else {}
    if host and "://" not in host:
        params["host"] = unquote(host)
    password = client.password
    if callable(password):
        password = password()
    for key, value in (("port", client.port), ("user", client.userid), ("password", password)):
        if value and key not in params:
            params[key] = value
    if "://" not in host and client.virtual_host and client.virtual_host != "/":
        params["dbname"] = client.virtual_host.lstrip("/")
    ssl = client.ssl
    if isinstance(ssl, Mapping):
        params.update(_ssl_params(ssl))
    elif ssl:
        params.setdefault("sslmode", "require")
    for key, value in (extra or {}).items():
        params[key] = value
    return canonical(params)


def _ssl_params(ssl: Mapping[str, Any]) -> dict[str, Any]:
    """libpq keywords for Kombu-style SSL options (``ssl_cert_reqs`` becomes an ``sslmode``)."""
    params: dict[str, Any] = {}
    for key, value in ssl.items():
        if key in ("ssl_cert_reqs", "cert_reqs"):
            if isinstance(value, str):
                value = _CERT_REQS_NAMES.get(value.lower(), value)
            params.setdefault("sslmode", _CERT_REQS.get(value, "require"))
        elif key in _SSL_KEYS:
            params[_SSL_KEYS[key]] = value
    # An explicit sslmode beats the one implied by ssl_cert_reqs.
    explicit = [v for k, v in ssl.items() if _SSL_KEYS.get(k) == "sslmode"]
    if explicit:
        params["sslmode"] = explicit[-1]
    return params


def canonical(params: Mapping[str, Any]) -> str:
    """A stable conninfo (sorted keywords) so equal targets share a pool."""
    clean = {k: str(v) for k, v in sorted(params.items()) if v not in (None, "")}
    if clean.get("port") == DEFAULT_PORT:
        del clean["port"]  # Kombu fills in the default port; a URL usually omits it: same target
    return make_conninfo(**clean)


def to_url(conninfo: str, *, mask: str | None = None) -> str:
    """A ``postgresql://`` URL for a conninfo (multi-host lists kept); ``mask`` replaces the password."""
    params = conninfo_to_dict(conninfo)
    user = quote(str(params.pop("user", "") or ""), safe="")
    password = params.pop("password", None)
    if password and mask is not None:
        password = mask
    auth = f"{user}:{quote(str(password), safe='*')}@" if password else (f"{user}@" if user else "")
    dbname = quote(str(params.pop("dbname", "") or ""), safe="")
    hosts = _hosts(params)
    query = f"?{urlencode(params, quote_via=quote)}" if params else ""
    return f"postgresql://{auth}{hosts}/{dbname}{query}"


def _hosts(params: dict[str, Any]) -> str:
    """``h1:p1,h2:p2`` for the URL's authority; pops host and port from ``params``."""
    hosts = str(params.pop("host", "") or "").split(",")
    ports = str(params.pop("port", "") or "").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    if len(ports) != len(hosts):  # libpq would refuse it too; keep both lists as they are
        params["port"] = ",".join(ports)
        ports = [""] * len(hosts)
    return ",".join(quote(h, safe="") + (f":{p}" if p else "") for h, p in zip(hosts, ports, strict=True))


def split_password(url: str) -> tuple[str, str | None]:
    """``(the URL without the password of its user part, that password)``; the rest is kept as written."""
    scheme, sep, rest = url.partition("://")
    end = min([i for i in (rest.find("/"), rest.find("?")) if i >= 0], default=len(rest))
    authority, tail = rest[:end], rest[end:]
    userinfo, at, hosts = authority.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if not sep or not at or not colon:
        return url, None
    return f"{scheme}://{user}@{hosts}{tail}", unquote(password)


def with_password(url: str, password: str) -> str:
    """``url`` (without a password) with ``password`` in its user part."""
    scheme, _, rest = url.partition("://")
    user, at, after = rest.partition("@")
    if not at or "/" in user or "?" in user:
        return url
    return f"{scheme}://{user}:{quote(password, safe='*')}@{after}"


def mask_url(url: str, mask: str = MASK) -> str:
    """The URL as banners and logs may show it: password (in the authority or the query) masked.

    An ambiguous URL (see ``check_url``) shows as its scheme only: where its password ends is unknown.
    """
    try:
        return to_url(from_url(url), mask=mask)
    except AmbiguousURL:
        return f"{url.partition('://')[0]}://{mask}"
    except Exception:  # noqa: BLE001 - unparsable: mask what looks like a password, show the rest
        masked = _PASSWORD_IN_URL.sub(lambda m: f"{m.group(1)}{mask}@", url)
        return re.sub(r"([?&]password=)[^&]*", rf"\g<1>{mask}", masked)


def describe(conninfo: str) -> str:
    """``user@host:port/dbname`` (hosts listed as in the URL) for messages and logs; never the password."""
    params = conninfo_to_dict(conninfo)
    params.setdefault("host", "localhost")
    params.setdefault("port", DEFAULT_PORT)
    user = params.get("user") or "(default user)"
    dbname = params.get("dbname") or "(default database)"
    return f"{user}@{unquote(_hosts(params))}/{dbname}"
