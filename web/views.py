"""The worker's web views: dashboard, JSON views, WebSocket, metrics.

The web layer sits above the agents: it reads the tables and the worker's clients
(:mod:`agents.worker_clients`) and never the other way round.

``/cameras/{camera_id}/`` is routed with ``app.table_route`` to the worker that owns the
camera's partition, so every worker gives the same answer. ``/cameras/`` lists this worker's
cameras plus, from the Redis cache, the latest result of cameras other workers own. API keys
never appear here: ``/keys/`` shows aliases and numbers only.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, TypeVar, cast

from aiohttp import WSMsgType, web
from faust.web import Request, Response, View
from faust.web.drivers.aiohttp import Web as AiohttpWeb
from prometheus_client import generate_latest

from agents.alert_book import ALERTS_KEPT, alert_book, index_entries, legacy_alerts, newest
from agents.detection_join import detection_join, empty_view
from agents.worker_clients import current
from streams import metrics
from streams.app import app, settings
from streams.errors import ImageMissing
from streams.faust_seam import limit_request_body
from streams.lag import guard as stall_guard
from streams.live import CLOSE, hub
from streams.table_values import CameraFrame, CameraState, CameraView
from streams.tables import (
    alert_index_live,
    alerts_legacy,
    camera_key,
    camera_state,
    camera_state_live,
    camera_view,
    detections,
    results,
)
from web.auth import OPEN_PATHS, WebAuth

logger = logging.getLogger(__name__)
TABLES = {"detections": detections, "results": results, "camera_view": camera_view, "camera_state": camera_state}
DASHBOARD = Path(__file__).with_name("static") / "dashboard.html"
STARTED = time.time()

#: The worker's token check, loaded when the worker starts (the token file is written then, if at all).
auth = WebAuth()
app.on_startup(lambda: auth.load(settings))


@web.middleware
async def require_token(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every view but the open ones needs the token (401), and no body may exceed the limit (413),
    both answered before any handler runs."""
    if not auth.allows(request):
        return web.json_response({"error": "unauthorized: pass the web token as Bearer or ?token="}, status=401)
    if request.path not in OPEN_PATHS and (why := auth.cross_site(request)) is not None:
        return web.json_response({"error": f"refused: {why}"}, status=403)
    if (request.content_length or 0) > settings.web_max_body:
        return web.json_response({"error": f"request body over {settings.web_max_body} bytes"}, status=413)
    response: web.StreamResponse = await handler(request)
    return response


def _camera_id(key: bytes | str) -> str:
    return key.decode() if isinstance(key, bytes) else key


def camera_summary(
    camera_id: str, view: CameraView | None, state: CameraState | None, frame: CameraFrame | None
) -> dict[str, Any]:
    view = view or empty_view(camera_id)
    latest = view["results"][0] if view["results"] else None
    updated = [at for at in (view.get("updated_at"), frame["updated_at"] if frame else None) if at is not None]
    return {
        "camera_id": camera_id,
        "latest_result": latest,
        "latest_detection": frame["latest_detection"] if frame else None,
        "last_conflict": view.get("last_conflict"),
        "counts": view.get("counts", {}),
        "fps": round(float(state["fps"] or 0.0), 2) if state else 0.0,
        "groups_seen": state["groups_seen"] if state else 0,
        "tasks_made": state["tasks_made"] if state else 0,
        "updated_at": max(updated, default=None),
    }


@app.page("/")
class Dashboard(View):
    """The live dashboard (plain HTML and JS, served by the worker)."""

    async def get(self, request: Request) -> Response:
        page = self.html(DASHBOARD.read_text())
        # the page's requests carry the token in their URLs (images, /ws): never in a Referer
        page.headers["Referrer-Policy"] = "no-referrer"
        return page


T = TypeVar("T")


async def paced(items: Iterable[T], every: int) -> AsyncIterator[T]:
    """``items``, letting the event loop go after each ``every`` of them: a view that reads and decodes
    a table's values on the loop must not hold the agents and heartbeats for the whole table."""
    for n, item in enumerate(items, start=1):
        yield item
        if n % every == 0:
            await asyncio.sleep(0)


@app.page("/cameras/")
class Cameras(View):
    """Every camera with its latest result."""

    async def get(self, request: Request) -> Response:
        # every tab asks every 2 s, and each camera's view (12 joined results) is read and decoded on
        # the event loop: let it go every 50 cameras, as /alerts/ and /results/ do
        local = {_camera_id(k): v async for k, v in paced(camera_view.items(), 50)}
        frames = detection_join.frames
        rows = [
            camera_summary(cid, local.get(cid), camera_state_live.peek(camera_key(cid)), frames.get(cid))
            for cid in sorted(set(local) | set(frames))
        ]
        # the cameras other workers own: those with a cached result, and any asked for (?also=)
        cache = current().cache
        asked = set(request.query.get("also", "").split(",")) | set(await cache.known_cameras())
        known = asked - set(local) - set(frames) - {""}
        for cid, latest in (await cache.latest(sorted(known))).items():
            rows.append({"camera_id": cid, "latest_result": latest, "source": "redis"})
        # the worker's clock: the page ages a camera's last update on it, not on the browser's
        return self.json({"cameras": rows, "count": len(rows), "now": time.time()})


