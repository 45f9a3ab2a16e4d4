"""A small client of Janus's HTTP API (session, handle, VideoRoom requests, long-poll events).

Janus answers plugin requests either at once (``success`` with ``plugindata``) or later as an
``event`` on the session's long-poll; :meth:`JanusSession.request` waits for whichever carries our
transaction. Blocking HTTP runs in worker threads; one long-poll task per session owns the event stream
and routes events to waiting transactions (and to per-handle queues for unsolicited events).
"""

from __future__ import annotations

__all__ = ["JanusHandle", "JanusSession"]

import asyncio
import contextlib
import http.client
import json
import secrets
import threading
import urllib.error
import urllib.request
from types import TracebackType
from typing import Any, Self

import structlog

from agent.webrtc.errors import JanusError

_log = structlog.get_logger()
_KEEPALIVE_S = 20.0


def _post(url: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    req = urllib.request.Request(  # noqa: S310 - scheme checked in JanusSession
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - scheme checked in JanusSession
        out = json.loads(resp.read())
    if not isinstance(out, dict):
        raise ValueError("not a JSON object")
    return out


def _get(url: str, timeout: float) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - scheme checked in JanusSession
        return json.loads(resp.read())


class JanusSession:
    """``async with JanusSession(url) as s``: a Janus session with keepalives and an event pump."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise JanusError("create", f"not an http(s) URL: {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session_id: int | None = None
        self._waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._handles: dict[int, JanusHandle] = {}
        self._tasks: asyncio.TaskGroup | None = None
        self._background: list[asyncio.Task[None]] = []
        self._closed = threading.Event()
        self._poller: threading.Thread | None = None
        self._stack = contextlib.AsyncExitStack()

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return await asyncio.to_thread(_post, self.url + path, body, self.timeout)
        except (OSError, ValueError, urllib.error.URLError) as exc:
            raise JanusError(str(body.get("janus")), f"{self.url}: {exc}") from exc

    async def __aenter__(self) -> Self:
        out = await self._call("", {"janus": "create", "transaction": secrets.token_hex(6)})
        if out.get("janus") != "success":
            raise JanusError("create", _reason(out))
        self.session_id = int(out["data"]["id"])
        self._tasks = await self._stack.enter_async_context(asyncio.TaskGroup())
        self._background = [self._tasks.create_task(self._keepalive(), name="janus_keepalive")]
        # The long poll blocks for up to 30 s inside Janus: it gets its own daemon thread, so leaving
        # the session never waits for it (a worker of the loop's executor would hold up loop shutdown).
        loop = asyncio.get_running_loop()
        self._poller = threading.Thread(target=self._poll, args=(loop,), name="janus_events", daemon=True)
        self._poller.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closed.set()
        with contextlib.suppress(JanusError):
            await asyncio.wait_for(
                self._call(f"/{self.session_id}", {"janus": "destroy", "transaction": "bye"}), 3
            )
        for task in self._background:
            task.cancel()
        await self._stack.aclose()

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(_KEEPALIVE_S)
            with contextlib.suppress(JanusError):
                await self._call(f"/{self.session_id}", {"janus": "keepalive", "transaction": "ka"})

    def _poll(self, loop: asyncio.AbstractEventLoop) -> None:
        url = f"{self.url}/{self.session_id}?maxev=10"
        while not self._closed.is_set():
            try:
                events = _get(url, 40.0)
            except (OSError, ValueError, http.client.HTTPException) as exc:
                if self._closed.is_set():
                    return
                _log.warning("janus_poll_failed", error=str(exc))
                self._closed.wait(0.5)
                continue
            for event in events if isinstance(events, list) else [events]:
                if isinstance(event, dict):
                    try:
                        loop.call_soon_threadsafe(self._route, event)
                    except RuntimeError:  # the loop closed while we polled: the session is over
                        return

    def _route(self, event: dict[str, Any]) -> None:
        tx = event.get("transaction")
        if event.get("janus") == "keepalive":
            return
        waiter = self._waiters.get(tx) if isinstance(tx, str) else None
        if waiter is not None and event.get("janus") in ("event", "success", "error") and not waiter.done():
            waiter.set_result(event)
            return
        handle = self._handles.get(event.get("sender", -1))
        if handle is not None:
            handle.events.put_nowait(event)

    async def attach(self, plugin: str = "janus.plugin.videoroom") -> JanusHandle:
        out = await self._call(
            f"/{self.session_id}", {"janus": "attach", "plugin": plugin, "transaction": secrets.token_hex(6)}
        )
        if out.get("janus") != "success":
            raise JanusError("attach", _reason(out))
        handle = JanusHandle(self, int(out["data"]["id"]))
        self._handles[handle.handle_id] = handle
        return handle

    async def message(
        self, handle_id: int, body: dict[str, Any], jsep: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Send a plugin message; return the reply that carries our transaction (sync or async)."""
        tx = secrets.token_hex(8)
        msg: dict[str, Any] = {"janus": "message", "transaction": tx, "body": body}
        if jsep is not None:
            msg["jsep"] = jsep
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[tx] = fut
        try:
            out = await self._call(f"/{self.session_id}/{handle_id}", msg)
            if out.get("janus") in ("success", "error"):
                reply = out
            else:  # "ack": the answer comes as an event
                reply = await asyncio.wait_for(fut, self.timeout * 3)
        finally:
            self._waiters.pop(tx, None)
        if reply.get("janus") == "error":
            raise JanusError(str(body.get("request")), _reason(reply))
        data = reply.get("plugindata", {}).get("data", {})
        if isinstance(data, dict) and "error" in data:
            raise JanusError(str(body.get("request")), str(data["error"]), data.get("error_code"))
        return reply


class JanusHandle:
    def __init__(self, session: JanusSession, handle_id: int) -> None:
        self.session = session
        self.handle_id = handle_id
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def message(self, body: dict[str, Any], jsep: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.session.message(self.handle_id, body, jsep)


def _reason(out: dict[str, Any]) -> str:
    err = out.get("error")
    if isinstance(err, dict):
        return f"{err.get('reason')} (code {err.get('code')})"
    return f"unexpected reply {out.get('janus')!r}"
