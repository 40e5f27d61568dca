"""Certificates for TLS tests, made with the ``openssl`` command: a CA, a server and a client certificate.

The server certificate names ``localhost`` and ``127.0.0.1`` (what
``sslmode=verify-full`` checks); the client certificate's CN is the database
user it authenticates (what ``clientcert=verify-full`` checks). A second,
unrelated CA plays the wrong one.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "2"
KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    wrong_ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{done.stderr}")


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    _openssl("req", "-x509", *KEY, "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", DAYS,
             "-subj", f"/CN={name}", cwd=folder)
    return folder / f"{name}.crt", folder / f"{name}.key"


def _signed(folder: Path, name: str, subject: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    _openssl("req", "-new", *KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=folder)
    (folder / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-out", f"{name}.crt", "-days", DAYS, "-extfile", f"{name}.ext", cwd=folder)
    key = folder / f"{name}.key"
    key.chmod(0o600)  # libpq refuses a client key others can read
    return folder / f"{name}.crt", key


def make_certificates(folder: Path, client_user: str = "postgres") -> Certificates:
    """Write a CA, a server certificate for localhost/127.0.0.1, a client certificate for ``client_user``, a wrong CA."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "ca")
    server = _signed(folder, "server", "/CN=localhost", ca,
                     "subjectAltName = DNS:localhost, IP:127.0.0.1\nextendedKeyUsage = serverAuth\n")
    client = _signed(folder, "client", f"/CN={client_user}", ca, "extendedKeyUsage = clientAuth\n")
    wrong_ca, _ = _ca(folder, "wrong_ca")
    return Certificates(ca[0], server[0], server[1], client[0], client[1], wrong_ca)
