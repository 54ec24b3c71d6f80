"""sluice: Kafka stream processing with exact state — a Faust application.

``service.App`` is a ``faust.App`` whose data plane is sluice's engine (:mod:`service.app`).
Nothing here runs at import time: ``import service`` stays light (the CLI's ``--help``), and
``service.App`` imports Faust on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["App", "BadRecord", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "App":
        from service.app.base import App

        return App
    if name == "BadRecord":
        from service.app.units import BadRecord

        return BadRecord
    raise AttributeError(f"module 'service' has no attribute {name!r}")
