"""Acoustic echo cancellation: SpeexDSP's MDF echo canceller and its residual echo suppressor.

A room plays the far end through its own speakers next to its own microphone; without this the far
end hears itself back. The library is libspeexdsp (Xiph.Org; Debian ``libspeexdsp1``; the canceller
PulseAudio's ``module-echo-cancel`` has shipped for years), called through ``ctypes`` so no compiled
binding is needed (see ``docs/adr/0041-echo-cancellation-speexdsp.md`` for the choice).

Use: for every 20 ms frame, ``cancel(mic, played)`` where ``played`` is the frame that went to the
speaker at the same time as ``mic`` was captured (the canceller learns the delay and the room's
response itself, up to ``tail_ms``).
"""

from __future__ import annotations

__all__ = ["EchoCanceller", "erle_db"]

import ctypes
import ctypes.util
import threading
from typing import Any

import numpy as np
import numpy.typing as npt

from hal.errors import UnsupportedError
from hal.types import AUDIO_FRAME_SAMPLES, AUDIO_RATE

# speex/speex_echo.h and speex/speex_preprocess.h
_SPEEX_ECHO_SET_SAMPLING_RATE = 24
_SPEEX_PREPROCESS_SET_DENOISE = 0
_SPEEX_PREPROCESS_SET_ECHO_STATE = 24
_SPEEX_PREPROCESS_SET_ECHO_SUPPRESS = 26
_SPEEX_PREPROCESS_SET_ECHO_SUPPRESS_ACTIVE = 28
_BLOCK = AUDIO_FRAME_SAMPLES // 2  # 10 ms: the canceller's block (SpeexDSP recommends 10-20 ms)

_lib: Any = None
_lib_lock = threading.Lock()

I16 = npt.NDArray[np.int16]


def _load() -> Any:
    global _lib
    with _lib_lock:
        if _lib is None:
            name = ctypes.util.find_library("speexdsp") or "libspeexdsp.so.1"
            try:
                lib = ctypes.CDLL(name)
            except OSError as exc:
                raise UnsupportedError(
                    f"libspeexdsp not found ({exc}); install Debian's libspeexdsp1"
                ) from exc
            vp, i16p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int16)
            lib.speex_echo_state_init.restype = vp
            lib.speex_echo_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
            lib.speex_echo_ctl.argtypes = [vp, ctypes.c_int, vp]
            lib.speex_echo_cancellation.argtypes = [vp, i16p, i16p, i16p]
            lib.speex_echo_state_destroy.argtypes = [vp]
            lib.speex_preprocess_state_init.restype = vp
            lib.speex_preprocess_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
            lib.speex_preprocess_ctl.argtypes = [vp, ctypes.c_int, vp]
            lib.speex_preprocess_run.argtypes = [vp, i16p]
            lib.speex_preprocess_state_destroy.argtypes = [vp]
            _lib = lib
        return _lib


def _ptr(a: I16) -> Any:
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_int16))


class EchoCanceller:
    """One echo canceller for one microphone/speaker pair (48 kHz mono). Not thread-safe.

    Args:
        tail_ms: the longest echo it models (speaker-to-microphone delay plus room reverberation).
        suppress: run SpeexDSP's residual echo suppressor after the linear filter.

    Raises:
        UnsupportedError: libspeexdsp is not installed.
    """

    def __init__(self, *, tail_ms: int = 200, suppress: bool = True) -> None:
        lib = _load()
        self._lib = lib
        self._echo = lib.speex_echo_state_init(_BLOCK, tail_ms * AUDIO_RATE // 1000)
        rate = ctypes.c_int(AUDIO_RATE)
        lib.speex_echo_ctl(self._echo, _SPEEX_ECHO_SET_SAMPLING_RATE, ctypes.byref(rate))
        self._pre: Any = None
        if suppress:
            self._pre = lib.speex_preprocess_state_init(_BLOCK, AUDIO_RATE)
            off = ctypes.c_int(0)
            lib.speex_preprocess_ctl(self._pre, _SPEEX_PREPROCESS_SET_DENOISE, ctypes.byref(off))
            lib.speex_preprocess_ctl(self._pre, _SPEEX_PREPROCESS_SET_ECHO_STATE, ctypes.c_void_p(self._echo))
        self._out = np.zeros(_BLOCK, dtype=np.int16)

    def cancel(self, mic: npt.NDArray[Any], played: npt.NDArray[Any]) -> I16:
        """``mic`` with the echo of ``played`` removed (both 960 int16 samples, same 20 ms)."""
        if self._echo is None:
            raise UnsupportedError("echo canceller is closed")
        mic16 = np.ascontiguousarray(mic, dtype=np.int16)
        ref16 = np.ascontiguousarray(played, dtype=np.int16)
        if mic16.shape != (AUDIO_FRAME_SAMPLES,) or ref16.shape != (AUDIO_FRAME_SAMPLES,):
            raise UnsupportedError(f"echo canceller takes frames of {AUDIO_FRAME_SAMPLES} samples")
        out = np.empty(AUDIO_FRAME_SAMPLES, dtype=np.int16)
        for start in (0, _BLOCK):
            m = np.ascontiguousarray(mic16[start : start + _BLOCK])
            r = np.ascontiguousarray(ref16[start : start + _BLOCK])
            self._lib.speex_echo_cancellation(self._echo, _ptr(m), _ptr(r), _ptr(self._out))
            if self._pre is not None:
                self._lib.speex_preprocess_run(self._pre, _ptr(self._out))
            out[start : start + _BLOCK] = self._out
        return out

    def close(self) -> None:
        if self._pre is not None:
            self._lib.speex_preprocess_state_destroy(self._pre)
            self._pre = None
        if self._echo is not None:
            self._lib.speex_echo_state_destroy(self._echo)
            self._echo = None

    def __del__(self) -> None:
        self.close()


def erle_db(echo: npt.NDArray[Any], residual: npt.NDArray[Any]) -> float:
    """Echo return loss enhancement: echo power at the microphone over the power left after
    cancellation (ITU-T G.168), measured where only the far end talks."""
    e = float(np.mean(np.asarray(echo, dtype=np.float64) ** 2))
    r = float(np.mean(np.asarray(residual, dtype=np.float64) ** 2))
    return float(10 * np.log10(e / max(r, 1e-9)))
