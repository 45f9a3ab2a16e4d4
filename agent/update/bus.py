"""RAUC and logind over D-Bus with ``dbus-fast`` (no shelling out to ``rauc`` or ``systemctl``).

RAUC's service (rauc.readthedocs.io, "D-Bus API"): bus name ``de.pengutronix.rauc``, object ``/``,
interface ``de.pengutronix.rauc.Installer``: ``InstallBundle(s source, a{sv} args)`` starts an
installation into the inactive slot and returns at once; the ``Progress`` property ``(isi)``
(percentage, message, depth) and ``Operation`` change while it runs; the ``Completed(i result)``
signal ends it (0: success, ``LastError`` says why otherwise). ``Mark(s state, s slot)`` marks
``booted``/``other`` slots ``good``/``bad``/``active``; ``BootSlot`` names the slot we booted from.

logind (org.freedesktop.login1(5)): ``org.freedesktop.login1.Manager.Reboot(b interactive)`` on
``/org/freedesktop/login1``.

Foreign errors (D-Bus error replies, a missing bus) are translated into :class:`BusError` /
:class:`InstallError` where they enter.
"""

from __future__ import annotations

__all__ = ["Logind", "RaucInstaller"]

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import structlog
from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from agent.update.errors import BusError, InstallError

log = structlog.get_logger()

RAUC_NAME = "de.pengutronix.rauc"
RAUC_PATH = "/"
RAUC_IFACE = "de.pengutronix.rauc.Installer"
LOGIND_NAME = "org.freedesktop.login1"
LOGIND_PATH = "/org/freedesktop/login1"
LOGIND_IFACE = "org.freedesktop.login1.Manager"
_PROPS = "org.freedesktop.DBus.Properties"


async def _connect(address: str | None) -> MessageBus:
    try:
        if address is None:
            return await MessageBus(bus_type=BusType.SYSTEM).connect()
        return await MessageBus(bus_address=address).connect()
    except (OSError, ValueError, EOFError) as exc:
        raise BusError(f"cannot connect to D-Bus {address or 'system bus'}: {exc}"[:300]) from exc


CALL_TIMEOUT_S = 30.0  # every call here returns at once when the service works (installs signal later)


async def _call(bus: MessageBus, msg: Message, what: str) -> list[Any]:
    try:
        async with asyncio.timeout(CALL_TIMEOUT_S):
            reply = await bus.call(msg)
    except TimeoutError as exc:
        raise BusError(f"{what}: no answer within {CALL_TIMEOUT_S:.0f} s") from exc
    except (OSError, EOFError) as exc:
        raise BusError(f"{what}: D-Bus connection lost: {exc}"[:300]) from exc
    assert reply is not None
    if reply.message_type == MessageType.ERROR:
        detail = reply.body[0] if reply.body else ""
        raise BusError(f"{what}: {reply.error_name}: {detail}"[:300])
    return list(reply.body)


class RaucInstaller:
    """A client of RAUC's ``Installer`` interface on one bus (``None``: the system bus)."""

    def __init__(self, bus_address: str | None = None) -> None:
        self._address = bus_address

    async def _get(self, bus: MessageBus, prop: str) -> Any:
        body = await _call(
            bus,
            Message(
                destination=RAUC_NAME,
                path=RAUC_PATH,
                interface=_PROPS,
                member="Get",
                signature="ss",
                body=[RAUC_IFACE, prop],
            ),
            f"RAUC property {prop}",
        )
        value = body[0]
        return value.value if isinstance(value, Variant) else value

    async def boot_slot(self) -> str:
        """The slot the system booted from (RAUC's ``BootSlot``, e.g. ``A``/``B`` or ``rootfs.0``)."""
        bus = await _connect(self._address)
        try:
            return str(await self._get(bus, "BootSlot"))
        finally:
            bus.disconnect()

    async def mark(self, state: Literal["good", "bad", "active"], slot: str = "booted") -> str:
        """``Mark(state, slot)``; returns RAUC's message (the slot it marked)."""
        bus = await _connect(self._address)
        try:
            body = await _call(
                bus,
                Message(
                    destination=RAUC_NAME,
                    path=RAUC_PATH,
                    interface=RAUC_IFACE,
                    member="Mark",
                    signature="ss",
                    body=[state, slot],
                ),
                f"RAUC Mark {state} {slot}",
            )
        finally:
            bus.disconnect()
        return " ".join(str(b) for b in body)

    async def install(
        self,
        bundle: Path,
        progress: Callable[[int, str], None] = lambda p, m: None,
        *,
        timeout_s: float = 1800,
    ) -> None:
        """Install ``bundle`` into the inactive slot and wait for ``Completed``.

        Raises:
            InstallError: RAUC reported a failure (its ``LastError``) or did not finish in time.
            BusError: RAUC is not on the bus or refused the call.
        """
        bus = await _connect(self._address)
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def on_message(msg: Message) -> None:
            if msg.message_type != MessageType.SIGNAL or msg.path != RAUC_PATH:
                return
            if msg.interface == RAUC_IFACE and msg.member == "Completed" and not done.done():
                done.set_result(int(msg.body[0]))
            elif msg.interface == _PROPS and msg.member == "PropertiesChanged" and msg.body[0] == RAUC_IFACE:
                changed = msg.body[1].get("Progress")
                if changed is not None:
                    pct, text, _depth = changed.value
                    progress(int(pct), str(text)[:200])

        try:
            # Subscribe before starting, so a fast Completed is never missed.
            for member in ("Completed", "PropertiesChanged"):
                await _call(
                    bus,
                    Message(
                        destination="org.freedesktop.DBus",
                        path="/org/freedesktop/DBus",
                        interface="org.freedesktop.DBus",
                        member="AddMatch",
                        signature="s",
                        body=[f"type='signal',sender='{RAUC_NAME}',path='{RAUC_PATH}',member='{member}'"],
                    ),
                    "AddMatch",
                )
            bus.add_message_handler(on_message)
            await _call(
                bus,
                Message(
                    destination=RAUC_NAME,
                    path=RAUC_PATH,
                    interface=RAUC_IFACE,
                    member="InstallBundle",
                    signature="sa{sv}",
                    body=[str(bundle), {}],
                ),
                "RAUC InstallBundle",
            )
            try:
                async with asyncio.timeout(timeout_s):
                    result = await done
            except TimeoutError as exc:
                raise InstallError(f"RAUC did not complete within {timeout_s:.0f} s") from exc
            if result != 0:
                error = await self._get(bus, "LastError")
                raise InstallError(f"RAUC install failed ({result}): {error}"[:300])
        except BusError as exc:
            raise InstallError(exc.message) from exc
        finally:
            bus.disconnect()


class Logind:
    """Reboots through ``org.freedesktop.login1.Manager.Reboot`` (``None``: the system bus)."""

    def __init__(self, bus_address: str | None = None) -> None:
        self._address = bus_address

    async def reboot(self) -> None:
        bus = await _connect(self._address)
        try:
            await _call(
                bus,
                Message(
                    destination=LOGIND_NAME,
                    path=LOGIND_PATH,
                    interface=LOGIND_IFACE,
                    member="Reboot",
                    signature="b",
                    body=[False],
                ),
                "logind Reboot",
            )
        finally:
            bus.disconnect()
        log.info("update_reboot_requested")
