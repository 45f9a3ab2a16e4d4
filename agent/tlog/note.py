"""C2SP ``signed-note`` with Ed25519 signatures, and the ``tlog-checkpoint`` body it carries.

signed-note (c2sp.org/signed-note): the note text (UTF-8, ending in a newline), a blank line, then
one or more signature lines ``"\u2014 " <key name> " " base64(key id || signature) "\n"``. The
signature covers the text including its final newline; the key id is the first 4 bytes of
``SHA-256(key name || 0x0A || 0x01 || public key)`` (0x01: Ed25519). Unknown keys' lines are
ignored; a known key with a bad signature rejects the note.

tlog-checkpoint (c2sp.org/tlog-checkpoint): the text is the log's origin line, the tree size in
decimal, the root hash in standard base64, then optional extension lines.
"""

from __future__ import annotations

__all__ = [
    "Checkpoint",
    "NoteKey",
    "format_checkpoint",
    "open_checkpoint",
    "parse_checkpoint",
    "sign_note",
    "verify_note",
]

import base64
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.tlog.errors import NoteError

_DASH = "\u2014 "
_ED25519 = b"\x01"
MAX_NOTE_BYTES = 16 * 1024  # a checkpoint is ~200 bytes; cap before parsing
MAX_SIGNATURES = 100  # the reference implementation's cap
_NAME = re.compile(r"[^\s+]+")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}", re.ASCII)


@dataclass(frozen=True, slots=True)
class NoteKey:
    """An Ed25519 verifier key of a signed note: the key name and the raw public key."""

    name: str
    public: bytes  # 32 raw bytes

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError("a note key name is non-empty and has no spaces or '+'")
        if len(self.public) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")

    @property
    def key_id(self) -> bytes:
        """signed-note: ``SHA-256(name || 0x0A || 0x01 || key)[:4]``."""
        return hashlib.sha256(self.name.encode() + b"\n" + _ED25519 + self.public).digest()[:4]

    @property
    def vkey(self) -> str:
        """The verifier key text ``<name>+<hex key id>+<base64(0x01 || key)>``."""
        return f"{self.name}+{self.key_id.hex()}+{base64.b64encode(_ED25519 + self.public).decode()}"

    @classmethod
    def of(cls, name: str, key: ed25519.Ed25519PublicKey) -> NoteKey:
        return cls(name, key.public_bytes(Encoding.Raw, PublicFormat.Raw))


def sign_note(text: str, name: str, private: ed25519.Ed25519PrivateKey) -> str:
    """A signed note of ``text`` with one Ed25519 signature by key ``name``."""
    if not text.endswith("\n") or "\n\n" in text:
        raise ValueError("note text ends in one newline and has no blank lines")
    key = NoteKey.of(name, private.public_key())
    sig = private.sign(text.encode())
    return f"{text}\n{_DASH}{name} {base64.b64encode(key.key_id + sig).decode()}\n"


def verify_note(note: bytes, keys: Iterable[NoteKey], threshold: int = 1) -> tuple[str, frozenset[str]]:
    """Verify a signed note; returns its text and the names of the keys that signed it.

    Raises:
        NoteError: malformed, or fewer than ``threshold`` of ``keys`` signed it, or a known key's
            signature is wrong.
    """
    if len(note) > MAX_NOTE_BYTES:
        raise NoteError(f"note is {len(note)} bytes; the cap is {MAX_NOTE_BYTES}")
    try:
        whole = note.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NoteError("note is not UTF-8") from exc
    # The signatures start after the last blank line; the text keeps its final newline.
    split = whole.rfind("\n\n")
    if split < 0 or not whole.endswith("\n"):
        raise NoteError("no blank line before the signatures")
    text, sig_block = whole[: split + 1], whole[split + 2 :]
    lines = sig_block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"more than {MAX_SIGNATURES} signatures")
    by_id = {(k.name, k.key_id): k for k in keys}
    signed: set[str] = set()
    for line in lines:
        if not line.startswith(_DASH):
            raise NoteError("a signature line starts with an em dash and a space")
        name, _, b64 = line[len(_DASH) :].partition(" ")
        if not _NAME.fullmatch(name) or not b64:
            raise NoteError("malformed signature line")
        try:
            blob = base64.b64decode(b64, validate=True)
        except ValueError as exc:  # binascii.Error, or non-ASCII text (found by fuzz/fuzz_tlog.py)
            raise NoteError("signature is not base64") from exc
        if len(blob) < 5:
            raise NoteError("signature is too short")
        key = by_id.get((name, blob[:4]))
        if key is None or name in signed:
            continue  # unknown keys are ignored (witness cosignatures, other logs)
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(key.public).verify(blob[4:], text.encode())
        except InvalidSignature as exc:
            raise NoteError(f"bad signature by {name}") from exc
        signed.add(name)
    if len(signed) < threshold:
        raise NoteError(f"signed by {len(signed)} trusted key(s); {threshold} needed")
    return text, frozenset(signed)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """tlog-checkpoint: origin, tree size, root hash (and extension lines)."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()


def format_checkpoint(cp: Checkpoint) -> str:
    lines = [cp.origin, str(cp.size), base64.b64encode(cp.root).decode(), *cp.extensions]
    return "\n".join(lines) + "\n"


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint body (the note text).

    Raises:
        NoteError: not three lines of origin, decimal size and base64 SHA-256 root.
    """
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise NoteError("a checkpoint has an origin, a size and a root hash line")
    origin, size, root, *ext = lines[:-1]
    if not origin or not _DECIMAL.fullmatch(size):
        raise NoteError("checkpoint origin is empty or its size is not a decimal number")
    try:
        digest = base64.b64decode(root, validate=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII text
        raise NoteError("checkpoint root hash is not base64") from exc
    if len(digest) != 32:
        raise NoteError("checkpoint root hash is not 32 bytes")
    if any(not line for line in ext):
        raise NoteError("empty extension line")
    return Checkpoint(origin, int(size), digest, tuple(ext))


def open_checkpoint(note: bytes, keys: Iterable[NoteKey], threshold: int = 1) -> Checkpoint:
    """Verify a signed checkpoint note and parse it; its origin must be a signing key's name.

    Raises:
        NoteError: bad signature, malformed, or origin not matching the key names.
    """
    keys = list(keys)
    text, signers = verify_note(note, keys, threshold)
    cp = parse_checkpoint(text)
    # tlog-checkpoint: the origin identifies the log; a log's key is named after it, so a
    # checkpoint of another log signed by the same key is not accepted here.
    if cp.origin not in signers:
        raise NoteError(f"checkpoint origin {cp.origin[:80]!r} is not the name of a key that signed it")
    return cp
