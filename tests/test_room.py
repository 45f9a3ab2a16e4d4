"""Parts of the composition root that need no processes: the config merge and the audit export chunks."""

from __future__ import annotations

import json

from agent.config import parse_config
from agent.control.audit_export import CHUNK_MAX_BYTES, chunks
from agent.control.documents import ConfigBody
from agent.daemon.room import effective_config


def test_pushed_config_overrides_the_sections_it_names_and_never_device_facts() -> None:
    local = parse_config(
        {
            "device": {"id": "room-1"},
            "mqtt": {"url": "mqtt://broker.local:1883"},
            "hal": {
                "cameras": [{"id": "cam0", "width": 640, "height": 480}, {"id": "cam1", "fps": 15}],
                "encoder": {"bitrate_kbps": 900},
            },
            "media": {"sink": "rtp://10.0.0.1:5004"},
            "log": {"level": "debug"},
        }
    )
    pushed = ConfigBody.model_validate(
        {
            "cameras": [{"id": "cam1", "width": 320, "height": 240, "fps": 10}],
            "encoder": {"bitrate_kbps": 400, "codecs": ["libvpx"]},
        },
        strict=False,
    )
    merged = effective_config(local, pushed)
    assert [(c.id, c.width, c.fps) for c in merged.hal.cameras] == [("cam0", 640, 30), ("cam1", 320, 10)]
    assert merged.hal.encoder.bitrate_kbps == 400
    assert merged.hal.encoder.codecs == ["libvpx"]
    assert merged.media.sink == "rtp://10.0.0.1:5004"  # not named: the local section stays
    assert merged.log.level == "debug"
    assert (merged.device.id, merged.mqtt.url) == ("room-1", "mqtt://broker.local:1883")
    assert effective_config(local, ConfigBody()) == local


def test_audit_export_chunks_stay_under_64_kib_in_order_and_end_with_last() -> None:
    entries = [{"seq": n, "event": "accepted", "message": "x" * 300} for n in range(1, 601)]
    head = {"payloadType": "application/vnd.roomagent.audit-head+json", "payload": "e30=", "signatures": []}
    messages = [json.loads(m) for m in chunks("ab" * 32, entries, head)]
    assert len(messages) > 2
    assert all(len(m) <= CHUNK_MAX_BYTES for m in chunks("ab" * 32, entries, head))
    assert [m["chunk"] for m in messages] == list(range(len(messages)))
    assert [m["last"] for m in messages] == [False] * (len(messages) - 1) + [True]
    assert [e["seq"] for m in messages for e in m["entries"]] == list(range(1, 601))
    [empty] = [json.loads(m) for m in chunks("ab" * 32, [], head)]
    assert (empty["entries"], empty["last"], empty["head"]) == ([], True, head)
