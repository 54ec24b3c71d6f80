"""TLS material and the SCRAM user of a local cluster whose client listener is secured.

Everything lives in ``<data-dir>/tls/`` (mode 0700) and is reused by later runs of the same
data dir, so that a client configured once (``SLUICE_SSL_CAFILE``, the password file) keeps
working across broker restarts:

    ca.pem              the CA certificate clients verify the broker with (SLUICE_SSL_CAFILE)
    ca.key              its key; kept so that a lost server certificate can be re-issued
    server.pem/.key     the broker's certificate for 127.0.0.1 (SAN IP:127.0.0.1, DNS:localhost)
    keystore.p12        server key + chain for the broker (PKCS12)
    truststore.p12      the CA as a trusted entry (PKCS12, written by the JDK's keytool: OpenSSL
                        3.0 cannot mark a certificate-only PKCS12 entry as trusted for Java)
    store-password      password of both stores (0600)
    sasl-password       the SCRAM password of user ``sluice`` (0600; SLUICE_SASL_PASSWORD_FILE)

Certificates are made with the ``openssl`` command rather than a Python package: it is on every
Debian machine, and the broker needs files anyway. Secrets never go on a command line: OpenSSL
and keytool read the store password from a file, and the SCRAM credential handed to Kafka's
StorageTool is the *salted* password (RFC 5802 ``SaltedPassword``), not the password itself.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from service.devbroker.ports import HOST
from service.errors import ConfigError, OperationError

SASL_USERNAME = "sluice"
CLIENT_SASL_MECHANISM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 4096  # Kafka's minimum, and what its own tools use by default

_OPENSSL_TIMEOUT = 60.0
_CERT_DAYS = "825"  # the longest validity some TLS clients still accept for a leaf
_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}


@dataclass(frozen=True)
class TlsFiles:
    """Paths of ``<data-dir>/tls/`` (see the module docstring)."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def keystore(self) -> Path:
        return self.directory / "keystore.p12"

    @property
    def truststore(self) -> Path:
        return self.directory / "truststore.p12"

    @property
    def store_password_file(self) -> Path:
        return self.directory / "store-password"

    @property
    def sasl_password_file(self) -> Path:
        return self.directory / "sasl-password"


@dataclass(frozen=True)
class TlsMaterial:
    """What the broker properties need from :func:`ensure_tls`."""

    keystore: Path
    truststore: Path
    store_password: str = field(repr=False)


def ensure_tls(files: TlsFiles) -> TlsMaterial:
    """Create the CA, the server certificate and both stores unless all of them exist.

    Partial leftovers (an interrupted earlier run) are replaced as a whole: a keystore whose
    certificate was signed by a CA that ``ca.pem`` no longer holds would fail every client.
    """
    _private_dir(files.directory)
    wanted = (files.ca_cert, files.ca_key, files.keystore, files.truststore, files.store_password_file)
    if all(path.is_file() for path in wanted):
        return TlsMaterial(files.keystore, files.truststore, _read_secret(files.store_password_file))
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ConfigError("openssl not found on PATH: needed for --tls (Debian: apt-get install openssl)")
    keytool = _keytool()
    for path in (*wanted, files.server_cert, files.server_key, files.directory / "ca.srl"):
        path.unlink(missing_ok=True)
    password = secrets.token_urlsafe(24)
    _write_secret(files.store_password_file, password)
    store_pass = f"file:{files.store_password_file}"
    extensions = files.directory / "server.ext"
    extensions.write_text(
        f"subjectAltName=IP:{HOST},DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n",
        encoding="utf-8",
    )
    csr = files.directory / "server.csr"
    rsa = ["-newkey", "rsa:2048", "-nodes"]
    _run(
        [openssl, "req", "-x509", *rsa, "-days", "3650", "-subj", "/CN=sluice dev broker CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign",
         "-keyout", str(files.ca_key), "-out", str(files.ca_cert)],
    )  # fmt: skip
    _run([openssl, "req", "-new", *rsa, "-subj", f"/CN={HOST}",
          "-keyout", str(files.server_key), "-out", str(csr)])  # fmt: skip
    _run(
        [openssl, "x509", "-req", "-in", str(csr), "-CA", str(files.ca_cert), "-CAkey", str(files.ca_key),
         "-CAcreateserial", "-days", _CERT_DAYS, "-sha256", "-extfile", str(extensions),
         "-out", str(files.server_cert)],
    )  # fmt: skip
    _run(
        [openssl, "pkcs12", "-export", "-in", str(files.server_cert), "-inkey", str(files.server_key),
         "-certfile", str(files.ca_cert), "-name", "broker", "-passout", store_pass,
         "-out", str(files.keystore)],
    )  # fmt: skip
    _run(
        [keytool, "-importcert", "-noprompt", "-alias", "sluice-ca", "-file", str(files.ca_cert),
         "-storetype", "PKCS12", "-keystore", str(files.truststore),
         "-storepass:file", str(files.store_password_file)],
    )  # fmt: skip
    for leftover in (csr, extensions, files.directory / "ca.srl"):
        leftover.unlink(missing_ok=True)
    for secret in (files.ca_key, files.server_key, files.keystore, files.truststore):
        secret.chmod(0o600)
    return TlsMaterial(files.keystore, files.truststore, password)


