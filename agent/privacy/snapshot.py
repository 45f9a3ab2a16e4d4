"""Remote snapshots: one frame, PNG, HPKE-sealed to the requester; never in clear on the broker.

A ``snapshot`` command (customer-signed: verifier rule 9; the guard re-checks it) carries the
requester's HPKE public key (``args.recipient = {"kem", "public_key"}``, made by ``roomctl
hpke-keygen``) and optionally the camera id. The device:

1. refuses unless the customer signed, the room is active and policy ``camera.remote_snapshot`` is
   on (``needs_customer`` / ``locked`` / ``forbidden_by_policy``), or when the recipient's KEM is
   weaker than policy ``e2ee.kem`` (``kem_too_weak``);
2. captures one frame through the HAL: from the running media pipeline of that camera if there is one
   (:meth:`agent.media.pipeline.MediaPipeline.grab_frame`), else it opens the camera through the
   inventory. A closed privacy shutter refuses the snapshot (``shutter_closed``): the shutter wins;
3. encodes it as PNG (:func:`hal.images.encode_png`) and seals it with HPKE base mode, single-shot
   (RFC 9180 §6.1) to the recipient, ``info`` binding device id, command version and the command's
   payload sha256 (RFC 9180 §8.1), so a sealed image cannot be passed off as another request's;
4. announces it in the room (``Camera.announce``), and returns the message to publish on
   ``{prefix}/devices/{id}/snapshot``: ``{device, doc_version, kem, sealed, sha256}`` (sha256 of
   the PNG, so the requester can check what it opened) plus ``signature`` by the device's Ed25519
   identity (:meth:`SealedSnapshot.message`, checked by :func:`snapshot_signed_by`).

Only the image's size and digest are logged and audited; never its bytes.
"""

from __future__ import annotations

__all__ = [
    "SNAPSHOT_KIND",
    "SNAPSHOT_TIMEOUT_S",
    "FrameSource",
    "InventoryFrameSource",
    "SealedSnapshot",
    "open_snapshot",
    "snapshot_info",
    "snapshot_signed_by",
    "take_snapshot",
]

import asyncio
import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from pydantic import ValidationError

from agent.control.documents import SnapshotArgs
from agent.control.dsse import pae
from agent.control.signing_keys import PublicKey
from agent.privacy.errors import InterventionError
from agent.privacy.hpke import HpkeIdentity, kem_at_least, seal_to
from agent.schema.policy import PolicyBody
from hal.errors import HalError
from hal.images import encode_png
from hal.protocols import Camera, Inventory
from hal.types import Frame

SNAPSHOT_TIMEOUT_S = 5.0
SNAPSHOT_KIND = "snapshot"
_INFO_LABEL = b"roomagent/v1 snapshot"


def snapshot_info(device: str, doc_version: int, payload_sha256: str) -> bytes:
    """The HPKE ``info`` of a snapshot: the request it answers (RFC 9180 §8.1 application context)."""
    fields = {"device": device, "doc_version": doc_version, "payload_sha256": payload_sha256}
    return _INFO_LABEL + b"\x00" + json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


class _Grabber(Protocol):
    camera_id: str

    async def grab_frame(self, timeout_s: float) -> tuple[Frame, Camera] | None: ...


class FrameSource(Protocol):
    """Captures one frame of a camera and hands back a private copy of its picture."""

    async def capture(self, camera_id: str | None, timeout_s: float) -> tuple[Any, Camera]: ...


def _refuse(reason: str, message: str) -> InterventionError:
    return InterventionError(reason, message)


def _own_copy(frame: Frame) -> Any:
    # The picture may be a pooled buffer the camera draws into again: copy it now (rgb24).
    return frame.image.reformat(format="rgb24")


class InventoryFrameSource:
    """Frames from the running pipeline of a camera, else from the camera opened through the HAL."""

    def __init__(
        self, inventory: Inventory, pipelines: Callable[[], Iterable[_Grabber]] = lambda: ()
    ) -> None:
        self._inventory = inventory
        self._pipelines = pipelines

    async def capture(self, camera_id: str | None, timeout_s: float) -> tuple[Any, Camera]:
        """One frame's picture (rgb24 copy) and the camera.

        Raises:
            InterventionError: ``no_camera``, ``shutter_closed`` or ``capture_failed``.
        """
        present = [d.id for d in self._inventory.list_devices() if d.kind == "camera"]
        if camera_id is None:
            if not present:
                raise _refuse("no_camera", "this device has no camera")
            camera_id = present[0]
        for pipeline in self._pipelines():
            if pipeline.camera_id == camera_id:
                grabbed = await pipeline.grab_frame(timeout_s)
                if grabbed is not None:
                    frame, camera = grabbed
                    if camera.shutter_closed:
                        raise _refuse("shutter_closed", f"camera {camera_id}: the privacy shutter is closed")
                    return _own_copy(frame), camera
        if camera_id not in present:
            raise _refuse("no_camera", f"no camera {camera_id!r} on this device")
        try:
            camera = self._inventory.open_camera(camera_id)
            async with camera:
                if camera.shutter_closed:
                    raise _refuse("shutter_closed", f"camera {camera_id}: the privacy shutter is closed")
                async with asyncio.timeout(timeout_s):
                    async for frame in camera.frames():
                        if camera.shutter_closed:  # closed while it was drawn: a black picture
                            raise _refuse("shutter_closed", f"camera {camera_id}: the privacy shutter closed")
                        return _own_copy(frame), camera
        except TimeoutError as exc:
            raise _refuse("capture_failed", f"camera {camera_id}: no frame in {timeout_s:g} s") from exc
        except HalError as exc:
            raise _refuse("capture_failed", f"camera {camera_id}: {type(exc).__name__}") from exc
        raise _refuse("capture_failed", f"camera {camera_id}: no frame")