@app.page("/cameras/{camera_id}/")
class CameraDetail(View):
    """One camera, answered by the worker that owns it."""

    @app.table_route(table=camera_view, match_info="camera_id")  # type: ignore[arg-type]
    async def get(self, request: Request, camera_id: str) -> Response:
        view = camera_view.get(camera_key(camera_id))
        frame = detection_join.frames.get(camera_id)
        if view is None and frame is None:
            return self.json({"error": f"unknown camera {camera_id!r}"}, status=404)
        data = camera_summary(camera_id, view, camera_state_live.peek(camera_key(camera_id)), frame)
        data["results"] = view.get("results", []) if view else []
        data["alerts"] = alert_book.latest(camera_id, 20)
        return self.json(data)


#: Results /results/ lists by default, and at most.
RESULTS_LISTED, RESULTS_LISTED_MAX = 1000, 10_000


@app.page("/results/")
class Results(View):
    """The aggregator's view of finished tasks on this worker (for checks and tests).

    The table holds an hour of results, read and decoded on the worker's event loop: at most
    ``?limit=`` (default RESULTS_LISTED) rows are read, and the event loop is let go between
    batches, so a request cannot hold the agents and heartbeats for seconds.
    """

    async def get(self, request: Request) -> Response:
        camera = request.query.get("camera_id")
        try:
            limit = max(1, min(RESULTS_LISTED_MAX, int(request.query.get("limit", RESULTS_LISTED))))
        except ValueError:
            return self.json({"error": "limit must be a whole number"}, status=400)
        rows: dict[str, Any] = {}
        async for k, v in paced(results.items(), 500):
            if camera is None or v.get("camera_id") == camera:
                rows[str(k)] = v
                if len(rows) >= limit:
                    break
        return self.json({"count": len(rows), "limit": limit, "results": rows})


@app.page("/tables/")
class Tables(View):
    """Keys per table on this worker (counted by iterating: for checks and tests, not for dashboards)."""

    async def get(self, request: Request) -> Response:
        counted = {name: sum(1 for _ in table.keys()) for name, table in TABLES.items()}
        return self.json({"keys": counted})


@app.page("/alerts/")
class Alerts(View):
    """The last 100 alerts, newest first: this worker's, and other workers' from the cache."""

    async def get(self, request: Request) -> Response:
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        cached = await current().cache.recent_alerts()
        # every camera's index is read and decoded on the event loop (100 entries each), then the
        # 100 newest alerts' records: let it go every 50 cameras, or a dashboard opening on a
        # thousand cameras held the agents and heartbeats; a camera's alerts still in the layout
        # before (100 whole alerts a value) every 20 cameras
        indexed = (
            (_camera_id(key), entry) for key, value in alert_index_live.peek_items() for entry in index_entries(value)
        )
        entries = [item async for item in paced(indexed, 50 * ALERTS_KEPT)]
        own = [a for camera, entry in newest(entries, 100) if (a := alert_book.alert(camera, entry, peek=True))]
        own += [a async for _, value in paced(alerts_legacy.peek_items(), 20) for a in legacy_alerts(value)]
        for alert in [*cached, *own]:
            if not _shown(alert):  # what came through Redis is not trusted
                continue
            key = (str(alert.get("camera_id")), str(alert.get("task_id")))
            old = latest.get(key)
            # an alert updated since (a verdict, a repeat) is the one shown
            if old is None or _updated_at(alert) >= _updated_at(old):
                latest[key] = alert
        merged = sorted(latest.values(), key=lambda a: -float(a.get("raised_at", 0)))
        # how long a measured alert may still get the VLM's verdict after its last raise
        return self.json({"alerts": merged[:100], "verdict_wait_s": settings.alert_cooldown_s})


def _shown(alert: dict[str, Any]) -> bool:
    times = (alert.get("raised_at"), alert.get("last_raised_at", alert.get("raised_at")))
    return (
        isinstance(alert.get("camera_id"), str)
        and isinstance(alert.get("task_id"), str)
        and all(isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t) for t in times)
    )


def _updated_at(alert: dict[str, Any]) -> float:
    return float(alert.get("last_raised_at", alert["raised_at"]))


