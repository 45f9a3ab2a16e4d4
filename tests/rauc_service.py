"""A RAUC ``Installer`` and a logind ``Manager`` on a private D-Bus, for the updater's tests.

Run as its own process (``python -m tests.rauc_service --bus ADDRESS --state FILE``) on a real
``dbus-daemon``: the updater's D-Bus client talks to it exactly as to RAUC (rauc.readthedocs.io,
"D-Bus API": ``InstallBundle``, ``Mark``, ``GetPrimary``, properties ``Operation``, ``Progress``,
``LastError``, ``BootSlot``, signal ``Completed``) and logind (``Reboot``). It keeps the simulated
system in a JSON file the test reads and edits: two slot files (A, B; installing copies the bundle
into the inactive one), the primary slot, slot states, the booted slot, and fault switches:

- ``fail_install``: a message; the install then ends with ``Completed(1)`` and that ``LastError``;
- ``refuse_calls``: InstallBundle answers with a D-Bus error (RAUC busy).

``Reboot`` does what GRUB with RAUC's environment would do on the next boot: boot the primary slot
unless it is marked bad, else the other one; the test restarts the agent afterwards.
"""

import argparse
import asyncio
import json
import shutil
from pathlib import Path

from dbus_fast import DBusError
from dbus_fast.aio import MessageBus
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_property, method, signal

# How RAUC's GLib errors look on the bus (G_IO_ERROR codes, unmapped).
_GIO_ERROR = "org.gtk.GDBus.UnmappedGError.Quark._g_2dio_2derror_2dquark."


class System:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict:
        return json.loads(self.path.read_text())

    def save(self, data: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.path)


def new_system(directory: Path) -> dict:
    return {
        "slots": {
            "A": {"file": str(directory / "slotA.img"), "state": "good"},
            "B": {"file": str(directory / "slotB.img"), "state": "good"},
        },
        "booted": "A",
        "primary": "A",
        "installs": 0,
        "reboots": 0,
        "marks": [],
        "fail_install": None,
        "refuse_calls": False,
    }


class Installer(ServiceInterface):
    def __init__(self, system: System) -> None:
        super().__init__("de.pengutronix.rauc.Installer")
        self.system = system
        self._operation = "idle"
        self._progress = [0, "", 1]
        self._last_error = ""

    @method()
    async def InstallBundle(self, source: "s", args: "a{sv}") -> None:  # noqa: F821, F722
        data = self.system.load()
        if data["refuse_calls"] or self._operation != "idle":
            raise DBusError(_GIO_ERROR + "Code30", "Already processing a different method")
        self._operation = "installing"
        self.emit_properties_changed({"Operation": "installing"})
        asyncio.get_running_loop().create_task(self._install(source))

    async def _install(self, source: str) -> None:
        data = self.system.load()
        steps = ((0, "Installing"), (20, "Checking bundle"), (60, "Copying image"), (100, "Installing done."))
        for pct, text in steps:
            self._progress = [pct, text, 1]
            self.emit_properties_changed({"Progress": self._progress})
            await asyncio.sleep(0.05)
            if pct == 60 and data["fail_install"]:
                self._last_error = data["fail_install"]
                self._finish(1)
                return
        other = "B" if data["booted"] == "A" else "A"
        try:
            shutil.copyfile(source, data["slots"][other]["file"])
        except OSError as exc:
            self._last_error = f"Failed to copy: {exc}"
            self._finish(1)
            return
        data["slots"][other]["state"] = "good"
        data["primary"] = other  # RAUC makes the freshly written slot the next to boot
        data["installs"] += 1
        self.system.save(data)
        self._last_error = ""
        self._finish(0)

    def _finish(self, result: int) -> None:
        self._operation = "idle"
        self.emit_properties_changed({"Operation": "idle", "LastError": self._last_error})
        self.Completed(result)

    @method()
    def Mark(self, state: "s", slot_identifier: "s") -> "ss":  # noqa: F821
        data = self.system.load()
        slot = (
            data["booted"]
            if slot_identifier == "booted"
            else (("B" if data["booted"] == "A" else "A") if slot_identifier == "other" else slot_identifier)
        )
        if slot not in data["slots"] or state not in ("good", "bad", "active"):
            raise DBusError(_GIO_ERROR + "Code1", "Invalid slot or state")
        if state == "active":
            data["primary"] = slot
        else:
            data["slots"][slot]["state"] = state
            if state == "bad" and data["primary"] == slot:
                data["primary"] = "B" if slot == "A" else "A"
        data["marks"].append([state, slot])
        self.system.save(data)
        return [f"rootfs.{slot}", f"marked slot rootfs.{slot} as {state}"]

    @method()
    def GetPrimary(self) -> "s":  # noqa: F821
        return "rootfs." + self.system.load()["primary"]

    @signal()
    def Completed(self, result: int) -> "i":  # noqa: F821
        return result

    @dbus_property(access=PropertyAccess.READ)
    def Operation(self) -> "s":  # noqa: F821
        return self._operation

    @dbus_property(access=PropertyAccess.READ)
    def Progress(self) -> "(isi)":  # noqa: F821
        return self._progress

    @dbus_property(access=PropertyAccess.READ)
    def LastError(self) -> "s":  # noqa: F821
        return self._last_error

    @dbus_property(access=PropertyAccess.READ)
    def BootSlot(self) -> "s":  # noqa: F821
        return self.system.load()["booted"]

    @dbus_property(access=PropertyAccess.READ)
    def Compatible(self) -> "s":  # noqa: F821
        return "roomagent-x86_64"


class Manager(ServiceInterface):
    def __init__(self, system: System) -> None:
        super().__init__("org.freedesktop.login1.Manager")
        self.system = system

    @method()
    def Reboot(self, interactive: "b") -> None:  # noqa: F821
        data = self.system.load()
        # What the boot loader does next: the primary slot unless it is bad, else the other one.
        primary = data["primary"]
        other = "B" if primary == "A" else "A"
        data["booted"] = primary if data["slots"][primary]["state"] != "bad" else other
        data["reboots"] += 1
        self.system.save(data)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bus", required=True)
    parser.add_argument("--state", required=True, type=Path)
    parser.add_argument("--logind-only", action="store_true", help="next to a real RAUC")
    args = parser.parse_args()
    system = System(args.state)
    logind = await MessageBus(bus_address=args.bus).connect()
    logind.export("/org/freedesktop/login1", Manager(system))
    await logind.request_name("org.freedesktop.login1")
    if not args.logind_only:
        rauc = await MessageBus(bus_address=args.bus).connect()
        rauc.export("/", Installer(system))
        await rauc.request_name("de.pengutronix.rauc")
    print("ready", flush=True)
    await logind.wait_for_disconnect()


if __name__ == "__main__":
    asyncio.run(main())
