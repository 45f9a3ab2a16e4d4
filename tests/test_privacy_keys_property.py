"""Any key package body, however mangled, ends in a validation error or a typed KeyDeliveryError."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.privacy.errors import KeyDeliveryError
from agent.privacy.hpke import HpkeIdentity
from agent.privacy.key_packages import KeyManager, KeySet
from agent.schema.key_package import KeysBody
from agent.schema.policy import DEFAULT_POLICY

IDENTITY = HpkeIdentity.generate()
EXPIRES = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


class Sink:
    def apply_keys(self, keys: KeySet) -> None:
        pass


sealed = st.one_of(
    st.binary(max_size=1300).map(lambda b: base64.b64encode(b).decode()),
    st.text(max_size=40),
)
entry = st.fixed_dictionaries(
    {"kem": st.sampled_from(["x25519", "mlkem768-x25519", "p256", ""]), "sealed": sealed}
)
sender = st.fixed_dictionaries(
    {
        "device": st.sampled_from(["room-a", "room-b", "", "x" * 70]),
        "kid": st.integers(min_value=-1, max_value=1 << 65),
        "recipients": st.dictionaries(st.sampled_from(["room-a", "room-b", "bad id"]), entry, max_size=2),
    }
)
body = st.fixed_dictionaries(
    {
        "meeting": st.sampled_from(["m-1", "", "m 1"]),
        "epoch": st.integers(min_value=-1, max_value=1 << 33),
        "suite": st.integers(min_value=0, max_value=6),
        "key_expires": st.sampled_from([EXPIRES, "2020-01-01T00:00:00Z", "soon"]),
        "senders": st.lists(sender, max_size=3),
    }
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body)
def test_mangled_key_packages_fail_only_with_typed_errors(data: dict[str, Any]) -> None:
    manager = KeyManager(device_id="room-a", identity=IDENTITY, policy=lambda: DEFAULT_POLICY, target=Sink())
    try:
        manager.install(KeysBody.model_validate(data))
    except (ValidationError, KeyDeliveryError):
        return
    raise AssertionError("a random package was installed")