def ensure_sasl_password(files: TlsFiles) -> str:
    """The SCRAM password of :data:`SASL_USERNAME`, read from its file or made and written there.

    A password is made only once per data dir: the user is written into the metadata log at
    format time, so a later run must keep the password that log already holds.
    """
    _private_dir(files.directory)
    path = files.sasl_password_file
    if path.is_file():
        password = _read_secret(path)
        if password:
            return password
    password = secrets.token_urlsafe(24)
    _write_secret(path, password)
    return password


def scram_credential(mechanism: str, username: str, password: str, salt: bytes | None = None) -> str:
    """A StorageTool ``--add-scram`` value with the salted password instead of the password.

    ``SaltedPassword = Hi(password, salt, i)`` of RFC 5802 is PBKDF2-HMAC with the mechanism's
    hash, which is what the broker stores; handing it over this way keeps the password itself
    out of the format tool's argv (readable by every local user in ``/proc``).
    """
    name = _HASHES.get(mechanism)
    if name is None:
        raise ConfigError(f"unknown SCRAM mechanism {mechanism!r}: use one of {sorted(_HASHES)}")
    if not username or any(ch in username for ch in ',[]="'):
        raise ConfigError(f"SCRAM user name {username!r} must be non-empty without , [ ] = or quotes")
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac(name, password.encode("utf-8"), salt, SCRAM_ITERATIONS)
    return (
        f"{mechanism}=[name={username},iterations={SCRAM_ITERATIONS},"
        f'salt="{base64.b64encode(salt).decode("ascii")}",'
        f'saltedpassword="{base64.b64encode(salted).decode("ascii")}"]'
    )


def _keytool() -> str:
    """The JDK's keytool, next to the java that runs the broker."""
    from service.devbroker.jvm import java_executable

    beside = Path(java_executable()).resolve().parent / "keytool"
    if beside.is_file():
        return str(beside)
    found = shutil.which("keytool")
    if found is None:
        raise ConfigError("keytool not found (it ships with the JDK): needed for --tls")
    return found


def _run(command: list[str]) -> None:
    """Run one certificate tool quietly; fail with its own last lines."""
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=_OPENSSL_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OperationError(f"{Path(command[0]).name} {command[1]} failed: {exc}") from exc
    if result.returncode != 0:
        lines = (result.stdout + result.stderr).splitlines()
        output = " | ".join(line.strip() for line in lines if line.strip())
        raise OperationError(
            f"{Path(command[0]).name} {command[1]} failed (exit {result.returncode}): {output[-800:]}"
        )


def _private_dir(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)


def _write_secret(path: Path, value: str) -> None:
    """Write ``value`` + newline to a file created with mode 0600 (never readable by others)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")


def _read_secret(path: Path) -> str:
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[0].strip() if lines else ""
