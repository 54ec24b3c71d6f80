"""Run the app until SIGTERM/SIGINT, and turn what happened into an exit code.

``sluice worker`` runs the same ``service.App`` as ``faust -A service.main worker``, with
sluice's own signal handling around it:

0: stopped on a signal after draining, committing and leaving the group within
``SLUICE_SHUTDOWN_TIMEOUT``. 1: a runtime failure (e.g. the broker unreachable): nothing past
the last durable batch was committed, so a restart replays it and the guard drops repeats.
2: bad configuration or state that cannot be trusted (wrong app id, schema change), including
a broker that refuses the worker's security settings at start (wrong SASL password, PLAINTEXT
against a TLS port): restarting cannot fix those, so they must not look like an outage.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any

from service.errors import SluiceError
from service.logs import redact

log = logging.getLogger(__name__)


def run_worker(app: Any) -> int:
    return asyncio.run(_serve(app))


async def _serve(app: Any) -> int:
    loop = asyncio.get_running_loop()
    plane = app.data_plane
    settings = app.sluice_settings
    timeout = settings.shutdown_timeout
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            return
        log.info("stopping: draining in-flight events", extra={"signal": signal.Signals(signum).name})
        stop.set()
        loop.call_later(timeout, _give_up, timeout)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    log.info("settings", extra={"settings": redact(settings.model_dump(mode="json"))})
    code = 0
    started = False
    try:
        starting = asyncio.ensure_future(app.start())
        await asyncio.wait(
            {starting, asyncio.ensure_future(stop.wait())}, return_when=asyncio.FIRST_COMPLETED
        )
        if starting.done():
            starting.result()
            started = True
            waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(app.sluice_stopped.wait())}
            _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
        else:
            starting.cancel()
    except SluiceError as exc:
        code = _report(exc)
    except Exception as exc:
        diagnosed = await _start_failure(exc, app) if not started else None
        if diagnosed is not None:
            code = _report(diagnosed)
        else:
            log.exception("worker failed", extra={"error": repr(exc)})
            code = 1
    finally:
        try:
            await app.stop()
        except Exception as exc:
            log.warning("close failed", extra={"error": repr(exc)})
    failure = plane.failure
    if code == 0 and failure is not None:
        if isinstance(failure, SluiceError):
            code = _report(failure)
        else:
            diagnosed = await _start_failure(failure, app) if isinstance(failure, Exception) else None
            if diagnosed is not None:
                code = _report(diagnosed)
            else:
                log.error("worker failed", extra={"error": repr(failure)}, exc_info=failure)
                code = 1
    log.info("worker stopped", extra={"exit_code": code})
    return code


def _report(exc: SluiceError) -> int:
    """Log ``exc``, print it as the one ``sluice: ...`` line on stderr, return its exit code."""
    log.error(str(exc))
    print(f"sluice: {exc}", file=sys.stderr, flush=True)
    return exc.exit_code


async def _start_failure(exc: Exception, app: Any) -> SluiceError | None:
    """The ConfigError behind a client that failed to start, if a setting is the cause."""
    from aiokafka.errors import KafkaConnectionError

    from service.kafka.connect import diagnose_connection

    if not isinstance(exc, KafkaConnectionError):
        return None
    try:
        return await diagnose_connection(app.sluice_settings)
    except SluiceError as error:  # e.g. the password file vanished meanwhile
        return error


def _give_up(timeout: float) -> None:
    log.error("shutdown took longer than SLUICE_SHUTDOWN_TIMEOUT", extra={"seconds": timeout})
    logging.shutdown()
    os._exit(1)
