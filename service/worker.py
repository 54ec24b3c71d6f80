"""Run a worker until SIGTERM/SIGINT, and turn what happened into an exit code.

0: stopped on a signal after draining, committing and leaving the group within
``SLUICE_SHUTDOWN_TIMEOUT``. 1: a runtime failure (e.g. the broker unreachable): nothing past
the last durable batch was committed, so a restart replays it and the guard drops repeats.
2: bad configuration or state that cannot be trusted (wrong app id, schema change).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from service.app import App, create_app
from service.errors import SluiceError
from service.logs import redact
from service.settings import Settings
from service.web import start_web

log = logging.getLogger(__name__)


def run_worker(settings: Settings) -> int:
    app = create_app(settings)
    return asyncio.run(_serve(app))


async def _serve(app: App) -> int:
    loop = asyncio.get_running_loop()
    engine = app.engine
    timeout = app.settings.shutdown_timeout

    def on_signal(signum: int) -> None:
        if engine._stopping.is_set():
            return
        log.info("stopping: draining in-flight events", extra={"signal": signal.Signals(signum).name})
        engine.request_stop()
        loop.call_later(timeout, _give_up, timeout)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    log.info("settings", extra={"settings": redact(app.settings.model_dump(mode="json"))})
    runner = None
    code = 0
    try:
        runner = await start_web(app)
        await engine.start()
        await engine.run()
    except SluiceError as exc:
        log.error(str(exc))
        print(f"sluice: {exc}", file=sys.stderr, flush=True)
        code = exc.exit_code
    except Exception as exc:
        log.exception("worker failed", extra={"error": repr(exc)})
        code = 1
    finally:
        try:
            await engine.close()
        except Exception as exc:
            log.warning("close failed", extra={"error": repr(exc)})
        if runner is not None:
            await runner.cleanup()
    log.info("worker stopped", extra={"exit_code": code})
    return code


def _give_up(timeout: float) -> None:
    log.error("shutdown took longer than SLUICE_SHUTDOWN_TIMEOUT", extra={"seconds": timeout})
    logging.shutdown()
    os._exit(1)
