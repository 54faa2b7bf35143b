"""``edge-agent web``: the ward view, one page in a browser for every bed, with the alarms.

A subscriber of the published topics (:class:`~edge_agent.clients.subscriber.Subscriber`, CURVE
where the agent uses it) feeds an :class:`~edge_agent.clients.alarms.AlarmBoard` and each bed's
trend; an aiohttp server serves the page and its assets from the package (no internet needed: the
charting library, uPlot, is vendored under ``ward/vendor``) and pushes every change to the open
pages as server-sent events.

HTTP (every response ``Cache-Control: no-store``):

    GET  /                 the page
    GET  /static/…         its script, style sheet and the vendored uPlot
    GET  /api/snapshot     every bed (latest estimate and status, trend), the alarms and their log:
                           what a page loads first, so a reload keeps the trend
    GET  /events           server-sent events: ``estimate``, ``status``, ``alarms`` (twice a
                           second: the active alarms, the publishers' heartbeat age)
    POST /api/ack          {"bed": …, "kind": …}: acknowledge (silence) an alarm
    POST /api/remove       {"bed": …}: take a bed the agent no longer publishes off the page, once
                           it has been silent for ``alarms.remove_after_s`` (409 before: see
                           :meth:`~edge_agent.clients.alarms.AlarmBoard.remove`); event ``removed``

Exposure follows the agent's rule for its own endpoints: loopback by default; any other address
needs a token (``web.token``: the page is opened once as ``/?token=…``, which sets a cookie) and
TLS (``web.tls_cert``, ``web.tls_key``), or the server refuses to start. The trend is kept in
memory for ``history_s`` per bed (a bounded window); EF in %, times on the wall clock (s since the
epoch) in what the page receives.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import secrets
import ssl
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.clients.alarms import REMOVED, AlarmBoard, AlarmConfig
from edge_agent.clients.record import WardStore
from edge_agent.clients.subscriber import T_RECEIVED, Subscriber, subscriber_keys
from edge_agent.protocol.transport import TransportConfig

log = logging.getLogger(__name__)

ASSETS = Path(__file__).with_name("ward")
PUSH_PERIOD_S = 0.5  # alarms and ages pushed this often
CLIENT_QUEUE = 512  # events waiting for one page before it is cut off (a stalled browser)
COOKIE = "edge_agent_ward"


@dataclass(frozen=True)
class WebConfig:
    """The ward page server (YAML section ``web``). port: where it listens (null: the agent starts
    none; 0: any free port); host: 127.0.0.1, this machine only. history_s: trend kept per bed, s.
    token, tls_cert, tls_key: required together for any address beyond loopback. db: the
    recorder's SQLite (``edge-agent record --db``), when one runs: the alarm log is written into
    it and the trends are read back from it at start (null: memory only)."""

    port: int | None = None
    host: str = "127.0.0.1"
    history_s: float = 4 * 3600.0
    token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    db: str | None = None

    def __post_init__(self) -> None:
        if self.history_s <= 0 or not 0 <= (self.port or 0) <= 65535:
            raise ValueError(f"need history_s > 0 and 0 <= port <= 65535, got {self.history_s}, {self.port}")
        if not _loopback(self.host) and not (self.token and self.tls_cert and self.tls_key):
            raise ValueError(
                f"host {self.host!r} is beyond loopback: set web.token and web.tls_cert/web.tls_key "
                "(the page then needs https://…/?token=…), or keep host 127.0.0.1"
            )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def estimate_view(msg: dict[str, Any], wall: float) -> dict[str, Any]:
    """What the page shows of an estimate (received at ``wall`` s since the epoch)."""
    keep = ("stream", "seq", "running", "beat", "hr_bpm", "reliable", "ood_score", "latency_ms", "backend")
    return {**{k: msg.get(k) for k in keep}, "truth": msg.get("truth"), "wall": wall}


@dataclass
class _Bed:
    estimate: dict[str, Any] | None = None
    status: dict[str, Any] | None = None
    # (wall s, running mean, ci90 lo, ci90 hi, beat mean), oldest first
    trend: deque[tuple[float, float, float, float, float]] = field(default_factory=deque)


class WardServer:
    """The page server's lifecycle, like the agent's stages: ``start`` subscribes and starts the
    HTTP server (on an event loop thread of its own), ``process`` hands what arrived within the
    timeout to that loop, ``stop`` shuts both down. ``url`` once started. The subscriber's thread
    and the loop share nothing but ``call_soon_threadsafe``. ``endpoints``, ``transport`` and the
    CURVE keys: as for :class:`~edge_agent.clients.prometheus.MetricsExporter`."""

    def __init__(
        self,
        cfg: WebConfig,
        endpoints: str | Sequence[str],
        alarms: AlarmConfig | None = None,
        transport: TransportConfig | None = None,
        curve_server_key: str | None = None,
        curve_client_key: str | None = None,
    ) -> None:
        if cfg.port is None:
            raise ValueError("web.port: null means no page server; set a port (e.g. 8080) to run one")
        self.cfg = cfg
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        self.board = AlarmBoard(alarms or AlarmConfig())
        self.beds: dict[str, _Bed] = {}
        self.curve_keys = subscriber_keys(self.endpoints, transport, curve_server_key, curve_client_key)
        self.sub: Subscriber | None = None
        self._clients: set[asyncio.Queue[str]] = set()
        self._running = threading.Event()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.url = ""
        self.dropped_clients = 0
        self.store: WardStore | None = None
        self._logged = 0  # alarm events written to the store

    # ----- lifecycle -----------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> None:
        if self.cfg.db is not None:  # a RecordError names the file and the fix
            self.store = WardStore(self.cfg.db)
            since = time.time() - self.cfg.history_s
            removed = self.store.removals(REMOVED, since)
            for name, points in self.store.trends(since).items():
                kept = [p for p in points if p[0] > removed.get(name, float("-inf"))]  # not what was removed
                if kept:
                    self.beds.setdefault(name, _Bed()).trend.extend(kept)
                    # On the board too: stale if it is not heard from, removable once silent.
                    self.board.state.known(name, time.monotonic())
        server_key, client_key = self.curve_keys
        self.sub = Subscriber(self.endpoints, curve_server_key=server_key, curve_client_key=client_key)
        self._running.set()
        self._thread = threading.Thread(target=self._serve, name="ward-http", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            self.stop()
            raise OSError(f"web: cannot serve on {self.cfg.host}:{self.cfg.port}: {self._error}")
        log.info("web: ward page on %s (from %s)", self.url, ", ".join(self.endpoints))

    def process(self, timeout: float = 0.2) -> bool:
        """Hand every message that arrives within ``timeout`` s to the page server; always True."""
        assert self.sub is not None and self._loop is not None, "start() first"
        msg = self.sub.recv(timeout)
        while msg is not None:
            self._loop.call_soon_threadsafe(self._on_message, msg)
            msg = self.sub.recv(0)
        return True

    def stop(self) -> None:
        self._running.clear()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        if self.sub is not None:
            self.sub.close()
            self.sub = None
        if self.store is not None:
            self.store.close()
            self.store = None

    # ----- on the event loop ---------------------------------------------------------------------
    def _on_message(self, msg: dict[str, Any]) -> None:
        self.board.apply(msg, msg[T_RECEIVED])
        if msg["kind"] == "heartbeat":
            return
        wall = time.time() - (time.monotonic() - msg[T_RECEIVED])
        bed = self.beds.setdefault(msg["stream"], _Bed())
        if msg["kind"] == "status":
            before = None if bed.status is None else bed.status["signal"]
            bed.status = {k: v for k, v in msg.items() if k != T_RECEIVED} | {"wall": wall}
            self._broadcast("status", bed.status)
            if msg["signal"] != before:  # a signal alarm goes out now, not at the next push
                self._broadcast("alarms", self._alarms())
            return
        bed.estimate = estimate_view(msg, wall)
        running = msg["running"]
        bed.trend.append((wall, running["mean"], *running["ci90"], msg["beat"]["mean"]))
        while bed.trend and bed.trend[0][0] < wall - self.cfg.history_s:
            bed.trend.popleft()
        self._broadcast("estimate", bed.estimate)

    def _alarms(self) -> dict[str, Any]:
        """Active alarms (most urgent first), the publishers' heartbeat age, and the server's clock."""
        now = time.monotonic()
        active = self.board.update(now)
        self._log_to_store(now)
        age = self.board.state.heartbeat_age(now)
        return {
            "alarms": [asdict(a) | {"age_s": now - a.since} for a in active],
            "heartbeat_age_s": age,
            "wall": time.time(),
        }

    def _log_to_store(self, now: float) -> None:
        """Write the alarm events since the last call into the recording, when there is one."""
        if self.store is None:
            return
        wall = time.time() - now
        for event in self.board.events_since(self._logged):
            self.store.add_alarm(
                wall + event.t, event.bed, event.kind, event.priority, event.what, event.message
            )
        self._logged = self.board.n_events

    def snapshot(self) -> dict[str, Any]:
        """Everything a page needs to draw itself from scratch."""
        beds = {
            name: {"estimate": bed.estimate, "status": bed.status, "trend": [list(p) for p in bed.trend]}
            for name, bed in sorted(self.beds.items())
        }
        events = [asdict(e) for e in list(self.board.log)[-200:]]
        return {"beds": beds, **self._alarms(), "log": events, "alarm_config": asdict(self.board.cfg)}

    def _broadcast(self, event: str, data: Any) -> None:
        text = f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
        for queue in list(self._clients):
            try:
                queue.put_nowait(text)
            except asyncio.QueueFull:  # a page that stopped reading: cut it off (it reconnects)
                self._clients.discard(queue)
                self.dropped_clients += 1

    async def _push_alarms(self) -> None:
        while True:
            try:
                self._broadcast("alarms", self._alarms())
            except Exception:  # e.g. the recording's disk is full: say so, keep the page live
                log.exception("web: pushing the alarms failed")
            await asyncio.sleep(PUSH_PERIOD_S)

    # ----- HTTP ----------------------------------------------------------------------------------
    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # reported by start(), or logged if it comes later
            self._error = e
            self._ready.set()
            if self._running.is_set():
                log.error("web: the page server stopped: %s", e)

    async def _main(self) -> None:
        from aiohttp import web

        self._loop = asyncio.get_running_loop()

        @web.middleware  # marks a function: a bound method cannot carry the mark
        async def guard(request: Any, handler: Any) -> Any:
            return await self._guard(request, handler)

        app = web.Application(middlewares=[guard])
        app.router.add_get("/", self._index)
        app.router.add_get("/api/snapshot", self._snapshot)
        app.router.add_get("/events", self._events)
        app.router.add_post("/api/ack", self._ack)
        app.router.add_post("/api/remove", self._remove)
        app.router.add_static("/static/", ASSETS, show_index=False)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        context = None
        if self.cfg.tls_cert:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.cfg.tls_cert, self.cfg.tls_key)
        site = web.TCPSite(runner, self.cfg.host, self.cfg.port, ssl_context=context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # the port bound (cfg.port 0: any free one)
        self.url = f"{'https' if context else 'http'}://{self.cfg.host}:{port}/"
        pusher = asyncio.create_task(self._push_alarms())
        self._ready.set()
        try:
            while self._running.is_set():
                await asyncio.sleep(0.1)
        finally:
            pusher.cancel()
            await runner.cleanup()

    def _authorised(self, request: Any) -> bool:
        token = self.cfg.token
        if token is None:
            return True
        given = request.query.get("token") or request.cookies.get(COOKIE) or ""
        return secrets.compare_digest(given, token)

    async def _guard(self, request: Any, handler: Any) -> Any:
        """Token check (when one is set) and no caching, on every request."""
        from aiohttp import web

        if not self._authorised(request):
            raise web.HTTPUnauthorized(text="open the page as /?token=… (web.token)")
        response = await handler(request)
        if response.prepared:  # the event stream: its headers went out with its first byte
            return response
        response.headers["Cache-Control"] = "no-store"
        if self.cfg.token and request.query.get("token"):
            response.set_cookie(COOKIE, self.cfg.token, httponly=True, secure=True, samesite="Strict")
        return response

    async def _index(self, _request: Any) -> Any:
        from aiohttp import web

        return web.FileResponse(ASSETS / "index.html")

    async def _snapshot(self, _request: Any) -> Any:
        from aiohttp import web

        return web.json_response(self.snapshot())

    async def _ack(self, request: Any) -> Any:
        from aiohttp import web

        try:
            body = await request.json()
            bed, kind = str(body["bed"]), str(body["kind"])
        except (ValueError, KeyError, TypeError):
            raise web.HTTPBadRequest(text='send {"bed": …, "kind": …}') from None
        if not self.board.acknowledge(bed, kind, time.monotonic()):
            raise web.HTTPNotFound(text=f"no active {kind} alarm for bed {bed!r}")
        self._broadcast("alarms", self._alarms())
        return web.json_response({"acknowledged": [bed, kind]})

    async def _remove(self, request: Any) -> Any:
        from aiohttp import web

        try:
            bed = str((await request.json())["bed"])
        except (ValueError, KeyError, TypeError):
            raise web.HTTPBadRequest(text='send {"bed": …}') from None
        refused = self.board.remove(bed, time.monotonic())
        if refused is not None:
            known = bed in self.board.state.streams
            raise (web.HTTPConflict if known else web.HTTPNotFound)(text=refused)
        self.beds.pop(bed, None)
        log.warning("web: bed %s removed by an operator (no message for alarms.remove_after_s)", bed)
        self._broadcast("removed", {"bed": bed})
        self._broadcast("alarms", self._alarms())
        return web.json_response({"removed": bed})

    async def _events(self, request: Any) -> Any:
        from aiohttp import web

        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        queue: asyncio.Queue[str] = asyncio.Queue(CLIENT_QUEUE)
        self._clients.add(queue)
        try:
            await response.write(b": connected\n\n")
            while queue in self._clients:
                try:
                    text = await asyncio.wait_for(queue.get(), timeout=15.0)
                except asyncio.TimeoutError:
                    text = ": keep-alive\n\n"  # proxies close idle streams
                await response.write(text.encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._clients.discard(queue)
        return response
