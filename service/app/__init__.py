"""sluice as a Faust application: ``service.App`` and what it plugs into Faust.

:mod:`.base` (the App and its boot strategy), :mod:`.dataplane` (the engine as the app's data
plane), :mod:`.agent`, :mod:`.stream`, :mod:`.topic`, :mod:`.table` (Faust's classes, sluice
underneath), :mod:`.units` (what an agent is processing and its effects), :mod:`.feed`,
:mod:`.events`, :mod:`.windows`, :mod:`.router`, :mod:`.web`, :mod:`.builtin` (the built-in
jobs' app).
"""

from __future__ import annotations

from typing import Any


def create_app(*args: Any, **kwargs: Any) -> Any:
    from service.app.builtin import create_app as build

    return build(*args, **kwargs)