@dataclass(frozen=True, slots=True)
class SealedSnapshot:
    """What the device publishes (no image in clear): ``fields``, signed by :meth:`message`."""

    camera: str
    kem: str
    png_size: int
    png_sha256: str
    fields: dict[str, Any]

    def message(self, signer: _Signer) -> bytes:
        """The JSON message with ``signature`` = the device identity's DSSE signature (keyid, sig)
        over PAE(``application/vnd.roomagent.snapshot+json``, canonical JSON of the other fields): the
        requester checks the image came from the room, not from whoever relays it (HPKE base mode
        does not authenticate the sender, RFC 9180 §5.1.1)."""
        env = signer.sign_envelope(SNAPSHOT_KIND, self.fields)
        sig = env.signatures[0]
        signature = {"keyid": sig.keyid, "sig": base64.b64encode(sig.sig).decode("ascii")}
        return json.dumps(
            {**self.fields, "signature": signature}, sort_keys=True, separators=(",", ":")
        ).encode()


class _Signer(Protocol):
    def sign_envelope(self, kind: str, payload: dict[str, Any]) -> Any: ...


def snapshot_signed_by(message: bytes, key: PublicKey) -> bool:
    """True when ``message`` carries a valid signature of ``key`` (the device's identity key)."""
    try:
        data = json.loads(message)
        signature = data.pop("signature")
        sig = base64.b64decode(signature["sig"], validate=True)
        keyid = signature["keyid"]
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        return False
    payload = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return keyid == key.keyid and key.verify(
        sig, pae(f"application/vnd.roomagent.{SNAPSHOT_KIND}+json", payload)
    )


def _camera_name(camera: Camera) -> str:
    try:
        return camera.info.id
    except Exception:  # an unplugged camera may not describe itself any more
        return "?"


async def take_snapshot(
    source: FrameSource,
    args: Mapping[str, Any],
    *,
    device: str,
    doc_version: int,
    payload_sha256: str,
    policy: PolicyBody,
    timeout_s: float = SNAPSHOT_TIMEOUT_S,
) -> SealedSnapshot:
    """Capture, encode, seal (steps 2-4 above); the caller has checked signer, lock and policy.

    Raises:
        InterventionError / KeyDeliveryError: a refusal (``invalid_body``, ``kem_too_weak``,
            ``no_camera``, ``shutter_closed``, ``capture_failed``); nothing was published.
    """
    try:
        request = SnapshotArgs.model_validate(dict(args))
    except ValidationError as exc:
        raise _refuse("invalid_body", f"snapshot args: {exc.error_count()} errors") from exc
    kem = request.recipient.kem
    if not kem_at_least(kem, policy.e2ee.kem):
        raise _refuse("kem_too_weak", f"recipient KEM {kem} is weaker than the policy's {policy.e2ee.kem}")
    try:
        base64.b64decode(request.recipient.public_key, validate=True)
    except binascii.Error as exc:
        raise _refuse("invalid_body", "recipient public key is not base64") from exc
    picture, camera = await source.capture(request.camera, timeout_s)
    try:
        png = await asyncio.to_thread(encode_png, picture)
    except HalError as exc:
        raise _refuse("capture_failed", f"PNG encoding failed: {type(exc).__name__}") from exc
    sealed = seal_to(
        kem, request.recipient.public_key, png, snapshot_info(device, doc_version, payload_sha256)
    )
    digest = hashlib.sha256(png).hexdigest()
    name = _camera_name(camera)
    try:
        await camera.announce("A remote snapshot of this room was taken at the customer's request.")
    except HalError as exc:
        structlog.get_logger().warning("snapshot_announce_failed", camera=name, error=type(exc).__name__)
    message = {
        "device": device,
        "doc_version": doc_version,
        "kem": kem,
        "sealed": base64.b64encode(sealed).decode("ascii"),
        "sha256": digest,
    }
    structlog.get_logger().info("snapshot_sealed", camera=name, kem=kem, png_size=len(png))
    return SealedSnapshot(camera=name, kem=kem, png_size=len(png), png_sha256=digest, fields=message)


def open_snapshot(
    identity: HpkeIdentity, message: bytes, *, device: str, doc_version: int, payload_sha256: str
) -> bytes:
    """The requester's side: the PNG from a snapshot message answering our command.

    Raises:
        KeyDeliveryError: ``invalid_body`` (malformed, another device or version, digest mismatch),
            ``bad_seal`` (not sealed to us for this request, or tampered).
    """
    from agent.privacy.errors import KeyDeliveryError

    try:
        data = json.loads(message)
        kem, sealed_b64, digest = data["kem"], data["sealed"], data["sha256"]
        sealed = base64.b64decode(sealed_b64, validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise KeyDeliveryError("invalid_body", "malformed snapshot message") from exc
    if data.get("device") != device or data.get("doc_version") != doc_version:
        raise KeyDeliveryError("invalid_body", "the snapshot answers another request")
    png = identity.open_sealed(kem, sealed, snapshot_info(device, doc_version, payload_sha256))
    if hashlib.sha256(png).hexdigest() != digest:
        raise KeyDeliveryError("invalid_body", "the snapshot's sha256 does not match its image")
    return png
