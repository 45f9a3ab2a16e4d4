"""The atheris fuzz target runs under pytest too: hypothesis feeds it, and it must never crash."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from types import ModuleType

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.e2ee.header import encode_header
from tests.conftest import REPO


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_sframe", REPO / "fuzz" / "fuzz_sframe.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fuzz_sframe", module)
    spec.loader.exec_module(module)
    return module


TARGET: Callable[[bytes], None] = _load().TestOneInput


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_inputs(data: bytes) -> None:
    TARGET(data)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 15),
    st.integers(0, 1 << 20),
    st.binary(max_size=60),
)
def test_inputs_with_valid_headers(a: int, b: int, kid: int, ctr: int, tail: bytes) -> None:
    """Seeds that pass the header parser and reach the key lookup, AEAD and replay window."""
    TARGET(bytes([a, b]) + bytes(b % 16) + encode_header(kid, ctr) + tail)
