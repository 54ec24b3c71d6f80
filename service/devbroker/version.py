"""Which Apache Kafka release the local broker runs, and what differs between release lines.

3.9.x and 4.x differ, for us, only in the logging backend: 3.9 logs through reload4j
(``log4j.properties``), 4.x through log4j2 (``log4j2.properties``). The broker properties and
the commands are the same for both.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from service.errors import ConfigError

DEFAULT_KAFKA_VERSION = "3.9.1"
VERSION_ENV = "SLUICE_KAFKA_VERSION"

_VERSION_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


@dataclass(frozen=True, order=True)
class KafkaVersion:
    """A Kafka release, e.g. ``KafkaVersion.parse("3.9.1")``."""

    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> KafkaVersion:
        """Parse ``X.Y.Z``; only the 3.x and 4.x lines run in KRaft mode the way we configure."""
        match = _VERSION_RE.match(text.strip())
        if match is None:
            raise ConfigError(f"Kafka version {text!r} is not of the form X.Y.Z (e.g. 3.9.1)")
        version = cls(*(int(part) for part in match.groups()))
        if version.major not in (3, 4) or (version.major == 3 and version.minor < 9):
            raise ConfigError(f"Kafka {version} is not supported: use 3.9.x or 4.x")
        return version

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def uses_log4j2(self) -> bool:
        """4.x logs through log4j2; 3.9 through reload4j (log4j 1.2 API)."""
        return self.major >= 4

    @property
    def log_config_name(self) -> str:
        """The logging config file shipped in this package for this release line."""
        return "log4j2.properties" if self.uses_log4j2 else "log4j.properties"

    def log_config_option(self, path: str) -> str:
        """The JVM system property that points the backend at ``path``."""
        if self.uses_log4j2:
            return f"-Dlog4j2.configurationFile={path}"
        return f"-Dlog4j.configuration=file:{path}"


def resolve_version(version: str | None = None) -> KafkaVersion:
    """``version``, else ``$SLUICE_KAFKA_VERSION``, else the default (3.9.1)."""
    text = version or os.environ.get(VERSION_ENV) or DEFAULT_KAFKA_VERSION
    return KafkaVersion.parse(text)
