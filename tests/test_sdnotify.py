"""sd_notify over a real datagram socket: path and abstract names, no-op without NOTIFY_SOCKET."""

from __future__ import annotations

import os

import pytest
from structlog.testing import capture_logs

from agent.daemon.sdnotify import Notifier, watchdog_interval
from tests.sdnotify_listener import NotifyListener


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_messages_reach_the_service_manager(abstract: bool) -> None:
    with NotifyListener(abstract=abstract) as listener:
        notifier = Notifier({"NOTIFY_SOCKET": listener.address})
        assert notifier.enabled
        assert notifier.ready("1/1 up")
        assert notifier.watchdog()
        assert notifier.stopping("bye")
        notes = [listener.wait_for(k, 2).fields for k in ("READY", "WATCHDOG", "STOPPING")]
        notifier.close()
    assert notes == [
        {"READY": "1", "STATUS": "1/1 up"},
        {"WATCHDOG": "1"},
        {"STOPPING": "1", "STATUS": "bye"},
    ]


def test_status_cannot_inject_extra_assignments() -> None:
    # A newline in a status fragment would otherwise smuggle e.g. READY=1 or WATCHDOG=1 into the datagram.
    with NotifyListener() as listener:
        Notifier({"NOTIFY_SOCKET": listener.address}).status("cam0 ok\nWATCHDOG=1")
        note = listener.wait_for("STATUS", 2)
    assert note.fields == {"STATUS": "cam0 ok WATCHDOG=1"}


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False


def test_vanished_socket_is_logged_not_raised() -> None:
    listener = NotifyListener()
    notifier = Notifier({"NOTIFY_SOCKET": listener.address})
    listener.close()  # the service manager went away
    with capture_logs() as logs:
        assert notifier.watchdog() is False
    assert [e["event"] for e in logs] == ["sd_notify_failed"]


def test_relative_socket_path_is_refused() -> None:
    with capture_logs() as logs:
        notifier = Notifier({"NOTIFY_SOCKET": "relative/notify.sock"})
    assert not notifier.enabled
    assert logs[0]["event"] == "sd_notify_unsupported_socket"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "2000000"}, 1.0),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "ten"}, None),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}, 1.0),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env) == expected
