"""``reboot`` and ``restart_agent``: the room acks first, then goes down.

``reboot`` asks systemd-logind over the system D-Bus (``org.freedesktop.login1.Manager.Reboot``, with
``interactive`` false: no password prompt on a room). Before acking, the handler asks logind whether a
reboot is allowed (``CanReboot``); when logind is unreachable or says no, the command is acked
``rolled_back`` naming the cause and nothing happens. The unit's sandbox allows AF_UNIX sockets, and the
polkit rule shipped in ``systemd/roomagent-reboot.rules`` lets the ``roomagent`` user reboot.

``restart_agent`` acks, then stops the agent cleanly with exit code :data:`EXIT_RESTART`, which the unit's
``Restart=on-failure`` restarts (exit 2, a bad configuration, is the only code it does not restart).

Both wait (bounded) until the ack has reached the broker before acting, so the fleet learns the outcome.
"""

from __future__ import annotations

__all__ = ["EXIT_RESTART", "LOGIND", "Power", "PowerError", "logind_can_reboot", "logind_reboot"]

import asyncio
from collections.abc import Mapping
from typing import Any

import structlog
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError

from agent.control.service import ControlService
from agent.daemon.runtime import Runtime
from agent.errors import AgentError
from agent.service import Progress

_log = structlog.get_logger()

EXIT_RESTART = 75  # EX_TEMPFAIL: "try again"; Restart=on-failure starts the agent again
LOGIND = ("org.freedesktop.login1", "/org/freedesktop/login1", "org.freedesktop.login1.Manager")
_DBUS_TIMEOUT_S = 5.0
_ACK_FLUSH_S = 3.0


class PowerError(AgentError):
    """logind cannot be reached or refuses; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


async def _call(member: str, signature: str = "", body: list[Any] | None = None) -> list[Any]:
    """Call a logind Manager method on the system bus (``DBUS_SYSTEM_BUS_ADDRESS`` or the default)."""
    destination, path, interface = LOGIND
    try:
        async with asyncio.timeout(_DBUS_TIMEOUT_S):
            bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
            try:
                reply = await bus.call(
                    Message(
                        destination=destination,
                        path=path,
                        interface=interface,
                        member=member,
                        signature=signature,
                        body=body or [],
                    )
                )
            finally:
                bus.disconnect()
    except (OSError, DBusError, TimeoutError, EOFError) as exc:
        reason = f"logind unreachable on the system D-Bus: {type(exc).__name__}: {exc}"
        raise PowerError(reason[:200]) from exc
    if reply is None or reply.message_type == MessageType.ERROR:
        detail = reply.error_name if reply is not None else "no reply"
        raise PowerError(f"logind refused {member}: {detail}")
    return list(reply.body)


async def logind_can_reboot() -> str:
    """logind's ``CanReboot``: ``yes``, ``no``, ``challenge``, ``na``."""
    [answer] = await _call("CanReboot")
    return str(answer)


async def logind_reboot() -> None:
    """logind's ``Reboot(interactive=false)``."""
    await _call("Reboot", "b", [False])


class Power:
    """Command handlers ``reboot`` / ``restart_agent`` and the service that carries them out after the ack.

    Args:
        runtime: stopped (with :data:`EXIT_RESTART`) for ``restart_agent``.
        control: whose link is flushed so the ack is out before the room goes down.
    """

    name = "power"

    def __init__(self, runtime: Runtime, control: ControlService) -> None:
        self._runtime = runtime
        self._control = control
        self._pending: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
        self._scheduled: str | None = None

    def _schedule(self, action: str) -> None:
        if self._scheduled is not None:
            raise PowerError(f"a {self._scheduled} is already under way")
        self._scheduled = action
        self._pending.put_nowait(action)

    async def reboot(self, name: str, args: Mapping[str, Any], doc: object) -> str:
        answer = await logind_can_reboot()
        if answer != "yes":
            raise PowerError(f"logind CanReboot answers {answer!r}: the agent may not reboot this room")
        self._schedule("reboot")
        return "rebooting through logind after this ack"

    async def restart_agent(self, name: str, args: Mapping[str, Any], doc: object) -> str:
        self._schedule("restart_agent")
        return f"the agent stops after this ack and systemd starts it again (exit {EXIT_RESTART})"

    async def run(self, progress: Progress) -> None:
        while True:
            progress.beat()
            try:
                async with asyncio.timeout(1.0):
                    action = await self._pending.get()
            except TimeoutError:
                continue
            link = self._control.link
            if link is not None:
                await link.flush(_ACK_FLUSH_S)
            if action == "reboot":
                _log.warning("room_rebooting", via="logind")
                try:
                    await logind_reboot()
                except PowerError as exc:
                    _log.error("room_reboot_failed", reason=exc.reason)
                self._scheduled = None
            else:
                _log.warning("agent_restarting", exit_code=EXIT_RESTART)
                self._runtime.request_stop("restart_agent", exit_code=EXIT_RESTART)
