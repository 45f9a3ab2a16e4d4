"""Join keys: what one participant needs to meet over WebRTC (SFU place + its SFrame keys).

The same shape travels in a guest's join link (URL fragment, never sent to a server) and in a lab
key file for ``roomagent webrtc join``::

    #sfu=<url>&room=<id>&token=<pin>&name=<display>&keys=<base64url(JSON)>

    keys JSON: {"v": 1, "meeting": "m-1", "suite": 4,
                "send": {"kid": 513, "key": "<base64url>"},
                "recv": [{"name": "room-a", "kid": 256, "key": "<base64url>"}, ...]}

A link without ``keys`` joins the SFU but can decrypt nothing (the web client says so).
"""

from __future__ import annotations

__all__ = ["JoinKeys", "PeerKey", "SfuPlace", "b64url", "join_fragment", "parse_join_fragment"]

import base64
import binascii
import json
from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, urlencode

from agent.e2ee.suites import get_suite
from agent.webrtc.errors import JoinLinkError


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise JoinLinkError("a key is not base64url") from exc


@dataclass(frozen=True, slots=True)
class SfuPlace:
    """Where a meeting meets: Janus API URL, VideoRoom id and join token (the room's pin)."""

    url: str
    room: int
    token: str


@dataclass(frozen=True, slots=True)
class PeerKey:
    name: str
    kid: int
    key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class JoinKeys:
    meeting: str
    suite: int
    send: PeerKey | None
    recv: tuple[PeerKey, ...]

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "v": 1,
            "meeting": self.meeting,
            "suite": self.suite,
            "recv": [{"name": p.name, "kid": p.kid, "key": b64url(p.key)} for p in self.recv],
        }
        if self.send is not None:
            out["send"] = {"kid": self.send.kid, "key": b64url(self.send.key)}
        return out

    @classmethod
    def from_json(cls, doc: object) -> JoinKeys:
        """Raises JoinLinkError for anything that is not a complete v1 key set (never shows keys)."""
        if not isinstance(doc, dict) or doc.get("v") != 1:
            raise JoinLinkError("not a v1 key set")
        suite, meeting = doc.get("suite"), doc.get("meeting")
        if type(suite) is not int or not isinstance(meeting, str):
            raise JoinLinkError("suite and meeting are required")
        try:
            get_suite(suite)
        except Exception as exc:
            raise JoinLinkError(f"unknown suite {suite}") from exc

        def peer(raw: object, name: str | None = None) -> PeerKey:
            if (
                not isinstance(raw, dict)
                or type(raw.get("kid")) is not int
                or not isinstance(raw.get("key"), str)
            ):
                raise JoinLinkError("each key needs an integer kid and a base64url key")
            key = _unb64url(raw["key"])
            if not 16 <= len(key) <= 64:
                raise JoinLinkError("a key must be 16..64 bytes")
            label = name if name is not None else raw.get("name")
            return PeerKey(str(label or f"kid-{raw['kid']}"), int(raw["kid"]), key)

        send = doc.get("send")
        recv = doc.get("recv", [])
        if not isinstance(recv, list):
            raise JoinLinkError("recv must be a list")
        return cls(meeting, suite, None if send is None else peer(send, "self"), tuple(peer(r) for r in recv))


def join_fragment(place: SfuPlace, name: str, keys: JoinKeys | None) -> str:
    """The URL fragment (without ``#``) of a join link."""
    params = {"sfu": place.url, "room": str(place.room), "token": place.token, "name": name}
    if keys is not None:
        params["keys"] = b64url(json.dumps(keys.to_json(), separators=(",", ":")).encode())
    return urlencode(params, quote_via=quote)


def parse_join_fragment(fragment: str) -> tuple[SfuPlace, str, JoinKeys | None]:
    q = {k: v[0] for k, v in parse_qs(fragment.lstrip("#"), keep_blank_values=True).items()}
    try:
        place = SfuPlace(q["sfu"], int(q["room"]), q.get("token", ""))
    except (KeyError, ValueError) as exc:
        raise JoinLinkError("sfu and room are required") from exc
    keys = None
    if q.get("keys"):
        try:
            keys = JoinKeys.from_json(json.loads(_unb64url(q["keys"])))
        except ValueError as exc:
            raise JoinLinkError("keys is not JSON") from exc
    return place, q.get("name", "guest"), keys
