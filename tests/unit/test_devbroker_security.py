"""TLS/SCRAM of the local broker and the client's diagnosis of a refused connection, without a JVM.

The broker side is checked as properties and files (listeners, certificates, the SCRAM
credential against RFC 7677's test vector); the client side against tiny local servers that
behave like a TLS port seen by a PLAINTEXT client (accept, then close), a frozen broker
(accept, never answer) and a closed port. The real broker is in tests/integration/test_security.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed, UnsupportedSaslMechanismError
from click.testing import CliRunner

from service.cli import main
from service.devbroker import LocalCluster, free_port_block, jars
from service.devbroker.config import ClientSecurity, node_properties, plan_nodes
from service.devbroker.jvm import _shown
from service.devbroker.security import (
    TlsFiles,
    TlsMaterial,
    ensure_sasl_password,
    ensure_tls,
    scram_credential,
)
from service.devbroker.version import resolve_version
from service.errors import ConfigError, OperationError
from service.kafka.client_config import client_kwargs
from service.kafka.connect import _classify, connection_error, diagnose_connection
from service.settings import Settings


def _settings(**values: object) -> Settings:
    return Settings(**values)  # type: ignore[arg-type]


def _secured(tmp_path: Path, *, tls: bool, sasl: bool) -> dict[str, str]:
    (node,) = plan_nodes(29092, 1, [41001], tmp_path, internal_ports=[41002])
    security = ClientSecurity(
        tls=tls,
        sasl_scram=sasl,
        keystore=tmp_path / "k.p12" if tls else None,
        truststore=tmp_path / "t.p12" if tls else None,
        store_password="store-pw" if tls else None,
    )
    return node_properties(node, [node], None, security)


def test_sasl_ssl_client_listener_and_plaintext_internal_one(tmp_path: Path) -> None:
    props = _secured(tmp_path, tls=True, sasl=True)
    assert props["listeners"] == (
        "CLIENT://127.0.0.1:29092,INTERNAL://127.0.0.1:41002,CONTROLLER://127.0.0.1:41001"
    )
    assert props["advertised.listeners"] == "CLIENT://127.0.0.1:29092,INTERNAL://127.0.0.1:41002"
    assert props["inter.broker.listener.name"] == "INTERNAL"
    assert (
        props["listener.security.protocol.map"] == "CLIENT:SASL_SSL,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT"
    )
    assert props["listener.name.client.sasl.enabled.mechanisms"] == "SCRAM-SHA-512,SCRAM-SHA-256"
    for mechanism in ("scram-sha-512", "scram-sha-256"):
        assert props[f"listener.name.client.{mechanism}.sasl.jaas.config"] == (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        )
    assert props["listener.name.client.ssl.keystore.location"] == str(tmp_path / "k.p12")
    assert props["listener.name.client.ssl.keystore.type"] == "PKCS12"
    assert props["listener.name.client.ssl.truststore.location"] == str(tmp_path / "t.p12")
    # Security settings apply to the client listener only, never globally.
    assert not [key for key in props if key.startswith(("ssl.", "sasl."))]


@pytest.mark.parametrize(("tls", "sasl", "protocol"), [(True, False, "SSL"), (False, True, "SASL_PLAINTEXT")])
def test_tls_alone_and_sasl_alone(tls: bool, sasl: bool, protocol: str, tmp_path: Path) -> None:
    props = _secured(tmp_path, tls=tls, sasl=sasl)
    assert props["listener.security.protocol.map"].startswith(f"CLIENT:{protocol},")
    assert any(key.startswith("listener.name.client.ssl.") for key in props) == tls
    assert any(key.startswith("listener.name.client.sasl.") for key in props) == sasl


def test_plaintext_properties_are_unchanged_by_an_empty_security(tmp_path: Path) -> None:
    (node,) = plan_nodes(29092, 1, [41001], tmp_path)
    assert node_properties(node, [node], None, ClientSecurity()) == node_properties(node, [node])
    assert node_properties(node, [node])["listeners"] == (
        "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:41001"
    )


def test_secured_listeners_need_internal_ports_and_stores(tmp_path: Path) -> None:
    (node,) = plan_nodes(29092, 1, [41001], tmp_path)
    with pytest.raises(ConfigError, match="internal port"):
        node_properties(node, [node], None, ClientSecurity(sasl_scram=True))
    with pytest.raises(ConfigError, match="keystore"):
        ClientSecurity(tls=True)
    bad = {1: ([29092], [41001], [41002, 41003]), 3: ([41002, 41002, 41003], [41002, 41003, 29094])}
    for brokers, plans in bad.items():
        for internal in plans:
            with pytest.raises(ConfigError, match="internal ports"):
                plan_nodes(29092, brokers, [41001, 41004, 41005][:brokers], tmp_path, internal_ports=internal)


def test_scram_credential_is_rfc_5802_salted_password() -> None:
    """RFC 7677's SCRAM-SHA-256 example: user "user", password "pencil", its salt and proof."""
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    credential = scram_credential("SCRAM-SHA-256", "user", "pencil", salt=salt)
    match = re.fullmatch(
        r'SCRAM-SHA-256=\[name=user,iterations=4096,salt="([^"]+)",saltedpassword="([^"]+)"\]', credential
    )
    assert match is not None and base64.b64decode(match.group(1)) == salt
    salted = base64.b64decode(match.group(2))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    auth = f"n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r={nonce}"
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth.encode(), hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    assert base64.b64encode(proof).decode() == "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    assert "pencil" not in credential


