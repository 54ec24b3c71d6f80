"""Settings: one frozen object, read from ``SLUICE_*`` environment variables.

Everything the worker and the CLI need to know about their environment comes
through here, so a bad value is caught once, at start, with the name of the
variable that holds it (see :func:`load_settings`), instead of deep inside a
Kafka client minutes later.
"""

from __future__ import annotations

import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.errors import ConfigError

ENV_PREFIX = "SLUICE_"


def default_data_dir() -> Path:
    """Where RocksDB lives when ``SLUICE_DATA_DIR`` is unset: the user's cache."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sluice" / "data"


class OnOffsetAhead(StrEnum):
    """What to do when the group's committed offset is ahead of the table's (possible loss)."""

    FAIL = "fail"
    TABLE = "table"
    GROUP = "group"


class ProcessingGuarantee(StrEnum):
    AT_LEAST_ONCE = "at_least_once"
    EXACTLY_ONCE = "exactly_once"


class SecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class SaslMechanism(StrEnum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


class Settings(BaseSettings):
    """The service's configuration. Field ``x`` is read from ``SLUICE_X``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="ignore", case_sensitive=False
    )

    brokers: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("127.0.0.1:9092",),
        description="Comma-separated host:port list of Kafka brokers.",
    )
    app_id: str = Field(
        default="sluice",
        pattern=r"^[A-Za-z0-9._-]{1,200}$",
        description="Consumer group id and prefix of internal topics (changelogs, repartition).",
    )
    data_dir: Path = Field(default_factory=default_data_dir, description="Directory for RocksDB state.")
    web_host: str = Field(default="0.0.0.0", description="Address the web server binds.")
    web_port: int = Field(default=6066, ge=1, le=65535, description="Port of /metrics, /healthz, /readyz.")
    log_level: str = Field(
        default="INFO", pattern=r"^(?i:DEBUG|INFO|WARNING|ERROR|CRITICAL)$", description="Log level."
    )
    jobs: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("wordcount", "rollup"), description="Comma-separated jobs the worker runs."
    )
    wordcount_input_topic: str = Field(default="lines", description="wordcount: topic of text lines.")
    wordcount_output_topic: str = Field(default="word-counts", description="wordcount: count updates.")
    rollup_input_topic: str = Field(default="events", description="rollup: topic of JSON events.")
    rollup_output_topic: str = Field(default="rollups", description="rollup: closed windows.")
    wordcount_input_pattern: str | None = Field(
        default=None, description="wordcount: regex of input topics (instead of the input topic)."
    )
    rollup_input_pattern: str | None = Field(
        default=None, description="rollup: regex of input topics (instead of the input topic)."
    )
    metadata_max_age_ms: int = Field(
        default=30_000, ge=100, description="How often topic metadata (new topics of a pattern) is refreshed."
    )
    tokenize_input_topic: str = Field(default="lines", description="tokenize: topic of text lines.")
    tokenize_output_topic: str = Field(default="tokens", description="tokenize: words per line.")
    dead_letter_topic: str = Field(default="dead-letters", description="Where bad input goes.")
    topic_partitions: int = Field(
        default=4, ge=1, le=10_000, description="Partitions of topics the worker creates."
    )
    replication_factor: int | None = Field(
        default=None,
        ge=1,
        le=32,
        description="Replication factor of topics the worker creates (default: min(3, brokers)).",
    )
    standby_replicas: int = Field(
        default=0,
        ge=0,
        le=3,
        description="Workers that keep a warm copy of each table partition (faster takeover, more disk).",
    )
    session_timeout_ms: int = Field(
        default=10_000, ge=1000, le=3_600_000, description="Group session timeout (failure detection)."
    )
    instance_id: str | None = Field(
        default=None,
        description="Static group membership id (e.g. the pod name): a restart within the session "
        "timeout keeps its partitions without a rebalance.",
    )
    commit_interval_ms: int = Field(
        default=200,
        ge=1,
        le=600_000,
        description="How often changed rows are made durable (changelog, then local RocksDB) and "
        "the offsets of the batches behind them committed.",
    )
    max_batch: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="Most records taken from one fetch (a batch: folded per key, made durable and "
        "committed together; larger batches fold more and cost less per record).",
    )
    max_batch_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="Most bytes of record keys and values in one batch (at least one record): "
        "a batch of large records is cut short, so that no batch keeps the event loop busy for "
        "long (heartbeats and the stall check wait for it). Also the most the consumer fetches "
        "per request and per partition.",
    )
    max_record_bytes: int = Field(
        default=1_048_576, ge=16, description="Larger input values go to dead letters as oversized."
    )
    max_rate_per_partition: float | None = Field(
        default=None, gt=0, description="Events/s per input partition (unset: unlimited)."
    )
    metrics_enabled: bool = Field(
        default=True, description="Collect per-batch metrics (off only to measure their cost)."
    )
    window_grace_ms: int = Field(
        default=10_000, ge=0, description="rollup: how long after its end a window stays open."
    )
    max_event_time_skew_ms: int = Field(
        default=86_400_000,
        ge=0,
        description="rollup: events whose ts is further ahead of their record's broker timestamp are "
        "dead-lettered (ts_out_of_range), so one bad ts cannot close every window.",
    )
    shutdown_timeout: float = Field(
        default=25.0, gt=0, le=3600, description="Seconds SIGTERM may take to drain and commit."
    )
    on_offset_ahead: OnOffsetAhead = Field(
        default=OnOffsetAhead.FAIL,
        description="When the group offset is ahead of the table's: fail, table or group.",
    )
    processing_guarantee: ProcessingGuarantee = Field(
        default=ProcessingGuarantee.AT_LEAST_ONCE, description="at_least_once or exactly_once."
    )
    security_protocol: SecurityProtocol = Field(default=SecurityProtocol.PLAINTEXT)
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    sasl_mechanism: SaslMechanism = Field(default=SaslMechanism.PLAIN)
    sasl_username: str | None = None
    sasl_password: str | None = Field(default=None, repr=False)
    sasl_password_file: Path | None = None

    @field_validator("brokers", mode="before")
    @classmethod
    def _split_brokers(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, (tuple, list)):
            if not value:
                raise ValueError("at least one host:port is required")
            for entry in value:
                host, sep, port = str(entry).rpartition(":")
                if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                    raise ValueError(f"{entry!r} is not host:port")
        return value

    @field_validator("jobs", mode="before")
    @classmethod
    def _split_jobs(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("wordcount_input_pattern", "rollup_input_pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(self.brokers)


def _setting_name(loc: tuple[int | str, ...]) -> str:
    return ENV_PREFIX + str(loc[0]).upper() if loc else ENV_PREFIX


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; raise :class:`ConfigError` naming the bad variable.

    ``overrides`` take precedence over the environment (the CLI's ``--bootstrap-server``).
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = _setting_name(first["loc"])
        value = first.get("input")
        shown = "" if "password" in name.lower() else f" (got {value!r})"
        raise ConfigError(f"invalid setting {name}: {first['msg']}{shown}") from None
