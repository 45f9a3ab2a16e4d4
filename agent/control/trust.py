"""The trusted root: loaded from the image on first boot, rotated by signed root documents.

The first root comes from ``[trust] root`` (a root envelope signed by its own root threshold, trust
on first boot). Each accepted rotation (TUF client workflow 5.3: root N+1 signed by a threshold of
root N's root keys and of its own) replaces it; the envelope is persisted atomically in
``<state>/trust/root.json`` and wins over the image's root when its version is not lower. Keys
removed by a rotation stop counting at once: the new :class:`TrustedRoot` no longer holds them.
"""

from __future__ import annotations

__all__ = ["TrustStore"]

from pathlib import Path

import structlog

from agent.control.errors import Rejected
from agent.control.verify import TrustedRoot, VerifiedDocument, verify_initial_root
from agent.errors import StateError
from agent.persist import atomic_write_bytes

log = structlog.get_logger()


class TrustStore:
    def __init__(self, state_dir: Path, initial_root: Path | None, *, max_bytes: int = 64 * 1024) -> None:
        self.path = Path(state_dir) / "trust" / "root.json"
        self._max = max_bytes
        image = self._load(initial_root) if initial_root is not None else None
        persisted = self._load(self.path) if self.path.exists() else None
        if persisted is not None and (image is None or persisted.version >= image.version):
            self.root: TrustedRoot | None = persisted
        else:
            self.root = image
        if self.root is None:
            log.warning("control_no_trust_root", hint="set [trust] root; every document will be rejected")

    def _load(self, path: Path) -> TrustedRoot:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise StateError(str(path), f"cannot read trust root: {exc.strerror or exc}") from exc
        try:
            return verify_initial_root(raw, max_bytes=self._max)
        except Rejected as exc:
            raise StateError(str(path), f"trust root does not verify: {exc}") from exc

    @property
    def version(self) -> int:
        return self.root.version if self.root is not None else 0

    def rotate(self, doc: VerifiedDocument, raw: bytes) -> TrustedRoot:
        """Make a verified root document the trusted root (persist first, then switch)."""
        assert doc.kind == "root"
        new = verify_initial_root(raw, max_bytes=self._max)
        atomic_write_bytes(self.path, raw, mode=0o644)
        self.root = new
        log.info("control_root_rotated", version=new.version)
        return new