def test_scram_credential_sha512_and_refusals() -> None:
    credential = scram_credential("SCRAM-SHA-512", "sluice", "pw")
    salted = re.search(r'saltedpassword="([^"]+)"', credential)
    assert salted is not None and len(base64.b64decode(salted.group(1))) == 64
    assert scram_credential("SCRAM-SHA-512", "sluice", "pw") != credential  # a new salt each time
    with pytest.raises(ConfigError):
        scram_credential("PLAIN", "sluice", "pw")
    with pytest.raises(ConfigError):
        scram_credential("SCRAM-SHA-512", "a,b", "pw")


def test_format_errors_never_show_scram_credentials() -> None:
    shown = _shown(["java", "StorageTool", "format", "--add-scram", "SCRAM-SHA-512=[x]", "-S", "y", "-g"])
    assert shown == ["java", "StorageTool", "format", "--add-scram", "***", "-S", "***", "-g"]


def test_sasl_password_file_is_private_and_kept(tmp_path: Path) -> None:
    files = TlsFiles(tmp_path / "tls")
    first = ensure_sasl_password(files)
    assert len(first) >= 24
    assert files.sasl_password_file.stat().st_mode & 0o777 == 0o600
    assert files.directory.stat().st_mode & 0o777 == 0o700
    assert ensure_sasl_password(files) == first


def test_client_env_names_the_password_file_never_the_password(tmp_path: Path) -> None:
    cluster = LocalCluster(base_port=29092, data_dir=tmp_path, tls=True, sasl_scram=True)
    assert cluster.client_env == {
        "SLUICE_BROKERS": "127.0.0.1:29092",
        "SLUICE_SECURITY_PROTOCOL": "SASL_SSL",
        "SLUICE_SSL_CAFILE": str(tmp_path / "tls" / "ca.pem"),
        "SLUICE_SASL_MECHANISM": "SCRAM-SHA-512",
        "SLUICE_SASL_USERNAME": "sluice",
        "SLUICE_SASL_PASSWORD_FILE": str(tmp_path / "tls" / "sasl-password"),
    }
    kinds = {
        (tls, sasl): LocalCluster(data_dir=tmp_path, tls=tls, sasl_scram=sasl).security_protocol
        for tls in (False, True)
        for sasl in (False, True)
    }
    assert kinds == {
        (False, False): "PLAINTEXT",
        (True, False): "SSL",
        (False, True): "SASL_PLAINTEXT",
        (True, True): "SASL_SSL",
    }
    assert LocalCluster(data_dir=tmp_path).client_env == {
        "SLUICE_BROKERS": "127.0.0.1:9092",
        "SLUICE_SECURITY_PROTOCOL": "PLAINTEXT",
    }


def test_data_dir_formatted_without_scram_is_refused(tmp_path: Path) -> None:
    """--ignore-formatted cannot add the SCRAM user later: say so instead of failing every login."""
    if jars.cached_lib_dir(resolve_version()) is None:
        pytest.skip("needs the Kafka jars in the cache (sluice dev jars)")
    (tmp_path / "node-1").mkdir()
    (tmp_path / "node-1" / "meta.properties").write_text("version=1\n")
    cluster = LocalCluster(base_port=free_port_block(1), data_dir=tmp_path, sasl_scram=True)
    with pytest.raises(ConfigError, match="formatted without a SCRAM user"):
        cluster.start()
    assert cluster.pid_of(1) is None


def test_dev_broker_offers_tls_and_sasl_flags() -> None:
    result = CliRunner().invoke(main, ["dev", "broker", "--help"])
    assert result.exit_code == 0
    assert "--tls" in result.output and "--sasl-scram" in result.output


# -- certificates (openssl + keytool) --------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[TlsFiles, TlsMaterial]:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    files = TlsFiles(tmp_path_factory.mktemp("tls") / "tls")
    try:
        material = ensure_tls(files)
    except ConfigError as exc:  # no keytool
        pytest.skip(str(exc))
    return files, material


def test_tls_files_are_made_once_and_private(tls: tuple[TlsFiles, TlsMaterial]) -> None:
    files, material = tls
    for secret in (
        files.ca_key,
        files.server_key,
        files.keystore,
        files.truststore,
        files.store_password_file,
    ):
        assert secret.stat().st_mode & 0o777 == 0o600, secret
    before = {path: path.read_bytes() for path in files.directory.iterdir()}
    assert ensure_tls(files) == material
    assert {path: path.read_bytes() for path in files.directory.iterdir()} == before
    assert sorted(path.name for path in files.directory.iterdir()) == sorted(
        ["ca.pem", "ca.key", "server.pem", "server.key", "keystore.p12", "truststore.p12", "store-password"]
    )