@app.page("/keys/")
class Keys(View):
    """Key aliases, states and numbers; never a key."""

    async def get(self, request: Request) -> Response:
        clients = current()
        pool = clients.pool
        rows = pool.snapshot()
        return self.json(
            {
                "strategy": pool.strategy,
                "share": round(pool.share, 3),
                "models": pool.models,
                "keys": rows,
                "available": sum(r["state"] in ("AVAILABLE", "IN_USE") for r in rows),
                "quotas": pool.quota_snapshot(),
                # today's calls, tokens and spend per account through this worker's partitions
                "spend_today": clients.spend.today_by_account(),
                # the models of the chain without a price: their calls cost 0 in spend_today
                "unpriced_models": [m for m in pool.models if m not in clients.spend.prices],
            }
        )


@app.page("/keys/{alias}/{action}")
class KeyAction(View):
    """POST /keys/key-3/disable or /keys/key-3/enable (token required when configured)."""

    async def post(self, request: Request, alias: str, action: str) -> Response:
        pool = current().pool
        if alias not in pool.by_alias:
            return self.json({"error": f"unknown key alias {alias!r}"}, status=404)
        if action == "disable":
            pool.disable(alias, "disabled by operator", by_operator=True)
        elif action == "enable":
            pool.enable(alias)
        else:
            return self.json({"error": "action must be enable or disable"}, status=400)
        return self.json({"alias": alias, "state": pool.key_state(pool.by_alias[alias])})


@app.page("/health")
class Health(View):
    """Liveness for anyone (probes carry no token); with the token, a few facts: partitions owned,
    Redis, keys, and where other workers reach this one (not for whoever can reach the port)."""

    async def get(self, request: Request) -> Response:
        status = "stalled" if stall_guard.stalled else "ok"
        if not auth.carries_token(request):
            return self.json({"status": status})
        assigned = app.assignor.assigned_actives() if app.assignor else set()
        clients = current()
        return self.json(
            {
                "status": status,
                "stalled_partitions": stall_guard.stalled,
                "uptime_s": round(time.time() - STARTED, 1),
                "url": str(app.conf.canonical_url),  # where other workers forward requests for our cameras
                "partitions": len(assigned),
                "redis": "degraded" if clients.cache.degraded else "ok",
                "redis_skipped_writes": clients.cache.skipped,
                "keys_available": sum(r["state"] in ("AVAILABLE", "IN_USE") for r in clients.pool.snapshot()),
            }
        )


@app.page("/metrics")
class Metrics(View):
    """Prometheus text format."""

    async def get(self, request: Request) -> Response:
        current().pool.snapshot()
        return self.bytes(generate_latest(metrics.REGISTRY), content_type="text/plain; version=0.0.4")


@app.page("/images/{scheme}/{name}")
class Images(View):
    """Crops stored by reference (claim-check)."""

    async def get(self, request: Request, scheme: str, name: str) -> Response:
        try:
            jpeg = await asyncio.to_thread(current().images.get, f"{scheme}://{name}")
        except ImageMissing:
            return self.json({"error": "image not found"}, status=404)
        return self.bytes(jpeg, content_type="image/jpeg")


#: Live clients one worker serves at most: each holds a mailbox of up to 200 messages.
MAX_WS_CLIENTS = 500


async def websocket(request: web.Request) -> web.WebSocketResponse:
    """``/ws``: results and alerts as they are aggregated; ``?cameras=a,b`` to filter."""
    if not auth.allows(request):
        raise web.HTTPUnauthorized(text="token required")
    if len(hub.subscribers) >= MAX_WS_CLIENTS:
        raise web.HTTPServiceUnavailable(text="too many live clients on this worker")
    # the server reads nothing from a browser: a small frame limit, and no per-connection zlib state
    ws = web.WebSocketResponse(heartbeat=20, max_msg_size=4096, compress=False)
    cams = request.query.get("cameras")
    # subscribed before the handshake completes: whatever the browser fetches once it is open
    # (/alerts/) and whatever is raised after reaches it, with nothing in between
    sub = hub.subscribe(frozenset(c for c in cams.split(",") if c) if cams else None)

    async def pump() -> None:
        while True:
            text = await sub.get()
            if text == CLOSE:
                await ws.close()
                return
            await ws.send_str(text)

    sender: asyncio.Future[None] | None = None
    try:
        await ws.prepare(request)
        sender = asyncio.ensure_future(pump())
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:
                break
    finally:
        if sender is not None:
            sender.cancel()
        hub.unsubscribe(sub)
    return ws


web_app = cast(AiohttpWeb, app.web).web_app
web_app.router.add_get("/ws", websocket)
web_app.middlewares.append(require_token)
# aiohttp's default is 1 MiB; nothing roadwatch accepts is larger than a small JSON body
limit_request_body(web_app, settings.web_max_body)
