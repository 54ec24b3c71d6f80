"""The keyword arguments every aiokafka client gets from :class:`~service.settings.Settings`.

One function, used by the CLI's producer/consumer/admin clients and by the worker, so that a
cluster that needs SSL or SASL works for all of them or fails for all of them with the same
one-line :class:`~service.errors.ConfigError` naming the setting, instead of each client
half-configuring security in its own way.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from service.errors import ConfigError
from service.settings import SecurityProtocol, Settings

_SSL_PROTOCOLS = frozenset({SecurityProtocol.SSL, SecurityProtocol.SASL_SSL})
_SASL_PROTOCOLS = frozenset({SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL})


def client_kwargs(settings: Settings, *, client_id: str = "sluice") -> dict[str, Any]:
    """Keyword arguments accepted alike by AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient.

    Contains ``bootstrap_servers``, ``client_id``, ``security_protocol`` and, when the protocol
    needs them, ``ssl_context`` (built once here, so certificate errors surface before any
    connection) and ``sasl_mechanism``/``sasl_plain_username``/``sasl_plain_password``.
    aiokafka takes the SCRAM password under the name ``sasl_plain_password`` too, so SCRAM
    needs nothing else. The result holds the password: never log it (log Settings through
    :func:`service.logs.redact`). Raises :class:`ConfigError` for missing or unreadable
    certificate/password files.
    """
    protocol = settings.security_protocol
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": client_id,
        "security_protocol": protocol.value,
    }
    if protocol in _SSL_PROTOCOLS:
        kwargs["ssl_context"] = _ssl_context(settings)
    if protocol in _SASL_PROTOCOLS:
        if not settings.sasl_username:
            raise ConfigError(f"SLUICE_SASL_USERNAME is required with {protocol.value}")
        kwargs["sasl_mechanism"] = settings.sasl_mechanism.value
        kwargs["sasl_plain_username"] = settings.sasl_username
        kwargs["sasl_plain_password"] = _sasl_password(settings)
    return kwargs


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    """Verify the broker against ``ssl_cafile`` (else the system CAs); client cert if given.

    Hostname checking stays on: aiokafka passes the broker's advertised host as the server
    name, and Python matches an IP address such as 127.0.0.1 against the certificate's IP
    SANs, so a certificate issued for the address (as ``sluice dev broker --tls`` makes) is
    verified as strictly as one issued for a DNS name.
    """
    from aiokafka.helpers import create_ssl_context

    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path: Path | None = getattr(settings, name)
        if path is not None and not path.is_file():
            raise ConfigError(f"SLUICE_{name.upper()}: no such file {str(path)!r}")
    if (settings.ssl_certfile is None) != (settings.ssl_keyfile is None):
        raise ConfigError("SLUICE_SSL_CERTFILE and SLUICE_SSL_KEYFILE must be set together")
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=settings.ssl_cafile,
            certfile=settings.ssl_certfile,
            keyfile=settings.ssl_keyfile,
        )
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load SSL certificates or key: {exc}") from None
    return context


def _sasl_password(settings: Settings) -> str:
    """The SASL password from ``SLUICE_SASL_PASSWORD`` or the first line of the password file.

    The file variant exists so that the secret need not sit in the environment (visible in
    ``/proc/*/environ`` and in crash dumps); setting both is refused as ambiguous.
    """
    if settings.sasl_password is not None and settings.sasl_password_file is not None:
        raise ConfigError("set only one of SLUICE_SASL_PASSWORD and SLUICE_SASL_PASSWORD_FILE")
    if settings.sasl_password_file is not None:
        try:
            text = settings.sasl_password_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"SLUICE_SASL_PASSWORD_FILE: cannot read it ({exc})") from None
        lines = text.splitlines()
        password = lines[0] if lines else ""
    elif settings.sasl_password is not None:
        password = settings.sasl_password
    else:
        password = ""
    if not password:
        raise ConfigError(
            f"SLUICE_SASL_PASSWORD or SLUICE_SASL_PASSWORD_FILE is required with "
            f"{settings.security_protocol.value}"
        )
    return password