def test_server_certificate_names_127_0_0_1_and_localhost(tls: tuple[TlsFiles, TlsMaterial]) -> None:
    files, _ = tls
    text = subprocess.run(
        ["openssl", "x509", "-in", str(files.server_cert), "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "IP Address:127.0.0.1" in text and "DNS:localhost" in text
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(files.ca_cert), str(files.server_cert)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr


def test_keystore_opens_with_the_store_password(tls: tuple[TlsFiles, TlsMaterial]) -> None:
    files, material = tls
    listing = subprocess.run(
        ["openssl", "pkcs12", "-in", str(material.keystore), "-nokeys", "-passin",
         f"file:{files.store_password_file}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.count("BEGIN CERTIFICATE") == 2  # server certificate and CA


@contextmanager
def _tls_server(files: TlsFiles) -> Iterator[int]:
    """A one-connection-at-a-time TLS server with the broker's certificate; yields its port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.server_cert, files.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def _handshake(context: ssl.SSLContext, port: int, server_hostname: str) -> None:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        context.wrap_socket(sock, server_hostname=server_hostname),
    ):
        pass


def test_client_context_verifies_the_broker_by_ip_and_by_name(tls: tuple[TlsFiles, TlsMaterial]) -> None:
    """``check_hostname`` stays on: the IP SAN matches 127.0.0.1, the DNS SAN localhost."""
    files, _ = tls
    settings = _settings(brokers="127.0.0.1:1", security_protocol="SSL", ssl_cafile=files.ca_cert)
    context = client_kwargs(settings)["ssl_context"]
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    with _tls_server(files) as port:
        _handshake(context, port, "127.0.0.1")
        _handshake(context, port, "localhost")
        with pytest.raises(ssl.SSLCertVerificationError):
            _handshake(context, port, "127.0.0.2")


# -- diagnosing a refused connection ---------------------------------------------------------


@asynccontextmanager
async def _server(
    on_connect: Callable[[asyncio.StreamReader, asyncio.StreamWriter], object],
) -> AsyncIterator[str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        result = on_connect(reader, writer)
        if asyncio.iscoroutine(result):
            await result

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()


def _close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """What Kafka's TLS listener does to bytes that are not a TLS handshake."""
    writer.close()


async def _never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A frozen broker: the kernel accepted the connection, nobody reads it."""
    await asyncio.sleep(30)


async def test_plaintext_client_closed_on_is_a_protocol_mismatch() -> None:
    async with _server(_close_at_once) as address:
        error = await diagnose_connection(_settings(brokers=address), timeout_s=5)
    assert isinstance(error, ConfigError) and error.exit_code == 2
    assert (
        str(error) == f"the broker at {address} did not answer as PLAINTEXT: check SLUICE_SECURITY_PROTOCOL"
    )


async def test_tls_client_closed_on_is_a_protocol_mismatch(tls: tuple[TlsFiles, TlsMaterial]) -> None:
    files, _ = tls
    async with _server(_close_at_once) as address:
        settings = _settings(brokers=address, security_protocol="SSL", ssl_cafile=files.ca_cert)
        error = await diagnose_connection(settings, timeout_s=5)
    assert error is not None and "did not answer as SSL: check SLUICE_SECURITY_PROTOCOL" in str(error)


async def test_untrusted_certificate_names_the_ca_setting(tls: tuple[TlsFiles, TlsMaterial]) -> None:
    files, _ = tls
    with _tls_server(files) as port:
        settings = _settings(brokers=f"127.0.0.1:{port}", security_protocol="SSL")
        error = await diagnose_connection(settings, timeout_s=5)  # system CAs only
    assert error is not None and "certificate" in str(error) and "SLUICE_SSL_CAFILE" in str(error)


async def test_frozen_broker_and_closed_port_are_not_configuration() -> None:
    async with _server(_never_answer) as address:
        assert await diagnose_connection(_settings(brokers=address), timeout_s=0.5) is None
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    assert await diagnose_connection(_settings(brokers=f"127.0.0.1:{port}"), timeout_s=2) is None
    error = await connection_error(
        KafkaConnectionError("Unable to bootstrap from []"), _settings(brokers=f"127.0.0.1:{port}")
    )
    assert isinstance(error, OperationError) and error.exit_code == 1


def test_sasl_failures_name_the_setting_never_the_password() -> None:
    settings = _settings(
        brokers="b:9092",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password="hunter2-secret",
    )
    auth = _classify(SaslAuthenticationFailed("invalid credentials"), "b:9092", settings)
    assert isinstance(auth, ConfigError)
    assert str(auth).startswith(
        "authentication failed at b:9092: the broker refused user 'svc' with SCRAM-SHA-512"
    )
    mechanism = _classify(UnsupportedSaslMechanismError("x"), "b:9092", settings)
    assert isinstance(mechanism, ConfigError) and "SLUICE_SASL_MECHANISM" in str(mechanism)
    for error in (auth, mechanism):
        assert "hunter2" not in str(error)
    assert _classify(TimeoutError(), "b:9092", settings) is False
    assert _classify(ConnectionRefusedError(), "b:9092", settings) is False
    assert _classify(ValueError("other"), "b:9092", settings) is False
