"""What a camera's in-use LED shows: the in-use state and a lingering in-room notice.

Rules (docs/privacy.md "In-use indicator and notices"):

- **ON outranks NOTICE**: while frames leave the device the LED shows in-use, whatever was announced
  (the promise "indicator ON exactly while frames leave" holds at every instant);
- **NOTICE outranks OFF**: after ``announce`` the notice stays visible for ``hold_s`` (10 s) or until
  acknowledged, even if the media path sets the indicator OFF meanwhile (an intervention stops media
  and then must still be visible in the room); the hold runs on while ON masks it;
- after the hold (or an acknowledgement) the LED shows the requested state again.
"""

from __future__ import annotations

__all__ = ["NOTICE_HOLD_S", "IndicatorLatch"]

import time
from collections.abc import Callable

from hal.types import IndicatorState

NOTICE_HOLD_S = 10.0


class IndicatorLatch:
    """The requested in-use state (ON/OFF) plus a pending notice with a deadline."""

    __slots__ = ("_notice_until", "clock", "hold_s", "requested")

    def __init__(self, hold_s: float = NOTICE_HOLD_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.hold_s = hold_s
        self.clock = clock
        self.requested = IndicatorState.OFF
        self._notice_until: float | None = None

    def set(self, state: IndicatorState) -> None:
        """The owner of the picture says ON (frames leave) or OFF; NOTICE starts a notice."""
        if state is IndicatorState.NOTICE:
            self.notice()
        else:
            self.requested = state

    def notice(self) -> None:
        """An announcement: NOTICE shows for ``hold_s`` wherever ON does not."""
        self._notice_until = self.clock() + self.hold_s

    def acknowledge(self) -> None:
        """Someone in the room acknowledged the notice (or it is withdrawn): back to the requested state."""
        self._notice_until = None

    @property
    def notice_pending(self) -> bool:
        if self._notice_until is None:
            return False
        if self.clock() >= self._notice_until:
            self._notice_until = None
            return False
        return True

    @property
    def shown(self) -> IndicatorState:
        if self.requested is IndicatorState.ON:
            return IndicatorState.ON
        return IndicatorState.NOTICE if self.notice_pending else self.requested
