"""sluice's exceptions, under one root.

    SluiceError
     ├── ConfigError        bad settings or arguments: exit code 2, one line
     ├── OperationError     a Kafka operation failed (topic exists, unknown topic): exit code 1
     └── StateError         local state cannot be trusted as it is (wrong app id, schema change)

Each message is written for the operator who reads it: it says what is wrong and, where
there is one, what to do.
"""

from __future__ import annotations


class SluiceError(Exception):
    """Root of every error sluice raises on purpose."""

    exit_code = 1


class ConfigError(SluiceError):
    """A setting or argument is invalid; the process must not start."""

    exit_code = 2


class OperationError(SluiceError):
    """A requested Kafka operation failed."""

    exit_code = 1


class StateError(SluiceError):
    """Local or changelog state is inconsistent with this worker's configuration."""

    exit_code = 2
