"""sluice: Kafka stream processing with exact state.

Nothing here runs at import time: the worker is built from :class:`service.settings.Settings`
by :func:`service.app.create_app`.
"""

__version__ = "0.1.0"
