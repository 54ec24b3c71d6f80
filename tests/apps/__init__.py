"""Faust applications written as Faust's user guide writes them, on ``service.App``.

Each module builds its app at import from the environment (``SLUICE_*`` for the worker, and
its own variables for the app id and topic names, so tests can run them on a shared broker) and
runs with ``faust -A tests.apps.<name> worker`` or ``python tests/apps/<name>.py worker``.
"""
