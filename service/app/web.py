"""``/metrics``, ``/healthz`` and ``/readyz``, as pages of the app's Faust web server.

``/healthz`` answers from the event loop itself, so an answer proves the loop is responsive;
it fails once the engine has hit a fatal error. ``/readyz`` is 200 only when the worker has
joined its group and every assigned table partition is restored; otherwise 503 with the
reason, so a load balancer or Kubernetes holds traffic during recovery and rebalances.
"""

from __future__ import annotations

from typing import Any

from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


def add_views(app: Any) -> None:
    plane = app.data_plane

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            body = generate_latest(app.sluice_metrics.registry)
            return self.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/healthz")
    class Healthz(View):
        async def get(self, request: Request) -> Response:
            engine = plane._engine
            failure = plane.failure or (engine.fatal if engine is not None else None)
            if failure is not None:
                return self.json({"ok": False, "reason": str(failure)}, status=503)
            return self.json({"ok": True, "state": plane.state})

    @app.page("/readyz")
    class Readyz(View):
        async def get(self, request: Request) -> Response:
            if not plane.ready():
                return self.json({"ready": False, "reason": plane.state}, status=503)
            return self.json({"ready": True, "assigned_partitions": plane.engine.assigned_count})
