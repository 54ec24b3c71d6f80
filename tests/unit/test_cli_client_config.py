"""``client_kwargs``: one place turns Settings into aiokafka client arguments, security included."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from service.errors import ConfigError
from service.kafka.client_config import client_kwargs
from service.settings import Settings


def _settings(**values: object) -> Settings:
    return Settings(brokers="b1:9092,b2:9093", **values)  # type: ignore[arg-type]


def test_plaintext_has_only_the_basics() -> None:
    assert client_kwargs(_settings(), client_id="x") == {
        "bootstrap_servers": "b1:9092,b2:9093",
        "client_id": "x",
        "security_protocol": "PLAINTEXT",
    }


def test_sasl_plaintext_with_password(tmp_path: Path) -> None:
    kwargs = client_kwargs(
        _settings(
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username="svc",
            sasl_password="s3cret",
        )
    )
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("svc", "s3cret")
    assert "ssl_context" not in kwargs


def test_sasl_password_file_first_line(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    kwargs = client_kwargs(
        _settings(security_protocol="SASL_PLAINTEXT", sasl_username="svc", sasl_password_file=secret)
    )
    assert kwargs["sasl_plain_password"] == "from-file"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"security_protocol": "SASL_PLAINTEXT"}, "SLUICE_SASL_USERNAME is required"),
        (
            {"security_protocol": "SASL_PLAINTEXT", "sasl_username": "u"},
            "SLUICE_SASL_PASSWORD or SLUICE_SASL_PASSWORD_FILE is required",
        ),
        (
            {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_username": "u",
                "sasl_password": "p",
                "sasl_password_file": "/etc/hostname",
            },
            "set only one of",
        ),
        (
            {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_username": "u",
                "sasl_password_file": "/nonexistent/pw",
            },
            "SLUICE_SASL_PASSWORD_FILE: cannot read it",
        ),
        ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"}, "SLUICE_SSL_CAFILE"),
        (
            {"security_protocol": "SSL", "ssl_certfile": "/etc/hostname"},
            "must be set together",
        ),
    ],
)
def test_incomplete_security_settings_are_config_errors(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        client_kwargs(_settings(**values))


def test_ssl_file_that_is_not_a_certificate(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot load SSL"):
        client_kwargs(_settings(security_protocol="SSL", ssl_cafile=bogus))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_sasl_ssl_builds_one_verifying_context(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    kwargs = client_kwargs(
        _settings(
            security_protocol="SASL_SSL",
            ssl_cafile=cert,
            ssl_certfile=cert,
            ssl_keyfile=key,
            sasl_username="u",
            sasl_password="p",
        )
    )
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert kwargs["security_protocol"] == "SASL_SSL"
