"""``/metrics``, ``/healthz`` and ``/readyz``.

``/healthz`` answers from the event loop itself, so an answer proves the loop is responsive;
it fails once the engine has hit a fatal error. ``/readyz`` is 200 only when the worker has
joined its group and every assigned table partition is restored; otherwise 503 with the
reason, so a load balancer or Kubernetes holds traffic during recovery and rebalances.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.app import App


def make_web_app(app: App) -> web.Application:
    engine = app.engine
    registry = app.metrics.registry

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        if engine.fatal is not None:
            return web.json_response({"ok": False, "reason": str(engine.fatal)}, status=503)
        return web.json_response({"ok": True, "state": engine.state})

    async def readyz(_: web.Request) -> web.Response:
        if engine.state != "running":
            return web.json_response({"ready": False, "reason": engine.state}, status=503)
        return web.json_response({"ready": True, "assigned_partitions": engine.assigned_count})

    web_app = web.Application()
    web_app.router.add_get("/metrics", metrics)
    web_app.router.add_get("/healthz", healthz)
    web_app.router.add_get("/readyz", readyz)
    return web_app


async def start_web(app: App) -> web.AppRunner:
    runner = web.AppRunner(make_web_app(app), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, app.settings.web_host, app.settings.web_port)
    await site.start()
    return runner
